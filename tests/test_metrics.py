"""The Prometheus textfile: what a real worker writes into it, and only when a value changed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from workerproc import WorkerProcess, wait_for

from edgeworker.clock import from_text
from edgeworker.config import parse_config
from edgeworker.errors import ConfigError
from edgeworker.metrics import TextfileMetrics

pytestmark = pytest.mark.timeout(60)


def io_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as handle:
        fields = dict(line.split(": ") for line in handle.read().splitlines())
    return int(fields["write_bytes"]) + int(fields["wchar"])


def metrics_config(textfile: Path, jobs: str) -> str:
    return (f'[worker]\ndatabase = "ew.db"\n\n[metrics]\ntextfile = "{textfile}"\n'
            f'interval = "100ms"\n\n{jobs}')


def samples(path: Path) -> dict[tuple, float]:
    """{(name, sorted labels): value} from a textfile, through prometheus_client's own parser."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(path: Path, name: str, **labels: str) -> float | None:
    return samples(path).get((name, tuple(sorted(labels.items()))))


def test_counts_last_success_queue_and_recovery(tmp_path):
    textfile = tmp_path / "textfile" / "edgeworker.prom"
    textfile.parent.mkdir()
    jobs = ('[[jobs]]\nname = "ok"\ncommand = "true"\nevery = "365d"\n\n'
            '[[jobs]]\nname = "bad"\ncommand = "false"\nevery = "365d"\nmax_attempts = 1\n')
    with WorkerProcess(tmp_path, metrics_config(textfile, jobs)) as worker:
        worker.start().wait_running()
        for job in ("ok", "ok", "bad"):
            worker.cli("jobs", "run", job)
        worker.wait_tasks("origin = 'manual' AND status IN ('succeeded', 'failed')", count=3)
        wait_for(lambda: textfile.exists()
                 and value(textfile, "edgeworker_runs_total", job="ok", outcome="succeeded") == 2,
                 what="the metrics to show both runs of ok", log=worker.log)
        wait_for(lambda: value(textfile, "edgeworker_runs_total", job="bad", outcome="failed") == 1,
                 what="the metrics to show the failure", log=worker.log)
        last_ok = worker.tasks("job = 'ok' AND status = 'succeeded'")[-1]
        worker.stop()

    found = samples(textfile)
    assert found[("edgeworker_tasks", (("job", "ok"), ("status", "created")))] == 1  # next slot
    assert found[("edgeworker_tasks", (("job", "ok"), ("status", "running")))] == 0
    assert ("edgeworker_tasks", (("job", "ok"), ("status", "succeeded"))) not in found
    assert found[("edgeworker_runs_total", (("job", "bad"), ("outcome", "succeeded")))] == 0
    assert found[("edgeworker_runs_total", (("job", "ok"), ("outcome", "retried")))] == 0
    assert found[("edgeworker_job_last_success_timestamp_seconds", (("job", "ok"),))] == \
        pytest.approx(from_text(last_ok["finished_at"]).timestamp())
    assert ("edgeworker_job_last_success_timestamp_seconds", (("job", "bad"),)) not in found
    assert found[("edgeworker_queue_messages", (("state", "scheduled"),))] == 2
    assert found[("edgeworker_queue_messages", (("state", "ready"),))] == 0
    assert found[("edgeworker_recoveries_total", ())] == 1
    assert found[("edgeworker_last_recovery_tasks", (("action", "recovered"),))] == 0
    assert textfile.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in textfile.parent.iterdir()] == ["edgeworker.prom"]  # no temp files


def test_an_idle_worker_with_metrics_writes_nothing(tmp_path):
    textfile = tmp_path / "edgeworker.prom"
    jobs = '[[jobs]]\nname = "rare"\ncommand = "true"\nevery = "1d"\n'
    with WorkerProcess(tmp_path, metrics_config(textfile, jobs)) as worker:
        worker.start().wait_running()
        wait_for(textfile.exists, what="the first metrics", log=worker.log)
        time.sleep(0.5)  # let start-up settle (recovery, first scheduling)
        # Held open, the first file keeps its inode: a later file cannot reuse it (ext4 does
        # reuse freed inodes), and its content shows whether it was rewritten in place.
        with open(textfile, "rb") as first_file:
            first = os.fstat(first_file.fileno())
            first_text = first_file.read()
            before = io_written(worker.proc.pid)
            time.sleep(2)  # 20 metrics intervals
            assert io_written(worker.proc.pid) == before
            assert (textfile.stat().st_ino, textfile.stat().st_mtime_ns) == \
                (first.st_ino, first.st_mtime_ns)

            worker.cli("jobs", "run", "rare")  # a change is written within an interval or so
            wait_for(lambda: value(textfile, "edgeworker_runs_total", job="rare",
                                   outcome="succeeded") == 1,
                     what="the run in the metrics", log=worker.log)
            assert textfile.stat().st_ino != first.st_ino  # replaced by a rename...
            first_file.seek(0)
            assert first_file.read() == first_text  # ...not rewritten
        worker.stop()


