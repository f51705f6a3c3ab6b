"""Ordered SQL migrations from `migrations/NNN_name.sql`.

The whole plan is checked before anything runs (unknown or edited applied migrations are errors).
Each file and its `schema_migrations` row commit in one transaction, so a failing migration leaves
the database exactly as it was. Statements are split with `sqlite3.complete_statement` rather than
run with `executescript()`, which would commit on its own. Foreign keys are off while a migration
runs (SQLite's table-rebuild procedure needs that) and checked before its commit.

On PostgreSQL the set starts at a baseline, `migrations/postgresql/017_baseline.sql` (the schema
SQLite has after 017); every later file runs on both back ends, unless a file of the same version
in `migrations/postgresql/` replaces it there (`discover`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import sys
from dataclasses import dataclass

import peewee

from edgeworker.clock import to_text, utcnow
from edgeworker.db import is_url
from edgeworker.errors import DatabaseError, MigrationError, PendingMigrations

_FILENAME = re.compile(r"(\d+)_([a-z0-9_]+)\.sql")

HISTORY_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"


def migrations_dir() -> str:
    """Where the SQL files are: beside the package once installed or frozen, else the repo's."""
    here = os.path.dirname(os.path.realpath(__file__))
    for candidate in (os.path.join(here, "migrations"),
                      os.path.join(os.path.dirname(here), "migrations"),
                      os.path.join(getattr(sys, "_MEIPASS", here), "migrations")):
        if os.path.isdir(candidate):
            return candidate
    raise MigrationError(f"cannot find the migrations directory near {here}")


def dialect_of(db: peewee.Database) -> str:
    return "postgresql" if isinstance(db, peewee.PostgresqlDatabase) else "sqlite"


def discover(directory: str | os.PathLike | None = None,
             dialect: str = "sqlite") -> list[Migration]:
    """The migrations of a back end. SQLite's are the files in the directory. PostgreSQL's start
    at the lowest-numbered file in its `postgresql/` subdirectory (the baseline: the schema SQLite
    has at that version), then take every later file, each replaced by a file of the same
    version in `postgresql/` where there is one."""
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"no migrations for {dialect!r}")
    directory = directory or migrations_dir()
    found = _files(directory)
    if dialect == "sqlite":
        return [found[v] for v in sorted(found)]
    postgresql = os.path.join(directory, "postgresql")
    own = _files(postgresql) if os.path.isdir(postgresql) else {}
    if not own:
        raise MigrationError(f"no PostgreSQL baseline in {postgresql}")
    baseline = min(own)
    chosen = {v: m for v, m in found.items() if v > baseline} | own
    return [chosen[v] for v in sorted(chosen)]


def for_database(db: peewee.Database) -> list[Migration]:
    """The migrations of the database's back end."""
    return discover(dialect=dialect_of(db))


def _files(directory: str | os.PathLike) -> dict[int, Migration]:
    found: dict[int, Migration] = {}
    for name in os.listdir(directory):
        match = _FILENAME.fullmatch(name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations have version {version}: "
                                 f"{found[version].label}.sql and {name}")
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            found[version] = Migration(version, match.group(2), handle.read())
    return found


