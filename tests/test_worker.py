"""What a job run does to a real `edgeworker run`: whatever a job raises or does, the worker
records an outcome and goes on."""

import os
import signal

import pytest
from workerproc import WorkerProcess, wait_for

pytestmark = pytest.mark.timeout(90)

JOBS = '''
import os, sys, time

class Escape(BaseException):
    pass

def leave(ctx):
    sys.exit(0)

def interrupt(ctx):
    raise KeyboardInterrupt

def escape(ctx):
    raise Escape("past except Exception")

def hang(ctx):
    with open(os.environ["PID_FILE"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(300)
'''


def callable_worker(tmp_path, jobs: str, worker: str = "") -> WorkerProcess:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "myjobs.py").write_text(JOBS)
    config = f'[worker]\ndatabase = "ew.db"\npython_path = ["lib"]\n{worker}\n{jobs}'
    return WorkerProcess(tmp_path, config)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


def test_a_callable_that_exits_or_interrupts_fails_and_its_job_runs_again(tmp_path):
    jobs = "".join(f'[[jobs]]\nname = "{name}"\ncallable = "myjobs:{name}"\nevery = "365d"\n'
                   "max_attempts = 1\n" for name in ("leave", "interrupt", "escape"))
    with callable_worker(tmp_path, jobs, "workers = 1") as worker:
        worker.start().wait_running()
        for name in ("leave", "interrupt", "escape", "leave"):
            task_id = int(worker.cli("jobs", "run", name).stdout.split()[2])
            worker.wait_tasks(f"id = {task_id} AND status = 'failed'")
        assert worker.stop() == 0
    errors = {t["job"]: t["error"].splitlines()[-1] for t in worker.tasks("status = 'failed'")}
    assert errors == {"leave": "the callable called sys.exit(0) instead of returning",
                      "interrupt": "KeyboardInterrupt",
                      "escape": "myjobs.Escape: past except Exception"}
    assert "Traceback" not in worker.log()


def test_an_isolated_callable_is_stopped_at_its_timeout(tmp_path):
    pids = tmp_path / "pids"
    jobs = ('[[jobs]]\nname = "hang"\ncallable = "myjobs:hang"\nevery = "365d"\nisolate = true\n'
            'timeout = "1s"\nmax_attempts = 1\n')
    with callable_worker(tmp_path, jobs, "workers = 1") as worker:
        worker.start(env={"PID_FILE": str(pids)}).wait_running()
        worker.cli("jobs", "run", "hang")
        [task] = worker.wait_tasks("status = 'failed'", timeout=20)
        assert task["error"] == "timed out after 1s: stopped its process"
        [pid] = map(int, pids.read_text().split())
        assert pid != worker.proc.pid
        wait_for(lambda: gone(pid), 10, what=f"the callable's process {pid} to end")
        worker.stop()


def test_sigterm_stops_an_isolated_callable_and_it_runs_again_at_the_next_start(tmp_path):
    pids = tmp_path / "pids"
    jobs = '[[jobs]]\nname = "hang"\ncallable = "myjobs:hang"\nevery = "365d"\nisolate = true\n'
    with callable_worker(tmp_path, jobs, 'shutdown_timeout = "500ms"') as worker:
        worker.start(env={"PID_FILE": str(pids)}).wait_running()
        worker.cli("jobs", "run", "hang")
        worker.wait_tasks("status = 'running'")
        wait_for(lambda: pids.exists() and pids.read_text().strip(), what="the callable")
        assert worker.stop(signal.SIGTERM) == 0
        [pid] = map(int, pids.read_text().split())
        wait_for(lambda: gone(pid), 10, what=f"the callable's process {pid} to end")
        assert "interrupted by shutdown" in worker.log()
        [task] = worker.tasks("origin = 'manual'")
        assert task["status"] == "running"  # recovery runs it again at the next start
        worker.start(env={"PID_FILE": str(pids)}).wait_running()
        wait_for(lambda: len(pids.read_text().split()) == 2, what="the recovered run")
        worker.stop()
    assert os.path.exists(worker.db)
