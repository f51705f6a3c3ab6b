import json

import pytest


@pytest.fixture
def migrated(migrated_any):
    """Each test runs on SQLite and on PostgreSQL."""
    return migrated_any


def jobs_json(cli):
    return json.loads(cli.ok("jobs", "list", "--json"))


def test_add_list_pause_resume_remove(migrated):
    assert migrated.ok("jobs", "add", "hb", "--command", "echo hi", "--every", "30s") == \
        'added job "hb" (every 30s)\n'
    [job] = jobs_json(migrated)
    assert {k: job[k] for k in ("name", "kind", "target", "schedule", "every_seconds", "enabled",
                                "paused", "source", "running", "last_status")} == {
        "name": "hb", "kind": "command", "target": "echo hi", "schedule": "every 30s",
        "every_seconds": 30.0, "enabled": True, "paused": False, "source": "cli",
        "running": False, "last_status": None}
    assert job["next_run_at"] is not None
    tasks = json.loads(migrated.ok("tasks", "list", "--json"))
    assert [(t["job"], t["status"], t["origin"]) for t in tasks] == [("hb", "created",
                                                                      "schedule")]

    assert migrated.ok("jobs", "pause", "hb") == 'paused job "hb"\n'
    assert migrated.ok("jobs", "pause", "hb") == 'job "hb" was already paused\n'
    [job] = jobs_json(migrated)
    assert (job["paused"], job["next_run_at"]) == (True, None)
    [task] = json.loads(migrated.ok("tasks", "list", "--json"))
    assert (task["status"], task["error"]) == ("cancelled", "job paused")

    assert migrated.ok("jobs", "resume", "hb") == 'resumed job "hb"\n'
    assert migrated.ok("jobs", "resume", "hb") == 'job "hb" was not paused\n'
    statuses = [t["status"] for t in json.loads(migrated.ok("tasks", "list", "--json"))]
    assert statuses == ["created", "cancelled"]

    assert migrated.ok("jobs", "remove", "hb") == 'removed job "hb"\n'
    assert migrated.ok("jobs", "list") == "no jobs\n"
    # history stays, with its job's name
    rows = json.loads(migrated.ok("tasks", "list", "--json"))
    assert [(t["job"], t["job_id"], t["status"]) for t in rows] == [
        ("hb", None, "cancelled"), ("hb", None, "cancelled")]


def test_add_every_kind_of_option(migrated):
    migrated.ok("jobs", "add", "rep", "--callable", "json:dumps", "--cron", "0 2 * * *",
                "--timezone", "UTC", "--timeout", "5m", "--max-attempts", "4",
                "--retry-delay", "1m", "--catch-up", "all", "--catch-up-limit", "3",
                "--jitter", "10s", "--env", "A=1", "--env", "B=x=y", "--disabled")
    [job] = jobs_json(migrated)
    assert {k: job[k] for k in ("kind", "target", "cron", "timezone", "timeout_seconds",
                                "max_attempts", "retry_delay_seconds", "catch_up",
                                "catch_up_limit", "jitter_seconds", "enabled")} == {
        "kind": "callable", "target": "json:dumps", "cron": "0 2 * * *", "timezone": "UTC",
        "timeout_seconds": 300.0, "max_attempts": 4, "retry_delay_seconds": 60.0,
        "catch_up": "all", "catch_up_limit": 3, "jitter_seconds": 10.0, "enabled": False}
    assert migrated.ok("tasks", "list") == "no tasks\n"  # disabled: nothing scheduled


