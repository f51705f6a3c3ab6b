"""Each recovery rule on a hand-made database state, with an injected `now`."""

import os
import time
from datetime import timedelta

import pytest
from commits import Commits

from edgeworker import recovery, report
from edgeworker.clock import utcnow
from edgeworker.config import JobSpec
from edgeworker.jobs import add_job
from edgeworker.ledger import Ledger, Outcome
from edgeworker.models import Job, Recovery, Task
from edgeworker.processes import ProcessTable


@pytest.fixture
def database(any_database):
    """Each test runs on SQLite and on PostgreSQL."""
    return any_database


@pytest.fixture
def ledger(database):
    return Ledger(database, worker="dead:1")


def add(ledger, name="j", **options):
    options.setdefault("every", 60.0)
    return add_job(ledger, JobSpec(name=name, kind="command", target="true", **options), utcnow())


def start_run(ledger, now=None):
    """A worker takes the next message and claims it... and then dies (nothing more happens)."""
    return claim_next(ledger, now).task


def claim_next(ledger, now=None):
    return ledger.claim(now or utcnow() + timedelta(days=1))


def queued(ledger):
    """The queue: waiting rows, with the attempt a recovery re-runs."""
    return sorted((t.id, t.recovering_attempt) for t in ledger.waiting())


def test_a_running_task_gets_a_recovery_message_and_the_worker_resets_it(ledger):
    add(ledger, max_attempts=3, catch_up="once")
    task = start_run(ledger)
    plan = recovery.recover(Ledger(ledger.db, worker="dead:1"), utcnow())
    assert plan.counts()["recovered"] == 1
    assert (task.id, 1) in queued(ledger)  # waiting again, to re-run attempt 1
    run = ledger.claim(utcnow())
    assert run.args.payload() == {"job_id": task.job_id, "task_id": task.id,
                                  "recovering_attempt": 1}  # huey's recovery message
    assert (run.task.id, run.recovered, run.task.attempt, run.task.recovered_count) == (
        task.id, True, 2, 1)


def test_no_attempt_left_fails_with_the_reason(ledger):
    add(ledger, max_attempts=1, catch_up="once")
    task = start_run(ledger)
    plan = recovery.recover(ledger, utcnow())
    assert plan.counts() == {"recovered": 0, "failed": 1, "cancelled": 0, "scheduled": 1}
    task = Task.get_by_id(task.id)
    assert (task.status, task.error) == ("failed", "interrupted on attempt 1 of 1 (the worker "
                                                   "stopped while it ran): no attempt left")


@pytest.mark.parametrize("change, reason", [
    ({"paused": True}, "job paused"),
    ({"enabled": False}, "job disabled"),
    (None, "job removed"),
])
def test_job_gone_or_inactive_cancels(ledger, change, reason):
    job = add(ledger, max_attempts=3)
    task = start_run(ledger)
    if change is None:
        Job.delete().where(Job.id == job.id).execute()
    else:
        Job.update(**change).where(Job.id == job.id).execute()
    recovery.recover(ledger, utcnow())
    task = Task.get_by_id(task.id)
    assert (task.status, task.error) == ("cancelled", reason)
    assert queued(ledger) == []


def test_superseded_slot_is_cancelled_and_the_job_moves_to_its_next_slot(ledger):
    add(ledger, every=60.0, max_attempts=3)  # catch_up = "skip"
    task = start_run(ledger)
    later = task.scheduled_for + timedelta(minutes=30, seconds=10)
    plan = recovery.recover(ledger, later)
    assert plan.counts()["cancelled"] == 1
    assert Task.get_by_id(task.id).error.startswith("superseded: a newer slot is already due")
    [pending] = Task.select().where(Task.status == "created")
    assert pending.scheduled_for == task.scheduled_for + timedelta(minutes=31)


