import hashlib
import os
import stat
import subprocess
import sys

import peewee
import pytest

from edgeworker.db import WorkerLock, open_database, worker_pid
from edgeworker.errors import DatabaseError, WorkerRunning


def pragma(database, name):
    return database.execute_sql(f"PRAGMA {name}").fetchone()[0]


def test_new_database_is_private_wal_and_fully_synchronous(tmp_path):
    database = open_database(tmp_path / "ew.db", create=True, busy_timeout=7)
    mode = stat.S_IMODE(os.stat(tmp_path / "ew.db").st_mode)
    assert mode == 0o600
    assert pragma(database, "journal_mode") == "wal"
    assert pragma(database, "synchronous") == 2  # FULL
    assert pragma(database, "busy_timeout") == 7000
    assert pragma(database, "foreign_keys") == 1


def test_normal_durability_is_opt_in(tmp_path):
    database = open_database(tmp_path / "ew.db", create=True, durability="normal")
    assert pragma(database, "synchronous") == 1  # NORMAL


def test_writes_take_the_write_lock_at_begin(tmp_path):
    database = open_database(tmp_path / "ew.db", create=True)
    database.execute_sql("CREATE TABLE t (x)")
    with database.atomic():
        # BEGIN IMMEDIATE: another connection cannot start writing now
        other = open_database(tmp_path / "ew.db", busy_timeout=0, foreign=True)
        with pytest.raises(peewee.OperationalError, match="locked"):
            other.execute_sql("BEGIN IMMEDIATE")


def test_missing_database_is_not_created_by_accident(tmp_path):
    with pytest.raises(DatabaseError, match="no database here; create it with `edgeworker "
                                            "migrate`"):
        open_database(tmp_path / "ew.db")
    assert not (tmp_path / "ew.db").exists()


def test_not_a_database_is_left_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"shopping list\n" * 100)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DatabaseError, match="not an SQLite database"):
        open_database(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_corrupt_database_is_a_clear_error(tmp_path):
    path = tmp_path / "ew.db"
    database = open_database(path, create=True)
    database.execute_sql("CREATE TABLE t (x)")
    database.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page, keep the header
    path.write_bytes(bytes(data))
    with pytest.raises(DatabaseError, match="database file is corrupt"):
        open_database(path)


def test_worker_lock_is_exclusive_across_processes(tmp_path):
    db_path = tmp_path / "ew.db"
    assert worker_pid(db_path) is None
    code = ("import sys, time; from edgeworker.db import WorkerLock; "
            "WorkerLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert worker_pid(db_path) == holder.pid
        with pytest.raises(WorkerRunning, match=rf"another worker \(pid {holder.pid}\) is running"):
            WorkerLock(db_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert worker_pid(db_path) is None
    with WorkerLock(db_path):
        assert worker_pid(db_path) == os.getpid()


def test_a_forked_child_of_a_dead_worker_does_not_hold_its_lock(tmp_path):
    """A callable's `multiprocessing` child (a fork, no exec) outlives a SIGKILLed worker; had it
    kept the worker's flock (the fork shares the open file), no worker could start."""
    db_path = tmp_path / "ew.db"
    code = ("import os, sys, time; from edgeworker.db import WorkerLock; "
            "lock = WorkerLock(sys.argv[1]).acquire(); pid = os.fork()\n"
            "if pid == 0: time.sleep(60); os._exit(0)\n"
            "print(pid, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdout=subprocess.PIPE,
                              text=True)
    child = int(holder.stdout.readline())
    try:
        assert worker_pid(db_path) == holder.pid
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # alive, under PID 1 now
        assert worker_pid(db_path) is None
        with WorkerLock(db_path):
            assert worker_pid(db_path) == os.getpid()
    finally:
        holder.kill()
        holder.wait()
        os.kill(child, 9)


def test_asking_whether_a_worker_runs_never_stops_one_from_starting(tmp_path):
    """`status` and the status page ask often; a worker starting at that moment must still get
    its lock. (Probing with a shared flock made such a start fail with "another worker".)"""
    import threading

    db_path = tmp_path / "ew.db"
    WorkerLock(db_path).acquire().release()  # the lock file exists, nobody holds it
    stop = threading.Event()
    answers: set = set()

    def ask() -> None:
        while not stop.is_set():
            answers.add(worker_pid(db_path))

    asker = threading.Thread(target=ask)
    asker.start()
    refused = 0
    try:
        for _ in range(3000):
            try:
                WorkerLock(db_path).acquire().release()
            except WorkerRunning:
                refused += 1
    finally:
        stop.set()
        asker.join()
    assert refused == 0
    assert answers <= {None, os.getpid(), -1}  # -1: held, its pid not written yet



def test_a_lock_file_removed_by_a_refused_start_is_never_held_twice(tmp_path, monkeypatch):
    db_path = tmp_path / "ew.db"
    refused = WorkerLock(db_path).acquire()
    assert refused.created
    stale = os.open(refused.path, os.O_RDWR)  # a second worker opened the file just before...
    refused.release(remove=True)  # ...the refused start removed it and let go
    assert not os.path.exists(refused.path)
    second = WorkerLock(db_path)
    opens = iter([(stale, False)])
    real_open = second._open
    monkeypatch.setattr(second, "_open", lambda: next(opens, None) or real_open())
    second.acquire()  # locks the removed file first: it must notice and lock the real one
    try:
        with pytest.raises(WorkerRunning):
            WorkerLock(db_path).acquire()  # flock: another open file description conflicts
    finally:
        second.release()
    kept = WorkerLock(db_path).acquire()  # not created by this one: a refusal keeps it
    kept.release(remove=True)
    assert os.path.exists(kept.path)
