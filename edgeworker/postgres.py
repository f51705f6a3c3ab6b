"""The PostgreSQL back end: a `postgresql://` URL instead of a file path.

The URL is libpq's URI form (`postgresql://user@host:port/dbname`, a socket directory as
`?host=/run/postgresql`). A password never sits in the URL or the TOML file: libpq reads it from
`$PGPASSWORD`, `$PGPASSFILE` or `~/.pgpass`. Connecting fails with one line naming the URL and
libpq's reason. Transactions are PostgreSQL's READ COMMITTED; SQLite's lock types, which the
ledger asks for (`atomic("IMMEDIATE")`), mean nothing here.

Also here: the claim's two steps (`claim`, over `sql.POSTGRESQL`), the lock of a worker name (a
session advisory lock, `WorkerLock`: one worker a name), and what heals: a connection the server
dropped is opened again by the next statement.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import select
import sys
import weakref
import zlib
from collections.abc import Iterator

import peewee

from edgeworker.errors import DatabaseError, WorkerRunning

logger = logging.getLogger("edgeworker.postgres")


def driver():
    """psycopg2, imported on first use. The entry point keeps peewee from importing it (peewee
    tries at its own import): its libpq brings OpenSSL, 3.5 MB resident, into every worker,
    SQLite's too."""
    if "psycopg2" in sys.modules and sys.modules["psycopg2"] is None:
        del sys.modules["psycopg2"]
    import psycopg2
    import psycopg2.extensions
    import psycopg2.extras

    return psycopg2


class Psycopg2Adapter(peewee.Psycopg2Adapter):
    """peewee's psycopg2 adapter (`PostgresqlDatabase.psycopg2_adapter`), with the driver
    imported when a database is opened rather than when peewee is."""

    def __init__(self):
        super().__init__()
        extensions = driver().extensions
        self.json_type = self.jsonb_type = driver().extras.Json
        self.txn_idle = extensions.TRANSACTION_STATUS_IDLE
        self.txn_inerror = extensions.TRANSACTION_STATUS_INERROR
        self.txn_unknown = extensions.TRANSACTION_STATUS_UNKNOWN

    def check_driver(self):
        driver()

    def get_binary_type(self):
        return driver().Binary

    def connect(self, db, **params):
        params.setdefault("dsn", db.database)  # always a postgresql:// URL here
        return driver().connect(connection_factory=connection_class(), **params)


# Every connection this process opened (`connection_class`), for `_forked`.
_connections: weakref.WeakSet = weakref.WeakSet()


@functools.cache
def connection_class():
    """psycopg2's connection, remembered in `_connections` so that a forked child lets go of
    them all at once (`_forked`)."""
    psycopg2 = driver()

    class Connection(psycopg2.extensions.connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _connections.add(self)

    os.register_at_fork(after_in_child=_forked)
    return Connection


def _forked() -> None:
    """In a forked child (a callable's `multiprocessing` pool, an isolated callable): /dev/null
    takes the place of every connection's socket. Else the child would keep the worker's
    sessions, its lock's among them, alive after the worker died, for as long as it lived (no
    worker of that name could start), and its copy of a connection, closed at its exit, would
    end the worker's session with it."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in list(_connections):
            with contextlib.suppress(Exception):
                if not conn.closed:
                    os.dup2(null, conn.fileno())
    finally:
        os.close(null)


def check_url(url: str) -> str:
    """The URL as libpq reads it, or a DatabaseError saying what is wrong (a password in it)."""
    try:
        parse_dsn = driver().extensions.parse_dsn
    except ImportError:
        raise DatabaseError(f"{url}: PostgreSQL needs the psycopg2 driver: "
                            "pip install 'edgeworker[postgres]'") from None
    try:
        params = parse_dsn(url)
    except Exception as exc:  # psycopg2.ProgrammingError: libpq's "invalid URI ..."
        raise DatabaseError(f"{url}: not a valid PostgreSQL URL ({_first_line(exc)})") from None
    if "password" in params:
        raise DatabaseError("the PostgreSQL URL holds a password; take it out and put it in "
                            "~/.pgpass, $PGPASSFILE or $PGPASSWORD")
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    return url


class PostgresDatabase(peewee.PostgresqlDatabase):
    """peewee's PostgreSQL database; `atomic("IMMEDIATE")` (SQLite's write lock) is a BEGIN.

    A connection the server dropped (a restart, a network cut) fails the statement that finds
    it so; the next statement outside a transaction connects again."""

    psycopg2_adapter = Psycopg2Adapter
    # peewee takes psycopg 3 where it is installed and psycopg2 looks missing (edgeworker keeps
    # psycopg2 out of sys.modules until a database is opened): edgeworker speaks psycopg2 only.
    psycopg3_adapter = Psycopg2Adapter

    def begin(self, isolation_level=None):
        if isinstance(isolation_level, str) and isolation_level.upper() in (
                "IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            isolation_level = None
        return super().begin(isolation_level)

    def cursor(self, named_cursor=None):
        conn = self._state.conn
        if conn is not None and conn.closed and not self.in_transaction():
            self._state.reset()
        return super().cursor(named_cursor)

    def rollback(self):
        conn = self._state.conn
        if conn is not None and conn.closed:
            return  # the server ended the transaction with the connection
        super().rollback()


@functools.cache
def _batching_cursor():
    """psycopg2's cursor, whose executemany sends many rows a round trip (psycopg2's own sends
    one: 10,000 recoveries would be 10,000 round trips). Its rowcount is the last page's."""
    psycopg2 = driver()

    class BatchingCursor(psycopg2.extensions.cursor):
        def executemany(self, query, vars_list):
            psycopg2.extras.execute_batch(self, query, vars_list, page_size=500)

    return BatchingCursor


