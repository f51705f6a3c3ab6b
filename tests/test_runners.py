"""Commands as real subprocesses, callables in the calling thread."""

import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from edgeworker.runners import (
    OUTPUT_LIMIT,
    Interrupted,
    TaskContext,
    command_env,
    run_callable,
    run_command,
    run_isolated,
)
from edgeworker.wakeup import Flag


def run(target, shell=False, timeout=None, env=None, cwd=None, **kwargs):
    return run_command(target, shell, command_env(dict(os.environ), {}, env or {}), cwd, timeout,
                       **kwargs)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(") ")[1][0] != "Z"


def session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(") ", 1)[1].split()[3])


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_success_output_and_environment(tmp_path):
    result = run("sh -c 'echo out; echo err >&2; echo $EDGEWORKER_TASK_ID $MY; pwd'",
                 env={"EDGEWORKER_TASK_ID": "42", "MY": "v"}, cwd=str(tmp_path))
    assert (result.succeeded, result.exit_code, result.error) == (True, 0, None)
    assert result.output == f"out\nerr\n42 v\n{tmp_path}\n"


def test_no_shell_unless_asked():
    assert run("echo $HOME | cat").output == "$HOME | cat\n"
    assert run("echo $((1+1)) | cat", shell=True).output == "2\n"


def test_exit_status_and_missing_command():
    result = run("sh -c 'exit 7'")
    assert (result.succeeded, result.exit_code, result.error) == (False, 7, "exit status 7")
    result = run("no-such-program-xyz --flag")
    assert (result.succeeded, result.exit_code, result.error) == (
        False, 127, "command not found: no-such-program-xyz")
    result = run("true", cwd="/nonexistent/dir")
    assert result.error == "working directory /nonexistent/dir does not exist"


def test_binary_output_and_the_64k_tail():
    result = run("sh -c 'head -c 300000 /dev/urandom; printf \"\\nTHE END\\n\"'")
    assert result.succeeded
    assert result.output.endswith("THE END\n")
    assert result.output.startswith("[... ")
    body = result.output.split("dropped ...]\n", 1)[1]
    assert len(body.encode("utf-8", errors="surrogatepass")) >= OUTPUT_LIMIT * 0.9
    assert "\ufffd" in body  # undecodable bytes replaced, not a crash


def test_timeout_kills_the_whole_process_group(tmp_path):
    pids = tmp_path / "pids"
    script = (f"sleep 300 & echo $! >> {pids}; "
              f"sh -c 'sleep 300' & echo $! >> {pids}; "
              "trap '' TERM; echo started; wait")
    started = time.monotonic()
    result = run(script, shell=True, timeout=0.5, grace=0.5)
    assert time.monotonic() - started < 5
    assert result.succeeded is False
    assert result.error == "timed out after 0.5s: stopped its process group"
    assert result.output == "started\n"
    for pid in map(int, pids.read_text().split()):
        assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"


def test_abort_stops_a_command_and_records_nothing(tmp_path):
    abort = Flag()
    threading.Timer(0.3, abort.set).start()
    with pytest.raises(Interrupted):
        run("sleep 30", timeout=None, abort=abort, grace=0.5)


def test_an_abort_with_a_deadline_kills_before_the_grace_is_over(tmp_path):
    # a fenced worker's abort: SIGTERM, then SIGKILL by its lease's end, whatever the grace
    marks = tmp_path / "marks"
    abort = Flag()
    started = time.monotonic()
    abort.kill_by = started + 1.0
    threading.Timer(0.3, abort.set).start()
    with pytest.raises(Interrupted):
        run(f"trap 'echo term >> {marks}' TERM; while :; do sleep 0.05; done", timeout=None,
            shell=True, abort=abort, grace=60)
    assert time.monotonic() - started < 30  # not the grace's 60 s
    assert marks.read_text() == "term\n"  # SIGTERM came first


def test_command_dies_with_its_worker(tmp_path):
    """PR_SET_PDEATHSIG: a worker killed with SIGKILL takes its command with it."""
    import subprocess
    import sys

    marker = tmp_path / "child"
    code = ("import os, sys; from edgeworker.runners import run_command; "
            f"run_command('sh -c \"echo $$ > {marker}; exec sleep 300\"', False, dict(os.environ),"
            " None, None)")
    worker = subprocess.Popen([sys.executable, "-c", code])
    assert wait_for(lambda: marker.exists() and marker.read_text().strip())
    child = int(marker.read_text())
    assert pid_alive(child)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert wait_for(lambda: not pid_alive(child))


