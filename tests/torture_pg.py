"""Kill torture on PostgreSQL: three workers on one database, SIGKILLed at random, the server
crashed once; then the checks.

Four interval jobs run bash commands that append `<task> <attempt> <recovered> <life>
start|end|term <ns>` lines to a ledger file per job: what the world saw, `<life>` naming the
worker process that ran it (`term`: a SIGTERM ended the run). Each event SIGKILLs a random live
worker (mostly while two run, so that kills land in runs; never leaving the database without a
worker that has written a heartbeat), which comes back under its name at once (its start
recovers its runs), a little after its lease expired (it races the others' lease recovery), or a
while later (another worker must recover its runs). One event crashes PostgreSQL (`pg_ctl stop
-m immediate`, then a start). After every event the tasks and recovery rows are read through a
connection of the torture's own (a snapshot), and a watcher notes when each run a killed worker
held is claimed again. After the last event every worker runs, the runs settle, each worker
stops gracefully, and `check()` verifies:

- lost committed states: every state a snapshot or a worker's log showed committed is still
  there (a finished task keeps its outcome, an attempt never goes back, a task id always names
  the same run);
- double runs: no run (task, attempt) ran twice, no task ran more often than its attempts, no two
  runs of one job overlapped (a run without an end was killed, and the next began after the
  kill), every re-run was told it is a recovery (the jobs never fail), and no task is in more
  recovery rows than it was recovered;
- recovery: every run a killed worker held was claimed again, or closed with a stated reason,
  within lease + 5 s of the kill (`figures.rerun_s`);
- a run ended early only by its worker's kill or self-fencing, and a start failed only with a
  one-line error (never an internal one);
- as in the SQLite torture (tests/torture.py): nothing left running, every waiting run
  claimable, one pending scheduled run per job, no slot twice, every slot of a catch_up = "all"
  job.

`make torture-pg` runs 100 events (SEED=, EVENTS=); `python tests/torture_pg.py --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgserver  # noqa: E402
from workerproc import WorkerProcess, wait_for  # noqa: E402

from edgeworker.clock import from_text  # noqa: E402
from edgeworker.postgres import driver  # noqa: E402

NAMES = ("w1", "w2", "w3")
THREADS = 2  # [worker] workers of each
LEASE = 2.0  # the shortest allowed
HEARTBEAT = 1.0  # the most often allowed
BOUND = 5.0  # a killed worker's runs are claimed again within LEASE + BOUND of the kill
# job name -> (every, catch_up, seconds a run sleeps): the long ones so that kills land in runs
JOBS = {
    "tick": ("300ms", "all", "0.0$(( $EDGEWORKER_TASK_ID % 10 ))"),
    "skip": ("500ms", "skip", "0.2"),
    "long": ("1s", "skip", "2.$(( $EDGEWORKER_TASK_ID % 10 ))"),
    "longer": ("700ms", "once", "1.$(( $EDGEWORKER_TASK_ID % 10 ))"),
}
# How a killed worker comes back: at once under its name (start-up recovery), a little after its
# lease expired, or a while later (another worker recovers its runs by lease meanwhile).
POLICIES = {"at once": 0.4, "after its lease": 0.3, "later": 0.3}
STARTED = re.compile(r"task (\d+) job (\S+) attempt (\d+) started")
SUCCEEDED = re.compile(r"task (\d+) job (\S+) attempt (\d+) succeeded")
GIVEN_BACK = re.compile(r"task (\d+): given back unstarted")
RUNNING = "edgeworker running"
FENCED = "running run(s) unrecorded"  # daemon.fence's line, before or after the lease ends


def worker_settings(name: str) -> str:
    """The [worker] keys that make several workers share one database with leases."""
    return f'name = "{name}"\nheartbeat = "{HEARTBEAT:g}s"\nlease = "{LEASE:g}s"\n'


def config_text(url: str, ledgers: Path, name: str) -> str:
    lines = [f'[worker]\ndatabase = "{url}"\nworkers = {THREADS}\nshutdown_timeout = "20s"\n'
             f'retention = "forever"\n{worker_settings(name)}']
    for job, (every, catch_up, sleep) in JOBS.items():
        ledger = ledgers / f"{job}.ledger"
        who = "$EDGEWORKER_TASK_ID $EDGEWORKER_ATTEMPT $EDGEWORKER_RECOVERED $TORTURE_LIFE"
        # A SIGTERM (the run stopped by its worker) is noted as the run's end too; a SIGKILL
        # (its worker killed) leaves the run without an end. bash's clock needs no child, which
        # a signal could end before it tells the time.
        now = "${EPOCHREALTIME/./}000"
        script = (f'trap \'echo "{who} term {now}" >> {ledger}; exit 143\' TERM; '
                  f'echo "{who} start {now}" >> {ledger}; sleep {sleep}; '
                  f'echo "{who} end {now}" >> {ledger}')
        lines.append(f'[[jobs]]\nname = "{job}"\ncommand = {json.dumps(["bash", "-c", script])}\n'
                     f'every = "{every}"\ncatch_up = "{catch_up}"\ncatch_up_limit = 100000\n'
                     'max_attempts = 50\nretry_delay = "100ms"\n')
    return "\n".join(lines)


@dataclass
class Life:
    """One process of a worker name, from its start to its kill or stop."""

    label: str  # "w2.3": the third process named w2 (the jobs see it as $TORTURE_LIFE)
    name: str
    pid: int
    log_offset: int  # bytes: where its lines begin in the name's log file
    started: int  # ns
    ended: int | None = None
    killed: bool = False
    owners: tuple[str, ...] = ()  # what tasks.worker holds for its claims
    running_at: float | None = None  # monotonic: when it was first seen past its start-up


@dataclass
class Held:
    """A run a killed worker held, and when it was claimed again (or closed)."""

    task: int
    attempt: int
    killed_at: int  # ns
    policy: str
    victim: str
    taken_at: int | None = None
    how: str | None = None  # "re-run" | "closed: <reason>" | "finished by a killed worker"


@dataclass
class Run:
    job: str
    task: int
    attempt: int
    recovered: str
    life: str
    start: int
    end: int | None = None  # ns: its end, or when a SIGTERM ended it
    finished: bool = False  # it ran to its end


@dataclass
class Figures:
    events: int = 0
    kills: int = 0
    kills_in_startup: int = 0
    policies: Counter = field(default_factory=Counter)
    server_restarts: int = 0
    reconnect_s: list[float] = field(default_factory=list)
    failed_starts: Counter = field(default_factory=Counter)  # a start that exited: why
    tasks: int = 0
    runs: int = 0
    runs_by: Counter = field(default_factory=Counter)  # worker name -> runs
    interrupted: int = 0
    reruns: int = 0
    held: int = 0  # runs a killed worker held
    rerun_s: list[float] = field(default_factory=list)
    over_bound: int = 0
    # tasks recovered: by a start of their worker's name, by another worker (its lease expired)
    recovered_at_start: int = 0
    recovered_by_lease: int = 0
    recovered_twice: int = 0  # a task in more recovery rows than it was recovered
    closed: Counter = field(default_factory=Counter)  # reason -> held runs closed instead
    unresolved: int = 0
    snapshots: int = 0
    states_checked: int = 0
    lost_states: int = 0
    double_runs: int = 0
    overlaps: int = 0
    over_attempts: int = 0
    not_told: int = 0  # re-runs without EDGEWORKER_RECOVERED=1
    fences: int = 0  # a live worker that wrote no heartbeat for its lease ended its runs
    fenced_runs: int = 0
    cut_short: int = 0  # runs ended early whose worker was neither killed nor fenced
    stuck: int = 0
    orphans: int = 0
    seconds: float = 0.0
    bound: float = BOUND

    @staticmethod
    def spread(values: list[float]) -> str:
        if not values:
            return "-"
        ordered = sorted(values)
        return f"median {ordered[len(ordered) // 2]:.2f} s, max {ordered[-1]:.2f} s"

    def table(self) -> str:
        policies = ", ".join(f"{n} {p}" for p, n in sorted(self.policies.items()))
        rows = [
            ("events", f"{self.events}: {self.kills} SIGKILLs ({self.kills_in_startup} during "
                       f"start-up; comes back {policies}), {self.server_restarts} server "
                       "restart(s)"),
            ("every running worker beating again after the server's restart",
             self.spread(self.reconnect_s)),
            ("tasks / runs seen by the jobs", f"{self.tasks} / {self.runs} ("
             + ", ".join(f"{n} by {w}" for w, n in sorted(self.runs_by.items())) + ")"),
            ("runs interrupted / re-runs", f"{self.interrupted} / {self.reruns}"),
            ("tasks recovered: at a start of their name / by lease",
             f"{self.recovered_at_start} / {self.recovered_by_lease}"),
            ("tasks recovered twice (in more recovery rows than resets)", self.recovered_twice),
            ("runs a killed worker held", f"{self.held}: {sum(self.closed.values())} closed"
                                           + "".join(f"; {n} {why}" for why, n in
                                                     sorted(self.closed.items()))),
            (f"claimed again after the kill (bound lease + {self.bound:g} s = "
             f"{LEASE + self.bound:g} s)",
             f"{self.spread(self.rerun_s)}; over the bound {self.over_bound}, never "
             f"{self.unresolved}"),
            ("committed states checked (snapshots)", f"{self.states_checked} "
                                                     f"({self.snapshots})"),
            ("lost committed states", self.lost_states),
            ("double runs / overlapping runs of a job", f"{self.double_runs} / {self.overlaps}"),
            ("runs beyond a task's attempts", self.over_attempts),
            ("re-runs not told they recover", self.not_told),
            ("self-fencing: times / runs ended (no heartbeat for a lease)",
             f"{self.fences} / {self.fenced_runs}"),
            ("runs ended early by a worker neither killed nor fenced", self.cut_short),
            ("stuck / unclaimable", f"{self.stuck} / {self.orphans}"),
            ("worker starts that failed", sum(self.failed_starts.values()))] + [
             (f"  {n} x", why) for why, n in sorted(self.failed_starts.items())] + [
            ("seconds", f"{self.seconds:.0f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def connect(url: str):
    conn = driver().connect(url, connect_timeout=5, application_name="torture")
    conn.autocommit = True
    return conn


class Reader:
    """A connection of the torture's own, connecting again after the server's restart."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None

    def query(self, sql: str, params: tuple = (), timeout: float = 60.0) -> list[tuple]:
        psycopg2 = driver()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = connect(self.url)
                with self.conn.cursor() as cursor:
                    cursor.execute(sql, params)
                    return cursor.fetchall()
            except psycopg2.Error as exc:
                # no SQLSTATE: libpq's own error, the connection is lost (a server's crash
                # leaves `closed` at 0)
                lost = exc.pgcode is None or isinstance(exc, psycopg2.OperationalError)
                self.close()
                if not lost or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class Watcher(threading.Thread):
    """Notes when each run a killed worker held is claimed again or closed (polls 10 times a
    second through a connection of its own)."""

    def __init__(self, url: str):
        super().__init__(daemon=True, name="torture-watcher")
        self.reader = Reader(url)
        self.lock = threading.Lock()
        self.held: dict[tuple[int, int], Held] = {}
        self.done = threading.Event()
        self.error: BaseException | None = None

    def add(self, held: Held) -> None:
        with self.lock:
            self.held.setdefault((held.task, held.attempt), held)

    def open(self) -> list[Held]:
        with self.lock:
            return [h for h in self.held.values() if h.taken_at is None]

    def run(self) -> None:
        try:
            while not self.done.wait(0.1):
                self.look()
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.error = exc
        finally:
            self.reader.close()

    def look(self) -> None:
        todo = self.open()
        if not todo:
            return
        rows = self.reader.query("SELECT id, attempt, status, error FROM tasks "
                                 "WHERE id = ANY(%s)", ([h.task for h in todo],))
        now = time.time_ns()
        found = {row[0]: row for row in rows}
        for held in todo:
            row = found.get(held.task)
            if row is None:
                continue
            _, attempt, status, error = row
            if attempt > held.attempt:
                held.how = "re-run"
            elif status in ("failed", "cancelled"):
                held.how = f"closed: {error}"
            elif status == "succeeded":
                held.how = "finished by a killed worker"
            else:
                continue
            held.taken_at = now

    def stop(self) -> None:
        self.done.set()
        self.join(10)


