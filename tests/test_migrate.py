import peewee
import pytest

from edgeworker import migrate
from edgeworker.db import open_database
from edgeworker.errors import MigrationError


def write(directory, name, sql):
    (directory / name).write_text(sql)


@pytest.fixture
def fresh(tmp_path):
    return open_database(tmp_path / "ew.db", create=True)


def table_sql(database, name):
    return database.execute_sql("SELECT sql FROM sqlite_master WHERE name = ?",
                                (name,)).fetchone()[0]


def test_versions_sort_numerically(tmp_path):
    for name in ("2_b.sql", "10_c.sql", "1_a.sql"):
        write(tmp_path, name, "SELECT 1;")
    assert [m.version for m in migrate.discover(tmp_path)] == [1, 2, 10]


def test_duplicate_version_is_an_error(tmp_path):
    write(tmp_path, "001_a.sql", "SELECT 1;")
    write(tmp_path, "1_b.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="two migrations have version 1"):
        migrate.discover(tmp_path)


def test_statements_split_without_executescript():
    sql = ("-- a comment\nCREATE TABLE t (x TEXT DEFAULT ';');\n"
           "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'a;b'; END;\n"
           "-- trailing comment\n")
    statements = migrate.split_statements(sql)
    assert len(statements) == 2
    assert statements[1].endswith("END;")


def test_failing_migration_leaves_database_and_history_unchanged(tmp_path, fresh):
    mdir = tmp_path / "m"
    mdir.mkdir()
    write(mdir, "001_ok.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    write(mdir, "002_bad.sql", "CREATE TABLE b (x);\nINSERT INTO a VALUES (2);\nINSERT INTO nope "
                               "VALUES (3);\n")
    todo = migrate.plan(fresh, migrate.discover(mdir))
    with pytest.raises(MigrationError, match=r"migration 002_bad.sql failed, nothing of it was "
                                             r"applied: no such table: nope"):
        migrate.apply(fresh, todo)
    assert fresh.execute_sql("SELECT x FROM a").fetchall() == [(1,)]
    assert not fresh.table_exists("b")
    assert migrate.applied(fresh).keys() == {1}


def test_failing_first_migration_leaves_no_history_table(tmp_path, fresh):
    mdir = tmp_path / "m"
    mdir.mkdir()
    write(mdir, "001_bad.sql", "CREATE TABLE a (x);\nSELECT * FROM nope;\n")
    with pytest.raises(MigrationError):
        migrate.apply(fresh, migrate.plan(fresh, migrate.discover(mdir)))
    assert fresh.get_tables() == []


def test_changed_applied_migration_is_an_error(tmp_path, fresh):
    mdir = tmp_path / "m"
    mdir.mkdir()
    write(mdir, "001_a.sql", "CREATE TABLE a (x);\n")
    migrate.apply(fresh, migrate.plan(fresh, migrate.discover(mdir)))
    write(mdir, "001_a.sql", "CREATE TABLE a (x, y);\n")
    with pytest.raises(MigrationError, match="migration 001_a.sql changed after it was applied"):
        migrate.plan(fresh, migrate.discover(mdir))


def test_newer_schema_is_an_error(tmp_path, fresh):
    mdir = tmp_path / "m"
    mdir.mkdir()
    write(mdir, "001_a.sql", "CREATE TABLE a (x);\n")
    write(mdir, "002_b.sql", "CREATE TABLE b (x);\n")
    migrate.apply(fresh, migrate.plan(fresh, migrate.discover(mdir)))
    (mdir / "002_b.sql").unlink()
    with pytest.raises(MigrationError, match=r"schema is at version 2, newer than this edgeworker"
                                             r" knows \(1\); upgrade edgeworker"):
        migrate.plan(fresh, migrate.discover(mdir))


def test_target_version(fresh):
    todo = migrate.plan(fresh, migrate.discover(), target=3)
    assert [m.label for m in todo] == ["001_create_jobs", "002_create_tasks",
                                       "003_remove_current_task_id_from_jobs"]


NOW = "2026-01-01T00:00:00.000000Z"


def test_003_removes_current_task_id_and_keeps_everything_else(fresh):
    all_migrations = migrate.discover()
    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=2))
    for i in range(1, 51):
        fresh.execute_sql(
            "INSERT INTO jobs (id, name, kind, target, every_seconds, cron, timeout_seconds, "
            "max_attempts, retry_delay_seconds, enabled, current_task_id, created_at, updated_at)"
            " VALUES (?, ?, 'command', 'true', ?, ?, ?, ?, 5, ?, ?, ?, ?)",
            (i, f"job{i}", 60.0 if i % 2 else None, None if i % 2 else "*/5 * * * *",
             30.0 if i % 3 else None, 1 + i % 4, i % 2, i * 10, NOW, NOW))
        for j in range(3):
            fresh.execute_sql(
                "INSERT INTO tasks (id, job_id, status, scheduled_for, attempt, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (i * 10 + j, i, ["succeeded", "running", "created"][j], NOW, j, NOW))
    jobs_before = fresh.execute_sql(
        "SELECT id, name, kind, target, every_seconds, cron, timeout_seconds, max_attempts, "
        "retry_delay_seconds, enabled, created_at, updated_at FROM jobs ORDER BY id").fetchall()
    tasks_before = fresh.execute_sql("SELECT * FROM tasks ORDER BY id").fetchall()
    tasks_sql_before = table_sql(fresh, "tasks")

    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=3))

    columns = [c.name for c in fresh.get_columns("jobs")]
    assert "current_task_id" not in columns
    assert fresh.execute_sql(
        "SELECT id, name, kind, target, every_seconds, cron, timeout_seconds, max_attempts, "
        "retry_delay_seconds, enabled, created_at, updated_at FROM jobs ORDER BY id"
    ).fetchall() == jobs_before
    assert fresh.execute_sql("SELECT * FROM tasks ORDER BY id").fetchall() == tasks_before
    assert table_sql(fresh, "tasks") == tasks_sql_before
    assert {i.name for i in fresh.get_indexes("tasks")} == {"tasks_job_id", "tasks_unfinished"}
    assert fresh.execute_sql("PRAGMA foreign_key_check").fetchall() == []
    assert fresh.execute_sql("PRAGMA integrity_check").fetchone() == ("ok",)
    # constraints survive the rebuild: unique names, checks, foreign keys from tasks
    with pytest.raises(peewee.IntegrityError, match="UNIQUE"):
        fresh.execute_sql("INSERT INTO jobs (name, kind, target, every_seconds, created_at, "
                          "updated_at) VALUES ('job1', 'command', 'x', 1, ?, ?)", (NOW, NOW))
    with pytest.raises(peewee.IntegrityError, match="CHECK"):
        fresh.execute_sql("INSERT INTO jobs (name, kind, target, every_seconds, cron, "
                          "created_at, updated_at) VALUES ('z', 'command', 'x', 1, '* * * * *', "
                          "?, ?)", (NOW, NOW))
    with pytest.raises(peewee.IntegrityError, match="FOREIGN KEY"):
        fresh.execute_sql("INSERT INTO tasks (job_id, scheduled_for, created_at) "
                          "VALUES (999, ?, ?)", (NOW, NOW))
    fresh.execute_sql("DELETE FROM jobs WHERE id = 1")
    assert fresh.execute_sql("SELECT DISTINCT job_id FROM tasks WHERE id BETWEEN 10 AND 12"
                             ).fetchall() == [(None,)]


