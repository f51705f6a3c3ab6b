"""Start-up recovery, the seed's protocol made exact. It runs once per start, before the consumer
takes any work, while this process holds the single-instance lock (so every task found `running`
belongs to a worker that is gone; on PostgreSQL, the lock of its name, and only that name's
running tasks are its to recover). On PostgreSQL a live worker also recovers, in its
housekeeping, the running tasks of workers whose lease expired (`recover_expired`), the same way.

0. Leftover processes: whatever a dead worker's runs left alive (found by their records, process
   groups, cgroups and environment; see `edgeworker.processes`) is ended, SIGTERM then SIGKILL,
   before any recovery message is enqueued: a re-run never runs beside its earlier attempt.
1. Task recovery (`recover_running_tasks`): each `running` task is checked by `is_task_valid`.
   A valid one is enqueued for recovery: its row goes back to `created` (`recovered_count + 1`)
   with the interrupted attempt noted, and the claim hands huey its recovery message,
   `IntervalJobArgs(job_id, task_id, recovering_attempt)`; `IntervalJobWorker.work` runs it again
   with EDGEWORKER_RECOVERED=1. An invalid one ends `failed` or `cancelled`, with the reason in
   `tasks.error`. A `created` task needs nothing: the row is its place in the queue.
2. Job recovery: every active job gets its one pending scheduled run, with its catch-up policy
   applied to the slots missed while the box was down.

Everything is planned first (`plan`, which `recover --dry-run` prints) and then applied in one
transaction with multi-row writes: a crash during recovery leaves the database as it was, and
10,000 interrupted tasks recover in well under a second.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime

from edgeworker import schedule
from edgeworker.errors import ScheduleError
from edgeworker.ledger import Ledger
from edgeworker.models import (
    IS_UNFINISHED,
    Job,
    Recovery,
    Task,
    TaskStatus,
    Worker,
    recovery_line,
)
from edgeworker.processes import WORKER, ProcessTable, worker_tag

logger = logging.getLogger("edgeworker.recovery")

S = TaskStatus
KEEP_RECORDS = 100
LEFTOVER_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a dead worker's leftovers
# pg_advisory_xact_lock(int, int), "ewrc": held by a recovery's transaction on PostgreSQL, so
# that two workers never recover one task (a start-up's and another's lease recovery).
RECOVERY_LOCK = (0x65777263, 0)


@dataclass(frozen=True)
class Verdict:
    valid: bool
    status: TaskStatus | None = None  # what an invalid task becomes
    reason: str | None = None


VALID = Verdict(True)


def is_task_valid(task: Task, job: Job | None, now: datetime) -> Verdict:
    """May this unfinished task still run? Its job must exist and be active, a task a dead worker
    was running must have attempts left, and a scheduled one must be within its job's catch-up
    bound."""
    if job is None:
        return Verdict(False, S.CANCELLED, "job removed")
    if job.paused:
        return Verdict(False, S.CANCELLED, "job paused")
    if not job.enabled:
        return Verdict(False, S.CANCELLED, "job disabled")
    if task.status == S.RUNNING and task.attempt >= job.max_attempts:
        return Verdict(False, S.FAILED,
                       f"interrupted on attempt {task.attempt} of {job.max_attempts} (the worker "
                       "stopped while it ran): no attempt left")
    if task.origin == "schedule":
        try:
            stale = schedule.stale_reason(job, task.scheduled_for, now)
        except ScheduleError as exc:  # its own slot is known: let it run
            logger.error("%s", exc)
            stale = None
        if stale:
            return Verdict(False, S.CANCELLED, stale)
    return VALID


VALIDITY_COLUMNS = (Job.id, Job.name, Job.enabled, Job.paused, Job.max_attempts,
                    Job.every_seconds, Job.cron, Job.timezone, Job.catch_up, Job.catch_up_limit,
                    Job.jitter_seconds, Job.retry_delay_seconds)


class JobFacts:
    """What `is_task_valid` reads of a job (a `schedule.ScheduleSpec`), without a model."""

    def __init__(self, **columns):
        self.__dict__.update(columns)

    @property
    def active(self) -> bool:
        return bool(self.enabled) and not self.paused


@dataclass
class Plan:
    recover: list[Task] = field(default_factory=list)  # running -> recovery message
    close: list[tuple[Task, TaskStatus, str]] = field(default_factory=list)
    schedule: list[Job] = field(default_factory=list)  # active jobs without a pending run
    ended: int = 0  # processes of interrupted runs that were still alive (and were ended)
    owners: list[str] = field(default_factory=list)  # whose running tasks (lease recovery)

    def counts(self) -> dict[str, int]:
        return {
            "recovered": len(self.recover),
            "failed": sum(1 for _, status, _ in self.close if status == S.FAILED),
            "cancelled": sum(1 for _, status, _ in self.close if status == S.CANCELLED),
            "scheduled": len(self.schedule),
        }

    def line(self) -> str:
        return recovery_line({**self.counts(), "ended": self.ended})


def plan(ledger: Ledger, now: datetime, owners: set[str] | None = None,
         lease: bool = False) -> Plan:
    """What recovery would do, changing nothing. `owners`: only the running tasks recorded under
    these worker names are recovered (PostgreSQL, where other workers' runs are alive: a worker's
    own name at its start, expired workers' names in housekeeping); None: every running task (a
    SQLite file's one worker). With `lease`, only those running tasks are looked at, and only
    their jobs get a pending scheduled run (housekeeping, beside live workers)."""
    result = Plan()
    # Only the columns validity needs, as plain rows: a Job model instance costs ~20 us to build,
    # most of recovering 10,000 tasks of 10,000 jobs. Jobs to schedule are read in full below.
    jobs = {job.id: job for job in Job.select(*VALIDITY_COLUMNS).objects(JobFacts)}
    will_run: set[int] = set()  # jobs with a scheduled run that stays pending
    taken: set[int] = set()  # jobs of the running tasks looked at
    # No ORDER BY: with one, SQLite walks the whole table in id order instead of the small index.
    unfinished = (Task.select(Task.id, Task.job, Task.status, Task.origin, Task.attempt,
                              Task.scheduled_for, Task.due_at, Task.worker).where(IS_UNFINISHED))
    for task in sorted(unfinished, key=lambda t: t.id):
        running = task.status == S.RUNNING
        if (owners is not None and running and task.worker not in owners) or \
                (lease and not running):
            if task.origin == "schedule":  # its worker (or a later recovery) plans the next
                will_run.add(task.job_id)
            continue
        if running:
            taken.add(task.job_id)
        verdict = is_task_valid(task, jobs.get(task.job_id), now)
        if not verdict.valid:
            result.close.append((task, verdict.status, verdict.reason))
            continue
        if task.origin == "schedule":
            will_run.add(task.job_id)
        if running:
            result.recover.append(task)
    todo = [job.id for job in jobs.values() if job.active and job.id not in will_run
            and (not lease or job.id in taken)]
    result.schedule = list(Job.select().where(Job.id.in_(todo)).order_by(Job.id)) if todo else []
    return result


def recover_running_tasks(ledger: Ledger, todo: Plan, now: datetime) -> None:
    ledger.enqueue_recoveries(todo.recover, now)
    ledger.close_many(todo.close, now)


def recover_jobs(ledger: Ledger, todo: Plan, now: datetime) -> None:
    """Schedule the jobs the plan found without a run; `todo.schedule` keeps those scheduled
    (not one another worker scheduled meanwhile, nor one whose schedule gives no time)."""
    scheduled = []
    for job in todo.schedule:
        try:
            if ledger.schedule_next(job, ledger.last_slot(job.id), now) is not None:
                scheduled.append(job)
        except ScheduleError as exc:  # one job's schedule must not stop the worker's start
            logger.error("%s; the job is not scheduled until it is changed", exc)
    todo.schedule = scheduled


def end_leftovers(table: ProcessTable, only=None) -> int:
    """End what a dead worker's runs left alive (`only`: those runs, (task, attempt) pairs);
    call only while holding the worker lock."""
    return table.end_leftovers(LEFTOVER_GRACE, only)


def count_leftovers(database) -> int:
    """How many processes `recover` would end (`recover --dry-run`, with no worker running)."""
    table = ProcessTable.for_database(database, use_cgroups=False)
    try:
        return len(table.leftovers()[0])
    finally:
        table.close()


def end_leftovers_of(database, task_id: int, attempt: int) -> int:
    """End what is left of one run of a dead worker (a cancel while no worker runs)."""
    table = ProcessTable.for_database(database)
    try:
        return table.end_leftovers(LEFTOVER_GRACE, only=(task_id, attempt))
    finally:
        table.close()


def wait_stopped(database, task_id: int, attempt: int, timeout: float = 10.0) -> bool:
    """Wait until the worker has ended a run's processes (its record is gone)."""
    table = ProcessTable.for_database(database, use_cgroups=False)
    deadline = time.monotonic() + timeout
    while table.find(task_id, attempt) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def running_of(owners: set[str]) -> set[tuple[int, int]]:
    """The runs (task, attempt) recorded as running under these worker names, and the workers'
    own records (what their callables started: `ProcessTable.enclose`)."""
    return set(Task.select(Task.id, Task.attempt).where(
        IS_UNFINISHED & (Task.status == S.RUNNING) & Task.worker.in_(list(owners))).tuples()) | {
        (WORKER, worker_tag(name)) for name in owners}


def record(ledger: Ledger, todo: Plan, now: datetime, started: float) -> None:
    """The recovery row: what it did, who did it, and whose running tasks it took (which)."""
    taken = todo.recover + [t for t, _, _ in todo.close if t.status == S.RUNNING]
    owners = ", ".join(sorted({t.worker for t in taken if t.worker})) or None
    ids = ",".join(str(t.id) for t in sorted(todo.recover, key=lambda t: t.id)) or None
    Recovery.create(started_at=now, duration_ms=(time.perf_counter() - started) * 1000,
                    worker=ledger.worker, ended=todo.ended, recovered_from=owners, task_ids=ids,
                    **todo.counts())
    oldest_kept = (Recovery.select(Recovery.id).order_by(Recovery.id.desc())
                   .offset(KEEP_RECORDS - 1).limit(1).scalar())
    if oldest_kept:
        Recovery.delete().where(Recovery.id < oldest_kept).execute()


def recover(ledger: Ledger, now: datetime, table: ProcessTable | None = None) -> Plan:
    """End the leftovers of interrupted runs, then run the whole recovery in one transaction and
    record what it did. On PostgreSQL, where workers of other names may run, only the running
    tasks of this worker's name are recovered (its previous life's, at once) and only their
    processes ended; those of other names are theirs, or are taken when their lease expires
    (`recover_expired`)."""
    owners = {ledger.worker} if ledger.postgres else None
    own = table is None
    table = table or ProcessTable.for_database(ledger.db.database)
    try:
        ended = end_leftovers(table, None if owners is None else running_of(owners))
    finally:
        if own:
            table.close()
    started = time.perf_counter()
    with ledger.db.atomic():
        if ledger.postgres:
            ledger.db.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)", RECOVERY_LOCK)
        todo = plan(ledger, now, owners)
        todo.ended = ended
        recover_running_tasks(ledger, todo, now)
        recover_jobs(ledger, todo, now)
        record(ledger, todo, now, started)
    return todo


