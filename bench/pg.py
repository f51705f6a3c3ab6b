"""PostgreSQL: no-op throughput of 1, 2 and 4 worker processes beside huey's `PostgresHuey`, a
dead worker's run recovered when its lease expires, and what idle workers write.

One private server for the whole script (`tests/pgserver.py`, with PostgreSQL's durable defaults:
fsync, synchronous_commit and full_page_writes on), a fresh database for every run.

- Throughput: N no-op runs queued in one transaction, drained by C worker processes (C = 1, 2, 4)
  that were started before and wait idle, each with one worker thread. The clock runs from the
  queueing transaction's commit to the end of the last run; CPU time is the worker processes'
  (/proc/PID/stat, children included) and the server's (the postmaster and all its processes,
  exited ones included), per task.
  - edgeworker: `edgeworker run` processes (`workers = 1`, each with its own `[worker] name`);
    the N runs are manual runs as `edgeworker jobs run` queues them (`Ledger.run_now`), spread
    over 64 callable jobs `bench.jobs:noop`: a job has one run at a time, so one job's runs
    would be drained one by one however many workers there are. Its end: the latest
    `finished_at`.
  - huey: C processes, each huey's `Consumer(workers=1)` (thread worker, its defaults, INFO lines
    as `huey_consumer` logs them) over `PostgresHuey` with a no-op task; N messages (huey's own
    `serialize_task`) inserted in one transaction with one `pg_notify`, the rows and the
    notification `PostgresStorage.enqueue` sends for one. Its end: the last SIGNAL_COMPLETE.
  Beside them, enqueueing one run a transaction from one producer, no worker running.
- Recovery: two workers with `[worker] lease` L and `heartbeat` H (5 s and 1 s; 20 s and 10 s,
  the defaults' ratio); the one running a long command is SIGKILLed; the time until the other starts
  the recovered run (the command's own timestamp), from the kill and from the dead worker's last
  heartbeat (`workers.beat_at`, the server's clock), less L.
- Idle: C idle workers for a window, from 12 s after they started just after a CHECKPOINT (so
  that none falls in the window); per worker per minute: the WAL of the transactions that
  changed the workers' database (pg_waldump between two pg_current_wal_flush_lsn: their records'
  bytes and their commit records, the write transactions; the server's own, such as
  autovacuum's after the databases dropped before, left out) and the transactions the server
  counted (pg_stat_database.xact_commit: read-only ones included; an idle backend reports them
  within 10 s, so ± a few), beside the heartbeat's one write an interval.
WAL bytes and commits per task of the drain are counted the same way.

Skipped, with the reason, where no PostgreSQL server can be started (tests/pgserver.py), or where
psycopg 3 (which `PostgresHuey` needs) or huey's `PostgresHuey` is missing. A feature that the
worker does not have yet (several workers on one database, leases) is left out with a note.

Where it goes: `python -m bench.pg statements edgeworker|huey [WORKERS] [N]` drains N runs on a
server with pg_stat_statements and prints each statement's calls, execution and planning time
per task; `statements idle [WORKERS] [SECONDS]` what idle workers run, per minute.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from importlib import import_module
from pathlib import Path

from bench.common import (
    REPO,
    Figure,
    Stat,
    WorkerProcess,
    pgserver,
    scratch_dir,
    side_by_side,
    wait_for,
)

COUNTS = (1, 2, 4)
JOBS = 64
NEVER = 'cron = "0 0 1 1 *"\ntimezone = "UTC"\n'  # no slot of its own while a benchmark runs
TICK = os.sysconf("SC_CLK_TCK")


def unavailable() -> str | None:
    """Why this script cannot run here, or None."""
    for name in ("psycopg2", "psycopg"):  # kept out by importing edgeworker (its __init__)
        if sys.modules.get(name, False) is None:
            del sys.modules[name]
    reason = pgserver.unavailable()
    if reason:
        return reason
    if importlib.util.find_spec("psycopg") is None:
        return ("huey's PostgresHuey (the baseline) needs psycopg 3: "
                "pip install 'psycopg[binary]'")
    import huey

    if not hasattr(huey, "PostgresHuey"):
        return f"huey {huey.__version__} has no PostgresHuey"
    return None


def worker_settings() -> set[str]:
    """The keys of [worker] this edgeworker knows."""
    from edgeworker.config import WorkerSettings

    return {f.name for f in fields(WorkerSettings)}


# -- the server --------------------------------------------------------------------------------

def ticks(pid: int) -> tuple[int, int, int]:
    """(ppid, own CPU ticks, waited-for children's CPU ticks) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        data = handle.read()
    after = data[data.rindex(")") + 2:].split()  # field 3 (state) onwards
    return int(after[1]), int(after[11]) + int(after[12]), int(after[13]) + int(after[14])


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children it has waited for."""
    _, own, children = ticks(pid)
    return (own + children) / TICK


class Cluster:
    """The private server, with what the benchmarks read from it."""

    def __init__(self, profiling: bool = False):
        from edgeworker.postgres import driver

        driver()  # psycopg2, which importing edgeworker keeps out of sys.modules
        self.profiling = profiling  # pg_stat_statements on: `python -m bench.pg statements`
        self.server = pgserver.Server(durable=True, settings=(
            "shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track_planning=on")
            if profiling else ())
        self.names: dict[str, str] = {}  # URL -> database

    def start(self) -> Cluster:
        try:
            self.server.start()
            self.postmaster = self.server.postmaster_pid()
            if self.profiling:
                self.one("CREATE EXTENSION pg_stat_statements")
        except BaseException:
            self.server.stop()  # a server that started is stopped, its directory removed
            raise
        return self

    def stop(self) -> None:
        self.server.stop()

    def database(self) -> str:
        name = self.server.create_database("bench")
        url = self.server.url(name)
        self.names[url] = name
        return url

    def drop(self, url: str) -> None:
        self.server.drop_database(self.names.pop(url))

    def cpu(self) -> float:
        """CPU seconds of the server: the postmaster, its processes, and those that exited."""
        _, own, children = ticks(self.postmaster)
        total = own + children
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid, own, children = ticks(int(entry))
                except (FileNotFoundError, ProcessLookupError, ValueError):
                    continue
                if ppid == self.postmaster:
                    total += own + children
        return total / TICK

    def one(self, sql: str, params: tuple = (), dbname: str = "postgres"):
        conn = self.server.connect(dbname)
        try:
            conn.autocommit = True
            cursor = conn.cursor()
            cursor.execute(sql, params)
            return cursor.fetchone()[0] if cursor.description else None
        finally:
            conn.close()

    def mark(self) -> int:
        """Where the WAL is (and, profiling, statistics of statements start from zero)."""
        if self.profiling:
            self.one("SELECT pg_stat_statements_reset()")
        return self.flushed_lsn()

    def collect(self, url: str, mark: int) -> dict:
        """The WAL written since `mark` (`wal_bytes`), and that of the database's transactions
        (`wal_records`); profiling, the statements run in the database."""
        end = self.flushed_lsn()
        found = {"wal_bytes": end - mark, **self.wal_records(mark, end, self.names[url])}
        if self.profiling:
            conn = self.server.connect("postgres")
            try:
                cursor = conn.cursor()
                cursor.execute("SELECT calls, total_exec_time, total_plan_time, rows, query FROM "
                               "pg_stat_statements JOIN pg_database d ON d.oid = dbid "
                               "WHERE datname = %s ORDER BY total_exec_time DESC",
                               (self.names[url],))
                found["statements"] = cursor.fetchall()
            finally:
                conn.close()
        return found

    def flushed_lsn(self) -> int:
        text = self.one("SELECT pg_current_wal_flush_lsn()::text")
        high, low = text.split("/")
        return (int(high, 16) << 32) + int(low, 16)

    def transactions(self, url: str) -> int:
        return self.one("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                        (self.names[url],))

    def wal_records(self, start: int, end: int, database: str) -> dict[str, int]:
        """The WAL between two positions (pg_waldump), of the transactions that changed a table
        of `database`: their records' bytes, their commit records, full-page images. The
        server's own writes (autovacuum after the databases dropped before, standby snapshots,
        checkpoints) are counted only in `wal_bytes`."""
        lsn = [f"{x >> 32:X}/{x & 0xFFFFFFFF:X}" for x in (start, end)]
        result = subprocess.run(
            [str(pgserver.BIN / "pg_waldump"), "-p", str(self.server.data / "pg_wal"), "-s",
             lsn[0], "-e", lsn[1]], capture_output=True, text=True, timeout=60)
        oid = str(self.one("SELECT oid FROM pg_database WHERE datname = %s", (database,)))
        records = []  # (transaction, total length, a COMMIT, full-page images, in the database)
        for line in result.stdout.splitlines():
            found = RECORD.search(line)
            if found:
                records.append((found["tx"], int(found["total"]), found["desc"] == "COMMIT",
                                line.count(" FPW"), oid in RELATIONS.findall(line)))
        ours = {tx for tx, _, _, _, here in records if here and tx != "0"}
        mine = [r for r in records if r[0] in ours]
        return {"bytes": sum(r[1] for r in mine), "commits": sum(r[2] for r in mine),
                "full_pages": sum(r[3] for r in mine), "records": len(mine)}


RECORD = re.compile(r"len \(rec/tot\):\s*\d+/\s*(?P<total>\d+), tx:\s*(?P<tx>\d+),.*? desc: "
                    r"(?P<desc>\S+)")
RELATIONS = re.compile(r"rel \d+/(\d+)/\d+")


# -- edgeworker's workers ----------------------------------------------------------------------

def migrated(url: str):
    """The database opened in this process, migrated, with the models bound to it."""
    from edgeworker import db as dbmod
    from edgeworker import migrate, models

    database = dbmod.open_database(url, create=True)
    migrate.apply(database, migrate.plan(database, migrate.for_database(database)))
    models.bind(database)
    return database


def worker_config(url: str, name: str | None, jobs: str, extra: str = "") -> str:
    named = f'name = "{name}"\n' if name is not None else ""
    return (f'[worker]\ndatabase = "{url}"\nworkers = 1\npython_path = ["{REPO}"]\n{named}'
            f"{extra}{jobs}")


def start_workers(directory: Path, url: str, count: int, jobs: str,
                  extra: str = "") -> list[WorkerProcess]:
    """`count` `edgeworker run` processes on the database, each running (in turn: their start-up
    syncs the same config)."""
    named = "name" in worker_settings()
    workers = []
    for i in range(count):
        name = f"bench-{i}" if named else None
        worker = WorkerProcess(directory, worker_config(url, name, jobs, extra), name=f"w{i}")
        workers.append(worker)
        worker.start().wait_running(60)
    return workers


def stop_workers(workers: list[WorkerProcess]) -> None:
    codes = [worker.stop() for worker in workers]
    if any(codes):
        raise RuntimeError(f"a worker exited {codes}:\n{workers[codes.index(max(codes))].log()}")


def kill_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.kill()


def noop_jobs() -> str:
    return "".join(f'[[jobs]]\nname = "noop-{i:02d}"\ncallable = "bench.jobs:noop"\n{NEVER}'
                   for i in range(JOBS))


def drain_edgeworker(cluster: Cluster, count: int, n: int) -> dict:
    from peewee import fn

    from edgeworker.clock import utcnow
    from edgeworker.ledger import Ledger
    from edgeworker.models import Job, Task

    url = cluster.database()
    directory = scratch_dir("pg-ew")
    database = migrated(url)
    workers = []
    try:
        workers = start_workers(directory, url, count, noop_jobs())
        ledger = Ledger(database, worker="bench")
        jobs = list(Job.select().where(Job.name.startswith("noop-")).order_by(Job.name))
        assert len(jobs) == JOBS, len(jobs)
        time.sleep(0.5)  # start-up's last writes
        worker_cpu = [process_cpu(w.proc.pid) for w in workers]
        now = utcnow()
        with database.atomic():
            for i in range(n):
                ledger.run_now(jobs[i % JOBS], now)
        committed, server_cpu, wal = time.time(), cluster.cpu(), cluster.mark()
        succeeded = (Task.origin == "manual") & (Task.status == "succeeded")

        def done() -> bool:
            if Task.select().where((Task.origin == "manual") & (Task.status != "succeeded")
                                   & Task.finished_at.is_null(False)).exists():
                raise RuntimeError(f"a run did not succeed:\n{workers[0].log()[-3000:]}")
            return Task.select().where(succeeded).count() >= n

        wait_for(done, timeout=600, interval=0.05, what=f"{n} runs to succeed")
        server_cpu = cluster.cpu() - server_cpu
        wal = cluster.collect(url, wal)
        worker_cpu = sum(process_cpu(w.proc.pid) - c for w, c in zip(workers, worker_cpu,
                                                                         strict=True))
        last = Task.select(fn.max(Task.finished_at)).where(succeeded).scalar()  # a datetime
        stop_workers(workers)
    finally:
        kill_workers(workers)
        database.close()
        cluster.drop(url)
        shutil.rmtree(directory, ignore_errors=True)
    return {"n": n, "count": count, "seconds": last.timestamp() - committed,
            "worker_cpu": worker_cpu, "server_cpu": server_cpu, **wal}


# -- huey's --------------------------------------------------------------------------------------

def huey_storage():
    """huey's storage module, with psycopg 3: importing edgeworker keeps psycopg out of
    sys.modules (edgeworker/__init__.py), so a huey imported after it found none."""
    if sys.modules.get("psycopg", False) is None:
        del sys.modules["psycopg"]
    import huey.storage
    import psycopg

    huey.storage.psycopg = psycopg
    return huey.storage


def make_huey(url: str):
    huey_storage()
    from huey import PostgresHuey

    huey = PostgresHuey("bench", dsn=url)

    @huey.task(name="noop")
    def noop():
        return None

    return huey, noop


def consumer(url: str) -> None:
    """A huey consumer process (`python -m bench.pg consumer URL`): runs until SIGINT, then
    prints how many tasks it completed and when the last one ended."""
    from huey.consumer import Consumer
    from huey.signals import SIGNAL_COMPLETE

    handler = logging.StreamHandler()  # as huey_consumer logs by default
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s] %(levelname)s:%(name)s:%(threadName)s:%(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    huey, _ = make_huey(url)
    done = {"count": 0, "last": 0.0}

    @huey.signal(SIGNAL_COMPLETE)
    def complete(signal_name, task):
        done["count"] += 1
        done["last"] = time.time()

    print("consumer running", file=sys.stderr, flush=True)
    Consumer(huey, workers=1).run()  # as huey_consumer runs it, until SIGINT (graceful)
    sys.stdout.write(json.dumps(done))
    sys.stdout.flush()
    os._exit(0)


def drain_huey(cluster: Cluster, count: int, n: int) -> dict:
    url = cluster.database()
    directory = scratch_dir("pg-huey")
    huey, noop = make_huey(url)
    storage = huey.storage
    procs = []
    try:
        for i in range(count):
            with open(directory / f"c{i}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.pg", "consumer", url], stdout=subprocess.PIPE,
                    stderr=log, cwd=REPO))
        for i, proc in enumerate(procs):
            path = directory / f"c{i}.log"
            wait_for(lambda p=path, c=proc: "consumer running" in p.read_text()
                     or c.poll() is not None, timeout=60, what="huey's consumer to start")
            if proc.poll() is not None:
                raise RuntimeError(f"huey's consumer exited:\n{path.read_text()[-3000:]}")
        time.sleep(0.5)
        worker_cpu = [process_cpu(p.pid) for p in procs]
        messages = [(storage.name, huey.serialize_task(noop.s()), 0) for _ in range(n)]
        conn = storage.conn
        with conn.transaction():
            cursor = conn.cursor()
            cursor.executemany(f"INSERT INTO {storage.table_task} (queue, data, priority) "
                               "VALUES (%s, %s, %s)", messages)
            cursor.execute("SELECT pg_notify(%s, %s)", (storage.channel, ""))
        committed, server_cpu, wal = time.time(), cluster.cpu(), cluster.mark()
        wait_for(lambda: huey.pending_count() == 0, timeout=600, interval=0.05,
                 what="huey's queue to empty")
        time.sleep(0.2)  # the last dequeued tasks end (a no-op: well under a millisecond)
        server_cpu = cluster.cpu() - server_cpu
        wal = cluster.collect(url, wal)
        worker_cpu = sum(process_cpu(p.pid) - c for p, c in zip(procs, worker_cpu, strict=True))
        reports = []
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
            reports.append(json.loads(out))
        completed = sum(r["count"] for r in reports)
        if completed != n:
            raise RuntimeError(f"huey completed {completed} of {n} tasks")
        last = max(r["last"] for r in reports)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        storage.close()
        cluster.drop(url)
        shutil.rmtree(directory, ignore_errors=True)
    return {"n": n, "count": count, "seconds": last - committed, "worker_cpu": worker_cpu,
            "server_cpu": server_cpu, **wal}


# -- enqueueing one at a time ------------------------------------------------------------------

def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def enqueue_each(cluster: Cluster, contender: str, n: int) -> dict:
    """`n` runs queued one a transaction by this process, no worker running."""
    url = cluster.database()
    try:
        if contender == "edgeworker":
            from edgeworker.clock import utcnow
            from edgeworker.config import JobSpec
            from edgeworker.jobs import add_job
            from edgeworker.ledger import Ledger

            database = migrated(url)
            ledger = Ledger(database, worker="bench")
            job = add_job(ledger, JobSpec(name="noop", kind="callable", target="bench.jobs:noop",
                                          every=86400.0), utcnow())
            enqueue, close = (lambda: ledger.run_now(job, utcnow())), database.close
        else:
            huey, noop = make_huey(url)
            enqueue, close = noop, huey.storage.close
        enqueue()  # the connection is open, the statements known
        began, cpu, server = time.perf_counter(), cpu_self(), cluster.cpu()
        for _ in range(n):
            enqueue()
        result = {"n": n, "seconds": time.perf_counter() - began, "cpu": cpu_self() - cpu,
                  "server_cpu": cluster.cpu() - server}
        close()
    finally:
        cluster.drop(url)
    return result


# -- recovery by lease -------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(x) for x in handle.read().split()]
        except FileNotFoundError:
            continue
    return found


def recovery_run(cluster: Cluster, lease: float, heartbeat: float) -> dict:
    """Two workers; SIGKILL the one running a long command; when does the other start it?"""
    from edgeworker.clock import utcnow
    from edgeworker.ledger import Ledger
    from edgeworker.models import Job, Worker

    url = cluster.database()
    directory = scratch_dir("pg-lease")
    stamps = directory / "stamps"
    job = ('[[jobs]]\nname = "hold"\ncommand = ["sh", "-c", "echo $EDGEWORKER_RECOVERED '
           f'$(date +%s.%N) >> {stamps}; [ $EDGEWORKER_RECOVERED = 1 ] || exec sleep 600"]\n'
           f"max_attempts = 3\n{NEVER}")
    database = migrated(url)
    workers = []

    def lines(recovered: str) -> list[float]:
        text = stamps.read_text() if stamps.exists() else ""
        return [float(line.split()[1]) for line in text.splitlines()
                if line.split()[:1] == [recovered]]

    try:
        workers = start_workers(directory, url, 2, job,
                                f'lease = "{lease:g}s"\nheartbeat = "{heartbeat:g}s"\n')
        Ledger(database, worker="bench").run_now(Job.get(Job.name == "hold"), utcnow())
        wait_for(lambda: lines("0"), timeout=30, what="the run to start")
        victim = wait_for(lambda: next((w for w in workers if children(w.proc.pid)), None),
                          timeout=10, what="the worker running the command")
        killed = time.time()
        victim.kill()
        [started] = wait_for(lambda: lines("1"), timeout=lease + 60,
                             what="the recovered run to start", log=workers[0].log)
        row = Worker.get(Worker.name == f"bench-{workers.index(victim)}")
        # its last heartbeat by the server's clock (the same machine's) where it is recorded
        beat = getattr(row, "beat_at", None) or row.last_heartbeat.timestamp()
        stop_workers([w for w in workers if w is not victim])
    finally:
        kill_workers(workers)
        database.close()
        cluster.drop(url)
        shutil.rmtree(directory, ignore_errors=True)
    return {"lease": lease, "heartbeat": heartbeat, "after_kill": started - killed,
            "after_heartbeat": started - beat}


# -- idle workers --------------------------------------------------------------------------------

def idle_run(cluster: Cluster, count: int, heartbeat: float | None, settle: float,
             window: float) -> dict:
    url = cluster.database()
    directory = scratch_dir("pg-idle")
    job = f'[[jobs]]\nname = "daily"\ncallable = "bench.jobs:noop"\n{NEVER}'
    extra = f'heartbeat = "{heartbeat:g}s"\n' if heartbeat else ""
    database = migrated(url)
    database.close()
    # The last checkpoint's full-page images fall before the window (the first change of each
    # page after a checkpoint logs the whole page), and the next timed one (checkpoint_timeout,
    # 5 min) after it: what the window sees is the workers' steady state.
    cluster.one("CHECKPOINT")
    workers = []
    try:
        workers = start_workers(directory, url, count, job, extra)
        time.sleep(settle)
        transactions, began, mark = cluster.transactions(url), time.time(), cluster.mark()
        time.sleep(window)
        found, transactions = cluster.collect(url, mark), cluster.transactions(url) - transactions
        seconds = time.time() - began
        stop_workers(workers)
    finally:
        kill_workers(workers)
        cluster.drop(url)
        shutil.rmtree(directory, ignore_errors=True)
    per = 60 / seconds / count  # per worker per minute
    return {"count": count, "heartbeat": heartbeat, "window": seconds,
            "transactions": transactions * per, "statements": found.pop("statements", []),
            **{key: value * per for key, value in found.items()}}


# -- the figures -----------------------------------------------------------------------------------

def throughput_figures(runs: dict[str, list[dict]], count: int) -> list[Figure]:
    def values(contender: str, f) -> list[float]:
        return [f(r) for r in runs[contender]]

    def ratio(f) -> Stat | None:
        pairs = list(zip(values("edgeworker", f), values("huey", f), strict=True))
        if not all(b for _, b in pairs):
            return None  # a CPU time under one clock tick (--quick's sizes)
        return Stat.of([a / b for a, b in pairs])

    def line(what: str, unit: str, f, digits: int) -> Figure:
        return Figure("13", what, unit, Stat.of(values("edgeworker", f)),
                      Stat.of(values("huey", f)), "huey", ratio(f), digits=digits)

    workers = f"{count} worker{'s' if count > 1 else ''}"
    return [
        line(f"PostgreSQL: no-op tasks/s, {workers} (processes), queued then drained",
             "tasks/s", lambda r: r["n"] / r["seconds"], 0),
        line(f"PostgreSQL: CPU per task, {workers}: worker processes", "ms",
             lambda r: r["worker_cpu"] / r["n"] * 1e3, 2),
        line(f"PostgreSQL: CPU per task, {workers}: the server", "ms",
             lambda r: r["server_cpu"] / r["n"] * 1e3, 2),
        line(f"PostgreSQL: WAL bytes per task, {workers} (the drain's transactions)", "B",
             lambda r: r["bytes"] / r["n"], 0),
        line(f"PostgreSQL: commits per task, {workers} (WAL commit records, the drain)",
             "commits", lambda r: r["commits"] / r["n"], 2),
    ]


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    reason = unavailable()
    if reason:
        return [], {"skipped": reason}
    settings = worker_settings()
    notes = []
    counts = COUNTS if "name" in settings else (1,)
    if "name" not in settings:
        notes.append("pg: 2 and 4 workers left out: one worker per database ([worker] name "
                     "not there yet)")
    if quick:
        counts = counts[:2]
    n, repeats, each = (20, 1, 10) if quick else (1000, 3, 300)
    raw: dict = {"n": n, "repeats": repeats, "throughput": {}, "notes": notes}
    figures: list[Figure] = []
    cluster = Cluster().start()
    try:
        for count in counts:
            runs = side_by_side(repeats, {
                "edgeworker": lambda c=count: drain_edgeworker(cluster, c, n),
                "huey": lambda c=count: drain_huey(cluster, c, n)})
            raw["throughput"][count] = runs
            figures += throughput_figures(runs, count)
        runs = side_by_side(repeats, {c: (lambda c=c: enqueue_each(cluster, c, each))
                                      for c in ("edgeworker", "huey")})
        raw["enqueue"] = runs
        rates = {c: [r["n"] / r["seconds"] for r in runs[c]] for c in runs}
        figures.append(Figure(
            "13", "PostgreSQL: enqueue, one run a transaction (jobs run; huey: a call)",
            "tasks/s", Stat.of(rates["edgeworker"]), Stat.of(rates["huey"]), "huey",
            Stat.of([a / b for a, b in zip(rates["edgeworker"], rates["huey"], strict=True)]),
            digits=0))

        if "lease" in settings:
            raw["recovery"] = []
            # (lease, heartbeat): a heartbeat of a fifth of the lease, and the defaults' ratio
            # (60 s and 30 s) with a heartbeat longer than the 5 s between a live worker's looks
            # for expired leases (daemon.EXPIRY_CHECK)
            for lease, heartbeat in ([(2.0, 1.0)] if quick else [(5.0, 1.0), (20.0, 10.0)]):
                runs = [recovery_run(cluster, lease, heartbeat) for _ in range(repeats)]
                raw["recovery"].append(runs)
                late = [r["after_kill"] - lease for r in runs]
                setting = f"lease {lease:g} s, heartbeat {heartbeat:g} s"
                figures += [
                    Figure("13", f"PostgreSQL: SIGKILL → recovered run starts ({setting})", "s",
                           Stat.of([r["after_kill"] for r in runs]), digits=2),
                    Figure("13", f"PostgreSQL:   the same, less the lease ({setting})", "s",
                           Stat.of(late), target="≤ 5 s (issue 13)", met=max(late) <= 5,
                           digits=2),
                    Figure("13", f"PostgreSQL:   from the dead worker's last heartbeat, less the "
                           f"lease ({setting})", "s",
                           Stat.of([r["after_heartbeat"] - lease for r in runs]), digits=2),
                ]
        else:
            notes.append("pg: lease-expiry recovery left out: no [worker] lease yet")

        idle = [(1, None, 60.0), (4, None, 60.0), (4, 5.0, 30.0)]
        settle = 12.0  # past start-up and its statistics (an idle backend reports within 10 s)
        if quick:
            idle, settle = [(1, 1.0, 1.5)], 0.5
        raw["idle"] = []
        for count, heartbeat, window in idle:
            if count > 1 and "name" not in settings:
                notes.append(f"pg: {count} idle workers left out: one worker per database")
                continue
            r = idle_run(cluster, count, heartbeat, settle, window)
            raw["idle"].append(r)
            beat = heartbeat or 30.0  # config.DEFAULT_HEARTBEAT on PostgreSQL
            what = (f"PostgreSQL idle, {count} worker{'s' if count > 1 else ''}, heartbeat "
                    f"{beat:g} s ({window:g} s): per worker per minute,")
            expected = 60 / beat
            figures += [
                Figure("13", f"{what} WAL bytes (its database's transactions)", "B",
                       Stat.of([r["bytes"]]), digits=0),
                Figure("13", f"{what} commits (WAL commit records)", "commits",
                       Stat.of([r["commits"]]), target=f"≈ {expected:g} (1 a heartbeat)",
                       met=r["commits"] <= expected + 60 / r["window"], digits=1),
                Figure("13", f"{what} transactions (read-only included; ± a few)", "txn",
                       Stat.of([r["transactions"]]), digits=1),
            ]
    finally:
        cluster.stop()
    return figures, raw


def statements(argv: list[str]) -> None:
    """`statements edgeworker|huey [WORKERS] [N]`: one drain on a server with
    pg_stat_statements, and each statement the database ran during it: calls, execution and
    planning time per task, rows per call (the benchmark's own polling included: `count(*)`).
    `statements idle [WORKERS] [SECONDS]`: the same for idle workers (default heartbeat), per
    worker per minute."""
    contender = argv[0]
    count = int(argv[1]) if len(argv) > 1 else 1
    n = int(argv[2]) if len(argv) > 2 else 1000
    cluster = Cluster(profiling=True).start()
    if contender == "idle":
        try:
            r = idle_run(cluster, count, None, 5.0, n)
        finally:
            cluster.stop()
        print(f"{count} idle worker(s), {r['window']:.0f} s; per worker per minute: WAL "
              f"{r['bytes']:,.0f} B, {r['commits']:.1f} commits, {r['transactions']:.1f} "
              "transactions")
        print(f"{'calls/min':>10} {'exec ms/min':>12} {'rows/call':>9}  statement (per worker)")
        per = 60 / r["window"] / count
        for calls, total, _, rows, query in r["statements"]:
            text = " ".join(query.split())
            print(f"{calls * per:10.2f} {total * per:12.3f} {rows / calls:9.2f}  {text[:140]}")
        return
    try:
        drain = drain_edgeworker if contender == "edgeworker" else drain_huey
        r = drain(cluster, count, n)
    finally:
        cluster.stop()
    print(f"{contender}, {count} worker(s), {n} tasks: {n / r['seconds']:,.0f} tasks/s; per "
          f"task: server CPU {r['server_cpu'] / n * 1e3:.2f} ms, worker CPU "
          f"{r['worker_cpu'] / n * 1e3:.2f} ms, WAL {r['bytes'] / n:,.0f} B, "
          f"{r['commits'] / n:.2f} commits, {r['full_pages'] / n:.2f} full-page images")
    print(f"{'calls/task':>10} {'exec ms/task':>12} {'plan ms/task':>12} {'rows/call':>9}  "
          "statement")
    for calls, total, plan, rows, query in r["statements"]:
        text = " ".join(query.split())
        print(f"{calls / n:10.2f} {total / n:12.3f} {plan / n:12.3f} {rows / calls:9.2f}  "
              f"{text[:140]}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["consumer"]:  # as bench.pg, not __main__: huey names a task by its module
        import_module("bench.pg").consumer(argv[1])
        return
    if argv[:1] == ["statements"]:
        import_module("bench.pg").statements(argv[1:])
        return
    from bench.common import render_table

    figures, raw = measure("--quick" in argv)
    if "skipped" in raw:
        print(f"pg: skipped: {raw['skipped']}")
        return
    print(render_table(figures))
    for note in raw["notes"]:
        print(note)


if __name__ == "__main__":
    main(sys.argv[1:])
