"""The scenario file (TOML): signal programs, engines, and the deployment under test.

The routes, vehicles, controllers and planner settings come from the deployment
file the scenario names, so the simulator tests exactly what would run live.
Paths are relative to the scenario file.

Everything added after the first version has a default, so older scenario files
keep working: signal-group kinds and pedestrian clearances, an intergreen
matrix, a pre-emption delay and exit stage per intersection; background demand
per approach; the queue model (``[traffic]``), the engine's GNSS receiver
(``[gnss]``), how the engine treats red without pre-emption (``[baseline]``),
and overrides of the deployment's planner settings (``[preemption]``).
docs/simulator.md describes every key.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from preemption.kernel.config import (
    ConfigError,
    Deployment,
    PlannerConfig,
    load_config,
    read_toml,
    validation_problems,
)
from sim.controller import GroupKind, SignalGroup, SignalProgram, Stage
from sim.gnss import PRESETS
from sim.traffic import ArrivalKind, QueueParams

Positive = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageConfig(_Strict):
    groups: list[str] = Field(min_length=1)
    green_s: Positive


class SignalGroupConfig(_Strict):
    kind: GroupKind = GroupKind.VEHICLE
    clearance_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="pedestrian clearance time (Räumzeit)"
    )

    @model_validator(mode="after")
    def _pedestrians_need_clearance(self) -> SignalGroupConfig:
        if self.kind is GroupKind.PEDESTRIAN and self.clearance_s is None:
            raise ValueError("a pedestrian group needs clearance_s (its Räumzeit)")
        return self


class DemandConfig(_Strict):
    """Background traffic on one approach of an intersection."""

    approach: str = Field(min_length=1, description="as the route file names it, or any name")
    group: str | None = Field(
        default=None, description="signal group serving it; default: from `approaches`"
    )
    veh_h: Annotated[float, Field(ge=0, le=3600)]
    name: str = ""


class IntersectionConfig(_Strict):
    id: str = Field(min_length=1)
    stages: list[StageConfig] = Field(min_length=1)
    yellow_s: Positive = 3.0
    all_red_s: Annotated[float, Field(ge=0)] = 2.0
    min_green_s: Annotated[float, Field(ge=0)] = 5.0
    offset_s: Annotated[float, Field(ge=0)] = 0.0
    approaches: dict[str, str] = Field(
        default_factory=dict, description="approach id as the route file names it -> signal group"
    )
    max_presence_s: Positive = 180.0
    signal_groups: dict[str, SignalGroupConfig] = Field(default_factory=dict)
    intergreen: dict[str, dict[str, Positive]] = Field(
        default_factory=dict, description="Zwischenzeitenmatrix: from group -> to group -> s"
    )
    preempt_delay_s: Annotated[float, Field(ge=0, le=60)] = 0.0
    exit_stage: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="stage (counted from 1) the plan resumes with after a dwell"
    )
    demand: list[DemandConfig] = Field(default_factory=list)

    def group_of(self, d: DemandConfig) -> str:
        return d.group if d.group is not None else self.approaches.get(d.approach, d.approach)

    def program(self) -> SignalProgram:
        return SignalProgram(
            stages=tuple(Stage(frozenset(s.groups), s.green_s) for s in self.stages),
            yellow_s=self.yellow_s,
            all_red_s=self.all_red_s,
            min_green_s=self.min_green_s,
            offset_s=self.offset_s,
            approaches=dict(self.approaches),
            max_presence_s=self.max_presence_s,
            signal_groups={
                g: SignalGroup(c.kind, c.clearance_s) for g, c in self.signal_groups.items()
            },
            intergreen={(g, h): t for g, row in self.intergreen.items() for h, t in row.items()},
            preempt_delay_s=self.preempt_delay_s,
            exit_stage=None if self.exit_stage is None else self.exit_stage - 1,
        )


class EngineConfig(_Strict):
    vehicle: str
    route: str
    depart_s: Annotated[float, Field(ge=0)] = 0.0
    max_speed_kmh: Positive = 50.0
    accel: Positive = 1.0
    decel: Positive = 2.5
    length_m: Positive = 10.0
    # Lateral acceleration the crew allows in curves and turns: with the route's speed
    # limit (if its file has one) and the engine's top speed it makes the speed profile
    # (routes/speed.py) that the engine drives and the matcher's ETAs assume.
    lateral_accel: Annotated[float, Field(gt=0, le=10)] = 1.5


class ScenarioInfo(_Strict):
    name: str
    deployment: Path
    start_utc: AwareDatetime
    step_s: Annotated[float, Field(gt=0, le=1)] = 0.1
    gnss_interval_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    time_limit_s: Positive = 3600.0


class TrafficConfig(_Strict):
    """The queue model of background traffic (sim.traffic)."""

    saturation_headway_s: Annotated[float, Field(gt=0, le=10)] = 2.0
    start_up_loss_s: Annotated[float, Field(ge=0, le=10)] = 2.0
    vehicle_spacing_m: Annotated[float, Field(gt=0, le=30)] = 7.5
    arrivals: ArrivalKind = ArrivalKind.POISSON
    seed: int = 0

    def params(self) -> QueueParams:
        return QueueParams(
            self.saturation_headway_s, self.start_up_loss_s, self.vehicle_spacing_m, self.arrivals
        )


class GnssConfig(_Strict):
    """The engine's receiver: "none" (exact positions) or a preset of sim.gnss."""

    preset: str = "none"
    seed: int = 0

    @model_validator(mode="after")
    def _known_preset(self) -> GnssConfig:
        if self.preset != "none" and self.preset not in PRESETS:
            raise ValueError(
                f"unknown GNSS preset {self.preset!r}; use one of "
                f"{', '.join(['none', *sorted(PRESETS)])}"
            )
        return self


