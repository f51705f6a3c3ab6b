"""Power cuts: the real worker on a file system that loses every write not made durable.

`make test` runs a few cuts here; `make torture` runs at least 100."""

import pytest
from conftest import require
from powercutfs import fuse_unavailable_reason
from torture import run_powercuts


@pytest.fixture(autouse=True)
def fuse_available():
    require(fuse_unavailable_reason())


@pytest.mark.timeout(300)
def test_power_cuts_lose_no_committed_state(tmp_path):
    figures = run_powercuts(tmp_path, cuts=6, seed=1129)
    print(figures.line())
    assert figures.cuts == 6
    assert (figures.lost_states, figures.stuck, figures.overlaps, figures.orphans) == (0, 0, 0, 0)


@pytest.mark.timeout(300)
def test_normal_durability_may_rerun_but_never_corrupts_or_sticks(tmp_path):
    """synchronous=NORMAL may lose the last commits at a cut (tasks run again: at-least-once),
    but the database opens, passes integrity_check, and no task is stuck."""
    figures = run_powercuts(tmp_path, cuts=6, durability="normal", seed=2911)
    print(figures.line())
    assert (figures.stuck, figures.overlaps, figures.orphans) == (0, 0, 0)
