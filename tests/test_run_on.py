"""Jobs pinned to workers by tag: `run_on` (a job's config, `jobs add --run-on`), `[worker] tags`,
the claim that passes over a run no tag of the worker's matches, and what shows it."""

from __future__ import annotations

import json
import signal
import threading
from datetime import timedelta

import pytest
from workerproc import WorkerProcess, wait_for

from edgeworker.clock import utcnow
from edgeworker.config import JobSpec, parse_config
from edgeworker.errors import ConfigError
from edgeworker.jobs import add_job, sync_jobs
from edgeworker.ledger import Ledger, Outcome
from edgeworker.models import Job, Task

JOB = '[[jobs]]\nname = "j"\ncommand = "true"\nevery = "1m"\n'


def test_run_on_and_worker_tags_are_read_from_the_config():
    config = parse_config('[worker]\ntags = ["site-b", "gw", "site-b"]\n'
                          + JOB + 'run_on = ["site-a", "gw"]\n'
                          + JOB.replace('"j"', '"k"') + 'run_on = "site-a"\n'
                          + JOB.replace('"j"', '"l"'))
    assert config.worker.tags == ("gw", "site-b")
    assert [job.run_on for job in config.jobs] == [("gw", "site-a"), ("site-a",), ()]
    assert parse_config("").worker.tags == ()


