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
from dataclasses import dataclass, replace
from enum import StrEnum

from preemption.kernel.model import Fix, RoutePosition, SignalEta
from routes.geojson import RouteSet
from routes.geometry import heading_difference
from routes.index import Projection, RouteGeometry, RouteIndex

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
    white_m: float = 4.0  # independent noise per fix, plus the lane's offset from the centre line
    outlier_prob: float = 0.03  # share of fixes that are multipath: explained by nothing
    outlier_radius_m: float = 150.0  # uniform outlier density over this disc
    heading_kappa: float = 80.0  # von Mises concentration of course over ground (~6 deg)
    heading_cap: float = 8.0  # most a fix's course can count against a route (log units)
    min_course_speed: float = 3.0  # m/s below which course over ground is noise
    corner_m: float = 12.0  # the course may match any segment this close (corners)
    speed_sigma: float = 0.5  # m/s error of the along-route travel over one interval
    acquire_m: float = 40.0  # a route this close may be the one
    acquire_heading_deg: float = 60.0  # and only when the course agrees this well
    commit_probability: float = 0.95
    fork_sigmas: float = 2.0  # commit only this many sigma of s past the fork
    commit_fixes: int = 3  # fixes in a row the route must be ready to commit
    keep_probability: float = 0.3  # a committed route stays committed above this
    # With a prior, the fixes alone must give the route this much to commit: the prior
    # hastens a commitment the evidence leans to, it never makes one by itself.
    prior_commit_evidence: float = 0.75
    evidence_weight: float = 1.0  # tempering of each fix's log-likelihood
    prune_probability: float = 1e-6
    leave_offset_m: float = 7.0  # cross-track innovation that counts as clear of the route
    leave_heading_deg: float = 35.0  # course off the route by this much counts as leaving
    leave_fixes: int = 2  # fixes in a row heading away, the last clear of the route
    uturn_heading_deg: float = 120.0
    verdict_weight: float = 0.75  # share of the probability that must see a U-turn / leaving
    uturn_flip_deg: float = 150.0  # course against the last route-following course
    along_heading_deg: float = 30.0  # a course this close to the route follows it
    uturn_fixes: int = 2
    dead_reckoning_s: float = 30.0
    corner_turn_deg: float = 20.0  # a turn this sharp within reach is handled as a corner
    corner_sigmas: float = 2.5  # how far along the route (in sigma of s) a corner is looked for
    resync_after: int = 15  # consecutive outliers (longer than back-to-back bursts) before resync
    max_speed: float = 40.0  # m/s; faster apparent motion is not motion


