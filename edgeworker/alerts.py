"""Alerts: hook commands after a run's outcome, dead-man's-switch pings, and "gone quiet" checks.

A job (or `[worker]`, for every job) names `on_failure`, `on_success` and `on_retry` commands, a
`ping_url` and an `alert_after` grace. None of it runs in a worker thread: the worker thread only
puts a small event on a queue, and one alerts thread takes them in order, so a slow hook or an
unreachable ping server never delays a run or holds a worker thread. The queue is bounded; when
it is full (hooks far slower than runs) an event is dropped and logged, never waited for.

Hooks run as commands do (`runners.run_command` with the worker's `ProcessTable`: own process
group and cgroup, recorded, killed with the worker), with `hook_timeout` (30 s by default), the
run's `EDGEWORKER_*` variables, `EDGEWORKER_STATUS`, `EDGEWORKER_EXIT_CODE`, `EDGEWORKER_ERROR`
and `EDGEWORKER_HOOK`, and the run's output tail on stdin. Each hook's outcome is one row of
`hook_runs` (`tasks show`).

Pings follow healthchecks.io: `<url>/start` when an attempt starts, `<url>` when a run succeeds,
`<url>/<exit code>` (or `<url>/fail` without one) when it fails for good, POSTed with the output
tail as the body. A ping delivered at once writes nothing to the database. One that cannot be
delivered goes to the `outbox` table, and so does every later ping to that server while any of
its pings wait (they arrive in order); the outbox is retried with back-off, across restarts, and
holds at most OUTBOX_LIMIT pings (the oldest are dropped, counted and logged). A plain http://
URL is spoken to with a socket: `http.client` imports `ssl`, and an idle worker does not load
OpenSSL.

"Gone quiet": the housekeeper calls `Alerts.check_quiet(now)`; a job whose last success is
older than its `alert_after` fires `on_failure` once per quiet spell with
`EDGEWORKER_STATUS=overdue`. The spell is timed on the monotonic clock from when the worker saw
the last success (one indexed query per check), so a clock step neither fires nor hides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import peewee

from edgeworker.clock import to_text
from edgeworker.config import WorkerSettings, format_duration
from edgeworker.models import HookRun, Job, Outbox, Task, TaskStatus
from edgeworker.processes import STDIN_PREFIX, ProcessTable
from edgeworker.runners import Interrupted, Result, command_env, run_command
from edgeworker.wakeup import Flag

logger = logging.getLogger("edgeworker.alerts")

QUEUE_LIMIT = 100  # events waiting for the alerts thread (each up to ~75 KiB: a Pi's memory)
OUTBOX_LIMIT = 1000  # pings kept while they cannot be delivered
PING_TIMEOUT = 10.0  # connect + send + status line, per try
PING_BODY_LIMIT = 10 * 1024  # the tail of the output a ping carries
RECORD_LIMIT = 4 * 1024  # of a hook's output kept in hook_runs
ERROR_LIMIT = 4 * 1024  # of a run's error in EDGEWORKER_ERROR
FIRST_BACKOFF = 2.0
FLUSH_BATCH = 50  # pings delivered, then settled in one transaction
MAX_BACKOFF = 600.0
HOOKS = ("on_failure", "on_success", "on_retry")
_STOP = object()


class PingError(Exception):
    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent  # the server refused it (4xx): retrying will not help


def post(url: str, body: bytes, timeout: float = PING_TIMEOUT) -> int:
    """POST `body` to `url`; returns the HTTP status, raises PingError."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": parts.netloc.rpartition("@")[2], "User-Agent": "edgeworker",
               "Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)),
               "Connection": "close"}
    try:
        if parts.scheme == "https":
            import http.client  # loads ssl: only for an https URL

            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout)
            try:
                conn.request("POST", path, body, headers)
                status = conn.getresponse().status
            finally:
                conn.close()
        else:
            status = _post_plain(parts.hostname, parts.port or 80, path, headers, body, timeout)
    except (OSError, ValueError) as exc:
        raise PingError(f"{type(exc).__name__}: {exc}") from None
    if 200 <= status < 300:
        return status
    raise PingError(f"HTTP {status}", permanent=400 <= status < 500 and status not in (408, 429))


