"""Tests of the power-cut simulator itself (tests/powercutfs.py)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import random
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from powercutfs import PowerCutFS, fuse_unavailable_reason, is_mounted
except ImportError:  # tests/ imported as a package
    from tests.powercutfs import PowerCutFS, fuse_unavailable_reason, is_mounted

REASON = fuse_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# Commits one row per transaction and prints each id once the commit returned.
WRITER = """
import sqlite3, sys, time
db, synchronous, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute(f"PRAGMA synchronous={synchronous}")
con.execute("PRAGMA wal_autocheckpoint=20")  # checkpoints (and WAL restarts) under the cuts too
con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB)")
done = 0
while not limit or done < limit:
    print(con.execute("INSERT INTO t(payload) VALUES(randomblob(300))").lastrowid, flush=True)
    done += 1
print("done", flush=True)
time.sleep(3600)
"""


class Writer:
    """The WRITER script in its own process, its committed row ids read from a pipe."""

    def __init__(self, db: Path, synchronous: str, limit: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), synchronous, str(limit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.committed: list[int] = []
        self.finished = False
        self._buffer = b""

    def _take_lines(self) -> None:
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line == b"done":
                self.finished = True
            else:
                self.committed.append(int(line))

    def wait_for(self, rows: int, timeout: float = 20) -> None:
        """Until `rows` commits returned (or the limit was reached)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while len(self.committed) < rows and not self.finished:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"writer made only {len(self.committed)} commits"
            if select.select([self.proc.stdout], [], [], remaining)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"writer exited with {self.proc.wait()}"
                self._buffer += chunk
                self._take_lines()

    def kill(self) -> list[int]:
        """SIGKILL; the ids of every commit that returned, including those still in the pipe."""
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self._buffer += self.proc.stdout.read()
        self.proc.stdout.close()
        self._take_lines()
        return self.committed


@pytest.fixture
def start_writer():
    """Starts Writers; kills those still running when the test ends, passed or not."""
    started: list[Writer] = []

    def start(db: Path, synchronous: str, limit: int = 0) -> Writer:
        started.append(Writer(db, synchronous, limit))
        return started[-1]

    yield start
    for writer in started:
        if writer.proc.poll() is None:
            writer.kill()


@pytest.fixture
def dirs(tmp_path: Path):
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    yield backing, mnt
    if is_mounted(str(mnt)):  # PowerCutFS.unmount failed: don't leave it for the next run
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        pytest.fail(f"{mnt} was left mounted")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, fsync: bool) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def cut_and_remount(fs: PowerCutFS) -> PowerCutFS:
    fs.cut()
    fs.unmount()
    return fs.mount()


@pytest.mark.timeout(30)
def test_fsynced_write_survives_and_unsynced_write_is_dropped(dirs):
    backing, mnt = dirs
    with PowerCutFS(backing, mnt) as fs:
        write_file(mnt / "kept", b"durable", fsync=True)
        write_file(mnt / "changed", b"v1", fsync=True)
        fsync_path(mnt)
        write_file(mnt / "changed", b"version 2, never fsynced", fsync=False)
        assert (mnt / "changed").read_bytes() == b"version 2, never fsynced"
        stats = fs.cut()
        assert stats["dropped_writes"] >= 1 and stats["dropped_truncates"] == 1
        assert (backing / "changed").read_bytes() == b"v1"
        fs.unmount()
        fs.mount()
        assert (mnt / "kept").read_bytes() == b"durable"
        assert (mnt / "changed").read_bytes() == b"v1"


@pytest.mark.timeout(30)
def test_new_file_needs_a_directory_fsync(dirs):
    backing, mnt = dirs
    with PowerCutFS(backing, mnt) as fs:
        (mnt / "sub").mkdir()
        write_file(mnt / "sub" / "listed", b"a", fsync=True)
        fsync_path(mnt / "sub")
        fsync_path(mnt)
        write_file(mnt / "sub" / "unlisted", b"b", fsync=True)  # data durable, entry not
        (mnt / "newdir").mkdir()
        cut_and_remount(fs)
        assert sorted(os.listdir(mnt)) == ["sub"]
        assert os.listdir(mnt / "sub") == ["listed"]
        assert (mnt / "sub" / "listed").read_bytes() == b"a"


@pytest.mark.timeout(30)
def test_rename_and_unlink_need_a_directory_fsync(dirs):
    backing, mnt = dirs
    with PowerCutFS(backing, mnt) as fs:
        write_file(mnt / "config", b"old", fsync=True)
        write_file(mnt / "doomed", b"still here", fsync=True)
        fsync_path(mnt)
        # The atomic-replace idiom without its final directory fsync.
        write_file(mnt / "config.tmp", b"new", fsync=True)
        os.rename(mnt / "config.tmp", mnt / "config")
        os.unlink(mnt / "doomed")
        assert sorted(os.listdir(mnt)) == ["config"]
        cut_and_remount(fs)
        assert sorted(os.listdir(mnt)) == ["config", "doomed"]
        assert (mnt / "config").read_bytes() == b"old"
        assert (mnt / "doomed").read_bytes() == b"still here"
        # And with it.
        write_file(mnt / "config.tmp", b"new", fsync=True)
        os.rename(mnt / "config.tmp", mnt / "config")
        os.unlink(mnt / "doomed")
        fsync_path(mnt)
        cut_and_remount(fs)
        assert os.listdir(mnt) == ["config"]
        assert (mnt / "config").read_bytes() == b"new"
    assert os.listdir(backing) == ["config"]


