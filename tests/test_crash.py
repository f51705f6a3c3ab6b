"""Crash tests: SIGKILL the real worker at random moments and check that nothing was lost.

`make test` runs the short version here; `make test-task-recovery` runs 200 kills."""

import signal

import pytest
from torture import run_crashes
from workerproc import WorkerProcess, wait_for


@pytest.mark.timeout(300)
def test_twenty_kills_lose_nothing(tmp_path):
    figures = run_crashes(tmp_path, kills=20, seed=20261129)
    print(figures.line())
    assert figures.kills == 20
    assert (figures.lost_states, figures.stuck, figures.overlaps, figures.orphans) == (0, 0, 0, 0)
    assert figures.interrupted > 0  # some kills did land inside tasks


@pytest.mark.timeout(120)
def test_a_poison_task_stops_after_max_attempts(tmp_path):
    """A task that kills its worker every time ends failed instead of crash-looping the box."""
    config = '''
[[jobs]]
name = "poison"
command = "sh -c 'echo $EDGEWORKER_ATTEMPT >> attempts; kill -9 $PPID; sleep 5'"
every = "1d"
max_attempts = 3
'''
    worker = WorkerProcess(tmp_path, config)
    worker.cli("migrate")
    worker.cli("jobs", "sync")
    task_id = int(worker.cli("jobs", "run", "poison").stdout.split()[2])
    deaths = 0
    for _ in range(6):
        worker.start()
        wait_for(lambda: worker.proc.poll() is not None
                 or worker.tasks(f"id = {task_id} AND status = 'failed'"), 60,
                 what="the worker to die or the task to fail", log=worker.log)
        if worker.proc.poll() is None:
            break
        assert worker.proc.returncode == -signal.SIGKILL
        deaths += 1
    [task] = worker.tasks(f"id = {task_id}")
    assert worker.stop() == 0  # the box keeps working
    assert deaths == 3
    assert (tmp_path / "attempts").read_text().split() == ["1", "2", "3"]
    assert (task["status"], task["attempt"]) == ("failed", 3)
    assert task["error"] == ("interrupted on attempt 3 of 3 (the worker stopped while it ran): "
                             "no attempt left")


@pytest.mark.timeout(120)
def test_a_recovered_task_knows_it(tmp_path):
    config = '''
[[jobs]]
name = "slow"
command = "sh -c 'echo $EDGEWORKER_ATTEMPT $EDGEWORKER_RECOVERED >> seen; sleep 2'"
every = "1d"
max_attempts = 2
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.cli("migrate")
        worker.cli("jobs", "sync")
        task_id = int(worker.cli("jobs", "run", "slow").stdout.split()[2])
        worker.start()
        seen = tmp_path / "seen"  # created by `>>` before echo writes its line: wait for the line
        wait_for(lambda: seen.exists() and seen.read_text() == "1 0\n", what="the first attempt",
                 log=worker.log)
        worker.kill()
        worker.start()
        worker.wait_tasks(f"id = {task_id} AND status = 'succeeded'")
        worker.stop()
    assert (tmp_path / "seen").read_text().splitlines() == ["1 0", "2 1"]
    [task] = worker.tasks(f"id = {task_id}")
    assert (task["attempt"], task["recovered_count"]) == (2, 1)
    assert "recovered 1, failed 0" in worker.log()
    status = worker.cli("status", "--json").stdout
    assert '"recovered": 1' in status


# A job whose script holds a lock (fd 9, inherited by everything it starts) for as long as any
# process of its run lives: a run that cannot take it at once saw an earlier run still alive.
TREE_JOB = r'''
[[jobs]]
name = "tree"
shell = true
command = """
exec 9>>lock-$EDGEWORKER_TASK_ID
flock -n 9 || echo "$EDGEWORKER_TASK_ID $EDGEWORKER_ATTEMPT overlap" >> ledger
echo "$EDGEWORKER_TASK_ID $EDGEWORKER_ATTEMPT start" >> ledger
sleep 300 & echo $! >> pids
sh -c 'sleep 300 & echo $! >> pids; wait' & echo $! >> pids
setsid sh -c 'echo $$ >> pids; exec sleep 300' &
if [ "$EDGEWORKER_ATTEMPT" -ge 2 ]; then  # exit, leaving the tree behind to be ended
    until [ "$(wc -l < pids)" -ge 8 ]; do sleep 0.01; done
    exit 0
fi
wait
"""
every = "1d"
max_attempts = 3
'''


def session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(") ", 1)[1].split()[3])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0] not in "ZX"
    except FileNotFoundError:
        return False


def run_until_pids(worker: WorkerProcess, job: str, pids, count: int) -> tuple[int, list[int]]:
    """Queue a run of `job`, start the worker, and wait until the run has written `count` pids
    into `pids`: the task id, and those pids."""
    worker.cli("migrate")
    worker.cli("jobs", "sync")
    task_id = int(worker.cli("jobs", "run", job).stdout.split()[2])
    worker.start()
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == count, 30,
             what=f"the first attempt's {count} processes", log=worker.log)
    return task_id, [int(pid) for pid in pids.read_text().split()]


@pytest.mark.timeout(120)
def test_a_killed_workers_process_tree_never_runs_beside_the_rerun(tmp_path):
    """SIGKILL the worker while the job's script has children and grandchildren (one in a session
    of its own): the next start ends all of them before the task runs again, the re-run's own
    leftovers end with it, and nothing is left after the stop."""
    pids, ledger = tmp_path / "pids", tmp_path / "ledger"
    with WorkerProcess(tmp_path, TREE_JOB) as worker:
        task_id, first = run_until_pids(worker, "tree", pids, 4)
        [escaped] = [pid for pid in first if session_of(pid) == pid]
        cgroups = "commands run in a cgroup each" in worker.log()
        worker.kill()
        for pid in first:  # the run's watcher takes its group (or cgroup) with the worker
            if pid != escaped or cgroups:
                wait_for(lambda p=pid: not alive(p), 10, what=f"pid {pid} to die with the worker")
        if not cgroups:
            assert alive(escaped)  # under PID 1, in a session of its own: for the next start
        worker.start()
        worker.wait_tasks(f"id = {task_id} AND status = 'succeeded'", timeout=30)
        assert worker.stop() == 0
        everything = [int(pid) for pid in pids.read_text().split()]
        assert len(everything) == 8
        for pid in everything:
            wait_for(lambda p=pid: not alive(p), 10, what=f"pid {pid} to end")
        assert ledger.read_text().splitlines() == [f"{task_id} 1 start", f"{task_id} 2 start"]
        ended = "ended 0 leftover processes" if cgroups else "ended 1 leftover process\n"
        assert ended in worker.log()
        [task] = worker.tasks(f"id = {task_id}")
        assert (task["attempt"], task["recovered_count"]) == (2, 1)
        assert worker.end_leftovers() == 0


# A callable that starts a program and forks a child (not a run's processes: the worker's), then
# blocks on its first attempt; on its second it returns at once and leaves them running.
CALLABLE_TREE = '''
import multiprocessing, os, subprocess, time