def ctx(timeout=None, logger_name="edgeworker.job.test"):
    return TaskContext(task_id=1, job="test", attempt=1, recovered=False,
                       scheduled_for=datetime(2026, 1, 1, tzinfo=UTC),
                       deadline=None if timeout is None else time.monotonic() + timeout,
                       logger=logging.getLogger(logger_name))


def test_callable_success_captures_its_log_lines():
    def job(c):
        c.logger.info("working on %s", c.task_id)
        return {"rows": 3}

    result = run_callable(job, ctx(), None)
    assert result.succeeded
    assert result.output == "INFO working on 1\nreturned: {'rows': 3}\n"


def test_each_run_of_a_thread_keeps_its_own_log_lines_and_leaves_no_handler():
    """A worker thread's runs share one log handler: each run's output has its lines only."""
    def job(c):
        c.logger.info("run %s", c.job)
        logging.getLogger("edgeworker.job.other").info("to the other logger")

    first = run_callable(job, ctx(), None)
    second = run_callable(job, ctx(logger_name="edgeworker.job.other"), None)
    assert first.output == "INFO run test\n"
    assert second.output == "INFO run test\nINFO to the other logger\n"
    assert logging.getLogger("edgeworker.job.test").handlers == []
    assert logging.getLogger("edgeworker.job.other").handlers == []


def test_callable_exception_fails_with_its_traceback():
    def job(c):
        raise RuntimeError("sensor offline")

    result = run_callable(job, ctx(), None)
    assert result.succeeded is False
    assert result.error.startswith("Traceback (most recent call last):")
    assert result.error.endswith("RuntimeError: sensor offline")


def test_callable_timeout_is_enforced_even_through_except_exception():
    def job(c):
        assert c.time_left() <= 0.3
        try:
            while True:
                time.sleep(0.01)
        except Exception:
            return "swallowed"

    started = time.monotonic()
    result = run_callable(job, ctx(0.3), 0.3)
    assert time.monotonic() - started < 2
    assert (result.succeeded, result.error) == (False, "timed out after 0.3s")
    time.sleep(0.4)  # the timer must not fire later into this thread


class Escape(BaseException):
    pass


def _exit(c):
    sys.exit(0)


def _interrupt(c):
    raise KeyboardInterrupt


def _generator_exit(c):
    raise GeneratorExit("closed")


def _escape(c):
    raise Escape("past except Exception")


@pytest.mark.parametrize("isolate", [False, True], ids=["thread", "isolated"])
@pytest.mark.parametrize("job, error", [
    (_exit, "the callable called sys.exit(0) instead of returning"),
    (_interrupt, "KeyboardInterrupt"),
    (_generator_exit, "GeneratorExit: closed"),
    (_escape, "test_runners.Escape: past except Exception"),
])
def test_whatever_a_callable_raises_is_its_outcome(job, error, isolate):
    result = run_isolated(job, ctx(), None) if isolate else run_callable(job, ctx(), None)
    assert (result.succeeded, result.error.splitlines()[-1]) == (False, error)


def test_a_huge_callable_timeout_is_no_timer_overflow():
    result = run_callable(lambda c: "ok", ctx(), 1e20)
    assert result.succeeded


def test_an_isolated_callable_reports_its_result_and_log_lines():
    parent = os.getpid()

    def job(c):
        c.logger.info("in %s", "child" if os.getpid() != parent else "worker")
        return c.task_id

    result = run_isolated(job, ctx(), None)
    assert (result.succeeded, result.output) == (True, "INFO in child\nreturned: 1\n")


def test_an_isolated_callable_blocked_in_c_is_stopped_at_its_timeout(tmp_path):
    pid_file = tmp_path / "pid"

    def job(c):
        pid_file.write_text(str(os.getpid()))
        time.sleep(300)  # one C call: a thread's timeout would wait for it to return

    result = run_isolated(job, ctx(0.5), 0.5, grace=0.5)
    assert (result.succeeded, result.error) == (False,
                                                "timed out after 0.5s: stopped its process")
    assert wait_for(lambda: not pid_alive(int(pid_file.read_text())))


