"""Bad input gets one clear line and exit 1, and loses no data."""

import hashlib
import json
import os
import sqlite3

import pytest

from edgeworker import migrate
from edgeworker.cli import cli

LATEST = migrate.discover()[-1].version


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_not_a_database(run_cli):
    run_cli.db.write_text("these are not the tables you are looking for\n")
    before = digest(run_cli.db)
    result = run_cli("jobs", "list")
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {run_cli.db}: not an SQLite database (left untouched); check --db / "
           "$EDGEWORKER_DB\n")
    assert run_cli("migrate").exit_code == 1
    assert digest(run_cli.db) == before
    assert sorted(os.listdir(run_cli.tmp_path)) == ["edgeworker.db"]


def test_corrupt_database(migrated):
    data = bytearray(migrated.db.read_bytes())
    data[100:4096] = b"\x00\xff" * ((4096 - 100) // 2)
    migrated.db.write_bytes(bytes(data))
    before = digest(migrated.db)
    result = migrated("status")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {migrated.db}: database file is corrupt (")
    assert result.stderr.endswith("left untouched: restore a backup or move it aside\n")
    assert digest(migrated.db) == before


def test_newer_schema(migrated):
    con = sqlite3.connect(migrated.db)
    con.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x', 'now')")
    con.commit()
    con.close()
    result = migrated("jobs", "list")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {migrated.db}: database schema is at version 999, newer "
                             f"than this edgeworker knows ({LATEST}); upgrade edgeworker\n")


def test_bad_toml_line(run_cli, tmp_path):
    config = tmp_path / "ew.toml"
    config.write_text('[worker]\nworkers = 2\n\n[[jobs]]\nname = "x"\nevery = 30s\n')
    for args in (["check-config"], ["migrate"], ["status"]):
        result = run_cli(*args, config=config)
        assert (result.exit_code, result.stderr) == (
            1, f"Error: {config}:6: Expected newline or end of document after a statement\n"), args


def test_unknown_callable_in_config(run_cli, tmp_path):
    config = tmp_path / "ew.toml"
    config.write_text('[[jobs]]\nname = "r"\ncallable = "nowhere_xyz.mod:run"\nevery = "1m"\n')
    result = run_cli("check-config", config=config)
    assert (result.exit_code, result.stderr) == (
        1, f'Error: {config}:3: job "r": callable "nowhere_xyz.mod:run": cannot import '
           "nowhere_xyz.mod: ModuleNotFoundError: No module named 'nowhere_xyz'\n")


def test_callable_found_through_python_path(run_cli, tmp_path):
    lib = tmp_path / "lib" / "mypkg"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "tasks.py").write_text("def clean(ctx):\n    return None\n")
    config = tmp_path / "ew.toml"
    config.write_text('[worker]\npython_path = ["lib"]\n\n[[jobs]]\nname = "c"\n'
                      'callable = "mypkg.tasks:clean"\nevery = "1m"\n')
    assert run_cli.ok("check-config", config=config) == f"{config}: ok (1 jobs)\n"


def test_missing_config_file(run_cli, tmp_path):
    result = run_cli("status", config=tmp_path / "nope.toml")
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {tmp_path / 'nope.toml'}: config file not found\n")


def test_config_from_environment_and_default_file(run_cli, tmp_path):
    (tmp_path / "edgeworker.toml").write_text('[worker]\nworkers = "two"\n')
    result = run_cli.runner.invoke(cli, ["status"])
    assert result.stderr == ("Error: edgeworker.toml:2: [worker] workers: 'two' is not a whole "
                             "number from 1 to 64\n")
    other = tmp_path / "other.toml"
    other.write_text('[worker]\ndatabase = "env.db"\n')
    result = run_cli.runner.invoke(cli, ["migrate"], env={"EDGEWORKER_CONFIG": str(other)})
    assert result.exit_code == 0
    assert (tmp_path / "env.db").exists()
    result = run_cli.runner.invoke(cli, ["migrate", "--check"],
                                   env={"EDGEWORKER_DB": str(tmp_path / "x.db"),
                                        "EDGEWORKER_CONFIG": str(other)})
    assert result.exit_code == 3  # $EDGEWORKER_DB wins over the config's database


