"""The job summaries of `status` and `jobs list`: one query for all jobs, through indexes."""

from datetime import timedelta

from test_models import plan_of

from edgeworker import report
from edgeworker.clock import utcnow
from edgeworker.models import Job, Task


def add_jobs(count: int, start: int = 0) -> None:
    now = utcnow()
    for n in range(start, start + count):
        job = Job.create(name=f"j{n:03d}", kind="command", target="true", every_seconds=60,
                         created_at=now, updated_at=now)
        for status in ("succeeded", "failed", "cancelled", "created"):
            Task.create(job=job.id, status=status, scheduled_for=now, due_at=now,
                        created_at=now, finished_at=None if status == "created" else now)


def statements(database, call) -> list[str]:
    seen: list[str] = []
    connection = database.connection()
    connection.set_trace_callback(seen.append)
    try:
        call()
    finally:
        connection.set_trace_callback(None)
    return seen


def test_one_query_for_all_jobs(database):
    add_jobs(3)
    few = statements(database, lambda: report.jobs(utcnow()))
    add_jobs(30, start=3)
    many = statements(database, lambda: report.jobs(utcnow()))
    assert len(few) == len(many) == 1
    rows = report.jobs(utcnow() + timedelta(minutes=1))
    assert len(rows) == 33
    assert {(r["last_status"], r["running"], r["overdue"]) for r in rows} == {
        ("failed", False, True)}  # the last of succeeded, failed; not the cancelled slot


def test_the_jobs_query_reads_no_history_but_each_jobs_newest_tasks(database):
    sql, params = report._jobs_query().sql()
    plan = plan_of(database, sql, params)
    assert "tasks_unfinished" in plan and "tasks_job_id" in plan, plan
    scans = [step for step in plan.split(" / ") if step.startswith("SCAN")]
    assert all("INDEX" in step for step in scans), plan  # no walk over every task


def test_a_removed_jobs_history_is_found_through_the_job_index(database):
    query = (Task.select().where(Task.job.is_null() & (Task.job_name == "gone"))
             .order_by(Task.id.desc()).limit(50))
    sql, params = query.sql()
    assert "USING INDEX tasks_job_id (job_id=?)" in plan_of(database, sql, params)
