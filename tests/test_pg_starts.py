"""Workers starting at once on one PostgreSQL database: each start's writes of shared rows (the
config's jobs, the clock's row) wait for the other's instead of failing on a unique key."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from workerproc import wait_for

from edgeworker.config import parse_config
from edgeworker.jobs import sync_jobs
from edgeworker.ledger import Ledger
from edgeworker.models import ClockState, Job, Task

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CONFIG = parse_config('[[jobs]]\nname = "tick"\ncommand = "true"\nevery = "1m"\n'
                      '[[jobs]]\nname = "tock"\ncommand = "true"\nevery = "1h"\n')
WAITING = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
           "AND datname = current_database()")


def at_once(database, first: Callable[[], object], second: Callable[[], object]) -> list:
    """`first` in a transaction that commits only once `second`, in another thread, waits for
    it on a lock; returns what each returned (an exception is returned too)."""
    done, commit = threading.Event(), threading.Event()
    results: list = [None, None]

    def run(index: int, call, hold: bool) -> None:
        try:
            with database.atomic():  # a worker's start, not committed yet
                results[index] = call()
                if hold:
                    done.set()
                    commit.wait(30)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[index] = exc
        finally:
            done.set()
            database.close()  # this thread's connection

    threads = [threading.Thread(target=run, args=(0, first, True)),
               threading.Thread(target=run, args=(1, second, False))]
    threads[0].start()
    done.wait(30)
    threads[1].start()
    wait_for(lambda: database.execute_sql(WAITING).fetchone()[0] == 1, 10,
             what="the second start to wait for the first")
    commit.set()
    for thread in threads:
        thread.join(30)
    return results


def test_two_starts_syncing_the_same_new_jobs_add_them_once(pg_database):
    """The second sync waits for the first (it would otherwise insert the same names, then fail
    on their unique key when the first commits) and finds them unchanged."""
    first, second = at_once(pg_database,
                            lambda: sync_jobs(Ledger(pg_database, "w1"), CONFIG.jobs, NOW),
                            lambda: sync_jobs(Ledger(pg_database, "w2"), CONFIG.jobs, NOW))
    assert (first.added, second.unchanged) == (["tick", "tock"], ["tick", "tock"])
    assert sorted(Job.select(Job.name).tuples()) == [("tick",), ("tock",)]
    assert Task.select().where(Task.status == "created").count() == 2  # one pending run each


def test_two_starts_saving_the_clock_on_a_new_database_make_its_row_once(pg_database):
    later = NOW + timedelta(seconds=5)
    results = at_once(pg_database, lambda: Ledger(pg_database, "w1").save_clock(NOW),
                      lambda: Ledger(pg_database, "w2").save_clock(later))
    assert results == [None, None]
    assert ClockState.get_by_id(1).high_water == later  # the newest time, never lower
