"""The JSON messages an onboard unit publishes, and their strict decoding.

Three messages, all UTF-8 JSON objects with exactly the keys listed (key order
as written; no other keys, no duplicate keys, no NaN or Infinity):

* position, one per fix::

    {"v": 1, "vehicle": "FW-OST-HLF1", "time": 1764331200.5,
     "lat": 49.4871, "lon": 8.4661, "speed": 13.9, "course": 92.5,
     "hdop": 0.9, "quality": 1, "satellites": 9, "seq": 1234}

  ``time`` UTC epoch seconds; ``speed`` m/s or null; ``course`` degrees true
  in [0, 360) or null; ``hdop`` > 0 or null; ``quality`` the GGA fix quality
  (1..8; 0 means no fix and is never sent); ``satellites`` or null; ``seq`` the
  per-vehicle sequence number, counting up from 0 at each start of the unit.

* status, the emergency-run status (published retained)::

    {"v": 1, "vehicle": "FW-OST-HLF1", "time": 1764331200.0,
     "emergency": true, "source": "blue_lights", "seq": 3}

  ``source`` is ``blue_lights``, ``dispatch`` or ``config``; ``time`` is when
  the unit observed the status, on the unit's own clock; ``seq`` counts the
  unit's statuses up from 0 at each start of the unit. ``seq`` is optional:
  units older than it send the first five keys only, and both forms are read.

* link, whether the unit is connected (retained; the offline one is also the
  unit's MQTT last will, which the broker sends at an unknown moment, so its
  ``time`` is null)::

    {"v": 1, "vehicle": "FW-OST-HLF1", "online": false, "time": null}

Decoding takes untrusted bytes and never raises: it returns the message or a
:class:`Rejected` with a stable reason from :data:`DROP_REASONS`. No message
that decodes can make a :class:`~preemption.kernel.model.Fix` with invalid values: the
rules are those of ``gps/nmea.py`` (coordinates finite, in range and not 0,0;
speed None or 0..100 m/s; course None or [0, 360); hdop None or finite > 0).

:class:`PositionReader` adds what needs state and a clock: too old, from the
future, replayed or duplicated sequence numbers, fixes closer together than
the rate allows, and the order of statuses (see :meth:`PositionReader.status`:
an "off" is never dropped for its time or order).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gps.validity import (
    MAX_SPEED_MS,
    plausible_hdop,
    plausible_satellites,
    position_problem,
)
from preemption.kernel.clock import Clock
from preemption.kernel.model import Fix, FixQuality

__all__ = [
    "DEFAULT_MAX_RATE_HZ",
    "DROP_REASONS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SPEED_MS",
    "SCHEMA_VERSION",
    "VEHICLE_ID",
    "LinkMessage",
    "PositionMessage",
    "PositionReader",
    "Rejected",
    "StatusMessage",
    "StatusSource",
    "check_vehicle_id",
    "decode_link",
    "decode_position",
    "decode_status",
    "fix_problem",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 2048  # a position is ~220 bytes; anything this big is not ours
MAX_SEQ: Final = 2**63 - 1
# Plausible fix times: a receiver without almanac or with a week-rollover bug
# reports 1980 or 1999/2019 dates; nothing before 2000 or after 2100 is real.
MIN_TIME: Final = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_TIME: Final = 4_102_444_800.0  # 2100-01-01T00:00:00Z
DEFAULT_MAX_RATE_HZ: Final = 20.0  # fixes per second of fix time; receivers give 1 to 10 (20)
# Fix times are the receiver's, to the hundredth of a second: a 20 Hz receiver's
# fixes 0.05 s apart must not fail a 0.05 s spacing by a float's rounding.
RATE_TOLERANCE_S: Final = 0.001

# A vehicle id is one MQTT topic level: no '/', '+', '#', no spaces or controls.
VEHICLE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

DROP_REASONS: Final = frozenset(
    {
        "bad_json",  # not UTF-8, not JSON, NaN/Infinity, duplicate keys
        "too_large",  # payload above MAX_PAYLOAD_BYTES
        "wrong_schema",  # not an object, keys missing or extra, wrong types
        "unsupported_version",  # "v" is an integer other than SCHEMA_VERSION
        "vehicle_mismatch",  # the vehicle in the payload is not the one in the topic
        "impossible_time",  # not finite, or before 2000 / after 2100
        "impossible_coordinates",  # out of range, not finite, or exactly 0,0
        "impossible_speed",  # negative, not finite, or above MAX_SPEED_MS
        "impossible_value",  # course outside [0, 360), hdop <= 0, satellite count absurd
        "no_fix",  # quality 0 (invalid)
        "too_old",  # a position older than the reader's max_age_s
        "from_future",  # a position, or a status ON, later than now plus max_future_s
        # A position whose sequence number and time are both not after the last accepted;
        # a status ON whose sequence number is not after the last status's.
        "duplicate",
        # A position with a newer sequence number but a time not after the last accepted;
        # a status ON without sequence number timed before the last status.
        "time_backwards",
        "too_frequent",  # a position less than 1/max_rate_hz of fix time after the last
    }
)

_POSITION_KEYS: Final = (
    "v",
    "vehicle",
    "time",
    "lat",
    "lon",
    "speed",
    "course",
    "hdop",
    "quality",
    "satellites",
    "seq",
)
_STATUS_KEYS: Final = ("v", "vehicle", "time", "emergency", "source")
_STATUS_OPTIONAL_KEYS: Final = ("seq",)  # absent from units that predate it
_LINK_KEYS: Final = ("v", "vehicle", "online", "time")


class StatusSource(StrEnum):
    """Where the onboard unit takes the emergency-run status from."""

    BLUE_LIGHTS = "blue_lights"  # a contact on the blue-light switch
    DISPATCH = "dispatch"  # the dispatch system's alarm for this vehicle
    CONFIG = "config"  # a fixed value from the unit's configuration


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a payload was dropped: ``reason`` from DROP_REASONS, ``detail`` for the log."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PositionMessage:
    vehicle: str
    time: float
    lat: float
    lon: float
    speed: float | None
    course: float | None
    hdop: float | None
    quality: FixQuality
    satellites: int | None
    seq: int

    @classmethod
    def from_fix(cls, fix: Fix, seq: int, vehicle: str | None = None) -> PositionMessage:
        """The message for a valid ``fix``; ValueError naming the problem if it is not valid."""
        problem = fix_problem(fix)
        if problem is not None:
            raise ValueError(
                f"fix of {fix.vehicle!r} at {fix.time!r} cannot be sent: {problem.reason} "
                f"({problem.detail}); drop it before encoding"
            )
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"sequence number must be an int in 0..2**63-1, not {seq!r}")
        name = fix.vehicle if vehicle is None else vehicle
        if not VEHICLE_ID.fullmatch(name):
            raise ValueError(check_vehicle_id(name))
        return cls(
            vehicle=name,
            time=float(fix.time),
            lat=float(fix.lat),
            lon=float(fix.lon),
            speed=None if fix.speed is None else float(fix.speed),
            course=None if fix.course is None else float(fix.course),
            hdop=None if fix.hdop is None else float(fix.hdop),
            quality=FixQuality(int(fix.quality)),
            satellites=fix.satellites,
            seq=seq,
        )

    def to_fix(self, source: str) -> Fix:
        return Fix(
            vehicle=self.vehicle,
            time=self.time,
            lat=self.lat,
            lon=self.lon,
            speed=self.speed,
            course=self.course,
            hdop=self.hdop,
            quality=self.quality,
            source=source,
            satellites=self.satellites,
        )

    def encode(self) -> bytes:
        return _dump(
            {
                "v": SCHEMA_VERSION,
                "vehicle": self.vehicle,
                "time": self.time,
                "lat": self.lat,
                "lon": self.lon,
                "speed": self.speed,
                "course": self.course,
                "hdop": self.hdop,
                "quality": int(self.quality),
                "satellites": self.satellites,
                "seq": self.seq,
            }
        )


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """The emergency status of one vehicle; ``seq`` None for a unit that sends none."""

    vehicle: str
    time: float
    emergency: bool
    source: StatusSource
    seq: int | None = None

    def encode(self) -> bytes:
        obj: dict[str, object] = {
            "v": SCHEMA_VERSION,
            "vehicle": self.vehicle,
            "time": self.time,
            "emergency": self.emergency,
            "source": self.source.value,
        }
        if self.seq is not None:
            obj["seq"] = self.seq
        return _dump(obj)


@dataclass(frozen=True, slots=True)
class LinkMessage:
    vehicle: str
    online: bool
    time: float | None  # None in the last will: the broker sends it at an unknown moment

    def encode(self) -> bytes:
        return _dump(
            {"v": SCHEMA_VERSION, "vehicle": self.vehicle, "online": self.online, "time": self.time}
        )


def check_vehicle_id(vehicle: object) -> str:
    """An error message if ``vehicle`` cannot be a vehicle id (one topic level), else ''."""
    if isinstance(vehicle, str) and VEHICLE_ID.fullmatch(vehicle):
        return ""
    return (
        f"vehicle id {vehicle!r} is not usable: it must be 1 to 64 characters of "
        "A-Z a-z 0-9 . _ : - starting with a letter or digit (it is an MQTT topic level); "
        "rename the vehicle in the configuration"
    )


# -- validity of values ------------------------------------------------------


def fix_problem(fix: Fix) -> Rejected | None:
    """Why ``fix`` must not be sent or used (same rules as gps/nmea.py), or None if valid."""
    quality: object = fix.quality  # typed, but built by other people's code: check anyway
    if isinstance(quality, bool) or not isinstance(quality, int):
        return Rejected("wrong_schema", f"quality {quality!r} is not an integer")
    satellites: object = fix.satellites
    if satellites is not None and (isinstance(satellites, bool) or not isinstance(satellites, int)):
        return Rejected("wrong_schema", f"satellites {satellites!r} is not an integer")
    values = (fix.time, fix.lat, fix.lon, fix.speed, fix.course, fix.hdop)
    if not all(v is None or _is_number(v) for v in values):
        return Rejected("wrong_schema", "a numeric field of the fix is not a number")
    return _check_values(
        fix.time, fix.lat, fix.lon, fix.speed, fix.course, fix.hdop, quality, satellites
    )


def _check_values(
    time: float,
    lat: float,
    lon: float,
    speed: float | None,
    course: float | None,
    hdop: float | None,
    quality: int,
    satellites: int | None,
) -> Rejected | None:
    time, lat, lon = _float(time), _float(lat), _float(lon)
    if not MIN_TIME <= time <= MAX_TIME:  # also catches NaN
        return Rejected("impossible_time", f"time {time!r} is not between 2000 and 2100")
    problem = position_problem(lat, lon, None if speed is None else _float(speed))
    if problem == "impossible_coordinates":
        return Rejected(problem, f"lat {lat!r}, lon {lon!r}")
    if problem is not None:
        return Rejected(problem, f"speed {speed!r} m/s")
    # Stricter than the lenient decoders, which read a course of 360 as 0.
    if course is not None and not 0.0 <= _float(course) < 360.0:
        return Rejected("impossible_value", f"course {course!r} is not in [0, 360)")
    if hdop is not None and not plausible_hdop(_float(hdop)):
        return Rejected("impossible_value", f"hdop {hdop!r} is not a finite number > 0")
    if not 0 <= quality <= max(FixQuality):
        return Rejected("impossible_value", f"quality {quality!r} is not a GGA quality 0..8")
    if quality == FixQuality.INVALID:
        return Rejected("no_fix", "quality 0: the receiver has no fix")
    if satellites is not None and not plausible_satellites(satellites):
        return Rejected("impossible_value", f"satellites {satellites!r}")
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: float) -> float:
    """As float; an int too large for a float becomes infinity (and fails any range test)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


