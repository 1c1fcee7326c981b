"""One TOML file describes a deployment; pydantic validates it.

Paths in the file are relative to the file itself. An invalid file raises
:class:`ConfigError`, whose message names the file, the key path
(``controllers[2].adapter``) and what is wrong; the CLI turns it into exit
status 2. This module imports nothing of ours but the model: which adapters
are installed, and how to check their options, is passed in by the caller.

Every number is bounded by what a controller, a receiver or a street can have,
and the bound says why (:class:`Within`); NaN, infinity and ``true`` are never
numbers. Timings that depend on each other are checked together (the
``_relations`` validators). Files the deployment names must exist and be
readable; nothing here opens a connection.
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from preemption.kernel.errors import InputError

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
Seconds = Annotated[float, Field(gt=0, le=3600)]  # kept for importers; the keys below use Within
StrictInt = Annotated[int, Field(strict=True)]  # TOML's true is not 1
# One adapter's options -> (key path below ``options``, message) for each problem.
OptionsCheck = Callable[[Mapping[str, Any]], list[tuple[str, str]]]
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a whole city's deployment is a few hundred kB
PLANNER_TICK_S = 1.0  # the daemon's ticker: refreshes and time-outs happen on it
EPSG_HINT = (
    "give the EPSG code of a metric projected CRS, e.g. 25832 for ETRS89 / UTM 32N "
    "(western Germany) or 25833 for UTM 33N (eastern Germany), or omit epsg for the "
    "UTM zone of the routes"
)


@dataclass(frozen=True)
class Within:
    """Bounds of a number and why they are what they are: ``Annotated[float, Within(...)]``.

    Refuses booleans, strings, NaN and infinity, and anything outside
    ``lo``..``hi`` (``lo`` itself too when ``lo_open``), with a message that
    gives the range and the reason, so a person knows what to write instead.
    """

    lo: float
    hi: float
    unit: str
    why: str
    lo_open: bool = False
    integer: bool = False

    @property
    def span(self) -> str:
        low = f"above {self.lo:g} and up" if self.lo_open else f"{self.lo:g}"
        return f"{low} to {self.hi:g} {self.unit}".rstrip()

    def check(self, value: object) -> float:
        kind = "a whole number" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._refuse(f"{value!r} is not {kind} (write it without quotes)")
        if self.integer and not isinstance(value, int):
            self._refuse(f"{value!r} is not {kind}")
        if isinstance(value, float) and not math.isfinite(value):
            self._refuse(f"{value} is not {kind}")
        if not self.lo <= value <= self.hi or (self.lo_open and value == self.lo):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            self._refuse(f"{shown} {self.unit}".rstrip() + " is out of bounds")
        return value if self.integer else float(value)

    def _refuse(self, what: str) -> NoReturn:
        message = f"{what}; give {self.span}: {self.why}"
        raise PydanticCustomError("out_of_bounds", "{message}", {"message": message})

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        bound = "exclusiveMinimum" if self.lo_open else "minimum"
        kind = "integer" if self.integer else "number"
        return {"type": kind, bound: self.lo, "maximum": self.hi, "description": self.why}


def _relation(key: str, message: str) -> PydanticCustomError:
    """Two keys that contradict each other; ``key`` (relative to the model) is the one named."""
    return PydanticCustomError("relation", "{message}", {"key": key, "message": message})


def metric_crs_problem(code: int) -> str | None:
    """Why EPSG:``code`` cannot be the deployment's CRS, or None when it can."""
    from pyproj import CRS  # lazily: only deployments that set epsg pay for it
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_epsg(code)
    except CRSError:
        return f"EPSG:{code} does not exist (no such code in the EPSG registry); {EPSG_HINT}"
    if not crs.is_projected:
        units = sorted({a.unit_name for a in crs.axis_info})
        what = "degrees" if units == ["degree"] else ", ".join(units)
        return (
            f"EPSG:{code} ({crs.name}) is not a projected CRS: its coordinates are {what}, "
            f"not metres on a map; {EPSG_HINT}"
        )
    units = sorted({a.unit_name for a in crs.axis_info} - {"metre"})
    if units:
        return f"EPSG:{code} ({crs.name}) measures in {', '.join(units)}, not metres; {EPSG_HINT}"
    return None


EmergencySource = Literal["onboard", "dispatch"]
EMERGENCY_SOURCES: tuple[EmergencySource, ...] = ("onboard", "dispatch")


