"""The program's entry point (edgeworker/entry.py). A running worker imports only what its jobs
need: no click (`run` with plain arguments is read without it), no OpenSSL through hashlib or ssl
(peewee and huey import hashlib; edgeworker hashes with the standard library's own modules),
croniter only with a cron job, prometheus_client only with metrics, `subprocess` only once a
process is started, the alerts only when a hook, ping or alert_after asks for them, no status
reports, nothing of PostgreSQL's on a file, neither the TOML parser nor `typing` once the config
is read, and no pathlib (nor the urllib.parse and ipaddress it imports); and a job that imports
hashlib gets the full one, OpenSSL included. `run`'s arguments read without click are read as
click reads them."""

import hashlib
import subprocess
import sys
from pathlib import Path

import click
import pytest
from workerproc import WorkerProcess

from edgeworker.cli import cli
from edgeworker.entry import run_params

pytestmark = pytest.mark.timeout(90)

PROBE = """\
import sys

def loaded(ctx):
    found = [m for m in ("_hashlib", "ssl", "croniter", "prometheus_client", "psycopg", "click",
                         "edgeworker.cli", "edgeworker.metrics", "tomllib", "typing",
                         "subprocess", "edgeworker.alerts", "edgeworker.report",
                         "edgeworker.postgres", "pathlib", "urllib.parse", "ipaddress")
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


def test_an_interval_worker_loads_no_click_openssl_croniter_prometheus_toml_or_subprocess(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["."]\n\n'
              '[[jobs]]\nname = "tick"\ncommand = "true"\nevery = "365d"\n\n'
              '[[jobs]]\nname = "probe"\ncallable = "probe:loaded"\nevery = "24h"\n')
    maps, output = run_once(tmp_path, config, "probe")
    assert output == "INFO none\n"
    assert "libcrypto" not in maps and "libssl" not in maps and "_hashlib" not in maps


def test_a_cron_job_loads_croniter_and_a_job_gets_openssl_hashlib(tmp_path):
    (tmp_path / "digest.py").write_text(DIGEST)
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["."]\n\n'
              '[[jobs]]\nname = "nightly"\ncommand = "true"\ncron = "0 3 * * *"\n\n'
              '[[jobs]]\nname = "digest"\ncallable = "digest:scrypt"\nevery = "24h"\n')
    _, output = run_once(tmp_path, config, "digest")
    expected = hashlib.scrypt(b"secret", salt=b"salt", n=2, r=1, p=1, dklen=8).hex()
    assert output == f"INFO {expected} True\n"  # scrypt exists only in OpenSSL's hashlib


def click_params(argv: list[str]) -> dict | None:
    """What click makes of `argv`: the root's and the run command's parameters (a path as the
    string the worker reads it as), or None for anything else (another command, a usage error)."""
    try:
        with cli.make_context("edgeworker", list(argv)) as ctx:
            name, command, rest = cli.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
            if name != "run":
                return None
            with command.make_context(name, rest, parent=ctx) as sub:
                return {key: str(value) if isinstance(value, Path) else value
                        for key, value in {**ctx.params, **sub.params}.items()}
    except (click.exceptions.Exit, click.UsageError):
        return None


PLAIN = [
    ["run"],
    ["--config", "ew.toml", "run"],
    ["--config=ew.toml", "run", "--migrate"],
    ["--debug", "--db", "ew.db", "run", "--workers", "3", "--log-format", "json"],
    ["--db=postgresql://edge@db.example/jobs", "run", "--workers=64", "--log-format=text"],
    ["--config", "a.toml", "--config", "run", "run", "--migrate", "--migrate"],
    ["run", "--name", "gw-a"], ["run", "--name=site@gw.1", "--workers", "2"],
]
OTHER = [
    [], ["status"], ["run", "extra"], ["run", "--help"], ["-h"], ["--version"], ["--config"],
    ["run", "--workers"], ["run", "--workers", "0"], ["run", "--workers", "65"],
    ["run", "--workers", " 5"], ["run", "--workers", "x"], ["run", "--log-format", "xml"],
    ["--config", ".", "run"], ["--db", ".", "run"], ["--config", "-x", "run"], ["--config=", "run"],
    ["run", "--debug"], ["--migrate", "run"], ["run", "run"], ["jobs", "run", "x"],
    ["run", "--name"], ["run", "--name", "bad name"], ["run", "--name", "-x"],
]


@pytest.mark.parametrize("argv", PLAIN + OTHER, ids=lambda argv: " ".join(argv) or "-")
@pytest.mark.parametrize("environ", [{}, {"EDGEWORKER_CONFIG": "env.toml"},
                                     {"EDGEWORKER_DB": "postgresql://edge@db/jobs"},
                                     {"EDGEWORKER_CONFIG": ""}, {"EDGEWORKER_DB": "."},
                                     {"EDGEWORKER_NAME": "gw-b"}, {"EDGEWORKER_NAME": "no way"}],
                         ids=lambda environ: ",".join(f"{k}={v}" for k, v in environ.items()))
def test_run_is_read_as_click_reads_it(argv, environ, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("EDGEWORKER_CONFIG", "EDGEWORKER_DB", "EDGEWORKER_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    bad_environ = environ.get("EDGEWORKER_DB") == "." or environ.get("EDGEWORKER_NAME") == "no way"
    ours = run_params(argv, environ)
    if ours is not None:
        assert ours == click_params(argv)
    else:
        assert argv in OTHER or bad_environ
    if argv in PLAIN and not bad_environ:
        assert ours is not None  # the worker starts without click


@pytest.mark.parametrize("config, message", [
    (None, "Error: nowhere.toml: config file not found"),
    ('[worker]\ndatabase = "ew.db"\n', "Error: ew.db: no database here; create it with "
                                        "`edgeworker migrate`"),
    ('[worker]\ndatabase = "ew.toml"\n', "Error: ew.toml: not an SQLite database (left "
                                          "untouched); check --db / $EDGEWORKER_DB"),
])
def test_run_without_click_fails_with_one_error_line(tmp_path, config, message):
    path = tmp_path / ("nowhere.toml" if config is None else "ew.toml")
    if config is not None:
        path.write_text(config)
    result = subprocess.run([sys.executable, "-m", "edgeworker", "--config", path.name, "run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", message + "\n")
