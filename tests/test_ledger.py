"""The ledger's transitions on a real database, with an injected `now`."""

import os
from datetime import timedelta

import pytest
from commits import Commits

from edgeworker.clock import utcnow
from edgeworker.config import JobSpec
from edgeworker.jobs import add_job, set_paused
from edgeworker.ledger import IntervalJobArgs, Ledger, Outcome
from edgeworker.models import Job, Task
from edgeworker.queue import EdgeHuey


@pytest.fixture
def database(any_database):
    """Each test runs on SQLite and on PostgreSQL."""
    return any_database


@pytest.fixture
def ledger(database):
    return Ledger(database, worker="test:1")


def add(ledger, name="j", now=None, **options):
    spec = JobSpec(name=name, kind="command", target="true", every=options.pop("every", 60.0),
                   **options)
    return add_job(ledger, spec, now or utcnow())


def messages(ledger):
    """The queue: waiting rows, with the attempt a recovery re-runs."""
    return sorted((t.id, t.recovering_attempt) for t in ledger.waiting())


def take(ledger, now=None):
    """What a worker thread's dequeue does: claim the next due run, in one transaction."""
    return ledger.claim(now or utcnow() + timedelta(hours=2))


def test_a_new_job_gets_one_pending_run_with_its_message(ledger):
    job = add(ledger)
    [task] = Task.select()
    assert (task.job_id, task.status, task.origin, task.attempt) == (job.id, "created",
                                                                     "schedule", 0)
    assert messages(ledger) == [(task.id, None)]
    assert ledger.ensure_scheduled(job, utcnow()) is None  # never a second one


def test_a_claim_takes_a_run_once(ledger):
    add(ledger)
    first = take(ledger)
    assert first.task.status == "running" and first.task.attempt == 1
    assert take(ledger) is None  # nothing else is due: the running row is not claimable
    assert Task.get_by_id(1).attempt == 1
    ledger.finish(first, Outcome(True, 0, None, ""), utcnow())
    assert Task.get_by_id(1).attempt == 1
    assert messages(ledger) == [(2, None)]  # only the next scheduled run


def test_a_claimed_run_is_the_model_peewee_reads(ledger):
    """The claim builds its row's model without peewee's constructor: the same instance."""
    add(ledger)
    claimed = take(ledger).task
    read = Task.get_by_id(claimed.id)
    assert claimed.__data__ == read.__data__ and claimed.started_at.tzinfo is not None
    assert claimed._dirty == set(Task(**read.__data__)._dirty) and claimed.__rel__ == {}
    assert claimed.job == Task(**read.__data__).job == claimed.job_id  # the foreign key, too


def test_dequeue_and_claim_commit_once(ledger, database):
    add(ledger)
    commits = Commits(database)
    take(ledger)
    assert commits() == 1


def test_finish_records_and_schedules_the_next_run_in_one_commit(ledger, database):
    add(ledger)
    run = take(ledger)
    commits = Commits(database)
    now = utcnow()
    task = ledger.finish(run, Outcome(True, 0, None, "ok\n"), now)
    assert commits() == 1
    assert (task.status, task.exit_code, task.output) == ("succeeded", 0, "ok\n")
    [nxt] = Task.select().where(Task.status == "created")
    assert nxt.scheduled_for == run.task.scheduled_for + timedelta(seconds=60)
    assert messages(ledger) == [(nxt.id, None)]


def test_failure_with_attempts_left_goes_back_to_created_with_backoff(ledger):
    add(ledger, max_attempts=3, retry_delay=10.0)
    run = take(ledger)
    now = utcnow()
    task = ledger.finish(run, Outcome(False, 1, "exit status 1", ""), now)
    assert (task.status, task.attempt, task.error) == ("created", 1, "exit status 1")
    assert 5 <= (task.due_at - now).total_seconds() <= 10
    assert messages(ledger) == [(task.id, None)]
    assert Task.select().count() == 1  # no next slot until this one is done
    run = take(ledger)
    assert run.task.attempt == 2


def test_last_failure_fails_and_moves_on(ledger):
    add(ledger, max_attempts=1)
    run = take(ledger)
    task = ledger.finish(run, Outcome(False, 2, "exit status 2", ""), utcnow())
    assert task.status == "failed"
    assert [t.status for t in Task.select().order_by(Task.id)] == ["failed", "created"]