def test_debug_shows_the_traceback(run_cli):
    run_cli.db.write_text("not sqlite")
    with pytest.raises(Exception, match="not an SQLite database"):
        run_cli.runner.invoke(cli, ["--db", str(run_cli.db), "--debug", "status"],
                              catch_exceptions=False)


def test_usage_errors_exit_2(run_cli):
    result = run_cli("jobs", "add")
    assert result.exit_code == 2
    assert "Missing argument 'NAME'" in result.stderr


def test_read_only_directory(run_cli, tmpfs):
    mount = tmpfs("1m")
    mount.remount("ro")
    db = mount.path / "ew.db"
    result = run_cli("--db", str(db), "migrate")
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {db}: cannot create database: {mount.path} is on a read-only file system\n")


def test_read_only_database_directory_with_existing_database(run_cli, tmpfs):
    mount = tmpfs("1m")
    db = mount.path / "ew.db"
    assert run_cli("--db", str(db), "migrate").exit_code == 0
    before = digest(db)
    mount.remount("ro")
    assert run_cli("--db", str(db), "jobs", "list").stdout == "no jobs\n"  # reading works
    result = run_cli("--db", str(db), "jobs", "add", "a", "--command", "true", "--every", "1m")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {db}: ")
    assert "read-only" in result.stderr or "not writable" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert digest(db) == before


def test_full_disk_loses_nothing(run_cli, tmpfs):
    mount = tmpfs("512k")
    db = mount.path / "ew.db"
    assert run_cli("--db", str(db), "migrate").exit_code == 0
    assert run_cli("--db", str(db), "jobs", "add", "keep", "--command", "true",
                   "--every", "1h").exit_code == 0
    filler = mount.path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    result = run_cli("--db", str(db), "jobs", "add", "big", "--command", "x" * 20000,
                     "--every", "1h")
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {db}: disk full: no space left to write the database\n")
    filler.unlink()
    listing = json.loads(run_cli.ok("--db", str(db), "jobs", "list", "--json"))
    assert [j["name"] for j in listing] == ["keep"]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


@pytest.mark.parametrize("args", [
    ["tasks", "show", "99999999999999999999"],
    ["tasks", "retry", "99999999999999999999"],
    ["tasks", "cancel", "99999999999999999999"],
    ["tasks", "show", "0"],
    ["tasks", "list", "--limit", "99999999999999999999"],
    ["jobs", "add", "x", "--command", "true", "--every", "1m", "--max-attempts",
     "99999999999999999999"],
    ["jobs", "add", "x", "--command", "true", "--every", "1m", "--catch-up-limit",
     "99999999999999999999"],
    ["migrate", "--to", "99999999999999999999"],
])
def test_numbers_out_of_range_are_usage_errors(migrated, args):
    result = migrated(*args)
    assert result.exit_code == 2, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: Invalid value for ")
    assert "is not in the range" in error
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_a_closed_output_pipe_ends_quietly(migrated):
    """`edgeworker status | head -1`: the reader is gone; the command ends like `git log`."""
    import signal
    import subprocess
    import sys

    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1m")
    for args in (["status"], ["tasks", "list", "--json"], ["jobs", "list"], ["--help"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # head has read its line and exited
        try:
            result = subprocess.run([sys.executable, "-m", "edgeworker", "--db",
                                     str(migrated.db), *args], stdout=write_end,
                                    stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(write_end)
        assert (result.returncode, result.stderr) == (-signal.SIGPIPE, ""), args


def test_a_bad_worker_name_is_a_usage_error(run_cli):
    result = run_cli("run", "--name", "a/b")
    assert result.exit_code == 2
    assert result.stderr.endswith("'a/b' is not a valid worker name (letters, digits, '_', '.', "
                                  "'@', '-'; at most 64 characters, starting with a letter or "
                                  "digit)\n")
    assert not run_cli.db.exists()
