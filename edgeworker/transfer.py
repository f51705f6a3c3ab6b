"""`edgeworker migrate --copy-from FILE`: an SQLite database's jobs and history, copied into a
PostgreSQL database (docs/scale.md).

Every table the models define (`models.MODELS`) is copied row by row with its ids, then each
identity sequence is moved past the highest id copied, so a new task never takes a copied task's
id (`EDGEWORKER_TASK_ID` stays a key). The target's migrations and the copy are one transaction:
a copy that fails leaves the target as it was. The source is only read, through a read-only
connection in one read transaction (edgeworker.db.ReadOnlyDatabase): the file stays byte for
byte what it was. Rows copied `running` stay `running`; the first worker's start-up recovery on
the target recovers them, as it would have on the box.

Everything that makes a copy refused is checked before the target changes: the source must be a
current edgeworker database with no worker on it, the target reachable, empty and without a
worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import peewee

from edgeworker import db, migrate, models, postgres
from edgeworker.errors import DatabaseError, MigrationError, WorkerRunning

BATCH = 500  # rows a round trip (psycopg2's execute_batch page, edgeworker.postgres)


def check_source(path: Path, busy_timeout: float = 5.0) -> peewee.Database:
    """The source opened read-only, or a one-line DatabaseError saying why it cannot be copied."""
    path = Path(path)
    if not path.exists():
        raise DatabaseError(f"{path}: no such file (--copy-from names the SQLite database to "
                            "copy)")
    if path.is_dir():
        raise DatabaseError(f"{path}: is a directory, not a database file")
    source = db.open_database(path, busy_timeout=busy_timeout, readonly=True, foreign=True)
    try:
        with db.translate_errors(path):
            if not source.table_exists("schema_migrations"):
                raise DatabaseError(f"{path}: not an edgeworker database (no schema_migrations "
                                    "table); nothing copied")
            todo = migrate.plan(source, migrate.discover(dialect="sqlite"))
        if todo:
            raise MigrationError(
                f"{path}: its schema is older than this edgeworker's (pending: "
                f"{', '.join(m.label for m in todo)}); run `edgeworker --db {path} migrate` "
                "first (the copy never writes to its source)")
        _no_worker(path)
    except BaseException:
        source.close()
        raise
    return source


def check_target(target: peewee.Database, url: str) -> list[migrate.Migration]:
    """The migrations the target still needs, after checking that it is empty and that no
    worker runs on it."""
    with db.translate_errors(url):
        todo = migrate.plan(target, migrate.for_database(target))
        _no_worker(url)
        _empty(target, url)
    return todo


def _no_worker(location) -> None:
    pid = db.worker_pid(location)
    if pid:
        holder = f" (pid {pid})" if pid > 0 else ""
        raise WorkerRunning(f"a worker{holder} is running on {location}; stop it before copying")


def _empty(target: peewee.Database, url: str) -> None:
    tables = set(target.get_tables())
    held = []
    for model in models.MODELS:
        table = model._meta.table_name
        if table in tables:
            count = target.execute_sql(f"SELECT count(*) FROM {table}").fetchone()[0]
            if count:
                held.append(f"{count} {table}")
    if held:
        raise DatabaseError(f"{url}: not empty (it holds {', '.join(held)}); --copy-from copies "
                            "into a new database only")


def copy(source: peewee.Database, source_path: Path, target: peewee.Database, url: str,
         todo: list[migrate.Migration]) -> tuple[list[migrate.Migration], dict[str, int]]:
    """Migrate the target and copy every model's rows into it, in one transaction on each side.
    Returns the migrations applied and the rows copied per table."""
    psycopg2 = postgres.driver()
    counts: dict[str, int] = {}
    try:
        with db.translate_errors(url), target.atomic():
            applied = _copy(source, source_path, target, url, todo, counts)
    except (peewee.IntegrityError, psycopg2.IntegrityError, psycopg2.DataError) as exc:
        # a row SQLite kept that PostgreSQL's schema refuses
        raise DatabaseError(f"{url}: nothing copied: a row of {source_path} is refused: "
                            f"{postgres.reason(exc)}") from exc
    except psycopg2.Error as exc:  # the rows go through the driver's cursor, not peewee
        raise DatabaseError(f"{url}: nothing copied: {postgres.reason(exc)}") from exc
    return applied, counts


def _copy(source: peewee.Database, source_path: Path, target: peewee.Database, url: str,
          todo: list[migrate.Migration], counts: dict[str, int]) -> list[migrate.Migration]:
    applied = migrate.apply(target, todo)
    # Nobody writes these tables until the copy commits; that they are empty is checked again
    # under the lock.
    tables = ", ".join(m._meta.table_name for m in models.MODELS)
    target.execute_sql(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
    _empty(target, url)
    with db.translate_errors(source_path), source.atomic():
        for model in models.MODELS:
            counts[model._meta.table_name] = _copy_table(model, source, target)
        _no_worker(source_path)  # one that started meanwhile may have written after the read
    for model in models.MODELS:
        _advance_sequence(model, target)
    return applied


def _copy_table(model, source: peewee.Database, target: peewee.Database) -> int:
    fields = model._meta.sorted_fields
    names = [field.column_name for field in fields]
    table = model._meta.table_name
    insert = (f"INSERT INTO {table} ({', '.join(names)}) "
              f"VALUES ({', '.join(['%s'] * len(names))})")
    count = 0
    key = model._meta.primary_key.column_name
    cursor = target.cursor()
    for rows in _batches(source.execute_sql(
            f"SELECT {', '.join(names)} FROM {table} ORDER BY {key}")):
        cursor.executemany(insert, [_convert(fields, row) for row in rows])
        count += len(rows)
    return count


def _batches(cursor) -> Iterator[list[tuple]]:
    while rows := cursor.fetchmany(BATCH):
        yield rows


def _convert(fields, row: tuple) -> tuple:
    """SQLite's values as PostgreSQL's columns take them: flags are 0/1 there, BOOLEAN here;
    PostgreSQL's text cannot hold a NUL character (a command's output can), which becomes
    U+FFFD, as the runner's decoding makes of undecodable bytes."""
    values = []
    for field, value in zip(fields, row, strict=True):
        if value is not None:
            if isinstance(field, peewee.BooleanField):
                value = bool(value)
            elif isinstance(value, str) and "\x00" in value:
                value = value.replace("\x00", "\ufffd")
        values.append(value)
    return tuple(values)


def _advance_sequence(model, target: peewee.Database) -> None:
    # An identity column's sequence hands out max(id) + 1 next: copied ids are never handed out
    # again. The clock's one row has no sequence.
    table = model._meta.table_name
    target.execute_sql(
        f"SELECT setval(s, (SELECT max(id) FROM {table})) "
        f"FROM (SELECT pg_get_serial_sequence(%s, 'id') AS s) AS q "
        f"WHERE s IS NOT NULL AND EXISTS (SELECT 1 FROM {table})", (table,))


def summary(counts: dict[str, int]) -> str:
    return "copied " + ", ".join(f"{count} {table}" for table, count in counts.items())
