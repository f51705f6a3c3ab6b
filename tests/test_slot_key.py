"""A job's next scheduled run is created once, however many workers finish or recover at the same
moment: on PostgreSQL a unique key on a job's waiting scheduled run (tasks_next_run, migration
021), on SQLite the one writer at a time (recovery plans inside its write transaction). Real
connections, real threads, a barrier."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import peewee
import pytest

from edgeworker import migrate, recovery
from edgeworker.clock import to_text, utcnow
from edgeworker.config import JobSpec
from edgeworker.db import open_database
from edgeworker.jobs import add_job
from edgeworker.ledger import Ledger, Outcome
from edgeworker.models import Task
from edgeworker.processes import ProcessTable

ROUNDS = 8


def waiting_slots(job_id: int) -> list[tuple]:
    return list(Task.select(Task.scheduled_for, Task.status)
                .where((Task.job == job_id) & (Task.origin == "schedule")
                       & Task.finished_at.is_null()).tuples())


def at_once(database, *calls) -> list:
    """Run the calls in threads released together, each on a connection of its own (peewee's
    are per thread), as workers on other hosts; their results, or the first error."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call) -> None:
        try:
            database.connect(reuse_if_open=True)
            barrier.wait(10)
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if errors:
        raise errors[0]
    return results


@pytest.mark.timeout(120)
def test_recoveries_at_once_schedule_a_job_once(any_database):
    now = utcnow()
    spec = JobSpec(name="tick", kind="command", target="true", every=60.0, catch_up="once")
    job = add_job(Ledger(any_database, worker="setup:1"), spec, now)
    ledgers = [Ledger(any_database, worker=f"w:{n}") for n in range(2)]
    table = ProcessTable.for_database(any_database.database, use_cgroups=False)
    try:
        for round_ in range(ROUNDS):
            # the job lost its waiting run (as after downtime): each worker's start recovers it
            Task.delete().where((Task.job == job.id) & Task.finished_at.is_null()).execute()
            later = now + timedelta(minutes=round_)
            plans = at_once(any_database, *[
                lambda ledger=ledger, later=later: recovery.recover(ledger, later, table)
                for ledger in ledgers])
            assert len(waiting_slots(job.id)) == 1, round_
            # and the recoveries' records say that one of them scheduled it
            assert sorted(plan.counts()["scheduled"] for plan in plans) == [0, 1]
    finally:
        table.close()


@pytest.mark.timeout(60)
def test_a_finish_and_a_recovery_at_once_create_one_next_run(pg_database):
    now = utcnow()
    job = add_job(Ledger(pg_database, worker="setup:1"),
                  JobSpec(name="tick", kind="command", target="true", every=60.0), now)
    first, second = Ledger(pg_database, worker="a:1"), Ledger(pg_database, worker="b:2")
    for round_ in range(ROUNDS):
        run = first.claim(now + timedelta(hours=round_ + 1))
        slot = run.task.scheduled_for
        # the finish creates the slot after `slot`; a worker that saw the job without a waiting
        # run (its recovery) creates the same one
        finished, scheduled = at_once(
            pg_database, lambda run=run: first.finish(run, Outcome(True, 0, None, ""), now),
            lambda run=run, slot=slot: second.schedule_next(run.job, slot, now))
        assert finished.status == "succeeded"  # the finish is recorded either way
        [(next_slot, status)] = waiting_slots(job.id)
        assert (next_slot, status) == (slot + timedelta(minutes=1), "created")
        assert scheduled is None or scheduled.scheduled_for == next_slot


