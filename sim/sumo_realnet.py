"""The scenario in SUMO on the real road network its routes were built from.

A route file written by ``preemption routes build`` names its SUMO network
(top-level ``preemption_build.network``, relative to the file), each route's
edges (``sumo_edges``) and each signal's traffic light (``sumo_tl``) and
links (``sumo_links``). The built scenario names its signal groups ``L<i>`` =
SUMO link index i of that traffic light, and its demand approaches are SUMO
incoming edges. So such a scenario runs in SUMO on the network itself:

- the engine drives its route's ``sumo_edges`` from where the route starts on
  the first edge to where it ends on the last;
- every traffic light the scenario programs shows, for each link index i, what
  our controller shows group ``L<i>`` (G or g as SUMO's own program has it for
  that link, y, r); links no group of ours names (pedestrian crossings, links in
  no stage) stay red, so no green of SUMO's own timing can conflict with ours;
  traffic lights the scenario does not program run SUMO's own program;
- background demand: the in-process queues' arrivals (``sim.sumo_demand``), each
  car inserted on its approach edge in the lane of its group's link and leaving
  just past the junction on that link's outgoing edge.

Distances: SUMO's own distance along the route (its odometer, which counts
internal lanes) is mapped to the route file's distance piecewise linearly with a
knot at every stop line (the end of the approach lane, measured exactly while
the engine is on it) and at the route's end, so a passage in route terms is the
engine's front leaving the lane that ends at the stop line.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely

from sim.controller import Aspect, SignalController
from sim.scenario import EngineConfig, Scenario
from sim.sumo_demand import LEAD_M, BackgroundVehicle, arrival_times
from sim.sumo_export import SumoExportError

BUILD_MEMBER = "preemption_build"
SPEED_MARGIN = 1.02  # speedFactor headroom over the slowest lane of the route


def built_network(route_files: Sequence[Path]) -> Path | None:
    """The SUMO network a route file was built from, when it names one that exists."""
    for path in route_files:
        doc = _read(path)
        build = doc.get(BUILD_MEMBER)
        if isinstance(build, Mapping) and isinstance(build.get("network"), str):
            net: Path = (Path(path).parent / str(build["network"])).resolve()
            if net.is_file():
                return net
    return None


def _read(path: Path) -> Mapping[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SumoExportError(f"route file {path}: cannot read it ({exc})") from exc
    return doc if isinstance(doc, Mapping) else {}


@dataclass(frozen=True, slots=True)
class BuiltSignal:
    """A signal feature of a built route file: one stop line of one SUMO traffic light."""

    intersection: str
    tl: str
    approach_edge: str
    links: frozenset[int]  # the route's movement: SUMO link indices (``sumo_links``)


@dataclass(frozen=True, slots=True)
class BuiltRoute:
    id: str
    edges: tuple[str, ...]
    signals: tuple[BuiltSignal, ...]  # in driving order


def built_route(route_files: Sequence[Path], route_id: str) -> BuiltRoute:
    """A route's SUMO edges and its signals' traffic lights, from the route files."""
    edges: tuple[str, ...] | None = None
    signals: dict[str, BuiltSignal] = {}
    tl_of: dict[str, str] = {}
    for path in route_files:
        for f in _read(path).get("features", []):
            p = f.get("properties", {}) if isinstance(f, Mapping) else {}
            if p.get("kind") == "route" and p.get("id") == route_id:
                if isinstance(p.get("sumo_edges"), list):
                    edges = tuple(str(e) for e in p["sumo_edges"])
            elif p.get("kind") == "signal" and isinstance(p.get("sumo_tl"), str):
                tl_of[str(p.get("intersection"))] = p["sumo_tl"]
                if route_id in p.get("routes", []):
                    iid = str(p.get("intersection"))
                    links = frozenset(int(k) for k in p.get("sumo_links", []))
                    signals[iid] = BuiltSignal(iid, p["sumo_tl"], str(p.get("approach")), links)
    if edges is None:
        raise SumoExportError(
            f"route {route_id!r}: its route file names a SUMO network but the route has no "
            "'sumo_edges'; rebuild the route file with `preemption routes build`"
        )
    order = {e: k for k, e in enumerate(edges)}
    missing = [s.intersection for s in signals.values() if s.approach_edge not in order]
    if missing:
        raise SumoExportError(
            f"route {route_id!r}: the approach edges of {missing} are not on its sumo_edges; "
            "rebuild the route file with `preemption routes build`"
        )
    ordered = sorted(signals.values(), key=lambda s: order[s.approach_edge])
    return BuiltRoute(route_id, edges, tuple(ordered))


def traffic_lights(route_files: Sequence[Path]) -> dict[str, str]:
    """Intersection id -> SUMO traffic light id, over every signal feature."""
    out: dict[str, str] = {}
    for path in route_files:
        for f in _read(path).get("features", []):
            p = f.get("properties", {}) if isinstance(f, Mapping) else {}
            if p.get("kind") == "signal" and isinstance(p.get("sumo_tl"), str):
                out[str(p.get("intersection"))] = p["sumo_tl"]
    return out


@dataclass(frozen=True, slots=True)
class TlBinding:
    """One scenario intersection driven onto one SUMO traffic light."""

    intersection: str
    tl: str
    groups: tuple[str | None, ...]  # our group of each link index; None: not ours (red)
    minor: tuple[bool, ...]  # SUMO's own program shows the link as a yielding green ('g')
    foes: tuple[frozenset[int], ...]  # link indices whose paths cross each link's
    protected: tuple[tuple[frozenset[int], ...], ...]  # green sets of SUMO phases giving it 'G'
    engine_links: frozenset[int] = frozenset()  # the engine's movement: 'G' when green

    def state(self, ctrl: SignalController) -> str:
        """SUMO's state string for what our controller shows now.

        A green is 'G' unless SUMO's program has it yield ('g') somewhere and no
        phase of SUMO's gives it 'G' together with the foes that are green now (a
        permissive turn): then 'g', and SUMO's drivers yield as they would there.
        The engine's own movement is always 'G' when green: the in-process engine
        yields to nobody (an engine with special rights, whom others make way for).
        """
        aspects = [None if g is None else ctrl.aspect(g) for g in self.groups]
        green = {i for i, a in enumerate(aspects) if a is Aspect.GREEN}
        out = []
        for i, a in enumerate(aspects):
            if a is Aspect.GREEN:
                foes = self.foes[i] & green
                yields = (
                    self.minor[i]
                    and i not in self.engine_links
                    and not any(foes <= p for p in self.protected[i])
                )
                out.append("g" if yields else "G")
            else:
                out.append("y" if a is Aspect.YELLOW else "r")
        return "".join(out)


def bind_traffic_lights(
    sumo: Any,
    scenario: Scenario,
    tl_of: Mapping[str, str],
    engine_links: Mapping[str, frozenset[int]] | None = None,
) -> dict[str, TlBinding]:
    """Every intersection the scenario programs, bound to its SUMO traffic light."""
    out: dict[str, TlBinding] = {}
    known = set(sumo.trafficlight.getIDList())
    for ic in scenario.intersections:
        tl = tl_of.get(ic.id)
        if tl is None:
            continue  # no signal feature names it: it stays out of SUMO
        if tl not in known:
            raise SumoExportError(
                f"intersection {ic.id!r}: SUMO traffic light {tl!r} is not in the network; "
                "the route file and the network do not belong together, rebuild the routes"
            )
        n = len(sumo.trafficlight.getControlledLinks(tl))
        groups = ic.program().groups
        bad = sorted(g for g in groups if not (g.startswith("L") and g[1:].isdigit()))
        beyond = sorted(g for g in groups if g not in bad and int(g[1:]) >= n)
        if bad or beyond:
            raise SumoExportError(
                f"intersection {ic.id!r}: signal groups {bad + beyond} are not link indices "
                f"L0..L{n - 1} of SUMO traffic light {tl!r}; a scenario on the real network "
                "names its groups as `preemption routes build` writes them"
            )
        minor, protected = _minor(sumo, tl, n)
        out[ic.id] = TlBinding(
            ic.id,
            tl,
            tuple(f"L{i}" if f"L{i}" in groups else None for i in range(n)),
            minor,
            _foes(sumo, tl),
            protected,
            (engine_links or {}).get(ic.id, frozenset()),
        )
    return out


def _minor(
    sumo: Any, tl: str, n: int
) -> tuple[tuple[bool, ...], tuple[tuple[frozenset[int], ...], ...]]:
    """Whether SUMO's own programs ever show each link as a yielding green ('g'), and
    the green sets of the phases that show it as a priority green ('G')."""
    minor = [False] * n
    protected: list[set[frozenset[int]]] = [set() for _ in range(n)]
    for logic in sumo.trafficlight.getAllProgramLogics(tl):
        for phase in logic.phases:
            state = phase.state[:n]
            green = frozenset(i for i, c in enumerate(state) if c in "Gg")
            for i, c in enumerate(state):
                minor[i] = minor[i] or c == "g"
                if c == "G":
                    protected[i].add(green)
    return tuple(minor), tuple(tuple(p) for p in protected)


def _foes(sumo: Any, tl: str) -> tuple[frozenset[int], ...]:
    """For each link index, the link indices whose internal lanes cross its own."""
    links = sumo.trafficlight.getControlledLinks(tl)
    index_of: dict[str, set[int]] = {}
    for i, conns in enumerate(links):
        for _in, _out, via in conns:
            if via:
                index_of.setdefault(via, set()).add(i)
    out = []
    for i, conns in enumerate(links):
        foes: set[int] = set()
        for _in, _out, via in conns:
            if via:
                for lane in sumo.lane.getInternalFoes(via):
                    foes |= index_of.get(lane, set())
        out.append(frozenset(foes - {i}))
    return tuple(out)


def lane_position(sumo: Any, lane: str, lon: float, lat: float) -> float:
    """Where a WGS84 point lies along a lane, in SUMO's lane positions."""
    x, y = sumo.simulation.convertGeo(lon, lat, True)
    line = shapely.LineString(sumo.lane.getShape(lane))
    length = float(sumo.lane.getLength(lane))
    scale = length / line.length if line.length > 0 else 1.0
    return min(max(float(line.project(shapely.Point(x, y))) * scale, 0.0), length)


