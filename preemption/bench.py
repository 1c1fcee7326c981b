"""Benchmarks with machine-readable output (`make bench`, `preemption bench ... --json`).

The machines are shared and noisy, so every figure comes with a baseline run in
the same process (hashing the same NMEA bytes) and as a ratio against it; the
ratio moves far less between runs than the absolute rate.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gps.nmea import NmeaDecoder
from preemption.clock import SimClock
from preemption.config import PlannerConfig
from preemption.planner import Planner
from routes.geojson import load_routes
from routes.matcher import RouteMatcher
from sim.nmea_out import epoch_sentences

DEMO_ROUTES = Path(__file__).resolve().parent.parent / "config/scenarios/demo/routes.geojson"
VEHICLE = "BENCH-1"


def _track(n_fixes: int) -> list[bytes]:
    """NMEA epochs of an engine driving R1 of the demo corridor back and forth at 13 m/s."""
    routes = load_routes(DEMO_ROUTES)
    r1 = routes["R1"]
    out = []
    t0 = 1_764_320_400.0
    s = 0.0
    direction = 1.0
    for k in range(n_fixes):
        p = r1.at(s)
        lon, lat = routes.projector.to_wgs84(p.x, p.y)
        course = p.heading_deg if direction > 0 else (p.heading_deg + 180.0) % 360
        lines = epoch_sentences(t0 + k, lat, lon, 13.0, course)
        out.append(("\r\n".join(lines) + "\r\n").encode("ascii"))
        s += 13.0 * direction
        if not 0.0 <= s <= r1.length:
            direction = -direction
            s = min(max(s, 0.0), r1.length)
    return out


def _baseline(epochs: list[bytes]) -> float:
    """Seconds to hash the same bytes: the machine's speed right now."""
    t = time.perf_counter()
    for e in epochs:
        hashlib.sha256(e).digest()
    return time.perf_counter() - t


def bench_pipeline(n_fixes: int = 5000) -> dict[str, Any]:
    """NMEA bytes -> Fix -> RoutePosition with ETAs -> planner commands, one fix at a time."""
    epochs = _track(n_fixes)
    routes = load_routes(DEMO_ROUTES)
    clock = SimClock()
    decoder = NmeaDecoder(vehicle=VEHICLE, source="bench")
    matcher = RouteMatcher(VEHICLE, routes)
    planner = Planner([mr.route for mr in routes], PlannerConfig(), clock, {VEHICLE: "fire"})
    planner.set_emergency(VEHICLE, True)
    lat: list[float] = []
    fixes = 0
    started = time.perf_counter()
    for e in epochs:
        t = time.perf_counter()
        for fix in decoder.feed(e):
            planner.on_position(matcher.update(fix))
            fixes += 1
        planner.tick()
        lat.append(time.perf_counter() - t)
        clock.advance(1.0)
    elapsed = time.perf_counter() - started
    base = _baseline(epochs)
    q = statistics.quantiles(lat, n=100)
    return {
        "fixes": fixes,
        "fixes_per_s": round(fixes / elapsed, 1),
        "p50_ms": round(q[49] * 1e3, 4),
        "p99_ms": round(q[98] * 1e3, 4),
        "baseline_sha256_epochs_per_s": round(len(epochs) / base, 1),
        "ratio_to_baseline": round(elapsed / base, 2),
    }


def bench_demo() -> dict[str, Any]:
    """The demo scenario end to end: simulated seconds per wall second."""
    from preemption.demo import BUNDLED_SCENARIO, run_demo

    t = time.perf_counter()
    report = run_demo(BUNDLED_SCENARIO)
    wall = time.perf_counter() - t
    simulated = report.travel_time_s + report.baseline_travel_time_s
    return {"wall_s": round(wall, 3), "realtime_factor": round(simulated / wall, 1)}


def bench_identify(n_stations: int = 12, seeds: int = 4) -> dict[str, Any]:
    """Route identification, position and ETA accuracy over seeded runs (sim/identify.py).

    Generated stations of 6 routes with real-street branch angles; GNSS at 1 Hz,
    sigma 10 m Gauss-Markov (tau 30 s), 3 % multipath bursts, dropouts. Position
    error also at sigma 5 m and 15 m.
    """
    from sim.gnss import GnssErrorConfig
    from sim.identify import Results, run_identify, run_uturn, stations

    res = Results()
    other = Results()  # position error at sigma 5 and 15 m: not part of the identification
    started = time.perf_counter()
    runs = 0
    for st in stations(7, n_stations):
        for k, rid in enumerate(st.routes.routes):
            for seed in range(seeds):
                run_seed = 1000 * k + seed
                run_identify(st, rid, GnssErrorConfig(sigma_m=10.0), run_seed, res)
                run_identify(st, rid, GnssErrorConfig(sigma_m=5.0), run_seed, other)
                run_identify(st, rid, GnssErrorConfig(sigma_m=15.0), run_seed, other)
                run_uturn(st, rid, GnssErrorConfig(sigma_m=10.0), run_seed, res)
                runs += 1
    res.pos_err.update(other.pos_err)
    summary = res.summary()
    summary["runs"] = runs
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    return summary


BENCHES: dict[str, Callable[[], dict[str, Any]]] = {
    "pipeline": bench_pipeline,
    "identify": bench_identify,
    "demo": bench_demo,
}


def run(name: str) -> dict[str, Any]:
    if name == "all":
        return {n: f() for n, f in BENCHES.items()}
    return BENCHES[name]()