class _Strict(BaseModel):
    # allow_inf_nan: no float of a deployment may be NaN or infinite, bounded or not.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DeploymentInfo(_Strict):
    name: str = Field(min_length=1)
    epsg: StrictInt | None = Field(
        default=None, description="metric CRS for geometry; default: UTM zone of the routes"
    )

    @field_validator("epsg")
    @classmethod
    def _metric(cls, v: int | None) -> int | None:
        problem = None if v is None else metric_crs_problem(v)
        if problem:
            raise PydanticCustomError("crs", "{message}", {"message": problem})
        return v


class RoutesConfig(_Strict):
    files: list[Path] = Field(min_length=1)


# The bounds of the planner's keys and why they are there; error messages quote them.
_TRANSITION = Within(
    1,
    180,
    "s",
    (
        "the controller's worst case to green (intergreens, minimum greens, pedestrian clearance) "
        "takes at least a second and never longer than a whole cycle; 180 s would ask minutes ahead"
    ),
)
_LEAD = Within(
    0,
    60,
    "s",
    (
        "asked this much earlier still; more than a minute of margin holds a green for an engine "
        "that is not there yet"
    ),
)
_CLEARING = Within(
    0,
    200,
    "m",
    (
        "past the stop line until the junction counts as passed; beyond 200 m the green is held "
        "long after the engine is gone"
    ),
)
_MAX_HOLD = Within(
    10,
    300,
    "s",
    (
        "controllers end a pre-emption call after their maximum presence, typically 60 to 300 s, "
        "and a longer hold starves the cross traffic; under 10 s no call outlasts the transition "
        "to green"
    ),
)
_DEAD_MAN = Within(
    3,
    60,
    "s",
    (
        "receivers report once a second, so under 3 s two lost fixes take every request back; an "
        "engine unheard for a minute may be anywhere, and its junctions should not wait for it"
    ),
)
_ETA_UPDATE = Within(
    0.5,
    60,
    "s",
    (
        "an ETA that moved by more is sent again; below 0.5 s every fix's jitter is an update, "
        "above 60 s an ETA a minute wrong goes uncorrected"
    ),
)
_REFRESH = Within(
    1,
    60,
    "s",
    (
        "the request is re-sent this often; the planner ticks once a second, and the controller "
        "holds each call for eta + 2 x refresh_s, so above 60 s a dead daemon's call lingers "
        "for minutes"
    ),
)
_LOOK_AHEAD = Within(
    1,
    50,
    "signals",
    ("signals ahead that are considered: one at least, and 50 is more than any approach route has"),
    integer=True,
)
_SWITCH = Within(
    0,
    60,
    "s",
    (
        "an engine arriving this much earlier takes the junction over; with more than a minute "
        "it never would"
    ),
)
_TURNOUT = Within(
    0,
    600,
    "s",
    ("from the alarm to rolling out of the yard; ten minutes is far beyond any turnout"),
)
_STATION_SPEED = Within(
    1,
    30,
    "m/s",
    (
        "the speed assumed before the first fix; below 1 m/s every ETA is hours, above 30 m/s "
        "(108 km/h) no engine leaves a station"
    ),
)
_INCIDENT = Within(
    0,
    20_000,
    "m",
    ("from the route's end to the incident; 20 km is beyond any station's area"),
    lo_open=True,
)
_PROBABILITY = Within(
    0, 1, "", ("a probability of the route dispatch named, as the matcher gives it"), lo_open=True
)
_FIX_AGE = Within(
    0.5,
    30,
    "s",
    (
        "a position this old may not make a request; below 0.5 s normal link latency blocks "
        "every request, above 30 s the engine has moved 400 m since"
    ),
)
_OFF_DELAY = Within(
    0,
    30,
    "s",
    (
        "the blue lights must stay off this long to end the run; beyond 30 s junctions wait for "
        "an engine that has ended its run"
    ),
)
_RECOVERY = Within(
    0,
    60,
    "s",
    (
        "after a restart, a request left active waits this long for its engine; beyond a minute "
        "it holds a junction for nobody"
    ),
    lo_open=True,
)


