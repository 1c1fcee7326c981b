"""A synthetic straight corridor of N signalised intersections, written as scenario files.

For benchmarks and tests: a route due east from a point in Mannheim, a signal
every ``spacing_m``, two-stage fixed-time programs with offsets spread over the
cycle, and background demand on every approach. The files are the ordinary
formats (GeoJSON route file, deployment TOML, scenario TOML), so everything
downstream runs exactly as on a hand-made scenario.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ORIGIN = (8.46, 49.48)  # lon, lat
M_PER_DEG_LAT = 111_320.0


def write_corridor(
    directory: Path,
    n_signals: int = 15,
    spacing_m: float = 300.0,
    route_veh_h: float = 450.0,
    cross_veh_h: float = 300.0,
    lead_margin_s: float = 16.0,
) -> Path:
    """Write routes.geojson, deployment.toml and scenario.toml; return the scenario's path."""
    directory.mkdir(parents=True, exist_ok=True)
    lon0, lat0 = ORIGIN
    m_per_deg_lon = M_PER_DEG_LAT * math.cos(math.radians(lat0))
    length = spacing_m * (n_signals + 1)

    def at(s: float) -> list[float]:
        return [round(lon0 + s / m_per_deg_lon, 7), lat0]

    features: list[dict[str, object]] = [
        {
            "type": "Feature",
            "geometry": {
                "type": "LineString",
                "coordinates": [at(k * 100.0) for k in range(int(length // 100.0) + 1)],
            },
            "properties": {"kind": "route", "id": "R1", "name": "synthetic corridor"},
        }
    ]
    for k in range(n_signals):
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": at(spacing_m * (k + 1))},
                "properties": {
                    "kind": "signal",
                    "routes": ["R1"],
                    "intersection": f"K{k + 1}",
                    "controller": f"C-K{k + 1}",
                    "approach": "1",
                    "transition_s": 10,
                },
            }
        )
    (directory / "routes.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    dep = [
        '[deployment]\nname = "synthetic corridor"\nepsg = 25832\n',
        '[routes]\nfiles = ["routes.geojson"]\n',
        '[[vehicles]]\nid = "FW-SYN-1"\npriority = "fire"\n',
    ]
    dep += [f'[[controllers]]\nid = "C-K{k + 1}"\nadapter = "simlink"\n' for k in range(n_signals)]
    (directory / "deployment.toml").write_text("\n".join(dep))
    scen = [
        '[scenario]\nname = "synthetic corridor"\ndeployment = "deployment.toml"\n'
        "start_utc = 2026-11-28T08:00:00Z\n",
        "[traffic]\nseed = 1\n",
        f"[preemption]\nplanner = {{ lead_margin_s = {lead_margin_s} }}\n",
        '[[engines]]\nvehicle = "FW-SYN-1"\nroute = "R1"\ndepart_s = 80.0\n',
    ]
    for k in range(n_signals):
        scen.append(
            f'[[intersections]]\nid = "K{k + 1}"\noffset_s = {(k * 23.0) % 70.0}\n'
            'approaches = { "1" = "A" }\n'
            'stages = [{ groups = ["A"], green_s = 30.0 }, { groups = ["B"], green_s = 30.0 }]\n'
            "demand = [\n"
            f'  {{ approach = "1", veh_h = {route_veh_h} }},\n'
            f'  {{ approach = "opposite", group = "A", veh_h = {route_veh_h} }},\n'
            f'  {{ approach = "north", group = "B", veh_h = {cross_veh_h} }},\n'
            f'  {{ approach = "south", group = "B", veh_h = {cross_veh_h} }},\n'
            "]\n"
        )
    path = directory / "scenario.toml"
    path.write_text("\n".join(scen))
    return path
