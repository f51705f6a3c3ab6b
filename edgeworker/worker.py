"""Running one queued job run: the seed's `IntervalJobWorker.Work()`.

`claim()` runs inside the dequeue transaction: a message with a task id reuses that row (a
recovery message first resets it to `created` with `recovered_count + 1`), a message without one
creates a new row; then the row is claimed. `work()` executes the claimed task and records its
outcome, which also schedules the job's next run. A run stopped by shutdown records nothing: it
stays `running` and start-up recovery runs it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime

from edgeworker.clock import to_text, utcnow
from edgeworker.ledger import ClaimedRun, Ledger, Outcome
from edgeworker.models import Job, Task
from edgeworker.processes import ProcessTable
from edgeworker.queue import IntervalJobArgs
from edgeworker.runners import (
    Abort,
    Interrupted,
    Result,
    TaskContext,
    command_env,
    load_callable,
    run_callable,
    run_command,
)

logger = logging.getLogger("edgeworker.worker")


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
    def __init__(self, ledger: Ledger, abort: Abort | None = None,
                 stopping: Callable[[], bool] = lambda: False,
                 clock: Callable[[], datetime] = utcnow, table: ProcessTable | None = None):
        self.ledger = ledger
        self.table = table
        self.abort = abort or Abort()
        self.stopping = stopping
        self.clock = clock

    def claim(self, args: IntervalJobArgs, now: datetime) -> ClaimedRun | None:
        return self.ledger.claim(args, now)

    def work(self, args: IntervalJobArgs, run: ClaimedRun | None) -> None:
        if run is None:
            return
        task, job = run.task, run.job
        fields = {"task_id": task.id, "job": job.name, "attempt": task.attempt,
                  "recovered": run.recovered}
        recovered = " (recovered)" if run.recovered else ""
        logger.info("task %s job %s attempt %s started%s", task.id, job.name, task.attempt,
                    recovered, extra=fields)
        started = time.monotonic()
        try:
            result = self.execute(run)
        except Interrupted:
            logger.warning("task %s job %s attempt %s interrupted by shutdown: it runs again at "
                           "the next start", task.id, job.name, task.attempt, extra=fields)
            return
        duration = time.monotonic() - started
        finished = self.finish(run, Outcome(result.succeeded, result.exit_code, result.error,
                                            result.output))
        if finished is None:
            return
        if finished.status == "cancelled":
            logger.warning("task %s job %s attempt %s cancelled while it ran (%s); its outcome "
                           "is not recorded", task.id, job.name, task.attempt, finished.error,
                           extra={**fields, "status": "cancelled"})
            return
        fields.update(status=finished.status, duration=round(duration, 3),
                      exit_code=result.exit_code)
        detail = "" if result.succeeded else f": {last_line(result.error)}"
        if finished.status == "created":
            detail += f"; retry at {finished.due_at.astimezone():%H:%M:%S}"
        logger.log(logging.INFO if result.succeeded else logging.WARNING,
                   "task %s job %s attempt %s %s in %.3fs%s", task.id, job.name, task.attempt,
                   "succeeded" if result.succeeded else "failed", duration, detail, extra=fields)

    def execute(self, run: ClaimedRun) -> Result:
        task, job = run.task, run.job
        env = task_environment(task, job, run.recovered)
        if job.kind == "command":
            return run_command(job.target, job.shell,
                               command_env(dict(os.environ), job.environment, env), job.cwd,
                               job.timeout_seconds, self.abort, table=self.table,
                               run=(task.id, task.attempt),
                               cancelled=lambda: self.cancelled(task))
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
        return run_callable(fn, ctx, job.timeout_seconds)

    def cancelled(self, task: Task) -> str | None:
        try:
            return self.ledger.cancelled(task.id, task.attempt)
        except Exception:  # a busy database: ask again in a second
            return None

    def finish(self, run: ClaimedRun, outcome: Outcome) -> Task | None:
        """Record the outcome; a failing disk is retried (the row stays `running` meanwhile)."""
        delay = 0.5
        while True:
            try:
                return self.ledger.finish(run, outcome, self.clock())
            except Exception as exc:
                if self.stopping():
                    logger.error("task %s: cannot record its outcome (%s); it runs again at the "
                                 "next start", run.task.id, exc)
                    return None
                logger.error("task %s: cannot record its outcome (%s); retrying in %.0fs",
                             run.task.id, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
