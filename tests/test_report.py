"""The job summaries of `status` and `jobs list`: one query for all jobs, through indexes."""

import os
from datetime import timedelta

import peewee
from test_models import plan_of

from edgeworker import report
from edgeworker.clock import to_text, utcnow
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
    assert "tasks_queue" in plan and "tasks_job_id" in plan, plan
    scans = [step for step in plan.split(" / ") if step.startswith("SCAN")]
    assert all("INDEX" in step for step in scans), plan  # no walk over every task


def test_a_removed_jobs_history_is_found_through_the_job_index(database):
    query = (Task.select().where(Task.job.is_null() & (Task.job_name == "gone"))
             .order_by(Task.id.desc()).limit(50))
    sql, params = query.sql()
    assert "USING INDEX tasks_job_id (job_id=?)" in plan_of(database, sql, params)


def add_history(job: Job, count: int, age: timedelta, status: str = "succeeded") -> None:
    """`count` finished runs of `job`, created `age` ago (ids grow with creation time)."""
    when = utcnow() - age
    Task.insert_many([{"job": job.id, "status": status, "scheduled_for": when, "due_at": when,
                       "created_at": when, "started_at": when, "finished_at": when,
                       "output": "x" * 200} for _ in range(count)]).execute()


def steps(database, call) -> int:
    """SQLite virtual-machine steps a call takes: the work its queries do, without a clock."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    connection = database.connection()
    connection.set_progress_handler(tick, 1)
    try:
        call()
    finally:
        connection.set_progress_handler(None, 1)
    return count[0]


def status_page_views(now):
    """What each page of the status page reads, for a job "j000"."""
    return {
        "overview": lambda: (report.last_day(now), report.worker(None), report.worker(4242),
                             report.last_recovery(), report.clock(now, False),
                             report.all_busy("gw", 2, 3600, now)),
        "jobs": lambda: report.jobs_with_outcomes(now),
        "job": lambda: report.job("j000", now),
        "run": lambda: report.task(Task.select(peewee.fn.MIN(Task.id)).scalar()),
    }


def test_the_status_pages_read_no_more_with_ten_times_the_history(database):
    """The pages over 2,000 runs older than a day, then over 20,000: the same work, because no
    view walks old history (failures excepted: it walks back to its 50th failure)."""
    add_jobs(3)
    job = Job.get(Job.name == "j000")
    add_history(job, 2_000, timedelta(days=3))
    add_history(job, 100, timedelta(hours=1))
    now = utcnow()
    few = {name: steps(database, view) for name, view in status_page_views(now).items()}
    Task.delete().where(Task.created_at > to_text(now - timedelta(days=2))).execute()
    add_history(job, 18_000, timedelta(days=3))
    add_history(job, 100, timedelta(hours=1))
    many = {name: steps(database, view) for name, view in status_page_views(now).items()}
    for name in few:
        assert many[name] < few[name] * 1.2, (name, few[name], many[name])


def make_job(name: str = "j000") -> Job:
    now = utcnow()
    return Job.create(name=name, kind="command", target="true", every_seconds=60,
                      created_at=now, updated_at=now)


def test_last_day_counts_the_runs_created_in_the_last_24_hours(database):
    job = make_job()
    add_history(job, 30, timedelta(days=2))
    add_history(job, 5, timedelta(hours=23), status="failed")
    add_history(job, 2, timedelta(minutes=1), status="cancelled")
    counts = report.last_day(utcnow())
    assert {k: v for k, v in counts.items() if k != "since"} == {
        "succeeded": 0, "failed": 5, "cancelled": 2, "created": 0, "running": 0}


def test_recent_outcomes_are_a_jobs_newest_successes_and_failures(database):
    job = make_job()
    add_history(job, 60, timedelta(hours=2))
    add_history(job, 1, timedelta(hours=1), status="failed")
    add_history(job, 1, timedelta(hours=1), status="cancelled")
    outcomes = report.recent_outcomes(job.id)
    assert len(outcomes) == 50
    assert outcomes[0]["status"] == "failed"  # the newest outcome: a cancelled slot is none
    assert [o["id"] for o in outcomes] == sorted((o["id"] for o in outcomes), reverse=True)
    sql, params = (Task.select(Task.id).where((Task.job == 1) & Task.status.in_(report.OUTCOMES))
                   .order_by(Task.id.desc()).limit(50).sql())
    assert "USING INDEX tasks_job_id (job_id=?)" in plan_of(database, sql, params)


def test_a_jobs_page_and_failures_page_by_page(database):
    add_jobs(2)
    job = Job.get(Job.name == "j000")
    add_history(job, 7, timedelta(hours=1), status="failed")
    pages = [report.job("j000", utcnow(), limit=4)]
    while pages[-1]["next_before"] is not None:
        pages.append(report.job("j000", utcnow(), limit=4, before=pages[-1]["next_before"]))
    ids = [t["id"] for page in pages for t in page["tasks"]]
    assert len(pages) == 3 and len(ids) == 11 and ids == sorted(ids, reverse=True)
    failed = report.failures(limit=5)
    more = report.failures(limit=5, before=failed["next_before"])
    assert len(failed["tasks"]) + len(more["tasks"]) == 9  # 7 + one of each job's
    assert {t["status"] for t in failed["tasks"] + more["tasks"]} == {"failed"}


def test_worker_since_its_start_and_last_seen_when_down(database):
    from edgeworker.ledger import Ledger

    now = utcnow()
    Ledger(database, worker="gw").register(now - timedelta(hours=1), None)  # this process
    assert report.worker(os.getpid())["since"] == to_text(now - timedelta(hours=1))
    assert report.worker(os.getpid() + 1)["since"] is None
    add_jobs(1)
    down = report.worker(None)
    assert down["running"] is False and down["last_seen"] >= to_text(now)
