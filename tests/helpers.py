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
