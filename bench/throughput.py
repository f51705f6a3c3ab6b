"""Durable no-op task throughput, and commits and bytes written per task, beside raw huey.

Each run is a fresh child process (`python -m bench.throughput child ...`) on a fresh database on
disk, so that /proc/self/io counts only that contender's writes:

- edgeworker: a callable job `bench.jobs:noop`; N manual runs are queued with `Ledger.run_now`
  (what `edgeworker jobs run` does: a task row, one transaction each: the row is the queue
  entry), then the real worker drains them: `Daemon.start()` (lock, migrations check, recovery)
  and huey's consumer it builds, with 1 worker thread: `TaskStorage.dequeue` (the claim, one
  UPDATE ... RETURNING) -> huey executes `run_job` -> `IntervalJobWorker.work` ->
  `Ledger.finish` (a manual run: no next run). Logging is set up as `edgeworker run` sets it
  (INFO lines on stderr, here a file).
  In-process rather than an `edgeworker run` subprocess, so that the clock starts when the
  consumer starts and stops when the ledger says the last task succeeded, without start-up or
  polling from outside in the figure; it is the same code `edgeworker run` runs after start-up.
- raw huey: `huey.SqliteHuey` with a no-op `@huey.task()`, N calls (enqueue), then huey's own
  `Consumer(workers=1)` with its defaults (thread worker, periodic scheduler, INFO logging like
  `huey_consumer`) drains them. Results are on (huey's default) but a task returning None
  stores nothing; a task's revocation check is a read and its revoke-key delete writes nothing.

Pragmas. edgeworker: journal_mode=WAL, synchronous=FULL, foreign_keys=ON, busy_timeout 5 s,
SQLite's default cache (2 MB), wal_autocheckpoint 1000 pages. SqliteHuey's defaults are
journal_mode=WAL, cache 8 MB, busy timeout 5 s and synchronous left at SQLite's compiled default
(FULL here, 2); the benchmark passes `fsync=True` so that it is FULL on any build.

Figures: tasks/s end to end (enqueue + execute) and for the drain alone; CPU time per task;
written bytes per task from /proc/self/io `write_bytes` (enqueue + drain, not start-up) and the
files' growth; WAL commit frames and pages per task, counted in a separate smaller run with
checkpoints off (so the WAL keeps every frame; `tests/waltools.py`).

Where it goes: `python -m bench.throughput profile edgeworker|huey [N]` prints a cProfile of the
enqueue loop and of the drain (wall clock; the thread's CPU time with $BENCH_PROFILE_CPU=1) and
which b-trees each commit's pages belong to; `python -m bench.throughput ablate [N] [REPEATS]`
measures both contenders again without fsync, without log lines, or with the lines sent to
/dev/null, so that each one's cost is the difference.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import logging
import os
import pstats
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    REPO,
    Figure,
    Stat,
    btree_names,
    files_size,
    reset_wal,
    scratch_dir,
    side_by_side,
    wal_commits,
    wal_log,
    write_bytes,
)

CONTENDERS = ("edgeworker", "huey")


def wal_frames(database: Path) -> int:
    """Pages in the WAL (a checkpoint-free run keeps every frame of every commit)."""
    try:
        with open(f"{database}-wal", "rb") as wal:
            header = wal.read(32)
            size = wal.seek(0, os.SEEK_END)
    except FileNotFoundError:
        return 0
    if len(header) < 32:
        return 0
    return (size - 32) // (int.from_bytes(header[8:12], "big") + 24)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wall time, CPU time and written bytes at marks along a run."""

    def __init__(self, database: Path):
        self.database = database
        self.marks: dict[str, tuple[float, float, int]] = {}
        self.size = os.stat(database).st_size  # checkpointed: the WAL is empty

    def mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter(), cpu_seconds(), write_bytes())

    def between(self, a: str, b: str) -> dict:
        (t0, c0, w0), (t1, c1, w1) = self.marks[a], self.marks[b]
        return {"seconds": t1 - t0, "cpu": c1 - c0, "written": w1 - w0}

    def report(self, commits: dict | None) -> dict:
        """Call once every connection is closed (the last one checkpoints the WAL away)."""
        result = {"enqueue": self.between("start", "enqueued"),
                  "drain": self.between("consumer", "drained"),
                  "growth": os.stat(self.database).st_size - self.size}
        if commits is not None:
            result["commits"] = commits
        return result


def profiler() -> cProfile.Profile:
    """By the wall clock, or the thread's CPU time if $BENCH_PROFILE_CPU is set."""
    return cProfile.Profile(time.thread_time if os.environ.get("BENCH_PROFILE_CPU")
                            else time.perf_counter)


@contextlib.contextmanager
def profiled(directory: Path | None, name: str):
    """With a directory, a cProfile of the block in this thread: `directory/name.prof`."""
    if directory is None:
        yield
        return
    profile = profiler()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(directory / f"{name}.prof")


