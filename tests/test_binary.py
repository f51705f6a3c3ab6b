"""The one-file binary (`make build-worker`), used the way a box uses it: copied somewhere, run with
no Python environment on PATH, stopped with SIGTERM.

`built_binary()` runs `make build-worker` once per test session; make rebuilds only when a source
changed, so a second session (or module) pays nothing. Slow the first time (about a minute, with
the pip install of PyInstaller), so marked `slow`; `make test` runs it.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from workerproc import wait_for

from edgeworker import __version__
from edgeworker.migrate import discover

LATEST_MIGRATION = discover()[-1].label

REPO = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 900

pytestmark = pytest.mark.slow


@functools.cache
def built_binary() -> Path:
    result = subprocess.run(["make", "-s", "build-worker"], cwd=REPO, capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"make build-worker failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return REPO / "dist" / "edgeworker"


class Box:
    """A directory with the binary and only the tools its jobs use: no Python on PATH."""

    TOOLS = ("sh", "sleep", "true", "echo", "touch", "cat")

    def __init__(self, root: Path, binary: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.tmp = root / "tmp"  # where the bootloader unpacks itself
        self.tmp.mkdir()
        self.exe = self.bin / "edgeworker"
        shutil.copy2(binary, self.exe)
        for tool in self.TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        self.env = {"PATH": str(self.bin), "HOME": str(root), "LANG": "C.UTF-8",
                    "TMPDIR": str(self.tmp)}
        self.config = root / "ew.toml"
        self.db = root / "ew.db"
        self.log = root / "ew.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self, text: str) -> None:
        self.config.write_text('[worker]\ndatabase = "ew.db"\nshutdown_timeout = "5s"\n' + text)

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["edgeworker", *args], cwd=self.root, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=60)

    def start(self, *args: str, env: dict | None = None, prefix: tuple[str, ...] = (),
              new_session: bool = False) -> subprocess.Popen:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, "edgeworker", "--config", str(self.config), "run", *args],
                cwd=self.root, env={**self.env, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=new_session)
        return self.proc

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tasks(self, where: str) -> list[tuple]:
        if not self.db.exists():
            return []
        con = sqlite3.connect(self.db, timeout=10)
        try:
            return con.execute("SELECT tasks.id, jobs.name, status, output FROM tasks JOIN jobs "
                               f"ON jobs.id = tasks.job_id WHERE {where} ORDER BY tasks.id"
                               ).fetchall()
        finally:
            con.close()

    def wait_tasks(self, where: str, count: int = 1, timeout: float = 20.0) -> list[tuple]:
        return wait_for(lambda: len(rows := self.tasks(where)) >= count and rows, timeout,
                        what=f"{count} task(s) where {where}", log=self.read_log)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def box(tmp_path):
    box = Box(tmp_path, built_binary())
    yield box
    box.close()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.timeout(30, func_only=True)
def test_version_and_help_without_python(box):
    assert shutil.which("python3", path=box.env["PATH"]) is None
    version = box.run("--version")
    assert (version.returncode, version.stdout) == (0, f"edgeworker, version {__version__}\n")
    usage = box.run("--help")
    assert usage.returncode == 0
    assert "Run scheduled jobs from one SQLite file" in usage.stdout
    assert list(box.tmp.iterdir()) == []  # the bootloader removed what it unpacked


@pytest.mark.timeout(60, func_only=True)
def test_migrate_run_an_interval_job_and_stop_with_sigterm(box):
    box.write_config('[[jobs]]\nname = "tick"\ncommand = "sh -c \'echo tick $EDGEWORKER_TASK_ID\'"'
                     '\nevery = "300ms"\n')
    migrated = box.run("--config", str(box.config), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[-1] == f"applied {LATEST_MIGRATION}"
    assert box.run("--config", str(box.config), "migrate", "--check").stdout == "up to date\n"

    bootloader = box.start()
    done = box.wait_tasks("status = 'succeeded'", count=2)
    assert [(name, output) for _, name, _, output in done[:2]] == [
        ("tick", f"tick {done[0][0]}\n"), ("tick", f"tick {done[1][0]}\n")]
    [worker] = children(bootloader.pid)  # the one-file bootloader forks the worker
    assert box.stop() == 0
    assert not Path(f"/proc/{worker}").exists()
    log = box.read_log()
    assert f"(pid {worker})" in log
    assert "received SIGTERM: stopping" in log  # passed on by the bootloader
    assert log.rstrip().endswith("INFO edgeworker stopped")
    assert list(box.tmp.iterdir()) == []


def test_the_binary_runs_on_postgresql(box, pg_url):
    # The driver is in the binary: a box (or site server) that moves to PostgreSQL keeps it.
    box.write_config('[[jobs]]\nname = "tick"\ncommand = "true"\nevery = "365d"\n')
    where = ("--config", str(box.config), "--db", pg_url)
    migrated = box.run(*where, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert box.run(*where, "migrate", "--check").stdout == "up to date\n"
    status = box.run(*where, "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"database  {pg_url} (PostgreSQL)\n")


@pytest.mark.timeout(60, func_only=True)
def test_ctrl_c_is_one_graceful_stop(box):
    box.write_config('[[jobs]]\nname = "slow"\ncommand = "sh -c \'sleep 1; echo done\'"\n'
                     'every = "365d"\n')
    box.start("--migrate", new_session=True)
    wait_for(lambda: "edgeworker running" in box.read_log(), 20, log=box.read_log)
    assert box.run("--config", str(box.config), "jobs", "run", "slow").returncode == 0
    box.wait_tasks("status = 'running'")
    # A terminal's Ctrl-C signals the whole process group: the bootloader and the worker.
    os.killpg(box.proc.pid, signal.SIGINT)
    assert box.proc.wait(30) == 0
    log = box.read_log()
    assert log.count("received SIGINT: stopping") == 1, log
    assert "stopping at once" not in log
    assert [row[2:] for row in box.tasks("tasks.origin = 'manual'")] == [("succeeded", "done\n")]


def run_callable(box: Box, module: str, source: str, options: str = "") -> tuple[str, str]:
    """Writes lib/MODULE.py (lib is the config's python_path), starts the worker with a job MODULE
    whose callable is MODULE:run, queues one run of it and stops the worker once it is over: the
    run's status and output."""
    lib = box.root / "lib"
    lib.mkdir(exist_ok=True)
    (lib / f"{module}.py").write_text(source)
    box.write_config(f'python_path = ["lib"]\n\n[[jobs]]\nname = "{module}"\n'
                     f'callable = "{module}:run"\nevery = "365d"\n{options}')
    box.start("--migrate")
    wait_for(lambda: "edgeworker running" in box.read_log(), 20, log=box.read_log)
    queued = box.run("--config", str(box.config), "jobs", "run", module)
    assert queued.returncode == 0, queued.stderr
    [(_, _, status, output)] = box.wait_tasks("tasks.origin = 'manual' AND status != 'created' "
                                              "AND status != 'running'")
    assert box.stop() == 0
    return status, output


@pytest.mark.timeout(60, func_only=True)
def test_a_callable_from_python_path_runs_in_the_binary(box):
    # Standard library modules that edgeworker itself does not use: the binary carries them all.
    assert run_callable(box, "sensors", (
        "import csv, io, statistics, urllib.parse\n"
        "def run(ctx):\n"
        "    rows = list(csv.reader(io.StringIO('t\\n20.5\\n21.5\\n')))[1:]\n"
        "    mean = statistics.mean(float(r[0]) for r in rows)\n"
        "    ctx.logger.info('%s %s', urllib.parse.quote(ctx.job), mean)\n"
    )) == ("succeeded", "INFO sensors 21.0\n")


@pytest.mark.timeout(60, func_only=True)
def test_pyinstallers_run_time_hooks_apply_when_a_job_imports_their_module(box):
    # The build runs PyInstaller's hooks for inspect, multiprocessing and pkgutil at the module's
    # first import, multiprocessing's at that of multiprocessing.spawn and inspect's at its first
    # getsourcefile (packaging/prepare-build): the worker (whose huey imports multiprocessing) has
    # run none of them, and a job sees each module patched as before.
    assert run_callable(box, "frozen", (
        "import sys\n"
        "def run(ctx):\n"
        "    early = ('pkgutil', 'zipfile', 'multiprocessing.spawn')\n"
        "    before = any(m in sys.modules for m in early)\n"
        "    import inspect, multiprocessing, multiprocessing.spawn, pkgutil\n"
        "    assert inspect.getsourcefile(run) == __file__\n"
        "    frozen = {m.name for m in pkgutil.iter_modules()}\n"
        "    ctx.logger.info('%s %s %s %s %s', before, inspect.getsourcefile.__name__,\n"
        "                    multiprocessing.freeze_support.__name__,\n"
        "                    multiprocessing.process.ORIGINAL_DIR,\n"
        "                    {'json', 'edgeworker'} <= frozen)\n"
    )) == ("succeeded", "INFO False _pyi_getsourcefile _freeze_support None True\n")


@pytest.mark.timeout(60, func_only=True)
def test_a_job_starts_processes_with_multiprocessing_spawn_and_forkserver(box):
    # Their processes are the built program again (sys.executable), with multiprocessing's
    # arguments: it runs what they were started for instead of its command line.
    assert run_callable(box, "pool", (
        "import multiprocessing\n"
        "def square(x):\n"
        "    return x * x\n"
        "def run(ctx):\n"
        "    found = []\n"
        "    for method in ('spawn', 'forkserver'):\n"
        "        with multiprocessing.get_context(method).Pool(2) as pool:\n"
        "            found += pool.map(square, [2, 3])\n"
        "    ctx.logger.info('%s', found)\n"
    ), 'timeout = "30s"\n') == ("succeeded", "INFO [4, 9, 4, 9]\n")
    assert "No such option" not in box.read_log()


@pytest.mark.timeout(60, func_only=True)
def test_the_build_leaves_docstrings_out_but_the_clis_and_a_jobs_asserts_in(box):
    # The collected modules are compiled as `python -OO` compiles them, but for edgeworker.cli
    # (click's help text); a job's own module is compiled at run time, with its asserts.
    assert run_callable(box, "docs", (
        "import json, sys\n"
        "import huey.api\n"
        "import edgeworker.cli\n"
        "def run(ctx):\n"
        "    try:\n"
        "        assert False, 'asserted'\n"
        "    except AssertionError as error:\n"
        "        kept = str(error)\n"
        "    ctx.logger.info('%s %s %s %s %s', json.dumps.__doc__, huey.api.Huey.__doc__,\n"
        "                    edgeworker.cli.cli.help.split(',')[0], sys.flags.optimize, kept)\n"
    )) == ("succeeded", "INFO None None Run scheduled jobs from one SQLite file 0 asserted\n")


@pytest.mark.timeout(60, func_only=True)
def test_help_pages_are_clicks(box):
    import sys

    def program(args: list[str], columns: str, command: list[str]) -> str:
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30,
                                cwd=box.root, env={**box.env, "COLUMNS": columns})
        assert result.returncode == 0, result.stderr
        return result.stdout

    unpacked = REPO / "dist" / "unpacked" / "edgeworker" / "edgeworker"
    for args in (["--help"], ["jobs", "add", "--help"], ["run", "-h"]):
        for columns in ("100", "60"):  # a page; click's rendering for a narrow terminal
            source = program(args, columns, [sys.executable, "-m", "edgeworker"])
            assert program(args, columns, ["edgeworker"]) == source
            assert program(args, columns, [str(unpacked)]) == source


