"""StrictModes: files that another user could change are refused before the worker trusts them."""

import os
import pwd
import signal
import sqlite3

import pytest
from conftest import is_root
from workerproc import REPO, WorkerProcess, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name  # who runs the tests owns their files
NOBODY = 65534


def write_config(tmp_path, body: str, mode: int = 0o644):
    config = tmp_path / "ew.toml"
    config.write_text(body)
    config.chmod(mode)
    return config


def error(run_cli, config, *args):
    result = run_cli(*(args or ("check-config",)), config=config)
    assert result.exit_code == 1, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


def test_test_directories_and_the_demo_pass(run_cli, tmp_path):
    config = write_config(tmp_path, '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1m"\n')
    assert run_cli.ok("check-config", config=config) == f"{config}: ok (1 jobs)\n"
    demo = REPO / "examples" / "edgeworker.toml"  # `make run`: a callable, a shell job
    assert run_cli.ok("check-config", config=demo) == f"{demo}: ok (4 jobs)\n"


def test_a_world_writable_config_is_refused(run_cli, tmp_path):
    config = write_config(tmp_path, '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1m"\n',
                          0o666)
    assert error(run_cli, config) == (
        f"Error: config file {config} is writable by its group and others (owner {ME}, mode "
        f"0666): they could make the worker run their code; fix: chmod go-w {config}\n")
    config.chmod(0o664)
    assert f"is writable by its group (owner {ME}, mode 0664)" in error(run_cli, config)
    config.chmod(0o640)
    run_cli.ok("check-config", config=config)


@pytest.mark.skipif(not is_root(), reason="chown to another user needs root")
def test_a_config_owned_by_another_user_is_refused(run_cli, tmp_path):
    config = write_config(tmp_path, "")
    os.chown(config, NOBODY, -1)
    assert error(run_cli, config) == (
        f"Error: config file {config} is owned by nobody, not root or root (the user running "
        f"the worker) (owner nobody, mode 0644); fix: chown root {config}\n")


