"""The contracts between the parts: plain, frozen data in SI units.

Time: every timestamp in these types is UTC as float seconds since the Unix
epoch (``time.time()`` style). One choice everywhere: floats are cheap on the
hot path (the matcher and planner run for every fix) and unambiguous once the
unit is fixed. Durations and ETAs are seconds, distances metres, speeds m/s,
angles degrees true. Positions are WGS84 degrees.

This module imports nothing of ours: routes/, gps/ and signal_adapters/ meet
only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class FixQuality(IntEnum):
    """GNSS fix quality, numbered as the NMEA GGA quality indicator."""

    INVALID = 0
    GPS = 1
    DGPS = 2
    PPS = 3
    RTK = 4
    FLOAT_RTK = 5
    ESTIMATED = 6  # dead reckoning
    MANUAL = 7
    SIMULATED = 8


@dataclass(frozen=True, slots=True)
class Fix:
    """One position of one vehicle at one instant."""

    vehicle: str
    time: float  # UTC epoch seconds
    lat: float  # WGS84 degrees
    lon: float  # WGS84 degrees
    speed: float | None  # speed over ground, m/s
    course: float | None  # course over ground, degrees true [0, 360)
    hdop: float | None
    quality: FixQuality
    source: str  # name of the input that produced it (device, topic, file)
    satellites: int | None = None


@dataclass(frozen=True, slots=True)
class SignalPoint:
    """A signalised intersection on a route, seen from the engine's approach."""

    intersection: str  # intersection id, unique within a deployment
    controller: str  # id of the controller that serves it (one may serve several)
    stop_line_m: float  # distance of the stop line along the route
    approach: str  # as the controller knows it: preempt number, approach, signal group
    transition_s: float | None = None  # worst-case time to green; None = deployment default
    lon: float | None = None  # stop line position, WGS84
    lat: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A main approach route from a fire station, with its signals in driving order."""

    id: str
    name: str
    station: str
    geometry: tuple[tuple[float, float], ...]  # (lon, lat) vertices, GeoJSON order
    signals: tuple[SignalPoint, ...]
    speed_limit: float | None = None  # m/s along the whole route, when the file says so


@dataclass(frozen=True, slots=True)
class SignalEta:
    """When the vehicle is expected at one signal ahead, with a band."""

    intersection: str
    controller: str
    approach: str
    distance_m: float  # remaining distance to the stop line along the route
    eta_s: float  # expected seconds from the position's time to the stop line
    early_s: float  # early bound, <= eta_s
    late_s: float  # late bound, >= eta_s
    shared: bool = True  # on every compatible route (may be requested before commitment)


@dataclass(frozen=True, slots=True)
class RoutePosition:
    """Where a vehicle is on the approach routes, as the matcher sees it."""

    vehicle: str
    time: float  # UTC epoch seconds of the fix it was made from
    compatible: Mapping[str, float]  # route id -> probability, summing to 1 when non-empty
    committed: str | None  # route id once its probability has passed the threshold
    route: str | None  # the route distance_m refers to: committed, else most probable
    distance_m: float  # along `route`
    speed: float  # m/s along the route
    offset_m: float  # lateral offset from the route centre line, left positive
    confidence: float  # 0..1
    on_route: bool  # False once the vehicle has left the routes or turned around
    etas: tuple[SignalEta, ...] = ()  # signals ahead, in driving order


class CommandKind(StrEnum):
    REQUEST = "request"
    UPDATE = "update"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Command:
    """What the planner asks of one controller for one vehicle at one intersection."""

    kind: CommandKind
    request_id: str  # stable over request -> updates -> cancel
    vehicle: str
    intersection: str
    controller: str
    approach: str
    time: float  # UTC epoch seconds when issued
    eta_s: float  # expected arrival, seconds after `time`
    duration_s: float  # how long the request may be held from now (the controller's timeout)
    priority: str  # priority class: fire, ambulance, police, transit ...
    reason: str = ""  # why: for the journal and the operator


class PreemptStatus(StrEnum):
    """Pre-emption status as a controller reports it (NTCIP 1202 preemptState, widened)."""

    UNKNOWN = "unknown"
    REQUESTED = "requested"  # call received, not yet acted upon (delay)
    ENTERING = "entering"  # ending conflicting greens: yellow, all-red, track clearance
    ACTIVE = "active"  # dwell: the requested approach shows green
    EXITING = "exiting"  # returning to the signal plan
    NOT_ACTIVE = "not_active"
    REJECTED = "rejected"
    MAX_PRESENCE = "max_presence"  # held longer than the controller allows
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class SignalState:
    """What a controller says about pre-emption at one intersection."""

    intersection: str
    controller: str
    status: PreemptStatus
    time: float  # UTC epoch seconds of the report
    approach: str | None = None
    request_id: str | None = None
    detail: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
