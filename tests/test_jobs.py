"""The job catalog (edgeworker.jobs): syncing the config's jobs when several workers start on
one PostgreSQL database at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from workerproc import wait_for

from edgeworker.config import parse_config
from edgeworker.jobs import sync_jobs
from edgeworker.ledger import Ledger
from edgeworker.models import Job, Task

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CONFIG = parse_config('[[jobs]]\nname = "tick"\ncommand = "true"\nevery = "1m"\n'
                      '[[jobs]]\nname = "tock"\ncommand = "true"\nevery = "1h"\n')


def test_two_workers_syncing_the_same_new_jobs_at_once_add_them_once(pg_database):
    """The second sync waits for the first (it would otherwise insert the same names, then fail
    on their unique key when the first commits) and finds them unchanged."""
    first_synced, commit = threading.Event(), threading.Event()
    reports, errors = {}, []

    def sync(name: str, hold: bool) -> None:
        try:
            with pg_database.atomic():  # the first worker's start, not yet committed
                reports[name] = sync_jobs(Ledger(pg_database, name), CONFIG.jobs, NOW)
                if hold:
                    first_synced.set()
                    commit.wait(30)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)
        finally:
            first_synced.set()
            pg_database.close()  # this thread's connection

    first = threading.Thread(target=sync, args=("w1", True))
    second = threading.Thread(target=sync, args=("w2", False))
    first.start()
    first_synced.wait(30)
    second.start()
    waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
               "AND datname = current_database()")
    wait_for(lambda: pg_database.execute_sql(waiting).fetchone()[0] == 1, 10,
             what="the second sync to wait for the first")
    commit.set()
    first.join(30)
    second.join(30)
    assert errors == []
    assert (reports["w1"].added, reports["w2"].unchanged) == (["tick", "tock"], ["tick", "tock"])
    assert sorted(Job.select(Job.name).tuples()) == [("tick",), ("tock",)]
    assert Task.select().where(Task.status == "created").count() == 2  # one pending run each
