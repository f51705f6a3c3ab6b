"""`python -m bench --quick`: the benchmark scripts still run end to end and print one table.

Tiny sizes, a few seconds; no figure is checked against a target (no timing is asserted in the
test suite: the full `make bench` is for that).
"""

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from edgeworker.config import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"throughput", "scheduled", "latency", "recovery", "idle", "startup", "catchup", "web",
           "installed"}  # and "pg", on its own below: it starts a PostgreSQL server

pytestmark = pytest.mark.timeout(120)


def test_the_benchmarks_run_and_print_one_table(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--output", str(output),
                             "--only", ",".join(sorted(SCRIPTS))],
                            cwd=REPO, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(output.read_text())
    assert set(results["scripts"]) == SCRIPTS
    figures = [f for script in results["scripts"].values() for f in script["figures"]]
    # 14: the installed build's, only where it was built (make bench builds it)
    assert {f["number"] for f in figures} - {"14"} == {"1", "2", "3", "4", "5", "6", "7", "9",
                                                      "11"}
    for figure in figures:
        value = figure["value"]
        assert value["low"] <= value["median"] <= value["high"], figure
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["#", "measure"]
    assert len([line for line in lines if line[:1].isdigit()]) == len(figures)


def test_the_postgresql_benchmarks_run_beside_postgreshuey(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "pg",
                             "--output", str(output)],
                            cwd=REPO, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("pg: skipped: ")]
    if skipped:  # no PostgreSQL here (tests/pgserver.py says why), or no psycopg 3
        pytest.skip(skipped[0])
    settings = {f.name for f in fields(WorkerSettings)}
    figures = json.loads(output.read_text())["scripts"]["pg"]["figures"]
    what = [f["what"] for f in figures]
    counts = [1, 2] if "name" in settings else [1]
    for count in counts:  # each beside huey's figure, with their ratio
        workers = f"{count} worker{'s' if count > 1 else ''}"
        drained = [f for f in figures if f["what"].startswith(f"PostgreSQL: no-op tasks/s, "
                                                              f"{workers} ")]
        assert len(drained) == 1 and drained[0]["baseline_name"] == "huey", what
        assert drained[0]["value"]["median"] > 0 and drained[0]["ratio"]["median"] > 0
    assert len([w for w in what if w.startswith("PostgreSQL idle, 1 worker,")]) == 3, what
    assert any("lease" in w for w in what) == ("lease" in settings), what
    for figure in figures:
        assert figure["number"] == "13"
        value = figure["value"]
        assert value["low"] <= value["median"] <= value["high"], figure
    lines = result.stdout.splitlines()
    assert len([line for line in lines if line.startswith("13 ")]) == len(figures)


def test_whether_the_postgresql_benchmarks_can_run_does_not_depend_on_what_ran_before():
    # `make bench` runs pg.py last, after scripts that imported edgeworker, which keeps both
    # PostgreSQL drivers out of sys.modules until it opens a database
    code = "from bench import pg; print(pg.unavailable())"
    answers = [subprocess.run([sys.executable, "-c", before + code], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
               for before in ("", "import edgeworker.cli; ")]
    assert [(r.returncode, r.stderr) for r in answers] == [(0, "")] * 2
    assert answers[0].stdout == answers[1].stdout


def test_an_unknown_script_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "bench", "--only", "nonsense"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "unknown script(s): nonsense" in result.stderr
