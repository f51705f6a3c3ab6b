"""`edgeworker run` as a real subprocess on a database of the private PostgreSQL server: it runs
jobs, holds the database's single-instance lock, and after a SIGKILL its next start recovers the
interrupted run (the seed's recovery, as on SQLite)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import is_root
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
    jobs = '[[jobs]]\nname = "idle"\ncommand = "true"\nevery = "365d"\n'
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
    name = pg_server.create_database()
    url = pg_server.url(name)
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
        pg_server.drop_database(name)


def test_a_quick_server_restart_does_not_fence_a_leased_worker(tmp_path, pg_server, pg_url):
    # The first heartbeat after the restart meets its connection closed: it is tried again at
    # once (connecting again), not a heartbeat later, which with lease 3 s and heartbeat 1 s
    # would come after the fence (2 s without a heartbeat) and end the run.
    ran = tmp_path / "ran"
    with PgWorker(tmp_path, pg_url, f'name = "gw"\n{LEASED}{slow_job(ran)}') as worker:
        task = start_a_slow_run(worker, ran)
        for _ in range(3):
            pg_server.restart()
            time.sleep(1.0)
        time.sleep(2.5)  # past the time a fence would come
        [row] = worker.tasks(f"id = {task['id']}")
        assert (row["status"], row["attempt"]) == ("running", 1)
        assert worker.stop(signal.SIGKILL) != 0
    assert "unrecorded" not in worker.log()


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



def test_jobs_pinned_by_run_on_run_only_on_the_workers_that_carry_their_tag(tmp_path, pg_url):
    # Each worker takes only its site's runs (and untagged ones), on one shared database.
    jobs = ''.join(f'[[jobs]]\nname = "{site}-job"\ncommand = "true"\nevery = "1s"\n'
                   f'run_on = ["{site}"]\n' for site in ("site-a", "site-b"))
    jobs += '[[jobs]]\nname = "anywhere"\ncommand = "true"\nevery = "1s"\n'
    with PgWorker(tmp_path, pg_url, f'name = "gw-a"\ntags = ["site-a"]\n{jobs}',
                  name="a") as first, \
            PgWorker(tmp_path, pg_url, f'name = "gw-b"\ntags = ["site-b"]\n{jobs}',
                     name="b") as second:
        first.start().wait_running()
        second.start().wait_running()
        for site in ("site-a", "site-b"):
            first.wait_tasks(f"status = 'succeeded' AND job = '{site}-job'", count=2, timeout=30)
        first.wait_tasks("status = 'succeeded' AND job = 'anywhere'", count=2, timeout=30)
        assert first.stop() == 0 and second.stop() == 0
    ran = {(t["job"], t["worker"]) for t in first.tasks("status = 'succeeded'")}
    assert {("site-a-job", "gw-a"), ("site-b-job", "gw-b")} <= ran
    assert not ran & {("site-a-job", "gw-b"), ("site-b-job", "gw-a")}


LEASED = 'heartbeat = "1s"\nlease = "3s"\n'


def slow_job(ran) -> str:
    """A manual-only job whose first attempt outlasts the test and whose recovery is quick."""
    return f'''[[jobs]]
name = "slow"
command = ["sh", "-c", "echo $EDGEWORKER_TASK_ID $EDGEWORKER_ATTEMPT $EDGEWORKER_RECOVERED \
>> {ran}; [ $EDGEWORKER_RECOVERED = 1 ] || sleep 60"]
cron = "0 0 1 1 *"
timezone = "UTC"
max_attempts = 3
'''


def start_a_slow_run(worker: PgWorker, ran: Path, where: str = "status = 'running'") -> dict:
    """Start `worker`, queue the slow job, and wait until its run has started: its task row."""
    worker.start().wait_running()
    worker.cli("jobs", "run", "slow")
    [task] = worker.wait_tasks(where)
    wait_for(lambda: ran.exists() and ran.read_text(), what="the run to start", log=worker.log)
    return task


QUICK = '[[jobs]]\nname = "quick"\ncommand = "true"\ncron = "0 0 1 1 *"\ntimezone = "UTC"\n'


def recoveries(url: str) -> list[tuple]:
    con = psycopg2.connect(url)
    try:
        cursor = con.cursor()
        cursor.execute("SELECT worker, recovered_from, task_ids, recovered FROM recoveries "
                       "WHERE recovered_from IS NOT NULL ORDER BY id")
        return cursor.fetchall()
    finally:
        con.close()


def test_a_killed_workers_run_is_recovered_by_another_after_its_lease(tmp_path, pg_url):
    ran = tmp_path / "ran"
    with PgWorker(tmp_path, pg_url, f'name = "gw-a"\n{LEASED}{slow_job(ran)}', "a") as a, \
            PgWorker(tmp_path, pg_url, f'name = "gw-b"\n{LEASED}{slow_job(ran)}', "b") as b:
        task = start_a_slow_run(a, ran, "status = 'running' AND worker = 'gw-a'")
        b.start().wait_running()
        a.stop(signal.SIGKILL)  # in the middle of its run; gw-b takes it once the lease is over
        [done] = b.wait_tasks(f"id = {task['id']} AND status = 'succeeded'", timeout=30)
        assert b.stop() == 0
    assert (done["worker"], done["attempt"], done["recovered_count"]) == ("gw-b", 2, 1)
    assert ran.read_text().splitlines() == [f"{task['id']} 1 0", f"{task['id']} 2 1"]
    assert recoveries(pg_url) == [("gw-b", "gw-a", str(task["id"]), 1)]
    assert "took the running tasks of worker(s) gw-a, whose lease expired: recovered 1" in b.log()
    assert f"gw-b took the runs of gw-a (task {task['id']})" in b.cli("status").stdout


def test_a_worker_stopped_past_its_lease_drops_its_run_and_goes_on(tmp_path, pg_url):
    ran = tmp_path / "ran"
    jobs = slow_job(ran) + QUICK
    with PgWorker(tmp_path, pg_url, f'name = "gw-a"\n{LEASED}{jobs}', "a") as a, \
            PgWorker(tmp_path, pg_url, f'name = "gw-b"\n{LEASED}{jobs}', "b") as b:
        task = start_a_slow_run(a, ran, "status = 'running' AND worker = 'gw-a'")
        b.start().wait_running()
        a.send(signal.SIGSTOP)  # alive, but silent: its lease runs out
        try:
            b.wait_tasks(f"id = {task['id']} AND status = 'succeeded'", timeout=30)
        finally:
            a.send(signal.SIGCONT)
        wait_for(lambda: "reached the database again" in a.log(), timeout=30,
                 what="gw-a to take work again", log=a.log)
        assert b.stop() == 0
        a.cli("jobs", "run", "quick")  # and gw-a takes work again
        a.wait_tasks("job = 'quick' AND status = 'succeeded' AND worker = 'gw-a'")
        assert a.proc.poll() is None and a.stop() == 0
    [row] = a.tasks(f"id = {task['id']}")
    assert (row["status"], row["worker"], row["attempt"], row["recovered_count"]) == (
        "succeeded", "gw-b", 2, 1)  # recorded once, by gw-b
    assert ran.read_text().splitlines()[:2] == [f"{task['id']} 1 0", f"{task['id']} 2 1"]
    log = a.log()
    assert "of the lease (3s): other workers may" in log
    assert (f"task {task['id']} job slow attempt 1 ended unrecorded" in log
            or f"task {task['id']} was recovered by gw-b" in log)


def test_a_second_worker_of_one_name_is_refused_while_the_first_is_away(tmp_path, pg_server):
    name = pg_server.create_database()
    url = pg_server.url(name)
    jobs = '[[jobs]]\nname = "tick"\ncommand = "true"\nevery = "1s"\n'
    try:
        with PgWorker(tmp_path, url, f'name = "gw"\n{jobs}') as first:
            first.start().wait_running()
            second = PgWorker(tmp_path, url, f'name = "gw"\n{jobs}', name="second")
            pg_server.restart()  # the first's lock session ends; its lease does not
            result = subprocess.run(second.command("run"), capture_output=True, text=True,
                                    timeout=60, cwd=tmp_path)
            assert result.returncode == 1, result.stderr
            error = result.stderr.splitlines()[-1]  # after the log lines of its start
            assert error.startswith(('Error: a worker named "gw" (pid '
                                     f"{first.proc.pid} on ",
                                     'Error: another worker named "gw" (pid '
                                     f"{first.proc.pid}) is running")), result.stderr
            wait_for(lambda: worker_pid(url) == first.proc.pid, timeout=30,
                     what="the first to take its lock again", log=first.log)
            assert first.proc.poll() is None and first.stop() == 0
    finally:
        pg_server.drop_database(name)


def test_a_worker_cut_off_past_its_lease_ends_its_run_and_recovers_it_when_back(tmp_path,
                                                                                pg_server,
                                                                                pg_url):
    ran = tmp_path / "ran"
    with PgWorker(tmp_path, pg_url, f'name = "gw"\n{LEASED}{slow_job(ran)}') as worker:
        task = start_a_slow_run(worker, ran)
        pg_server.halt()  # no heartbeat can be written: after the lease, it fences itself
        try:
            wait_for(lambda: f"task {task['id']} job slow attempt 1 ended unrecorded"
                     in worker.log(), timeout=30, what="the fence", log=worker.log)
        finally:
            pg_server.start_again()
        [done] = worker.wait_tasks(f"id = {task['id']} AND status = 'succeeded'", timeout=30)
        assert worker.stop() == 0
    assert (done["worker"], done["attempt"], done["recovered_count"]) == ("gw", 2, 1)
    assert ran.read_text().splitlines() == [f"{task['id']} 1 0", f"{task['id']} 2 1"]
    log = worker.log()
    assert "of the lease (3s): other workers may" in log
    assert "reached the database again: registered again and taking work; recovered 1" in log


def test_a_command_printing_nul_characters_succeeds_with_its_output_kept(tmp_path, pg_url):
    # PostgreSQL's text cannot hold NUL: each is kept as U+FFFD instead of the outcome being lost
    # (and the run retried although it succeeded).
    jobs = '[[jobs]]\nname = "nul"\ncommand = ["printf", "a\\\\000b"]\nevery = "365d"\n'
    with PgWorker(tmp_path, pg_url, jobs) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "nul")
        [done] = worker.wait_tasks("status <> 'created' AND status <> 'running'")
        assert (done["status"], done["attempt"], done["output"]) == ("succeeded", 1, "a\ufffdb")
        assert worker.stop() == 0


def test_a_worker_without_a_heartbeat_is_refused_on_postgresql(tmp_path, pg_url):
    worker = PgWorker(tmp_path, pg_url, 'heartbeat = "off"\n')
    result = subprocess.run(worker.command("run", "--migrate"), capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        1, f"Error: {worker.config}:3: [worker] heartbeat: cannot be off on PostgreSQL, where it "
           "renews the worker's lease (without it, other workers take its runs)\n")


def test_a_worker_stopping_gracefully_keeps_its_lease_while_its_run_finishes(tmp_path, pg_url):
    """SIGTERM lets a run finish (up to shutdown_timeout, here longer than the lease): the worker
    goes on renewing its lease meanwhile, so that no other worker takes the run from it (on
    another host: runs it a second time at once)."""
    ran = tmp_path / "ran"
    jobs = f'''shutdown_timeout = "30s"
[[jobs]]
name = "slow"
command = ["sh", "-c", "echo $EDGEWORKER_ATTEMPT start >> {ran}; sleep 6; \
echo $EDGEWORKER_ATTEMPT end >> {ran}"]
cron = "0 0 1 1 *"
timezone = "UTC"
'''
    with PgWorker(tmp_path, pg_url, f'name = "gw-a"\n{LEASED}{jobs}', "a") as a, \
            PgWorker(tmp_path, pg_url, f'name = "gw-b"\n{LEASED}{jobs}', "b") as b:
        task = start_a_slow_run(a, ran, "status = 'running' AND worker = 'gw-a'")
        b.start().wait_running()
        assert a.stop(signal.SIGTERM) == 0  # after its run's end, 6 s: twice the lease
        assert b.stop() == 0
    [row] = a.tasks(f"id = {task['id']}")
    assert (row["status"], row["worker"], row["attempt"]) == ("succeeded", "gw-a", 1)
    assert ran.read_text().splitlines() == ["1 start", "1 end"]
    assert "took the running tasks" not in b.log()


class Partition:
    """A worker's way to the server (a Unix socket proxied to the server's), cut on demand."""

    def __init__(self, directory, server_socket):
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(directory / ".s.PGSQL.5432"))
        self.listener.listen(64)
        self.server_socket, self.sockets = str(server_socket), []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.server_socket)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for sock in [self.listener, *self.sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class OnAnotherHost(PgWorker):
    """A worker whose host name is another (a UTS namespace of its own; root only)."""

    def command(self, *args: str) -> list[str]:
        argv = super().command(*args)
        if args[:1] != ("run",):
            return argv
        return ["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$@"', "sh", *argv]


def test_a_cut_off_workers_run_is_over_before_another_host_runs_it_again(tmp_path, pg_server):
    # A fence comes early enough for SIGTERM, a grace, and SIGKILL before the lease ends (with
    # lease 3 s and heartbeat 1 s: at 2 s, killed at 2.5 s), so that a worker on another host,
    # which cannot end the cut-off worker's processes, never runs the task beside them.
    if not is_root():
        pytest.skip("needs root: the second host is a UTS namespace")
    ran = tmp_path / "ran"
    name = pg_server.create_database()
    (tmp_path / "proxy").mkdir()
    partition = Partition(tmp_path / "proxy", pg_server.socket_dir / ".s.PGSQL.5432")
    cut_off = f"postgresql://postgres@/{name}?host={tmp_path / 'proxy'}"
    # bash's clock, not date's: a process of the run's that a signal could end mid-line
    line = f"$EDGEWORKER_ATTEMPT ${{EPOCHREALTIME/./}} >> {ran}"
    # a first attempt that goes on for as long as it is let after SIGTERM
    jobs = f"""{LEASED}[[jobs]]
