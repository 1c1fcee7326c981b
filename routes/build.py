"""Approach routes on a road network: fastest path, waypoints, and the signals along it.

The fastest path is searched on the edge graph of :mod:`routes.roadnet` (travel
time = length / speed limit, plus the time across each junction), so turn
restrictions hold. A station, target or waypoint given as lon/lat is snapped to
every drivable street within the snap radius; the search starts from all of
them at once and picks the best, so a two-way street is entered in the right
direction. Waypoints pin the path to a street: the route must pass them in
order.

Along the path, every connection controlled by a signalised traffic light is a
signal: its stop line is the end of the incoming lane, its approach is the
incoming edge id (what the controller stub names), and the SUMO link indices of
the movement are kept for the operator. A joined traffic light (one ``tlLogic``
controlling several junctions, ``joinedS_*``/``cluster_*``) is one intersection:
it is listed once, at the first of its stop lines the route meets.
"""

from __future__ import annotations

import heapq
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely
import shapely.ops
from sumolib.geomhelper import polygonOffsetWithMinimumDistanceToPoint

from preemption.kernel.errors import InputError
from routes.buildspec import Place, StationSpec, TargetSpec
from routes.roadnet import Link, RoadNetwork

MAX_VERTEX_SPACING_M = 100.0  # the route file wants vertices well under 500 m apart


class RouteBuildError(InputError):
    """No route can be built as asked; the message names the route and what to change."""


@dataclass(frozen=True, slots=True)
class Snap:
    """A place on one edge: ``pos`` metres along the lane shape of lane ``lane``."""

    edge: str
    lane: int
    pos: float
    offset_m: float


@dataclass
class PathSignal:
    """A signalised junction met along a path (SUMO terms; ids are assigned later)."""

    tl: str
    junction: str
    approach_edge: str
    from_lane: int
    link_indices: tuple[int, ...]
    stop_xy: tuple[float, float]
    stop_s: float  # along the built geometry, metres (SUMO's planar coordinates)
    also: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    # further junctions of a joined traffic light: (junction, incoming edge, links)


@dataclass
class BuiltRoute:
    id: str
    name: str
    station: str
    edges: tuple[str, ...]
    xy: list[tuple[float, float]]
    signals: list[PathSignal]
    travel_time_s: float
    speed_limit_kmh: float | None = None

    @property
    def length_m(self) -> float:
        return sum(math.dist(a, b) for a, b in itertools.pairwise(self.xy))


def snap(
    rn: RoadNetwork, place: Place, radius_m: float, label: str, at_end: bool = True
) -> list[Snap]:
    """Every drivable edge within ``radius_m`` of the place, or the named edge.

    A named edge is entered at its start (``at_end`` False: the station) or
    left at its end (targets and waypoints).
    """
    if place.edge is not None:
        if place.edge not in rn.graph:
            raise RouteBuildError(
                f"{label}: edge {place.edge!r} is not a street of the network that "
                f"vehicle class {rn.vclass!r} may use"
            )
        if not at_end:
            return [Snap(place.edge, 0, 0.0, 0.0)]
        lane = rn.edge(place.edge).getLane(0)
        return [Snap(place.edge, 0, float(shapely.LineString(lane.getShape()).length), 0.0)]
    assert place.lon is not None
    assert place.lat is not None
    x, y = rn.to_xy(place.lon, place.lat)
    found: list[Snap] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*rtree.*")  # brute force is fine here
        near = rn.net.getNeighboringEdges(x, y, radius_m, includeJunctions=False)
    for edge, _ in near:
        if edge.getID() not in rn.graph:
            continue
        best: Snap | None = None
        for lane in edge.getLanes():
            if not lane.allows(rn.vclass):
                continue
            shape = lane.getShape()
            pos = float(polygonOffsetWithMinimumDistanceToPoint((x, y), shape, perpendicular=False))
            line = shapely.LineString(shape)
            pt = line.interpolate(pos)
            d = math.dist((x, y), (pt.x, pt.y))
            if best is None or d < best.offset_m:
                best = Snap(edge.getID(), int(lane.getIndex()), pos, d)
        if best is not None and best.offset_m <= radius_m:
            found.append(best)
    if not found:
        raise RouteBuildError(
            f"{label}: no street for vehicle class {rn.vclass!r} within {radius_m:.0f} m of "
            f"[{place.lon}, {place.lat}]; move the point onto a street, raise "
            "network.snap_radius_m, or name the edge"
        )
    return found


