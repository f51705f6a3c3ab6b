"""The schedule is a pure function of a job's settings and `now`: no sleeping here."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from edgeworker import schedule


@dataclass
class Spec:
    name: str = "job"
    every_seconds: float | None = None
    cron: str | None = None
    timezone: str | None = None
    catch_up: str = "skip"
    catch_up_limit: int = 10
    jitter_seconds: float = 0.0
    retry_delay_seconds: float = 10.0


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_interval_slots_are_anchored_and_do_not_drift():
    job = Spec(every_seconds=0.2)
    start = at("2026-11-29T10:00:00.050")
    slot = schedule.next_slot(job, start)
    assert slot == at("2026-11-29T10:00:00.200")
    first = slot
    for _ in range(999):
        slot = schedule.next_slot(job, slot)
    # the 1000th run is due exactly 999 intervals after the first: no accumulated drift
    assert slot - first == timedelta(seconds=199.8)
    # a late finish does not shift the grid
    assert schedule.next_slot(job, first + timedelta(seconds=0.15)) == first + timedelta(
        seconds=0.2)


def test_interval_slots_on_round_times():
    job = Spec(every_seconds=300)
    assert schedule.next_slot(job, at("2026-11-29T10:02:30")) == at("2026-11-29T10:05:00")
    assert schedule.next_slot(job, at("2026-11-29T10:05:00")) == at("2026-11-29T10:10:00")


def test_cron_in_a_time_zone_across_dst():
    job = Spec(cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29: clocks jump from 02:00 to 03:00 in Berlin; 02:30 does not exist that night
    slot = schedule.next_slot(job, at("2026-03-28T12:00:00"))
    # croniter runs it right after the jump (03:00 CEST), like Vixie cron: not skipped
    assert at("2026-03-29T01:00:00") <= slot <= at("2026-03-29T01:30:00")
    summer = schedule.next_slot(job, at("2026-07-01T12:00:00"))
    assert summer == at("2026-07-02T00:30:00")  # 02:30 CEST
    winter = schedule.next_slot(job, at("2026-12-01T12:00:00"))
    assert winter == at("2026-12-02T01:30:00")  # 02:30 CET


def test_cron_in_utc():
    job = Spec(cron="*/15 * * * *", timezone="UTC")
    assert schedule.next_slot(job, at("2026-11-29T10:07:00")) == at("2026-11-29T10:15:00")


def test_new_job_runs_at_its_next_slot():
    job = Spec(every_seconds=60)
    assert schedule.next_run(job, None, at("2026-11-29T10:00:30")) == at("2026-11-29T10:01:00")


def test_no_missed_slot_means_the_next_one():
    job = Spec(every_seconds=60, catch_up="all")
    now = at("2026-11-29T10:00:30")
    assert schedule.next_run(job, at("2026-11-29T10:00:00"), now) == at("2026-11-29T10:01:00")


DOWN_FROM = at("2026-11-29T10:00:00")
BACK_AT = at("2026-11-29T10:30:30")  # 30 slots of a 1-minute job were missed


@pytest.mark.parametrize("policy, limit, expected", [
    ("skip", 10, "2026-11-29T10:31:00"),   # none of the missed slots: the next future one
    ("once", 10, "2026-11-29T10:30:00"),   # one run for all of them: the most recent
    ("all", 10, "2026-11-29T10:21:00"),    # each of the last 10, oldest first
    ("all", 100, "2026-11-29T10:01:00"),   # all 30
])
def test_catch_up_after_downtime(policy, limit, expected):
    job = Spec(every_seconds=60, catch_up=policy, catch_up_limit=limit)
    assert schedule.next_run(job, DOWN_FROM, BACK_AT) == at(expected)


def test_catch_up_all_runs_each_missed_slot_then_returns_to_the_grid():
    job = Spec(every_seconds=60, catch_up="all", catch_up_limit=100)
    now, last, runs = BACK_AT, DOWN_FROM, []
    while True:
        slot = schedule.next_run(job, last, now)
        if slot > now:
            break
        runs.append(slot)
        last = slot
        now += timedelta(milliseconds=10)  # each catch-up run takes 10 ms
    assert len(runs) == 30
    assert runs[0] == at("2026-11-29T10:01:00") and runs[-1] == at("2026-11-29T10:30:00")
    assert slot == at("2026-11-29T10:31:00")


def test_cron_catch_up_walks_back_only_as_far_as_needed():
    job = Spec(cron="* * * * *", timezone="UTC", catch_up="all", catch_up_limit=3)
    month_later = DOWN_FROM + timedelta(days=30)
    assert schedule.recent_slots(job, DOWN_FROM, month_later, 3) == [
        month_later - timedelta(minutes=2), month_later - timedelta(minutes=1), month_later]


@pytest.mark.parametrize("policy, slot_age_minutes, stale", [
    ("skip", 0.5, False),   # its slot is the latest one due: still valid
    ("skip", 1.5, True),    # a newer slot is already due: superseded
    ("once", 600, False),   # once never drops the run
    ("all", 9.5, False),    # within catch_up_limit (10) newer slots
    ("all", 10.5, True),
])
def test_stale_runs(policy, slot_age_minutes, stale):
    job = Spec(every_seconds=60, catch_up=policy, catch_up_limit=10)
    now = at("2026-11-29T12:00:30")
    slot = at("2026-11-29T12:00:00") - timedelta(minutes=int(slot_age_minutes))
    reason = schedule.stale_reason(job, slot, now)
    assert (reason is not None) is stale
    if stale:
        assert reason.startswith("superseded")


def test_jitter_is_stable_bounded_and_spread():
    job = Spec(every_seconds=60, jitter_seconds=30)
    slots = [at("2026-11-29T10:00:00") + timedelta(minutes=i) for i in range(200)]
    offsets = [(schedule.due_at(job, s) - s).total_seconds() for s in slots]
    assert all(0 <= o < 30 for o in offsets)
    assert max(offsets) - min(offsets) > 20  # spread over most of the window
    assert offsets == [(schedule.due_at(job, s) - s).total_seconds() for s in slots]
    assert schedule.due_at(Spec(every_seconds=60), slots[0]) == slots[0]


def test_retry_delay_backs_off_exponentially_with_jitter_and_a_cap():
    job = Spec(retry_delay_seconds=10)
    delays = [schedule.retry_delay(job, 7, attempt) for attempt in range(1, 12)]
    for attempt, delay in enumerate(delays, start=1):
        full = min(10 * 2 ** (attempt - 1), 3600)
        assert full / 2 <= delay <= full
    assert delays[-1] <= 3600
    assert schedule.retry_delay(job, 7, 3) == schedule.retry_delay(job, 7, 3)
    assert len({round(schedule.retry_delay(job, t, 1), 6) for t in range(50)}) > 40
