"""Every named statement of the run path (edgeworker.sql) runs through an index: none scans the
tasks table, whose history grows to millions of rows."""

import pytest

from edgeworker.sql import CLAIMING, PG_CLAIMING, POSTGRESQL, STATEMENTS, claiming, pg_claiming

PARAMS = {"now": "2026-01-01T00:00:00.000000Z", "hold": 0, "worker": "w", "r0": 1, "r1": 2,
          "g0": '"site-a"', "g1": '"site-b"'}


def statement(name: str, tags: int = 0) -> str:
    """The statement as run, those that look for claimable runs with two claimed rows."""
    return claiming(name, 2, tags) if name in CLAIMING else STATEMENTS[name]


def plan_of(database, sql: str) -> list[str]:
    params = PARAMS if ":now" in sql or ":hold" in sql else ("x",) * sql.count("?")
    return [row[-1] for row in database.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)]


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_no_statement_scans_the_tasks_table(database, name):
    plan = plan_of(database, statement(name))
    assert not [step for step in plan if step.startswith("SCAN")
                and "INDEX tasks_queue" not in step], (name, plan)
    assert not [step for step in plan if "tasks_job_id" in step], (name, plan)


@pytest.mark.parametrize("tags", [0, 2])
def test_the_claim_walks_the_queue_index_in_due_order(database, tags):
    plan = plan_of(database, statement("claim", tags))
    assert "SEARCH t USING INDEX tasks_queue (due_at<?)" in plan
    assert "SEARCH j USING INTEGER PRIMARY KEY (rowid=?)" in plan  # run_on: on the job's row
    assert not [step for step in plan if "TEMP B-TREE" in step], plan  # no sort: index order


@pytest.mark.parametrize("tags", [0, 2])
@pytest.mark.parametrize("name", CLAIMING)
def test_a_workers_tags_change_no_plan(database, name, tags):
    assert plan_of(database, statement(name, tags)) == plan_of(database, statement(name))
    assert statement(name, tags).count("instr(j.run_on") == tags


@pytest.mark.parametrize("name", CLAIMING)
def test_the_running_jobs_are_looked_up_by_id_not_by_a_scan_of_the_queue(database, name):
    plan = plan_of(database, statement(name))
    assert "SEARCH tasks USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert claiming(name, 0).count(":r") == 0 and "IN ()" in claiming(name, 0)


PG_PARAMS = {"now": "2026-01-01T00:00:00.000000Z", "hold": False, "worker": "w", "id": 1,
             "g0": '"site-a"', "g1": '"site-b"'}


def pg_plan_of(database, sql: str) -> list[str]:
    params = PG_PARAMS if "%(" in sql else ("1",) * sql.count("%s")
    return [row[0] for row in database.execute_sql(f"EXPLAIN {sql}", params)]


def pg_statement(name: str, tags: int = 0) -> str:
    return pg_claiming(name, tags) if name in PG_CLAIMING else POSTGRESQL[name]


@pytest.mark.parametrize("name", sorted(POSTGRESQL))
def test_no_postgresql_statement_needs_to_scan_the_tasks_table(pg_database, name):
    # With sequential scans priced out, the planner still picks one where no index serves.
    pg_database.execute_sql("SET enable_seqscan = off")
    plan = pg_plan_of(pg_database, pg_statement(name))
    assert not [step for step in plan if "Seq Scan on tasks" in step], (name, plan)


@pytest.mark.parametrize("tags", [0, 2])
def test_postgresqls_claim_walks_the_queue_index_in_due_order(pg_database, tags):
    pg_database.execute_sql("SET enable_seqscan = off")
    plan = "\n".join(pg_plan_of(pg_database, pg_statement("claim_pick", tags)))
    assert "Index Scan using tasks_queue on tasks t" in plan, plan
    assert "LockRows" in plan and "Sort" not in plan, plan  # (due_at, id): in claim order
