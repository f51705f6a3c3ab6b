"""The installed build (`make install`: the unpacked dist/unpacked/edgeworker) beside the
one-file binary (dist/edgeworker): what a CLI call and a service start write, how fast `--help`
starts, the idle worker's resident memory.

Bytes written are those of the finished processes (`ru_oublock` of the reaped children, 512-byte
units: what reached the storage layer, the binary's unpacking included), with TMPDIR in the
scratch directory, on disk. A service start is what systemd runs: `migrate`, then `run` until
READY=1, then SIGTERM. `make bench` builds both; `--quick` measures only what is built.

The ARM builds (`make build-worker-arm64 build-worker-armv7`, in build/release-ARCH) are measured
the same way where they are built, under qemu-user with their Debian root as QEMU_LD_PREFIX, as
tests/test_arm.py runs them: bytes written are the build's own; `--help` is set beside the root's
`python3 -c pass` under the same emulation; RSS is the qemu process's, the emulator and its
translated code included, so it says nothing about a Pi's and has no target. `--quick` (the
smoke test) leaves them out.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO, Figure, NotifySocket, Stat, rss_kib, scratch_dir

INSTALLED = REPO / "dist" / "unpacked" / "edgeworker" / "edgeworker"
ONE_FILE = REPO / "dist" / "edgeworker"
JOB = '[[jobs]]\nname = "daily"\ncommand = "true"\nevery = "24h"\n'
ARM = {"arm64": "arm64", "armv7": "armhf"}  # the binaries' names, Debian's architectures


def written_by(run) -> float:
    """Bytes the children reaped during run() wrote."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
    run()
    return (resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock - before) * 512


class Box:
    """A directory with a migrated database and a config, TMPDIR inside it."""

    def __init__(self, program: Path, env: dict[str, str]):
        self.dir = scratch_dir("installed")
        (self.dir / "tmp").mkdir()
        self.config = self.dir / "ew.toml"
        self.config.write_text(f'[worker]\ndatabase = "ew.db"\n{JOB}')
        self.env = {**os.environ, **env, "TMPDIR": str(self.dir / "tmp")}
        self.program = program
        self.cli("migrate")

    def cli(self, *args: str) -> None:
        subprocess.run([self.program, "--config", str(self.config), *args], cwd=self.dir,
                       env=self.env, stdout=subprocess.DEVNULL, check=True)

    def service_start(self, settle: float = 0.0) -> float:
        """migrate, run until READY=1 (+ settle seconds), SIGTERM; the worker's idle RSS."""
        self.cli("migrate")
        notify = NotifySocket(self.dir)
        try:
            proc = subprocess.Popen([self.program, "--config", str(self.config), "run"],
                                    cwd=self.dir, env={**self.env, **notify.env},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                notify.wait_ready()
                time.sleep(settle)
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
                worker = int(children.split()[0]) if children.split() else proc.pid
                rss = rss_kib(worker) / 1024
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            notify.close()
            (self.dir / "notify.sock").unlink(missing_ok=True)
        return rss

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(argv: list, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env=None if env is None else {**os.environ, **env})
    return (time.perf_counter() - started) * 1000


@dataclass
class Platform:
    """The builds of one architecture: the host's, or an ARM one's under qemu."""

    label: str  # "" for the host's, else "arm64 under qemu: "
    builds: dict[str, Path]  # "installed" and "one-file", those that exist
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable  # the baseline of --help: its `python3 -c pass`


def platforms(quick: bool) -> list[Platform]:
    found = [Platform("", {name: path for name, path in (("installed", INSTALLED),
                                                          ("one-file", ONE_FILE))
                           if path.exists()})]
    for name, arch in {} if quick else ARM.items():
        out = REPO / "build" / f"release-{arch}"
        if not (out / "edgeworker" / "edgeworker").exists():
            continue
        root = subprocess.run([REPO / "packaging" / "build-in-root", arch, "root"],
                              capture_output=True, text=True, check=True).stdout.strip()
        builds = {"installed": out / "edgeworker" / "edgeworker",
                  "one-file": out / "edgeworker-onefile"}
        found.append(Platform(f"{name} under qemu: ", builds, {"QEMU_LD_PREFIX": root},
                              f"{root}/usr/bin/python3"))
    return found


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    found = platforms(quick)
    if not found[0].builds:
        if quick:
            return [], {"skipped": "no build: make build-worker-unpacked build-worker"}
        sys.exit(f"Error: {INSTALLED} not found: make build-worker-unpacked")
    repeats, settle = (2, 0.5) if quick else (5, 10.0)
    raw: dict = {}
    figures = []
    for platform in found:
        platform_figures(platform, repeats, settle, raw, figures)
    return figures, raw


def platform_figures(platform: Platform, repeats: int, settle: float, raw: dict,
                     figures: list[Figure]) -> None:
    emulated = bool(platform.env)
    for build, program in platform.builds.items():
        name = f"{platform.label}{build}"
        box = Box(program, platform.env)
        try:
            cli = [written_by(lambda b=box: b.cli("status")) for _ in range(repeats)]
            rss: list[float] = []
            start = [written_by(lambda b=box, r=rss: r.append(b.service_start(settle)))
                     for _ in range(repeats)]
        finally:
            box.close()
        raw[name] = {"cli_bytes": cli, "start_bytes": start, "rss_mib": rss}
        installed = build == "installed"
        cli_kb, start_kb = Stat.of([b / 1000 for b in cli]), Stat.of([b / 1000 for b in start])
        rss_stat = Stat.of(rss)
        figures += [
            Figure("14", f"{name} build: bytes written per CLI call (status)", "kB", cli_kb,
                   target="≤ 1 MB" if installed else "", digits=0,
                   met=cli_kb.high <= 1000 if installed else None),
            Figure("14", f"{name} build: bytes written per service start (migrate + run)", "kB",
                   start_kb, target="≤ 1 MB" if installed else "", digits=0,
                   met=start_kb.high <= 1000 if installed else None),
            Figure("14", f"{name} build: idle worker RSS after {settle:g} s"
                   + (" (the qemu process)" if emulated else ""), "MiB", rss_stat,
                   target="" if emulated else "≤ 24 MB (22.9 MiB)",
                   met=None if emulated else rss_stat.median * 1.048576 <= 24),
        ]
    if "installed" in platform.builds:
        program, python, env = platform.builds["installed"], platform.python, platform.env
        floor, helps = [], []
        timed([python, "-c", "pass"], env), timed([program, "--help"], env)  # page cache
        for _ in range(repeats * 4):
            floor.append(timed([python, "-c", "pass"], env))
            helps.append(timed([program, "--help"], env))
        ratio = Stat.of([h / f for h, f in zip(helps, floor, strict=True)])
        raw[f"{platform.label}help_ms"], raw[f"{platform.label}python_pass_ms"] = helps, floor
        figures.append(Figure("14", f"{platform.label}installed build: --help", "ms",
                              Stat.of(helps), Stat.of(floor), "python -c pass", ratio,
                              "≤ 2× python -c pass", ratio.median <= 2))


if __name__ == "__main__":
    from bench.common import render_table

    print(render_table(measure("--quick" in sys.argv)[0]))
