"""The in-process street: controllers, queues of background traffic, one engine.

``Corridor`` implements ``sim.street.Street``. Time ``t`` is seconds since the
scenario's start; the engine leaves at its departure time. Every step the
engine sees the signals and the queue ahead at the start of the step, moves,
and then the controllers are advanced to the end of the step (a controller is
advanced once per step; between its switches that costs next to nothing).
Queues are advanced lazily: the one ahead of the engine every step, the others
when their figures are read (``queues_to``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from preemption.kernel.config import ConfigError
from routes.geojson import RouteSet
from routes.geometry import MetricRoute
from routes.speed import EngineProfile, SpeedProfile
from sim.controller import Aspect, SignalController
from sim.engine import EngineRun, EngineSpec, StopLine
from sim.gnss import PRESETS, GnssErrorModel, to_nmea
from sim.nmea_out import epoch_sentences
from sim.scenario import EngineConfig, Scenario
from sim.street import EngineTrip, SignalPassage, TrajectoryPoint
from sim.traffic import ApproachQueue, stream_seed


@dataclass(frozen=True, slots=True)
class SignalOnRoute:
    intersection: str
    approach: str
    group: str
    stop_line_m: float


@dataclass
class QueueAhead:
    """The part of a queue that stands between the engine and the stop line.

    Until the engine reaches the queue's tail (within its braking distance and a
    car length), every vehicle waiting counts as ahead of it; from then on only
    those waiting when it joined do, and they leave first (first in, first out).
    Vehicles that arrive later queue behind the engine.
    """

    queue: ApproachQueue
    engine: EngineRun
    stop_line_m: float
    _joined_with: int | None = field(default=None, init=False)  # vehicles ahead on joining
    _departed_then: int = field(default=0, init=False)

    def vehicles(self) -> int:
        q, e = self.queue, self.engine
        q.advance_to(e.t)
        if self._joined_with is None:
            spacing = q.params.vehicle_spacing_m
            tail = self.stop_line_m - q.queued * spacing
            if q.queued and e.s + e.spec.braking_distance(e.v) + spacing >= tail:
                self._joined_with, self._departed_then = q.queued, q.departed
            return q.queued
        return max(0, self._joined_with - (q.departed - self._departed_then))

    def __call__(self) -> float:
        return self.vehicles() * self.queue.params.vehicle_spacing_m


class Corridor:
    """Every controller and queue of the scenario and one engine driving its route."""

    def __init__(
        self,
        scenario: Scenario,
        routes: RouteSet,
        engine: EngineConfig,
        *,
        red_crossing: bool = False,
        record_trajectory: bool = True,
    ) -> None:
        self.scenario = scenario
        self.engine_cfg = engine
        self._controllers = controllers_of(scenario)
        self.route: MetricRoute = engine_route(scenario, routes, engine)
        self.projector = routes.projector
        params = scenario.traffic.params()
        self.queues: dict[tuple[str, str], ApproachQueue] = {}
        for ic in scenario.intersections:
            log = self._controllers[ic.id].green_log
            for d in ic.demand:
                group = ic.group_of(d)
                self.queues[(ic.id, d.approach)] = ApproachQueue(
                    ic.id,
                    d.approach,
                    group,
                    d.veh_h,
                    log.setdefault(group, []),
                    params,
                    seed=scenario.traffic.seed,
                )
        self.profile = engine_profile(self.route, engine)
        self.engine = EngineRun(
            spec=engine_spec(engine),
            route_length=self.route.length,
            stop_lines=[],
            t=engine.depart_s,
            red_crossing_speed=(scenario.baseline.red_crossing_kmh / 3.6 if red_crossing else None),
            speed_limit=self.profile.speed_at,
        )
        self.signals = signals_on_route(scenario, self.route, engine, self._controllers)
        self.engine.stop_lines = [self._stop_line(sig) for sig in self.signals]
        self._t = 0.0
        self._record = record_trajectory
        self._trajectory: list[tuple[float, float, float]] = []
        gnss = scenario.gnss
        self.gnss: GnssErrorModel | None = (
            None
            if gnss.preset == "none"
            else GnssErrorModel(
                PRESETS[gnss.preset], seed=stream_seed(gnss.seed, engine.vehicle, "gnss")
            )
        )

    def _stop_line(self, sig: SignalOnRoute) -> StopLine:
        ctrl = self._controllers[sig.intersection]
        group = sig.group

        def aspect() -> Aspect:
            return ctrl.aspect(group)

        queue = self.queues.get((sig.intersection, sig.approach))
        ahead = None if queue is None else QueueAhead(queue, self.engine, sig.stop_line_m)
        return StopLine(sig.intersection, sig.stop_line_m, aspect, ahead)

    # -- the Street protocol -----------------------------------------------------------------

    @property
    def t(self) -> float:
        return self._t

    @property
    def controllers(self) -> Mapping[str, SignalController]:
        return self._controllers

    @property
    def departed(self) -> bool:
        return self._t >= self.engine_cfg.depart_s

    @property
    def finished(self) -> bool:
        return self.engine.finished

    def advance(self, dt: float) -> None:
        """Move everything on by ``dt`` seconds."""
        if self.departed and not self.engine.finished:
            self.engine.step(dt)
            if self._record:
                e = self.engine
                self._trajectory.append((e.t, e.s, e.v))
        self._t += dt
        t = self._t
        for c in self._controllers.values():
            c.advance_to(t)

    def nmea(self, t_utc: float) -> list[str]:
        """What the engine's receiver reports now: RMC and GGA, through the GNSS error model
        when the scenario has one (none while it is in a dropout)."""
        st = self.route.at(self.engine.s)
        if self.gnss is None:
            lon, lat = self.projector.to_wgs84(st.x, st.y)
            return epoch_sentences(t_utc, lat, lon, self.engine.v, st.heading_deg)
        obs = self.gnss.observe(self._t, st.x, st.y, self.engine.v, st.heading_deg)
        if obs is None:
            return []
        return to_nmea(obs, self.projector, time_offset_s=t_utc - self._t)

    def trip(self) -> EngineTrip:
        e, cfg = self.engine, self.engine_cfg
        arrival = e.finished_at if e.finished_at is not None else e.t
        travel = arrival - cfg.depart_s
        by_id = {s.intersection: s for s in self.signals}
        return EngineTrip(
            vehicle=cfg.vehicle,
            route=cfg.route,
            depart=cfg.depart_s,
            arrival=arrival,
            route_length=self.route.length,
            travel_time=travel,
            # tripinfo's timeLoss: against the whole route at maximum speed (so the
            # acceleration from standstill counts as loss, as in SUMO).
            time_loss=travel - self.route.length / e.spec.max_speed,
            waiting_time=e.stopped_s,
            stops=e.stops,
            passages=[
                SignalPassage(
                    c.intersection, by_id[c.intersection].group, c.time, c.aspect, c.speed
                )
                for c in e.crossings
            ],
            trajectory=[TrajectoryPoint(t, s, v) for t, s, v in self._trajectory],
        )

    # -- running without a daemon ------------------------------------------------------------

    def queues_to(self, t: float) -> Mapping[tuple[str, str], ApproachQueue]:
        """Every queue, advanced to ``t`` (at most the street's time)."""
        for q in self.queues.values():
            q.advance_to(min(t, self._t))
        return self.queues

    def run_to_end(self) -> None:
        """Drive without anyone asking for green: the baseline."""
        for _ in self.steps():
            pass

    def steps(self) -> Iterator[float]:
        """Advance step by step until the engine has reached the end of its route."""
        info = self.scenario.scenario
        n = 0
        limit = math.ceil(info.time_limit_s / info.step_s)
        while not self.engine.finished:
            if n >= limit:
                raise RuntimeError(
                    f"engine {self.engine_cfg.vehicle!r} did not reach the end of route "
                    f"{self.engine_cfg.route!r} within {info.time_limit_s:.0f} s of simulated "
                    "time; check the signal programs and the engine's speed"
                )
            self.advance(info.step_s)
            n += 1
            yield self._t


def controllers_of(scenario: Scenario) -> dict[str, SignalController]:
    """A controller model per intersection of the scenario, running its signal program."""
    return {ic.id: SignalController(ic.id, ic.program()) for ic in scenario.intersections}


def engine_route(scenario: Scenario, routes: RouteSet, engine: EngineConfig) -> MetricRoute:
    """The route the scenario's engine drives, from the deployment's route files."""
    if engine.route not in routes.routes:
        raise ConfigError(
            scenario.scenario.deployment,
            [("engines", f"route {engine.route!r} is not in the deployment's route files")],
        )
    return routes[engine.route]


def signals_on_route(
    scenario: Scenario,
    route: MetricRoute,
    engine: EngineConfig,
    controllers: Mapping[str, SignalController],
) -> list[SignalOnRoute]:
    """The route's signals with the signal group that governs the engine at each; an
    intersection without a program, or an approach mapping to no group, is an error."""
    out = []
    for sig in route.signals:
        ctrl = controllers.get(sig.intersection)
        if ctrl is None:
            raise ConfigError(
                scenario.scenario.deployment,
                [
                    (
                        "intersections",
                        f"route {engine.route!r} crosses {sig.intersection!r}, "
                        "which the scenario gives no signal program",
                    )
                ],
            )
        group = ctrl.program.group_for(sig.approach)
        if group not in ctrl.program.groups:
            raise ConfigError(
                scenario.scenario.deployment,
                [
                    (
                        f"intersections.{sig.intersection}.approaches",
                        f"approach {sig.approach!r} maps to no signal group of the program",
                    )
                ],
            )
        out.append(SignalOnRoute(sig.intersection, sig.approach, group, sig.stop_line_m))
    return out


def engine_spec(engine: EngineConfig) -> EngineSpec:
    return EngineSpec(engine.max_speed_kmh / 3.6, engine.accel, engine.decel, engine.length_m)


def engine_profile(route: MetricRoute, engine: EngineConfig) -> SpeedProfile:
    """The speed profile the engine drives on its route: the route's limit (when its file
    has one) or the engine's top speed, slower in curves, braking for them in time."""
    top = engine.max_speed_kmh / 3.6
    return SpeedProfile(
        route,
        EngineProfile(
            target_speed=top,
            max_speed=top,
            accel=engine.accel,
            decel=engine.decel,
            lateral_accel=engine.lateral_accel,
        ),
    )


def free_flow_on(route: MetricRoute, engine: EngineConfig, step_s: float = 0.1) -> float:
    """The engine's free-flow time on its route: its speed profile from a standstill,
    every signal green and nobody in the way (the model engine on an empty street)."""
    run = EngineRun(
        spec=engine_spec(engine),
        route_length=route.length,
        stop_lines=[],
        speed_limit=engine_profile(route, engine).speed_at,
    )
    while not run.finished:
        run.step(step_s)
    assert run.finished_at is not None
    return run.finished_at