def min_route_speed(sumo: Any, edges: Sequence[str]) -> float:
    """The lowest speed limit on the route's lanes and the internal lanes between them."""
    speeds: list[float] = []
    for k, edge in enumerate(edges):
        nxt = edges[k + 1] if k + 1 < len(edges) else None
        for i in range(sumo.edge.getLaneNumber(edge)):
            lane = f"{edge}_{i}"
            speeds.append(float(sumo.lane.getMaxSpeed(lane)))
            for link in sumo.lane.getLinks(lane):
                to_lane, via = link[0], link[4]
                if nxt is not None and to_lane.rsplit("_", 1)[0] == nxt and via:
                    speeds.append(float(sumo.lane.getMaxSpeed(via)))
    return min(speeds)


@dataclass
class RouteDistance:
    """SUMO's distance along the route (from the route's start) -> the route file's distance.

    Knots at the route's start, every stop line and the route's end. A stop line's
    SUMO distance is first the distance along the road network to the end of the
    approach edge, then, while the engine is on that edge, measured exactly.
    """

    sumo_m: list[float]
    route_m: list[float]
    approach: dict[str, int] = field(default_factory=dict)  # approach edge -> knot
    measured: set[int] = field(default_factory=set)

    def to_route(self, d: float) -> float:
        k = min(max(bisect.bisect_right(self.sumo_m, d) - 1, 0), len(self.sumo_m) - 2)
        d0, d1 = self.sumo_m[k], self.sumo_m[k + 1]
        s0, s1 = self.route_m[k], self.route_m[k + 1]
        if d >= self.sumo_m[-1]:
            return s1 + (d - d1)
        return s0 + (s1 - s0) * (d - d0) / (d1 - d0) if d1 > d0 else s1

    def measure(self, edge: str, stop_d: float) -> None:
        k = self.approach.get(edge)
        if k is not None and k not in self.measured:
            self.sumo_m[k] = stop_d
            self.measured.add(k)


