"""`preemption routes build | check | show` on the bundled real networks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import sumolib
from hypothesis import given
from hypothesis import strategies as st

from preemption.cli import main
from routes.build import RouteBuildError, build_route
from routes.buildrun import BuildReport, run_build
from routes.buildspec import StationSpec, TargetSpec
from routes.geojson import load_routes
from routes.programs import ProgramError, program_from_phases
from routes.roadnet import find_netconvert, load_network
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "config" / "scenarios"
NETWORKS = ROOT / "config" / "networks"


def _copy_spec(city: str, dest: Path) -> Path:
    """The city's spec in a temporary directory, its network path made absolute."""
    text = (SCENARIOS / city / "routes.build.toml").read_text(encoding="utf-8")
    text = text.replace('file = "../../networks/', f'file = "{NETWORKS.as_posix()}/')
    spec = dest / "routes.build.toml"
    spec.write_text(text, encoding="utf-8")
    return spec


@pytest.fixture(scope="module", params=["braunschweig", "berlin"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuildReport:
    out = tmp_path_factory.mktemp(request.param)
    return run_build(_copy_spec(request.param, out))


def _features(path: Path) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    feats: list[dict[str, Any]] = doc["features"]
    return feats


def _crossed_tls(net: Any, edges: list[str]) -> list[str]:
    """Signalised TLs along consecutive edges, straight from sumolib's connections."""
    out: list[str] = []
    for a, b in itertools.pairwise(edges):
        conns = net.getEdge(a).getOutgoing()[net.getEdge(b)]
        for c in conns:
            tl = c.getTLSID()
            if tl and net.getTLS(tl).getPrograms() and tl not in out:
                out.append(tl)
    return out


def test_signals_are_exactly_the_traffic_lights_crossed_in_order(built: BuildReport) -> None:
    routes_file = built.written[0]
    routes = load_routes(routes_file)
    net = sumolib.net.readNet(str(built.network.path), withPrograms=True)
    feats = _features(routes_file)
    tl_of = {
        (f["properties"]["intersection"]): f["properties"]["sumo_tl"]
        for f in feats
        if f["properties"]["kind"] == "signal"
    }
    for f in feats:
        props = f["properties"]
        if props["kind"] != "route":
            continue
        mr = routes[props["id"]]
        expected = _crossed_tls(net, props["sumo_edges"])
        assert [tl_of[s.intersection] for s in mr.signals] == expected
        stops = [s.stop_line_m for s in mr.signals]
        assert all(b > a for a, b in itertools.pairwise(stops))
        assert min(stops, default=0) >= 0
        assert max(stops, default=0) <= mr.length


def test_routes_share_a_trunk_and_pass_the_check(built: BuildReport, capsys: Any) -> None:
    assert len(built.routes) >= 4
    # every route leaves the station the same way, through the same first signal
    assert len({r.edges[:2] for r in built.routes}) == 1
    assert len({r.signals[0].tl for r in built.routes}) == 1
    assert main(["routes", "check", str(built.written[0])]) == 0
    assert "branch point" in capsys.readouterr().out


def test_deployment_and_scenario_are_accepted(built: BuildReport) -> None:
    _, dep_file, scen_file = built.written
    assert main(["check-config", str(dep_file)]) == 0
    scen, dep = load_scenario(scen_file, adapters={"simlink", "log"})
    assert {e.route for e in scen.engines} == {r.id for r in built.routes}
    groups = {i.id: {g for s in i.stages for g in s.groups} for i in scen.intersections}
    for sig in built.signals:
        inter = next(i for i in scen.intersections if i.id == sig.intersection)
        # the route's movement is served by some stage of the converted program
        assert inter.approaches[sig.approach] in groups[sig.intersection]
    assert {c.id for c in dep.controllers} == {s.controller for s in built.signals}


def test_waypoint_pins_the_path() -> None:
    rn = load_network(NETWORKS / "berlin-adlershof.net.xml.gz")
    station = StationSpec(id="S", lon=13.520552, lat=52.428465)
    free = build_route(rn, station, TargetSpec(id="R", edge="-314415495#5"), 60)
    pinned = build_route(
        rn, station, TargetSpec(id="R", edge="-314415495#5", via_edges=["-318210361#0"]), 60
    )
    assert "-318210361#0" not in free.edges
    assert "-318210361#0" in pinned.edges
    assert pinned.travel_time_s >= free.travel_time_s


def test_unreachable_target_is_a_clear_error(tmp_path: Path, capsys: Any) -> None:
    rn = load_network(NETWORKS / "braunschweig.net.xml.gz")
    station = StationSpec(id="S", lon=10.531664, lat=52.275572)
    with pytest.raises(RouteBuildError, match=r"route 'X'.*cannot be reached"):
        build_route(rn, station, TargetSpec(id="X", lon=10.530264, lat=52.278945), 80)
    spec = _copy_spec("braunschweig", tmp_path)
    text = spec.read_text(encoding="utf-8")
    spec.write_text(
        text.replace("lon = 10.535731\nlat = 52.278306", "lon = 10.530264\nlat = 52.278945")
    )
    assert main(["routes", "build", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "route 'BS1'" in err
    assert "cannot be reached" in err


def test_check_names_route_and_feature_of_a_broken_file(tmp_path: Path, capsys: Any) -> None:
    src = SCENARIOS / "braunschweig" / "routes.geojson"
    doc = json.loads(src.read_text(encoding="utf-8"))
    k = next(i for i, f in enumerate(doc["features"]) if f["properties"]["kind"] == "signal")
    doc["features"][k]["properties"]["routes"] = ["BS1", "BS9"]
    broken = tmp_path / "broken.geojson"
    broken.write_text(json.dumps(doc))
    assert main(["routes", "check", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"feature #{k}" in err
    assert "'BS9'" in err


def test_check_finds_a_shared_signal_missing_on_one_route(tmp_path: Path, capsys: Any) -> None:
    src = SCENARIOS / "braunschweig" / "routes.geojson"
    doc = json.loads(src.read_text(encoding="utf-8"))
    sig = next(f for f in doc["features"] if f["properties"]["kind"] == "signal")
    sharing = sig["properties"]["routes"]
    assert len(sharing) >= 2
    dropped = sharing.pop()
    broken = tmp_path / "missing.geojson"
    broken.write_text(json.dumps(doc))
    assert main(["routes", "check", str(broken)]) == 2
    assert f"route {dropped!r}" in capsys.readouterr().err


def test_show_writes_a_readable_png(tmp_path: Path) -> None:
    import matplotlib.image

    out = tmp_path / "map.png"
    assert (
        main(["routes", "show", str(SCENARIOS / "berlin" / "routes.geojson"), "-o", str(out)]) == 0
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000
    h, w = matplotlib.image.imread(out).shape[:2]
    assert h >= 800
    assert w >= 800


OSM = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6">
 <node id="1" lat="52.4300" lon="13.5200"/>
 <node id="2" lat="52.4300" lon="13.5230"><tag k="highway" v="traffic_signals"/></node>
 <node id="3" lat="52.4300" lon="13.5260"/>
 <node id="4" lat="52.4320" lon="13.5230"/>
 <node id="5" lat="52.4280" lon="13.5230"/>
 <node id="6" lat="52.4300" lon="13.5215"/>
 <way id="10"><nd ref="1"/><nd ref="6"/><nd ref="2"/><nd ref="3"/>
  <tag k="highway" v="primary"/><tag k="name" v="Hauptstraße"/></way>
 <way id="11"><nd ref="4"/><nd ref="2"/><nd ref="5"/>
  <tag k="highway" v="secondary"/><tag k="name" v="Querstraße"/></way>
</osm>
"""


def test_osm_extract_is_converted_with_netconvert(tmp_path: Path) -> None:
    if find_netconvert() is None:
        pytest.skip("SUMO's netconvert is not installed (pip install '.[sumo]')")
    osm = tmp_path / "tiny.osm"
    osm.write_text(OSM, encoding="utf-8")
    rn = load_network(osm)
    assert rn.path.name == "tiny.net.xml.gz"
    assert rn.path.exists()
    assert rn.signalised, "the traffic_signals node should become a signalised junction"
    station = StationSpec(id="S", lon=13.5201, lat=52.4300)
    route = build_route(rn, station, TargetSpec(id="T", lon=13.5259, lat=52.4300), 30)
    assert [s.tl for s in route.signals] == sorted(rn.signalised)


def test_missing_network_and_spec_exit_2(tmp_path: Path, capsys: Any) -> None:
    assert main(["routes", "build", str(tmp_path / "none.toml")]) == 2
    spec = _copy_spec("braunschweig", tmp_path)
    spec.write_text(spec.read_text().replace("braunschweig.net.xml.gz", "nowhere.net.xml.gz"))
    assert main(["routes", "build", str(spec)]) == 2
    assert "road network file not found" in capsys.readouterr().err


phase_state = st.text(alphabet="GgryO", min_size=4, max_size=4)


@given(
    st.lists(
        st.tuples(st.floats(1, 90), st.one_of(st.none(), st.floats(1, 10)), phase_state),
        min_size=1,
        max_size=10,
    )
)
def test_program_conversion_invariants(phases: list[tuple[float, float | None, str]]) -> None:
    # A phase with yellow is a transition even if some links stay green through it.
    stage_phases = [(d, s) for d, _, s in phases if "y" not in s and any(c in "Gg" for c in s)]
    if not stage_phases:
        with pytest.raises(ProgramError, match="no green phase"):
            program_from_phases("tl", "0", "actuated", phases)
        return
    p = program_from_phases("tl", "0", "actuated", phases)
    green_links = {f"L{i}" for _, s in stage_phases for i, ch in enumerate(s) if ch in "Gg"}
    assert {g for stg in p.stages for g in stg.groups} == green_links
    total = sum(d for d, _ in stage_phases)
    assert sum(stg.green_s for stg in p.stages) == pytest.approx(total, abs=0.05 * len(phases))
    assert all(stg.green_s >= p.min_green_s for stg in p.stages)
    assert p.yellow_s > 0
    assert p.all_red_s >= 0


def test_demand_covers_every_approach_and_stays_below_capacity(built: BuildReport) -> None:
    _, _, scen_file = built.written
    scen, _ = load_scenario(scen_file, adapters={"simlink", "log"})
    rn = built.network
    for inter in scen.intersections:
        assert inter.demand, f"{inter.id}: no background traffic written"
        prog = inter.program()
        for d in inter.demand:
            group = inter.group_of(d)
            green = sum(s.green_s for s in prog.stages if group in s.groups)
            capacity = 1800.0 * green / prog.cycle_s
            assert 0 < d.veh_h <= 0.7 * capacity + 0.5, (inter.id, d)
        own = {d.approach for d in inter.demand if d.name == "route approach"}
        assert own == set(inter.approaches)
        # every other street entering the junction from outside has its own demand
        tl = next(s.tl for s in built.signals if s.intersection == inter.id)
        served = {g for s in prog.stages for g in s.groups}
        others = {
            a.edge for a in rn.approaches(tl) if a.edge not in own and f"L{a.link_index}" in served
        }
        assert {d.approach for d in inter.demand} - own == others


def test_queue_clearance_lengthens_the_transition(tmp_path: Path) -> None:
    """With demand the transition time a route signal asks for includes the queue's
    discharge; without, it is the program's minimum green plus intergreen."""
    spec = _copy_spec("braunschweig", tmp_path)
    with_demand = run_build(spec, tmp_path / "with")
    text = spec.read_text(encoding="utf-8")
    plain = "\n".join(ln for ln in text.splitlines() if not ln.startswith("demand ="))
    spec.write_text(plain, encoding="utf-8")
    without = run_build(spec, tmp_path / "without")
    for a, b in zip(with_demand.signals, without.signals, strict=True):
        assert a.transition_s >= b.transition_s + 2.0  # at least the start-up loss
    scen, _ = load_scenario(tmp_path / "without" / "scenario.toml", adapters={"simlink"})
    assert all(not i.demand for i in scen.intersections)


@given(
    st.floats(0, 1800),
    st.floats(0, 1800),
    st.floats(5, 60),
    st.floats(5, 60),
)
def test_queue_clearance_grows_with_demand(
    rate_a: float, rate_b: float, green_a: float, green_b: float
) -> None:
    from routes.buildout import Demand, queue_clearance
    from routes.programs import ProgramData, StageData

    prog = ProgramData(
        tl="T",
        program_id="0",
        kind="static",
        stages=(StageData(("L0",), green_a), StageData(("L1",), green_b)),
        yellow_s=3.0,
        all_red_s=2.0,
        min_green_s=5.0,
    )
    lo, hi = sorted((rate_a, rate_b))

    def clearance(rate: float) -> float:
        return queue_clearance(prog, "L0", Demand({}, rate, rate, 0.9))

    assert 2.0 <= clearance(lo) <= clearance(hi)
    # never more than the whole red at saturation flow could have queued
    red = green_b + 2 * 5.0
    assert clearance(hi) <= 2.0 + 2.0 * (red / 2.0 + (red / 2.0) ** 0.5) + 1e-9


def test_a_district_target_ends_where_the_route_first_enters_it() -> None:
    import shapely
    from pydantic import ValidationError

    rn = load_network(NETWORKS / "berlin-adlershof.net.xml.gz")
    station = StationSpec(id="S", lon=13.520552, lat=52.428465)
    lon, lat = 13.536979, 52.438757  # the R1 target of the Berlin spec
    dlon, dlat = 0.0025, 0.0015  # about 170 m each way
    corners = [
        (lon - dlon, lat - dlat),
        (lon + dlon, lat - dlat),
        (lon + dlon, lat + dlat),
        (lon - dlon, lat + dlat),
    ]
    to_point = build_route(rn, station, TargetSpec(id="P", lon=lon, lat=lat), 60)
    to_district = build_route(rn, station, TargetSpec(id="D", district=corners), 60)
    poly = shapely.Polygon([rn.to_xy(*c) for c in corners])
    *before, end = (shapely.Point(p) for p in to_district.xy)
    # ends at the district's edge (the geometry follows the lane the route keeps to, a
    # lane width or so from the lane the entry was found on)
    assert poly.boundary.distance(end) < 5.0
    assert not any(poly.contains(p) for p in before)  # and never was inside before
    assert to_district.travel_time_s < to_point.travel_time_s  # the centre is further in
    with pytest.raises(ValidationError, match="point, an edge or a district"):
        TargetSpec(id="X", lon=lon, lat=lat, district=corners)
    with pytest.raises(ValidationError, match="at least 3 corners"):
        TargetSpec(id="X", district=corners[:2])
