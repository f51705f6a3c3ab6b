"""Tests of the systemd boot harness, with a tiny stand-in for the edgeworker service.

The stand-in speaks sd_notify by hand (READY=1, WATCHDOG=1, STOPPING=1) the way the
real worker must, so these tests also pin down what systemd expects of it.
"""

import os
import signal
import textwrap
from pathlib import Path

import pytest

try:
    from systemd_boot import BootedSystemd, systemd_unavailable_reason
except ImportError:  # tests/ imported as a package
    from tests.systemd_boot import BootedSystemd, systemd_unavailable_reason

pytestmark = pytest.mark.skipif(
    systemd_unavailable_reason() is not None, reason=str(systemd_unavailable_reason())
)

UNIT = "standin.service"

STANDIN = textwrap.dedent(
    """\
    import os, signal, socket, sys, time

    def notify(message):
        address = os.environ["NOTIFY_SOCKET"]
        if address.startswith("@"):
            address = "\\0" + address[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())

    stopping = False

    def on_sigterm(signum, frame):
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_sigterm)
    with open(os.path.join(os.environ["STATE_DIRECTORY"], "starts"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    ping_every = int(os.environ["WATCHDOG_USEC"]) / 1e6 / 4
    notify("READY=1")
    print("standin ready", flush=True)
    while not stopping:
        notify("WATCHDOG=1")
        time.sleep(ping_every)
    notify("STOPPING=1")
    print("standin stopping, finishing work", flush=True)
    time.sleep(0.2)
    print("standin finished work", flush=True)
    sys.exit(0)
    """
)

STANDIN_UNIT = """\
[Unit]
Description=Stand-in for the edgeworker service

[Service]
Type=notify
NotifyAccess=all
ExecStart=/usr/bin/python3 /opt/standin/standin.py
WatchdogSec=2
Restart=always
RestartSec=1
StateDirectory=standin
KillMode=mixed
TimeoutStopSec=10
"""

# systemd forgets an inactive unit's exit status as soon as it unloads it, so a
# test-only drop-in records it; the unit under test stays as it is.
RECORD_EXIT = """\
[Service]
ExecStopPost=/bin/sh -c 'echo "$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS" >> /run/standin-exits'
"""


@pytest.fixture
def sd():
    with BootedSystemd(
        {UNIT: STANDIN_UNIT, f"{UNIT}.d/record-exit.conf": RECORD_EXIT},
        files={"/opt/standin/standin.py": STANDIN},
    ) as booted:
        yield booted


def start_standin(sd: BootedSystemd) -> int:
    sd.systemctl("start", UNIT, check=True)
    sd.wait_for_state(UNIT, "active", timeout=10)
    return sd.main_pid(UNIT)


@pytest.mark.timeout(30)
def test_boot_sees_only_the_test_units(sd):
    assert sd.systemctl("is-system-running").stdout.strip() == "running"
    fragment = sd.prop("multi-user.target", "FragmentPath")
    assert fragment == "/run/harness/units/multi-user.target"
    assert sd.prop("getty@tty1.service", "LoadState") == "not-found"
    assert sd.run("/usr/bin/python3", "-c", "print('ok')").stdout == "ok\n"


@pytest.mark.timeout(30)
def test_files_binds_and_users_reach_the_namespace(tmp_path):
    (tmp_path / "shared.txt").write_text("from the host\n")
    with BootedSystemd(
        {},
        files={"/etc/edgeworker/edgeworker.toml": "x = 1\n", "/var/lib/seed/db": b"\0"},
        binds={"/opt/shared": tmp_path},
        users=["edgeworker"],
    ) as booted:
        assert booted.run("cat", "/etc/edgeworker/edgeworker.toml").stdout == "x = 1\n"
        assert booted.run("stat", "-c%s", "/var/lib/seed/db").stdout == "1\n"
        assert booted.run("cat", "/opt/shared/shared.txt").stdout == "from the host\n"
        assert booted.run("id", "-u", "edgeworker").returncode == 0
    assert not Path("/etc/edgeworker/edgeworker.toml").exists()


@pytest.mark.timeout(30)
def test_unit_reaches_active(sd):
    pid = start_standin(sd)
    assert pid > 0
    assert sd.show(UNIT, "Type", "SubState") == {"Type": "notify", "SubState": "running"}
    assert "standin ready" in sd.journal(UNIT)


@pytest.mark.timeout(30)
def test_stop_is_graceful(sd):
    start_standin(sd)
    sd.systemctl("stop", UNIT, check=True)
    assert sd.prop(UNIT, "ActiveState") == "inactive"
    # exited (not killed), with status 0
    assert sd.path("/run/standin-exits").read_text() == "success exited 0\n"
    log = sd.journal(UNIT)
    assert "standin stopping, finishing work" in log
    assert "standin finished work" in log


@pytest.mark.timeout(30)
def test_watchdog_restarts_a_stopped_service(sd):
    first = start_standin(sd)
    os.kill(sd.host_pid(first), signal.SIGSTOP)
    second = sd.wait_for(
        lambda: (pid := sd.main_pid(UNIT)) not in (0, first) and pid, 10, "a new main PID"
    )
    sd.wait_for_state(UNIT, "active", timeout=5)
    assert second != first
    assert int(sd.prop(UNIT, "NRestarts")) >= 1
    assert "Watchdog timeout" in sd.journal(UNIT)
    assert sd.path("/run/standin-exits").read_text() == "watchdog killed ABRT\n"


@pytest.mark.timeout(30)
def test_state_directory_survives_restart(sd):
    first = start_standin(sd)
    assert sd.path("/var/lib/standin/starts").read_text() == f"{first}\n"
    sd.systemctl("restart", UNIT, check=True)
    sd.wait_for_state(UNIT, "active")
    second = sd.main_pid(UNIT)
    assert second != first
    assert sd.path("/var/lib/standin/starts").read_text() == f"{first}\n{second}\n"


HARDENING = """\
[Service]
DynamicUser=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallFilter=@system-service
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX
CapabilityBoundingSet=
UMask=0077
"""


@pytest.mark.timeout(30)
def test_hardened_unit_runs_in_the_namespace():
    with BootedSystemd(
        {UNIT: STANDIN_UNIT, f"{UNIT}.d/hardening.conf": HARDENING},
        files={"/opt/standin/standin.py": STANDIN},
    ) as booted:
        pid = start_standin(booted)
        starts = booted.path("/var/lib/private/standin/starts")
        assert starts.read_text() == f"{pid}\n"
        assert starts.stat().st_uid >= 61184  # a dynamic user, not root
        booted.systemctl("stop", UNIT, check=True)
        assert "standin finished work" in booted.journal(UNIT)


@pytest.mark.timeout(30)
def test_shutdown_leaves_nothing_behind():
    with BootedSystemd({UNIT: STANDIN_UNIT}, files={"/opt/standin/standin.py": STANDIN}) as booted:
        start_standin(booted)
        pid, cgroup, staging = booted.pid, booted.cgroup, booted.staging
        pid_ns = os.readlink(f"/proc/{pid}/ns/pid")
    assert booted.exit_code == 0  # PID 1 exited through exit.target, not killed
    assert not Path(f"/proc/{pid}").exists()
    assert not cgroup.exists()
    assert not staging.exists()
    in_ns = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "ns/pid") == pid_ns:
                in_ns.append(proc.name)
        except OSError:
            pass
    assert in_ns == []