def test_003_sql_avoids_drop_column():
    # the table-rebuild procedure, so that SQLite older than 3.35 can run it
    sql = next(m.sql for m in migrate.discover() if m.version == 3)
    statements = migrate.split_statements(sql)
    assert not any("DROP COLUMN" in s.upper() for s in statements)
    assert [s.split("(")[0].strip() for s in statements] == [
        "CREATE TABLE jobs_new", "INSERT INTO jobs_new", "DROP TABLE jobs;",
        "ALTER TABLE jobs_new RENAME TO jobs;"]


def test_011_makes_task_ids_never_reused_and_keeps_every_row(fresh):
    all_migrations = migrate.discover()
    before_011 = max(m.version for m in all_migrations if m.version < 11)
    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=before_011))
    fresh.execute_sql("INSERT INTO jobs (id, name, kind, target, every_seconds, created_at, "
                      "updated_at) VALUES (1, 'a', 'command', 'true', 60, ?, ?)", (NOW, NOW))
    states = ["created", "running", "succeeded", "failed", "cancelled"]
    for i in range(1, 41):
        fresh.execute_sql(
            "INSERT INTO tasks (id, job_id, status, origin, scheduled_for, due_at, attempt, "
            "recovered_count, created_at, started_at, finished_at, exit_code, error, output, "
            "worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (i * 3, None if i % 7 == 0 else 1, states[i % 5], ("schedule", "manual")[i % 2],
             NOW, NOW, i % 4, i % 3, NOW, NOW if i % 5 else None, NOW if i % 5 > 1 else None,
             i % 5 - 2 if i % 5 > 1 else None, f"error {i}" if i % 5 == 3 else None,
             f"out {i}\n" * i, f"boot:{i}:1"))
    tasks_before = fresh.execute_sql("SELECT * FROM tasks ORDER BY id").fetchall()
    columns_before = [(c.name, c.data_type, c.null) for c in fresh.get_columns("tasks")]
    indexes_before = {i.name: (i.sql, i.columns) for i in fresh.get_indexes("tasks")}
    assert "AUTOINCREMENT" not in table_sql(fresh, "tasks")

    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=11))

    assert "AUTOINCREMENT" in table_sql(fresh, "tasks")
    assert fresh.execute_sql("SELECT * FROM tasks ORDER BY id").fetchall() == tasks_before
    assert [(c.name, c.data_type, c.null) for c in fresh.get_columns("tasks")] == columns_before
    assert {i.name: (i.sql, i.columns) for i in fresh.get_indexes("tasks")} == indexes_before
    assert fresh.execute_sql("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'"
                             ).fetchall() == [(120,)]
    assert fresh.execute_sql("SELECT name FROM sqlite_master WHERE name LIKE 'tasks_new%'"
                             ).fetchall() == []
    assert fresh.execute_sql("PRAGMA foreign_key_check").fetchall() == []
    assert fresh.execute_sql("PRAGMA integrity_check").fetchone() == ("ok",)
    with pytest.raises(peewee.IntegrityError, match="CHECK"):
        fresh.execute_sql("INSERT INTO tasks (job_id, status, scheduled_for, created_at) "
                          "VALUES (1, 'lost', ?, ?)", (NOW, NOW))
    with pytest.raises(peewee.IntegrityError, match="FOREIGN KEY"):
        fresh.execute_sql("INSERT INTO tasks (job_id, scheduled_for, created_at) "
                          "VALUES (999, ?, ?)", (NOW, NOW))
    # the highest id pruned: the next task still gets a new one
    fresh.execute_sql("DELETE FROM tasks WHERE id >= 100")
    cursor = fresh.execute_sql("INSERT INTO tasks (job_id, scheduled_for, created_at) "
                               "VALUES (1, ?, ?)", (NOW, NOW))
    assert cursor.lastrowid == 121
    fresh.execute_sql("DELETE FROM jobs WHERE id = 1")
    assert fresh.execute_sql("SELECT count(*) FROM tasks WHERE job_id IS NOT NULL"
                             ).fetchone() == (0,)


