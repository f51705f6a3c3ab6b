"""The ledger's transitions on a real database, with an injected `now`."""

import os
from datetime import timedelta

import pytest
from waltools import reset_wal, wal_commits

from edgeworker.clock import utcnow
from edgeworker.config import JobSpec
from edgeworker.jobs import add_job, set_paused
from edgeworker.ledger import Ledger, Outcome
from edgeworker.models import Job, Task
from edgeworker.queue import EdgeHuey, IntervalJobArgs


@pytest.fixture
def ledger(database):
    return Ledger(EdgeHuey(database), worker="test:1")


def add(ledger, name="j", now=None, **options):
    spec = JobSpec(name=name, kind="command", target="true", every=options.pop("every", 60.0),
                   **options)
    return add_job(ledger, spec, now or utcnow())


def messages(ledger):
    return sorted((a.task_id, a.recovering_attempt) for a in ledger.huey.payloads())


def take(ledger, now=None):
    """What a worker thread does: dequeue (which claims) in one transaction."""
    ledger.huey.bind(ledger.claim, lambda args, run: None)
    return ledger.huey.dequeue(now or utcnow() + timedelta(hours=2))


def test_a_new_job_gets_one_pending_run_with_its_message(ledger):
    job = add(ledger)
    [task] = Task.select()
    assert (task.job_id, task.status, task.origin, task.attempt) == (job.id, "created",
                                                                     "schedule", 0)
    assert messages(ledger) == [(task.id, None)]
    assert ledger.ensure_scheduled(job, utcnow()) is None  # never a second one


def test_claim_is_compare_and_set(ledger):
    add(ledger)
    ledger.huey.put(IntervalJobArgs(1, 1))  # a duplicate message for the same task
    first = take(ledger)
    assert first.claimed.task.status == "running" and first.claimed.task.attempt == 1
    assert take(ledger) is None  # the duplicate waits while its job runs here, not run
    assert Task.get_by_id(1).attempt == 1
    ledger.finish(first.claimed, Outcome(True, 0, None, ""), utcnow())
    assert take(ledger, Task.get_by_id(1).due_at) is None  # then dropped: the task is finished
    assert Task.get_by_id(1).attempt == 1
    assert messages(ledger) == [(2, None)]  # only the next scheduled run


def test_dequeue_and_claim_commit_once(ledger, database):
    add(ledger)
    reset_wal(database)
    take(ledger)
    assert wal_commits(database.database) == 1


def test_finish_records_and_schedules_the_next_run_in_one_commit(ledger, database):
    add(ledger)
    run = take(ledger).claimed
    reset_wal(database)
    now = utcnow()
    task = ledger.finish(run, Outcome(True, 0, None, "ok\n"), now)
    assert wal_commits(database.database) == 1
    assert (task.status, task.exit_code, task.output) == ("succeeded", 0, "ok\n")
    [nxt] = Task.select().where(Task.status == "created")
    assert nxt.scheduled_for == run.task.scheduled_for + timedelta(seconds=60)
    assert messages(ledger) == [(nxt.id, None)]


def test_failure_with_attempts_left_goes_back_to_created_with_backoff(ledger):
    add(ledger, max_attempts=3, retry_delay=10.0)
    run = take(ledger).claimed
    now = utcnow()
    task = ledger.finish(run, Outcome(False, 1, "exit status 1", ""), now)
    assert (task.status, task.attempt, task.error) == ("created", 1, "exit status 1")
    assert 5 <= (task.due_at - now).total_seconds() <= 10
    assert messages(ledger) == [(task.id, None)]
    assert Task.select().count() == 1  # no next slot until this one is done
    run = take(ledger).claimed
    assert run.task.attempt == 2


def test_last_failure_fails_and_moves_on(ledger):
    add(ledger, max_attempts=1)
    run = take(ledger).claimed
    task = ledger.finish(run, Outcome(False, 2, "exit status 2", ""), utcnow())
    assert task.status == "failed"
    assert [t.status for t in Task.select().order_by(Task.id)] == ["failed", "created"]


def test_recovery_message_resets_then_claims_and_a_duplicate_does_nothing(ledger):
    add(ledger, max_attempts=3)
    run = take(ledger).claimed  # the worker dies here: the task stays running, attempt 1
    ledger.huey.running_jobs.clear()  # the next worker runs nothing yet
    ledger.enqueue_recoveries([run.task])
    ledger.enqueue_recoveries([run.task])  # e.g. a second start before the first ran it
    again = take(ledger).claimed
    assert again.recovered is True
    assert (again.task.status, again.task.attempt, again.task.recovered_count) == ("running", 2,
                                                                                  1)
    assert take(ledger) is None
    assert Task.get_by_id(run.task.id).recovered_count == 1


def test_claim_cancels_the_task_of_a_paused_or_removed_job(ledger):
    job = add(ledger)
    ledger.run_now(job, utcnow())
    Job.update(paused=True).where(Job.id == job.id).execute()  # behind the ledger's back
    assert take(ledger) is None
    assert [(t.status, t.error) for t in Task.select()] == [
        ("cancelled", "job paused or disabled")] * 2
    other = add(ledger, "other")
    Job.delete().where(Job.id == other.id).execute()
    assert take(ledger) is None
    assert Task.select().where(Task.error == "job removed").count() == 1