def profile_calls(directory: Path | None, n: int) -> None:
    """With a directory, a cProfile of the worker thread from inside the first task's call to
    the last's (`jobs.marks`): `directory/drain.prof`."""
    if directory is None or n < 2:
        return
    from bench import jobs

    profile = profiler()
    jobs.marks[1] = profile.enable
    jobs.marks[n] = lambda: (profile.disable(), profile.dump_stats(directory / "drain.prof"))


def commit_pages(database: Path, earlier: dict[int, str] | None = None) -> list[list[str]]:
    """Each commit in the WAL (checkpoints off): the table or index of each page it wrote (as
    the database has it now, or had it `earlier` for a page freed since)."""
    names = (earlier or {}) | btree_names(database)
    return [[names.get(p, f"page {p} (free)") for p in c.pages] for c in wal_log(database)]


def ablation() -> tuple[str, str]:
    """The log level and durability of a child: `edgeworker run`'s (info, full) unless
    `python -m bench.throughput ablate` takes one away ($BENCH_LOG_LEVEL, $BENCH_DURABILITY)."""
    return (os.environ.get("BENCH_LOG_LEVEL", "info"),
            os.environ.get("BENCH_DURABILITY", "full"))


# -- the children ------------------------------------------------------------------------------

def run_edgeworker(directory: Path, n: int, count_commits: bool, profile: bool = False) -> dict:
    from bench import jobs
    from edgeworker import db as dbmod
    from edgeworker import logs, migrate, models
    from edgeworker.clock import utcnow
    from edgeworker.config import Config, JobSpec, WorkerSettings
    from edgeworker.daemon import Daemon
    from edgeworker.jobs import add_job
    from edgeworker.ledger import Ledger

    level, durability = ablation()
    logs.setup("text", level)
    path = directory / "ew.db"
    database = dbmod.open_database(path, durability=durability, create=True)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    models.bind(database)
    ledger = Ledger(database)
    spec = JobSpec(name="noop", kind="callable", target="bench.jobs:noop", every=86400.0)
    job = add_job(ledger, spec, utcnow())
    if count_commits:
        database.pragma("wal_autocheckpoint", 0, permanent=True)
    reset_wal(database)
    commits = {}
    meter = Meter(path)

    meter.mark("start")
    with profiled(directory if profile else None, "enqueue"):
        for _ in range(n):
            ledger.run_now(job, utcnow())
    meter.mark("enqueued")
    commits["enqueue"] = wal_commits(path)
    commits["enqueue_frames"] = wal_frames(path)
    if profile and count_commits:
        commits["enqueue_pages"] = commit_pages(path)
        queued_names = btree_names(path)  # pages the drain frees are named as they were

    config = Config(worker=WorkerSettings(workers=1, python_path=(REPO,), durability=durability))
    daemon = Daemon(config, path, workers=1)
    consumer = daemon.start()  # lock, migrations check, recovery: start-up, not measured
    database.close()
    if count_commits:
        daemon.ledger.db.pragma("wal_autocheckpoint", 0, permanent=True)
        reset_wal(daemon.ledger.db)  # start-up may have checkpointed: count from zero
    watcher = sqlite3.connect(path)
    jobs.expect(n)
    profile_calls(directory if profile else None, n)
    meter.mark("consumer")
    consumer.start()
    jobs.all_called.wait()
    query = "SELECT count(*) FROM tasks WHERE origin = 'manual' AND status = 'succeeded'"
    while watcher.execute(query).fetchone()[0] < n:
        time.sleep(0.0005)  # the last finish is one short transaction away
    meter.mark("drained")
    commits["drain"] = wal_commits(path)
    commits["drain_frames"] = wal_frames(path)
    if profile and count_commits:
        commits["drain_pages"] = commit_pages(path, queued_names)
    watcher.close()
    assert daemon.shutdown(consumer) == 0  # as SIGTERM stops `edgeworker run`
    assert files_size(path) == os.stat(path).st_size, "a connection is still open"
    return meter.report(commits if count_commits else None)