def test_016_gives_isolate_a_column_of_its_own(fresh):
    all_migrations = migrate.discover()
    before_016 = max(m.version for m in all_migrations if m.version < 16)
    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=before_016))
    for id_, kind, shell in ((1, "callable", 1), (2, "callable", 0), (3, "command", 1)):
        fresh.execute_sql("INSERT INTO jobs (id, name, kind, target, shell, every_seconds, "
                          "created_at, updated_at) VALUES (?, ?, ?, 'x:y', ?, 60, ?, ?)",
                          (id_, f"j{id_}", kind, shell, NOW, NOW))
    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=16))
    assert fresh.execute_sql("SELECT id, shell, isolate FROM jobs ORDER BY id").fetchall() == [
        (1, 0, 1), (2, 0, 0), (3, 1, 0)]


def test_017_moves_huey_messages_into_due_rows_and_drops_hueys_tables(fresh):
    """A database as the previous version left it, with runs in every state and huey's messages
    for them: nothing waiting is lost, and huey's tables go."""
    import json

    all_migrations = migrate.discover()
    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=16))
    sql = fresh.execute_sql
    for id_, name, every, cron in ((1, "tick", 60, None), (2, "nightly", None, "0 3 * * *")):
        sql("INSERT INTO jobs (id, name, kind, target, every_seconds, cron, max_attempts, "
            "created_at, updated_at) VALUES (?, ?, 'command', 'true', ?, ?, 3, ?, ?)",
            (id_, name, every, cron, NOW, NOW))
    early, late = "2025-12-31T09:00:00.000000Z", "2026-01-01T11:00:00.000000Z"
    rows = [  # id, job, status, origin, due_at, attempt, created_at, finished_at
        (1, 1, "succeeded", "schedule", early, 1, early, NOW),
        (2, 1, "failed", "schedule", early, 3, early, NOW),
        (3, 1, "cancelled", "manual", early, 0, early, None),  # an old cancel without a time
        (4, 1, "running", "manual", early, 1, early, None),  # its recovery message queued
        (5, 1, "created", "schedule", early, 0, NOW, None),  # catch-up: created after its due
        (6, 1, "created", "manual", NOW, 0, NOW, None),  # in huey's ready queue
        (7, 1, "created", "schedule", late, 2, early, None),  # a retry, due later
        (8, 2, "created", "schedule", late, 0, early, None),  # a held cron run: no message
        (9, 1, "created", "manual", NOW, 0, NOW, None),  # its message was lost in a crash
    ]
    for id_, job, status, origin, due, attempt, created, finished in rows:
        sql("INSERT INTO tasks (id, job_id, status, origin, scheduled_for, due_at, attempt, "
            "created_at, started_at, finished_at, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?)", (id_, job, status, origin, due, due, attempt, created,
                   created if status != "created" else None, finished, f"out {id_}"))
    sql("UPDATE sqlite_sequence SET seq = 20 WHERE name = 'tasks'")  # 10..20 were pruned

    def message(args, eta=None):
        body = {"id": f"m{len(args)}", "name": "edgeworker.run_job", "args": [args]}
        if eta:
            body["eta"] = eta
        return json.dumps(body).encode()

    ready = [message({"job_id": 1, "task_id": 6}),
             message({"job_id": 1, "task_id": 4, "recovering_attempt": 1}),
             message({"job_id": 1}),  # the seed's path: the row is made at the claim
             b"\x80not json"]
    for data in ready:
        sql("INSERT INTO huey_task (queue, data, priority) VALUES ('edgeworker', ?, 0)", (data,))
    for task_id, ms in ((5, 1767261600000), (7, 1767265200000)):
        sql("INSERT INTO huey_schedule (queue, data, timestamp) VALUES ('edgeworker', ?, ?)",
            (message({"job_id": 1, "task_id": task_id}), ms))
    finished_before = sql("SELECT id, status, output, finished_at FROM tasks "
                          "WHERE id IN (1, 2) ORDER BY id").fetchall()

    migrate.apply(fresh, migrate.plan(fresh, all_migrations, target=17))

    tables = {name for (name,) in sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {t for t in tables if t.startswith("huey")}
    assert "requeued" not in {c.name for c in fresh.get_columns("recoveries")}
    assert sql("SELECT id, status, output, finished_at FROM tasks WHERE id IN (1, 2) "
               "ORDER BY id").fetchall() == finished_before
    assert sql("SELECT finished_at FROM tasks WHERE id = 3").fetchone() == (early,)
    # every waiting run is a row due when its message was; the running one is left to recovery
    assert sql("SELECT id, status, due_at FROM tasks WHERE finished_at IS NULL AND id < 10 "
               "ORDER BY id").fetchall() == [
        (4, "running", early), (5, "created", NOW), (6, "created", NOW), (7, "created", late),
        (8, "created", late), (9, "created", NOW)]
    [made] = sql("SELECT job_id, status, origin FROM tasks WHERE id > 9 AND id != 20").fetchall()
    assert made == (1, "created", "manual")  # the message without a task
    placeholder = sql("SELECT status, job_id FROM tasks WHERE id = 20").fetchone()
    assert placeholder == ("cancelled", None)  # ids up to 20 were handed out: never again
    assert "tasks_queue" in {i.name for i in fresh.get_indexes("tasks")}
    assert sql("PRAGMA foreign_key_check").fetchall() == []
    assert sql("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sql("INSERT INTO tasks (job_id, scheduled_for, due_at, created_at) VALUES "
               "(1, ?, ?, ?)", (NOW, NOW, NOW)).lastrowid == 21

    # The next start (migrated to the end) recovers the interrupted run, and the worker claims
    # in due order.
    from edgeworker import models, recovery
    from edgeworker.clock import from_text
    from edgeworker.ledger import Ledger

    migrate.apply(fresh, migrate.plan(fresh, all_migrations))
    models.bind(fresh)
    ledger = Ledger(fresh, worker="new:1")
    plan = recovery.recover(ledger, from_text(NOW))
    assert plan.counts()["recovered"] == 1, plan.close
    first = ledger.claim(from_text(late))
    assert (first.task.id, first.recovered, first.task.attempt) == (4, True, 2)
