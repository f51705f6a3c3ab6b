"""Clock steps under a real `edgeworker run`: libfaketime moves the wall clock while the worker
runs (monotonic time stays real, as under NTP). Each test bounds what must happen in real time,
generously: none measures a timing."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta

import pytest
from faketime import FakeTime, needs_faketime
from workerproc import WorkerProcess, wait_for

pytestmark = [needs_faketime, pytest.mark.timeout(120)]

START = datetime(2026, 12, 2, 10, 0, 40, tzinfo=UTC)
WORKER = '[worker]\ndatabase = "ew.db"\nwait_for_clock_sync = false\n'
JOBS = WORKER + '''
[[jobs]]
name = "tick"
command = ["true"]
every = "1s"

[[jobs]]
name = "minutely"
command = ["true"]
cron = "* * * * *"
timezone = "UTC"
catch_up = "once"
'''


def succeeded(worker: WorkerProcess, job: str) -> list[dict]:
    return worker.tasks("job = ? AND status = 'succeeded'", (job,))


def more_runs(worker: WorkerProcess, job: str, than: int, count: int, timeout: float) -> None:
    wait_for(lambda: len(succeeded(worker, job)) >= than + count, timeout,
             what=f"{count} more run(s) of {job}", log=worker.log)


def times_in_order(worker: WorkerProcess) -> None:
    for task in worker.tasks():
        if task["finished_at"] and task["started_at"]:
            assert task["finished_at"] >= task["started_at"], task


@pytest.mark.parametrize(("back", "synchronised"), [(3600, False), (86400, True)],
                         ids=["1h-unsynchronised", "1d-synchronised"])
def test_a_step_back_stops_no_job(tmp_path, back, synchronised):
    fake = FakeTime(tmp_path, START)
    flag = tmp_path / "synchronized"
    if synchronised:
        flag.touch()
    with WorkerProcess(tmp_path, JOBS) as worker:
        worker.start(env=fake.env(flag)).wait_running()
        worker.wait_tasks("job = 'tick' AND status = 'succeeded'", count=2)
        newest = max(t["created_at"] for t in worker.tasks())
        last_id = max(t["id"] for t in worker.tasks())
        fake.set(fake.now() - timedelta(seconds=back))
        wait_for(lambda: "the clock stepped -" in worker.log(), 10, what="the step logged",
                 log=worker.log)
        ticks, minutely = len(succeeded(worker, "tick")), len(succeeded(worker, "minutely"))
        more_runs(worker, "tick", ticks, 3, timeout=15)
        # the next minute comes within 20 s whichever time the worker goes by
        more_runs(worker, "minutely", minutely, 1, timeout=30)
        after = worker.tasks("id > ?", (last_id,))
        if synchronised:
            assert "taking it as a correction" not in worker.log()
            assert "re-planned" in worker.log()
        else:
            assert "does not follow it back" in worker.log()
            assert min(t["created_at"] for t in after) >= newest  # nothing dated earlier
        assert worker.stop() == 0
    times_in_order(worker)


def test_a_step_forward_of_three_months(tmp_path):
    fake = FakeTime(tmp_path, START)
    config = JOBS.replace('every = "1s"', 'every = "2s"').replace(
        "wait_for_clock_sync = false", 'wait_for_clock_sync = false\nretention = "7d"')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'tick' AND status = 'succeeded'", count=2)
        minutely = len(succeeded(worker, "minutely"))
        fake.set(fake.now() + timedelta(days=90))
        wait_for(lambda: "the clock stepped +" in worker.log(), 10, what="the step logged",
                 log=worker.log)
        ticks = len(succeeded(worker, "tick"))
        more_runs(worker, "tick", ticks, 2, timeout=15)
        # catch_up = "once": the slots the step skipped run once, at once, not 130,000 times
        more_runs(worker, "minutely", minutely, 1, timeout=15)
        assert len(succeeded(worker, "minutely")) <= minutely + 2
        assert worker.stop() == 0
        before = len(worker.tasks("finished_at < ?", ("2027",)))
        # a restart prunes with retention 7d: the runs from before the step are not 90 days old
        fake.carry_on()
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'tick' AND status = 'succeeded'", count=ticks + 3)
        assert len(worker.tasks("finished_at < ?", ("2027",))) == before
        assert worker.stop() == 0
    times_in_order(worker)


@pytest.mark.parametrize("boot_at", [datetime(1970, 1, 1, 0, 0, 10, tzinfo=UTC),
                                     START - timedelta(hours=1)],
                         ids=["1970", "1h-behind"])
def test_a_reboot_with_the_clock_behind(tmp_path, boot_at):
    fake = FakeTime(tmp_path, START)
    with WorkerProcess(tmp_path, JOBS) as worker:
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'tick' AND status = 'succeeded'", count=2)
        assert worker.stop() == 0
        newest = max(t["created_at"] for t in worker.tasks())
        count = len(worker.tasks())
        fake.set(boot_at)  # the box reboots without a real-time clock, and with no network
        worker.start(env=fake.env()).wait_running()
        ticks = len(succeeded(worker, "tick"))
        more_runs(worker, "tick", ticks, 3, timeout=15)
        assert "does not follow it back" in worker.log()
        status = json.loads(worker.cli("status", "--json").stdout)["clock"]
        assert status["last_step"]["moved"] == 0
        # no run dated before the newest time recorded: no 1970 slots, no ancient history
        later = worker.tasks("id > ?", (count,))
        assert min(t["created_at"] for t in later) >= newest
        assert min(t["scheduled_for"] for t in later) >= newest[:15]
        # then NTP sets the clock: a day after the last run
        minutely = len(succeeded(worker, "minutely"))
        fake.set(START + timedelta(days=1))
        wait_for(lambda: "the clock stepped +" in worker.log(), 10, what="the step logged",
                 log=worker.log)
        ticks = len(succeeded(worker, "tick"))
        more_runs(worker, "tick", ticks, 2, timeout=15)
        more_runs(worker, "minutely", minutely, 1, timeout=15)  # catch-up once, at once
        assert len(succeeded(worker, "minutely")) <= minutely + 2
        assert worker.stop() == 0
    times_in_order(worker)


def test_cron_jobs_wait_for_a_synchronised_clock(tmp_path):
    fake = FakeTime(tmp_path, START)
    flag = tmp_path / "synchronized"
    config = JOBS.replace("wait_for_clock_sync = false", "wait_for_clock_sync = true")
    with WorkerProcess(tmp_path, config) as worker:
        worker.start(env=fake.env(flag)).wait_running()
        assert "cron jobs (1 waiting) wait for it" in worker.log()
        worker.wait_tasks("job = 'tick' AND status = 'succeeded'", count=2)  # interval jobs run
        wait_for(lambda: fake.now() > START.replace(second=0) + timedelta(minutes=1, seconds=3),
                 30, what="the minute to pass")
        assert succeeded(worker, "minutely") == []  # its 10:01:00 slot passed, held
        status = json.loads(worker.cli("status", "--json").stdout)["clock"]
        assert status["cron_held_since"] is not None
        flag.touch()  # timesyncd reached a server
        worker.wait_tasks("job = 'minutely' AND status = 'succeeded'", timeout=15)
        assert "the clock is synchronised: 1 held cron run(s) queued" in worker.log()
        assert worker.stop() == 0


def test_cron_jobs_wait_no_longer_than_the_bound(tmp_path):
    fake = FakeTime(tmp_path, START.replace(second=58))
    config = JOBS.replace("wait_for_clock_sync = false",
                          'wait_for_clock_sync = true\nclock_sync_timeout = "3s"')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'minutely' AND status = 'succeeded'", timeout=20)
        assert "still not synchronised after" in worker.log()
        assert worker.stop() == 0


def test_the_watchdog_is_fed_across_a_forward_step(tmp_path):
    from test_notify import NotifySocket

    listener = NotifySocket(tmp_path / "notify.sock")
    fake = FakeTime(tmp_path, START)
    config = WORKER + '\n[[jobs]]\nname = "hourly"\ncommand = ["true"]\nevery = "1h"\n'
    try:
        with WorkerProcess(tmp_path, config) as worker:
            worker.start(env={**fake.env(), "NOTIFY_SOCKET": str(listener.path),
                              "WATCHDOG_USEC": "1000000"}).wait_running()
            listener.wait_for("WATCHDOG=1", count=2, log=worker.log)
            fake.set(fake.now() + timedelta(days=1))
            wait_for(lambda: "the clock stepped +" in worker.log(), 10, what="the step logged",
                     log=worker.log)
            pings = len([m for m in listener.messages if m[1] == "WATCHDOG=1"])
            listener.wait_for("WATCHDOG=1", count=pings + 6, log=worker.log)
            assert "not pinging the watchdog" not in worker.log()
            worker.send(signal.SIGTERM)
            assert worker.proc.wait(30) == 0
    finally:
        listener.close()
