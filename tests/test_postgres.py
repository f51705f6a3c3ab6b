"""A postgresql:// URL: what reaches the user when it cannot be used (one line each), the
single-instance lock on a server, and the claim under concurrent connections."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import peewee
import pgserver
import pytest
from commits import Commits

from edgeworker import db as dbmod
from edgeworker import migrate, postgres, recovery, report
from edgeworker.cli import cli as main
from edgeworker.clock import utcnow
from edgeworker.config import JobSpec, default_worker_name
from edgeworker.errors import DatabaseError, WorkerRunning
from edgeworker.jobs import add_job
from edgeworker.ledger import Ledger, Outcome
from edgeworker.models import Job, Recovery, Task, Worker, recovery_who
from edgeworker.sql import POSTGRESQL

MIGRATED = "".join(f"applied {m.label}\n" for m in migrate.discover(dialect="postgresql"))


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr.strip()


@pytest.fixture
def cli(run_cli, monkeypatch, tmp_path):
    for var in ("PGPASSWORD", "PGPASSFILE", "PGUSER", "PGHOST", "PGDATABASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    return run_cli


def test_a_server_that_is_not_there_is_one_line(cli, tmp_path):
    url = f"postgresql://postgres@/edgeworker?host={tmp_path}"
    cli.db = url
    assert error_line(cli("status")) == (
        f'Error: {url}: cannot connect to the server on socket "{tmp_path}/.s.PGSQL.5432": '
        "No such file or directory")


def test_wrong_credentials_are_one_line(cli, pg_server):
    cli.db = url = pg_server.url(pg_server.create_database(), user=pgserver.PASSWORD_ROLE)
    socket = f'"{pg_server.socket_dir}/.s.PGSQL.5432"'
    assert error_line(cli("migrate", env={"PGPASSWORD": "wrong"})) == (
        f"Error: {url}: cannot connect to the server on socket {socket}: password "
        f'authentication failed for user "{pgserver.PASSWORD_ROLE}"')
    assert error_line(cli("migrate")) == (
        f"Error: {url}: cannot connect to the server on socket {socket}: the server asks for a "
        "password and none was found in ~/.pgpass, $PGPASSFILE or $PGPASSWORD")


def test_the_password_comes_from_pgpassword_or_the_password_file(cli, pg_server, tmp_path):
    name = pg_server.create_database()
    owner = pg_server.connect(name)
    owner.autocommit = True
    owner.cursor().execute(f"GRANT ALL ON SCHEMA public TO {pgserver.PASSWORD_ROLE}")
    owner.close()
    cli.db = pg_server.url(name, user=pgserver.PASSWORD_ROLE)
    assert cli.ok("migrate", env={"PGPASSWORD": pgserver.PASSWORD}) == MIGRATED
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{pgserver.PASSWORD_ROLE}:{pgserver.PASSWORD}\n")
    passfile.chmod(0o600)
    assert cli.ok("migrate", env={"PGPASSFILE": str(passfile)}) == "up to date\n"


def test_a_password_in_the_url_is_refused(cli, tmp_path):
    cli.db = "postgresql://u:secret@/edgeworker?host=/run/postgresql"
    line = error_line(cli("status"))
    assert line == ("Error: the PostgreSQL URL holds a password; take it out and put it in "
                    "~/.pgpass, $PGPASSFILE or $PGPASSWORD")
    config = tmp_path / "edgeworker.toml"
    config.write_text('[worker]\ndatabase = "postgresql://u:secret@/edgeworker"\n')
    cli.db = None
    result = cli.runner.invoke(main, ["--config", str(config), "status"])
    assert "secret" not in result.output
    assert "the PostgreSQL URL holds a password" in error_line(result)


def test_a_database_that_does_not_exist_is_one_line(cli, pg_server):
    cli.db = url = pg_server.url("nosuchdb")
    assert error_line(cli("migrate")).endswith(
        f'{url}: cannot connect to the server on socket "{pg_server.socket_dir}/.s.PGSQL.5432": '
        'database "nosuchdb" does not exist')


def test_an_invalid_url_is_one_line(cli):
    cli.db = "postgresql://[oops"
    assert error_line(cli("status")).startswith(
        "Error: postgresql://[oops: not a valid PostgreSQL URL (")


def test_another_programs_database_is_left_alone(cli, pg_server):
    name = pg_server.create_database()
    conn = pg_server.connect(name)
    conn.autocommit = True
    conn.cursor().execute("CREATE TABLE invoices (id int)")
    conn.close()
    cli.db = url = pg_server.url(name)
    assert error_line(cli("migrate")) == (
        f"Error: {url}: not an edgeworker database (it holds tables invoices and no "
        "schema_migrations); left untouched: check --db / $EDGEWORKER_DB, or add edgeworker's "
        "tables to it with `edgeworker migrate --force`")
    assert cli.ok("migrate", "--force") == MIGRATED


def test_looking_writes_nothing(cli, pg_url):
    cli.db = pg_url
    cli.ok("migrate")
    cli.ok("jobs", "add", "j", "--command", "true", "--every", "1m")
    database = postgres.open_database(pg_url)
    commits = Commits(database)
    for command in (["status"], ["jobs", "list"], ["tasks", "list"], ["tasks", "show", "1"],
                    ["recover", "--dry-run"], ["migrate", "--check"]):
        cli.ok(*command)
    assert commits() == 0
    database.close()


def test_a_read_only_connection_cannot_write(pg_database, pg_url):
    reader = dbmod.open_database(pg_url, readonly=True)
    with pytest.raises(DatabaseError, match="read-only transaction"), \
            postgres.translate_errors(pg_url):
        reader.execute_sql("DELETE FROM tasks")
    reader.close()


def test_one_worker_a_name_on_a_database(pg_database, pg_url):
    assert dbmod.worker_pid(pg_url) is None
    with dbmod.worker_lock(pg_url, "gw1"), dbmod.worker_lock(pg_url, "gw2"):
        assert postgres.running_workers(pg_url, {"gw1", "gw2"}) == {"gw1": os.getpid(),
                                                                    "gw2": os.getpid()}
        with pytest.raises(WorkerRunning) as refused:
            dbmod.worker_lock(pg_url, "gw1").acquire()
        assert str(refused.value) == (
            f'another worker named "gw1" (pid {os.getpid()}) is running on {pg_url}; stop it '
            "first, or give this one another name ([worker] name, --name)")
    assert dbmod.worker_pid(pg_url) is None


def test_migrate_and_recover_wait_for_no_worker(cli, pg_url):
    cli.db = pg_url
    cli.ok("migrate")
    name = default_worker_name()
    with dbmod.worker_lock(pg_url, name):
        assert error_line(cli("recover")) == (
            f'Error: another worker named "{name}" (pid {os.getpid()}) is running on {pg_url}; '
            "stop it first, or give this one another name ([worker] name, --name)")
        assert "worker    running (pid" in cli.ok("status")


def add(ledger, name, now):
    return add_job(ledger, JobSpec(name=name, kind="command", target="true", every=3600.0), now)


def test_concurrent_claims_never_take_two_runs_of_one_job(pg_database, pg_url):
    now = utcnow()
    first = Ledger(pg_database, worker="a:1")
    busy, other = add(first, "busy", now), add(first, "other", now)
    Task.delete().execute()  # only the manual runs below
    runs = [first.run_now(busy, now), first.run_now(busy, now), first.run_now(other, now)]
    second = Ledger(postgres.open_database(pg_url), worker="b:2")
    with pg_database.atomic():
        claimed = first._claim(now, False)
        assert claimed.task.id == runs[0].id
        # While the first claim's transaction is open, its job's other run is passed over.
        taken = second.claim(now)
        assert taken.task.id == runs[2].id
    assert second.claim(now) is None  # committed: the job runs, its second run waits
    row = second.db.execute_sql(POSTGRESQL["claim_take"], {"now": "x", "worker": "b:2",
                                                           "id": runs[1].id}).fetchone()
    assert row is None  # the claim's second step alone: refused while a run of the job runs
    first.finish(claimed, Outcome(True, 0, None, ""), now + timedelta(seconds=1))
    assert second.claim(now + timedelta(seconds=1)).task.id == runs[1].id
    second.db.close()


def test_metrics_render_from_postgresql(pg_database, tmp_path):
    pytest.importorskip("prometheus_client")
    from edgeworker.config import MetricsSettings
    from edgeworker.metrics import TextfileMetrics

    now = utcnow()
    ledger = Ledger(pg_database, worker="m:1")
    add(ledger, "tick", now)
    text = TextfileMetrics(MetricsSettings(textfile=tmp_path / "m.prom"), ledger).render()
    assert b'edgeworker_tasks{job="tick",status="created"} 1.0' in text


def test_without_the_driver_a_url_is_one_line(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    monkeypatch.setitem(sys.modules, "psycopg2.extensions", None)
    cli.db = url = "postgresql://edgeworker@/edgeworker?host=/run/postgresql"
    assert error_line(cli("status")) == (f"Error: {url}: PostgreSQL needs the psycopg2 driver: "
                                         "pip install 'edgeworker[postgres]'")


@pytest.mark.timeout(60)
def test_threads_claiming_at_once_run_each_task_once_and_each_job_once_at_a_time(pg_database,
                                                                                pg_url):
    import threading
    import time

    now = utcnow()
    ledger = Ledger(pg_database, worker="setup:1")
    jobs = [add(ledger, f"j{n}", now) for n in range(4)]
    Task.delete().execute()
    for job in jobs:  # each job's runs next to each other in the queue: the next one to take
        for _ in range(15):  # is often of a job whose claim is still open
            ledger.run_now(job, now)
    # A claim's transaction lingers between its UPDATE and its COMMIT (a trigger on the server),
    # so that other threads claim while it is open.
    pg_database.execute_sql(
        "CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.status = 'running' THEN PERFORM pg_sleep(0.005); END IF; RETURN NEW; END $$")
    pg_database.execute_sql("CREATE TRIGGER linger AFTER UPDATE ON tasks FOR EACH ROW "
                            "EXECUTE FUNCTION linger()")
    running: list[int] = []  # runs of its job running, as each claimer saw after its commit
    done: list[int] = []

    def work(n: int) -> None:
        mine = Ledger(postgres.open_database(pg_url), worker=f"t:{n}")
        deadline = time.monotonic() + 45
        try:
            while len(done) < 60 and time.monotonic() < deadline:
                run = mine.claim(now)
                if run is None:
                    time.sleep(0.001)
                    continue
                running.append(mine.db.execute_sql(
                    "SELECT count(*) FROM tasks WHERE status = 'running' AND job_id = %s",
                    (run.job.id,)).fetchone()[0])
                time.sleep(0.002)  # the run
                mine.finish(run, Outcome(True, 0, None, ""), now)
                done.append(run.task.id)
        finally:
            mine.db.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(running) == {1}  # (taking the job's row lock out of the claim: up to 4)
    assert sorted(done) == sorted(set(done)) and len(done) == 60
    rows = pg_database.execute_sql("SELECT status, attempt, count(*) FROM tasks "
                                   "GROUP BY status, attempt").fetchall()
    assert rows == [("succeeded", 1, 60)]


def test_the_worker_lock_is_taken_again_after_a_server_restart(pg_database, pg_url, pg_server):
    with dbmod.worker_lock(pg_url, "gw") as lock:
        assert lock.keep()
        pg_server.restart()  # the lock's session ends with the server
        assert dbmod.worker_pid(pg_url) is None
        assert lock.keep()  # taken again
        assert dbmod.worker_pid(pg_url) == os.getpid()
        pg_server.restart()
        with dbmod.worker_lock(pg_url, "gw"):  # another worker of the name was quicker
            assert not lock.keep()


def test_a_forked_child_of_a_dead_worker_does_not_keep_its_lock(pg_database, pg_url):
    """A callable's fork (a `multiprocessing` child) shares the lock session's socket: had it
    kept it, the session and its lock would outlive a SIGKILLed worker while the child lived."""
    import signal
    import subprocess

    code = ("import os, sys, time; from edgeworker import db; "
            "lock = db.worker_lock(sys.argv[1], 'gw').acquire(); pid = os.fork()\n"
            "if pid == 0: time.sleep(60); os._exit(0)\n"
            "print(pid, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE,
                              text=True)
    child = int(holder.stdout.readline())
    try:
        assert dbmod.worker_pid(pg_url) == holder.pid
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # alive, under PID 1 now
        with dbmod.worker_lock(pg_url, "gw") as lock:
            assert lock.keep()
    finally:
        holder.kill()
        holder.wait()
        os.kill(child, signal.SIGKILL)


def test_a_forked_child_closing_its_copy_leaves_the_workers_session_alone(pg_database):
    """Before, a child that closed what it inherited (at its exit, say) sent the server the
    goodbye of the worker's own session, on the socket they shared."""
    assert pg_database.execute_sql("SELECT 1").fetchone() == (1,)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            pg_database.close()
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert pg_database.execute_sql("SELECT 2").fetchone() == (2,)