@dataclass(slots=True)
class _Hypothesis:
    """One route the vehicle may be on: a Kalman filter over (s, receiver error east/north).

    The fixes are route(s) + error + noise. Along a straight road, s and the
    along-track error are told apart only by the speed over ground, which is far
    more precise than a position over a few seconds; at every turn the old
    along-track error shows up across the road and the filter corrects s.

    Routes drawn with the very same vertices up to beyond the filter's reach (a
    shared trunk) share one filter object: it is predicted, evaluated and
    corrected once for all of them, and split into copies where their geometry
    parts (each route keeps its own weight).
    """

    s: float
    bx: float = 0.0
    by: float = 0.0
    # Covariance of (s, bx, by), upper triangle.
    pss: float = 0.0
    psx: float = 0.0
    psy: float = 0.0
    pxx: float = 0.0
    pxy: float = 0.0
    pyy: float = 0.0
    s_out: float = 0.0  # reported distance: never backwards (a reversal is a verdict)
    proj: Projection | None = None
    innovation: float = 0.0  # last cross-track innovation

    def copy(self) -> _Hypothesis:
        return replace(self)

    def predict(self, travel: float, q_s: float, phi: float, q_b: float) -> None:
        self.s += travel
        self.bx *= phi
        self.by *= phi
        self.pss += q_s
        self.psx *= phi
        self.psy *= phi
        f2 = phi * phi
        self.pxx = f2 * self.pxx + q_b
        self.pxy = f2 * self.pxy
        self.pyy = f2 * self.pyy + q_b

    def gate(
        self, proj: Projection, r: float
    ) -> tuple[float, float, float, float, float, float, float, float, float, float, float]:
        """Innovation, its covariance and P·Hᵀ for the fix projected at ``proj``.

        Measurement: along-track ``proj.s - s`` = ds + u·db; across ``offset`` = n·db.
        """
        hr = math.radians(proj.heading)
        ux, uy = math.sin(hr), math.cos(hr)
        nx, ny = -uy, ux
        # P·Hᵀ, columns for the along and the across row of H = [[1, ux, uy], [0, nx, ny]].
        a0 = self.pss + ux * self.psx + uy * self.psy
        a1 = self.psx + ux * self.pxx + uy * self.pxy
        a2 = self.psy + ux * self.pxy + uy * self.pyy
        c0 = nx * self.psx + ny * self.psy
        c1 = nx * self.pxx + ny * self.pxy
        c2 = nx * self.pxy + ny * self.pyy
        s11 = a0 + ux * a1 + uy * a2 + r
        s12 = c0 + ux * c1 + uy * c2
        s22 = nx * c1 + ny * c2 + r
        return proj.s - self.s, proj.offset, s11, s12, s22, a0, a1, a2, c0, c1, c2

    def correct(
        self,
        e1: float,
        e2: float,
        s11: float,
        s12: float,
        s22: float,
        a0: float,
        a1: float,
        a2: float,
        c0: float,
        c1: float,
        c2: float,
    ) -> None:
        """Kalman update with the quantities :meth:`gate` returns, in its order."""
        det = s11 * s22 - s12 * s12
        i11, i12, i22 = s22 / det, -s12 / det, s11 / det
        # K = P·Hᵀ·S⁻¹: one row (along, across) for each of s, bx, by.
        ks1, ks2 = a0 * i11 + c0 * i12, a0 * i12 + c0 * i22
        kx1, kx2 = a1 * i11 + c1 * i12, a1 * i12 + c1 * i22
        ky1, ky2 = a2 * i11 + c2 * i12, a2 * i12 + c2 * i22
        self.s += ks1 * e1 + ks2 * e2
        self.bx += kx1 * e1 + kx2 * e2
        self.by += ky1 * e1 + ky2 * e2
        # P -= K (P·Hᵀ)ᵀ
        self.pss -= ks1 * a0 + ks2 * c0
        self.psx -= ks1 * a1 + ks2 * c1
        self.psy -= ks1 * a2 + ks2 * c2
        self.pxx -= kx1 * a1 + kx2 * c1
        self.pxy -= kx1 * a2 + kx2 * c2
        self.pyy -= ky1 * a2 + ky2 * c2


@dataclass(frozen=True, slots=True)
class _Derived:
    """Figures the matcher works out from its (frozen) config once, not every fix."""

    r: float  # white noise variance per axis
    outlier_ll: float  # log density of a fix that nothing explains
    inlier_log_prior: float
    # Verdict angles as cosines: comparing an agreement (a cosine) with these is the
    # same as comparing its angle with the angle, without an acos per filter and fix.
    cos_uturn: float
    cos_along: float
    cos_leave: float

    @staticmethod
    def of(cfg: MatcherConfig) -> _Derived:
        return _Derived(
            r=cfg.white_m**2,
            outlier_ll=math.log(cfg.outlier_prob / (math.pi * cfg.outlier_radius_m**2)),
            inlier_log_prior=math.log(1.0 - cfg.outlier_prob),
            cos_uturn=math.cos(math.radians(cfg.uturn_heading_deg)),
            cos_along=math.cos(math.radians(cfg.along_heading_deg)),
            cos_leave=math.cos(math.radians(cfg.leave_heading_deg)),
        )


