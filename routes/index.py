"""Everything the matcher needs about a set of routes, computed once per deployment.

Per route: plain-float copies of the vertices for the hot path (a local
projection in pure Python beats a numpy or shapely call for the two or three
segments it looks at), the speed profile for ETAs, and the route network.
Every vehicle's matcher shares one index.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import shapely
from shapely.strtree import STRtree

from preemption.kernel.model import SignalPoint
from routes.geojson import RouteSet
from routes.geometry import MetricRoute
from routes.network import RouteNetwork
from routes.speed import EngineProfile, SpeedOverride, SpeedProfile


class Projection(NamedTuple):
    """Where a point projects onto a route. (A named tuple: made once or twice per
    fix, and a tuple is built in half the time of a frozen dataclass.)"""

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
        # The same per segment, one tuple each: unpacking a tuple in the hot loops is
        # cheaper than indexing six lists. (x0, y0, ux, uy, length, cum, heading)
        self.segments = list(
            zip(
                self.xs,
                self.ys,
                self.ux,
                self.uy,
                self.seglen,
                self.cum,
                self.heading,
                strict=False,
            )
        )
        self.directions = list(zip(self.ux, self.uy, strict=True))

    def _span(self, s0: float, s1: float) -> tuple[int, int]:
        """First and last segment touching ``s0``..``s1`` (clamped to the route; never
        empty). Conditional expressions, not min/max: this runs several times per fix."""
        last = len(self.seglen) - 1
        i0 = bisect_right(self.cum, s0) - 1
        i0 = 0 if i0 < 0 else (last if i0 > last else i0)
        i1 = bisect_right(self.cum, s1) - 1
        i1 = last if i1 > last else i1
        return i0, (i0 if i1 < i0 else i1)

    def project_near(self, x: float, y: float, s0: float, s1: float) -> Projection:
        """Nearest point to (x, y) on the part of the route between ``s0`` and ``s1``."""
        i0, i1 = self._span(s0, s1)
        best_d2 = math.inf
        best = (0.0, 0.0, 0.0)
        for x0, y0, ux, uy, seglen, cum, heading in self.segments[i0 : i1 + 1]:
            px, py = x - x0, y - y0
            t = px * ux + py * uy
            if t < 0.0:
                t = 0.0
            elif t > seglen:
                t = seglen
            ex, ey = px - t * ux, py - t * uy
            d2 = ex * ex + ey * ey
            if d2 < best_d2:
                best_d2 = d2
                # Left of travel when the cross product of direction and offset is positive.
                best = (cum + t, ux * py - uy * px, heading)
        s, side, heading = best
        d = math.sqrt(best_d2)
        return Projection(s, d if side >= 0 else -d, heading)

    def turn_between(self, s0: float, s1: float) -> float:
        """Degrees the route turns between ``s0`` and ``s1`` (sum of absolute changes)."""
        i0, i1 = self._span(s0, s1)
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
        c = math.radians(course)
        return self.agreement(math.sin(c), math.cos(c), s, radius)

    def agreement(self, cx: float, cy: float, s: float, radius: float) -> float:
        """:meth:`heading_agreement` for a course given as its unit vector (east, north),
        which the matcher works out once per fix."""
        i0, i1 = self._span(s - radius, s + radius)
        # cos(course - heading) is the dot product of the two unit vectors.
        best = -1.0
        for ux, uy in self.directions[i0 : i1 + 1]:
            v = cx * ux + cy * uy
            if v > best:
                best = v
        return best

    def agreements(
        self, cx: float, cy: float, s: float, near: float, wide: float
    ) -> tuple[float, float]:
        """:meth:`agreement` within ``near`` and within ``wide`` (>= ``near``) of ``s``,
        in one pass over the wider window."""
        i0, i1 = self._span(s - wide, s + wide)
        j0, j1 = self._span(s - near, s + near)  # inside i0..i1 as wide >= near
        best_near = best_wide = -1.0
        for i, (ux, uy) in enumerate(self.directions[i0 : i1 + 1], i0):
            v = cx * ux + cy * uy
            if v > best_wide:
                best_wide = v
            if v > best_near and j0 <= i <= j1:
                best_near = v
        return best_near, best_wide

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
        # Stop-line distances per route, for finding the signals ahead by bisection.
        self.stop_lines = {
            rid: [sig.stop_line_m for sig in sigs] for rid, sigs in self.signals.items()
        }
        for rid, stops in self.stop_lines.items():
            if any(b < a for a, b in itertools.pairwise(stops)):
                raise ValueError(f"route {rid!r}: signals not in driving order")
        # The profile's time at each stop line, for the ETAs every fix.
        self.stop_times = {
            rid: [self.speed[rid].time_at(s) for s in stops]
            for rid, stops in self.stop_lines.items()
        }
        # For each route, the other routes with the same vertices from the start, and
        # how far: (other, until), by id, itself last with an infinite reach.
        self._twins: dict[str, list[tuple[str, float]]] = {}
        self._prefix: dict[tuple[str, str], float] = {}
        for a in sorted(self.geometry):
            pairs = []
            for b in sorted(self.geometry):
                if b < a:
                    until = _common_prefix(self.geometry[a], self.geometry[b])
                    self._prefix[a, b] = self._prefix[b, a] = until
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

    def first_ahead(self, route: str, s: float) -> int:
        """Index of the first of ``route``'s signals whose stop line is past ``s``
        (the signals are in driving order)."""
        return bisect_right(self.stop_lines[route], s)

    def shared_until(self, routes: Sequence[str]) -> float:
        """How far from the station all of ``routes`` have the very same vertices.

        For any ``0 < hi <`` this, :meth:`twin` gives every one of them the same
        answer: having the same leading vertices is transitive, so the routes that
        share more than ``hi`` with one of them are those that share it with any.
        The matcher checks this once per filter instead of asking twin() per route.
        """
        first = routes[0]
        return min((self._prefix[first, r] for r in routes[1:] if r != first), default=math.inf)

    def near(self, x: float, y: float, distance: float) -> list[str]:
        """Ids of the routes passing within ``distance`` of (x, y)."""
        hits = self._tree.query(shapely.Point(x, y), predicate="dwithin", distance=distance)
        return [self._ids[int(i)] for i in sorted(hits)]

    def locate(self, route: str, x: float, y: float) -> Projection:
        """Nearest point on the whole route (for acquisition, not the hot path)."""
        mr = self.routes[route]
        s, offset = mr.locate(x, y)
        return Projection(s, offset, self.geometry[route].heading_at(s))
