"""The Debian packages (`make deb`): lintian finds no error in any of them, and the amd64 one
goes through an admin's life in a booted systemd 252: install (nothing enabled or started),
enable and start, a job runs, an upgrade to a rebuilt package keeps the database and the edited
config and restarts the worker, remove stops it, purge leaves nothing.

Marked `arm` (with the ARM binaries): `make test-arm` runs them, `make test` does not. In the
namespace /usr is an overlay and /var/lib/dpkg a copy of the host's: the host stays as it was.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from systemd_boot import BootedSystemd, systemd_unavailable_reason

from edgeworker import __version__

REPO = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 2400
UNIT = "edgeworker.service"
CONFIG = "/etc/edgeworker/edgeworker.toml"
DB = "/var/lib/edgeworker/edgeworker.db"
WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"

pytestmark = pytest.mark.arm


@functools.cache
def built_deb(arch: str) -> Path:
    binfmt = subprocess.run([REPO / "packaging" / "binfmt", arch], capture_output=True, text=True)
    if binfmt.returncode == 77:
        pytest.skip(binfmt.stderr.strip())
    deb = f"dist/edgeworker_{__version__}_{arch}.deb"
    result = subprocess.run(["make", "-s", deb], cwd=REPO, capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"make {deb} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return REPO / deb


@pytest.mark.parametrize("arch", ["amd64", "arm64", "armhf"])
@pytest.mark.timeout(300, func_only=True)
def test_lintian_finds_no_error(arch):
    if shutil.which("lintian") is None:
        pytest.skip("lintian not found (apt-get install lintian)")
    deb = built_deb(arch)
    result = subprocess.run(["lintian", "--no-tag-display-limit", deb], capture_output=True,
                            text=True, timeout=240)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], result.stdout


@pytest.mark.timeout(600, func_only=True)
def test_make_dist_sums_the_six_release_files():
    for arch in ("amd64", "arm64", "armhf"):
        built_deb(arch)
    made = subprocess.run(["make", "-s", "dist"], cwd=REPO, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    assert made.returncode == 0, made.stderr[-3000:]
    sums = (REPO / "dist/SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums) == [
        "edgeworker-linux-amd64", "edgeworker-linux-arm64", "edgeworker-linux-armv7",
        *(f"edgeworker_{__version__}_{arch}.deb" for arch in ("amd64", "arm64", "armhf"))]
    checked = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"],
                             cwd=REPO / "dist", capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def sd(tmp_path):
    reason = systemd_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    debs = tmp_path / "debs"
    debs.mkdir()
    first = built_deb("amd64")
    shutil.copy2(first, debs / "first.deb")
    # The upgrade: the same build packaged again as a newer version.
    rebuilt = subprocess.run([REPO / "packaging" / "deb", "amd64",
                              REPO / "build/release-amd64/edgeworker", debs / "rebuilt.deb",
                              f"{__version__}+rebuilt1"], capture_output=True, text=True,
                             timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    dpkg = tmp_path / "dpkg"
    shutil.copytree("/var/lib/dpkg", dpkg, symlinks=True)
    with BootedSystemd({}, binds={"/var/lib/dpkg": dpkg, "/opt/debs": debs},
                       overlays=["/usr"]) as booted:
        # The unit search path is the harness's alone: link the packaged unit into it, as
        # systemd would find it in /lib/systemd/system once dpkg has put it there.
        os.symlink(f"/lib/systemd/system/{UNIT}", booted.staging / "units" / UNIT)
        yield booted


def dpkg(sd: BootedSystemd, *args: str) -> subprocess.CompletedProcess:
    result = sd.run("env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "--force-confold", *args,
                    timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def query(sd: BootedSystemd, sql: str) -> list[tuple]:
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


def as_service_user(sd: BootedSystemd, *args: str) -> subprocess.CompletedProcess:
    return sd.run("runuser", "-u", "edgeworker", "--", "edgeworker", "--config", CONFIG, *args,
                  timeout=60)


@pytest.mark.timeout(300, func_only=True)
def test_install_enable_run_upgrade_remove_purge(sd):
    assert sd.run("id", "edgeworker").returncode != 0
    dpkg(sd, "-i", "/opt/debs/first.deb")
    assert sd.run("id", "-u", "edgeworker").returncode == 0
    assert sd.run("stat", "-c", "%a %U %G", CONFIG).stdout == "640 root edgeworker\n"
    assert sd.run("edgeworker", "--version").stdout == f"edgeworker, version {__version__}\n"
    assert sd.run("readlink", "-f", "/usr/bin/edgeworker").stdout == \
        "/usr/lib/edgeworker/edgeworker\n"
    # Installed, loaded, but neither enabled nor started. (UnitFileState is the harness's
    # "linked-runtime": the unit search path links to the unit; enabling is the wants link.)
    assert sd.show(UNIT, "LoadState", "ActiveState") == {"LoadState": "loaded",
                                                         "ActiveState": "inactive"}
    assert not os.path.lexists(sd.path(WANTS))

    config = sd.path(CONFIG).read_text().replace('every = "1m"', 'every = "1s"')
    sd.path(CONFIG).write_text(config + '\n[[jobs]]\nname = "by-hand"\ncommand = "echo by hand"\n'
                               'every = "24h"\n')
    started = sd.systemctl("enable", "--now", UNIT)
    assert started.returncode == 0, started.stderr + sd.journal(UNIT)
    sd.wait_for_state(UNIT, "active")
    assert os.readlink(sd.path(WANTS)).endswith(f"/lib/systemd/system/{UNIT}")
    first_pid = sd.main_pid(UNIT)
    sd.wait_for(lambda: succeeded(sd, "heartbeat") >= 2, 30, "2 heartbeats")
    assert as_service_user(sd, "jobs", "run", "by-hand").returncode == 0
    sd.wait_for(lambda: succeeded(sd, "by-hand") == 1, 30, "the job run by hand")
    # One process, nothing unpacked: the unpacked build has no bootloader child.
    host = sd.host_pid(first_pid)
    assert Path(f"/proc/{host}/task/{host}/children").read_text().split() == []

    dpkg(sd, "-i", "/opt/debs/rebuilt.deb")
    sd.wait_for_state(UNIT, "active")
    assert sd.main_pid(UNIT) != first_pid  # restarted on the new program
    assert os.path.lexists(sd.path(WANTS))  # still enabled
    assert sd.path(CONFIG).read_text().endswith('name = "by-hand"\ncommand = "echo by hand"\n'
                                                'every = "24h"\n')
    heartbeats = succeeded(sd, "heartbeat")
    sd.wait_for(lambda: succeeded(sd, "heartbeat") > heartbeats, 30, "a heartbeat after upgrade")
    assert succeeded(sd, "by-hand") == 1  # the database was kept
    assert "+rebuilt1" in sd.run("dpkg-query", "-W", "edgeworker").stdout

    dpkg(sd, "--remove", "edgeworker")
    assert sd.prop(UNIT, "ActiveState") in ("inactive", "failed")
    assert not sd.path("/usr/lib/edgeworker").exists()
    assert sd.path(CONFIG).exists() and sd.path(DB).exists()
    journal = sd.journal(UNIT)
    assert "received SIGTERM: stopping" in journal
    assert "INFO edgeworker stopped" in journal

    dpkg(sd, "--purge", "edgeworker")
    for gone in ("/etc/edgeworker", "/var/lib/edgeworker", WANTS):
        assert not os.path.lexists(sd.path(gone)), gone
    assert sd.run("dpkg-query", "-W", "edgeworker").returncode != 0
