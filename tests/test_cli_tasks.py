import json

import pytest

from edgeworker.clock import from_text, utcnow
from edgeworker.models import Task


@pytest.fixture
def migrated(migrated_any):
    """Each test runs on SQLite and on PostgreSQL."""
    return migrated_any


def test_list_filters_and_show(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "add", "b", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "run", "a")
    rows = json.loads(migrated.ok("tasks", "list", "--job", "a", "--json"))
    assert [(r["id"], r["job"], r["origin"]) for r in rows] == [(3, "a", "manual"),
                                                                (1, "a", "schedule")]
    assert json.loads(migrated.ok("tasks", "list", "--status", "running", "--json")) == []
    assert len(json.loads(migrated.ok("tasks", "list", "--limit", "1", "--json"))) == 1
    assert sorted(rows[0]) == sorted([
        "id", "job", "job_id", "status", "origin", "scheduled_for", "due_at", "attempt",
        "recovered_count", "created_at", "started_at", "finished_at", "exit_code", "error",
        "worker"])

    shown = json.loads(migrated.ok("tasks", "show", "3", "--json"))
    assert shown["output"] is None and shown["status"] == "created"
    text = migrated.ok("tasks", "show", "3")
    assert text.splitlines()[:3] == ["id              3", "job             a",
                                     "status          created"]
    assert text.endswith("output:         (none)\n")


