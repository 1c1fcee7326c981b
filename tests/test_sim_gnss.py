"""The GNSS error model: its statistics, its episodes, its reproducibility.

The statistical tests use fixed seeds, so they are deterministic; their
tolerances are nevertheless chosen to hold for *any* seed with overwhelming
probability: each is at least five standard errors of its estimator (computed
in the comment next to it), so a seed that fails one has a chance below about
1e-6. Changing a seed must never be what makes a test pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gps.nmea import NmeaDecoder
from routes.projection import Projector
from sim.gnss import (
    PRESETS,
    GnssErrorConfig,
    GnssErrorModel,
    Observation,
    to_fix,
    to_nmea,
)

QUIET = GnssErrorConfig(white_m=0.0, multipath_rate=0.0, dropout_rate_per_h=0.0)
E = math.e


def _run(
    model: GnssErrorModel, times: Sequence[float], speed: float = 12.0, heading: float = 70.0
) -> list[Observation | None]:
    return [model.observe(t, 0.0, 0.0, speed, heading) for t in times]


def _fixes(obs: Sequence[Observation | None]) -> list[Observation]:
    return [o for o in obs if o is not None]


def _bias(obs: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([o.bias_x for o in obs]), np.array([o.bias_y for o in obs])


def test_slow_error_has_stationary_std_sigma_per_axis() -> None:
    # Fixes 2 tau apart are nearly independent (correlation e^-2 = 0.135), so with
    # n = 4000 per axis the relative standard error of the sample std is about
    # sqrt((1 + phi^2) / (1 - phi^2) / (2 n)) = 1.1 %: 10 % is nine of them.
    cfg = GnssErrorConfig(
        sigma_m=10.0, tau_s=30.0, white_m=0.0, multipath_rate=0.0, dropout_rate_per_h=0.0
    )
    obs = _fixes(_run(GnssErrorModel(cfg, seed=11), [60.0 * k for k in range(4000)]))
    bx, by = _bias(obs)
    for axis in (bx, by):
        assert float(np.sqrt(np.mean(axis**2))) == pytest.approx(10.0, rel=0.10)
    # Without white noise or multipath the whole error is the slow error.
    ex = np.array([o.error_x for o in obs])
    assert np.array_equal(ex, bx)


def test_white_noise_adds_in_quadrature() -> None:
    # Same sampling as above: the std of the total error per axis is
    # sqrt(sigma^2 + white^2); 10 % is again about nine standard errors.
    cfg = GnssErrorConfig(sigma_m=3.0, white_m=4.0, multipath_rate=0.0, dropout_rate_per_h=0.0)
    obs = _fixes(_run(GnssErrorModel(cfg, seed=12), [60.0 * k for k in range(4000)]))
    for err in (np.array([o.error_x for o in obs]), np.array([o.error_y for o in obs])):
        assert float(np.sqrt(np.mean(err**2))) == pytest.approx(5.0, rel=0.10)
    assert cfg.horizontal_rms_m == pytest.approx(5.0 * math.sqrt(2))


def test_slow_error_stays_stationary_at_irregular_intervals() -> None:
    # The update is exact for any dt, so intervals from 0.1 s to 100 s (log-uniform,
    # mean 14.5 s) must not change the spread. 20 000 fixes span ~290 000 s, about
    # 4 800 independent stretches of 2 tau per axis: relative standard error of the
    # std about 1.5 %, 10 % is over six of them.
    dts = np.exp(np.random.default_rng(99).uniform(math.log(0.1), math.log(100.0), 20_000))
    times = np.cumsum(dts).tolist()
    obs = _fixes(_run(GnssErrorModel(QUIET, seed=13), times))
    for axis in _bias(obs):
        assert float(np.sqrt(np.mean(axis**2))) == pytest.approx(QUIET.sigma_m, rel=0.10)


def _autocorrelation(x: np.ndarray, lag: int) -> float:
    # The process has mean zero by construction; using it avoids the estimator's bias.
    return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))


def test_slow_error_decorrelates_with_time_constant_tau() -> None:
    # 40 000 fixes 3 s apart (tau / 10), both axes: Bartlett's formula for an AR(1)
    # with phi = e^-0.1 gives a standard error of 0.0086 at lag 10 (= tau) and
    # 0.0107 at lag 20; the tolerances 0.05 and 0.06 are over five of them, and far
    # from what a wrong time constant gives (tau 20 s: 0.22; tau 45 s: 0.51).
    obs = _fixes(_run(GnssErrorModel(QUIET, seed=14), [3.0 * k for k in range(40_000)]))
    bx, by = _bias(obs)
    for axis in (bx, by):
        assert _autocorrelation(axis, 10) == pytest.approx(1 / E, abs=0.05)
        assert _autocorrelation(axis, 20) == pytest.approx(1 / E**2, abs=0.06)
        assert _autocorrelation(axis, 1) == pytest.approx(math.exp(-0.1), abs=0.02)


def test_multipath_fraction_magnitudes_and_durations() -> None:
    # Rate 0.03 of the time; bursts 2-6 s (mean 4), clear periods exponential with
    # mean 129 s. Over 150 000 s (~1 100 cycles) the renewal-reward CLT gives a
    # standard error of the fraction of 0.0009 (dominated by the exponential clear
    # periods); the tolerance 0.006 is over six of them. Magnitudes are uniform in
    # 30-100 m: mean 65, standard error 0.6 over ~1 100 bursts; tolerance 5 m.
    cfg = GnssErrorConfig(white_m=0.0, multipath_rate=0.03, dropout_rate_per_h=0.0)
    model = GnssErrorModel(cfg, seed=15)
    obs = _fixes(_run(model, [2.0 * k for k in range(75_000)]))
    flagged = [o for o in obs if o.in_multipath]
    assert len(flagged) / len(obs) == pytest.approx(0.03, abs=0.006)
    bursts = {b.number: b for b in model.bursts}
    assert len(bursts) > 800
    for o in flagged:
        b = bursts[o.multipath_burst]
        assert b.start <= o.t < b.end
        assert 30.0 <= o.multipath_m <= 100.0
        assert o.multipath_m == b.magnitude_m
        # The reported position is the true one plus slow error plus the offset.
        offset = math.hypot(o.error_x - o.bias_x, o.error_y - o.bias_y)
        assert offset == pytest.approx(o.multipath_m, abs=1e-6)
    for o in obs:
        if not o.in_multipath:
            assert o.multipath_m == 0.0
            assert math.hypot(o.error_x - o.bias_x, o.error_y - o.bias_y) < 1e-6
    durations = [b.end - b.start for b in bursts.values()]
    assert min(durations) >= 2.0
    assert max(durations) <= 6.0
    assert float(np.mean([b.magnitude_m for b in bursts.values()])) == pytest.approx(65.0, abs=5)


def test_multipath_across_the_street() -> None:
    cfg = GnssErrorConfig(
        white_m=0.0, multipath_rate=0.2, multipath_cross_track=True, dropout_rate_per_h=0.0
    )
    model = GnssErrorModel(cfg, seed=16)
    heading = 30.0
    flagged = [o for o in _fixes(_run(model, range(3000), heading=heading)) if o.in_multipath]
    assert len(flagged) > 100
    hx, hy = math.sin(math.radians(heading)), math.cos(math.radians(heading))
    sides = set()
    for o in flagged:
        dx, dy = o.error_x - o.bias_x, o.error_y - o.bias_y
        assert dx * hx + dy * hy == pytest.approx(0.0, abs=1e-6)  # perpendicular to travel
        sides.add(hx * dy - hy * dx > 0)
    assert sides == {True, False}


def test_dropouts_last_their_length_and_start_at_their_rate() -> None:
    # 60 dropouts per hour of reception, 5-60 s each: in 40 000 s at 1 Hz about 430
    # dropouts (Poisson, standard error 4.8 %); the tolerance 25 % is over five.
    cfg = GnssErrorConfig(dropout_rate_per_h=60.0, dropout_s=(5.0, 60.0))
    model = GnssErrorModel(cfg, seed=17)
    times = [float(k) for k in range(40_000)]
    obs = _run(model, times)
    gaps = model.dropouts
    assert all(5.0 <= d.end - d.start <= 60.0 for d in gaps)
    starts = np.array([d.start for d in gaps])
    for t, o in zip(times, obs, strict=True):
        i = int(np.searchsorted(starts, t, side="right")) - 1
        inside = i >= 0 and t < gaps[i].end
        assert (o is None) == inside
    reception_h = sum(o is not None for o in obs) / 3600.0
    assert len(gaps) / reception_h == pytest.approx(60.0, rel=0.25)
    # Seen from the fixes: every silence lasts at least five 1-Hz epochs.
    run = 0
    for o in obs:
        if o is None:
            run += 1
        else:
            assert run == 0 or run >= 5
            run = 0


def test_same_seed_same_output_to_the_bit() -> None:
    cfg = GnssErrorConfig(multipath_rate=0.05, dropout_rate_per_h=30.0)
    times = [0.5 * k for k in range(4000)]
    a = _run(GnssErrorModel(cfg, seed=42), times)
    b = _run(GnssErrorModel(cfg, seed=42), times)
    assert repr(a) == repr(b)
    assert a == b
    c = _run(GnssErrorModel(cfg, seed=43), times)
    assert a != c
    assert sum(x is None for x in a) > 0  # the comparison covered dropouts too


def test_episode_layout_does_not_depend_on_the_fix_rate() -> None:
    cfg = GnssErrorConfig(multipath_rate=0.05, dropout_rate_per_h=20.0)
    slow, fast = GnssErrorModel(cfg, seed=7), GnssErrorModel(cfg, seed=7)
    _run(slow, [float(k) for k in range(3000)])
    _run(fast, [0.1 * k for k in range(30_000)])
    for x, y in ((slow.bursts, fast.bursts), (slow.dropouts, fast.dropouts)):
        n = min(len(x), len(y))
        assert n > 3
        assert x[:n] == y[:n]


def test_speed_and_course_ignore_multipath() -> None:
    # Doppler measures velocity; a reflection shifts the position only. The parts
    # use separate streams, so adding bursts changes nothing but the positions.
    times = [float(k) for k in range(2000)]
    clean = _fixes(_run(GnssErrorModel(GnssErrorConfig(multipath_rate=0.0), seed=5), times))
    dirty = _fixes(_run(GnssErrorModel(GnssErrorConfig(multipath_rate=0.3), seed=5), times))
    assert sum(o.in_multipath for o in dirty) > 300
    assert [(o.speed, o.course, o.hdop, o.bias_x) for o in clean] == [
        (o.speed, o.course, o.hdop, o.bias_x) for o in dirty
    ]


def test_course_noise_at_speed() -> None:
    # 15 m/s: spread hypot(2, degrees(0.2 / 15)) = 2.14 degrees; 20 000 independent
    # draws give a relative standard error of 0.5 % of the std; tolerance 5 %.
    obs = _fixes(_run(GnssErrorModel(QUIET, seed=18), range(20_000), speed=15.0, heading=0.5))
    err = np.array([((o.course or 0.0) - 0.5 + 180.0) % 360.0 - 180.0 for o in obs])
    assert float(np.std(err)) == pytest.approx(math.hypot(2.0, math.degrees(0.2 / 15)), rel=0.05)
    speeds = np.array([o.speed for o in obs])
    assert float(np.std(speeds)) == pytest.approx(0.2, rel=0.05)


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**32 - 1),
    speed=st.one_of(st.just(0.0), st.floats(0.0, 40.0)),
    heading=st.one_of(st.sampled_from([0.0, 359.99999999999994]), st.floats(0.0, 359.999999)),
    course_sigma=st.sampled_from([0.0, 1e-9, 2.0, 90.0]),
)
def test_speed_never_negative_and_course_in_range(
    seed: int, speed: float, heading: float, course_sigma: float
) -> None:
    cfg = GnssErrorConfig(course_sigma_deg=course_sigma, speed_sigma_ms=0.5)
    model = GnssErrorModel(cfg, seed=seed)
    for o in _fixes(_run(model, range(50), speed=speed, heading=heading)):
        assert o.speed >= 0.0
        assert (o.course is None) == (o.speed < cfg.course_min_speed_ms)
        if o.course is not None:
            assert 0.0 <= o.course < 360.0
        assert o.hdop > 0


def test_course_kept_at_a_standstill_when_the_cut_is_off() -> None:
    cfg = GnssErrorConfig(course_min_speed_ms=0.0)
    obs = _fixes(_run(GnssErrorModel(cfg, seed=3), range(200), speed=0.0))
    assert all(o.course is not None and 0.0 <= o.course < 360.0 for o in obs)


def test_observations_become_fixes_and_nmea() -> None:
    projector = Projector(25832)
    x0, y0 = projector.to_metric(8.4660, 49.4875)
    model = GnssErrorModel(GnssErrorConfig(dropout_rate_per_h=0.0), seed=21)
    epoch = 1_764_288_000.0
    obs = _fixes(
        [
            model.observe(float(k), x0 + 12.0 * k, y0, 12.0 if k < 10 else 0.0, 90.0)
            for k in range(20)
        ]
    )
    assert any(o.course is None for o in obs)
    assert any(o.course is not None for o in obs)
    decoder = NmeaDecoder("HLF1", "test")
    decoded = []
    for o in obs:
        for line in to_nmea(o, projector, time_offset_s=epoch):
            decoded += decoder.feed_line(line)
    decoded += decoder.flush()
    assert not decoder.dropped
    assert len(decoded) == len(obs)
    for o, fix in zip(obs, decoded, strict=True):
        direct = to_fix(o, projector, "HLF1", time_offset_s=epoch)
        assert direct.time == fix.time == epoch + o.t
        assert projector.to_metric(direct.lon, direct.lat) == pytest.approx((o.x, o.y), abs=1e-6)
        # NMEA keeps 1e-4 arc minutes (0.19 m), 0.01 kn and 0.1 degree.
        x, y = projector.to_metric(fix.lon, fix.lat)
        assert math.hypot(x - o.x, y - o.y) < 0.3
        assert fix.speed == pytest.approx(o.speed, abs=0.01)
        if o.course is None:
            assert fix.course is None
        else:
            assert fix.course is not None
            assert abs((fix.course - o.course + 180) % 360 - 180) <= 0.051
        assert fix.hdop == pytest.approx(o.hdop, abs=0.051)


def test_time_must_not_go_backwards() -> None:
    model = GnssErrorModel(seed=1)
    model.observe(10.0, 0.0, 0.0, 5.0, 0.0)
    model.observe(10.0, 0.0, 0.0, 5.0, 0.0)  # the same instant twice is fine
    with pytest.raises(ValueError, match="backwards"):
        model.observe(9.0, 0.0, 0.0, 5.0, 0.0)
    with pytest.raises(ValueError, match="speed"):
        model.observe(11.0, 0.0, 0.0, -1.0, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma_m": -1.0},
        {"tau_s": 0.0},
        {"multipath_rate": 1.0},
        {"multipath_m": (100.0, 30.0)},
        {"dropout_s": (-1.0, 5.0)},
        {"dropout_rate_per_h": math.nan},
        {"hdop": 0.0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, float | tuple[float, float]]) -> None:
    with pytest.raises(ValueError, match="GnssErrorConfig"):
        GnssErrorConfig(**kwargs)  # type: ignore[arg-type]


def test_presets_are_valid_and_ordered() -> None:
    rms = [PRESETS[name].horizontal_rms_m for name in ("open", "urban", "canyon")]
    assert rms == sorted(rms)
    assert PRESETS["urban"] == GnssErrorConfig()
