"""Opening the one SQLite file, and the worker's single-instance lock beside it.

Every connection runs in WAL mode with `synchronous=FULL` (a power cut loses no commit; `NORMAL`
is an opt-in that may lose the last ones), a busy timeout, foreign keys on, and BEGIN IMMEDIATE
for write transactions (deferred ones fail with "database is locked" under concurrent writers).
A file that is not SQLite is refused before SQLite touches it, and a new file is created 0600.
The status page opens the file read-only (`open_readonly`) and never takes the worker's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import peewee

from edgeworker.errors import DatabaseError, WorkerRunning

SQLITE_HEADER = b"SQLite format 3\x00"
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
PAGE_SIZE = 1024


def open_database(path: Path, *, durability: str = "full", busy_timeout: float = 5.0,
                  create: bool = False) -> peewee.SqliteDatabase:
    """Open (or, with `create`, create) the database and check that SQLite can read it."""
    path = Path(path)
    if path.is_dir():
        raise DatabaseError(f"{path}: is a directory, not a database file")
    if path.exists():
        check_sqlite_file(path)
    elif create:
        create_file(path)
    else:
        raise DatabaseError(f"{path}: no database here; create it with `edgeworker migrate`")
    db = peewee.SqliteDatabase(
        str(path),
        pragmas=[
            # Small pages: a commit writes whole pages, and a run changes a few bytes in each of
            # several. Takes effect only on a new, empty file (an existing database keeps its
            # size); must come before journal_mode, which writes the file's first page.
            ("page_size", PAGE_SIZE),
            ("journal_mode", "wal"),
            ("synchronous", SYNCHRONOUS[durability]),
            ("foreign_keys", 1),
        ],
        timeout=busy_timeout,
        lock_type="IMMEDIATE",
    )
    with translate_errors(path):
        db.connect()
        # Reading the schema makes SQLite parse the file: corruption shows here, not later.
        db.execute_sql("SELECT count(*) FROM sqlite_master").fetchone()
    return db


def open_readonly(path: Path, busy_timeout: float = 1.0) -> peewee.SqliteDatabase:
    """The database for a reader that must never change or block the worker (`edgeworker
    serve`): SQLite's `mode=ro` and `query_only`. Not connected yet; a connection needs the
    `-wal` and `-shm` files beside the database, or a writable directory to create them in (a
    WAL reader records its snapshot in the shared-memory index: that is no change to the data)."""
    path = Path(path).absolute()
    return peewee.SqliteDatabase(
        f"{path.as_uri()}?mode=ro", uri=True,
        pragmas=[("query_only", 1), ("cache_size", -128)],
        timeout=busy_timeout, lock_type="DEFERRED", autoconnect=False)


def check_sqlite_file(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot read: {exc.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise DatabaseError(f"{path}: not an SQLite database (left untouched); "
                            "check --db / $EDGEWORKER_DB")


def create_file(path: Path) -> None:
    """Create an empty database file, mode 0600, and make its directory entry durable."""
    directory = path.parent
    if not directory.is_dir():
        raise DatabaseError(f"{path}: directory {directory} does not exist")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        fsync_directory(directory)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot create database: {_os_reason(exc, directory)}") \
            from None


def fsync_directory(directory: Path) -> None:
    # A new file survives a power cut only once its directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(exc: OSError, directory: Path) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied in {directory}"
    if exc.errno == errno.EROFS:
        return f"{directory} is on a read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)


def _sqlite_reason(path: Path, exc: Exception) -> str:
    message = str(exc)
    lowered = message.lower()
    directory = path.parent
    if "not a database" in lowered or "malformed" in lowered:
        return (f"database file is corrupt ({message}); left untouched: restore a backup or "
                "move it aside")
    if "database is locked" in lowered or "database table is locked" in lowered:
        return "database is locked by another process (busy timeout expired); try again"
    if "unable to open database file" in lowered or "readonly" in lowered:
        if not os.access(directory, os.W_OK):
            return (f"directory {directory} is not writable (SQLite keeps {path.name}-wal and "
                    f"{path.name}-shm beside the database)")
        if path.exists() and not os.access(path, os.W_OK):
            return "database file is not writable"
        return f"cannot open the database ({message})"
    if "disk is full" in lowered or ("i/o error" in lowered and _disk_full(directory)):
        # SQLite often reports a failed WAL append as a plain I/O error: look at the disk.
        return "disk full: no space left to write the database"
    if "disk i/o error" in lowered:
        return f"disk I/O error ({message})"
    return message


def _disk_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < 64 * 1024
    except OSError:
        return False


@contextlib.contextmanager
def translate_errors(path: Path) -> Iterator[None]:
    """Turn SQLite's exceptions into one-line DatabaseErrors naming the file."""
    try:
        yield
    except (peewee.IntegrityError, sqlite3.IntegrityError):
        raise
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        raise DatabaseError(f"{path}: {_sqlite_reason(Path(path), exc)}") from exc


class WorkerLock:
    """An exclusive flock on `<database>.lock`, held for the worker's lifetime.

    A lock file beside the database, not a lock on the database itself: closing any descriptor of
    the database file would drop the POSIX locks SQLite holds on it in this process.
    """

    def __init__(self, database: Path):
        self.path = Path(f"{database}.lock")
        self.fd: int | None = None

    def acquire(self) -> WorkerLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DatabaseError(f"{self.path}: cannot create lock file: "
                                f"{_os_reason(exc, self.path.parent)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            holder = f" (pid {pid})" if pid else ""
            raise WorkerRunning(f"another worker{holder} is running on "
                                f"{self.path.with_suffix('')}; stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> WorkerLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def worker_pid(database: Path) -> int | None:
    """The pid of the worker holding the lock on `database` (-1 if unreadable), or None when
    none runs."""
    path = Path(f"{database}.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        held = _flock_held(os.fstat(fd).st_ino)
        if held is not None:
            return (_read_pid(fd) or -1) if held else None
        # No /proc/locks: probe with a shared lock (a worker starting at that instant fails).
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _flock_held(inode: int) -> bool | None:
    """Does anyone hold a write flock on the file with this inode? Read from /proc/locks, so
    that asking takes no lock: a probe with flock() itself, however brief, would make a worker
    starting at that moment find the lock taken and exit. None where /proc/locks is missing."""
    try:
        with open("/proc/locks") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1461712 0 EOF"; "->" marks a blocked waiter
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" \
                and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
