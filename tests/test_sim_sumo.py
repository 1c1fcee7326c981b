"""The SUMO backend: export, lights following our controllers, agreement with the
in-process model, and the pre-empted run through the daemon."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preemption.cli.simulate import Setup
from preemption.cli.sumo_run import (
    Loaded,
    _setup,
    compare,
    compare_run,
    load,
    run_inprocess,
    run_sumo,
    sumo_section,
    without_demand,
)
from routes.geojson import load_routes_from_document
from sim.controller import Aspect, green_interval_at
from sim.street import EngineTrip, SignalPassage
from sim.sumo import SumoStreet, libsumo_available
from sim.sumo_compare import TripAgreement, compare_sweep, compare_trips
from sim.sumo_export import SUMO_STATE, build_edges, export_network
from sim.sumo_realnet import RouteDistance, built_network, traffic_lights

from .helpers import DEMO_DIR

SUMO_MISSING = libsumo_available()
needs_sumo = pytest.mark.skipif(
    SUMO_MISSING is not None, reason=f"SUMO backend not runnable: {SUMO_MISSING}"
)


@pytest.fixture(scope="module")
def demo_traffic() -> Loaded:
    return load(DEMO_DIR / "scenario.toml")


@pytest.fixture(scope="module")
def demo(demo_traffic: Loaded) -> Loaded:
    """The demo corridor without background traffic: the 2 s / 2 % bar applies."""
    scen, dep, routes = demo_traffic
    ics = [ic.model_copy(update={"demand": []}) for ic in scen.intersections]
    return scen.model_copy(update={"intersections": ics}), dep, routes


# -- export -------------------------------------------------------------------------------


@needs_sumo
def test_exported_lanes_are_as_long_as_the_routes_and_end_at_the_stop_lines(
    demo: Loaded, tmp_path: Path
) -> None:
    import sumolib

    scen, _, routes = demo
    exported = export_network(scen, routes, tmp_path)
    net = sumolib.net.readNet(str(exported.net_file))
    for mr in routes:
        edges = exported.routes[mr.id].edges
        lengths = [net.getEdge(e).getLanes()[0].getLength() for e in edges]
        assert sum(lengths) == pytest.approx(mr.length, rel=0.01)
        ends = [sum(lengths[: k + 1]) for k in range(len(lengths))]
        for sig in mr.signals:
            assert min(abs(e - sig.stop_line_m) for e in ends) < 0.01 * sig.stop_line_m
        # Consecutive edges are connected, so SUMO can drive the route.
        for a, b in itertools.pairwise(edges):
            assert net.getEdge(b) in net.getEdge(a).getOutgoing()
    # R1 and R2 share the trunk up to their branch: the same edges, not copies.
    r1, r2 = exported.routes["R1"].edges, exported.routes["R2"].edges
    shared = [a for a, b in zip(r1, r2, strict=False) if a == b]
    assert sum(net.getEdge(e).getLength() for e in shared) == pytest.approx(1200, abs=2)


@needs_sumo
def test_route_and_cross_street_movements_are_driven_by_their_groups(
    demo_traffic: Loaded, tmp_path: Path
) -> None:
    import sumolib

    scen, _, routes = demo_traffic
    exported = export_network(scen, routes, tmp_path)
    net = sumolib.net.readNet(str(exported.net_file))
    route_edges = {e for r in exported.routes.values() for e in r.edges}
    for iid, links in exported.signals.items():
        by_index = {idx: lane_in for lane_in, _, idx in net.getTLS(links.tl_id).getConnections()}
        assert sorted(by_index) == list(range(len(links.groups)))
        for idx, lane_in in by_index.items():
            edge = lane_in.getEdge().getID()
            on_street = edge in route_edges or edge == f"{iid}.Oin"  # route or opposite
            # The demo's programs: group A serves the route's street, B the cross street.
            assert links.groups[idx] == ("A" if on_street else "B"), (iid, idx)
        assert len(links.cross_in) == 2
        # Every approach with demand has its way through the intersection.
        ic = next(c for c in scen.intersections if c.id == iid)
        assert set(links.demand_edges) == {d.approach for d in ic.demand}


def _corridor_doc(
    trunk: list[tuple[float, float]],
    left: list[tuple[float, float]],
    right: list[tuple[float, float]],
    signal_frac: float,
) -> dict[str, Any]:
    def lonlat(pts: list[tuple[float, float]]) -> list[list[float]]:
        return [[8.5 + x / 72_000, 49.49 + y / 111_000] for x, y in pts]

    def feature(rid: str, pts: list[tuple[float, float]]) -> dict[str, Any]:
        length = sum(math.dist(a, b) for a, b in itertools.pairwise(pts))
        return {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": lonlat(pts)},
            "properties": {
                "kind": "route",
                "id": rid,
                "station": "S",
                "signals": [
                    {
                        "intersection": f"K{rid}",
                        "controller": "C",
                        "approach": "1",
                        "stop_line_m": round(signal_frac * length, 1),
                    }
                ],
            },
        }

    return {
        "type": "FeatureCollection",
        "features": [feature("A", trunk + left), feature("B", trunk + right)],
    }


_step = st.tuples(st.floats(20, 300), st.floats(-60, 60))


def _walk(
    start: tuple[float, float], steps: list[tuple[float, float]], turn: float
) -> list[tuple[float, float]]:
    pts, (x, y), heading = [], start, 0.0
    for dist, bend in steps:
        heading += math.radians(bend + turn)
        x, y = x + dist * math.sin(heading), y + dist * math.cos(heading)
        pts.append((x, y))
    return pts


@settings(max_examples=40)
@given(
    trunk=st.lists(_step, min_size=1, max_size=4),
    left=st.lists(_step, min_size=1, max_size=3),
    right=st.lists(_step, min_size=1, max_size=3),
    signal_frac=st.floats(0.1, 0.95),
)
def test_edges_cover_each_route_exactly_and_share_the_common_trunk(
    trunk: list[tuple[float, float]],
    left: list[tuple[float, float]],
    right: list[tuple[float, float]],
    signal_frac: float,
) -> None:
    trunk_pts = [(0.0, 0.0), *_walk((0.0, 0.0), trunk, 0.0)]
    end = trunk_pts[-1]
    doc = _corridor_doc(trunk_pts, _walk(end, left, -40.0), _walk(end, right, 40.0), signal_frac)
    routes = load_routes_from_document(doc, epsg=25832)
    edges, route_edges, _ = build_edges(routes, ["A", "B"], {"A": 13.9, "B": 13.9})
    trunk_len = float(routes["A"].cum[len(trunk_pts) - 1])  # as projected
    for rid in ("A", "B"):
        mr, re_ = routes[rid], route_edges[rid]
        assert sum(edges[e].length for e in re_.edges) == pytest.approx(mr.length, rel=1e-9)
        assert re_.starts[0] == 0.0
        assert all(b > a for a, b in itertools.pairwise(re_.starts))
        # The stop line is a node: an edge starts there.
        sl = mr.signals[0].stop_line_m
        assert min(abs(s - sl) for s in re_.starts[1:]) <= 0.02
        for a, b in itertools.pairwise(re_.edges):
            assert edges[a].to_node == edges[b].from_node
    shared = set(route_edges["A"].edges) & set(route_edges["B"].edges)
    assert sum(edges[e].length for e in shared) == pytest.approx(trunk_len, abs=0.5)


# -- runs ---------------------------------------------------------------------------------


@needs_sumo
def test_sumo_links_show_what_our_controllers_showed_at_every_step(demo: Loaded) -> None:
    import libsumo

    scen, _, routes = demo
    with SumoStreet(scen, routes, scen.engines[0]) as street:
        lanes = {
            iid: {f"{m}_0": g for m, g in zip(_incoming(street, iid), links.groups, strict=True)}
            for iid, links in street.network.signals.items()
        }
        seen: set[str] = set()
        for _ in range(800):  # 80 s: more than a cycle at every intersection
            shown = {
                iid: {g: c.aspect(g) for g in c.program.groups}
                for iid, c in street.controllers.items()
            }
            street.advance(scen.scenario.step_s)
            for iid, by_lane in lanes.items():
                for lane, group in by_lane.items():
                    (link,) = libsumo.lane.getLinks(lane)
                    assert link[5] == SUMO_STATE[shown[iid][group]], (iid, lane, street.t)
                    seen.add(link[5])
        assert seen == {"G", "y", "r"}


def _incoming(street: SumoStreet, iid: str) -> list[str]:
    """The incoming edge of each of an intersection's links, in link index order."""
    import libsumo

    links = libsumo.trafficlight.getControlledLinks(street.network.signals[iid].tl_id)
    return [str(lk[0][0]).rsplit("_", 1)[0] for lk in links]


