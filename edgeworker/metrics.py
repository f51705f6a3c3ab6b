"""Prometheus metrics in a text file, for node_exporter's textfile collector.

`[metrics] textfile = "/var/lib/prometheus/node-exporter/edgeworker.prom"` turns them on. The
housekeeper thread calls `TextfileMetrics.update()` every `[metrics] interval`. It reads the
database only when something was committed since its last look (SQLite's `PRAGMA data_version`,
plus this connection's own changes), and writes the file only when the text differs from what it
wrote last: an idle worker writes nothing.

What it reads is small whatever the history: unfinished tasks (their partial index), the queue,
the last recovery. Outcomes are counted as the worker records them (`observe`), and each job's
last success is read once, at the first look, by walking each job's newest tasks.

The file is replaced whole (a temp file beside it, fsync, rename), so the collector never reads
half a file, and it is mode 0644 whatever the service's umask, because node_exporter runs as
another user.

prometheus_client renders the exposition format (names, escaping, types). It is imported here,
and this module only when metrics are on, so that other commands do not pay its ~60 ms import.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from pathlib import Path

import peewee

from edgeworker import report
from edgeworker.clock import from_text, utcnow
from edgeworker.config import MetricsSettings
from edgeworker.errors import ConfigError
from edgeworker.models import IS_UNFINISHED, UNFINISHED, Job, Recovery, Task, TaskStatus, by_job

logger = logging.getLogger("edgeworker.metrics")

RECOVERY_ACTIONS = ("recovered", "failed", "cancelled", "scheduled")
# How a run ended, by the status its finish recorded: `created` again means a retry is queued.
OUTCOMES = {TaskStatus.SUCCEEDED: "succeeded", TaskStatus.FAILED: "failed",
            TaskStatus.CREATED: "retried"}


def _seconds(moment: datetime | str | None) -> float | None:
    if isinstance(moment, str):
        moment = from_text(moment)
    return None if moment is None else moment.timestamp()


class TextfileMetrics:
    def __init__(self, settings: MetricsSettings, ledger):
        try:
            from prometheus_client import CollectorRegistry, generate_latest
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError:
            raise ConfigError("[metrics] textfile needs the prometheus_client package "
                              "(pip install 'edgeworker[metrics]')") from None
        self._generate = generate_latest
        self._gauge, self._counter = GaugeMetricFamily, CounterMetricFamily
        # A registry of our own: the default one adds process and GC metrics, which change all
        # the time and would make every look a write.
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self.path = Path(settings.textfile)
        self.interval = settings.interval
        self.database = ledger.db
        self._seen: tuple | None = None  # the database's version at the last render
        self._written: bytes | None = None
        self._error: str | None = None  # the last error logged (each is logged once)
        self.all_busy = False  # set by the daemon: every worker thread busy past busy_alert
        self._lock = threading.Lock()  # worker threads observe, the housekeeper renders
        self._runs: dict[tuple[int, str], int] = {}  # (job id, outcome) -> runs, since start
        self._succeeded: dict[int, float] = {}  # job id -> its last success observed
        self._succeeded_before: dict[int, float] | None = None  # the same, read at first look
        self._observed = 0  # outcomes observed: a change the database version may not show

    def observe(self, task: Task) -> None:
        """Count a run's outcome, as the worker recorded it (`task` as `Ledger.finish` left it)."""
        outcome = OUTCOMES.get(TaskStatus(task.status))
        if outcome is None or task.job_id is None:
            return
        with self._lock:
            key = (task.job_id, outcome)
            self._runs[key] = self._runs.get(key, 0) + 1
            if outcome == "succeeded":
                self._succeeded[task.job_id] = _seconds(task.finished_at)
            self._observed += 1

    def _last_successes(self) -> dict[int, float]:
        """Each job's last success: what the database held at the first look (each job's newest
        tasks, through tasks_job_id), then what `observe` saw."""
        if self._succeeded_before is None:
            newest = Task.alias("newest")
            last = (newest.select(newest.finished_at)
                    .where((newest.job == Job.id) & (newest.status == TaskStatus.SUCCEEDED))
                    .order_by(newest.id.desc()).limit(1))
            self._succeeded_before = {job_id: _seconds(finished) for job_id, finished
                                      in Job.select(Job.id, last.alias("last")).tuples()
                                      if finished}
        found = dict(self._succeeded_before)
        with self._lock:
            for job_id, moment in self._succeeded.items():
                found[job_id] = max(found.get(job_id, moment), moment)
        return found

    def update(self) -> bool:
        """Write the file if a value changed since the last write; True if it wrote."""
        try:
            version = self._version()
            if version == self._seen:
                return False
            text = self.render()
            self._seen = version
            if text == self._written:
                return False
            self._write(text)
        except Exception as exc:  # metrics must never stop the worker
            self._report(f"cannot write metrics to {self.path}: {exc}")
            return False
        self._written = text
        if self._error is not None:
            logger.info("metrics written to %s again", self.path)
            self._error = None
        return True

    def _version(self) -> tuple:
        if isinstance(self.database, peewee.PostgresqlDatabase):
            return (object(),)  # no cheap "anything committed?" there: look every interval
        # data_version moves when another connection commits; total_changes counts our own.
        connection = self.database.connection()
        data_version = connection.execute("PRAGMA data_version").fetchone()[0]
        return (id(connection), data_version, connection.total_changes, self._observed,
                self.all_busy)

    def _report(self, message: str) -> None:
        # Once per distinct error: a log line every interval would wear the SD card instead.
        if message != self._error:
            logger.error("%s (jobs run on)", message)
            self._error = message

    def render(self) -> bytes:
        return self._generate(self._registry)

    def collect(self) -> list:
        """The metric families (prometheus_client's collector API)."""
        gauge, counter = self._gauge, self._counter
        names = dict(Job.select(Job.id, Job.name).order_by(Job.name).tuples())
        jobs = sorted(names.items(), key=lambda item: item[1])
        unfinished: dict[tuple[int, str], int] = {}
        query = (Task.select(Task.job, Task.status, peewee.fn.COUNT(Task.id))
                 .where(IS_UNFINISHED).group_by(by_job(), Task.status).tuples())
        for job_id, status, count in query:
            unfinished[(job_id, status)] = count
        tasks = gauge("edgeworker_tasks", "Unfinished tasks by job and status: created (waiting "
                      "for its time or a thread) or running", labels=["job", "status"])
        for job_id, name in jobs:
            for status in UNFINISHED:
                tasks.add_metric([name, status.value], unfinished.get((job_id, status.value), 0))

        successes = self._last_successes()
        with self._lock:
            runs_seen = dict(self._runs)
        runs = counter("edgeworker_runs", "Runs this worker finished since it started, by "
                       "outcome: succeeded, failed (no attempt left), retried (failed, another "
                       "attempt queued)", labels=["job", "outcome"])
        success = gauge("edgeworker_job_last_success_timestamp_seconds",
                        "When the job's last successful run finished", labels=["job"])
        for job_id, name in jobs:
            for outcome in OUTCOMES.values():
                runs.add_metric([name, outcome], runs_seen.get((job_id, outcome), 0))
            if job_id in successes:
                success.add_metric([name], successes[job_id])

        depth = report.queue_depth(self.database, utcnow())
        queue = gauge("edgeworker_queue_messages", "Queued runs: ready to start now, or "
                      "scheduled for later", labels=["state"])
        for state in ("ready", "scheduled"):
            queue.add_metric([state], depth[state])

        record = Recovery.select().order_by(Recovery.id.desc()).first()
        recoveries = counter("edgeworker_recoveries", "Start-up recoveries run on this database",
                             value=record.id if record else 0)
        busy = gauge("edgeworker_worker_all_threads_busy", "1 when every worker thread has run "
                     "one task for longer than [worker] busy_alert: no other run can start",
                     value=int(self.all_busy))
        families = [tasks, runs, success, queue, recoveries, busy]
        if record is not None:
            families.append(gauge("edgeworker_last_recovery_timestamp_seconds",
                                  "When the last start-up recovery ran",
                                  value=_seconds(record.started_at)))
            done = gauge("edgeworker_last_recovery_tasks", "What the last start-up recovery did: "
                         "tasks recovered, failed or cancelled; jobs scheduled",
                         labels=["action"])
            for action in RECOVERY_ACTIONS:
                done.add_metric([action], getattr(record, action))
            families.append(done)
        return families

    def _write(self, text: bytes) -> None:
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # not *.prom
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(text)
                while view:
                    view = view[os.write(fd, view):]
                # Without it a power cut after the rename may leave an empty file in its place.
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
