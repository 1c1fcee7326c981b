"""Runs of a scenario in SUMO, with or without the daemon, and their agreement with
the in-process model.

``sim.sumo`` may not import the daemon (the dependency direction), so the loop
that drives a street with the daemon on a ``SimClock`` lives here. It knows only
the :class:`sim.street.Street` protocol and runs the in-process corridor and
SUMO alike: the street writes the engine's NMEA, the decoder turns it into
fixes, the daemon plans and sends commands through the ``simlink`` adapter to
the street's controller models.

``preemption sim --sumo`` wires in with :func:`sumo_section`: it returns the
``"sumo"`` and ``"agreement"`` parts of the JSON report.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gps.nmea import NmeaDecoder
from preemption.clock import SimClock
from preemption.config import Deployment
from preemption.daemon import Daemon
from preemption.model import Fix
from preemption.run import build
from routes.geojson import RouteSet, load_routes
from signal_adapters import registry
from sim.controller import SignalController
from sim.scenario import EngineConfig, Scenario, load_scenario
from sim.street import EngineTrip, SignalPassage, Street, TrajectoryPoint
from sim.sumo import SumoStreet
from sim.sumo_compare import TripAgreement, compare_sweep, compare_trips
from sim.world import Corridor

END_FIXES = 3  # epochs still reported after the engine reached the end of its route

Loaded = tuple[Scenario, Deployment, RouteSet]


def load(path: Path | str) -> Loaded:
    scen, dep = load_scenario(path, adapters=set(registry.installed()))
    return scen, dep, load_routes(dep.routes.files, epsg=dep.deployment.epsg)


def _engine(scen: Scenario, engine_index: int, depart_s: float | None) -> EngineConfig:
    engine = scen.engines[engine_index]
    if depart_s is not None:
        engine = engine.model_copy(update={"depart_s": depart_s})
    return engine


def drive_alone(street: Street, scen: Scenario) -> None:
    """The baseline: step the street until the engine is through, nobody asking for green."""
    info = scen.scenario
    while not street.finished:
        if street.t > info.time_limit_s:
            raise RuntimeError(
                f"{info.name}: the engine did not reach the end of its route within "
                f"{info.time_limit_s:.0f} s of simulated time; check the signal programs"
            )
        street.advance(info.step_s)


def drive_with_daemon(
    street: Street, scen: Scenario, dep: Deployment, routes: RouteSet, engine: EngineConfig
) -> Daemon:
    """The pre-empted run: the street and the daemon as two tasks on one SimClock."""
    clock = SimClock(start_utc=scen.start_epoch)
    daemon = build(dep, clock, {"simlink": street.controllers}, routes)
    daemon.planner.set_emergency(engine.vehicle, True)  # blue lights on from the start
    clock.run(_run(street, scen, engine, daemon, clock))
    return daemon


async def _run(
    street: Street, scen: Scenario, engine: EngineConfig, daemon: Daemon, clock: SimClock
) -> None:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_drive(street, scen, engine, clock, lines))
        tg.create_task(daemon.run([_receiver(lines, engine.vehicle)]))


async def _drive(
    street: Street,
    scen: Scenario,
    engine: EngineConfig,
    clock: SimClock,
    out: asyncio.Queue[str | None],
) -> None:
    info = scen.scenario
    next_fix = engine.depart_s
    end_fixes = 0
    try:
        while end_fixes < END_FIXES:
            if street.t > info.time_limit_s:
                raise RuntimeError(
                    f"{info.name}: the engine did not finish within "
                    f"{info.time_limit_s:.0f} s of simulated time"
                )
            await clock.sleep(info.step_s)
            street.advance(info.step_s)
            if street.departed and street.t + 1e-6 >= next_fix:
                for line in street.nmea(scen.start_epoch + street.t):
                    out.put_nowait(line)
                next_fix += info.gnss_interval_s
                end_fixes += street.finished
    finally:
        out.put_nowait(None)


async def _receiver(lines: asyncio.Queue[str | None], vehicle: str) -> AsyncIterator[Fix]:
    decoder = NmeaDecoder(vehicle=vehicle, source="sim-receiver")
    while (line := await lines.get()) is not None:
        for fix in decoder.feed_line(line):
            yield fix
    for fix in decoder.flush():
        yield fix


def corridor_trip(corridor: Corridor) -> EngineTrip:
    """The in-process corridor's run as an EngineTrip (its own ``trip()`` when it has one)."""
    trip = getattr(corridor, "trip", None)
    if callable(trip):
        result = trip()
        assert isinstance(result, EngineTrip)
        return result
    eng, cfg = corridor.engine, corridor.engine_cfg
    groups = {s.intersection: s.group for s in corridor.signals}
    arrival = eng.finished_at if eng.finished_at is not None else eng.t
    travel = arrival - cfg.depart_s
    v_max = min(cfg.max_speed_kmh / 3.6, corridor.route.route.speed_limit or float("inf"))
    return EngineTrip(
        vehicle=cfg.vehicle,
        route=cfg.route,
        depart=cfg.depart_s,
        arrival=arrival,
        route_length=corridor.route.length,
        travel_time=travel,
        time_loss=travel - corridor.route.length / v_max,
        waiting_time=eng.stopped_s,
        stops=eng.stops,
        passages=tuple(
            SignalPassage(c.intersection, groups[c.intersection], c.time, c.aspect, c.speed)
            for c in eng.crossings
        ),
        trajectory=(TrajectoryPoint(eng.t, eng.s, eng.v),),
    )


