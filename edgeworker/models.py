"""The peewee models `Job` (table `jobs`), `Task` (table `tasks`), `Recovery` (table
`recoveries`, one row per start-up recovery), `Outbox` and `HookRun` (edgeworker.alerts), and the
task states.

The tables are created by the SQL migrations; these models only describe them (a test checks that
the two agree). Only `edgeworker.ledger` changes a task's status, following `TRANSITIONS`.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum

import peewee

from edgeworker.clock import from_text, to_text


class TaskStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = TaskStatus
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.CREATED: frozenset({S.RUNNING, S.CANCELLED}),
    # back to CREATED: a retry with attempts left, or a reset for recovery
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CREATED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
UNFINISHED = (S.CREATED, S.RUNNING)
FINISHED = (S.SUCCEEDED, S.FAILED, S.CANCELLED)
# Unfinished (created or running) rows are those without `finished_at`: the partial index
# tasks_queue holds them, and serves a query that repeats its WHERE term (tests/test_sql.py and
# tests/test_models.py check the query plans). A claim changes no column of that index.
IS_UNFINISHED = peewee.SQL("finished_at IS NULL")


def by_job() -> peewee.Node:
    """GROUP BY a task's job for rows found through tasks_queue: `+job_id` on SQLite, which
    otherwise walks all of history in tasks_job_id; PostgreSQL groups by the column itself."""
    if isinstance(Task._meta.database, peewee.PostgresqlDatabase):
        return Task.job
    return peewee.SQL("+job_id")


def tags_text(tags: tuple[str, ...] | list[str]) -> str | None:
    """Tags as stored (jobs.run_on, workers.tags): a sorted JSON array, or NULL for none. A claim
    matches a tag by looking for it quoted (`"site-a"`) in the text: tags hold no quote."""
    return json.dumps(sorted(set(tags))) if tags else None


def tags_of(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text else ()


def can_transition(old: TaskStatus, new: TaskStatus) -> bool:
    return new in TRANSITIONS[old]


class UtcDateTimeField(peewee.Field):
    """An aware datetime stored as fixed-width ISO 8601 UTC text (see edgeworker.clock)."""

    field_type = "TEXT"

    def db_value(self, value: datetime | str | None) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return to_text(value)

    def python_value(self, value: str | None) -> datetime | None:
        return None if value is None else from_text(value)


class BaseModel(peewee.Model):
    class Meta:
        legacy_table_names = False  # bound to a database by `bind`


class Job(BaseModel):
    name = peewee.TextField(unique=True)
    kind = peewee.TextField()  # "command" | "callable"
    target = peewee.TextField()
    shell = peewee.BooleanField(default=False)  # a command through /bin/sh -c
    every_seconds = peewee.FloatField(null=True)
    cron = peewee.TextField(null=True)
    timezone = peewee.TextField(null=True)
    timeout_seconds = peewee.FloatField(null=True)
    max_attempts = peewee.IntegerField(default=3)
    retry_delay_seconds = peewee.FloatField(default=10.0)
    catch_up = peewee.TextField(default="skip")
    catch_up_limit = peewee.IntegerField(default=10)
    jitter_seconds = peewee.FloatField(default=0.0)
    enabled = peewee.BooleanField(default=True)
    paused = peewee.BooleanField(default=False)
    env = peewee.TextField(default="{}")  # JSON object
    cwd = peewee.TextField(null=True)
    env_file = peewee.TextField(null=True)  # a path; the values are read at each run
    # Alerts (edgeworker.alerts); NULL takes the [worker] default, "" turns it off.
    on_failure = peewee.TextField(null=True)  # a command line, split with shlex
    on_success = peewee.TextField(null=True)
    on_retry = peewee.TextField(null=True)
    ping_url = peewee.TextField(null=True)
    alert_after_seconds = peewee.FloatField(null=True)
    source = peewee.TextField(default="cli")  # "config" | "cli"
    isolate = peewee.BooleanField(default=False)  # a callable in a child process
    run_on = peewee.TextField(null=True)  # JSON array of tags (`tags_text`); NULL: any worker
    # PostgreSQL: the worker names whose config file has this config job, as a JSON array
    # (`tags_text`); NULL: none known (SQLite, or made before migration 022)
    defined_by = peewee.TextField(null=True)
    created_at = UtcDateTimeField()
    updated_at = UtcDateTimeField()

    class Meta:
        table_name = "jobs"

    @property
    def active(self) -> bool:
        """Enabled in its definition and not paused by an operator."""
        return self.enabled and not self.paused

    @property
    def isolated(self) -> bool:
        """A callable run in a child process."""
        return self.kind == "callable" and self.isolate

    @property
    def environment(self) -> dict[str, str]:
        return json.loads(self.env)

    @property
    def run_on_tags(self) -> tuple[str, ...]:
        return tags_of(self.run_on)

    @property
    def schedule_text(self) -> str:
        from edgeworker.durations import format_duration

        if self.every_seconds is not None:
            return f"every {format_duration(self.every_seconds)}"
        zone = f" ({self.timezone})" if self.timezone else ""
        return f"cron {self.cron}{zone}"


class Task(BaseModel):
    job = peewee.ForeignKeyField(Job, null=True, on_delete="SET NULL", backref="tasks",
                                 column_name="job_id", lazy_load=False)
    status = peewee.TextField(default=TaskStatus.CREATED.value)
    origin = peewee.TextField(default="schedule")  # "schedule" | "manual"
    scheduled_for = UtcDateTimeField()
    due_at = UtcDateTimeField()  # when a waiting run may be claimed: huey's eta
    attempt = peewee.IntegerField(default=0)
    recovered_count = peewee.IntegerField(default=0)
    # The attempt a dead worker was running, set by recovery: the claim after it is a recovery.
    recovering_attempt = peewee.IntegerField(null=True)
    created_at = UtcDateTimeField()
    started_at = UtcDateTimeField(null=True)
    finished_at = UtcDateTimeField(null=True)
    exit_code = peewee.IntegerField(null=True)
    error = peewee.TextField(null=True)
    output = peewee.TextField(null=True)
    worker = peewee.TextField(null=True)
    job_name = peewee.TextField(null=True)  # set when the job is removed (job_id becomes NULL)

    class Meta:
        table_name = "tasks"

    @property
    def state(self) -> TaskStatus:
        return TaskStatus(self.status)

    @property
    def recovering(self) -> bool:
        """Claimed again after recovery reset it (this attempt follows the interrupted one)."""
        return self.recovering_attempt is not None and self.recovering_attempt == self.attempt - 1


class Recovery(BaseModel):
    """One start-up recovery: what it found and did."""

    started_at = UtcDateTimeField()
    duration_ms = peewee.FloatField()
    worker = peewee.TextField()
    recovered = peewee.IntegerField()
    failed = peewee.IntegerField()
    cancelled = peewee.IntegerField()
    scheduled = peewee.IntegerField()
    ended = peewee.IntegerField(default=0)  # processes of interrupted runs, still alive
    recovered_from = peewee.TextField(null=True)  # whose running tasks it took: names, ", "
    task_ids = peewee.TextField(null=True)  # the running tasks it recovered: ids, ","

    class Meta:
        table_name = "recoveries"


def recovery_line(counts: dict) -> str:
    """What a recovery (a `Recovery` row's counts) did, in one line: the log, `status`, the
    status page."""
    ended = counts.get("ended", 0)
    return (f"recovered {counts['recovered']}, failed {counts['failed']}, "
            f"cancelled {counts['cancelled']}, scheduled {counts['scheduled']}, "
            f"ended {ended} leftover process{'' if ended == 1 else 'es'}")


def recovery_who(record: dict) -> str:
    """Who recovered whose runs, as a tail for `recovery_line`: "" when a worker recovered its
    own name's (or nothing)."""
    source = record.get("recovered_from")
    if not source or source == record.get("worker"):
        return ""
    ids = record.get("task_ids") or []
    which = f" (task{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))})" if ids else ""
    return f"; {record['worker']} took the runs of {source}{which}"


class ClockState(BaseModel):
    """The worker's clock across restarts (one row, id 1): see edgeworker.clock."""

    high_water = UtcDateTimeField()
    high_water_task = peewee.IntegerField(default=0)  # tasks after it may hold newer times
    last_step_at = UtcDateTimeField(null=True)
    last_step_seconds = peewee.FloatField(null=True)
    last_step_moved = peewee.FloatField(null=True)
    forward_at = UtcDateTimeField(null=True)
    forward_seconds = peewee.FloatField(default=0.0)
    held_since = UtcDateTimeField(null=True)

    class Meta:
        table_name = "clock"


class Outbox(BaseModel):
    """A ping that could not be delivered when it was sent: kept until it is (edgeworker.alerts)."""

    task_id = peewee.IntegerField(null=True)
    job_name = peewee.TextField()
    url = peewee.TextField()
    body = peewee.TextField(default="")
    created_at = UtcDateTimeField()
    attempts = peewee.IntegerField(default=1)
    last_error = peewee.TextField(null=True)

    class Meta:
        table_name = "outbox"


class HookRun(BaseModel):
    """The outcome of a hook command, or of a ping that waited in the outbox."""

    task_id = peewee.IntegerField(null=True)
    job_name = peewee.TextField()
    hook = peewee.TextField()  # on_failure | on_success | on_retry | ping <url>
    status = peewee.TextField()  # succeeded | failed | dropped
    exit_code = peewee.IntegerField(null=True)
    error = peewee.TextField(null=True)
    output = peewee.TextField(null=True)
    finished_at = UtcDateTimeField()

    class Meta:
        table_name = "hook_runs"


class Worker(BaseModel):
    """A worker on this database, one row a name (`Ledger.worker`, what tasks.worker records),
    describing its current or last life."""

    name = peewee.TextField(unique=True)
    host = peewee.TextField()
    pid = peewee.IntegerField()
    started_at = UtcDateTimeField()
    last_heartbeat = UtcDateTimeField()
    heartbeat_seconds = peewee.FloatField(null=True)  # NULL: it writes no heartbeat
    version = peewee.TextField()
    stopped_at = UtcDateTimeField(null=True)  # a graceful stop
    tags = peewee.TextField(null=True)  # [worker] tags (`tags_text`); NULL: none
    boot_id = peewee.TextField(null=True)  # the host's boot: a crash or a power cut before
    beat_at = peewee.FloatField(null=True)  # the last heartbeat by the database server's clock
    lease_seconds = peewee.FloatField(null=True)  # NULL: no lease (SQLite)

    class Meta:
        table_name = "workers"


MODELS = (Job, Task, Recovery, ClockState, Outbox, HookRun, Worker)


def bind(database: peewee.Database) -> peewee.Database:
    """Bind the models to the process's one database handle (the composition root does this
    once: `edgeworker run`, a CLI command, `serve`), and return it."""
    database.bind(MODELS, bind_refs=False, bind_backrefs=False)
    return database
