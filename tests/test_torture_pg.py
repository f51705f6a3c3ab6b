"""The PostgreSQL kill torture (tests/torture_pg.py): its short version, three workers on one
database of a private server, SIGKILLed at random, and the server restarted once (as a crash);
and a test that its checks do find what they look for. `make torture-pg` runs the long one."""

import pgserver
import pytest
from conftest import require
from torture_pg import NAMES, Figures, private_torture, run_torture

from edgeworker.postgres import driver

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(autouse=True)
def postgresql():
    try:
        driver()  # edgeworker keeps psycopg2 out until asked (edgeworker/__init__.py)
    except ImportError:
        pass
    require(pgserver.unavailable())


def test_ten_events_on_three_workers_lose_nothing_and_run_nothing_twice(tmp_path):
    # `make torture-pg` holds the runs a killed worker held to lease + 5 s (taken within 4 s
    # here); a test on a machine busy with others' gets more room, not a coin toss
    figures, problems = run_torture(tmp_path, events=10, seed=20261202, bound=20.0)
    print(figures.table())
    assert problems == []
    assert (figures.kills, figures.server_restarts) == (9, 1)
    assert (figures.lost_states, figures.double_runs, figures.overlaps, figures.over_bound,
            figures.unresolved, figures.stuck) == (0, 0, 0, 0, 0, 0)
    assert figures.held > 0  # some kills did land inside runs
    assert set(figures.runs_by) == set(NAMES)  # every worker ran some


def test_the_checks_find_a_lost_state_a_double_run_an_untold_rerun_and_more(tmp_path):
    with private_torture(tmp_path, seed=7, workers=1) as torture:
        torture.run(2)  # a kill, the server's restart
        assert torture.problems == []
        finished = next(t for t in torture.seen.values() if t["status"] == "succeeded")
        # (not back to created: a second pending run of the job would break the next-run key)
        torture.reader.query("UPDATE tasks SET status = 'failed' WHERE id = %s RETURNING id",
                             (finished["id"],))
        torture.reader.query(  # a recovery of a run that was never recovered
            "INSERT INTO recoveries (started_at, duration_ms, worker, recovered, failed, "
            "cancelled, scheduled, ended, recovered_from, task_ids) VALUES (%s, 1, 'w2', 1, 0, "
            "0, 0, 0, 'w1', %s) RETURNING id",
            (finished["finished_at"], str(finished["id"])))
        ledger = torture.ledgers / "long.ledger"
        task, attempt, _, life, _, start = ledger.read_text().split("\n")[0].split()
        with ledger.open("a") as out:  # the first run again, inside the first; an attempt 99
            out.write(f"{task} {attempt} 1 {life} start {int(start) + 1}\n"
                      f"{task} {attempt} 1 {life} end {int(start) + 2}\n"
                      f"{task} 99 0 {life} start {int(start) + 3}\n")
        torture.figures = Figures()
        figures = torture.check()
    # lost: as the snapshots saw it, and as the worker logged it
    assert (figures.lost_states, figures.double_runs, figures.not_told) == (2, 1, 1)
    assert figures.overlaps >= 1 and figures.over_attempts == 1
    assert figures.recovered_twice == 1
    assert f"task {finished['id']} finished succeeded at attempt" in "\n".join(torture.problems)