name = "slow"
command = ["bash", "-c", "trap 'while :; do echo alive {line}; sleep 0.05; done' TERM; \
echo start {line}; [ $EDGEWORKER_ATTEMPT = 1 ] && sleep 60 & wait"]
cron = "0 0 1 1 *"
timezone = "UTC"
"""
    try:
        with PgWorker(tmp_path, cut_off, f'name = "gw-a"\n{jobs}', "a") as a, \
                OnAnotherHost(tmp_path, pg_server.url(name), f'name = "gw-b"\n{jobs}', "b") as b:
            a.start().wait_running()
            a.cli("jobs", "run", "slow")
            wait_for(lambda: ran.exists() and ran.read_text(), what="the run to start", log=a.log)
            b.start().wait_running()
            partition.cut()  # gw-a fences before its lease ends; gw-b takes the run after
            [task] = b.wait_tasks("status = 'succeeded'", timeout=30)
            wait_for(lambda: f"task {task['id']} job slow attempt 1 ended unrecorded" in a.log(),
                     what="the first run's end", log=a.log)
            assert "ends its 1 running run(s) unrecorded before then" in a.log()
    finally:
        partition.cut()
        pg_server.drop_database(name)
    events = sorted((int(ns), what, int(attempt)) for what, attempt, ns in
                    (line.split() for line in ran.read_text().splitlines()))
    [second] = [ns for ns, what, attempt in events if attempt == 2]
    assert max(ns for ns, _, attempt in events if attempt == 1) < second  # one run at a time
