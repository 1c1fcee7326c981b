"""The build spec (``routes.build.toml``): what ``preemption routes build`` builds, reproducibly.

Paths are relative to the spec file. docs/routes.md ("Building routes from a
road network") describes every key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from preemption.kernel.errors import InputError

Lon = Annotated[float, Field(ge=-180, le=180)]
Lat = Annotated[float, Field(ge=-90, le=90)]
RouteId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.:\-]*$")]


class BuildSpecError(InputError):
    """A build spec is unusable; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Place(_Strict):
    """A point on the network: lon/lat snapped to the nearest drivable street, or an edge id."""

    lon: Lon | None = None
    lat: Lat | None = None
    edge: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if getattr(self, "district", None):
            return self  # a target may be a district instead (TargetSpec checks it)
        if self.edge is None and (self.lon is None or self.lat is None):
            raise ValueError("give lon and lat, or the SUMO edge id as 'edge'")
        return self


class NetworkSpec(_Strict):
    file: Path
    vclass: str = "emergency"
    snap_radius_m: Annotated[float, Field(gt=0, le=500)] = 60.0


class StationSpec(Place):
    id: str = Field(min_length=1)
    name: str = ""


class TargetSpec(Place):
    id: RouteId
    name: str = ""
    via: list[tuple[Lon, Lat]] = Field(default_factory=list, description="waypoints [lon, lat]")
    via_edges: list[str] = Field(default_factory=list, description="edges the route must use")
    vehicle: str | None = None  # the engine that drives it in the scenario
    speed_limit_kmh: Annotated[float, Field(gt=0, le=130)] | None = None
    district: list[tuple[Lon, Lat]] = Field(
        default_factory=list,
        description="a district's outline [lon, lat], ...: the route ends where it enters it",
    )

    @model_validator(mode="after")
    def _district_alone(self) -> Self:
        if self.district:
            if self.edge is not None or self.lon is not None or self.lat is not None:
                raise ValueError("a target is a point, an edge or a district, not several")
            if len(self.district) < 3:
                raise ValueError("a district needs at least 3 corners [lon, lat]")
        return self


class SignalSpec(_Strict):
    program: str | None = None  # SUMO programID; None: the first; "all": chain every program
    max_green_s: Annotated[float, Field(gt=0, le=300)] | None = None
    id_prefix: str = "K"
    names: dict[str, str] = Field(default_factory=dict, description="SUMO TL id -> intersection")


class VehicleSpec(_Strict):
    id: str = Field(min_length=1)
    name: str = ""
    priority: str = "fire"


class DeploymentSpec(_Strict):
    name: str = Field(min_length=1)
    adapter: str = "log"
    epsg: int | None = None
    vehicles: list[VehicleSpec] = Field(min_length=1)


class DemandSpec(_Strict):
    """Background traffic written into the scenario for every signalised junction."""

    route_veh_h: Annotated[float, Field(ge=0, le=3600)] = 450.0  # the routes' own approaches
    other_veh_h: Annotated[float, Field(ge=0, le=3600)] = 300.0  # every other approach
    # No approach gets more than this share of what its green can serve (1800 veh/h
    # of green): the programs are netconvert's, and an oversaturated approach would
    # queue without end.
    max_saturation: Annotated[float, Field(gt=0, le=1.0)] = 0.7


class ScenarioSpec(_Strict):
    name: str = Field(min_length=1)
    demand: DemandSpec | None = None
    start_utc: str = "2026-11-28T08:00:00Z"
    depart_s: Annotated[float, Field(ge=0)] = 10.0
    spacing_s: Annotated[float, Field(ge=0)] = 600.0  # between the engines' departures


class OutputSpec(_Strict):
    routes: Path = Path("routes.geojson")
    deployment: Path = Path("deployment.toml")
    programs: Path = Path("programs.toml")  # [[intersections]] only, when no [scenario]
    scenario: Path = Path("scenario.toml")


class BuildSpec(_Strict):
    network: NetworkSpec
    station: StationSpec
    targets: list[TargetSpec] = Field(min_length=1)
    signals: SignalSpec = SignalSpec()
    deployment: DeploymentSpec
    scenario: ScenarioSpec | None = None
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [t.id for t in self.targets]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"target ids must be unique; repeated: {', '.join(dup)}")
        vehicles = {v.id for v in self.deployment.vehicles}
        for t in self.targets:
            if t.vehicle is not None and t.vehicle not in vehicles:
                raise ValueError(f"target {t.id!r}: vehicle {t.vehicle!r} is not in [deployment]")
        return self


def load_spec(path: Path | str) -> tuple[BuildSpec, Path]:
    """The spec and the directory its relative paths start from."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise BuildSpecError(f"{path}: build spec not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BuildSpecError(f"{path}: not readable as TOML: {exc}") from None
    try:
        spec = BuildSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = "required key is missing"
            elif err["type"] == "extra_forbidden":
                msg = "unknown key (misspelt, or not valid here)"
            lines.append(f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}")
        raise BuildSpecError("\n".join(lines)) from None
    return spec, path.parent
