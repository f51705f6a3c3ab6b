"""The job catalog: adding, changing, pausing and removing jobs, and syncing the config's jobs.

Jobs come from two sources: `[[jobs]]` in the TOML file (`source = 'config'`, synced at start and
by `jobs sync`) and `jobs add` (`source = 'cli'`). A sync never touches command-line jobs, and an
operator's pause survives syncs. Each change keeps the invariant that an active job has exactly
one pending scheduled run (through the ledger, which owns task state).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from edgeworker.config import JobSpec
from edgeworker.errors import Conflict, NotFound
from edgeworker.ledger import Ledger
from edgeworker.models import Job, tags_of, tags_text

# The columns a JobSpec sets; a change in one of SCHEDULE_COLUMNS replans the pending run.
SCHEDULE_COLUMNS = ("every_seconds", "cron", "timezone", "jitter_seconds")
# pg_advisory_xact_lock(int, int), "ewsj": held by a sync's transaction on PostgreSQL, where
# workers starting at once sync the same config: one at a time, each sees the others' jobs.
SYNC_LOCK = (0x6577736A, 0)


def spec_columns(spec: JobSpec) -> dict:
    return {
        "kind": spec.kind,
        "target": spec.target,
        "shell": spec.shell,
        "isolate": spec.isolate,
        "every_seconds": spec.every,
        "cron": spec.cron,
        "timezone": spec.timezone,
        "timeout_seconds": spec.timeout,
        "max_attempts": spec.max_attempts,
        "retry_delay_seconds": spec.retry_delay,
        "catch_up": spec.catch_up,
        "catch_up_limit": spec.catch_up_limit,
        "jitter_seconds": spec.jitter,
        "enabled": spec.enabled,
        "env": json.dumps(dict(spec.env), sort_keys=True),
        "cwd": spec.cwd,
        "env_file": None if spec.env_file is None else str(spec.env_file),
        "on_failure": spec.on_failure,
        "on_success": spec.on_success,
        "on_retry": spec.on_retry,
        "ping_url": spec.ping_url,
        "alert_after_seconds": spec.alert_after,
        "run_on": tags_text(spec.run_on),
    }


def get_job(name: str) -> Job:
    job = Job.get_or_none(Job.name == name)
    if job is None:
        raise NotFound(f'no job named "{name}" (see `edgeworker jobs list`)')
    return job


def add_job(ledger: Ledger, spec: JobSpec, now: datetime, source: str = "cli") -> Job:
    with ledger.db.atomic():
        existing = Job.get_or_none(Job.name == spec.name)
        if existing is not None:
            raise Conflict(f'a job named "{spec.name}" already exists (from {existing.source}); '
                           "remove it first or choose another name")
        job = Job.create(name=spec.name, source=source, created_at=now, updated_at=now,
                         **spec_columns(spec))
        ledger.ensure_scheduled(job, now, catch_up=False)
    return job


def remove_job(ledger: Ledger, name: str, now: datetime) -> Job:
    """Delete a job; its waiting runs are cancelled, a running one finishes, history is kept."""
    with ledger.db.atomic():
        job = get_job(name)
        ledger.forget_job(job, "job removed", now)
        job.delete_instance()
    return job


def set_paused(ledger: Ledger, name: str, paused: bool, now: datetime) -> tuple[Job, bool]:
    """Pause or resume; returns the job and whether anything changed."""
    with ledger.db.atomic():
        job = get_job(name)
        if job.paused == paused:
            return job, False
        job.paused = paused
        job.updated_at = now
        job.save()
        if paused:
            ledger.cancel_waiting(job.id, "job paused", now)
        else:
            ledger.ensure_scheduled(job, now, catch_up=False)
    return job, True


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # dropped here, in another worker's config
    # jobs this config changed that another worker's config defines otherwise: name -> workers
    contested: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.updated)} updated",
                 f"{len(self.removed)} removed", f"{len(self.unchanged)} unchanged"]
        if self.kept:
            parts.append(f"{len(self.kept)} kept for other workers' configs "
                         f"({', '.join(self.kept)})")
        parts += [f"{name} changed, also in the config of {', '.join(workers)}"
                  for name, workers in self.contested.items()]
        return ", ".join(parts)


def sync_jobs(ledger: Ledger, specs: tuple[JobSpec, ...], now: datetime) -> SyncReport:
    """Make the config-sourced jobs match `specs`, in one transaction (on PostgreSQL, one sync
    at a time).

    On PostgreSQL, workers of several names share the jobs and each has its own config file: a
    config job remembers the names whose config has it (`defined_by`), and a sync removes one
    only when no other name's config has it (a config that drops it takes its name off); the
    last sync that changes a job's settings sets them. A job with no names (made before, or
    copied from SQLite) is any sync's. On SQLite the one worker's config is the whole truth."""
    report = SyncReport()
    me = ledger.worker if ledger.postgres else None
    with ledger.db.atomic():
        if ledger.postgres:
            ledger.db.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)", SYNC_LOCK)
        # Only the jobs a sync may touch: the config's, and any that a spec's name clashes with
        # (not every `jobs add` job: reading 10,000 Job rows costs ~150 ms at each start).
        names = [spec.name for spec in specs]
        current = {job.name: job for job in Job.select().where(
            (Job.source == "config") | Job.name.in_(names))}
        for spec in specs:
            job = current.get(spec.name)
            columns = spec_columns(spec)
            if job is None:
                job = Job.create(name=spec.name, source="config", created_at=now,
                                 updated_at=now, defined_by=me and tags_text([me]), **columns)
                ledger.ensure_scheduled(job, now, catch_up=False)
                report.added.append(spec.name)
                continue
            if job.source != "config":
                raise Conflict(f'job "{spec.name}" in the config file clashes with a job of that '
                               "name added with `jobs add`; remove one of them")
            names = set(tags_of(job.defined_by))
            others = names - {me}
            definers = {"defined_by": tags_text(sorted(names | {me}))} if me else {}
            changed = {k: v for k, v in columns.items() if getattr(job, k) != v}
            if not changed:
                if me and me not in names:
                    Job.update(**definers).where(Job.id == job.id).execute()
                report.unchanged.append(spec.name)
                continue
            Job.update(updated_at=now, **changed, **definers).where(Job.id == job.id).execute()
            job = Job.get_by_id(job.id)
            if others:
                report.contested[spec.name] = tuple(sorted(others))
            if not job.active or any(k in changed for k in SCHEDULE_COLUMNS):
                reason = "job disabled" if not job.active else "schedule changed"
                ledger.cancel_waiting(job.id, reason, now)
            ledger.ensure_scheduled(job, now, catch_up=False)
            report.updated.append(spec.name)
        wanted = {spec.name for spec in specs}
        for name, job in current.items():
            if job.source != "config" or name in wanted:
                continue
            others = set(tags_of(job.defined_by)) - {me}
            if others:
                Job.update(defined_by=tags_text(sorted(others))).where(Job.id == job.id).execute()
                report.kept.append(name)
                continue
            ledger.forget_job(job, "job removed from the config file", now)
            job.delete_instance()
            report.removed.append(name)
    return report