def test_an_isolated_callable_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    def job(c):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(300)

    result = run_isolated(job, ctx(0.3), 0.3, grace=0.3)
    assert result.error == "timed out after 0.3s: stopped its process"


def test_abort_stops_an_isolated_callable_and_records_nothing():
    abort = Flag()
    threading.Timer(0.3, abort.set).start()
    with pytest.raises(Interrupted):
        run_isolated(lambda c: time.sleep(30), ctx(), None, abort=abort, grace=0.5)


def test_an_isolated_callable_that_kills_its_process_fails():
    result = run_isolated(lambda c: os._exit(7), ctx(), None)
    assert (result.succeeded, result.exit_code) == (False, 7)
    assert result.error == "the callable's process ended: exit status 7"


# -- a run's whole process tree ---------------------------------------------------------------

TREE = ("sleep 300 & echo $! >> {pids}; "
        "sh -c 'sleep 300 & echo $! >> {pids}; wait' & echo $! >> {pids}; "
        "setsid sh -c 'echo $$ >> {pids}; exec sleep 300' & "
        "{tail}")


# A command that exits at once, leaving its tree behind (all four pids written first).
EXIT_EARLY = 'until [ "$(wc -l < {pids})" -ge 4 ]; do sleep 0.01; done; echo started'


def pids_in(path, count):
    wait_for(lambda: path.exists() and len(path.read_text().split()) >= count)
    found = [int(p) for p in path.read_text().split()]
    assert len(found) == count
    return found


def table_for(tmp_path):
    from edgeworker.processes import ProcessTable

    database = tmp_path / "ew.db"
    database.touch()
    return ProcessTable.for_database(database)


@pytest.mark.timeout(60)
def test_background_children_are_ended_when_the_command_exits(tmp_path):
    """sh -c 'sleep 1000 & echo started': the run neither waits on the pipe the sleep holds nor
    leaves it running (it used to wait 1000 s, then "succeed" with the sleep still alive)."""
    pid_file = tmp_path / "pid"
    result = run(f"sleep 1000 & echo $! > {pid_file}; echo started", shell=True)
    assert (result.succeeded, result.output) == (True, "started\n")
    pid = int(pid_file.read_text())
    assert wait_for(lambda: not pid_alive(pid)), "the background child outlived its run"


@pytest.mark.timeout(60)
def test_a_setsid_grandchild_is_ended_with_the_runs_cgroup(tmp_path):
    table = table_for(tmp_path)
    if table.cgroups is None:
        table.close()
        pytest.skip("no writable cgroup v2 here: a setsid grandchild escapes its group")
    pids = tmp_path / "pids"
    try:
        result = run_command(TREE.format(pids=pids, tail=EXIT_EARLY.format(pids=pids)), True,
                             command_env(dict(os.environ), {}, {}), None, None, table=table,
                             run=(7, 1))
        assert (result.succeeded, result.output) == (True, "started\n")
        for pid in pids_in(pids, 4):
            assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"
        assert not os.path.exists(f"{table.cgroups}/task-7.1")
        assert os.listdir(table.directory) == []  # the record is gone with the run
    finally:
        table.close()
    assert not os.path.exists(table.cgroups)


@pytest.mark.timeout(60)
def test_without_a_cgroup_a_setsid_grandchild_is_found_by_its_environment(tmp_path):
    """Where cgroup v2 is not writable (a non-root worker, the shipped unit without Delegate=)."""
    from edgeworker.processes import ProcessTable

    table = ProcessTable("nocgroup", tmp_path / "records", None)
    pids = tmp_path / "pids"
    result = run_command(TREE.format(pids=pids, tail=EXIT_EARLY.format(pids=pids)), True,
                         command_env(dict(os.environ), {}, {}), None, None, table=table,
                         run=(6, 1))
    assert (result.succeeded, result.output) == (True, "started\n")
    for pid in pids_in(pids, 4):
        assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"


@pytest.mark.timeout(60)
def test_a_timeout_ends_a_setsid_grandchild_too(tmp_path):
    table = table_for(tmp_path)
    if table.cgroups is None:
        table.close()
        pytest.skip("no writable cgroup v2 here: a setsid grandchild escapes its group")
    pids = tmp_path / "pids"
    try:
        result = run_command(TREE.format(pids=pids, tail="trap '' TERM; wait"), True,
                             command_env(dict(os.environ), {}, {}), None, 0.5, grace=0.2,
                             table=table, run=(8, 1))
        assert result.error == "timed out after 0.5s: stopped its process group"
        for pid in pids_in(pids, 4):
            assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"
    finally:
        table.close()


