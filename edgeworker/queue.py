"""huey's queue is the `tasks` table: `TaskStorage`, a storage on huey's `BaseStorage` interface.

huey runs the work; the ledger keeps the runs. There is no second copy of a waiting run: huey's
enqueue and schedule write the task row (`Ledger.enqueue`), and `dequeue()` claims the next due,
claimable row in one statement (`Ledger.claim`) and hands huey a message for it, carrying the job
id, the task id and, on a recovery, the attempt that was interrupted (`IntervalJobArgs`). Messages
exist only in memory, between this storage and huey in the same process; they are huey's own
(default) serialisation of the one task, `run_job`.

`blocking = True` tells huey's consumer that `dequeue()` waits for work itself: an idle worker
thread sleeps until the next run falls due or the database changes (inotify on the WAL: any
commit, from this process or a CLI; on PostgreSQL, a notification), and a look that finds nothing
writes nothing. Results, locks,
revocation and huey's retries are not kept: the ledger records each run's outcome and retries.
Every huey name used here is public (docs/architecture.md lists them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from huey import Huey
from huey.storage import BaseStorage

from edgeworker import db as dbmod
from edgeworker.clock import utcnow
from edgeworker.db import is_url
from edgeworker.ledger import ClaimedRun, IntervalJobArgs, Ledger
from edgeworker.logs import Reminder
from edgeworker.wakeup import DatabaseWatch, Flag

logger = logging.getLogger("edgeworker.queue")

QUEUE_NAME = "edgeworker"
TASK_NAME = "edgeworker.run_job"
MAX_IDLE = 60.0  # an idle thread looks at the schedule at least this often (clock jumps)
MAX_ERROR_DELAY = 30.0


class Unsupported(NotImplementedError):
    pass


def utc(moment: datetime | None) -> datetime | None:
    """huey's times are naive UTC (`utc=True`)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class TaskStorage(BaseStorage):
    """huey's storage over the ledger's `tasks` table."""

    blocking = True

    def __init__(self, name: str = QUEUE_NAME, ledger: Ledger | None = None, **kwargs):
        super().__init__(name, **kwargs)
        self.ledger = ledger
        # Set by EdgeHuey: a payload to huey's message and back (huey's public task API).
        self.encode: Callable[[dict], bytes] | None = None
        self.decode: Callable[[bytes], tuple[dict, datetime | None]] | None = None
        # Set by the worker process (`Daemon`); a CLI process only enqueues.
        self.now: Callable[[], datetime] = utcnow
        self.hold: Callable[[], bool] = lambda: False  # cron runs wait for the clock
        self.stop: Flag | None = None
        self.paused: Callable[[], bool] = lambda: False  # no claims (a lease lost: daemon.fence)
        self.path: str | None = None
        self.claimed: dict[int, ClaimedRun] = {}  # claimed, not yet picked up by its thread
        self.trouble = Reminder(logger)  # one for all worker threads: logged once
        self.local = threading.local()
        self.watches: list[DatabaseWatch] = []

    # -- enqueue and schedule: a task row -------------------------------------------------------

    def enqueue(self, data: bytes, priority=None) -> None:
        payload, eta = self.decode(data)  # huey enqueues a task with an eta as it is, too
        now = self.now()
        self.ledger.enqueue(IntervalJobArgs.from_payload(payload), utc(eta) or now, now)

    def add_to_schedule(self, data: bytes, ts: datetime, utc_=None) -> None:
        payload, _ = self.decode(data)
        self.ledger.enqueue(IntervalJobArgs.from_payload(payload), utc(ts), self.now())

    def read_schedule(self, ts) -> list:
        return []  # dequeue() takes due rows itself: nothing moves from a schedule to a queue

    # -- dequeue: the claim ---------------------------------------------------------------------

    def dequeue(self) -> bytes | None:
        """Claim the next due run and return its message; or wait until one may be due and
        return None (huey's worker then looks at its stop flag and calls again)."""
        if self.stop is not None and self.stop.is_set():
            return None
        if self.paused():
            self.release()
            if self.stop is not None:
                self.stop.wait(0.5)
            return None
        local = self.local
        run, local.next = getattr(local, "next", None), None
        if run is not None:  # claimed when this thread recorded its last run's outcome
            self.claimed[run.task.id] = run
            return self.encode(run.args.payload())
        try:
            run = self.claim_next(locked=getattr(local, "woken", False))
        except Exception as exc:
            self.trouble.failing("cannot read the queue: %s; retrying, at most every %.0fs",
                                 dbmod.describe(self.path, exc), MAX_ERROR_DELAY)
            delay = getattr(local, "error_delay", 0.5)
            local.error_delay = min(delay * 2, MAX_ERROR_DELAY)
            local.woken = True
            if self.stop is not None:  # not the WAL watch: failing writes would wake it at once
                self.stop.wait(delay)
            return None
        local.error_delay = 0.5
        self.trouble.resolved("reading the queue again")
        if run is not None:
            local.woken = False
            self.claimed[run.task.id] = run
            return self.encode(run.args.payload())
        local.woken = self.watch().wait(self.idle_timeout())
        return None

    def claim_next(self, locked: bool) -> ClaimedRun | None:
        """A look without the write lock first, so an idle worker writes nothing; but when woken
        by a write to the WAL, under the lock at once: that commit may not be visible to a
        lock-free read until its writer is done."""
        now, hold = self.now(), self.hold()
        if not locked and not self.ledger.due(now, hold):
            return None
        return self.ledger.claim(now, hold)

    def want_next(self) -> bool | None:
        """Should this thread claim its next run as it records an outcome? None if not (it
        stops), else whether cron runs are held."""
        if (self.stop is not None and self.stop.is_set()) or self.paused():
            return None
        return self.hold()

    def keep(self, run: ClaimedRun) -> None:
        """The run this thread claimed with its last outcome: its next dequeue returns it."""
        self.local.next = run

    def release(self) -> None:
        """A worker thread stops: give back a run it claimed and did not start."""
        run, self.local.next = getattr(self.local, "next", None), None
        if run is None:
            return
        try:
            if self.ledger.unclaim(run):
                logger.info("task %s: given back unstarted, as the worker stops", run.task.id)
        except Exception as exc:  # the next start recovers it
            logger.error("task %s: cannot give it back unstarted (%s); the next start runs it",
                         run.task.id, dbmod.describe(self.path, exc))

    def take(self, args: IntervalJobArgs) -> ClaimedRun | None:
        """The run a message names, as claimed by `dequeue` in this process."""
        return self.claimed.pop(args.task_id, None)

    def idle_timeout(self) -> float:
        try:
            due = self.ledger.next_due(self.hold())
        except Exception:  # the next claim says what is wrong
            return 1.0
        if due is None:
            return MAX_IDLE
        return min(MAX_IDLE, max(0.0, (due - self.now()).total_seconds()))

    def watch(self) -> DatabaseWatch:
        watch = getattr(self.local, "watch", None)
        if watch is None:
            kind = DatabaseWatch
            if is_url(self.path):
                from edgeworker.postgres import NotifyWatch as kind
            watch = self.local.watch = kind(self.path, self.stop or Flag())
            self.watches.append(watch)
        return watch

    def close(self) -> None:
        for watch in self.watches:
            watch.close()
        self.watches.clear()

    # -- what huey asks of a storage that edgeworker keeps elsewhere ----------------------------

    def queue_size(self) -> int:
        return self.depth()["ready"]

    def schedule_size(self) -> int:
        return self.depth()["scheduled"]

    def depth(self) -> dict:
        from edgeworker import report  # a read-side module: a worker that is not asked keeps
        #                                it out of memory

        return report.queue_depth(self.ledger.db, self.now())

    def enqueued_items(self, limit=None) -> list[bytes]:
        return [self.encode(IntervalJobArgs(t.job_id, t.id).payload())
                for t in self.ledger.waiting(limit or -1)]

    def scheduled_items(self, limit=None) -> list[bytes]:
        return []  # enqueued_items() lists every waiting run, due or not

    def flush_queue(self) -> None:
        raise Unsupported("edgeworker's queue is its tasks: cancel them (edgeworker tasks cancel)")

    flush_schedule = flush_queue
    flush_all = flush_queue

    def peek_many(self, keys) -> dict:
        return {}  # nothing is revoked: an operator cancels a task instead

    def delete_data(self, key) -> bool:
        return False  # huey clears a revocation after each run; there is none

    def put_data(self, key, value, is_result=False):
        raise Unsupported("edgeworker keeps no results, locks or revocations in huey: the "
                          "ledger records each run's outcome")

    put_if_empty = put_data

    def peek_data(self, key):
        raise Unsupported("edgeworker keeps no results in huey")

    pop_data = peek_data

    def has_data_for_key(self, key) -> bool:
        return False

    def result_store_size(self) -> int:
        return 0

    def result_items(self) -> dict:
        return {}


