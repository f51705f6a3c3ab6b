"""Migrations on PostgreSQL: the baseline is SQLite's schema after 017 in PostgreSQL's types, the
models describe it, later migrations run on both back ends (replaced where a PostgreSQL file of
the same version exists), and a migration and its history row commit together."""

from __future__ import annotations

import re
import shutil

import peewee
import pytest

from edgeworker import migrate, postgres
from edgeworker.db import open_database
from edgeworker.errors import MigrationError
from edgeworker.models import MODELS

TABLES = [m._meta.table_name for m in MODELS]
FLAGS = {(m._meta.table_name, f.column_name) for m in MODELS for f in m._meta.sorted_fields
         if isinstance(f, peewee.BooleanField)}
PG_TYPES = {"integer": "INTEGER", "bigint": "INTEGER", "double precision": "REAL", "text": "TEXT",
            "boolean": "FLAG"}


def sqlite_type(table: str, column: str, declared: str) -> str:
    declared = declared.upper()
    if "INT" in declared:
        return "FLAG" if (table, column) in FLAGS else "INTEGER"
    return "REAL" if "REAL" in declared else "TEXT"


def sqlite_default(table: str, column: str, default: str | None) -> str | None:
    if default is None:
        return None
    if (table, column) in FLAGS:
        return {"0": "false", "1": "true"}[default]
    return str(float(default)) if re.fullmatch(r"-?[\d.]+", default) else default


def pg_default(default: str | None) -> str | None:
    if default is None:
        return None
    default = re.sub(r"::[a-z ]+$", "", default)
    return str(float(default)) if re.fullmatch(r"-?[\d.]+", default) else default


def columns(database, table: str) -> list[tuple]:
    """(name, type class, nullable, default) in table order."""
    found = database.get_columns(table)
    if isinstance(database, peewee.PostgresqlDatabase):
        defaults = dict(database.execute_sql(
            "SELECT column_name, column_default FROM information_schema.columns "
            "WHERE table_name = %s AND is_identity = 'NO'", (table,)).fetchall())
        return [(c.name, PG_TYPES[c.data_type], c.null, pg_default(defaults.get(c.name)))
                for c in found]
    return [(c.name, sqlite_type(table, c.name, c.data_type), c.null and not c.primary_key,
             None if c.primary_key else sqlite_default(table, c.name, c.default)) for c in found]


def indexes(database, table: str) -> dict[str, tuple]:
    """Named indexes (not those of a primary key or unique constraint): name -> (columns, where)."""
    if isinstance(database, peewee.PostgresqlDatabase):
        rows = database.execute_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint)", (table,)).fetchall()
    else:
        rows = database.execute_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                    "AND tbl_name = ? AND sql IS NOT NULL", (table,)).fetchall()
    found = {}
    for name, sql in rows:
        match = re.search(r"\((.*?)\)(?:\s+WHERE\s+(.*))?$", sql, re.S)
        where = (match.group(2) or "").strip("() ").replace("(", "").replace(")", "")
        names = tuple(c.strip() for c in match.group(1).split(","))
        # Every SQLite index ends with the rowid (id) implicitly: a trailing id says nothing.
        found[name] = (names[:-1] if names[-1] == "id" else names, where)
    return found


@pytest.fixture
def sqlite(tmp_path):
    database = open_database(tmp_path / "ew.db", create=True)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    yield database
    database.close()


@pytest.mark.parametrize("table", TABLES)
def test_both_back_ends_have_the_same_schema(sqlite, pg_database, table):
    """The baseline is SQLite's schema after 017, and each later migration keeps them equal."""
    assert max(migrate.applied(sqlite)) == max(migrate.applied(pg_database))
    assert columns(pg_database, table) == columns(sqlite, table)
    assert indexes(pg_database, table) == indexes(sqlite, table)


@pytest.mark.parametrize("model", MODELS)
def test_models_match_the_postgresql_schema(pg_database, model):
    field_types = {"INT": "INTEGER", "BIGINT": "INTEGER", "AUTO": "INTEGER", "FLOAT": "REAL",
                   "TEXT": "TEXT", "BOOL": "FLAG"}
    declared = [(f.column_name, field_types[f.field_type], f.null)
                for f in model._meta.sorted_fields]
    schema = [c[:3] for c in columns(pg_database, model._meta.table_name)]
    assert sorted(declared) == sorted(schema)


def test_checks_hold_on_postgresql(pg_database):
    for bad in ("INSERT INTO tasks (status, scheduled_for, due_at, created_at) "
                "VALUES ('lost', 'x', 'x', 'x')",
                "INSERT INTO tasks (status, scheduled_for, due_at, created_at) "
                "VALUES ('succeeded', 'x', 'x', 'x')",
                "INSERT INTO jobs (name, kind, target, every_seconds, cron, created_at, "
                "updated_at) VALUES ('j', 'command', 'true', 60, '* * * * *', 'x', 'x')"):
        with pytest.raises(peewee.IntegrityError, match="check constraint"):
            with pg_database.atomic():
                pg_database.execute_sql(bad)