@pytest.mark.timeout(60)
def test_a_cancel_stops_the_whole_tree(tmp_path):
    pids = tmp_path / "pids"
    asked = []

    def cancelled():
        asked.append(1)
        return "cancelled by tester (uid 0)" if pids.exists() and len(
            pids.read_text().split()) >= 4 else None

    table = table_for(tmp_path)
    try:
        result = run_command(TREE.format(pids=pids, tail="wait"), True,
                             command_env(dict(os.environ), {}, {}), None, None, grace=0.5,
                             table=table, run=(9, 1), cancelled=cancelled)
    finally:
        table.close()
    assert (result.succeeded, result.error) == (False, "cancelled by tester (uid 0)")
    for pid in pids_in(pids, 4)[:3 if table.cgroups is None else 4]:
        assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"


WORKER = """
import os, sys
from edgeworker.processes import ProcessTable
from edgeworker.runners import command_env, run_command
table = ProcessTable.for_database(sys.argv[1], use_cgroups=sys.argv[3] == "cgroup")
run_command(sys.argv[2], True, command_env(dict(os.environ), {}, {}), None, None, table=table,
            run=(5, 1))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cgroup", [False, True], ids=["group", "cgroup"])
def test_a_killed_workers_tree_dies_with_it_or_at_the_next_start(tmp_path, cgroup):
    """The run's watcher takes the whole group with the worker (PR_SET_PDEATHSIG would take only
    the command itself), and the whole cgroup where there is one; without, the grandchild in a
    session of its own is ended by the next start."""
    import subprocess
    import sys

    from edgeworker.processes import ProcessTable

    database = tmp_path / "ew.db"
    database.touch()
    pids = tmp_path / "pids"
    leader = tmp_path / "leader"
    script = TREE.format(pids=pids, tail=f"echo $$ > {leader}; wait")
    if cgroup:
        probe = table_for(tmp_path)
        probe.close()
        if probe.cgroups is None:
            pytest.skip("no writable cgroup v2 here")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(database), script,
                               "cgroup" if cgroup else "group"])
    try:
        tree = pids_in(pids, 4)
        assert wait_for(lambda: leader.exists() and leader.read_text().strip())
        command = int(leader.read_text())
        [escaped] = [pid for pid in tree if session_of(pid) == pid]
        worker.kill()
        worker.wait()
        for pid in [command, *tree]:
            if pid != escaped or cgroup:
                assert wait_for(lambda p=pid: not pid_alive(p)), f"{pid} outlived its worker"
        table = ProcessTable.for_database(database)
        if cgroup:  # nothing left at all, once the watcher itself is gone
            assert wait_for(lambda: not table.leftovers()[0])
        else:
            assert pid_alive(escaped)  # what the next start is for
        ended = table.end_leftovers(1.0)
        table.close()
        assert ended == (0 if cgroup else 1)
        for pid in tree:
            assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"
        assert not os.path.exists(table.directory)
    finally:
        worker.kill()
        for pid in (pids_in(pids, 4) if pids.exists() else []):
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# A worker whose callable starts a program and forks a child, then is killed (argv: database,
# pid file, "cgroup" or "group", worker name). It leads its process group, as under systemd.
CALLABLE_WORKER = """
import multiprocessing, os, subprocess, sys, time
from edgeworker.processes import ProcessTable
table = ProcessTable.for_database(sys.argv[1], use_cgroups=sys.argv[3] == "cgroup")
table.enclose(sys.argv[4])
started = subprocess.Popen(["sleep", "300"])  # exec'd: it inherits the worker's mark
forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))
forked.start()  # not exec'd: its environment is the worker's at start, without the mark
with open(sys.argv[2], "w") as f:
    f.write(f"{started.pid} {forked.pid}")
if sys.argv[5:] == ["stop"]:
    table.close(1.0)
    print(all(p.poll() is not None for p in (started,)), forked.exitcode)
    sys.exit(0)
