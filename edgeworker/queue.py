"""huey's queue, stored in the same SQLite file as the jobs and tasks tables.

huey's `SqlStorage` (huey.contrib.sql_huey) over our peewee database: a task row and its queue
message are written in one transaction. Messages are JSON (no pickle in the database) and the one
task type has a fixed name, so queued messages survive a module being moved.

edgeworker departs from huey's defaults where durability or an SD card asks for it:
- a message is taken (`dequeue`) and its task row claimed in the same transaction, so a run
  costs one commit to start instead of three (schedule -> queue, dequeue, claim);
- the worker takes due messages straight from huey's schedule table rather than waiting for
  huey's scheduler to move them once a second, so an interval run starts on time;
- results, revocation and huey's own retries are off: the ledger keeps that state in `tasks`;
- a message for a job that has a run running in this process waits where it is, unread and
  unwritten, until that run finishes (`running_jobs`): no two runs of a job at once, and no
  commit a second while one waits.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import peewee
from huey.api import Huey
from huey.contrib.sql_huey import SqlStorage
from huey.registry import Message, Registry
from huey.serializer import Serializer

from edgeworker.clock import utcnow

logger = logging.getLogger("edgeworker.queue")

QUEUE_NAME = "edgeworker"
TASK_NAME = "edgeworker.run_job"
CLAIM_RETRY = timedelta(seconds=60)  # a claim that failed outside the database is tried again


# A message's job id, NULL-safe for a message that is not JSON (dequeue drops and logs those).
FREE = ("coalesce(CASE WHEN json_valid(CAST(data AS TEXT)) THEN json_extract(CAST(data AS TEXT), "
        "'$.args[0].job_id') END, -1) NOT IN (SELECT value FROM json_each(?))")


def job_of(data: bytes) -> int | None:
    try:
        return json.loads(data)["args"][0]["job_id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class Deferred(Exception):
    """Raised by a claim: the job is running another run here; the message waits, unchanged."""


@dataclass(frozen=True)
class IntervalJobArgs:
    """The payload of a queued run (the seed's IntervalJobArgs).

    `task_id` names the row to run; a message without one makes the worker create a new row.
    `recovering_attempt` is set on recovery messages: the attempt that a dead worker was running,
    so that the worker resets exactly that run and a duplicate recovery message does nothing.
    """

    job_id: int
    task_id: int | None = None
    recovering_attempt: int | None = None

    @classmethod
    def from_payload(cls, payload: dict) -> IntervalJobArgs:
        return cls(**payload)

    def payload(self) -> dict:
        body = {"job_id": self.job_id}
        if self.task_id is not None:
            body["task_id"] = self.task_id
        if self.recovering_attempt is not None:
            body["recovering_attempt"] = self.recovering_attempt
        return body


class JsonSerializer(Serializer):
    """huey messages as compact JSON: readable in a sqlite3 shell, and no pickle to trust."""

    def _serialize(self, message: Message) -> bytes:
        if message.on_complete or message.on_error or message.chord_config:
            raise ValueError("edgeworker messages carry no pipelines")
        body = {"id": message.id, "name": message.name, "args": list(message.args)}
        if message.eta is not None:
            body["eta"] = message.eta.isoformat()
        if message.kwargs:
            body["kwargs"] = message.kwargs
        return json.dumps(body, separators=(",", ":")).encode()

    def _deserialize(self, data: bytes) -> Message:
        body = json.loads(data)
        eta = datetime.fromisoformat(body["eta"]) if body.get("eta") else None
        return Message(body["id"], body["name"], eta, 0, 0, None, tuple(body["args"]),
                       body.get("kwargs", {}), None, None, None, None, None, None, None)


class FixedNameRegistry(Registry):
    def task_to_string(self, task_class) -> str:
        # huey's default is module.function: a queued message would break when a module moves.
        return task_class.__name__


class EdgeStorage(SqlStorage):
    """huey's SqlStorage with prefixed tables, created by our migrations (not on the fly).

    The statements of every run are written out once: peewee builds a query's SQL text anew each
    time, which cost more than SQLite took to run it. The queue is taken in id order, as
    edgeworker sets no priorities (migration 008 dropped huey's priority index).
    """

    def __init__(self, name: str, database: peewee.SqliteDatabase, **kwargs):
        super().__init__(name, database=database, create_tables=False, **kwargs)
        queue, schedule = self.Task._meta.table_name, self.Schedule._meta.table_name
        self._sql = {
            "ready": f"SELECT id, data FROM {queue} WHERE queue = ? ORDER BY id LIMIT 1",
            "due": f"SELECT id, data FROM {schedule} WHERE queue = ? AND timestamp <= ? "
                   "ORDER BY timestamp, id LIMIT 1",
            # The same, skipping messages whose job is in a JSON list (`running_jobs`).
            "free_ready": f"SELECT id, data FROM {queue} WHERE queue = ? AND {FREE} "
                          "ORDER BY id LIMIT 1",
            "free_due": f"SELECT id, data FROM {schedule} WHERE queue = ? AND timestamp <= ? "
                        f"AND {FREE} ORDER BY timestamp, id LIMIT 1",
            "free_next": f"SELECT MIN(timestamp) FROM {schedule} WHERE queue = ? AND {FREE}",
            "all_ready": f"SELECT id, data FROM {queue} WHERE queue = ? ORDER BY id",
            "all_due": f"SELECT id, data FROM {schedule} WHERE queue = ? AND timestamp <= ? "
                       "ORDER BY timestamp, id",
            "all_scheduled": f"SELECT data, timestamp FROM {schedule} WHERE queue = ? "
                             "ORDER BY timestamp, id",
            "pop_ready": f"DELETE FROM {queue} WHERE id = ?",
            "pop_due": f"DELETE FROM {schedule} WHERE id = ?",
            "put_ready": f"INSERT INTO {queue} (queue, data, priority) VALUES (?, ?, 0)",
            "put_due": f"INSERT INTO {schedule} (queue, data, timestamp) VALUES (?, ?, ?)",
        }
        self._stamp = self.Schedule.timestamp.db_value
        # Jobs with a run running in this process: their other messages wait (see EdgeHuey).
        self.running_jobs: set[int] = set()
        self.json_functions: bool | None = None  # SQLite's JSON functions (built in since 3.38)

    def create_models(self):
        models = super().create_models()
        for model in models:
            model._meta.set_table_name("huey_" + model._meta.table_name)
        # huey passes naive UTC datetimes; store true epoch milliseconds, not local-time ones.
        models[1].timestamp.utc = True
        return models

    def _ready(self, now: datetime) -> tuple[str, tuple | None]:
        """The next message to run: the queue first, then the earliest due scheduled one."""
        if self.running_jobs:
            return self._ready_free(now)
        row = self.database.execute_sql(self._sql["ready"], (self.name,)).fetchone()
        if row is not None:
            return "pop_ready", row
        row = self.database.execute_sql(self._sql["due"], (self.name, self._stamp(now)))
        return "pop_due", row.fetchone()

    def _ready_free(self, now: datetime) -> tuple[str, tuple | None]:
        running = json.dumps(sorted(self.running_jobs))
        if self._json():
            row = self.database.execute_sql(self._sql["free_ready"], (self.name, running))
            row = row.fetchone()
            if row is not None:
                return "pop_ready", row
            row = self.database.execute_sql(self._sql["free_due"],
                                            (self.name, self._stamp(now), running))
            return "pop_due", row.fetchone()
        for delete, sql, params in (("pop_ready", "all_ready", (self.name,)),
                                    ("pop_due", "all_due", (self.name, self._stamp(now)))):
            for row in self.database.execute_sql(self._sql[sql], params):
                if job_of(bytes(row[1])) not in self.running_jobs:
                    return delete, row
        return "pop_due", None

    def _json(self) -> bool:
        if self.json_functions is None:
            try:
                self.database.execute_sql("SELECT json_extract('[1]', '$[0]')").fetchone()
                self.json_functions = True
            except peewee.OperationalError:  # an SQLite built without them: scan in Python
                self.json_functions = False
        return self.json_functions

    def has_ready(self, now: datetime) -> bool:
        return self._ready(now)[1] is not None

    def pop_ready(self, now: datetime) -> bytes | None:
        """Remove and return the next ready message; call inside the caller's transaction."""
        delete, row = self._ready(now)
        if row is None:
            return None
        self.database.execute_sql(self._sql[delete], (row[0],))
        return bytes(row[1])

    def next_due(self) -> datetime | None:
        """When the earliest scheduled message that does not wait falls due (aware UTC), or
        None."""
        if not self.running_jobs:
            value = self.schedule(peewee.fn.MIN(self.Schedule.timestamp)).scalar()
            return None if value is None else value.replace(tzinfo=UTC)  # naive UTC
        stamp = None
        if self._json():
            stamp = self.database.execute_sql(self._sql["free_next"], (
                self.name, json.dumps(sorted(self.running_jobs)))).fetchone()[0]
        else:
            for data, value in self.database.execute_sql(self._sql["all_scheduled"],
                                                         (self.name,)):
                if job_of(bytes(data)) not in self.running_jobs:
                    stamp = value
                    break
        if stamp is None:
            return None
        return self.Schedule.timestamp.python_value(stamp).replace(tzinfo=UTC)

    def add_many(self, ready: list[bytes], scheduled: list[tuple[bytes, datetime]]) -> None:
        """Insert messages: `ready` to run now, `scheduled` with their naive UTC etas."""
        cursor = self.database.cursor()
        if ready:
            cursor.executemany(self._sql["put_ready"], [(self.name, data) for data in ready])
        if scheduled:
            cursor.executemany(self._sql["put_due"], [(self.name, data, self._stamp(eta))
                                                      for data, eta in scheduled])

    def all_messages(self) -> list[bytes]:
        return [data for _, _, data in self.rows()]

    def rows(self) -> list[tuple[str, int, bytes]]:
        """Every message as (table, id, data)."""
        queue, schedule = self.Task._meta.table_name, self.Schedule._meta.table_name
        return [(table, key, bytes(data)) for table in (queue, schedule)
                for key, data in self.database.execute_sql(
                    f"SELECT id, data FROM {table} WHERE queue = ?", (self.name,))]

    def remove(self, rows: list[tuple[str, int]]) -> None:
        for table, key in rows:
            self.database.execute_sql(f"DELETE FROM {table} WHERE id = ?", (key,))


Claim = Callable[[IntervalJobArgs, datetime], object | None]


class EdgeHuey(Huey):
    """huey bound to our database, with one task type: run a job (the seed's interval job)."""

    def __init__(self, database: peewee.SqliteDatabase):
        super().__init__(QUEUE_NAME, results=False, utc=True, serializer=JsonSerializer(),
                         storage_class=EdgeStorage, database=database)
        self._registry = FixedNameRegistry()
        self.database = database
        self.now: Callable[[], datetime] = utcnow  # the worker sets its own clock
        # Set by the worker process (`bind`); a CLI process only enqueues.
        self.claim: Claim | None = None
        self.handler: Callable[[IntervalJobArgs, object], None] | None = None
        # Jobs with a run running in this process: their other messages wait. Changed under the
        # write lock (at a claim, or by the ledger once a finish is committed).
        self.running_jobs: set[int] = self.storage.running_jobs

        @self.task(name=TASK_NAME, context=True)
        def run_job(payload: dict, task=None):
            if self.handler is None:
                raise RuntimeError("this process only enqueues runs; it does not execute them")
            return self.handler(IntervalJobArgs.from_payload(payload), task.claimed)

        self.run_job = run_job

    def bind(self, claim: Claim, handler: Callable[[IntervalJobArgs, object], None]) -> None:
        self.claim, self.handler = claim, handler

    def put(self, args: IntervalJobArgs, eta: datetime | None = None) -> None:
        """Queue a run; call inside the transaction that writes its task row."""
        self.put_many([(args, eta)])

    def put_many(self, runs: list[tuple[IntervalJobArgs, datetime | None]]) -> None:
        """Queue runs (one, or the thousands of a start-up recovery), due at their eta or now.

        The messages are what `run_job.s(payload)` would enqueue, built straight from huey's
        Message: a huey Task object and its signals per message cost more than the INSERT."""
        now = self.now()
        ready, scheduled = [], []
        for args, eta in runs:
            due = eta.astimezone(UTC).replace(tzinfo=None) if eta and eta > now else None
            data = self.serializer.serialize(Message(str(uuid.uuid4()), TASK_NAME, due,
                                                     args=(args.payload(),), kwargs={}))
            if due is None:
                ready.append(data)
            else:
                scheduled.append((data, due))
        self.storage.add_many(ready, scheduled)

    def payloads(self) -> list[IntervalJobArgs]:
        """Every queued or scheduled run (for recovery: which task rows have a message)."""
        found = []
        for data in self.storage.all_messages():
            try:
                message = self.serializer.deserialize(data)
                found.append(IntervalJobArgs.from_payload(message.args[0]))
            except (ValueError, TypeError, KeyError, IndexError):
                logger.warning("ignoring an unreadable queue message: %r", data[:80])
        return found

    def unqueue(self, task_ids: set[int]) -> set[int]:
        """Remove the messages that name these tasks; returns the ids that had one."""
        found, doomed = set(), []
        for table, key, data in self.storage.rows():
            try:
                task_id = self.serializer.deserialize(data).args[0].get("task_id")
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                continue
            if task_id in task_ids:
                found.add(task_id)
                doomed.append((table, key))
        if doomed:  # a look that finds nothing takes no write lock
            with self.database.atomic():
                self.storage.remove(doomed)
        return found

    def dequeue(self, now: datetime | None = None, locked: bool = False):
        """Take the next ready message and claim its task, in one transaction (one commit).

        `locked` looks under the write lock at once: a lock-free read can miss a commit whose
        WAL frames are written but not yet visible (the waiter was woken by those writes).
        A deferred claim rolls back: the message waits, and nothing is written."""
        while True:
            now = now or self.now()
            if not locked and not self.storage.has_ready(now):
                return None  # a read, without taking the write lock
            claimed_job = None
            try:
                with self.database.atomic("IMMEDIATE"):
                    data = self.storage.pop_ready(now)
                    if data is None:
                        return None
                    try:
                        task = self.deserialize_task(data)
                        args = IntervalJobArgs.from_payload(task.args[0])
                    except Exception:
                        logger.error("dropped an unreadable queue message: %r", data[:80])
                        continue
                    try:
                        with self.database.atomic():  # a savepoint: a failed claim changes nothing
                            task.claimed = self.claim(args, now) if self.claim else None
                    except Deferred:
                        # Under the write lock, so that the finish that ends the running run
                        # (and empties this entry) commits after it.
                        self.running_jobs.add(args.job_id)
                        raise
                    except peewee.DatabaseError:
                        raise  # the transaction is broken: roll back, keep the message
                    except Exception as exc:
                        logger.error("cannot claim a run of job %s (%s: %s); trying again in %s",
                                     args.job_id, type(exc).__name__, exc, CLAIM_RETRY)
                        self.put(args, now + CLAIM_RETRY)  # the row keeps its message
                        continue
                    if task.claimed is not None:
                        claimed_job = args.job_id
                        self.running_jobs.add(claimed_job)
                        return task
            except Deferred:
                return None
            except BaseException:
                if claimed_job is not None:
                    self.running_jobs.discard(claimed_job)  # the claim was not committed
                raise
            # the claim was refused: the message is dropped (committed above); try the next one

    def execute(self, task, timestamp=None):
        # huey's execute also checks revocation and stores results: a query and a write
        # transaction per task that edgeworker does not need; the ledger records the outcome.
        self._tasks_in_flight.add(task)
        try:
            return task.execute()
        except Exception:
            logger.exception("run of %s failed outside its task", task.args)
        finally:
            self._tasks_in_flight.discard(task)