def run_huey(directory: Path, n: int, count_commits: bool, profile: bool = False) -> dict:
    from huey import SqliteHuey
    from huey.consumer import Consumer
    from huey.signals import SIGNAL_COMPLETE

    from bench import jobs

    handler = logging.StreamHandler()  # as huey_consumer logs by default
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s] %(levelname)s:%(name)s:%(threadName)s:%(message)s"))
    logging.getLogger().addHandler(handler)
    level, durability = ablation()
    logging.getLogger().setLevel(level.upper())

    path = directory / "huey.db"
    huey = SqliteHuey("bench", filename=str(path), fsync=durability == "full")
    completed = []

    @huey.task()
    def noop():
        return None

    @huey.signal(SIGNAL_COMPLETE)
    def done(signal, task):
        completed.append(1)
        jobs.tick()

    conn = huey.storage.conn
    if count_commits:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    commits = {"page_size": conn.execute("PRAGMA page_size").fetchone()[0]}
    meter = Meter(path)

    meter.mark("start")
    with profiled(directory if profile else None, "enqueue"):
        for _ in range(n):
            noop()
    meter.mark("enqueued")
    commits["enqueue"] = wal_commits(path)
    commits["enqueue_frames"] = wal_frames(path)
    if profile and count_commits:
        commits["enqueue_pages"] = commit_pages(path)
        queued_names = btree_names(path)  # pages the drain frees are named as they were
    if count_commits:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count the drain's from zero
    consumer = Consumer(huey, workers=1)
    jobs.expect(n)
    profile_calls(directory if profile else None, n)
    meter.mark("consumer")
    consumer.start()
    jobs.all_called.wait()
    meter.mark("drained")
    commits["drain"] = wal_commits(path)
    commits["drain_frames"] = wal_frames(path)
    if profile and count_commits:
        commits["drain_pages"] = commit_pages(path, queued_names)
    consumer.stop(graceful=True)
    assert len(completed) == n and huey.pending_count() == 0
    huey.storage.close()
    return meter.report(commits if count_commits else None)


# -- the parent --------------------------------------------------------------------------------

