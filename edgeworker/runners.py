"""Running one task: a command in its own process group, or a Python callable.

Commands run without a shell unless asked, in a new session (their own process group), and die
with the worker (PR_SET_PDEATHSIG). A timeout sends SIGTERM to the whole group, then SIGKILL
after a grace period. The last 64 KiB of stdout+stderr are kept; bytes that are not UTF-8 are
replaced, never a crash. A callable `package.module:function` is called in the worker thread with
a `TaskContext`; its timeout is cooperative (`ctx.deadline`, `ctx.time_left()`) and enforced by
raising `TaskTimeout` in its thread when Python code next runs there.
"""

from __future__ import annotations

import ctypes
import importlib
import io
import logging
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from edgeworker.config import Config
from edgeworker.entry import openssl_for_jobs
from edgeworker.errors import ConfigError

OUTPUT_LIMIT = 64 * 1024
KILL_GRACE = 5.0
PR_SET_PDEATHSIG = 1
# Variables for the worker itself: a child must not talk to systemd in the worker's name.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES")


_groups: set[int] = set()  # process groups of running commands, for a forced stop
_groups_lock = threading.Lock()


def kill_all_commands() -> int:
    """SIGKILL the process group of every running command (a forced stop of the worker)."""
    with _groups_lock:
        groups = list(_groups)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(groups)


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


class Abort:
    """Set by the daemon when the shutdown timeout is over; wakes runs waiting on a command."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.event = threading.Event()

    def set(self) -> None:
        if not self.event.is_set():
            self.event.set()
            os.write(self._write, b"x")

    def is_set(self) -> bool:
        return self.event.is_set()

    def fileno(self) -> int:
        return self._read


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


_libc = None


def _die_with_parent(parent: int) -> Callable[[], None]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    prctl = _libc.prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(1)

    return preexec


def command_env(base: dict[str, str], job_env: dict[str, str],
                task_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in PRIVATE_ENV}
    env.update(job_env)
    env.update(task_env)
    return env


def run_command(target: str, shell: bool, env: dict[str, str], cwd: str | None,
                timeout: float | None, abort: Abort | None = None,
                grace: float = KILL_GRACE) -> Result:
    argv = ["/bin/sh", "-c", target] if shell else shlex.split(target)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True, close_fds=True,
            preexec_fn=_die_with_parent(os.getpid()))
    except FileNotFoundError as exc:
        missing = exc.filename if exc.filename and exc.filename != cwd else argv[0]
        if cwd and not os.path.isdir(cwd):
            return Result(False, None, f"working directory {cwd} does not exist", "")
        return Result(False, 127, f"command not found: {missing}", "")
    except PermissionError as exc:
        return Result(False, 126, f"permission denied: {exc.filename or argv[0]}", "")
    except OSError as exc:
        return Result(False, None, f"cannot start {argv[0]}: {exc}", "")

    with _groups_lock:
        _groups.add(proc.pid)
    try:
        return _supervise(proc, timeout, abort, grace)
    finally:
        with _groups_lock:
            _groups.discard(proc.pid)


def _supervise(proc: subprocess.Popen, timeout: float | None, abort: Abort | None,
               grace: float) -> Result:
    tail = Tail()
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = interrupted = False
    kill_at: float | None = None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if abort is not None:
        poller.register(abort.fileno(), select.POLLIN)
    eof = False
    try:
        while True:
            now = time.monotonic()
            if not timed_out and deadline is not None and now >= deadline:
                timed_out = True
                kill_at = _signal_group(proc, signal.SIGTERM, now + grace)
            if not interrupted and abort is not None and abort.is_set():
                interrupted = True
                kill_at = _signal_group(proc, signal.SIGTERM, now + grace)
                poller.unregister(abort.fileno())
            if kill_at is not None and now >= kill_at:
                _signal_group(proc, signal.SIGKILL, None)
                kill_at = None
            exited = proc.poll() is not None
            if eof and exited:
                break
            waits = [1.0]
            if deadline is not None and not timed_out:
                waits.append(deadline - now)
            if kill_at is not None:
                waits.append(kill_at - now)
            events = poller.poll(max(0.0, min(waits)) * 1000) if not eof else []
            if eof:
                # Output closed but the process lives on: wait for it (or its deadline).
                try:
                    proc.wait(max(0.01, min(waits)))
                except subprocess.TimeoutExpired:
                    pass
                continue
            for ready_fd, _ in events:
                if ready_fd == fd:
                    eof = _drain(fd, tail)
            if exited and not events:
                # The command exited but someone it started still holds the pipe open.
                eof = _drain(fd, tail) or True
    finally:
        proc.stdout.close()
    if timed_out or interrupted:
        # Whatever it started in its group goes with it.
        _signal_group(proc, signal.SIGKILL, None)
    if interrupted:
        raise Interrupted()
    code = proc.returncode
    if timed_out:
        return Result(False, code, f"timed out after {timeout:g}s: stopped its process group",
                      tail.text())
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


def _signal_group(proc: subprocess.Popen, sig: signal.Signals, then: float | None) -> float | None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    return then


# -- callables ----------------------------------------------------------------------------------

def add_python_path(paths: tuple[Path, ...]) -> None:
    for path in reversed(paths):
        entry = str(path)
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


def verify_callable(target: str, python_path: tuple[Path, ...]) -> Callable:
    add_python_path(python_path)
    return load_callable(target)


def verify_callables(config: Config) -> None:
    """Import every callable job now, so a typo fails at start, not at 3 a.m."""
    add_python_path(config.worker.python_path)
    for spec in config.jobs:
        if spec.kind == "callable":
            try:
                load_callable(spec.target)
            except ConfigError as exc:
                where = config.path or "config"
                raise ConfigError(f'{where}: job "{spec.name}": {exc}') from None


class _TailHandler(logging.Handler):
    def __init__(self, tail: Tail):
        super().__init__()
        self.tail = tail
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.tail.write((self.format(record) + "\n").encode("utf-8", errors="replace"))


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc else None)


def run_callable(fn: Callable, ctx: TaskContext, timeout: float | None) -> Result:
    tail = Tail()
    handler = _TailHandler(tail)
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

    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        try:
            returned = fn(ctx)
        finally:
            with guard:
                state["done"] = True
                if state["fired"]:
                    _raise_in_thread(thread_id, None)  # not delivered yet: withdraw it
            if timer is not None:
                timer.cancel()
    except TaskTimeout:
        return Result(False, None, f"timed out after {timeout:g}s", tail.text())
    except Exception as exc:
        trace = io.StringIO()
        traceback.print_exception(exc, file=trace)
        return Result(False, None, trace.getvalue().rstrip(), tail.text())
    finally:
        ctx.logger.removeHandler(handler)
    if returned is not None:
        tail.write(f"returned: {returned!r}\n".encode("utf-8", errors="replace"))
    return Result(True, None, None, tail.text())