def heals(exc: BaseException) -> bool:
    """Whether trying again later may succeed: a lost connection, a server shutting down or
    starting, a lock wait that timed out, a full disk (psycopg2's OperationalError, and the bare
    DatabaseError of a connection closed mid-result)."""
    psycopg2 = sys.modules.get("psycopg2")
    if psycopg2 is None:  # never loaded: not its error
        return False
    todo, seen = [exc], set()
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            return True
        # libpq's own error, no SQLSTATE: a connection the server closed while a result was read
        # comes as a bare DatabaseError (its subclasses, e.g. a value it cannot adapt, do not heal)
        if type(error) is psycopg2.DatabaseError and error.pgcode is None:
            return True
        orig = getattr(error, "orig", None)  # peewee's wrapper keeps the driver's error
        todo += [orig if isinstance(orig, BaseException) else None, error.__cause__,
                 error.__context__]
    return False


def database(url: str, *, busy_timeout: float = 5.0, readonly: bool = False) -> PostgresDatabase:
    """The database the URL names, not connected yet (`open_database` connects and checks)."""
    # The busy timeout bounds waiting for a row or table lock, as SQLite's bounds its write lock,
    # and for the server to answer a connection.
    options = f"-c lock_timeout={int(busy_timeout * 1000)}"
    if readonly:
        options += " -c default_transaction_read_only=on"
    return PostgresDatabase(check_url(url), connect_timeout=max(1, round(busy_timeout)),
                            options=options, application_name="edgeworker",
                            cursor_factory=_batching_cursor())


def open_database(url: str, *, busy_timeout: float = 5.0, readonly: bool = False,
                  foreign: bool = False) -> PostgresDatabase:
    """Connect to the database the URL names. `readonly`: every transaction is read-only (the
    server refuses a write). A database that holds tables but not edgeworker's is refused unless
    `foreign`."""
    url = check_url(url)
    db = database(url, busy_timeout=busy_timeout, readonly=readonly)
    with translate_errors(url):
        db.connect()
        tables = db.get_tables()
    if tables and "schema_migrations" not in tables and not foreign:
        db.close()
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise DatabaseError(
            f"{url}: not an edgeworker database (it holds tables {shown} and no "
            "schema_migrations); left untouched: check --db / $EDGEWORKER_DB, or add edgeworker's "
            "tables to it with `edgeworker migrate --force`")
    return db


# pg_try_advisory_lock(int, int): the first key "ewnm" (a worker name's lock), the second a hash
# of the name. Advisory locks belong to one database; pg_locks shows them with objsubid 2.
NAME_LOCKS = 0x65776E6D
HELD = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND pid = pg_backend_pid() AND classid = %s AND objid = %s AND objsubid = 2")
HOLDERS = ("SELECT l.objid, a.application_name FROM pg_locks l "
           "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
           "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objsubid = 2 "
           "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
LOCK_HOLDER = re.compile(r"edgeworker worker \(pid (\d+)\)")
RETAKE_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)  # seconds between tries to connect again


