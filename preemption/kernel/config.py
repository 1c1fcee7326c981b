"""One TOML file describes a deployment; pydantic validates it.

Paths in the file are relative to the file itself. An invalid file raises
:class:`ConfigError`, whose message names the file, the key path
(``controllers[2].adapter``) and what is wrong; the CLI turns it into exit
status 2. This module imports nothing of ours but the model: which adapters
are installed is passed in by the caller.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from preemption.kernel.errors import InputError

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
Seconds = Annotated[float, Field(gt=0, le=3600)]
EmergencySource = Literal["onboard", "dispatch"]
EMERGENCY_SOURCES: tuple[EmergencySource, ...] = ("onboard", "dispatch")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentInfo(_Strict):
    name: str = Field(min_length=1)
    epsg: int | None = Field(
        default=None, description="metric CRS for geometry; default: UTM zone of the routes"
    )


class RoutesConfig(_Strict):
    files: list[Path] = Field(min_length=1)


class PlannerConfig(_Strict):
    """When to ask and when to take back (see docs/architecture.md)."""

    default_transition_s: Seconds = 15.0  # controller's worst case to green, when a signal has none
    lead_margin_s: Annotated[float, Field(ge=0, le=60)] = 4.0  # asked this much earlier still
    clearing_distance_m: Annotated[float, Field(ge=0, le=200)] = 25.0  # past the stop line
    max_hold_s: Seconds = 120.0  # no request lives longer
    dead_man_s: Seconds = 15.0  # no position for this long: take everything back
    eta_update_threshold_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    refresh_s: Seconds = 20.0  # re-send before the controller's own timer lapses
    look_ahead: Annotated[int, Field(ge=1, le=50)] = 10  # signals ahead considered
    switch_margin_s: Annotated[float, Field(ge=0, le=60)] = 5.0  # earlier arrival that takes over
    turnout_s: Annotated[float, Field(ge=0, le=600)] = 45.0  # alarm to rolling out of the yard
    station_speed_ms: Annotated[float, Field(gt=0, le=30)] = 8.0  # assumed before the first fix
    emergency_sources: list[EmergencySource] = Field(
        default_factory=lambda: list(EMERGENCY_SOURCES), min_length=1
    )
    emergency_rule: Literal["any", "all"] = "any"  # of the sources above
    incident_radius_m: Annotated[float, Field(gt=0, le=20_000)] = 1500.0  # route end to incident
    # Before the matcher commits, signals of the route dispatch named are asked for
    # while the matcher holds that route at least this likely (1.0: never).
    dispatch_confidence: Annotated[float, Field(gt=0, le=1)] = 0.5
    # ... and such requests are kept while the matcher, uncommitted, still gives that
    # route this much (hysteresis near a fork); below it, or once it commits to another
    # route, they are cancelled.
    dispatch_keep: Annotated[float, Field(gt=0, le=1)] = 0.2
    # A position older than this by its own time (a backlog after a link outage) may
    # complete or cancel a claim, never make a request; ETAs count from the fix's time.
    max_fix_age_s: Annotated[float, Field(gt=0, le=30)] = 5.0
    # The onboard emergency status must stay off this long before the run ends
    # (hysteresis: a bouncing blue-light contact does not toggle the junctions).
    emergency_off_delay_s: Annotated[float, Field(ge=0, le=30)] = 3.0
    # After a restart, a request the previous process left active waits this long for
    # its vehicle to be heard on its run again (then it is re-asserted), else cancelled.
    recovery_grace_s: Annotated[float, Field(gt=0, le=60)] = 10.0

    @model_validator(mode="after")
    def _keep_below_ask(self) -> PlannerConfig:
        if self.dispatch_keep > self.dispatch_confidence:
            raise ValueError(
                f"dispatch_keep ({self.dispatch_keep}) must not exceed dispatch_confidence "
                f"({self.dispatch_confidence}): a request would be cancelled at once"
            )
        return self


class ServiceConfig(_Strict):
    """The daemon process: journal, supervision, timeouts (docs/architecture.md)."""

    # SQLite journal of every command, answer and decision; relative to the deployment
    # file. Default: journal.sqlite in $STATE_DIRECTORY (systemd) or beside the file.
    journal: Path | None = None
    journal_retention_days: Annotated[int, Field(ge=1, le=3650)] = 90
    call_timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0  # one adapter call
    poll_s: Annotated[float, Field(ge=0.2, le=10)] = 1.0  # state poll while a request is held
    # After a cancel, the controller is polled this long to see the call end.
    release_poll_s: Annotated[float, Field(ge=0, le=120)] = 10.0
    shutdown_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0  # SIGTERM: cancels confirmed
    breaker_failures: Annotated[int, Field(ge=1, le=100)] = 3  # in a row: the breaker opens
    breaker_min_s: Annotated[float, Field(gt=0, le=600)] = 5.0  # first wait of an open breaker
    breaker_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    restart_min_s: Annotated[float, Field(gt=0, le=600)] = 1.0  # a failed task's first restart
    restart_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    fix_queue: Annotated[int, Field(ge=1, le=10_000)] = 64  # per vehicle; the oldest is dropped
    # Faster than this between two fixes is a jump no engine makes (a spoofed or broken
    # position): dropped until the new track has held for several fixes.
    max_implied_speed_ms: Annotated[float, Field(ge=20, le=150)] = 60.0

    @model_validator(mode="after")
    def _ordered(self) -> ServiceConfig:
        if self.breaker_min_s > self.breaker_max_s:
            raise ValueError(
                f"breaker_min_s ({self.breaker_min_s}) exceeds breaker_max_s ({self.breaker_max_s})"
            )
        if self.restart_min_s > self.restart_max_s:
            raise ValueError(
                f"restart_min_s ({self.restart_min_s}) exceeds restart_max_s ({self.restart_max_s})"
            )
        return self


class VehicleConfig(_Strict):
    id: Id
    name: str = ""
    priority: str = "fire"


class ControllerConfig(_Strict):
    id: Id
    adapter: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("adapter")
    @classmethod
    def _adapter_installed(cls, v: str, info: ValidationInfo) -> str:
        known: Collection[str] | None = (info.context or {}).get("adapters")
        if known is not None and v not in known:
            have = ", ".join(sorted(known)) or "none"
            raise ValueError(
                f"unknown adapter {v!r}; installed adapters: {have} "
                "(a vendor adapter needs its package installed)"
            )
        return v


class NmeaFileSource(_Strict):
    kind: Literal["nmea-file"]
    vehicle: Id
    path: Path
    rate: float | None = Field(default=1.0, gt=0, description="x real time; omit for fastest")


class SerialSource(_Strict):
    """A receiver on a serial line of the centre's own machine (a test vehicle, a bench)."""

    kind: Literal["serial"]
    vehicle: Id
    device: str = Field(min_length=1)
    baudrate: int = Field(default=9600, gt=0)