@pytest.fixture(scope="module")
def baseline(demo: Loaded) -> tuple[EngineTrip, EngineTrip, TripAgreement]:
    if SUMO_MISSING is not None:
        pytest.skip(SUMO_MISSING)
    return compare(demo, preempt=False)


@needs_sumo
def test_without_pre_emption_sumo_agrees_with_the_in_process_model(
    baseline: tuple[EngineTrip, EngineTrip, TripAgreement],
) -> None:
    ours, theirs, agreement = baseline
    assert ours.stops >= 3  # the baseline meets reds: the comparison is not a free run
    assert theirs.stops == ours.stops
    assert [p.intersection for p in theirs.passages] == ["K1", "K2", "K3", "K4", "K5"]
    assert agreement.passed, agreement.to_json()
    assert agreement.max_arrival_difference_s <= 2.0
    assert abs(agreement.travel_time_difference) <= 0.02
    assert agreement.aspects_agree
    assert theirs.waiting_time == pytest.approx(ours.waiting_time, rel=0.05, abs=1.0)


@needs_sumo
def test_in_sumo_the_engine_stands_only_at_stop_lines_our_controller_holds_red(
    demo: Loaded,
) -> None:
    scen, _, routes = demo
    engine = scen.engines[0]
    with SumoStreet(scen, routes, engine) as street:
        while not street.finished:
            street.advance(scen.scenario.step_s)
        trip = street.trip()
        stop_lines = [(s.stop_line_m, s.intersection, s.group) for s in street.signals]
        standing = [p for p in trip.trajectory if p.v < 0.1 and p.t > engine.depart_s + 1]
        assert standing, "the baseline engine never stood: nothing was tested"
        for p in standing:
            ahead = [sl for sl in stop_lines if sl[0] >= p.s]
            assert ahead, p
            s_line, iid, group = ahead[0]
            assert s_line - p.s < 3.0, f"stood {s_line - p.s:.1f} m before {iid}'s stop line"
            log = street.controllers[iid].green_log.get(group, [])
            green = green_interval_at(log, p.t)
            # Standing in the first step of a green is moving off, not waiting at red.
            assert green is None or p.t - green[0] <= 1.0, (iid, p)