def expired(ledger: Ledger) -> list[str]:
    """The worker names whose running tasks no lease holds any more (PostgreSQL)."""
    rows = ledger.db.execute_sql(ledger.sql["expired"], {"worker": ledger.worker}).fetchall()
    return sorted(name for (name,) in rows)


def recover_expired(ledger: Ledger, now: datetime,
                    table: ProcessTable | None = None) -> Plan | None:
    """A live worker's housekeeping on PostgreSQL: recover the running tasks of workers whose
    lease expired (by the server's clock), through the same plan, validity checks and recovery
    message as a start. One transaction holding RECOVERY_LOCK (tried, not waited for: another
    worker recovering now does it), with the expiry looked at again inside it, so that two
    workers never recover one task. What those runs left on this host is ended first; on
    another host it cannot be (the worker there ends its runs when it finds its lease lost).
    Returns the plan, or None when there was nothing to do."""
    if not expired(ledger):
        return None
    started = time.perf_counter()
    with ledger.db.atomic():
        if not ledger.db.execute_sql("SELECT pg_try_advisory_xact_lock(%s, %s)",
                                     RECOVERY_LOCK).fetchone()[0]:
            return None
        owners = expired(ledger)
        if not owners:
            return None
        hosts = dict(Worker.select(Worker.name, Worker.host)
                     .where(Worker.name.in_(owners)).tuples())
        here = socket.gethostname()
        local = {name for name in owners if hosts.get(name) == here}
        if local and table is not None:
            ended = end_leftovers(table, running_of(local))
        else:
            ended = 0
        todo = plan(ledger, now, set(owners), lease=True)
        todo.ended, todo.owners = ended, owners
        recover_running_tasks(ledger, todo, now)
        recover_jobs(ledger, todo, now)
        record(ledger, todo, now, started)
    for name in owners:
        if name in local:
            continue
        ids = [t.id for t in todo.recover if t.worker == name]
        logger.warning('worker "%s"%s lost its lease: its runs of task(s) %s, if any of their '
                       "processes are left there, cannot be ended from here (that worker ends "
                       "them when it finds its lease lost)", name,
                       f" on {hosts[name]}" if name in hosts else "",
                       ", ".join(map(str, ids)) or "-")
    return todo