class Member:
    """One worker name: its process now, and its lives so far."""

    def __init__(self, torture: PgTorture, name: str):
        self.torture = torture
        self.name = name
        self.process = WorkerProcess(torture.workdir,
                                     config_text(torture.url, torture.ledgers, name), name)
        self.process.db = torture.url
        self.lives: list[Life] = []
        self.back_at: float | None = None  # monotonic: when to start it again

    @property
    def life(self) -> Life | None:
        return self.lives[-1] if self.lives else None

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def start(self) -> None:
        path = self.process.log_path
        offset = path.stat().st_size if path.exists() else 0
        label = f"{self.name}.{len(self.lives) + 1}"
        self.process.start(env={"TORTURE_LIFE": label})
        self.lives.append(Life(label, self.name, self.process.proc.pid, offset, time.time_ns()))
        self.back_at = None

    def log(self) -> str:
        if self.life is None:
            return ""
        with open(self.process.log_path, "rb") as handle:
            handle.seek(self.life.log_offset)
            return handle.read().decode(errors="replace")

    def running(self) -> bool:
        if self.life is None:
            return False
        if self.life.running_at is None and RUNNING in self.log():
            self.life.running_at = time.monotonic()
        return self.life.running_at is not None

    def established(self) -> bool:
        """Running for long enough to have written a heartbeat (and recovered expired leases)."""
        return (self.alive() and self.running()
                and time.monotonic() - self.life.running_at >= 1.5 * HEARTBEAT)