def child(contender: str, n: int, count_commits: bool = False, keep: bool = False,
          profile: bool = False, env: dict | None = None) -> dict:
    directory = scratch_dir(f"tp-{contender}")
    argv = [sys.executable, "-m", "bench.throughput", "child", contender, str(directory), str(n)]
    if count_commits:
        argv.append("--count-commits")
    if profile:
        argv.append("--profile")
    env = {**os.environ, **(env or {})}
    with open(directory / "child.log", "wb") as log:
        stderr = subprocess.DEVNULL if env.get("BENCH_LOG_TO") == "null" else log
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, timeout=600,
                              env=env)
    if proc.returncode != 0:
        tail = (directory / "child.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{contender} run failed ({proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout)
    result["n"] = n
    if keep:
        result["directory"] = str(directory)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return result


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    n, repeats, n_commits = (30, 1, 10) if quick else (1000, 5, 200)
    runs = side_by_side(repeats, {c: (lambda c=c: child(c, n)) for c in CONTENDERS})
    counted = {c: child(c, n_commits, count_commits=True) for c in CONTENDERS}

    def per_run(contender: str, f) -> list[float]:
        return [f(r) for r in runs[contender]]

    def rate(r: dict) -> float:
        return r["n"] / (r["enqueue"]["seconds"] + r["drain"]["seconds"])

    def drain_rate(r: dict) -> float:
        return r["n"] / r["drain"]["seconds"]

    def kib(key: str):
        return lambda r: (r["enqueue"][key] + r["drain"][key]) / r["n"] / 1024

    def ratio(f) -> Stat:
        return Stat.of([a / b for a, b in zip(per_run("edgeworker", f), per_run("huey", f),
                                               strict=True)])

    figures = []
    for label, f in (("no-op tasks/s, enqueue + execute, 1 thread", rate),
                     ("no-op tasks/s, execute only (drain), 1 thread", drain_rate)):
        r = ratio(f)
        figures.append(Figure(
            "1", label, "tasks/s", Stat.of(per_run("edgeworker", f)),
            Stat.of(per_run("huey", f)), "huey", r,
            "≥ 0.8× huey" if f is rate else "", r.median >= 0.8 if f is rate else None, 0))
    written = kib("written")
    r = ratio(written)
    figures.append(Figure(
        "2", "bytes written per task (/proc/self/io write_bytes)", "KiB",
        Stat.of(per_run("edgeworker", written)), Stat.of(per_run("huey", written)), "huey", r,
        "≤ huey's", r.median <= 1.0))
    def growth(r: dict) -> float:
        return r["growth"] / r["n"] / 1024

    figures.append(Figure(
        "2", "database file growth per task (kept history; after checkpoint)", "KiB",
        Stat.of(per_run("edgeworker", growth)), Stat.of(per_run("huey", growth)), "huey",
        None, "", None, 2))
    commits = {c: sum(counted[c]["commits"][k] for k in ("enqueue", "drain")) / n_commits
               for c in CONTENDERS}
    figures.append(Figure(
        "2", "commits per task (WAL commit frames: enqueue + execute)", "commits",
        Stat.of([commits["edgeworker"]]), Stat.of([commits["huey"]]), "huey", None,
        "≤ 2 (DESIGN §5)", round(commits["edgeworker"], 2) <= 2, 2))
    frames = {c: (counted[c]["commits"]["enqueue_frames"] + counted[c]["commits"]["drain_frames"])
              / n_commits for c in CONTENDERS}
    figures.append(Figure(
        "2", "pages written to the WAL per task (a page + 24 B each)", "pages",
        Stat.of([frames["edgeworker"]]), Stat.of([frames["huey"]]), "huey", None, "", None, 2))
    cpu = {c: Stat.of(per_run(c, lambda r: (r["enqueue"]["cpu"] + r["drain"]["cpu"]) / r["n"]
                              * 1e3)) for c in CONTENDERS}
    cpu_ratio = ratio(lambda r: (r["enqueue"]["cpu"] + r["drain"]["cpu"]) / r["n"])
    figures.append(Figure(
        "1", "CPU time per task, enqueue + execute", "ms", cpu["edgeworker"], cpu["huey"],
        "huey", cpu_ratio, "≤ 1.5× huey", cpu_ratio.median <= 1.5, 2))
    return figures, {"n": n, "repeats": repeats, "runs": runs, "commit_runs": counted}


def profile(argv: list[str]) -> None:
    """`profile edgeworker|huey [N] [LINES]`: where the time of the enqueue loop and of the drain
    goes (cProfile, wall clock or with $BENCH_PROFILE_CPU the thread's CPU time; by own time,
    then cumulative), and each commit's pages by b-tree."""
    contender = argv[0]
    n = int(argv[1]) if len(argv) > 1 else 1000
    lines = int(argv[2]) if len(argv) > 2 else 30
    result = child(contender, n, count_commits=True, keep=True, profile=True)
    directory = Path(result["directory"])
    try:
        for phase in ("enqueue", "drain"):
            times = result[phase]
            print(f"== {contender}, {phase} of {n} tasks: {times['seconds'] / n * 1e3:.3f} ms "
                  f"wall, {times['cpu'] / n * 1e3:.3f} ms CPU a task")
            pages = result["commits"].get(f"{phase}_pages", [])
            shapes: dict[tuple, int] = {}
            for commit in pages:
                shapes[tuple(commit)] = shapes.get(tuple(commit), 0) + 1
            for shape, count in sorted(shapes.items(), key=lambda kv: -kv[1]):
                print(f"   {count:6d} commits writing {len(shape)} page(s): {', '.join(shape)}")
            stats = pstats.Stats(str(directory / f"{phase}.prof"))
            stats.sort_stats("tottime").print_stats(lines)
            stats.sort_stats("cumulative").print_stats(lines)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


ABLATIONS = {
    "as measured (INFO lines to a file on the disk)": {},
    "INFO lines to /dev/null": {"BENCH_LOG_TO": "null"},
    "no INFO lines (level warning)": {"BENCH_LOG_LEVEL": "warning"},
    "no fsync (durability normal; huey fsync=False)": {"BENCH_DURABILITY": "normal"},
    "no fsync, no INFO lines": {"BENCH_DURABILITY": "normal", "BENCH_LOG_LEVEL": "warning"},
}


def ablate(argv: list[str]) -> None:
    """`ablate [N] [REPEATS]`: wall and CPU time per task, enqueue and drain, of each contender
    as measured and with fsync or the INFO log lines (or only their file) taken away: what each
    costs. (On ext4, data=ordered, an fsync also flushes the log file's new data.)"""
    n = int(argv[0]) if argv else 1000
    repeats = int(argv[1]) if len(argv) > 1 else 3
    import statistics

    print(f"{n} tasks, median of {repeats} runs; ms per task")
    print(f"{'':48} {'contender':10} {'enq wall':>9} {'enq CPU':>8} {'drain wall':>10} "
          f"{'drain CPU':>9}")
    for label, env in ABLATIONS.items():
        runs = side_by_side(repeats, {c: (lambda c=c, env=env: child(c, n, env=env))
                                      for c in CONTENDERS})
        for contender in CONTENDERS:
            cells = [statistics.median(r[phase][key] for r in runs[contender]) / n * 1e3
                     for phase in ("enqueue", "drain") for key in ("seconds", "cpu")]
            print(f"{label:48} {contender:10} {cells[0]:9.3f} {cells[1]:8.3f} {cells[2]:10.3f} "
                  f"{cells[3]:9.3f}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["child"]:
        contender, directory, n = argv[1], Path(argv[2]), int(argv[3])
        run = run_edgeworker if contender == "edgeworker" else run_huey
        result = run(directory, n, "--count-commits" in argv, "--profile" in argv)
        sys.stdout.write(json.dumps(result))
        sys.stdout.flush()
        os._exit(0)  # no lingering threads at exit
    if argv[:1] == ["profile"]:
        profile(argv[1:])
        return
    if argv[:1] == ["ablate"]:
        ablate(argv[1:])
        return
    from bench.common import render_table

    figures, _ = measure("--quick" in argv)
    print(render_table(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