def applied(db: peewee.SqliteDatabase) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of what the database has applied."""
    if not db.table_exists("schema_migrations"):
        return {}
    rows = db.execute_sql("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def plan(db: peewee.SqliteDatabase, migrations: list[Migration],
         target: int | None = None) -> list[Migration]:
    """The migrations still to apply (up to `target`), after checking the applied ones."""
    done = applied(db)
    known = {m.version: m for m in migrations}
    newer = sorted(v for v in done if v not in known)
    if newer and newer[-1] > max(known, default=0):
        raise MigrationError(
            f"{db.database}: database schema is at version {max(done)}, newer than this "
            f"edgeworker knows ({max(known, default=0)}); upgrade edgeworker")
    if newer:
        raise MigrationError(f"{db.database}: applied migration {newer[0]} is unknown to this "
                             "edgeworker")
    for version, (_name, checksum) in sorted(done.items()):
        if known[version].checksum != checksum:
            raise MigrationError(
                f"{db.database}: migration {known[version].label}.sql changed after it was "
                "applied (checksum differs); restore the original file")
    if target is not None and target not in known:
        raise MigrationError(f"no migration has version {target}")
    return [m for m in migrations
            if m.version not in done and (target is None or m.version <= target)]


def split_statements(sql: str) -> list[str]:
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = _strip_comments(buffer).strip()
            if statement:
                statements.append(statement)
            buffer = ""
    if _strip_comments(buffer).strip():
        raise MigrationError(f"incomplete SQL statement at the end: {buffer.strip()[:60]!r}")
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


def apply(db: peewee.Database, todo: list[Migration]) -> list[Migration]:
    """Apply each migration with its history row in one transaction; stop at the first error."""
    if dialect_of(db) == "postgresql":
        return _apply_postgresql(db, todo)
    done = []
    for migration in todo:
        db.execute_sql("PRAGMA foreign_keys = OFF")
        try:
            with db.atomic("IMMEDIATE"):
                db.execute_sql(HISTORY_DDL)
                for statement in split_statements(migration.sql):
                    try:
                        db.execute_sql(statement)
                    except peewee.DatabaseError as exc:
                        raise MigrationError(
                            f"migration {migration.label}.sql failed, nothing of it was applied: "
                            f"{exc} (in: {statement[:70]})") from exc
                problems = db.execute_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise MigrationError(f"migration {migration.label}.sql breaks foreign keys: "
                                         f"{problems[:3]}; nothing of it was applied")
                db.execute_sql(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                    "VALUES (?, ?, ?, ?)",
                    (migration.version, migration.name, migration.checksum, to_text(utcnow())))
        finally:
            db.execute_sql("PRAGMA foreign_keys = ON")
        done.append(migration)
    return done


def _apply_postgresql(db: peewee.Database, todo: list[Migration]) -> list[Migration]:
    # PostgreSQL's DDL is transactional and its foreign keys are checked as rows change: each
    # migration and its history row commit together, or nothing of it does. The file goes to the
    # server whole (SQLite's splitter does not know PostgreSQL's $$ quotes); inside a transaction,
    # it cannot commit on its own.
    from edgeworker.postgres import driver

    psycopg2 = driver()

    done = []
    for migration in todo:
        with db.atomic():
            db.execute_sql(HISTORY_DDL)
            try:
                db.cursor().execute(migration.sql)  # no parameters: % is not a placeholder
            except psycopg2.Error as exc:
                lines = str(exc).strip().splitlines()
                where = next((f" (in: {line.split(':', 1)[1].strip()[:70]})" for line in lines
                              if line.startswith("LINE ")), "")
                raise MigrationError(f"migration {migration.label}.sql failed, nothing of it was "
                                     f"applied: {lines[0]}{where}") from exc
            db.execute_sql(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                "VALUES (%s, %s, %s, %s)",
                (migration.version, migration.name, migration.checksum, to_text(utcnow())))
        done.append(migration)
    return done


def ensure_current_file(path: str | os.PathLike, busy_timeout: float = 5.0) -> None:
    """`ensure_current`, through a read-only connection: a database that is refused (behind,
    ahead, or another program's) is left exactly as it was, journal mode included."""
    from edgeworker.db import open_database, translate_errors

    if is_url(path):
        return  # nothing to protect on a server: `ensure_current` on the connection says it all
    db = open_database(path, busy_timeout=busy_timeout, readonly=True)
    try:
        with translate_errors(path):
            ensure_current(db)
    finally:
        db.close()


def ensure_current(db: peewee.SqliteDatabase) -> None:
    """Refuse to work on a database that is behind (or ahead of) this program's schema."""
    try:
        pending = plan(db, for_database(db))
    except peewee.DatabaseError as exc:
        raise DatabaseError(f"{db.database}: {exc}") from exc
    if pending:
        names = ", ".join(m.label for m in pending)
        raise PendingMigrations(f"{db.database}: database needs migrations ({names}); "
                                "run `edgeworker migrate`")
