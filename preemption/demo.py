"""The demo job: the whole path, end to end, in simulated time.

The simulated engine's receiver writes NMEA sentences; the gps decoder turns
them into fixes; the daemon matches them against the routes, plans, and sends
requests through the adapter named in the deployment file to the simulated
controllers; the controllers run their pre-emption sequence. The same scenario
without pre-emption is the baseline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gps.nmea import NmeaDecoder
from preemption.clock import SimClock
from preemption.daemon import Daemon
from preemption.model import CommandKind, Fix
from preemption.run import build
from routes.geojson import load_routes
from signal_adapters import registry
from sim.controller import green_interval_at
from sim.scenario import Scenario, load_scenario
from sim.world import Corridor

BUNDLED_SCENARIO = Path(__file__).resolve().parent.parent / "config/scenarios/demo/scenario.toml"
END_FIXES = 3  # epochs still reported after the engine reached the end of its route


@dataclass(frozen=True, slots=True)
class SignalResult:
    """One signal on the engine's run; times are seconds after departure."""

    intersection: str
    request_s: float | None
    eta_at_request_s: float | None
    green_onset_s: float | None  # start of the green the engine crossed on
    arrival_s: float
    release_s: float | None
    aspect_at_arrival: str
    baseline_arrival_s: float
    baseline_aspect: str


@dataclass(frozen=True)
class DemoReport:
    scenario: str
    vehicle: str
    route: str
    signals: list[SignalResult]
    travel_time_s: float
    baseline_travel_time_s: float
    baseline_stops: int
    stops: int
    counters: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "vehicle": self.vehicle,
            "route": self.route,
            "signals": [{k: _r(v) for k, v in asdict(s).items()} for s in self.signals],
            "travel_time_s": _r(self.travel_time_s),
            "baseline_travel_time_s": _r(self.baseline_travel_time_s),
            "stops": self.stops,
            "baseline_stops": self.baseline_stops,
        }

    def lines(self) -> list[str]:
        out = [f"{self.scenario}: {self.vehicle} on route {self.route}"]
        for s in self.signals:
            out.append(
                f"  {s.intersection:<10} request {_t(s.request_s)} (ETA {_t(s.eta_at_request_s)})"
                f"  green {_t(s.green_onset_s)}  arrival {_t(s.arrival_s)} on {s.aspect_at_arrival}"
                f"  released {_t(s.release_s)}   baseline: arrival {_t(s.baseline_arrival_s)} on "
                f"{s.baseline_aspect}"
            )
        saved = self.baseline_travel_time_s - self.travel_time_s
        pct = 100 * saved / self.baseline_travel_time_s if self.baseline_travel_time_s else 0.0
        out.append(
            f"travel time {self.travel_time_s:.1f} s with pre-emption ({self.stops} stops), "
            f"{self.baseline_travel_time_s:.1f} s without ({self.baseline_stops} stops): "
            f"{saved:.1f} s ({pct:.0f} %) saved"
        )
        return out


def _r(v: Any) -> Any:
    return round(v, 2) if isinstance(v, float) else v


def _t(v: float | None) -> str:
    return "   -   " if v is None else f"{v:6.1f}s"


def run_demo(path: Path = BUNDLED_SCENARIO) -> DemoReport:
    scen, dep = load_scenario(path, adapters=set(registry.installed()))
    routes = load_routes(dep.routes.files, epsg=dep.deployment.epsg)
    engine = scen.engines[0]
    baseline = Corridor(scen, routes, engine)
    baseline.run_to_end()
    clock = SimClock(start_utc=scen.start_epoch)
    corridor = Corridor(scen, routes, engine)
    daemon = build(dep, clock, {"simlink": corridor.controllers}, routes)
    daemon.planner.set_emergency(engine.vehicle, True)  # blue lights on from the start
    clock.run(_run(scen, corridor, daemon, clock))
    return _report(scen, baseline, corridor, daemon)


async def _run(scen: Scenario, corridor: Corridor, daemon: Daemon, clock: SimClock) -> None:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_drive(scen, corridor, clock, lines))
        tg.create_task(daemon.run([_receiver(lines, corridor.engine_cfg.vehicle)]))


async def _drive(
    scen: Scenario, corridor: Corridor, clock: SimClock, out: asyncio.Queue[str | None]
) -> None:
    """Step the street and write the engine's NMEA; the receiver reads it."""
    info = scen.scenario
    next_fix = corridor.engine_cfg.depart_s
    end_fixes = 0
    while end_fixes < END_FIXES:
        if corridor.t > info.time_limit_s:
            raise RuntimeError(
                f"{info.name}: the engine did not finish within "
                f"{info.time_limit_s:.0f} s of simulated time"
            )
        await clock.sleep(info.step_s)
        corridor.advance(info.step_s)
        if corridor.departed and corridor.t + 1e-6 >= next_fix:
            for line in corridor.nmea(scen.start_epoch + corridor.t):
                out.put_nowait(line)
            next_fix += info.gnss_interval_s
            end_fixes += corridor.engine.finished
    out.put_nowait(None)


async def _receiver(lines: asyncio.Queue[str | None], vehicle: str) -> AsyncIterator[Fix]:
    decoder = NmeaDecoder(vehicle=vehicle, source="sim-receiver")
    while (line := await lines.get()) is not None:
        for fix in decoder.feed_line(line):
            yield fix
    for fix in decoder.flush():
        yield fix


def _report(scen: Scenario, baseline: Corridor, run: Corridor, daemon: Daemon) -> DemoReport:
    depart = run.engine_cfg.depart_s
    base_cross = {c.intersection: c for c in baseline.engine.crossings}
    results = []
    for sig, cross in zip(run.signals, run.engine.crossings, strict=False):
        sent = [d for d in daemon.dispatched if d.command.intersection == sig.intersection]
        req = next((d for d in sent if d.command.kind is CommandKind.REQUEST), None)
        rel = next((d for d in sent if d.command.kind is CommandKind.CANCEL), None)
        green = green_interval_at(
            run.controllers[sig.intersection].green_log.get(sig.group, []), cross.time
        )
        results.append(
            SignalResult(
                intersection=sig.intersection,
                request_s=None if req is None else req.sent_mono - depart,
                eta_at_request_s=None if req is None else req.command.eta_s,
                green_onset_s=None if green is None else green[0] - depart,
                arrival_s=cross.time - depart,
                release_s=None if rel is None else rel.sent_mono - depart,
                aspect_at_arrival=cross.aspect.value,
                baseline_arrival_s=base_cross[sig.intersection].time - depart,
                baseline_aspect=base_cross[sig.intersection].aspect.value,
            )
        )
    return DemoReport(
        scenario=scen.scenario.name,
        vehicle=run.engine_cfg.vehicle,
        route=run.engine_cfg.route,
        signals=results,
        travel_time_s=run.engine.t - depart,
        baseline_travel_time_s=baseline.engine.t - depart,
        baseline_stops=baseline.engine.stops,
        stops=run.engine.stops,
        counters=dict(daemon.counters),
    )