# -- decoding ----------------------------------------------------------------


def decode_position(payload: bytes, topic_vehicle: str | None = None) -> PositionMessage | Rejected:
    """A position message from untrusted bytes; never raises.

    ``topic_vehicle`` is the vehicle named by the topic the payload came on; a
    payload naming another vehicle is ``vehicle_mismatch`` (a forged or
    misrouted message). Freshness and replays need state: see PositionReader.
    """
    obj = _load(payload, _POSITION_KEYS)
    if isinstance(obj, Rejected):
        return obj
    vehicle = _vehicle(obj, topic_vehicle)
    if isinstance(vehicle, Rejected):
        return vehicle
    fields = {key: _number_field(obj, key, nullable=False) for key in ("time", "lat", "lon")}
    fields |= {key: _number_field(obj, key, nullable=True) for key in ("speed", "course", "hdop")}
    for field in fields.values():
        if isinstance(field, Rejected):
            return field
    quality, satellites, seq = obj["quality"], obj["satellites"], obj["seq"]
    if type(quality) is not int:
        return Rejected("wrong_schema", f"quality is {_kind(quality)}, not an integer")
    if satellites is not None and type(satellites) is not int:
        return Rejected("wrong_schema", f"satellites is {_kind(satellites)}, not an integer")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        return Rejected("wrong_schema", f"seq {str(seq)[:40]} is not an integer in 0..2**63-1")
    time, lat, lon = (_required(fields[k]) for k in ("time", "lat", "lon"))
    speed, course, hdop = (_optional(fields[k]) for k in ("speed", "course", "hdop"))
    problem = _check_values(time, lat, lon, speed, course, hdop, quality, satellites)
    if problem is not None:
        return problem
    return PositionMessage(
        vehicle=vehicle,
        time=time,
        lat=lat,
        lon=lon,
        speed=speed,
        course=course,
        hdop=hdop,
        quality=FixQuality(quality),
        satellites=satellites,
        seq=seq,
    )


