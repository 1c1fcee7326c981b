"""How well the matcher identifies the route, places the engine and predicts arrival.

Engine runs on generated route sets (sim/synthetic.py: a station's tree of
routes with the branch angles of real streets) are seen through the GNSS error
model (sim/gnss.py) at 1 Hz and fed to the matcher fix by fix. Measured:

- **commit distance** per branch point: where the matcher's probability mass on
  the other branch first falls below 1 - commit probability, measured from the
  point past the fork where the branches are 10 m apart (before it no receiver
  can tell them apart). A *wrong commit* is a run in which the matcher
  committed to any route but the engine's (reported per run); a *wrong
  decision* is a branch point where the mass on the engine's own branch fell
  that low first (reported per branch point);
- **position error** along the route, on fixes matched to a route that runs
  where the engine is (the engine's own, or one sharing that stretch);
- **ETA error** of the prediction made 30 s before the engine reaches each
  stop line;
- **U-turn detection**: fixes from the moment the engine drives back until the
  matcher reports it off the route.

Engine kinematics: the route's speed profile (routes/speed.py) from a
standstill, which is also the simulator's engine model, integrated at 10 Hz.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from preemption.kernel.model import Fix
from routes.geojson import RouteSet, load_routes_from_document
from routes.index import RouteIndex
from routes.matcher import MatcherConfig, RouteMatcher
from routes.speed import SpeedProfile
from sim.gnss import GnssErrorConfig, GnssErrorModel, to_fix
from sim.synthetic import SyntheticStation, generate_station

T0 = 1_764_320_400.0  # 2025-11-28T09:00:00Z: fixes carry real-looking UTC times
# The bound on noticing that the engine left its route: within 3 fixes, or
# before it is 20 m away from the route.
LEAVE_FIXES = 3
LEAVE_M = 20.0


@dataclass(frozen=True, slots=True)
class TruePoint:
    t: float  # seconds since departure
    s: float
    v: float


def drive(profile: SpeedProfile, s_end: float | None = None, dt: float = 0.1) -> list[TruePoint]:
    """The engine from a standstill along its speed profile, sampled at 1 Hz."""
    a = profile.profile.accel
    end = profile.s[-1] if s_end is None else s_end
    s = v = t = 0.0
    out = [TruePoint(0.0, 0.0, 0.0)]
    next_sample = 1.0
    while s < end:
        v_new = min(v + a * dt, profile.speed_at(s))
        s += 0.5 * (v + v_new) * dt
        v = v_new
        t += dt
        if t + 1e-9 >= next_sample:
            out.append(TruePoint(next_sample, min(s, float(end)), v))
            next_sample += 1.0
    return out


@dataclass
class Results:
    commits: list[tuple[str, float]] = field(default_factory=list)  # (angle class, distance)
    undecided: list[str] = field(default_factory=list)  # branch points never decided
    wrong: int = 0  # runs in which the matcher committed to a route not the engine's
    wrong_decisions: int = 0  # branch points where the engine's own branch lost
    runs: int = 0
    false_off_runs: int = 0  # runs in which the matcher said off-route while the engine was on it
    decisions: int = 0
    pos_err: dict[float, list[float]] = field(default_factory=lambda: defaultdict(list))
    eta30: list[float] = field(default_factory=list)
    uturn_fixes: list[int] = field(default_factory=list)
    # Turning off into a side street, at the verdict: fixes since the turn began and
    # the engine's true distance from the route
    leave: list[tuple[int, float]] = field(default_factory=list)
    route_commit: list[float] = field(default_factory=list)  # committed to the route, after
    # the last fork's 10 m point (the planner may then ask for the route's own signals)

    def summary(self) -> dict[str, object]:
        dists = [d for _, d in self.commits]
        n = self.decisions or 1
        within = sum(1 for d in dists if d <= 50.0)
        out: dict[str, object] = {
            "runs_branch_points": self.decisions,
            "commit_within_50m_pct": round(100.0 * within / n, 2),
            "median_commit_m": round(statistics.median(dists), 1) if dists else None,
            "wrong_commit_pct": round(100.0 * self.wrong / max(self.runs, 1), 3),
            "wrong_decision_pct": round(100.0 * self.wrong_decisions / n, 3),
            "identify_runs": self.runs,
            "false_off_route_pct": round(100.0 * self.false_off_runs / max(self.runs, 1), 3),
            "undecided": len(self.undecided),
        }
        by_class: dict[str, list[float]] = defaultdict(list)
        for cls, d in self.commits:
            by_class[cls].append(d)
        for cls in self.undecided:
            by_class[cls].append(math.inf)
        out["by_angle_class"] = {
            cls: {
                "n": len(ds),
                "commit_within_50m_pct": round(100.0 * sum(d <= 50 for d in ds) / len(ds), 2),
                "median_commit_m": round(statistics.median(ds), 1),
            }
            for cls, ds in sorted(by_class.items())
        }
        for sigma, errs in sorted(self.pos_err.items()):
            out[f"pos_err_p95_m_sigma{sigma:g}"] = round(float(np.percentile(errs, 95)), 2)
        if self.eta30:
            e = np.abs(np.asarray(self.eta30))
            out["eta30_median_abs_s"] = round(float(np.median(e)), 2)
            out["eta30_p90_abs_s"] = round(float(np.percentile(e, 90)), 2)
        if self.route_commit:
            rc = np.asarray(self.route_commit)
            out["route_commit_median_m"] = round(float(np.median(rc)), 1)
            out["route_commit_p95_m"] = round(float(np.percentile(rc, 95)), 1)
        if self.uturn_fixes:
            out["uturn_detect_fixes_max"] = max(self.uturn_fixes)
            out["uturn_runs"] = len(self.uturn_fixes)
        if self.leave:
            fixes = np.asarray([f for f, _ in self.leave], dtype=float)
            off = np.asarray([m for _, m in self.leave])
            out["leave_detect_fixes_median"] = round(float(np.median(fixes)), 1)
            out["leave_detect_fixes_max"] = int(fixes.max())
            out["leave_detect_off_m_median"] = round(float(np.median(off)), 1)
            out["leave_detect_off_m_p95"] = round(float(np.percentile(off, 95)), 1)
            met = sum(1 for f, m in self.leave if f <= LEAVE_FIXES or m <= LEAVE_M)
            out["leave_within_3_fixes_or_20m_pct"] = round(100.0 * met / len(self.leave), 2)
            out["leave_runs"] = len(self.leave)
        return out


class Station:
    """A generated station with its routes loaded as the daemon would load them."""

    def __init__(self, synthetic: SyntheticStation) -> None:
        self.synthetic = synthetic
        self.routes: RouteSet = load_routes_from_document(synthetic.geojson, epsg=synthetic.epsg)
        self.index = RouteIndex(self.routes)


def stations(seed: int, count: int, routes_per_station: int = 6) -> Iterator[Station]:
    for k in range(count):
        yield Station(generate_station(seed * 1000 + k, routes_per_station))


def run_identify(
    station: Station,
    route: str,
    gnss: GnssErrorConfig,
    seed: int,
    results: Results,
    matcher_config: MatcherConfig | None = None,
    prior: str | None = None,
) -> None:
    """One engine run on ``route``: branch decisions, position and ETA errors."""
    mr = station.routes[route]
    profile = station.index.speed[route]
    truth = drive(profile)
    model = GnssErrorModel(gnss, seed=seed)
    matcher = RouteMatcher("engine", station.index, matcher_config)
    if prior is not None:
        matcher.set_prior(prior)
    branch_points = station.synthetic.routes[route].branch_points
    decided: dict[str, float] = {}
    wrong = False
    arrivals = {sig.intersection: _arrival(truth, sig.stop_line_m) for sig in mr.signals}
    eta_done: set[str] = set()
    acquired = false_off = False
    committed_at: float | None = None
    for tp in truth:
        p = mr.at(tp.s)
        obs = model.observe(tp.t, p.x, p.y, tp.v, p.heading_deg)
        if obs is None:
            continue
        pos = matcher.update(to_fix(obs, station.routes.projector, "engine", time_offset_s=T0))
        if pos.committed is not None and pos.committed != route:
            wrong = True
        if committed_at is None and pos.committed == route:
            committed_at = tp.s
        acquired = acquired or pos.on_route
        false_off = false_off or (acquired and not pos.on_route)
        for bp in branch_points:
            if bp.fork in decided or tp.s < bp.s_fork_m:
                continue
            other = sum(pos.compatible.get(r, 0.0) for r in bp.other_routes)
            own = 1.0 - other if pos.compatible else 0.0
            threshold = 1.0 - matcher.config.commit_probability
            if pos.on_route and other <= threshold:
                decided[bp.fork] = tp.s - bp.s_apart_m
            elif pos.on_route and own <= threshold and prior is None:
                # With a prior naming another route, the prior alone holds the own
                # branch this low at the fork, before any evidence: only whether and
                # where the evidence overturns it counts (undecided if it never does).
                decided[bp.fork] = math.nan
                results.wrong_decisions += 1
        if pos.on_route and pos.route is not None and _runs_here(station, pos.route, route, tp.s):
            results.pos_err[gnss.sigma_m].append(abs(pos.distance_m - tp.s))
        for e in pos.etas:
            arr = arrivals.get(e.intersection)
            if arr is None or e.intersection in eta_done or pos.route != route:
                continue
            if 0.0 <= arr - tp.t <= 30.0:
                eta_done.add(e.intersection)
                results.eta30.append(e.eta_s - (arr - tp.t))
    for bp in branch_points:
        results.decisions += 1
        d = decided.get(bp.fork)
        if d is None:
            results.undecided.append(bp.angle_class.value)
        elif not math.isnan(d):
            results.commits.append((bp.angle_class.value, d))
    results.runs += 1
    results.false_off_runs += false_off
    if branch_points and committed_at is not None:
        results.route_commit.append(committed_at - branch_points[-1].s_apart_m)
    if wrong:
        results.wrong += 1


def run_uturn(
    station: Station, route: str, gnss: GnssErrorConfig, seed: int, results: Results
) -> None:
    """Drive out, stop, turn around and drive back: fixes until the matcher says so."""
    mr = station.routes[route]
    profile = station.index.speed[route]
    rng = np.random.default_rng(seed)
    s_turn = float(rng.uniform(300.0, max(400.0, mr.length - 200.0)))
    out = drive(profile, s_turn)
    model = GnssErrorModel(gnss, seed=seed)
    matcher = RouteMatcher("engine", station.index)
    t = 0.0
    for tp in out:
        p = mr.at(tp.s)
        obs = model.observe(tp.t, p.x, p.y, tp.v, p.heading_deg)
        if obs is not None:
            matcher.update(to_fix(obs, station.routes.projector, "engine", time_offset_s=T0))
        t = tp.t
    # Brake to a stop, turn (a few seconds at walking pace), drive back at 8 m/s.
    s = out[-1].s
    v = out[-1].v
    while v > 0.5:
        t += 1.0
        v = max(0.0, v - 2.5)
        s += v
        p = mr.at(s)
        obs = model.observe(t, p.x, p.y, v, p.heading_deg)
        if obs is not None:
            matcher.update(to_fix(obs, station.routes.projector, "engine", time_offset_s=T0))
    fixes_after = 0
    for k in range(1, 40):
        t += 1.0
        v = min(8.0, 2.0 * k)
        s = max(0.0, s - v)
        p = mr.at(s)
        obs = model.observe(t, p.x, p.y, v, (p.heading_deg + 180.0) % 360.0)
        if obs is None:
            continue
        fixes_after += 1
        pos = matcher.update(to_fix(obs, station.routes.projector, "engine", time_offset_s=T0))
        if not pos.on_route:
            results.uturn_fixes.append(fixes_after)
            return
    results.uturn_fixes.append(10**6)  # never detected


def run_leave(
    station: Station,
    route: str,
    gnss: GnssErrorConfig,
    seed: int,
    results: Results,
    matcher_config: MatcherConfig | None = None,
) -> None:
    """Turn off the route into a side street: how soon the matcher says so.

    The engine drives its route to a point away from the route's forks, slows to
    6 m/s over the last 40 m, turns through 60-120 degrees left or right on a 12 m
    radius and drives the straight side street, speeding up to 12 m/s. Recorded at
    the verdict: the fixes the receiver delivered since the turn began, and how far
    the engine truly is from the route.
    """
    mr = station.routes[route]
    rng = np.random.default_rng(seed)
    forks = [bp.s_fork_m for bp in station.synthetic.routes[route].branch_points]
    s_leave = 0.0
    for _ in range(100):
        s_leave = float(rng.uniform(300.0, max(400.0, mr.length - 200.0)))
        if all(abs(s_leave - f) > 100.0 for f in forks):
            break
    turn = math.radians(float(rng.uniform(60.0, 120.0)) * (1 if rng.random() < 0.5 else -1))
    model = GnssErrorModel(gnss, seed=seed)
    matcher = RouteMatcher("engine", station.index, matcher_config)
    projector = station.routes.projector

    def see(t: float, x: float, y: float, v: float, heading: float) -> bool | None:
        obs = model.observe(t, x, y, v, heading % 360.0)
        if obs is None:
            return None
        return matcher.update(to_fix(obs, projector, "engine", time_offset_s=T0)).on_route

    t = 0.0
    truth = drive(station.index.speed[route], s_leave - 40.0)
    for tp in truth:
        p = mr.at(tp.s)
        see(tp.t, p.x, p.y, tp.v, p.heading_deg)
        t = tp.t
    # Slow to 6 m/s by the turn (10 Hz steps, a fix each second).
    s, v = truth[-1].s, truth[-1].v
    brake = max((v * v - 36.0) / (2.0 * max(s_leave - s, 1.0)), 0.0)
    k = 0
    while s < s_leave:
        v = max(6.0, v - brake * 0.1)
        s += v * 0.1
        k += 1
        if k % 10 == 0:
            t += 1.0
            p = mr.at(min(s, s_leave))
            see(t, p.x, p.y, v, p.heading_deg)
    # The turn: an arc of radius 12 m, then the straight side street.
    start = mr.at(s_leave)
    h0 = math.radians(start.heading_deg)
    radius = 12.0
    arc = abs(turn) * radius
    side = 1.0 if turn > 0 else -1.0  # right (clockwise) or left
    d = 0.0
    fixes = 0
    for k in range(1, 200):
        v = min(12.0, v + 0.15)  # 1.5 m/s2
        d += v * 0.1
        if k % 10:
            continue
        t += 1.0
        if d <= arc:
            a = d / radius  # angle turned so far
            heading = h0 + side * a
            # Centre of the arc to the right (side 1) or left of the start heading.
            cx = start.x + side * radius * math.cos(h0)
            cy = start.y - side * radius * math.sin(h0)
            x = cx - side * radius * math.cos(heading)
            y = cy + side * radius * math.sin(heading)
        else:
            heading = h0 + turn
            end_x = start.x + side * radius * (math.cos(h0) - math.cos(heading))
            end_y = start.y - side * radius * (math.sin(h0) - math.sin(heading))
            x = end_x + (d - arc) * math.sin(heading)
            y = end_y + (d - arc) * math.cos(heading)
        on = see(t, x, y, v, math.degrees(heading))
        if on is None:
            continue
        fixes += 1
        if not on:
            results.leave.append((fixes, abs(station.index.locate(route, x, y).offset)))
            return
    results.leave.append((10**6, math.inf))  # never noticed


def _arrival(truth: Sequence[TruePoint], s: float) -> float | None:
    for a, b in itertools.pairwise(truth):
        if a.s <= s < b.s:
            return a.t + (s - a.s) / max(b.s - a.s, 1e-9) * (b.t - a.t)
    return None


def _runs_here(station: Station, matched: str, true_route: str, s: float) -> bool:
    """Does ``matched`` run where the engine is (its own route or a shared stretch)?"""
    return matched == true_route or matched in station.index.network.routes_sharing(true_route, s)


def fix_stream(station: Station, route: str, gnss: GnssErrorConfig, seed: int) -> list[Fix]:
    """The fixes of one run (for throughput benchmarks)."""
    mr = station.routes[route]
    model = GnssErrorModel(gnss, seed=seed)
    out = []
    for tp in drive(station.index.speed[route]):
        p = mr.at(tp.s)
        obs = model.observe(tp.t, p.x, p.y, tp.v, p.heading_deg)
        if obs is not None:
            out.append(to_fix(obs, station.routes.projector, "engine", time_offset_s=T0))
    return out
