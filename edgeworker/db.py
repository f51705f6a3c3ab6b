"""Opening the one SQLite file, and the worker's single-instance lock beside it.

Every connection runs in WAL mode with `synchronous=FULL` (a power cut loses no commit; `NORMAL`
is an opt-in that may lose the last ones), a busy timeout, foreign keys on, and BEGIN IMMEDIATE
for write transactions (deferred ones fail with "database is locked" under concurrent writers).
A file that is not SQLite is refused before SQLite touches it, and a new file is created 0600.
Asking whether a worker runs (`worker_pid`) never takes the worker's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
import sys
import weakref
from collections.abc import Iterator

import peewee

from edgeworker.errors import DatabaseError, WorkerRunning

TYPE_CHECKING = False
if TYPE_CHECKING:
    from edgeworker import postgres

SQLITE_HEADER = b"SQLite format 3\x00"
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
# New databases: SQLite's smallest page. Each of a run's two fsync'ed commits dirties a 4 KiB
# page of the WAL again, and the rest is its frames: 512-byte pages write 11.0 KiB a scheduled
# run against 12.8 with 1 KiB (fewer at every output size measured, 0 to 2 KiB), for a history
# about a third larger on disk (README, "Where it stands against issue 11").
PAGE_SIZE = 512
SCHEMES = ("postgresql://", "postgres://")


def is_url(location: object) -> bool:
    """A PostgreSQL URL rather than a file: edgeworker.postgres, imported only for one."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def open_database(path: str | os.PathLike, *, durability: str = "full", busy_timeout: float = 5.0,
                  create: bool = False, readonly: bool = False,
                  foreign: bool = False) -> peewee.Database:
    """Open (or, with `create`, create) the database and check that SQLite can read it.

    `readonly` opens it so that nothing is written (see ReadOnlyDatabase). A database that holds
    tables but not edgeworker's is refused before anything touches it, unless `foreign`. A
    `postgresql://` URL opens that PostgreSQL database instead (edgeworker.postgres)."""
    if is_url(path):
        from edgeworker import postgres

        return postgres.open_database(path, busy_timeout=busy_timeout, readonly=readonly,
                                      foreign=foreign)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DatabaseError(f"{path}: is a directory, not a database file")
    if os.path.exists(path):
        check_sqlite_file(path)
        if not foreign:
            check_ours(path, busy_timeout)
    elif create and not readonly:
        create_file(path)
    else:
        raise DatabaseError(f"{path}: no database here; create it with `edgeworker migrate`")
    if readonly:
        db = ReadOnlyDatabase(path, timeout=busy_timeout)
        with translate_errors(path):
            db.connect()
            db.execute_sql("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    db = peewee.SqliteDatabase(
        path,
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


def check_sqlite_file(path: str | os.PathLike) -> None:
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot read: {exc.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise DatabaseError(f"{path}: not an SQLite database (left untouched); "
                            "check --db / $EDGEWORKER_DB")


def check_ours(path: str | os.PathLike, busy_timeout: float = 5.0) -> None:
    """Refuse a database that holds tables but no edgeworker schema (another program's file)."""
    if os.stat(path).st_size == 0:
        return
    db = ReadOnlyDatabase(path, timeout=busy_timeout)
    try:
        with translate_errors(path):
            tables = [name for (name,) in db.execute_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name")]
    finally:
        db.close()
    if tables and "schema_migrations" not in tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise DatabaseError(
            f"{path}: not an edgeworker database (it holds tables {shown} and no "
            "schema_migrations); left untouched: check --db / $EDGEWORKER_DB, or add edgeworker's "
            "tables to it with `edgeworker migrate --force`")


# SQLite's lock bytes in the main file (os_unix.c): readers hold a read lock on this range.
_SHARED_FIRST = 0x40000000 + 2
_SHARED_SIZE = 510


class ReadOnlyDatabase(peewee.SqliteDatabase):
    """A connection that writes nothing: not the database, and no -wal or -shm beside it.

    SQLite reads a WAL database through its shared-memory index, `<db>-shm`. When a writer is
    connected (or left a -wal), the -wal and -shm are there: this reads through them, read-only
    (`mode=ro`). When neither is there, every committed page is in the main file, but `mode=ro`
    would create both files (and leave them: a reader cannot remove them), or fail in a directory
    it cannot write. Then the file is opened `immutable`, holding a read lock on SQLite's shared
    byte range: a writer that comes and goes meanwhile cannot take the exclusive lock that its
    closing checkpoint needs, so the main file does not change under the reader.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0,
                 cache_kib: int | None = None):
        self.path = os.fspath(path)
        self._guard: int | None = None
        cache = [] if cache_kib is None else [("cache_size", -cache_kib)]
        super().__init__(self.path, timeout=timeout, uri=True,
                         pragmas=[("query_only", 1), *cache])

    def _connect(self):
        # SQLite reads %XX escapes in a URI's path, which ends at `?` or `#`.
        path = os.path.join(os.getcwd(), self.path)
        uri = "file:" + path.replace("%", "%25").replace("?", "%3F").replace("#", "%23")
        if not self._companions():
            guard = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.lockf(guard, fcntl.LOCK_SH | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST)
            except OSError:
                os.close(guard)  # a writer holds it: read through the -shm it made
            else:
                if self._companions():
                    os.close(guard)
                else:
                    self._guard = guard
        uri += "?immutable=1" if self._guard is not None else "?mode=ro"
        try:
            conn = sqlite3.connect(uri, timeout=self._timeout, isolation_level=None,
                                   **self.connect_params)
            try:
                self._add_conn_hooks(conn)
            except Exception:
                conn.close()
                raise
        except Exception:
            self._release()
            raise
        return conn

    def _companions(self) -> bool:
        # (-journal: a rollback-mode writer is at work, or crashed and left a journal that only
        # a writer may roll back: `immutable` would read half a transaction)
        return any(os.path.exists(f"{self.path}{suffix}")
                   for suffix in ("-wal", "-shm", "-journal"))

    def _close(self, conn) -> None:
        try:
            super()._close(conn)
        finally:
            self._release()

    def _release(self) -> None:
        if self._guard is not None:
            os.close(self._guard)
            self._guard = None


def remove_new_database(path: str | os.PathLike) -> None:
    """Remove a database this command created and could not set up (a refusal leaves nothing)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):  # not there (or nothing could be made)
            os.unlink(f"{path}{suffix}")


def create_file(path: str | os.PathLike) -> None:
    """Create an empty database file, mode 0600, and make its directory entry durable."""
    directory = _parent(os.fspath(path))
    if not os.path.isdir(directory):
        raise DatabaseError(f"{path}: directory {directory} does not exist")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        fsync_directory(directory)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot create database: {_os_reason(exc, directory)}") \
            from None


def fsync_directory(directory: str | os.PathLike) -> None:
    # A new file survives a power cut only once its directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(exc: OSError, directory: str) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied in {directory}"
    if exc.errno == errno.EROFS:
        return f"{directory} is on a read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)


def _parent(path: str) -> str:
    """The directory a file is in, as pathlib's `parent` says it (`.` for a bare name)."""
    return os.path.dirname(path) or "."


def _sqlite_reason(path: str, exc: Exception) -> str:
    message = str(exc)
    lowered = message.lower()
    directory = _parent(path)
    name = os.path.basename(path)
    if "not a database" in lowered or "malformed" in lowered:
        return (f"database file is corrupt ({message}); left untouched: restore a backup or "
                "move it aside")
    if "database is locked" in lowered or "database table is locked" in lowered:
        return "database is locked by another process (busy timeout expired); try again"
    if "unable to open database file" in lowered or "readonly" in lowered:
        if not os.access(directory, os.W_OK):
            return (f"directory {directory} is not writable (SQLite keeps {name}-wal and "
                    f"{name}-shm beside the database)")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return "database file is not writable"
        return f"cannot open the database ({message})"
    if "disk is full" in lowered or ("i/o error" in lowered and _disk_full(directory)):
        # SQLite often reports a failed WAL append as a plain I/O error: look at the disk.
        return "disk full: no space left to write the database"
    if "disk i/o error" in lowered:
        return f"disk I/O error ({message})"
    return message


# SQLite's primary result codes for what heals by itself: another writer's lock, a full disk,
# a failing or briefly missing file (sqlite3 sets `sqlite_errorcode` on its exceptions).
HEALING_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL,
                 sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """An error and what it hides: a failed COMMIT leaves SQLite without a transaction, so the
    error the caller sees is the ROLLBACK's ("no transaction is active"), not the disk's."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        exc = todo.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        orig = getattr(exc, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, exc.__cause__,
                 exc.__context__]


def heals(exc: BaseException) -> bool:
    """Whether retrying the write later may succeed (a lock, a full disk, an I/O error)."""
    if sys.modules.get("psycopg2") is not None:  # a PostgreSQL database was opened
        from edgeworker import postgres

        if postgres.heals(exc):
            return True
    return isinstance(exc, OSError) or any(
        (getattr(e, "sqlite_errorcode", -1) & 0xFF) in HEALING_CODES for e in _chain(exc))


def describe(path: str | os.PathLike, exc: BaseException) -> str:
    """One line for the log: the first cause SQLite reported, in words an operator can act on
    (or PostgreSQL's reason)."""
    if is_url(path):
        from edgeworker import postgres

        return postgres.reason(exc)
    errors = [e for e in _chain(exc) if isinstance(e, (peewee.DatabaseError, sqlite3.Error))]
    healing = [e for e in errors if (getattr(e, "sqlite_errorcode", -1) & 0xFF) in HEALING_CODES]
    cause = (healing or errors or [exc])[-1]
    if isinstance(cause, (peewee.DatabaseError, sqlite3.Error)):
        return _sqlite_reason(os.fspath(path), cause)
    return f"{type(cause).__name__}: {cause}"


def _disk_full(directory: str) -> bool:
    try:
        return shutil.disk_usage(directory).free < 64 * 1024
    except OSError:
        return False


@contextlib.contextmanager
def translate_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn SQLite's exceptions into one-line DatabaseErrors naming the file (or PostgreSQL's,
    naming the URL)."""
    if is_url(path):
        from edgeworker import postgres

        with postgres.translate_errors(path):
            yield
        return
    try:
        yield
    except (peewee.IntegrityError, sqlite3.IntegrityError):
        raise
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        raise DatabaseError(f"{path}: {_sqlite_reason(os.fspath(path), exc)}") from exc


class WorkerLock:
    """An exclusive flock on `<database>.lock`, held for the worker's lifetime.

    A lock file beside the database, not a lock on the database itself: closing any descriptor of
    the database file would drop the POSIX locks SQLite holds on it in this process. A flock
    belongs to the open file, which a fork shares: a forked child (a callable's `multiprocessing`
    pool, an isolated callable) closes its copy at once, or it would hold the lock after the
    worker died, and no worker could start while it lived.
    """

    def __init__(self, database: str | os.PathLike):
        self.database = os.fspath(database)
        self.path = f"{self.database}.lock"
        self.fd: int | None = None
        self.created = False  # this lock made the file: a refused start removes it again

    def acquire(self) -> WorkerLock:
        while True:
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                holder = f" (pid {pid})" if pid else ""
                raise WorkerRunning(f"another worker{holder} is running on "
                                    f"{self.database}; stop it first") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a refused start removed the file we locked: lock the new one
        with contextlib.suppress(OSError):  # only informative (a full disk must not stop here)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd, self.created = fd, created
        _locks.add(self)
        return self

    def _open(self) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_CLOEXEC
        try:
            while True:
                try:
                    return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
                except FileExistsError:
                    pass
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile: create it
                    return os.open(self.path, flags), False
        except OSError as exc:
            raise DatabaseError(f"{self.path}: cannot create lock file: "
                                f"{_os_reason(exc, _parent(self.path))}") from None

    def release(self, remove: bool = False) -> None:
        """Unlock; with `remove`, also delete the file if this lock created it."""
        if self.fd is not None:
            if remove and self.created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # while still locked: see the inode check above
            os.close(self.fd)
            self.fd = None

    def keep(self) -> bool:
        """Still held (a file lock lasts as long as its descriptor)."""
        return self.fd is not None

    def __enter__(self) -> WorkerLock:
        return self.acquire()

    def __exit__(self, exc_type, *exc) -> None:
        self.release(remove=exc_type is not None)


# The locks this process took, for `_forked`.
_locks: weakref.WeakSet[WorkerLock] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child: close the copies of the locks' descriptors (see WorkerLock)."""
    for lock in list(_locks):
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None


os.register_at_fork(after_in_child=_forked)


def worker_lock(database: str | os.PathLike, name: str) -> WorkerLock | postgres.WorkerLock:
    """The lock a worker holds: a file lock beside a SQLite file (one worker a file, whatever its
    name), an advisory lock of the worker's name on a PostgreSQL database (one worker a name,
    edgeworker.postgres.WorkerLock)."""
    if is_url(database):
        from edgeworker import postgres

        return postgres.WorkerLock(database, name)
    return WorkerLock(database)


def running_workers(database: str | os.PathLike) -> dict[str, int] | None:
    """PostgreSQL: the running workers' names -> pids (edgeworker.postgres.running_workers);
    None for a SQLite file (one worker: `worker_pid`)."""
    if not is_url(database):
        return None
    from edgeworker import postgres

    return postgres.running_workers(database)


def worker_pid(database: str | os.PathLike) -> int | None:
    """The pid of the worker holding the lock on `database` (-1 if unreadable; on PostgreSQL,
    one of those running), or None when none runs."""
    if is_url(database):
        from edgeworker import postgres

        return postgres.worker_pid(database)
    try:
        fd = os.open(f"{os.fspath(database)}.lock", os.O_RDONLY | os.O_CLOEXEC)
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