class _CorridorStreet:
    """The in-process corridor seen as a Street, until ``sim.world`` implements it itself."""

    def __init__(self, corridor: Corridor) -> None:
        self.corridor = corridor

    @property
    def t(self) -> float:
        return self.corridor.t

    @property
    def controllers(self) -> Mapping[str, SignalController]:
        return self.corridor.controllers

    @property
    def departed(self) -> bool:
        return self.corridor.departed

    @property
    def finished(self) -> bool:
        return self.corridor.engine.finished

    def advance(self, dt: float) -> None:
        self.corridor.advance(dt)

    def nmea(self, t_utc: float) -> list[str]:
        return self.corridor.nmea(t_utc)

    def trip(self) -> EngineTrip:
        return corridor_trip(self.corridor)


def run_inprocess(
    loaded: Loaded, *, preempt: bool, depart_s: float | None = None, engine_index: int = 0
) -> EngineTrip:
    scen, dep, routes = loaded
    engine = _engine(scen, engine_index, depart_s)
    street = _CorridorStreet(Corridor(scen, routes, engine))
    if preempt:
        drive_with_daemon(street, scen, dep, routes, engine)
    else:
        drive_alone(street, scen)
    return street.trip()


def run_sumo(
    scenario: Path | str | Loaded,
    *,
    preempt: bool,
    depart_s: float | None = None,
    engine_index: int = 0,
    seed: int = 42,
    workdir: Path | None = None,
) -> EngineTrip:
    """One engine's run in SUMO; with ``preempt`` the daemon drives the lights."""
    loaded = load(scenario) if isinstance(scenario, Path | str) else scenario
    scen, dep, routes = loaded
    engine = _engine(scen, engine_index, depart_s)
    with SumoStreet(scen, routes, engine, workdir=workdir, seed=seed) as street:
        if preempt:
            drive_with_daemon(street, scen, dep, routes, engine)
        else:
            drive_alone(street, scen)
        return street.trip()


def trip_json(trip: EngineTrip) -> dict[str, Any]:
    """The tripinfo-style summary of a run, as the report's JSON carries it."""
    return {
        "vehicle": trip.vehicle,
        "route": trip.route,
        "depart": round(trip.depart, 2),
        "arrival": round(trip.arrival, 2),
        "routeLength": round(trip.route_length, 2),
        "travelTime": round(trip.travel_time, 2),
        "timeLoss": round(trip.time_loss, 2),
        "waitingTime": round(trip.waiting_time, 2),
        "stops": trip.stops,
        "signals": [
            {
                "intersection": p.intersection,
                "group": p.group,
                "arrival_s": round(p.time - trip.depart, 2),
                "aspect": p.aspect.value,
                "speed": round(p.speed, 2),
            }
            for p in trip.passages
        ],
    }


def compare(
    scenario: Path | str | Loaded, *, preempt: bool, depart_s: float | None = None
) -> tuple[EngineTrip, EngineTrip, TripAgreement]:
    """The same run in-process and in SUMO, and how well they agree."""
    loaded = load(scenario) if isinstance(scenario, Path | str) else scenario
    ours = run_inprocess(loaded, preempt=preempt, depart_s=depart_s)
    theirs = run_sumo(loaded, preempt=preempt, depart_s=depart_s)
    return ours, theirs, compare_trips(ours, theirs)


def sumo_section(
    scenario: Path | str | Loaded,
    *,
    preempt: bool = True,
    departures: Sequence[float] = (),
) -> dict[str, Any]:
    """The ``"sumo"`` and ``"agreement"`` parts of ``preemption sim --sumo``'s JSON.

    Without ``departures``, one run at the scenario's departure; with them, a sweep
    and its mean travel time judged by the sweep bar.
    """
    loaded = load(scenario) if isinstance(scenario, Path | str) else scenario
    if not departures:
        _, theirs, agreement = compare(loaded, preempt=preempt)
        return {"sumo": trip_json(theirs), "agreement": agreement.to_json()}
    ours = [run_inprocess(loaded, preempt=preempt, depart_s=d) for d in departures]
    theirs_all = [run_sumo(loaded, preempt=preempt, depart_s=d) for d in departures]
    sweep = compare_sweep(ours, theirs_all)
    per_run = [compare_trips(a, b).to_json() for a, b in zip(ours, theirs_all, strict=True)]
    return {
        "sumo": {"runs": [trip_json(t) for t in theirs_all]},
        "agreement": {**sweep.to_json(), "per_run": per_run},
    }
