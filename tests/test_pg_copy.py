"""`edgeworker migrate --copy-from FILE`: an SQLite database made by a real worker, copied into a
database on the private PostgreSQL server. The CLI shows the same there, a worker started on it
recovers the run the SQLite worker was killed in and runs what was due, new ids follow the copied
ones, and the source file is left byte for byte as it was. Every refusal is one line, exit 1,
and changes nothing on either side."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from workerproc import WorkerProcess, wait_for

from edgeworker import db as dbmod
from edgeworker import migrate, postgres
from edgeworker.models import MODELS

psycopg2 = pytest.importorskip("psycopg2")

pytestmark = pytest.mark.timeout(120)


def digest(path: Path) -> dict[str, str]:
    """The database's files (the -wal holds committed pages too), by content."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (path, Path(f"{path}-wal")) if p.exists()}


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr.strip()


def pg_tables(url: str) -> list[str]:
    con = psycopg2.connect(url)
    try:
        cursor = con.cursor()
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                       "ORDER BY tablename")
        return [name for (name,) in cursor.fetchall()]
    finally:
        con.close()


def pg_rows(url: str, sql: str) -> list[tuple]:
    con = psycopg2.connect(url)
    try:
        cursor = con.cursor()
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        con.close()


class Worker(WorkerProcess):
    """A real `edgeworker run` on a file (`url` None) or on a PostgreSQL database."""

    def __init__(self, directory: Path, jobs: str, url: str | None = None, name: str = "ew"):
        config = f'[worker]\ndatabase = "{url}"\n{jobs}' if url else jobs
        super().__init__(directory, config, name)
        self.url = url

    def tasks(self, where: str = "TRUE", params: tuple = ()) -> list[dict]:
        if self.url is None:
            return super().tasks(where.replace("TRUE", "1"), params)
        from psycopg2.extras import RealDictCursor

        con = psycopg2.connect(self.url)
        try:
            cursor = con.cursor(cursor_factory=RealDictCursor)
            cursor.execute(
                "SELECT * FROM (SELECT tasks.*, jobs.name AS job FROM tasks LEFT JOIN jobs "
                f"ON jobs.id = tasks.job_id) AS t WHERE {where} ORDER BY id", params)
            return [dict(row) for row in cursor.fetchall()]
        finally:
            con.close()


def jobs_config(directory: Path) -> str:
    ran = directory / "ran"
    return f'''
[[jobs]]
name = "ok"
command = ["sh", "-c", "echo $EDGEWORKER_TASK_ID >> {directory / 'ok-ran'}"]
every = "1h"
ping_url = "http://127.0.0.1:9/"
[[jobs]]
name = "bad"
command = ["false"]
every = "1h"
max_attempts = 2
retry_delay = "1s"
on_failure = ["true"]
[[jobs]]
name = "slow"
command = ["sh", "-c", "echo $EDGEWORKER_TASK_ID $EDGEWORKER_RECOVERED >> {ran}; \
[ \\"$EDGEWORKER_RECOVERED\\" = 1 ] || sleep 60"]
cron = "0 0 1 1 *"
timezone = "UTC"
max_attempts = 3
[[jobs]]
name = "later"
command = ["true"]
every = "1h"
'''