class PgTorture:
    def __init__(self, workdir: Path, server: pgserver.Server, url: str, seed: int | None = None,
                 restart_mode: str = "immediate", workers: int = len(NAMES),
                 bound: float = BOUND):
        self.workdir = workdir
        self.server = server
        self.url = url
        self.restart_mode = restart_mode
        self.random = random.Random(seed)
        self.ledgers = workdir / "ledgers"
        self.ledgers.mkdir(exist_ok=True)
        self.figures = Figures(bound=bound)
        self.members = [Member(self, name) for name in NAMES[:workers]]
        self.reader = Reader(url)
        self.watcher = Watcher(url)
        self.seen: dict[int, dict] = {}  # task id -> the strongest state a snapshot showed
        self.recoveries: dict[int, tuple[str, set[str], list[int]]] = {}  # id -> who, whose, ids
        self.problems: list[str] = []
        self.began = time.monotonic()

    # -- events -----------------------------------------------------------------------------

    def run(self, events: int) -> Figures:
        self.members[0].process.cli("migrate")
        self.watcher.start()
        for member in self.members:
            member.start()
        if not self.wait_until(lambda: all(m.running() for m in self.members), 60):
            raise AssertionError("the workers did not start:\n" + "\n".join(
                m.process.log()[-1500:] for m in self.members))
        restart_at = events // 2 if events >= 2 else None
        for number in range(events):
            self.pause(self.random.uniform(0.3, 1.5))
            if number == restart_at:
                self.restart_server()
            else:
                self.kill()
            self.figures.events += 1
            self.snapshot()
        self.settle()
        return self.check()

    def pause(self, seconds: float) -> None:
        """Wait, starting the workers whose time to come back has come."""
        deadline = time.monotonic() + seconds
        while True:
            self.restart_due()
            if time.monotonic() >= deadline:
                return
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def wait_until(self, predicate, timeout: float) -> bool:
        """Pause until `predicate()` holds (True) or `timeout` seconds have passed (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            self.pause(0.1)
        return True

    def restart_due(self) -> None:
        for member in self.members:
            if member.alive():
                member.running()  # notes when it got past its start-up
                continue
            life = member.life
            if life is not None and life.ended is None:  # it exited by itself
                life.ended = time.time_ns()
                code = member.process.proc.returncode
                if RUNNING in member.log():
                    self.problems.append(f"{life.label} exited by itself ({code}):\n"
                                         f"{member.log()[-1500:]}")
                else:
                    errors = [line for line in member.log().splitlines()
                              if line.startswith("Error: ")]
                    why = errors[-1] if errors else f"exited {code}"
                    self.figures.failed_starts[why] += 1
                    if "internal error" in why:
                        self.problems.append(f"{life.label} failed to start: {why}")
                member.back_at = time.monotonic() + 0.5  # as systemd's RestartSec would
            if member.back_at is not None and time.monotonic() >= member.back_at:
                member.start()

    def owners(self, life: Life) -> tuple[str, ...]:
        """What the tasks a life claimed name as their worker (workers.name, by its pid)."""
        rows = self.reader.query("SELECT name FROM workers WHERE pid = %s", (life.pid,))
        return tuple(row[0] for row in rows)

    def eligible(self) -> list[Member]:
        """The workers that may be killed now: any live one, as long as another worker stays
        that has written a heartbeat (so that some worker can recover by lease); a lone worker
        (a torture of one) comes back at once."""
        return [m for m in self.members if m.alive() and (len(self.members) == 1 or any(
            o.established() for o in self.members if o is not m))]

    def kill(self) -> None:
        if self.random.random() < 0.75:  # mostly while two workers run (hold runs): not start-ups
            self.wait_until(lambda: sum(m.established() for m in self.members) >= 2, 5)
        if not self.wait_until(self.eligible, 60):
            self.problems.append("no worker could be killed for 60 s: none stayed running")
            return
        eligible = self.eligible()  # those past their start-up hold runs: three times as likely
        victim = self.random.choices(eligible, [3 if m.running() else 1 for m in eligible])[0]
        policy = (self.random.choices(list(POLICIES), list(POLICIES.values()))[0]
                  if len(self.members) > 1 else "at once")
        in_startup = not victim.running()
        life = victim.life
        victim.process.kill()
        life.ended, life.killed = time.time_ns(), True
        f = self.figures
        f.kills += 1
        f.kills_in_startup += in_startup
        f.policies[policy] += 1
        life.owners = self.owners(life)
        if life.owners:
            for task, attempt in self.reader.query(
                    "SELECT id, attempt FROM tasks WHERE status = 'running' AND worker = ANY(%s)",
                    (list(life.owners),)):
                self.watcher.add(Held(task, attempt, life.ended, policy, life.label))
        later = {"at once": 0.0, "after its lease": LEASE + self.random.uniform(0.2, 1.0),
                 "later": LEASE + self.random.uniform(2.0, 6.0)}[policy]
        victim.back_at = time.monotonic() + later
        if policy == "at once":
            victim.start()

    def restart_server(self) -> None:
        """Restart PostgreSQL once the held runs are taken (so that no recovery time counts
        the restart), then wait until every running worker beats again."""
        self.wait_until(lambda: not self.watcher.open(), LEASE + BOUND + 30)
        self.server.restart(self.restart_mode)
        back = time.time_ns()
        self.figures.server_restarts += 1
        running = [m for m in self.members if m.alive() and m.running()]

        def beating() -> list[Member]:
            rows = self.reader.query("SELECT pid, last_heartbeat FROM workers")
            fresh = {pid for pid, beat in rows
                     if from_text(beat).timestamp() * 1e9 > back}
            return [m for m in running if m.life.pid not in fresh and m.alive()]

        self.wait_until(lambda: not beating(), 60)
        late = beating()
        self.figures.reconnect_s.append((time.time_ns() - back) / 1e9)
        for member in late:
            self.problems.append(f"{member.life.label} did not beat again within 60 s of the "
                                 "server's restart")

    # -- snapshots --------------------------------------------------------------------------

    def read_tasks(self) -> dict[int, dict]:
        rows = self.reader.query(
            "SELECT t.id, t.job_id, j.name, t.origin, t.scheduled_for, t.created_at, t.status, "
            "t.attempt, t.finished_at, t.error, t.due_at, t.worker, t.recovered_count "
            "FROM tasks t LEFT JOIN jobs j ON j.id = t.job_id")
        keys = ("id", "job_id", "job", "origin", "scheduled_for", "created_at", "status",
                "attempt", "finished_at", "error", "due_at", "worker", "recovered_count")
        return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}

    def snapshot(self) -> None:
        """Read every task and hold the states committed so far to what was seen before."""
        given_back = self.given_back()
        for task_id, row in self.read_tasks().items():
            before = self.seen.get(task_id)
            if before is not None:
                self.compare(before, row, given_back, "a later snapshot")
            state = dict(row)
            if before is not None and before["attempt"] > row["attempt"]:
                state["attempt"] = before["attempt"]
            self.seen[task_id] = state
        self.figures.snapshots += 1
        self.read_recoveries()

    def read_recoveries(self) -> None:
        for rid, worker, owners, ids in self.reader.query(
                "SELECT id, worker, recovered_from, task_ids FROM recoveries"):
            self.recoveries[rid] = (worker, set((owners or "").split(", ")) - {""},
                                    [int(i) for i in ids.split(",")] if ids else [])

    def given_back(self) -> set[int]:
        return {int(task) for member in self.members
                for task in GIVEN_BACK.findall(member.process.log())}

    def compare(self, before: dict, now: dict | None, given_back: set[int], where: str) -> bool:
        """Whether `now` still holds what `before` showed committed; a problem if not."""
        why = None
        if now is None:
            why = "is gone"
        elif (before["job_id"], before["scheduled_for"], before["created_at"]) != (
                now["job_id"], now["scheduled_for"], now["created_at"]):
            why = "names another run now (its id was used again)"
        elif before["finished_at"] is not None and (
                before["status"], before["attempt"], before["finished_at"]) != (
                now["status"], now["attempt"], now["finished_at"]):
            why = (f"finished {before['status']} at attempt {before['attempt']}, now "
                   f"{now['status']} at attempt {now['attempt']}")
        elif now["attempt"] < before["attempt"] and not (
                before["id"] in given_back and now["attempt"] == before["attempt"] - 1):
            why = f"was at attempt {before['attempt']}, now {now['attempt']}"
        if why is None:
            return True
        self.figures.lost_states += 1
        self.problems.append(f"task {before['id']} {why} in {where}")
        return False

    # -- the end ----------------------------------------------------------------------------

    def settle(self, seconds: float = 2.0) -> None:
        """Every worker runs again; once the held runs are taken, each stops gracefully."""
        for member in self.members:
            if not member.alive():
                if member.life is not None and member.life.ended is None:
                    member.life.ended = time.time_ns()
                member.start()
        for member in self.members:
            wait_for(lambda m=member: m.running() or not m.alive(), 60,
                     what=f"{member.name} to start", log=member.process.log)
        self.wait_until(lambda: not self.watcher.open(), LEASE + BOUND + 30)
        time.sleep(seconds)
        for member in self.members:
            if member.alive():
                member.process.send(signal.SIGTERM)
        for member in self.members:  # one signal each: a second one stops at once
            try:
                code = member.process.proc.wait(60)
            except subprocess.TimeoutExpired:
                code = "nothing: still running after 60 s"
                member.process.kill()
            member.life.ended = time.time_ns()
            if code != 0:
                self.problems.append(f"{member.life.label}: graceful stop exited {code}:\n"
                                     f"{member.log()[-1500:]}")
        self.figures.seconds = time.monotonic() - self.began

    def life_log(self, life: Life) -> str:
        member = next(m for m in self.members if m.name == life.name)
        later = member.lives.index(life) + 1
        end = member.lives[later].log_offset if later < len(member.lives) else None
        with open(member.process.log_path, "rb") as handle:
            handle.seek(life.log_offset)
            text = handle.read(None if end is None else end - life.log_offset)
        return text.decode(errors="replace")

    def fences(self, life: Life) -> int:
        return self.life_log(life).count(FENCED)

    def ledger_runs(self) -> list[Run]:
        runs: list[Run] = []
        for job in JOBS:
            path = self.ledgers / f"{job}.ledger"
            open_runs: dict[tuple[int, int, str], Run] = {}
            ended: set[tuple[int, int, str]] = set()
            for line in path.read_text().splitlines() if path.exists() else []:
                if len(line.split()) != 6:
                    self.problems.append(f"{job}: a torn ledger line: {line!r}")
                    continue
                task, attempt, recovered, life, what, ns = line.split()
                key = (int(task), int(attempt), life)
                if what == "start":
                    open_runs[key] = Run(job, key[0], key[1], recovered, life, int(ns))
                    runs.append(open_runs[key])
                elif key in open_runs:
                    run = open_runs.pop(key)
                    run.end, run.finished = int(ns), what == "end"
                    ended.add(key)
                elif what == "term" and key in ended:
                    pass  # stopped after its end, before it exited
                else:
                    self.problems.append(f"{job}: an end without a start: {line}")
        return sorted(runs, key=lambda r: r.start)

    def check(self) -> Figures:
        self.watcher.stop()
        f = self.figures
        if self.watcher.error is not None:
            self.problems.append(f"the watcher failed: {self.watcher.error!r}")
        tasks = self.read_tasks()
        f.tasks = len(tasks)
        lives = {life.label: life for m in self.members for life in m.lives}
        f.fences = sum(self.fences(life) for life in lives.values())
        self.read_recoveries()
        listed: Counter = Counter()
        for worker, owners, ids in self.recoveries.values():
            listed.update(ids)
            if worker in owners:
                f.recovered_at_start += len(ids)
            else:
                f.recovered_by_lease += len(ids)
        for task_id, times in listed.items():  # two recoveries of one run: one did nothing
            row = tasks.get(task_id)
            if row is not None and times > row["recovered_count"]:
                f.recovered_twice += 1
                self.problems.append(f"task {task_id} is in {times} recoveries' rows, recovered "
                                     f"{row['recovered_count']} times")

        # lost committed states: the snapshots', then the workers' logs'
        given_back = self.given_back()
        for before in self.seen.values():
            self.compare(before, tasks.get(before["id"]), given_back, "the end")
        f.states_checked = len(self.seen)
        logs = [m.process.log() for m in self.members]
        for text in logs:
            for match in STARTED.finditer(text):
                task, attempt = int(match.group(1)), int(match.group(3))
                row = tasks.get(task)
                f.states_checked += 1
                if row is None or row["attempt"] < attempt:
                    f.lost_states += 1
                    self.problems.append(f"task {task}: its claim of attempt {attempt} was "
                                         f"logged; the database has {row and row['attempt']}")
            for match in SUCCEEDED.finditer(text):
                task, attempt = int(match.group(1)), int(match.group(3))
                row = tasks.get(task)
                f.states_checked += 1
                if row is None or (row["status"], row["attempt"]) != ("succeeded", attempt):
                    f.lost_states += 1
                    self.problems.append(f"task {task}: success of attempt {attempt} logged; "
                                         f"the database has "
                                         f"{row and (row['status'], row['attempt'])}")

        # nothing stuck
        for row in tasks.values():
            if row["status"] == "running":
                f.stuck += 1
                self.problems.append(f"task {row['id']} left running")
            if row["status"] == "created" and (row["due_at"] is None or row["job_id"] is None
                                               or row["finished_at"] is not None):
                f.orphans += 1
                self.problems.append(f"task {row['id']} created but not claimable")
        for job in JOBS:
            pending = [t for t in tasks.values() if t["job"] == job and
                       t["origin"] == "schedule" and t["status"] == "created"]
            if len(pending) != 1:
                self.problems.append(f"job {job} has {len(pending)} pending scheduled runs")

        # the world's view: runs from the ledgers
        runs = self.ledger_runs()
        f.runs = len(runs)
        f.runs_by = Counter(lives[run.life].name for run in runs)
        by_task: dict[int, list[Run]] = defaultdict(list)
        by_job: dict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_task[run.task].append(run)
            by_job[run.job].append(run)

        def end_of(run: Run) -> int | None:
            return run.end if run.end is not None else lives[run.life].ended

        for run in runs:
            if not run.finished:
                f.interrupted += 1
                life = lives[run.life]
                if life.killed:
                    pass
                elif self.fences(life):  # its lease may have expired: its runs were ended
                    f.fenced_runs += 1
                else:
                    f.cut_short += 1
                    self.problems.append(f"{run.job}: task {run.task} attempt {run.attempt} "
                                         f"ended early in {run.life}, which was neither killed "
                                         "nor fenced")
            if run.attempt > 1 and run.recovered != "1":
                f.not_told += 1
                self.problems.append(f"{run.job}: task {run.task} attempt {run.attempt} ran "
                                     "again without EDGEWORKER_RECOVERED=1")
        for task_id, task_runs in by_task.items():
            row = tasks.get(task_id)
            f.reruns += len(task_runs) - 1
            attempts = Counter(r.attempt for r in task_runs)
            for attempt, count in attempts.items():
                if count > 1:
                    f.double_runs += count - 1
                    self.problems.append(f"task {task_id} attempt {attempt} ran {count} times")
            if row is None:
                self.problems.append(f"the ledger names task {task_id}, not in the database")
                continue
            if len(task_runs) > row["attempt"]:
                f.over_attempts += 1
                self.problems.append(f"task {task_id} ran {len(task_runs)} times in "
                                     f"{row['attempt']} attempts")
            if not task_runs[-1].finished and row["status"] not in ("failed", "cancelled"):
                self.problems.append(f"task {task_id} was interrupted and never run to the end "
                                     f"again; it is {row['status']}")
            if row["status"] in ("failed", "cancelled") and not row["error"]:
                self.problems.append(f"task {task_id} {row['status']} without a reason")
        for job, job_runs in by_job.items():
            for first, second in zip(job_runs, job_runs[1:], strict=False):
                end = end_of(first)
                if end is None or end > second.start:
                    f.overlaps += 1
                    self.problems.append(
                        f"{job}: task {first.task} attempt {first.attempt} ({first.life}) and "
                        f"task {second.task} attempt {second.attempt} ({second.life}) overlapped")

        # slots: unique per job; for catch_up = "all", none missing from the first to the last
        for job, (every, catch_up, _) in JOBS.items():
            slots = sorted(datetime.fromisoformat(t["scheduled_for"]) for t in tasks.values()
                           if t["job"] == job and t["origin"] == "schedule")
            if len(set(slots)) != len(slots):
                self.problems.append(f"{job}: a slot has two tasks")
            if catch_up == "all" and slots:
                step = timedelta(milliseconds=float(every.removesuffix("ms")))
                expected = int((slots[-1] - slots[0]) / step) + 1
                if expected != len(slots):
                    self.problems.append(f"{job}: {expected} slots from first to last, "
                                         f"{len(slots)} tasks")

        # recovery: each run a killed worker held, claimed again within the bound
        for held in self.watcher.held.values():
            f.held += 1
            if held.taken_at is None:
                f.unresolved += 1
                self.problems.append(f"task {held.task} attempt {held.attempt}, held by "
                                     f"{held.victim} when killed, was never taken again")
                continue
            seconds = (held.taken_at - held.killed_at) / 1e9
            f.rerun_s.append(seconds)
            if held.how.startswith("closed"):
                f.closed[held.how.removeprefix("closed: ")] += 1
            elif held.how != "re-run":
                self.problems.append(f"task {held.task}: {held.how}")
            if seconds > LEASE + f.bound:
                f.over_bound += 1
                self.problems.append(f"task {held.task} attempt {held.attempt} (held by "
                                     f"{held.victim}, back {held.policy}) taken after "
                                     f"{seconds:.2f} s")
        f.seconds = time.monotonic() - self.began
        return f

    def close(self) -> None:
        """Leave nothing: the workers, their runs' processes and records, the connections."""
        for member in self.members:
            member.process.kill()
        if self.watcher.is_alive():
            self.watcher.stop()
        self.reader.close()
        self.members[0].process.end_leftovers()


