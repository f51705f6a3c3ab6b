"""The workers table: a worker registers at start (one row a life, named as tasks.worker names
it), beats at most once a `[worker] heartbeat` (off by default on SQLite), marks its graceful
stop, and `edgeworker status` shows each one up, stopped or silent."""

from __future__ import annotations

import json
import os
import signal
import socket
from datetime import UTC, datetime, timedelta

import pytest
from workerproc import WorkerProcess, wait_for

from edgeworker import __version__, report
from edgeworker.config import parse_config
from edgeworker.errors import ConfigError
from edgeworker.ledger import Ledger
from edgeworker.models import Worker

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_worker_registers_beats_and_stops(any_database):
    ledger = Ledger(any_database, worker="boot:41:1")
    ledger.register(T0, 1.0)
    row = Worker.get(Worker.name == "boot:41:1")
    assert (row.host, row.pid, row.started_at, row.last_heartbeat, row.heartbeat_seconds,
            row.version, row.stopped_at) == (socket.gethostname(), os.getpid(), T0, T0, 1.0,
                                              __version__, None)
    ledger.heartbeat(T0 + timedelta(seconds=1))
    assert Worker.get(Worker.name == "boot:41:1").last_heartbeat == T0 + timedelta(seconds=1)
    ledger.stopped(T0 + timedelta(seconds=2))
    row = Worker.get(Worker.name == "boot:41:1")
    assert (row.last_heartbeat, row.stopped_at) == ((T0 + timedelta(seconds=2),) * 2)
    # Registering the same life again updates its row: one row a name.
    ledger.register(T0 + timedelta(seconds=3), None)
    [row] = Worker.select()
    assert (row.started_at, row.heartbeat_seconds, row.stopped_at) == (
        T0 + timedelta(seconds=3), None, None)


def test_status_says_up_stopped_or_silent(any_database):
    beating, stopped, gone = (Ledger(any_database, worker=n) for n in ("b:1:1", "b:2:1", "b:3:1"))
    beating.register(T0, 10.0)
    stopped.register(T0, 10.0)
    stopped.stopped(T0 + timedelta(seconds=5))
    gone.register(T0 - timedelta(seconds=31), 10.0)
    views = {w["name"]: w for w in report.workers(T0 + timedelta(seconds=30), None)}
    assert {name: w["state"] for name, w in views.items()} == {
        "b:1:1": "up", "b:2:1": "stopped", "b:3:1": "silent"}
    assert list(views) == ["b:3:1", "b:2:1", "b:1:1"]  # newest first
    assert views["b:2:1"]["stopped_at"] == "2026-03-01T12:00:05.000000Z"
    assert views["b:1:1"]["last_heartbeat"] == "2026-03-01T12:00:00.000000Z"
    # Thirty seconds on, the one that beat every 10 s has missed three beats.
    assert report.workers(T0 + timedelta(seconds=31), None)[-1]["state"] == "silent"


def test_a_worker_without_heartbeat_is_up_while_it_holds_the_lock(any_database):
    Ledger(any_database, worker="b:7:1").register(T0, None)
    later = T0 + timedelta(days=3)
    assert report.workers(later, os.getpid())[0]["state"] == "up"
    assert report.workers(later, None)[0]["state"] == "silent"
    assert report.workers(later, os.getpid() + 1)[0]["state"] == "silent"


def test_pruning_forgets_workers_gone_before_the_retention(any_database):
    me = Ledger(any_database, worker="b:1:1")
    me.register(T0 - timedelta(days=30), None)  # runs for a long time without a heartbeat
    old = Ledger(any_database, worker="b:2:1")
    old.register(T0 - timedelta(days=20), 30.0)
    old.stopped(T0 - timedelta(days=10))
    Ledger(any_database, worker="b:3:1").register(T0 - timedelta(days=9), 30.0)  # silent
    recent = Ledger(any_database, worker="b:4:1")
    recent.register(T0 - timedelta(days=2), 30.0)
    recent.stopped(T0 - timedelta(days=1))
    me.prune(T0 - timedelta(days=7))
    assert sorted(w.name for w in Worker.select()) == ["b:1:1", "b:4:1"]


