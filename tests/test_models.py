import peewee
import pytest

from edgeworker.models import (
    FINISHED,
    TRANSITIONS,
    UNFINISHED,
    ClockState,
    HookRun,
    Job,
    Outbox,
    Task,
    TaskStatus,
    Worker,
    can_transition,
)


def affinity(declared: str) -> str:
    """SQLite's type-affinity rules (https://www.sqlite.org/datatype3.html#affname)."""
    declared = declared.upper()
    if "INT" in declared:
        return "INTEGER"
    if any(t in declared for t in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in declared or not declared:
        return "BLOB"
    if any(t in declared for t in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def model_columns(database, model):
    """What peewee would declare for the model: column -> (affinity, nullable)."""
    sql, _ = database.get_sql_context().sql(model._schema._create_table(safe=False)).query()
    scratch = peewee.SqliteDatabase(":memory:")
    scratch.execute_sql(sql.replace(f'"{model._meta.table_name}"', '"scratch"', 1))
    return {c.name: (affinity(c.data_type), c.null or c.primary_key)
            for c in scratch.get_columns("scratch")}


def schema_columns(database, table):
    return {c.name: (affinity(c.data_type), c.null or c.primary_key)
            for c in database.get_columns(table)}


@pytest.mark.parametrize("model", [Job, Task, ClockState, Outbox, HookRun, Worker])
def test_models_match_the_migrated_schema(database, model):
    assert model_columns(database, model) == schema_columns(database, model._meta.table_name)


def test_huey_keeps_no_tables_of_its_own(database):
    tables = {name for (name,) in database.execute_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {t for t in tables if t.startswith("huey")}, "the tasks table is the queue"


def test_every_status_has_its_transitions_written_down():
    assert set(TRANSITIONS) == set(TaskStatus)
    assert set(UNFINISHED) | set(FINISHED) == set(TaskStatus)
    assert UNFINISHED == ("created", "running")
    for status in FINISHED:
        assert TRANSITIONS[status] == frozenset()


@pytest.mark.parametrize("old, new, allowed", [
    ("created", "running", True),
    ("created", "cancelled", True),
    ("created", "succeeded", False),
    ("running", "created", True),  # retry, or reset for recovery
    ("running", "succeeded", True),
    ("running", "failed", True),
    ("succeeded", "running", False),
    ("failed", "created", False),
])
def test_transitions(old, new, allowed):
    assert can_transition(TaskStatus(old), TaskStatus(new)) is allowed


def test_task_check_constraint_rejects_unknown_status(database):
    with pytest.raises(peewee.IntegrityError, match="CHECK"):
        database.execute_sql("INSERT INTO tasks (status, scheduled_for, due_at, created_at) "
                             "VALUES ('lost', 'x', 'x', 'x')")


def plan_of(database, sql: str, params=()) -> str:
    rows = database.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return " / ".join(row[-1] for row in rows)


def test_unfinished_tasks_are_found_through_the_small_partial_index(database):
    """History grows to millions of rows; what the worker does per run must not scan it."""
    from edgeworker.models import IS_UNFINISHED

    queries = {
        "recovery": Task.select(Task.id, Task.status).where(IS_UNFINISHED).sql(),
        "running": Task.select().where(IS_UNFINISHED & (Task.status == "running")).sql(),
    }
    for name, (sql, params) in queries.items():
        assert "tasks_queue" in plan_of(database, sql, params), name


def test_a_finished_task_has_a_finish_time_and_an_unfinished_one_none(database):
    with pytest.raises(peewee.IntegrityError, match="CHECK"):
        database.execute_sql("INSERT INTO tasks (status, scheduled_for, due_at, created_at) "
                             "VALUES ('succeeded', 'x', 'x', 'x')")
    with pytest.raises(peewee.IntegrityError, match="CHECK"):
        database.execute_sql("INSERT INTO tasks (status, scheduled_for, due_at, created_at, "
                             "finished_at) VALUES ('created', 'x', 'x', 'x', 'x')")
