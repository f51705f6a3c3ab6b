"""What an operator may do to a run or a job, asked of the ledger and the job catalog directly on
a real database: each refusal with the one-line message the CLI prints."""

from datetime import timedelta

import pytest

from edgeworker.clock import utcnow
from edgeworker.config import JobSpec
from edgeworker.errors import Conflict, NotFound
from edgeworker.jobs import add_job, remove_job, set_paused
from edgeworker.ledger import Ledger, Outcome
from edgeworker.models import Task

NOW = utcnow()


@pytest.fixture
def ledger(database):
    return Ledger(database, worker="test:1")


def add(ledger, name="j", kind="command", target="true", **options):
    spec = JobSpec(name=name, kind=kind, target=target, every=3600.0, **options)
    return add_job(ledger, spec, NOW)


def claim(ledger):
    """What a worker thread does: dequeue, which claims the next due run."""
    return ledger.claim(NOW + timedelta(hours=2))


def end(ledger, status: str):
    """A job whose first run ended `status` (or is `created` / `running`); returns that task."""
    job = add(ledger)
    if status == "created":
        return Task.get_by_id(1)
    run = claim(ledger)
    if status == "succeeded":
        ledger.finish(run, Outcome(True, 0), NOW)
    elif status == "failed":
        job.max_attempts = 1
        job.save()
        ledger.finish(run, Outcome(False, 1, "exit status 1"), NOW)
    elif status == "cancelled":
        ledger.cancel_task(run.task.id, "test", NOW)
    task = Task.get_by_id(run.task.id)
    assert task.status == status
    return task


def refused(error, call) -> str:
    with pytest.raises(error) as caught:
        call()
    return str(caught.value)


# -- retry --------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_retry_queues_a_manual_run_for_the_same_slot(ledger, status):
    task = end(ledger, status)
    new = ledger.retry(task.id, NOW)
    row = Task.get_by_id(new.id)
    assert (row.status, row.origin, row.job_id, row.scheduled_for) == (
        "created", "manual", task.job_id, task.scheduled_for)
    assert Task.get_by_id(task.id).status == status  # the old run keeps its outcome


@pytest.mark.parametrize("status", ["succeeded", "created", "running"])
def test_retry_refuses_a_run_that_did_not_fail_or_was_not_cancelled(ledger, status):
    task = end(ledger, status)
    before = Task.select().count()
    assert refused(Conflict, lambda: ledger.retry(task.id, NOW)) == (
        f"task {task.id} is {status}; only failed or cancelled tasks can be retried")
    assert Task.select().count() == before


def test_retry_refuses_a_run_whose_job_was_removed(ledger):
    task = end(ledger, "failed")
    remove_job(ledger, "j", NOW)
    before = Task.select().count()
    assert refused(Conflict, lambda: ledger.retry(task.id, NOW)) == (
        f"task {task.id}'s job no longer exists")
    assert Task.select().count() == before


@pytest.mark.parametrize("task_id", [99, 0, -1, 2**63, 2**70])
def test_retry_and_cancel_of_no_such_task(ledger, task_id):
    add(ledger)
    message = f"no task with id {task_id}"  # not an OverflowError past SQLite's 64 bits
    assert refused(NotFound, lambda: ledger.retry(task_id, NOW)) == message
    assert refused(NotFound, lambda: ledger.cancel_task(task_id, "test", NOW)) == message


# -- cancel -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_refuses_a_run_that_has_ended(ledger, status):
    task = end(ledger, status)
    assert refused(Conflict, lambda: ledger.cancel_task(task.id, "test", NOW)) == (
        f"task {task.id} is {status}; only a waiting or running task can be cancelled")
    after = Task.get_by_id(task.id)
    assert (after.status, after.error) == (task.status, task.error)


def test_cancel_of_a_waiting_scheduled_run_schedules_the_next_slot(ledger):
    add(ledger)
    task, name = ledger.cancel_task(1, "cancelled by test", NOW)
    assert (task.status, name) == ("created", "j")  # as it was: it had not started
    cancelled, following = Task.select().order_by(Task.id)
    assert (cancelled.status, cancelled.error) == ("cancelled", "cancelled by test")
    assert (following.status, following.origin) == ("created", "schedule")
    assert following.scheduled_for - cancelled.scheduled_for == timedelta(hours=1)


def test_cancel_of_a_running_command(ledger):
    add(ledger)
    run = claim(ledger)
    task, name = ledger.cancel_task(run.task.id, "cancelled by test", NOW)
    assert (task.status, task.attempt, name) == ("running", 1, "j")
    assert ledger.cancelled(run.task.id, 1) == "cancelled by test"  # what its worker sees


