"""A FUSE file system for tests that simulates a power cut.

It mirrors a backing directory and tracks what is durable under strict POSIX rules: file data
(write, truncate) only after fsync/fdatasync of that file, directory entries (create, mkdir,
unlink, rmdir, rename) only after fsync of the parent directory (both parents for a rename).
`cut()` rolls the backing directory back to the last durable state and turns every later request
into EIO; a new mount over the same backing directory then shows only what was durable.

The file system runs in its own process (`python powercutfs.py BACKING MOUNTPOINT`, driven over
its stdin/stdout), so tests can SIGKILL processes using the mount without touching it.
Not modelled: chmod/chown/utimes (always durable), symlinks and hard links (ENOSYS), renames of
directories that have pending changes inside them. Pages a process has mmapped stay usable in its
memory after the cut (their writeback fails), as RAM does until the processes are killed.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes.util
import errno
import functools
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

TRASH = ".powercutfs-trash"  # hidden in the backing root: unlinked entries wait here until durable
COUNTERS = (
    "writes",
    "bytes_written",
    "dropped_writes",
    "dropped_bytes",
    "dropped_truncates",
    "dropped_namespace_ops",
    "rollback_conflicts",
)
FUSE_OPTIONS: dict[str, Any] = {
    "foreground": True,
    "fsname": "powercutfs",
    "hard_remove": True,  # otherwise libfuse renames open unlinked files to .fuse_hidden*
    # No kernel caching of names and attributes: after the cut, every lookup and stat reaches us.
    "attr_timeout": 0,
    "entry_timeout": 0,
    "negative_timeout": 0,
}


def fuse_unavailable_reason() -> str | None:
    """Why a PowerCutFS cannot be mounted here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "powercutfs needs Linux"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "powercutfs mounts need root"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse3 is missing (apt-get install libfuse3-3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy is missing (pip install mfusepy)"
    return None


# --- the file system (runs in the child process) --------------------------------------------


@dataclass
class _Undo:
    """Non-durable data changes of one inode, oldest first.

    A step is (offset, bytes it overwrote there, size before, bytes written or -1 for truncate)."""

    fd: int
    path: str
    steps: list[tuple[int, bytes, int, int]] = field(default_factory=list)


@dataclass
class _NsOp:
    """A non-durable namespace change; durable once every directory in `pending` is fsynced."""

    kind: str  # create | mkdir | unlink | rmdir | rename
    path: str
    pending: set[int]
    new_path: str = ""
    trash: str = ""  # where an unlinked or replaced entry waits


def _fs_op(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: PowerCutOps, *args: Any) -> Any:
        with self.mutex:
            if self.is_cut:
                raise OSError(errno.EIO, "power is off")
            return fn(self, *args)

    return wrapper


class PowerCutOps:
    """mfusepy operations: passthrough to `root`, with undo logs for everything not yet durable."""

    use_ns = True

    def __init__(self, root: str, on_ready: Callable[[], None]) -> None:
        self.root = os.path.realpath(root)
        self.trash_dir = os.path.join(self.root, TRASH)
        shutil.rmtree(self.trash_dir, ignore_errors=True)  # left by a killed fs: finish its deletes
        self.on_ready = on_ready
        # Not named `lock`: mfusepy registers every attribute named like a FUSE operation, and a
        # `lock` operation would take POSIX locks away from the kernel.
        self.mutex = threading.Lock()
        self.is_cut = False
        self.handles: dict[int, tuple[int, str]] = {}  # fh (backing fd) -> (inode, path at open)
        self.undo: dict[int, _Undo] = {}  # inode -> its non-durable data changes
        self.journal: list[_NsOp] = []
        self.trash_seq = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.fsyncs: collections.Counter[str] = collections.Counter()
        self.fdatasyncs: collections.Counter[str] = collections.Counter()
        self.fsyncdirs: collections.Counter[str] = collections.Counter()
        self.dropped_paths: set[str] = set()

    # helpers
    def _full(self, path: str) -> str:
        if path.split("/")[1:2] == [TRASH]:
            raise OSError(errno.ENOENT, path)
        return self.root + path

    def _parent_ino(self, path: str) -> int:
        return os.lstat(self._full(os.path.dirname(path))).st_ino

    def _to_trash(self, full: str) -> str:
        os.makedirs(self.trash_dir, exist_ok=True)
        self.trash_seq += 1
        trash = os.path.join(self.trash_dir, str(self.trash_seq))
        os.rename(full, trash)
        return trash

    def _record(self, fd: int, path: str, offset: int, length: int, written: int) -> None:
        """Save the `length` bytes at `offset` and the size, before a write or truncate."""
        st = os.fstat(fd)
        undo = self.undo.get(st.st_ino)
        if undo is None:
            undo = self.undo[st.st_ino] = _Undo(os.dup(fd), path)
        size = st.st_size
        old = os.pread(fd, max(0, min(length, size - offset)), offset) if offset < size else b""
        undo.steps.append((offset, old, size, written))

    def _open_handle(self, fd: int, path: str) -> int:
        self.handles[fd] = (os.fstat(fd).st_ino, path)
        return fd

    # lifecycle
    def init(self, path: str) -> None:
        self.on_ready()

    def destroy(self, path: str) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """A clean unmount (no cut): everything is flushed, so pending deletes become final."""
        if self.mutex.acquire(timeout=5):
            if not self.is_cut:
                shutil.rmtree(self.trash_dir, ignore_errors=True)
            self.mutex.release()

    # metadata
    @_fs_op
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")}
        attrs |= {k: getattr(st, k + "_ns") for k in ("st_atime", "st_mtime", "st_ctime")}
        return attrs

    @_fs_op
    def readdir(self, path: str, fh: int) -> list[str]:
        names = os.listdir(self._full(path))
        return [".", ".."] + [n for n in names if not (path == "/" and n == TRASH)]

    @_fs_op
    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._full(path))
        keys = "f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_namemax".split()
        return {k: getattr(st, k) for k in keys}

    @_fs_op
    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._full(path), mode)

    @_fs_op
    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._full(path), uid, gid, follow_symlinks=False)

    @_fs_op
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        os.utime(self._full(path), ns=times, follow_symlinks=False)

    # namespace: every change is journalled until its directory is fsynced
    @_fs_op
    def create(self, path: str, mode: int, flags: int) -> int:
        full = self._full(path)
        existed = os.path.lexists(full)
        if existed and flags & os.O_EXCL:
            raise OSError(errno.EEXIST, path)
        fd = os.open(full, os.O_RDWR | os.O_CREAT, mode)
        if not existed:
            self.journal.append(_NsOp("create", path, {self._parent_ino(path)}))
        elif flags & os.O_TRUNC:
            self._record(fd, path, 0, os.fstat(fd).st_size, -1)
            os.ftruncate(fd, 0)
        return self._open_handle(fd, path)

    @_fs_op
    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._full(path), mode)
        self.journal.append(_NsOp("mkdir", path, {self._parent_ino(path)}))

    @_fs_op
    def unlink(self, path: str) -> None:
        trash = self._to_trash(self._full(path))
        self.journal.append(_NsOp("unlink", path, {self._parent_ino(path)}, trash=trash))

    @_fs_op
    def rmdir(self, path: str) -> None:
        if os.listdir(self._full(path)):
            raise OSError(errno.ENOTEMPTY, path)
        trash = self._to_trash(self._full(path))
        self.journal.append(_NsOp("rmdir", path, {self._parent_ino(path)}, trash=trash))

    @_fs_op
    def rename(self, old: str, new: str) -> None:
        old_full, new_full = self._full(old), self._full(new)
        os.lstat(old_full)  # ENOENT before we touch the target
        if os.path.isdir(new_full) and os.listdir(new_full):
            raise OSError(errno.ENOTEMPTY, new)
        trash = self._to_trash(new_full) if os.path.lexists(new_full) else ""
        try:
            os.rename(old_full, new_full)
        except OSError:
            if trash:
                os.rename(trash, new_full)
            raise
        pending = {self._parent_ino(old), self._parent_ino(new)}
        self.journal.append(_NsOp("rename", old, pending, new_path=new, trash=trash))

    @_fs_op
    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        self.fsyncdirs[path] += 1
        ino = os.lstat(self._full(path)).st_ino
        still_pending = []
        for op in self.journal:
            op.pending.discard(ino)
            if op.pending:
                still_pending.append(op)
            elif op.trash and os.path.isdir(op.trash):  # the delete is durable now
                shutil.rmtree(op.trash)
            elif op.trash:
                os.unlink(op.trash)
        self.journal = still_pending

    # data: every change is undo-logged until the file is fsynced
    @_fs_op
    def open(self, path: str, flags: int) -> int:
        fd = os.open(self._full(path), os.O_RDWR)
        if flags & os.O_TRUNC:
            self._record(fd, path, 0, os.fstat(fd).st_size, -1)
            os.ftruncate(fd, 0)
        return self._open_handle(fd, path)

    @_fs_op
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    @_fs_op
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._record(fh, self.handles[fh][1], offset, len(data), len(data))
        self.counts["writes"] += 1
        self.counts["bytes_written"] += len(data)
        return os.pwrite(fh, data, offset)

    @_fs_op
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        fd = os.open(self._full(path), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self._record(fd, path, length, max(0, size - length), -1)
            os.ftruncate(fd, length)
        finally:
            os.close(fd)

    @_fs_op
    def flush(self, path: str, fh: int) -> None:
        pass  # close() makes nothing durable

    @_fs_op
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        ino, opened_as = self.handles[fh]
        (self.fdatasyncs if datasync else self.fsyncs)[opened_as] += 1
        undo = self.undo.pop(ino, None)
        if undo is not None:
            os.close(undo.fd)

    def release(self, path: str, fh: int) -> None:
        with self.mutex:  # also after the cut: the kernel ignores errors here, the fd must go
            self.handles.pop(fh, None)
            os.close(fh)

    # the power cut
    def cut(self) -> dict[str, Any]:
        with self.mutex:
            if self.is_cut:
                return self.stats()
            self.is_cut = True
            for undo in self.undo.values():
                for offset, old, size, written in reversed(undo.steps):
                    os.pwrite(undo.fd, old, offset)
                    os.ftruncate(undo.fd, size)
                    if written < 0:
                        self.counts["dropped_truncates"] += 1
                    else:
                        self.counts["dropped_writes"] += 1
                        self.counts["dropped_bytes"] += written
                os.close(undo.fd)
                self.dropped_paths.add(undo.path)
            self.undo.clear()
            for op in reversed(self.journal):
                self._undo_namespace(op)
            self.counts["dropped_namespace_ops"] = len(self.journal)
            self.journal.clear()
            shutil.rmtree(self.trash_dir, ignore_errors=True)
            return self.stats()

    def _undo_namespace(self, op: _NsOp) -> None:
        full = self.root + op.path
        self.dropped_paths.add(op.path)
        try:
            if op.kind == "create":
                os.unlink(full)
            elif op.kind == "mkdir":
                shutil.rmtree(full)
            elif op.kind in ("unlink", "rmdir"):
                os.rename(op.trash, full)
            elif op.kind == "rename":
                os.rename(self.root + op.new_path, full)
                if op.trash:
                    os.rename(op.trash, self.root + op.new_path)
        except FileNotFoundError:
            # A later durable change already moved this entry (e.g. the directory holding it).
            self.counts["rollback_conflicts"] += 1

    def stats(self) -> dict[str, Any]:
        return {
            "cut": self.is_cut,
            **{k: self.counts[k] for k in COUNTERS},
            "pending_writes": sum(len(u.steps) for u in self.undo.values()),
            "pending_namespace_ops": len(self.journal),
            "fsyncs": dict(self.fsyncs),
            "fdatasyncs": dict(self.fdatasyncs),
            "fsyncdirs": dict(self.fsyncdirs),
            "dropped_paths": sorted(self.dropped_paths),
        }


def _serve(backing: str, mountpoint: str) -> None:
    """Child process: mount, answer one JSON line per command line on stdin until EOF."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy prefers libfuse2 if present
    import mfusepy

    os.umask(0)  # the kernel already applied the caller's umask to create/mkdir modes
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # keep stray prints of libfuse or mfusepy off the control channel

    def send(message: dict[str, Any]) -> None:
        reply.write(json.dumps(message) + "\n")

    ops = PowerCutOps(backing, on_ready=lambda: send({"ready": True}))

    def control() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "exit":
                break
            send(ops.cut() if command == "cut" else ops.stats())
        else:  # EOF without "exit": the test process died, so detach the mount ourselves
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], timeout=10, check=False)
        # Exit now, not when the FUSE loop sees the unmount: that can take long or never come
        # if files are still open on the mount or if a mount namespace created meanwhile
        # (`unshare --mount`) holds a copy of it. Exiting drops the FUSE connection, so whoever
        # still uses the mount gets ENOTCONN instead of hanging.
        ops.shutdown()
        os._exit(0)

    threading.Thread(target=control, daemon=True).start()
    mfusepy.FUSE(ops, mountpoint, **FUSE_OPTIONS)


# --- the test side --------------------------------------------------------------------------


def is_mounted(path: str) -> bool:
    """From the mount table, since stat() on a cut or dead FUSE mount fails."""
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        for line in table:
            point = line.split()[4]
            point = point.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if point == path:
                return True
    return False


class PowerCutFS:
    """Mount `backing` at `mountpoint` through the power-cut simulator, in a child process."""

    def __init__(
        self,
        backing: str | os.PathLike[str],
        mountpoint: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
    ) -> None:
        self.backing = os.path.realpath(backing)
        self.mountpoint = os.path.realpath(mountpoint)
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()
        self._buffer = b""

    def __enter__(self) -> Self:
        return self.mount()

    def __exit__(self, *exc_info: object) -> None:
        self.unmount()

    def mount(self) -> Self:
        """Start the fs process; return once the mount answers."""
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        if is_mounted(self.mountpoint):
            raise RuntimeError(f"{self.mountpoint} is already a mount point")
        self._buffer = b""
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), self.backing, self.mountpoint],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=os.environ | {"FUSE_LIBRARY_NAME": "fuse3"},
        )
        try:
            if not self._receive().get("ready"):
                raise RuntimeError("fs process did not report ready")
        except BaseException:
            self.unmount()
            raise
        return self

    def cut(self) -> dict[str, Any]:
        """Power off: roll the backing dir back to its durable state, then EIO on every request.

        Returns the stats, with what was dropped."""
        return self._ask("cut")

    def stats(self) -> dict[str, Any]:
        """Counters so far: writes, fsyncs per file, what the cut dropped."""
        return self._ask("stats")

    def log(self) -> str:
        """What the fs process wrote to stderr."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def unmount(self) -> None:
        """Unmount (lazily if files are still open on it) and stop the fs process; never hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if is_mounted(self.mountpoint) and self._run(["fusermount3", "-u"], proc) != 0:
                if is_mounted(self.mountpoint):  # busy: files are still open on it
                    self._run(["fusermount3", "-u", "-z"], proc)
        finally:
            assert proc.stdin is not None and proc.stdout is not None
            with contextlib.suppress(OSError):  # the fs process may be gone already
                proc.stdin.write(b"exit\n")
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            if is_mounted(self.mountpoint):
                subprocess.run(["umount", "-l", self.mountpoint], check=False, timeout=30)

    def _run(self, command: list[str], fs_proc: subprocess.Popen[bytes]) -> int:
        helper = subprocess.Popen(command + [self.mountpoint], stderr=subprocess.DEVNULL)
        try:
            return helper.wait(self.timeout)
        except subprocess.TimeoutExpired:
            fs_proc.kill()  # aborts the FUSE connection, which releases whatever is stuck on it
            helper.kill()
            return helper.wait()

    def _ask(self, command: str) -> dict[str, Any]:
        if self._proc is None:
            raise RuntimeError("not mounted")
        try:
            self._proc.stdin.write(command.encode() + b"\n")  # type: ignore[union-attr]
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise RuntimeError(f"fs process is gone:\n{self.log()}") from None
        return self._receive()

    def _receive(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fs process did not answer in {self.timeout}s:\n{self.log()}")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"fs process exited:\n{self.log()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {Path(sys.argv[0]).name} BACKING_DIR MOUNTPOINT")
    _serve(sys.argv[1], sys.argv[2])
