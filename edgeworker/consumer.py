"""huey's consumer, through its documented seams: `worker_class` and `scheduler_class`.

huey's consumer starts and watches the threads (a dead one is restarted, `check_worker_health`);
its `Worker` loop dequeues and executes, and the storage's `dequeue()` waits for due work itself
(`TaskStorage.blocking`). What edgeworker adds:
- `WorkerThread` notes when it last looped and whether it runs a task (the watchdog's stall
  check and `busy_alert` read that), and closes its database connection when it stops;
- `Housekeeper` takes the place of huey's scheduler thread, which has nothing to move (a due
  run is a row the storage claims): retention, alerts for quiet jobs, metrics, watchdog pings.
The daemon owns signals: huey's handlers, installed by `Consumer.start()`, are replaced at once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from huey.consumer import BaseProcess, Consumer, Worker

logger = logging.getLogger("edgeworker.consumer")

HEALTH_CHECK_INTERVAL = 10.0


class Threads:
    """The consumer's threads as they announce themselves (a restarted one replaces its name)."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerThread] = {}
        self.all: dict[str, threading.Thread] = {}

    def enlist(self, process: BaseProcess) -> None:
        thread = threading.current_thread()
        self.all[thread.name] = thread
        if isinstance(process, WorkerThread):
            self.workers[thread.name] = process

    def current(self) -> WorkerThread | None:
        return self.workers.get(threading.current_thread().name)

    def alive(self) -> list[threading.Thread]:
        return [t for t in self.all.values() if t.is_alive()]


class WorkerThread(Worker):
    """huey's worker loop; it knows when it last looped and since when it runs a task."""

    def __init__(self, huey, stop_flag, threads: Threads, close: Callable[[], None], **options):
        super().__init__(huey, stop_flag, **options)
        self.threads = threads
        self.close = close
        self.busy_since: float | None = None  # running a task since (long is not a stall)
        self.last_loop = time.monotonic()

    def initialize(self) -> None:
        super().initialize()
        self.threads.enlist(self)

    def loop(self, now=None) -> None:
        self.last_loop = time.monotonic()
        super().loop(now)

    def shutdown(self) -> None:
        super().shutdown()
        self.close()


class Housekeeper(BaseProcess):
    """Work that is not a job run, in the place of huey's scheduler thread: `chores()` returns
    how long to wait before the next round."""

    process_name = "Housekeeper"

    def __init__(self, huey, stop_flag, threads: Threads, chores: Callable[[], float],
                 close: Callable[[], None], **options):
        super().__init__(huey, stop_flag)
        self.threads = threads
        self.chores = chores
        self.close = close

    def initialize(self) -> None:
        self.threads.enlist(self)

    def loop(self, now=None) -> None:
        self.stop_flag.wait(max(0.0, self.chores()))

    def shutdown(self) -> None:
        self.close()


def build(huey, workers: int, threads: Threads, chores: Callable[[], float],
          close: Callable[[], None]) -> Consumer:
    """huey's consumer with `workers` worker threads and the housekeeper."""

    class EdgeConsumer(Consumer):
        worker_class = functools.partial(WorkerThread, threads=threads, close=close)
        scheduler_class = functools.partial(Housekeeper, threads=threads, chores=chores,
                                            close=close)

    return EdgeConsumer(huey, workers=workers, periodic=False, check_worker_health=True,
                        health_check_interval=HEALTH_CHECK_INTERVAL)