def _post_plain(host: str, port: int, path: str, headers: dict[str, str], body: bytes,
                timeout: float) -> int:
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        reply = b""
        while b"\r\n" not in reply and len(reply) < 8192:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    line = reply.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or not line[0].startswith(b"HTTP/") or not line[1].isdigit():
        raise ValueError(f"not an HTTP reply: {reply[:60]!r}")
    return int(line[1])


def ping_address(url: str, suffix: str) -> str:
    """`suffix` added to the URL's path, before any query (`…/ping/abc/start?rid=…`)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def _server(url: str) -> str:
    """Where a ping goes (its pings arrive in order). urllib.parse, and the ipaddress module it
    imports, are loaded by the first ping: not in a worker without pings."""
    from urllib.parse import urlsplit

    return urlsplit(url).netloc


def effective(job: Job, settings: WorkerSettings, key: str):
    """A job's own alert setting, else the [worker] default; "" (off) becomes None."""
    column = "alert_after_seconds" if key == "alert_after" else key
    value = getattr(job, column)
    if value is None:
        value = getattr(settings, key)
    return value or None


def _tail(text: str | None, limit: int) -> str:
    data = (text or "").encode("utf-8", "replace")
    return data[-limit:].decode("utf-8", "ignore")


@dataclass(frozen=True)
class _Hook:
    hook: str  # on_failure | on_success | on_retry
    command: str
    job_name: str
    task_id: int | None
    env: dict[str, str]
    stdin: str


@dataclass(frozen=True)
class _Ping:
    url: str
    job_name: str
    task_id: int | None
    body: str