def snap_district(
    rn: RoadNetwork, outline: Sequence[tuple[float, float]], label: str
) -> list[Snap]:
    """Where each drivable street enters a district (a polygon of lon/lat corners).

    The fastest path to any of these places is the fastest way into the district:
    an approach route to a district ends at its edge, where the engine's way
    through the district's own streets begins.
    """
    poly = shapely.Polygon([rn.to_xy(lon, lat) for lon, lat in outline])
    if not poly.is_valid or poly.area <= 0:
        raise RouteBuildError(
            f"{label}: the district's outline is not a simple polygon; list its corners "
            "in order around it, without crossing edges"
        )
    found: list[Snap] = []
    for edge_id in rn.graph:
        edge = rn.edge(edge_id)
        for lane in edge.getLanes():
            if not lane.allows(rn.vclass):
                continue
            line = shapely.LineString(lane.getShape())
            if not line.intersects(poly):
                break
            start = shapely.Point(line.coords[0])
            if poly.contains(start):
                pos = 0.0
            else:
                crossing = line.intersection(poly.boundary)
                pts = [
                    shapely.Point(c)
                    for g in getattr(crossing, "geoms", [crossing])
                    for c in g.coords
                ]
                pos = min(float(line.project(p)) for p in pts)
            found.append(Snap(edge_id, int(lane.getIndex()), pos, 0.0))
            break
    if not found:
        raise RouteBuildError(
            f"{label}: no street for vehicle class {rn.vclass!r} enters the district; "
            "check its corners (lon, lat order) against the network's extent"
        )
    return found


def _edge_time(rn: RoadNetwork, edge: str) -> float:
    t: float = rn.graph.nodes[edge]["time"]
    return t


def _time_at(rn: RoadNetwork, s: Snap) -> float:
    """Travel time from the start of the snap's edge to the snap."""
    node = rn.graph.nodes[s.edge]
    return float(min(s.pos, node["length"]) / max(node["speed"], 0.1))


