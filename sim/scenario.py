"""The scenario file (TOML): signal programs, engines, and the deployment under test.

The routes, vehicles, controllers and planner settings come from the deployment
file the scenario names, so the simulator tests exactly what would run live.
Paths are relative to the scenario file.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from preemption.config import (
    ConfigError,
    Deployment,
    load_config,
    read_toml,
    validation_problems,
)
from sim.controller import SignalProgram, Stage

Positive = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageConfig(_Strict):
    groups: list[str] = Field(min_length=1)
    green_s: Positive


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

    def program(self) -> SignalProgram:
        return SignalProgram(
            stages=tuple(Stage(frozenset(s.groups), s.green_s) for s in self.stages),
            yellow_s=self.yellow_s,
            all_red_s=self.all_red_s,
            min_green_s=self.min_green_s,
            offset_s=self.offset_s,
            approaches=dict(self.approaches),
            max_presence_s=self.max_presence_s,
        )


class EngineConfig(_Strict):
    vehicle: str
    route: str
    depart_s: Annotated[float, Field(ge=0)] = 0.0
    max_speed_kmh: Positive = 50.0
    accel: Positive = 1.0
    decel: Positive = 2.5
    length_m: Positive = 10.0


class ScenarioInfo(_Strict):
    name: str
    deployment: Path
    start_utc: AwareDatetime
    step_s: Annotated[float, Field(gt=0, le=1)] = 0.1
    gnss_interval_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    time_limit_s: Positive = 3600.0


class Scenario(_Strict):
    scenario: ScenarioInfo
    intersections: list[IntersectionConfig] = Field(min_length=1)
    engines: list[EngineConfig] = Field(min_length=1)

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
            ic.program()
        except ValueError as exc:
            problems.append((f"intersections[{k}]", str(exc)))
    if problems:
        raise ConfigError(path, problems)
    return scen, dep