class PlannerConfig(_Strict):
    """When to ask and when to take back (see docs/architecture.md)."""

    # controller's worst case to green, when a signal has none
    default_transition_s: Annotated[float, _TRANSITION] = 15.0
    lead_margin_s: Annotated[float, _LEAD] = 4.0  # asked this much earlier still
    clearing_distance_m: Annotated[float, _CLEARING] = 25.0  # past the stop line
    max_hold_s: Annotated[float, _MAX_HOLD] = 120.0  # no request lives longer
    dead_man_s: Annotated[float, _DEAD_MAN] = 15.0  # no position for this long: take all back
    eta_update_threshold_s: Annotated[float, _ETA_UPDATE] = 3.0
    refresh_s: Annotated[float, _REFRESH] = 20.0  # re-send before the controller's timer lapses
    look_ahead: Annotated[int, _LOOK_AHEAD] = 10  # signals ahead considered
    switch_margin_s: Annotated[float, _SWITCH] = 5.0  # earlier arrival that takes over
    turnout_s: Annotated[float, _TURNOUT] = 45.0  # alarm to rolling out of the yard
    station_speed_ms: Annotated[float, _STATION_SPEED] = 8.0  # assumed before the first fix
    emergency_sources: list[EmergencySource] = Field(
        default_factory=lambda: list(EMERGENCY_SOURCES), min_length=1
    )
    emergency_rule: Literal["any", "all"] = "any"  # of the sources above
    incident_radius_m: Annotated[float, _INCIDENT] = 1500.0  # route end to incident
    # Before the matcher commits, signals of the route dispatch named are asked for
    # while the matcher holds that route at least this likely (1.0: never).
    dispatch_confidence: Annotated[float, _PROBABILITY] = 0.5
    # ... and such requests are kept while the matcher, uncommitted, still gives that
    # route this much (hysteresis near a fork); below it, or once it commits to another
    # route, they are cancelled.
    dispatch_keep: Annotated[float, _PROBABILITY] = 0.2
    # A position older than this by its own time (a backlog after a link outage) may
    # complete or cancel a claim, never make a request; ETAs count from the fix's time.
    max_fix_age_s: Annotated[float, _FIX_AGE] = 5.0
    # The onboard emergency status must stay off this long before the run ends
    # (hysteresis: a bouncing blue-light contact does not toggle the junctions).
    emergency_off_delay_s: Annotated[float, _OFF_DELAY] = 3.0
    # After a restart, a request the previous process left active waits this long for
    # its vehicle to be heard on its run again (then it is re-asserted), else cancelled.
    recovery_grace_s: Annotated[float, _RECOVERY] = 10.0

    @model_validator(mode="after")
    def _relations(self) -> PlannerConfig:
        if self.dispatch_keep > self.dispatch_confidence:
            raise _relation(
                "dispatch_keep",
                f"dispatch_keep ({self.dispatch_keep}) must not exceed dispatch_confidence "
                f"({self.dispatch_confidence}): a request would be cancelled at once",
            )
        problems = planner_relations(self)
        if problems:
            raise _relation(*problems[0])
        return self


def planner_relations(cfg: PlannerConfig) -> list[tuple[str, str]]:
    """Timings that contradict each other; the controller holds a call for
    ``min(max_hold_left, eta_left + 2 * refresh_s)`` (decisions/planner.py ``_send``)."""
    problems = []
    if 2 * cfg.refresh_s > cfg.max_hold_s:
        problems.append(
            (
                "refresh_s",
                f"refresh_s ({cfg.refresh_s:g} s) must be at most half of max_hold_s "
                f"({cfg.max_hold_s:g} s): the controller holds each call for eta + 2 x refresh_s, "
                "and beyond half the maximum hold a dead daemon's call runs to the maximum hold "
                "instead of lapsing; lower refresh_s",
            )
        )
    if cfg.dead_man_s >= cfg.max_hold_s:
        problems.append(
            (
                "dead_man_s",
                f"dead_man_s ({cfg.dead_man_s:g} s) must be shorter than max_hold_s "
                f"({cfg.max_hold_s:g} s): else a silent engine's requests are never taken back "
                "for its silence; lower dead_man_s",
            )
        )
    ahead = cfg.default_transition_s + cfg.lead_margin_s
    if ahead >= cfg.max_hold_s:
        problems.append(
            (
                "max_hold_s",
                f"max_hold_s ({cfg.max_hold_s:g} s) must exceed default_transition_s + "
                f"lead_margin_s ({ahead:g} s): a request asked that long before the engine "
                "arrives would be taken back before the engine arrives; raise max_hold_s or "
                "lower the others",
            )
        )
    return problems


