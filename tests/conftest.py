"""Shared fixtures: a CLI runner bound to a temporary database, a migrated database (SQLite, or
either back end with `any_database`), a private PostgreSQL server, and the check that the suite
leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import leftovers
import peewee
import pytest
from click.testing import CliRunner

from edgeworker import db as dbmod
from edgeworker import migrate, models
from edgeworker.cli import cli


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Every process the suite starts inherits the session's mark; at the end, none of them (and
    no child of pytest) may still be alive. Those found are listed, then killed."""
    mark = uuid.uuid4().hex
    os.environ[leftovers.MARK] = mark
    yield
    found = leftovers.settle(mark, os.getpid())
    leftovers.kill(found)
    assert not found, "the test suite left processes behind:\n" + "\n".join(
        f"  pid {pid}: {command}" for pid, command in sorted(found.items()))


def worker_traces() -> set[str]:
    """What workers leave on the host while they run: the runs' cgroups under this process's
    cgroup (`edgeworker-<key>/...`) and the records under /run/edgeworker."""
    from edgeworker.processes import _own_cgroup

    found = set()
    for base in filter(None, (_own_cgroup(), "/run/edgeworker")):
        if not os.path.isdir(base):
            continue
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if os.path.isdir(path) and (base == "/run/edgeworker"
                                        or name.startswith("edgeworker-")):
                found.add(path)
                found |= {os.path.join(path, entry) for entry in os.listdir(path)
                          if base == "/run/edgeworker" or os.path.isdir(os.path.join(path, entry))}
    return found


@pytest.fixture(scope="session", autouse=True)
def no_cgroup_or_record_left_behind():
    """A test that kills a worker ends what it left as its next start would
    (`WorkerProcess.end_leftovers`): no cgroup, record or run directory stays on the host."""
    before = worker_traces()
    yield
    left = sorted(worker_traces() - before)
    assert not left, "the test suite left these behind:\n" + "\n".join(f"  {p}" for p in left)


class Cli:
    """Runs `edgeworker --db <tmp> ...` in-process with click's CliRunner."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.db = tmp_path / "edgeworker.db"
        self.config: Path | None = None
        self.runner = CliRunner()

    def __call__(self, *args: str, config: Path | None = None, env: dict | None = None):
        base = ["--db", str(self.db)]
        config = config or self.config
        if config is not None:
            base += ["--config", str(config)]
        return self.runner.invoke(cli, [*base, *args], env=env, catch_exceptions=False)

    def ok(self, *args: str, **kwargs) -> str:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, result.output
        return result.stdout


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)  # the default ./edgeworker.toml must not come from the repo
    for var in ("EDGEWORKER_DB", "EDGEWORKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return Cli(tmp_path)


@pytest.fixture
def migrated(run_cli: Cli) -> Cli:
    run_cli.ok("migrate")
    return run_cli


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_any(request, run_cli: Cli) -> Cli:
    """`migrated` on each back end in turn: a file, then a database on the private server."""
    if request.param == "postgresql":
        run_cli.db = request.getfixturevalue("pg_url")
    run_cli.ok("migrate")
    return run_cli


@pytest.fixture
def database(tmp_path: Path):
    """A migrated database opened in-process, with the models bound to it."""
    database = dbmod.open_database(tmp_path / "edgeworker.db", create=True)
    migrate.apply(database, migrate.plan(database, migrate.discover()))
    models.bind(database)
    yield database
    database.close()


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL server for the session (tests/pgserver.py)."""
    import pgserver

    require(pgserver.unavailable())
    server = pgserver.Server()
    try:
        server.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        server.stop()
        require(f"cannot start PostgreSQL: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:
    """The URL of a new, empty database on the private server, dropped after the test."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


def open_migrated(location):
    database = dbmod.open_database(location, create=True)
    migrate.apply(database, migrate.plan(database, migrate.for_database(database)))
    return models.bind(database)


@pytest.fixture
def pg_database(pg_url):
    """A migrated PostgreSQL database, with the models bound to it."""
    database = open_migrated(pg_url)
    yield database
    database.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request, tmp_path: Path):
    """A migrated database on each back end in turn, with the models bound to it."""
    location = (tmp_path / "edgeworker.db" if request.param == "sqlite"
                else request.getfixturevalue("pg_url"))
    database = open_migrated(location)
    yield database
    database.close()


def sqlite_only(database, why: str) -> None:
    if not isinstance(database, peewee.SqliteDatabase):
        pytest.skip(f"SQLite only: {why}")


def is_root() -> bool:
    return os.geteuid() == 0


class Tmpfs:
    """A small tmpfs mounted for one test (root only): full disks and read-only directories."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], check=True)

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def tmpfs(tmp_path: Path):
    if not is_root():
        pytest.skip("needs root to mount a tmpfs")
    mounts = []

    def make(size: str = "1m") -> Tmpfs:
        mounts.append(Tmpfs(tmp_path / f"tmpfs{len(mounts)}", size))
        return mounts[-1]

    yield make
    for mount in mounts:
        mount.unmount()


def require(reason: str | None) -> None:
    """Skip a test whose machinery is missing here, with the reason; on CI, fail instead
    (CI machines have root, /dev/fuse and systemd, and must run every test)."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)
