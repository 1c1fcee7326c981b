"""The simulator's runner: the daemon's parts against a simulated street, on a simulated clock.

A run drives any ``sim.street.Street`` (the in-process ``sim.world.Corridor`` or
the SUMO backend): the street writes the engine's NMEA through the scenario's
GNSS error model, the gps decoder turns it into fixes, the daemon (matcher,
planner, the adapter named in the deployment file, here ``simlink``) sends its
requests to the street's controllers. The same engine without pre-emption is
the baseline. A safety watch samples every controller at every step.

After the engine has finished, the street runs on until every controller is
back in its plan (at most two cycles), and the baseline is run to the same
moment, so cross-traffic figures compare like with like.

Seams for later: the daemon reads NMEA lines from a queue (``_receiver``) that a
pty or a socket can replace, and the controllers are reached only through the
adapter named in the deployment, so a virtual controller on a real protocol can
stand in for ``simlink``.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gps.nmea import NmeaDecoder
from preemption.decisions.planner import Alarm
from preemption.kernel.clock import SimClock
from preemption.kernel.config import ConfigError, Deployment
from preemption.kernel.model import CommandKind, Fix, PreemptStatus
from preemption.service.daemon import Daemon
from preemption.service.events import Recorder, Sent
from preemption.service.wiring import build
from routes.geojson import RouteSet, load_routes
from signal_adapters import registry
from sim.metrics import CrossTraffic, SignalMetrics, cross_traffic, signal_metrics
from sim.safety import StreetWatch, Violation
from sim.scenario import EngineConfig, Scenario, load_scenario
from sim.street import EngineTrip, Street
from sim.traffic import ApproachQueue
from sim.world import Corridor, free_flow_on

SCENARIOS = Path(__file__).resolve().parents[2] / "config/scenarios"
# The default of `preemption sim` and `preemption demo`: the real-city scenario.
BUNDLED_SCENARIO = SCENARIOS / "berlin/scenario.toml"
# The synthetic corridor on which the simulator's own targets are stated.
CORRIDOR_SCENARIO = SCENARIOS / "demo/scenario.toml"


def bundled_scenario() -> Path:
    """:data:`BUNDLED_SCENARIO`, or a ConfigError saying where the bundled scenarios are."""
    if not BUNDLED_SCENARIO.is_file():
        why = (
            "not found: the bundled scenarios (config/scenarios) come with a source "
            "checkout, not with an installed wheel; name a scenario file, e.g. "
            "preemption demo PATH/scenario.toml"
        )
        raise ConfigError(BUNDLED_SCENARIO, [("", why)])
    return BUNDLED_SCENARIO


END_FIXES = 3  # epochs still reported after the engine reached the end of its route

# (engine, red crossing allowed) -> a fresh street with that engine on it
StreetFactory = Callable[[EngineConfig, bool], Street]


@dataclass(frozen=True)
class Setup:
    path: Path
    scenario: Scenario
    deployment: Deployment
    routes: RouteSet

    def corridor(self, engine: EngineConfig, red_crossing: bool) -> Street:
        return Corridor(self.scenario, self.routes, engine, red_crossing=red_crossing)

    @property
    def cycle_s(self) -> float:
        return max(ic.program().cycle_s for ic in self.scenario.intersections)


def load(path: Path | str = BUNDLED_SCENARIO) -> Setup:
    path = Path(path)
    scen, dep = load_scenario(path, adapters=set(registry.installed()))
    routes = load_routes(dep.routes.files, epsg=dep.deployment.epsg)
    return Setup(path, scen, dep, routes)


@dataclass
class RunResult:
    street: Street
    trip: EngineTrip
    violations: list[tuple[str, Violation]]
    dispatched: list[Sent] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def queues(self) -> Mapping[tuple[str, str], ApproachQueue]:
        if isinstance(self.street, Corridor):
            return self.street.queues_to(self.street.t)
        q = getattr(self.street, "queues", None)
        return q if isinstance(q, Mapping) else {}


def _finish(setup: Setup, street: Street, watch: StreetWatch, until: float | None) -> None:
    """Run on after the engine: until every controller is back in the plan, or to ``until``."""
    step = setup.scenario.scenario.step_s
    cap = street.t + 2 * setup.cycle_s if until is None else until
    while street.t < cap - 1e-9:
        if until is None and all(
            c.preempt_status()[0] is PreemptStatus.NOT_ACTIVE for c in street.controllers.values()
        ):
            break
        street.advance(step)
        watch.sample(street.t)


def run_baseline(
    setup: Setup, engine: EngineConfig, factory: StreetFactory | None = None, until: float = 0.0
) -> RunResult:
    """The engine without pre-emption (crossing red cautiously if the scenario says so)."""
    info = setup.scenario.scenario
    street = (factory or setup.corridor)(engine, setup.scenario.baseline.red == "cautious")
    watch = StreetWatch(street.controllers)
    watch.sample(street.t)
    limit = info.time_limit_s
    while not street.finished:
        if street.t > limit:
            raise RuntimeError(
                f"{info.name}: engine {engine.vehicle!r} did not reach the end of route "
                f"{engine.route!r} within {limit:.0f} s of simulated time without pre-emption; "
                "check the signal programs, the demand and the engine's speed"
            )
        street.advance(info.step_s)
        watch.sample(street.t)
    _finish(setup, street, watch, max(until, street.t))
    return RunResult(street, street.trip(), watch.violations)


def run_preempted(
    setup: Setup, engine: EngineConfig, factory: StreetFactory | None = None
) -> RunResult:
    """The engine with the daemon's parts pre-empting the signals ahead of it."""
    scen = setup.scenario
    street = (factory or setup.corridor)(engine, False)
    clock = SimClock(start_utc=scen.start_epoch)
    record = Recorder(clock)
    daemon = build(
        setup.deployment, clock, {"simlink": street.controllers}, setup.routes, sink=record
    )
    daemon.planner.set_emergency(engine.vehicle, True)  # blue lights on from the start
    watch = StreetWatch(street.controllers)
    watch.sample(street.t)
    clock.run(_run(scen, street, daemon, clock, watch, engine))
    _finish(setup, street, watch, None)
    return RunResult(
        street, street.trip(), watch.violations, record.commands, dict(daemon.counters)
    )