def route_distance(
    sumo: Any,
    route: BuiltRoute,
    depart_pos: float,
    arrival_pos: float,
    stop_lines_m: Sequence[float],
    length_m: float,
) -> RouteDistance:
    """Knots from SUMO's network distances (edge plus internal-lane lengths)."""
    start_of: dict[str, float] = {route.edges[0]: -depart_pos}
    d = -depart_pos
    for a, b in zip(route.edges, route.edges[1:], strict=False):
        d += float(sumo.simulation.getDistanceRoad(a, 0.0, b, 0.0, True))
        start_of[b] = d
    sumo_m = [0.0]
    approach: dict[str, int] = {}
    for sig in route.signals:
        approach[sig.approach_edge] = len(sumo_m)
        sumo_m.append(start_of[sig.approach_edge] + _edge_length(sumo, sig.approach_edge))
    sumo_m.append(start_of[route.edges[-1]] + arrival_pos)
    return RouteDistance(sumo_m, [0.0, *stop_lines_m, length_m], approach)


def _edge_length(sumo: Any, edge: str) -> float:
    return float(sumo.lane.getLength(f"{edge}_0"))


@dataclass(frozen=True, slots=True)
class DemandLink:
    """Where a demand approach's cars drive: in on ``lane``, out on ``to_edge``."""

    lane: str
    to_edge: str