def test_the_short_scheme_is_the_same_url(cli, pg_url):
    cli.db = pg_url.replace("postgresql://", "postgres://")
    assert cli.ok("migrate") == MIGRATED
    cli.db = pg_url
    assert cli.ok("migrate") == "up to date\n"


@pytest.mark.timeout(60)
def test_an_idle_thread_is_woken_by_a_commit_not_by_its_timeout(pg_database, pg_url):
    import threading

    from edgeworker.wakeup import Flag

    stop = Flag()
    watch = postgres.NotifyWatch(pg_url, stop)
    assert watch.wait(30) is True  # a new LISTEN may have missed a change: look at once
    assert watch.wait(0.05) is False  # nothing changed
    now = utcnow()
    job = add(Ledger(pg_database, worker="w:1"), "j", now)  # before the wait: notified already
    assert watch.wait(30) is True
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(watch.wait(30)))
    waiter.start()
    waiter.join(0.2)
    Ledger(pg_database, worker="w:1").run_now(job, now)  # `jobs run` from another connection
    waiter.join(20)  # long before the 30 s timeout, or the notification did not come
    assert woken == [True]
    waiter = threading.Thread(target=lambda: woken.append(watch.wait(30)))
    waiter.start()
    stop.set()
    waiter.join(20)
    assert woken == [True, False]
    watch.close()


