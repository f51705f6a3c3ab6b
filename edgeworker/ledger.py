"""The only writer of task state, and the queue's store: a run waits as a `created` row.

Every transition of a task (see `models.TRANSITIONS`) is one transaction here. There is no second
copy of a waiting run anywhere: `edgeworker.queue.TaskStorage` (huey's storage) claims the next due
row with one conditional UPDATE (`claim`), so two workers can never start one run twice, and a row
is never without its "message". Attempts are counted at the claim, so a task that kills the worker
every time still ends `failed` after `max_attempts`. The statements of the run path are named in
`edgeworker.sql`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee

from edgeworker import schedule
from edgeworker.clock import from_text, to_text
from edgeworker.config import default_worker_name, is_tag
from edgeworker.errors import Conflict, NotFound, ScheduleError
from edgeworker.models import (
    FINISHED,
    IS_UNFINISHED,
    UNFINISHED,
    ClockState,
    HookRun,
    Job,
    Recovery,
    Task,
    TaskStatus,
    Worker,
    tags_text,
)
from edgeworker.sql import claiming, pg_claiming, server_now, statements_for

logger = logging.getLogger("edgeworker.ledger")

S = TaskStatus
CRON_STEP_RULE = 3 * 3600.0  # cron's rule: a smaller step neither repeats nor skips a fixed job


def _model(model, row: tuple):
    """A model instance from a row of `SELECT sql.columns(model)`, converted field by field: the
    instance peewee's constructor makes, without its per-field attribute protocol (on the run
    path, building a run's model cost more than the statement that read it)."""
    return _instance(model, {field.name: None if value is None else field.python_value(value)
                             for field, value in zip(model._meta.sorted_fields, row,
                                                     strict=True)})


def _instance(model, data: dict):
    """`model(**data)`, for values that are the fields' Python values already."""
    instance = model.__new__(model)
    instance.__data__, instance._dirty, instance.__rel__ = data, set(data), {}
    return instance


def _plan_inputs(job: Job) -> tuple:
    """What the plan for a run's end depends on: retry or not, back-off, next slot and due."""
    return (job.active, job.max_attempts, job.name, job.every_seconds, job.cron, job.timezone,
            job.catch_up, job.catch_up_limit, job.jitter_seconds, job.retry_delay_seconds)


@dataclass(frozen=True)
class IntervalJobArgs:
    """What a queued run's huey message carries (the seed's IntervalJobArgs): the job, the task
    row, and on a recovery the attempt a dead worker was running."""

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


@dataclass(frozen=True)
class ClaimedRun:
    """A task this worker has claimed: the row (status running) and its job, as of the claim."""

    task: Task
    job: Job

    @property
    def recovered(self) -> bool:
        return self.task.recovering

    @property
    def args(self) -> IntervalJobArgs:
        recovering = self.task.recovering_attempt if self.recovered else None
        return IntervalJobArgs(self.job.id, self.task.id, recovering)


@dataclass(frozen=True)
class Outcome:
    """What a run ended with. Text is stored without NUL characters (a command may print them;
    PostgreSQL's text cannot hold them): each becomes U+FFFD, as on both back ends."""

    succeeded: bool
    exit_code: int | None = None
    error: str | None = None
    output: str | None = None

    def __post_init__(self):
        for name in ("error", "output"):
            text = getattr(self, name)
            if text and "\x00" in text:
                object.__setattr__(self, name, text.replace("\x00", "\ufffd"))


