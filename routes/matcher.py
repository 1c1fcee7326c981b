"""Online matching of one vehicle's fixes against the approach routes.

A hidden Markov model over (route, distance along the route), run forward one
fix at a time. Each route the vehicle may be on is one hypothesis carrying its
distance ``s``, its weight, and an estimate of the receiver's slowly varying
position error (a 2-D Gauss-Markov bias in a small Kalman filter).

Why the bias: GNSS errors in a city are not independent from fix to fix; they
wander with a time constant of tens of seconds. A matcher that treats them as
independent counts the same 10 m error as new evidence every second and, at a
shallow fork, commits to the wrong branch. On a known route the error's
cross-track part is observable (the vehicle is on the road), so each hypothesis
learns it on the way and judges a fix by what is left after removing it. On a
shared trunk every hypothesis learns the same bias and keeps the same weight;
after a fork the right one explains the fixes with a few metres to spare.

Per fix:

- *predict*: each hypothesis moves on by the speed over ground times the
  elapsed time; the bias decays towards zero (Gauss-Markov);
- *emission*: the fix is projected onto the route near the prediction; the
  cross-track innovation (offset minus bias), the along-track innovation and a
  wrap-safe heading term (von Mises on course over ground) make the likelihood,
  mixed with a small uniform outlier density so that a multipath jump of 100 m
  moves no weight and never flips a committed route;
- *verdicts*: when every hypothesis sees the fixes drift away with a course that
  leaves the route, or a course reversed against it, the vehicle has left the
  route or turned around; the hypotheses are dropped and the position is
  reported off-route, so the planner takes its requests back. Acquisition then
  starts again (re-joining later works like starting out of the station yard);
- *gaps*: without fixes for longer than ``dead_reckoning_s`` the track is
  dropped and re-acquired; shorter gaps are bridged by the prediction.

A prior over routes (dispatch knows the incident, so it knows the likely
route) enters as the hypotheses' initial weights; the evidence after a fork
outweighs a wrong prior within a few fixes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from preemption.model import Fix, RoutePosition, SignalEta
from routes.geojson import RouteSet
from routes.index import Projection, RouteIndex

_LOG_2PI = math.log(2 * math.pi)


class Verdict(StrEnum):
    TRACKING = "tracking"
    SEARCHING = "searching"  # not on any route (yet): station yard, after leaving
    LEFT_ROUTE = "left_route"
    U_TURN = "u_turn"
    GAP = "gap"  # too long without fixes: re-acquiring


@dataclass(frozen=True, slots=True)
class MatcherConfig:
    sigma_m: float = 10.0  # stationary std of the receiver's wandering error, per axis
    tau_s: float = 30.0  # its correlation time
    white_m: float = 3.0  # independent noise per fix, plus the lane's offset from the centre line
    outlier_prob: float = 0.03  # share of fixes that are multipath: explained by nothing
    outlier_radius_m: float = 150.0  # uniform outlier density over this disc
    heading_kappa: float = 4.0  # von Mises concentration of course over ground
    min_course_speed: float = 3.0  # m/s below which course over ground is noise
    corner_m: float = 12.0  # the course may match any segment this close (corners)
    speed_sigma: float = 1.0  # m/s error of the along-route speed over one interval
    acquire_m: float = 40.0  # a route this close may be the one
    acquire_heading_deg: float = 60.0  # and only when the course agrees this well
    commit_probability: float = 0.95
    keep_probability: float = 0.3  # a committed route stays committed above this
    evidence_weight: float = 1.0  # tempering of each fix's log-likelihood
    prune_probability: float = 1e-6
    leave_offset_m: float = 12.0  # cross-track innovation that counts as drifting off
    leave_heading_deg: float = 35.0  # course off the route by this much counts as leaving
    leave_fixes: int = 2
    uturn_heading_deg: float = 120.0
    uturn_fixes: int = 2
    dead_reckoning_s: float = 30.0
    max_speed: float = 40.0  # m/s; faster apparent motion is not motion


@dataclass(slots=True)
class _Hypothesis:
    s: float
    logw: float
    bx: float = 0.0  # receiver error estimate, metres east
    by: float = 0.0  # metres north
    pxx: float = 0.0
    pxy: float = 0.0
    pyy: float = 0.0
    proj: Projection | None = None
    innovation: float = 0.0  # last cross-track innovation


class RouteMatcher:
    """The matcher of one vehicle. Share one :class:`RouteIndex` between all vehicles."""

    def __init__(
        self,
        vehicle: str,
        routes: RouteIndex | RouteSet,
        config: MatcherConfig | None = None,
    ) -> None:
        self.vehicle = vehicle
        self.index = routes if isinstance(routes, RouteIndex) else RouteIndex(routes)
        self.config = config or MatcherConfig()
        self.prior: dict[str, float] = {}
        self.verdict = Verdict.SEARCHING
        self.counters: Counter[str] = Counter()
        self._hyps: dict[str, _Hypothesis] = {}
        self._committed: str | None = None
        self._time: float | None = None
        self._speed = 0.0
        self._leaving = 0
        self._reversing = 0
        self._last: RoutePosition | None = None

    # -- inputs from outside --------------------------------------------------

    def set_prior(self, prior: Mapping[str, float] | str | None) -> None:
        """Dispatch's belief over routes: a route id (likely), weights, or None (no idea).

        Applied to the hypotheses at once and to every later acquisition.
        """
        if prior is None:
            self.prior = {}
        elif isinstance(prior, str):
            self._known(prior)
            others = len(self.index.routes) - 1
            # "Likely", not certain: the evidence must be able to overrule dispatch.
            self.prior = {
                r: (0.8 if r == prior else 0.2 / max(others, 1)) for r in self.index.routes.routes
            }
        else:
            for r in prior:
                self._known(r)
            self.prior = {r: float(p) for r, p in prior.items() if p > 0}
        if self._hyps:
            for r, h in self._hyps.items():
                h.logw = math.log(self._prior(r))
            self._normalise()

    def _known(self, route: str) -> None:
        if route not in self.index.routes.routes:
            raise KeyError(f"unknown route {route!r}; known: {sorted(self.index.routes.routes)}")

    def _prior(self, route: str) -> float:
        if not self.prior:
            return 1.0
        return max(self.prior.get(route, 0.0), 1e-3)

    # -- one fix --------------------------------------------------------------

    def update(self, fix: Fix) -> RoutePosition:
        cfg = self.config
        x, y = self.index.projector.to_metric(fix.lon, fix.lat)
        if self._time is not None:
            dt = fix.time - self._time
            if dt <= 0:
                self.counters["fix_not_newer"] += 1
                return self._last or self._off(fix)
            if dt > cfg.dead_reckoning_s and self._hyps:
                self._drop(Verdict.GAP)
        else:
            dt = 0.0
        self._time = fix.time
        course_ok = fix.course is not None and (
            fix.speed is None or fix.speed >= cfg.min_course_speed
        )
        if not self._hyps:
            if not self._acquire(fix, x, y, course_ok):
                self._last = self._off(fix)
                return self._last
        else:
            self._track(fix, x, y, dt, course_ok)
            if not self._hyps:
                self._last = self._off(fix)
                return self._last
        self._last = self._position(fix)
        return self._last

    def _acquire(self, fix: Fix, x: float, y: float, course_ok: bool) -> bool:
        cfg = self.config
        for r in self.index.near(x, y, cfg.acquire_m):
            proj = self.index.locate(r, x, y)
            if course_ok and _angle(fix.course or 0.0, proj.heading) > cfg.acquire_heading_deg:
                continue  # crossing the route, or driving it the wrong way
            var = cfg.sigma_m**2
            ll = -0.5 * (proj.offset**2 / (var + cfg.white_m**2))
            self._hyps[r] = _Hypothesis(
                s=proj.s,
                logw=math.log(self._prior(r)) + ll,
                pxx=var,
                pyy=var,
                proj=proj,
            )
        if not self._hyps:
            return False
        self.counters["acquired"] += 1
        self.verdict = Verdict.TRACKING
        self._speed = fix.speed or 0.0
        self._leaving = self._reversing = 0
        self._normalise()
        return True

    def _track(self, fix: Fix, x: float, y: float, dt: float, course_ok: bool) -> None:
        cfg = self.config
        sog = fix.speed
        travel = 0.5 * (self._speed + (sog if sog is not None else self._speed)) * dt
        phi = math.exp(-dt / cfg.tau_s)
        q = cfg.sigma_m**2 * (1.0 - phi * phi)
        white2 = cfg.white_m**2
        sig_s2 = white2 + (cfg.speed_sigma * dt) ** 2
        window = 4.0 * math.sqrt(sig_s2 + cfg.sigma_m**2) + 10.0
        outlier_ll = math.log(cfg.outlier_prob / (math.pi * cfg.outlier_radius_m**2))
        inlier_log_prior = math.log(1.0 - cfg.outlier_prob)
        results: list[tuple[_Hypothesis, float, float, float, float]] = []
        best_inlier = -math.inf
        for r, h in self._hyps.items():
            g = self.index.geometry[r]
            s_pred = min(h.s + travel, g.length)
            # Gauss-Markov prediction of the receiver error.
            h.bx *= phi
            h.by *= phi
            h.pxx = phi * phi * h.pxx + q
            h.pxy = phi * phi * h.pxy
            h.pyy = phi * phi * h.pyy + q
            # Project the fix with the estimated receiver error taken out.
            proj = g.project_near(x - h.bx, y - h.by, s_pred - window, s_pred + window)
            hr = math.radians(proj.heading)
            ux, uy = math.sin(hr), math.cos(hr)
            nx, ny = -uy, ux  # left normal
            # What is left across the route is the innovation: the route is the truth there.
            nu = proj.offset
            pn_x = h.pxx * nx + h.pxy * ny
            pn_y = h.pxy * nx + h.pyy * ny
            s_cross = nx * pn_x + ny * pn_y + white2
            ds = proj.s - s_pred
            pu = ux * (h.pxx * ux + h.pxy * uy) + uy * (h.pxy * ux + h.pyy * uy)
            s_along = sig_s2 + pu
            ll = (
                -0.5 * (nu * nu / s_cross + ds * ds / s_along)
                - _LOG_2PI
                - 0.5 * math.log(s_cross * s_along)
            )
            if course_ok:
                agree = g.heading_agreement(fix.course or 0.0, proj.s, cfg.corner_m)
                ll += cfg.heading_kappa * (agree - 1.0)
            h.proj = proj
            h.innovation = nu
            results.append((h, s_pred, ll, nu, s_cross))
            best_inlier = max(best_inlier, ll + inlier_log_prior)
        outlier = best_inlier < outlier_ll
        if outlier:
            # Nothing explains the fix: a multipath jump. Move on by the prediction only.
            self.counters["outliers"] += 1
            for h, s_pred, _, _, _ in results:
                h.s = max(h.s, s_pred)
        else:
            for h, s_pred, ll, nu, s_cross in results:
                mix = _logaddexp(ll + inlier_log_prior, outlier_ll)
                h.logw += cfg.evidence_weight * mix
                assert h.proj is not None
                hr = math.radians(h.proj.heading)
                nx, ny = -math.cos(hr), math.sin(hr)
                # Kalman update of the bias with the cross-track innovation, but only while
                # the vehicle follows the route: heading away, the offset is its own doing.
                if course_ok and _angle(fix.course or 0.0, h.proj.heading) > cfg.leave_heading_deg:
                    h.s = max(h.s, s_pred if h.proj.s > s_pred else h.proj.s)
                    continue
                pn_x = h.pxx * nx + h.pxy * ny
                pn_y = h.pxy * nx + h.pyy * ny
                kx, ky = pn_x / s_cross, pn_y / s_cross
                h.bx += kx * nu
                h.by += ky * nu
                h.pxx -= kx * pn_x
                h.pxy -= kx * pn_y
                h.pyy -= ky * pn_y
                # Along the route: the projection, never backwards (a U-turn is a verdict).
                h.s = max(
                    h.s,
                    min(
                        max(h.proj.s, s_pred - 3.0 * math.sqrt(sig_s2)),
                        s_pred + 3.0 * math.sqrt(sig_s2),
                    ),
                )
        if sog is not None:
            self._speed = sog
        elif dt > 0 and results:
            self._speed = min(cfg.max_speed, max(0.0, travel / dt))
        self._normalise()
        self._judge(fix, course_ok, outlier)

    def _judge(self, fix: Fix, course_ok: bool, outlier: bool) -> None:
        """Left the route or turned around? Every hypothesis must agree."""
        cfg = self.config
        hyps = list(self._hyps.values())
        heading_off = [
            _angle(fix.course or 0.0, h.proj.heading) if course_ok and h.proj else 0.0 for h in hyps
        ]
        reversing = course_ok and all(a >= cfg.uturn_heading_deg for a in heading_off)
        self._reversing = self._reversing + 1 if reversing else 0
        drifting = (
            all(
                abs(h.innovation) >= cfg.leave_offset_m and a >= cfg.leave_heading_deg
                for h, a in zip(hyps, heading_off, strict=True)
            )
            and course_ok
        )
        # Without a course, only a sustained drift (not a burst) counts.
        drifting = drifting or (
            not course_ok and outlier and all(abs(h.innovation) >= 3 * cfg.sigma_m for h in hyps)
        )
        self._leaving = self._leaving + 1 if drifting and not reversing else 0
        if self._reversing >= cfg.uturn_fixes:
            self._drop(Verdict.U_TURN)
        elif self._leaving >= cfg.leave_fixes + (0 if course_ok else 2):
            self._drop(Verdict.LEFT_ROUTE)

    def _drop(self, verdict: Verdict) -> None:
        self.counters[verdict.value] += 1
        self.verdict = verdict
        self._hyps.clear()
        self._committed = None
        self._leaving = self._reversing = 0

    def _normalise(self) -> None:
        top = max(h.logw for h in self._hyps.values())
        for h in self._hyps.values():
            h.logw -= top
        total = sum(math.exp(h.logw) for h in self._hyps.values())
        for r in [
            r
            for r, h in self._hyps.items()
            if math.exp(h.logw) / total < self.config.prune_probability
        ]:
            del self._hyps[r]

    # -- output ---------------------------------------------------------------

    def probabilities(self) -> dict[str, float]:
        w = {r: math.exp(h.logw) for r, h in self._hyps.items()}
        total = sum(w.values()) or 1.0
        return {r: v / total for r, v in w.items()}

    def _position(self, fix: Fix) -> RoutePosition:
        cfg = self.config
        probs = self.probabilities()
        best = max(probs, key=probs.__getitem__)
        if self._committed not in probs or probs[self._committed] < cfg.keep_probability:
            self._committed = best if probs[best] >= cfg.commit_probability else None
        route = self._committed or best
        h = self._hyps[route]
        compatible = {r for r, p in probs.items() if p >= 1e-3}
        common = self.index.network.common_signals(compatible)
        sigma_s = math.sqrt(cfg.white_m**2 + h.pxx + h.pyy)
        ahead = [sig for sig in self.index.signals[route] if sig.stop_line_m > h.s]
        bands = self.index.speed[route].etas(
            h.s, self._speed, [sig.stop_line_m for sig in ahead], sigma_s
        )
        etas = tuple(
            SignalEta(
                intersection=sig.intersection,
                controller=sig.controller,
                approach=sig.approach,
                distance_m=sig.stop_line_m - h.s,
                eta_s=eta,
                early_s=early,
                late_s=late,
                shared=(sig.intersection, sig.approach) in common,
            )
            for sig, (early, eta, late) in zip(ahead, bands, strict=True)
        )
        return RoutePosition(
            vehicle=self.vehicle,
            time=fix.time,
            compatible=probs,
            committed=self._committed,
            route=route,
            distance_m=h.s,
            speed=self._speed,
            offset_m=h.proj.offset if h.proj else 0.0,
            confidence=probs[route],
            on_route=True,
            etas=etas,
        )

    def _off(self, fix: Fix) -> RoutePosition:
        return RoutePosition(
            vehicle=self.vehicle,
            time=fix.time,
            compatible={},
            committed=None,
            route=None,
            distance_m=0.0,
            speed=fix.speed or 0.0,
            offset_m=0.0,
            confidence=0.0,
            on_route=False,
            etas=(),
        )


def _angle(a: float, b: float) -> float:
    d = (a - b) % 360.0
    return d if d <= 180.0 else 360.0 - d


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))
