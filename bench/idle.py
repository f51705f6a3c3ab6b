"""An idle worker: resident memory, bytes written per minute, wake-ups per second.

Starts real `edgeworker run` processes (2 worker threads, the default) whose only job runs once a
day: nothing is due, and start-up (migrations, sync, recovery, the first scheduling) is over
within the first second. After `settle` seconds (10 s) it reads VmRSS from /proc/PID/status;
then, over a window (60 s: long enough to include an idle worker thread's periodic re-read of the
schedule), it counts
- bytes written: /proc/PID/io `write_bytes` (what reaches the storage layer) and the growth of the
  database files (db, -wal, -shm);
- commits: the commit frames added to the WAL (its frame headers; a WAL that a checkpoint
  restarted in the window counts all of its commits);
- wake-ups: how many times any of the process's threads was put on a CPU (the 3rd field of
  /proc/PID/task/*/schedstat, summed over threads), and, beside it, voluntary + involuntary
  context switches from /proc/PID/task/*/status.
The repeats run side by side (separate databases): idle processes do not compete for the CPU.
edgeworker's modules are byte-compiled first, as pip compiles an installed package: a worker that
compiles them from source as it starts (no __pycache__, or PYTHONDONTWRITEBYTECODE=1 and stale
ones) keeps ~0.5 MiB more resident, the compiler's garbage.
"""

from __future__ import annotations

import compileall
import shutil
import sys
import time

from bench.common import (
    REPO,
    Figure,
    Stat,
    WorkerProcess,
    files_size,
    rss_kib,
    scratch_dir,
    thread_switches,
    wal_log,
    worker_config,
    write_bytes,
)

JOB = '[[jobs]]\nname = "daily"\ncallable = "bench.jobs:noop"\nevery = "24h"\n'


def wal_state(database) -> tuple[bytes, int]:
    """The WAL's salts (a checkpoint that restarts the WAL changes them) and its commits."""
    try:
        with open(f"{database}-wal", "rb") as wal:
            salts = wal.read(24)[16:24]
    except FileNotFoundError:
        return b"", 0
    return salts, len(wal_log(database))


def commits_since(database, before: tuple[bytes, int]) -> int:
    salts, commits = wal_state(database)
    return commits - before[1] if salts == before[0] else commits


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    repeats, settle, window = (1, 0.5, 0.5) if quick else (3, 10.0, 60.0)
    workers = []
    compileall.compile_dir(REPO / "edgeworker", quiet=1)
    try:
        for _ in range(repeats):
            directory = scratch_dir("idle")
            workers.append(WorkerProcess(directory, worker_config(JOB), name="ew").start())
        for worker in workers:
            worker.wait_running()
        time.sleep(settle)
        before = []
        for worker in workers:
            pid = worker.proc.pid
            before.append({"rss": rss_kib(pid), "written": write_bytes(pid),
                           "size": files_size(worker.db), "switches": thread_switches(pid),
                           "wal": wal_state(worker.db), "at": time.monotonic()})
        time.sleep(window)
        runs = []
        for worker, b in zip(workers, before, strict=True):
            pid = worker.proc.pid
            switches = thread_switches(pid)
            seconds = time.monotonic() - b["at"]
            runs.append({
                "rss_mib": b["rss"] / 1024,
                "written_per_min": (write_bytes(pid) - b["written"]) / seconds * 60,
                "growth_per_min": (files_size(worker.db) - b["size"]) / seconds * 60,
                "commits": commits_since(worker.db, b["wal"]),
                "wakeups_per_s": (switches["scheduled"] - b["switches"]["scheduled"]) / seconds,
                "switches_per_s": sum(switches[k] - b["switches"][k]
                                      for k in ("voluntary", "involuntary")) / seconds,
                "threads": switches["threads"],
                "window_s": seconds,
            })
            assert worker.stop() == 0
    finally:
        for worker in workers:
            worker.kill()
            shutil.rmtree(worker.dir, ignore_errors=True)

    def stat(key: str) -> Stat:
        return Stat.of([r[key] for r in runs])

    rss, written, wakeups = stat("rss_mib"), stat("written_per_min"), stat("wakeups_per_s")
    figures = [
        Figure("5", f"idle worker RSS after {settle:g} s", "MiB", rss,
               target="≤ 24 MB (22.9 MiB)", met=rss.median * 1.048576 <= 24),
        Figure("5", "idle worker bytes written per minute (write_bytes)", "B/min", written,
               target="0", met=written.high == 0, digits=0),
        Figure("5", "idle worker database files' growth per minute", "B/min",
               stat("growth_per_min"), digits=0),
        Figure("5", f"idle worker WAL commits in {window:g} s", "commits", stat("commits"),
               target="0", met=stat("commits").high == 0, digits=0),
        Figure("5", "idle worker wake-ups per second (schedstat, all threads)", "1/s", wakeups,
               target="≤ 1/s", met=wakeups.median <= 1, digits=2),
        Figure("5", "idle worker context switches per second (all threads)", "1/s",
               stat("switches_per_s"), digits=2),
    ]
    return figures, {"settle_s": settle, "window_s": window, "runs": runs}


if __name__ == "__main__":
    from bench.common import render_table

    print(render_table(measure("--quick" in sys.argv)[0]))