# One filter's step in _track, for the verdicts: the filter, its routes' geometry, the
# routes, how far they share their vertices, the fix's log-likelihood, the Kalman gate
# and the course's angle off the segment under the fix.
_Step = tuple["_Hypothesis", RouteGeometry, list[str], float, float, tuple[float, ...], float]
# A filter, the routes sharing it and how far those share their vertices.
_Group = tuple["_Hypothesis", list[str], float]


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
        self._k = _Derived.of(self.config)
        self.prior: dict[str, float] = {}
        self._log_prior: dict[str, float] = {}  # of every route while a prior is set
        self.verdict = Verdict.SEARCHING
        self.counters: Counter[str] = Counter()
        self._hyps: dict[str, _Hypothesis] = {}  # route -> filter (shared by twins)
        # Each filter with its routes, in _hyps' order; None after any change of _hyps.
        self._members: list[_Group] | None = None
        self._logw: dict[str, float] = {}  # route -> log weight
        self._committed: str | None = None
        self._time: float | None = None
        self._speed = 0.0
        self._leaving = 0
        self._reversing = 0
        self._outliers = 0  # consecutive fixes nothing explained
        self._probs: dict[str, float] = {}  # route -> probability, set by _normalise
        self._aligned_course: float | None = None  # last course that followed the route
        self._leader: tuple[str, int] = ("", 0)  # route ready to commit, fixes in a row
        self._last: RoutePosition | None = None
        # (route, compatible routes, shared flag of each of the route's signals)
        self._shared_for: tuple[str, list[str], list[bool]] = ("", [], [])

    # -- inputs from outside --------------------------------------------------

    def set_prior(self, prior: Mapping[str, float] | str | None) -> None:
        """Dispatch's belief over routes: a route id (likely), weights, or None (no idea).

        Applied to the hypotheses at once and to every later acquisition.
        """
        before = self._log_prior
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
        # Routes the prior leaves out keep a little weight: the evidence may want them.
        self._log_prior = (
            {r: math.log(max(self.prior.get(r, 0.0), 1e-3)) for r in self.index.routes.routes}
            if self.prior
            else {}
        )
        if self._hyps:
            # The new prior replaces the old one; the evidence of the fixes so far stays.
            for r in self._hyps:
                self._logw[r] += self._log_prior.get(r, 0.0) - before.get(r, 0.0)
            self._normalise()

    def _known(self, route: str) -> None:
        if route not in self.index.routes.routes:
            raise KeyError(f"unknown route {route!r}; known: {sorted(self.index.routes.routes)}")

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
            started = self._start(r, x, y, fix, course_ok)
            if started is not None:
                self._hyps[r] = started[0]
                self._logw[r] = self._log_prior.get(r, 0.0) + started[1]
        if not self._hyps:
            return False
        self._share()
        self.counters["acquired"] += 1
        self.verdict = Verdict.TRACKING
        self._speed = fix.speed or 0.0
        self._leaving = self._reversing = self._outliers = 0
        self._normalise()
        return True

    def _start(
        self, route: str, x: float, y: float, fix: Fix, course_ok: bool
    ) -> tuple[_Hypothesis, float] | None:
        """A fresh filter on ``route`` from one fix and the fix's log-likelihood under it,
        or None if the fix does not fit the route."""
        cfg = self.config
        proj = self.index.locate(route, x, y)
        if abs(proj.offset) > cfg.acquire_m:
            return None
        if (
            course_ok
            and heading_difference(fix.course or 0.0, proj.heading) > cfg.acquire_heading_deg
        ):
            return None  # crossing the route, or driving it the wrong way
        var = cfg.sigma_m**2
        h = _Hypothesis(s=proj.s, pss=4 * var, pxx=var, pyy=var, s_out=proj.s)
        gate = h.gate(proj, cfg.white_m**2)
        h.correct(*gate)
        e2, s22 = gate[1], gate[4]
        h.proj = proj
        h.s_out = h.s
        return h, -0.5 * (e2 * e2 / s22)

    def _reach(self, pss: float, pxx: float, pyy: float) -> float:
        """How far past s a filter's evaluation looks at the route (projection window,
        corner likelihood, course match): routes with the same vertices that far
        evolve identically."""
        cfg = self.config
        var = pss + pxx + pyy
        # max() written out (every fix, for every shared filter), in max()'s order.
        window = 4.0 * math.sqrt((0.0 if var < 0.0 else var) + self._k.r) + 10.0
        corner = cfg.corner_sigmas * math.sqrt(0.0 if pss < 0.0 else pss) + 5.0 + cfg.corner_m
        return corner if corner > window else window

    def _share(self) -> None:
        """Let routes whose filters are in the same state on the same vertices share
        one filter object (after acquisition and resync)."""
        self._members = None
        leaders: dict[tuple[object, ...], _Hypothesis] = {}
        for rid, h in self._hyps.items():
            hi = h.s + self._reach(h.pss, h.pxx, h.pyy)
            key: tuple[object, ...] = (self.index.twin(rid, hi), h.s, h.bx, h.by, h.pss)
            key += (h.psx, h.psy, h.pxx, h.pxy, h.pyy, h.s_out)
            self._hyps[rid] = leaders.setdefault(key, h)

    def _track(self, fix: Fix, x: float, y: float, dt: float, course_ok: bool) -> None:
        cfg = self.config
        sog = fix.speed
        travel = 0.5 * (self._speed + (sog if sog is not None else self._speed)) * dt
        phi = math.exp(-dt / cfg.tau_s)
        q_b = cfg.sigma_m**2 * (1.0 - phi * phi)
        q_s = (cfg.speed_sigma * dt) ** 2
        k = self._k
        r, outlier_ll, inlier_log_prior = k.r, k.outlier_ll, k.inlier_log_prior
        course = fix.course or 0.0
        # The course as a unit vector (east, north), once per fix for every comparison
        # with the routes' segments.
        rad = math.radians(course)
        cx, cy = math.sin(rad), math.cos(rad)
        # A vehicle turning back does not keep moving on in the filter. (Only over a
        # short interval: after a gap the route may have turned meanwhile.)
        check_back = course_ok and dt <= 2.0
        results: list[_Step] = []
        best_inlier = -math.inf
        for h, rids, until in self._groups(travel, q_s, q_b):
            g = self.index.geometry[rids[0]]
            along = travel
            if check_back:
                reach = cfg.corner_m + 2.0 * math.sqrt(0.0 if h.pss < 0.0 else h.pss)
                if g.agreement(cx, cy, h.s, reach) < -0.3:
                    along = 0.0
            h.predict(along, q_s, phi, q_b)
            ll, gate, proj = self._evaluate(h, g, x, y, r, course_ok, cx, cy)
            h.proj = proj
            h.innovation = gate[1]
            # How far the course is off the segment under the fix (0 without a course).
            off = heading_difference(course, proj.heading) if course_ok else 0.0
            results.append((h, g, rids, until, ll, gate, off))
            if ll + inlier_log_prior > best_inlier:
                best_inlier = ll + inlier_log_prior
        outlier = best_inlier < outlier_ll
        if outlier:
            # Nothing explains the fix: a multipath jump. The prediction stands.
            self.counters["outliers"] += 1
            self._outliers += 1
        else:
            self._outliers = 0
        logw = self._logw
        for h, g, rids, _, ll, gate, off in results:
            if not outlier:
                gain = cfg.evidence_weight * _logaddexp(ll + inlier_log_prior, outlier_ll)
                for rid in rids:
                    logw[rid] += gain
                # Heading away from the route, the offset is the driver's doing, not the
                # receiver's: learn nothing from it.
                if not (course_ok and off > cfg.leave_heading_deg):
                    h.correct(*gate)
            s = 0.0 if h.s < 0.0 else h.s
            h.s = g.length if g.length < s else s
            if h.s > h.s_out:
                h.s_out = h.s
        if sog is not None:
            self._speed = sog
        elif dt > 0 and results:
            self._speed = min(cfg.max_speed, max(0.0, travel / dt))
        self._normalise()
        if self._outliers >= cfg.resync_after:
            self._resync(fix, x, y, course_ok)
        self._judge(course_ok, course, cx, cy, outlier, results)

    def _groups(self, travel: float, q_s: float, q_b: float) -> list[_Group]:
        """Each filter with the routes sharing it and how far they share their vertices,
        split first where those routes' vertices part within the filter's reach after
        this step's prediction."""
        # Which routes share which filter changes only when _hyps does (acquisition,
        # resync, a split, pruning, a drop: each clears the cache), not from fix to fix.
        members = self._members
        if members is None:
            by_filter: dict[int, tuple[_Hypothesis, list[str]]] = {}
            for rid, h in self._hyps.items():
                entry = by_filter.get(id(h))
                if entry is None:
                    by_filter[id(h)] = (h, [rid])
                else:
                    entry[1].append(rid)
            members = self._members = [
                (h, rids, self.index.shared_until(rids)) for h, rids in by_filter.values()
            ]
        out: list[_Group] = []
        for h, rids, until in members:
            if len(rids) == 1:
                out.append((h, rids, until))
                continue
            hi = h.s + max(travel, 0.0) + self._reach(h.pss + q_s, h.pxx + q_b, h.pyy + q_b)
            if 0.0 < hi < until:
                out.append((h, rids, until))  # twin() would agree for all of them
                continue
            parts: dict[str, list[str]] = {}
            for rid in rids:
                parts.setdefault(self.index.twin(rid, hi), []).append(rid)
            for k, part in enumerate(parts.values()):
                filt = h if k == 0 else h.copy()
                for rid in part:
                    self._hyps[rid] = filt
                out.append((filt, part, self.index.shared_until(part)))
            # Rebuilt from _hyps next fix: its order of filters may differ from this one.
            self._members = None
        return out

    def _evaluate(
        self,
        h: _Hypothesis,
        g: RouteGeometry,
        x: float,
        y: float,
        r: float,
        course_ok: bool,
        cx: float,
        cy: float,
    ) -> tuple[float, tuple[float, ...], Projection]:
        """Log-likelihood of the fix under one predicted hypothesis, the Kalman gate
        quantities for its update, and the projection they refer to. (cx, cy): the
        course as a unit vector."""
        cfg = self.config
        sd = math.sqrt(1e-6 if h.pss < 1e-6 else h.pss)
        reach = cfg.corner_sigmas * sd + 5.0
        if g.turn_between(h.s - reach, h.s + reach) > cfg.corner_turn_deg:
            # A corner within the along-track uncertainty: one linearisation would
            # put the engine on one side of it. Weigh positions across it instead.
            ll, s_best = _corner_likelihood(h, g, x, y, r, cfg.corner_sigmas)
            step = cfg.corner_sigmas * sd / 4.0 + 1.0
            proj = g.project_near(x - h.bx, y - h.by, s_best - step, s_best + step)
            gate = h.gate(proj, r)
        else:
            window = 4.0 * math.sqrt(h.pss + h.pxx + h.pyy + r) + 10.0
            # Project the fix with the estimated receiver error taken out.
            proj = g.project_near(x - h.bx, y - h.by, h.s - window, h.s + window)
            gate = h.gate(proj, r)
            e1, e2, s11, s12, s22 = gate[:5]
            det = s11 * s22 - s12 * s12
            maha = (s22 * e1 * e1 - 2 * s12 * e1 * e2 + s11 * e2 * e2) / det
            ll = -0.5 * maha - _LOG_2PI - 0.5 * math.log(det)
        if course_ok:
            term = cfg.heading_kappa * (g.agreement(cx, cy, proj.s, cfg.corner_m) - 1.0)
            # Capped: a drawn route's heading is not a surveyed one.
            ll += -cfg.heading_cap if term < -cfg.heading_cap else term
        return ll, gate, proj

    def _resync(self, fix: Fix, x: float, y: float, course_ok: bool) -> None:
        """Every fix an outlier for a while: the track is off, not the fixes. Start the
        filters afresh from this fix, keeping what the weights have learned.

        The reported distance does not run backwards (only a U-turn verdict does
        that): a track that was ahead of the vehicle holds its distance until the
        vehicle has caught up, so ETAs err on the early side meanwhile.
        """
        self.counters["resync"] += 1
        self._outliers = 0
        self._members = None
        for rid in list(self._hyps):
            old = self._hyps[rid]
            fresh = self._start(rid, x, y, fix, course_ok)
            if fresh is None:
                del self._hyps[rid]
                del self._logw[rid]
            else:
                fresh[0].s_out = max(fresh[0].s_out, old.s_out)
                self._hyps[rid] = fresh[0]
                self._logw[rid] += fresh[1]
        if self._hyps:
            self._share()
            self._normalise()
        else:
            self._drop(Verdict.LEFT_ROUTE)

    def _judge(
        self,
        course_ok: bool,
        course: float,
        cx: float,
        cy: float,
        outlier: bool,
        results: list[_Step],
    ) -> None:
        """Left the route or turned around? Judged by the hypotheses that carry the weight.

        The course over ground (Doppler) is compared with the route around the
        filter's s, not around the fix's projection: a multipath fix projects
        anywhere, the course does not jump with it. A hypothesis with little weight
        (a branch just past a fork) does not veto a verdict. (cx, cy): the course as
        a unit vector.
        """
        cfg, k = self.config, self._k
        # Whether the vehicle left the routes or turned is the fixes' to say: a prior
        # from dispatch naming another branch must not outvote them at the fork.
        probs = self._evidence() if self.prior else self._probs
        reversing_w = drifting_w = along_w = flipped_w = away_w = 0.0
        along_any = False  # some route, however unlikely, runs the way the course does
        # With the group cache intact nothing was pruned or resynced since _groups.
        pruned = self._members is None
        for h, _, members, until, _, _, off in results:
            rids = [r for r in members if r in probs] if pruned else members
            if not rids:
                continue  # pruned
            if course_ok:
                wide_r = cfg.corner_m + 2.0 * math.sqrt(0.0 if h.pss < 0.0 else h.pss)
                hi = h.s + wide_r
                # The routes sharing this filter share their vertices up to the filter's
                # reach before the correction; judge each alone if that has moved on past.
                parts = (
                    [rids]
                    if len(rids) == 1
                    or 0.0 < hi < until  # see RouteIndex.shared_until
                    or self.index.twin(rids[0], hi) == self.index.twin(rids[-1], hi)
                    else [[r] for r in rids]
                )
                # Against the segment under the fix itself: a U-turn just behind a
                # corner the filter has already rounded.
                flipped = off >= cfg.uturn_flip_deg
                drifts = abs(h.innovation) >= cfg.leave_offset_m
                for part in parts:
                    g = self.index.geometry[part[0]]
                    w = sum([probs[r] for r in part])
                    near_c, wide_c = g.agreements(cx, cy, h.s, cfg.corner_m, wide_r)
                    if near_c <= k.cos_uturn:  # angle >= uturn_heading_deg
                        reversing_w += w
                    if near_c >= k.cos_along:  # angle <= along_heading_deg
                        along_w += w
                        along_any = True
                    if flipped:
                        flipped_w += w
                    if wide_c <= k.cos_leave:  # angle >= leave_heading_deg
                        away_w += w
                        if drifts:
                            drifting_w += w
            elif outlier and abs(h.innovation) >= 3 * cfg.sigma_m:
                # Without a course, only a sustained drift (not a burst) counts.
                drifting_w += sum([probs[r] for r in rids])
        # The vehicle's own course flipping against the last course it drove along the
        # route: a U-turn whatever a stray hypothesis past a fork may say.
        # (Near a corner some segment is always within 120 degrees of any course, so
        # the flip is what shows a U-turn there; it needs the route not to run that
        # way here for most of the probability.)
        flipped = (
            course_ok
            and self._aligned_course is not None
            and heading_difference(course, self._aligned_course) >= cfg.uturn_flip_deg
            and along_w < 1.0 - cfg.verdict_weight
        )
        reversing = course_ok and (
            reversing_w >= cfg.verdict_weight or flipped or flipped_w >= cfg.verdict_weight
        )
        if course_ok and along_w >= cfg.verdict_weight:
            self._aligned_course = course
        drifting = drifting_w >= cfg.verdict_weight
        # Leaving: fixes in a row heading away from the route (with a course) or
        # drifting off it (without), the last of them already clear of the route.
        # The turn into a side street shows in the course a fix before the position
        # is clear of the route: that fix counts, unless some route runs that way (the
        # engine may be taking a branch the weights have not yet moved to). (A turn
        # sharper than 120 degrees reads as reversing too; either verdict ends the track.)
        away = course_ok and away_w >= cfg.verdict_weight and not along_any
        self._reversing = self._reversing + 1 if reversing else 0
        self._leaving = self._leaving + 1 if away or drifting else 0
        if self._reversing >= cfg.uturn_fixes:
            self._drop(Verdict.U_TURN)
        elif drifting and self._leaving >= cfg.leave_fixes + (0 if course_ok else 2):
            self._drop(Verdict.LEFT_ROUTE)

    def _evidence(self) -> dict[str, float]:
        """The routes' probabilities with the prior taken out: what the fixes alone say."""
        log_prior = self._log_prior
        weights = {r: math.exp(v - log_prior[r]) for r, v in self._logw.items()}
        total = sum(weights.values())
        return {r: w / total for r, w in weights.items()}

    def _drop(self, verdict: Verdict) -> None:
        self._aligned_course = None
        self._probs = {}
        self.counters[verdict.value] += 1
        self.verdict = verdict
        self._hyps.clear()
        self._members = None
        self._logw.clear()
        self._committed = None
        self._leaving = self._reversing = 0

    def _normalise(self) -> None:
        """Weights to probabilities (kept for this fix), dropping the negligible."""
        logw = self._logw
        if len(logw) == 1:  # one route left: past every fork
            (r,) = logw
            logw[r] = 0.0
            self._probs = {r: 1.0}
            return
        # Lists and zip rather than comprehensions over dicts: this runs every fix.
        rids = list(logw)
        top = max(logw.values())
        shifted = [v - top for v in logw.values()]
        self._logw = logw = dict(zip(rids, shifted, strict=True))
        weights = list(map(math.exp, shifted))
        total = sum(weights)
        probs = [w / total for w in weights]
        floor = self.config.prune_probability
        if min(probs) < floor:
            self._members = None
            for r, p in zip(rids, probs, strict=True):
                if p < floor:
                    del self._hyps[r]
                    del logw[r]
            rids = [r for r, p in zip(rids, probs, strict=True) if p >= floor]
            probs = [p for p in probs if p >= floor]
        rest = sum(probs)
        self._probs = dict(zip(rids, [p / rest for p in probs], strict=True))

    # -- output ---------------------------------------------------------------

    def probabilities(self) -> dict[str, float]:
        """Route id -> probability after the last fix (empty when off the routes)."""
        return dict(self._probs)

    def _position(self, fix: Fix) -> RoutePosition:
        cfg = self.config
        probs = self._probs
        best = max(probs, key=probs.__getitem__)
        if self._committed not in probs or probs[self._committed] < cfg.keep_probability:
            # (A multipath burst at a fork leaves nothing but the prior to go on.)
            ready = (
                probs[best] >= cfg.commit_probability
                and self._past_fork(best, probs)
                and (not self.prior or self._evidence()[best] >= cfg.prior_commit_evidence)
            )
            # The same route on top for commit_fixes fixes in a row: one or two fixes
            # that the along-track error places past a junction do not commit.
            self._leader = (
                (best, self._leader[1] + 1)
                if ready and self._leader[0] == best
                else ((best, 1) if ready else ("", 0))
            )
            self._committed = best if self._leader[1] >= cfg.commit_fixes else None
        route = self._committed or best
        h = self._hyps[route]
        # Which of the route's signals every compatible route passes: looked up again
        # only when the route or the set of compatible routes changes, rarely.
        compatible = [r for r, p in probs.items() if p >= 1e-3]
        if route != self._shared_for[0] or compatible != self._shared_for[1]:
            common = self.index.network.common_signals(compatible)
            shared = [
                (sig.intersection, sig.approach) in common for sig in self.index.signals[route]
            ]
            self._shared_for = (route, compatible, shared)
        shared = self._shared_for[2]
        s = h.s_out
        first = self.index.first_ahead(route, s)
        ahead = self.index.signals[route][first:]
        bands = self.index.speed[route].etas(
            s,
            self._speed,
            self.index.stop_lines[route][first:],
            math.sqrt(0.0 if h.pss < 0.0 else h.pss),
            self.index.stop_times[route][first:],
        )
        # Positional arguments in field order (keywords cost a third more per object,
        # and there are a few per fix); test_position_fields_in_the_order_built guards it.
        # SignalEta: intersection, controller, approach, distance_m, eta_s, early_s,
        # late_s, shared.
        etas = tuple(
            [
                SignalEta(
                    sig.intersection,
                    sig.controller,
                    sig.approach,
                    sig.stop_line_m - s,
                    eta,
                    early,
                    late,
                    flag,
                )
                for sig, (early, eta, late), flag in zip(ahead, bands, shared[first:], strict=True)
            ]
        )
        # RoutePosition: vehicle, time, compatible, committed, route, distance_m, speed,
        # offset_m, confidence, on_route, etas.
        return RoutePosition(
            self.vehicle,
            fix.time,
            probs,
            self._committed,
            route,
            s,
            self._speed,
            h.proj.offset if h.proj else 0.0,
            probs[route],
            True,
            etas,
        )

    def _past_fork(self, route: str, probs: Mapping[str, float]) -> bool:
        """Has the vehicle surely left the stretch ``route`` shares with its rivals?

        Weights can lean towards one branch before the fork when the receiver's
        along-track error puts the fixes past the junction; the geometry decides
        only once the vehicle is two sigmas of s beyond the fork.
        """
        h = self._hyps[route]
        behind = h.s - self.config.fork_sigmas * math.sqrt(max(h.pss, 0.0))
        shared = self.index.network.routes_sharing(route, max(behind, 0.0))
        return not any(r in shared for r, p in probs.items() if r != route and p >= 1e-3)

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