def test_recovery_message_resets_then_claims_and_a_duplicate_does_nothing(ledger):
    add(ledger, max_attempts=3)
    run = take(ledger)  # the worker dies here: the task stays running, attempt 1
    ledger.enqueue_recoveries([run.task], utcnow())
    ledger.enqueue_recoveries([run.task], utcnow())  # e.g. a second start before the first ran it
    again = take(ledger)
    assert again.recovered is True
    assert (again.task.status, again.task.attempt, again.task.recovered_count) == ("running", 2,
                                                                                  1)
    assert take(ledger) is None
    assert Task.get_by_id(run.task.id).recovered_count == 1


def test_the_claim_passes_over_runs_of_a_paused_or_removed_job(ledger):
    job = add(ledger)
    ledger.run_now(job, utcnow())
    Job.update(paused=True).where(Job.id == job.id).execute()  # behind the ledger's back
    assert take(ledger) is None
    assert [t.status for t in Task.select()] == ["created"] * 2  # recovery cancels them
    other = add(ledger, "other")
    Job.delete().where(Job.id == other.id).execute()
    assert take(ledger) is None
    Job.update(paused=False).where(Job.id == job.id).execute()
    assert take(ledger).job.id == job.id


def test_one_job_never_runs_twice_at_once(ledger):
    job = add(ledger)
    first = take(ledger)
    ledger.run_now(job, utcnow())  # an operator's `jobs run` while the scheduled run runs
    now = utcnow()
    assert take(ledger, now) is None  # deferred, not dropped
    [(task_id, _)] = messages(ledger)
    assert Task.get_by_id(task_id).status == "created"
    ledger.finish(first, Outcome(True, 0, None, ""), now)
    assert take(ledger, now + timedelta(hours=3)).task.id == task_id


def test_message_without_task_id_creates_the_row(ledger):
    job = add(ledger)
    EdgeHuey(ledger).run(IntervalJobArgs(job.id))  # through huey's enqueue
    run = take(ledger, utcnow())
    assert (run.task.origin, run.task.status, run.task.attempt) == ("manual", "running", 1)


def test_pause_cancels_waiting_runs_and_resume_schedules_the_next_slot(ledger):
    job = add(ledger)
    set_paused(ledger, job.name, True, utcnow())
    assert [t.status for t in Task.select()] == ["cancelled"]
    set_paused(ledger, job.name, False, utcnow())
    assert [t.status for t in Task.select().order_by(Task.id)] == ["cancelled", "created"]


def test_prune_deletes_only_old_finished_tasks(ledger):
    add(ledger)
    run = take(ledger)
    old = utcnow() - timedelta(days=10)
    ledger.finish(run, Outcome(True, 0, None, ""), old)
    assert ledger.prune(utcnow() - timedelta(days=7)) == 1
    assert [t.status for t in Task.select()] == ["created"]
    assert ledger.prune(utcnow()) == 0


def test_no_schedule_arithmetic_while_the_write_lock_is_held(ledger, database, monkeypatch):
    from edgeworker import schedule

    seen = []
    for name in ("next_run", "due_at", "retry_delay"):
        original = getattr(schedule, name)

        def watched(*args, _original=original, _name=name):
            seen.append((_name, database.in_transaction()))
            return _original(*args)

        monkeypatch.setattr(schedule, name, watched)
    job = add(ledger, max_attempts=2)
    ledger.cancel_waiting(job.id, "test", utcnow())
    seen.clear()
    ledger.ensure_scheduled(job, utcnow())
    assert seen and not any(locked for _, locked in seen)
    run = take(ledger)
    seen.clear()
    ledger.finish(run, Outcome(False, 1, "exit status 1", ""), utcnow())  # a retry
    run = take(ledger)
    ledger.finish(run, Outcome(True, 0, None, ""), utcnow())  # the next slot
    assert {name for name, _ in seen} == {"next_run", "due_at", "retry_delay"}
    assert not any(locked for _, locked in seen)
    assert Task.select().where(Task.status == "created").count() == 1