def name_key(name: str) -> tuple[int, int]:
    """The advisory lock key of a worker name: (NAME_LOCKS, crc32 of the name as int4)."""
    value = zlib.crc32(name.encode())
    return NAME_LOCKS, value - (1 << 32) if value >= 1 << 31 else value


class WorkerLock:
    """A worker name's lock on a PostgreSQL database: a session advisory lock keyed by the name,
    held on a connection of its own for the worker's lifetime (the server drops it when that
    connection ends, however the worker ends). Workers of different names run side by side; a
    second worker of one name is refused, so the running tasks recorded under a name whose lock
    is free belong to a worker that is gone (start-up recovery), and those of a name whose lease
    ran out are taken by the live workers (edgeworker.recovery.recover_expired)."""

    def __init__(self, url: str, name: str):
        self.url = check_url(url)
        self.name = name
        self.key = name_key(name)
        self.db: PostgresDatabase | None = None
        self.lost = 0  # failed tries to take the lock again since the server went away

    def _session(self) -> PostgresDatabase:
        return PostgresDatabase(self.url, application_name=f"edgeworker worker (pid {os.getpid()})",
                                connect_timeout=5)

    def acquire(self) -> WorkerLock:
        db = self._session()
        with translate_errors(self.url):
            db.connect()
            got = db.execute_sql("SELECT pg_try_advisory_lock(%s, %s)", self.key).fetchone()[0]
        if not got:
            db.close()
            pid = running_workers(self.url, {self.name}).get(self.name)
            holder = f" (pid {pid})" if pid and pid > 0 else ""
            raise WorkerRunning(f'another worker named "{self.name}"{holder} is running on '
                                f"{self.url}; stop it first, or give this one another name "
                                "([worker] name, --name)")
        self.db = db
        return self

    def keep(self) -> bool:
        """Still hold the lock, taking it again if the server dropped its session (a restart).
        False when another worker of this name took it meanwhile: this one must stop. While the
        server cannot be reached, True (nobody else can take it either) and `lost` is set: the
        caller asks again soon (`retake_in`)."""
        try:
            if self.db.execute_sql(HELD, self.key).fetchone()[0]:
                self.lost = 0
                return True
        except (peewee.DatabaseError, peewee.InterfaceError):
            pass
        with contextlib.suppress(peewee.DatabaseError, peewee.InterfaceError):
            self.db.close()
        try:
            self.db.connect()
            got = self.db.execute_sql("SELECT pg_try_advisory_lock(%s, %s)",
                                      self.key).fetchone()[0]
        except (peewee.DatabaseError, peewee.InterfaceError):
            self.lost += 1
            return True
        if got:
            self.lost = 0
            logger.warning('took the lock of worker name "%s" on %s again: the server had '
                           "ended its session", self.name, self.url)
        return got

    def fileno(self) -> int:
        """The lock session's socket (-1 without one): readable when the server ends the
        session (a restart), so that the worker takes the lock again at once."""
        conn = self.db._state.conn if self.db is not None else None
        return conn.fileno() if conn is not None and not conn.closed else -1

    def retake_in(self) -> float | None:
        """Seconds until `keep` should look again while the lock is lost (back-off), or None."""
        if not self.lost:
            return None
        return RETAKE_BACKOFF[min(self.lost, len(RETAKE_BACKOFF)) - 1]

    def release(self, remove: bool = False) -> None:
        if self.db is not None:
            with contextlib.suppress(peewee.DatabaseError, peewee.InterfaceError):
                self.db.close()  # the lock goes with the session
            self.db = None

    def __enter__(self) -> WorkerLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def running_workers(url: str, names: set[str] | None = None) -> dict[str, int]:
    """The workers running on the database: each worker name whose lock is held -> the pid
    holding it (-1 if it cannot be read; it may run on another host). Names are those of the
    workers table and `names`; a lock of a name found in neither shows as `#<key>`."""
    db = PostgresDatabase(check_url(url), application_name="edgeworker")
    try:
        with translate_errors(url):
            db.connect()
            held = db.execute_sql(HOLDERS, (NAME_LOCKS,)).fetchall()
            known = set(names or ())
            if held and "workers" in db.get_tables():
                known |= {name for (name,) in db.execute_sql("SELECT name FROM workers")}
    finally:
        db.close()
    by_key = {name_key(name)[1] % (1 << 32): name for name in known}
    running = {}
    for objid, application in held:
        match = LOCK_HOLDER.fullmatch(application or "")
        running[by_key.get(objid, f"#{objid}")] = int(match.group(1)) if match else -1
    return running


