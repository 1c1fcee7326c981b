"""The route network: shared trunks, branch points and the edges routes are made of.

Routes from one station share a trunk and branch. This module finds, from the
geometry alone, which stretches of which routes coincide (same place, same
direction), and builds a networkx graph whose edges are those stretches and
whose nodes are the branch (and merge) points. The matcher uses it to do the
geometry of a shared stretch once for all routes on it, and the planner to know
which signals every compatible route passes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx
import numpy as np
import shapely

from routes.geojson import RouteSet
from routes.geometry import MetricRoute, heading_difference

SAMPLE_M = 2.0  # resolution of the sharing test
SHARED_TOLERANCE_M = 2.0  # two routes closer than this, in the same direction, coincide
SHARED_HEADING_DEG = 30.0
MIN_PIECE_M = 6.0  # a sharing change shorter than this is noise at a junction


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of one route, ``s0``..``s1``, lying on network edge ``edge``."""

    route: str
    edge: int
    s0: float
    s1: float


@dataclass(frozen=True, slots=True)
class Edge:
    id: int
    routes: frozenset[str]
    length: float
    base_route: str  # the route whose geometry and distances the edge uses
    base_s0: float  # where the edge starts along its base route


@dataclass(frozen=True, slots=True)
class BranchPoint:
    """Where routes that shared an edge part (or meet)."""

    node: int
    x: float
    y: float
    routes_in: frozenset[str]
    branches: tuple[frozenset[str], ...]  # route sets of the outgoing edges
    angle_deg: float  # widest angle between outgoing directions 50 m on


class RouteNetwork:
    def __init__(self, routes: RouteSet) -> None:
        self.routes = routes
        self.graph: nx.MultiDiGraph = nx.MultiDiGraph()
        self.edges: dict[int, Edge] = {}
        self.pieces: dict[str, tuple[Piece, ...]] = {}
        self._common: dict[frozenset[str], frozenset[tuple[str, str]]] = {}
        self._build()

    def _build(self) -> None:
        sharing = {mr.id: _sharing(mr, self.routes) for mr in self.routes}
        # Edges are identified by the set of routes on them and the how-manieth
        # such stretch it is along each route.
        keys: dict[tuple[frozenset[str], int], int] = {}
        seen_on_route: dict[str, dict[frozenset[str], int]] = {}
        parent: dict[int, int] = {}

        def find(n: int) -> int:
            while parent.setdefault(n, n) != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        def union(a: int, b: int) -> None:
            parent[find(a)] = find(b)

        route_edges: dict[str, list[tuple[int, float, float]]] = {}
        for mr in self.routes:
            counts = seen_on_route.setdefault(mr.id, {})
            pieces = []
            for s0, s1, group in sharing[mr.id]:
                k = counts.get(group, 0)
                counts[group] = k + 1
                key = (group, k)
                if key not in keys:
                    eid = len(keys)
                    keys[key] = eid
                    self.edges[eid] = Edge(eid, group, s1 - s0, mr.id, s0)
                pieces.append((keys[key], s0, s1))
            route_edges[mr.id] = pieces
        # Node 2e is the start of edge e, 2e+1 its end; consecutive edges of a route join.
        for pieces_ in route_edges.values():
            for (a, _, _), (b, _, _) in itertools.pairwise(pieces_):
                union(2 * a + 1, 2 * b)
        for eid, edge in self.edges.items():
            self.graph.add_edge(
                find(2 * eid), find(2 * eid + 1), key=eid, routes=edge.routes, length=edge.length
            )
        for rid, pieces_ in route_edges.items():
            self.pieces[rid] = tuple(Piece(rid, eid, s0, s1) for eid, s0, s1 in pieces_)

    def edge_at(self, route: str, s: float) -> tuple[int, float]:
        """The edge under distance ``s`` of ``route`` and the distance along that edge."""
        pieces = self.pieces[route]
        for p in pieces:
            if s < p.s1:
                return p.edge, max(0.0, s - p.s0)
        last = pieces[-1]
        return last.edge, s - last.s0

    def routes_sharing(self, route: str, s: float) -> frozenset[str]:
        return self.edges[self.edge_at(route, s)[0]].routes

    def branch_points(self) -> list[BranchPoint]:
        out = []
        for node in self.graph.nodes:
            outs = list(self.graph.out_edges(node, keys=True, data=True))
            if len(outs) < 2:
                continue
            ins = list(self.graph.in_edges(node, data=True))
            routes_in = frozenset().union(*(d["routes"] for _, _, d in ins))
            branches = tuple(d["routes"] for _, _, _, d in outs)
            heads, pos = [], None
            for _, _, eid, _ in outs:
                edge = self.edges[eid]
                mr = self.routes[edge.base_route]
                start = mr.at(edge.base_s0)
                ahead = mr.at(edge.base_s0 + min(50.0, edge.length))
                pos = pos or (start.x, start.y)
                heads.append(math.degrees(math.atan2(ahead.x - start.x, ahead.y - start.y)))
            angle = max(
                (heading_difference(a, b) for i, a in enumerate(heads) for b in heads[i + 1 :]),
                default=0.0,
            )
            assert pos is not None
            out.append(BranchPoint(node, pos[0], pos[1], routes_in, branches, angle))
        return out

    def common_signals(self, routes: Iterable[str]) -> frozenset[tuple[str, str]]:
        """(intersection, approach) pairs that every one of ``routes`` passes."""
        key = frozenset(routes)
        hit = self._common.get(key)
        if hit is None:
            sets = [
                frozenset((s.intersection, s.approach) for s in self.routes[r].signals) for r in key
            ]
            hit = self._common[key] = frozenset.intersection(*sets) if sets else frozenset()
        return hit

    def summary(self) -> Mapping[str, object]:
        return {
            "routes": len(self.routes),
            "edges": len(self.edges),
            "branch_points": len(self.branch_points()),
        }