@pytest.mark.timeout(30, func_only=True)
def test_bad_input_is_one_error_line(box):
    missing = box.run("--config", "nowhere.toml", "migrate")
    assert missing.returncode == 1
    assert missing.stderr == "Error: nowhere.toml: config file not found\n"
    box.write_config('[[jobs]]\nname = "x"\ncallable = "numpy_sensors:read"\nevery = "365d"\n')
    unknown = box.run("--config", str(box.config), "run", "--migrate")
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[-1] == (
        f'Error: {box.config}:6: job "x": callable "numpy_sensors:read": cannot import '
        "numpy_sensors: ModuleNotFoundError: No module named 'numpy_sensors'")


@pytest.mark.timeout(60, func_only=True)
def test_the_worker_pings_the_watchdog_that_systemd_set_for_the_bootloader(box):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(box.root / "notify.sock"))
    listener.settimeout(0.1)
    box.write_config('[[jobs]]\nname = "idle"\ncommand = "true"\nevery = "365d"\n')
    # As systemd does: WATCHDOG_PID is the main process, which is the bootloader (exec keeps the
    # pid of the shell that sets it).
    box.start("--migrate", prefix=("sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"),
              env={"NOTIFY_SOCKET": str(box.root / "notify.sock"), "WATCHDOG_USEC": "600000"})
    received: list[tuple[float, str]] = []

    def pings_after_ready() -> list[float]:
        try:
            received.append((time.monotonic(), listener.recv(4096).decode()))
        except TimeoutError:
            pass
        ready = [at for at, text in received if text.startswith("READY=1")]
        return [at for at, text in received if ready and at > ready[0] and text == "WATCHDOG=1"]

    pings = wait_for(lambda: len(p := pings_after_ready()) >= 4 and p, 20, interval=0,
                     what="4 watchdog pings after READY=1", log=box.read_log)
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 0.6
    assert box.stop() == 0
    listener.close()