class GpsdSource(_Strict):
    kind: Literal["gpsd"]
    vehicle: Id
    host: str = "127.0.0.1"
    port: int = Field(default=2947, gt=0, lt=65536)
    device: str | None = None


class MqttFleetSource(_Strict):
    """The fleet's positions and emergency status from the central broker."""

    kind: Literal["mqtt"]
    host: str = Field(min_length=1)
    port: int = Field(default=8883, gt=0, lt=65536)
    username: str | None = None
    password_file: Path | None = None
    tls: bool = True
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    topic_prefix: str = "preemption/v1/vehicles"
    # Without TLS and credentials anyone on the network can publish as a fire engine;
    # the daemon refuses such a feed unless this is set (and says so at every start).
    insecure: bool = False
    max_rate_hz: Annotated[float, Field(ge=1, le=100)] = 20.0  # messages per vehicle and second
    max_age_s: Annotated[float, Field(gt=0, le=300)] = 30.0  # older positions are dropped
    max_future_s: Annotated[float, Field(ge=0, le=60)] = 5.0  # ahead of the centre's clock


GpsSource = Annotated[
    NmeaFileSource | SerialSource | GpsdSource | MqttFleetSource, Field(discriminator="kind")
]


class Deployment(_Strict):
    deployment: DeploymentInfo
    routes: RoutesConfig
    planner: PlannerConfig = PlannerConfig()
    service: ServiceConfig = ServiceConfig()
    priorities: dict[str, int] = Field(
        default_factory=lambda: {"fire": 0, "ambulance": 1, "police": 2, "transit": 3},
        description="priority class -> rank; lower goes first",
    )
    vehicles: list[VehicleConfig] = Field(min_length=1)
    controllers: list[ControllerConfig] = Field(min_length=1)
    gps: list[GpsSource] = Field(default_factory=list)

    def controller(self, controller_id: str) -> ControllerConfig:
        for c in self.controllers:
            if c.id == controller_id:
                return c
        raise KeyError(controller_id)


