"""The rules a fix must pass, shared by every decoder in gps/.

NMEA (:mod:`gps.nmea`), gpsd (:mod:`gps.gpsd`), GPX/CSV tracks
(:mod:`gps.files`) and the onboard JSON messages (:mod:`gps.position_json`)
all apply the same plausibility rules; each module keeps its own names for
what it drops, but the rules live here:

* coordinates in range (NaN fails the range test) and not exactly 0,0
  (``impossible_coordinates``);
* speed None or 0..:data:`MAX_SPEED_MS` m/s (``impossible_speed``);
* course in [0, 360] (360 read as 0), hdop finite and > 0, satellites
  0..:data:`MAX_SATELLITES`: the lenient decoders turn a bad one into None,
  because a bad course is not worth the position;
* fixes in strictly increasing time (:class:`TimeOrder`).
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "MAX_SATELLITES",
    "MAX_SPEED_MS",
    "TimeOrder",
    "course_or_none",
    "plausible_coordinates",
    "plausible_hdop",
    "plausible_satellites",
    "plausible_speed",
    "position_problem",
]

MAX_SPEED_MS: Final = 100.0  # 360 km/h: beyond any road vehicle, so a corrupt field
MAX_SATELLITES: Final = 1000


def plausible_coordinates(lat: float, lon: float) -> bool:
    """In range (NaN is not) and not exactly 0,0, where broken receivers put a fix."""
    return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0 and not (lat == 0.0 and lon == 0.0)


def plausible_speed(speed: float | None) -> bool:
    """None, or 0..MAX_SPEED_MS m/s (NaN is not)."""
    return speed is None or 0.0 <= speed <= MAX_SPEED_MS


def plausible_hdop(hdop: float) -> bool:
    return 0.0 < hdop < math.inf


def plausible_satellites(count: int) -> bool:
    return 0 <= count <= MAX_SATELLITES


def position_problem(lat: float, lon: float, speed: float | None) -> str | None:
    """``impossible_coordinates`` or ``impossible_speed``, or None if both are plausible."""
    if not plausible_coordinates(lat, lon):
        return "impossible_coordinates"
    if not plausible_speed(speed):
        return "impossible_speed"
    return None


def course_or_none(course: float | None) -> float | None:
    """A course in [0, 360] as [0, 360); anything else (NaN too) as None."""
    if course is None or not 0.0 <= course <= 360.0:
        return None
    return course % 360.0


class TimeOrder:
    """The time order of one stream of fixes: each must be later than the last accepted."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: float | None = None

    def check(self, time: float) -> str | None:
        """``duplicate_epoch`` or ``time_backwards``; None if in order (``time`` is then kept)."""
        last = self.last
        if last is not None:
            if time == last:
                return "duplicate_epoch"
            if time < last:
                return "time_backwards"
        self.last = time
        return None