def _number_field(obj: dict[str, object], key: str, *, nullable: bool) -> float | Rejected | None:
    """A JSON number as float (integers too big for a float become +-inf), None, or why not."""
    value = obj[key]
    if value is None and nullable:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _float(value)
    wanted = "a number or null" if nullable else "a number"
    return Rejected("wrong_schema", f"{key} is {_kind(value)}, not {wanted}")


def _required(field: float | Rejected | None) -> float:
    assert isinstance(field, float)  # _number_field with nullable=False, Rejected handled
    return field


def _optional(field: float | Rejected | None) -> float | None:
    assert not isinstance(field, Rejected)
    return field


def decode_status(payload: bytes, topic_vehicle: str | None = None) -> StatusMessage | Rejected:
    """A status message from untrusted bytes, with or without ``seq``; never raises.

    The time of an "on" must be between 2000 and 2100 (``impossible_time``).
    An "off" is taken with any finite time: it can only take requests back, and
    a unit whose clock reads 1980 (no RTC, a GPS week rollover) must still be
    able to end its run.
    """
    obj = _load(payload, _STATUS_KEYS, _STATUS_OPTIONAL_KEYS)
    if isinstance(obj, Rejected):
        return obj
    vehicle = _vehicle(obj, topic_vehicle)
    if isinstance(vehicle, Rejected):
        return vehicle
    time, emergency, source = obj["time"], obj["emergency"], obj["source"]
    seq = obj.get("seq")
    if not _is_number(time):
        return Rejected("wrong_schema", f"time is {_kind(time)}, not a number")
    assert isinstance(time, int | float)
    if not isinstance(emergency, bool):
        return Rejected("wrong_schema", f"emergency is {_kind(emergency)}, not true/false")
    if source not in {s.value for s in StatusSource}:
        return Rejected("wrong_schema", f"source {source!r} is not one of {_SOURCES}")
    assert isinstance(source, str)
    if "seq" in obj and (type(seq) is not int or not 0 <= seq <= MAX_SEQ):
        return Rejected("wrong_schema", f"seq {str(seq)[:40]} is not an integer in 0..2**63-1")
    assert seq is None or isinstance(seq, int)
    seconds = _float(time)
    if not math.isfinite(seconds) or (emergency and not MIN_TIME <= seconds <= MAX_TIME):
        return Rejected("impossible_time", f"time {time!r} is not between 2000 and 2100")
    return StatusMessage(vehicle, seconds, emergency, StatusSource(source), seq)


