"""The scenario as a SUMO network: plain XML in, ``netconvert`` out.

Every route of the deployment becomes a chain of edges along its projected
geometry, with a node at each signal's stop line. Routes drawn with the same
vertices (the trunk that routes from one station share) share their edges:
the network is built from the routes' directed segments, keyed by their end
points to the centimetre, and a node is placed wherever routes part or meet,
at a stop line, and at the ends of routes. Each signalised node gets a cross
street (two arms at right angles to the route, both directions) so that cross
traffic exists and its movements really conflict with the route's.

Lengths are kept faithful by giving every edge its ``length`` explicitly (the
distance along the route between its nodes): netconvert cuts the drawn shapes
back at junctions, but SUMO measures positions along the given length, so a
vehicle's lane position plus its edge's start is its distance along the route.
Without internal links (``--no-internal-links``) a vehicle moves straight from
the end of the incoming lane (the stop line) to the start of the outgoing one.

Signals: each signalised node has a static ``tlLogic`` whose link indices are
set here: per route through movement the route's approach group, the cross
street's movements the first other group of the program. The static program is
the controller's fixed-time plan (stages, yellow, all-red, offset), so the
network runs its plan on its own in sumo-gui; under the simulator the SUMO
backend overrides the state every step with what our controller model shows.
"""

from __future__ import annotations

import importlib
import itertools
import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from preemption.kernel.errors import SimulationError
from routes.geojson import RouteSet
from routes.geometry import MetricRoute
from sim.controller import Aspect, SignalController, SignalProgram
from sim.scenario import Scenario

KEY_RESOLUTION_M = 0.01  # vertices closer than this are the same point
CROSS_ARM_M = 150.0  # length of each arm of a cross street
DEFAULT_SPEED = 50 / 3.6  # m/s, for routes without a speed limit
NETCONVERT_TIMEOUT_S = 60.0
# Our aspects as SUMO link states: a green with priority, yellow, red.
SUMO_STATE = {Aspect.GREEN: "G", Aspect.YELLOW: "y", Aspect.RED: "r"}


class SumoExportError(SimulationError):
    """The scenario could not be turned into a SUMO network."""


@dataclass(frozen=True, slots=True)
class SumoEdge:
    id: str
    from_node: str
    to_node: str
    shape: tuple[tuple[float, float], ...]
    length: float
    speed: float


@dataclass(frozen=True, slots=True)
class RouteEdges:
    """One route as SUMO edges: edge ids and where each starts along the route."""

    route: str
    edges: tuple[str, ...]
    starts: tuple[float, ...]
    length: float

    def start_of(self, edge: str) -> float:
        return self.starts[self.edges.index(edge)]


