"""Start-up recovery: 10,000 tasks a dead worker left `running`, from process start to READY.

Before each run the benchmark builds a fresh database in-process through the models: migrations,
10,000 callable jobs (`bench.jobs:noop`, every 24h, `max_attempts = 3`) and for each one task
row as a SIGKILLed worker leaves it: the current slot's run, `running`, attempt 1. (One
interrupted task per job: a worker never runs two tasks of one job at a time, so
that is the state a real crash leaves.) Then it starts the real `edgeworker run` with
$NOTIFY_SOCKET pointing at a socket it listens on, and times from just before the process is
spawned to the READY=1 datagram, which the worker sends once recovery has committed. After READY
it waits until the worker has re-run a few of them, kills it and checks the database: the last
`recoveries` row says 10,000 recovered, and every one of the 10,000 tasks was put back in the
queue by recovery (`recovered_count = 1`: waiting as `created` with its interrupted attempt
noted, or already re-run; the row is its own queue entry).

Beside it, the same start with nothing to recover (the start-up cost that is not recovery), and
the recovery's own duration as the worker records it (`recoveries.duration_ms`).
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.common import Figure, NotifySocket, Stat, WorkerProcess, scratch_dir, worker_config

INTERRUPTED = 10_000
DAY = 86400


def prepare(worker: WorkerProcess, interrupted: int) -> None:
    from edgeworker import db as dbmod
    from edgeworker import migrate, models
    from edgeworker.clock import utcnow
    from edgeworker.models import Job, Task

    database = dbmod.open_database(worker.db, create=True)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    models.bind(database)
    now = utcnow()
    # the current slot of `every = "24h"`
    slot = datetime.fromtimestamp(now.timestamp() // DAY * DAY, UTC)
    started = now - timedelta(seconds=5)
    with database.atomic():
        for first in range(0, interrupted, 1000):
            count = min(1000, interrupted - first)
            Job.insert_many([{
                "name": f"job-{first + i}", "kind": "callable", "target": "bench.jobs:noop",
                "every_seconds": DAY, "max_attempts": 3, "created_at": now, "updated_at": now,
            } for i in range(count)]).execute()
        jobs = [job_id for (job_id,) in Job.select(Job.id).tuples()]
        for first in range(0, len(jobs), 1000):
            Task.insert_many([{
                "job": job_id, "status": "running", "origin": "schedule", "scheduled_for": slot,
                "due_at": slot, "attempt": 1, "created_at": started, "started_at": started,
                "worker": "deadbeef:4242",
            } for job_id in jobs[first:first + 1000]]).execute()
    database.close()


def run(interrupted: int) -> dict:
    directory = scratch_dir(f"recovery-{interrupted}")
    notify = NotifySocket(directory)
    worker = WorkerProcess(directory, worker_config(workers=1), name="ew")
    try:
        prepare(worker, interrupted)
        started = time.monotonic()
        worker.start(env=notify.env)
        ready = notify.wait_ready()
        if interrupted:  # they really run again
            worker.wait_tasks("recovered_count = 1 AND status = 'succeeded'",
                              count=min(10, interrupted))
        worker.kill()
        [(recovered, duration_ms)] = worker.query(
            "SELECT recovered, duration_ms FROM recoveries ORDER BY id DESC LIMIT 1")
        requeued = {i for (i,) in worker.query(
            "SELECT id FROM tasks WHERE recovered_count = 1 AND (status = 'succeeded' OR "
            "status IN ('created', 'running') AND recovering_attempt = 1)")}
        rerun = {i for (i,) in worker.query(
            "SELECT id FROM tasks WHERE recovered_count = 1 AND status = 'succeeded'")}
        interrupted_ids = {i for (i,) in worker.query(
            "SELECT id FROM tasks WHERE worker = 'deadbeef:4242' OR recovered_count > 0")}
        if recovered != interrupted or interrupted_ids - requeued \
                or len(interrupted_ids) != interrupted:
            raise AssertionError(f"recovery incomplete: recorded {recovered}, "
                                 f"{len(interrupted_ids - requeued)} tasks lost")
        return {"seconds": ready - started, "recovery_ms": duration_ms,
                "already_rerun": len(rerun)}
    finally:
        worker.kill()
        worker.end_leftovers()  # its records and cgroups, as its next start would
        notify.close()
        shutil.rmtree(directory, ignore_errors=True)


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    interrupted, repeats = (200, 1) if quick else (INTERRUPTED, 5)
    runs: dict[str, list[dict]] = {"recover": [], "empty": []}
    for i in range(repeats):
        order = ("recover", "empty") if i % 2 == 0 else ("empty", "recover")
        for name in order:
            runs[name].append(run(interrupted if name == "recover" else 0))
    to_ready = Stat.of([r["seconds"] for r in runs["recover"]])
    empty = Stat.of([r["seconds"] for r in runs["empty"]])
    figures = [
        Figure("4", f"start to READY=1, {interrupted:,} interrupted tasks", "s", to_ready,
               empty, "with 0 tasks", None, "≤ 0.5 s", to_ready.median <= 0.5, 3),
        Figure("4", "  of which recovery's transaction (recoveries.duration_ms)", "ms",
               Stat.of([r["recovery_ms"] for r in runs["recover"]]),
               Stat.of([r["recovery_ms"] for r in runs["empty"]]), "with 0 tasks", digits=0),
    ]
    return figures, {"interrupted": interrupted, "runs": runs}


if __name__ == "__main__":
    from bench.common import render_table

    print(render_table(measure("--quick" in sys.argv)[0]))
