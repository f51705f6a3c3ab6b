"""Running one task: a command with its whole process tree, or a Python callable.

Commands run without a shell unless asked, as one run of `processes.ProcessTable`: in a process
group of their own (and a cgroup, where cgroup v2 is writable), whose processes die with the
worker (a watcher in the group; no `preexec_fn`), recorded while they run so that the next
start ends whatever a killed worker left (see `edgeworker.processes` for how and why). A
timeout, a shutdown or an operator's cancel sends SIGTERM to the whole tree, then SIGKILL after
a grace period. When the main process exits, whatever it left in its group or cgroup is ended
too, and the run does not wait on a pipe a leftover holds. The last 64 KiB of stdout+stderr are
kept; bytes that are not UTF-8 are replaced, never a crash.

A callable `package.module:function` is called with a `TaskContext`:
- in the worker thread (the default: no fork per run, and the callable may share the worker's
  imports and caches); its timeout is cooperative (`ctx.deadline`, `ctx.time_left()`) and enforced
  by raising `TaskTimeout` in its thread when Python code next runs there, so a call blocked in C
  (a `time.sleep`, a socket read) runs on, and a running one cannot be cancelled;
- with `isolate = true`, in a forked child (its module is already imported, so the fork is cheap)
  that a timeout, a shutdown or a cancel stops like a command (it is adopted as the run's process
  group). The child only runs the callable and sends its result back over a pipe.
Whatever a callable raises, `SystemExit` and `KeyboardInterrupt` included, is the run's outcome.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from edgeworker import trust
from edgeworker.config import Config
from edgeworker.entry import openssl_for_jobs
from edgeworker.errors import ConfigError
from edgeworker.libc import libc
from edgeworker.processes import ProcessTable, Tree
from edgeworker.wakeup import Flag

OUTPUT_LIMIT = 64 * 1024
PR_SET_PDEATHSIG = 1  # an isolated callable's child dies with the worker
KILL_GRACE = 5.0
EXIT_CHECK = 0.1
CANCEL_CHECK = 1.0  # how often a running command's task is checked for a cancel
# Variables for the worker itself: a child must not talk to systemd in the worker's name.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES")


class Interrupted(Exception):
    """The worker is shutting down and stopped this run: its outcome is not recorded."""


class TaskTimeout(BaseException):
    """Raised inside a callable that outlived its timeout (a BaseException, like
    KeyboardInterrupt, so that `except Exception` in user code does not swallow it)."""


@dataclass(frozen=True)
class Result:
    succeeded: bool
    exit_code: int | None
    error: str | None
    output: str


@dataclass
class TaskContext:
    """What a callable is told about its run (the same facts as the EDGEWORKER_* variables)."""

    task_id: int
    job: str
    attempt: int
    recovered: bool
    scheduled_for: datetime
    deadline: float | None  # time.monotonic() value, or None without a timeout
    logger: logging.Logger
    env: dict[str, str] = field(default_factory=dict)

    def time_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


class Tail:
    """The last `limit` bytes written to it."""

    def __init__(self, limit: int = OUTPUT_LIMIT):
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def write(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self.limit:
            self._trim()

    def _trim(self) -> None:
        extra = len(self.data) - self.limit
        if extra > 0:
            self.dropped += extra
            del self.data[:extra]

    def text(self) -> str:
        self._trim()
        text = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            text = f"[... {self.dropped} earlier bytes dropped ...]\n" + text
        return text


def command_env(base: dict[str, str], job_env: dict[str, str],
                task_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in PRIVATE_ENV}
    env.update(job_env)
    env.update(task_env)
    return env


_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= reads them: `#` and `;` lines are
    comments, a value may be quoted ('...' or "..." with backslash escapes). The file is checked
    (owner, mode at most 0640) each time it is read. Errors name the file and line, never what
    is in it: it holds secrets."""
    trust.check_env_file(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"env_file: {path}: cannot read it: {reason}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _ENV_KEY.fullmatch(key):
            raise ConfigError(f"env_file: {path}:{number}: not a KEY=VALUE line (its content "
                              "is not shown: it may be a secret)")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(["\\$`])', r"\1", value)
        values[key] = value
    return values


class _Status:
    """What `Popen` offers `_supervise`, for a forked child: its pid, exit status and pipe."""

    def __init__(self, pid: int, read_fd: int):
        self.pid = pid
        self.stdout = os.fdopen(read_fd, "rb", buffering=0)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        deadline, pause = time.monotonic() + timeout, 0.0005
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)  # an exit right after EOF is seen at once
        if self.returncode is None:
            import subprocess

            raise subprocess.TimeoutExpired(str(self.pid), timeout)
        return self.returncode


def _not_runnable(program: str, env: dict[str, str], cwd: str | None) -> Result | None:
    """Why `program` cannot start, before anything is spawned (the gate would only say exit
    127 or 126 in the command's output)."""
    if "/" in program:
        path = os.path.join(cwd or os.getcwd(), program)
        if not os.path.exists(path):
            return Result(False, 127, f"command not found: {program}", "")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return Result(False, 126, f"permission denied: {program}", "")
        return None
    if shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        return Result(False, 127, f"command not found: {program}", "")
    return None


_anonymous = ProcessTable("-", None, None)


def run_command(target: str, shell: bool, env: dict[str, str], cwd: str | None,
                timeout: float | None, abort: Flag | None = None,
                grace: float = KILL_GRACE, table: ProcessTable | None = None,
                run: tuple[int, int] = (0, 0),
                cancelled: Callable[[], str | None] | None = None) -> Result:
    """Run a command as the run `run` (task id, attempt) of `table`'s database. `cancelled` is
    asked about once a second; a reason it returns stops the command as a timeout does."""
    argv = ["/bin/sh", "-c", target] if shell else shlex.split(target)
    if not argv:
        return Result(False, None, "empty command", "")
    if cwd and not os.path.isdir(cwd):
        return Result(False, None, f"working directory {cwd} does not exist", "")
    refused = _not_runnable(argv[0], env, cwd)
    if refused is not None:
        return refused
    try:
        tree = (table or _anonymous).spawn(argv, env, cwd, *run)
    except PermissionError as exc:
        return Result(False, 126, f"permission denied: {exc.filename or argv[0]}", "")
    except OSError as exc:
        return Result(False, None, f"cannot start {argv[0]}: {exc}", "")
    try:
        return _supervise(tree, timeout, abort, grace, cancelled)
    finally:
        tree.close()


def _supervise(tree: Tree, timeout: float | None, abort: Flag | None, grace: float,
               cancelled: Callable[[], str | None] | None, limit: int = OUTPUT_LIMIT) -> Result:
    import subprocess  # TimeoutExpired; loaded by the first run that starts a process

    proc = tree.proc
    tail = Tail(limit)
    deadline = None if timeout is None else time.monotonic() + timeout
    stopped: str | None = None  # why the worker stopped it: timeout, shutdown, or a cancel
    kill_at: float | None = None
    next_check = time.monotonic() + CANCEL_CHECK
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if abort is not None:
        poller.register(abort.fileno(), select.POLLIN)
    try:  # readable when the main process exits, even while a leftover holds the pipe
        exited = os.pidfd_open(proc.pid)
        poller.register(exited, select.POLLIN)
    except (AttributeError, OSError):  # Linux < 5.3: notice the exit within EXIT_CHECK
        exited = None
    eof = False
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if stopped is None:
                if deadline is not None and now >= deadline:
                    stopped = f"timed out after {timeout:g}s: stopped its process group"
                elif abort is not None and abort.is_set():
                    stopped = "interrupted"
                    poller.unregister(abort.fileno())
                elif cancelled is not None and now >= next_check:
                    next_check = now + CANCEL_CHECK
                    stopped = cancelled()
                if stopped is not None:
                    tree.signal(signal.SIGTERM)
                    kill_at = now + grace
                    if stopped == "interrupted":
                        kill_at = min(kill_at, abort.kill_by)
            if kill_at is not None and now >= kill_at:
                tree.signal(signal.SIGKILL)
                kill_at = None
            waits = [1.0 if exited is not None else EXIT_CHECK]
            if deadline is not None and stopped is None:
                waits.append(deadline - now)
            if cancelled is not None and stopped is None:
                waits.append(next_check - now)
            if kill_at is not None:
                waits.append(kill_at - now)
            wait = max(0.0, min(waits))
            if eof:
                # Output closed but the process lives on: wait for it (or its deadline).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.01, wait))
                continue
            for ready_fd, _ in poller.poll(wait * 1000):
                if ready_fd == fd:
                    eof = _drain(fd, tail)
        # The main process is gone. Whatever it left in its group or cgroup goes with it, as
        # systemd does for a service; what it wrote is in the pipe, and nobody waits on a pipe a
        # leftover holds.
        _drain(fd, tail)
        left = 0.0 if kill_at is None else max(0.0, kill_at - time.monotonic())
        tree.end(grace if stopped is None else left)
        _drain(fd, tail)
    finally:
        proc.stdout.close()
        if exited is not None:
            os.close(exited)
        if proc.poll() is None:  # an exception above: leave nothing behind
            tree.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace + 1)
    if stopped == "interrupted" or (stopped is None and abort is not None and abort.is_set()):
        raise Interrupted()  # ended by the shutdown, however it died: not the run's outcome
    code = proc.returncode
    if stopped is not None:
        return Result(False, code, stopped, tail.text())
    if code == 0:
        return Result(True, 0, None, tail.text())
    if code < 0:
        error = f"killed by {signal.Signals(-code).name}"
    else:
        error = f"exit status {code}"
    return Result(False, code, error, tail.text())


def _drain(fd: int, tail: Tail) -> bool:
    """Read what is there; True at end of file."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        tail.write(chunk)


# -- callables ----------------------------------------------------------------------------------

def add_python_path(paths: tuple[str | os.PathLike, ...]) -> None:
    """Put `paths` first on sys.path, absolute: a callable may change the directory."""
    for path in reversed(paths):
        entry = os.path.abspath(path)
        if entry not in sys.path:
            sys.path.insert(0, entry)


def load_callable(target: str) -> Callable:
    module_name, _, attr_path = target.partition(":")
    openssl_for_jobs()
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f'callable "{target}": cannot import {module_name}: '
                          f"{type(exc).__name__}: {exc}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f'callable "{target}": {module_name} has no attribute '
                              f'"{attr_path}"') from None
    if not callable(obj):
        raise ConfigError(f'callable "{target}": {attr_path} is not callable')
    return obj


def verify_callable(target: str, python_path: tuple[str | os.PathLike, ...]) -> Callable:
    add_python_path(python_path)
    return load_callable(target)


def verify_callables(config: Config) -> None:
    """Import every callable job now, so a typo fails at start, not at 3 a.m."""
    add_python_path(config.worker.python_path)
    for index, spec in enumerate(config.jobs):
        if spec.kind == "callable":
            try:
                load_callable(spec.target)
            except ConfigError as exc:
                raise config.error(f'job "{spec.name}": {exc}', "jobs", index,
                                   "callable") from None


_TAIL_FORMAT = logging.Formatter("%(levelname)s %(message)s")


class _TailHandler(logging.Handler):
    def __init__(self, tail: Tail):
        super().__init__()
        self.tail = tail
        self.setFormatter(_TAIL_FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        self.tail.write((self.format(record) + "\n").encode("utf-8", errors="replace"))


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc else None)


def _start_timer(timeout: float, expire: Callable[[], None]) -> threading.Timer:
    # threading.Timer dies with OverflowError beyond TIMEOUT_MAX (about 292 years).
    timer = threading.Timer(min(timeout, threading.TIMEOUT_MAX), expire)
    timer.daemon = True
    timer.start()
    return timer


def _failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"the callable called sys.exit({exc.code!r}) instead of returning"
    trace = io.StringIO()
    traceback.print_exception(exc, file=trace)
    return trace.getvalue().rstrip()


_handlers = threading.local()


def _tail_handler(tail: Tail) -> _TailHandler:
    """This thread's handler, writing to `tail` now (one per thread: a run at a time)."""
    handler = getattr(_handlers, "handler", None)
    if handler is None:
        handler = _handlers.handler = _TailHandler(tail)
    handler.tail = tail
    return handler


def run_callable(fn: Callable, ctx: TaskContext, timeout: float | None,
                 keep_cwd: bool = True) -> Result:
    """Call `fn(ctx)` in this thread. With `keep_cwd` (in the worker), a working directory the
    callable changed is changed back: it is the whole process's, the other runs' too."""
    tail = Tail()
    handler = _tail_handler(tail)
    if ctx.logger.level == logging.NOTSET:
        ctx.logger.setLevel(logging.INFO)  # a task's info lines belong in its output
    ctx.logger.addHandler(handler)
    thread_id = threading.get_ident()
    guard = threading.Lock()
    state = {"done": False, "fired": False}

    def expire() -> None:
        with guard:
            if not state["done"]:
                state["fired"] = True
                _raise_in_thread(thread_id, TaskTimeout)

    timer = None if timeout is None else _start_timer(timeout, expire)
    caller = os.getpid()
    cwd = _getcwd() if keep_cwd else None
    try:
        try:
            returned = fn(ctx)
        finally:
            if os.getpid() != caller:
                _forked_return(ctx)
            with guard:
                state["done"] = True
                if state["fired"]:
                    _raise_in_thread(thread_id, None)  # not delivered yet: withdraw it
            if timer is not None:
                timer.cancel()
    except TaskTimeout:
        return Result(False, None, f"timed out after {timeout:g}s", tail.text())
    except BaseException as exc:  # noqa: BLE001 - whatever a job raises is its run's outcome
        return Result(False, None, _failure(exc), tail.text())
    finally:
        ctx.logger.removeHandler(handler)
        if cwd is not None and (moved := _getcwd()) != cwd:
            _restore_cwd(cwd, moved, tail)
    if returned is not None:
        tail.write(f"returned: {returned!r}\n".encode("utf-8", errors="replace"))
    return Result(True, None, None, tail.text())


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed meanwhile
        return None


def _restore_cwd(cwd: str, moved: str | None, tail: Tail) -> None:
    """Change back to `cwd`, and say so in the run's output and the worker's log."""
    try:
        os.chdir(cwd)
        line = f"the callable changed the working directory to {moved}: changed back to {cwd}"
    except OSError as exc:
        line = f"the callable changed the working directory; cannot change back to {cwd}: {exc}"
    logging.getLogger("edgeworker.runners").warning("%s", line)
    tail.write(f"edgeworker: {line}\n".encode("utf-8", errors="replace"))


def _forked_return(ctx: TaskContext) -> None:
    """A child the callable forked came back from it (no `os._exit` in the child): it must not go
    on as a second worker, finishing the parent's run and claiming others. It ends here, with
    status 0 when it came back with a value, 1 with an exception."""
    with contextlib.suppress(OSError):
        os.write(2, f"edgeworker: a process that job {ctx.job}'s callable forked returned from "
                    f"it (pid {os.getpid()}); ended it: a forked child must end with os._exit\n"
                 .encode())
    os._exit(1 if sys.exc_info()[0] is not None else 0)


def run_isolated(fn: Callable, ctx: TaskContext, timeout: float | None,
                 abort: Flag | None = None, grace: float = KILL_GRACE,
                 table: ProcessTable | None = None, run: tuple[int, int] = (0, 0),
                 cancelled: Callable[[], str | None] | None = None) -> Result:
    """Run a callable in a forked child: stopped like a command at its timeout or a shutdown.

    The worker has threads: the child may find any lock held. It touches none it can avoid: it
    never uses the database connection, runs the callable, writes its result to a pipe and
    leaves with `os._exit`, running no cleanup of the worker's objects. The callable's
    `ctx.logger` is safe there: CPython's logging re-creates its locks in a forked child."""
    c = libc()  # loaded before the fork (dlopen takes locks)
    parent = os.getpid()
    for stream in (sys.stdout, sys.stderr):  # or the child would write their buffers again
        with contextlib.suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return Result(False, None, f"cannot fork to run the callable: {exc}", "")
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            c.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            ctx.logger.handlers = []  # the worker's log belongs to the worker
            ctx.logger.propagate = False
            result = run_callable(fn, ctx, None, keep_cwd=False)
            for stream in (sys.stdout, sys.stderr):  # what it printed, before os._exit
                with contextlib.suppress(Exception):
                    stream.flush()
            body = json.dumps({"succeeded": result.succeeded, "error": result.error,
                               "output": result.output}).encode("utf-8", "backslashreplace")
            view = memoryview(body)
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    tree = (table or _anonymous).adopt(_Status(pid, read_fd), *run)
    try:
        # Room for a full output tail, the error text and the JSON around them.
        raw = _supervise(tree, timeout, abort, grace, cancelled, limit=8 * OUTPUT_LIMIT)
    finally:
        tree.close()
    if raw.succeeded:
        try:
            body = json.loads(raw.output)
            return Result(bool(body["succeeded"]), None, body["error"], body["output"])
        except (ValueError, KeyError, TypeError):
            return Result(False, None, "the callable's process sent no readable result", "")
    if raw.error and raw.error.startswith("timed out"):
        return Result(False, None, f"timed out after {timeout:g}s: stopped its process", "")
    return Result(False, raw.exit_code, f"the callable's process ended: {raw.error}", "")