def lease_lapses(database, name: str, seconds: float = 10.0) -> None:
    """Date a worker's last heartbeat `seconds` earlier by the server's clock: what not being
    heard from for that long leaves (no sleep)."""
    database.execute_sql("UPDATE workers SET beat_at = beat_at - %s WHERE name = %s",
                         (seconds, name))


def test_a_lease_is_judged_by_the_servers_clock(pg_database):
    now = utcnow()
    a, b = Ledger(pg_database, worker="gw-a"), Ledger(pg_database, worker="gw-b")
    add(a, "j", now)
    a.register(now - timedelta(days=400), 1.0, 2.0)  # its own clock is far behind: no matter
    b.register(now, 1.0, 2.0)
    run = a.claim(now + timedelta(days=1))
    assert recovery.expired(b) == []  # heard from just now, by the server
    lease_lapses(pg_database, "gw-a", 1.0)
    assert recovery.expired(b) == []  # within its lease
    lease_lapses(pg_database, "gw-a", 1.5)
    assert recovery.expired(b) == ["gw-a"]
    assert recovery.expired(a) == []  # a worker never takes its own name's runs
    a.heartbeat(now)  # back in time: its lease holds again
    assert recovery.expired(b) == []
    a.stopped(now)  # a graceful stop: its lease runs out as if it were silent
    assert recovery.expired(b) == []
    a.register(now, None, None)  # no lease (a row copied from a SQLite file): it holds nothing
    assert recovery.expired(b) == ["gw-a"]
    Worker.delete().where(Worker.name == "gw-a").execute()  # a name with no row holds nothing
    assert recovery.expired(b) == ["gw-a"] and run.task.worker == "gw-a"