def test_an_unwritable_textfile_is_logged_once_and_jobs_run_on(tmp_path):
    textfile = tmp_path / "no-such-dir" / "edgeworker.prom"
    jobs = '[[jobs]]\nname = "fast"\ncommand = "true"\nevery = "100ms"\n'
    with WorkerProcess(tmp_path, metrics_config(textfile, jobs)) as worker:
        worker.start().wait_running()
        worker.wait_tasks("status = 'succeeded'", count=10)
        textfile.parent.mkdir()
        wait_for(textfile.exists, what="the metrics once the directory exists", log=worker.log)
        assert worker.stop() == 0
    errors = [line for line in worker.log().splitlines() if "cannot write metrics" in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"ERROR cannot write metrics to {textfile}: [Errno 2] No such file "
                              f"or directory: '{textfile.parent}/.edgeworker.prom."
                              f"{worker.proc.pid}.tmp' (jobs run on)")
    assert f"INFO metrics written to {textfile} again" in worker.log()


def test_without_prometheus_client_the_start_fails_with_one_line(tmp_path):
    worker = WorkerProcess(tmp_path, metrics_config(tmp_path / "m.prom", ""))
    hide = ("import sys; sys.modules['prometheus_client'] = None; "
            "from edgeworker.cli import main; sys.argv[0] = 'edgeworker'; main()")
    result = subprocess.run([sys.executable, "-c", hide, "--config", str(worker.config), "run",
                             "--migrate"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: [metrics] textfile needs the prometheus_client package "
        "(pip install 'edgeworker[metrics]')")


def test_metrics_settings():
    config = parse_config('[metrics]\ntextfile = "m.prom"\ninterval = "1m"\n', Path("/etc/e.toml"))
    assert (config.metrics.textfile, config.metrics.interval) == ("/etc/m.prom", 60.0)
    assert parse_config("").metrics.interval == 15.0
    with pytest.raises(ConfigError) as error:
        parse_config('[metrics]\ninterval = "10ms"\n', Path("e.toml"))
    assert str(error.value) == "e.toml:2: [metrics] interval: must be at least 100ms"
    with pytest.raises(ConfigError) as error:
        parse_config('[metrics]\nfile = "x"\n', Path("e.toml"))
    assert str(error.value) == "e.toml:2: [metrics] file: unknown key; allowed: interval, textfile"


def add_history(database, job_id: int, count: int, status: str = "succeeded") -> None:
    """`count` finished runs of a job, as a 1 s job leaves them (kept 7 days: 600,000)."""
    moment = "2026-12-01T00:00:00.000000Z"
    database.execute_sql("BEGIN")
    database.cursor().executemany(
        "INSERT INTO tasks (job_id, status, scheduled_for, due_at, created_at, started_at, "
        "finished_at, attempt, exit_code) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 0)",
        [(job_id, status, moment, moment, moment, moment, moment)] * count)
    database.execute_sql("COMMIT")


def vm_steps(database, call) -> int:
    """How much work SQLite did for `call()`: its virtual machine's instructions."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    connection = database.connection()
    connection.set_progress_handler(count, 1)
    try:
        call()
    finally:
        connection.set_progress_handler(None, 1)
    return steps


def test_rendering_reads_no_history(database, tmp_path):
    """The worker renders whenever anything changed: its cost must not grow with history."""
    from edgeworker.clock import utcnow
    from edgeworker.config import MetricsSettings
    from edgeworker.ledger import Ledger
    from edgeworker.models import Job

    now = utcnow()
    job = Job.create(name="every-second", kind="command", target="true", every_seconds=1,
                     created_at=now, updated_at=now)
    ledger = Ledger(database)
    ledger.ensure_scheduled(job, now)
    add_history(database, job.id, 5_000)
    metrics = TextfileMetrics(MetricsSettings(textfile=tmp_path / "m.prom"), ledger)
    metrics.render()  # the first look reads each job's last success
    before = vm_steps(database, metrics.render)
    add_history(database, job.id, 20_000)
    add_history(database, job.id, 20_000, status="failed")
    after = vm_steps(database, metrics.render)
    print(f"{before} then {after} instructions")
    assert after - before < 1_000  # a look at each of 40,000 more rows would be 40,000 at least
    assert before < 5_000  # and at each of the first 5,000


def test_a_restarted_worker_counts_from_zero_and_knows_the_last_success(tmp_path):
    textfile = tmp_path / "edgeworker.prom"
    jobs = '[[jobs]]\nname = "ok"\ncommand = "true"\nevery = "1d"\n'
    with WorkerProcess(tmp_path, metrics_config(textfile, jobs)) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "ok")
        [task] = worker.wait_tasks("status = 'succeeded'")
        assert worker.stop() == 0
        worker.start().wait_running()
        wait_for(lambda: textfile.exists() and value(textfile, "edgeworker_recoveries_total") == 2,
                 what="the second worker's metrics", log=worker.log)
        found = samples(textfile)
        assert worker.stop() == 0
    assert found[("edgeworker_job_last_success_timestamp_seconds", (("job", "ok"),))] == \
        pytest.approx(from_text(task["finished_at"]).timestamp())
    # A counter starts at 0 with its process: Prometheus' rate() and increase() expect that.
    assert found[("edgeworker_runs_total", (("job", "ok"), ("outcome", "succeeded")))] == 0