_RETENTION = Within(
    1,
    3650,
    "days",
    ("the journal is the audit trail of every request: kept a day at least, ten years at most"),
    integer=True,
)
_CALL_TIMEOUT = Within(
    0.1,
    30,
    "s",
    (
        "one adapter call; below 0.1 s no controller answers in time, above 30 s a hung "
        "controller holds up its own cancels that long"
    ),
)
_POLL = Within(
    0.2,
    10,
    "s",
    (
        "the state poll while a request is held; faster floods the controller, slower than 10 s "
        "misses the grant"
    ),
)
_RELEASE_POLL = Within(
    0,
    120,
    "s",
    ("polling after a cancel to see the call end; two minutes is longer than any exit sequence"),
)
_SHUTDOWN = Within(
    1,
    60,
    "s",
    (
        "at SIGTERM the cancels get this long to be confirmed; systemd kills a service after 90 s "
        "by default"
    ),
)
_BREAKER_FAILURES = Within(
    1,
    100,
    "failures",
    ("failures in a row that open a controller's breaker; one at least"),
    integer=True,
)
_BACKOFF = Within(
    0.1,
    600,
    "s",
    (
        "a wait before trying again; above 10 minutes a controller back from an outage, or a "
        "restarted task, is idle that long"
    ),
)
_FIX_QUEUE = Within(
    1,
    10_000,
    "fixes",
    ("per vehicle, the oldest dropped first; 10 000 is almost three hours at 1 Hz"),
    integer=True,
)
_IMPLIED_SPEED = Within(
    20,
    150,
    "m/s",
    (
        "faster between two fixes is a jump no engine makes; below 20 m/s (72 km/h) real runs "
        "would be dropped"
    ),
)