@contextlib.contextmanager
def private_torture(workdir: Path, seed: int | None = None, restart_mode: str = "immediate",
                    workers: int = len(NAMES), bound: float = BOUND) -> Iterator[PgTorture]:
    """A torture on a database of a private server of its own (it restarts it); at the end
    nothing is left of either."""
    server = pgserver.Server(committed_survives_crash=True).start()
    try:
        url = server.url(server.create_database("torture"))
        torture = PgTorture(workdir, server, url, seed, restart_mode, workers, bound)
        try:
            yield torture
        finally:
            torture.close()
    finally:
        server.stop()


def run_torture(workdir: Path, events: int, seed: int | None = None,
                restart_mode: str = "immediate", workers: int = len(NAMES),
                bound: float = BOUND) -> tuple[Figures, list[str]]:
    """The whole torture; returns the figures and the problems found (none when every check
    holds). `bound`: seconds beyond the lease within which a killed worker's runs must be
    taken again."""
    with private_torture(workdir, seed, restart_mode, workers, bound) as torture:
        figures = torture.run(events)
        return figures, torture.problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--restart-mode", choices=["fast", "immediate"], default="immediate")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (a new directory) and keep it")
    parser.add_argument("--workers", type=int, default=len(NAMES), choices=range(1, 4))
    args = parser.parse_args()
    try:
        driver()  # edgeworker keeps psycopg2 out until asked (edgeworker/__init__.py)
    except ImportError:
        pass
    reason = pgserver.unavailable()
    if reason:
        sys.exit(f"Error: {reason}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    if args.keep is not None:  # the ledgers and the workers' logs, to look at afterwards
        args.keep.mkdir(parents=True)
        figures, problems = run_torture(args.keep, args.events, seed, args.restart_mode,
                                        args.workers)
    else:
        with tempfile.TemporaryDirectory(prefix="edgeworker-torture-pg-") as tmp:
            figures, problems = run_torture(Path(tmp), args.events, seed, args.restart_mode,
                                            args.workers)
    print(figures.table())
    if problems:
        print(f"\n{len(problems)} problem(s) (seed {seed}):", *problems[:40], sep="\n")
        sys.exit(1)
    print(f"torture-pg ok (seed {seed})")


if __name__ == "__main__":
    main()
