"""Online matching of one vehicle's fixes against the approach routes.

Walking-skeleton matcher: each fix is projected onto every route; routes within
``max_offset_m`` are compatible, weighted by a Gaussian of the lateral offset,
and the most probable route is committed once its probability passes the
threshold. On a shared trunk every route has the same offset, so none commits
before the branch, which is what the planner needs. Distance along the route
never runs backwards by more than GNSS noise; a course opposite to the route
for consecutive fixes is reported as leaving the route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from preemption.model import Fix, RoutePosition, SignalEta
from routes.eta import EngineProfile, eta_band
from routes.geojson import RouteSet
from routes.geometry import MetricRoute, heading_difference


@dataclass(frozen=True, slots=True)
class MatcherConfig:
    max_offset_m: float = 40.0  # further from every route: off the routes
    sigma_m: float = 12.0  # GNSS error in urban canyons
    commit_probability: float = 0.9
    wrong_way_deg: float = 120.0  # course this far from the route direction is wrong-way
    wrong_way_fixes: int = 2  # consecutive wrong-way fixes before the verdict
    min_course_speed: float = 3.0  # m/s below which the course is noise
    backtrack_tolerance_m: float = 15.0  # along-route jitter allowed backwards
    max_speed: float = 40.0  # m/s; implied faster motion is an outlier


@dataclass
class _Track:
    route: str | None = None
    committed: str | None = None
    s: float = 0.0
    time: float | None = None
    wrong_way: int = 0
    left: bool = False
    speed: float = 0.0


@dataclass
class RouteMatcher:
    vehicle: str
    routes: RouteSet
    config: MatcherConfig = field(default_factory=MatcherConfig)
    profile: EngineProfile = field(default_factory=EngineProfile)
    _track: _Track = field(default_factory=_Track)

    def set_prior(self, route_id: str | None) -> None:
        """Dispatch knows the likely route: commit to it at once (None clears)."""
        if route_id is not None and route_id not in self.routes.routes:
            raise KeyError(f"unknown route {route_id!r}; known: {sorted(self.routes.routes)}")
        self._track.committed = route_id
        if route_id is not None:
            self._track.route = route_id

    def update(self, fix: Fix) -> RoutePosition:
        cfg = self.config
        tr = self._track
        x, y = self.routes.projector.to_metric(fix.lon, fix.lat)
        located: dict[str, tuple[float, float]] = {}
        for mr in self.routes:
            s, off = mr.locate(x, y)
            if abs(off) <= cfg.max_offset_m:
                located[mr.id] = (s, off)
        dt = None if tr.time is None else max(fix.time - tr.time, 1e-3)
        # An implausible jump along the route (multipath) is not evidence: keep the track.
        if tr.route in located and dt is not None:
            jump = abs(located[tr.route][0] - tr.s)
            if jump > cfg.max_speed * dt + 3 * cfg.sigma_m:
                return self._position(fix, tr.s + tr.speed * dt, 0.0, {}, outlier=True)
        if not located:
            tr.left = tr.route is not None
            tr.time = fix.time
            return self._position(fix, tr.s, cfg.max_offset_m, {}, outlier=False)
        weights = {
            rid: math.exp(-0.5 * (off / cfg.sigma_m) ** 2) for rid, (_, off) in located.items()
        }
        total = sum(weights.values()) or 1.0
        probs = {rid: w / total for rid, w in weights.items()}
        if tr.committed not in located:
            tr.committed = None
            best = max(probs, key=lambda r: probs[r])
            if probs[best] >= cfg.commit_probability:
                tr.committed = best
        route_id = tr.committed or max(probs, key=lambda r: probs[r])
        s, off = located[route_id]
        mr = self.routes[route_id]
        if route_id == tr.route and s < tr.s - cfg.backtrack_tolerance_m:
            pass  # true reversal is judged by the course below; keep the raw distance
        elif route_id == tr.route:
            s = max(s, tr.s - cfg.backtrack_tolerance_m)
        speed = fix.speed
        if speed is None:
            speed = 0.0 if dt is None or route_id != tr.route else max(0.0, (s - tr.s) / dt)
        wrong = (
            fix.course is not None
            and speed >= cfg.min_course_speed
            and heading_difference(fix.course, mr.at(s).heading_deg) > cfg.wrong_way_deg
        )
        tr.wrong_way = tr.wrong_way + 1 if wrong else 0
        tr.left = tr.wrong_way >= cfg.wrong_way_fixes
        tr.route, tr.s, tr.time, tr.speed = route_id, s, fix.time, speed
        return self._position(fix, s, off, probs, outlier=False)

    def _position(
        self, fix: Fix, s: float, offset: float, probs: dict[str, float], outlier: bool
    ) -> RoutePosition:
        tr = self._track
        on_route = outlier or (bool(probs) and not tr.left)
        etas: tuple[SignalEta, ...] = ()
        if on_route and tr.route is not None:
            etas = self._etas(self.routes[tr.route], s, tr.speed, set(probs) or {tr.route})
        return RoutePosition(
            vehicle=self.vehicle,
            time=fix.time,
            compatible=probs,
            committed=tr.committed,
            route=tr.route,
            distance_m=s,
            speed=tr.speed,
            offset_m=offset,
            confidence=max(probs.values(), default=0.0),
            on_route=on_route,
            etas=etas,
        )

    def _etas(
        self, mr: MetricRoute, s: float, speed: float, compatible: set[str]
    ) -> tuple[SignalEta, ...]:
        out = []
        for sig in mr.signals:
            d = sig.stop_line_m - s
            if d <= 0:
                continue
            early, eta, late = eta_band(d, speed, self.profile)
            shared = all(
                any(
                    o.intersection == sig.intersection and o.approach == sig.approach
                    for o in self.routes[rid].signals
                )
                for rid in compatible
            )
            out.append(
                SignalEta(
                    intersection=sig.intersection,
                    controller=sig.controller,
                    approach=sig.approach,
                    distance_m=d,
                    eta_s=eta,
                    early_s=early,
                    late_s=late,
                    shared=shared,
                )
            )
        return tuple(out)