class ServiceConfig(_Strict):
    """The daemon process: journal, supervision, timeouts (docs/architecture.md)."""

    # SQLite journal of every command, answer and decision; relative to the deployment
    # file. Default: journal.sqlite in $STATE_DIRECTORY (systemd) or beside the file.
    journal: Path | None = None
    journal_retention_days: Annotated[int, _RETENTION] = 90
    call_timeout_s: Annotated[float, _CALL_TIMEOUT] = 2.0  # one adapter call
    poll_s: Annotated[float, _POLL] = 1.0  # state poll while a request is held
    # After a cancel, the controller is polled this long to see the call end.
    release_poll_s: Annotated[float, _RELEASE_POLL] = 10.0
    shutdown_timeout_s: Annotated[float, _SHUTDOWN] = 10.0  # SIGTERM: cancels confirmed
    breaker_failures: Annotated[int, _BREAKER_FAILURES] = 3  # in a row: the breaker opens
    breaker_min_s: Annotated[float, _BACKOFF] = 5.0  # first wait of an open breaker
    breaker_max_s: Annotated[float, _BACKOFF] = 60.0
    restart_min_s: Annotated[float, _BACKOFF] = 1.0  # a failed task's first restart
    restart_max_s: Annotated[float, _BACKOFF] = 60.0
    fix_queue: Annotated[int, _FIX_QUEUE] = 64  # per vehicle; the oldest is dropped
    # Faster than this between two fixes is a jump no engine makes (a spoofed or broken
    # position): dropped until the new track has held for several fixes.
    max_implied_speed_ms: Annotated[float, _IMPLIED_SPEED] = 60.0

    @model_validator(mode="after")
    def _ordered(self) -> ServiceConfig:
        if self.breaker_min_s > self.breaker_max_s:
            raise _relation(
                "breaker_min_s",
                f"breaker_min_s ({self.breaker_min_s:g} s) exceeds breaker_max_s "
                f"({self.breaker_max_s:g} s); the first wait cannot be longer than the longest",
            )
        if self.restart_min_s > self.restart_max_s:
            raise _relation(
                "restart_min_s",
                f"restart_min_s ({self.restart_min_s:g} s) exceeds restart_max_s "
                f"({self.restart_max_s:g} s); the first wait cannot be longer than the longest",
            )
        if self.shutdown_timeout_s < self.call_timeout_s:
            raise _relation(
                "shutdown_timeout_s",
                f"shutdown_timeout_s ({self.shutdown_timeout_s:g} s) is shorter than "
                f"call_timeout_s ({self.call_timeout_s:g} s): at SIGTERM not even one cancel "
                "could be answered; raise shutdown_timeout_s",
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


_TCP_PORT = Within(1, 65535, "", "a TCP port number", integer=True)
_RATE = Within(
    0,
    10_000,
    "x real time",
    ("the replay's pace against the recording's own clock; omit rate for as fast as possible"),
    lo_open=True,
)
_BAUD = Within(
    50,
    4_000_000,
    "baud",
    ("a serial line's speed; GNSS receivers use 4800 to 921600"),
    integer=True,
)
_FEED_RATE = Within(
    1,
    100,
    "Hz",
    (
        "fixes per vehicle and second of the fixes' own time (a backlog keeps its spacing); "
        "receivers send 1 to 20 Hz, more is a flood"
    ),
)
_FEED_BURST = Within(
    100,
    100_000,
    "messages",
    (
        "what one vehicle may send at once before its messages are dropped unread; an onboard "
        "unit drains its whole store-and-forward buffer (buffer_size, 600 by default) after an "
        "outage, so this must be larger than the fleet's buffer_size"
    ),
    integer=True,
)
_FEED_AGE = Within(
    0,
    300,
    "s",
    ("older positions are dropped; five minutes old is no position for a request"),
    lo_open=True,
)
_FEED_FUTURE = Within(
    0,
    60,
    "s",
    ("ahead of the centre's clock; a minute ahead is a clock that is wrong, not latency"),
)


class NmeaFileSource(_Strict):
    kind: Literal["nmea-file"]
    vehicle: Id
    path: Path
    rate: Annotated[float, _RATE] | None = Field(
        default=1.0, description="x real time; omit for fastest"
    )


class SerialSource(_Strict):
    """A receiver on a serial line of the centre's own machine (a test vehicle, a bench)."""

    kind: Literal["serial"]
    vehicle: Id
    device: str = Field(min_length=1)
    baudrate: Annotated[int, _BAUD] = 9600


class GpsdSource(_Strict):
    kind: Literal["gpsd"]
    vehicle: Id
    host: str = "127.0.0.1"
    port: Annotated[int, _TCP_PORT] = 2947
    device: str | None = None


class MqttFleetSource(_Strict):
    """The fleet's positions and emergency status from the central broker."""

    kind: Literal["mqtt"]
    host: str = Field(min_length=1)
    port: Annotated[int, _TCP_PORT] = 8883
    username: str | None = None
    password_file: Path | None = None
    tls: Annotated[bool, Field(strict=True)] = True
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    topic_prefix: str = "preemption/v1/vehicles"
    # Without TLS and credentials anyone on the network can publish as a fire engine;
    # the daemon refuses such a feed unless this is set (and says so at every start).
    insecure: Annotated[bool, Field(strict=True)] = False
    max_rate_hz: Annotated[float, _FEED_RATE] = 20.0  # fixes per vehicle and second of fix time
    # Messages one vehicle may send at once (refilled at 2 x max_rate_hz a second).
    arrival_burst: Annotated[int, _FEED_BURST] = 1500
    max_age_s: Annotated[float, _FEED_AGE] = 30.0  # older positions are dropped
    max_future_s: Annotated[float, _FEED_FUTURE] = 5.0  # ahead of the centre's clock


GpsSource = Annotated[
    NmeaFileSource | SerialSource | GpsdSource | MqttFleetSource, Field(discriminator="kind")
]


class Deployment(_Strict):
    deployment: DeploymentInfo
    routes: RoutesConfig
    planner: PlannerConfig = PlannerConfig()
    service: ServiceConfig = ServiceConfig()
    priorities: dict[str, StrictInt] = Field(
        default_factory=lambda: {"fire": 0, "ambulance": 1, "police": 2, "transit": 3},
        description="priority class -> rank; lower goes first",
    )
    vehicles: list[VehicleConfig] = Field(min_length=1)
    controllers: list[ControllerConfig] = Field(min_length=1)
    gps: list[GpsSource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _across_sections(self) -> Deployment:
        least = self.service.call_timeout_s + PLANNER_TICK_S
        if self.planner.refresh_s < least:
            raise _relation(
                "planner.refresh_s",
                f"refresh_s ({self.planner.refresh_s:g} s) must be at least service."
                f"call_timeout_s + the planner's tick ({least:g} s): the controller holds a "
                "call for eta + 2 x refresh_s, and a refresh that waits for the tick and "
                "the call's time-out would arrive after the call lapsed; raise refresh_s or "
                "lower call_timeout_s",
            )
        return self

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
    """A TOML file's table; ConfigError (never a traceback) for whatever it holds."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(path, [("", _too_large(size))])
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, [("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(path, [("", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [("", _not_utf8(exc))]) from None
    except RecursionError:
        msg = "nested too deeply to read (arrays or tables inside each other thousands deep)"
        raise ConfigError(path, [("", f"{msg}; a deployment needs three levels at most")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [("", f"not valid TOML: {exc}")]) from None


def _too_large(size: int) -> str:
    return (
        f"{size / 2**20:.0f} MiB is too large for a configuration file (limit "
        f"{MAX_CONFIG_BYTES // 2**20} MiB; a whole city's deployment is a few hundred kB): "
        "is this the right file?"
    )


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return (
        f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); TOML "
        "files are UTF-8: save the file as UTF-8, or check that it is the right file"
    )


# Extra words for the type errors of some keys (pydantic's own say only the type).
_HINTS = {"deployment.epsg": EPSG_HINT}


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
        elif err["type"] == "relation":
            key = str(err.get("ctx", {}).get("key", ""))
            loc = f"{loc}.{key}" if loc and key else loc or key
        hint = _HINTS.get(loc)
        if hint and hint not in msg:
            msg = f"{msg}; {hint}"
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


# The files a [[gps]] source may name, and what each is for the person reading the error.
_SOURCE_FILES = {
    "path": "NMEA recording",
    "password_file": "password file",
    "tls_ca": "CA certificate",
    "tls_cert": "client certificate",
    "tls_key": "client key",
}


def file_problem(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read as ``what`` (a stat and an access check), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return (
            f"{path} does not exist (the {what} of this [[gps]] source); create it or correct "
            "the path (relative paths are relative to the deployment file)"
        )
    except OSError as exc:
        return f"cannot look at {path} (the {what}): {exc.strerror}; check the path"
    if stat.S_ISDIR(mode):
        return f"{path} is a directory, not the {what}; name the file itself"
    if not os.access(path, os.R_OK):
        return (
            f"{path} (the {what}) is not readable by this user; give the daemon's user read "
            "permission"
        )
    return None


def _file_problems(dep: Deployment) -> list[tuple[str, str]]:
    problems = []
    for i, g in enumerate(dep.gps):
        for key, what in _SOURCE_FILES.items():
            value = getattr(g, key, None)
            if isinstance(value, Path) and (problem := file_problem(value, what)):
                problems.append((f"gps[{i}].{key}", problem))
    return problems


def _options_problems(
    dep: Deployment, adapters: Collection[str] | Mapping[str, OptionsCheck] | None
) -> list[tuple[str, str]]:
    """Each controller's options against its adapter's model, when the caller gave the checks."""
    if not isinstance(adapters, Mapping):
        return []
    problems: list[tuple[str, str]] = []
    for i, c in enumerate(dep.controllers):
        check = adapters.get(c.adapter)
        if not callable(check):
            continue
        try:
            found = check(c.options)
        except InputError as exc:  # the adapter's package cannot be loaded
            problems.append((f"controllers[{i}].adapter", str(exc)))
            continue
        problems += [
            (f"controllers[{i}].options" + (f".{key}" if key else ""), msg) for key, msg in found
        ]
    return problems


def load_config(
    path: Path | str, adapters: Collection[str] | Mapping[str, OptionsCheck] | None = None
) -> Deployment:
    """Read and validate a deployment file; relative paths become absolute.

    ``adapters`` is the set of installed adapter names; None skips that check. A
    mapping of names to :data:`OptionsCheck` (``signal_adapters.registry.option_checks()``)
    also checks each controller's options against its adapter's model.
    """
    path = Path(path)
    data = read_toml(path)
    try:
        dep = Deployment.model_validate(data, context={"adapters": adapters})
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None
    problems = cross_check(dep) + _options_problems(dep, adapters)
    if problems:
        raise ConfigError(path, problems)
    base = path.parent
    routes = RoutesConfig(files=[base / f for f in dep.routes.files])
    gps = [_resolve_paths(g, base) for g in dep.gps]
    service = dep.service.model_copy(update={"journal": journal_path(dep.service, base)})
    dep = dep.model_copy(update={"routes": routes, "gps": gps, "service": service})
    problems = _file_problems(dep)
    if problems:
        raise ConfigError(path, problems)
    return dep


def journal_path(service: ServiceConfig, base: Path) -> Path:
    """Where the journal lives: as configured (relative to ``base``), else journal.sqlite in
    systemd's $STATE_DIRECTORY, else beside the deployment file."""
    if service.journal is not None:
        return base / service.journal
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or base) / "journal.sqlite"
