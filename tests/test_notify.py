"""sd_notify as systemd sees it: a real `edgeworker run` sends datagrams to a socket we read."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from workerproc import WorkerProcess, wait_for

from edgeworker.notify import Notifier

WATCHDOG_USEC = 1_000_000  # the worker pings every 0.5 s


class NotifySocket:
    """The listening end of $NOTIFY_SOCKET: every datagram, with the time it arrived."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def receive(self) -> None:
        try:
            while True:
                data = self.sock.recv(4096)
                self.messages.append((time.monotonic(), data.decode()))
        except TimeoutError:
            pass

    def wait_for(self, field: str, count: int = 1, timeout: float = 15.0,
                 log=None) -> list[tuple[float, str]]:
        def enough():
            self.receive()
            found = [m for m in self.messages if field in m[1].split("\n")]
            return len(found) >= count and found
        return wait_for(enough, timeout, interval=0, what=f"{count} x {field}", log=log)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def datagram_sockets(pid: int) -> list[str]:
    """The unix datagram sockets the process holds open (what sd_notify sends through)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    # Num RefCount Protocol Flags Type St Inode [Path]; Type 0002 is SOCK_DGRAM
    return [line for line in lines if line.split()[4] == "0002" and line.split()[6] in inodes]


@pytest.mark.timeout(60)
def test_ready_after_recovery_then_watchdog_pings_then_stopping(tmp_path, notify_socket):
    marker = tmp_path / "ran-once"
    config = f'''
[worker]
database = "ew.db"
shutdown_timeout = "5s"

[[jobs]]
name = "long"
command = "sh -c 'test -e {marker} || {{ touch {marker}; exec sleep 300; }}'"
every = "365d"
max_attempts = 2
'''
    with WorkerProcess(tmp_path, config) as worker:
        # A first worker dies while a task runs, so that the next start has something to recover.
        worker.start().wait_running()
        worker.cli("jobs", "run", "long")
        worker.wait_tasks("status = 'running'")
        worker.kill()

        worker.start(env={"NOTIFY_SOCKET": str(notify_socket.path),
                          "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        [(ready_at, ready)] = notify_socket.wait_for("READY=1", log=worker.log)
        log_at_ready = worker.log()
        pings = notify_socket.wait_for("WATCHDOG=1", count=4, log=worker.log)
        assert datagram_sockets(worker.proc.pid)  # what the next test relies on
        worker.send(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", log=worker.log)
        assert worker.proc.wait(20) == 0
        notify_socket.receive()

    recovery_line = "recovered 1, failed 0, cancelled 0, scheduled 0"
    assert recovery_line in log_at_ready  # logged before READY=1 was sent
    assert "edgeworker running" in log_at_ready
    assert f"at start: {recovery_line}" in ready  # READY=1 carries a STATUS= line
    first, *rest = [text for _, text in notify_socket.messages]
    assert first == "STATUS=starting: syncing jobs and recovering tasks"
    assert [t for t in rest if "READY=1" in t] == [ready]
    texts = [text for _, text in notify_socket.messages]
    assert "WATCHDOG=1" not in texts[:texts.index(ready)]  # no ping before READY=1
    after_ready = [at for at, text in pings if at > ready_at]
    assert len(after_ready) >= 3
    gaps = [b - a for a, b in zip(after_ready, after_ready[1:], strict=False)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # within the watchdog period, every time
    assert notify_socket.messages[-1][1].startswith("STOPPING=1\nSTATUS=")
    assert worker.tasks("status = 'succeeded'")[0]["recovered_count"] == 1


@pytest.mark.timeout(60)
def test_nothing_is_sent_without_notify_socket(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    config = '[[jobs]]\nname = "fast"\ncommand = "true"\nevery = "200ms"\n'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start(env={"WATCHDOG_USEC": str(WATCHDOG_USEC)}).wait_running()
        worker.wait_tasks("status = 'succeeded'", count=3)  # the housekeeper has ticked meanwhile
        assert datagram_sockets(worker.proc.pid) == []
        assert worker.stop() == 0


@pytest.mark.timeout(60)
def test_commands_cannot_notify_in_the_workers_name(tmp_path, notify_socket):
    # NotifyAccess=all accepts messages from any process of the unit: jobs must not have the socket.
    config = ('[[jobs]]\nname = "env"\ncommand = "sh -c \'echo ${NOTIFY_SOCKET-unset} '
              '${WATCHDOG_USEC-unset} ${WATCHDOG_PID-unset}\'"\nevery = "365d"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start(env={"NOTIFY_SOCKET": str(notify_socket.path),
                          "WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"})
        notify_socket.wait_for("READY=1", log=worker.log)
        worker.cli("jobs", "run", "env")
        [task] = worker.wait_tasks("status = 'succeeded'")
        worker.stop()
    assert task["output"] == "unset unset unset\n"


@pytest.mark.timeout(10)
def test_watchdog_belongs_to_the_process_systemd_watches():
    base = {"NOTIFY_SOCKET": "@edgeworker-test", "WATCHDOG_USEC": "30000000"}
    assert Notifier({**base}).watchdog_interval == 15.0
    assert Notifier({**base, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 15.0
    # another process's watchdog (we were started by it and inherited its environment)
    assert Notifier({**base, "WATCHDOG_PID": str(os.getppid())}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "30000000"}).enabled is False
    assert Notifier({**base}).address == "\0edgeworker-test"
