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


# -- daylight saving time ----------------------------------------------------------------------

def cron_job(expr, zone="Europe/Berlin", **kw):
    return Spec(name=f"dst {expr} {zone}", cron=expr, timezone=zone, **kw)


def utc(text):
    return at(text)


def test_fixed_time_job_runs_once_on_the_fall_back_night():
    job = cron_job("30 2 * * *")
    # 2026-10-25 in Berlin: 02:30 CEST (00:30 UTC), then the clocks go back and 02:30 comes
    # again as CET (01:30 UTC). cron and cronie run the job once; so does edgeworker.
    first = schedule.next_slot(job, utc("2026-10-24T12:00"))
    assert first == utc("2026-10-25T00:30")
    assert schedule.next_slot(job, first) == utc("2026-10-26T01:30")  # the next night, CET
    # a worker (re)started inside the repeated hour does not run it again either
    assert schedule.next_slot(job, utc("2026-10-25T01:10")) == utc("2026-10-26T01:30")
    # catching up across the night: one run
    caught = schedule.recent_slots(job, utc("2026-10-24T12:00"), utc("2026-10-25T12:00"), 10)
    assert caught == [utc("2026-10-25T00:30")]


def test_fixed_time_job_runs_right_after_the_gap_on_the_spring_forward_night():
    job = cron_job("30 2 * * *")
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist. cronie runs
    # the job at 03:00 CEST (01:00 UTC), once.
    slot = schedule.next_slot(job, utc("2026-03-28T12:00"))
    assert slot == utc("2026-03-29T01:00")
    assert schedule.next_slot(job, slot) == utc("2026-03-30T00:30")  # 02:30 CEST
    caught = schedule.recent_slots(job, utc("2026-03-28T12:00"), utc("2026-03-29T12:00"), 10)
    assert caught == [utc("2026-03-29T01:00")]


def test_wildcard_job_follows_the_clock_on_both_nights():
    job = cron_job("*/30 * * * *")
    fall = [schedule.next_slot(job, utc("2026-10-24T23:45"))]
    while len(fall) < 5:
        fall.append(schedule.next_slot(job, fall[-1]))
    # 02:00 CEST, 02:30 CEST, 02:00 CET, 02:30 CET, 03:00 CET: both copies of the hour
    assert fall == [utc(f"2026-10-25T0{h}") for h in ("0:00", "0:30", "1:00", "1:30", "2:00")]
    spring = [schedule.next_slot(job, utc("2026-03-28T23:45"))]
    while len(spring) < 3:
        spring.append(schedule.next_slot(job, spring[-1]))
    # 01:00 CET, 01:30 CET, then 03:00 CEST: the missing hour has no runs
    assert spring == [utc("2026-03-29T00:00"), utc("2026-03-29T00:30"), utc("2026-03-29T01:00")]


def test_half_hour_dst_shift_lord_howe():
    # Australia/Lord_Howe moves its clocks by 30 minutes: back at 02:00 on 2026-04-05 (01:30
    # to 02:00 repeats), forward at 02:00 on 2026-10-04 (02:00 to 02:30 is missing).
    repeated = cron_job("45 1 * * *", "Australia/Lord_Howe")
    first = schedule.next_slot(repeated, utc("2026-04-04T00:00"))
    assert first == utc("2026-04-04T14:45")  # 01:45 +11:00
    assert schedule.next_slot(repeated, first) == utc("2026-04-05T15:15")  # next day, +10:30
    missing = cron_job("15 2 * * *", "Australia/Lord_Howe")
    assert schedule.next_slot(missing, utc("2026-10-03T00:00")) == utc("2026-10-03T15:30")
    wildcard = cron_job("*/15 1 * * *", "Australia/Lord_Howe")
    night = schedule.recent_slots(wildcard, utc("2026-04-04T13:00"), utc("2026-04-04T16:00"), 99)
    assert len(night) == 6  # 01:00 .. 01:45, then 01:30 and 01:45 again


