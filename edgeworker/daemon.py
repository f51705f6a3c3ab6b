"""`edgeworker run`: the worker process.

Start-up, in this order: take the single-instance lock -> open the database and check (or apply,
with --migrate) its migrations -> import every callable -> sync the config's jobs -> recovery, once,
before any work is taken -> huey's consumer on the main thread, with `workers` threads.

This module is the composition root (it builds the ledger, huey, the worker, the clock, alerts
and metrics) and the main thread's loop; huey's consumer runs the threads (`edgeworker.consumer`)
and huey's storage is the tasks table (`edgeworker.queue`). The main thread owns signals:
- SIGTERM (what systemd sends) and SIGINT are both graceful: stop taking work, let running tasks
  finish for up to `shutdown_timeout`, then stop them; a second signal stops at once. SIGHUP
  re-reads the config file and syncs its jobs.
- it re-plans waiting runs after a clock step, and holds cron jobs until the clock is trusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from datetime import timedelta

import peewee

from edgeworker import consumer, migrate, models, recovery, trust
from edgeworker import db as dbmod
from edgeworker.clock import ClockSetWatch, Step, WorkerClock, clock_synchronised, span, time_daemon
from edgeworker.config import Config, format_duration, load_config, normal_path
from edgeworker.errors import EdgeworkerError, WorkerRunning
from edgeworker.jobs import sync_jobs
from edgeworker.ledger import Ledger
from edgeworker.libc import release_startup_memory
from edgeworker.models import FINISHED, Task
from edgeworker.notify import Notifier
from edgeworker.processes import ProcessTable
from edgeworker.queue import MAX_IDLE, EdgeHuey
from edgeworker.runners import KILL_GRACE, verify_callables
from edgeworker.wakeup import Flag
from edgeworker.worker import IntervalJobWorker, task_environment

TYPE_CHECKING = False  # edgeworker.alerts is imported when a worker needs it (Daemon.alerting)
if TYPE_CHECKING:
    from edgeworker.alerts import Alerts

logger = logging.getLogger("edgeworker.daemon")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _noted(signum: int, frame) -> None:
    """Signals are read from the wake-up fd (Daemon._wait_for_signal)."""


def _forked() -> None:
    """In a child a callable forks (a `multiprocessing` pool's worker, an isolated callable):
    the default signal set-up again. The fork copied the worker's, whose handlers write each
    signal into the worker's wake-up pipe: `Pool.terminate()`, which sends its workers SIGTERM,
    stopped the worker, and the child itself did not end."""
    signal.set_wakeup_fd(-1)
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(after_in_child=_forked)

HEALTH_CHECK_INTERVAL = consumer.HEALTH_CHECK_INTERVAL
HELD_CHECK_INTERVAL = 1.0
PRUNE_INTERVAL = 3600.0
QUIET_CHECK = 60.0
# What makes a worker need its alerts: [worker] defaults, and the jobs' own columns.
ALERT_SETTINGS = ("on_failure", "on_success", "on_retry", "ping_url", "alert_after")
ALERT_COLUMNS = ("on_failure", "on_success", "on_retry", "ping_url", "alert_after_seconds")
EXPIRY_CHECK = 5.0  # at most this long between looks for workers whose lease expired
BEAT_RETRY = 0.1  # a failed heartbeat is tried again after this, then twice as long each time
FENCE_MARGIN = 0.5  # a fenced worker's runs are killed at least this long before its lease ends
STALL = MAX_IDLE + 30.0  # an idle worker thread that has not looped for this long is stuck


class Daemon:
    def __init__(self, config: Config, db_path: str | os.PathLike, *,
                 apply_migrations: bool = False, workers: int | None = None,
                 name: str | None = None):
        self.config = config
        self.name = name or config.worker.worker_name()
        self.db_path = db_path if dbmod.is_url(db_path) else normal_path(os.fspath(db_path))
        # Where relative paths (the config's, the database's) are read from: a callable may
        # change the process's directory (edgeworker.runners changes it back after it).
        try:
            self.home = os.getcwd()
        except OSError:  # the directory it started in is gone: only absolute paths work anyway
            self.home = "/"
        self.apply_migrations = apply_migrations
        self.workers = workers or config.worker.workers
        self.stop = Flag()
        self.abort = Flag()
        self.lock = None  # dbmod.worker_lock
        self.signals: list[int] = []  # read from the wake-up fd: each byte is a signal number
        self._signal_read, self._signal_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.threads = consumer.Threads()
        self.next_prune = time.monotonic()  # first look at once: the connection opens at start
        self.notifier = Notifier()
        self.metrics = None  # TextfileMetrics, with [metrics] textfile
        self.ready = False
        self.consumer = None
        self.busy_alert: str | None = None
        self.clock: WorkerClock | None = None
        self.clock_watch = ClockSetWatch()
        self.held_since: float | None = None  # monotonic: since when cron jobs wait for the clock
        self.overdue: tuple[object, float] | None = None  # (due time, monotonic first seen)
        self.processes: ProcessTable | None = None
        self.alerts: Alerts | None = None  # started when something needs it (`alerting`)
        self.alerts_lock = threading.Lock()
        self.alerts_may_run = False  # the alerts thread starts with the worker threads
        self.next_quiet = 0.0  # monotonic: the next "gone quiet" check
        self.heartbeat: float | None = None  # seconds between heartbeats; None: none
        self.lease: float | None = None  # PostgreSQL: how long a heartbeat holds this worker's runs
        self.beaten = 0.0  # monotonic: when the last heartbeat that was written was sent
        self.next_expiry_check = 0.0  # monotonic: the next look for expired leases
        self.fenced = False  # the lease may have expired: no claims, runs ended unrecorded
        self.fence_lock = threading.Lock()
        self.worker: IntervalJobWorker | None = None
        self.next_heartbeat = 0.0  # monotonic
        self.beat_failures = 0  # heartbeats that failed in a row

    # -- start-up ---------------------------------------------------------------------------

    def start(self):
        trust.verify(self.config)  # before anything is created or imported
        if dbmod.is_url(self.db_path) and not self.config.worker.heartbeat_seconds(True):
            raise self.config.error(
                "[worker] heartbeat: cannot be off on PostgreSQL, where it renews the worker's "
                "lease (without it, other workers take its runs)", "worker", 0, "heartbeat")
        self.install_signal_handlers()
        self.lock = dbmod.worker_lock(self.db_path, self.name).acquire()
        creating = not dbmod.is_url(self.db_path) and not os.path.exists(self.db_path)
        try:
            database = self.open_database()
        except BaseException:
            # A refused start leaves nothing behind: no lock file, no half-made database.
            if creating and self.apply_migrations:
                dbmod.remove_new_database(self.db_path)
            self.lock.release(remove=True)
            raise
        if not dbmod.is_url(self.db_path):  # reconnects and the WAL watch, whatever the directory
            self.db_path = database.database = os.path.join(self.home, self.db_path)
        self.processes = ProcessTable.for_database(self.db_path)
        try:
            return self._start(database)
        except BaseException:
            self.processes.close()
            raise

    def _start(self, database):
        logger.info("%s", self.processes.describe())
        self.ledger = Ledger(database, self.name, tags=self.config.worker.tags)
        self.huey = EdgeHuey(self.ledger)
        if self.config.metrics.textfile is not None:
            from edgeworker.metrics import TextfileMetrics

            self.metrics = TextfileMetrics(self.config.metrics, self.ledger)
        with dbmod.translate_errors(self.db_path):
            self.clock = WorkerClock(self.ledger.high_water(), clock_synchronised,
                                     on_step=self._wake)
        # The runs' abort: set by a shutdown's (self.abort) and by a fence; a new one after it.
        worker = self.worker = IntervalJobWorker(
            self.ledger, Flag(), stopping=self.stop.is_set, clock=self.clock.now,
            observe=self.metrics and self.metrics.observe,
            env_file=lambda: self.config.worker.env_file, table=self.processes,
            alerts=self.alerting, queue=self.huey.storage, fenced=lambda: self.fenced)

        def handle(args, run) -> None:
            thread = self.threads.current()
            if thread is not None:
                thread.busy_since = time.monotonic()
            try:
                worker.work(args, run)
            finally:
                if thread is not None:
                    thread.busy_since = None

        self.huey.bind(handle, now=self.clock.now, hold=lambda: self.held_since is not None,
                       stop=self.stop, path=self.db_path)
        self.huey.storage.paused = lambda: self.fenced
        self.notifier.status("starting: syncing jobs and recovering tasks")
        with dbmod.translate_errors(self.db_path):
            if dbmod.is_url(self.db_path):
                self.check_name()  # before anything is written
            if self.config.path is not None:
                report = sync_jobs(self.ledger, self.config.jobs, self.clock.now())
                logger.info("synced jobs from %s: %s", self.config.path, report.summary())
            self.recovery = recovery.recover(self.ledger, self.clock.now(), self.processes)
            logger.info("%s", self.recovery.line())
            self.processes.enclose(self.ledger.worker)  # before any run, and any thread
            self.alert_recovery()
            self.check_clock(starting=True)
            on_server = dbmod.is_url(self.db_path)
            self.heartbeat = self.config.worker.heartbeat_seconds(on_server)
            self.lease = self.config.worker.lease_seconds(on_server)
            self.beaten = time.monotonic()
            self.ledger.register(self.clock.now(), self.heartbeat, self.lease)
            self.next_heartbeat = time.monotonic() + (self.heartbeat or 0)
        def close_thread() -> None:
            self.huey.storage.release()
            database.close()

        self.consumer = consumer.build(self.huey, self.workers, self.threads, self.chores,
                                       close=close_thread)
        return self.consumer

    def check_name(self) -> None:
        """PostgreSQL: the name's lock is this worker's, yet its last life may still run (it
        lost its lock's session to a server restart and has not taken it again, or its host is
        cut off from the server). Its runs are its own while its lease holds: refuse to start
        until then, unless it is provably gone (it ran on this host, in an earlier boot or as a
        process that is gone)."""
        from edgeworker.processes import boot_id

        row = self.ledger.db.execute_sql(
            "SELECT host, pid, boot_id, lease_seconds - (extract(epoch FROM now()) - beat_at) "
            "FROM workers WHERE name = %s AND stopped_at IS NULL", (self.name,)).fetchone()
        if row is None or row[3] is None or row[3] <= 0:
            return
        host, pid, boot, left = row
        if host == socket.gethostname() and (boot != boot_id() or pid == os.getpid()
                                             or not _alive(pid)):
            return
        raise WorkerRunning(f'a worker named "{self.name}" (pid {pid} on {host}) holds its lease '
                            f"on {self.db_path} for {left:.0f}s more and may still run; stop "
                            "it, wait, or give this one another name ([worker] name, --name)")

    def alert_recovery(self, todo: recovery.Plan | None = None) -> None:
        """Runs that recovery (the start's, or `todo`: a lease recovery's) ended `failed` had
        their final outcome: their on_failure hooks and pings run (once the alerts thread
        starts)."""
        failed = [(task, why) for task, status, why in (todo or self.recovery).close
                  if status == models.TaskStatus.FAILED]
        if not failed:
            return
        jobs = {job.id: job for job in models.Job.select().where(
            models.Job.id.in_(list({task.job_id for task, _ in failed})))}
        for task, why in failed:
            job = jobs.get(task.job_id)
            alerts = job and self.alerting(job)
            if alerts is not None:
                alerts.failed_in_recovery(task, job, task_environment(task, job, True), why)

    def alerting(self, job: models.Job | None = None) -> Alerts | None:
        """The alerts (edgeworker.alerts), made the first time something needs them: a hook, a
        ping URL or alert_after in [worker] or on `job` (a run's; without one, on any job), or
        pings kept in the outbox. Without any, a worker neither imports them nor runs their
        thread."""
        if self.alerts is None and self.needs_alerts(job):
            with self.alerts_lock:
                if self.alerts is None:
                    from edgeworker.alerts import Alerts

                    alerts = Alerts(lambda: self.config.worker, self.clock.now, self.processes,
                                    self.abort)
                    if self.alerts_may_run:
                        alerts.start()
                    self.alerts = alerts
        return self.alerts

    def needs_alerts(self, job: models.Job | None) -> bool:
        settings = self.config.worker
        if any(getattr(settings, key) for key in ALERT_SETTINGS):
            return True
        if job is not None:
            return any(getattr(job, column) for column in ALERT_COLUMNS)
        J = models.Job  # noqa: N806
        try:  # a job's "" turns its [worker] default off; NULL takes it (none, here)
            return (J.select().where((J.on_failure != "") | (J.on_success != "")
                                     | (J.on_retry != "") | (J.ping_url != "")
                                     | (J.alert_after_seconds > 0)).exists()
                    or models.Outbox.select().exists())
        except peewee.DatabaseError:
            return True  # the alerts say what is wrong, and try again

    def open_database(self):
        settings = self.config.worker
        if not self.apply_migrations:
            migrate.ensure_current_file(self.db_path, settings.busy_timeout)  # changes nothing
        database = dbmod.open_database(self.db_path, durability=settings.durability,
                                       busy_timeout=settings.busy_timeout,
                                       create=self.apply_migrations)
        try:
            models.bind(database)
            with dbmod.translate_errors(self.db_path):
                if self.apply_migrations:
                    todo = migrate.plan(database, migrate.for_database(database))
                    for m in migrate.apply(database, todo):
                        logger.info("applied migration %s", m.label)
                migrate.ensure_current(database)
            verify_callables(self.config)
        except BaseException:
            database.close()
            raise
        return database

    def install_signal_handlers(self) -> None:
        if getattr(sys, "frozen", False):
            # Ctrl-C signals the whole process group, and a one-file binary's bootloader passes
            # it on as well: the worker would count two (stop at once). Alone in its own group,
            # it hears each signal once, from the bootloader.
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
        # Python writes each signal's number to the wake-up fd, whichever Python handler runs:
        # the main loop reads them there, so a signal that arrives while huey's consumer has its
        # own handlers installed (inside Consumer.start) is not lost either.
        signal.set_wakeup_fd(self._signal_write, warn_on_full_buffer=False)
        for signum in SIGNALS:
            signal.signal(signum, _noted)

    def _wake(self) -> None:
        """Wake the main loop (a clock step was seen by another thread)."""
        try:
            os.write(self._signal_write, b"c")
        except BlockingIOError:
            pass

    # -- the clock ------------------------------------------------------------------------------

    def wait_for_clock_sync(self) -> bool:
        setting = self.config.worker.wait_for_clock_sync
        return setting == "yes" or (setting == "auto" and time_daemon() is not None)

    def check_clock(self, starting: bool = False) -> None:
        """Re-plan after clock steps; hold cron jobs until the clock is synchronised (bounded)."""
        for step in self.clock.take_steps():
            self.on_step(step, starting)
        synchronised = clock_synchronised()
        if synchronised and self.clock.behind:
            step = self.clock.follow_wall()
            if step is not None:
                self.on_step(step, starting)
        now = self.clock.now()
        if starting:
            if self.wait_for_clock_sync() and not synchronised:
                self.held_since = time.monotonic()
                held = self.ledger.held_calendar()
                logger.warning("the clock is not synchronised: cron jobs (%s waiting) wait for it "
                               "for up to %s; interval jobs run", held,
                               span(self.config.worker.clock_sync_timeout).lstrip("+"))
                self.ledger.save_clock(now, held_since=now)
            else:
                self.ledger.save_clock(now, held_since=None)
            return
        if self.held_since is None:
            return
        waited = time.monotonic() - self.held_since
        if synchronised or waited >= self.config.worker.clock_sync_timeout:
            released = self.ledger.release_calendar(now)
            if synchronised:
                logger.info("the clock is synchronised: %s held cron run(s) queued after %s",
                            released, span(waited).lstrip("+"))
            else:
                logger.warning("the clock is still not synchronised after %s: running cron jobs "
                               "on the time it shows (%s run(s) queued)",
                               span(waited).lstrip("+"), released)
            self.held_since = None
            self.ledger.save_clock(now, held_since=None)

    def on_step(self, step: Step, starting: bool = False) -> None:
        now = self.clock.now()
        when = "while the worker was down" if starting else "now"
        if step.moved:
            moved = self.ledger.replan(step.moved, now)
            logger.warning("the clock stepped %s (%s): re-planned %s waiting run(s); intervals "
                           "and retries keep their length, cron jobs follow cron's rule",
                           span(step.moved), when, moved)
        else:
            logger.warning("the clock stepped %s (%s) and is not synchronised: the worker does "
                           "not follow it back; its time goes on from %s, the newest time "
                           "recorded", span(step.wall), when, step.at.isoformat())
        facts = {"last_step_at": step.at, "last_step_seconds": step.wall,
                 "last_step_moved": step.moved}
        if step.moved > 0:
            # Runs recorded before a forward step look older than they are: retention must
            # not take them for it (see prune), so remember it while retention would.
            state = self.ledger.clock_state()
            earlier = 0.0
            retention = self.config.worker.retention
            if state is not None and state.forward_at is not None and (
                    retention is None or state.forward_at > now - timedelta(
                        seconds=retention + state.forward_seconds)):
                earlier = state.forward_seconds
            facts.update(forward_at=now, forward_seconds=earlier + step.moved)
        self.ledger.save_clock(now, correct=step.moved < 0, **facts)

    # -- running ----------------------------------------------------------------------------

    def run(self) -> int:
        consumer = self.start()
        if not dbmod.is_url(self.db_path):
            # The main thread's connection holds start-up's pages (migrations, sync, recovery);
            # it reconnects when it next needs the database. (A PostgreSQL connection holds
            # little here, and connecting again costs a round trip and authentication.)
            self.ledger.db.close()
        release_startup_memory()
        consumer.start()
        for signum in SIGNALS:  # huey's consumer installed its own
            signal.signal(signum, _noted)
        with self.alerts_lock:
            self.alerts_may_run = True
            if self.alerts is not None:  # made by the start's recovery
                self.alerts.start()
        self.alerting()
        logger.info('edgeworker running: worker "%s", %s worker thread(s) on %s (pid %s)',
                    self.name, self.workers, self.db_path, os.getpid())
        self.notifier.ready(self.status_line())
        self.ready = True  # the housekeeper pings only from here on
        next_health = time.monotonic() + HEALTH_CHECK_INTERVAL
        while True:
            wait = next_health - time.monotonic()
            if self.held_since is not None:
                wait = min(wait, HELD_CHECK_INTERVAL)  # a stat and a syscall: is it synchronised?
            if self.lease and not self.fenced:  # a heartbeat blocked (a partition) fences too
                wait = min(wait, self.beaten + self.fence_after() - time.monotonic())
            retake = getattr(self.lock, "retake_in", lambda: None)()
            if retake is not None:  # PostgreSQL restarted: take the name's lock again soon
                wait = min(wait, retake)
            session_ended = self._wait_for_signal(wait)
            stop = self._take_signals()
            if stop:
                return self.shutdown(consumer)
            self.clock_watch.drain()
            self.clock.now()  # a step shows here: wall minus monotonic moved
            try:
                self.check_clock()
            except peewee.DatabaseError as exc:
                logger.error("cannot re-plan after a clock change (%s); trying again", exc)
            self.check_lease(time.monotonic())
            checked = time.monotonic() >= next_health
            if checked:
                next_health = time.monotonic() + HEALTH_CHECK_INTERVAL
                consumer.check_worker_health()
            if checked or retake is not None or session_ended:
                if not self.lock.keep():  # PostgreSQL: taken by another worker after a restart
                    logger.error('another worker named "%s" took its lock on %s while the '
                                 "server was away: stopping", self.name, self.db_path)
                    return self.shutdown(consumer) or 1

    def _wait_for_signal(self, timeout: float) -> bool:
        """Wait for a signal, a clock change or the timeout; True if the lock's session (on
        PostgreSQL) has something to say: most likely that the server ended it."""
        watched = [self._signal_read] + ([self.clock_watch] if self.clock_watch.fd >= 0 else [])
        session = getattr(self.lock, "fileno", lambda: -1)()
        ready, _, _ = select.select(watched + ([session] if session >= 0 else []), [], [],
                                    max(0.0, timeout))
        try:
            while data := os.read(self._signal_read, 64):
                self.signals.extend(n for n in data if n in SIGNALS)
        except BlockingIOError:
            pass
        return session >= 0 and session in ready

    def _take_signals(self) -> bool:
        pending, self.signals = self.signals, []
        stop = False
        for signum in pending:
            if signum == signal.SIGHUP:
                self.reload()
            else:
                logger.info("received %s: stopping (running tasks may finish for up to %gs; "
                            "send it again to stop at once)", signal.Signals(signum).name,
                            self.config.worker.shutdown_timeout)
                stop = True
        return stop

    def reload(self) -> None:
        """Re-read the config and sync its jobs in one transaction; any failure (a schedule
        that cannot be planned, a module that raises at import) keeps the running config."""
        try:
            config = load_config(self.config.path, home=self.home)
            trust.verify(config)
            verify_callables(config)
            report = sync_jobs(self.ledger, config.jobs, self.clock.now())
            if config.worker.tags != self.ledger.tags:
                self.ledger.retag(config.worker.tags)
        except (EdgeworkerError, peewee.DatabaseError) as exc:
            logger.error("reload failed, keeping the jobs as they were: %s", exc)
            return
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a reload never stops the worker
            logger.error("reload failed, keeping the jobs as they were: %s: %s",
                         type(exc).__name__, exc)
            return
        self.config = config
        logger.info("reloaded %s: %s", config.path, report.summary())

    def next_due(self):
        return self.ledger.next_due(hold=self.held_since is not None)

    def chores(self) -> float:
        """The housekeeper's round: retention, busy and quiet checks, the watchdog, metrics.
        Returns how long to wait for the next."""
        if time.monotonic() >= self.next_prune:
            self.next_prune = time.monotonic() + PRUNE_INTERVAL
            try:
                self.prune()
            except Exception as exc:
                logger.error("pruning old tasks failed: %s", exc)
        try:
            self.check_busy()
            self.check_quiet()
            self.tick()
            self.beat()
            self.take_expired()
        except Exception as exc:
            logger.error("housekeeping failed: %s", exc)
        if self.metrics is not None:
            self.metrics.update()  # logs its own errors, once each
        bound = self.config.worker.busy_alert
        intervals = (self.notifier.watchdog_interval, self.metrics and self.metrics.interval,
                     bound and min(60.0, max(0.5, bound / 2)))
        interval = min(filter(None, intervals), default=PRUNE_INTERVAL)
        heartbeat = self.next_heartbeat if self.heartbeat else self.next_prune
        expiry = self.next_expiry_check if self.lease else self.next_prune
        return min(interval, self.next_prune - time.monotonic(),
                   self.next_quiet - time.monotonic(), heartbeat - time.monotonic(),
                   expiry - time.monotonic())

    def beat(self) -> None:
        """The workers row's heartbeat: at most one write a `[worker] heartbeat` (on PostgreSQL,
        it renews this worker's lease)."""
        if not self.heartbeat or time.monotonic() < self.next_heartbeat:
            return
        sent = time.monotonic()
        self.next_heartbeat = sent + self.beat_retry()  # until this one is written
        self.check_lease(sent)  # before it is renewed: a worker that was stopped (SIGSTOP)
        if not self.ledger.heartbeat(self.clock.now()):  # its row was pruned: write it again
            self.ledger.register(self.clock.now(), self.heartbeat, self.lease)
        self.written(sent)
        if self.fenced:
            self.unfence()

    def beat_retry(self) -> float:
        """How soon to try again if this heartbeat fails: at once at first (after a server's
        restart the first statement on a connection finds it closed, the next connects again),
        then backing off to the heartbeat interval."""
        self.beat_failures += 1
        return min(self.heartbeat, BEAT_RETRY * 2 ** (self.beat_failures - 1))

    def written(self, sent: float) -> None:
        self.beaten, self.beat_failures = sent, 0
        self.next_heartbeat = sent + self.heartbeat

    def take_expired(self) -> None:
        """PostgreSQL: recover the running tasks of workers whose lease expired, looked for (a
        read) every EXPIRY_CHECK seconds at most, so that a dead worker's runs start again
        within about a lease of its last heartbeat."""
        if not self.lease or self.fenced or time.monotonic() < self.next_expiry_check:
            return
        self.next_expiry_check = time.monotonic() + min(EXPIRY_CHECK, self.heartbeat)
        todo = recovery.recover_expired(self.ledger, self.clock.now(), self.processes)
        if todo is not None:
            logger.warning("took the running tasks of worker(s) %s, whose lease expired: %s",
                           ", ".join(todo.owners), todo.line())
            self.alert_recovery(todo)

    def renew(self) -> None:
        """While stopping, runs finish but the housekeeper (and `beat`) has stopped: keep the
        lease here, so that no other worker takes those runs; fence them if it cannot be kept."""
        self.check_lease(time.monotonic())
        if not self.lease or time.monotonic() < self.next_heartbeat:
            return
        sent = time.monotonic()
        self.next_heartbeat = sent + self.beat_retry()
        try:
            if self.ledger.heartbeat(self.clock.now()):
                self.written(sent)
        except (peewee.DatabaseError, peewee.InterfaceError) as exc:
            logger.error("cannot renew the lease while stopping: %s", exc)

    def fence_after(self) -> float:
        """Seconds without a heartbeat after which this worker fences: early enough that the
        runs it ends then (SIGTERM, their grace, SIGKILL) are over `FENCE_MARGIN` before its
        lease ends. A short lease shortens the grace rather than fence a heartbeat that is
        merely late: never before halfway from the heartbeat interval to the lease."""
        return self.lease - min(KILL_GRACE + FENCE_MARGIN, (self.lease - self.heartbeat) / 2)

    def check_lease(self, now: float) -> None:
        """Fence this worker when it has not written a heartbeat for nearly its lease (monotonic
        time since the last one was sent, which is no later than the server dated it): other
        workers may soon recover its runs."""
        if self.lease and not self.fenced and now - self.beaten >= self.fence_after():
            self.fence(now - self.beaten)

    def fence(self, silent: float) -> None:
        """Stop claiming and end the running runs without recording them, killed before the lease
        ends: their rows stay running, for the worker that recovers them (or for this one's own
        recovery when it reaches the database again, see `unfence`)."""
        ends, window = self.beaten + self.lease, self.lease - self.fence_after()
        with self.fence_lock:
            if self.fenced:
                return
            self.fenced = True
            self.worker.abort.kill_by = ends - min(FENCE_MARGIN, window / 2)
            self.worker.abort.set()
        busy = sum(1 for w in self.threads.workers.values() if w.busy_since is not None)
        left = ends - time.monotonic()
        who, when = (("may recover this worker's runs in " + span(left).lstrip("+"), "before then")
                     if left > 0 else ("may be recovering this worker's runs", "at once"))
        logger.error("no heartbeat written for %s of the lease (%s): other workers %s; it stops "
                     "claiming and ends its %s running run(s) unrecorded %s, until it reaches "
                     "the database again", span(silent).lstrip("+"), format_duration(self.lease),
                     who, busy, when)

    def unfence(self) -> bool:
        """After a heartbeat was written again while fenced: once the ended runs are over,
        recover what of them nobody took (this name's running tasks), register again and take
        work again. False while runs are still ending."""
        if any(w.busy_since is not None for w in self.threads.workers.values()):
            return False
        todo = recovery.recover(self.ledger, self.clock.now(), self.processes)
        self.ledger.register(self.clock.now(), self.heartbeat, self.lease)
        with self.fence_lock:
            self.worker.abort = Flag()
            self.fenced = False
        logger.warning("reached the database again: registered again and taking work; %s",
                       todo.line())
        self.alert_recovery(todo)
        return True

    def status_line(self) -> str:
        busy = sum(1 for w in self.threads.workers.values() if w.busy_since is not None)
        due = self.next_due()
        nxt = f"next run {due.astimezone():%H:%M:%S}" if due else "nothing scheduled"
        alert = f"{self.busy_alert}; " if self.busy_alert else ""
        return (f"{alert}{busy}/{self.workers} threads busy, {nxt}; "
                f"at start: {self.recovery.line()}")

    def all_busy(self) -> str | None:
        """Every worker thread running one task for longer than `busy_alert`: nothing else can
        start. Not a stall (the loop is alive), but worth an operator's look."""
        bound = self.config.worker.busy_alert
        if bound is None or not self.threads.workers:
            return None
        now = time.monotonic()
        since = [w.busy_since for w in self.threads.workers.values()]
        if any(s is None or now - s < bound for s in since):
            return None
        return (f"all {len(since)} worker thread(s) busy for more than "
                f"{format_duration(bound)}: no other run can start")

    def check_busy(self) -> None:
        alert = self.all_busy()
        if alert != self.busy_alert:
            if alert:
                logger.warning("%s (see `edgeworker status`; a job `timeout` ends such runs)",
                               alert)
            else:
                logger.info("a worker thread is free again")
            self.busy_alert = alert
            if self.metrics is not None:
                self.metrics.all_busy = alert is not None

    def check_quiet(self) -> None:
        """Jobs gone quiet (alert_after), looked at every quarter of the shortest grace, at
        least once a minute (jobs come and go), at most four times a second."""
        if time.monotonic() < self.next_quiet:
            return
        self.next_quiet = time.monotonic() + QUIET_CHECK
        alerts = self.alerting()
        if alerts is None:
            return
        alerts.check_quiet(self.clock.now())
        graces = [g for g in (self.config.worker.alert_after, alerts.shortest()) if g]
        if graces:
            self.next_quiet = time.monotonic() + min(QUIET_CHECK, max(0.25, min(graces) / 4))

    def stalled(self) -> str | None:
        """Why the worker is not making progress, or None. A thread running a long task is
        progress; an idle thread that stopped looping, or due work that nobody takes, is not."""
        now = time.monotonic()
        idle = [w for w in self.threads.workers.values() if w.busy_since is None]
        for worker in idle:
            if now - worker.last_loop > STALL:
                return f"a worker thread has not looped for {now - worker.last_loop:.0f}s"
        # Due work that nobody takes, timed on the monotonic clock from when it was first seen
        # due: a clock step makes work look overdue at once, yet nothing is stuck.
        due = self.next_due()
        if not idle or due is None or due > self.clock.now():
            self.overdue = None
            return None
        if self.overdue is None or self.overdue[0] != due:
            self.overdue = (due, now)
        if now - self.overdue[1] > STALL:
            return f"work due since {due.isoformat()} is not being taken"
        return None

    def tick(self) -> None:
        """Housekeeping that proves progress: systemd's watchdog and status line."""
        if not self.notifier.enabled or not self.ready:
            return
        problem = self.stalled()
        if problem:
            logger.error("not pinging the watchdog: %s", problem)
            self.notifier.status(f"stalled: {problem}")
            return
        self.notifier.watchdog()
        self.notifier.status(self.status_line())

    def prune(self) -> int:
        retention = self.config.worker.retention
        if retention is None:
            return 0
        now = self.clock.now()
        before = now - timedelta(seconds=retention)
        state = self.ledger.clock_state()
        if state is not None and state.forward_at is not None and \
                state.forward_at > before - timedelta(seconds=state.forward_seconds):
            # A forward step made the runs before it look older than they are: not a reason
            # to delete them (runs after it may be kept that much longer).
            before -= timedelta(seconds=state.forward_seconds)
        # Look before deleting: a write transaction that deletes nothing still costs a lock.
        self.ledger.prune_hook_runs(before)
        old = (Task.select().where(Task.status.in_(list(FINISHED)) & (Task.finished_at < before))
               .exists())
        if not old:
            return 0
        count = self.ledger.prune(before)
        logger.info("pruned %s task(s) that finished before %s", count, before.isoformat())
        return count

    # -- stopping ---------------------------------------------------------------------------

    def shutdown(self, consumer) -> int:
        self.notifier.stopping()
        consumer.stop_flag.set()
        self.stop.set()
        deadline = time.monotonic() + self.config.worker.shutdown_timeout
        if not self._join(consumer, deadline):
            if self.signals:
                return self._stop_now("second signal")
            logger.warning("shutdown timeout (%gs) over: stopping the running tasks",
                           self.config.worker.shutdown_timeout)
            self.abort.set()
            self.worker.abort.set()
            if not self._join(consumer, time.monotonic() + KILL_GRACE + 2):
                return self._stop_now("tasks did not stop")
        # Queued hooks and pings may finish within what is left of the shutdown timeout.
        if self.alerts is not None:
            self.alerts.stop(max(0.5, deadline - time.monotonic()), KILL_GRACE + 2)
        logger.info("edgeworker stopped")
        with contextlib.suppress(peewee.DatabaseError):
            self.ledger.save_clock(self.clock.now())
        self.close()
        return 0

    def _join(self, consumer, deadline: float) -> bool:
        """Wait for the threads until `deadline`, or until another signal arrives."""
        while time.monotonic() < deadline:
            if not self.threads.alive():
                return True
            self.renew()
            self._wait_for_signal(min(0.1, deadline - time.monotonic()))
            if any(s != signal.SIGHUP for s in self.signals):
                return False
        return not self.threads.alive()

    def _stop_now(self, why: str) -> int:
        # Counted first: a run that sees the abort ends its command itself and leaves the table.
        killed = len(self.processes.running)
        self.abort.set()  # the runs see it: killed by the stop, not failed (runners.Interrupted)
        self.worker.abort.set()
        self.processes.kill_all()
        logger.warning("stopping at once (%s): killed %s running command(s); their tasks run "
                       "again at the next start", why, killed)
        self.close()
        return 0

    def close(self) -> None:
        if self.processes is not None:
            self.processes.close()
        self.huey.storage.close()
        with contextlib.suppress(peewee.DatabaseError):
            self.ledger.stopped(self.clock.now())
        if not self.ledger.db.is_closed():
            self.ledger.db.close()
        if self.lock is not None:
            self.lock.release()
