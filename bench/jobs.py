"""The callables that the benchmarks' jobs run (`bench.jobs:noop`, `bench.jobs:stamp`)."""

from __future__ import annotations

import os
import threading
import time

# In-process drivers count calls to learn when the last task has run.
calls = 0
expected = 0
all_called = threading.Event()


def expect(count: int) -> None:
    global calls, expected
    calls, expected = 0, count
    all_called.clear()


def tick() -> None:
    global calls
    calls += 1
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
