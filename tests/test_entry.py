"""What a running worker imports (edgeworker/entry.py): only what its jobs need. No OpenSSL
through hashlib (peewee and huey import hashlib; edgeworker hashes with the standard library's
own modules), croniter only with a cron job, prometheus_client only with metrics; and a job that
imports hashlib gets the full one, OpenSSL included."""

import hashlib
from pathlib import Path

import pytest
from workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(90)

PROBE = """\
import sys

def loaded(ctx):
    found = [m for m in ("_hashlib", "croniter", "prometheus_client", "psycopg")
             if sys.modules.get(m)]
    ctx.logger.info(" ".join(found) or "none")
"""

DIGEST = """\
import hashlib, sys

def scrypt(ctx):
    key = hashlib.scrypt(b"secret", salt=b"salt", n=2, r=1, p=1, dklen=8).hex()
    ctx.logger.info("%s %s", key, "croniter" in sys.modules)
"""


def run_once(tmp_path: Path, config: str, job: str) -> tuple[str, str]:
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()
        worker.cli("jobs", "run", job)
        [done] = worker.wait_tasks(f"job = '{job}' AND status = 'succeeded'")
        assert worker.stop() == 0
    return maps, done["output"]


def test_an_interval_worker_loads_no_openssl_croniter_or_prometheus(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["."]\n\n'
              '[[jobs]]\nname = "tick"\ncommand = "true"\nevery = "1h"\n\n'
              '[[jobs]]\nname = "probe"\ncallable = "probe:loaded"\nevery = "24h"\n')
    maps, output = run_once(tmp_path, config, "probe")
    assert output == "INFO none\n"
    assert "libcrypto" not in maps and "_hashlib" not in maps


def test_a_cron_job_loads_croniter_and_a_job_gets_openssl_hashlib(tmp_path):
    (tmp_path / "digest.py").write_text(DIGEST)
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["."]\n\n'
              '[[jobs]]\nname = "nightly"\ncommand = "true"\ncron = "0 3 * * *"\n\n'
              '[[jobs]]\nname = "digest"\ncallable = "digest:scrypt"\nevery = "24h"\n')
    _, output = run_once(tmp_path, config, "digest")
    expected = hashlib.scrypt(b"secret", salt=b"salt", n=2, r=1, p=1, dklen=8).hex()
    assert output == f"INFO {expected} True\n"  # scrypt exists only in OpenSSL's hashlib
