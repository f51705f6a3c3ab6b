"""`edgeworker run` under what a box and its jobs do to it: hung jobs, waiting runs, bad reloads,
a full disk. A real worker subprocess on a real SQLite file, with real signals."""

import json
import os
import signal
import sqlite3
import time

import pytest
from workerproc import WorkerProcess, wait_for

pytestmark = pytest.mark.timeout(120)


def io_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as handle:
        fields = dict(line.split(": ") for line in handle.read().splitlines())
    return int(fields["write_bytes"]) + int(fields["wchar"])


def blocked_job(name: str, go) -> str:
    """A job whose run lasts until the file `go` exists."""
    return (f'[[jobs]]\nname = "{name}"\n'
            f'command = ["sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done"]\n'
            'every = "1d"\n')


def test_a_worker_with_every_thread_busy_says_so(tmp_path):
    go, textfile = tmp_path / "go", tmp_path / "edgeworker.prom"
    config = (f'[worker]\ndatabase = "ew.db"\nworkers = 1\nbusy_alert = "500ms"\n'
              f'[metrics]\ntextfile = "{textfile}"\ninterval = "200ms"\n' + blocked_job("hung", go))
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        task_id = int(worker.cli("jobs", "run", "hung").stdout.split()[2])
        wait_for(lambda: "all 1 worker thread(s) busy for more than 500ms" in worker.log(),
                 log=worker.log, what="the busy alert in the log")
        status = json.loads(worker.cli("status", "--json").stdout)
        assert status["worker"]["alert"] == (
            f"all 1 worker thread(s) busy for more than 500ms (task {task_id}): "
            "no other run can start")
        assert "alert     all 1 worker thread(s) busy" in worker.cli("status").stdout
        wait_for(lambda: "edgeworker_worker_all_threads_busy 1.0" in textfile.read_text(),
                 what="the busy alert in the metrics")
        go.touch()
        worker.wait_tasks(f"id = {task_id} AND status = 'succeeded'")
        wait_for(lambda: "a worker thread is free again" in worker.log(), log=worker.log)
        wait_for(lambda: "edgeworker_worker_all_threads_busy 0.0" in textfile.read_text(),
                 what="the metric back to 0")
        assert json.loads(worker.cli("status", "--json").stdout)["worker"]["alert"] is None
        worker.stop()
    assert worker.log().count("busy for more than") == 1  # once, not at every look


def test_a_run_waiting_for_its_jobs_running_run_writes_nothing(tmp_path):
    go = tmp_path / "go"
    config = '[worker]\ndatabase = "ew.db"\nworkers = 2\n' + blocked_job("slow", go)
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        first = int(worker.cli("jobs", "run", "slow").stdout.split()[2])
        worker.wait_tasks(f"id = {first} AND status = 'running'")
        second = int(worker.cli("jobs", "run", "slow").stdout.split()[2])
        time.sleep(0.3)  # let both threads look at the queue (and find the job busy)
        before = io_written(worker.proc.pid)
        sizes = {p.name: p.stat().st_size for p in tmp_path.glob("ew.db*")}
        time.sleep(2.5)
        assert worker.tasks(f"id = {first}")[0]["status"] == "running"
        assert worker.tasks(f"id = {second}")[0]["status"] == "created"
        assert io_written(worker.proc.pid) == before
        assert {p.name: p.stat().st_size for p in tmp_path.glob("ew.db*")} == sizes
        go.touch()
        worker.wait_tasks(f"id = {second} AND status = 'succeeded'")
        worker.stop()


@pytest.mark.parametrize("bad", [
    'cron = "0 0 31 2 *"',  # valid, but 31 February never comes
    'every = "99999999999d"',  # past what a date can hold
])
def test_a_reload_that_cannot_be_scheduled_keeps_the_running_config(tmp_path, bad):
    config = '[worker]\ndatabase = "ew.db"\n[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1h"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        before = worker.query("SELECT * FROM jobs ORDER BY id")
        tasks = worker.query("SELECT * FROM tasks ORDER BY id")
        worker.config.write_text(config.replace('every = "1h"', 'every = "2h"') +
                                 f'[[jobs]]\nname = "b"\ncommand = "true"\n{bad}\n')
        assert worker.cli("check-config").returncode == 0
        worker.send(signal.SIGHUP)
        wait_for(lambda: "reload failed, keeping the jobs as they were" in worker.log(),
                 log=worker.log, what="the failed reload")
        assert worker.proc.poll() is None
        assert worker.query("SELECT * FROM jobs ORDER BY id") == before  # not half synced
        assert worker.query("SELECT * FROM tasks ORDER BY id") == tasks
        assert "Traceback" not in worker.log()
        [line] = [x for x in worker.log().splitlines() if "reload failed" in x]
        worker.config.write_text(config)
        worker.send(signal.SIGHUP)
        wait_for(lambda: "0 added, 0 updated, 0 removed, 1 unchanged" in worker.log(),
                 log=worker.log, what="a good reload")
        assert worker.stop() == 0


def fill(directory) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_is_logged_once_waited_out_and_loses_nothing(tmp_path, tmpfs):
    mount = tmpfs("4m")
    config = (f'[worker]\ndatabase = "{mount.path / "ew.db"}"\nretention = "forever"\n'
              '[[jobs]]\nname = "tick"\ncommand = "true"\nevery = "100ms"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.db = mount.path / "ew.db"
        worker.start().wait_running()
        worker.wait_tasks("status = 'succeeded'", count=3)
        fill(mount.path)
        # Seen by a thread taking the next run, or by one recording a run's outcome (which
        # then waits for space).
        wait_for(lambda: "disk full: no space left to write the database" in worker.log(),
                 log=worker.log, what="the disk-full line")
        lines_then = len(worker.log().splitlines())
        committed = {r[0] for r in worker.query("SELECT id FROM tasks WHERE status = 'succeeded'")}
        time.sleep(3)  # full for a while: the log must not grow with it
        assert worker.proc.poll() is None
        full_lines = worker.log().splitlines()
        assert len(full_lines) - lines_then <= 10, "\n".join(full_lines[-20:])
        # the cause, once: from the threads' shared look at the queue, or from a run in flight
        assert 1 <= worker.log().count("disk full") <= 3
        assert "no transaction is active" not in worker.log()
        assert "Traceback" not in worker.log()
        (mount.path / "filler").unlink()
        newest = max(committed)
        worker.wait_tasks(f"status = 'succeeded' AND id > {newest + 2}", timeout=60)
        assert worker.stop() == 0
    after = {r[0] for r in worker.query("SELECT id FROM tasks WHERE status = 'succeeded'")}
    assert committed <= after
    con = sqlite3.connect(worker.db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
