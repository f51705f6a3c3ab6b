"""Read-only views for people and scripts: job summaries, task listings, queue depth.

Each view returns plain dicts with stable keys (what `--json` prints); the CLI formats them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import peewee

from edgeworker.clock import to_text
from edgeworker.models import FINISHED, IS_UNFINISHED, Job, Task, TaskStatus


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else to_text(moment)


def job_row(job: Job, counts: dict[str, int] | None = None) -> dict:
    pending = (Task.select().where(IS_UNFINISHED & (Task.job == job.id))
               .order_by(Task.due_at).first())
    last = (Task.select().where((Task.job == job.id) & (Task.status.in_(list(FINISHED))))
            .order_by(Task.id.desc()).first())
    row = {
        "name": job.name,
        "kind": job.kind,
        "target": job.target,
        "shell": job.shell and job.kind == "command",
        "isolate": job.isolated,
        "schedule": job.schedule_text,
        "every_seconds": job.every_seconds,
        "cron": job.cron,
        "timezone": job.timezone,
        "timeout_seconds": job.timeout_seconds,
        "max_attempts": job.max_attempts,
        "retry_delay_seconds": job.retry_delay_seconds,
        "catch_up": job.catch_up,
        "catch_up_limit": job.catch_up_limit,
        "jitter_seconds": job.jitter_seconds,
        "enabled": job.enabled,
        "paused": job.paused,
        "source": job.source,
        "next_run_at": None,
        "running": False,
        "last_status": last.status if last else None,
        "last_finished_at": _when(last.finished_at) if last else None,
    }
    if pending is not None:
        row["running"] = pending.status == TaskStatus.RUNNING
        row["next_run_at"] = None if row["running"] else _when(pending.due_at)
    if counts is not None:
        row["counts"] = {status.value: counts.get(status.value, 0) for status in TaskStatus}
    return row


def task_counts() -> dict[int | None, dict[str, int]]:
    counts: dict[int | None, dict[str, int]] = {}
    query = (Task.select(Task.job, Task.status, peewee.fn.COUNT(Task.id))
             .group_by(Task.job, Task.status).tuples())
    for job_id, status, count in query:
        counts.setdefault(job_id, {})[status] = count
    return counts


def jobs(with_counts: bool = False) -> list[dict]:
    counts = task_counts() if with_counts else None
    return [job_row(job, (counts or {}).get(job.id, {}) if with_counts else None)
            for job in Job.select().order_by(Job.name)]


def task_row(task: Task, job_names: dict[int, str], full: bool = False) -> dict:
    row = {
        "id": task.id,
        "job": job_names.get(task.job_id) if task.job_id is not None else None,
        "job_id": task.job_id,
        "status": task.status,
        "origin": task.origin,
        "scheduled_for": _when(task.scheduled_for),
        "due_at": _when(task.due_at),
        "attempt": task.attempt,
        "recovered_count": task.recovered_count,
        "created_at": _when(task.created_at),
        "started_at": _when(task.started_at),
        "finished_at": _when(task.finished_at),
        "exit_code": task.exit_code,
        "error": task.error,
        "worker": task.worker,
    }
    if full:
        row["output"] = task.output
    return row


def job_names() -> dict[int, str]:
    return dict(Job.select(Job.id, Job.name).tuples())


def tasks(job: Job | None = None, status: str | None = None, limit: int = 50) -> list[dict]:
    query = Task.select(*[f for f in Task._meta.sorted_fields if f.name != "output"])
    if job is not None:
        query = query.where(Task.job == job.id)
    if status is not None:
        query = query.where(Task.status == status)
    names = job_names()
    return [task_row(t, names) for t in query.order_by(Task.id.desc()).limit(limit)]


def queue_depth(huey) -> dict:
    return {"ready": huey.storage.queue_size(), "scheduled": huey.storage.schedule_size()}


def clock(now: datetime, worker_running: bool) -> dict:
    """The clock as the worker sees it: synchronised or not, the last step, held cron jobs."""
    from edgeworker.clock import clock_synchronised, time_daemon
    from edgeworker.models import ClockState

    state = ClockState.get_or_none(ClockState.id == 1)
    view = {"synchronised": clock_synchronised(), "time_daemon": time_daemon(),
            "now": _when(now), "high_water": None, "behind_seconds": 0.0, "last_step": None,
            "cron_held_since": None, "cron_held_seconds": None}
    if state is None:
        return view
    view["high_water"] = _when(state.high_water)
    view["behind_seconds"] = round(max(0.0, (state.high_water - now).total_seconds()), 3)
    if state.last_step_at is not None:
        view["last_step"] = {"at": _when(state.last_step_at),
                             "seconds": state.last_step_seconds, "moved": state.last_step_moved}
    if state.held_since is not None and worker_running:
        view["cron_held_since"] = _when(state.held_since)
        view["cron_held_seconds"] = round((now - state.held_since).total_seconds(), 3)
    return view


def all_busy(pid: int, workers: int, bound: float | None, now: datetime) -> str | None:
    """Whether the live worker `pid` has had every one of its `workers` threads on one run for
    longer than `bound` (read from its `running` rows: the worker writes nothing extra)."""
    if bound is None or pid <= 0:
        return None
    ids = [task_id for (task_id,) in Task.select(Task.id).where(
        IS_UNFINISHED & (Task.status == TaskStatus.RUNNING)
        & Task.worker.contains(f":{pid}:")
        & (Task.started_at < now - timedelta(seconds=bound))).order_by(Task.id).tuples()]
    if len(ids) < workers:
        return None
    from edgeworker.config import format_duration

    return (f"all {workers} worker thread(s) busy for more than {format_duration(bound)} "
            f"(task{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}): "
            "no other run can start")
