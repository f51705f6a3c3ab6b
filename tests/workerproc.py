"""A real `edgeworker run` in a subprocess, on a database in a test's tmp directory."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition",
             log=None):
    """Poll until `predicate()` is truthy; fail with `what` (and the worker's log) at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            tail = f"\n--- worker log ---\n{log()[-3000:]}" if log else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


class WorkerProcess:
    def __init__(self, directory: Path, config: str, name: str = "ew"):
        self.dir = directory
        self.config = directory / f"{name}.toml"
        self.db = directory / f"{name}.db"
        self.log_path = directory / f"{name}.log"
        self.config.write_text(f'[worker]\ndatabase = "{self.db.name}"\n' + config
                               if "[worker]" not in config else config)
        self.proc: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "edgeworker", "--config", str(self.config), *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60,
                                cwd=self.dir)
        if check and result.returncode != 0:
            raise AssertionError(f"edgeworker {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr}")
        return result

    def start(self, *args: str, env: dict | None = None) -> WorkerProcess:
        log = open(self.log_path, "ab")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(self.command("run", "--migrate", *args), stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.dir, env=environment)
        log.close()
        return self

    def wait_running(self, timeout: float = 20.0) -> WorkerProcess:
        wait_for(lambda: "edgeworker running" in self.log() or self.proc.poll() is not None,
                 timeout, what="the worker to start", log=self.log)
        assert self.proc.poll() is None, f"worker exited early:\n{self.log()}"
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not stop within {timeout}s:\n{self.log()}") \
                from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        con = sqlite3.connect(self.db, timeout=10)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def tasks(self, where: str = "1", params: tuple = ()) -> list[dict]:
        con = sqlite3.connect(self.db, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute(
                "SELECT * FROM (SELECT tasks.*, jobs.name AS job FROM tasks LEFT JOIN jobs "
                f"ON jobs.id = tasks.job_id) WHERE {where} ORDER BY id", params).fetchall()
            return [dict(row) for row in rows]
        finally:
            con.close()

    def wait_tasks(self, where: str, count: int = 1, timeout: float = 15.0,
                   params: tuple = ()) -> list[dict]:
        return wait_for(lambda: (rows := self.tasks(where, params)) and len(rows) >= count
                        and rows, timeout, what=f"{count} task(s) where {where}", log=self.log)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self.end_leftovers()

    def end_leftovers(self) -> int:
        """What a killed worker's next start would do: end its runs' processes, remove their
        cgroups and records (a test leaves nothing behind)."""
        from edgeworker.processes import ProcessTable

        table = ProcessTable.for_database(self.db)
        try:
            return table.end_leftovers(0.5)
        finally:
            table.close()