def worker_pid(url: str) -> int | None:
    """The pid of a worker running on the database (-1 if it cannot be read), or None when none
    runs."""
    return next(iter(running_workers(url).values()), None)


CHANNEL = "edgeworker"  # migrations/postgresql/018_notify_waiting_runs.sql


class NotifyWatch:
    """Waits for a change to the queue (a notification on `CHANNEL`, sent by the triggers of
    migration 018 when a change to tasks or jobs commits), a stop, or a timeout: what
    `wakeup.DatabaseWatch` does with the WAL on SQLite. One connection of its own per watching
    thread, LISTENing; while the server cannot be reached, it looks once a second."""

    def __init__(self, url: str, stop):
        self.url = check_url(url)
        self.stop = stop
        self.conn = None

    def _listen(self):
        if self.conn is None or self.conn.closed:
            psycopg2 = driver()

            try:
                conn = psycopg2.connect(self.url, application_name="edgeworker",
                                        connection_factory=connection_class())
                conn.autocommit = True
                conn.cursor().execute(f"LISTEN {CHANNEL}")
            except psycopg2.Error:
                return None
            self.conn = conn
        return self.conn

    def wait(self, timeout: float) -> bool:
        """Return after `timeout` seconds, or as soon as the queue changes or stop is set. True
        when woken by a change (or by a new connection, which may have missed one)."""
        psycopg2 = driver()

        fresh = self.conn is None or self.conn.closed
        conn = self._listen()
        if conn is None:
            self.stop.wait(min(timeout, 1.0))
            return False
        if fresh and self.conn is not None:
            return True  # changes before the LISTEN were not seen: look again now
        ready, _, _ = select.select([conn, self.stop], [], [], max(0.0, timeout))
        if conn not in ready:
            return False
        try:
            conn.poll()
        except psycopg2.Error:
            self.close()
            return True
        woken = bool(conn.notifies)
        conn.notifies.clear()
        return woken

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


CLAIM_TRIES = 3


def claim(db: peewee.Database, pick: str, take: str, params: dict) -> tuple | None:
    """Claim the next due run (`sql.POSTGRESQL` claim_pick, for the worker's tags, then
    claim_take), in the caller's transaction. A claim loses only to a run of the same job claimed
    and committed between its two steps; it then looks again (that job is passed over now)."""
    for _ in range(CLAIM_TRIES):
        picked = db.execute_sql(pick, params).fetchone()
        if picked is None:
            return None
        row = db.execute_sql(take, {**params, "id": picked[0]}).fetchone()
        if row is not None:
            return row
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def reason(exc: BaseException) -> str:
    """libpq's or the server's reason, as one line an operator can act on."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    # "connection to server on socket "/x/.s.PGSQL.5432" failed: FATAL:  password authentication
    # failed for user "u"": the reason follows the first " failed: ".
    if first.startswith("connection to server") and "failed: " in first:
        where, cause = first.split(" failed: ", 1)
        first = cause.strip()
        prefix = f"cannot connect to the server {where.replace('connection to server ', '')}: "
    else:
        prefix = ""
    if first.startswith("fe_sendauth: no password supplied"):
        first = ("the server asks for a password and none was found in ~/.pgpass, $PGPASSFILE "
                 "or $PGPASSWORD")
    return prefix + first.replace("FATAL:  ", "").replace("ERROR:  ", "")


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """PostgreSQL's errors as one-line DatabaseErrors naming the URL."""
    try:
        yield
    except peewee.IntegrityError:
        raise
    except (peewee.DatabaseError, peewee.InterfaceError) as exc:
        raise DatabaseError(f"{url}: {reason(exc)}") from exc