@pytest.mark.parametrize("args, message", [
    (["--command", "x", "--every", "1 minute"],
     "Error: --every: '1 minute' is not a duration such as 500ms, 30s, 5m, 1h30m or 7d\n"),
    (["--command", "x"],
     "Error: give exactly one schedule: 'every' (e.g. \"30s\") or 'cron' (e.g. \"*/5 * * * *\")\n"),
    (["--every", "1s"], "Error: give exactly one of 'command' (a program to run) or 'callable' "
                        "(package.module:function)\n"),
    (["--command", "x", "--cron", "* * *"],
     "Error: --cron: '* * *' is not a 5-field cron expression (minute hour day-of-month month "
     "day-of-week, e.g. \"*/5 * * * *\")\n"),
    (["--callable", "no_such_module_xyz:run", "--every", "1m"],
     "Error: callable \"no_such_module_xyz:run\": cannot import no_such_module_xyz: "
     "ModuleNotFoundError: No module named 'no_such_module_xyz'\n"),
    (["--callable", "json:nope", "--every", "1m"],
     'Error: callable "json:nope": json has no attribute "nope"\n'),
    (["--command", "x", "--every", "1s", "--env", "NOEQUALS"],
     "Error: --env: 'NOEQUALS' is not KEY=VALUE\n"),
])
def test_add_rejects_bad_options(migrated, args, message):
    result = migrated("jobs", "add", "j", *args)
    assert (result.exit_code, result.stderr) == (1, message)
    assert migrated.ok("jobs", "list") == "no jobs\n"


def test_add_rejects_bad_name_and_duplicates(migrated):
    result = migrated("jobs", "add", "a b", "--command", "x", "--every", "1s")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: NAME: 'a b' is not a valid job name")
    migrated.ok("jobs", "add", "a", "--command", "x", "--every", "1s")
    result = migrated("jobs", "add", "a", "--command", "y", "--every", "1s")
    assert (result.exit_code, result.stderr) == (
        1, 'Error: a job named "a" already exists (from cli); '
           "remove it first or choose another name\n")


@pytest.mark.parametrize("command", ["remove", "pause", "resume", "run", "show"])
def test_unknown_job(migrated, command):
    result = migrated("jobs", command, "ghost")
    assert (result.exit_code, result.stderr) == (
        1, 'Error: no job named "ghost" (see `edgeworker jobs list`)\n')


CONFIG = '''
[[jobs]]
name = "one"
command = "true"
every = "1m"

[[jobs]]
name = "two"
command = "true"
every = "5m"
'''


def test_sync_adds_updates_and_removes_config_jobs_only(migrated, tmp_path):
    config = tmp_path / "ew.toml"
    config.write_text(CONFIG)
    migrated.ok("jobs", "add", "mine", "--command", "true", "--every", "1h")
    assert migrated.ok("jobs", "sync", config=config) == (
        f"synced {config}: 2 added, 0 updated, 0 removed, 0 unchanged\n")
    assert migrated.ok("jobs", "sync", config=config) == (
        f"synced {config}: 0 added, 0 updated, 0 removed, 2 unchanged\n")
    migrated.ok("jobs", "pause", "one")
    config.write_text(CONFIG.replace('every = "5m"', 'every = "10m"').replace(
        'name = "one"', 'name = "uno"'))
    assert migrated.ok("jobs", "sync", config=config) == (
        f"synced {config}: 1 added, 1 updated, 1 removed, 0 unchanged\n")
    jobs = {j["name"]: j for j in jobs_json(migrated)}
    assert set(jobs) == {"uno", "two", "mine"}
    assert jobs["two"]["every_seconds"] == 600.0
    assert jobs["mine"]["source"] == "cli"
    # the rescheduled job has exactly one waiting run, on the new schedule
    two = [t for t in json.loads(migrated.ok("tasks", "list", "--job", "two", "--json"))]
    assert [(t["status"], t["error"]) for t in two] == [("created", None),
                                                         ("cancelled", "schedule changed")]


def test_sync_keeps_an_operators_pause(migrated, tmp_path):
    config = tmp_path / "ew.toml"
    config.write_text(CONFIG)
    migrated.ok("jobs", "sync", config=config)
    migrated.ok("jobs", "pause", "one")
    migrated.ok("jobs", "sync", config=config)
    assert {j["name"]: j["paused"] for j in jobs_json(migrated)} == {"one": True, "two": False}


