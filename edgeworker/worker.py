"""Running one queued job run: the seed's `IntervalJobWorker.Work()`.

huey's storage (`edgeworker.queue.TaskStorage`) claims a task row and hands huey a message naming
it (a recovery message also names the attempt that was interrupted); `work()` executes the claimed
task and records its outcome, which also schedules the job's next run. Whatever the job raises is
its outcome; a run stopped by shutdown records nothing: it stays `running` and start-up recovery
runs it again. An outcome that cannot be written is retried while the cause can heal (a lock, a
full disk, an I/O error); any other failure to write it becomes the run's recorded error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime

from edgeworker import db as dbmod
from edgeworker.clock import to_text, utcnow
from edgeworker.errors import ConfigError
from edgeworker.ledger import ClaimedRun, IntervalJobArgs, Ledger, Outcome
from edgeworker.logs import Reminder
from edgeworker.models import Job, Task
from edgeworker.processes import ProcessTable
from edgeworker.runners import (
    Interrupted,
    Result,
    TaskContext,
    command_env,
    load_callable,
    read_env_file,
    run_callable,
    run_command,
    run_isolated,
)
from edgeworker.wakeup import Flag

TYPE_CHECKING = False  # edgeworker.alerts is imported when a worker needs it
if TYPE_CHECKING:
    from edgeworker.alerts import Alerts

logger = logging.getLogger("edgeworker.worker")
MAX_RETRY_DELAY = 30.0


def task_environment(task: Task, job: Job, recovered: bool) -> dict[str, str]:
    """What every task is told about itself (and how it makes its side effects idempotent)."""
    return {
        "EDGEWORKER_TASK_ID": str(task.id),
        "EDGEWORKER_JOB": job.name,
        "EDGEWORKER_ATTEMPT": str(task.attempt),
        "EDGEWORKER_RECOVERED": "1" if recovered else "0",
        "EDGEWORKER_SCHEDULED_FOR": to_text(task.scheduled_for),
    }


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "no error message"


class IntervalJobWorker:
    def __init__(self, ledger: Ledger, abort: Flag | None = None,
                 stopping: Callable[[], bool] = lambda: False,
                 clock: Callable[[], datetime] = utcnow,
                 observe: Callable[[Task], None] | None = None,
                 env_file: Callable[[], str | None] = lambda: None,
                 table: ProcessTable | None = None,
                 alerts: Callable[[Job], Alerts | None] | None = None,
                 queue=None, fenced: Callable[[], bool] = lambda: False):
        self.ledger = ledger
        # huey's storage (edgeworker.queue.TaskStorage): with it, recording an outcome also
        # claims this thread's next due run, in the same commit
        self.queue = queue
        # the alerts a job's runs need (None: none), told each start and outcome; hooks and
        # pings run elsewhere
        self.alerts = alerts
        self.table = table
        self.abort = abort or Flag()
        self.stopping = stopping
        self.clock = clock
        self.observe = observe  # told each recorded outcome (the metrics count them)
        self.env_file = env_file  # `[worker] env_file` of the config loaded now (reloads)
        # PostgreSQL: this worker's lease may have expired (no heartbeat written for as long):
        # its runs may be recovered elsewhere; they are ended (`abort`) and not recorded.
        self.fenced = fenced

    def work(self, args: IntervalJobArgs, run: ClaimedRun | None) -> None:
        if run is None:
            return
        task, job = run.task, run.job
        fields = {"task_id": task.id, "job": job.name, "attempt": task.attempt,
                  "recovered": run.recovered}
        if self.fenced():
            logger.warning("task %s job %s attempt %s not started: this worker's lease may have "
                           "expired; it stays running for recovery", task.id, job.name,
                           task.attempt, extra=fields)
            return
        recovered = " (recovered)" if run.recovered else ""
        logger.info("task %s job %s attempt %s started%s", task.id, job.name, task.attempt,
                    recovered, extra=fields)
        self.tell("started", task, job)
        env = task_environment(task, job, fields["recovered"])
        started = time.monotonic()
        try:
            result = self.execute(run, env)
        except Interrupted:
            if self.fenced():
                logger.warning("task %s job %s attempt %s ended unrecorded: this worker's lease "
                               "may have expired; another worker recovers it, or this one when "
                               "it is back", task.id, job.name, task.attempt, extra=fields)
            else:
                logger.warning("task %s job %s attempt %s interrupted by shutdown: it runs again "
                               "at the next start", task.id, job.name, task.attempt,
                               extra=fields)
            return
        except BaseException as exc:  # noqa: BLE001 - a run ends with an outcome, whatever it is
            result = Result(False, None, f"{type(exc).__name__}: {exc}", "")
        duration = time.monotonic() - started
        finished = self.finish(run, Outcome(result.succeeded, result.exit_code, result.error,
                                            result.output))
        if finished is None:
            return
        if (finished.attempt, finished.recovered_count) != (task.attempt, task.recovered_count):
            return  # recovered by another worker meanwhile (the ledger said so): not this run's
        if finished.status == "cancelled":
            logger.warning("task %s job %s attempt %s cancelled while it ran (%s); its outcome "
                           "is not recorded", task.id, job.name, task.attempt, finished.error,
                           extra={**fields, "status": "cancelled"})
            return
        if self.observe is not None:
            self.observe(finished)
        self.tell("finished", finished, job, env, result)
        fields.update(status=finished.status, duration=round(duration, 3),
                      exit_code=result.exit_code)
        succeeded = finished.status == "succeeded"
        detail = "" if succeeded else f": {last_line(finished.error)}"
        if finished.status == "created":
            detail += f"; retry at {finished.due_at.astimezone():%H:%M:%S}"
        logger.log(logging.INFO if succeeded else logging.WARNING,
                   "task %s job %s attempt %s %s in %.3fs%s", task.id, job.name, task.attempt,
                   "succeeded" if succeeded else "failed", duration, detail, extra=fields)

    def tell(self, what: str, *args) -> None:
        try:
            alerts = self.alerts and self.alerts(args[1])
            if alerts is not None:
                getattr(alerts, what)(*args)
        except Exception as exc:  # noqa: BLE001 - an alert never fails a run
            logger.error("alerts: cannot queue the %s alert of job %s: %s: %s", what,
                         args[1].name, type(exc).__name__, exc)

    def secrets(self, job: Job) -> tuple[dict[str, str], dict[str, str]]:
        """The worker's env_file values and the job's, read now: a rotated secret needs no
        reload."""
        worker_file = self.env_file()
        return (read_env_file(worker_file) if worker_file else {},
                read_env_file(job.env_file) if job.env_file else {})

    def execute(self, run: ClaimedRun, env: dict[str, str] | None = None) -> Result:
        """Run it, with its environment (`task_environment`) if worked out already."""
        task, job = run.task, run.job
        env = env or task_environment(task, job, run.recovered)
        try:
            worker_secrets, job_secrets = self.secrets(job)
        except ConfigError as exc:
            return Result(False, None, str(exc), "")
        if job.kind == "command":
            job_env = {**worker_secrets, **job.environment, **job_secrets}
            return run_command(job.target, job.shell,
                               command_env(dict(os.environ), job_env, env), job.cwd,
                               job.timeout_seconds, self.abort, table=self.table,
                               run=(task.id, task.attempt),
                               cancelled=lambda: self.cancelled(task))
        env = {**worker_secrets, **job_secrets, **env}
        deadline = (None if job.timeout_seconds is None
                    else time.monotonic() + job.timeout_seconds)
        ctx = TaskContext(task_id=task.id, job=job.name, attempt=task.attempt,
                          recovered=run.recovered, scheduled_for=task.scheduled_for,
                          deadline=deadline, logger=logging.getLogger(f"edgeworker.job.{job.name}"),
                          env=env)
        try:
            fn = load_callable(job.target)
        except Exception as exc:
            return Result(False, None, str(exc), "")
        if job.isolated:
            return run_isolated(fn, ctx, job.timeout_seconds, self.abort, table=self.table,
                                run=(task.id, task.attempt),
                                cancelled=lambda: self.cancelled(task))
        return run_callable(fn, ctx, job.timeout_seconds)

    def cancelled(self, task: Task) -> str | None:
        try:
            return self.ledger.cancelled(task.id, task.attempt)
        except Exception:  # a busy database: ask again in a second
            return None

    def finish(self, run: ClaimedRun, outcome: Outcome) -> Task | None:
        """Record the outcome. A cause that can heal is retried with a bounded back-off (the row
        stays `running` meanwhile); any other failure is recorded as the run's error. None when
        nothing could be recorded: the row stays `running` for the next start's recovery."""
        reminder = Reminder(logger)
        delay = 0.5
        path = self.ledger.db.database
        while True:
            try:
                # never before it started, whatever the clock did meanwhile
                now = max(self.clock(), run.task.started_at)
                hold = None if self.queue is None else self.queue.want_next()
                if hold is None:
                    task = self.ledger.finish(run, outcome, now)
                else:
                    task, following = self.ledger.finish_and_claim(run, outcome, now, hold)
                    if following is not None:
                        self.queue.keep(following)
            except Exception as exc:
                if not dbmod.heals(exc):
                    return self._record_failure(run, outcome, exc)
                why = dbmod.describe(path, exc)
                if self.stopping():
                    logger.error("task %s: cannot record its outcome (%s); it runs again at the "
                                 "next start", run.task.id, why)
                    return None
                reminder.failing("task %s: cannot record its outcome (%s); retrying, at most "
                                 "every %.0fs", run.task.id, why, MAX_RETRY_DELAY)
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            reminder.resolved(f"task {run.task.id}: outcome recorded")
            return task

    def _record_failure(self, run: ClaimedRun, outcome: Outcome, exc: Exception) -> Task | None:
        error = (f"cannot record this run's outcome ({type(exc).__name__}: {exc}); "
                 f"it {'succeeded' if outcome.succeeded else 'failed'}: {last_line(outcome.error)}")
        # Text SQLite cannot store (a surrogate from a file name) must not fail the record too.
        error = error.encode("utf-8", "backslashreplace").decode("utf-8")
        try:
            return self.ledger.finish(run, Outcome(False, outcome.exit_code, error, None),
                                      max(self.clock(), run.task.started_at))
        except Exception as again:
            logger.error("task %s: cannot record its outcome (%s: %s); it stays running until "
                         "the next start's recovery", run.task.id, type(again).__name__, again)
            return None