@pytest.mark.parametrize("value, message", [
    ("5", 'config:5: job "j": run_on: must be a tag or a list of tags, e.g. ["site-a"]'),
    ("[]", 'config:5: job "j": run_on: must be a tag or a list of tags, e.g. ["site-a"]'),
    ('["a", 1]', 'config:5: job "j": run_on: must be a tag or a list of tags, e.g. ["site-a"]'),
    ('["site a"]', "config:5: job \"j\": run_on: 'site a' is not a valid tag (letters, digits, "
                   "'_', '.', '-'; at most 64 characters, starting with a letter or digit)"),
    ('{ tag = "a" }', 'config:5: job "j": run_on: must be a tag or a list of tags, e.g. '
                      '["site-a"]'),
])
def test_a_bad_run_on_is_one_line(value, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(JOB + f"run_on = {value}\n")
    assert str(caught.value) == message


def test_bad_worker_tags_are_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_config('[worker]\ntags = ["ok", "-no"]\n')
    assert str(caught.value) == (
        "config:2: [worker] tags: '-no' is not a valid tag (letters, digits, '_', '.', '-'; at "
        "most 64 characters, starting with a letter or digit)")


def test_the_cli_adds_lists_and_shows_run_on(migrated_any):
    cli = migrated_any
    result = cli("jobs", "add", "j", "--command", "true", "--every", "1m", "--run-on", "a b")
    assert (result.exit_code, result.stderr) == (
        1, "Error: --run-on: 'a b' is not a valid tag (letters, digits, '_', '.', '-'; at most 64 "
           "characters, starting with a letter or digit)\n")
    cli.ok("jobs", "add", "plain", "--command", "true", "--every", "1m")
    assert cli.ok("jobs", "list").splitlines()[0].split() == [
        "NAME", "KIND", "SCHEDULE", "ENABLED", "NEXT", "RUN", "SOURCE", "TARGET"]  # as before
    cli.ok("jobs", "add", "pinned", "--command", "true", "--every", "1m",
           "--run-on", "site-b", "--run-on", "site-a")
    lines = cli.ok("jobs", "list").splitlines()
    assert lines[0].split()[:5] == ["NAME", "KIND", "SCHEDULE", "RUN", "ON"]
    assert lines[1].split()[4] == "site-a,site-b" and lines[2].split()[4] == "-"
    assert {j["name"]: j["run_on"] for j in json.loads(cli.ok("jobs", "list", "--json"))} == {
        "pinned": ["site-a", "site-b"], "plain": []}
    shown = cli.ok("jobs", "show", "pinned").splitlines()
    assert "run on          site-a, site-b" in shown
    assert ("waiting         no live worker carries a tag of run_on (site-a, site-b); no worker "
            "is up") in shown
    assert "run on          any worker" in cli.ok("jobs", "show", "plain").splitlines()
    detail = json.loads(cli.ok("jobs", "show", "plain", "--json"))
    assert (detail["run_on"], detail["claimed_by"], detail["waiting"]) == ([], [], None)


def test_a_changed_run_on_is_synced(database, tmp_path):
    ledger = Ledger(database, worker="t:1")
    now = utcnow()
    sync_jobs(ledger, parse_config(JOB + 'run_on = ["a"]\n').jobs, now)
    [before] = Task.select()
    report = sync_jobs(ledger, parse_config(JOB + 'run_on = ["b", "a"]\n').jobs, now)
    assert report.updated == ["j"] and Job.get().run_on == '["a", "b"]'
    assert list(Task.select()) == [before]  # its waiting run stays: the claim reads run_on
    sync_jobs(ledger, parse_config(JOB).jobs, now)
    assert Job.get().run_on is None


def add(ledger, name, now, run_on=()):
    return add_job(ledger, JobSpec(name=name, kind="command", target="true", every=3600.0,
                                   run_on=tuple(run_on)), now)


def claims_all(ledger, later) -> list[str]:
    names = []
    while (run := ledger.claim(later)) is not None:
        names.append(run.job.name)
        ledger.finish(run, Outcome(True, 0, None, ""), later)
    return sorted(names)


def test_the_claim_takes_only_runs_for_the_workers_tags(any_database):
    now = utcnow()
    setup = Ledger(any_database, worker="setup:1")
    for name, run_on in (("any", ()), ("a", ("site-a",)), ("b", ("site-b",)),
                         ("ab", ("site-a", "site-b")), ("named", ("gateway-2",))):
        add(setup, name, now, run_on)
    later = now + timedelta(hours=2)
    untagged = Ledger(any_database, worker="u:1")
    assert claims_all(untagged, later) == ["any"]
    site_b = Ledger(any_database, worker="b:1", tags=("site-b",))
    assert claims_all(site_b, later) == ["ab", "b"]
    site_a = Ledger(any_database, worker="a:1", tags=("site-a",))
    assert site_a.due(later) and site_a.next_due() is not None
    assert claims_all(site_a, later) == ["a"]
    # what is left waits for its tag: an idle worker does not see it due, nor wake for it (its
    # next is its own job's next run, an hour on)
    assert not site_a.due(later) and site_a.next_due() > later
    named = Task.get(Task.job == Job.get(Job.name == "named").id)
    assert (named.status, named.due_at < later) == ("created", True)
    # a worker's name that is a valid tag is one of its tags (stable worker names)
    assert claims_all(Ledger(any_database, worker="gateway-2"), later) == ["named"]


@pytest.mark.timeout(60)
def test_two_postgresql_workers_with_different_tags_each_run_only_their_jobs(pg_database):
    now = utcnow()
    setup = Ledger(pg_database, worker="setup:1")
    jobs = {name: add(setup, name, now, run_on) for name, run_on in (
        ("a1", ("site-a",)), ("a2", ("site-a",)), ("b1", ("site-b",)), ("b2", ("site-b",)),
        ("any", ()))}
    Task.delete().execute()
    for job in jobs.values():
        for _ in range(5):
            setup.run_now(job, now)
    workers = {"wa:1": ("site-a",), "wb:2": ("site-b",)}
    taken: dict[str, list[str]] = {name: [] for name in workers}
    barrier = threading.Barrier(len(workers))

    def work(name: str) -> None:
        ledger = Ledger(pg_database, worker=name, tags=workers[name])
        try:
            barrier.wait(10)
            while (run := ledger.claim(now)) is not None:
                taken[name].append(run.job.name)
                ledger.finish(run, Outcome(True, 0, None, ""), now)
        finally:
            pg_database.close()

    threads = [threading.Thread(target=work, args=(name,)) for name in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert {job for job in taken["wa:1"]} <= {"a1", "a2", "any"}
    assert {job for job in taken["wb:2"]} <= {"b1", "b2", "any"}
    assert len(taken["wa:1"]) + len(taken["wb:2"]) == 25
    rows = pg_database.execute_sql(
        "SELECT j.name, t.worker, t.status FROM tasks t JOIN jobs j ON j.id = t.job_id").fetchall()
    assert {status for _, _, status in rows} == {"succeeded"}
    assert {(name[0], worker) for name, worker, _ in rows if name != "any"} == {
        ("a", "wa:1"), ("b", "wb:2")}


@pytest.mark.timeout(90)
def test_a_worker_with_tags_runs_its_jobs_and_not_another_sites(tmp_path):
    config = ('tags = ["site-a"]\n\n'
              '[[jobs]]\nname = "mine"\ncommand = "true"\nevery = "1s"\nrun_on = ["site-a"]\n\n'
              '[[jobs]]\nname = "anyone"\ncommand = "true"\nevery = "1s"\n\n'
              '[[jobs]]\nname = "theirs"\ncommand = "true"\nevery = "1s"\n'
              'run_on = ["site-b"]\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        for name in ("mine", "anyone"):
            worker.wait_tasks("job = ? AND status = 'succeeded'", count=2, params=(name,))
        theirs = worker.tasks("job = 'theirs'")
        assert [(t["status"], t["attempt"], t["started_at"]) for t in theirs] == [
            ("created", 0, None)]
        [view] = wait_for(lambda: json.loads(worker.cli("status", "--json").stdout)["workers"],
                          what="the worker's row", log=worker.log)
        assert view["tags"] == ["site-a"]
        shown = worker.cli("jobs", "show", "theirs").stdout.splitlines()
        assert (f"waiting         no live worker carries a tag of run_on (site-b); workers up: "
                f"{view['name']} (site-a)") in shown
        mine = worker.cli("jobs", "show", "mine").stdout.splitlines()
        assert f"taken by        {view['name']}" in mine
        assert worker.stop() == 0


@pytest.mark.timeout(90)
def test_a_reload_gives_the_worker_its_new_tags(tmp_path):
    jobs = ('[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1s"\nrun_on = ["site-a"]\n\n'
            '[[jobs]]\nname = "b"\ncommand = "true"\nevery = "1s"\nrun_on = ["site-b"]\n')
    with WorkerProcess(tmp_path, 'tags = ["site-a"]\n\n' + jobs) as worker:
        worker.start().wait_running()
        worker.wait_tasks("job = 'a' AND status = 'succeeded'", count=2)  # b was due as often
        assert worker.tasks("job = 'b' AND status != 'created'") == []
        worker.config.write_text(worker.config.read_text().replace('"site-a"', '"site-b"'))
        worker.send(signal.SIGHUP)
        worker.wait_tasks("job = 'b' AND status = 'succeeded'")
        [view] = json.loads(worker.cli("status", "--json").stdout)["workers"]
        assert view["tags"] == ["site-b"]
        assert worker.stop() == 0
