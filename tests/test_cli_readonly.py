"""Commands that only look write nothing; refusals leave nothing behind; foreign databases are
left alone."""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import is_root

from edgeworker import db as dbmod
from edgeworker.cli import cli

INSERT_AND_CLOSE = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("INSERT INTO jobs (name, kind, target, every_seconds, created_at, updated_at) "
            "VALUES ('a', 'command', 'true', 60, 'x', 'x')")
con.close()
"""

READ_ONLY = [("status",), ("status", "--json"), ("jobs", "list"), ("tasks", "list"),
             ("tasks", "show", "1"), ("recover", "--dry-run"), ("migrate", "--check"),
             ("migrate", "--dry-run")]


def snapshot(directory):
    """Every file in the directory with its bytes' digest and mtime."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir())}


def foreign_database(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('Ada')")
    con.commit()
    con.close()


def test_migrate_refuses_another_programs_database(run_cli):
    foreign_database(run_cli.db)
    before = snapshot(run_cli.tmp_path)
    result = run_cli("migrate")
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {run_cli.db}: not an edgeworker database (it holds tables customers and no "
           "schema_migrations); left untouched: check --db / $EDGEWORKER_DB, or add "
           "edgeworker's tables to it with `edgeworker migrate --force`\n")
    assert snapshot(run_cli.tmp_path) == before  # not even its journal mode changed


@pytest.mark.parametrize("args", [*READ_ONLY, ("jobs", "add", "a", "--command", "true",
                                               "--every", "1m"), ("tasks", "prune",
                                                                  "--older-than", "1d")])
def test_every_command_refuses_another_programs_database(run_cli, args):
    foreign_database(run_cli.db)
    before = snapshot(run_cli.tmp_path)
    result = run_cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {run_cli.db}: not an edgeworker database")
    assert snapshot(run_cli.tmp_path) == before


def test_run_refuses_another_programs_database_and_leaves_no_lock(run_cli):
    foreign_database(run_cli.db)
    before = snapshot(run_cli.tmp_path)
    result = run_cli("run", "--migrate")
    assert result.exit_code == 1
    assert "not an edgeworker database" in result.stderr
    assert snapshot(run_cli.tmp_path) == before


def test_migrate_force_adds_edgeworker_tables_and_keeps_the_others(run_cli):
    foreign_database(run_cli.db)
    run_cli.ok("migrate", "--force")
    run_cli.ok("jobs", "add", "a", "--command", "true", "--every", "1m")
    assert run_cli.ok("jobs", "list").startswith("NAME")
    con = sqlite3.connect(run_cli.db)
    assert con.execute("SELECT name FROM customers").fetchall() == [("Ada",)]
    con.close()


def test_read_only_commands_leave_a_zero_byte_file_as_it_is(run_cli):
    run_cli.db.touch()
    before = snapshot(run_cli.tmp_path)
    for args in READ_ONLY:
        result = run_cli(*args)
        assert result.exit_code in (0, 1, 3), (args, result.output)
        assert snapshot(run_cli.tmp_path) == before, args
    assert run_cli.db.stat().st_size == 0
    assert run_cli("status").stderr.startswith(f"Error: {run_cli.db}: database needs migrations "
                                               "(001_create_jobs, ")


def test_read_only_commands_write_nothing_on_a_migrated_database(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1m")
    migrated.ok("jobs", "run", "a")
    assert sorted(p.name for p in migrated.tmp_path.iterdir()) == ["edgeworker.db"]
    before = snapshot(migrated.tmp_path)
    for args in READ_ONLY:
        assert migrated(*args).exit_code == 0, args
        assert snapshot(migrated.tmp_path) == before, args  # no -wal, no -shm either


def test_a_refused_run_leaves_no_lock_file_and_no_database(run_cli):
    result = run_cli("run")
    assert result.stderr == (f"Error: {run_cli.db}: no database here; create it with "
                             "`edgeworker migrate`\n")
    assert list(run_cli.tmp_path.iterdir()) == []


def test_a_refused_run_keeps_a_lock_file_it_did_not_create(migrated):
    lock = migrated.tmp_path / "edgeworker.db.lock"
    lock.write_text("")
    (migrated.tmp_path / "bad.toml").write_text('[[jobs]]\nname = "x"\ncallable = "nowhere:f"\n'
                                                'every = "1m"\n')
    result = migrated("run", config=migrated.tmp_path / "bad.toml")
    assert result.exit_code == 1 and "cannot import nowhere" in result.stderr
    assert lock.exists()


def test_a_migrate_that_fails_on_a_full_disk_leaves_no_database(run_cli, tmpfs):
    mount = tmpfs("64k")
    filler = mount.path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    db = mount.path / "ew.db"
    for args in (("migrate",), ("run", "--migrate")):
        result = run_cli("--db", str(db), *args)
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines()[-1].startswith(f"Error: {db}: ")
        assert sorted(p.name for p in mount.path.iterdir()) == ["filler"], args


def _as_nobody(db, *args):
    """`edgeworker --db DB ARGS` in a forked child running as nobody (this interpreter lives
    where nobody cannot read it: the parent has imported what the command needs)."""
    capture = tempfile.TemporaryFile()
    out = capture.fileno()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            sys.stdout = sys.stderr = open(out, "w", closefd=False)  # noqa: SIM115
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.chdir("/")
            cli.main(["--db", str(db), *args], prog_name="edgeworker")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    os.lseek(out, 0, os.SEEK_SET)
    output = os.read(out, 1 << 20).decode()
    capture.close()
    return os.waitstatus_to_exitcode(status), output


@pytest.fixture
def shared_dir():
    """A directory that everyone can enter and only root can write (tmp_path is root's own)."""
    path = Path(tempfile.mkdtemp(prefix="ew-readonly-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(not is_root(), reason="needs root: runs a command as another user")
def test_read_only_commands_in_a_directory_they_cannot_write(run_cli, shared_dir):
    db = shared_dir / "ew.db"
    run_cli.ok("--db", str(db), "migrate")
    run_cli.ok("--db", str(db), "jobs", "add", "a", "--command", "true", "--every", "1m")
    db.chmod(0o644)
    run_cli.ok("--db", str(db), "jobs", "list")  # imports what the command needs
    before = snapshot(shared_dir)
    # no -wal or -shm: read from the main file alone
    code, output = _as_nobody(db, "jobs", "list")
    assert code == 0, output
    assert output.splitlines()[1].startswith("a ")
    assert snapshot(shared_dir) == before
    # a writer is connected (its -wal and -shm exist): read through them, read-only
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "written\n"
        assert {p.name for p in shared_dir.iterdir()} >= {"ew.db-wal", "ew.db-shm"}
        code, output = _as_nobody(db, "jobs", "list")
        assert code == 0, output
        assert output.splitlines()[1].startswith("b ")
        code, output = _as_nobody(db, "jobs", "add", "c", "--command", "true", "--every", "1m")
        assert code == 1
        assert output.startswith(f"Error: {db}: ")
    finally:
        writer.communicate("", timeout=30)


# Another process (POSIX locks do not conflict within one): writes, says so, waits for stdin.
WRITER = """
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("UPDATE jobs SET name = 'b'")
for suffix in ("-wal", "-shm"):
    os.chmod(sys.argv[1] + suffix, 0o644)
print("written", flush=True)
sys.stdin.read()
con.close()
"""



def test_a_reader_without_wal_holds_off_a_writers_closing_checkpoint(database, tmp_path):
    path = tmp_path / "edgeworker.db"
    database.close()
    main_file = path.read_bytes()
    reader = dbmod.open_database(path, readonly=True)
    assert reader.execute_sql("SELECT count(*) FROM jobs").fetchone() == (0,)
    # the last connection to close would checkpoint into the main file and remove the WAL, but
    # the reader's lock keeps the main file as the reader sees it
    subprocess.run([sys.executable, "-c", INSERT_AND_CLOSE, str(path)], check=True, timeout=30)
    assert path.read_bytes() == main_file
    assert reader.execute_sql("SELECT count(*) FROM jobs").fetchone() == (0,)
    reader.close()
    later = dbmod.open_database(path, readonly=True)  # now through the -wal the writer left
    assert later.execute_sql("SELECT count(*) FROM jobs").fetchone() == (1,)
    later.close()


@pytest.mark.parametrize("args", [("jobs", "add", "a", "--command", "true", "--every", "1m"),
                                  ("tasks", "prune", "--older-than", "1d"), ("run",)])
def test_a_command_that_writes_refuses_an_unmigrated_file_without_changing_it(run_cli, args):
    run_cli.db.touch()
    before = snapshot(run_cli.tmp_path)
    result = run_cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {run_cli.db}: database needs migrations (")
    assert snapshot(run_cli.tmp_path) == before  # still 0 bytes, no WAL, no lock file
