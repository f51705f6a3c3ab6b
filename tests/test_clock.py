"""The worker's clock (edgeworker.clock.WorkerClock) with injected wall and monotonic clocks."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from edgeworker.clock import WorkerClock, from_text, to_text

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC).timestamp()


class Clocks:
    """A wall clock that can be stepped and a monotonic clock that only moves on."""

    def __init__(self, wall: float = T0):
        self.wall_at_zero = wall
        self.mono = 1000.0
        self.synchronised = False

    def wall(self) -> float:
        return self.wall_at_zero + self.mono - 1000.0

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall_at_zero += seconds

    def worker_clock(self, high_water: datetime | None = None) -> WorkerClock:
        return WorkerClock(high_water, lambda: self.synchronised, wall=self.wall,
                           monotonic=self.monotonic)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_follows_the_wall_clock_when_nothing_happens():
    c = Clocks()
    clock = c.worker_clock(at(T0 - 60))
    c.advance(5)
    assert clock.now() == at(T0 + 5)
    assert clock.take_steps() == [] and clock.behind == 0


def test_a_forward_step_moves_the_worker_and_is_reported():
    c = Clocks()
    clock = c.worker_clock()
    c.advance(1)
    c.step(90 * 86400)
    assert clock.now() == at(T0 + 1 + 90 * 86400)
    [step] = clock.take_steps()
    assert step.wall == pytest.approx(90 * 86400) and step.moved == pytest.approx(90 * 86400)


@pytest.mark.parametrize("back", [3600, 86400])
def test_an_unsynchronised_step_back_is_not_followed(back):
    c = Clocks()
    clock = c.worker_clock()
    c.advance(10)
    c.step(-back)
    assert clock.now() == at(T0 + 10)  # time goes on, from where it was
    [step] = clock.take_steps()
    assert step.wall == pytest.approx(-back) and step.moved == 0
    c.advance(30)
    assert clock.now() == at(T0 + 40)
    assert clock.behind == pytest.approx(back)
    assert clock.take_steps() == []  # one step, reported once


def test_a_synchronised_step_back_is_a_correction():
    c = Clocks()
    clock = c.worker_clock()
    c.synchronised = True
    c.advance(10)
    c.step(-3600)
    assert clock.now() == at(T0 + 10 - 3600)
    [step] = clock.take_steps()
    assert step.moved == pytest.approx(-3600)


def test_the_wall_clock_catching_up_ends_the_hold_without_a_step():
    c = Clocks()
    clock = c.worker_clock()
    c.step(-30)
    clock.now()
    clock.take_steps()
    c.step(30)  # NTP puts it back where the worker's time is
    assert clock.now() == at(T0)
    assert clock.take_steps() == [] and clock.behind == 0


def test_booting_at_1970_goes_on_from_the_newest_recorded_time():
    c = Clocks(wall=10.0)  # the box booted without a real-time clock
    mark = at(T0)
    clock = c.worker_clock(high_water=mark)
    assert clock.now() == mark
    [step] = clock.take_steps()
    assert step.moved == 0 and step.wall == pytest.approx(10.0 - T0)
    c.advance(60)
    assert clock.now() == mark + timedelta(seconds=60)
    # NTP steps the clock to the real time, a day after the mark: the worker follows forward
    c.step(T0 + 86400 - 10.0)
    assert clock.now() == at(T0 + 86400 + 60)
    [step] = clock.take_steps()
    assert step.moved == pytest.approx(86400)


def test_booting_behind_with_a_synchronised_clock_is_a_correction():
    c = Clocks()
    c.synchronised = True
    clock = c.worker_clock(high_water=at(T0 + 3600))
    assert clock.now() == at(T0)
    [step] = clock.take_steps()
    assert step.moved == pytest.approx(-3600)


def test_follow_wall_takes_a_clock_that_became_synchronised():
    c = Clocks()
    clock = c.worker_clock(high_water=at(T0 + 7200))
    clock.take_steps()
    c.advance(5)
    assert clock.now() == at(T0 + 7205)
    step = clock.follow_wall()
    assert step.moved == pytest.approx(-7200)
    assert clock.now() == at(T0 + 5) and clock.behind == 0
    assert clock.follow_wall() is None


@pytest.mark.parametrize(("moment", "text"), [
    (datetime(2026, 11, 29, 13, 47, 13, 123456, tzinfo=UTC), "2026-11-29T13:47:13.123456Z"),
    (datetime(2026, 11, 29, 13, 47, 13, tzinfo=UTC), "2026-11-29T13:47:13.000000Z"),
    (datetime(2026, 11, 29, 14, 47, 13, 5, tzinfo=timezone(timedelta(hours=1))),
     "2026-11-29T13:47:13.000005Z"),
    # fixed width before the year 1000 too (strftime's %Y gave "5-01-02...": out of order)
    (datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "0005-01-02T03:04:05.000006Z"),
])
def test_the_stored_text_is_fixed_width_utc_and_reads_back(moment, text):
    assert to_text(moment) == text
    assert from_text(text) == moment


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError, match="naive"):
        to_text(datetime(2026, 11, 29, 13, 47, 13))