def _corner_likelihood(
    h: _Hypothesis, g: RouteGeometry, x: float, y: float, r: float, sigmas: float
) -> tuple[float, float]:
    """Log-likelihood of the fix with s integrated over its uncertainty, and the best s.

    Nine positions across +-``sigmas`` sigma of s; for each, the receiver error
    conditioned on that s (s and the along-track error are correlated), and the
    fix's 2-D density around the route point plus that error.
    """
    sd = math.sqrt(max(h.pss, 1e-6))
    # Error given s: mean b + P_bs / p_ss (s_k - s), covariance P_bb - P_bs P_sb / p_ss, plus R.
    gx, gy = h.psx / h.pss if h.pss > 0 else 0.0, h.psy / h.pss if h.pss > 0 else 0.0
    cxx = h.pxx - h.psx * gx + r
    cxy = h.pxy - h.psx * gy
    cyy = h.pyy - h.psy * gy + r
    det = cxx * cyy - cxy * cxy
    norm = -_LOG_2PI - 0.5 * math.log(det)
    terms = []
    best = (-math.inf, h.s)
    for k in range(-4, 5):
        z = sigmas * k / 4.0
        s_k = min(max(h.s + z * sd, 0.0), g.length)
        px, py = g.point_at(s_k)
        dx = x - px - (h.bx + gx * (s_k - h.s))
        dy = y - py - (h.by + gy * (s_k - h.s))
        maha = (cyy * dx * dx - 2 * cxy * dx * dy + cxx * dy * dy) / det
        term = -0.5 * z * z - 0.5 * maha
        terms.append(term)
        if term > best[0]:
            best = (term, s_k)
    top = max(terms)
    weights = sum(math.exp(-0.5 * (sigmas * k / 4.0) ** 2) for k in range(-4, 5))
    ll = top + math.log(sum(math.exp(v - top) for v in terms)) - math.log(weights) + norm
    return ll, best[1]


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))
