"""The shared rules of gps/validity.py: the time order of a stream, and impossible jumps."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from gps.validity import (
    CONFIRM_FIXES,
    HELD,
    SLACK_M,
    MotionGate,
    TimeOrder,
    ground_distance_m,
)
from preemption.kernel.clock import SimClock
from preemption.kernel.model import Fix, FixQuality
from routes.projection import Projector
from sim.gnss import GnssErrorConfig, GnssErrorModel, to_fix

WGS84 = Geod(ellps="WGS84")
T0 = 1_764_331_200.0  # 2025-11-28T12:00:00Z
MANNHEIM = (49.4875, 8.4660)


def at(t: float, lat: float, lon: float, hdop: float | None = None) -> Fix:
    return Fix("HLF1", t, lat, lon, None, None, hdop, FixQuality.GPS, "test")


def moved(lat: float, lon: float, azimuth_deg: float, metres: float) -> tuple[float, float]:
    lon2, lat2, _ = WGS84.fwd(lon, lat, azimuth_deg, metres)
    return lat2, lon2


# -- TimeOrder: one stream's time --------------------------------------------------


def offer(order: TimeOrder[float], times: list[float]) -> tuple[list[float], dict[str, int]]:
    """Times out in the order a caller would use them, and the drops by reason."""
    out: list[float] = []
    dropped: dict[str, int] = {}
    for t in times:
        reason = order.check(t, t)
        if order.changed:
            released, discarded = order.take()
            out += released
            if discarded:
                dropped["time_jump"] = dropped.get("time_jump", 0) + len(discarded)
        if reason is None:
            out.append(t)
        elif reason != HELD:
            dropped[reason] = dropped.get(reason, 0) + 1
    order.settle()
    released, discarded = order.take()
    out += released
    if discarded:
        dropped["time_jump"] = dropped.get("time_jump", 0) + len(discarded)
    return out, dropped


def test_time_order_learns_the_cycle_from_the_median_interval() -> None:
    order: TimeOrder[float] = TimeOrder()
    offer(order, [0.0, 0.1, 0.2, 0.3])
    assert order.cycle == pytest.approx(0.1)
    offer(order, [0.31, 0.4])  # one short interval does not move it
    assert order.cycle == pytest.approx(0.09)
    offer(order, [0.5, 0.6])
    assert order.cycle == pytest.approx(0.1)


def test_an_epoch_ahead_is_held_then_dropped_when_the_stream_goes_on() -> None:
    order: TimeOrder[float] = TimeOrder()
    assert offer(order, [0, 1, 2, 3, 30, 4, 5]) == ([0, 1, 2, 3, 4, 5], {"time_jump": 1})
    assert order.last == 5
    assert order.resyncs == 0


def test_a_held_run_is_followed_once_three_epochs_keep_a_cadence() -> None:
    order: TimeOrder[float] = TimeOrder()
    assert offer(order, [0, 1, 2, 100, 101]) == ([0, 1, 2, 100, 101], {})  # settled at the end
    order = TimeOrder()
    for t in (0.0, 1.0, 2.0):
        assert order.check(t, t) is None
    assert order.check(100.0, 100.0) == HELD
    assert order.check(100.0, 100.0) == "duplicate_epoch"
    assert order.check(100.5, 100.5) == HELD
    assert order.check(101.0, 101.0) is None
    assert order.take() == ([100.0, 100.5], [])
    assert (order.last, order.resyncs, order.cycle) == (101.0, 1, 0.5)


def test_a_held_epoch_later_than_the_next_one_is_dropped_and_the_run_goes_on() -> None:
    order: TimeOrder[float] = TimeOrder()
    # 900 is an outlier inside a jumped run (a receiver that came back at 100).
    out, dropped = offer(order, [0, 1, 2, 100, 900, 101, 102, 103])
    assert out == [0, 1, 2, 100, 101, 102, 103]
    assert dropped == {"time_jump": 1}
    assert order.resyncs == 1


def test_a_run_without_any_cadence_is_released_after_four_times_confirm() -> None:
    order: TimeOrder[float] = TimeOrder()
    erratic = [100.0 + 3.0**k for k in range(12)]  # every interval three times the last
    out = [u for t in [0.0, 1.0, 2.0, *erratic[:11]] for u in offer_one(order, t)]
    assert out == [0.0, 1.0, 2.0]
    assert offer_one(order, erratic[11]) == erratic  # the twelfth: a track of its own
    assert order.resyncs == 1


def test_at_the_end_a_held_run_more_than_a_day_ahead_is_dropped() -> None:
    order: TimeOrder[float] = TimeOrder()
    assert offer(order, [0, 1, 2, 86_400 * 2, 86_400 * 2 + 1]) == ([0, 1, 2], {"time_jump": 2})


def test_with_a_clock_the_future_is_refused_and_an_explained_gap_accepted() -> None:
    clock = SimClock(start_utc=T0)
    order: TimeOrder[float] = TimeOrder(clock=clock, max_future_s=1.0)
    assert order.check(T0 + 1.5, 0.0) == "from_future"
    assert order.last is None
    assert order.check(T0 + 0.9, 0.0) is None
    assert order.check(T0 + 5.0, 0.0) == "from_future"
    clock = SimClock(start_utc=T0)
    order = TimeOrder(clock=clock)  # 5 s ahead of the clock is from_future
    assert order.check(T0, 0.0) is None
    clock.advance(1.0)
    assert order.check(T0 + 1, 0.0) is None
    clock.advance(40.0)  # a tunnel
    assert order.check(T0 + 41, 0.0) is None
    for t in (42, 43):
        clock.advance(1.0)
        assert order.check(T0 + t, 0.0) is None
    clock.advance(1.0)
    assert order.check(T0 + 47.0, 0.0) == HELD  # 4 s on in 1 s: not what the clock says
    clock.advance(1.0)
    assert order.check(T0 + 45.9, 0.0) is None  # 2.9 s on in 2 s: within a cycle of it
    assert order.take() == ([], [0.0])
    assert order.resyncs == 0
    with pytest.raises(ValueError, match="max_future_s"):
        TimeOrder(clock=clock, max_future_s=-1.0)
    with pytest.raises(ValueError, match="confirm"):
        TimeOrder(confirm=1)


@settings(max_examples=400)
@given(
    cycle=st.sampled_from([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]),
    n=st.integers(min_value=3, max_value=40),
    at=st.integers(min_value=2, max_value=40),
    bad=st.one_of(
        st.floats(min_value=-20.0, max_value=20.0),
        st.floats(min_value=-1e10, max_value=1e10),
    ),
    clocked=st.booleans(),
)
def test_one_arbitrary_time_costs_at_most_itself_and_two_others(
    cycle: float, n: int, at: int, bad: float, clocked: bool
) -> None:
    at = min(at, n)
    good = [T0 + i * cycle for i in range(n)]
    when = good[at - 1] + bad if abs(bad) <= 20.0 else T0 + bad
    clock = SimClock(start_utc=T0) if clocked else None
    order: TimeOrder[float] = TimeOrder(clock=clock)
    out: list[float] = []
    for t, real in [
        *((t, True) for t in good[:at]),
        (when, False),
        *((t, True) for t in good[at:]),
    ]:
        if clock is not None and real:
            clock.advance_to(t - T0 + 0.05)  # the receiver's epochs arrive as they are made
        out += offer_one(order, t)
    order.settle()
    out += order.take()[0]
    assert all(a < b for a, b in itertools.pairwise(out))
    assert len(set(good) - set(out)) <= 2


def offer_one(order: TimeOrder[float], t: float) -> list[float]:
    reason = order.check(t, t)
    out = order.take()[0] if order.changed else []
    return [*out, t] if reason is None else out


# -- MotionGate: impossible jumps ---------------------------------------------------


def straight(
    n: int, dt: float, speed: float, start: tuple[float, float] = MANNHEIM, azimuth: float = 60.0
) -> Iterator[Fix]:
    lat, lon = start
    for i in range(n):
        yield at(T0 + i * dt, lat, lon)
        lat, lon = moved(lat, lon, azimuth, speed * dt)


def test_a_sustained_800_m_jump_is_dropped_for_confirm_minus_one_fixes_then_followed() -> None:
    gate = MotionGate()
    track = list(straight(40, 1.0, 15.0))
    jumped = [
        at(f.time, *moved(f.lat, f.lon, 60.0, 800.0)) if i >= 20 else f for i, f in enumerate(track)
    ]
    verdicts = [gate.check(f) for f in jumped]
    assert verdicts[:20] == [None] * 20
    assert verdicts[20 : 20 + CONFIRM_FIXES - 1] == ["impossible_jump"] * (CONFIRM_FIXES - 1)
    assert verdicts[20 + CONFIRM_FIXES - 1 :] == [None] * (40 - 20 - CONFIRM_FIXES + 1)
    assert gate.resyncs == 1


def test_a_single_800_m_outlier_is_dropped_and_the_track_goes_on() -> None:
    gate = MotionGate()
    track = list(straight(30, 1.0, 15.0))
    track[12] = at(track[12].time, *moved(track[12].lat, track[12].lon, 150.0, 800.0))
    verdicts = [gate.check(f) for f in track]
    assert verdicts == [None] * 12 + ["impossible_jump"] + [None] * 17
    assert gate.resyncs == 0


def test_outliers_that_are_not_a_track_of_their_own_never_take_over() -> None:
    gate = MotionGate()
    track = list(straight(60, 1.0, 15.0))
    verdicts = []
    for i, f in enumerate(track):
        if 10 <= i < 30 or (i >= 30 and i % 2 == 0):
            # A receiver gone wild: 5 km off, each time on the other side (10 km
            # from the one before), for 20 fixes, then every other fix.
            f = at(f.time, *moved(f.lat, f.lon, 180.0 * (i % 2) + 7.0 * i, 5_000.0))
        verdicts.append(gate.check(f))
    assert verdicts == [None] * 10 + ["impossible_jump"] * 20 + ["impossible_jump", None] * 15
    assert gate.resyncs == 0


def test_the_slack_grows_with_hdop() -> None:
    lat, lon = MANNHEIM
    far = moved(lat, lon, 0.0, 250.0)
    gate = MotionGate()
    assert gate.check(at(T0, lat, lon, hdop=1.0)) is None
    assert gate.check(at(T0 + 0.1, *far, hdop=1.0)) == "impossible_jump"
    gate = MotionGate()
    assert gate.check(at(T0, lat, lon, hdop=15.0)) is None  # 300 m of slack
    assert gate.check(at(T0 + 0.1, *far, hdop=1.0)) is None


def test_time_going_back_is_judged_as_no_time_at_all() -> None:
    gate = MotionGate()
    lat, lon = MANNHEIM
    assert gate.check(at(T0, lat, lon)) is None
    assert gate.check(at(T0 - 5.0, *moved(lat, lon, 0.0, SLACK_M - 1.0))) is None
    assert gate.check(at(T0 - 5.0, *moved(lat, lon, 0.0, 2 * SLACK_M + 10.0))) == "impossible_jump"


def test_a_nan_position_never_passes() -> None:
    gate = MotionGate()
    assert gate.check(at(T0, *MANNHEIM)) is None
    assert gate.check(at(T0 + 1.0, math.nan, MANNHEIM[1])) == "impossible_jump"


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"max_speed_ms": -1.0}, {"slack_m": math.inf}, {"hdop_slack_m": math.nan}):
        with pytest.raises(ValueError, match="MotionGate"):
            MotionGate(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="confirm"):
        MotionGate(confirm=0)


def gnss_track(rate_hz: float, config: GnssErrorConfig, seed: int, minutes: float) -> list[Fix]:
    """An engine through a city at up to 25 m/s (stops, turns), seen by the error model."""
    projector = Projector(25832)
    x, y = projector.to_metric(MANNHEIM[1], MANNHEIM[0])
    model = GnssErrorModel(config, seed=seed)
    fixes = []
    heading, speed = 30.0, 0.0
    dt = 1.0 / rate_hz
    for k in range(int(minutes * 60 * rate_hz)):
        t = k * dt
        phase = t % 90.0
        target = 0.0 if phase > 80.0 else 25.0 if phase < 40.0 else 12.0  # lights, side streets
        speed += max(-3.0 * dt, min(2.0 * dt, target - speed))
        if 40.0 <= phase < 45.0:
            heading = (heading + 18.0 * dt) % 360.0  # a 90 degree turn at 12 m/s
        x += speed * dt * math.sin(math.radians(heading))
        y += speed * dt * math.cos(math.radians(heading))
        obs = model.observe(t, x, y, speed, heading)
        if obs is not None:
            fixes.append(to_fix(obs, projector, "HLF1", time_offset_s=T0))
    return fixes


@pytest.mark.parametrize(
    ("rate_hz", "multipath_m"),
    [(10.0, (30.0, 30.0)), (10.0, (30.0, 100.0)), (1.0, (30.0, 100.0))],
    ids=["10Hz-30m", "10Hz-30-100m", "1Hz-30-100m"],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_real_gnss_track_with_multipath_loses_nothing(
    rate_hz: float, multipath_m: tuple[float, float], seed: int
) -> None:
    # The city error model: a wandering 10 m error, white noise, and multipath
    # bursts for 10 % of the time that shift fixes by 30 m (or up to 100 m) at once.
    config = GnssErrorConfig(multipath_rate=0.1, multipath_m=multipath_m, dropout_rate_per_h=6.0)
    fixes = gnss_track(rate_hz, config, seed, minutes=10.0)
    gate = MotionGate()
    assert [gate.check(f) for f in fixes] == [None] * len(fixes)
    assert gate.resyncs == 0


@settings(max_examples=300)
@given(
    start_lat=st.floats(min_value=-70.0, max_value=70.0),
    start_lon=st.floats(min_value=-180.0, max_value=180.0),
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=30.0),  # dt, s
            st.floats(min_value=0.0, max_value=1.0),  # speed, as a share of max_speed_ms
            st.floats(min_value=0.0, max_value=360.0),  # direction of travel
            st.floats(min_value=0.0, max_value=0.45),  # error, as a share of the slack
            st.floats(min_value=0.0, max_value=360.0),  # direction of the error
        ),
        min_size=1,
        max_size=40,
    ),
    max_speed=st.sampled_from([20.0, 60.0]),
    slack=st.sampled_from([30.0, 120.0]),
)
def test_a_track_within_the_speed_and_the_error_bound_is_never_dropped(
    start_lat: float,
    start_lon: float,
    steps: list[tuple[float, float, float, float, float]],
    max_speed: float,
    slack: float,
) -> None:
    # The truth moves at most max_speed; each fix is off by at most 0.45 of the
    # slack, so two fixes differ by at most max_speed * dt + 0.9 slack (the other
    # 0.1 covers the distance approximation, far below that). Times may repeat.
    gate = MotionGate(max_speed_ms=max_speed, slack_m=slack)
    lat, lon, t = start_lat, start_lon, T0
    for dt, share, heading, error, error_dir in steps:
        t += dt
        lat, lon = moved(lat, lon, heading, share * max_speed * dt)
        fix = at(t, *moved(lat, lon, error_dir, error * slack))
        assert gate.check(fix) is None
    assert gate.resyncs == 0


@pytest.mark.parametrize("metres", [10.0, 500.0, 5_000.0])
@pytest.mark.parametrize("lat", [0.0, 49.5, 69.9, -45.0])
@pytest.mark.parametrize("azimuth", [0.0, 45.0, 90.0, 200.0])
def test_the_distance_approximation_is_within_its_documented_accuracy(
    metres: float, lat: float, azimuth: float
) -> None:
    lat2, lon2 = moved(lat, 179.99, azimuth, metres)  # across the antimeridian, too
    assert ground_distance_m(lat, 179.99, lat2, lon2) == pytest.approx(metres, rel=5e-4)
    lat2, lon2 = moved(lat, 8.0, azimuth, 50_000.0)
    assert ground_distance_m(lat, 8.0, lat2, lon2) == pytest.approx(50_000.0, rel=5e-3)


def test_a_check_costs_a_few_microseconds() -> None:
    gate = MotionGate()
    fixes = list(straight(2000, 0.1, 20.0))
    started = time.perf_counter()
    for f in fixes:
        gate.check(f)
    per_fix = (time.perf_counter() - started) / len(fixes)
    # Loose enough for a loaded CI machine; the figure is about 1 us on the sources.
    assert per_fix < 20e-6