def test_catch_up_all_replays_missed_slots_up_to_the_limit(ledger):
    add(ledger, every=60.0, catch_up="all", catch_up_limit=5)
    run = claim_next(ledger)
    task = ledger.finish(run, Outcome(True, 0, None, ""), utcnow())
    Task.delete().where(Task.status == "created").execute()  # as if the box was off since
    later = task.scheduled_for + timedelta(minutes=20, seconds=30)
    recovery.recover(ledger, later)
    [pending] = Task.select().where(Task.status == "created")
    # the 5 most recent of the 20 missed slots, oldest first
    assert pending.scheduled_for == task.scheduled_for + timedelta(minutes=16)


def test_a_created_task_needs_no_recovery(ledger):
    add(ledger)
    [task] = Task.select()
    plan = recovery.recover(ledger, utcnow())
    assert plan.counts() == {"recovered": 0, "failed": 0, "cancelled": 0, "scheduled": 0}
    assert queued(ledger) == [(task.id, None)]  # the row is its place in the queue


def test_an_earlier_starts_recovery_message_is_not_duplicated(ledger):
    add(ledger, max_attempts=3, catch_up="once")
    task = start_run(ledger)
    recovery.recover(ledger, utcnow())
    plan = recovery.recover(ledger, utcnow())  # the worker died again before taking it
    assert plan.counts()["recovered"] == 0
    assert queued(ledger).count((task.id, 1)) == 1


def test_every_active_job_gets_exactly_one_pending_run(ledger):
    for name in ("a", "b", "c"):
        add(ledger, name)
    Task.delete().execute()
    plan = recovery.recover(ledger, utcnow())
    assert plan.counts()["scheduled"] == 3
    assert Task.select().where(Task.status == "created").count() == 3
    assert recovery.recover(ledger, utcnow()).counts()["scheduled"] == 0


def test_dry_run_plans_without_writing(ledger, database):
    add(ledger, max_attempts=3, catch_up="once")
    start_run(ledger)
    commits = Commits(database)
    plan = recovery.plan(ledger, utcnow())
    assert plan.counts()["recovered"] == 1
    assert commits() == 0


def test_recovery_is_one_transaction_and_is_recorded(ledger, database):
    add(ledger, max_attempts=3, catch_up="once")
    start_run(ledger)
    commits = Commits(database)
    recovery.recover(ledger, utcnow())
    assert commits() == 1
    assert report.last_recovery()["recovered"] == 1
    assert Recovery.select().count() == 1


def test_ten_thousand_interrupted_tasks(ledger):
    job = add(ledger, max_attempts=3, catch_up="once")
    now = utcnow()
    Task.insert_many([{"job": job.id, "status": "running", "origin": "manual",
                       "scheduled_for": now, "due_at": now, "attempt": 1, "created_at": now,
                       "started_at": now, "worker": "dead:1"} for _ in range(10_000)]).execute()
    started = time.perf_counter()
    plan = recovery.recover(ledger, now)
    elapsed = time.perf_counter() - started
    assert plan.counts()["recovered"] == 10_000
    assert len(ledger.waiting()) == 10_001  # and the job's scheduled run
    print(f"recovered 10,000 tasks in {elapsed * 1000:.0f} ms")


def test_a_job_whose_schedule_gives_no_time_does_not_stop_recovery(ledger, caplog):
    # Stored by an older version that accepted it: February 31st never comes.
    odd = add(ledger, name="odd", catch_up="all", catch_up_limit=5)
    start_run(ledger)  # odd's run, interrupted
    unscheduled = add(ledger, name="unscheduled")
    fine = add(ledger, name="fine")
    Task.delete().where(Task.job.in_([unscheduled.id, fine.id])).execute()
    Job.update(every_seconds=None, cron="0 0 31 2 *", timezone="UTC").where(
        Job.id.in_([odd.id, unscheduled.id])).execute()
    plan = recovery.recover(ledger, utcnow() + timedelta(minutes=30))
    assert plan.counts()["recovered"] == 1  # its own slot is known: it runs again
    assert Task.select().where((Task.job == fine.id) & (Task.status == "created")).count() == 1
    assert Task.select().where(Task.job == unscheduled.id).count() == 0
    assert 'job "odd": cannot compute a run time for cron "0 0 31 2 *" (UTC)' in caplog.text
    assert 'job "unscheduled": cannot compute a run time for cron "0 0 31 2 *" (UTC): the ' \
           "expression matches no date (it never fires); the job is not scheduled until it " \
           "is changed" in caplog.text


