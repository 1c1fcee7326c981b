"""The simulated street: controllers and one engine on its route, stepped in time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from preemption.config import ConfigError
from routes.geojson import RouteSet
from routes.geometry import MetricRoute
from sim.controller import SignalController
from sim.engine import EngineRun, EngineSpec, StopLine
from sim.nmea_out import epoch_sentences
from sim.scenario import EngineConfig, Scenario


@dataclass(frozen=True, slots=True)
class SignalOnRoute:
    intersection: str
    approach: str
    group: str
    stop_line_m: float


class Corridor:
    """Every controller of the scenario and one engine driving its route.

    Time ``t`` is seconds since the scenario's start; the engine leaves at its
    departure time.
    """

    def __init__(self, scenario: Scenario, routes: RouteSet, engine: EngineConfig) -> None:
        self.scenario = scenario
        self.engine_cfg = engine
        self.controllers = {
            ic.id: SignalController(ic.id, ic.program()) for ic in scenario.intersections
        }
        if engine.route not in routes.routes:
            raise ConfigError(
                scenario.scenario.deployment,
                [("engines", f"route {engine.route!r} is not in the deployment's route files")],
            )
        self.route: MetricRoute = routes[engine.route]
        self.projector = routes.projector
        self.signals: list[SignalOnRoute] = []
        stop_lines = []
        for sig in self.route.signals:
            ctrl = self.controllers.get(sig.intersection)
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
            self.signals.append(
                SignalOnRoute(sig.intersection, sig.approach, group, sig.stop_line_m)
            )
            stop_lines.append(
                StopLine(sig.intersection, sig.stop_line_m, partial(ctrl.aspect, group))
            )
        spec = EngineSpec(
            max_speed=engine.max_speed_kmh / 3.6,
            accel=engine.accel,
            decel=engine.decel,
            length_m=engine.length_m,
        )
        self.engine = EngineRun(
            spec=spec, route_length=self.route.length, stop_lines=stop_lines, t=engine.depart_s
        )
        self.t = 0.0

    @property
    def departed(self) -> bool:
        return self.t >= self.engine_cfg.depart_s

    def advance(self, dt: float) -> None:
        """Move everything on by ``dt`` seconds."""
        for c in self.controllers.values():
            c.advance_to(self.t)
        if self.departed and not self.engine.finished:
            self.engine.step(dt)
        self.t += dt
        for c in self.controllers.values():
            c.advance_to(self.t)

    def nmea(self, t_utc: float) -> list[str]:
        """What the engine's receiver reports now (no GNSS error in the walking skeleton)."""
        st = self.route.at(self.engine.s)
        lon, lat = self.projector.to_wgs84(st.x, st.y)
        return epoch_sentences(t_utc, lat, lon, self.engine.v, st.heading_deg)

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
            yield self.t
