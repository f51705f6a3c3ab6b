"""Scheduled runs of a no-op interval job beside raw huey: bytes written, WAL pages, commits and
CPU per run; and a run that waits for its job's running run.

Each contender runs in a fresh child process (`python -m bench.scheduled child ...`) on a fresh
database on disk, so that /proc/self/io counts only its writes. Each logs its INFO lines as it
would in service (edgeworker as `edgeworker run` sets logging up, huey as `huey_consumer`), to a
pipe, so that the bytes counted are the database's.

- edgeworker: the real worker in the child: `Daemon(..., apply_migrations=True).start()` (lock,
  migrations, recovery), a job `tick` added as `jobs add` adds it (callable `bench.jobs:noop`,
  `every` 100 ms, the shortest allowed), then `start()` of the consumer it returns, with 1 worker
  thread. A run is its claim, the call, and its finish (the outcome and the job's next run);
  between runs the thread sleeps until the next one is due.
- raw huey: `SqliteHuey(fsync=True)` and its own `Consumer(workers=1)`; the job is a no-op
  `@huey.task()` that schedules its own next run in 100 ms (`task.schedule(delay=...)`): raw
  huey's way to run something every few seconds (a periodic task's resolution is a minute). A run
  is 6 commits: huey queues the delayed message, its worker dequeues it and moves it to the
  schedule, the scheduler moves it back to the queue once due (it looks once a second, so this
  job runs once a second), the worker dequeues it and calls the task.

The job itself marks its calls number `warmup` and `warmup + runs`: between the two marks lie
exactly `runs` whole cycles, whichever threads wrote. At each mark: wall and CPU time,
/proc/self/io `write_bytes`, the WAL's length. Bytes come from runs with SQLite's automatic
checkpoints on, as a worker runs (a checkpoint's writes to the database file are part of the
cost); commits and pages from a separate run with checkpoints off, read from the frame headers
of the WAL between the two marks, with the table or index each page belongs to (`dbstat`).
huey's pages per task (enqueue + execute, as in `throughput.py`) are measured here too, for the
target of issue 11, and their bytes: its pages are 4 KiB, edgeworker's 512 B, so the bytes compare
like with like where the page counts do not.

waiting: a job's run is running (`bench.jobs:hold`, which blocks until released) when a manual run
of the same job is queued (as `jobs run` queues it); 2 worker threads, so that one is free to look
at the queue. Once that thread has looked, bytes written and WAL commits are counted over a few
seconds; then the running run is released, and the waiting run must run next (it was kept).

`BEFORE` holds the same figures for the code before the `tasks` table became huey's queue (commit
b5dff58), measured once by these same children, for issue 11's target: `python -m
bench.scheduled --before /path/to/checkout` runs them with that checkout's venv and prints them.
The children drive edgeworker only through what both versions have (`Daemon` with its `start`
and `shutdown`, `add_job`, `Ledger.run_now`, `Ledger.db`), so the same code measures both.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from bench import jobs
from bench.common import (
    REPO,
    Figure,
    Stat,
    btree_names,
    reset_wal,
    scratch_dir,
    side_by_side,
    wal_log,
    write_bytes,
)
from bench.throughput import cpu_seconds
from edgeworker.db import PAGE_SIZE

EVERY = 0.1  # seconds: the shortest `every` the config allows
CONTENDERS = ("edgeworker", "huey")

# The same children on the code before the tasks became huey's queue (commit b5dff58: a run was
# a task row and a huey message), measured once on the VM of the README's run, 2026-12-02:
# `python -m bench.scheduled --before /tmp/ew-before` (a worktree of b5dff58 with its venv).
BEFORE: dict = {
    "written_kib": [19.2, 19.333, 19.173], "cpu_ms": [2.678, 2.502, 2.421],
    "pages": 10.6, "wal_kib": 10.848, "commits": 2.0,
    "btrees": {"tasks": 2.4, "tasks_unfinished": 2.0, "tasks_job_id": 1.0, "huey_schedule": 2.0,
               "huey_schedule_queue_timestamp": 2.0, "sqlite_sequence": 1.0,
               "page 1 (the database header and sqlite_schema)": 0.2},
    "waiting": {"written": 0, "commits": 0, "window": 3.0},
}


def wal_length(database: Path) -> int:
    try:
        return os.stat(f"{database}-wal").st_size
    except FileNotFoundError:
        return 0


def snapshot(database: Path) -> dict:
    return {"at": time.perf_counter(), "cpu": cpu_seconds(), "written": write_bytes(),
            "wal": wal_length(database)}


def between(database: Path, a: dict, b: dict, count_commits: bool) -> dict:
    """What happened between two snapshots; with `count_commits`, the WAL's commits in between
    (checkpoints off: the WAL only grows) and which b-trees their pages belong to."""
    result = {"seconds": b["at"] - a["at"], "cpu": b["cpu"] - a["cpu"],
              "written": b["written"] - a["written"], "wal_bytes": b["wal"] - a["wal"]}
    if count_commits:
        commits = [c for c in wal_log(database) if a["wal"] < c.end <= b["wal"]]
        names = btree_names(database)
        result["commits"] = len(commits)
        result["pages"] = sum(len(c.pages) for c in commits)
        result["commit_pages"] = [[names.get(p, f"page {p} (free)")
                                   for p in c.pages] for c in commits]
        result["btrees"] = dict(Counter(name for c in result["commit_pages"] for name in c))
    return result


def mark_calls(database: Path, first: int, runs: int) -> dict:
    """Snapshots from inside the job's calls number `first` and `first + runs`."""
    taken: dict = {}
    jobs.expect(first + runs)
    for number, name in ((first, "first"), (first + runs, "last")):
        jobs.marks[number] = lambda name=name: taken.setdefault(name, snapshot(database))
    return taken


