"""NMEA 0183 sentences as a receiver in the engine would send them (RMC + GGA)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import reduce

KNOTS_PER_MS = 3600 / 1852


def checksum(body: str) -> str:
    """XOR of the characters between '$' and '*', as two hex digits."""
    return f"{reduce(lambda a, c: a ^ ord(c), body, 0):02X}"


def sentence(body: str) -> str:
    return f"${body}*{checksum(body)}"


def _lat(lat: float) -> tuple[str, str]:
    a = abs(lat)
    d = int(a)
    return f"{d:02d}{(a - d) * 60:07.4f}", "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    a = abs(lon)
    d = int(a)
    return f"{d:03d}{(a - d) * 60:07.4f}", "E" if lon >= 0 else "W"


def epoch_sentences(
    t_utc: float,
    lat: float,
    lon: float,
    speed: float,
    course: float,
    hdop: float = 0.9,
    satellites: int = 9,
    talker: str = "GN",
) -> list[str]:
    """The RMC and GGA of one epoch, without line endings."""
    when = datetime.fromtimestamp(t_utc, UTC)
    hms = when.strftime("%H%M%S") + f".{when.microsecond // 10000:02d}"
    dmy = when.strftime("%d%m%y")
    la, ns = _lat(lat)
    lo, ew = _lon(lon)
    rmc = (
        f"{talker}RMC,{hms},A,{la},{ns},{lo},{ew},{speed * KNOTS_PER_MS:.2f},"
        f"{course % 360:.1f},{dmy},,,A"
    )
    gga = f"{talker}GGA,{hms},{la},{ns},{lo},{ew},1,{satellites:02d},{hdop:.1f},100.0,M,47.0,M,,"
    return [sentence(rmc), sentence(gga)]
