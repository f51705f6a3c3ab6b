"""What the benchmark scripts share: statistics, the result table, /proc readers, and a real
`edgeworker run` subprocess (the test suite's `tests/workerproc.py`) that says READY=1."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # shared with the test suite: workerproc, waltools,
                                        # pgserver (a private PostgreSQL server)

import pgserver  # noqa: E402
from waltools import reset_wal, wal_commits  # noqa: E402
from workerproc import WorkerProcess, wait_for  # noqa: E402

__all__ = ["REPO", "pgserver", "Figure", "Stat", "WorkerProcess", "NotifySocket", "reset_wal",
           "wal_commits", "wait_for", "percentile", "scratch_dir", "side_by_side",
           "write_bytes", "rss_kib", "thread_switches", "files_size", "worker_config",
           "WalCommit", "wal_log", "btree_names"]


# -- statistics --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stat:
    """The median of repeated measurements, with their min and max."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stat:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def text(self, digits: int = 1) -> str:
        def f(x: float) -> str:
            return f"{x:,.{digits}f}"
        if self.low == self.high:
            return f(self.median)
        return f"{f(self.median)} ({f(self.low)}–{f(self.high)})"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def side_by_side(repeats: int, runs: dict[str, Callable[[], dict]]) -> dict[str, list[dict]]:
    """Run each contender `repeats` times, interleaved (A B, B A, A B ...), so that a noisy
    neighbour on the machine slows both alike; returns each one's results in run order."""
    names = list(runs)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            results[name].append(runs[name]())
    return results


# -- the table ---------------------------------------------------------------------------------

@dataclass
class Figure:
    """One line of the table: edgeworker's figure, its baseline's, their ratio, the target."""

    number: str  # the item of issue 6 it answers
    what: str
    unit: str
    value: Stat
    baseline: Stat | None = None
    baseline_name: str = ""
    ratio: Stat | None = None
    target: str = ""
    met: bool | None = None
    digits: int = 1

    def cells(self) -> list[str]:
        base = ""
        if self.baseline is not None:
            base = f"{self.baseline.text(self.digits)} {self.baseline_name}".strip()
        ratio = f"{self.ratio.text(2)}×" if self.ratio is not None else ""
        met = {True: "yes", False: "NO", None: ""}[self.met]
        return [self.number, self.what, self.unit, self.value.text(self.digits), base, ratio,
                self.target, met]

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("digits")
        return data


HEADERS = ["#", "measure", "unit", "edgeworker: median (min–max)", "baseline", "ratio",
           "target", "met"]


def render_table(figures: list[Figure], markdown: bool = False) -> str:
    rows = [HEADERS] + [f.cells() for f in figures]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("---" for _ in HEADERS) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- /proc -------------------------------------------------------------------------------------

def write_bytes(pid: int | str = "self") -> int:
    """Bytes this process caused to be written to the storage layer (page cache dirtied)."""
    with open(f"/proc/{pid}/io") as handle:
        for line in handle:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in /proc/{pid}/io")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def thread_switches(pid: int) -> dict[str, int]:
    """Summed over every thread: times scheduled onto a CPU (schedstat's 3rd field) and
    voluntary/involuntary context switches."""
    total = {"scheduled": 0, "voluntary": 0, "involuntary": 0, "threads": 0}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                total["scheduled"] += int(handle.read().split()[2])
            with open(f"/proc/{pid}/task/{task}/status") as handle:
                for line in handle:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total["voluntary"] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        total["involuntary"] += int(line.split()[1])
        except FileNotFoundError:
            continue  # a thread that just exited
        total["threads"] += 1
    return total


def files_size(database: Path) -> int:
    """Bytes of the database with its -wal and -shm files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{database}{suffix}").st_size
        except FileNotFoundError:
            pass
    return total


# -- the WAL, frame by frame ----------------------------------------------------------------------

@dataclass(frozen=True)
class WalCommit:
    """One commit in a WAL: the offset just past its last frame, and its frames' page numbers."""

    end: int
    pages: tuple[int, ...]


def wal_log(database: Path) -> list[WalCommit]:
    """The commits of the WAL's current generation, from the frame headers (a page number, and
    the database size on a commit frame); frames after the last commit are left out. With
    checkpoints off the WAL keeps every frame, and its length at a moment tells which commits
    came before it."""
    try:
        data = Path(f"{database}-wal").read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < 32:
        return []
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits, pages, offset = [], [], 32
    while offset + 24 + page_size <= len(data):
        header = data[offset:offset + 24]
        if header[8:16] != salts:
            break  # a frame of an older generation: the log ends here
        page, size_after = struct.unpack(">II", header[:8])
        pages.append(page)
        offset += 24 + page_size
        if size_after:
            commits.append(WalCommit(offset, tuple(pages)))
            pages = []
    return commits


def btree_names(database: Path) -> dict[int, str]:
    """Which table or index each page of the database belongs to (SQLite's `dbstat`; the WAL's
    content included, so call it while the WAL is still there)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        names = dict(connection.execute("SELECT pageno, name FROM dbstat").fetchall())
    finally:
        connection.close()
    names[1] = "page 1 (the database header and sqlite_schema)"
    return names


# -- workers -----------------------------------------------------------------------------------

def scratch_dir(prefix: str) -> Path:
    """A fresh directory on a disk-backed file system ($BENCH_DIR, else the temp dir): on tmpfs
    fsync is free and /proc/PID/io counts no written bytes, so the figures would mean nothing."""
    return Path(tempfile.mkdtemp(prefix=f"ew-bench-{prefix}-", dir=os.environ.get("BENCH_DIR")))


def worker_config(jobs: str = "", workers: int = 2) -> str:
    """A config for `edgeworker run` whose callables come from `bench.jobs`."""
    return (f'[worker]\ndatabase = "ew.db"\nworkers = {workers}\npython_path = ["{REPO}"]\n'
            f"{jobs}")


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, directory: Path):
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def wait_ready(self, timeout: float = 30.0) -> float:
        """time.monotonic() when READY=1 arrived."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no READY=1 from the worker")
            self.sock.settimeout(left)
            data = self.sock.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic()

    def close(self) -> None:
        self.sock.close()
