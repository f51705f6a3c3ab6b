"""Re-planning waiting runs after a clock step, holding cron jobs for a synchronised clock, and
the high-water mark (edgeworker.ledger), on a real database with an injected `now`."""

from datetime import UTC, datetime, timedelta

import pytest

from edgeworker.config import JobSpec
from edgeworker.jobs import add_job
from edgeworker.ledger import Ledger, Outcome
from edgeworker.models import Job, Task

T = datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
DAY = 86400.0


@pytest.fixture
def ledger(database):
    return Ledger(database, worker="test:1")


def add(ledger, name, now=T, **schedule):
    spec = JobSpec(name=name, kind="command", target="true", timezone="UTC", **schedule)
    return add_job(ledger, spec, now)


def pending(ledger, job):
    [task] = Task.select().where((Task.job == job.id) & (Task.status == "created"))
    return task


def queued(ledger, hold=False) -> dict[int, datetime]:
    """task id -> when a worker may claim it, for runs a worker would claim (`hold`: while cron
    jobs wait for the clock)."""
    return {t.id: t.due_at for t in ledger.waiting()
            if not (hold and t.origin == "schedule" and Job.get_by_id(t.job_id).cron)}


@pytest.mark.parametrize("moved", [-3600, -DAY, 90 * DAY])
def test_an_interval_run_keeps_its_wait_whichever_way_the_clock_moves(ledger, moved):
    job = add(ledger, "tick", every=60.0)
    before = pending(ledger, job)
    assert before.due_at == datetime(2026, 12, 2, 10, 1, tzinfo=UTC)
    now = T + timedelta(seconds=moved)
    assert ledger.replan(moved, now) == 1
    after = pending(ledger, job)
    assert after.due_at - now == before.due_at - T  # still 30 s to wait
    assert after.scheduled_for == after.due_at
    assert queued(ledger) == {after.id: after.due_at}


def test_a_retry_keeps_its_back_off(ledger):
    job = add(ledger, "flaky", every=3600.0, max_attempts=3, retry_delay=20.0)
    run = ledger.claim(T + timedelta(hours=1))
    retried = ledger.finish(run, Outcome(False, 1, "boom"), T + timedelta(hours=1))
    wait = retried.due_at - (T + timedelta(hours=1))
    ledger.replan(-DAY, T + timedelta(hours=1) - timedelta(days=1))
    after = Task.get_by_id(retried.id)
    assert after.due_at - (T + timedelta(hours=1) - timedelta(days=1)) == wait
    assert after.scheduled_for == retried.scheduled_for  # the slot it is for does not change
    assert pending(ledger, job).id == retried.id


def test_cron_rule_under_three_hours_back(ledger):
    fixed = add(ledger, "nightly", cron="0 3 * * *")
    wildcard = add(ledger, "five", cron="*/5 * * * *")
    slot_fixed = pending(ledger, fixed).scheduled_for
    assert pending(ledger, wildcard).scheduled_for == datetime(2026, 12, 2, 10, 5, tzinfo=UTC)
    now = T - timedelta(hours=1)
    ledger.replan(-3600, now)
    # a fixed-time job is not repeated: its next slot stays where it was
    assert pending(ledger, fixed).scheduled_for == slot_fixed
    # a wildcard job follows the new time: it runs at 09:05, not an hour later
    assert pending(ledger, wildcard).scheduled_for == datetime(2026, 12, 2, 9, 5, tzinfo=UTC)


def test_cron_rule_a_large_step_back_is_a_correction(ledger):
    fixed = add(ledger, "nightly", cron="0 3 * * *")
    assert pending(ledger, fixed).scheduled_for == datetime(2026, 12, 3, 3, tzinfo=UTC)
    now = T - timedelta(days=1)
    ledger.replan(-DAY, now)
    assert pending(ledger, fixed).scheduled_for == datetime(2026, 12, 2, 3, tzinfo=UTC) - \
        timedelta(days=1) + timedelta(days=1)  # the next 03:00 after the new time: Dec 2


def test_cron_rule_a_small_step_forward_skips_no_fixed_time_job(ledger):
    fixed = add(ledger, "at-eleven", cron="0 11 * * *")
    slot = pending(ledger, fixed).scheduled_for
    ledger.replan(7200, T + timedelta(hours=2))  # 10:00 -> 12:00 jumps over 11:00
    task = pending(ledger, fixed)
    assert task.scheduled_for == slot and task.due_at <= T + timedelta(hours=2)  # runs now


@pytest.mark.parametrize(("catch_up", "expected"), [
    ("skip", datetime(2027, 3, 2, 10, 5, tzinfo=UTC)),   # the next slot after the new time
    ("once", datetime(2027, 3, 2, 10, 0, tzinfo=UTC)),   # the newest one it skipped
])
def test_cron_rule_a_large_step_forward_applies_catch_up(ledger, catch_up, expected):
    job = add(ledger, "five", cron="*/5 * * * *", catch_up=catch_up)
    now = T + timedelta(days=90)
    ledger.replan(90 * DAY, now)
    assert pending(ledger, job).scheduled_for == expected


def test_hold_and_release_cron_runs(ledger):
    cron = add(ledger, "nightly", cron="0 3 * * *", catch_up="once")
    tick = add(ledger, "tick", every=60.0)
    assert ledger.held_calendar() == 1
    later = datetime(2026, 12, 3, 4, tzinfo=UTC)  # held past its 03:00 slot
    assert ledger.claim(later, hold=True).job.id == tick.id  # interval jobs run meanwhile
    assert ledger.claim(later, hold=True) is None  # the cron run waits
    assert ledger.release_calendar(later) == 1
    task = pending(ledger, cron)
    assert task.scheduled_for == datetime(2026, 12, 3, 3, tzinfo=UTC)  # catch-up once: it runs
    assert ledger.claim(later).task.id == task.id


def test_high_water_mark(ledger):
    assert ledger.high_water() is None
    add(ledger, "tick", every=60.0, now=T)
    assert ledger.high_water() == T
    ledger.save_clock(T + timedelta(hours=1))
    assert ledger.high_water() == T + timedelta(hours=1)
    ledger.save_clock(T)  # never lower...
    assert ledger.high_water() == T + timedelta(hours=1)
    ledger.save_clock(T - timedelta(days=1), correct=True)  # ...but for a correction
    assert ledger.high_water() == T - timedelta(days=1)
    add(ledger, "later", every=60.0, now=T - timedelta(hours=20))
    assert ledger.high_water() == T - timedelta(hours=20)


def test_commands_date_nothing_before_the_high_water_mark(migrated):
    from edgeworker.clock import utcnow

    migrated.ok("jobs", "add", "tick", "--command", "true", "--every", "1m")

    ledger = Ledger(Task._meta.database, worker="test:1")
    ahead = utcnow() + timedelta(hours=5)  # the worker ran while the clock was 5 h ahead
    ledger.save_clock(ahead)
    migrated.ok("jobs", "run", "tick")
    task = Task.select().order_by(Task.id.desc()).get()
    assert task.created_at >= ahead and task.due_at >= ahead
