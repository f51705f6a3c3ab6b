import json


def test_status_json_has_stable_keys(migrated):
    migrated.ok("jobs", "add", "hb", "--command", "true", "--every", "30s")
    data = json.loads(migrated.ok("status", "--json"))
    assert sorted(data) == ["database", "durability", "jobs", "last_recovery", "queue",
                            "worker"]
    assert data["last_recovery"] is None
    assert data["worker"] == {"running": False, "pid": None, "alert": None}
    assert data["queue"] == {"ready": 0, "scheduled": 1}
    assert data["durability"] == "full"
    [job] = data["jobs"]
    assert job["counts"] == {"created": 1, "running": 0, "succeeded": 0, "failed": 0,
                             "cancelled": 0}


def test_status_text(migrated):
    assert migrated.ok("status").splitlines() == [
        f"database  {migrated.db} (durability full)",
        "worker    not running",
        "queue     0 ready, 0 scheduled",
        "recovery  none yet (no worker has started)",
        "no jobs",
    ]
    migrated.ok("jobs", "add", "hb", "--command", "true", "--every", "30s")
    lines = migrated.ok("status").splitlines()
    assert lines[5].split() == ["JOB", "SCHEDULE", "NEXT", "RUN", "LAST", "RESULT", "OK",
                                "FAILED", "CANCELLED", "RUNNING", "WAITING"]
    assert lines[6].split()[:3] == ["hb", "every", "30s"]
    assert lines[6].split()[-6:] == ["-", "0", "0", "0", "0", "1"]