def test_a_job_edited_while_it_ran_is_planned_with_its_new_schedule(ledger):
    job = add(ledger)
    run = take(ledger)
    Job.update(every_seconds=300.0).where(Job.id == job.id).execute()
    ledger.finish(run, Outcome(True, 0, None, ""), utcnow())
    [nxt] = Task.select().where(Task.status == "created")
    assert nxt.scheduled_for == schedule_after(run.task.scheduled_for, 300)


def schedule_after(slot, every):
    from edgeworker import schedule

    class Every:
        every_seconds = every

    return schedule.next_slot(Every, slot)


def test_a_schedule_that_fails_at_run_time_still_records_the_outcome(ledger, caplog):
    job = add(ledger, name="odd")
    run = take(ledger)
    # a schedule no current version accepts, stored by an older one: never fires
    Job.update(every_seconds=None, cron="0 0 31 2 *", timezone="UTC").where(
        Job.id == job.id).execute()
    task = ledger.finish(run, Outcome(True, 0, None, ""), utcnow())
    assert Task.get_by_id(task.id).status == "succeeded"
    assert Task.select().where(Task.status == "created").count() == 0
    assert 'job "odd": cannot compute a run time for cron "0 0 31 2 *" (UTC): the expression ' \
           "matches no date (it never fires); no further run is scheduled until the job is " \
           "changed" in caplog.text


def test_a_catch_up_flood_lets_another_jobs_due_run_go_first(ledger):
    # `backlog` owes 50 runs after downtime; `tick` runs every second. A catch-up run is queued
    # with the time it was created, so a tick that fell due before then is taken first. (Before,
    # each catch-up run went to the queue ahead of every scheduled run: the tick waited.)
    now = utcnow()
    tick = add(ledger, name="tick", every=1.0, now=now)
    backlog = add(ledger, name="backlog", every=60.0, catch_up="all", catch_up_limit=100,
                  now=now)
    Task.delete().where(Task.job == backlog.id).execute()
    ledger.schedule_next(backlog, now - timedelta(minutes=50), now)
    tick_slot = Task.get((Task.job == tick.id) & (Task.status == "created")).scheduled_for

    later = tick_slot + timedelta(milliseconds=500)
    first = ledger.claim(later)  # queued before the tick fell due: first
    assert first.job.name == "backlog"
    ledger.finish(first, Outcome(True, 0, None, ""), later)
    second = ledger.claim(later)
    assert (second.job.name, second.task.scheduled_for) == ("tick", tick_slot)
    third = ledger.claim(later)
    assert third.job.name == "backlog"


def test_runs_are_taken_in_the_order_they_fell_due(ledger):
    now = utcnow()
    job = add(ledger, name="tick", every=1.0, now=now)
    other = add(ledger, name="other", every=3600.0, now=now)
    manual = ledger.run_now(other, now + timedelta(seconds=5))
    assert ledger.claim(now + timedelta(seconds=5)).job.id == job.id  # due at +1 s
    assert ledger.claim(now + timedelta(seconds=5)).task.id == manual.id


