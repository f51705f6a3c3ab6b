"""Pickup latency of `jobs run NAME` on an idle worker, and lateness of a 200 ms interval job.

Both run a real `edgeworker run` subprocess (2 worker threads, the default) whose job is the
callable `bench.jobs:stamp`: the first thing it does is append its task id and `time.time()` to a
file, so "start" below is when the task's own code really began, not only when the worker
claimed it (`tasks.started_at`, reported beside it).

- pickup: the benchmark queues a run exactly as `edgeworker jobs run` does (`Ledger.run_now` in
  this process: a task row and its message in one transaction); latency = the task's start - the
  moment that commit returned. Between samples the worker is left idle for 20-60 ms, so every
  sample measures a sleeping worker being woken (by inotify on the WAL). A run that has not
  started after 2 s is counted as a missed wake-up (see `pickup`).
- lateness: a job `every = "200ms"`; lateness = the task's start - its slot (`scheduled_for`).
  Measured twice, side by side: on a fresh database, and with 100,000 finished runs of the job
  already in `tasks` (a few hours of this job; the default 7-day retention keeps far more), as
  on a box that has been up for a while.

Each repeat gives a p50 and a p99 (nearest rank) over its samples; the table shows the median of
the repeats with their min and max. The CLI's own start-up is not in these figures (see
`startup.py` for the cold start of the command line).
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import pairwise

from bench.common import (
    Figure,
    Stat,
    WorkerProcess,
    percentile,
    scratch_dir,
    wait_for,
    worker_config,
)

HISTORY = 100_000  # finished runs: 5.5 hours of a 200 ms job (7 days' retention keeps 3 million)


def read_stamps(path) -> dict[int, float]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    stamps = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            stamps[int(parts[0])] = float(parts[1])
    return stamps


def epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def pickup(repeats: int, samples: int, stall: float) -> list[dict]:
    """One idle worker; `repeats` x `samples` manual runs, one at a time.

    A run not started after `stall` seconds counts as a missed wake-up; the worker is then woken
    by queueing a run of a second job, and the run's latency is what it really was (a lower
    bound: left alone, the worker would have slept until its idle timeout).
    """
    directory = scratch_dir("pickup")
    stamps = directory / "stamps"
    config = worker_config('[[jobs]]\nname = "manual"\ncallable = "bench.jobs:stamp"\n'
                           'every = "24h"\n'
                           '[[jobs]]\nname = "nudge"\ncallable = "bench.jobs:noop"\n'
                           'every = "24h"\n')
    results = []
    with WorkerProcess(directory, config, name="ew") as worker:
        worker.start(env={"BENCH_STAMPS": str(stamps)}).wait_running()
        from edgeworker import db as dbmod
        from edgeworker import models
        from edgeworker.clock import utcnow
        from edgeworker.ledger import Ledger
        from edgeworker.models import Job, Task

        database = dbmod.open_database(worker.db)
        models.bind(database)
        ledger = Ledger(database)
        job, nudge = Job.get(Job.name == "manual"), Job.get(Job.name == "nudge")

        def finished(task_id: int):
            return wait_for(lambda: (r := Task.get_by_id(task_id)).finished_at and r, 10,
                            0.002, what=f"task {task_id} to finish", log=worker.log)

        for _ in range(repeats):
            start, claim, missed = [], [], 0
            for _ in range(samples):
                time.sleep(random.uniform(0.02, 0.06))  # the worker goes back to sleep
                task = ledger.run_now(job, utcnow())
                committed = time.time()
                try:
                    seen = wait_for(lambda t=task.id: read_stamps(stamps).get(t), stall, 0.001)
                except AssertionError:
                    missed += 1
                    finished(ledger.run_now(nudge, utcnow()).id)
                    seen = wait_for(lambda t=task.id: read_stamps(stamps).get(t), 10, 0.001,
                                    what=f"task {task.id} to start", log=worker.log)
                row = finished(task.id)
                start.append(seen - committed)
                claim.append(row.started_at.timestamp() - committed)
            results.append({"start": start, "claim": claim, "missed": missed})
        database.close()
        worker.stop()
    shutil.rmtree(directory, ignore_errors=True)
    return results


def add_history(worker: WorkerProcess, job_name: str, count: int, every: float) -> int:
    """Before the worker's first start: create the database and its jobs, and give `job_name`
    `count` finished runs, as a box that has been running for a while has. Returns the last
    history task's id."""
    import peewee

    from edgeworker import db as dbmod
    from edgeworker import migrate, models
    from edgeworker.clock import utcnow
    from edgeworker.config import load_config
    from edgeworker.jobs import sync_jobs
    from edgeworker.ledger import Ledger
    from edgeworker.models import Job, Task

    database = dbmod.open_database(worker.db, create=True)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    models.bind(database)
    now = utcnow()
    job = Job.get_or_none(Job.name == job_name)
    if job is None:
        sync_jobs(Ledger(database), load_config(worker.config).jobs, now)
        job = Job.get(Job.name == job_name)
    first = now.timestamp() // every * every - count * every
    with database.atomic():
        for chunk in range(0, count, 1000):
            rows = []
            for k in range(chunk, min(count, chunk + 1000)):
                slot = datetime.fromtimestamp(first + k * every, UTC)
                rows.append({"job": job.id, "status": "succeeded", "origin": "schedule",
                             "scheduled_for": slot, "due_at": slot, "attempt": 1,
                             "created_at": slot, "started_at": slot, "finished_at": slot,
                             "output": "", "worker": "earlier:1"})
            Task.insert_many(rows).execute()
    last = Task.select(peewee.fn.MAX(Task.id)).scalar()
    database.close()
    return last