def spawn(ctx):
    started = subprocess.Popen(["sleep", "300"])
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))
    forked.start()
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "pids"), "a") as out:
        out.write(f"{started.pid} {forked.pid}\\n")
    if ctx.attempt < 2:
        time.sleep(300)
'''


@pytest.mark.timeout(120)
def test_what_a_killed_workers_callable_started_never_runs_beside_the_rerun(tmp_path):
    """A callable runs in the worker, so what it starts is the worker's, not a run's: it outlives
    a SIGKILL. The next start ends it before the task runs again, and a clean stop ends what the
    re-run left."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "spawner.py").write_text(CALLABLE_TREE)
    pids = tmp_path / "pids"
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["lib"]\n\n[[jobs]]\nname = "spawn"\n'
              'callable = "spawner:spawn"\nevery = "1d"\nmax_attempts = 3\n')
    with WorkerProcess(tmp_path, config) as worker:
        task_id, first = run_until_pids(worker, "spawn", pids, 2)
        worker.kill()
        assert all(alive(pid) for pid in first)  # nobody's children now: for the next start
        worker.start()
        worker.wait_tasks(f"id = {task_id} AND status = 'succeeded'", timeout=30)
        for pid in first:
            assert not alive(pid), f"pid {pid} ran beside the re-run"
        assert "ended 2 leftover processes" in worker.log()
        again = [int(pid) for pid in pids.read_text().split()[2:]]
        assert len(again) == 2 and all(alive(pid) for pid in again)
        assert worker.stop() == 0
        for pid in again:
            wait_for(lambda p=pid: not alive(p), 10, what=f"pid {pid} to end with the stop")
        [task] = worker.tasks(f"id = {task_id}")
        assert (task["attempt"], task["recovered_count"]) == (2, 1)
        assert worker.end_leftovers() == 0


@pytest.mark.timeout(120)
def test_a_command_dies_with_the_worker_even_beside_a_callables_fork(tmp_path):
    """A command's watcher waits for the end of a pipe only the worker holds. A callable's fork
    (a `multiprocessing` child) while the command runs must not hold it too, or the command
    would outlive the worker for as long as that child lives."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "spawner.py").write_text(CALLABLE_TREE)
    pids, tree = tmp_path / "pids", tmp_path / "tree"
    config = ('[worker]\ndatabase = "ew.db"\npython_path = ["lib"]\n\n'
              '[[jobs]]\nname = "spawn"\ncallable = "spawner:spawn"\nevery = "1d"\n\n'
              f'[[jobs]]\nname = "sleeper"\ncommand = "sh -c \'echo $$ > {tree}; sleep 300\'"\n'
              'every = "1d"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.cli("migrate")
        worker.cli("jobs", "sync")
        worker.start()
        worker.cli("jobs", "run", "sleeper")
        wait_for(lambda: tree.exists() and tree.read_text().strip(), 30,
                 what="the command", log=worker.log)
        worker.cli("jobs", "run", "spawn")  # forks while the command runs
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 30,
                 what="the callable's processes", log=worker.log)
        command = int(tree.read_text())
        worker.kill()
        wait_for(lambda: not alive(command), 10, what="the command to die with the worker")