@dataclass(frozen=True, slots=True)
class SignalLinks:
    """One signalised node: which of our signal groups drives which SUMO link index."""

    intersection: str
    tl_id: str
    groups: tuple[str, ...]  # group of link index i
    cross_in: tuple[str, ...]  # the cross street's incoming edges
    # Background demand: the scenario's approach name -> (incoming, outgoing edge).
    demand_edges: Mapping[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class SumoNetwork:
    """The exported network and what the SUMO backend needs to know about it."""

    directory: Path
    net_file: Path
    routes: Mapping[str, RouteEdges]
    signals: Mapping[str, SignalLinks]  # by intersection id
    edges: Mapping[str, SumoEdge] = field(repr=False)
    netconvert_log: str = field(default="", repr=False)


def sumo_binary(name: str) -> Path:
    """A SUMO program from the eclipse-sumo package (``pip install .[sumo]``)."""
    try:
        sumo_pkg = importlib.import_module("sumo")
    except ImportError:
        sumo_pkg = None
    home = getattr(sumo_pkg, "SUMO_HOME", None)
    if home is not None and (Path(home) / "bin" / name).is_file():
        return Path(home) / "bin" / name
    found = shutil.which(name)
    if found is None:
        raise SumoExportError(
            f"the SUMO program {name!r} is not installed; install the 'sumo' extra "
            "(pip install '.[sumo]') or put SUMO's bin directory on PATH"
        )
    return Path(found)


def _key(x: float, y: float) -> tuple[int, int]:
    return round(x / KEY_RESOLUTION_M), round(y / KEY_RESOLUTION_M)


@dataclass
class _Chain:
    """A route's polyline with its nodes' positions marked (stop lines, ends)."""

    route: MetricRoute
    points: list[tuple[float, float]]
    s: list[float]
    forced: set[int]  # indices of points that must be nodes


def _chain(mr: MetricRoute, cuts: Sequence[tuple[float, float]]) -> _Chain:
    """The route's vertices plus a vertex at each of ``cuts`` (stop lines of every route)
    that lies on it, so that routes sharing a stretch also share its nodes."""
    marks_on = {0.0, mr.length}
    for x, y in cuts:
        s, offset = mr.locate(x, y)
        if abs(offset) <= KEY_RESOLUTION_M:
            marks_on.add(s)
    marks = sorted(marks_on)
    verts = [(float(x), float(y), float(c)) for (x, y), c in zip(mr.xy, mr.cum, strict=True)]
    pts: list[tuple[float, float]] = []
    ss: list[float] = []
    forced: set[int] = set()
    for x, y, c in verts:
        while marks and marks[0] < c - KEY_RESOLUTION_M:
            st = mr.at(marks.pop(0))
            forced.add(len(pts))
            pts.append((st.x, st.y))
            ss.append(st.s)
        if marks and abs(marks[0] - c) <= KEY_RESOLUTION_M:
            marks.pop(0)
            forced.add(len(pts))
        if ss and c - ss[-1] <= KEY_RESOLUTION_M:
            continue  # a repeated vertex
        pts.append((x, y))
        ss.append(c)
    forced.add(len(pts) - 1)
    return _Chain(mr, pts, ss, forced)


def build_edges(
    routes: RouteSet, route_ids: Sequence[str], speed_for: Mapping[str, float]
) -> tuple[dict[str, SumoEdge], dict[str, RouteEdges], dict[tuple[int, int], str]]:
    """Edges along the routes, shared where routes share vertices; and the nodes' ids."""
    cuts = []
    for rid in route_ids:
        mr = routes[rid]
        for sig in mr.signals:
            st = mr.at(sig.stop_line_m)
            cuts.append((st.x, st.y))
    chains = {rid: _chain(routes[rid], cuts) for rid in route_ids}
    succ: dict[tuple[int, int], set[tuple[int, int]]] = {}
    pred: dict[tuple[int, int], set[tuple[int, int]]] = {}
    forced: set[tuple[int, int]] = set()
    for ch in chains.values():
        keys = [_key(*p) for p in ch.points]
        for a, b in itertools.pairwise(keys):
            succ.setdefault(a, set()).add(b)
            pred.setdefault(b, set()).add(a)
        forced.update(keys[i] for i in ch.forced)

    def is_node(k: tuple[int, int]) -> bool:
        return k in forced or len(succ.get(k, ())) != 1 or len(pred.get(k, ())) != 1

    node_ids: dict[tuple[int, int], str] = {}
    edges: dict[str, SumoEdge] = {}
    by_span: dict[tuple[tuple[int, int], ...], str] = {}
    route_edges: dict[str, RouteEdges] = {}
    for rid, ch in chains.items():
        keys = [_key(*p) for p in ch.points]
        ids: list[str] = []
        starts: list[float] = []
        i = 0
        while i < len(keys) - 1:
            j = i + 1
            while not is_node(keys[j]):
                j += 1
            span = tuple(keys[i : j + 1])
            for k in (keys[i], keys[j]):
                node_ids.setdefault(k, f"n{len(node_ids)}")
            eid = by_span.get(span)
            if eid is None:
                eid = f"e{len(edges)}"
                by_span[span] = eid
                edges[eid] = SumoEdge(
                    id=eid,
                    from_node=node_ids[keys[i]],
                    to_node=node_ids[keys[j]],
                    shape=tuple(ch.points[i : j + 1]),
                    length=ch.s[j] - ch.s[i],
                    speed=speed_for[rid],
                )
            ids.append(eid)
            starts.append(ch.s[i])
            i = j
        route_edges[rid] = RouteEdges(rid, tuple(ids), tuple(starts), ch.route.length)
    return edges, route_edges, node_ids


@dataclass
class _Junction:
    """Adds arms (nodes) and through movements (edge pairs) to one signalised node."""

    intersection: str
    node: str
    xy: tuple[float, float]
    speed: float
    nodes: dict[str, tuple[float, float, str | None]]
    edges: dict[str, SumoEdge]
    connections: list[tuple[str, str]]
    groups: list[str]

    def arm(self, name: str, ax: float, ay: float) -> str:
        nid = f"{self.intersection}.{name}"
        self.nodes[nid] = (ax, ay, None)
        return nid

    def movement(self, name: str, start: str, end: str, group: str) -> tuple[str, str]:
        e_in, e_out = f"{self.intersection}.{name}in", f"{self.intersection}.{name}out"
        a, b = self.nodes[start][:2], self.nodes[end][:2]
        self.edges[e_in] = SumoEdge(e_in, start, self.node, (a, self.xy), CROSS_ARM_M, self.speed)
        self.edges[e_out] = SumoEdge(e_out, self.node, end, (self.xy, b), CROSS_ARM_M, self.speed)
        self.connections.append((e_in, e_out))
        self.groups.append(group)
        return e_in, e_out


def _cross_group(program: SignalProgram, route_groups: set[str]) -> str | None:
    for st in program.stages:
        for g in sorted(st.groups):
            if g not in route_groups:
                return g
    return None


def _tl_phases(
    intersection: str, program: SignalProgram, groups: Sequence[str], step_s: float
) -> list[tuple[float, str]]:
    """The fixed-time plan as SUMO phases, read off our controller model over one cycle.

    Sampling the model (instead of re-deriving the plan) keeps whatever it does with
    intergreens and clearances; starting it at t = 0 makes the offset the program's start.
    """
    ctrl = SignalController(intersection, program)
    n = max(1, round(program.cycle_s / step_s))
    phases: list[tuple[float, str]] = []
    for k in range(n):
        ctrl.advance_to(k * step_s)
        state = "".join(SUMO_STATE[ctrl.aspect(g)] for g in groups)
        if phases and phases[-1][1] == state:
            phases[-1] = (phases[-1][0] + step_s, state)
        else:
            phases.append((step_s, state))
    return phases


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _shape(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)


def export_network(
    scenario: Scenario,
    routes: RouteSet,
    directory: Path,
    route_ids: Sequence[str] | None = None,
) -> SumoNetwork:
    """Write the plain XML files of the scenario into ``directory`` and build ``net.net.xml``."""
    directory.mkdir(parents=True, exist_ok=True)
    route_ids = list(route_ids if route_ids is not None else routes.routes)
    programs = {ic.id: ic.program() for ic in scenario.intersections}
    speed_for = {rid: routes[rid].route.speed_limit or DEFAULT_SPEED for rid in route_ids}
    edges, route_edges, node_ids = build_edges(routes, route_ids, speed_for)

    # Signalised nodes: the node at each signal's stop line, with the route edges into it.
    through: dict[str, list[tuple[str, str, str]]] = {}  # intersection -> (in, out, group)
    approach_edges: dict[str, dict[str, tuple[str, str]]] = {}  # intersection -> approach
    node_of: dict[str, str] = {}
    heading_at: dict[str, float] = {}
    xy_at: dict[str, tuple[float, float]] = {}
    for rid in route_ids:
        mr, re_ = routes[rid], route_edges[rid]
        for sig in mr.signals:
            program = programs.get(sig.intersection)
            if program is None:
                raise SumoExportError(
                    f"route {rid!r} crosses intersection {sig.intersection!r}, which the "
                    "scenario gives no signal program; add it to the scenario's [[intersections]]"
                )
            k = next(
                (
                    n
                    for n, s in enumerate(re_.starts)
                    if abs(s - sig.stop_line_m) <= 2 * KEY_RESOLUTION_M
                ),
                None,
            )
            if k is None:
                raise SumoExportError(
                    f"route {rid!r}: no edge starts at the stop line of {sig.intersection!r} "
                    f"({sig.stop_line_m:.2f} m); this is a bug in the SUMO export"
                )
            if k == 0:
                raise SumoExportError(
                    f"route {rid!r}: the stop line of {sig.intersection!r} at "
                    f"{sig.stop_line_m:.1f} m is at the route's start; a signal needs an approach"
                )
            e_in, e_out = re_.edges[k - 1], re_.edges[k]
            node = edges[e_in].to_node
            if node_of.setdefault(sig.intersection, node) != node:
                raise SumoExportError(
                    f"intersection {sig.intersection!r}: routes reach it at different stop "
                    "lines; the SUMO export supports one approach per intersection"
                )
            group = program.group_for(sig.approach)
            if group not in program.groups:
                raise SumoExportError(
                    f"intersection {sig.intersection!r}: approach {sig.approach!r} maps to no "
                    "signal group of its program; check the scenario's 'approaches'"
                )
            approach_edges.setdefault(sig.intersection, {})[sig.approach] = (e_in, e_out)
            entry = (e_in, e_out, group)
            if entry not in through.setdefault(sig.intersection, []):
                through[sig.intersection].append(entry)
            st = mr.at(sig.stop_line_m)
            heading_at[sig.intersection], xy_at[sig.intersection] = st.heading_deg, (st.x, st.y)

    nodes: dict[str, tuple[float, float, str | None]] = {}  # id -> x, y, traffic light
    for key, nid in node_ids.items():
        nodes[nid] = (key[0] * KEY_RESOLUTION_M, key[1] * KEY_RESOLUTION_M, None)
    connections: list[tuple[str, str]] = []
    tl_links: list[tuple[str, str, str, int]] = []  # from, to, tl, link index
    signals: dict[str, SignalLinks] = {}
    for iid, moves in through.items():
        program = programs[iid]
        node = node_of[iid]
        x, y = xy_at[iid]
        nodes[node] = (*nodes[node][:2], iid)
        groups = [g for _, _, g in moves]
        for e_in, e_out, _ in moves:
            connections.append((e_in, e_out))
        cross = _cross_group(program, set(groups))
        demand_edges = dict(approach_edges[iid])
        ic = next(c for c in scenario.intersections if c.id == iid)
        unplaced = [d for d in ic.demand if d.approach not in demand_edges]
        # Demand served by a route's group comes the other way along the route's street
        # (the opposite approach); the rest comes in on the cross street's arms, in turn,
        # each arm then driven by that demand's group.
        opposite = [d for d in unplaced if ic.group_of(d) in groups]
        cross_demand = [d for d in unplaced if ic.group_of(d) not in groups]
        arm_groups = [ic.group_of(d) for d in cross_demand[:2]]
        if cross is None and arm_groups:
            cross = arm_groups[0]
        arm_groups += [cross or ""] * (2 - len(arm_groups))
        h = math.radians(heading_at[iid])
        fx, fy = math.sin(h), math.cos(h)  # direction of travel (heading is from north)
        lx, ly = -fy, fx  # to its left
        speed = max(speed_for.values())

        j = _Junction(iid, node, (x, y), speed, nodes, edges, connections, groups)
        cross_in: list[str] = []
        if cross is not None:
            left = j.arm("L", x + CROSS_ARM_M * lx, y + CROSS_ARM_M * ly)
            right = j.arm("R", x - CROSS_ARM_M * lx, y - CROSS_ARM_M * ly)
            arms = [
                j.movement("L", left, right, arm_groups[0]),
                j.movement("R", right, left, arm_groups[1]),
            ]
            cross_in = [a for a, _ in arms]
            for k, d in enumerate(cross_demand):
                demand_edges[d.approach] = arms[k % 2]
        if opposite:
            # The opposite carriageway, a lane's width to the left of the route.
            ahead = j.arm("F", x + CROSS_ARM_M * fx + 3.5 * lx, y + CROSS_ARM_M * fy + 3.5 * ly)
            behind = j.arm("B", x - CROSS_ARM_M * fx + 3.5 * lx, y - CROSS_ARM_M * fy + 3.5 * ly)
            move = j.movement("O", ahead, behind, ic.group_of(opposite[0]))
            for d in opposite:
                demand_edges[d.approach] = move
        for idx, (e_in, e_out) in enumerate(connections[-len(groups) :]):
            tl_links.append((e_in, e_out, iid, idx))
        signals[iid] = SignalLinks(iid, iid, tuple(groups), tuple(cross_in), demand_edges)

    _write_plain(
        directory, nodes, edges, connections, tl_links, signals, programs, scenario.scenario.step_s
    )
    net_file = directory / "net.net.xml"
    log = _netconvert(directory, net_file)
    return SumoNetwork(directory, net_file, route_edges, signals, edges, log)


def _write_plain(
    directory: Path,
    nodes: Mapping[str, tuple[float, float, str | None]],
    edges: Mapping[str, SumoEdge],
    connections: Sequence[tuple[str, str]],
    tl_links: Sequence[tuple[str, str, str, int]],
    signals: Mapping[str, SignalLinks],
    programs: Mapping[str, SignalProgram],
    step_s: float,
) -> None:
    nod = ["<nodes>"]
    for nid, (x, y, tl) in nodes.items():
        kind = 'type="priority"' if tl is None else f'type="traffic_light" tl={quoteattr(tl)}'
        nod.append(
            f"  <node id={quoteattr(nid)} x={quoteattr(_fmt(x))} y={quoteattr(_fmt(y))} {kind}/>"
        )
    nod.append("</nodes>")
    edg = ["<edges>"]
    for e in edges.values():
        edg.append(
            f"  <edge id={quoteattr(e.id)} from={quoteattr(e.from_node)} "
            f'to={quoteattr(e.to_node)} numLanes="1" speed={quoteattr(f"{e.speed:.3f}")} '
            f"length={quoteattr(f'{e.length:.3f}')} shape={quoteattr(_shape(e.shape))}/>"
        )
    edg.append("</edges>")
    con = ["<connections>"]
    for a, b in connections:
        con.append(f'  <connection from="{a}" to="{b}" fromLane="0" toLane="0"/>')
    con.append("</connections>")
    tll = ["<tlLogics>"]
    for iid, sl in signals.items():
        tll.append(f'  <tlLogic id={quoteattr(sl.tl_id)} type="static" programID="plan">')
        for dur, state in _tl_phases(iid, programs[iid], sl.groups, step_s):
            tll.append(f'    <phase duration="{dur:.2f}" state="{state}"/>')
        tll.append("  </tlLogic>")
    for a, b, tl, idx in tl_links:
        tll.append(
            f'  <connection from="{a}" to="{b}" fromLane="0" toLane="0" '
            f'tl="{tl}" linkIndex="{idx}"/>'
        )
    tll.append("</tlLogics>")
    for name, lines in (("nod", nod), ("edg", edg), ("con", con), ("tll", tll)):
        (directory / f"plain.{name}.xml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _netconvert(directory: Path, net_file: Path) -> str:
    cmd = [
        str(sumo_binary("netconvert")),
        "--node-files", str(directory / "plain.nod.xml"),
        "--edge-files", str(directory / "plain.edg.xml"),
        "--connection-files", str(directory / "plain.con.xml"),
        "--tllogic-files", str(directory / "plain.tll.xml"),
        "--output-file", str(net_file),
        "--no-internal-links", "true",
        "--no-turnarounds", "true",
        "--offset.disable-normalization", "true",
        "--junctions.corner-detail", "0",
        "--tls.discard-simple", "false",
        "--no-warnings", "false",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=NETCONVERT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise SumoExportError(
            f"netconvert did not finish within {NETCONVERT_TIMEOUT_S:.0f} s on {directory}"
        ) from None
    if done.returncode != 0 or not net_file.is_file():
        raise SumoExportError(
            f"netconvert failed on the exported scenario in {directory} "
            f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return done.stderr