def test_one_job_never_runs_twice_at_once(ledger):
    job = add(ledger)
    first = take(ledger).claimed
    ledger.run_now(job, utcnow())  # an operator's `jobs run` while the scheduled run runs
    now = utcnow()
    assert take(ledger, now) is None  # deferred, not dropped
    [(task_id, _)] = messages(ledger)
    assert Task.get_by_id(task_id).status == "created"
    ledger.finish(first, Outcome(True, 0, None, ""), now)
    assert take(ledger, now + timedelta(hours=3)).claimed.task.id == task_id


def test_message_without_task_id_creates_the_row(ledger):
    job = add(ledger)
    ledger.huey.put(IntervalJobArgs(job.id))
    run = take(ledger, utcnow()).claimed
    assert (run.task.origin, run.task.status, run.task.attempt) == ("manual", "running", 1)


def test_pause_cancels_waiting_runs_and_resume_schedules_the_next_slot(ledger):
    job = add(ledger)
    set_paused(ledger, job.name, True, utcnow())
    assert [t.status for t in Task.select()] == ["cancelled"]
    set_paused(ledger, job.name, False, utcnow())
    assert [t.status for t in Task.select().order_by(Task.id)] == ["cancelled", "created"]


def test_prune_deletes_only_old_finished_tasks(ledger):
    add(ledger)
    run = take(ledger).claimed
    old = utcnow() - timedelta(days=10)
    ledger.finish(run, Outcome(True, 0, None, ""), old)
    assert ledger.prune(utcnow() - timedelta(days=7)) == 1
    assert [t.status for t in Task.select()] == ["created"]
    assert ledger.prune(utcnow()) == 0


@pytest.mark.parametrize("json_functions", [True, False], ids=["sql", "python"])
def test_a_deferred_run_writes_nothing_while_it_waits(ledger, database, json_functions):
    ledger.huey.storage.json_functions = json_functions
    job = add(ledger)
    first = take(ledger).claimed
    waiting = ledger.run_now(job, utcnow())  # `jobs run` while the scheduled run runs
    reset_wal(database)
    for _ in range(5):  # a worker thread looking again and again
        assert take(ledger, utcnow()) is None
    assert wal_commits(database.database) == 0
    assert (waiting.id, None) in messages(ledger)
    assert ledger.huey.storage.next_due() is None or \
        ledger.huey.storage.next_due() > utcnow()  # nothing due that a thread could take
    ledger.finish(first, Outcome(True, 0, None, ""), utcnow())
    assert take(ledger, utcnow()).claimed.task.id == waiting.id


def test_a_claim_that_fails_keeps_its_message(ledger, database):
    add(ledger)
    database.execute_sql("UPDATE tasks SET scheduled_for = 'not a time' WHERE id = 1")
    now = utcnow() + timedelta(hours=2)
    assert take(ledger, now) is None
    assert messages(ledger) == [(1, None)]  # tried again later, not dropped
    assert Task.select().where(Task.status == "created").count() == 1
    assert not ledger.huey.storage.has_ready(now)  # not at once: no busy loop


@pytest.mark.timeout(20)
def test_an_outcome_sqlite_cannot_store_is_recorded_as_the_runs_error(ledger):
    from edgeworker.worker import IntervalJobWorker

    add(ledger, max_attempts=1)
    run = take(ledger).claimed
    # a traceback naming a file whose name is not UTF-8 (os.fsdecode keeps it as surrogates)
    error = "FileNotFoundError: " + os.fsdecode(b"/data/caf\xe9.csv")
    task = IntervalJobWorker(ledger).finish(run, Outcome(False, None, error, ""))
    assert task.status == "failed"
    assert task.error.startswith("cannot record this run's outcome (UnicodeEncodeError: ")
    assert task.error.endswith("it failed: FileNotFoundError: /data/caf\\udce9.csv")
    assert Task.get_by_id(run.task.id).status == "failed"


@pytest.mark.parametrize("json_functions", [True, False], ids=["sql", "python"])
def test_a_waiting_run_does_not_hold_up_other_jobs(ledger, json_functions):
    ledger.huey.storage.json_functions = json_functions
    busy, other = add(ledger, "busy"), add(ledger, "other")
    now = utcnow()
    ledger.run_now(busy, now)
    assert take(ledger, now).claimed.job.id == busy.id  # running here from now on
    waiting = ledger.run_now(busy, now)
    later = ledger.run_now(other, now)  # queued after the waiting one
    assert take(ledger, now).claimed.task.id == later.id
    assert (waiting.id, None) in messages(ledger)


@pytest.mark.timeout(30)
def test_an_outcome_is_recorded_once_a_lock_that_held_it_up_is_gone(tmp_path, caplog):
    import sqlite3
    import threading

    from edgeworker import db as dbmod
    from edgeworker import migrate, models
    from edgeworker.worker import IntervalJobWorker

    database = dbmod.open_database(tmp_path / "locked.db", create=True, busy_timeout=0.05)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    models.database.initialize(database)
    ledger = Ledger(EdgeHuey(database), worker="test:1")
    add(ledger)
    run = take(ledger).claimed
    other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
    threading.Timer(1.5, other.rollback).start()
    task = IntervalJobWorker(ledger).finish(run, Outcome(True, 0, None, "done"))
    other.close()
    database.close()
    assert (task.status, task.output) == ("succeeded", "done")
    retries = [r.getMessage() for r in caplog.records if "cannot record" in r.getMessage()]
    assert retries == [f"task {run.task.id}: cannot record its outcome (database is locked by "
                       "another process (busy timeout expired); try again); retrying, at most "
                       "every 30s"]
