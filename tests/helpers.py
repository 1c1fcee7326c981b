"""Shared paths and small builders for the tests."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path

from preemption.kernel.model import Fix, FixQuality, Route, RoutePosition, SignalEta
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


def position(
    vehicle: str,
    route: Route,
    s: float,
    v: float,
    t: float,
    committed: bool = True,
    on_route: bool = True,
    compatible: Mapping[str, float] | None = None,
    shared: Collection[str] | None = None,
) -> RoutePosition:
    """A hand-made matcher output at ``s`` on ``route`` at speed ``v``: ETAs at that
    speed with a band of -20 %/+25 %; ``compatible`` (default: only ``route``) gives
    the probabilities, ``shared`` the intersections common to them (default: all)."""
    probs = dict(compatible) if compatible is not None else {route.id: 1.0}
    etas = tuple(
        SignalEta(
            sig.intersection,
            sig.controller,
            sig.approach,
            sig.stop_line_m - s,
            (sig.stop_line_m - s) / max(v, 1.0),
            0.8 * (sig.stop_line_m - s) / max(v, 1.0),
            1.25 * (sig.stop_line_m - s) / max(v, 1.0),
            shared is None or sig.intersection in shared,
        )
        for sig in route.signals
        if sig.stop_line_m > s
    )
    return RoutePosition(
        vehicle,
        t,
        probs if on_route else {},
        route.id if committed else None,
        route.id if on_route else None,
        s,
        v,
        0.0,
        probs[route.id] if on_route else 1.0,
        on_route,
        etas if on_route else (),
    )
