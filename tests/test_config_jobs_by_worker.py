"""Workers with config files of their own on one PostgreSQL database: a sync keeps the jobs that
another worker's config has (`jobs.defined_by`), and on SQLite a config is the whole truth."""

from __future__ import annotations

from edgeworker.clock import utcnow
from edgeworker.config import parse_config
from edgeworker.jobs import sync_jobs
from edgeworker.ledger import Ledger
from edgeworker.models import Job, Task, tags_of


def jobs(*names: str, every: str = "1m") -> tuple:
    return parse_config("".join(f'[[jobs]]\nname = "{name}"\ncommand = "true"\nevery = "{every}"\n'
                                for name in names)).jobs


def catalog() -> dict[str, tuple[str, ...]]:
    return {job.name: tags_of(job.defined_by) for job in Job.select()}


def test_workers_with_different_configs_keep_each_others_jobs(pg_database):
    a, b = Ledger(pg_database, worker="gw-a"), Ledger(pg_database, worker="gw-b")
    assert sync_jobs(a, jobs("shared", "only-a"), utcnow()).added == ["shared", "only-a"]
    report = sync_jobs(b, jobs("shared", "only-b"), utcnow())
    assert (report.added, report.unchanged, report.removed, report.kept) == (
        ["only-b"], ["shared"], [], ["only-a"])
    assert catalog() == {"shared": ("gw-a", "gw-b"), "only-a": ("gw-a",), "only-b": ("gw-b",)}
    # every job still has its one waiting run after the other worker's sync
    waiting = Task.select(Job.name).join(Job, on=Task.job == Job.id).where(
        Task.status == "created")
    assert sorted(row.job.name for row in waiting) == ["only-a", "only-b", "shared"]

    # gw-a drops "shared": gw-b's config still has it; then gw-b drops it too: it goes
    report = sync_jobs(a, jobs("only-a"), utcnow())
    assert (report.kept, report.removed) == (["shared", "only-b"], [])
    assert "2 kept for other workers' configs (shared, only-b)" in report.summary()
    assert catalog()["shared"] == ("gw-b",)
    assert sync_jobs(b, jobs("only-b"), utcnow()).removed == ["shared"]
    assert set(catalog()) == {"only-a", "only-b"}

    # a config that changes a job another config has: the last sync sets it, and says so
    report = sync_jobs(b, jobs("only-b", "only-a", every="5m"), utcnow())
    assert report.updated == ["only-b", "only-a"]  # in the config's order
    assert "only-a changed, also in the config of gw-a" in report.summary()
    assert Job.get(Job.name == "only-a").every_seconds == 300


def test_a_config_job_no_worker_is_known_to_define_is_any_syncs(pg_database):
    # made before migration 022 or copied from SQLite: defined_by NULL
    setup = Ledger(pg_database, worker="gw-a")
    sync_jobs(setup, jobs("old"), utcnow())
    Job.update(defined_by=None).execute()
    report = sync_jobs(Ledger(pg_database, worker="gw-b"), jobs("new"), utcnow())
    assert (report.added, report.removed) == (["new"], ["old"])


def test_on_sqlite_the_config_is_the_whole_truth(database):
    sync_jobs(Ledger(database, worker="old-hostname"), jobs("a", "b"), utcnow())
    report = sync_jobs(Ledger(database, worker="new-hostname"), jobs("a"), utcnow())
    assert (report.removed, report.kept) == (["b"], [])
    assert catalog() == {"a": ()}


def test_jobs_sync_and_show_say_whose_configs_have_a_job(run_cli, pg_url, tmp_path):
    run_cli.db = pg_url
    run_cli.ok("migrate")
    job = '[[jobs]]\nname = "{}"\ncommand = "true"\nevery = "1m"\n'
    for name, jobs in (("gw-a", ("shared", "only-a")), ("gw-b", ("shared",))):
        (tmp_path / f"{name}.toml").write_text(f'[worker]\nname = "{name}"\n'
                                               + "".join(job.format(j) for j in jobs))
    run_cli.ok("jobs", "sync", config=tmp_path / "gw-a.toml")
    run_cli.ok("jobs", "sync", config=tmp_path / "gw-b.toml")
    assert "source          config (the config of gw-a, gw-b)" in run_cli.ok(
        "jobs", "show", "shared").splitlines()
    (tmp_path / "gw-a.toml").write_text('[worker]\nname = "gw-a"\n' + job.format("only-a"))
    synced = run_cli.ok("jobs", "sync", config=tmp_path / "gw-a.toml")
    assert synced.endswith("0 removed, 1 unchanged, 1 kept for other workers' configs (shared)\n")
    assert "source          config (the config of gw-b)" in run_cli.ok(
        "jobs", "show", "shared").splitlines()