def test_cancel_refuses_a_callable_running_inside_the_worker(ledger):
    add(ledger, "c", kind="callable", target="json:dumps")
    run = claim(ledger)
    assert refused(Conflict, lambda: ledger.cancel_task(run.task.id, "test", NOW)) == (
        f"task {run.task.id} is a running callable (job c): it runs inside the worker and cannot "
        "be stopped; `isolate = true` on the job runs it in a process that can be")
    assert Task.get_by_id(run.task.id).status == "running"


def test_cancel_of_an_isolated_callable_or_a_waiting_callable(ledger):
    add(ledger, "waiting", kind="callable", target="json:dumps")
    assert ledger.cancel_task(1, "test", NOW)[0].status == "created"
    add(ledger, "iso", kind="callable", target="json:dumps", isolate=True)
    run = claim(ledger)
    assert ledger.cancel_task(run.task.id, "test", NOW)[0].status == "running"
    assert Task.get_by_id(run.task.id).status == "cancelled"


def test_cancel_refuses_a_run_that_changed_meanwhile(ledger, monkeypatch):
    add(ledger)
    cas = ledger.cancel

    def claimed_first(task, reason, now):  # a worker claims the run between read and write
        claim(ledger)
        return cas(task, reason, now)

    monkeypatch.setattr(ledger, "cancel", claimed_first)
    assert refused(Conflict, lambda: ledger.cancel_task(1, "test", NOW)) == (
        "task 1 is running now; it changed while being cancelled")
    assert Task.get_by_id(1).status == "running"


def test_cancel_of_a_removed_jobs_running_run_names_the_job(ledger):
    add(ledger)
    run = claim(ledger)
    remove_job(ledger, "j", NOW)  # a running run finishes; its row keeps the job's name
    task, name = ledger.cancel_task(run.task.id, "test", NOW)
    assert (task.status, name) == ("running", "j")


# -- jobs: pause, resume, remove ----------------------------------------------------------------

def test_pause_cancels_waiting_runs_only_and_resume_schedules_the_next_slot(ledger):
    job = add(ledger)
    ledger.run_now(job, NOW)
    run = claim(ledger)  # the manual run, due first
    assert set_paused(ledger, "j", True, NOW)[1] is True
    assert [(t.id, t.status, t.error) for t in Task.select().order_by(Task.id)] == [
        (1, "cancelled", "job paused"), (run.task.id, "running", None)]
    assert set_paused(ledger, "j", True, NOW)[1] is False  # already paused: nothing changes
    assert set_paused(ledger, "j", False, NOW + timedelta(hours=5))[1] is True
    waiting = Task.get(Task.status == "created")
    assert waiting.scheduled_for > NOW + timedelta(hours=4)  # slots missed while paused: not owed
    assert set_paused(ledger, "j", False, NOW)[1] is False
    assert Task.select().where(Task.status == "created").count() == 1


def test_remove_cancels_waiting_runs_and_keeps_history_with_the_name(ledger):
    job = add(ledger)
    ledger.run_now(job, NOW)
    run = claim(ledger)
    remove_job(ledger, "j", NOW)
    assert [(t.id, t.status, t.error, t.job_id, t.job_name)
            for t in Task.select().order_by(Task.id)] == [
        (1, "cancelled", "job removed", None, "j"), (run.task.id, "running", None, None, "j")]


def test_unknown_and_duplicate_job_names(ledger):
    add(ledger)
    message = 'no job named "ghost" (see `edgeworker jobs list`)'
    assert refused(NotFound, lambda: remove_job(ledger, "ghost", NOW)) == message
    assert refused(NotFound, lambda: set_paused(ledger, "ghost", True, NOW)) == message
    assert refused(Conflict, lambda: add(ledger)) == (
        'a job named "j" already exists (from cli); remove it first or choose another name')


# -- time ---------------------------------------------------------------------------------------

def test_an_operators_change_is_never_dated_before_the_newest_time_recorded(ledger):
    assert ledger.recording_time(NOW) == NOW  # nothing recorded yet
    ledger.save_clock(NOW + timedelta(hours=1))
    assert ledger.recording_time(NOW) == NOW + timedelta(hours=1)  # the clock is behind
    assert ledger.recording_time(NOW + timedelta(hours=2)) == NOW + timedelta(hours=2)


def test_a_manual_run_of_a_paused_or_disabled_job_is_refused(ledger):
    from edgeworker.errors import Conflict
    from edgeworker.models import Job

    job = add_job(ledger, JobSpec(name="p", kind="command", target="true", every=60.0), NOW)
    set_paused(ledger, "p", True, NOW)
    with pytest.raises(Conflict, match=r'job "p" is paused: resume it first \(edgeworker jobs '
                                       r"resume p\)"):
        ledger.run_now(Job.get_by_id(job.id), NOW)
    set_paused(ledger, "p", False, NOW)
    Job.update(enabled=False).where(Job.id == job.id).execute()
    with pytest.raises(Conflict, match=r'job "p" is disabled'):
        ledger.run_now(Job.get_by_id(job.id), NOW)