class BaselineConfig(_Strict):
    """How the engine drives when nobody pre-empts the signals."""

    red: Literal["stop", "cautious"] = Field(
        default="stop", description="cautious: crosses red slowly under special rights"
    )
    red_crossing_kmh: Annotated[float, Field(gt=0, le=30)] = 10.0


class PreemptionConfig(_Strict):
    """The pre-emption configuration under test: overrides of the deployment's planner."""

    planner: dict[str, Any] = Field(default_factory=dict)
    dispatch: bool = Field(
        default=False,
        description="dispatch alarms each engine with its route, turnout_s before it departs "
        "(the matcher's prior, station-exit arming, requests past forks on the named route)",
    )


class Scenario(_Strict):
    scenario: ScenarioInfo
    intersections: list[IntersectionConfig] = Field(min_length=1)
    engines: list[EngineConfig] = Field(min_length=1)
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    gnss: GnssConfig = Field(default_factory=GnssConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    preemption: PreemptionConfig = Field(default_factory=PreemptionConfig)

    @property
    def start_epoch(self) -> float:
        start: datetime = self.scenario.start_utc
        return start.timestamp()


def load_scenario(
    path: Path | str, adapters: set[str] | None = None
) -> tuple[Scenario, Deployment]:
    path = Path(path)
    data = read_toml(path)
    try:
        scen = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None
    dep = load_config(path.parent / scen.scenario.deployment, adapters=adapters)
    problems: list[tuple[str, str]] = []
    ids = [i.id for i in scen.intersections]
    for k, x in enumerate(ids):
        if x in ids[:k]:
            problems.append((f"intersections[{k}].id", f"{x!r} is defined twice"))
    vehicles = {v.id for v in dep.vehicles}
    for k, e in enumerate(scen.engines):
        if e.vehicle not in vehicles:
            problems.append(
                (f"engines[{k}].vehicle", f"{e.vehicle!r} is not a vehicle of the deployment")
            )
    for k, ic in enumerate(scen.intersections):
        try:
            prog = ic.program()
        except ValueError as exc:
            problems.append((f"intersections[{k}]", str(exc)))
            continue
        for j, d in enumerate(ic.demand):
            if ic.group_of(d) not in prog.groups:
                problems.append(
                    (
                        f"intersections[{k}].demand[{j}]",
                        f"approach {d.approach!r} of {ic.id} is served by signal group "
                        f"{ic.group_of(d)!r}, which no stage has; set `group` to one of "
                        f"{sorted(prog.groups)}",
                    )
                )
    if scen.preemption.planner:
        try:
            planner = PlannerConfig.model_validate(
                {**dep.planner.model_dump(), **scen.preemption.planner}
            )
        except ValidationError as exc:
            problems += [(f"preemption.planner.{k}", m) for k, m in validation_problems(exc)]
        else:
            dep = dep.model_copy(update={"planner": planner})
    if problems:
        raise ConfigError(path, problems)
    return scen, dep