def demand_link(sumo: Any, binding: TlBinding, approach: str, group: str) -> DemandLink:
    links = sumo.trafficlight.getControlledLinks(binding.tl)
    i = int(group[1:])
    for in_lane, out_lane, _via in links[i]:
        if in_lane.rsplit("_", 1)[0] == approach:
            return DemandLink(in_lane, out_lane.rsplit("_", 1)[0])
    raise SumoExportError(
        f"intersection {binding.intersection!r}: demand approach {approach!r} is served by "
        f"group {group!r}, but SUMO link {i} of traffic light {binding.tl!r} does not start "
        f"on that edge; set the demand's `group` to a link of edge {approach!r}"
    )


def background_vehicles(
    sumo: Any, scenario: Scenario, bindings: Mapping[str, TlBinding], until: float
) -> list[tuple[BackgroundVehicle, int]]:
    """Every demand car arriving at its stop line before ``until``, with its lane index."""
    traffic = scenario.traffic
    out: list[tuple[BackgroundVehicle, int]] = []
    for ic in scenario.intersections:
        binding = bindings.get(ic.id)
        if binding is None:
            continue
        for d in ic.demand:
            link = demand_link(sumo, binding, d.approach, ic.group_of(d))
            length = float(sumo.lane.getLength(link.lane))
            speed = float(sumo.lane.getMaxSpeed(link.lane))
            lead = min(LEAD_M, length)
            lane_index = int(link.lane.rsplit("_", 1)[1])
            arrivals = arrival_times(
                traffic.seed, ic.id, d.approach, d.veh_h, traffic.arrivals, until
            )
            for n, t in enumerate(arrivals):
                depart = max(0.0, t - lead / speed)
                run = (t - depart) * speed
                vehicle = BackgroundVehicle(
                    id=f"bg.{ic.id}.{d.approach}.{n}",
                    depart=depart,
                    edges=(d.approach, link.to_edge),
                    depart_pos=length - run,
                )
                out.append((vehicle, lane_index))
    out.sort(key=lambda v: (v[0].depart, v[0].id))
    return out


@dataclass(frozen=True, slots=True)
class StopLineCheck:
    """A stop line's distance along the route: the route file's and SUMO's own."""

    intersection: str
    route_m: float
    sumo_m: float

    @property
    def difference_m(self) -> float:
        return self.sumo_m - self.route_m


def engine_speed_factor(sumo: Any, engine: EngineConfig, edges: Sequence[str]) -> float:
    """A speedFactor with which no lane's limit caps the engine below its maximum speed
    (the in-process engine drives its maximum speed everywhere, curves included)."""
    return max(1.0, engine.max_speed_kmh / 3.6 / min_route_speed(sumo, edges)) * SPEED_MARGIN
