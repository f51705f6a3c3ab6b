"""The huey releases `make test-huey` tests: the oldest that pyproject.toml allows (its `>=`
floor) and the newest within its range that the package index has, as pip's resolver picks them.

Prints the two versions on one line. Says on stderr when the index has a huey newer than the
range allows: that one is untested, and the range stays closed to it until it is tried here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


class Error(Exception):
    pass


def requirement(path: Path = PYPROJECT) -> Requirement:
    with path.open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    for line in dependencies:
        req = Requirement(line)
        if req.name == "huey":
            return req
    raise Error(f"{path}: no huey in [project] dependencies")


def floor(req: Requirement) -> str:
    floors = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(floors) != 1:
        raise Error(f"pyproject.toml: huey needs one >= floor, not {str(req.specifier)!r}")
    return floors[0]


def resolve(spec: str) -> str:
    """The huey release pip would install for `spec`, from the index."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
         "--ignore-installed", "--report", "-", spec],
        capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise Error(f"pip cannot resolve {spec}: {last}")
    return json.loads(done.stdout)["install"][0]["metadata"]["version"]


def main() -> int:
    try:
        req = requirement()
        oldest = resolve(f"huey=={floor(req)}")
        newest = resolve(f"huey{req.specifier}")
        latest = resolve("huey")
    except Error as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if latest != newest:
        print(f"note: huey {latest} is out, outside {req}: untested here", file=sys.stderr)
    print(oldest, newest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
