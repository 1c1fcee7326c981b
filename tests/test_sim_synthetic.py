"""Synthetic route sets: valid route files, honest metadata, street-like geometry.

The geometric claims are checked with shapely on the geometry that
``load_routes`` reads back from the written file, independently of the
generator's own numpy checks.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, MultiLineString, Point
from shapely.ops import substring

from routes.geojson import RouteSet, load_routes
from routes.geometry import MetricRoute, heading_difference
from sim.synthetic import (
    ANGLE_RANGES,
    AngleClass,
    SyntheticCity,
    SyntheticParams,
    SyntheticStation,
    generate_city,
    generate_station,
    write_geojson,
)

SEEDS = range(6)


@pytest.fixture(scope="module")
def stations() -> list[SyntheticStation]:
    return [generate_station(seed, 7) for seed in SEEDS]


@pytest.fixture(scope="module")
def loaded(stations: list[SyntheticStation]) -> list[RouteSet]:
    with tempfile.TemporaryDirectory() as tmp:
        return [
            load_routes(write_geojson(st, Path(tmp) / f"{k}.geojson"))
            for k, st in enumerate(stations)
        ]


@pytest.fixture(scope="module")
def city() -> SyntheticCity:
    return generate_city(1, 5, 10)


def _check_loads(st: SyntheticStation | SyntheticCity, rs: RouteSet) -> None:
    assert rs.projector.epsg == st.epsg  # the UTM zone chosen from the routes' centre
    assert set(rs.routes) == set(st.routes)
    for rid, meta in st.routes.items():
        mr = rs[rid]
        # The metadata was computed on exactly the geometry the loader sees.
        assert np.array_equal(mr.xy, np.array(meta.xy))
        assert mr.length == pytest.approx(meta.length_m, abs=1e-6)
        assert [s.intersection for s in mr.signals] == list(meta.signals)
        # Signal positions are rounded to 1e-7 degrees; the loader keeps 0.01 m.
        assert [s.stop_line_m for s in mr.signals] == pytest.approx(meta.signal_s_m, abs=0.03)
        assert all(s.approach == "1" for s in mr.signals)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), n_routes=st.integers(1, 6))
def test_every_generated_set_loads(seed: int, n_routes: int) -> None:
    station = generate_station(seed, n_routes)
    assert len(station.routes) == n_routes
    with tempfile.TemporaryDirectory() as tmp:
        rs = load_routes(write_geojson(station, Path(tmp) / "routes.geojson"))
    _check_loads(station, rs)


def test_stations_load(stations: list[SyntheticStation], loaded: list[RouteSet]) -> None:
    for st_, rs in zip(stations, loaded, strict=True):
        _check_loads(st_, rs)


def test_deterministic_for_a_seed() -> None:
    a, b = generate_station(123, 5), generate_station(123, 5)
    assert a.geojson == b.geojson
    assert a.routes == b.routes
    assert generate_station(124, 5).geojson != a.geojson


def test_lengths_in_range(stations: list[SyntheticStation]) -> None:
    p = SyntheticParams()
    for st_ in stations:
        for r in st_.routes.values():
            # Drawn to length in metres, then rounded to 1e-7 degrees: 0.05 m slack.
            assert 1500.0 - 0.05 <= r.length_m <= 5000.0 + 0.05
            forks = [bp.s_fork_m for bp in r.branch_points]
            gaps = np.diff([0.0, *forks])
            # Between branch points (and from the station to the first) 100-600 m;
            # at least 100 m from the last branch point to the end.
            assert np.all((gaps >= p.segment_m[0] - 0.05) & (gaps <= p.segment_m[1] + 0.05))
            assert r.length_m - (forks[-1] if forks else 0.0) >= p.segment_m[0] - 0.05


def _heading(xy: np.ndarray, k: int) -> float:
    dx, dy = xy[k + 1] - xy[k]
    return math.degrees(math.atan2(dx, dy)) % 360.0


def _vertex_at(mr: MetricRoute, s: float) -> int:
    k = int(np.argmin(np.abs(mr.cum - s)))
    assert abs(mr.cum[k] - s) < 1e-6  # every branch point is a vertex
    return k


def test_branch_angles_land_in_their_classes(
    stations: list[SyntheticStation], loaded: list[RouteSet]
) -> None:
    seen: set[AngleClass] = set()
    for st_, rs in zip(stations, loaded, strict=True):
        for rid, meta in st_.routes.items():
            mr = rs[rid]
            for bp in meta.branch_points:
                lo, hi = ANGLE_RANGES[bp.angle_class]
                assert lo <= bp.angle_deg <= hi
                seen.add(bp.angle_class)
                # Measured on the file's geometry: the first (20 m) segments after the
                # fork. Rounding to 1e-7 degrees moves a vertex by up to 0.6 cm, which
                # turns each segment by up to ~0.025 degrees.
                other = rs[bp.other_routes[0]]
                k, j = _vertex_at(mr, bp.s_fork_m), _vertex_at(other, bp.s_fork_m)
                measured = heading_difference(_heading(mr.xy, k), _heading(other.xy, j))
                assert measured == pytest.approx(bp.angle_deg, abs=0.1)
                # This route's own turn: the last segment before the fork may be as
                # short as 1 m, so a centimetre of rounding is worth up to 0.6 degrees.
                before, after = _heading(mr.xy, k - 1), _heading(mr.xy, k)
                turn = (after - before + 180.0) % 360.0 - 180.0
                assert turn == pytest.approx(bp.turn_deg, abs=1.0)
    assert seen == set(AngleClass)


def _gap(
    line: LineString, others: LineString | MultiLineString, s: float | np.ndarray
) -> np.ndarray:
    """Distance from the points at ``s`` along ``line`` to ``others``."""
    pts = shapely.line_interpolate_point(line, np.atleast_1d(s))
    return np.asarray(shapely.distance(pts, others))


def test_s_apart_is_where_the_branches_are_10_m_apart(
    stations: list[SyntheticStation], loaded: list[RouteSet]
) -> None:
    for st_, rs in zip(stations, loaded, strict=True):
        for rid, meta in st_.routes.items():
            line = rs[rid].line
            for bp in meta.branch_points:
                others = MultiLineString([rs[o].line for o in bp.other_routes])
                assert bp.s_fork_m < bp.s_apart_m
                assert float(_gap(line, others, bp.s_apart_m)[0]) == pytest.approx(10.0, abs=0.01)
                before = np.arange(bp.s_fork_m, bp.s_apart_m - 0.05, 0.25)
                assert np.all(_gap(line, others, before) < 10.0)
                # ... and they do not come closer again (the gap grows, within 0.5 m).
                after = np.arange(bp.s_apart_m, min(bp.s_apart_m + 300.0, line.length), 1.0)
                assert np.all(_gap(line, others, after) > 9.5)


def test_s_apart_on_straight_streets_follows_the_angle() -> None:
    # Without curvature, a route leaving at angle a to the other branch is
    # d * sin(a) from it after d metres (for a > 90 degrees the nearest part of the
    # other route is the shared stretch behind the fork, at the same distance),
    # except for the branch going straight on past a turn of more than 90
    # degrees: the nearest point of the other route is then the fork itself.
    p = SyntheticParams(drift_deg=0.0, bends_per_km=0.0)
    count = 0
    for seed in range(3):
        st_ = generate_station(seed, 6, params=p)
        for meta in st_.routes.values():
            for bp in meta.branch_points:
                a = math.radians(bp.angle_deg)
                own = abs(bp.turn_deg)
                if bp.angle_deg > 90.0 and own < bp.angle_deg / 2:
                    expected = 10.0
                else:
                    expected = 10.0 / math.sin(a)
                # Rounding the vertices to 1e-7 degrees (<= 1 cm) turns the streets by up
                # to ~2e-4 rad, and 10 / sin(a) moves by cot(a) * 2e-4 of itself: 0.1 %
                # at 10 degrees.
                assert bp.s_apart_m - bp.s_fork_m == pytest.approx(expected, rel=2e-3, abs=0.02)
                count += 1
    assert count > 10


def test_shared_stretches_share_signal_ids(
    stations: list[SyntheticStation], loaded: list[RouteSet]
) -> None:
    p = SyntheticParams()
    for st_, rs in zip(stations, loaded, strict=True):
        for name, through in st_.signals.items():
            stops = {
                rs[r].signals[[s.intersection for s in rs[r].signals].index(name)].stop_line_m
                for r in through
            }
            assert len(stops) == 1  # one stop line, at the same distance on every route
        for a, b in itertools.combinations(st_.routes.values(), 2):
            fork = next(bp for bp in a.branch_points if b.id in bp.other_routes)
            a_before = [
                k for k, s in zip(a.signals, a.signal_s_m, strict=True) if s < fork.s_fork_m
            ]
            b_before = [
                k for k, s in zip(b.signals, b.signal_s_m, strict=True) if s < fork.s_fork_m
            ]
            assert a_before == b_before
            assert not set(a.signals[len(a_before) :]) & set(b.signals[len(b_before) :])
            for k in a_before:
                assert set(st_.signals[k]) >= {a.id, b.id}
        for r in st_.routes.values():
            spacing = np.diff([0.0, *r.signal_s_m])
            assert np.all(spacing >= p.signal_spacing_m[0] - 1e-6)
            assert np.all(spacing <= p.signal_spacing_m[1] + 1e-6)
            assert r.length_m - r.signal_s_m[-1] <= p.signal_spacing_m[1]


def test_parted_routes_keep_their_distance(
    stations: list[SyntheticStation], loaded: list[RouteSet]
) -> None:
    for st_, rs in zip(stations, loaded, strict=True):
        for a, b in itertools.permutations(st_.routes.values(), 2):
            fork = next(bp for bp in a.branch_points if b.id in bp.other_routes)
            line, other = rs[a.id].line, rs[b.id].line
            # Metre by metre near the fork, where the routes part ...
            ss = np.arange(fork.s_fork_m, min(fork.s_fork_m + 800.0, line.length), 1.0)
            d = _gap(line, other, ss)
            reach = np.nonzero(d > 30.0)[0]
            assert reach.size, f"{a.id} is not 30 m from {b.id} 800 m after their fork"
            k = int(reach[0])
            assert np.max(np.maximum.accumulate(d[:k]) - d[:k], initial=0.0) <= 0.5 + 1e-6
            # ... then all the rest at once.
            rest = substring(line, float(ss[k]), line.length)
            assert shapely.distance(rest, other) > 30.0 - 1e-6, f"{a.id} comes back to {b.id}"
        for r in st_.routes.values():
            # No segment (20 m at most) comes within 30 m of one that starts 150 m or
            # more after its end: a point is then 30 m from every segment starting
            # 170 m or more further along.
            mr = rs[r.id]
            segments = shapely.linestrings(np.stack([mr.xy[:-1], mr.xy[1:]], axis=1))
            ss = np.arange(0.0, mr.length, 2.0)
            pts = shapely.line_interpolate_point(mr.line, ss)
            i, j = shapely.STRtree(segments).query(pts, predicate="dwithin", distance=30.0)
            assert np.all(mr.cum[j] < ss[i] + 170.0), f"{r.id} runs back along itself"


def test_a_city_of_50_routes_has_about_200_signals(city: SyntheticCity) -> None:
    # Over seeds 0-39 the count ranged from 180 to 230 (mean 203); 160-250 leaves room.
    assert len(city.routes) == 50
    assert 160 <= len(city.signals) <= 250
    with tempfile.TemporaryDirectory() as tmp:
        rs = load_routes(write_geojson(city, Path(tmp) / "city.geojson"))
    _check_loads(city, rs)
    assert {mr.route.station for mr in rs} == {s.id for s in city.stations}
    lines = {s.id: MultiLineString([rs[r].line for r in s.routes]) for s in city.stations}
    for a, b in itertools.combinations(lines, 2):
        assert shapely.distance(lines[a], lines[b]) > 30.0
    assert len({s.id for s in city.stations}) == 5
    assert len(city.signals) == sum(len(s.signals) for s in city.stations)


def test_single_route_station() -> None:
    st_ = generate_station(3, 1)
    (route,) = st_.routes.values()
    assert route.branch_points == ()
    assert Point(st_.x, st_.y).distance(Point(route.xy[0])) < 0.02


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_m": (600.0, 100.0)},
        {"route_length_m": (1500.0, 1000.0)},
        {"route_length_mode_m": 6000.0},
        {"apart_m": 40.0},
        {"angle_weights": (0.0, 0.0, 0.0)},
    ],
)
def test_params_reject_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="SyntheticParams"):
        SyntheticParams(**kwargs)  # type: ignore[arg-type]


def test_impossible_requests_are_errors() -> None:
    with pytest.raises(ValueError, match="at least one route"):
        generate_station(1, 0)
    tight = SyntheticParams(max_attempts=2, clearance_m=400.0, apart_m=10.0)
    with pytest.raises(ValueError, match="no layout"):
        generate_station(1, 8, params=tight)
