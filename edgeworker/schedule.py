"""When a job runs: slots, catch-up after downtime, jitter and retry back-off.

Pure functions of a job's settings and `now` (aware datetimes); nothing here reads a clock.

Interval slots are anchored on the Unix epoch: `every = "5m"` runs at :00, :05, :10 ... UTC, so
the 1000th run is due exactly 1000 intervals after the first and restarts never shift the grid.
Cron slots follow a 5-field expression in the job's `timezone`, or the box's local zone.

Catch-up decides what happens to slots missed while the worker was down (or busy):
`skip` runs none of them (the next run is the next future slot), `once` runs one for all of them
(the most recent), `all` runs each of the most recent `catch_up_limit` ones, oldest first.
"""

from __future__ import annotations

import os
from _blake2 import blake2b  # hashlib's own, without the OpenSSL that `import hashlib` loads
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from typing import Protocol


class ScheduleSpec(Protocol):
    """The job settings these functions read (a `models.Job` has them)."""

    name: str
    every_seconds: float | None
    cron: str | None
    timezone: str | None
    catch_up: str
    catch_up_limit: int
    jitter_seconds: float
    retry_delay_seconds: float


@cache
def local_zone() -> tzinfo:
    """The box's zone with its DST rules (a fixed offset would be wrong half the year)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return UTC


def _zone(job: ScheduleSpec) -> tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo(job.timezone) if job.timezone else local_zone()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    # Integer microseconds: float division would sometimes put a slot before itself.
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _interval(job: ScheduleSpec) -> int:
    return max(1, round(job.every_seconds * 1_000_000))


def _slot(k: int, every: int) -> datetime:
    return _EPOCH + timedelta(microseconds=k * every)


def next_slot(job: ScheduleSpec, after: datetime) -> datetime:
    """The first slot strictly after `after`."""
    if job.every_seconds is not None:
        every = _interval(job)
        return _slot(_micros(after) // every + 1, every)
    from croniter import croniter

    return croniter(job.cron, after.astimezone(_zone(job))).get_next(datetime).astimezone(UTC)


def recent_slots(job: ScheduleSpec, after: datetime, now: datetime, limit: int) -> list[datetime]:
    """The most recent `limit` (at most) slots in (after, now], oldest first."""
    if limit <= 0 or now <= after:
        return []
    if job.every_seconds is not None:
        every = _interval(job)
        first = _micros(after) // every + 1
        last = _micros(now) // every
        first = max(first, last - limit + 1)
        return [_slot(k, every) for k in range(first, last + 1)]
    from croniter import croniter

    # Walk back from `now`: O(limit) even after a month offline with a per-minute job.
    itr = croniter(job.cron, now.astimezone(_zone(job)) + timedelta(microseconds=1))
    slots = []
    while len(slots) < limit:
        slot = itr.get_prev(datetime).astimezone(UTC)
        if slot <= after:
            break
        slots.append(slot)
    return slots[::-1]


def next_run(job: ScheduleSpec, last_slot: datetime | None, now: datetime) -> datetime:
    """The slot of the job's next scheduled run, after the run for `last_slot` (None: a new job).

    Missed slots, those in (last_slot, now], are handled by the job's catch-up policy.
    """
    if last_slot is None:
        return next_slot(job, now)
    candidate = next_slot(job, last_slot)
    if candidate > now or job.catch_up == "skip":
        return candidate if candidate > now else next_slot(job, now)
    limit = 1 if job.catch_up == "once" else job.catch_up_limit
    return recent_slots(job, last_slot, now, limit)[0]


def stale_reason(job: ScheduleSpec, slot: datetime, now: datetime) -> str | None:
    """Why a scheduled run for `slot` should no longer run at `now`, or None if it still should."""
    if job.catch_up == "once":
        return None
    limit = 1 if job.catch_up == "skip" else job.catch_up_limit
    newer = len(recent_slots(job, slot, now, limit))
    if newer >= limit:
        if job.catch_up == "skip":
            return "superseded: a newer slot is already due (catch_up = skip)"
        return f"superseded: {newer} newer slots are already due (catch_up_limit = {limit})"
    return None


def _fraction(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from its inputs: reproducible, yet spread."""
    digest = blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def due_at(job: ScheduleSpec, slot: datetime) -> datetime:
    """When the run for `slot` may start: the slot plus the job's jitter."""
    if not job.jitter_seconds:
        return slot
    return slot + timedelta(seconds=job.jitter_seconds * _fraction(job.name, slot.timestamp()))


def retry_delay(job: ScheduleSpec, task_id: int, attempt: int) -> float:
    """Back-off before the attempt after `attempt`: retry_delay doubled each time, capped at an
    hour (or the base delay, if longer), with jitter between half and all of it."""
    base = job.retry_delay_seconds
    delay = min(base * 2 ** max(attempt - 1, 0), max(base, 3600.0))
    return delay * (0.5 + 0.5 * _fraction(task_id, attempt))


def is_fixed_time(job: ScheduleSpec) -> bool:
    """A cron job at fixed times of day: its minute and hour fields are single numbers (cron's
    own distinction for clock steps and daylight saving time)."""
    if job.cron is None:
        return False
    fields = job.cron.split()
    return len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit()