def test_show_output_and_error(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    Task.update(status="failed", error="exit status 2", output="line 1\nline 2\n",
                exit_code=2, finished_at=utcnow()).where(Task.id == 1).execute()
    text = migrated.ok("tasks", "show", "1")
    assert text.endswith("error:\nexit status 2\noutput:\nline 1\nline 2\n")
    assert "exit_code       2\n" in text
    listing = migrated.ok("tasks", "list").splitlines()
    assert listing[1].split()[:3] == ["1", "a", "failed"]
    assert listing[1].endswith("exit status 2")


def test_unknown_task_and_job(migrated):
    result = migrated("tasks", "show", "42")
    assert (result.exit_code, result.stderr) == (1, "Error: no task with id 42\n")
    result = migrated("tasks", "list", "--job", "ghost")
    assert (result.exit_code, result.stderr) == (
        1, 'Error: no job named "ghost" (see `edgeworker jobs list`)\n')
    result = migrated("tasks", "list", "--status", "lost")
    assert result.exit_code == 2
    assert "Invalid value for '--status'" in result.stderr


def test_times_are_stored_as_fixed_width_utc_text(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    row = migrated.ok("tasks", "show", "1", "--json")
    scheduled = json.loads(row)["scheduled_for"]
    assert len(scheduled) == 27 and scheduled.endswith("Z")
    assert from_text(scheduled).minute == 0 and from_text(scheduled).second == 0


def fail_task(task_id: int, status: str = "failed", days_ago: float = 0):
    from datetime import timedelta

    Task.update(status=status, error="exit status 1", exit_code=1,
                finished_at=utcnow() - timedelta(days=days_ago)).where(Task.id == task_id).execute()


def test_retry_queues_a_new_run_for_the_same_slot(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    fail_task(1)
    assert migrated.ok("tasks", "retry", "1") == "queued task 2 to retry task 1\n"
    first, second = (json.loads(migrated.ok("tasks", "show", str(i), "--json")) for i in (1, 2))
    assert (second["status"], second["origin"]) == ("created", "manual")
    assert second["scheduled_for"] == first["scheduled_for"]


def test_retry_refuses_unfinished_and_orphaned_tasks(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    result = migrated("tasks", "retry", "1")
    assert (result.exit_code, result.stderr) == (
        1, "Error: task 1 is created; only failed or cancelled tasks can be retried\n")
    fail_task(1)
    migrated.ok("jobs", "remove", "a")
    result = migrated("tasks", "retry", "1")
    assert (result.exit_code, result.stderr) == (1, "Error: task 1's job no longer exists\n")
    assert migrated("tasks", "retry", "99").stderr == "Error: no task with id 99\n"


def test_prune_deletes_old_finished_tasks_only(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "run", "a")
    migrated.ok("jobs", "run", "a")
    fail_task(2, days_ago=10)
    fail_task(3, "cancelled", days_ago=1)
    assert migrated.ok("tasks", "prune", "--older-than", "7d") == (
        "pruned 1 finished task(s) older than 7d\n")
    assert [t["id"] for t in json.loads(migrated.ok("tasks", "list", "--json"))] == [3, 1]
    result = migrated("tasks", "prune", "--older-than", "a week")
    assert (result.exit_code, result.stderr) == (
        1, "Error: --older-than: 'a week' is not a duration such as 500ms, 30s, 5m, 1h30m or "
           "7d\n")


def test_a_removed_jobs_history_keeps_its_name(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "add", "b", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "run", "a")
    fail_task(3)
    assert migrated.ok("jobs", "remove", "a") == 'removed job "a"\n'

    rows = json.loads(migrated.ok("tasks", "list", "--job", "a", "--json"))
    assert [(r["id"], r["job"], r["job_id"], r["status"]) for r in rows] == [
        (3, "a", None, "failed"), (1, "a", None, "cancelled")]
    listing = migrated.ok("tasks", "list").splitlines()
    assert [line.split()[:4] for line in listing[1:]] == [
        ["3", "a", "(removed)", "failed"], ["2", "b", "created", "schedule"],
        ["1", "a", "(removed)", "cancelled"]]
    assert migrated.ok("tasks", "show", "3").splitlines()[1] == "job             a (removed)"
    assert migrated.ok("tasks", "list", "--job", "a", "--status", "running") == "no tasks\n"
    assert [r["id"] for r in json.loads(migrated.ok("tasks", "list", "--job", "b", "--json"))] \
        == [2]  # the other job's rows keep no name of their own

    # A new job of the same name: its runs and the old ones, newest first.
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    rows = json.loads(migrated.ok("tasks", "list", "--job", "a", "--json"))
    assert [(r["id"], r["job_id"]) for r in rows] == [(4, 3), (3, None), (1, None)]
    assert [r["id"] for r in json.loads(migrated.ok("tasks", "list", "--job", "a", "--limit",
                                                    "2", "--json"))] == [4, 3]


def test_a_job_removed_from_the_config_keeps_its_name(migrated, tmp_path):
    config = tmp_path / "ew.toml"
    config.write_text('[[jobs]]\nname = "c"\ncommand = "true"\nevery = "365d"\n')
    migrated.ok("jobs", "sync", config=config)
    config.write_text("")
    migrated.ok("jobs", "sync", config=config)
    [row] = json.loads(migrated.ok("tasks", "list", "--job", "c", "--json"))
    assert (row["job"], row["job_id"], row["status"], row["error"]) == (
        "c", None, "cancelled", "job removed from the config file")


def test_a_pruned_task_id_is_never_handed_out_again(migrated):
    # EDGEWORKER_TASK_ID is an idempotency key: a new run must never repeat an old run's id
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "run", "a")
    fail_task(2, days_ago=10)
    migrated.ok("tasks", "prune", "--older-than", "7d")
    assert migrated.ok("jobs", "run", "a") == 'queued task 3 for job "a" (no worker is running: ' \
                                              'it runs when one starts)\n'


def who() -> str:
    import os
    import pwd

    return f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"


def test_cancel_a_waiting_scheduled_run_schedules_the_next(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    assert migrated.ok("tasks", "cancel", "1") == "cancelled task 1 (job a): it had not started\n"
    rows = json.loads(migrated.ok("tasks", "list", "--job", "a", "--json"))
    [waiting] = [t for t in rows if t["status"] == "created"]
    [cancelled] = [t for t in rows if t["id"] == 1]
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", f"cancelled by {who()}")
    assert (waiting["origin"], from_text(waiting["scheduled_for"]) -
            from_text(cancelled["scheduled_for"])) == ("schedule", __import__(
                "datetime").timedelta(hours=1))


def test_cancel_a_waiting_manual_run(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "run", "a")
    assert migrated.ok("tasks", "cancel", "2") == "cancelled task 2 (job a): it had not started\n"
    statuses = {t["id"]: t["status"] for t in json.loads(migrated.ok("tasks", "list", "--json"))}
    assert statuses == {1: "created", 2: "cancelled"}  # the schedule is untouched


def test_cancel_refuses_finished_unknown_and_running_callables(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    fail_task(1)
    result = migrated("tasks", "cancel", "1")
    assert (result.exit_code, result.stderr) == (
        1, "Error: task 1 is failed; only a waiting or running task can be cancelled\n")
    result = migrated("tasks", "cancel", "99")
    assert (result.exit_code, result.stderr) == (1, "Error: no task with id 99\n")
    migrated.ok("jobs", "add", "c", "--callable", "json:dumps", "--every", "1h")
    Task.update(status="running", attempt=1, started_at=utcnow()).where(Task.id == 2).execute()
    result = migrated("tasks", "cancel", "2")
    assert (result.exit_code, result.stderr) == (
        1, "Error: task 2 is a running callable (job c): it runs inside the worker and cannot be "
           "stopped; `isolate = true` on the job runs it in a process that can be\n")
    assert Task.get_by_id(2).status == "running"


def test_cancel_a_run_a_dead_worker_left_running(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    Task.update(status="running", attempt=1, started_at=utcnow()).where(Task.id == 1).execute()
    assert migrated.ok("tasks", "cancel", "1") == (
        "cancelled task 1 (job a): no worker was running it; ended 0 leftover processes\n")
    statuses = sorted(t["status"] for t in json.loads(migrated.ok("tasks", "list", "--json")))
    assert statuses == ["cancelled", "created"]


def test_prune_with_an_age_past_any_date_is_a_one_line_error(migrated):
    result = migrated("tasks", "prune", "--older-than", "99999999d")
    assert (result.exit_code, result.stderr) == (
        1, "Error: --older-than: '99999999d' is more than 100 years\n")


def test_cancel_a_removed_jobs_run_names_the_job(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    Task.update(status="running", attempt=1, started_at=utcnow()).where(Task.id == 1).execute()
    migrated.ok("jobs", "remove", "a")  # a running run finishes, under its job's kept name
    assert migrated.ok("tasks", "cancel", "1") == (
        "cancelled task 1 (job a): no worker was running it; ended 0 leftover processes\n")
