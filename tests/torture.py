"""Crash and power-cut torture: kill the real worker at random moments, restart it, check that
nothing was lost.

Several interval jobs run shell commands that append `<task> <attempt> start|end <ns>` lines to
a ledger file per job (outside the database: what the world saw). The worker is SIGKILLed (or, on
the power-cut file system, the power is cut and then the worker killed) at random moments —
during tasks, between them, during start-up recovery — and restarted. After the last restart it
settles and stops gracefully, and `check()` verifies from the database and the ledgers:

- `PRAGMA integrity_check` is ok;
- no task is left `running`, every `created` task has its queue message, every active job has
  exactly one pending scheduled run;
- every run the ledger shows started and not finished was run again, or its task ended
  failed/cancelled with a stated reason;
- no two runs of one job overlapped in time (so never two runs of one task), and no process of
  an earlier run of the "tree" job was alive when the next one started (its lock);
- every slot since the first start is accounted for by the job's catch-up policy;
- (power cuts) every task state the worker logged as committed before a cut is in the database.

Run directly for the long versions: `python tests/torture.py crash --kills 200`,
`python tests/torture.py powercut --cuts 100`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sqlite3
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workerproc import WorkerProcess, wait_for  # noqa: E402

# job name -> (every, catch_up, max_attempts); all short so that kills land inside tasks often.
JOBS = {
    "every-slot": ("300ms", "all", 10),
    "skip": ("500ms", "skip", 10),
    "once": ("700ms", "once", 10),
    "tree": ("400ms", "skip", 10),
}
# The "tree" job's script starts a child, a grandchild and one in a session of its own, all
# holding a lock on tree.lock (an inherited fd) for as long as they live; a run that cannot take
# the lock at once saw a process of an earlier run alive, and appends to tree.overlaps.
TREE = ("exec 9>>{dir}/tree.lock; "
        'flock -n 9 || echo "$EDGEWORKER_TASK_ID $EDGEWORKER_ATTEMPT" >> {dir}/tree.overlaps; '
        "sleep 30 & sh -c 'sleep 30 & wait' & setsid sh -c 'exec sleep 30' & ")
STARTED = re.compile(r"task (\d+) job (\S+) attempt (\d+) started")
SUCCEEDED = re.compile(r"task (\d+) job (\S+) attempt (\d+) succeeded")
ENDED = re.compile(r"ended (\d+) leftover process")


def config_text(ledger_dir: Path, database: Path, durability: str = "full") -> str:
    lines = [f'[worker]\ndatabase = "{database}"\nworkers = 2\ndurability = "{durability}"\n'
             'shutdown_timeout = "20s"\nretention = "forever"\n']
    for name, (every, catch_up, attempts) in JOBS.items():
        ledger = ledger_dir / f"{name}.ledger"
        line = "$EDGEWORKER_TASK_ID $EDGEWORKER_ATTEMPT"
        script = (TREE.format(dir=ledger_dir) if name == "tree" else "") + (
                  f'echo "{line} start $(date +%s%N)" >> {ledger}; '
                  f'sleep 0.0$(( $EDGEWORKER_TASK_ID % 10 )); '
                  f'echo "{line} end $(date +%s%N)" >> {ledger}')
        lines.append(f'[[jobs]]\nname = "{name}"\ncommand = {json.dumps(script)}\nshell = true\n'
                     f'every = "{every}"\ncatch_up = "{catch_up}"\ncatch_up_limit = 100000\n'
                     f'max_attempts = {attempts}\nretry_delay = "100ms"\n')
    return "\n".join(lines)


@dataclass
class Run:
    task: int
    attempt: int
    start: int
    end: int | None = None


@dataclass
class Figures:
    kills: int = 0
    kills_in_startup: int = 0
    cuts: int = 0
    tasks: int = 0
    runs: int = 0
    reruns: int = 0
    interrupted: int = 0
    lost_states: int = 0
    checked: int = 0
    stuck: int = 0
    overlaps: int = 0
    orphans: int = 0
    leftovers: int = 0  # processes of interrupted runs that start-up recovery ended
    recovery_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        rec = sorted(self.recovery_ms) or [0.0]
        event = f"cuts {self.cuts}" if self.cuts else f"kills {self.kills}"
        return (f"{event} ({self.kills_in_startup} during start-up), tasks {self.tasks}, "
                f"runs {self.runs}, re-runs {self.reruns}, committed states checked "
                f"{self.checked}, "
                f"interrupted {self.interrupted}, lost states {self.lost_states}, "
                f"stuck {self.stuck}, orphaned {self.orphans}, overlaps {self.overlaps}, "
                f"leftover processes ended {self.leftovers}, "
                f"recovery p50 {rec[len(rec) // 2]:.1f} ms max {rec[-1]:.1f} ms, "
                f"{self.seconds:.0f}s")


class Torture:
    def __init__(self, workdir: Path, data_dir: Path | None = None, durability: str = "full",
                 seed: int | None = None):
        self.workdir = workdir
        # With durability = "normal" a cut may lose the last commits, and a lost row's id is
        # then given to a new task: the ledger's task ids no longer name the database's rows.
        self.ids_stable = durability == "full"
        self.data_dir = data_dir or workdir  # where the database lives (a FUSE mount for cuts)
        self.ledgers = workdir / "ledgers"
        self.ledgers.mkdir(exist_ok=True)
        self.random = random.Random(seed)
        self.worker = WorkerProcess(workdir, config_text(self.ledgers, self.data_dir / "ew.db",
                                                         durability))
        self.worker.db = self.data_dir / "ew.db"
        self.kill_times: list[int] = []
        self.committed: dict[int, tuple[str, int]] = {}  # task -> (state, attempt) logged
        self.figures = Figures()
        self.started = time.monotonic()
        self.startup_seconds = 0.3  # measured as the runs go, to aim kills inside start-up

    def log(self) -> str:
        return self.worker.log()

    def start(self) -> None:
        self.log_offset = len(self.log())
        self.spawned = time.monotonic()
        self.worker.start()

    def running_log(self) -> str:
        return self.log()[self.log_offset:]

    def wait_random(self, startup_bias: float = 0.25) -> None:
        """A random moment: during start-up (imports, sync, recovery), or while it works."""
        if self.random.random() < startup_bias:
            time.sleep(self.random.uniform(0.0, self.startup_seconds))
            return
        wait_for(lambda: "edgeworker running" in self.running_log()
                 or self.worker.proc.poll() is not None, 30, what="start", log=self.log)
        self.startup_seconds = 0.8 * self.startup_seconds + 0.2 * (time.monotonic() -
                                                                   self.spawned)
        time.sleep(self.random.uniform(0.0, 1.2))

    def kill(self) -> None:
        """Start the worker, wait a random moment, SIGKILL it."""
        self.start()
        self.wait_random()
        in_startup = "edgeworker running" not in self.running_log()
        self.worker.kill()
        self.kill_times.append(time.time_ns())
        self.figures.kills += 1
        self.figures.kills_in_startup += in_startup
        self.note_committed()

    def note_committed(self) -> None:
        """What the worker logged as committed so far (its log lines follow the commit)."""
        for match in STARTED.finditer(self.log()):
            task, attempt = int(match.group(1)), int(match.group(3))
            state, seen = self.committed.get(task, ("running", 0))
            if attempt >= seen and state != "succeeded":
                self.committed[task] = ("running", attempt)
        for match in SUCCEEDED.finditer(self.log()):
            self.committed[int(match.group(1))] = ("succeeded", int(match.group(3)))

    def settle(self, seconds: float = 2.5) -> None:
        """The last start: recover, run for a while, stop gracefully."""
        self.start()
        wait_for(lambda: "edgeworker running" in self.running_log(), 60, what="last start",
                 log=self.log)
        time.sleep(seconds)
        code = self.worker.stop(signal.SIGTERM, timeout=60)
        assert code == 0, f"graceful stop exited {code}"
        self.kill_times.append(time.time_ns())
        self.figures.seconds = time.monotonic() - self.started

    # -- checks ---------------------------------------------------------------------------

    def ledger_runs(self) -> dict[str, list[Run]]:
        runs: dict[str, list[Run]] = {}
        for name in JOBS:
            path = self.ledgers / f"{name}.ledger"
            by_key: dict[tuple[int, int], list[Run]] = defaultdict(list)
            ordered: list[Run] = []
            for line in path.read_text().splitlines() if path.exists() else []:
                task, attempt, what, ns = line.split()
                key = (int(task), int(attempt))
                if what == "start":
                    run = Run(key[0], key[1], int(ns))
                    by_key[key].append(run)
                    ordered.append(run)
                else:
                    open_runs = [r for r in by_key[key] if r.end is None]
                    assert open_runs, f"{name}: an end without a start: {line}"
                    open_runs[-1].end = int(ns)
            runs[name] = sorted(ordered, key=lambda r: r.start)
        return runs

    def check(self) -> Figures:
        f = self.figures
        con = sqlite3.connect(self.worker.db)
        con.row_factory = sqlite3.Row
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            tasks = {row["id"]: dict(row) for row in con.execute(
                "SELECT tasks.*, jobs.name AS job FROM tasks JOIN jobs ON jobs.id = tasks.job_id")}
            recoveries = [r[0] for r in con.execute("SELECT duration_ms FROM recoveries")]
            # the tasks table is the queue: a created row no claim can take is an orphan
            unclaimable = {r[0] for r in con.execute(
                "SELECT id FROM tasks WHERE status = 'created' AND (due_at IS NULL OR "
                "finished_at IS NOT NULL OR job_id IS NULL)")}
        finally:
            con.close()
        f.tasks = len(tasks)
        f.recovery_ms = recoveries
        f.leftovers = sum(int(n) for n in ENDED.findall(self.log()))
        problems: list[str] = []

        # nothing stuck: no running task after a graceful stop, every created one claimable
        stuck = [t for t in tasks.values() if t["status"] == "running"]
        orphans = [t for t in tasks.values() if t["id"] in unclaimable]
        f.stuck, f.orphans = len(stuck), len(orphans)
        problems += [f"task {t['id']} left running" for t in stuck]
        problems += [f"task {t['id']} created but not claimable" for t in orphans]
        for name in JOBS:
            pending = [t for t in tasks.values() if t["job"] == name and t["origin"] ==
                       "schedule" and t["status"] == "created"]
            if len(pending) != 1:
                problems.append(f"job {name} has {len(pending)} pending scheduled runs")

        # the world's view: runs from the ledgers
        runs = self.ledger_runs()
        f.runs = sum(len(r) for r in runs.values())
        for name, job_runs in runs.items():
            per_task: dict[int, list[Run]] = defaultdict(list)
            for run in job_runs:
                per_task[run.task].append(run)
            for task_id, task_runs in per_task.items() if self.ids_stable else ():
                f.reruns += len(task_runs) - 1
                row = tasks.get(task_id)
                if row is None:
                    problems.append(f"{name}: ledger names task {task_id}, not in the database")
                    continue
                finished = [r for r in task_runs if r.end is not None]
                f.interrupted += sum(1 for r in task_runs if r.end is None)
                if not finished and row["status"] not in ("failed", "cancelled"):
                    problems.append(f"{name}: task {task_id} started, was never run to the end "
                                    f"again, and is {row['status']}")
                if row["status"] in ("failed", "cancelled") and not row["error"]:
                    problems.append(f"{name}: task {task_id} {row['status']} without a reason")
            # no overlap: a run ends before the next run of the job starts; a run without an
            # end was killed, and the next one starts only after that kill
            for first, second in zip(job_runs, job_runs[1:], strict=False):
                if first.end is not None:
                    ok = first.end <= second.start
                else:
                    kill = next((k for k in self.kill_times if k >= first.start), None)
                    ok = kill is not None and second.start >= kill
                if not ok:
                    f.overlaps += 1
                    problems.append(f"{name}: runs of tasks {first.task} and {second.task} "
                                    "overlapped")

        # processes: the tree job's lock was free at every start
        path = self.ledgers / "tree.overlaps"
        held = path.read_text().splitlines() if path.exists() else []
        f.overlaps += len(held)
        problems += [f"tree: task {line} started while a process of an earlier run lived"
                     for line in held]

        # slots: unique per job; for catch_up = all, none missing from first to last
        for name, (every, catch_up, _) in JOBS.items():
            slots = sorted(datetime.fromisoformat(t["scheduled_for"]) for t in tasks.values()
                           if t["job"] == name and t["origin"] == "schedule")
            if len(set(slots)) != len(slots):
                problems.append(f"{name}: a slot has two tasks")
            if catch_up == "all" and slots:
                step = timedelta(milliseconds=float(every.removesuffix("ms")))
                expected = int((slots[-1] - slots[0]) / step) + 1
                if expected != len(slots):
                    problems.append(f"{name}: {expected} slots from first to last, "
                                    f"{len(slots)} tasks")
            for t in tasks.values():
                if t["job"] == name and t["status"] == "cancelled" and catch_up == "all":
                    problems.append(f"{name}: task {t['id']} cancelled: {t['error']}")

        # power cuts: what the worker logged as committed is in the database
        f.checked = len(self.committed)
        for task_id, (state, attempt) in self.committed.items():
            row = tasks.get(task_id)
            if row is None or row["attempt"] < attempt or (
                    state == "succeeded" and row["status"] != "succeeded"):
                f.lost_states += 1
                problems.append(f"task {task_id}: logged {state} at attempt {attempt}, database "
                                f"has {row and (row['status'], row['attempt'])}")

        assert not problems, "\n".join(problems[:30]) + f"\n{f.line()}"
        return f


def run_crashes(workdir: Path, kills: int, seed: int | None = None) -> Figures:
    torture = Torture(workdir, seed=seed)
    for _ in range(kills):
        torture.kill()
    torture.settle()
    return torture.check()


def run_powercuts(workdir: Path, cuts: int, durability: str = "full",
                  seed: int | None = None) -> Figures:
    from powercutfs import PowerCutFS

    backing, mount = workdir / "backing", workdir / "mnt"
    backing.mkdir(exist_ok=True)
    mount.mkdir(exist_ok=True)
    torture = Torture(workdir, data_dir=mount, durability=durability, seed=seed)
    for _ in range(cuts):
        with PowerCutFS(backing, mount) as fs:
            torture.start()
            torture.wait_random()
            torture.figures.kills_in_startup += "edgeworker running" not in torture.running_log()
            fs.cut()  # the power goes: unsynced writes vanish, nothing more lands
            torture.worker.kill()  # ... and the processes with it
            torture.kill_times.append(time.time_ns())
            torture.figures.cuts += 1
            if durability == "full":
                torture.note_committed()
    with PowerCutFS(backing, mount):
        torture.settle()
        return torture.check()


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["crash", "powercut"])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--cuts", type=int, default=100)
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"edgeworker-{args.mode}-") as tmp:
        if args.mode == "crash":
            figures = run_crashes(Path(tmp), args.kills, args.seed)
        else:
            figures = run_powercuts(Path(tmp), args.cuts, args.durability, args.seed)
    print(f"{args.mode} torture ok: {figures.line()}")


if __name__ == "__main__":
    main()