def decode_link(payload: bytes, topic_vehicle: str | None = None) -> LinkMessage | Rejected:
    """A link (online/offline) message from untrusted bytes; never raises."""
    obj = _load(payload, _LINK_KEYS)
    if isinstance(obj, Rejected):
        return obj
    vehicle = _vehicle(obj, topic_vehicle)
    if isinstance(vehicle, Rejected):
        return vehicle
    online, time = obj["online"], obj["time"]
    if not isinstance(online, bool):
        return Rejected("wrong_schema", f"online is {_kind(online)}, not true/false")
    if time is None:
        return LinkMessage(vehicle, online, None)
    if not _is_number(time):
        return Rejected("wrong_schema", f"time is {_kind(time)}, not a number or null")
    assert isinstance(time, int | float)
    seconds = _float(time)
    if not MIN_TIME <= seconds <= MAX_TIME:
        return Rejected("impossible_time", f"time {time!r} is not between 2000 and 2100")
    return LinkMessage(vehicle, online, seconds)


_SOURCES: Final = ", ".join(s.value for s in StatusSource)


class _Invalid(Exception):
    """Internal: the JSON text is not acceptable (NaN, Infinity, duplicate keys)."""


def _reject_constant(name: str) -> object:
    raise _Invalid(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Invalid("duplicate key")
    return obj


def _load(
    payload: object, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, object] | Rejected:
    if not isinstance(payload, bytes | bytearray | memoryview):
        return Rejected("bad_json", f"payload is {type(payload).__name__}, not bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected("too_large", f"{len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})")
    try:
        obj = json.loads(
            bytes(payload).decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError, _Invalid) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers of absurd length.
        return Rejected("bad_json", str(exc)[:200])
    if not isinstance(obj, dict):
        return Rejected("wrong_schema", f"payload is {_kind(obj)}, not an object")
    version = obj.get("v")
    if type(version) is int and version != SCHEMA_VERSION:
        return Rejected("unsupported_version", f"v={version}; this reader knows v=1")
    if type(version) is not int:
        return Rejected("wrong_schema", f"v is {_kind(version)}, not the integer 1")
    if not set(keys) <= obj.keys() <= set(keys) | set(optional):
        missing = sorted(set(keys) - obj.keys())
        extra = sorted(obj.keys() - set(keys) - set(optional))
        return Rejected("wrong_schema", f"missing keys {missing}, unexpected keys {extra[:5]}")
    return obj


def _vehicle(obj: dict[str, object], topic_vehicle: str | None) -> str | Rejected:
    vehicle = obj["vehicle"]
    if not isinstance(vehicle, str) or not VEHICLE_ID.fullmatch(vehicle):
        return Rejected("wrong_schema", f"vehicle {str(vehicle)[:80]!r} is not a vehicle id")
    if topic_vehicle is not None and vehicle != topic_vehicle:
        return Rejected("vehicle_mismatch", f"payload says {vehicle!r}, topic {topic_vehicle!r}")
    return vehicle


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _dump(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


# -- freshness and replays -----------------------------------------------------


class PositionReader:
    """Decodes position and status payloads of many vehicles, with the checks that need state.

    Positions:

    * ``too_old``: the fix is more than ``max_age_s`` older than the clock's now;
      ``from_future``: more than ``max_future_s`` ahead (clock skew, a forged time).
    * ``duplicate``: sequence number and time both not after the vehicle's last
      accepted position (a QoS 1 redelivery, a resent batch, a replay).
      ``time_backwards``: a newer sequence number with a time not after the last.
      A lower sequence number with a later time is a restarted unit (sequence
      numbers start again at 0) and is accepted.
    * ``too_frequent``: less than ``1 / max_rate_hz`` seconds of *fix time*
      after the last accepted fix. The limit is on the fixes' own times, not on
      when they arrive: a store-and-forward backlog of ten minutes at 1 Hz,
      delivered in one second, is 600 fixes a second apart and passes.

    Statuses (:meth:`status`) are ordered by arrival: the broker keeps the
    order in which one publisher sent its messages on a topic, so the status
    that arrives last is the unit's latest, whatever its clock said. See
    :meth:`status` for the rule; in short, an "off" is never dropped for its
    time or order, an "on" only when it is from the future or, by its sequence
    number (or without one, by its time), older than the last status.

    Every rejection is counted in :attr:`dropped`; every acceptance in :attr:`accepted`.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_age_s: float = 60.0,
        max_future_s: float = 5.0,
        max_rate_hz: float = DEFAULT_MAX_RATE_HZ,
    ) -> None:
        if not (max_age_s > 0.0 and max_future_s >= 0.0):
            raise ValueError(
                f"max_age_s must be > 0 and max_future_s >= 0, not {max_age_s!r}, {max_future_s!r}"
            )
        if not 0.0 < max_rate_hz < math.inf:
            raise ValueError(f"max_rate_hz must be a finite number > 0, not {max_rate_hz!r}")
        self.clock = clock
        self.max_age_s = max_age_s
        self.max_future_s = max_future_s
        self.max_rate_hz = max_rate_hz
        self.min_spacing_s = 1.0 / max_rate_hz - RATE_TOLERANCE_S
        self.dropped: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()  # by message kind: position, status, link
        self._last: dict[str, tuple[int, float]] = {}  # vehicle -> (seq, time) last accepted
        self._last_status: dict[str, StatusMessage] = {}  # since the unit's last "online"

    def position(self, payload: bytes, topic_vehicle: str) -> PositionMessage | Rejected:
        msg = decode_position(payload, topic_vehicle)
        if isinstance(msg, PositionMessage):
            late = self.freshness(msg.time)
            msg = late if late is not None else self._sequence(msg)
        self._tally(msg, "position")
        return msg

    def status(self, payload: bytes, topic_vehicle: str) -> StatusMessage | Rejected:
        """The status, or why it is dropped. The rule, for each vehicle:

        * An "off" (``emergency`` false) that decodes is always taken, whatever
          its time and sequence number say: it can only take requests back, and
          a unit whose clock stepped back (NTP, a GNSS time fix) must still be
          able to end its run. One that looks out of order is logged.
        * An "on" is ``from_future`` when its time is more than ``max_future_s``
          ahead of this clock.
        * An "on" is compared with the vehicle's last status taken since the
          unit last said "online" (every connection of a unit starts with
          "online" and then its current status, so a restarted unit, counting
          from 0 again and perhaps with a clock that is now behind, starts
          afresh). With sequence numbers on both, a higher one is newer and is
          taken whatever the times; the same message again (retained,
          redelivered, sent again on a reconnection) is taken; anything else is
          a ``duplicate`` (a replay). Without (a unit that sends none), an "on"
          timed before the last status is ``time_backwards``.

        A retained status may be old and still true: there is no ``too_old``.
        """
        msg = decode_status(payload, topic_vehicle)
        if isinstance(msg, StatusMessage):
            last = self._last_status.get(msg.vehicle)
            problem = self._status_order(msg, last) if msg.emergency else None
            if problem is not None:
                msg = problem
            else:
                if last is not None and not msg.emergency and self._out_of_order(msg, last):
                    log.warning(
                        "status of vehicle %r: emergency OFF taken although it looks older than "
                        "the last status (%s at %r, seq %s; the last: %s at %r, seq %s): an off "
                        "is never dropped; check the unit's clock",
                        msg.vehicle,
                        _on_off(msg.emergency),
                        msg.time,
                        msg.seq,
                        _on_off(last.emergency),
                        last.time,
                        last.seq,
                    )
                self._last_status[msg.vehicle] = msg
        self._tally(msg, "status")
        return msg

    def link(self, payload: bytes, topic_vehicle: str) -> LinkMessage | Rejected:
        """The link message; an "online" starts a new status order for its vehicle."""
        msg = decode_link(payload, topic_vehicle)
        if isinstance(msg, LinkMessage) and msg.online:
            self._last_status.pop(msg.vehicle, None)
        self._tally(msg, "link")
        return msg

    def freshness(self, time: float) -> Rejected | None:
        """``too_old`` or ``from_future`` for a fix at ``time``, or None (not counted here)."""
        age = self.clock.now() - time
        if age > self.max_age_s:
            return Rejected("too_old", f"{age:.1f} s old (at most {self.max_age_s} s)")
        if -age > self.max_future_s:
            return Rejected("from_future", f"{-age:.1f} s ahead (at most {self.max_future_s} s)")
        return None

    def spacing(self, time: float, last_time: float | None) -> Rejected | None:
        """``too_frequent`` if a fix at ``time`` follows one at ``last_time`` too closely."""
        if last_time is None or time - last_time >= self.min_spacing_s:
            return None
        return Rejected(
            "too_frequent",
            f"fix at {time!r} only {(time - last_time) * 1000:.0f} ms of fix time after the last "
            f"(at most {self.max_rate_hz:g} fixes per second)",
        )

    def _sequence(self, msg: PositionMessage) -> PositionMessage | Rejected:
        last = self._last.get(msg.vehicle)
        if last is not None:
            last_seq, last_time = last
            if msg.time <= last_time:
                if msg.seq <= last_seq:
                    return Rejected("duplicate", f"seq {msg.seq} (last {last_seq})")
                return Rejected("time_backwards", f"time {msg.time!r} (last {last_time!r})")
            too_close = self.spacing(msg.time, last_time)
            if too_close is not None:
                return too_close
        self._last[msg.vehicle] = (msg.seq, msg.time)
        return msg

    def _status_order(self, msg: StatusMessage, last: StatusMessage | None) -> Rejected | None:
        """Why an "on" must be dropped, or None."""
        ahead = msg.time - self.clock.now()
        if ahead > self.max_future_s:
            return Rejected(
                "from_future",
                f"status ON at {msg.time!r} is {ahead:.1f} s ahead of this clock (at most "
                f"{self.max_future_s} s): check the unit's clock",
            )
        if last is None or msg == last:
            return None
        if msg.seq is not None and last.seq is not None:
            if msg.seq > last.seq:
                return None
            return Rejected(
                "duplicate",
                f"status ON with seq {msg.seq} after {_on_off(last.emergency)} with seq "
                f"{last.seq} on the same connection: a replay or a redelivery",
            )
        if msg.time < last.time:
            return Rejected(
                "time_backwards",
                f"status ON at {msg.time!r} before the last status ({_on_off(last.emergency)} "
                f"at {last.time!r}) and no sequence number to tell: check the unit's clock",
            )
        return None

    @staticmethod
    def _out_of_order(msg: StatusMessage, last: StatusMessage) -> bool:
        if msg == last:
            return False
        if msg.seq is not None and last.seq is not None:
            return msg.seq <= last.seq
        return msg.time < last.time

    def _tally(self, msg: object, kind: str) -> None:
        if isinstance(msg, Rejected):
            self.dropped[msg.reason] += 1
        else:
            self.accepted[kind] += 1


def _on_off(emergency: bool) -> str:
    return "ON" if emergency else "OFF"