def reference(expr, zone, start, end):
    """The DST rule stated plainly, minute by minute: a slot when the wall clock shows a
    matching time; for a fixed-time job only the first time a wall time is seen, and wall times
    the clocks jumped over are run at the first minute after the jump."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    tz = ZoneInfo(zone)
    fixed = schedule.is_fixed_time(Spec(cron=expr))
    seen, slots, previous = set(), [], None
    moment = start + timedelta(minutes=1)
    while moment <= end:
        wall = moment.astimezone(tz).replace(tzinfo=None, fold=0)
        hit = croniter.match(expr, wall) and not (fixed and wall in seen)
        if fixed and previous is not None:
            skipped = previous + timedelta(minutes=1)
            while skipped < wall:
                hit = hit or croniter.match(expr, skipped)
                skipped += timedelta(minutes=1)
        if hit:
            slots.append(moment)
        seen.add(wall)
        previous = wall
        moment += timedelta(minutes=1)
    return slots


NIGHTS = [("Europe/Berlin", "2026-03-28T20:00", "2026-03-29T05:00"),
          ("Europe/Berlin", "2026-10-24T20:00", "2026-10-25T05:00"),
          ("Australia/Lord_Howe", "2026-04-04T12:00", "2026-04-04T18:00"),
          ("Australia/Lord_Howe", "2026-10-03T13:00", "2026-10-03T18:00")]
EXPRESSIONS = ["30 2 * * *", "0 2 * * *", "59 2 * * *", "0,30 2 * * *", "45 1 * * *",
               "15 2 * * *", "*/30 * * * *", "30 * * * *", "15 2-3 * * *", "*/15 1-2 * * *"]


@pytest.mark.parametrize("zone, start, end", NIGHTS)
@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_every_way_of_walking_a_dst_night_agrees_with_the_rule(expr, zone, start, end):
    job = cron_job(expr, zone, catch_up="all", catch_up_limit=1000)
    start, end = utc(start), utc(end)
    expected = reference(expr, zone, start, end)
    forward, slot = [], schedule.next_slot(job, start)
    while slot <= end:
        forward.append(slot)
        slot = schedule.next_slot(job, slot)
    assert forward == expected
    assert schedule.recent_slots(job, start, end, 1000) == expected
    caught, last = [], start
    while (slot := schedule.next_run(job, last, end)) <= end:
        caught.append(slot)
        last = slot
    assert caught == expected
    if expected:
        assert schedule.next_run(job.__class__(**{**job.__dict__, "catch_up": "once"}), start,
                                 end) == expected[-1]


# -- catch-up cost -----------------------------------------------------------------------------

@pytest.fixture
def croniter_steps(monkeypatch):
    """How many slots croniter computed (each get_next/get_prev call), counted on the real
    class."""
    from croniter import croniter

    calls = {"n": 0}
    for name in ("get_next", "get_prev"):
        original = getattr(croniter, name)

        def counted(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(croniter, name, counted)
    return calls


def catch_up(job, last, now, step=timedelta(milliseconds=10), most=10_000):
    runs = []
    while (slot := schedule.next_run(job, last, now)) <= now and len(runs) < most:
        runs.append(slot)
        last = slot
        now += step
    return runs, slot


def test_cron_catch_up_costs_slots_run_not_limit_squared(croniter_steps):
    # 10 days down with a per-minute job: 14,400 missed slots, the newest 300 are owed. Counting
    # back 300 slots at each run (the old way) costs 90,000 croniter steps.
    limit = 300
    job = Spec(name="minutely", cron="* * * * *", timezone="UTC", catch_up="all",
               catch_up_limit=limit)
    now = DOWN_FROM + timedelta(days=10, seconds=30)
    runs, after = catch_up(job, DOWN_FROM, now)
    assert len(runs) == limit
    assert runs[-1] == DOWN_FROM + timedelta(days=10)
    assert runs == [runs[0] + timedelta(minutes=i) for i in range(limit)]
    assert after == runs[-1] + timedelta(minutes=1)
    assert croniter_steps["n"] <= 6 * limit


def test_cron_catch_up_window_slides_while_it_runs(croniter_steps):
    # Runs slower than the slots come: each run takes 90 s, so the window of the newest 50
    # slots moves on while the job works through it (it never catches up). Work stays linear
    # in the runs.
    job = Spec(name="slow", cron="* * * * *", timezone="UTC", catch_up="all", catch_up_limit=50)
    now = DOWN_FROM + timedelta(hours=5)
    runs, _ = catch_up(job, DOWN_FROM, now, step=timedelta(seconds=90), most=200)
    assert len(runs) == 200
    assert croniter_steps["n"] <= 10 * len(runs) + 6 * 50
    # every run is one of the 50 newest slots at the time it was chosen: compare with counting
    # back afresh (the plain definition, no memo)
    last, t = DOWN_FROM, now
    for slot in runs:
        schedule._windows.clear()
        assert schedule.recent_slots(job, last, t, 50)[0] == slot
        last, t = slot, t + timedelta(seconds=90)


def test_memoised_window_agrees_with_counting_afresh():
    import random

    rng = random.Random(9)
    job = Spec(name="mixed", cron="*/7 1-5 * * 1-5", timezone="Europe/Berlin", catch_up="all",
               catch_up_limit=20)
    last, now = at("2026-10-20T00:00"), at("2026-10-27T00:00")
    for _ in range(300):
        got = schedule.next_run(job, last, now)
        schedule._windows.clear()
        assert got == schedule.next_run(job, last, now)
        expected = schedule.recent_slots(job, last, now, 20)
        assert got == (expected[0] if expected else schedule.next_slot(job, last))
        if got <= now and rng.random() < 0.8:
            last = got
        now += timedelta(minutes=rng.choice([0, 1, 7, 30, 200]))
        if rng.random() < 0.05:
            now -= timedelta(hours=3)  # a clock stepped back: the memo must not be trusted


@pytest.mark.parametrize("every, policy", [(1, "all"), (1, "once"), (1, "skip"), (60, "all")])
def test_interval_catch_up_is_constant_work_whatever_the_gap(monkeypatch, every, policy):
    # A box that booted at 1970 and believes 56 years of 1-second slots are owed.
    made = {"n": 0}
    original = schedule._slot

    def counted(k, step):
        made["n"] += 1
        return original(k, step)

    monkeypatch.setattr(schedule, "_slot", counted)
    job = Spec(every_seconds=every, catch_up=policy, catch_up_limit=100_000)
    boot, now = at("1970-01-01T00:00:05"), at("2026-12-02T11:00:00.5")
    slot = schedule.next_run(job, boot, now)
    assert made["n"] <= 3
    newest = at("2026-12-02T11:00:00")
    assert slot == {"all": newest - timedelta(seconds=every * 99_999), "once": newest,
                    "skip": newest + timedelta(seconds=every)}[policy]
    assert schedule.stale_reason(job, boot, now) == (
        None if policy == "once" else
        "superseded: a newer slot is already due (catch_up = skip)" if policy == "skip" else
        "superseded: 100000 newer slots are already due (catch_up_limit = 100000)")
    assert made["n"] <= 6


def test_cron_stale_check_after_56_years_counts_back_at_most_the_limit(croniter_steps):
    job = Spec(name="boot1970", cron="* * * * *", timezone="UTC", catch_up="all",
               catch_up_limit=1000)
    reason = schedule.stale_reason(job, at("1970-01-01T00:00"), at("2026-12-02T11:00:30"))
    assert reason == "superseded: 1000 newer slots are already due (catch_up_limit = 1000)"
    assert croniter_steps["n"] <= 1003
    croniter_steps["n"] = 0
    assert schedule.next_run(job, at("1970-01-01T00:00"), at("2026-12-02T11:00:30")) == \
        at("2026-12-02T11:00") - timedelta(minutes=999)
    assert croniter_steps["n"] <= 1003


# -- schedules that cannot be computed ---------------------------------------------------------

@pytest.mark.parametrize("job, message", [
    (Spec(name="feb31", cron="0 0 31 2 *", timezone="UTC"),
     'job "feb31": cannot compute a run time for cron "0 0 31 2 *" (UTC): the expression '
     "matches no date (it never fires)"),
    (Spec(name="huge", every_seconds=1e12),
     'job "huge": cannot compute a run time for every 1e+12s: date value out of range'),
    (Spec(name="nozone", cron="* * * * *", timezone="Mars/Olympus"),
     "job \"nozone\": cannot compute a run time for cron \"* * * * *\" (Mars/Olympus): "
     "'No time zone found with key Mars/Olympus'"),
])
def test_a_schedule_that_cannot_be_computed_raises_schedule_error(job, message):
    from edgeworker.errors import ScheduleError

    with pytest.raises(ScheduleError) as info:
        schedule.next_run(job, None, at("2026-12-02T11:00"))
    assert str(info.value) == message
