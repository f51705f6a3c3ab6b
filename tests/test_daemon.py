"""`edgeworker run` as a real subprocess on a real SQLite file, with real signals."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime

import pytest
from workerproc import WorkerProcess, wait_for

from edgeworker import migrate
from edgeworker.config import default_worker_name

pytestmark = pytest.mark.timeout(90)


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_interval_jobs_run_and_are_recorded(tmp_path):
    out = tmp_path / "out"
    config = f'''
[[jobs]]
name = "tick"
command = ["sh", "-c", "echo $EDGEWORKER_TASK_ID $EDGEWORKER_JOB $EDGEWORKER_ATTEMPT \
$EDGEWORKER_RECOVERED $EDGEWORKER_SCHEDULED_FOR >> {out}; echo done"]
every = "300ms"
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        done = worker.wait_tasks("status = 'succeeded'", count=4)
        assert worker.stop() == 0
    records = [line.split() for line in lines(out)]
    by_id = {int(r[0]): r for r in records}
    for task in done[:4]:
        assert by_id[task["id"]][1:5] == ["tick", "1", "0", task["scheduled_for"]]
        assert task["output"] == "done\n" and task["exit_code"] == 0
    slots = [t["scheduled_for"] for t in worker.tasks("origin = 'schedule'")]
    assert len(set(slots)) == len(slots)  # one task per slot
    assert "task 1 job tick attempt 1 started" in worker.log()


def test_failures_retry_with_backoff_then_fail(tmp_path):
    out = tmp_path / "out"
    config = f'''
[[jobs]]
name = "flaky"
command = "sh -c 'echo attempt $EDGEWORKER_ATTEMPT of $EDGEWORKER_TASK_ID >> {out}; exit 3'"
every = "365d"
max_attempts = 3
retry_delay = "100ms"
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "flaky")
        [task] = worker.wait_tasks("status = 'failed'")
        worker.stop()
    assert (task["attempt"], task["exit_code"], task["error"]) == (3, 3, "exit status 3")
    assert lines(out) == [f"attempt {n} of {task['id']}" for n in (1, 2, 3)]


def test_timeout_kills_the_whole_process_group(tmp_path):
    pids = tmp_path / "pids"
    config = f'''
[[jobs]]
name = "stuck"
command = "sleep 300 & echo $! >> {pids}; sh -c 'sleep 300' & echo $! >> {pids}; wait"
shell = true
every = "365d"
timeout = "500ms"
max_attempts = 1
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "stuck")
        [task] = worker.wait_tasks("status = 'failed'")
        assert task["error"] == "timed out after 0.5s: stopped its process group"
        for pid in map(int, lines(pids)):
            wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}") or
                     open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z",
                     5, what=f"pid {pid} to be gone")
        worker.stop()


def test_tasks_cancel_stops_a_running_commands_whole_tree(tmp_path):
    import pwd

    pids = tmp_path / "pids"
    config = f'''
[[jobs]]
name = "busy"
command = "sleep 300 & echo $! >> {pids}; setsid sh -c 'echo $$ >> {pids}; exec sleep 300' & wait"
shell = true
every = "365d"
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        task_id = int(worker.cli("jobs", "run", "busy").stdout.split()[2])
        wait_for(lambda: len(lines(pids)) == 2, 20, what="the run's tree", log=worker.log)
        result = worker.cli("tasks", "cancel", str(task_id))
        assert result.stdout == (f"cancelled task {task_id} (job busy): the worker stopped its "
                                 "processes\n")
        for pid in map(int, lines(pids)):
            wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}") or
                     open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z",
                     5, what=f"pid {pid} to be gone")
        [task] = worker.tasks(f"id = {task_id}")
        user = pwd.getpwuid(os.getuid()).pw_name
        assert (task["status"], task["error"]) == ("cancelled",
                                                    f"cancelled by {user} (uid {os.getuid()})")
        wait_for(lambda: f"task {task_id} job busy attempt 1 cancelled while it ran" in
                 worker.log(), 10, what="the worker to log the cancel", log=worker.log)
        assert worker.tasks("status = 'created' AND origin = 'schedule'")  # the next run waits
        assert worker.stop() == 0
    assert worker.tasks(f"id = {task_id}")[0]["status"] == "cancelled"


def test_output_is_captured_even_when_binary(tmp_path):
    config = '''
[[jobs]]
name = "noisy"
command = ["sh", "-c", "printf 'text\\n'; head -c 100000 /dev/urandom; echo; echo tail >&2"]
every = "365d"
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "noisy")
        [task] = worker.wait_tasks("status = 'succeeded'")
        worker.stop()
    assert task["output"].endswith("\ntail\n")
    assert task["output"].startswith("[... ")
    shown = json.loads(worker.cli("tasks", "show", str(task["id"]), "--json").stdout)
    assert shown["output"] == task["output"]


def test_callable_jobs_get_a_task_context(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "mytasks.py").write_text(
        "import json, os\n"
        "def record(ctx):\n"
        f"    with open({str(tmp_path / 'out')!r}, 'a') as f:\n"
        "        f.write(json.dumps([ctx.task_id, ctx.job, ctx.attempt, ctx.recovered,\n"
        "                            ctx.time_left() is not None, ctx.env['EDGEWORKER_JOB']]))\n"
        "    ctx.logger.info('recorded')\n"
        "def broken(ctx):\n"
        "    raise ValueError('no sensor')\n")
    config = '''
[worker]
database = "ew.db"
python_path = ["lib"]

[[jobs]]
name = "rec"
callable = "mytasks:record"
every = "365d"
timeout = "10s"

[[jobs]]
name = "bad"
callable = "mytasks:broken"
every = "365d"
max_attempts = 1
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "rec")
        worker.cli("jobs", "run", "bad")
        [ok] = worker.wait_tasks("status = 'succeeded'")
        [bad] = worker.wait_tasks("status = 'failed'")
        worker.stop()
    assert json.loads((tmp_path / "out").read_text()) == [ok["id"], "rec", 1, False, True, "rec"]
    assert ok["output"] == "INFO recorded\n"
    assert bad["error"].endswith("ValueError: no sensor")


def test_an_unknown_callable_stops_the_start(tmp_path):
    config = '[[jobs]]\nname = "x"\ncallable = "nowhere_abc:run"\nevery = "365d"\n'
    worker = WorkerProcess(tmp_path, config)
    result = subprocess.run(worker.command("run", "--migrate"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.endswith(
        f'Error: {worker.config}:5: job "x": callable "nowhere_abc:run": cannot import '
        "nowhere_abc: ModuleNotFoundError: No module named 'nowhere_abc'\n")


def test_sigterm_is_graceful_a_running_task_finishes(tmp_path):
    out = tmp_path / "out"
    config = f'''
[[jobs]]
name = "slow"
command = "sh -c 'echo start >> {out}; sleep 1; echo end >> {out}'"
every = "365d"
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "slow")
        wait_for(lambda: lines(out) == ["start"], what="the task to start", log=worker.log)
        assert worker.stop(signal.SIGTERM) == 0
    assert lines(out) == ["start", "end"]
    assert [t["status"] for t in worker.tasks("origin = 'manual'")] == ["succeeded"]
    assert "received SIGTERM: stopping" in worker.log()


def test_shutdown_timeout_stops_running_tasks(tmp_path):
    config = '''
[worker]
database = "ew.db"
shutdown_timeout = "300ms"

[[jobs]]
name = "endless"
command = "sleep 300"
every = "365d"
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "endless")
        [task] = worker.wait_tasks("status = 'running'")
        started = time.monotonic()
        assert worker.stop(signal.SIGINT) == 0
        assert time.monotonic() - started < 15
    # not recorded as a failure: it stays running, for recovery at the next start
    assert worker.tasks(f"id = {task['id']}")[0]["status"] == "running"
    assert "shutdown timeout (0.3s) over: stopping the running tasks" in worker.log()
    assert "interrupted by shutdown" in worker.log()


def test_a_second_signal_stops_at_once(tmp_path):
    config = '[[jobs]]\nname = "endless"\ncommand = "sleep 300"\nevery = "365d"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "endless")
        worker.wait_tasks("status = 'running'")
        worker.send(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM" in worker.log(), log=worker.log)
        assert worker.stop(signal.SIGTERM, timeout=10) == 0
    assert "stopping at once (second signal): killed 1 running command(s)" in worker.log()
    # killed by the stop, not failed: it stays running, for recovery at the next start
    assert "attempt 1 failed" not in worker.log()
    assert [t["status"] for t in worker.tasks("origin = 'manual'")] == ["running"]


def test_a_second_worker_on_the_same_database_is_refused(tmp_path):
    with WorkerProcess(tmp_path, "") as worker:
        worker.start().wait_running()
        second = subprocess.run(worker.command("run"), capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1
        assert second.stderr == (f"Error: another worker (pid {worker.proc.pid}) is running on "
                                 f"{worker.db}; stop it first\n")
        status = json.loads(worker.cli("status", "--json").stdout)
        assert status["worker"] == {"running": True, "pid": worker.proc.pid,
                                    "names": [default_worker_name()], "alert": None}
        worker.stop()


def test_pending_migrations_refuse_a_start_unless_asked(tmp_path):
    worker = WorkerProcess(tmp_path, "")
    worker.cli("migrate", "--to", "3")
    result = subprocess.run(worker.command("run"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {worker.db}: database needs migrations (004_")
    with worker:
        worker.start().wait_running()  # run --migrate
        assert f"applied migration {migrate.discover()[-1].label}" in worker.log()
        worker.stop()


def test_jobs_run_wakes_an_idle_worker(tmp_path):
    config = '[[jobs]]\nname = "idle"\ncommand = "true"\nevery = "1d"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        for _ in range(3):
            queued = worker.cli("jobs", "run", "idle").stdout
            task_id = int(queued.split()[2])
            worker.wait_tasks(f"id = {task_id} AND status = 'succeeded'", timeout=5)
        worker.stop()


def test_sighup_reloads_the_config(tmp_path):
    config = '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "365d"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.config.write_text(worker.config.read_text() +
                                 '\n[[jobs]]\nname = "b"\ncommand = "true"\nevery = "365d"\n')
        worker.send(signal.SIGHUP)
        wait_for(lambda: "1 added, 0 updated, 0 removed, 1 unchanged" in worker.log(),
                 log=worker.log)
        worker.config.write_text("[worker]\nworkers = 0\n")
        worker.send(signal.SIGHUP)
        wait_for(lambda: "reload failed, keeping the jobs as they were" in worker.log(),
                 log=worker.log)
        assert worker.proc.poll() is None
        worker.stop()
    assert sorted(r[0] for r in worker.query("SELECT name FROM jobs")) == ["a", "b"]


def io_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as handle:
        fields = dict(line.split(": ") for line in handle.read().splitlines())
    return int(fields["write_bytes"]) + int(fields["wchar"])


def test_an_idle_worker_writes_nothing(tmp_path):
    config = '[[jobs]]\nname = "rare"\ncommand = "true"\nevery = "1d"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        time.sleep(0.5)  # let start-up settle (recovery, first scheduling)
        before = io_written(worker.proc.pid)
        sizes = {p.name: p.stat().st_size for p in tmp_path.glob("ew.db*")}
        time.sleep(2)
        assert io_written(worker.proc.pid) == before
        assert {p.name: p.stat().st_size for p in tmp_path.glob("ew.db*")} == sizes
        worker.stop()


def test_database_stays_consistent_for_readers_while_running(tmp_path):
    config = '[[jobs]]\nname = "fast"\ncommand = "true"\nevery = "100ms"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.wait_tasks("status = 'succeeded'", count=5)
        con = sqlite3.connect(worker.db)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        con.close()
        worker.stop()


def test_python_m_and_console_script_agree():
    result = subprocess.run([sys.executable, "-m", "edgeworker", "--version"],
                            capture_output=True, text=True)
    assert result.stdout.startswith("edgeworker, version ")


def test_every_queued_run_wakes_the_worker(tmp_path):
    """A run queued by another process is picked up at once, every time: inotify fires when the
    WAL is written, before that commit is visible, so the woken thread must wait for it. On the
    FUSE file system of the power-cut tests an fsync is slow, which widens that window."""
    import contextlib
    import random

    from powercutfs import PowerCutFS, fuse_unavailable_reason

    from edgeworker import db as dbmod
    from edgeworker import models
    from edgeworker.clock import utcnow
    from edgeworker.ledger import Ledger
    from edgeworker.models import Job

    mount = tmp_path / "mnt"
    slow_disk = contextlib.nullcontext()
    if fuse_unavailable_reason() is None:
        mount.mkdir()
        (tmp_path / "backing").mkdir()
        slow_disk = PowerCutFS(tmp_path / "backing", mount)
    else:
        mount = tmp_path
    # One thread: with two, a run taken while the previous run of the job still runs is put
    # back for a second (one job never runs twice at once), which is not what this measures.
    config = (f'[worker]\ndatabase = "{mount / "ew.db"}"\nworkers = 1\n'
              '[[jobs]]\nname = "idle"\ncommand = "true"\nevery = "1d"\n')
    with slow_disk, WorkerProcess(tmp_path, config) as worker:
        worker.db = mount / "ew.db"
        worker.start().wait_running()
        database = dbmod.open_database(worker.db)
        models.bind(database)
        ledger = Ledger(database, worker="test")
        job = Job.get(Job.name == "idle")
        rng = random.Random(7)
        ids = []
        for _ in range(40):
            ids.append(ledger.run_now(job, utcnow()).id)
            time.sleep(rng.uniform(0.02, 0.06))
        database.close()
        done = worker.wait_tasks(f"id IN ({','.join(map(str, ids))}) AND status = 'succeeded'",
                                 count=len(ids), timeout=20)
        worker.stop()
    waits = [(datetime.fromisoformat(t["started_at"]) - datetime.fromisoformat(t["created_at"]))
             .total_seconds() for t in done]
    late = [wait for wait in waits if wait > 2]
    assert late == []


def test_retention_prunes_old_finished_tasks_at_start(tmp_path):
    config = ('[worker]\ndatabase = "ew.db"\nretention = "1d"\n\n'
              '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "365d"\n')
    worker = WorkerProcess(tmp_path, config)
    worker.cli("migrate")
    worker.cli("jobs", "sync")
    for _ in range(3):
        worker.cli("jobs", "run", "a")
    con = sqlite3.connect(worker.db)
    con.execute("UPDATE tasks SET status = 'succeeded', finished_at = "
                "'2026-01-01T00:00:00.000000Z' WHERE id IN (2, 3)")
    con.commit()
    con.close()
    with worker:
        worker.start().wait_running()
        wait_for(lambda: "pruned 2 task(s)" in worker.log(), log=worker.log)
        worker.stop()
    assert [r[0] for r in worker.query("SELECT id FROM tasks WHERE id <= 4 ORDER BY id")] == [1, 4]


def test_json_log_lines(tmp_path):
    config = '[[jobs]]\nname = "j"\ncommand = "true"\nevery = "365d"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start("--log-format", "json")
        wait_for(lambda: '"msg":"edgeworker running' in worker.log(), log=worker.log)
        worker.cli("jobs", "run", "j")
        wait_for(lambda: '"status":"succeeded"' in worker.log(), log=worker.log)
        worker.stop()
    records = [json.loads(line) for line in worker.log().splitlines()]
    done = next(r for r in records if r.get("status") == "succeeded")
    assert {k: done[k] for k in ("level", "job", "attempt", "exit_code")} == {
        "level": "info", "job": "j", "attempt": 1, "exit_code": 0}
    assert isinstance(done["task_id"], int) and done["duration"] >= 0


def test_a_forked_child_that_returns_from_its_callable_ends_there(tmp_path):
    """A callable forks and its child, lacking `os._exit`, returns: it would go on as a second
    worker (finishing the parent's run, claiming others). It ends where it comes back."""
    (tmp_path / "lib").mkdir()
    status = tmp_path / "status"
    (tmp_path / "lib" / "forker.py").write_text(
        "import os\n"
        "def run(ctx):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        return 'child'  # no os._exit\n"
        f"    with open({str(status)!r}, 'w') as out:\n"
        "        out.write(str(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))\n"
        "    return 'parent'\n")
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["lib"]\n\n'
              '[[jobs]]\nname = "forker"\ncallable = "forker:run"\nevery = "365d"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "forker")
        [task] = worker.wait_tasks("status = 'succeeded'")
        assert worker.stop() == 0
    assert status.read_text() == "0"
    assert task["output"] == "returned: 'parent'\n"
    assert "a process that job forker's callable forked returned from it" in worker.log()


def test_a_callable_that_changes_the_directory_moves_nothing_of_the_worker(tmp_path):
    """The working directory is the whole process's. A worker started with a relative config path
    keeps finding its config (a reload), its database and its modules; and the directory is
    changed back after the callable, for the other runs."""
    import signal
    import sys

    (tmp_path / "lib").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "lib" / "mover.py").write_text(
        "import os\n"
        f"def run(ctx):\n    os.chdir({str(tmp_path / 'elsewhere')!r})\n")
    (tmp_path / "lib" / "where.py").write_text("import os\ndef run(ctx):\n    return os.getcwd()\n")
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["lib"]\n\n'
              '[[jobs]]\nname = "mover"\ncallable = "mover:run"\nevery = "365d"\n\n'
              '[[jobs]]\nname = "where"\ncallable = "where:run"\nevery = "365d"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.command = lambda *args: [sys.executable, "-m", "edgeworker", "--config", "ew.toml",
                                        *args]
        worker.start().wait_running()
        of = "status = 'succeeded' AND origin = 'manual' AND job_id = (SELECT id FROM jobs " \
             "WHERE name = '{}')"
        worker.cli("jobs", "run", "mover")
        [moved] = worker.wait_tasks(of.format("mover"))
        worker.send(signal.SIGHUP)
        wait_for(lambda: "reloaded" in worker.log(), what="the reload", log=worker.log)
        worker.cli("jobs", "run", "where")
        [where] = worker.wait_tasks(of.format("where"))
        assert worker.stop() == 0
    assert moved["output"] == (f"edgeworker: the callable changed the working directory to "
                               f"{tmp_path / 'elsewhere'}: changed back to {tmp_path}\n")
    assert where["output"] == f"returned: {str(tmp_path)!r}\n"
    assert os.listdir(tmp_path / "elsewhere") == []  # no database, lock or records made there
    assert f"on {tmp_path / 'ew.db'} (pid" in worker.log()


def test_a_signal_to_a_callables_forked_child_is_not_the_workers(tmp_path):
    """`Pool.terminate()` sends SIGTERM to its workers. A fork copied the worker's signal set-up,
    whose handlers write the signal into the worker's wake-up pipe: the worker took it for its
    own and stopped."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "pooled.py").write_text(
        "import multiprocessing, os\n"
        "def run(ctx):\n"
        "    pool = multiprocessing.get_context('fork').Pool(2)\n"
        "    found = pool.map(abs, [-1, -2])\n"
        "    pool.terminate()\n"
        "    pool.join()\n"
        "    return found\n")
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["lib"]\n\n'
              '[[jobs]]\nname = "pooled"\ncallable = "pooled:run"\nevery = "365d"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "pooled")
        [task] = worker.wait_tasks("status = 'succeeded' AND origin = 'manual'")
        worker.cli("jobs", "run", "pooled")
        worker.wait_tasks("status = 'succeeded' AND origin = 'manual'", count=2)
        assert "received SIGTERM" not in worker.log()
        assert worker.stop() == 0
    assert task["output"] == "returned: [1, 2]\n"