async def _run(
    scen: Scenario,
    street: Street,
    daemon: Daemon,
    clock: SimClock,
    watch: StreetWatch,
    engine: EngineConfig,
) -> None:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_drive(scen, street, clock, lines, watch, engine))
        tg.create_task(daemon.run([_receiver(lines, engine.vehicle, clock)]))
        if scen.preemption.dispatch:
            tg.create_task(_dispatch(daemon, clock, engine))


async def _dispatch(daemon: Daemon, clock: SimClock, engine: EngineConfig) -> None:
    """Dispatch's alarm with the engine's route, the turnout time before it rolls."""
    await clock.sleep(max(0.0, engine.depart_s - daemon.planner.config.turnout_s))
    daemon.alarm(Alarm(engine.vehicle, engine.route))


async def _drive(
    scen: Scenario,
    street: Street,
    clock: SimClock,
    out: asyncio.Queue[str | None],
    watch: StreetWatch,
    engine: EngineConfig,
) -> None:
    """Step the street and write the engine's NMEA; the receiver reads it."""
    info = scen.scenario
    next_fix = engine.depart_s
    end_fixes = 0
    while end_fixes < END_FIXES:
        if street.t > info.time_limit_s:
            raise RuntimeError(
                f"{info.name}: engine {engine.vehicle!r} did not finish within "
                f"{info.time_limit_s:.0f} s of simulated time with pre-emption"
            )
        await clock.sleep(info.step_s)
        street.advance(info.step_s)
        watch.sample(street.t)
        if street.departed and street.t + 1e-6 >= next_fix:
            for line in street.nmea(scen.start_epoch + street.t):
                out.put_nowait(line)
            next_fix += info.gnss_interval_s
            end_fixes += street.finished
    out.put_nowait(None)


async def _receiver(
    lines: asyncio.Queue[str | None], vehicle: str, clock: SimClock
) -> AsyncIterator[Fix]:
    decoder = NmeaDecoder(vehicle=vehicle, source="sim-receiver", clock=clock)
    while (line := await lines.get()) is not None:
        for fix in decoder.feed_line(line):
            yield fix
    for fix in decoder.finish():
        yield fix


# -- one comparison ----------------------------------------------------------------------------


@dataclass
class Comparison:
    """One departure: the baseline beside the pre-empted run."""

    engine: EngineConfig
    baseline: RunResult
    preempted: RunResult
    free_flow_s: float
    signals: list[SignalMetrics]
    cross: CrossTraffic

    @property
    def ratio_to_free_flow(self) -> float:
        return self.preempted.trip.travel_time / self.free_flow_s

    @property
    def saving_s(self) -> float:
        return self.baseline.trip.travel_time - self.preempted.trip.travel_time

    @property
    def green_at_arrival(self) -> float:
        """Share of the signals passed on green, pre-empted run."""
        p = self.preempted.trip.passages
        return sum(x.aspect.value == "green" for x in p) / len(p) if p else 1.0

    @property
    def violations(self) -> int:
        return len(self.baseline.violations) + len(self.preempted.violations)

    def request_times(self) -> dict[str, tuple[float | None, float | None]]:
        """Intersection -> (request, release) in seconds after departure."""
        out: dict[str, tuple[float | None, float | None]] = {}
        depart = self.engine.depart_s
        for s in self.signals:
            sent = [
                d for d in self.preempted.dispatched if d.command.intersection == s.intersection
            ]
            req = next((d for d in sent if d.command.kind is CommandKind.REQUEST), None)
            rel = next((d for d in sent if d.command.kind is CommandKind.CANCEL), None)
            out[s.intersection] = (
                None if req is None else req.sent_mono - depart,
                None if rel is None else rel.sent_mono - depart,
            )
        return out


