"""`edgeworker recover [--dry-run]`: start-up recovery, without starting the worker."""

import json
from datetime import timedelta

from edgeworker.clock import utcnow
from edgeworker.db import WorkerLock
from edgeworker.models import Task


def leave_running(task_id: int, attempt: int = 1):
    """What a worker killed mid-run leaves behind (it claimed the row, then the crash)."""
    Task.update(status="running", attempt=attempt, started_at=utcnow(),
                worker="dead:1").where(Task.id == task_id).execute()


def snapshot(path) -> list[str]:
    """The database's content. Not its file's bytes: whenever the last connection to it closes
    (a garbage-collected one, say), SQLite folds the WAL into the file."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_dry_run_prints_the_plan_and_changes_nothing(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h", "--max-attempts", "3",
                "--catch-up", "once")
    migrated.ok("jobs", "run", "a")
    leave_running(2)
    before = snapshot(migrated.db)
    out = migrated.ok("recover", "--dry-run")
    assert out.splitlines() == [
        "would recover task 2 (job a, interrupted attempt 1 of worker dead:1)",
        "would have recovered 1, failed 0, cancelled 0, scheduled 0, ended 0 "
        "leftover processes",
    ]
    assert snapshot(migrated.db) == before
    data = json.loads(migrated.ok("recover", "--dry-run", "--json"))
    assert data["counts"] == {"recovered": 1, "failed": 0, "cancelled": 0,
                              "scheduled": 0}
    assert data["recover"] == [{"task_id": 2, "job": "a", "attempt": 1, "worker": "dead:1"}]


def test_recover_does_it_and_records_it(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h", "--max-attempts", "1",
                "--catch-up", "once")
    migrated.ok("jobs", "run", "a")
    leave_running(2)
    assert migrated.ok("recover").splitlines() == [
        "fail task 2 (job a): interrupted on attempt 1 of 1 (the worker stopped while it ran): "
        "no attempt left",
        "recovered 0, failed 1, cancelled 0, scheduled 0, ended 0 leftover "
        "processes",
    ]
    assert json.loads(migrated.ok("tasks", "show", "2", "--json"))["status"] == "failed"
    status = json.loads(migrated.ok("status", "--json"))
    assert status["last_recovery"]["failed"] == 1


def test_recover_refuses_while_a_worker_runs(migrated):
    with WorkerLock(migrated.db):
        result = migrated("recover")
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: another worker (pid ")
        assert migrated("recover", "--dry-run").exit_code == 0


def test_dry_run_shows_superseded_slots_and_the_next_schedule(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1m", "--max-attempts", "3")
    past = utcnow() - timedelta(hours=1)
    Task.update(status="running", attempt=1, scheduled_for=past, due_at=past).where(
        Task.id == 1).execute()
    lines = migrated.ok("recover", "--dry-run").splitlines()
    assert lines[0] == ("would cancel task 1 (job a): superseded: a newer slot is already due "
                        "(catch_up = skip)")
    assert lines[1].startswith("would schedule job a for ")
