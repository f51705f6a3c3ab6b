"""Time: one representation (aware UTC datetimes) and one text form in the database.

Timestamps are stored as fixed-width ISO 8601 UTC text (`2026-11-29T13:47:13.123456Z`), so that
SQL comparisons on them are chronological and a `sqlite3` shell shows them readably.
Every function that decides by time takes `now` as a parameter; only callers at the edge
(the daemon, the CLI) ask the system clock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

logger = logging.getLogger("edgeworker.clock")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_text(moment: datetime) -> str:
    """`2026-11-29T13:47:13.123456Z`: isoformat, C code, twice as fast as strftime (and four
    digits for a year before 1000, where strftime printed fewer)."""
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None:
            raise ValueError("naive datetime: edgeworker keeps every time zone-aware")
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)  # C code, 30x faster than strptime; 'Z' is UTC


def display(moment: datetime | None) -> str:
    """Local time for people, to the second: '2026-11-29 14:47:13'."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


# -- the worker's clock ---------------------------------------------------------------------------

STEP_THRESHOLD = 1.0  # seconds: wall minus monotonic moving by more than this is a step
TIMESYNC_FILE = "/run/systemd/timesync/synchronized"


@dataclass(frozen=True)
class Step:
    """A step of the wall clock, seen at `at` (the worker's new time). `moved` is how far the
    worker's time moved with it: the same, or 0 when the worker did not follow a step back."""

    at: datetime
    wall: float
    moved: float


class WorkerClock:
    """The worker's `now`: wall time that never goes back past what the worker has recorded.

    A box without a real-time clock boots at 1970 or at a saved time, and NTP steps its clock
    later, forward or back. The worker's time is the wall clock while that is at or past the
    high-water mark (the newest time already recorded, carried forward on the monotonic clock).
    When the wall clock is behind it, the worker follows it back only when the clock is
    synchronised (then the step is a correction); otherwise it keeps counting from the mark on the
    monotonic clock, so that no run is dated earlier than one already recorded, a box that boots
    at 1970 makes no 1970 slots, and a backward step stops nothing.

    Every step is kept until the daemon takes it (`take_steps`) to re-plan pending runs by how
    far the worker's time moved. Thread-safe; `now()` costs two clock reads.
    """

    def __init__(self, high_water: datetime | None, synchronised: Callable[[], bool],
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_step: Callable[[], None] | None = None):
        self._wall, self._monotonic = wall, monotonic
        self.synchronised = synchronised
        self.on_step = on_step
        self._lock = threading.Lock()
        self._steps: list[Step] = []
        wall_now, mono = wall(), monotonic()
        self._offset = wall_now - mono  # wall minus monotonic at the last look
        mark = high_water.timestamp() if high_water else wall_now
        self._base = max(wall_now, mark) - mono  # the worker's time minus monotonic
        self.behind = 0.0  # how far the wall clock is behind the worker's time
        if mark - wall_now > STEP_THRESHOLD:
            # Started with the clock behind the newest recorded time: a step back while down.
            if synchronised():
                self._steps.append(Step(_from_epoch(wall_now), wall_now - mark,
                                        wall_now - mark))
                self._base = self._offset
            else:
                self.behind = mark - wall_now
                self._steps.append(Step(_from_epoch(mark), wall_now - mark, 0.0))

    def now(self) -> datetime:
        return _from_epoch(self.seconds())

    def seconds(self) -> float:
        with self._lock:
            wall_now, mono = self._wall(), self._monotonic()
            offset = wall_now - mono
            jumped = offset - self._offset
            self._offset = offset
            ours = self._base + mono
            if wall_now >= ours - STEP_THRESHOLD:  # the wall clock is at (or past) our time
                if wall_now - ours > STEP_THRESHOLD:
                    self._record(wall_now, jumped, wall_now - ours)
                self._base, self.behind = offset, 0.0
                return wall_now
            if abs(jumped) > STEP_THRESHOLD:
                if self.synchronised():  # a correction: follow the clock back
                    self._record(wall_now, jumped, wall_now - ours)
                    self._base, self.behind = offset, 0.0
                    return wall_now
                self._record(ours, jumped, 0.0)
            self.behind = ours - wall_now
            return ours

    def _record(self, at: float, wall: float, moved: float) -> None:
        self._steps.append(Step(_from_epoch(at), wall, moved))
        if self.on_step is not None:
            self.on_step()

    def take_steps(self) -> list[Step]:
        with self._lock:
            steps, self._steps = self._steps, []
        return steps

    def follow_wall(self) -> Step | None:
        """Take the wall clock as right although it is behind (it became synchronised)."""
        with self._lock:
            wall_now, mono = self._wall(), self._monotonic()
            ours = self._base + mono
            if wall_now >= ours - STEP_THRESHOLD:
                return None
            self._base = self._offset = wall_now - mono
            self.behind = 0.0
            return Step(_from_epoch(wall_now), 0.0, wall_now - ours)


