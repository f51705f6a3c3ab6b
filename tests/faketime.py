"""A fake wall clock for a real `edgeworker run`: libfaketime (Debian's `faketime` package) with a
timestamp file that the test rewrites to step the clock while the worker runs. Monotonic time stays
real (DONT_FAKE_MONOTONIC), as NTP steps only the wall clock."""

from __future__ import annotations

import glob
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

# The thread-safe build: the plain one sometimes returns the real time to a threaded program.
LIBRARY = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), None)

# Under libfaketime with real monotonic time, Python's time.sleep fails with EINVAL: sleep with
# select() instead (loaded by every Python process the worker starts, through PYTHONPATH).
SITECUSTOMIZE = '''\
import select, time

def _sleep(seconds):
    if seconds > 0:
        select.select([], [], [], seconds)

time.sleep = _sleep
'''

needs_faketime = pytest.mark.skipif(LIBRARY is None,
                                    reason="libfaketime is missing (apt-get install faketime)")


class FakeTime:
    def __init__(self, directory: Path, start: datetime):
        self.dir = directory / "faketime"
        self.dir.mkdir(exist_ok=True)
        (self.dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.file = self.dir / "timestamp"
        self.set(start)

    def set(self, moment: datetime) -> None:
        """From now on the wall clock reads `moment`, and runs on from there."""
        text = moment.astimezone(UTC).strftime("@%Y-%m-%d %H:%M:%S\n")
        tmp = self.file.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(self.file)
        self.base = (moment.replace(microsecond=0), time.monotonic())

    def carry_on(self) -> None:
        """Before starting another process: libfaketime starts each process at the file's time,
        so write the time the clock has now reached (the clock just runs on, no step)."""
        self.set(self.now())

    def now(self) -> datetime:
        """What the fake wall clock reads now."""
        moment, since = self.base
        return moment + timedelta(seconds=time.monotonic() - since)

    def env(self, synchronised: Path | None = None, tz: str = "UTC") -> dict[str, str]:
        env = {"LD_PRELOAD": LIBRARY, "FAKETIME_TIMESTAMP_FILE": str(self.file),
               "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1", "TZ": tz,
               "PYTHONPATH": str(self.dir),
               # the clock counts as synchronised while this file exists
               "EDGEWORKER_CLOCK_SYNC_FILE": str(synchronised or self.dir / "synchronized")}
        return env