@pytest.mark.timeout(30)
def test_truncate_is_undone_unless_fsynced(dirs):
    backing, mnt = dirs
    data = os.urandom(100_000)
    with PowerCutFS(backing, mnt) as fs:
        write_file(mnt / "a", data, fsync=True)
        write_file(mnt / "b", data, fsync=True)
        fsync_path(mnt)
        os.truncate(mnt / "a", 10)
        with open(mnt / "b", "r+b") as f:
            f.truncate(20)
            os.fsync(f.fileno())
        os.truncate(mnt / "b", 5)
        cut_and_remount(fs)
        assert (mnt / "a").read_bytes() == data
        assert (mnt / "b").read_bytes() == data[:20]


@pytest.mark.timeout(30)
def test_after_the_cut_everything_fails_with_eio_and_unmount_does_not_hang(dirs):
    backing, mnt = dirs
    backing.mkdir()
    (backing / "old").write_bytes(b"x" * 10_000)  # not in the mount's page cache yet
    fs = PowerCutFS(backing, mnt).mount()
    try:
        reader = os.open(mnt / "old", os.O_RDONLY)
        writer = os.open(mnt / "new", os.O_WRONLY | os.O_CREAT)
        os.write(writer, b"before")
        fs.cut()
        for attempt in (
            lambda: os.write(writer, b"after"),
            lambda: os.pread(reader, 100, 0),
            lambda: os.fsync(writer),
            lambda: os.stat(mnt / "old"),
            lambda: os.open(mnt / "old", os.O_RDONLY),
            lambda: os.listdir(mnt),
            lambda: os.mkdir(mnt / "d"),
        ):
            with pytest.raises(OSError) as failure:
                attempt()
            assert failure.value.errno == errno.EIO
        # Both files are still open on the dead mount: unmount must detach lazily, not hang.
        started = time.monotonic()
        fs.unmount()
        assert time.monotonic() - started < 5
        assert not is_mounted(str(mnt))
        for fd in (reader, writer):
            with contextlib.suppress(OSError):
                os.close(fd)
    finally:
        fs.unmount()
    assert sorted(os.listdir(backing)) == ["old"]


LOCK_PROBE = """
import fcntl, sys
with open(sys.argv[1], "r+b") as f:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 100)
    except OSError:
        sys.exit(3)
"""


@pytest.mark.timeout(60)
def test_what_sqlite_needs_works_through_the_mount(dirs, start_writer):
    """POSIX byte-range locks between processes, shared writable mmap, two WAL writers."""
    backing, mnt = dirs
    with PowerCutFS(backing, mnt):
        write_file(mnt / "f", bytes(8192), fsync=True)
        with open(mnt / "f", "r+b") as f:
            probe = [sys.executable, "-c", LOCK_PROBE, str(mnt / "f")]
            assert subprocess.run(probe, timeout=10).returncode == 0
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 100)
            assert subprocess.run(probe, timeout=10).returncode == 3
            with mmap.mmap(f.fileno(), 8192) as mapped:
                mapped[4096:4101] = b"shmem"
                assert os.pread(f.fileno(), 5, 4096) == b"shmem"

        con = sqlite3.connect(mnt / "db")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)")
        con.close()
        writers = [start_writer(mnt / "db", "FULL", limit=150) for _ in range(2)]
        for writer in writers:
            writer.wait_for(150)
            writer.kill()
        assert count_rows(mnt / "db") == (300, "ok")


def count_rows(db: Path) -> tuple[int, str]:
    con = sqlite3.connect(db)
    try:
        return (
            con.execute("SELECT count(*) FROM t").fetchone()[0],
            con.execute("PRAGMA integrity_check").fetchone()[0],
        )
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_sqlite_with_synchronous_off_loses_commits(dirs, start_writer):
    backing, mnt = dirs
    with PowerCutFS(backing, mnt) as fs:
        con = sqlite3.connect(mnt / "db")  # schema made durable the proper way first
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)")
        con.close()
        writer = start_writer(mnt / "db", "OFF", limit=200)
        writer.wait_for(200)
        stats = fs.cut()
        committed = writer.kill()
        fs.unmount()
        fs.mount()
        present, integrity = count_rows(mnt / "db")
    print(
        f"synchronous=OFF: {len(committed)} rows committed, {present} present after the cut, "
        f"integrity {integrity}; dropped {stats['dropped_writes']} writes "
        f"({stats['dropped_bytes']} bytes), fsyncs {stats['fdatasyncs'] | stats['fsyncs']}"
    )
    assert len(committed) == 200
    assert present < len(committed)


@pytest.mark.timeout(90)
def test_sqlite_with_synchronous_full_keeps_every_commit(dirs, start_writer):
    backing, mnt = dirs
    db = mnt / "db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    committed: list[int] = []
    for round_ in range(5):
        with PowerCutFS(backing, mnt) as fs:
            if committed:
                present, integrity = count_rows(db)
                assert integrity == "ok"
                assert present >= len(committed)
            writer = start_writer(db, "FULL")
            writer.wait_for(rng.randint(1, 120))
            time.sleep(rng.uniform(0, 0.02))
            stats = fs.cut()
            committed += writer.kill()
        print(
            f"round {round_}: {len(committed)} rows committed so far; cut dropped "
            f"{stats['dropped_writes']} writes ({stats['dropped_bytes']} bytes), "
            f"{stats['dropped_namespace_ops']} namespace ops in {stats['dropped_paths']}"
        )
    with PowerCutFS(backing, mnt):
        con = sqlite3.connect(db)
        try:
            ids = {row[0] for row in con.execute("SELECT id FROM t")}
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
    print(
        f"synchronous=FULL (seed {seed}): {len(committed)} rows committed, "
        f"{len(ids)} present after 5 cuts, integrity {integrity}"
    )
    assert integrity == "ok"
    assert set(committed) <= ids, f"lost rows {sorted(set(committed) - ids)[:10]}"
