"""The shipped unit (systemd/edgeworker.service) with the one-file binary: what systemd-analyze says
of it, what `make install` puts where, and a real systemd 252 running it as PID 1 in namespaces.

The boots use the unit file as shipped, with the binary bound over /usr/local/bin where the unit
looks for it. The only test drop-in shortens timings (WatchdogSec, RestartSec)
and records each exit; every sandbox directive stays as shipped.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from test_binary import LATEST_MIGRATION, built_binary

from edgeworker import __version__
from edgeworker.config import load_config, parse_duration
from edgeworker.migrate import discover
from edgeworker.runners import KILL_GRACE

try:
    from systemd_boot import BootedSystemd, systemd_unavailable_reason
except ImportError:  # tests/ imported as a package
    from tests.systemd_boot import BootedSystemd, systemd_unavailable_reason

REPO = Path(__file__).resolve().parent.parent
UNIT_FILE = REPO / "systemd" / "edgeworker.service"
WEB_UNIT_FILE = REPO / "systemd" / "edgeworker-web.service"
EXAMPLE_CONFIG = REPO / "systemd" / "edgeworker.toml"
UNIT = "edgeworker.service"
DB = "/var/lib/edgeworker/edgeworker.db"

pytestmark = pytest.mark.slow


def unit_settings(path: Path = UNIT_FILE) -> dict[str, list[str]]:
    """{"Section.Key": [values]}, keeping repeated keys (SystemCallFilter= is given twice)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def setting(key: str) -> str:
    [value] = unit_settings()[key]
    return value


