"""The callables that the benchmarks' jobs run (`bench.jobs:noop`, `bench.jobs:stamp`,
`bench.jobs:hold`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

# In-process drivers count calls to learn when the last task has run, and may take a mark (time,
# bytes written) from inside the call with a given number.
calls = 0
expected = 0
all_called = threading.Event()
marks: dict[int, Callable[[], None]] = {}
# `hold` runs until released.
holding = threading.Event()
release = threading.Event()


def expect(count: int) -> None:
    global calls, expected
    calls, expected = 0, count
    all_called.clear()


def tick() -> None:
    global calls
    calls += 1
    mark = marks.pop(calls, None)
    if mark is not None:
        mark()
    if calls >= expected:
        all_called.set()


def noop(ctx=None) -> None:
    """A task that returns at once (counted, for the in-process drivers)."""
    tick()


def stamp(ctx) -> None:
    """Records when this run really started: `<task id> <unix time>` appended to $BENCH_STAMPS."""
    now = time.time()
    with open(os.environ["BENCH_STAMPS"], "a") as handle:
        handle.write(f"{ctx.task_id} {now:.6f}\n")


def hold(ctx=None) -> None:
    """A long run: it returns once the driver sets `release` (or after a minute)."""
    holding.set()
    release.wait(60)
