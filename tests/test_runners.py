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
    Abort,
    Interrupted,
    TaskContext,
    command_env,
    run_callable,
    run_command,
    run_isolated,
)


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
    abort = Abort()
    threading.Timer(0.3, abort.set).start()
    with pytest.raises(Interrupted):
        run("sleep 30", timeout=None, abort=abort, grace=0.5)


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
    abort = Abort()
    threading.Timer(0.3, abort.set).start()
    with pytest.raises(Interrupted):
        run_isolated(lambda c: time.sleep(30), ctx(), None, abort=abort, grace=0.5)


def test_an_isolated_callable_that_kills_its_process_fails():
    result = run_isolated(lambda c: os._exit(7), ctx(), None)
    assert (result.succeeded, result.exit_code) == (False, 7)
    assert result.error == "the callable's process ended: exit status 7"