class EdgeHuey(Huey):
    """huey over the ledger's tasks, with one task: run a job (the seed's interval job)."""

    def __init__(self, ledger: Ledger):
        super().__init__(QUEUE_NAME, results=False, utc=True, storage_class=TaskStorage,
                         ledger=ledger)
        self.ledger = ledger
        self.handler: Callable[[IntervalJobArgs, ClaimedRun | None], None] | None = None

        @self.task(name=TASK_NAME)
        def run_job(payload: dict):
            if self.handler is None:
                raise RuntimeError("this process only enqueues runs; it does not execute them")
            args = IntervalJobArgs.from_payload(payload)
            return self.handler(args, self.storage.take(args))

        self.run_job = run_job
        self.storage.encode = lambda payload: self.serialize_task(run_job.s(payload))
        self.storage.decode = self.decode_message

    def decode_message(self, data: bytes) -> tuple[dict, datetime | None]:
        task = self.deserialize_task(data)
        return task.args[0], task.eta

    def bind(self, handler: Callable[[IntervalJobArgs, ClaimedRun | None], None], *,
             now: Callable[[], datetime], hold: Callable[[], bool], stop: Flag,
             path: str) -> None:
        """Make this process a worker: claimed runs go to `handler`."""
        self.handler = handler
        storage = self.storage
        storage.now, storage.hold, storage.stop, storage.path = now, hold, stop, path

    def run(self, args: IntervalJobArgs, eta: datetime | None = None) -> None:
        """Enqueue a run through huey (`jobs run` without a row: the seed's path)."""
        if eta is None:
            self.run_job(args.payload())
        else:
            self.run_job.schedule(args=(args.payload(),), eta=eta)
