from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes.eta import EngineProfile, eta_band, travel_time
from routes.geojson import RouteSet
from routes.matcher import RouteMatcher

from .helpers import VEHICLE, fix_at


def test_on_the_shared_trunk_both_routes_are_compatible_and_none_commits(
    demo_routes: RouteSet,
) -> None:
    m = RouteMatcher(VEHICLE, demo_routes)
    for k, s in enumerate(range(0, 1150, 13)):
        pos = m.update(fix_at(demo_routes, "R1", float(s), float(k)))
        assert set(pos.compatible) == {"R1", "R2"}
        assert pos.committed is None
        assert sum(pos.compatible.values()) == pytest.approx(1.0)
        assert pos.distance_m == pytest.approx(s, abs=0.5)
        # Only the shared signals (K1..K3) may be asked for before the branch.
        ahead = {e.intersection for e in pos.etas if e.shared}
        assert ahead <= {"K1", "K2", "K3"}


def test_commits_to_the_route_taken_after_the_branch(demo_routes: RouteSet) -> None:
    m = RouteMatcher(VEHICLE, demo_routes)
    committed_at = None
    for k, s in enumerate(range(0, 1800, 13)):
        pos = m.update(fix_at(demo_routes, "R2", float(s), float(k)))
        if pos.committed and committed_at is None:
            committed_at = s
            assert pos.committed == "R2"
    assert committed_at is not None
    # The branch is at 1200 m; the routes diverge at 45 degrees.
    assert 1200 < committed_at < 1260
    assert [e.intersection for e in pos.etas] == ["K7"]  # K6 at 1550 m is behind


def test_leaving_the_route_and_driving_the_wrong_way_are_reported(demo_routes: RouteSet) -> None:
    m = RouteMatcher(VEHICLE, demo_routes)
    for k in range(10):
        assert m.update(fix_at(demo_routes, "R1", 100.0 + 13 * k, float(k))).on_route
    off = m.update(fix_at(demo_routes, "R1", 240.0, 10.0, lateral=80.0))
    assert not off.on_route
    assert off.etas == ()
    m = RouteMatcher(VEHICLE, demo_routes)
    for k in range(10):
        m.update(fix_at(demo_routes, "R1", 500.0 + 13 * k, float(k)))
    verdicts = [
        m.update(fix_at(demo_routes, "R1", 620.0 - 10 * k, 10.0 + k, reverse=True)).on_route
        for k in range(3)
    ]
    assert verdicts == [True, False, False]  # two wrong-way fixes: turned around


def test_a_single_multipath_jump_is_not_taken_as_motion(demo_routes: RouteSet) -> None:
    m = RouteMatcher(VEHICLE, demo_routes)
    for k in range(5):
        m.update(fix_at(demo_routes, "R1", 100.0 + 13 * k, float(k)))
    jumped = m.update(fix_at(demo_routes, "R1", 900.0, 5.0))
    assert jumped.on_route
    assert jumped.distance_m < 200
    assert m.update(fix_at(demo_routes, "R1", 178.0, 6.0)).distance_m == pytest.approx(178, abs=1)


@given(
    s=st.floats(min_value=0.0, max_value=2490.0),
    v=st.floats(min_value=0.0, max_value=25.0),
)
def test_every_signal_ahead_has_an_ordered_eta_band(s: float, v: float) -> None:
    from routes.geojson import load_routes

    from .helpers import DEMO_DIR

    routes = load_routes(DEMO_DIR / "routes.geojson", epsg=25832)
    pos = RouteMatcher(VEHICLE, routes).update(fix_at(routes, "R1", s, 0.0, speed=v))
    ahead = [sig for sig in routes["R1"].signals if sig.stop_line_m > pos.distance_m]
    assert [e.intersection for e in pos.etas] == [sig.intersection for sig in ahead]
    for e in pos.etas:
        assert 0 <= e.early_s <= e.eta_s <= e.late_s
        assert e.distance_m > 0
    assert [e.eta_s for e in pos.etas] == sorted(e.eta_s for e in pos.etas)


def test_travel_time_matches_the_kinematics_by_hand() -> None:
    # From standstill, 1 m/s^2 to 10 m/s takes 10 s and 50 m; then 50 m at 10 m/s: 5 s.
    assert travel_time(100.0, 0.0, 10.0, 1.0) == pytest.approx(15.0)
    # Within the acceleration phase: s = a t^2 / 2.
    assert travel_time(18.0, 0.0, 10.0, 1.0) == pytest.approx(6.0)
    assert travel_time(100.0, 20.0, 10.0, 1.0) == pytest.approx(5.0)
    early, eta, late = eta_band(300.0, 5.0, EngineProfile())
    assert early < eta < late