class Alerts:
    def __init__(self, settings: Callable[[], WorkerSettings], clock: Callable[[], datetime],
                 table: ProcessTable | None = None, abort: Flag | None = None):
        self.settings = settings  # the config loaded now (SIGHUP reloads it)
        self.clock = clock
        self.table = table
        self.abort = abort
        self.events: queue.Queue = queue.Queue(QUEUE_LIMIT)
        self.thread: threading.Thread | None = None
        self.waiting = 0  # pings in the outbox
        self.held: set[str] = set()  # servers with pings in the outbox: new ones queue behind
        self.retry_at: float | None = None  # monotonic: next try of the outbox
        self.backoff = FIRST_BACKOFF
        self.dropped = 0
        self.quiet: dict[int, tuple[int | None, float, bool]] = {}  # job: (success, since, fired)
        self.min_grace: float | None = None
        self.halted = False  # a stop that could not wait: run nothing more

    # -- what worker threads call (cheap: a queue put) --------------------------------------

    def started(self, task: Task, job: Job) -> None:
        url = effective(job, self.settings(), "ping_url")
        if url:
            self._put(_Ping(ping_address(url, "/start"), job.name, task.id, ""))

    def finished(self, task: Task, job: Job, env: dict[str, str], result: Result) -> None:
        """After the outcome of an attempt is recorded (`task` as it is now)."""
        status = {TaskStatus.CREATED: "retry", TaskStatus.SUCCEEDED: "succeeded",
                  TaskStatus.FAILED: "failed"}.get(TaskStatus(task.status))
        if status is not None:
            self._outcome(task.id, job, env, status, task.exit_code, task.error, result.output)

    def failed_in_recovery(self, task: Task, job: Job, env: dict[str, str], reason: str) -> None:
        """Start-up recovery ended an interrupted run `failed` (its attempts used up by
        crashes, say): that is its final outcome too."""
        self._outcome(task.id, job, env, "failed", None, reason, "")

    def _outcome(self, task_id: int, job: Job, env: dict[str, str], status: str,
                 exit_code: int | None, error: str | None, output: str | None) -> None:
        settings = self.settings()
        hook = {"retry": "on_retry", "succeeded": "on_success", "failed": "on_failure"}[status]
        url = effective(job, settings, "ping_url")
        if url and status != "retry":
            suffix = ""
            if status == "failed":
                suffix = (f"/{exit_code}" if exit_code is not None and 0 < exit_code < 256
                          else "/fail")
            body = output or ("" if status == "succeeded" else error or "")
            self._put(_Ping(ping_address(url, suffix), job.name, task_id,
                            _tail(body, PING_BODY_LIMIT)))
        command = effective(job, settings, hook)
        if command:
            env = {**env, "EDGEWORKER_STATUS": status,
                   "EDGEWORKER_EXIT_CODE": "" if exit_code is None else str(exit_code),
                   "EDGEWORKER_ERROR": _tail(error, ERROR_LIMIT)}
            hook_env = {**job.environment, **env, "EDGEWORKER_HOOK": hook}
            self._put(_Hook(hook, command, job.name, task_id, hook_env, output or ""))

    def _put(self, event) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:
            logger.error("alerts queue full (%s waiting): dropped %s of job %s",
                         self.events.maxsize, getattr(event, "hook", "a ping"), event.job_name)

    # -- the alerts thread ------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.held = {_server(url) for (url,) in Outbox.select(Outbox.url).tuples()}
            self.waiting = Outbox.select().count()
        except peewee.DatabaseError as exc:
            logger.error("cannot read the ping outbox: %s", exc)
        if self.waiting:
            logger.info("%s ping(s) wait in the outbox: delivering them", self.waiting)
            self.retry_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self.thread.start()

    def stop(self, timeout: float, grace: float = 7.0) -> None:
        """Finish what is queued within `timeout`; then stop a running hook (within `grace`)
        and run nothing more: a queued hook is lost, a ping kept in the outbox stays there."""
        if self.thread is None:
            return
        deadline = time.monotonic() + timeout
        try:
            self.events.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            self.halted = True
            if self.abort is not None:
                self.abort.set()
            with contextlib.suppress(queue.Full):
                self.events.put_nowait(_STOP)
            self.thread.join(grace)
            left = self.events.qsize()
            if left:
                logger.warning("stopping: %s queued alert(s) not run", left)

    def _run(self) -> None:
        try:
            while True:
                wait = None
                if self.retry_at is not None:
                    wait = max(0.0, self.retry_at - time.monotonic())
                try:
                    event = self.events.get(timeout=wait)
                except queue.Empty:
                    event = None
                if event is _STOP or self.halted:
                    return
                try:
                    if isinstance(event, _Hook):
                        self.run_hook(event)
                    elif isinstance(event, _Ping):
                        self.ping(event)
                    if self.retry_at is not None and time.monotonic() >= self.retry_at:
                        self.flush()
                except Exception as exc:  # noqa: BLE001 - an alert never stops the worker
                    logger.error("alerts: %s: %s", type(exc).__name__, exc)
                    if self.retry_at is not None and self.retry_at <= time.monotonic():
                        # the outbox could not be read (a busy or full disk): not a busy loop
                        self.retry_at = time.monotonic() + self.backoff
                        self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        finally:
            with contextlib.suppress(Exception):
                Outbox._meta.database.close()

    def run_hook(self, hook: _Hook) -> None:
        argv = shlex.split(hook.command)
        settings = self.settings()
        directory = self.table.directory if self.table and self.table.directory else None
        if directory is not None:
            os.makedirs(directory, 0o700, exist_ok=True)
        started = time.monotonic()
        import tempfile  # here: an idle worker without hooks keeps it (and random) out of memory

        with tempfile.NamedTemporaryFile("w", encoding="utf-8", errors="replace", dir=directory,
                                         prefix=STDIN_PREFIX) as stdin:
            stdin.write(hook.stdin)
            stdin.flush()
            try:
                result = self._command(argv, hook.env, stdin.name, settings.hook_timeout,
                                       (hook.task_id or 0, -HOOKS.index(hook.hook) - 1))
            except Interrupted:
                result = Result(False, None, "stopped: the worker stopped", "")
        status = "succeeded" if result.succeeded else "failed"
        logger.log(logging.INFO if result.succeeded else logging.WARNING,
                   "%s hook of job %s (task %s) %s in %.3fs%s", hook.hook, hook.job_name,
                   hook.task_id or "-", status, time.monotonic() - started,
                   "" if result.succeeded else f": {result.error}")
        self.record(hook.task_id, hook.job_name, hook.hook, status, result.exit_code,
                    result.error, _tail(result.output, RECORD_LIMIT))

    def _command(self, argv: list[str], env: dict[str, str], stdin: str, timeout: float,
                 run: tuple[int, int]) -> Result:
        if not _exists(argv[0], env):
            return Result(False, 127, f"command not found: {argv[0]}", "")
        wrapper = ["/bin/sh", "-c", 'f=$1; shift; exec "$@" <"$f"', "edgeworker-hook", stdin,
                   *argv]
        env = command_env(dict(os.environ), {}, env)
        return run_command(shlex.join(wrapper), False, env, None, timeout, self.abort,
                           table=self.table, run=run)

    def record(self, task_id: int | None, job_name: str, hook: str, status: str,
               exit_code: int | None, error: str | None, output: str | None) -> None:
        try:
            HookRun.create(task_id=task_id, job_name=job_name, hook=hook, status=status,
                           exit_code=exit_code, error=error, output=output or None,
                           finished_at=self.clock())
        except peewee.DatabaseError as exc:
            logger.error("cannot record the %s of job %s: %s", hook, job_name, exc)

    # -- pings ------------------------------------------------------------------------------

    def ping(self, ping: _Ping) -> None:
        if _server(ping.url) not in self.held:
            try:
                post(ping.url, ping.body.encode("utf-8", "replace"))
                return
            except PingError as exc:
                if exc.permanent:
                    logger.warning("ping %s of job %s refused: %s", ping.url, ping.job_name, exc)
                    self.record(ping.task_id, ping.job_name, f"ping {ping.url}", "dropped",
                                None, str(exc), None)
                    return
                logger.warning("ping %s of job %s failed (%s): kept in the outbox, retried "
                               "with back-off", ping.url, ping.job_name, exc)
                self.keep(ping, str(exc))
                self.retry_at = time.monotonic() + self.backoff
                return
        self.keep(ping, None)

    def keep(self, ping: _Ping, error: str | None) -> None:
        db = Outbox._meta.database
        try:
            with db.atomic():
                Outbox.create(task_id=ping.task_id, job_name=ping.job_name, url=ping.url,
                              body=ping.body, created_at=self.clock(),
                              attempts=1 if error else 0, last_error=error)
                self.waiting += 1
                self.held.add(_server(ping.url))
                extra = self.waiting - OUTBOX_LIMIT
                if extra > 0:
                    oldest = Outbox.select(Outbox.id).order_by(Outbox.id).limit(extra)
                    gone = Outbox.delete().where(Outbox.id.in_(oldest)).execute()
                    self.waiting -= gone
                    self.dropped += gone
                    logger.warning("ping outbox full (%s kept): dropped the %s oldest ping(s), "
                                   "%s since start", OUTBOX_LIMIT, gone, self.dropped)
        except peewee.DatabaseError as exc:
            logger.error("cannot keep ping %s of job %s in the outbox: %s", ping.url,
                         ping.job_name, exc)
        if self.retry_at is None:
            self.retry_at = time.monotonic()

    def flush(self) -> None:
        """Deliver the outbox oldest first. A server that fails holds back its later pings
        until the next try (they arrive in order), with back-off; other servers' go on. What
        was delivered is settled in one transaction per batch, not one per ping."""
        after, blocked, failed = 0, set(), None
        while True:
            rows = list(Outbox.select().where(Outbox.id > after).order_by(Outbox.id)
                        .limit(FLUSH_BATCH))
            if not rows:
                break
            after = rows[-1].id
            settled = []
            for row in rows:
                server = _server(row.url)
                if server in blocked:
                    continue
                try:
                    post(row.url, row.body.encode("utf-8", "replace"))
                    settled.append((row, "succeeded", None))
                except PingError as exc:
                    if exc.permanent:
                        logger.warning("ping %s of job %s refused (%s): dropped from the "
                                       "outbox", row.url, row.job_name, exc)
                        settled.append((row, "dropped", str(exc)))
                        continue
                    blocked.add(server)
                    failed = (row.url, exc)
                    Outbox.update(attempts=Outbox.attempts + 1, last_error=str(exc)).where(
                        Outbox.id == row.id).execute()
            self._settle(settled)
        self.waiting = Outbox.select().count()
        self.held = blocked if self.waiting else set()
        if failed is None:
            self.retry_at, self.backoff = None, FIRST_BACKOFF
            return
        self.retry_at = time.monotonic() + self.backoff
        logger.info("ping outbox: %s still fails (%s); %s ping(s) wait, next try in %s",
                    failed[0], failed[1], self.waiting, format_duration(self.backoff))
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def _settle(self, settled: list[tuple[Outbox, str, str | None]]) -> None:
        if not settled:
            return
        now = self.clock()
        with Outbox._meta.database.atomic():
            Outbox.delete().where(Outbox.id.in_([row.id for row, _, _ in settled])).execute()
            HookRun.insert_many([
                {"task_id": row.task_id, "job_name": row.job_name, "hook": f"ping {row.url}",
                 "status": status, "error": error, "exit_code": None, "finished_at": now,
                 "output": (f"delivered from the outbox after {row.attempts} failed "
                            f"tr{'y' if row.attempts == 1 else 'ies'}"
                            if status == "succeeded" else None)}
                for row, status, error in settled]).execute()

    # -- gone quiet -------------------------------------------------------------------------

    def check_quiet(self, now: datetime) -> int:
        """Fire on_failure (status overdue) for each job quiet for longer than its
        alert_after, once per spell; returns how many fired. `now` is the worker's clock."""
        default = self.settings().alert_after
        rows = quiet_query(default)
        mono = time.monotonic()
        seen, fired = set(), 0
        self.min_grace = None
        for job in rows:
            seen.add(job.id)
            grace = job.alert_after_seconds or default
            self.min_grace = min(grace, self.min_grace or grace)
            known = self.quiet.get(job.id)
            if known is None or known[0] != job.last_id:
                since = mono
                if known is None:  # first look: how long ago, by the wall clock, once
                    at = job.created_at
                    if job.last_id is not None:
                        at = Task.get_by_id(job.last_id).finished_at or at
                    since = mono - max(0.0, (now - at).total_seconds())
                known = (job.last_id, since, False)
            if not known[2] and mono - known[1] >= grace:
                known = (known[0], known[1], True)
                fired += self.overdue(job, grace, now)
            self.quiet[job.id] = known
        for job_id in set(self.quiet) - seen:
            del self.quiet[job_id]
        return fired

    def overdue(self, job: Job, grace: float, now: datetime) -> int:
        logger.warning("job %s has not succeeded for more than %s (alert_after)", job.name,
                       format_duration(grace))
        command = effective(job, self.settings(), "on_failure")
        if not command:
            return 0
        error = f"no successful run for more than {format_duration(grace)}"
        env = {"EDGEWORKER_JOB": job.name, "EDGEWORKER_STATUS": "overdue",
               "EDGEWORKER_EXIT_CODE": "", "EDGEWORKER_ERROR": error,
               "EDGEWORKER_HOOK": "on_failure", "EDGEWORKER_NOW": to_text(now)}
        self._put(_Hook("on_failure", command, job.name, None, {**job.environment, **env}, ""))
        return 1

    def shortest(self) -> float | None:
        """The shortest alert_after of the jobs the last check looked at."""
        return self.min_grace


def quiet_query(default: float | None) -> peewee.ModelSelect:
    """The jobs `alert_after` watches, each with its newest success (`last_id`): a walk of the
    tasks_job_id index, newest first, per job; never all of history."""
    last = (Task.select(Task.id).where((Task.job == Job.id)
                                       & (Task.status == TaskStatus.SUCCEEDED.value))
            .order_by(Task.id.desc()).limit(1))
    where = (Job.enabled == True) & (Job.paused == False)  # noqa: E712 - SQL
    where &= (Job.alert_after_seconds > 0) if default is None else (
        Job.alert_after_seconds.is_null() | (Job.alert_after_seconds > 0))
    return Job.select(Job, last.alias("last_id")).where(where).objects()


def _exists(program: str, env: dict[str, str]) -> bool:
    if "/" in program:
        return os.access(program, os.X_OK) and not os.path.isdir(program)
    return shutil.which(program, path=env.get("PATH", os.environ.get("PATH", os.defpath))) \
        is not None
