"""The status page (`edgeworker serve`) over a long history: time per page and resident memory.

A database gets 12 jobs and 100,000 finished runs spread over the last 7 days (what the default
retention keeps of a box running a job every 6 s), 1 in 1,000 of them failed (so that the
failures page walks far back for its 50), each with a line of output and the longest job's with
4 KiB. A real `edgeworker run` works on it (its jobs are daily: it idles, with the database open
in WAL mode), and a real `edgeworker serve` answers. Each page, as HTML and as JSON, is asked for
`repeats` times in turn, one request at a time over a new connection (as a browser's first visit
does), timed from sending the request to the last byte of the answer. Then VmRSS and VmHWM (its
peak) of the serving process, read from /proc.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.common import Figure, Stat, WorkerProcess, scratch_dir, wait_for, worker_config

HISTORY = 100_000
JOBS = 12
PAGES = ["/", "/jobs", "/jobs/job00", "/jobs/job00?before={middle}", "/runs/{middle}",
         "/failures"]


def job_config() -> str:
    return "".join(f'[[jobs]]\nname = "job{n:02d}"\ncallable = "bench.jobs:noop"\n'
                   'every = "24h"\n\n' for n in range(JOBS))


def add_history(worker: WorkerProcess, count: int) -> int:
    """Create the database, sync its jobs and give them `count` finished runs over 7 days, the
    oldest first (ids grow with time, as the worker writes them). Returns a middle task id."""
    from edgeworker import db as dbmod
    from edgeworker import migrate, models
    from edgeworker.config import load_config
    from edgeworker.jobs import sync_jobs
    from edgeworker.ledger import Ledger
    from edgeworker.models import Job, Task

    database = dbmod.open_database(worker.db, create=True)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    models.bind(database)
    now = datetime.now(UTC)
    sync_jobs(Ledger(database), load_config(worker.config).jobs, now)
    job_ids = [job.id for job in Job.select().order_by(Job.name)]
    start, step = now - timedelta(days=7), timedelta(days=7) / count
    with database.atomic():
        for chunk in range(0, count, 1000):
            rows = []
            for k in range(chunk, min(count, chunk + 1000)):
                at = start + k * step
                failed = k % 1000 == 999
                job = job_ids[0] if k % 2 == 0 else job_ids[1 + k % (JOBS - 1)]
                rows.append({"job": job, "status": "failed" if failed else "succeeded",
                             "origin": "schedule", "scheduled_for": at, "due_at": at,
                             "attempt": 1, "created_at": at, "started_at": at,
                             "finished_at": at + timedelta(seconds=0.5),
                             "exit_code": 1 if failed else 0,
                             "error": "exit status 1" if failed else None,
                             "output": ("line of output\n" * (280 if job == job_ids[0] else 1)),
                             "worker": "earlier:1:1"})
            Task.insert_many(rows).execute()
    middle = Task.select(Task.id).where(Task.job == job_ids[0]).order_by(Task.id) \
        .offset(count // 4).limit(1).scalar()
    database.close()
    return middle


def fetch(port: int, path: str) -> tuple[float, int, int]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return (time.perf_counter() - started) * 1000, response.status, len(body)


def proc_status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as handle:
        return {line.split(":")[0]: int(line.split()[1]) for line in handle
                if line.startswith(("VmRSS:", "VmHWM:"))}


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    history, repeats = (2_000, 3) if quick else (HISTORY, 20)
    directory = scratch_dir("web")
    worker = WorkerProcess(directory, worker_config(job_config()), name="ew")
    serve = None
    try:
        middle = add_history(worker, history)
        worker.start().wait_running()
        serve_log = directory / "serve.log"
        with open(serve_log, "wb") as log:
            serve = subprocess.Popen([sys.executable, "-m", "edgeworker", "--config",
                                      str(worker.config), "serve", "--listen", "127.0.0.1:0"],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        found = wait_for(lambda: re.search(r"http://127\.0\.0\.1:(\d+)/",
                                           serve_log.read_text()), 30,
                         what="edgeworker serve to listen")
        port = int(found.group(1))
        idle = proc_status(serve.pid)
        paths = [p.format(middle=middle) for p in PAGES]
        paths += [p + ("&" if "?" in p else "?") + "format=json" for p in paths]
        times: dict[str, list[float]] = {p: [] for p in paths}
        sizes: dict[str, int] = {}
        for path in paths:
            fetch(port, path)  # the first visit imports what the page needs
        for i in range(repeats):
            for path in (paths if i % 2 == 0 else paths[::-1]):
                ms, status, size = fetch(port, path)
                assert status == 200, (path, status)
                times[path].append(ms)
                sizes[path] = size
        served = proc_status(serve.pid)
        serve.terminate()
        assert serve.wait(10) == 0
        assert worker.stop() == 0
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
            serve.wait()
        worker.kill()
        shutil.rmtree(directory, ignore_errors=True)

    figures = [
        Figure("7", f"status page RSS, idle after start ({history:,} runs)", "MiB",
               Stat.of([idle["VmRSS"] / 1024]), target="≤ 30 MB",
               met=idle["VmRSS"] * 1024 <= 30e6),
        Figure("7", f"status page RSS after {(repeats + 1) * len(paths)} pages", "MiB",
               Stat.of([served["VmRSS"] / 1024]), target="≤ 30 MB",
               met=served["VmRSS"] * 1024 <= 30e6),
        Figure("7", "status page peak RSS (VmHWM)", "MiB", Stat.of([served["VmHWM"] / 1024]),
               target="≤ 30 MB", met=served["VmHWM"] * 1024 <= 30e6),
    ]
    for path in paths:
        value = Stat.of(times[path])
        shown = path.replace(str(middle), "ID")
        figures.append(Figure("7", f"page {shown} ({sizes[path] / 1024:.0f} KiB)", "ms", value,
                              target="≤ 100 ms", met=value.high <= 100))
    return figures, {"history": history, "repeats": repeats, "times_ms": times,
                     "bytes": sizes, "rss_kib": {"idle": idle, "served": served}}


if __name__ == "__main__":
    from bench.common import render_table

    print(render_table(measure("--quick" in sys.argv)[0]))