def test_a_live_worker_recovers_an_expired_workers_runs_once(pg_database, caplog):
    now = utcnow()
    a, b = Ledger(pg_database, worker="gw-a"), Ledger(pg_database, worker="gw-b")
    job = add(a, "j", now)
    a.register(now, 1.0, 2.0)
    b.register(now, 1.0, 2.0)
    run = a.claim(now + timedelta(days=1))
    assert recovery.recover_expired(b, now) is None  # gw-a holds its lease
    lease_lapses(pg_database, "gw-a")
    todo = recovery.recover_expired(b, now)
    assert ([t.id for t in todo.recover], todo.owners) == ([run.task.id], ["gw-a"])
    assert recovery.recover_expired(b, now) is None  # nothing left to take
    last = report.last_recovery()
    assert (last["worker"], last["recovered_from"], last["task_ids"]) == (
        "gw-b", "gw-a", [run.task.id])
    assert "; gw-b took the runs of gw-a (task " in recovery_who(last)
    again = b.claim(now + timedelta(days=1))  # the recovery message: the same row, re-run
    assert (again.task.id, again.recovered, again.task.attempt) == (run.task.id, True, 2)
    assert again.args.recovering_attempt == 1 and again.task.worker == "gw-b"
    # gw-a comes back with its run's outcome: its compare-and-set on attempt 1 fails
    with caplog.at_level("INFO", "edgeworker.ledger"):
        a.finish(run, Outcome(True, 0, None, "late"), now)
    assert caplog.messages[-1] == (f"task {run.task.id} was recovered by gw-b after this "
                                   "worker's lease expired; its result is dropped")
    b.finish(again, Outcome(True, 0, None, "ok"), now)
    done = Task.get_by_id(run.task.id)
    assert (done.status, done.output, done.attempt) == ("succeeded", "ok", 2)
    pending = Task.select().where((Task.job == job.id) & Task.finished_at.is_null())
    assert [t.origin for t in pending] == ["schedule"]  # the chain goes on, once


