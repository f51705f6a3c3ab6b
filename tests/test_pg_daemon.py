"""`edgeworker run` as a real subprocess on a database of the private PostgreSQL server: it runs
jobs, holds the database's single-instance lock, and after a SIGKILL its next start recovers the
interrupted run (the seed's recovery, as on SQLite)."""

from __future__ import annotations

import signal
import subprocess

import pytest
from workerproc import WorkerProcess, wait_for

from edgeworker import postgres
from edgeworker.config import default_worker_name
from edgeworker.db import worker_pid

psycopg2 = pytest.importorskip("psycopg2")

pytestmark = pytest.mark.timeout(90)


class PgWorker(WorkerProcess):
    def __init__(self, directory, url: str, jobs: str, name: str = "ew"):
        super().__init__(directory, f'[worker]\ndatabase = "{url}"\n{jobs}', name)
        self.db = url

    def tasks(self, where: str = "TRUE", params: tuple = ()) -> list[dict]:
        con = psycopg2.connect(self.db)
        try:
            from psycopg2.extras import RealDictCursor

            cursor = con.cursor(cursor_factory=RealDictCursor)
            cursor.execute(
                "SELECT * FROM (SELECT tasks.*, jobs.name AS job FROM tasks LEFT JOIN jobs "
                f"ON jobs.id = tasks.job_id) AS t WHERE {where} ORDER BY id", params)
            return [dict(row) for row in cursor.fetchall()]
        finally:
            con.close()


def test_jobs_run_on_postgresql_and_sigterm_stops_the_worker(tmp_path, pg_url):
    jobs = '[[jobs]]\nname = "tick"\ncommand = ["sh", "-c", "echo $EDGEWORKER_JOB"]\nevery = "1s"\n'
    with PgWorker(tmp_path, pg_url, jobs) as worker:
        worker.start().wait_running()
        done = worker.wait_tasks("status = 'succeeded'", count=2)
        assert [(t["job"], t["output"], t["exit_code"]) for t in done[:2]] == [("tick", "tick\n",
                                                                                 0)] * 2
        status = worker.cli("status").stdout.splitlines()
        assert status[:2] == [f"database  {pg_url} (PostgreSQL)",
                              f"worker    running (pid {worker.proc.pid})"]
        assert worker.stop() == 0
    assert "worker    not running" in worker.cli("status").stdout


def test_a_second_worker_on_the_same_database_is_refused(tmp_path, pg_url):
    jobs = '[[jobs]]\nname = "idle"\ncommand = "true"\nevery = "1h"\n'
    with PgWorker(tmp_path, pg_url, jobs) as first:
        first.start().wait_running()
        second = PgWorker(tmp_path, pg_url, jobs, name="second")
        result = subprocess.run(second.command("run"), capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (
            1, f'Error: another worker named "{default_worker_name()}" (pid {first.proc.pid}) is '
               f"running on {pg_url}; stop it first, or give this one another name ([worker] "
               "name, --name)\n")
        assert first.stop() == 0


def test_a_run_a_killed_worker_left_is_recovered_at_the_next_start(tmp_path, pg_url):
    ran = tmp_path / "ran"
    jobs = f'''[[jobs]]
name = "slow"
command = ["sh", "-c", "echo $EDGEWORKER_TASK_ID $EDGEWORKER_ATTEMPT $EDGEWORKER_RECOVERED \
>> {ran}; [ $EDGEWORKER_RECOVERED = 1 ] || sleep 60"]
cron = "0 0 1 1 *"  # no slot of its own while the test runs: only the manual run
timezone = "UTC"
max_attempts = 3
'''
    with PgWorker(tmp_path, pg_url, jobs) as worker:
        worker.start().wait_running()
        assert worker.cli("jobs", "run", "slow").stdout.startswith("queued task ")
        [task] = worker.wait_tasks("status = 'running'")
        wait_for(lambda: ran.exists() and ran.read_text(), what="the run to start",
                 log=worker.log)
        worker.stop(signal.SIGKILL)
        assert worker.tasks(f"id = {task['id']}")[0]["status"] == "running"  # a dead worker's
        worker.start().wait_running()
        [done] = worker.wait_tasks(f"id = {task['id']} AND status = 'succeeded'")
        assert worker.stop() == 0
    assert (done["attempt"], done["recovered_count"]) == (2, 1)
    assert ran.read_text().splitlines() == [f"{task['id']} 1 0", f"{task['id']} 2 1"]
    assert "recovered 1, failed 0, cancelled 0" in worker.log()


def test_the_worker_goes_on_after_the_server_restarts(tmp_path, pg_server):
    url = pg_server.url(pg_server.create_database())
    jobs = '[[jobs]]\nname = "tick"\ncommand = "sleep 0.5"\nevery = "1s"\n'
    try:
        with PgWorker(tmp_path, url, jobs) as worker:
            worker.start().wait_running()
            before = len(worker.wait_tasks("status = 'succeeded'", count=1))
            worker.wait_tasks("status = 'running'")
            pg_server.restart()  # while a run runs: its outcome is recorded once reconnected
            worker.wait_tasks("status = 'succeeded'", count=before + 3, timeout=30)
            # and it holds the database's lock again (within its health check's 10 s)
            wait_for(lambda: worker_pid(url) == worker.proc.pid, timeout=30,
                     what="the worker to take its lock again", log=worker.log)
            assert worker.proc.poll() is None
            assert worker.stop() == 0
        assert worker.tasks("status NOT IN ('succeeded', 'created')") == []
        assert "connection" in worker.log()  # what it met, logged once per kind of trouble
    finally:
        pg_server.drop_database(url.split("/")[-1].split("?")[0])


def test_two_workers_of_different_names_share_one_database(tmp_path, pg_url):
    # One worker thread each, and two jobs whose runs outlast their period: each worker holds
    # at most one run at a time, so both must take runs.
    jobs = ''.join(f'[[jobs]]\nname = "{j}"\ncommand = "sleep 0.5"\nevery = "1s"\n' for j in "xy")
    with PgWorker(tmp_path, pg_url, f'name = "gw-a"\n{jobs}', name="a") as first, \
            PgWorker(tmp_path, pg_url, f'name = "gw-b"\n{jobs}', name="b") as second:
        first.start("--workers", "1").wait_running()
        second.start("--workers", "1").wait_running()
        for name in ("gw-a", "gw-b"):
            first.wait_tasks(f"status = 'succeeded' AND worker = '{name}'", timeout=30)
        running = worker_pid(pg_url) and postgres.running_workers(pg_url)
        assert running == {"gw-a": first.proc.pid, "gw-b": second.proc.pid}
        status = first.cli("status").stdout
        assert "worker    2 running: gw-a, gw-b" in status.splitlines()
        assert first.stop() == 0 and second.stop() == 0
    # never two runs of one job at once: each job's runs follow each other
    for job in "xy":
        runs = first.tasks(f"job = '{job}' AND status = 'succeeded'")
        for before, after in zip(runs, runs[1:], strict=False):
            assert before["finished_at"] <= after["started_at"]