@pytest.mark.timeout(30)
def test_security_score_is_at_most_2_and_jobs_keep_the_network():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(UNIT_FILE)], capture_output=True, text=True, timeout=20)
    match = re.search(r"Overall exposure level for edgeworker\.service: (\d+\.\d+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
    assert {"AF_INET", "AF_INET6"} <= set(setting("Service.RestrictAddressFamilies").split())
    assert "Service.PrivateNetwork" not in unit_settings()
    assert "Service.IPAddressDeny" not in unit_settings()


@pytest.mark.timeout(30)
def test_the_unit_says_what_the_worker_needs():
    assert setting("Service.Type") == "notify"
    assert setting("Service.NotifyAccess") == "all"  # the bootloader's child notifies
    assert setting("Service.KillMode") == "mixed"
    assert setting("Service.Restart") == "always"
    assert parse_duration(setting("Service.RestartSec")) > 0
    assert setting("Service.StateDirectory") == "edgeworker"
    assert setting("Service.User") == "edgeworker"
    assert setting("Service.ExecStartPre").endswith(
        "edgeworker --config /etc/edgeworker/edgeworker.toml migrate")
    assert setting("Service.ExecStart").endswith(
        "edgeworker --config /etc/edgeworker/edgeworker.toml run")
    assert setting("Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    # A graceful stop waits shutdown_timeout, then KILL_GRACE after SIGTERM to the commands.
    installed = load_config(EXAMPLE_CONFIG)
    assert installed.worker.database == DB
    stop = parse_duration(setting("Service.TimeoutStopSec"))
    assert stop >= installed.worker.shutdown_timeout + KILL_GRACE + 5


@pytest.mark.timeout(30)
def test_the_status_page_unit_is_sandboxed_as_the_worker_and_reads_only():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(WEB_UNIT_FILE)], capture_output=True, text=True, timeout=20)
    match = re.search(r"Overall exposure level for edgeworker-web\.service: (\d+\.\d+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
    web, worker = unit_settings(WEB_UNIT_FILE), unit_settings()
    sandbox = {key for key in worker if key.startswith("Service.") and (
        key.split(".")[1].startswith(("Protect", "Private", "Restrict", "SystemCall"))
        or key.split(".")[1] in ("CapabilityBoundingSet", "NoNewPrivileges", "LockPersonality",
                                 "MemoryDenyWriteExecute", "DevicePolicy", "UMask", "User"))}
    for key in sandbox:  # every restriction of the worker's unit, at least as strict
        assert web[key] == worker[key], key
    [exec_start] = web["Service.ExecStart"]
    assert exec_start.endswith("edgeworker --config /etc/edgeworker/edgeworker.toml serve")
    assert web["Service.ReadOnlyPaths"] == [f"-{DB} -{DB}.lock"]
    assert web["Service.StateDirectory"] == ["edgeworker"]  # SQLite's -shm, see the unit


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("usr-local-bin")
    shutil.copy2(built_binary(), directory / "edgeworker")
    directory.chmod(0o755)
    return directory


@pytest.mark.timeout(60, func_only=True)
def test_systemd_analyze_verify_is_clean(binary_dir):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to put the binary at /usr/local/bin in a private "
                    "mount namespace")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    script = (f"mount --bind {binary_dir} /usr/local/bin && "
              f"systemd-analyze verify {UNIT_FILE}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@functools.cache
def built_unpacked() -> None:
    """`make install` installs the unpacked build: build it before the timed part."""
    result = subprocess.run(["make", "-s", "build-worker-unpacked"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.timeout(120, func_only=True)
def test_make_install_and_uninstall(tmp_path):
    built_unpacked()
    root = tmp_path / "root"

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", *args, f"DESTDIR={root}"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    assert make("install").returncode == 0
    binary = root / "usr/local/bin/edgeworker"
    config = root / "etc/edgeworker/edgeworker.toml"
    # The unpacked build, linked from bin: no start unpacks anything.
    assert os.readlink(binary) == "../lib/edgeworker/edgeworker"
    assert binary.stat().st_mode & 0o777 == 0o755
    assert (root / "usr/local/lib/edgeworker/_internal").is_dir()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert version.stdout == f"edgeworker, version {__version__}\n"
    assert (root / "usr/local/lib/systemd/system/edgeworker.service").read_text() == \
        UNIT_FILE.read_text()
    assert (root / "usr/local/lib/systemd/system/edgeworker-web.service").read_text() == \
        WEB_UNIT_FILE.read_text()
    assert (root / "usr/local/share/doc/edgeworker/operate.md").exists()
    assert config.read_text() == EXAMPLE_CONFIG.read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    config.write_text("# edited by the operator\n")
    again = make("install")
    assert again.returncode == 0
    assert f"kept {config}" in again.stdout
    assert config.read_text() == "# edited by the operator\n"  # never overwritten

    assert make("uninstall").returncode == 0
    assert not os.path.lexists(binary)
    assert not (root / "usr/local/lib/edgeworker").exists()
    assert not (root / "usr/local/lib/systemd/system/edgeworker.service").exists()
    assert not (root / "usr/local/lib/systemd/system/edgeworker-web.service").exists()
    assert config.exists()


# -- a real systemd ---------------------------------------------------------------------------

needs_systemd = pytest.mark.skipif(systemd_unavailable_reason() is not None,
                                   reason=str(systemd_unavailable_reason()))


@needs_systemd
@pytest.mark.timeout(90, func_only=True)
def test_make_install_as_root_adds_the_user_and_reloads_systemd(tmp_path):
    built_unpacked()
    usr_local = tmp_path / "usr-local"
    usr_local.mkdir()
    # /etc is an overlay and /usr/local a bind of usr_local: the host is left as it was. The
    # checkout is bound at /srv: where CI clones it (under /tmp, say) may be hidden inside.
    with BootedSystemd({}, binds={"/usr/local": usr_local, "/srv": REPO}) as sd:
        assert sd.run("id", "edgeworker").returncode != 0
        assert "Reloading." not in sd.journal().splitlines()
        installed = sd.run("make", "-s", "-C", "/srv", "install", timeout=60)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "installed /etc/edgeworker/edgeworker.toml" in installed.stdout
        assert sd.run("id", "-u", "edgeworker").returncode == 0
        assert sd.run("stat", "-c", "%a %U %G", "/etc/edgeworker/edgeworker.toml").stdout == \
            "640 root edgeworker\n"
        assert (usr_local / "bin/edgeworker").exists()
        assert (usr_local / "lib/systemd/system/edgeworker.service").exists()
        assert "Reloading." in sd.journal().splitlines()  # systemctl daemon-reload

        removed = sd.run("make", "-s", "-C", "/srv", "uninstall", timeout=60)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not (usr_local / "bin/edgeworker").exists()
        assert sd.run("test", "-e", "/etc/edgeworker/edgeworker.toml").returncode == 0
        assert sd.run("id", "-u", "edgeworker").returncode == 0

CONFIG = f'''[worker]
database = "{DB}"
shutdown_timeout = "10s"

[[jobs]]
name = "tick"
command = ["sh", "-c", "echo tick $EDGEWORKER_TASK_ID"]
every = "500ms"

[[jobs]]
name = "slow"
command = ["sh", "-c", "sleep 2; echo finished"]
every = "365d"
'''

TEST_TIMINGS = """\
[Service]
WatchdogSec=2s
RestartSec=200ms
ExecStopPost=+/bin/sh -c 'echo "$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS" >> /run/edgeworker-exits'
"""


@pytest.fixture
def sd(binary_dir):
    with BootedSystemd({UNIT: UNIT_FILE, f"{UNIT}.d/test-timings.conf": TEST_TIMINGS},
                       files={"/etc/edgeworker/edgeworker.toml": CONFIG},
                       binds={"/usr/local/bin": binary_dir}, users=["edgeworker"]) as booted:
        yield booted


def start(sd: BootedSystemd) -> int:
    result = sd.systemctl("start", UNIT)  # returns once READY=1 arrived (Type=notify)
    assert result.returncode == 0, result.stderr + sd.journal(UNIT)
    sd.wait_for_state(UNIT, "active")
    return sd.main_pid(UNIT)


def worker_pid(sd: BootedSystemd, main_pid: int) -> int:
    """The host pid of the worker: the one child of the bootloader (the unit's main process)."""
    host = sd.host_pid(main_pid)
    [child] = Path(f"/proc/{host}/task/{host}/children").read_text().split()
    return int(child)


def query(sd: BootedSystemd, sql: str) -> list[tuple]:
    # Inside the namespace: SQLite resolves the /proc/PID/root link of sd.path() to the host's /.
    script = ("import json, sqlite3, sys; con = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', "
              "uri=True, timeout=10); print(json.dumps(con.execute(sys.argv[2]).fetchall()))")
    result = sd.run("/usr/bin/python3", "-c", script, DB, sql)
    assert result.returncode == 0, result.stderr
    return [tuple(row) for row in json.loads(result.stdout)]


def succeeded(sd: BootedSystemd, job: str) -> int:
    if not sd.path(DB).exists():
        return 0
    [(count,)] = query(sd, "SELECT count(*) FROM tasks JOIN jobs ON jobs.id = tasks.job_id "
                           f"WHERE jobs.name = '{job}' AND status = 'succeeded'")
    return count


@needs_systemd
@pytest.mark.timeout(90, func_only=True)
def test_the_unit_runs_the_binary_sandboxed(sd):
    main = start(sd)
    assert sd.show(UNIT, "Type", "SubState", "NRestarts") == {
        "Type": "notify", "SubState": "running", "NRestarts": "0"}
    assert "at start: recovered 0" in sd.prop(UNIT, "StatusText")
    worker = worker_pid(sd, main)
    # Past two watchdog periods, still the same worker: the child's pings reach systemd.
    sd.wait_for(lambda: succeeded(sd, "tick") >= 10, 30, "10 runs of tick")
    assert (sd.main_pid(UNIT), sd.prop(UNIT, "NRestarts")) == (main, "0")

    status = dict(line.split(":", 1) for line in Path(f"/proc/{worker}/status").read_text()
                  .splitlines())
    uid = int(sd.run("id", "-u", "edgeworker").stdout)
    assert int(status["Uid"].split()[0]) == uid
    assert status["CapEff"].strip() == "0000000000000000"
    assert (status["NoNewPrivs"].strip(), status["Seccomp"].strip()) == ("1", "2")
    db = sd.path(DB).stat()
    assert (db.st_uid, db.st_mode & 0o777) == (uid, 0o600)
    assert sd.path("/var/lib/edgeworker").stat().st_mode & 0o777 == 0o700
    journal = sd.journal(UNIT)
    assert f"applied {LATEST_MIGRATION}" in journal  # ExecStartPre=migrate
    assert "INFO recovered 0, failed 0" in journal


@needs_systemd
@pytest.mark.timeout(90, func_only=True)
def test_systemctl_stop_is_graceful(sd):
    start(sd)
    sd.run("runuser", "-u", "edgeworker", "--", "/usr/local/bin/edgeworker", "--config",
           "/etc/edgeworker/edgeworker.toml", "jobs", "run", "slow", check=True)
    sd.wait_for(lambda: query(sd, "SELECT 1 FROM tasks JOIN jobs ON jobs.id = tasks.job_id "
                                  "WHERE jobs.name = 'slow' AND status = 'running'"),
                20, "the slow task to run")
    sd.systemctl("stop", UNIT, check=True, timeout=30)
    assert sd.prop(UNIT, "ActiveState") == "inactive"
    assert sd.path("/run/edgeworker-exits").read_text() == "success exited 0\n"
    assert query(sd, "SELECT status, output FROM tasks JOIN jobs ON jobs.id = tasks.job_id "
                     "WHERE jobs.name = 'slow' AND origin = 'manual'") == [
                         ("succeeded", "finished\n")]
    journal = sd.journal(UNIT)
    assert "received SIGTERM: stopping" in journal
    assert "INFO edgeworker stopped" in journal


@needs_systemd
@pytest.mark.timeout(90, func_only=True)
def test_the_watchdog_restarts_a_stopped_worker(sd):
    first = start(sd)
    os.kill(worker_pid(sd, first), signal.SIGSTOP)
    second = sd.wait_for(lambda: (pid := sd.main_pid(UNIT)) not in (0, first) and pid, 30,
                         "a new main PID")
    sd.wait_for_state(UNIT, "active", timeout=20)
    assert second != first
    assert int(sd.prop(UNIT, "NRestarts")) >= 1
    assert "Watchdog timeout" in sd.journal(UNIT)
    assert sd.path("/run/edgeworker-exits").read_text().startswith("watchdog ")
    before = succeeded(sd, "tick")
    sd.wait_for(lambda: succeeded(sd, "tick") > before, 20, "the new worker to run tick")


@needs_systemd
@pytest.mark.timeout(90, func_only=True)
def test_the_database_survives_a_restart_and_reload_rereads_the_config(sd):
    first = start(sd)
    sd.wait_for(lambda: succeeded(sd, "tick") >= 3, 20, "3 runs of tick")
    sd.systemctl("restart", UNIT, check=True, timeout=30)
    sd.wait_for_state(UNIT, "active")
    assert sd.main_pid(UNIT) != first
    before = succeeded(sd, "tick")
    assert before >= 3
    sd.wait_for(lambda: succeeded(sd, "tick") > before, 20, "tick to run after the restart")
    assert query(sd, "SELECT count(*) FROM recoveries") == [(2,)]
    assert query(sd, "SELECT count(*) FROM schema_migrations") == [(len(discover()),)]

    config = sd.path("/etc/edgeworker/edgeworker.toml")
    config.write_text(config.read_text() + '\n[[jobs]]\nname = "added"\ncommand = "true"\n'
                                           'every = "365d"\n')
    sd.systemctl("reload", UNIT, check=True)
    sd.wait_for(lambda: "1 added, 0 updated, 0 removed, 2 unchanged" in sd.journal(UNIT), 10,
                "the reload in the journal")
    assert query(sd, "SELECT name FROM jobs ORDER BY name") == [("added",), ("slow",), ("tick",)]


WRITE_ACCESS = """\
[Service]
ReadWritePaths=/var/lib/sensor-data
"""


@needs_systemd
@pytest.mark.timeout(90, func_only=True)
def test_jobs_write_outside_the_state_directory_only_with_the_documented_drop_in(binary_dir):
    config = CONFIG + ('\n[[jobs]]\nname = "store"\ncommand = ["sh", "-c", '
                       '"echo reading >> /var/lib/sensor-data/readings"]\nevery = "300ms"\n'
                       'max_attempts = 1\n')
    with BootedSystemd({UNIT: UNIT_FILE, f"{UNIT}.d/test-timings.conf": TEST_TIMINGS},
                       files={"/etc/edgeworker/edgeworker.toml": config,
                              "/var/lib/sensor-data/readings": ""},
                       binds={"/usr/local/bin": binary_dir}, users=["edgeworker"]) as sd:
        sd.run("chown", "-R", "edgeworker:edgeworker", "/var/lib/sensor-data", check=True)
        start(sd)
        [(_, error)] = sd.wait_for(lambda: query(
            sd, "SELECT tasks.id, output FROM tasks JOIN jobs ON jobs.id = tasks.job_id "
                "WHERE jobs.name = 'store' AND status = 'failed' LIMIT 1"), 20, "a failed store")
        assert "Read-only file system" in error
        assert sd.path("/var/lib/sensor-data/readings").read_text() == ""

        # What docs/deploy.md tells the operator to do: a drop-in, then a restart.
        (sd.staging / "units" / f"{UNIT}.d" / "write-access.conf").write_text(WRITE_ACCESS)
        sd.systemctl("daemon-reload", check=True)
        sd.systemctl("restart", UNIT, check=True, timeout=30)
        sd.wait_for(lambda: sd.path("/var/lib/sensor-data/readings").read_text().count("\n") >= 2,
                    20, "two readings stored")


ESCAPE = '''[worker]
database = "/var/lib/edgeworker/edgeworker.db"

[[jobs]]
name = "escape"
command = ["sh", "-c", "PREFIX setsid sh -c 'echo $$ > /var/lib/edgeworker/escapee; \
exec sleep 300' & until [ -s /var/lib/edgeworker/escapee ]; do sleep 0.01; done"]
every = "365d"
'''

DELEGATE = """\
[Service]
Delegate=yes
ProtectControlGroups=no
"""


@needs_systemd
@pytest.mark.timeout(90, func_only=True)
@pytest.mark.parametrize("delegated", [False, True], ids=["shipped", "delegated"])
def test_a_grandchild_that_leaves_its_group_ends_with_its_run(binary_dir, delegated):
    """As shipped, the worker finds a setsid'd grandchild by its environment (ProtectProc= hides
    only other users' processes); with the drop-in of docs/deploy.md each run gets a cgroup,
    which also ends one that cleared its environment."""
    units = {UNIT: UNIT_FILE, f"{UNIT}.d/test-timings.conf": TEST_TIMINGS}
    if delegated:
        units[f"{UNIT}.d/delegate.conf"] = DELEGATE
    config = ESCAPE.replace("PREFIX", "env -i" if delegated else "")
    with BootedSystemd(units, files={"/etc/edgeworker/edgeworker.toml": config},
                       binds={"/usr/local/bin": binary_dir}, users=["edgeworker"]) as sd:
        start(sd)
        sd.run("runuser", "-u", "edgeworker", "--", "/usr/local/bin/edgeworker", "--config",
               "/etc/edgeworker/edgeworker.toml", "jobs", "run", "escape", check=True)
        sd.wait_for(lambda: query(sd, "SELECT 1 FROM tasks WHERE origin = 'manual' AND "
                                      "status = 'succeeded'"), 20, "the run to succeed")
        pid = int(sd.path("/var/lib/edgeworker/escapee").read_text())
        sd.wait_for(lambda: sd.run("sh", "-c", f"! test -d /proc/{pid} || grep -q "
                                   f"'^State:.Z' /proc/{pid}/status").returncode == 0,
                    10, f"the escaped grandchild (pid {pid}) to end")
        journal = sd.journal(UNIT)
        assert ("commands run in a cgroup each" in journal) == delegated, journal
        assert "records in /run/edgeworker/" in journal


@needs_systemd
@pytest.mark.timeout(120, func_only=True)
def test_the_status_page_unit_serves_the_workers_database_and_cannot_write_it(binary_dir):
    """edgeworker-web.service as shipped (a drop-in moves it to a free port: the namespaces share
    the host's network), beside the worker: it serves, it is sandboxed, the database and the lock
    are read-only in its mounts, and it still serves once the worker stopped (removing -wal)."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    [exec_start] = unit_settings(WEB_UNIT_FILE)["Service.ExecStart"]
    listen = f"[Service]\nExecStart=\nExecStart={exec_start} --listen 127.0.0.1:{port}\n"
    web = "edgeworker-web.service"
    with BootedSystemd({UNIT: UNIT_FILE, web: WEB_UNIT_FILE, f"{web}.d/test-port.conf": listen},
                       files={"/etc/edgeworker/edgeworker.toml": CONFIG},
                       binds={"/usr/local/bin": binary_dir}, users=["edgeworker"]) as sd:
        worker_main = start(sd)
        sd.wait_for(lambda: succeeded(sd, "tick") >= 2, 30, "2 runs of tick")
        assert sd.systemctl("start", web).returncode == 0, sd.journal(web)
        sd.wait_for_state(web, "active")

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read().decode()
            except OSError:
                return 0, ""

        status, body = sd.wait_for(lambda: (got := get("/?format=json"))[0] and got, 30,
                                   "the page to answer")
        overview = json.loads(body)
        assert status == 200 and overview["worker"]["running"] is True, body
        assert get("/jobs")[0] == 200 and "tick" in get("/jobs")[1]

        host = sd.host_pid(sd.main_pid(web))
        [server] = Path(f"/proc/{host}/task/{host}/children").read_text().split() or [host]
        status_file = dict(line.split(":", 1) for line in
                           Path(f"/proc/{server}/status").read_text().splitlines())
        uid = int(sd.run("id", "-u", "edgeworker").stdout)
        assert int(status_file["Uid"].split()[0]) == uid
        assert status_file["CapEff"].strip() == "0000000000000000"
        assert (status_file["NoNewPrivs"].strip(), status_file["Seccomp"].strip()) == ("1", "2")
        mounts = Path(f"/proc/{server}/mountinfo").read_text().splitlines()
        for path in (DB, f"{DB}.lock"):
            [mount] = [m for m in mounts if m.split()[4] == path]
            assert "ro" in mount.split()[5].split(","), mount
        tick_runs = succeeded(sd, "tick")
        sd.wait_for(lambda: succeeded(sd, "tick") > tick_runs + 2, 20, "the worker going on")
        assert (sd.main_pid(UNIT), sd.prop(UNIT, "NRestarts")) == (worker_main, "0")

        sd.systemctl("stop", UNIT, check=True, timeout=30)
        status, body = get("/?format=json")
        assert status == 200, sd.journal(web)
        assert json.loads(body)["worker"]["running"] is False
        assert "Traceback" not in sd.journal(web)
