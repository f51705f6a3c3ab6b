"""Cold start of the command line: `edgeworker --version` and `--help` beside `python -c pass`.

Each is a new process (the console script the venv installs, run by the same interpreter),
timed from spawn to exit; the three commands take turns so that the machine's noise falls on
all of them alike. The ratio is to `python -c pass`, the floor that no Python program goes under.
(Files are in the page cache after the first run: "cold" is the process, not the disk.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.common import Figure, Stat

SCRIPT = str(Path(sys.executable).parent / "edgeworker")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "edgeworker --version": [SCRIPT, "--version"],
    "edgeworker --help": [SCRIPT, "--help"],
}


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def measure(quick: bool = False) -> tuple[list[Figure], dict]:
    repeats = 3 if quick else 20
    for argv in COMMANDS.values():
        timed(argv)  # warm the page cache
    runs: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for i in range(repeats):
        names = list(COMMANDS) if i % 2 == 0 else list(COMMANDS)[::-1]
        for name in names:
            runs[name].append(timed(COMMANDS[name]) * 1000)
    floor = runs["python -c pass"]
    figures = []
    for name in ("edgeworker --version", "edgeworker --help"):
        value = Stat.of(runs[name])
        ratio = Stat.of([a / b for a, b in zip(runs[name], floor, strict=True)])
        target = "≤ 60 ms" if name.endswith("--version") else ""
        figures.append(Figure("6", f"cold start, {name}", "ms", value, Stat.of(floor),
                              "python -c pass", ratio, target,
                              value.median <= 60 if target else None))
    return figures, {"runs_ms": runs}


if __name__ == "__main__":
    from bench.common import render_table

    print(render_table(measure("--quick" in sys.argv)[0]))