def test_postgresql_starts_at_the_baseline_and_takes_every_later_file(tmp_path):
    shared, own = tmp_path, tmp_path / "postgresql"
    own.mkdir()
    for name in ("001_a.sql", "002_b.sql", "003_c.sql", "004_d.sql"):
        (shared / name).write_text(f"-- {name}\n")
    (own / "002_baseline.sql").write_text("-- baseline\n")
    (own / "004_d.sql").write_text("-- d, PostgreSQL's\n")
    assert [(m.label, m.sql) for m in migrate.discover(tmp_path, dialect="postgresql")] == [
        ("002_baseline", "-- baseline\n"), ("003_c", "-- 003_c.sql\n"),
        ("004_d", "-- d, PostgreSQL's\n")]
    assert [m.label for m in migrate.discover(tmp_path)] == ["001_a", "002_b", "003_c", "004_d"]


@pytest.fixture
def migrations(tmp_path):
    """A copy of the real migrations, to add later ones to."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), copy)
    return copy


def test_a_later_migration_runs_on_both_back_ends(migrations, tmp_path, pg_url):
    (migrations / "098_add_job_note.sql").write_text("ALTER TABLE jobs ADD COLUMN note TEXT;\n")
    # SQLite's flags are 0 and 1, PostgreSQL's booleans: where the SQL differs, a file of the
    # same version in postgresql/ replaces it there.
    (migrations / "099_resume_all.sql").write_text("UPDATE jobs SET paused = 0;\n")
    (migrations / "postgresql" / "099_resume_all.sql").write_text(
        "UPDATE jobs SET paused = FALSE;\n")
    for location in (tmp_path / "ew.db", pg_url):
        database = open_database(location, create=True)
        dialect = migrate.dialect_of(database)
        todo = migrate.plan(database, migrate.discover(migrations, dialect))
        assert [m.version for m in migrate.apply(database, todo)][-2:] == [98, 99]
        assert "note" in [c.name for c in database.get_columns("jobs")]
        assert not migrate.plan(database, migrate.discover(migrations, dialect))
        database.close()


def test_the_sqlite_text_of_a_differing_migration_fails_on_postgresql(migrations, pg_url):
    (migrations / "099_resume_all.sql").write_text("UPDATE jobs SET paused = 0;\n")
    database = open_database(pg_url)
    todo = migrate.plan(database, migrate.discover(migrations, "postgresql"))
    with pytest.raises(MigrationError, match="099_resume_all.sql failed, nothing of it was "
                                             "applied: column \"paused\" is of type boolean"):
        migrate.apply(database, todo)
    assert migrate.applied(database).keys() == {17, 18, 19, 20}
    database.close()


def test_a_failing_migration_leaves_postgresql_as_it_was(migrations, pg_url):
    (migrations / "099_half.sql").write_text(
        "CREATE TABLE notes (id BIGINT);\nINSERT INTO nowhere VALUES (1);\n")
    database = open_database(pg_url)
    migrate.apply(database, migrate.plan(database, migrate.discover(migrations, "postgresql"))[:3])
    todo = migrate.plan(database, migrate.discover(migrations, "postgresql"))
    with pytest.raises(MigrationError, match=r"migration 099_half.sql failed, nothing of it was "
                                             r'applied: relation "nowhere" does not exist'):
        migrate.apply(database, todo)
    assert not database.table_exists("notes")
    assert migrate.applied(database).keys() == {17, 18, 19, 20}
    database.close()


def test_a_changed_baseline_is_refused(migrations, pg_url):
    database = open_database(pg_url)
    migrate.apply(database, migrate.plan(database, migrate.discover(migrations, "postgresql")))
    baseline = migrations / "postgresql" / "017_baseline.sql"
    baseline.write_text(baseline.read_text() + "-- edited\n")
    with pytest.raises(MigrationError, match="migration 017_baseline.sql changed after it was "
                                             "applied"):
        migrate.plan(database, migrate.discover(migrations, "postgresql"))
    database.close()


def test_migrate_on_the_command_line(run_cli, pg_url):
    run_cli.db = pg_url
    result = run_cli("migrate", "--check")
    assert (result.exit_code, result.stdout) == (
        3, "4 pending: 017_baseline, 018_notify_waiting_runs, 019_create_workers, "
           "020_worker_leases\n")
    assert run_cli.ok("migrate", "--dry-run") == ("would apply 017_baseline\n"
                                                  "would apply 018_notify_waiting_runs\n"
                                                  "would apply 019_create_workers\n"
                                                  "would apply 020_worker_leases\n")
    assert run_cli.ok("migrate") == ("applied 017_baseline\napplied 018_notify_waiting_runs\n"
                                         "applied 019_create_workers\n"
                                         "applied 020_worker_leases\n")
    assert run_cli.ok("migrate") == "up to date\n"
    assert run_cli.ok("migrate", "--check") == "up to date\n"
    database = postgres.open_database(pg_url)
    assert set(TABLES) | {"schema_migrations"} == set(database.get_tables())
    database.close()