def ew(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeworker", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def comparable(status: dict) -> dict:
    """What `status --json` says about the history (not where it is, nor what runs now)."""
    return {key: value for key, value in status.items()
            if key not in ("database", "durability", "clock", "worker")}


def test_a_worker_made_database_is_copied_and_a_worker_goes_on_from_it(tmp_path, pg_url):
    source_dir = tmp_path / "box"
    source_dir.mkdir()
    jobs = jobs_config(tmp_path)
    with Worker(source_dir, jobs) as box:
        box.start().wait_running()
        box.cli("jobs", "run", "ok")
        box.cli("jobs", "run", "bad")
        box.wait_tasks("job = 'ok' AND status = 'succeeded'", timeout=30)
        box.wait_tasks("job = 'bad' AND status = 'failed' AND attempt = 2", timeout=30)
        wait_for(lambda: box.query("SELECT count(*) FROM outbox")[0][0]
                 and box.query("SELECT count(*) FROM hook_runs")[0][0],
                 timeout=30, what="a ping in the outbox and a hook's record", log=box.log)
        box.cli("jobs", "run", "slow")
        [slow] = box.wait_tasks("job = 'slow' AND status = 'running'", timeout=30)
        wait_for(lambda: (tmp_path / "ran").exists(), 30, what="the slow run to start",
                 log=box.log)
        box.kill()  # SIGKILL: the slow run stays `running`, its worker gone
        box.end_leftovers()
    later = int(box.cli("jobs", "run", "later").stdout.split()[2])
    box.cli("tasks", "cancel", str(later))
    due_now = int(box.cli("jobs", "run", "ok").stdout.split()[2])
    states = {(t["job"], t["status"]) for t in box.tasks()}
    assert {("ok", "succeeded"), ("bad", "failed"), ("slow", "running"), ("later", "cancelled"),
            ("ok", "created"), ("bad", "created")} <= states  # ("bad", "created"): its next slot
    before = digest(box.db)
    status = json.loads(box.cli("status", "--json").stdout)
    listing = json.loads(box.cli("tasks", "list", "--json", "--limit", "1000").stdout)
    highest = max(t["id"] for t in listing)

    copied = ew("--db", pg_url, "migrate", "--copy-from", str(box.db), cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    lines = copied.stdout.splitlines()
    assert lines[:-1] == [f"applied {m.label}"
                          for m in migrate.discover(dialect="postgresql")]
    counts = {name: box.query(f"SELECT count(*) FROM {name}")[0][0]
              for name in (m._meta.table_name for m in MODELS)}
    assert all(counts.values()), counts  # every table had rows to copy
    assert lines[-1] == ("copied " + ", ".join(f"{n} {t}" for t, n in counts.items())
                         + f" from {box.db}")
    assert digest(box.db) == before

    on_server = json.loads(ew("--db", pg_url, "status", "--json", cwd=tmp_path).stdout)
    assert comparable(on_server) == comparable(status)
    assert on_server["last_recovery"] is not None
    assert json.loads(ew("--db", pg_url, "tasks", "list", "--json", "--limit", "1000",
                         cwd=tmp_path).stdout) == listing
    assert ew("--db", pg_url, "tasks", "show", str(slow["id"]), cwd=tmp_path).stdout == \
        box.cli("tasks", "show", str(slow["id"])).stdout

    with Worker(tmp_path, jobs, url=pg_url, name="server") as server:
        server.start().wait_running()
        [recovered] = server.wait_tasks("id = %s AND status = 'succeeded'", params=(slow["id"],),
                                          timeout=30)
        assert (recovered["recovered_count"], recovered["attempt"]) == (1, 2)
        assert (tmp_path / "ran").read_text().splitlines() == [f"{slow['id']} 0",
                                                               f"{slow['id']} 1"]
        server.wait_tasks("id = %s AND status = 'succeeded'", params=(due_now,), timeout=30)
        assert server.cli("jobs", "run", "later").returncode == 0
        [new] = server.wait_tasks("job = 'later' AND status = 'succeeded' AND id > %s",
                                  params=(highest,), timeout=30)
        assert new["id"] == highest + 1
        assert server.stop() == 0
    assert digest(box.db) == before


# -- refusals: one line, exit 1, nothing changed on either side -----------------------------------

@pytest.fixture
def source(run_cli):
    """A small edgeworker database: a job and a run of it."""
    before = run_cli.db
    run_cli.db = path = run_cli.tmp_path / "box.db"
    run_cli.ok("migrate")
    run_cli.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    run_cli.ok("jobs", "run", "a")
    run_cli.db = before
    return path


@pytest.fixture
def cli(run_cli, pg_url):
    run_cli.db = pg_url
    return run_cli


def refused(cli, source: Path, url: str, *args: str) -> str:
    before, tables = digest(source) if source.is_file() else None, pg_tables(url)
    line = error_line(cli("migrate", "--copy-from", str(source), *args))
    assert pg_tables(url) == tables
    if before is not None:
        assert digest(source) == before
    return line


def test_copies_into_a_server_and_says_what(cli, source, pg_url):
    out = cli.ok("migrate", "--copy-from", str(source)).splitlines()
    assert out[-1] == (f"copied 1 jobs, 2 tasks, 0 recoveries, 0 clock, 0 outbox, 0 hook_runs, "
                       f"0 workers from {source}")
    # a new task's id follows the copied ones
    assert cli.ok("jobs", "run", "a") == 'queued task 3 for job "a" (no worker is running: it ' \
                                        "runs when one starts)\n"


def test_a_target_that_is_not_empty_is_refused(cli, source, pg_url, tmp_path):
    cli.ok("migrate")
    cli.ok("jobs", "add", "b", "--command", "true", "--every", "1h")
    rows = pg_rows(pg_url, "SELECT * FROM jobs")
    assert refused(cli, source, pg_url) == (
        f"Error: {pg_url}: not empty (it holds 1 jobs, 1 tasks); --copy-from copies into a new "
        "database only")
    assert pg_rows(pg_url, "SELECT * FROM jobs") == rows


def test_a_worker_on_the_source_is_refused(cli, source, pg_url):
    with dbmod.WorkerLock(source):
        assert refused(cli, source, pg_url) == (
            f"Error: a worker (pid {os.getpid()}) is running on {source}; stop it before copying")


def test_a_worker_on_the_target_is_refused(cli, source, pg_url):
    cli.ok("migrate")
    with postgres.WorkerLock(pg_url, "gw"):
        assert refused(cli, source, pg_url) == (
            f"Error: a worker (pid {os.getpid()}) is running on {pg_url}; stop it before copying")
    assert pg_rows(pg_url, "SELECT count(*) FROM jobs") == [(0,)]


def test_a_missing_source_is_refused(cli, tmp_path, pg_url):
    missing = tmp_path / "nope.db"
    assert refused(cli, missing, pg_url) == (
        f"Error: {missing}: no such file (--copy-from names the SQLite database to copy)")
    assert not missing.exists()


def test_a_directory_is_refused(cli, tmp_path, pg_url):
    assert refused(cli, tmp_path, pg_url) == (
        f"Error: {tmp_path}: is a directory, not a database file")


def test_a_file_that_is_not_an_edgeworker_database_is_refused(cli, tmp_path, pg_url):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (x)")
    con.close()
    assert refused(cli, other, pg_url) == (
        f"Error: {other}: not an edgeworker database (no schema_migrations table); nothing "
        "copied")
    empty = tmp_path / "empty.db"
    empty.touch()
    assert refused(cli, empty, pg_url).startswith(f"Error: {empty}: not an edgeworker database")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    assert refused(cli, text, pg_url) == (
        f"Error: {text}: not an SQLite database (left untouched); check --db / $EDGEWORKER_DB")


def test_a_corrupt_source_is_refused(cli, source, pg_url):
    data = bytearray(source.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # the schema page and every page after it
    source.write_bytes(bytes(data))
    line = refused(cli, source, pg_url)
    assert line.startswith(f"Error: {source}: database file is corrupt"), line


def test_a_source_behind_the_code_is_refused_with_what_to_do(cli, run_cli, tmp_path, pg_url):
    old = tmp_path / "old.db"
    run_cli.db = old
    run_cli.ok("migrate", "--to", "18")
    run_cli.db = pg_url
    assert refused(cli, old, pg_url) == (
        f"Error: {old}: its schema is older than this edgeworker's (pending: "
        f"{', '.join(m.label for m in migrate.discover() if m.version > 18)}); run `edgeworker "
        f"--db {old} migrate` first (the copy never writes to its source)")


def test_an_unreachable_target_is_refused(run_cli, source, tmp_path):
    url = f"postgresql://postgres@/edgeworker?host={tmp_path}"
    run_cli.db = url
    before = digest(source)
    assert error_line(run_cli("migrate", "--copy-from", str(source))) == (
        f'Error: {url}: cannot connect to the server on socket "{tmp_path}/.s.PGSQL.5432": '
        "No such file or directory")
    assert digest(source) == before


def test_an_sqlite_target_is_refused(run_cli, source, tmp_path):
    run_cli.db = target = tmp_path / "new.db"
    before = digest(source)
    assert error_line(run_cli("migrate", "--copy-from", str(source))) == (
        "Error: --copy-from: the database to copy into must be PostgreSQL (a postgresql:// URL "
        f"in --db, $EDGEWORKER_DB or [worker] database), not {target}; to move an SQLite file, "
        "copy the file")
    assert not target.exists()
    assert digest(source) == before


def test_copy_from_with_check_dry_run_or_to_is_a_usage_error(cli, source):
    for option in (["--check"], ["--dry-run"], ["--to", "19"]):
        result = cli("migrate", "--copy-from", str(source), *option)
        assert result.exit_code == 2
        assert "--copy-from cannot be combined with --check, --dry-run or --to" in result.stderr


def test_a_row_the_server_refuses_leaves_the_target_as_it_was(cli, source, pg_url):
    con = sqlite3.connect(source)
    con.execute("PRAGMA foreign_keys = OFF")
    con.execute("UPDATE tasks SET job_id = 99 WHERE id = 1")  # a dangling reference
    con.commit()
    con.close()
    line = refused(cli, source, pg_url)
    assert line.startswith(f"Error: {pg_url}: nothing copied: a row of {source} is refused: "
                           'insert or update on table "tasks" violates foreign key'), line
    assert pg_tables(pg_url) == []


def test_every_table_of_the_schema_is_a_model(tmp_path):
    """What the copy copies is MODELS: a table without a model would be left behind."""
    database = dbmod.open_database(tmp_path / "x.db", create=True)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    tables = {name for name in database.get_tables()
              if name != "schema_migrations" and not name.startswith("sqlite_")}
    database.close()
    assert tables == {m._meta.table_name for m in MODELS}


def test_text_with_a_nul_character_is_copied_as_a_replacement_character(cli, source, pg_url):
    con = sqlite3.connect(source)
    con.execute("UPDATE tasks SET output = 'a' || char(0) || 'b' WHERE id = 1")
    con.commit()
    con.close()
    cli.ok("migrate", "--copy-from", str(source))
    assert pg_rows(pg_url, "SELECT output FROM tasks WHERE id = 1") == [("a\ufffdb",)]



def test_a_target_with_another_programs_tables_needs_force(cli, source, pg_url):
    con = psycopg2.connect(pg_url)
    con.autocommit = True
    con.cursor().execute("CREATE TABLE notes (x TEXT)")
    con.close()
    assert refused(cli, source, pg_url).startswith(
        f"Error: {pg_url}: not an edgeworker database (it holds tables notes and no "
        "schema_migrations); left untouched")
    assert cli.ok("migrate", "--copy-from", str(source), "--force").splitlines()[-1].startswith(
        "copied 1 jobs, 2 tasks")
    assert "notes" in pg_tables(pg_url)