@needs_sumo
def test_pre_empted_run_in_sumo_meets_green_everywhere_and_agrees(demo: Loaded) -> None:
    ours = run_inprocess(demo, preempt=True)
    theirs = run_sumo(demo, preempt=True)
    assert [p.aspect for p in theirs.passages] == [Aspect.GREEN] * 5
    assert theirs.stops == 0
    agreement = compare_trips(ours, theirs)
    assert agreement.passed, agreement.to_json()


@needs_sumo
def test_a_second_simulation_in_the_process_is_refused_and_close_frees_it(
    demo: Loaded,
) -> None:
    scen, _, routes = demo
    with SumoStreet(scen, routes, scen.engines[0]) as street:
        with pytest.raises(RuntimeError, match="already open"):
            SumoStreet(scen, routes, scen.engines[0])
        street.advance(1.0)
        assert street.t == pytest.approx(1.0)
        with pytest.raises(ValueError, match="whole steps"):
            street.advance(0.05)
    with SumoStreet(scen, routes, scen.engines[0]) as again:
        again.advance(0.1)


@needs_sumo
def test_sumo_section_reports_tripinfo_and_agreement(demo: Loaded) -> None:
    section = sumo_section(demo, preempt=False)
    assert section["sumo"]["stops"] >= 3
    assert {"travelTime", "timeLoss", "waitingTime", "stops"} <= set(section["sumo"])
    assert section["agreement"]["passed"] is True


# -- comparison ---------------------------------------------------------------------------


