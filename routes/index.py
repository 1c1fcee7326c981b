"""Everything the matcher needs about a set of routes, computed once per deployment.

Per route: plain-float copies of the vertices for the hot path (a local
projection in pure Python beats a numpy or shapely call for the two or three
segments it looks at), the speed profile for ETAs, and the route network.
Every vehicle's matcher shares one index.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import shapely
from shapely.strtree import STRtree

from preemption.model import SignalPoint
from routes.geojson import RouteSet
from routes.geometry import MetricRoute
from routes.network import RouteNetwork
from routes.speed import EngineProfile, SpeedOverride, SpeedProfile


@dataclass(frozen=True, slots=True)
class Projection:
    s: float  # along the route
    offset: float  # signed lateral offset, left positive
    heading: float  # route heading there, degrees true


class RouteGeometry:
    """One route's vertices as Python floats, for fast local projection."""

    def __init__(self, mr: MetricRoute) -> None:
        self.id = mr.id
        self.length = mr.length
        self.xs = [float(v) for v in mr.xy[:, 0]]
        self.ys = [float(v) for v in mr.xy[:, 1]]
        self.cum = [float(v) for v in mr.cum]
        n = len(self.xs) - 1
        self.ux: list[float] = []
        self.uy: list[float] = []
        self.seglen: list[float] = []
        self.heading: list[float] = []
        for i in range(n):
            dx, dy = self.xs[i + 1] - self.xs[i], self.ys[i + 1] - self.ys[i]
            d = math.hypot(dx, dy) or 1e-9
            self.ux.append(dx / d)
            self.uy.append(dy / d)
            self.seglen.append(d)
            self.heading.append(math.degrees(math.atan2(dx, dy)) % 360.0)
        # Cumulative absolute change of heading at the vertices, to find corners fast.
        self.turn_cum = [0.0]
        for i in range(1, n):
            d = abs((self.heading[i] - self.heading[i - 1] + 180.0) % 360.0 - 180.0)
            self.turn_cum.append(self.turn_cum[-1] + d)
        self.turn_cum.append(self.turn_cum[-1])

    def project_near(self, x: float, y: float, s0: float, s1: float) -> Projection:
        """Nearest point to (x, y) on the part of the route between ``s0`` and ``s1``."""
        cum = self.cum
        n = len(self.seglen)
        i0 = max(0, min(n - 1, bisect_right(cum, s0) - 1))
        i1 = max(i0, min(n - 1, bisect_right(cum, s1) - 1))
        best_d2 = math.inf
        best = (0.0, 0.0, 0)
        xs, ys, ux, uy, seglen = self.xs, self.ys, self.ux, self.uy, self.seglen
        for i in range(i0, i1 + 1):
            px, py = x - xs[i], y - ys[i]
            t = px * ux[i] + py * uy[i]
            if t < 0.0:
                t = 0.0
            elif t > seglen[i]:
                t = seglen[i]
            ex, ey = px - t * ux[i], py - t * uy[i]
            d2 = ex * ex + ey * ey
            if d2 < best_d2:
                best_d2 = d2
                # Left of travel when the cross product of direction and offset is positive.
                side = ux[i] * py - uy[i] * px
                best = (cum[i] + t, side, i)
        s, side, i = best
        d = math.sqrt(best_d2)
        return Projection(s, d if side >= 0 else -d, self.heading[i])

    def turn_between(self, s0: float, s1: float) -> float:
        """Degrees the route turns between ``s0`` and ``s1`` (sum of absolute changes)."""
        cum = self.cum
        n = len(self.seglen)
        i0 = max(0, min(n - 1, bisect_right(cum, s0) - 1))
        i1 = max(i0, min(n - 1, bisect_right(cum, s1) - 1))
        return self.turn_cum[i1] - self.turn_cum[i0]

    def point_at(self, s: float) -> tuple[float, float]:
        n = len(self.seglen)
        i = max(0, min(n - 1, bisect_right(self.cum, s) - 1))
        t = min(max(s - self.cum[i], 0.0), self.seglen[i])
        return self.xs[i] + t * self.ux[i], self.ys[i] + t * self.uy[i]

    def heading_agreement(self, course: float, s: float, radius: float) -> float:
        """Best cos(course - heading) over the segments within ``radius`` of ``s``.

        Near a corner the projection may land a few metres on the wrong side of the
        vertex; judging the course by the best-fitting nearby segment keeps a
        turning engine from being penalised for the road's own turn.
        """
        cum = self.cum
        n = len(self.seglen)
        i0 = max(0, min(n - 1, bisect_right(cum, s - radius) - 1))
        i1 = max(i0, min(n - 1, bisect_right(cum, s + radius) - 1))
        c = math.radians(course)
        cx, cy = math.sin(c), math.cos(c)
        ux, uy = self.ux, self.uy
        # cos(course - heading) is the dot product of the two unit vectors.
        best = -1.0
        for i in range(i0, i1 + 1):
            v = cx * ux[i] + cy * uy[i]
            if v > best:
                best = v
        return best

    def heading_at(self, s: float) -> float:
        i = max(0, min(len(self.seglen) - 1, bisect_right(self.cum, s) - 1))
        return self.heading[i]