@pytest.mark.timeout(60)
def test_a_second_insert_waits_for_the_first_and_finds_the_run_there(pg_database):
    now = utcnow()
    job = add_job(Ledger(pg_database, worker="setup:1"),
                  JobSpec(name="tick", kind="command", target="true", every=60.0), now)
    Task.delete().execute()
    first, second = Ledger(pg_database, worker="a:1"), Ledger(pg_database, worker="b:2")
    found: list = []

    def other_worker() -> None:
        try:
            found.append(second.schedule_next(job, None, now + timedelta(minutes=5)))
        finally:
            pg_database.close()

    with pg_database.atomic():
        made = first.schedule_next(job, None, now)
        # the second worker's INSERT (of a later slot) waits on the first's uncommitted key
        thread = threading.Thread(target=other_worker)
        thread.start()
        deadline = time.monotonic() + 20
        while not pg_database.execute_sql(  # (a new snapshot of the view each time)
                "SELECT pg_stat_clear_snapshot(), count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO tasks%%'"
        ).fetchone()[1]:
            assert time.monotonic() < deadline and thread.is_alive(), "no INSERT waited"
            time.sleep(0.02)
    thread.join(20)
    assert found == [None]
    assert waiting_slots(job.id) == [(made.scheduled_for, "created")]


def test_ensure_scheduled_finds_another_workers_next_run(pg_database):
    """The `jobs sync` / `jobs resume` path, its look for a waiting run passed (READ COMMITTED:
    another worker's next run committed after it looked), a moment later: another slot."""
    now = utcnow()
    job = add_job(Ledger(pg_database, worker="setup:1"),
                  JobSpec(name="tick", kind="command", target="true", every=60.0), now)
    [existing] = waiting_slots(job.id)
    ledger = Ledger(pg_database, worker="b:2")
    ledger.pending_scheduled = lambda job_id: None  # it looked before the other's commit
    assert ledger.ensure_scheduled(job, now + timedelta(minutes=5), catch_up=False) is None
    assert waiting_slots(job.id) == [existing]


def test_021_cancels_second_waiting_runs_and_keeps_their_rows(pg_url):
    database = open_database(pg_url, create=True)
    todo = migrate.plan(database, migrate.for_database(database))
    migrate.apply(database, [m for m in todo if m.version < 21])
    sql = database.execute_sql
    for id_ in (1, 2, 3):
        sql("INSERT INTO jobs (id, name, kind, target, every_seconds, created_at, updated_at) "
            "VALUES (%s, %s, 'command', 'true', 60, 'x', 'x')", (id_, f"j{id_}"))
    rows = [  # id, job, status, origin, slot, finished
        (1, 1, "created", "schedule", "s2", None), (2, 1, "running", "schedule", "s3", None),
        (3, 1, "created", "schedule", "s1", None), (4, 2, "created", "schedule", "s2", None),
        (5, 2, "created", "manual", "s2", None), (6, 2, "succeeded", "schedule", "s1", "f"),
        (7, 3, "created", "schedule", "s3", None), (8, 3, "created", "schedule", "s2", None),
        (9, None, "created", "schedule", "s1", None), (10, None, "created", "schedule", "s1", None)]
    for row in rows:
        sql("INSERT INTO tasks (id, job_id, status, origin, scheduled_for, due_at, created_at, "
            "finished_at) VALUES (%s, %s, %s, %s, %s, 'd', 'c', %s)", row)
    migrate.apply(database, migrate.plan(database, migrate.for_database(database)))
    after = sql("SELECT id, status, error FROM tasks ORDER BY id").fetchall()
    reason = "a second scheduled run of the job: task {} is its next run (migration 021)"
    assert after == [(1, "cancelled", reason.format(2)), (2, "running", None),
                     (3, "cancelled", reason.format(2)), (4, "created", None),
                     (5, "created", None), (6, "succeeded", None),
                     (7, "cancelled", reason.format(8)), (8, "created", None),
                     (9, "created", None), (10, "created", None)]  # no job: no key
    stamp = sql("SELECT finished_at FROM tasks WHERE id = 1").fetchone()[0]
    assert len(stamp) == len(to_text(utcnow())) and stamp.endswith("Z")
    with pytest.raises(peewee.IntegrityError, match="tasks_next_run"):
        with database.atomic():
            sql("INSERT INTO tasks (id, job_id, scheduled_for, due_at, created_at) "
                "VALUES (11, 2, 's9', 'd', 'c')")
    database.close()