def cross_check(dep: Deployment) -> list[tuple[str, str]]:
    """References between sections: unique ids, known vehicles and priority classes."""
    problems: list[tuple[str, str]] = []
    for section, ids in (
        ("vehicles", [v.id for v in dep.vehicles]),
        ("controllers", [c.id for c in dep.controllers]),
    ):
        seen: set[str] = set()
        for i, x in enumerate(ids):
            if x in seen:
                problems.append((f"{section}[{i}].id", f"{x!r} is defined twice"))
            seen.add(x)
    for i, v in enumerate(dep.vehicles):
        if v.priority not in dep.priorities:
            problems.append(
                (
                    f"vehicles[{i}].priority",
                    f"{v.priority!r} is not a priority class; known: {', '.join(dep.priorities)}",
                )
            )
    known = {v.id for v in dep.vehicles}
    for i, g in enumerate(dep.gps):
        if not isinstance(g, MqttFleetSource) and g.vehicle not in known:
            problems.append(
                (f"gps[{i}].vehicle", f"{g.vehicle!r} is not in [[vehicles]] (the allow-list)")
            )
    return problems


class ConfigError(InputError):
    """A configuration file is unusable. ``problems`` are (key path, message) pairs."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


def format_loc(loc: Sequence[int | str]) -> str:
    """('controllers', 2, 'adapter') -> 'controllers[2].adapter'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, [("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(path, [("", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [("", f"not valid TOML: {exc}")]) from None


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        # The discriminator's tag ("nmea-file") is not a key the user wrote.
        loc = format_loc([p for p in err["loc"] if p not in _SOURCE_KINDS])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt, or not valid here)"
        problems.append((loc, msg))
    return problems


_SOURCE_KINDS = {"nmea-file", "serial", "gpsd", "mqtt"}


def _resolve_paths(source: GpsSourceConfig, base: Path) -> GpsSourceConfig:
    """Relative file paths in a source are relative to the deployment file."""
    update = {
        name: base / value
        for name in ("path", "password_file", "tls_ca", "tls_cert", "tls_key")
        if isinstance(value := getattr(source, name, None), Path)
    }
    return source.model_copy(update=update) if update else source


GpsSourceConfig = NmeaFileSource | SerialSource | GpsdSource | MqttFleetSource


def load_config(path: Path | str, adapters: Collection[str] | None = None) -> Deployment:
    """Read and validate a deployment file; relative paths become absolute.

    ``adapters`` is the set of installed adapter names; None skips that check.
    """
    path = Path(path)
    data = read_toml(path)
    try:
        dep = Deployment.model_validate(data, context={"adapters": adapters})
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None
    problems = cross_check(dep)
    if problems:
        raise ConfigError(path, problems)
    base = path.parent
    routes = RoutesConfig(files=[base / f for f in dep.routes.files])
    gps = [_resolve_paths(g, base) for g in dep.gps]
    service = dep.service.model_copy(update={"journal": journal_path(dep.service, base)})
    return dep.model_copy(update={"routes": routes, "gps": gps, "service": service})


def journal_path(service: ServiceConfig, base: Path) -> Path:
    """Where the journal lives: as configured (relative to ``base``), else journal.sqlite in
    systemd's $STATE_DIRECTORY, else beside the deployment file."""
    if service.journal is not None:
        return base / service.journal
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or base) / "journal.sqlite"
