"""`python -m bench [--quick] [--only NAME,...] [--markdown] [--output PATH]`

Runs the benchmark scripts, prints one table and writes every figure with its raw samples to
`bench/results.json` (git-ignored). `--quick` uses tiny sizes: it checks that the scripts work,
and its figures mean nothing (so it writes no file unless given `--output`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import time
from importlib import import_module
from importlib.metadata import version
from pathlib import Path

from bench.common import REPO, render_table, scratch_dir

SCRIPTS = ("throughput", "scheduled", "latency", "recovery", "idle", "startup", "catchup", "web",
           "installed", "pg")


def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    probe = scratch_dir("probe")
    filesystem = "?"
    with open("/proc/self/mounts") as handle:  # the longest mount point above the scratch dir
        mounts = [line.split() for line in handle]
    best = max((m for m in mounts if str(probe).startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]), default=None)
    if best:
        filesystem = f"{best[2]} on {best[1]}"
    probe.rmdir()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "huey": version("huey"), "peewee": version("peewee"),
            "edgeworker": version("edgeworker"), "scratch_fs": filesystem,
            "loadavg_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[2])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--only", default=",".join(SCRIPTS),
                        help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--output", type=Path,
                        help="where to write the JSON [default: bench/results.json; none with "
                             "--quick]")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCRIPTS)
    if unknown:
        parser.error(f"unknown script(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    results = {"machine": machine(), "quick": args.quick, "scripts": {}}
    if results["machine"]["scratch_fs"].startswith("tmpfs"):
        print("warning: the scratch directory is on tmpfs: fsync is free and no bytes count as "
              "written; set BENCH_DIR to a directory on disk", file=sys.stderr)
    figures, notes = [], []
    for name in chosen:
        print(f"[{time.monotonic() - started:5.0f}s] {name} ...", file=sys.stderr, flush=True)
        found, raw = import_module(f"bench.{name}").measure(quick=args.quick)
        figures += found
        results["scripts"][name] = {"figures": [f.as_dict() for f in found], "raw": raw}
        if "skipped" in raw:  # what this machine lacks for the script, in one line
            notes.append(f"{name}: skipped: {raw['skipped']}")
        notes += raw.get("notes", [])
    results["seconds"] = round(time.monotonic() - started, 1)

    print(render_table(figures, markdown=args.markdown))
    if notes:
        print("\n" + "\n".join(notes))
    m = results["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
          f"SQLite {m['sqlite']}, huey {m['huey']}, peewee {m['peewee']}; scratch files on "
          f"{m['scratch_fs']}; {results['seconds']:.0f} s"
          + (" (--quick: sizes too small to mean anything)" if args.quick else ""))
    output = args.output or (None if args.quick else REPO / "bench" / "results.json")
    if output is not None:
        output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
