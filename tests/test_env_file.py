"""Job secrets in `env_file`: read at each run, refused unless private, never shown."""

import json
import os
import pwd
import sqlite3

import pytest
from conftest import is_root
from workerproc import WorkerProcess, wait_for

from edgeworker.errors import ConfigError
from edgeworker.runners import read_env_file

ME = pwd.getpwuid(os.geteuid()).pw_name  # who runs the tests owns their files
SECRET = "hunter2-7f3a9c"


def private(path, text: str, mode: int = 0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_reads_systemd_environment_file_syntax(tmp_path):
    path = private(tmp_path / "s.env", "# a comment\n; another\n\nPLAIN=a b  \n"
                                       "  SPACED = x\nSINGLE='it''s $HOME'\n"
                                       'DOUBLE="say \\"hi\\" \\\\ $x"\nEMPTY=\nEQ=a=b\n')
    assert read_env_file(path) == {"PLAIN": "a b", "SPACED": "x", "SINGLE": "it''s $HOME",
                                   "DOUBLE": 'say "hi" \\ $x', "EMPTY": "", "EQ": "a=b"}


def test_a_bad_line_is_named_but_not_shown(tmp_path):
    path = private(tmp_path / "s.env", f"A=1\n{SECRET}\n")
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    assert str(info.value) == (f"env_file: {path}:2: not a KEY=VALUE line (its content is not "
                               "shown: it may be a secret)")


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o700])
def test_a_file_others_can_read_or_change_is_refused(tmp_path, mode):
    path = private(tmp_path / "s.env", f"TOKEN={SECRET}\n", mode)
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    assert str(info.value) == (
        f"env_file: {path} holds secrets but its mode is {mode:04o} (owner {ME}): others could "
        f"read or change it; fix: chmod 640 {path}")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_private_modes_pass(tmp_path, mode):
    assert read_env_file(private(tmp_path / "s.env", "A=1\n", mode)) == {"A": "1"}


@pytest.mark.skipif(not is_root(), reason="chown to another user needs root")
def test_a_file_owned_by_another_user_is_refused(tmp_path):
    path = private(tmp_path / "s.env", "A=1\n")
    os.chown(path, 65534, -1)
    with pytest.raises(ConfigError, match=r"s\.env is owned by nobody, not root or root"):
        read_env_file(path)


def test_check_config_refuses_a_readable_env_file_with_its_line(run_cli, tmp_path):
    secrets = private(tmp_path / "s.env", f"TOKEN={SECRET}\n", 0o644)
    config = tmp_path / "ew.toml"
    config.write_text('[worker]\nenv_file = "s.env"\n\n[[jobs]]\nname = "a"\ncommand = "true"\n'
                      'every = "1m"\nenv_file = "s.env"\n')
    result = run_cli("check-config", config=config)
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {config}:2: [worker] env_file: {secrets} holds secrets but its mode is 0644 "
           f"(owner {ME}): others could read or change it; fix: chmod 640 {secrets}\n")
    config.write_text(config.read_text().replace('env_file = "s.env"\n\n', "\n"))
    result = run_cli("check-config", config=config)
    assert (result.exit_code, result.stderr) == (
        1, f'Error: {config}:7: job "a": env_file: {secrets} holds secrets but its mode is 0644 '
           f"(owner {ME}): others could read or change it; fix: chmod 640 {secrets}\n")
    secrets.chmod(0o640)
    run_cli.ok("check-config", config=config)
    secrets.unlink()
    result = run_cli("check-config", config=config)
    assert result.stderr == f'Error: {config}:7: job "a": env_file: {secrets} is not a file\n'


def test_secrets_reach_the_run_and_nowhere_else(tmp_path):
    worker_env = private(tmp_path / "worker.env", "SHARED=from-worker\nTOKEN=worker-token\n")
    job_env = private(tmp_path / "job.env", f"TOKEN={SECRET}\n")
    seen = tmp_path / "seen"
    worker = WorkerProcess(tmp_path, (
        f'[worker]\ndatabase = "ew.db"\nenv_file = "{worker_env}"\n\n'
        f'[[jobs]]\nname = "upload"\nenv_file = "job.env"\nenv = {{ SHARED = "from-job" }}\n'
        f'command = ["sh", "-c", "echo $SHARED $TOKEN >> {seen}; echo uploaded"]\n'
        'every = "365d"\nmax_attempts = 1\n'))
    worker.start().wait_running()
    try:
        worker.cli("jobs", "run", "upload")
        wait_for(lambda: seen.exists() and seen.read_text().count("\n") == 1,
                 what="the first run", log=worker.log)
        assert seen.read_text() == f"from-job {SECRET}\n"  # the job's values win

        rotated = SECRET.upper()
        private(job_env, f"TOKEN={rotated}\n")  # read at each run: no reload needed
        worker.cli("jobs", "run", "upload")
        wait_for(lambda: seen.read_text().count("\n") == 2, what="the second run",
                 log=worker.log)
        assert seen.read_text().splitlines()[1] == f"from-job {rotated}"

        private(job_env, f"TOKEN={SECRET}\n{rotated} oops\n")  # a broken line holding a secret
        worker.cli("jobs", "run", "upload")
        wait_for(lambda: "failed" in worker.log(), what="the failed run", log=worker.log)
        with sqlite3.connect(worker.db) as con:
            (task_id, error), = con.execute(
                "SELECT id, error FROM tasks WHERE status = 'failed'").fetchall()
        assert error == (f"env_file: {job_env}:2: not a KEY=VALUE line (its content is not "
                         "shown: it may be a secret)")

        shown = [worker.cli("status").stdout, worker.cli("status", "--json").stdout,
                 worker.cli("jobs", "list").stdout, worker.cli("jobs", "list", "--json").stdout,
                 worker.cli("tasks", "list", "--json").stdout]
        for task in json.loads(shown[-1]):
            shown.append(worker.cli("tasks", "show", str(task["id"]), "--json").stdout)
            shown.append(worker.cli("tasks", "show", str(task["id"])).stdout)
        shown.append(worker.log())
        for text in shown:
            assert SECRET not in text and rotated not in text and "worker-token" not in text
        assert json.loads(shown[3])[0]["env_file"] == str(job_env)
        with sqlite3.connect(worker.db) as con:
            dump = "\n".join(con.iterdump())
        assert SECRET not in dump and rotated not in dump
    finally:
        assert worker.stop() == 0


def test_a_callable_finds_the_values_in_its_context(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "mytasks.py").write_text(
        "def record(ctx):\n"
        f"    with open({str(tmp_path / 'out')!r}, 'w') as f:\n"
        "        f.write(ctx.env['SHARED'] + ' ' + ctx.env['TOKEN'])\n")
    private(tmp_path / "worker.env", "SHARED=from-worker\nTOKEN=worker\n")
    private(tmp_path / "job.env", f"TOKEN={SECRET}\n")
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["lib"]\nenv_file = "worker.env"\n\n'
              '[[jobs]]\nname = "rec"\ncallable = "mytasks:record"\nevery = "365d"\n'
              'env_file = "job.env"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "rec")
        worker.wait_tasks("status = 'succeeded'")
        worker.stop()
        assert SECRET not in worker.log()
    assert (tmp_path / "out").read_text() == f"from-worker {SECRET}"