def test_a_writable_directory_above_is_refused_unless_sticky(run_cli, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    config = write_config(shared, "")
    shared.chmod(0o777)
    assert error(run_cli, config) == (
        f"Error: directory {shared} (above {config}) is writable by its group and others without "
        f"the sticky bit (owner {ME}, mode 0777): they could replace what the worker runs; "
        f"fix: chmod go-w {shared}\n")
    shared.chmod(0o1777)  # like /tmp: nobody can replace another user's entries
    run_cli.ok("check-config", config=config)


def test_python_path_entry_and_module_files(run_cli, tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg" / "__init__.py").write_text("")
    (lib / "pkg" / "jobs.py").write_text("def run(ctx):\n    return None\n")
    config = write_config(tmp_path, '[worker]\npython_path = ["lib"]\n\n[[jobs]]\nname = "c"\n'
                                    'callable = "pkg.jobs:run"\nevery = "1m"\n')
    run_cli.ok("check-config", config=config)

    (lib / "pkg" / "jobs.py").chmod(0o646)
    assert error(run_cli, config) == (
        f"Error: {config}:6: job \"c\": callable: {lib}/pkg/jobs.py is writable by others "
        f"(owner {ME}, mode 0646): they could make the worker run their code; fix: chmod go-w "
        f"{lib}/pkg/jobs.py\n")
    (lib / "pkg" / "jobs.py").chmod(0o644)
    (lib / "pkg" / "__init__.py").chmod(0o666)
    assert f"callable: {lib}/pkg/__init__.py is writable" in error(run_cli, config)
    (lib / "pkg" / "__init__.py").chmod(0o644)
    (lib / "pkg").chmod(0o775)
    assert f"callable: {lib}/pkg is writable by its group" in error(run_cli, config)
    (lib / "pkg").chmod(0o755)
    lib.chmod(0o777)
    assert error(run_cli, config).startswith(
        f"Error: python_path entry {lib} is writable by its group and others")
    lib.chmod(0o1777)  # sticky: nobody can replace pkg/, but anyone can add a module
    assert error(run_cli, config).startswith(
        f"Error: python_path entry {lib} is writable by its group and others (owner {ME}, "
        "mode 1777)")
    lib.chmod(0o755)
    run_cli.ok("check-config", config=config)


def test_a_module_is_checked_before_it_is_imported(run_cli, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    marker = tmp_path / "imported"
    (lib / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef run(ctx): pass\n")
    (lib / "evil.py").chmod(0o666)
    config = write_config(tmp_path, '[worker]\npython_path = ["lib"]\n\n[[jobs]]\nname = "c"\n'
                                    'callable = "evil:run"\nevery = "1m"\n')
    assert "callable: " in error(run_cli, config)
    assert not marker.exists()


@pytest.mark.skipif(not is_root(), reason="chown to another user needs root")
def test_a_command_executable_owned_by_another_user_is_refused(run_cli, tmp_path):
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    config = write_config(tmp_path, f'[[jobs]]\nname = "a"\ncommand = ["{tool}", "-x"]\n'
                                    'every = "1m"\n')
    run_cli.ok("check-config", config=config)
    os.chown(tool, NOBODY, -1)
    assert error(run_cli, config) == (
        f'Error: {config}:3: job "a": command: executable {tool} is owned by nobody, not root '
        f"or root (the user running the worker) (owner nobody, mode 0755); fix: chown root "
        f"{tool}\n")
    # found on PATH, as the run would find it
    config.write_text('[[jobs]]\nname = "a"\ncommand = "tool"\nevery = "1m"\n'
                      f'env = {{ PATH = "{tool.parent}" }}\n')
    assert f"command: executable {tool} is owned by nobody" in error(run_cli, config)
    # `jobs add` checks the same
    run_cli.ok("migrate")
    result = run_cli("jobs", "add", "b", "--command", str(tool), "--every", "1m")
    assert (result.exit_code, result.stderr) == (
        1, f"Error: --command: executable {tool} is owned by nobody, not root or root (the user "
           f"running the worker) (owner nobody, mode 0755); fix: chown root {tool}\n")


@pytest.mark.skipif(not is_root(), reason="chown to another user needs root")
def test_a_hook_executable_owned_by_another_user_is_refused(run_cli, tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "notify"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    os.chown(tool, NOBODY, -1)
    config = write_config(tmp_path, f'[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1m"\n'
                                    f'on_failure = ["{tool}", "-x"]\n')
    assert error(run_cli, config) == (
        f'Error: {config}:5: job "a": on_failure: executable {tool} is owned by nobody, not '
        f"root or root (the user running the worker) (owner nobody, mode 0755); fix: chown "
        f"root {tool}\n")
    config.write_text('[worker]\nworkers = 1\non_success = "notify"\n'
                      '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1m"\n')
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")
    assert error(run_cli, config).startswith(
        f"Error: {config}:3: [worker] on_success: executable {tool} is owned by nobody")
    run_cli.ok("migrate")
    result = run_cli("jobs", "add", "b", "--command", "true", "--every", "1m", "--on-retry",
                     str(tool))
    assert (result.exit_code, result.stderr.split(" is owned")[0]) == (
        1, f"Error: --on-retry: executable {tool}")


def test_missing_cwd_and_python_path_are_refused_with_their_line(run_cli, tmp_path):
    config = write_config(tmp_path, '[worker]\nworkers = 1\npython_path = ["nowhere"]\n')
    assert error(run_cli, config) == (
        f"Error: {config}:3: [worker] python_path: {tmp_path}/nowhere is not a directory "
        "(missing: whoever creates it first decides what runs)\n")
    config.write_text('[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1m"\n'
                      'cwd = "/nonexistent/dir"\n')
    assert error(run_cli, config) == (
        f'Error: {config}:5: job "a": cwd: /nonexistent/dir is not a directory\n')


def test_run_refuses_and_leaves_nothing_behind(run_cli, tmp_path):
    config = write_config(tmp_path, '[worker]\ndatabase = "ew.db"\n', 0o666)
    result = run_cli("run", "--migrate", config=config)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: config file {config} is writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ew.toml"]


def test_a_reload_that_finds_an_unsafe_file_keeps_the_running_config(tmp_path):
    worker = WorkerProcess(tmp_path, '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "365d"\n')
    worker.start().wait_running()
    try:
        worker.config.write_text(worker.config.read_text().replace('"a"', '"b"'))
        worker.config.chmod(0o666)
        worker.send(signal.SIGHUP)
        wait_for(lambda: "reload failed, keeping the jobs as they were: config file "
                         in worker.log(), what="the refused reload", log=worker.log)
        assert worker.proc.poll() is None
        with sqlite3.connect(worker.db) as con:
            assert con.execute("SELECT name FROM jobs").fetchall() == [("a",)]
        worker.config.chmod(0o644)
        worker.send(signal.SIGHUP)
        wait_for(lambda: "reloaded" in worker.log(), what="the reload", log=worker.log)
    finally:
        assert worker.stop() == 0
