"""Waking idle worker threads without polling.

An idle worker sleeps until the earliest scheduled message is due, and wakes earlier when the
database changes: every commit, from this process or another (`edgeworker jobs run`), appends to
the `-wal` file, and inotify reports that write. So a worker that has nothing to do makes no
system calls and writes nothing, yet picks up new work within milliseconds.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import select
import struct

from edgeworker.libc import libc

logger = logging.getLogger("edgeworker.wakeup")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Flag:
    """A flag that select() and poll() can wait on: once set, its fd stays readable. The daemon
    has two: `stop` (idle worker threads stop waiting) and `abort` (running commands are
    ended once the shutdown timeout is over)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_CLOEXEC)
        self._set = False
        # An abort's deadline (monotonic): a run it ends gets SIGTERM and its grace, but SIGKILL
        # no later than this (a fence: before the worker's lease ends).
        self.kill_by = math.inf

    def set(self) -> None:
        if not self._set:
            self._set = True
            os.write(self._write, b"x")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep for `timeout` seconds, or until the flag is set; True if it is."""
        select.select([self._read], [], [], max(0.0, timeout))
        return self._set

    def fileno(self) -> int:
        return self._read


class DatabaseWatch:
    """Waits for a change to the database (a write to its WAL), a stop, or a timeout."""

    def __init__(self, database: str | os.PathLike, stop: Flag):
        self.wal = f"{os.fspath(database)}-wal"
        self.stop = stop
        self.fd = -1
        self.watching = False
        c = libc()
        fd = c.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            logger.warning("inotify unavailable (%s): idle workers poll every second instead",
                           os.strerror(ctypes.get_errno()))
            return
        self.fd = fd
        self._watch()

    def _watch(self) -> None:
        if self.fd < 0:
            return
        mask = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
        wd = libc().inotify_add_watch(self.fd, os.fsencode(self.wal), mask)
        self.watching = wd >= 0
        if not self.watching and ctypes.get_errno() != errno.ENOENT:
            logger.warning("cannot watch %s: %s", self.wal, os.strerror(ctypes.get_errno()))

    def wait(self, timeout: float) -> bool:
        """Return after `timeout` seconds, or as soon as the database changes or stop is set.
        True when woken by a change to the WAL."""
        if not self.watching:
            self._watch()  # the WAL did not exist yet, or was removed
        if not self.watching:
            timeout = min(timeout, 1.0)
        poller = select.poll()
        poller.register(self.stop.fileno(), select.POLLIN)
        if self.watching:
            poller.register(self.fd, select.POLLIN)
        if poller.poll(max(0, timeout) * 1000):
            return self._drain()
        return False

    def _drain(self) -> bool:
        if self.fd < 0:
            return False
        changed = False
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return changed
            if not data:
                return changed
            changed = True
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    self.watching = False  # the WAL went away: watch the new one next time

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