def _dijkstra(
    rn: RoadNetwork, start: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Earliest time at the *start* of every reachable edge, from several starts."""
    dist: dict[str, float] = dict(start)
    pred: dict[str, str] = {}
    heap = [(t, e) for e, t in start.items()]
    heapq.heapify(heap)
    done: set[str] = set()
    succ = rn.graph.succ
    while heap:
        t, e = heapq.heappop(heap)
        if e in done:
            continue
        done.add(e)
        t_end = t + _edge_time(rn, e)
        for v, data in succ[e].items():
            tv = t_end + data["time"]
            if tv < dist.get(v, math.inf):
                dist[v] = tv
                pred[v] = e
                heapq.heappush(heap, (tv, v))
    return dist, pred


def fastest_path(
    rn: RoadNetwork, legs: Sequence[list[Snap]], label: str
) -> tuple[list[str], float]:
    """Edges of the fastest path through the snap sets in order (start, waypoints, end)."""
    # For every snap of the current set: (time when there, edges so far).
    reached: dict[Snap, tuple[float, list[str]]] = {s: (0.0, [s.edge]) for s in legs[0]}
    for k, snaps in enumerate(legs[1:], start=1):
        start: dict[str, float] = {}
        origin: dict[str, Snap] = {}
        for s, (t, _) in reached.items():
            t0 = t - _time_at(rn, s)  # as if it had been at the start of its edge
            if t0 < start.get(s.edge, math.inf):
                start[s.edge], origin[s.edge] = t0, s
        dist, pred = _dijkstra(rn, start)
        nxt: dict[Snap, tuple[float, list[str]]] = {}
        for s in snaps:
            if s.edge not in dist:
                continue
            if s.edge in origin and s.edge not in pred and s.pos < origin[s.edge].pos:
                continue  # behind the start on the same edge: would need a loop
            walk = [s.edge]
            while walk[-1] in pred:  # back along the shortest-path tree to a start
                walk.append(pred[walk[-1]])
            walk.reverse()
            prefix = reached[origin[walk[0]]][1]
            nxt[s] = (dist[s.edge] + _time_at(rn, s), prefix + walk[1:])
        if not nxt:
            what = "the target" if k == len(legs) - 1 else f"waypoint {k}"
            raise RouteBuildError(
                f"{label}: {what} cannot be reached from the "
                f"{'station' if k == 1 else f'waypoint {k - 1}'} on streets open to "
                f"{rn.vclass!r} (one-way streets, turn bans, a cut-off part of the network); "
                "move it or add a waypoint"
            )
        reached = nxt
    best = min(reached, key=lambda s: reached[s][0])
    return reached[best][1], reached[best][0]


def build_route(
    rn: RoadNetwork,
    station: StationSpec,
    target: TargetSpec,
    radius_m: float,
    green_of: Mapping[str, Mapping[int, float]] | None = None,
) -> BuiltRoute:
    """The fastest route from the station through the target's waypoints to the target.

    ``green_of`` (TL -> link index -> green seconds per cycle) picks, among the
    lanes of a signalised movement, the link with the most green as the route's.
    """
    label = f"route {target.id!r}"
    legs = [snap(rn, station, radius_m, f"{label}: station {station.id!r}", at_end=False)]
    for k, (lon, lat) in enumerate(target.via, start=1):
        legs.append(snap(rn, Place(lon=lon, lat=lat), radius_m, f"{label}: waypoint {k}"))
    for edge in target.via_edges:
        legs.append(snap(rn, Place(edge=edge), radius_m, f"{label}: via edge"))
    if target.district:
        legs.append(snap_district(rn, target.district, f"{label}: district"))
    else:
        legs.append(snap(rn, target, radius_m, f"{label}: target"))
    edges, time_s = fastest_path(rn, legs, label)
    first = _closest(legs[0], edges[0])
    last = _closest(legs[-1], edges[-1])
    xy, signals = _trace(rn, edges, first, last, green_of or {}, label)
    return BuiltRoute(
        id=target.id,
        name=target.name or target.id,
        station=station.id,
        edges=tuple(edges),
        xy=xy,
        signals=signals,
        travel_time_s=time_s,
        speed_limit_kmh=target.speed_limit_kmh,
    )


def _closest(snaps: list[Snap], edge: str) -> Snap | None:
    on = [s for s in snaps if s.edge == edge]
    return min(on, key=lambda s: s.offset_m) if on else None


def _choose(links: Sequence[Link], green: Mapping[int, float]) -> Link:
    return max(links, key=lambda ln: (green.get(ln.link_index, 0.0), -ln.from_lane))


def _trace(
    rn: RoadNetwork,
    edges: Sequence[str],
    first: Snap | None,
    last: Snap | None,
    green_of: Mapping[str, Mapping[int, float]],
    label: str,
) -> tuple[list[tuple[float, float]], list[PathSignal]]:
    """The route's planar geometry along the lanes used, and its signals in order."""
    xy: list[tuple[float, float]] = []
    signals: list[PathSignal] = []
    by_tl: dict[str, PathSignal] = {}
    junctions_seen: set[str] = set()
    chosen: list[Link | None] = []
    for a, b in itertools.pairwise(edges):
        links = rn.links(a, b)
        tl = next((ln.tl for ln in links if ln.tl), "")
        chosen.append(_choose(links, green_of.get(tl, {})))
    chosen.append(None)
    prev: Link | None = None
    for i, edge in enumerate(edges):
        link = chosen[i]
        lane_index = link.from_lane if link else (prev.to_lane if prev else 0)
        lane = rn.edge(edge).getLane(lane_index)
        line = shapely.LineString(lane.getShape())
        s0 = first.pos if (i == 0 and first is not None) else 0.0
        s1 = last.pos if (i == len(edges) - 1 and last is not None) else line.length
        if i == 0 and i == len(edges) - 1 and s1 < s0:
            s1 = s0
        part = shapely.ops.substring(line, s0, s1) if (s0 > 0 or s1 < line.length) else line
        _extend(xy, list(shapely.get_coordinates(part)))
        if link is not None:
            if link.junction in junctions_seen:
                raise RouteBuildError(
                    f"{label}: the path passes junction {link.junction!r} twice (a loop); "
                    "move the waypoint that causes it"
                )
            junctions_seen.add(link.junction)
            if link.tl:
                movement = tuple(
                    sorted(ln.link_index for ln in rn.links(edge, edges[i + 1]) if ln.tl == link.tl)
                )
                if link.tl in by_tl:
                    by_tl[link.tl].also.append((link.junction, edge, movement))
                else:
                    sig = PathSignal(
                        tl=link.tl,
                        junction=link.junction,
                        approach_edge=edge,
                        from_lane=link.from_lane,
                        link_indices=(
                            link.link_index,
                            *(k for k in movement if k != link.link_index),
                        ),
                        stop_xy=xy[-1],
                        stop_s=_length(xy),
                    )
                    by_tl[link.tl] = sig
                    signals.append(sig)
            if link.via:
                _extend(xy, [tuple(p) for p in rn.net.getLane(link.via).getShape()])
        prev = link
    line = shapely.segmentize(shapely.LineString(xy), MAX_VERTEX_SPACING_M)
    return [(float(x), float(y)) for x, y in shapely.get_coordinates(line)], signals


def _extend(xy: list[tuple[float, float]], pts: Sequence[Any]) -> None:
    for p in pts:
        q = (float(p[0]), float(p[1]))
        if not xy or math.dist(xy[-1], q) > 0.05:
            xy.append(q)


def _length(xy: Sequence[tuple[float, float]]) -> float:
    return sum(math.dist(a, b) for a, b in itertools.pairwise(xy))