def _trip(times: list[float], travel: float) -> EngineTrip:
    return EngineTrip(
        vehicle="V",
        route="R",
        depart=0.0,
        arrival=travel,
        route_length=1000.0,
        travel_time=travel,
        time_loss=0.0,
        waiting_time=0.0,
        stops=0,
        passages=tuple(
            SignalPassage(f"K{i}", "A", t, Aspect.GREEN, 10.0) for i, t in enumerate(times)
        ),
    )


def test_comparison_fails_beyond_the_bar_and_passes_within() -> None:
    ref = _trip([10.0, 50.0], 100.0)
    assert compare_trips(ref, _trip([11.9, 48.1], 101.9)).passed
    assert not compare_trips(ref, _trip([12.1, 50.0], 100.0)).passed  # arrival 2.1 s off
    assert not compare_trips(ref, _trip([10.0, 50.0], 102.1)).passed  # 2.1 % slower
    assert not compare_trips(ref, _trip([10.0], 100.0)).passed  # a signal not passed
    sweep = compare_sweep([ref, _trip([], 200.0)], [_trip([], 110.0), _trip([], 230.0)])
    assert sweep.difference == pytest.approx(40 / 300)
    assert sweep.passed
    assert not compare_sweep([ref], [_trip([], 116.0)]).passed


# -- background traffic -------------------------------------------------------------------


def _with_demand(demo: Loaded, route_veh_h: float, cross_veh_h: float) -> Loaded:
    from sim.scenario import DemandConfig

    scen, dep, routes = demo
    demand = [
        DemandConfig(approach="1", veh_h=route_veh_h),
        DemandConfig(approach="cross", group="B", veh_h=cross_veh_h),
    ]
    ics = [ic.model_copy(update={"demand": demand}) for ic in scen.intersections]
    return scen.model_copy(update={"intersections": ics}), dep, routes


def test_background_arrivals_are_the_in_process_queues_own() -> None:
    from sim.controller import SignalController
    from sim.sumo_demand import arrival_times
    from sim.traffic import ApproachQueue, ArrivalKind

    ctrl = SignalController(
        "K1", demo_program := load(DEMO_DIR / "scenario.toml")[0].intersections[0].program()
    )
    queue = ApproachQueue("K1", "1", "A", 500.0, [], seed=7)  # never green: all queue up
    ours = arrival_times(7, "K1", "1", 500.0, ArrivalKind.POISSON, 600.0)
    queue.advance_to(600.0)
    assert queue.arrived == len(ours) > 50
    assert ctrl.program == demo_program


@needs_sumo
def test_with_traffic_the_sweep_mean_travel_time_agrees_within_15_percent(
    demo: Loaded,
) -> None:
    loaded = _with_demand(demo, 600.0, 600.0)
    departures = [10.0, 31.0, 52.0, 73.0]
    ours = [run_inprocess(loaded, preempt=False, depart_s=d) for d in departures]
    theirs = [run_sumo(loaded, preempt=False, depart_s=d) for d in departures]
    sweep = compare_sweep(ours, theirs)
    assert sweep.passed, sweep.to_json()
    # The queues cost the engine time in both models against the empty street.
    empty = [run_sumo(demo, preempt=False, depart_s=d) for d in departures]
    assert sum(t.travel_time for t in theirs) > sum(t.travel_time for t in empty)


# -- the real network a built scenario came from --------------------------------------------

BUILT = DEMO_DIR.parent  # config/scenarios: berlin/, braunschweig/ were built from SUMO networks


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [("demo", None), ("braunschweig", "braunschweig.net.xml.gz")],
)
def test_the_network_is_the_one_the_route_file_names_when_it_exists(
    scenario: str, expected: str | None
) -> None:
    _, dep, _ = load(BUILT / scenario / "scenario.toml")
    found = built_network(dep.routes.files)
    assert (found.name if found else None) == expected