def lateness(repeats: int, samples: int, warmup: int = 3, history: int = 0) -> list[dict]:
    """One worker with a 200 ms interval job; `repeats` windows of `samples` consecutive runs,
    after `warmup` runs left out (the first imports the callable). With `history`, the job
    already has that many finished runs in the database when the worker starts."""
    directory = scratch_dir(f"lateness-{history}")
    stamps = directory / "stamps"
    config = worker_config('[[jobs]]\nname = "tick"\ncallable = "bench.jobs:stamp"\n'
                           'every = "200ms"\n')
    wanted = warmup + repeats * samples
    with WorkerProcess(directory, config, name="ew") as worker:
        after = add_history(worker, "tick", history, 0.2) if history else 0
        worker.start(env={"BENCH_STAMPS": str(stamps)}).wait_running()
        done = f"status = 'succeeded' AND id > {after}"
        wait_for(lambda: worker.query(f"SELECT count(*) FROM tasks WHERE {done}")[0][0]
                 >= wanted, wanted * 0.2 * 2 + 20, 0.5, what=f"{wanted} runs", log=worker.log)
        worker.stop()
        rows = worker.tasks(done)
    seen = read_stamps(stamps)
    shutil.rmtree(directory, ignore_errors=True)
    rows = [r for r in rows if r["id"] in seen][warmup:wanted]
    results = []
    for i in range(repeats):
        window = rows[i * samples:(i + 1) * samples]
        results.append({
            "start": [seen[r["id"]] - epoch(r["scheduled_for"]) for r in window],
            "claim": [epoch(r["started_at"]) - epoch(r["scheduled_for"]) for r in window],
            "skipped_slots": sum(
                1 for a, b in pairwise(window)
                if round(epoch(b["scheduled_for"]) - epoch(a["scheduled_for"]), 3) != 0.2),
        })
    return results


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    repeats, pickups, ticks, stall = (1, 3, 3, 0.3) if quick else (3, 100, 100, 2.0)
    history = 1000 if quick else HISTORY
    picked = pickup(repeats, pickups, stall)
    # The two interval workers run at once: each is busy ~2% of the time (and it saves a minute).
    with ThreadPoolExecutor(2) as pool:
        fresh = pool.submit(lateness, repeats, ticks, 1 if quick else 3)
        aged = pool.submit(lateness, repeats, ticks, 1 if quick else 3, history)
        late, late_aged = fresh.result(), aged.result()

    def stat(results: list[dict], key: str, q: float) -> Stat:
        return Stat.of([percentile(r[key], q) * 1000 for r in results])

    figures = []
    for key, what in (("start", "task's own start"), ("claim", "claim, tasks.started_at")):
        p50, p99 = stat(picked, key, 50), stat(picked, key, 99)
        met = (p50.median <= 20) if key == "start" else None
        figures.append(Figure("3", f"jobs run pickup p50, to the {what}", "ms", p50,
                              target="≤ 20 ms" if key == "start" else "", met=met))
        figures.append(Figure("3", f"jobs run pickup p99, to the {what}", "ms", p99))
    missed = Stat.of([r["missed"] for r in picked])
    figures.append(Figure("3", f"jobs run: missed wake-ups (not started after {stall:g} s)",
                          f"of {pickups}", missed, target="0", met=missed.high == 0, digits=0))
    for key, what in (("start", "task's own start"), ("claim", "claim, tasks.started_at")):
        p50, p99 = stat(late, key, 50), stat(late, key, 99)
        met = (p99.median <= 100) if key == "start" else None
        figures.append(Figure("3", f"200 ms interval lateness p50, {what}", "ms", p50))
        figures.append(Figure("3", f"200 ms interval lateness p99, {what}", "ms", p99,
                              target="≤ 100 ms" if key == "start" else "", met=met))
    for q in (50, 99):
        figures.append(Figure(
            "3", f"  same, p{q} to the task's start, job with {history:,} runs in history",
            "ms", stat(late_aged, "start", q)))
    return figures, {"pickup": picked, "lateness": late, "lateness_with_history": late_aged,
                     "history": history,
                     "samples": {"pickup": pickups, "lateness": ticks, "repeats": repeats}}


if __name__ == "__main__":
    from bench.common import render_table

    print(render_table(measure("--quick" in sys.argv)[0]))
