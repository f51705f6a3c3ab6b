import json


def test_status_json_has_stable_keys(migrated):
    migrated.ok("jobs", "add", "hb", "--command", "true", "--every", "30s")
    data = json.loads(migrated.ok("status", "--json"))
    assert sorted(data) == ["clock", "database", "durability", "jobs", "last_recovery", "queue",
                            "worker"]
    assert data["last_recovery"] is None
    assert data["worker"] == {"running": False, "pid": None, "alert": None}
    assert data["queue"] == {"ready": 0, "scheduled": 1}
    assert data["durability"] == "full"
    [job] = data["jobs"]
    assert job["counts"] == {"created": 1, "running": 0, "succeeded": 0, "failed": 0,
                             "cancelled": 0}


def test_status_text(migrated, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEWORKER_CLOCK_SYNC_FILE", str(tmp_path / "synchronized"))
    assert migrated.ok("status").splitlines() == [
        f"database  {migrated.db} (durability full)",
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
