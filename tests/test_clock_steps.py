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

START = datetime(2026, 12, 2, 10, 0, 46, tzinfo=UTC)  # 14 s before a minute
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
        # the next minute comes soon whichever time the worker goes by (or the one after)
        more_runs(worker, "minutely", minutely, 1, timeout=75)
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


BERLIN = '''
[[jobs]]
name = "at-half-past-two"
command = ["true"]
cron = "30 2 * * *"
timezone = "Europe/Berlin"

[[jobs]]
name = "every-half-past"
command = ["true"]
cron = "30 * * * *"
timezone = "Europe/Berlin"
'''


def slots(worker: WorkerProcess, job: str) -> list[str]:
    return [t["scheduled_for"] for t in succeeded(worker, job)]


def test_dst_fall_back_runs_a_fixed_time_job_once(tmp_path):
    # Europe/Berlin, 2026-10-25: 02:00-03:00 CEST (UTC+2), then 02:00-03:00 CET (UTC+1) again
    fake = FakeTime(tmp_path, datetime(2026, 10, 25, 0, 29, 56, tzinfo=UTC))  # 02:29:56 CEST
    with WorkerProcess(tmp_path, WORKER + BERLIN) as worker:
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'every-half-past' AND status = 'succeeded'", timeout=20)
        worker.wait_tasks("job = 'at-half-past-two' AND status = 'succeeded'", timeout=20)
        assert worker.stop() == 0
        # an hour later (no worker needed in between): 02:29:56 CET, the repeated hour
        fake.set(datetime(2026, 10, 25, 1, 29, 56, tzinfo=UTC))
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'every-half-past' AND status = 'succeeded'", count=2,
                          timeout=20)
        wait_for(lambda: fake.now() > datetime(2026, 10, 25, 1, 30, 3, tzinfo=UTC), 20,
                 what="02:30:03 CET")
        assert worker.stop() == 0
    # cron runs a wildcard-hour job in both 02:30s, a fixed-time job once
    assert slots(worker, "every-half-past") == ["2026-10-25T00:30:00.000000Z",
                                               "2026-10-25T01:30:00.000000Z"]
    assert slots(worker, "at-half-past-two") == ["2026-10-25T00:30:00.000000Z"]


def test_dst_spring_forward_runs_a_fixed_time_job_after_the_gap(tmp_path):
    # Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that night
    fake = FakeTime(tmp_path, datetime(2026, 3, 29, 0, 59, 56, tzinfo=UTC))  # 01:59:56 CET
    with WorkerProcess(tmp_path, WORKER + BERLIN) as worker:
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'at-half-past-two' AND status = 'succeeded'", timeout=20)
        assert worker.stop() == 0
    # once, right after the gap (03:00 CEST = 01:00 UTC), as cronie does
    assert slots(worker, "at-half-past-two") == ["2026-03-29T01:00:00.000000Z"]
    assert slots(worker, "every-half-past") == []  # its next is 03:30 CEST


def test_a_catch_up_flood_does_not_delay_other_jobs(tmp_path):
    fake = FakeTime(tmp_path, START)
    config = WORKER + '''
[[jobs]]
name = "fast"
command = ["true"]
every = "1s"

[[jobs]]
name = "flood"
command = ["true"]
every = "1s"
catch_up = "all"
catch_up_limit = 100000
'''
    with WorkerProcess(tmp_path, config) as worker:
        worker.start(env=fake.env()).wait_running()
        worker.wait_tasks("job = 'flood' AND status = 'succeeded'", count=2)
        assert worker.stop() == 0
        fake.set(fake.now() + timedelta(days=2))  # down for two days: 100,000 slots owed
        worker.start(env=fake.env()).wait_running()
        first = max(t["id"] for t in worker.tasks())
        fast = len(succeeded(worker, "fast"))
        more_runs(worker, "fast", fast, 8, timeout=30)
        flood = worker.tasks("job = 'flood' AND status = 'succeeded' AND id > ?", (first,))
        assert len(flood) >= 20  # it catches up, oldest slot first
        assert flood[0]["scheduled_for"] < flood[-1]["scheduled_for"]
        late = sorted(
            (datetime.fromisoformat(t["started_at"]) - datetime.fromisoformat(t["due_at"]))
            .total_seconds() for t in worker.tasks("job = 'fast' AND id > ?", (first,))
            if t["started_at"])
        # the bench measures lateness (README); here only that it stays bounded
        assert late[int(len(late) * 0.9)] < 1.0, late
        assert worker.stop() == 0