def compare(
    setup: Setup, engine: EngineConfig | None = None, factory: StreetFactory | None = None
) -> Comparison:
    engine = engine or setup.scenario.engines[0]
    pre = run_preempted(setup, engine, factory)
    base = run_baseline(setup, engine, factory, until=pre.street.t)
    if pre.street.t < base.street.t:
        _finish(setup, pre.street, StreetWatch(pre.street.controllers), base.street.t)
    horizon = max(pre.street.t, base.street.t)
    trip = pre.trip
    free = free_flow_on(setup.routes[engine.route], engine, setup.scenario.scenario.step_s)
    signals = signal_metrics(
        trip, base.trip, pre.street.controllers, base.street.controllers, horizon
    )
    groups = {p.intersection: p.group for p in trip.passages}
    cross = cross_traffic(signals, pre.queues, base.queues, groups)
    return Comparison(engine, base, pre, free, signals, cross)


# -- sweeps ------------------------------------------------------------------------------------


def departures(setup: Setup, n: int, engine: EngineConfig | None = None) -> list[EngineConfig]:
    """``n`` departures spread evenly over one cycle (the longest of the scenario)."""
    engine = engine or setup.scenario.engines[0]
    c = setup.cycle_s
    return [replace_engine(engine, engine.depart_s + k * c / n) for k in range(n)]


def replace_engine(engine: EngineConfig, depart_s: float) -> EngineConfig:
    return engine.model_copy(update={"depart_s": depart_s})


def sweep(
    setup: Setup,
    n: int,
    factory: StreetFactory | None = None,
    progress: Callable[[int, int], None] | None = None,
    engine: EngineConfig | None = None,
) -> list[Comparison]:
    """``n`` departures of ``engine`` (default: the scenario's first) over one cycle."""
    out = []
    runs = departures(setup, n, engine)
    for k, eng in enumerate(runs):
        out.append(compare(setup, eng, factory))
        if progress is not None:
            progress(k + 1, len(runs))
    return out


# -- JSON ------------------------------------------------------------------------------------


def _r(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 2)
    return v


def trip_json(trip: EngineTrip) -> dict[str, Any]:
    return {
        "travelTime": _r(trip.travel_time),
        "timeLoss": _r(trip.time_loss),
        "waitingTime": _r(trip.waiting_time),
        "stops": trip.stops,
        "depart": _r(trip.depart),
        "arrival": _r(trip.arrival),
        "routeLength": _r(trip.route_length),
    }


def comparison_json(c: Comparison) -> dict[str, Any]:
    req = c.request_times()
    return {
        "baseline": trip_json(c.baseline.trip),
        "preempted": trip_json(c.preempted.trip),
        "free_flow_s": _r(c.free_flow_s),
        "ratio_to_free_flow": round(c.ratio_to_free_flow, 3),
        "saving_s": _r(c.saving_s),
        "saving_pct": _r(100 * c.saving_s / c.baseline.trip.travel_time),
        "green_at_arrival_pct": _r(100 * c.green_at_arrival),
        "signals": [
            {
                **{k: _r(getattr(s, k)) for k in s.__slots__},
                "request_s": _r(req[s.intersection][0]),
                "release_s": _r(req[s.intersection][1]),
            }
            for s in c.signals
        ],
        "cross_traffic": {k: _r(getattr(c.cross, k)) for k in c.cross.__slots__},
        "violations": c.violations,
        "violation_details": [
            {"intersection": i, "time": _r(v.time), "kind": v.kind.value, "detail": v.detail}
            for i, v in c.baseline.violations + c.preempted.violations
        ],
    }


def sweep_json(runs: list[Comparison]) -> dict[str, Any]:
    def stats(xs: list[float]) -> dict[str, Any]:
        return {
            "mean": _r(statistics.fmean(xs)),
            "median": _r(statistics.median(xs)),
            "min": _r(min(xs)),
            "max": _r(max(xs)),
        }

    base = [c.baseline.trip.travel_time for c in runs]
    pre = [c.preempted.trip.travel_time for c in runs]
    return {
        "runs": len(runs),
        "departures_s": [_r(c.engine.depart_s) for c in runs],
        "baseline_travelTime": stats(base),
        "preempted_travelTime": stats(pre),
        "saving_s": stats([b - p for b, p in zip(base, pre, strict=True)]),
        "saving_pct": _r(
            100 * (statistics.fmean(base) - statistics.fmean(pre)) / statistics.fmean(base)
        ),
        "ratio_to_free_flow": stats([c.ratio_to_free_flow for c in runs]),
        "green_at_arrival_pct": _r(100 * statistics.fmean(c.green_at_arrival for c in runs)),
        "violations": sum(c.violations for c in runs),
        "cross_forced_red_s": stats([c.cross.forced_red_s for c in runs]),
        "cross_extra_delay_veh_s": stats(
            [c.cross.delay_veh_s - c.cross.baseline_delay_veh_s for c in runs]
        ),
    }


__all__ = [
    "BUNDLED_SCENARIO",
    "CORRIDOR_SCENARIO",
    "Comparison",
    "RunResult",
    "Setup",
    "StreetFactory",
    "compare",
    "comparison_json",
    "departures",
    "load",
    "sweep",
    "sweep_json",
]
