"""Prometheus metrics in a text file, for node_exporter's textfile collector.

`[metrics] textfile = "/var/lib/prometheus/node-exporter/edgeworker.prom"` turns them on. The
housekeeper thread calls `TextfileMetrics.update()` every `[metrics] interval`. It reads the
database only when something was committed since its last look (SQLite's `PRAGMA data_version`,
plus this connection's own changes), and writes the file only when the text differs from what it
wrote last: an idle worker writes nothing. The file is replaced whole (a temp file beside it,
fsync, rename), so the collector never reads half a file, and it is mode 0644 whatever the
service's umask, because node_exporter runs as another user.

prometheus_client renders the exposition format (names, escaping, types). It is imported here,
and this module only when metrics are on, so that other commands do not pay its ~60 ms import.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

import peewee

from edgeworker import report
from edgeworker.clock import from_text
from edgeworker.config import MetricsSettings
from edgeworker.errors import ConfigError
from edgeworker.models import Job, Recovery, Task, TaskStatus

logger = logging.getLogger("edgeworker.metrics")

RECOVERY_ACTIONS = ("recovered", "requeued", "failed", "cancelled", "scheduled")


def _seconds(moment: datetime | str | None) -> float | None:
    if isinstance(moment, str):
        moment = from_text(moment)
    return None if moment is None else moment.timestamp()


class TextfileMetrics:
    def __init__(self, settings: MetricsSettings, huey):
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
        self.huey = huey
        self.database = huey.database
        self._seen: tuple | None = None  # the database's version at the last render
        self._written: bytes | None = None
        self._error: str | None = None  # the last error logged (each is logged once)
        self.all_busy = False  # set by the daemon: every worker thread busy past busy_alert

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
        # data_version moves when another connection commits; total_changes counts our own.
        connection = self.database.connection()
        data_version = connection.execute("PRAGMA data_version").fetchone()[0]
        return id(connection), data_version, connection.total_changes, self.all_busy

    def _report(self, message: str) -> None:
        # Once per distinct error: a log line every interval would wear the SD card instead.
        if message != self._error:
            logger.error("%s (jobs run on)", message)
            self._error = message

    def render(self) -> bytes:
        return self._generate(self._registry)

    def collect(self) -> list:
        """The metric families, read from the database (prometheus_client's collector API)."""
        gauge, counter = self._gauge, self._counter
        names = dict(Job.select(Job.id, Job.name).order_by(Job.name).tuples())
        counts = report.task_counts()
        tasks = gauge("edgeworker_tasks", "Tasks in the database by job and status (finished "
                      "tasks are pruned after [worker] retention)", labels=["job", "status"])
        for job_id, name in sorted(names.items(), key=lambda item: item[1]):
            for status in TaskStatus:
                tasks.add_metric([name, status.value], counts.get(job_id, {}).get(status.value, 0))

        success = gauge("edgeworker_job_last_success_timestamp_seconds",
                        "When the job's last successful run finished", labels=["job"])
        last = (Task.select(Task.job, peewee.fn.MAX(Task.finished_at))
                .where(Task.status == TaskStatus.SUCCEEDED).group_by(Task.job).tuples())
        for name, finished in sorted((names[j], f) for j, f in last if j in names and f):
            success.add_metric([name], _seconds(finished))

        depth = report.queue_depth(self.huey)
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
        families = [tasks, success, queue, recoveries, busy]
        if record is not None:
            families.append(gauge("edgeworker_last_recovery_timestamp_seconds",
                                  "When the last start-up recovery ran",
                                  value=_seconds(record.started_at)))
            done = gauge("edgeworker_last_recovery_tasks", "What the last start-up recovery did: "
                         "tasks recovered, re-enqueued, failed or cancelled; jobs scheduled",
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