def test_a_recovered_run_with_no_attempt_left_still_leaves_its_job_one_next_run(pg_database):
    now = utcnow()
    a, b = Ledger(pg_database, worker="gw-a"), Ledger(pg_database, worker="gw-b")
    job = add(a, "j", now)
    Job.update(max_attempts=1).where(Job.id == job.id).execute()
    a.register(now, 1.0, 2.0)
    b.register(now, 1.0, 2.0)
    run = a.claim(now + timedelta(days=1))
    lease_lapses(pg_database, "gw-a")
    todo = recovery.recover_expired(b, now)
    assert [(t.id, status.value) for t, status, _ in todo.close] == [(run.task.id, "failed")]
    assert todo.counts()["scheduled"] == 1
    pending = Task.select().where((Task.job == job.id) & Task.finished_at.is_null())
    assert [(t.origin, t.status) for t in pending] == [("schedule", "created")]


@pytest.mark.timeout(60)
def test_workers_racing_to_recover_recover_each_task_once(pg_database, pg_url):
    import threading

    now = utcnow()
    dead = Ledger(pg_database, worker="gw-dead")
    jobs = [add(dead, f"j{n}", now) for n in range(20)]
    dead.register(now, 1.0, 2.0)
    runs = [dead.claim(now + timedelta(days=1)) for _ in jobs]
    lease_lapses(pg_database, "gw-dead")
    barrier = threading.Barrier(4)
    plans = []

    def live(n: int) -> None:
        ledger = Ledger(pg_database, worker=f"gw-{n}")  # a connection of its own (per thread)
        try:
            barrier.wait()
            plans.append(recovery.recover_expired(ledger, now))
        finally:
            pg_database.close()

    threads = [threading.Thread(target=live, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [t.id for todo in plans if todo is not None for t in todo.recover]
    assert sorted(taken) == sorted(r.task.id for r in runs)
    rows = Recovery.select().where(Recovery.recovered_from == "gw-dead")
    assert sum(r.recovered for r in rows) == len(runs)
    assert [t.recovered_count for t in Task.select().where(Task.recovered_count > 0)] == [1] * 20


def test_a_connection_closed_mid_result_heals_and_a_value_error_does_not():
    # libpq reports a connection the server closed while a result was read as a bare
    # DatabaseError without SQLSTATE (seen in the PostgreSQL torture: a finish then recorded
    # nothing and left its run for the next start); psycopg2's own refusals must not be retried
    psycopg2 = postgres.driver()
    closed = psycopg2.DatabaseError("server closed the connection unexpectedly")
    wrapped = peewee.DatabaseError(str(closed))
    wrapped.__cause__ = closed
    assert postgres.heals(closed) and dbmod.heals(wrapped)
    assert not postgres.heals(psycopg2.ProgrammingError("can't adapt type 'object'"))
    assert not postgres.heals(ValueError("A string literal cannot contain NUL (0x00) characters."))