@pytest.mark.parametrize("text, on_sqlite, on_server", [
    ("", None, 30.0),
    ('heartbeat = "off"', None, None),
    ('heartbeat = "5s"', 5.0, 5.0),
])
def test_the_heartbeat_setting(text, on_sqlite, on_server):
    settings = parse_config(f"[worker]\n{text}\n").worker
    assert (settings.heartbeat_seconds(False), settings.heartbeat_seconds(True)) == (
        on_sqlite, on_server)


@pytest.mark.parametrize("value, message", [
    ('"0.5s"', "heartbeat: must be at least 1s"),
    ('"2h"', "longer than 1h"),
])
def test_a_bad_heartbeat_is_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(f"[worker]\nheartbeat = {value}\n")


def test_status_lists_the_workers(migrated_any):
    from edgeworker.db import open_database
    from edgeworker.models import bind

    database = bind(open_database(migrated_any.db))
    Ledger(database, worker="b:9:1", tags=("site-a", "gw")).register(T0, 30.0)
    Ledger(database, worker="b:9:2").stopped(T0)  # no row: nothing to mark
    database.close()
    [view] = json.loads(migrated_any.ok("status", "--json"))["workers"]
    assert view == {"name": "b:9:1", "host": socket.gethostname(), "pid": os.getpid(),
                    "started_at": "2026-03-01T12:00:00.000000Z",
                    "last_heartbeat": "2026-03-01T12:00:00.000000Z", "heartbeat_seconds": 30.0,
                    "version": __version__, "stopped_at": None, "state": "silent",
                    "tags": ["gw", "site-a"]}
    lines = migrated_any.ok("status").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("WORKER"))
    assert lines[header].split() == ["WORKER", "HOST", "PID", "STARTED", "LAST", "HEARTBEAT",
                                     "VERSION", "STATE", "TAGS"]
    row = lines[header + 1].split()
    assert row[:3] == ["b:9:1", socket.gethostname(), str(os.getpid())]
    assert row[-3:] == [__version__, "silent", "gw,site-a"]


def _workers(worker: WorkerProcess) -> list[dict]:
    return json.loads(worker.cli("status", "--json").stdout)["workers"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("back_end", ["sqlite", "postgresql"])
def test_a_real_worker_beats_and_marks_its_stop(tmp_path, request, back_end):
    worker = WorkerProcess(tmp_path, 'heartbeat = "1s"\n')
    if back_end == "postgresql":
        url = request.getfixturevalue("pg_url")
        worker.config.write_text(f'[worker]\ndatabase = "{url}"\nheartbeat = "1s"\n')
        worker.db = url
    with worker:
        worker.start().wait_running()
        [view] = wait_for(lambda: _workers(worker), what="the worker's row", log=worker.log)
        assert (view["pid"], view["host"], view["version"], view["heartbeat_seconds"],
                view["stopped_at"], view["state"]) == (
            worker.proc.pid, socket.gethostname(), __version__, 1.0, None, "up")
        first = view["last_heartbeat"]
        wait_for(lambda: _workers(worker)[0]["last_heartbeat"] > first, timeout=20,
                 what="a later heartbeat", log=worker.log)
        assert worker.stop(signal.SIGTERM) == 0
        [view] = _workers(worker)
        assert view["state"] == "stopped"
        assert view["stopped_at"] == view["last_heartbeat"] > first


@pytest.mark.timeout(60)
def test_on_sqlite_a_worker_writes_no_heartbeat_by_default(tmp_path):
    with WorkerProcess(tmp_path, "") as worker:
        worker.start().wait_running()
        [view] = wait_for(lambda: _workers(worker), what="the worker's row", log=worker.log)
        assert (view["heartbeat_seconds"], view["state"]) == (None, "up")
        assert view["last_heartbeat"] == view["started_at"]
        assert worker.stop() == 0
        [view] = _workers(worker)
        assert view["state"] == "stopped"