class WatchedTable(ProcessTable):
    """The real process table, noting what was queued when it ended the leftovers."""

    def end_leftovers(self, grace, only=None):
        self.queued_then = queued(self.ledger)
        return super().end_leftovers(grace, only)


def session_of(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(") ", 1)[1].split()[3])


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0] not in "ZX"
    except FileNotFoundError:
        return False


def test_leftovers_of_an_interrupted_run_are_ended_before_it_is_requeued(ledger, database,
                                                                         tmp_path):
    """A dead worker's run left a tree (a child, a grandchild in a session of its own): all of
    it is ended before the recovery message exists, and the summary counts it."""
    add(ledger, max_attempts=3, catch_up="once")
    task = start_run(ledger)
    pids = tmp_path / "pids"
    # The dead worker had no cgroups (with one, its run's watcher would have ended the escaped
    # grandchild too); the next start may have them.
    dead = ProcessTable.for_database(database.database, use_cgroups=False)
    tree = dead.spawn(["/bin/sh", "-c", f"sleep 300 & echo $! >> {pids}; setsid sh -c 'echo $$ "
                       f">> {pids}; exec sleep 300' & echo $$ >> {pids}; wait"], {"PATH":
                       "/usr/bin:/bin"}, None, task.id, task.attempt)
    deadline = time.monotonic() + 10
    while not (pids.exists() and len(pids.read_text().split()) == 3):
        assert time.monotonic() < deadline, "the tree did not start"
        time.sleep(0.01)
    tree.proc.stdout.close()
    members = [int(pid) for pid in pids.read_text().split()]
    [escaped] = [pid for pid in members if session_of(pid) == pid]
    # The worker dies: its end of the gate closes, and the run's watcher takes the group with it.
    os.close(tree.gate)
    while any(alive(pid) for pid in members if pid != escaped):
        assert time.monotonic() < deadline, "the group outlived its worker"
        time.sleep(0.01)
    # nobody closes `dead`; the next start has a table of its own
    table = WatchedTable.for_database(database.database)
    table.ledger = ledger
    try:
        plan = recovery.recover(Ledger(ledger.db, worker="dead:1"), utcnow(), table)
    finally:
        tree.proc.wait()
        table.close()
    assert table.queued_then == []  # nothing was enqueued before the tree was ended
    assert plan.ended == 1 and plan.counts()["recovered"] == 1
    assert [pid for pid in members if alive(pid)] == []
    assert plan.line().endswith("scheduled 0, ended 1 leftover process")
    assert report.last_recovery()["ended"] == 1
    assert not os.path.exists(table.directory) or os.listdir(table.directory) == []
    assert table.cgroups is None or not os.path.exists(f"{table.cgroups}/task-{task.id}.1")


def test_a_start_without_leftovers_ends_nothing(ledger):
    add(ledger, max_attempts=3, catch_up="once")
    start_run(ledger)
    plan = recovery.recover(ledger, utcnow())
    assert plan.ended == 0
    assert "ended 0 leftover processes" in plan.line()


def test_a_start_recovers_its_own_names_runs_and_on_postgresql_only_those(ledger):
    add(ledger, name="a")
    add(ledger, name="b")
    mine = start_run(ledger)  # by "dead:1", the name of the worker that starts again below
    other = claim_next(Ledger(ledger.db, worker="gw-b")).task  # a worker of another name
    plan = recovery.recover(Ledger(ledger.db, worker="dead:1"), utcnow())
    if ledger.postgres:  # gw-b may be alive: its runs are its own, or its lease's
        assert [t.id for t in plan.recover] == [mine.id]
        assert Task.get_by_id(other.id).status == "running"
        expected = ("dead:1", [mine.id])
    else:  # one worker a file: every running task is a dead worker's
        assert [t.id for t in plan.recover] == [mine.id, other.id]
        expected = ("dead:1, gw-b", [mine.id, other.id])
    last = report.last_recovery()
    assert (last["worker"], (last["recovered_from"], last["task_ids"])) == ("dead:1", expected)