def _common_prefix(a: RouteGeometry, b: RouteGeometry) -> float:
    """How far from their start two routes have the very same vertices."""
    last = 0.0
    for i in range(min(len(a.xs), len(b.xs))):
        if a.xs[i] != b.xs[i] or a.ys[i] != b.ys[i] or a.cum[i] != b.cum[i]:
            break
        last = a.cum[i]
    return last


class RouteIndex:
    """Routes, their network, geometry for the hot path and speed profiles."""

    def __init__(
        self,
        routes: RouteSet,
        profile: EngineProfile | None = None,
        overrides: Mapping[str, Sequence[SpeedOverride]] | None = None,
    ) -> None:
        self.routes = routes
        self.projector = routes.projector
        self.profile = profile or EngineProfile()
        self.network = RouteNetwork(routes)
        self.geometry = {mr.id: RouteGeometry(mr) for mr in routes}
        self.speed = {
            mr.id: SpeedProfile(mr, self.profile, (overrides or {}).get(mr.id, ())) for mr in routes
        }
        self.signals: dict[str, tuple[SignalPoint, ...]] = {mr.id: mr.signals for mr in routes}
        # For each route, the other routes with the same vertices from the start, and
        # how far: (other, until), by id, itself last with an infinite reach.
        self._twins: dict[str, list[tuple[str, float]]] = {}
        for a in sorted(self.geometry):
            pairs = []
            for b in sorted(self.geometry):
                if b < a:
                    until = _common_prefix(self.geometry[a], self.geometry[b])
                    if until > 0.0:
                        pairs.append((b, until))
            self._twins[a] = [*pairs, (a, math.inf)]
        self._ids = list(routes.routes)
        self._tree = STRtree([mr.line for mr in routes])

    def twin(self, route: str, hi: float) -> str:
        """The first (by id) route drawn with the very same vertices as ``route`` from
        the station up to ``hi``: hypotheses there evolve identically, so the matcher
        evaluates them once. Routes of one station share their trunk vertex for vertex
        when they come from one drawing or one road network."""
        for other, until in self._twins[route]:
            if until > hi:
                return other
        return route

    def near(self, x: float, y: float, distance: float) -> list[str]:
        """Ids of the routes passing within ``distance`` of (x, y)."""
        hits = self._tree.query(shapely.Point(x, y), predicate="dwithin", distance=distance)
        return [self._ids[int(i)] for i in sorted(hits)]

    def locate(self, route: str, x: float, y: float) -> Projection:
        """Nearest point on the whole route (for acquisition, not the hot path)."""
        mr = self.routes[route]
        s, offset = mr.locate(x, y)
        return Projection(s, offset, self.geometry[route].heading_at(s))
