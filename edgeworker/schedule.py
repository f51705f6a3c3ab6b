"""When a job runs: slots, catch-up after downtime, jitter and retry back-off.

Pure functions of a job's settings and `now` (aware datetimes); nothing here reads a clock.
They raise `ScheduleError` (never croniter's errors or OverflowError) for a schedule that cannot be
computed, so a caller can log it and go on.

Interval slots are anchored on the Unix epoch: `every = "5m"` runs at :00, :05, :10 ... UTC, so
the 1000th run is due exactly 1000 intervals after the first and restarts never shift the grid.
Cron slots follow a 5-field expression in the job's `timezone`, or the box's local zone.

Daylight saving time, as cronie does it: a fixed-time job (its minute and hour fields are plain
numbers or lists of them, e.g. `30 2 * * *`) runs once on the night the clocks go back, at the
first 02:30, and once on the night they go forward, right after the gap (03:00 when 02:30 does
not exist). A job with a wildcard, range or step in its minute or hour field follows the clock:
it runs in both copies of the repeated hour and not at all in the missing one.

Catch-up decides what happens to slots missed while the worker was down (or busy):
`skip` runs none of them (the next run is the next future slot), `once` runs one for all of them
(the most recent), `all` runs each of the most recent `catch_up_limit` ones, oldest first.

What that costs: every run asks `next_run` for the slot after its own. For an interval job that
is integer arithmetic on slot numbers, O(1) however long the box was down (even 56 years of
1-second slots after a boot at 1970). For a cron job it is one croniter step from the last slot,
plus the question "is that slot still among the `catch_up_limit` most recent?". Counting back
`catch_up_limit` cron slots from `now` at every run would make a catch-up of N runs cost N x
limit; instead each job's window is remembered (a `_Window`: the oldest owed slot, how many slots
it spans, the newest slot due and the one after): the first run of a catch-up counts back once,
O(limit), and later runs only move the window forward by the slots that fell due since, O(1)
each in the steady case. The memo is a cache of a pure function: results are the same without it
(the tests compare both), and a mismatch (another job, a clock that went back) recounts.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache

from edgeworker.errors import ScheduleError

TYPE_CHECKING = False  # typing is not imported at run time (config.load_config's forget_parser)
if TYPE_CHECKING:
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


def _describe(job: ScheduleSpec) -> str:
    if job.every_seconds is not None:
        return f"every {job.every_seconds:g}s"
    return f'cron "{job.cron}"' + (f" ({job.timezone})" if job.timezone else "")


@contextmanager
def _errors(job: ScheduleSpec) -> Iterator[None]:
    """Whatever croniter, zoneinfo or datetime arithmetic raise becomes a `ScheduleError`."""
    try:
        yield
    except ScheduleError:
        raise
    # croniter's errors are ValueErrors; KeyError: zoneinfo's ZoneInfoNotFoundError
    except (OverflowError, ValueError, KeyError) as exc:
        reason = str(exc) or type(exc).__name__
        if type(exc).__name__ == "CroniterBadDateError":  # croniter is loaded only for cron jobs
            reason = "the expression matches no date (it never fires)"
        raise ScheduleError(f'job "{job.name}": cannot compute a run time for '
                            f"{_describe(job)}: {reason}") from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    # Integer microseconds: float division would sometimes put a slot before itself.
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _interval(job: ScheduleSpec) -> int:
    return max(1, round(job.every_seconds * 1_000_000))


def _slot(k: int, every: int) -> datetime:
    return _EPOCH + timedelta(microseconds=k * every)


# -- cron slots, DST applied -------------------------------------------------------------------

_PLAIN = re.compile(r"\d+(,\d+)*")


def is_fixed_time(job: ScheduleSpec) -> bool:
    """A cron job at fixed times of day: its minute and hour fields are numbers or lists of
    numbers (cron's own distinction for clock steps and daylight saving time; a wildcard, range
    or step follows the clock). Such a job runs once on DST nights, not once per copy of an
    hour."""
    if job.cron is None:
        return False
    fields = job.cron.split()
    return len(fields) >= 2 and all(_PLAIN.fullmatch(f) for f in fields[:2])


def _repeated(local: datetime) -> bool:
    """A local time in the second copy of the hour the clocks go back over."""
    return bool(local.fold) and local.replace(fold=0).utcoffset() != local.utcoffset()


def _after_gap(slot: datetime, local: datetime) -> bool:
    """`slot` is the moment the clocks jumped forward (croniter's stand-in for a missing time)."""
    return (slot - _TICK).astimezone(local.tzinfo).utcoffset() < local.utcoffset()


_TICK = timedelta(microseconds=1)
_NEARLY_A_MINUTE = timedelta(seconds=59)  # cron's resolution is a minute


def _cron_slots(job: ScheduleSpec, start: datetime, backward: bool = False) -> Iterator[datetime]:
    """A cron job's slots in UTC: after `start` going forward, at or before it going back.

    croniter (6.1 to 7.0) gives both copies of a repeated time, and for a time the clocks skip
    it gives the moment after the gap (03:00 for 02:30), for some expressions. Here a fixed-time
    job keeps only the first copy and the moment after the gap; any other job keeps both copies
    and drops the stand-in unless the expression matches it anyway.
    """
    from croniter import croniter

    zone = _zone(job)
    fixed = is_fixed_time(job)
    direction = -1 if backward else 1
    itr = croniter(job.cron, (start + _TICK if backward else start).astimezone(zone))
    previous, stuck = None, 0
    while True:
        slot = (itr.get_prev if backward else itr.get_next)(datetime).astimezone(UTC)
        if previous is not None and (slot - previous) * direction <= timedelta(0):
            # croniter stuck at a DST edge (older versions did): start again past it
            stuck += 1
            if stuck > 3:
                raise ValueError(f"croniter does not get past {previous.isoformat()}")
            itr = croniter(job.cron, (previous + direction * _NEARLY_A_MINUTE).astimezone(zone))
            continue
        previous, stuck = slot, 0
        local = slot.astimezone(zone)
        if fixed and _repeated(local):
            continue
        if (not fixed and _after_gap(slot, local)
                and not croniter.match(job.cron, local.replace(tzinfo=None))):
            continue
        yield slot


def next_slot(job: ScheduleSpec, after: datetime) -> datetime:
    """The first slot strictly after `after`."""
    with _errors(job):
        if job.every_seconds is not None:
            every = _interval(job)
            return _slot(_micros(after) // every + 1, every)
        return next(_cron_slots(job, after))


def _latest_slot(job: ScheduleSpec, now: datetime) -> datetime:
    """The last slot at or before `now`."""
    if job.every_seconds is not None:
        every = _interval(job)
        return _slot(_micros(now) // every, every)
    return next(_cron_slots(job, now, backward=True))


def recent_slots(job: ScheduleSpec, after: datetime, now: datetime, limit: int) -> list[datetime]:
    """The most recent `limit` (at most) slots in (after, now], oldest first. O(limit)."""
    if limit <= 0 or now <= after:
        return []
    with _errors(job):
        if job.every_seconds is not None:
            every = _interval(job)
            first = _micros(after) // every + 1
            last = _micros(now) // every
            first = max(first, last - limit + 1)
            return [_slot(k, every) for k in range(first, last + 1)]
        slots = []
        for slot in _cron_slots(job, now, backward=True):
            if slot <= after or len(slots) == limit:
                break
            slots.append(slot)
        return slots[::-1]


# -- the catch-up window -----------------------------------------------------------------------

@dataclass(frozen=True)
class _Window:
    """The most recent (at most) `limit` slots of a cron job up to some `now`, in summary.

    `count` slots lie in [`start`, `latest`]; `latest` is the newest slot at or before that
    `now` and `upcoming` the one after it. Either `count == limit` (`start` is the limit-th most
    recent slot), or fewer slots than that exist after `floor` and `start` is the first of them.
    """

    key: tuple
    floor: datetime
    start: datetime
    count: int
    latest: datetime
    upcoming: datetime


_windows: dict[str, _Window] = {}
_windows_lock = threading.Lock()
_MAX_WINDOWS = 4096


def _count_back(job: ScheduleSpec, key: tuple, floor: datetime, now: datetime,
                limit: int) -> _Window:
    """Count back from `now`: O(limit). Called with at least one slot in (floor, now]."""
    slots = _cron_slots(job, now, backward=True)
    latest = start = next(slots)
    count = 1
    for slot in slots:
        if count == limit or slot <= floor:
            break
        start, count = slot, count + 1
    return _Window(key, floor, start, count, latest, next_slot(job, latest))


def _advance(job: ScheduleSpec, window: _Window, now: datetime, limit: int) -> _Window | None:
    """Move a window forward to `now`; None when recounting from `now` is cheaper."""
    if window.upcoming > now:
        return window
    ahead = _cron_slots(job, window.upcoming)
    behind = None
    start, count, latest, upcoming = window.start, window.count, window.latest, window.upcoming
    steps = 0
    while upcoming <= now:
        steps += 1
        if steps > limit:
            return None
        latest, upcoming = upcoming, next(ahead)
        if count < limit:
            count += 1
        else:
            behind = behind or _cron_slots(job, start)
            start = next(behind)
    return _Window(window.key, window.floor, start, count, latest, upcoming)


def _window(job: ScheduleSpec, floor: datetime, now: datetime, limit: int) -> _Window:
    """The window of owed slots of a cron job at `now`, for slots after `floor`."""
    key = (job.cron, job.timezone, limit)
    with _windows_lock:
        window = _windows.get(job.name)
    usable = (window is not None and window.key == key and window.latest <= now
              and (window.count == limit or floor >= window.floor))
    window = _advance(job, window, now, limit) if usable else None
    if window is None:
        window = _count_back(job, key, floor, now, limit)
    with _windows_lock:
        if len(_windows) >= _MAX_WINDOWS:
            _windows.clear()
        _windows[job.name] = window
    return window


def _owed_from(job: ScheduleSpec, last_slot: datetime, now: datetime, limit: int) -> datetime:
    """The oldest of the most recent `limit` slots in (last_slot, now], when one is due."""
    candidate = next_slot(job, last_slot)
    if job.every_seconds is not None:
        every = _interval(job)
        return max(candidate, _slot(_micros(now) // every - limit + 1, every))
    return max(candidate, _window(job, last_slot, now, limit).start)


def next_run(job: ScheduleSpec, last_slot: datetime | None, now: datetime) -> datetime:
    """The slot of the job's next scheduled run, after the run for `last_slot` (None: a new job).

    Missed slots, those in (last_slot, now], are handled by the job's catch-up policy. O(1) for
    an interval job; for a cron job O(1) amortised over a catch-up, O(catch_up_limit) at most.
    """
    if last_slot is None:
        return next_slot(job, now)
    candidate = next_slot(job, last_slot)
    if candidate > now:
        return candidate
    with _errors(job):
        if job.catch_up == "skip":
            return next_slot(job, now)
        if job.catch_up == "once":
            return _latest_slot(job, now)
        return _owed_from(job, last_slot, now, job.catch_up_limit)


def stale_reason(job: ScheduleSpec, slot: datetime, now: datetime) -> str | None:
    """Why a scheduled run for `slot` should no longer run at `now`, or None if it still should.
    O(1) for an interval job, O(catch_up_limit) at most for a cron job (recovery asks once)."""
    if job.catch_up == "once":
        return None
    with _errors(job):
        if job.catch_up == "skip":
            if next_slot(job, slot) <= now:
                return "superseded: a newer slot is already due (catch_up = skip)"
            return None
        limit = job.catch_up_limit
        if job.every_seconds is not None:
            every = _interval(job)
            newer = _micros(now) // every - _micros(slot) // every
        elif next_slot(job, slot) > now:
            newer = 0
        else:
            window = _window(job, slot, now, limit)
            newer = limit if window.count == limit and slot < window.start else 0
    if newer >= limit:
        return f"superseded: {limit} newer slots are already due (catch_up_limit = {limit})"
    return None


def _fraction(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from its inputs: reproducible, yet spread."""
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def due_at(job: ScheduleSpec, slot: datetime) -> datetime:
    """When the run for `slot` may start: the slot plus the job's jitter."""
    if not job.jitter_seconds:
        return slot
    with _errors(job):
        return slot + timedelta(
            seconds=job.jitter_seconds * _fraction(job.name, slot.timestamp()))


def retry_delay(job: ScheduleSpec, task_id: int, attempt: int) -> float:
    """Back-off before the attempt after `attempt`: retry_delay doubled each time, capped at an
    hour (or the base delay, if longer), with jitter between half and all of it."""
    base = job.retry_delay_seconds
    delay = min(base * 2 ** max(attempt - 1, 0), max(base, 3600.0))
    return delay * (0.5 + 0.5 * _fraction(task_id, attempt))

