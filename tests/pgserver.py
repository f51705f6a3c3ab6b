"""A private PostgreSQL server for the tests: Debian's `postgresql` package, a fresh cluster in a
temporary directory, reachable only through its own socket directory (`listen_addresses = ''`),
stopped and removed at the end. Run as root, initdb and the server run as the `postgres` user.
The tests' server skips fsync (`durable=False`); the benchmarks' (`bench/pg.py`) keeps
PostgreSQL's durable defaults.

Local connections are trusted, except for the role `PASSWORD_ROLE`, which must give
`PASSWORD` (scram-sha-256): the tests of wrong and missing credentials.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
PASSWORD_ROLE = "edgeworker_pw"
PASSWORD = "s3cret-for-tests"


def unavailable() -> str | None:
    """Why no server can be started here, or None."""
    if importlib.util.find_spec("psycopg2") is None:
        return "the psycopg2 driver is not installed (pip install 'edgeworker[postgres]')"
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return f"PostgreSQL 15 is not installed ({BIN}: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


# What the tests' server gives up for speed: their data need not survive a crash of the machine.
NOT_DURABLE = "-c fsync=off -c full_page_writes=off "


class Server:
    """`durable`: PostgreSQL's defaults (fsync on), for benchmarks. `committed_survives_crash`:
    every commit is in the WAL before it returns (synchronous_commit on), so that an immediate
    stop (the server's crash) loses no committed transaction; the OS does not crash here, so fsync
    may stay off. Both off by default: faster."""

    def __init__(self, durable: bool = False, committed_survives_crash: bool = False,
                 settings: tuple[str, ...] = ()):
        self.durable = durable
        self.synchronous_commit = "on" if durable or committed_survives_crash else "off"
        self.settings = settings  # more `name=value` server settings
        self.root = Path(tempfile.mkdtemp(prefix="edgeworker-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o700)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.started = False

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60,
                              cwd=self.root)

    def _check(self, result: subprocess.CompletedProcess, what: str) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}"
                               f"\n{log[-2000:]}")

    def start(self) -> Server:
        self._check(self._run("mkdir", "-m", "0700", str(self.socket_dir)), "mkdir")
        self._check(self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                              "--auth-local=trust", "--auth-host=reject", "--no-sync",
                              "-E", "UTF8", "--locale=C"), "initdb")
        self._check(self._run("sh", "-c", f"cat > {self.data}/pg_hba.conf <<'EOF'\n"
                              f"local all {PASSWORD_ROLE} scram-sha-256\n"
                              "local all all trust\nEOF"), "pg_hba.conf")
        self._start()
        with self.connect("postgres") as conn:
            conn.autocommit = True
            conn.cursor().execute(
                f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
        return self

    def _start(self) -> None:
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
                   + ("" if self.durable else NOT_DURABLE)
                   + f"-c synchronous_commit={self.synchronous_commit} -c max_connections=50"
                   + "".join(f" -c {setting}" for setting in self.settings))
        self._check(self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                              "-o", options, "-w", "-t", "60", "start"), "pg_ctl start")
        self.started = True

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (its connections end) and start it again. `mode` is pg_ctl's:
        "fast", or "immediate" (as a crash: the next start recovers from the WAL)."""
        self.halt(mode)
        self._start()

    def halt(self, mode: str = "fast") -> None:
        """Stop the server (its connections end); `start_again` brings it back."""
        self._check(self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                              "stop"), "pg_ctl stop")
        self.started = False

    def start_again(self) -> None:
        if not self.started:
            self._start()

    def connect(self, dbname: str):
        import psycopg2

        return psycopg2.connect(dbname=dbname, user=SUPERUSER, host=str(self.socket_dir))

    def url(self, dbname: str, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@/{dbname}?host={self.socket_dir}"

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            conn.cursor().execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return name

    def drop_database(self, name: str) -> None:
        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            conn.close()

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if self.started:
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