def log_to_stderr(contender: str) -> None:
    """INFO lines on stderr (here a pipe), as `edgeworker run` logs, or `huey_consumer`."""
    if contender == "edgeworker":
        from edgeworker import logs

        logs.setup("text", "info")
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s] %(levelname)s:%(name)s:%(threadName)s:%(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


# -- the children ------------------------------------------------------------------------------

def start_worker(path: Path, specs: list, workers: int, count_commits: bool):
    """The real worker in this process, on a new database, with these jobs; not yet running."""
    from edgeworker.clock import utcnow
    from edgeworker.config import Config, WorkerSettings
    from edgeworker.daemon import Daemon
    from edgeworker.jobs import add_job

    config = Config(worker=WorkerSettings(workers=workers, python_path=(REPO,)))
    daemon = Daemon(config, path, apply_migrations=True, workers=workers)
    consumer = daemon.start()  # lock, migrations, recovery: start-up, not measured
    added = [add_job(daemon.ledger, spec, utcnow()) for spec in specs]
    if count_commits:  # every thread's connection, opened later, too
        daemon.ledger.db.pragma("wal_autocheckpoint", 0, permanent=True)
    reset_wal(daemon.ledger.db)
    return daemon, consumer, added


def stop_worker(daemon, consumer) -> None:
    """The graceful stop that SIGTERM starts in `edgeworker run`."""
    jobs.release.set()
    assert daemon.shutdown(consumer) == 0


def interval_edgeworker(directory: Path, runs: int, warmup: int, count_commits: bool) -> dict:
    from edgeworker.config import JobSpec

    log_to_stderr("edgeworker")
    path = directory / "ew.db"
    spec = JobSpec(name="tick", kind="callable", target="bench.jobs:noop", every=EVERY)
    daemon, consumer, _ = start_worker(path, [spec], 1, count_commits)
    taken = mark_calls(path, warmup, runs)
    consumer.start()
    if not jobs.all_called.wait((warmup + runs) * EVERY * 10 + 30):
        raise RuntimeError(f"only {jobs.calls} of {warmup + runs} runs in time")
    result = between(path, taken["first"], taken["last"], count_commits)
    stop_worker(daemon, consumer)
    return result


def interval_huey(directory: Path, runs: int, warmup: int, count_commits: bool) -> dict:
    from huey import SqliteHuey
    from huey.consumer import Consumer

    log_to_stderr("huey")
    path = directory / "huey.db"
    huey = SqliteHuey("bench", filename=str(path), fsync=True)

    @huey.task()
    def tick():
        jobs.tick()
        tick.schedule(delay=EVERY)

    conn = huey.storage.conn
    if count_commits:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    taken = mark_calls(path, warmup, runs)
    tick()  # the first run: queued now
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    consumer = Consumer(huey, workers=1)
    consumer.start()
    if not jobs.all_called.wait((warmup + runs) * 3 + 30):
        raise RuntimeError(f"only {jobs.calls} of {warmup + runs} runs in time")
    result = between(path, taken["first"], taken["last"], count_commits)
    consumer.stop(graceful=True)
    huey.storage.close()
    return result


def waiting_edgeworker(directory: Path, wait: float) -> dict:
    """A manual run waits while its job's run is running: what does it cost while it waits?"""
    from edgeworker.clock import utcnow
    from edgeworker.config import JobSpec

    log_to_stderr("edgeworker")
    path = directory / "ew.db"
    spec = JobSpec(name="slow", kind="callable", target="bench.jobs:hold", every=86400.0)
    daemon, consumer, [job] = start_worker(path, [spec], 2, count_commits=True)
    daemon.ledger.run_now(job, utcnow())
    consumer.start()
    if not jobs.holding.wait(30):
        raise RuntimeError("the first run did not start")
    waiting = daemon.ledger.run_now(job, utcnow())
    # The free thread is woken by that commit, looks, finds the job running, and sleeps: a
    # second after the commit it has long done so. A worker that re-queued a waiting run now
    # and then would show it in a window of whole seconds.
    time.sleep(1.0)
    a = snapshot(path)
    time.sleep(wait)
    b = snapshot(path)
    result = between(path, a, b, count_commits=True)
    released = time.time()
    jobs.release.set()
    watcher = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    deadline = time.monotonic() + 30
    row = None
    while time.monotonic() < deadline:
        row = watcher.execute("SELECT status, started_at FROM tasks WHERE id = ?",
                              (waiting.id,)).fetchone()
        if row[0] == "succeeded":
            break
        time.sleep(0.002)
    watcher.close()
    if row is None or row[0] != "succeeded":
        raise RuntimeError(f"the waiting run did not run after its job's run ended: {row}")
    result["started_after_release_ms"] = (datetime.fromisoformat(row[1]).timestamp()
                                          - released) * 1000
    result["window"] = wait
    stop_worker(daemon, consumer)
    return result


def run_child(argv: list[str]) -> dict:
    scenario, contender, directory = argv[0], argv[1], Path(argv[2])
    numbers = [float(x) for x in argv[3:] if not x.startswith("--")]
    if scenario == "waiting":
        return waiting_edgeworker(directory, numbers[0])
    runs, warmup = int(numbers[0]), int(numbers[1])
    run = interval_edgeworker if contender == "edgeworker" else interval_huey
    return run(directory, runs, warmup, "--count-commits" in argv)


# -- the parent --------------------------------------------------------------------------------

def child(*args, python: str = sys.executable, cwd: Path = REPO) -> dict:
    directory = scratch_dir(f"sched-{args[0]}-{args[1]}")
    argv = [python, "-m", "bench.scheduled", "child", args[0], args[1], str(directory),
            *map(str, args[2:])]
    proc = subprocess.run(argv, capture_output=True, cwd=cwd, timeout=600)
    shutil.rmtree(directory, ignore_errors=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout)
    if args[0] == "interval":
        result["runs"] = int(args[2])
    return result


def sizes(quick: bool) -> dict:
    """Runs per child (bytes and CPU; commits and pages), warm-up runs, repeats, the waiting
    window (seconds), huey's tasks for its pages per task."""
    if quick:
        return {"runs": {"edgeworker": 3, "huey": 1}, "counted": {"edgeworker": 3, "huey": 1},
                "warmup": 1, "repeats": 1, "wait": 0.5, "tasks": 10}
    return {"runs": {"edgeworker": 150, "huey": 10}, "counted": {"edgeworker": 50, "huey": 5},
            "warmup": 3, "repeats": 3, "wait": 3.0, "tasks": 200}


def scenarios(size: dict, contenders=CONTENDERS, **where) -> dict:
    """Every child of this benchmark: bytes and CPU (repeated, side by side), commits and pages
    (once, checkpoints off), the waiting run (once)."""
    warmup = size["warmup"]
    runs = side_by_side(size["repeats"], {
        c: (lambda c=c: child("interval", c, size["runs"][c], warmup, **where))
        for c in contenders})
    counted = {c: child("interval", c, size["counted"][c], warmup, "--count-commits", **where)
               for c in contenders}
    waiting = child("waiting", "edgeworker", size["wait"], **where)
    return {"runs": runs, "counted": counted, "waiting": waiting}


def per_run(results: list[dict], key: str, scale: float = 1.0) -> list[float]:
    return [r[key] / r["runs"] * scale for r in results]


def summary(found: dict) -> dict:
    """The per-run figures of one contender's children (what BEFORE keeps)."""
    counted = found["counted"]
    return {"written_kib": per_run(found["runs"], "written", 1 / 1024),
            "cpu_ms": per_run(found["runs"], "cpu", 1e3),
            "pages": counted["pages"] / counted["runs"],
            "wal_kib": counted["wal_bytes"] / counted["runs"] / 1024,
            "commits": counted["commits"] / counted["runs"],
            "btrees": {k: v / counted["runs"] for k, v in counted["btrees"].items()}}


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    from bench import throughput

    size = sizes(quick)
    found = scenarios(size)
    task = throughput.child("huey", size["tasks"], count_commits=True)
    huey_task_pages = (task["commits"]["enqueue_frames"] + task["commits"]["drain_frames"]) \
        / task["n"]
    huey_task_wal_kib = huey_task_pages * (task["commits"]["page_size"] + 24) / 1024
    ew = summary({"runs": found["runs"]["edgeworker"], "counted": found["counted"]["edgeworker"]})
    hu = summary({"runs": found["runs"]["huey"], "counted": found["counted"]["huey"]})
    waiting = found["waiting"]
    before = BEFORE or None

    def vs_huey(a: list[float], b: list[float]) -> Stat:
        return Stat.of([x / y for x, y in zip(a, b, strict=True)])

    figures = []
    written = Stat.of(ew["written_kib"])
    figures.append(Figure(
        "11", "bytes written per scheduled run of a no-op interval job (write_bytes)", "KiB",
        written, Stat.of(hu["written_kib"]), "huey", vs_huey(ew["written_kib"], hu["written_kib"])))
    if before:
        today = Stat.of(before["written_kib"])
        ratio = Stat.of([x / today.median for x in ew["written_kib"]])
        figures.append(Figure(
            "11", "  same, vs. the code before (b5dff58, measured once)", "KiB", written, today,
            "before", ratio, "≤ 0.60× before", ratio.median <= 0.60))
    pages = Stat.of([ew["pages"]])
    figures.append(Figure(
        "11", "WAL pages per scheduled run (claim; finish + next run)", "pages", pages,
        Stat.of([huey_task_pages]), "huey per task", Stat.of([ew["pages"] / huey_task_pages]),
        "≤ huey's per task", round(ew["pages"], 2) <= round(huey_task_pages, 2), 2))
    figures.append(Figure(
        "11", "  same, raw huey's self-scheduling task per run", "pages", pages,
        Stat.of([hu["pages"]]), "huey", Stat.of([ew["pages"] / hu["pages"]]), "", None, 2))
    if before:
        figures.append(Figure(
            "11", "  same, vs. the code before (b5dff58)", "pages", pages,
            Stat.of([before["pages"]]), "before", Stat.of([ew["pages"] / before["pages"]]), "",
            None, 2))
    wal = Stat.of([ew["wal_kib"]])
    figures.append(Figure(
        "11", f"  WAL bytes per scheduled run (pages of {PAGE_SIZE} B; huey's are 4 KiB)", "KiB",
        wal, Stat.of([hu["wal_kib"]]), "huey", Stat.of([ew["wal_kib"] / hu["wal_kib"]]), "", None,
        2))
    figures.append(Figure(
        "11", "  same, vs. raw huey's per task (like with like: bytes, not pages)", "KiB", wal,
        Stat.of([huey_task_wal_kib]), "huey per task", Stat.of([ew["wal_kib"] / huey_task_wal_kib]),
        "", None, 2))
    if before:
        figures.append(Figure(
            "11", "  same, vs. the code before (b5dff58)", "KiB", wal,
            Stat.of([before["wal_kib"]]), "before", Stat.of([ew["wal_kib"] / before["wal_kib"]]),
            "", None, 2))
    commits = Stat.of([ew["commits"]])
    figures.append(Figure(
        "11", "fsync'ed commits per scheduled run", "commits", commits, Stat.of([hu["commits"]]),
        "huey", None, "≤ 2", round(ew["commits"], 2) <= 2, 2))
    if before:
        figures.append(Figure(
            "11", "  same, vs. the code before (b5dff58)", "commits", commits,
            Stat.of([before["commits"]]), "before", None, "", None, 2))
    cpu = Stat.of(ew["cpu_ms"])
    figures.append(Figure(
        "11", "CPU time per scheduled run", "ms", cpu, Stat.of(hu["cpu_ms"]), "huey",
        vs_huey(ew["cpu_ms"], hu["cpu_ms"]), "", None, 2))
    if before:
        today = Stat.of(before["cpu_ms"])
        figures.append(Figure(
            "11", "  same, vs. the code before (b5dff58)", "ms", cpu, today, "before",
            Stat.of([x / today.median for x in ew["cpu_ms"]]), "", None, 2))
    window = waiting["window"]
    for key, what, unit in (("written", "bytes written", "B"),
                            ("commits", "WAL commits", "commits")):
        value = Stat.of([waiting[key]])
        base = before and Stat.of([before["waiting"][key]])
        figures.append(Figure(
            "11", f"{what} while a run waits {window:g} s for its job's running run", unit,
            value, base, "before" if base else "", None, "0", value.high == 0, 0))
    figures.append(Figure(
        "11", "  then the waiting run starts, after its job's run ends", "ms",
        Stat.of([waiting["started_after_release_ms"]])))
    return figures, {"sizes": size, "edgeworker": ew, "huey": hu, "huey_task_pages":
                     huey_task_pages, "huey_task_wal_kib": huey_task_wal_kib, "found": found,
                     "before": before}


def measure_before(checkout: Path, quick: bool) -> dict:
    """The same children, run by `checkout`'s venv on its own edgeworker: the drivers are copied
    to a scratch directory (the children import `bench` from their working directory, and must
    not find this checkout's `edgeworker` there)."""
    python = checkout / ".venv" / "bin" / "python"
    place = Path(tempfile.mkdtemp(prefix="ew-bench-before-"))
    try:
        shutil.copytree(REPO / "bench", place / "bench",
                        ignore=shutil.ignore_patterns("__pycache__", "results.json"))
        shutil.copytree(REPO / "tests", place / "tests",
                        ignore=shutil.ignore_patterns("__pycache__", "test_*"))
        size = sizes(quick)
        found = scenarios(size, contenders=("edgeworker",), python=str(python), cwd=place)
    finally:
        shutil.rmtree(place, ignore_errors=True)
    result = summary({"runs": found["runs"]["edgeworker"],
                      "counted": found["counted"]["edgeworker"]})
    waiting = found["waiting"]
    result["waiting"] = {"written": waiting["written"], "commits": waiting["commits"],
                         "window": waiting["window"], "btrees": waiting["btrees"]}
    return result


def main(argv: list[str]) -> None:
    if argv[:1] == ["child"]:
        result = run_child(argv[1:])
        sys.stdout.write(json.dumps(result))
        sys.stdout.flush()
        os._exit(0)  # no lingering threads at exit
    if argv[:1] == ["--before"]:
        print(json.dumps(measure_before(Path(argv[1]), "--quick" in argv), indent=1))
        return
    from bench.common import render_table

    figures, _ = measure("--quick" in argv)
    print(render_table(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