def _sharing(mr: MetricRoute, routes: RouteSet) -> list[tuple[float, float, frozenset[str]]]:
    """Intervals of ``mr`` with the set of routes that run on it there (itself included)."""
    n = max(2, math.ceil(mr.length / SAMPLE_M) + 1)
    ss = np.linspace(0.0, mr.length, n)
    pts = shapely.line_interpolate_point(mr.line, ss)
    own = np.array([mr.at(float(s)).heading_deg for s in ss])
    members = np.zeros((len(routes.routes), n), dtype=bool)
    ids = list(routes.routes)
    for k, other in enumerate(routes):
        if other.id == mr.id:
            members[k] = True
            continue
        near = shapely.distance(pts, other.line) <= SHARED_TOLERANCE_M
        if not near.any():
            continue
        s_other = shapely.line_locate_point(other.line, pts)
        for j in np.flatnonzero(near):
            h = other.at(float(s_other[j])).heading_deg
            members[k, j] = heading_difference(h, float(own[j])) <= SHARED_HEADING_DEG
    groups = [frozenset(ids[int(k)] for k in np.flatnonzero(members[:, c])) for c in range(n)]
    # Intervals of constant membership; a change shorter than MIN_PIECE_M is smoothed away.
    intervals: list[tuple[float, float, frozenset[str]]] = []
    start = 0
    for i in range(1, n + 1):
        if i == n or groups[i] != groups[start]:
            intervals.append((float(ss[start]), float(ss[min(i, n - 1)]), groups[start]))
            start = i
    merged: list[tuple[float, float, frozenset[str]]] = []
    for s0, s1, group in intervals:
        if merged and (s1 - s0 < MIN_PIECE_M or merged[-1][2] == group):
            merged[-1] = (merged[-1][0], s1, merged[-1][2])
        else:
            merged.append((s0, s1, group))
    if len(merged) > 1 and merged[0][1] - merged[0][0] < MIN_PIECE_M:
        merged[1] = (merged[0][0], merged[1][1], merged[1][2])
        merged.pop(0)
    return merged
