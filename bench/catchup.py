"""A catch-up flood beside a 1-second job: the 1 s job's lateness, and catch-up runs per second.

The database is written as a box that was down for 70 days leaves it: a job `backlog`
(`cron = "* * * * *"`, `catch_up = "all"`, `catch_up_limit = 100000`, the callable
`bench.jobs:noop`) whose last run was 100,000 minutes ago and which has no pending run, so the
worker's start-up recovery owes it its 100,000 newest slots; beside it a job `tick`
(`every = "1s"`, `bench.jobs:stamp`, which appends its task id and `time.time()` to a file as the
first thing it does). Then the real `edgeworker run` starts (2 worker threads, the default) and
runs both for a fixed window. A cron job is the costly case: before, each of its runs counted
back `catch_up_limit` cron times (seconds per run, inside the write transaction).

- lateness: the tick's own start - its slot (`scheduled_for`), for every tick whose slot falls in
  the window (the first second after READY left out); p50, p99 and max over those samples.
- catch-up rate: `backlog` runs that finished in the window, per second; the backlog is still far
  from done at the end of the window (checked), so the flood lasts the whole window.
- start-up: the recovery's own duration (`recoveries.duration_ms`), which counts back the
  100,000 owed slots once.
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.common import (
    Figure,
    Stat,
    WorkerProcess,
    percentile,
    scratch_dir,
    wait_for,
    worker_config,
)
from bench.latency import epoch, read_stamps

OWED = 100_000
WINDOW = 45.0  # seconds measured
WARMUP = 1.0

JOBS = ('[[jobs]]\nname = "tick"\ncallable = "bench.jobs:stamp"\nevery = "1s"\n\n'
        '[[jobs]]\nname = "backlog"\ncallable = "bench.jobs:noop"\ncron = "* * * * *"\n'
        'timezone = "UTC"\ncatch_up = "all"\ncatch_up_limit = {owed}\n')


def prepare(worker: WorkerProcess, owed: int) -> None:
    """The database of a box that was down: `backlog` last ran `owed` minutes ago."""
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
    ledger = Ledger(database)
    sync_jobs(ledger, load_config(worker.config).jobs, now)
    backlog = Job.get(Job.name == "backlog")
    minute = datetime.fromtimestamp(now.timestamp() // 60 * 60, UTC)
    last = minute - timedelta(minutes=owed)
    with database.atomic():
        Task.delete().where(Task.job == backlog.id).execute()
        Task.create(job=backlog.id, status="succeeded", origin="schedule", scheduled_for=last,
                    due_at=last, attempt=1, created_at=last, started_at=last, finished_at=last,
                    output="", worker="earlier:1")
        tick = Job.get(Job.name == "tick")
        ledger.cancel_waiting(tick.id, "bench: scheduled at the worker's start", now)
    database.close()


def run(owed: int, window: float) -> dict:
    directory = scratch_dir("catchup")
    stamps = directory / "stamps"
    worker = WorkerProcess(directory, worker_config(JOBS.format(owed=owed)), name="ew")
    with worker:
        prepare(worker, owed)
        worker.start(env={"BENCH_STAMPS": str(stamps)}).wait_running(timeout=120)
        begin = time.time() + WARMUP
        end = begin + window
        time.sleep(max(0.0, end - time.time()))
        wait_for(lambda: any(t > end for t in read_stamps(stamps).values()), 10, 0.05,
                 what="a tick after the window", log=worker.log)
        worker.stop()
        ticks = worker.tasks("job_id = (SELECT id FROM jobs WHERE name = 'tick')")
        runs = worker.tasks("job_id = (SELECT id FROM jobs WHERE name = 'backlog') "
                            "AND status = 'succeeded' AND started_at IS NOT NULL")
        [(recovery_ms,)] = worker.query(
            "SELECT duration_ms FROM recoveries ORDER BY id DESC LIMIT 1")
    seen = read_stamps(stamps)
    shutil.rmtree(directory, ignore_errors=True)
    late = [seen[t["id"]] - epoch(t["scheduled_for"]) for t in ticks
            if t["id"] in seen and begin <= epoch(t["scheduled_for"]) <= end]
    caught = [r for r in runs if begin <= epoch(r["finished_at"]) <= end]
    oldest = min(epoch(r["scheduled_for"]) for r in runs)
    newest = max(epoch(r["scheduled_for"]) for r in runs)
    return {"lateness": late, "caught_up": len(caught), "window": window,
            "recovery_ms": recovery_ms,
            "owed_left": owed - round((newest - oldest) / 60) - 1,
            "first_slot_minutes_ago": round((time.time() - oldest) / 60)}


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    owed, window = (1000, 3.0) if quick else (OWED, WINDOW)
    result = run(owed, window)
    late = [x * 1000 for x in result["lateness"]]
    if not late:
        raise RuntimeError("no tick ran in the window")
    if result["owed_left"] <= 0 and not quick:
        raise RuntimeError("the backlog ran out before the window ended: raise OWED")
    p50, p99 = percentile(late, 50), percentile(late, 99)
    rate = result["caught_up"] / window
    figures = [
        Figure("9", f"1 s job lateness p50, beside a catch-up of {owed:,} cron slots", "ms",
               Stat.of([p50])),
        Figure("9", f"1 s job lateness p99, same ({len(late)} runs)", "ms", Stat.of([p99]),
               target="≤ 100 ms", met=p99 <= 100),
        Figure("9", "1 s job lateness max, same", "ms", Stat.of([max(late)])),
        Figure("9", "catch-up runs per second (a callable that returns at once)", "runs/s",
               Stat.of([rate]), digits=0),
        Figure("9", f"start-up recovery that owes {owed:,} slots (recoveries.duration_ms)",
               "ms", Stat.of([result["recovery_ms"]]), digits=0),
    ]
    return figures, result


if __name__ == "__main__":
    from bench.common import render_table

    print(render_table(measure("--quick" in sys.argv)[0]))