def test_sync_refuses_a_clash_with_a_cli_job(migrated, tmp_path):
    config = tmp_path / "ew.toml"
    config.write_text(CONFIG)
    migrated.ok("jobs", "add", "one", "--command", "true", "--every", "1h")
    result = migrated("jobs", "sync", config=config)
    assert (result.exit_code, result.stderr) == (
        1, 'Error: job "one" in the config file clashes with a job of that name added with '
           "`jobs add`; remove one of them\n")
    assert [j["name"] for j in jobs_json(migrated)] == ["one"]  # nothing half-synced


def test_sync_without_config(migrated):
    result = migrated("jobs", "sync")
    assert (result.exit_code, result.stderr) == (
        1, "Error: no config file to sync from: give --config or $EDGEWORKER_CONFIG, or create "
           "./edgeworker.toml\n")


def test_run_queues_a_manual_task(migrated):
    migrated.ok("jobs", "add", "hb", "--command", "true", "--every", "1h")
    assert migrated.ok("jobs", "run", "hb") == (
        'queued task 2 for job "hb" (no worker is running: it runs when one starts)\n')
    tasks = json.loads(migrated.ok("tasks", "list", "--json"))
    assert [(t["id"], t["origin"], t["status"]) for t in tasks] == [
        (2, "manual", "created"), (1, "schedule", "created")]


@pytest.mark.parametrize("args, message", [
    (["--command", "x", "--cron", "0 0 31 2 *"],
     "Error: --cron: '0 0 31 2 *' never fires: no date matches it (within 8 years)\n"),
    (["--command", "x", "--every", "400d"],
     "Error: --every: '400d' is longer than 365d, the most allowed\n"),
    (["--command", "x", "--every", "1m", "--timeout", "9999999999d"],
     "Error: --timeout: '9999999999d' is longer than 365d, the most allowed\n"),
    (["--command", "x", "--every", "1m", "--retry-delay", "1000d"],
     "Error: --retry-delay: '1000d' is longer than 365d, the most allowed\n"),
    (["--command", "x", "--every", "30s", "--jitter", "30s"],
     "Error: --jitter: 30s is not shorter than the period (every = 30s)\n"),
    (["--command", "x", "--cron", "*/5 * * * *", "--jitter", "10m"],
     "Error: --jitter: 10m is not shorter than the shortest gap between two runs of "
     "\"*/5 * * * *\" (5m)\n"),
])
def test_add_refuses_what_the_worker_could_not_schedule(migrated, args, message):
    result = migrated("jobs", "add", "j", *args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", message)
    assert migrated.ok("jobs", "list") == "no jobs\n"
    assert migrated.ok("tasks", "list") == "no tasks\n"


def test_add_accepts_a_leap_day_job(migrated):
    assert migrated.ok("jobs", "add", "leap", "--command", "x", "--cron", "0 0 29 2 *",
                       "--timezone", "UTC") == 'added job "leap" (cron 0 0 29 2 * (UTC))\n'


def test_add_an_isolated_callable(migrated, tmp_path, monkeypatch):
    (tmp_path / "isojobs.py").write_text("def run(ctx):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    migrated.ok("jobs", "add", "iso", "--callable", "isojobs:run", "--every", "1m", "--isolate")
    migrated.ok("jobs", "add", "inthread", "--callable", "isojobs:run", "--every", "1m")
    listing = {j["name"]: j for j in jobs_json(migrated)}
    assert (listing["iso"]["isolate"], listing["iso"]["shell"]) == (True, False)
    assert listing["inthread"]["isolate"] is False
    result = migrated("jobs", "add", "x", "--command", "true", "--every", "1m", "--isolate")
    assert (result.exit_code, result.stderr) == (
        1, "Error: --isolate: only applies to 'callable' jobs (a command runs in its own process "
           "already)\n")


def test_jobs_run_of_a_paused_job_is_refused(migrated):
    migrated.ok("jobs", "add", "p", "--command", "true", "--every", "1h")
    migrated.ok("jobs", "pause", "p")
    result = migrated("jobs", "run", "p")
    assert result.exit_code != 0
    assert result.stderr.strip() == ('Error: job "p" is paused: resume it first '
                                     "(edgeworker jobs resume p)")
