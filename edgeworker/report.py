"""Read-only views for people and scripts: job summaries, task listings, queue depth, and the
status page's overview, outcome strips and failures.

Each view returns plain dicts with stable keys (what `--json` prints); the CLI and the status page
(edgeworker.web) format them. No view walks all of history: each reads a partial index, a job's
newest tasks through tasks_job_id, or the newest rows by id (tests/test_report.py checks).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import peewee

from edgeworker.clock import to_text
from edgeworker.errors import NotFound
from edgeworker.models import (
    IS_UNFINISHED,
    HookRun,
    Job,
    Outbox,
    Recovery,
    Task,
    TaskStatus,
    Worker,
    by_job,
    tags_of,
)

SILENT_AFTER = 3  # heartbeats missed: a worker that has not stopped is silent


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else to_text(moment)


OUTCOMES = (TaskStatus.SUCCEEDED.value, TaskStatus.FAILED.value)  # what a run ends with


def _jobs_query() -> peewee.ModelSelect:
    """Every job with its next run and its last outcome, in one query: the next run from the
    small partial index of unfinished tasks, the last outcome by walking the job's tasks newest
    first (tasks_job_id) to its last succeeded or failed one; never all of history."""
    running = peewee.Case(None, [(Task.status == TaskStatus.RUNNING.value, 1)], 0)
    pending = (Task.select(Task.job.alias("job_id"), peewee.fn.MAX(running).alias("running"),
                           peewee.fn.MIN(peewee.Case(None, [
                               (Task.status == TaskStatus.CREATED.value, Task.due_at)]))
                           .alias("next_due"))
               .where(IS_UNFINISHED).group_by(by_job()).alias("pending"))
    newest = Task.alias("newest")
    last_outcome = (newest.select(newest.id)
                    .where((newest.job == Job.id) & newest.status.in_(OUTCOMES))
                    .order_by(newest.id.desc()).limit(1))
    last = Task.alias("last")
    return (Job.select(Job, pending.c.running, pending.c.next_due,
                       last.status.alias("last_status"),
                       last.finished_at.alias("last_finished_at"))
            .join(pending, peewee.JOIN.LEFT_OUTER, on=(pending.c.job_id == Job.id))
            .join_from(Job, last, peewee.JOIN.LEFT_OUTER, on=(last.id == last_outcome))
            .order_by(Job.name).objects())


def _text(value: datetime | str | None) -> str | None:
    return value if value is None or isinstance(value, str) else to_text(value)


def job_row(job: Job, now: datetime, counts: dict[str, int] | None = None) -> dict:
    """A job from `_jobs_query()`. `last_status` is its last real outcome (succeeded or failed:
    a cancelled slot, such as one recovery found superseded, is not one); `overdue` says that
    the next run is due before `now` and has not started."""
    running = bool(job.running)
    next_run = None if running else _text(job.next_due)
    row = {
        "name": job.name,
        "kind": job.kind,
        "target": job.target,
        "shell": job.shell,
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
        "env_file": job.env_file,  # the path only: its values are secrets
        "on_failure": job.on_failure,
        "on_success": job.on_success,
        "on_retry": job.on_retry,
        "ping_url": job.ping_url,
        "alert_after_seconds": job.alert_after_seconds,
        "run_on": list(job.run_on_tags),  # [] any worker
        "next_run_at": next_run,
        "overdue": next_run is not None and next_run < to_text(now),
        "running": running,
        "last_status": job.last_status,
        "last_finished_at": _text(job.last_finished_at),
    }
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


def jobs(now: datetime, with_counts: bool = False) -> list[dict]:
    counts = task_counts() if with_counts else None
    return [job_row(job, now, counts.get(job.id, {}) if counts is not None else None)
            for job in _jobs_query()]


def task_row(task: Task, job_names: dict[int, str], full: bool = False) -> dict:
    row = {
        "id": task.id,
        "job": job_names.get(task.job_id) if task.job_id is not None else task.job_name,
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


def hooks_of(task_id: int) -> list[dict]:
    """What the task's hooks and pings did, oldest first: each hook command's outcome
    (`succeeded` or `failed`), each ping that had to wait in the outbox (`queued` while it waits,
    then `succeeded` or `dropped`). A ping delivered when it was sent is not recorded: it costs
    no database write."""
    rows = [{"hook": h.hook, "status": h.status, "exit_code": h.exit_code, "error": h.error,
             "output": h.output, "at": _when(h.finished_at), "attempts": None}
            for h in HookRun.select().where(HookRun.task_id == task_id).order_by(HookRun.id)]
    rows += [{"hook": f"ping {o.url}", "status": "queued", "exit_code": None,
              "error": o.last_error, "output": None, "at": _when(o.created_at),
              "attempts": o.attempts}
             for o in Outbox.select().where(Outbox.task_id == task_id).order_by(Outbox.id)]
    return rows


def pings() -> dict:
    """Pings waiting in the outbox: how many, since when, and why the last try failed."""
    head = Outbox.select().order_by(Outbox.id).first()
    return {"waiting": Outbox.select().count(), "oldest": head and _when(head.created_at),
            "last_error": head and head.last_error}


def job_names() -> dict[int, str]:
    return dict(Job.select(Job.id, Job.name).tuples())


def tasks(job_name: str | None = None, status: str | None = None, limit: int = 50,
          before: int | None = None) -> list[dict]:
    """Tasks, newest first (with `before`, those with a smaller id: the next page). A job's are
    those of the job of that name and those of removed jobs that had the name: its history stays
    when it is removed (and when one is added again)."""
    query = Task.select(*[f for f in Task._meta.sorted_fields if f.name != "output"])
    if status is not None:
        query = query.where(Task.status == status)
    if before is not None:
        query = query.where(Task.id < before)
    if job_name is None:
        found = list(query.order_by(Task.id.desc()).limit(limit))
    else:
        job = Job.get_or_none(Job.name == job_name)
        removed = Task.job.is_null() & (Task.job_name == job_name)
        if job is None and not Task.select().where(removed).exists():
            raise NotFound(f'no job named "{job_name}" (see `edgeworker jobs list`)')
        # Two walks of the tasks_job_id index (job_id, id), each newest first, merged here: an
        # OR would sort all of a job's history to return its newest rows.
        found = list(query.where(removed).order_by(Task.id.desc()).limit(limit))
        if job is not None:
            found.extend(query.where(Task.job == job.id).order_by(Task.id.desc()).limit(limit))
        found = sorted(found, key=lambda t: t.id, reverse=True)[:limit]
    names = job_names()
    return [task_row(t, names) for t in found]


def queue_depth(database, now: datetime) -> dict:
    """Waiting runs: due now (ready) and later (scheduled)."""
    from edgeworker.sql import statements_for

    moment = to_text(now)
    ready, scheduled = database.execute_sql(statements_for(database)["depth"],
                                            (moment, moment)).fetchone()
    return {"ready": ready, "scheduled": scheduled}


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


def task(task_id: int) -> dict:
    """One task with its output: what `tasks show --json` prints."""
    found = Task.get_or_none(Task.id == task_id)
    if found is None:
        raise NotFound(f"no task with id {task_id}")
    return {**task_row(found, job_names(), full=True), "hooks": hooks_of(task_id)}


def last_recovery() -> dict | None:
    record = Recovery.select().order_by(Recovery.id.desc()).first()
    if record is None:
        return None
    return {"at": to_text(record.started_at), "duration_ms": round(record.duration_ms, 1),
            "worker": record.worker, "recovered_from": record.recovered_from,
            "task_ids": [int(i) for i in (record.task_ids or "").split(",") if i],
            "recovered": record.recovered,
            "failed": record.failed, "cancelled": record.cancelled,
            "scheduled": record.scheduled, "ended": record.ended}


def worker_name(pid: int | None) -> str | None:
    """The name of the worker running on this host as `pid` (its workers row), or None."""
    import socket

    if not pid or pid < 0:
        return None
    row = (Worker.select(Worker.name).where((Worker.pid == pid)
                                            & (Worker.host == socket.gethostname())
                                            & Worker.stopped_at.is_null())
           .order_by(Worker.started_at.desc()).first())
    return row and row.name


def worker(pid: int | None) -> dict:
    """Whether a worker runs (`pid` from edgeworker.db.worker_pid) and since when (its workers
    row). A stopped one is shown with the last time it left a trace (a recovery, a run started
    or finished)."""
    view = {"running": pid is not None, "pid": pid if pid and pid > 0 else None, "since": None,
            "last_seen": None}
    if pid is not None:
        name = worker_name(pid)
        row = name and Worker.get_or_none(Worker.name == name)
        view["since"] = _when(row.started_at) if row else None
        return view
    recent = Recovery.select(Recovery.started_at).order_by(Recovery.id.desc()).first()
    newest = (Task.select(peewee.fn.MAX(peewee.fn.COALESCE(Task.finished_at, Task.started_at)))
              .where(Task.id.in_(Task.select(Task.id).order_by(Task.id.desc()).limit(100))))
    seen = [t for t in (newest.scalar(), recent.started_at if recent else None) if t]
    view["last_seen"] = max(_text(t) for t in seen) if seen else None
    return view


def workers(now: datetime, running_pid: int | None, limit: int = 20,
            running: dict[str, int] | None = None) -> list[dict]:
    """The newest workers (one row a name, edgeworker.models.Worker), each `up`, `stopped` (it
    stopped gracefully) or `silent` (neither stopped nor heard from for SILENT_AFTER
    heartbeats). One that writes no heartbeat (SQLite's default) is up while it holds the lock
    (`running_pid`, from edgeworker.db.worker_pid, on this host); on PostgreSQL, one whose
    name's lock is held (`running`, from edgeworker.db.running_workers) is up."""
    import socket

    host = socket.gethostname()
    views = []
    for row in Worker.select().order_by(Worker.id.desc()).limit(limit):
        if row.stopped_at is not None:
            state = "stopped"
        elif running is not None and row.name in running:
            state = "up"
        elif row.heartbeat_seconds:
            late = (now - row.last_heartbeat).total_seconds()
            state = "up" if late <= SILENT_AFTER * row.heartbeat_seconds else "silent"
        else:
            state = "up" if (row.pid, row.host) == (running_pid, host) else "silent"
        views.append({"name": row.name, "host": row.host, "pid": row.pid,
                      "started_at": _when(row.started_at),
                      "last_heartbeat": _when(row.last_heartbeat),
                      "heartbeat_seconds": row.heartbeat_seconds, "version": row.version,
                      "stopped_at": _when(row.stopped_at), "state": state,
                      "tags": list(tags_of(row.tags))})
    return views


def claims(run_on: list[str], worker: dict) -> bool:
    """Whether a worker (a `workers` view) takes a job's runs: the job has no run_on, or it
    shares a tag with the worker's tags or name (as `Ledger` claims)."""
    from edgeworker.config import is_tag

    own = set(worker["tags"]) | ({worker["name"]} if is_tag(worker["name"]) else set())
    return not run_on or bool(own & set(run_on))


def job_detail(name: str, now: datetime, running_pid: int | None) -> dict:
    """A job (`jobs show`): its row as `jobs` gives it, the live workers that take its runs
    (`claimed_by`), and, when its next run cannot start for want of one, why (`waiting`)."""
    found = _jobs_query().where(Job.name == name).first()
    if found is None:
        raise NotFound(f'no job named "{name}" (see `edgeworker jobs list`)')
    row = job_row(found, now)
    row["defined_by"] = list(tags_of(found.defined_by))  # PostgreSQL: whose configs have it
    live = [w for w in workers(now, running_pid) if w["state"] == "up"]
    row["claimed_by"] = [w["name"] for w in live if claims(row["run_on"], w)]
    row["waiting"] = None
    if row["run_on"] and not row["claimed_by"]:
        shown = "; ".join(f"{w['name']} ({', '.join(w['tags']) or 'no tags'})" for w in live)
        row["waiting"] = (f"no live worker carries a tag of run_on ({', '.join(row['run_on'])})"
                          + (f"; workers up: {shown}" if shown else "; no worker is up"))
    return row


def last_day(now: datetime) -> dict:
    """Tasks created in the 24 hours before `now`, counted by their state now. Ids grow with
    creation time, so the newest ids are read back to the first older task, not all history."""
    since = to_text(now - timedelta(hours=24))
    older = (Task.select(Task.id).where(Task.created_at < since)
             .order_by(Task.id.desc()).limit(1))
    counts = dict(Task.select(Task.status, peewee.fn.COUNT(Task.id))
                  .where(Task.id > peewee.fn.COALESCE(older, 0))
                  .group_by(Task.status).tuples())
    return {"since": since, **{s.value: counts.get(s.value, 0) for s in TaskStatus}}


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


def recent_outcomes(job_id: int, count: int = 50) -> list[dict]:
    """A job's last `count` outcomes (succeeded or failed), newest first, from tasks_job_id."""
    query = (Task.select(Task.id, Task.status, Task.started_at, Task.finished_at)
             .where((Task.job == job_id) & Task.status.in_(OUTCOMES))
             .order_by(Task.id.desc()).limit(count))
    return [{"id": t.id, "status": t.status, "finished_at": _when(t.finished_at),
             "duration_seconds": _seconds(t.started_at, t.finished_at)} for t in query]


def jobs_with_outcomes(now: datetime, count: int = 50) -> list[dict]:
    """`jobs(now)` (what `jobs list --json` prints), each row with its last `count` outcomes
    and the duration of the last one."""
    rows = []
    for job in _jobs_query():
        row = job_row(job, now)
        row["recent_outcomes"] = recent_outcomes(job.id, count)
        row["last_duration_seconds"] = (row["recent_outcomes"][0]["duration_seconds"]
                                        if row["recent_outcomes"] else None)
        rows.append(row)
    return rows


def job(name: str, now: datetime, limit: int = 50, before: int | None = None) -> dict:
    """A job (None once removed: its runs stay under its name) and a page of its runs, newest
    first; `next_before` asks for the page after this one."""
    found = _jobs_query().where(Job.name == name).first()
    runs = tasks(name, limit=limit + 1, before=before)
    return {"name": name, "job": None if found is None else job_row(found, now),
            "tasks": runs[:limit], "limit": limit,
            "next_before": runs[limit - 1]["id"] if len(runs) > limit else None}


def failures(limit: int = 50, before: int | None = None) -> dict:
    """Failed tasks across jobs, newest first. No index holds finished tasks by status, so this
    walks ids newest first until it has `limit` (all of history when failures are rare)."""
    query = Task.select(*[f for f in Task._meta.sorted_fields if f.name != "output"]) \
        .where(Task.status == TaskStatus.FAILED.value)
    if before is not None:
        query = query.where(Task.id < before)
    found = list(query.order_by(Task.id.desc()).limit(limit + 1))
    names = job_names()
    rows = [task_row(t, names) for t in found[:limit]]
    return {"tasks": rows, "limit": limit,
            "next_before": rows[-1]["id"] if len(found) > limit else None}


def all_busy(name: str | None, workers: int, bound: float | None,
             now: datetime) -> str | None:
    """Whether the live worker `name` has had every one of its `workers` threads on one run for
    longer than `bound` (read from its `running` rows: the worker writes nothing extra)."""
    if bound is None or not name:
        return None
    # No ORDER BY: with one, SQLite walks every task ever in id order instead of the small
    # partial index of unfinished ones (tests/test_report.py counts the work).
    ids = sorted(task_id for (task_id,) in Task.select(Task.id).where(
        IS_UNFINISHED & (Task.status == TaskStatus.RUNNING)
        & (Task.worker == name)
        & (Task.started_at < now - timedelta(seconds=bound))).tuples())
    if len(ids) < workers:
        return None
    from edgeworker.config import format_duration

    return (f"all {workers} worker thread(s) busy for more than {format_duration(bound)} "
            f"(task{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}): "
            "no other run can start")