def _from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def span(seconds: float) -> str:
    """A signed, rounded duration for log lines: '+3.0h', '-56.0y'."""
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{sign}{seconds / size:.1f}{unit}"
    return f"{sign}{seconds:.1f}s"


def clock_synchronised() -> bool:
    """Is the system clock synchronised? systemd-timesyncd's flag file, else the kernel's status
    (chrony, ntpd and timesyncd all clear STA_UNSYNC). `$EDGEWORKER_CLOCK_SYNC_FILE` names
    another flag file (for another time daemon's hook), and then only that file counts."""
    flag = os.environ.get("EDGEWORKER_CLOCK_SYNC_FILE")
    if flag:
        return os.path.exists(flag)
    return os.path.exists(TIMESYNC_FILE) or _kernel_synchronised()


def time_daemon() -> str | None:
    """What keeps this box's clock, if anything runs to: 'timesyncd', 'chrony' or 'flag file'."""
    if os.environ.get("EDGEWORKER_CLOCK_SYNC_FILE"):
        return "flag file"
    if os.path.isdir("/run/systemd/timesync"):
        return "timesyncd"
    if any(os.path.exists(p) for p in ("/run/chrony/chronyd.pid", "/run/chronyd.pid")):
        return "chrony"
    return None


def _kernel_synchronised() -> bool:
    import ctypes

    from edgeworker.libc import libc

    class Timex(ctypes.Structure):  # struct timex: `modes` first, 208 bytes on 64-bit Linux
        _fields_ = [("modes", ctypes.c_uint), ("rest", ctypes.c_byte * 252)]

    try:
        return libc().adjtimex(ctypes.byref(Timex())) != 5  # TIME_ERROR: not synchronised
    except (OSError, AttributeError):
        return False


class ClockSetWatch:
    """A file descriptor that becomes readable when the wall clock is set (a timerfd armed with
    TFD_TIMER_CANCEL_ON_SET), so a step is seen at once rather than at the next look."""

    def __init__(self) -> None:
        from edgeworker.libc import libc

        self.fd = -1
        try:
            lib = libc()
            fd = lib.timerfd_create(0, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_REALTIME
        except (OSError, AttributeError):
            return
        if fd >= 0:
            self.fd = fd
            self._arm()

    def _arm(self) -> None:
        import ctypes

        from edgeworker.libc import libc

        # itimerspec {interval {0, 0}, value {far future}}; flags ABSTIME | CANCEL_ON_SET
        spec = (ctypes.c_long * 4)(0, 0, 2**40, 0)
        if libc().timerfd_settime(self.fd, 1 | 2, spec, None) < 0:
            os.close(self.fd)
            self.fd = -1

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bool:
        """True if the clock was set since the last look; re-arms the watch."""
        if self.fd < 0:
            return False
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        except OSError:  # ECANCELED: the clock was set
            self._arm()
            return True
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
