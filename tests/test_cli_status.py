import json

import pytest


@pytest.fixture
def migrated(migrated_any):
    """Each test runs on SQLite and on PostgreSQL."""
    return migrated_any


def on_server(cli) -> bool:
    return str(cli.db).startswith("postgresql://")


def test_status_json_has_stable_keys(migrated):
    migrated.ok("jobs", "add", "hb", "--command", "true", "--every", "30s")
    data = json.loads(migrated.ok("status", "--json"))
    assert sorted(data) == ["clock", "database", "durability", "jobs", "last_recovery", "pings",
                            "queue", "worker", "workers"]
    assert data["pings"] == {"waiting": 0, "oldest": None, "last_error": None}
    assert data["last_recovery"] is None
    assert data["workers"] == []
    assert data["worker"] == {"running": False, "pid": None, "names": [], "alert": None}
    assert data["queue"] == {"ready": 0, "scheduled": 1}
    assert data["durability"] == (None if on_server(migrated) else "full")  # SQLite's setting
    [job] = data["jobs"]
    assert job["counts"] == {"created": 1, "running": 0, "succeeded": 0, "failed": 0,
                             "cancelled": 0}


def test_status_text(migrated, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEWORKER_CLOCK_SYNC_FILE", str(tmp_path / "synchronized"))
    assert migrated.ok("status").splitlines() == [
        f"database  {migrated.db} ({'PostgreSQL' if on_server(migrated) else 'durability full'})",
        "worker    not running",
        "queue     0 ready, 0 scheduled",
        "recovery  none yet (no worker has started)",
        "clock     not synchronised (flag file)",
        "no jobs",
    ]
    migrated.ok("jobs", "add", "hb", "--command", "true", "--every", "30s")
    lines = migrated.ok("status").splitlines()
    assert lines[6].split() == ["JOB", "SCHEDULE", "NEXT", "RUN", "LAST", "RESULT", "OK",
                                "FAILED", "CANCELLED", "RUNNING", "WAITING"]
    assert lines[7].split()[:3] == ["hb", "every", "30s"]
    assert lines[7].split()[-6:] == ["-", "0", "0", "0", "0", "1"]


def test_after_a_restart_status_shows_the_last_real_outcome_and_overdue_runs(migrated):
    from datetime import timedelta

    from edgeworker.clock import display, to_text, utcnow
    from edgeworker.models import Task

    migrated.ok("jobs", "add", "hb", "--command", "true", "--every", "30s")
    now = utcnow()
    finished = now - timedelta(hours=1)
    Task.update(status="succeeded", started_at=finished, finished_at=finished,
                scheduled_for=finished, due_at=finished).where(Task.id == 1).execute()
    slot = now - timedelta(minutes=59)  # the worker stopped with this slot pending
    Task.insert(job=1, status="created", origin="schedule", scheduled_for=slot, due_at=slot,
                created_at=finished).execute()
    assert "cancelled 1, scheduled 1" in migrated.ok("recover")  # as at a start: superseded
    assert Task.get_by_id(2).status == "cancelled"

    [job] = json.loads(migrated.ok("status", "--json"))["jobs"]
    assert (job["last_status"], job["last_finished_at"]) == ("succeeded", to_text(finished))
    assert job["overdue"] is False
    row = migrated.ok("status").splitlines()[7]
    assert f"succeeded {display(finished)}" in row

    # The worker is down: the next run's time passes.
    overdue_since = now - timedelta(minutes=5)
    from edgeworker.db import open_database

    database = open_database(migrated.db)  # status left the models on a read-only handle
    with database.atomic():
        p = database.param
        database.execute_sql(f"UPDATE tasks SET due_at = {p}, scheduled_for = {p} WHERE id = 3",
                             (to_text(overdue_since),) * 2)
    database.close()
    [job] = json.loads(migrated.ok("status", "--json"))["jobs"]
    assert (job["next_run_at"], job["overdue"]) == (to_text(overdue_since), True)
    row = migrated.ok("status").splitlines()[7]
    assert f"overdue since {display(overdue_since)}" in row
    assert f"overdue since {display(overdue_since)}" in migrated.ok("jobs", "list")