time.sleep(300)
"""


def start_callable_worker(tmp_path, cgroup: bool, name: str = "w1", *more: str):
    import subprocess
    import sys

    database = tmp_path / "ew.db"
    database.touch()
    if cgroup:
        probe = table_for(tmp_path)
        probe.close()
        if probe.cgroups is None:
            pytest.skip("no writable cgroup v2 here")
    pids = tmp_path / f"pids-{name}"
    worker = subprocess.Popen([sys.executable, "-c", CALLABLE_WORKER, str(database), str(pids),
                               "cgroup" if cgroup else "group", name, *more],
                              process_group=0, stdout=subprocess.PIPE, text=True)
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    return database, worker, [int(p) for p in pids.read_text().split()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cgroup", [False, True], ids=["group", "cgroup"])
def test_what_a_killed_workers_callables_started_is_ended_at_the_next_start(tmp_path, cgroup):
    """A callable's processes are not a run's: they outlive a SIGKILLed worker. The next start
    finds the program it started by its environment, and the child it forked by the worker's
    cgroup or, without one, by the worker's process group."""
    from edgeworker.processes import ProcessTable

    database, worker, children = start_callable_worker(tmp_path, cgroup)
    try:
        worker.kill()
        worker.wait()
        assert all(pid_alive(pid) for pid in children)  # under PID 1 now: nobody ends them
        table = ProcessTable.for_database(database, use_cgroups=cgroup)
        assert sorted(table.leftovers()[0]) == sorted(children)
        assert table.end_leftovers(1.0) == 2
        table.close()
        for pid in children:
            assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"
        assert not os.path.exists(table.directory)
        assert table.cgroups is None or not os.path.exists(table.cgroups)
    finally:
        worker.kill()
        worker.wait()
        for pid in children:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cgroup", [False, True], ids=["group", "cgroup"])
def test_a_clean_stop_ends_what_its_callables_left_running(tmp_path, cgroup):
    database, worker, children = start_callable_worker(tmp_path, cgroup, "w1", "stop")
    out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert out.split() == ["True", "-15"]  # the program ended, the forked child by SIGTERM
    for pid in children:
        assert not pid_alive(pid)
    from edgeworker.processes import ProcessTable

    table = ProcessTable.for_database(database)
    assert table.leftovers() == ({}, [])
    table.close()


@pytest.mark.timeout(60)
def test_a_live_workers_callables_are_not_taken_for_leftovers(tmp_path):
    """On PostgreSQL, another worker of this host may run on the same database: its record is
    left alone while it lives, however its runs are named."""
    from edgeworker.processes import WORKER, ProcessTable, worker_tag

    database, worker, children = start_callable_worker(tmp_path, True)
    try:
        table = ProcessTable.for_database(database)
        assert table.leftovers(only={(WORKER, worker_tag("w1"))}) == ({}, [])
        assert table.end_leftovers(1.0, only={(WORKER, worker_tag("w1"))}) == 0
        assert worker.poll() is None and all(pid_alive(pid) for pid in children)
        table.close()
    finally:
        worker.kill()
        worker.wait()
        table = ProcessTable.for_database(database)
        table.end_leftovers(1.0)
        table.close()
    for pid in children:
        assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"


def test_every_run_is_marked_in_its_environment(tmp_path):
    from edgeworker.processes import ProcessTable

    table = ProcessTable("-", None, None)
    result = run_command("echo $EDGEWORKER_RUN", True, command_env(dict(os.environ), {}, {}),
                         None, None, table=table, run=(3, 2))
    assert (result.succeeded, result.output) == (True, "-:3:2\n")


def test_a_program_that_is_not_executable_is_refused(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    result = run(str(script))
    assert (result.succeeded, result.exit_code, result.error) == (
        False, 126, f"permission denied: {script}")


def test_an_adopted_process_group_is_a_run_too(tmp_path):
    """What a callable run in a forked child (its own session) needs: a record, `kill_all`,
    and its whole group ended."""
    import subprocess

    table = table_for(tmp_path)
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True,
                            stdout=subprocess.PIPE)
    try:
        tree = table.adopt(proc, 4, 1)
        assert table.find(4, 1).pgid == proc.pid
        assert wait_for(lambda: len(tree.members()) >= 2)
        members = tree.members()
        assert table.kill_all() == 1
        for pid in members:
            assert wait_for(lambda p=pid: not pid_alive(p)), f"pid {pid} survived"
        proc.wait()
        tree.close()
        assert table.find(4, 1) is None
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        for path, _ in table.records():
            os.unlink(path)
        table.close()