@given(
    gaps=st.lists(st.floats(0.5, 300.0), min_size=2, max_size=8),
    stretch=st.lists(st.floats(0.9, 1.1), min_size=8, max_size=8),
    u=st.floats(0.0, 1.0),
)
def test_sumo_distance_maps_onto_the_route_monotonically_and_hits_every_stop_line(
    gaps: list[float], stretch: list[float], u: float
) -> None:
    route = list(itertools.accumulate([0.0, *gaps]))
    sumo = list(itertools.accumulate([0.0, *(g * k for g, k in zip(gaps, stretch, strict=False))]))
    dist = RouteDistance(sumo, route)
    for d, s in zip(sumo, route, strict=True):
        assert dist.to_route(d) == pytest.approx(s, abs=1e-6)
    a, b = u * sumo[-1], min(u * sumo[-1] + 1.0, sumo[-1])
    assert dist.to_route(a) <= dist.to_route(b) + 1e-9


@pytest.fixture(scope="module")
def braunschweig() -> Setup:
    return _setup(BUILT / "braunschweig/scenario.toml")


@needs_sumo
def test_on_the_real_network_sumo_shows_our_aspects_link_by_link(braunschweig: Setup) -> None:
    import libsumo

    scen = braunschweig.scenario
    engine = scen.engines[0]
    with SumoStreet(
        scen, braunschweig.routes, engine, route_files=braunschweig.deployment.routes.files
    ) as street:
        assert street.real_net is not None
        assert street.background > 0
        (ic,) = scen.intersections
        tl = traffic_lights(braunschweig.deployment.routes.files)[ic.id]
        n = len(libsumo.trafficlight.getControlledLinks(tl))
        seen: set[str] = set()
        for _ in range(1600):  # 160 s: more than the 144 s cycle
            ctrl = street.controllers[ic.id]
            shown = [
                None if f"L{i}" not in ctrl.program.groups else ctrl.aspect(f"L{i}")
                for i in range(n)
            ]
            street.advance(scen.scenario.step_s)
            state = libsumo.trafficlight.getRedYellowGreenState(tl)
            for i, a in enumerate(shown):
                want = "r" if a in (None, Aspect.RED) else "y" if a is Aspect.YELLOW else "Gg"
                assert state[i] in want, (i, a, state, street.t)
            seen |= set(state)
        assert {"G", "g", "y", "r"} <= seen


@needs_sumo
def test_preemption_sim_sumo_json_on_a_built_scenario_runs_on_its_network(
    braunschweig: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    from preemption.cli import main

    assert main(["sim", str(braunschweig.path), "--sumo", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    sumo = doc["sumo"]
    assert sumo["network"] == "real"
    assert sumo["net_file"].endswith("braunschweig.net.xml.gz")
    assert [s["aspect"] for s in sumo["signals"]] == ["green"]  # pre-empted
    assert sumo["stops"] == 0
    assert all(abs(c["difference_m"]) < 5.0 for c in sumo["stop_lines"]), sumo["stop_lines"]
    # The scenario has background traffic: judged by the sweep bar (15 % on the mean
    # travel time), one departure being a sweep of one; the strict per-signal figures
    # ride along under per_run.
    agreement = doc["agreement"]
    assert agreement["bar"] == {"mean_travel_time_pct": 15.0}
    assert agreement["runs"] == 1
    assert agreement["passed"] is True
    assert {"passed", "travel_time_difference_pct", "signals"} <= set(agreement["per_run"][0])


@pytest.fixture(scope="module")
def berlin_quiet() -> Setup:
    return without_demand(BUILT / "berlin/scenario.toml")


@needs_sumo
@pytest.mark.parametrize("preempt", [False, True])
def test_berlin_r1_without_traffic_agrees_on_the_real_network(
    berlin_quiet: Setup, preempt: bool
) -> None:
    ours, theirs, agreement = compare_run(berlin_quiet, preempt=preempt)
    assert theirs.network == "real"
    assert [p.intersection for p in theirs.trip.passages] == [f"K{k}" for k in range(1, 9)]
    if preempt:
        assert {p.aspect for p in theirs.trip.passages} == {Aspect.GREEN}
        assert theirs.trip.stops == 0
    else:
        assert ours.stops >= 3
        assert theirs.trip.stops == ours.stops
    assert agreement.aspects_agree
    # The bar: arrivals within 2 s, travel time within 2 % (docs/sumo.md has
    # the figures: both engines drive the route's speed profile, turns included).
    assert agreement.max_arrival_difference_s <= 2.0, agreement.to_json()
    assert abs(agreement.travel_time_difference) <= 0.02, agreement.to_json()
    assert agreement.passed