class Ledger:
    def __init__(self, database: peewee.Database, worker: str | None = None,
                 tags: tuple[str, ...] = ()):
        self.db = database
        self.sql = statements_for(database)
        self.postgres = isinstance(database, peewee.PostgresqlDatabase)
        self.worker = worker or default_worker_name()  # tasks.worker, the workers row
        self._tag(tags)
        self.jobs: dict[int, tuple[tuple, Job]] = {}  # job id -> (row, model), see _job
        # Rows this worker claimed and has not seen finish: where its running runs are (sql.py)
        self.mine: set[int] = set()
        self.mine_lock = threading.Lock()

    def _tag(self, tags: tuple[str, ...]) -> None:
        """This worker claims runs of jobs without run_on, and of those whose run_on holds one
        of its tags ([worker] tags, and its name where that is a valid tag: `run_on =
        ["gateway-2"]`), each looked for as stored: a JSON string."""
        self.tags = tuple(sorted(set(tags)))
        claims = sorted(set(tags) | ({self.worker} if is_tag(self.worker) else set()))
        self.tag_params = {f"g{i}": json.dumps(tag) for i, tag in enumerate(claims)}

    def retag(self, tags: tuple[str, ...]) -> None:
        """New tags for this worker (a reload changed [worker] tags): its next claims use them,
        and its workers row shows them."""
        self._tag(tags)
        Worker.update(tags=tags_text(self.tags)).where(Worker.name == self.worker).execute()

    # -- creating runs ------------------------------------------------------------------------

    def _create(self, job: Job, slot: datetime, due: datetime, origin: str,
                now: datetime) -> Task | None:
        """A new waiting run; None when a scheduled one is there already (another worker created
        the job's next run: PostgreSQL's tasks_next_run, see sql.py "create")."""
        # An overdue scheduled run (catch-up) is due when it is created: it waits behind work
        # that fell due before it, so a flood of catch-up runs cannot hold back another job's.
        if origin == "schedule":
            due = max(due, now)
        row = self.db.execute_sql(self.sql["create"], (job.id, origin, to_text(slot),
                                                       to_text(due), to_text(now))).fetchone()
        if row is None:
            logger.debug("job %s's run for %s was there already", job.name, to_text(slot))
            return None
        return _instance(Task, {"id": row[0], "job": job.id, "status": S.CREATED,
                                "origin": origin, "scheduled_for": slot, "due_at": due,
                                "attempt": 0, "recovered_count": 0, "created_at": now})

    def _get(self, model, key: int):
        row = self.db.execute_sql(self.sql[model._meta.name], (key,)).fetchone()
        return None if row is None else _model(model, row)

    def _job(self, job_id: int) -> Job | None:
        """A job as stored now. Read at every claim and finish; a model is built only when the
        row differs from the one last read (building one costs more than the query)."""
        row = self.db.execute_sql(self.sql["job"], (job_id,)).fetchone()
        if row is None:
            return None
        seen = self.jobs.get(job_id)
        if seen is None or seen[0] != row:
            seen = self.jobs[job_id] = (row, _model(Job, row))
        return seen[1]

    @staticmethod
    def _plan(job: Job, last_slot: datetime | None, now: datetime) -> tuple[datetime, datetime]:
        """The slot and due time of a job's next scheduled run: computed before a write
        transaction opens, so that no schedule arithmetic runs while SQLite's write lock is held."""
        slot = schedule.next_run(job, last_slot, now)
        return slot, schedule.due_at(job, slot)

    def schedule_next(self, job: Job, last_slot: datetime | None,
                      now: datetime) -> Task | None:
        """Create the job's next scheduled run (catch-up applied); None if it is there already
        (another worker's)."""
        slot, due = self._plan(job, last_slot, now)
        with self.db.atomic():
            return self._create(job, slot, due, "schedule", now)

    def pending_scheduled(self, job_id: int) -> Task | None:
        row = self.db.execute_sql(self.sql["pending"], (job_id,)).fetchone()
        return None if row is None else _model(Task, row)

    def last_slot(self, job_id: int) -> datetime | None:
        return (Task.select(peewee.fn.MAX(Task.scheduled_for))
                .where((Task.job == job_id) & (Task.origin == "schedule")).scalar())

    def ensure_scheduled(self, job: Job, now: datetime, catch_up: bool = True) -> Task | None:
        """Give an active job its one pending scheduled run, if it has none (None: it had one,
        or another worker created it meanwhile).

        With `catch_up`, slots missed since its last scheduled run follow the job's catch-up
        policy (start-up after downtime); without, the next run is the next slot (a new or
        resumed job: slots missed while paused are not owed).
        """
        if not job.active or self.pending_scheduled(job.id) is not None:
            return None
        last = self.last_slot(job.id) if catch_up else None
        slot, due = self._plan(job, last, now)
        with self.db.atomic():
            if self.pending_scheduled(job.id) is not None:
                return None
            if catch_up and self.last_slot(job.id) != last:  # a run finished meanwhile
                slot, due = self._plan(job, self.last_slot(job.id), now)
            return self._create(job, slot, due, "schedule", now)

    def run_now(self, job: Job, now: datetime, slot: datetime | None = None) -> Task:
        """A manual run (`jobs run`, `tasks retry`), outside the schedule. Refused for a paused
        or disabled job: no worker would take it."""
        if job.paused:
            raise Conflict(f'job "{job.name}" is paused: resume it first '
                           f"(edgeworker jobs resume {job.name})")
        if not job.enabled:
            raise Conflict(f'job "{job.name}" is disabled (enabled = false in its config)')
        with self.db.atomic():
            return self._create(job, slot or now, now, "manual", now)

    def retry(self, task_id: int, now: datetime) -> Task:
        """An operator's retry: a manual run of a failed or cancelled task's job, for the same
        slot. Refused for a task in another state, or whose job was removed."""
        task = self.task(task_id)
        if task.status not in self.RETRYABLE:  # both final: checked before the write lock
            raise Conflict(f"task {task_id} is {task.status}; only failed or cancelled tasks can "
                           "be retried")
        with self.db.atomic():
            job = Job.get_or_none(Job.id == task.job_id)
            if job is None:
                raise Conflict(f"task {task_id}'s job no longer exists")
            return self.run_now(job, now, slot=task.scheduled_for)

    # -- huey's queue: enqueue, claim and finish -----------------------------------------------

    def enqueue(self, args: IntervalJobArgs, due: datetime, now: datetime) -> Task | None:
        """A run huey enqueued or scheduled: a message without a task creates a manual run (the
        seed's path), one with a task makes that waiting row due at `due`, and a recovery message
        resets the row a dead worker left running. Returns the row, or None if it was dropped."""
        with self.db.atomic():
            if args.task_id is None:
                job = self._job(args.job_id)
                if job is None or not job.active:
                    logger.info("dropped a run of job %s: the job is gone or paused", args.job_id)
                    return None
                return self._create(job, now, due, "manual", now)
            if args.recovering_attempt is not None:
                self.db.execute_sql(self.sql["recover"], (to_text(due), args.task_id,
                                                          args.recovering_attempt))
            self.db.execute_sql(self.sql["requeue"], (to_text(due), args.task_id))
            return self._get(Task, args.task_id)

    def due(self, now: datetime, hold: bool = False) -> bool:
        """Is a claimable run due? A read: it takes no write lock."""
        sql, params = self._claiming("due", now=to_text(now), hold=hold)
        return self.db.execute_sql(sql, params).fetchone() is not None

    def claim(self, now: datetime, hold: bool = False) -> ClaimedRun | None:
        """Claim the next due run whose job is active and not running (one UPDATE ... RETURNING,
        one commit); with `hold`, cron jobs' scheduled runs wait (the clock is not trusted)."""
        with self.db.atomic("IMMEDIATE"):
            return self._claim(now, hold)

    def _claim(self, now: datetime, hold: bool, known: Job | None = None) -> ClaimedRun | None:
        """`known`: a job row read in this transaction already (a finish's), not read again
        (SQLite: the write lock keeps it as read; PostgreSQL reads it again)."""
        sql, params = self._claiming("claim", now=to_text(now), hold=hold, worker=self.worker)
        if self.postgres:
            from edgeworker import postgres

            row = postgres.claim(self.db, sql, self.sql["claim_take"], params)
        else:
            row = self.db.execute_sql(sql, params).fetchone()
        if row is None:
            return None
        with self.mine_lock:
            self.mine.add(row[0])
        try:
            task = _model(Task, row)
            reuse = known is not None and known.id == task.job_id and not self.postgres
            job = known if reuse else self._job(task.job_id)
        except (ValueError, TypeError) as exc:  # a row written by hand, or damaged
            error = f"cannot read this run's row: {type(exc).__name__}: {exc}"
            self.db.execute_sql(self.sql["unreadable"], (to_text(now), error, row[0]))
            logger.error("task %s: %s; it failed", row[0], error)
            return None
        return ClaimedRun(task, job)

    def _claiming(self, name: str, **params) -> tuple[str, dict]:
        """A statement that looks for claimable runs, for this worker's tags and with its
        claimed rows (SQLite: one worker; PostgreSQL looks at every worker's)."""
        params.update(self.tag_params)
        if self.postgres:
            name = "claim_pick" if name == "claim" else name
            return pg_claiming(name, len(self.tag_params)), params
        with self.mine_lock:
            mine = list(self.mine)
        params.update((f"r{i}", task_id) for i, task_id in enumerate(mine))
        return claiming(name, len(mine), len(self.tag_params)), params

    def _done(self, task_id: int) -> None:
        with self.mine_lock:
            self.mine.discard(task_id)

    def unclaim(self, run: ClaimedRun) -> bool:
        """Give back a run claimed but not started (a worker thread stopping)."""
        given = bool(self.db.execute_sql(self.sql["unclaim"],
                                         (run.task.id, run.task.attempt)).rowcount)
        self._done(run.task.id)
        return given

    def next_due(self, hold: bool = False) -> datetime | None:
        """When the next claimable run falls due (it may be past), or None."""
        sql, params = self._claiming("next_due", hold=hold)
        value = self.db.execute_sql(sql, params).fetchone()[0]
        return None if value is None else from_text(value)

    def waiting(self, limit: int = -1) -> list[Task]:
        """Waiting runs in the order they are due."""
        return [_model(Task, row) for row in self.db.execute_sql(self.sql["waiting"], (limit,))]

    def finish(self, run: ClaimedRun, outcome: Outcome, now: datetime) -> Task:
        """Record a run's outcome: succeeded, failed, or back to created for a retry; and, when a
        scheduled run is over, create the job's next one, all in one transaction."""
        return self._finish(run, outcome, now, None)[0]

    def finish_and_claim(self, run: ClaimedRun, outcome: Outcome, now: datetime,
                         hold: bool = False) -> tuple[Task, ClaimedRun | None]:
        """`finish`, and claim the next due run in the same transaction: a worker thread that
        will take the next run at once saves a commit per run while work is waiting."""
        return self._finish(run, outcome, now, hold)

    def _finish(self, run: ClaimedRun, outcome: Outcome, now: datetime,
                claim_next: bool | None) -> tuple[Task, ClaimedRun | None]:
        task = run.task
        # The next slot and the back-off are worked out from the job as it was at the claim,
        # before the write lock is taken; a job edited while it ran is planned again inside.
        planned = run.job
        following, backoff = self._end_plan(planned, task, outcome, now)
        with self.db.atomic():
            job = self._job(task.job_id)
            # the same model: the row has not changed since the claim (see _job)
            if job is not None and job is not planned and \
                    _plan_inputs(job) != _plan_inputs(planned):
                following, backoff = self._end_plan(job, task, outcome, now)
            retry = (not outcome.succeeded and job is not None and job.active
                     and task.attempt < job.max_attempts)
            if retry:
                status, finished = S.CREATED, None
                due = now + timedelta(seconds=backoff)
            else:
                status = S.SUCCEEDED if outcome.succeeded else S.FAILED
                finished, due = now, task.due_at
            changed = self.db.execute_sql(self.sql["finish"], (
                status.value, finished and to_text(finished), to_text(due), outcome.exit_code,
                outcome.error, outcome.output, task.id, task.attempt)).rowcount
            if not changed:
                self._not_recorded(task)
            elif not retry and following is not None and job is not None and job.active:
                self._create(job, *following, "schedule", now)
            following_run = None if claim_next is None else self._claim(now, claim_next, job)
        self._done(task.id)
        if not changed:
            return self._get(Task, task.id), following_run
        # the row as the UPDATE left it, without reading it back
        task.status, task.finished_at, task.due_at = status.value, finished, due
        task.exit_code, task.error, task.output = outcome.exit_code, outcome.error, outcome.output
        return task, following_run

    def _not_recorded(self, task: Task) -> None:
        """A finish whose compare-and-set found the run changed: say by whom, in one line."""
        takers = (Recovery.select(Recovery.worker, Recovery.task_ids)
                  .where((Recovery.worker != self.worker) & Recovery.task_ids.is_null(False))
                  .order_by(Recovery.id.desc()).tuples())  # at most recovery.KEEP_RECORDS
        taker = next((w for w, ids in takers if str(task.id) in ids.split(",")), None)
        if taker is not None:
            logger.warning("task %s was recovered by %s after this worker's lease expired; its "
                           "result is dropped", task.id, taker)
        else:
            logger.info("task %s was changed by someone else while it ran; its outcome is not "
                        "recorded", task.id)

    def _end_plan(self, job: Job, task: Task, outcome: Outcome,
                  now: datetime) -> tuple[tuple[datetime, datetime] | None, float]:
        """The next scheduled run (slot, due) if this one ends, and the back-off if it is
        retried. A schedule that gives no time (settings stored by an older version) must not
        lose this run's outcome: it is logged, and the job waits until it is changed."""
        if not outcome.succeeded and job.active and task.attempt < job.max_attempts:
            return None, schedule.retry_delay(job, task.id, task.attempt)
        if task.origin != "schedule" or not job.active:
            return None, 0.0
        try:
            return self._plan(job, task.scheduled_for, now), 0.0
        except ScheduleError as exc:
            logger.error("%s; no further run is scheduled until the job is changed", exc)
            return None, 0.0

    # -- operators and recovery ----------------------------------------------------------------

    def _close(self, task: Task, status: TaskStatus, now: datetime, error: str) -> bool:
        """created/running -> failed/cancelled, with the reason."""
        return bool(Task.update(status=status, finished_at=now, error=error)
                    .where(IS_UNFINISHED & (Task.id == task.id)).execute())

    def cancel(self, task: Task, reason: str, now: datetime) -> bool:
        """An operator's cancel: created/running -> cancelled, only if the task is still as it
        was read (a run that finished meanwhile keeps its outcome; a running one's worker then
        cannot record it). A scheduled run's job gets its next run, as when a run finishes."""
        with self.db.atomic():
            changed = (Task.update(status=S.CANCELLED, finished_at=now, error=reason)
                       .where((Task.id == task.id) & (Task.status == task.status)
                              & (Task.attempt == task.attempt)).execute())
            if changed and task.origin == "schedule":
                job = self._job(task.job_id)
                if job is not None and job.active and self.pending_scheduled(job.id) is None:
                    self.schedule_next(job, task.scheduled_for, now)
        return bool(changed)

    def cancelled(self, task_id: int, attempt: int) -> str | None:
        """Why a run was cancelled under its worker, or None (a read: the worker asks once a
        second while a command runs)."""
        row = self.db.execute_sql(self.sql["cancelled"], (task_id,)).fetchone()
        if row is None or (row[0], row[1]) != (S.CANCELLED.value, attempt):
            return None
        return row[2] or "cancelled"

    def cancel_waiting(self, job_id: int, reason: str, now: datetime) -> int:
        """Cancel a job's tasks that have not started (pause, removal). Running ones finish."""
        return self.db.execute_sql(self.sql["cancel_waiting"],
                                   (to_text(now), reason, job_id)).rowcount

    def forget_job(self, job: Job, reason: str, now: datetime) -> int:
        """Before a job is deleted: cancel its waiting runs (a running one finishes) and keep its
        name with its history, which the deletion detaches (job_id becomes NULL)."""
        cancelled = self.cancel_waiting(job.id, reason, now)
        Task.update(job_name=job.name).where(Task.job == job.id).execute()
        return cancelled

    def enqueue_recoveries(self, tasks: list[Task], now: datetime) -> None:
        """Queue the recovery of tasks a dead worker left running: each row goes back to
        `created` with the attempt that was interrupted (`recovering_attempt`), which the next
        claim's huey message carries (a recovery message with the task id). Only rows still as
        they were read change: a second recovery of the same attempt does nothing."""
        moment = to_text(now)
        self.db.cursor().executemany(self.sql["recover"],
                                     [(moment, t.id, t.attempt) for t in tasks])

    def close_many(self, closures: list[tuple[Task, TaskStatus, str]], now: datetime) -> int:
        """created/running -> failed/cancelled for many tasks, grouped into a few UPDATEs."""
        groups: dict[tuple[TaskStatus, str], list[int]] = {}
        for task, status, reason in closures:
            groups.setdefault((status, reason), []).append(task.id)
        changed = 0
        for (status, reason), ids in groups.items():
            for chunk in peewee.chunked(ids, 500):
                changed += (Task.update(status=status, finished_at=now, error=reason)
                            .where(IS_UNFINISHED & Task.id.in_(chunk)).execute())
        return changed

    def prune(self, before: datetime, batch: int = 5000) -> int:
        """Delete finished tasks that finished before `before`; returns how many."""
        total = 0
        # The highest id is never deleted: SQLite then never hands out an id again.
        newest = Task.select(peewee.fn.MAX(Task.id))
        while True:
            with self.db.atomic():
                ids = (Task.select(Task.id)
                       .where(Task.status.in_(list(FINISHED)) & (Task.finished_at < before)
                              & (Task.id < newest))
                       .limit(batch))
                deleted = Task.delete().where(Task.id.in_(ids)).execute()
            total += deleted
            if deleted < batch:
                break
        # Workers (one row a name) last seen before `before`: stopped, silent, or (SQLite: one
        # worker at a time) any other name, which wrote no heartbeat. A running task of a name
        # whose row is gone holds no lease: a live worker recovers it (recovery.recover_expired).
        seen = (Worker.stopped_at < before) | (Worker.stopped_at.is_null()
                                                & (Worker.last_heartbeat < before))
        gone = seen & (Worker.name != self.worker)
        if self.postgres:
            gone &= Worker.stopped_at.is_null(False) | Worker.heartbeat_seconds.is_null(False)
        Worker.delete().where(gone).execute()
        return total

    def prune_hook_runs(self, before: datetime) -> int:
        """Forget hook outcomes (edgeworker.alerts) older than `before`, with the tasks that
        retention prunes."""
        old = HookRun.finished_at < before
        if not HookRun.select().where(old).exists():  # a delete of nothing still takes the lock
            return 0
        return HookRun.delete().where(old).execute()

    # -- the workers table: who runs on this database ------------------------------------------

    def register(self, now: datetime, heartbeat: float | None,
                 lease: float | None = None) -> None:
        """Record this worker's life under its name (`self.worker`): started now, not stopped,
        heard from now by the database server's clock (its lease starts)."""
        from edgeworker import __version__
        from edgeworker.processes import boot_id

        row = {Worker.host: socket.gethostname(), Worker.pid: os.getpid(),
               Worker.started_at: now, Worker.last_heartbeat: now,
               Worker.heartbeat_seconds: heartbeat, Worker.version: __version__,
               Worker.stopped_at: None, Worker.tags: tags_text(self.tags),
               Worker.boot_id: boot_id(),
               Worker.beat_at: peewee.SQL(server_now(self.db)), Worker.lease_seconds: lease}
        (Worker.insert({Worker.name: self.worker, **row})
         .on_conflict(conflict_target=[Worker.name], update=row).execute())

    def heartbeat(self, now: datetime) -> bool:
        """Renew this worker's lease; False if its row is gone (pruned: register again)."""
        return bool(self.db.execute_sql(self.sql["heartbeat"], (to_text(now),
                                                                self.worker)).rowcount)

    def stopped(self, now: datetime) -> None:
        Worker.update(last_heartbeat=now, stopped_at=now).where(
            Worker.name == self.worker).execute()

    # -- the clock: high-water mark and re-planning after a step ---------------------------------

    def high_water(self) -> datetime | None:
        """The newest time recorded: the clock row's mark, or a newer time in a run since."""
        state = ClockState.get_or_none(ClockState.id == 1)
        marks = [to_text(state.high_water)] if state is not None else []
        rows = self.db.execute_sql(self.sql["newest_times"], (
            state.high_water_task if state is not None else 0,)).fetchall()
        marks += [value for (value,) in rows if value]
        return from_text(max(marks)) if marks else None

    def clock_state(self) -> ClockState | None:
        return ClockState.get_or_none(ClockState.id == 1)

    def save_clock(self, now: datetime, correct: bool = False, **fields) -> None:
        """Record the worker's time as the high-water mark (never lower, unless `correct`: the
        clock was set back and synchronised, so the times recorded before were ahead), with other
        clock facts (`ClockState` fields)."""
        last_id = self.db.execute_sql(self.sql["last_id"]).fetchone()[0] or 0
        with self.db.atomic():
            # Workers starting at once on PostgreSQL: the row is made once, then changed by one
            # at a time.
            ClockState.insert(id=1, high_water=now).on_conflict_ignore().execute()
            query = ClockState.select().where(ClockState.id == 1)
            state = (query.for_update() if self.postgres else query).get()
            if correct or now > state.high_water:
                state.high_water = now
            state.high_water_task = last_id
            for name, value in fields.items():
                setattr(state, name, value)
            state.save()

    def _pending(self) -> list[tuple[Task, Job]]:
        """Created tasks (waiting to run) with their jobs."""
        rows = (Task.select(Task, Job).join(Job).where(IS_UNFINISHED & (Task.status == S.CREATED)))
        return [(task, task.job) for task in rows]

    def replan(self, moved: float, now: datetime) -> int:
        """Re-plan waiting runs after the worker's time moved by `moved` seconds (a clock step).

        Durations keep their length on the monotonic clock: an interval job's next run, and a
        retry's back-off, move with the clock. Cron jobs follow cron's rule: after a step of under
        3 hours a fixed-time job is neither repeated nor skipped (a pending slot stays; slots a
        forward step skipped run now) while a job with a wildcard hour or minute follows the new
        time; a larger step is a correction: the new time is used at once, with the job's
        catch-up policy for slots a forward step skipped. Returns how many runs moved."""
        shift = timedelta(seconds=moved)
        changes: list[tuple[Task, datetime, datetime]] = []
        for task, job in self._pending():
            slot, due = task.scheduled_for, task.due_at or task.scheduled_for
            if task.origin != "schedule" or task.attempt > 0 or job.every_seconds is not None:
                if task.origin == "schedule" and task.attempt == 0:
                    slot = slot + shift
                due = due + shift
            elif abs(moved) >= CRON_STEP_RULE:
                slot = (schedule.next_run(job, slot - timedelta(microseconds=1), now)
                        if moved > 0 else schedule.next_slot(job, now))
                due = schedule.due_at(job, slot)
            elif moved < 0 and not schedule.is_fixed_time(job):
                slot = schedule.next_slot(job, now)
                due = schedule.due_at(job, slot)
            if (slot, due) != (task.scheduled_for, task.due_at):
                changes.append((task, slot, due))
        return self._move(changes)

    def _move(self, changes: list[tuple[Task, datetime, datetime]]) -> int:
        """Give waiting tasks a new slot and due time, in one transaction. A task that changed
        meanwhile (a worker claimed it) is left alone."""
        moved = 0
        with self.db.atomic():
            for task, slot, due in changes:
                moved += Task.update(scheduled_for=slot, due_at=due).where(
                    (Task.id == task.id) & (Task.status == S.CREATED)
                    & (Task.attempt == task.attempt)
                    & (Task.scheduled_for == task.scheduled_for)).execute()
        return moved

    def _calendar_runs(self) -> list[tuple[Task, Job]]:
        return [(task, job) for task, job in self._pending()
                if job.cron is not None and task.origin == "schedule" and task.attempt == 0]

    def held_calendar(self) -> int:
        """How many cron runs wait while the clock is not trusted: the claim passes them over
        (`hold`), writing nothing; a restart holds them again."""
        return len(self._calendar_runs())

    def release_calendar(self, now: datetime) -> int:
        """Re-plan held cron runs once the clock is trusted, with each job's catch-up policy for
        slots missed while held (a held slot that is still ahead stays). Returns how many
        moved."""
        changes = []
        for task, job in self._calendar_runs():
            slot = schedule.next_run(job, task.scheduled_for - timedelta(microseconds=1), now)
            changes.append((task, slot, schedule.due_at(job, slot)))
        return self._move(changes)

    # -- operators' rules ---------------------------------------------------------------------
    # What an operator may do to a run (`tasks retry`, `tasks cancel`): a refusal is a Conflict
    # (or NotFound) whose one-line message the CLI prints as it is.

    RETRYABLE = frozenset({S.FAILED, S.CANCELLED})
    CANCELLABLE = frozenset(UNFINISHED)
    MAX_ID = 2**63 - 1  # SQLite's integers are 64-bit

    def task(self, task_id: int) -> Task:
        """The task with this id, or NotFound."""
        found = Task.get_or_none(Task.id == task_id) if 1 <= task_id <= self.MAX_ID else None
        if found is None:
            raise NotFound(f"no task with id {task_id}")
        return found

    def cancel_task(self, task_id: int, reason: str, now: datetime) -> tuple[Task, str]:
        """An operator's cancel of a waiting or running run (see `cancel`). Refused for a run
        that has ended, for a callable running inside the worker (nothing could stop it short
        of the worker), and for a run that changed while being cancelled. Returns the task as it
        was before (its status tells whether it was running) and its job's name."""
        task = self.task(task_id)
        if task.status not in self.CANCELLABLE:
            raise Conflict(f"task {task_id} is {task.status}; only a waiting or running task can "
                           "be cancelled")
        job = Job.get_or_none(Job.id == task.job_id)
        name = job.name if job is not None else task.job_name or f"#{task.job_id}"
        if task.status == S.RUNNING and job is not None and job.kind == "callable" \
                and not job.isolated:
            raise Conflict(f"task {task_id} is a running callable (job {name}): it runs inside "
                           "the worker and cannot be stopped; `isolate = true` on the job runs it "
                           "in a process that can be")
        if not self.cancel(task, reason, now):
            raise Conflict(f"task {task_id} is {self.task(task_id).status} now; it changed while "
                           "being cancelled")
        return task, name

    def recording_time(self, wall: datetime) -> datetime:
        """The time an operator's change records: the wall clock, but never earlier than the
        newest time the database holds (a box whose clock is behind; see docs/time.md)."""
        mark = self.high_water()
        return max(wall, mark) if mark else wall