def test_finishing_catch_up_runs_costs_a_few_croniter_steps_each(ledger, monkeypatch):
    # A per-minute cron job back after 10 days with catch_up_limit = 2000: the first plan counts
    # back 2000 cron times once; then each finished run costs a few steps, not 2000 more.
    from croniter import croniter

    steps = {"n": 0}
    for name in ("get_next", "get_prev"):
        original = getattr(croniter, name)

        def counted(self, *args, _original=original, **kwargs):
            steps["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(croniter, name, counted)
    # half a minute into a minute: no minute boundary while the test runs
    now = (utcnow() + timedelta(minutes=2)).replace(second=30, microsecond=0)
    spec = JobSpec(name="minutely", kind="command", target="true", cron="* * * * *",
                   timezone="UTC", catch_up="all", catch_up_limit=2000)
    job = add_job(ledger, spec, now)
    Task.delete().where(Task.job == job.id).execute()
    ledger.schedule_next(job, now - timedelta(days=10), now)
    steps["n"] = 0
    slots = []
    for i in range(100):
        run = ledger.claim(now + timedelta(milliseconds=i))
        slots.append(run.task.scheduled_for)
        ledger.finish(run, Outcome(True, 0, None, ""), now + timedelta(milliseconds=i))
    assert slots == [slots[0] + timedelta(minutes=k) for k in range(100)]
    assert slots[0] == (now - timedelta(minutes=1999)).replace(second=0, microsecond=0)
    assert steps["n"] <= 5 * 100


def test_a_waiting_run_writes_nothing_while_its_job_runs(ledger, database):
    job = add(ledger)
    first = take(ledger)
    waiting = ledger.run_now(job, utcnow())  # `jobs run` while the scheduled run runs
    commits = Commits(database)
    for _ in range(5):  # a worker thread looking again and again
        assert take(ledger, utcnow()) is None
    assert commits() == 0
    assert (waiting.id, None) in messages(ledger)
    assert ledger.next_due() is None or \
        ledger.next_due() > utcnow()  # nothing due that a thread could take
    ledger.finish(first, Outcome(True, 0, None, ""), utcnow())
    assert take(ledger, utcnow()).task.id == waiting.id


def test_a_row_that_cannot_be_read_fails_and_the_queue_goes_on(ledger, database):
    add(ledger)
    other = add(ledger, "other")
    database.execute_sql("UPDATE tasks SET scheduled_for = 'not a time' WHERE id = 1")
    now = utcnow() + timedelta(hours=2)
    assert take(ledger, now) is None  # the unreadable row: failed, saying why
    row = database.execute_sql("SELECT status, error FROM tasks WHERE id = 1").fetchone()
    assert row[0] == "failed" and row[1].startswith("cannot read this run's row: ")
    assert take(ledger, now).job.id == other.id


@pytest.mark.timeout(20)
def test_an_outcome_sqlite_cannot_store_is_recorded_as_the_runs_error(ledger):
    from edgeworker.worker import IntervalJobWorker

    add(ledger, max_attempts=1)
    run = take(ledger)
    # a traceback naming a file whose name is not UTF-8 (os.fsdecode keeps it as surrogates)
    error = "FileNotFoundError: " + os.fsdecode(b"/data/caf\xe9.csv")
    task = IntervalJobWorker(ledger).finish(run, Outcome(False, None, error, ""))
    assert task.status == "failed"
    assert task.error.startswith("cannot record this run's outcome (UnicodeEncodeError: ")
    assert task.error.endswith("it failed: FileNotFoundError: /data/caf\\udce9.csv")
    assert Task.get_by_id(run.task.id).status == "failed"


def test_a_waiting_run_does_not_hold_up_other_jobs(ledger):
    busy, other = add(ledger, "busy"), add(ledger, "other")
    now = utcnow()
    ledger.run_now(busy, now)
    assert take(ledger, now).job.id == busy.id  # running here from now on
    waiting = ledger.run_now(busy, now)
    later = ledger.run_now(other, now)  # queued after the waiting one
    assert take(ledger, now).task.id == later.id
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
    models.bind(database)
    ledger = Ledger(database, worker="test:1")
    add(ledger)
    run = take(ledger)
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


def test_an_outcome_and_the_next_claim_commit_once(ledger, database):
    job = add(ledger)
    now = utcnow()
    first, second = ledger.run_now(job, now), ledger.run_now(job, now)
    Task.delete().where(Task.origin == "schedule").execute()
    run = ledger.claim(now)
    assert run.task.id == first.id
    commits = Commits(database)
    task, following = ledger.finish_and_claim(run, Outcome(True, 0, None, ""), now)
    assert commits() == 1  # a burst of runs: one commit a run
    assert (task.status, following.task.id, following.task.status) == ("succeeded", second.id,
                                                                      "running")
    assert ledger.finish_and_claim(following, Outcome(True, 0, None, ""), now)[1] is None


def test_a_run_claimed_for_later_is_given_back_when_the_thread_stops(ledger):
    job = add(ledger)
    huey = EdgeHuey(ledger)
    run = ledger.claim(utcnow() + timedelta(hours=2))
    huey.storage.keep(run)  # claimed with the last outcome, not started
    huey.storage.release()  # the thread stops instead
    row = Task.get_by_id(run.task.id)
    assert (row.status, row.attempt, row.started_at) == ("created", 0, None)
    assert ledger.claim(utcnow() + timedelta(hours=2)).task.id == run.task.id
    assert job.id == run.job.id
