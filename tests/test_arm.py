"""The ARM one-file binaries (`make build-worker-arm64`, `make build-worker-armv7`), run here under
qemu the way a Raspberry Pi runs them: copied into a directory with no Python, migrated, left to
run an interval job and a `jobs run`, stopped with SIGTERM.

Marked `arm`: `make test` leaves them out, `make test-arm` (and CI after `make test`) runs them. The
first run builds a Debian root per architecture (cached outside the repo, see
packaging/build-in-root); they skip, saying why, only where binfmt_misc cannot run ARM programs.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_binary import Box, children
from workerproc import wait_for

from edgeworker import __version__
from edgeworker.migrate import discover

REPO = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 1800  # a cold build: the Debian root, the build venv, PyInstaller under qemu
ARCHES = {"arm64": ("arm64", "ARM aarch64"), "armv7": ("armhf", "ARM, EABI5")}

pytestmark = pytest.mark.arm


@functools.cache
def built(arch: str) -> Path:
    binfmt = subprocess.run([REPO / "packaging" / "binfmt", ARCHES[arch][0]], capture_output=True,
                            text=True)
    if binfmt.returncode == 77:
        pytest.skip(binfmt.stderr.strip())
    assert binfmt.returncode == 0, binfmt.stderr
    result = subprocess.run(["make", "-s", f"build-worker-{arch}"], cwd=REPO, capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"make build-worker-{arch} failed:\n{result.stdout[-3000:]}"
                    f"{result.stderr[-3000:]}")
    binary = REPO / "dist" / f"edgeworker-linux-{arch}"
    assert binary.is_file(), f"make build-worker-{arch} made no {binary}"
    return binary


@functools.cache
def debian_root(arch: str) -> str:
    """The build's Debian root: qemu takes the binary's libc and libz from it, as from a Pi's."""
    return subprocess.run([REPO / "packaging" / "build-in-root", ARCHES[arch][0], "root"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(params=sorted(ARCHES))
def box(request, tmp_path):
    box = Box(tmp_path, built(request.param))
    box.arch = request.param
    box.env["QEMU_LD_PREFIX"] = debian_root(request.param)
    if request.param == "armv7":
        # qemu-user passes a 32-bit program's getdents64 to the 64-bit kernel, whose ext4 answers
        # with 64-bit offsets that the bootloader's 32-bit readdir() cannot hold (EOVERFLOW): it
        # could not remove what it unpacked. A real ARMv7 box's kernel answers 32-bit programs
        # in 32 bits; tmpfs does for everyone.
        box.tmp = Path(tempfile.mkdtemp(prefix="edgeworker-armv7-", dir="/dev/shm"))
        box.env["TMPDIR"] = str(box.tmp)
    yield box
    box.close()
    if request.param == "armv7":
        shutil.rmtree(box.tmp, ignore_errors=True)


@pytest.mark.timeout(60, func_only=True)
def test_the_binary_is_one_stripped_arm_file(box):
    described = subprocess.run(["file", "-b", box.exe], capture_output=True, text=True).stdout
    assert ARCHES[box.arch][1] in described, described
    assert "not stripped" not in described, described
    version = box.run("--version")
    assert (version.returncode, version.stdout) == (0, f"edgeworker, version {__version__}\n")


@pytest.mark.timeout(240, func_only=True)
def test_migrate_run_jobs_run_and_sigterm(box):
    box.write_config('[[jobs]]\nname = "tick"\ncommand = "sh -c \'echo tick $EDGEWORKER_TASK_ID\'"'
                     '\nevery = "1s"\n\n[[jobs]]\nname = "once"\ncommand = "echo by hand"\n'
                     'every = "24h"\n')
    migrated = box.run("--config", str(box.config), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[-1] == f"applied {discover()[-1].label}"

    bootloader = box.start()
    wait_for(lambda: "edgeworker running" in box.read_log(), 120, log=box.read_log)
    queued = box.run("--config", str(box.config), "jobs", "run", "once")
    assert queued.returncode == 0, queued.stderr
    ticks = box.wait_tasks("jobs.name = 'tick' AND status = 'succeeded'", count=2, timeout=120)
    assert [output for *_, output in ticks[:2]] == [f"tick {ticks[0][0]}\n",
                                                    f"tick {ticks[1][0]}\n"]
    [by_hand] = box.wait_tasks("tasks.origin = 'manual' AND status = 'succeeded'", timeout=120)
    assert by_hand[1:] == ("once", "succeeded", "by hand\n")
    [worker] = children(bootloader.pid)
    assert box.stop() == 0
    assert not Path(f"/proc/{worker}").exists()
    log = box.read_log()
    assert "received SIGTERM: stopping" in log
    assert log.rstrip().endswith("INFO edgeworker stopped")
    assert "Traceback" not in log
    assert list(box.tmp.iterdir()) == []
