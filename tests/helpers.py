"""Shared paths and small builders for the tests."""

from __future__ import annotations

import math
from pathlib import Path

from preemption.model import Fix, FixQuality
from routes.geojson import RouteSet

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "config" / "scenarios" / "demo"
DATA = Path(__file__).resolve().parent / "data"

VEHICLE = "FW-OST-HLF1"


def fix_at(
    routes: RouteSet,
    route: str,
    s: float,
    t: float,
    speed: float | None = 13.0,
    lateral: float = 0.0,
    vehicle: str = VEHICLE,
    reverse: bool = False,
) -> Fix:
    """A clean fix at distance ``s`` along ``route``, ``lateral`` metres to its left."""
    p = routes[route].at(s)
    h = math.radians(p.heading_deg)
    x, y = p.x - lateral * math.cos(h), p.y + lateral * math.sin(h)
    lon, lat = routes.projector.to_wgs84(x, y)
    course = (p.heading_deg + (180.0 if reverse else 0.0)) % 360.0
    return Fix(
        vehicle=vehicle,
        time=t,
        lat=lat,
        lon=lon,
        speed=speed,
        course=course,
        hdop=0.9,
        quality=FixQuality.GPS,
        source="test",
    )


def side_street(
    routes: RouteSet,
    route: str,
    s: float,
    t0: float,
    n: int = 5,
    speed: float = 10.0,
    turn_deg: float = -90.0,
    vehicle: str = VEHICLE,
) -> list[Fix]:
    """Fixes of a vehicle turning off ``route`` at ``s`` into a straight side street."""
    p = routes[route].at(s)
    heading = (p.heading_deg + turn_deg) % 360.0
    out = []
    for k in range(1, n + 1):
        d = speed * k
        x = p.x + d * math.sin(math.radians(heading))
        y = p.y + d * math.cos(math.radians(heading))
        lon, lat = routes.projector.to_wgs84(x, y)
        out.append(Fix(vehicle, t0 + k, lat, lon, speed, heading, 0.9, FixQuality.GPS, "test"))
    return out
