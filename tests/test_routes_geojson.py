from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes.geojson import RouteFileError, RouteSet, load_routes
from routes.projection import Projector, utm_epsg_for

from .helpers import DEMO_DIR

DOC: dict[str, Any] = json.loads((DEMO_DIR / "routes.geojson").read_text(encoding="utf-8"))


def _load(tmp_path: Path, doc: dict[str, Any]) -> RouteSet:
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return load_routes(path)


def _signal(doc: dict[str, Any], intersection: str) -> dict[str, Any]:
    for f in doc["features"]:
        if f["properties"].get("intersection") == intersection:
            return f  # type: ignore[no-any-return]
    raise KeyError(intersection)


def test_demo_routes_load_with_stop_lines_in_driving_order(demo_routes: RouteSet) -> None:
    assert set(demo_routes.routes) == {"R1", "R2"}
    r1 = demo_routes["R1"]
    assert [s.intersection for s in r1.signals] == ["K1", "K2", "K3", "K4", "K5"]
    # Signals were placed at 350/750/1100/1600/2150 m when the file was made.
    assert [s.stop_line_m for s in r1.signals] == pytest.approx(
        [350, 750, 1100, 1600, 2150], abs=0.5
    )
    assert r1.length == pytest.approx(2500, abs=1)
    assert r1.route.speed_limit == pytest.approx(50 / 3.6)
    # The shared trunk: R2's first three signals are the same stop lines.
    assert [s.stop_line_m for s in demo_routes["R2"].signals[:3]] == [
        s.stop_line_m for s in r1.signals[:3]
    ]


def test_default_projection_is_the_routes_utm_zone(tmp_path: Path) -> None:
    assert _load(tmp_path, DOC).projector.epsg == 25832  # ETRS89 / UTM 32N for Mannheim
    assert utm_epsg_for(13.4, 52.5) == 25833  # Berlin
    assert utm_epsg_for(-74.0, 40.7) == 32618  # New York: WGS84 UTM
    assert utm_epsg_for(151.2, -33.9) == 32756  # Sydney: southern hemisphere


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: _signal(d, "K4")["geometry"]["coordinates"].__setitem__(1, 49.5),
            "'K4'.*from the route line",
        ),
        (
            lambda d: d["features"].insert(2, copy.deepcopy(d["features"][0])),
            "route id 'R1' already defined",
        ),
        (
            lambda d: d["features"][0]["geometry"]["coordinates"][3].reverse(),
            "positions #2 and #3 .* apart.*swapped",
        ),
        (
            lambda d: d["features"][0]["geometry"]["coordinates"][3].__setitem__(1, 95.0),
            "position #3: \\[.*\\] is not a WGS84 \\[lon, lat\\]",
        ),
        (
            lambda d: _signal(d, "K6")["properties"].__setitem__("routes", ["R9"]),
            "names route 'R9', which no file defines",
        ),
        (lambda d: _signal(d, "K2")["properties"].pop("approach"), "'K2'.*needs 'approach'"),
        (
            lambda d: d["features"][0]["geometry"]["coordinates"].pop(3),
            "route 'R1': positions #2 and #3 are .* m apart",
        ),
        (
            lambda d: _signal(d, "K1")["properties"].__setitem__("transition_s", -3),
            "transition_s must be",
        ),
        (
            lambda d: d["features"].append(
                d["features"].pop(d["features"].index(_signal(d, "K1")))
            ),
            "'K1': at 350 m along the route, not after the previous signal 'K5'",
        ),
    ],
)
def test_route_file_errors_name_route_and_feature(
    tmp_path: Path, mutate: Any, message: str
) -> None:
    doc = copy.deepcopy(DOC)
    mutate(doc)
    with pytest.raises(RouteFileError, match=message):
        _load(tmp_path, doc)


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(RouteFileError, match="not found"):
        load_routes(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(RouteFileError, match="not readable as GeoJSON"):
        load_routes(bad)
    with pytest.raises(RouteFileError, match="no route"):
        _load(tmp_path, {"type": "FeatureCollection", "features": []})


def test_signals_as_route_property_list_with_stop_line_distances(tmp_path: Path) -> None:
    route = copy.deepcopy(DOC["features"][0])
    route["properties"]["signals"] = [
        {"intersection": "X1", "controller": "C1", "approach": "2", "stop_line_m": 120.0},
        {"intersection": "X2", "controller": "C1", "approach": "2", "stop_line_m": 900.5},
    ]
    rs = _load(tmp_path, {"type": "FeatureCollection", "features": [route]})
    sigs = rs["R1"].signals
    assert [(s.intersection, s.stop_line_m) for s in sigs] == [("X1", 120.0), ("X2", 900.5)]
    # Positions are filled in, and project back onto the same distance.
    for s in sigs:
        assert s.lon is not None
        assert s.lat is not None
        along, offset = rs["R1"].locate(*rs.projector.to_metric(s.lon, s.lat))
        assert along == pytest.approx(s.stop_line_m, abs=0.01)
        assert abs(offset) < 0.01


@given(st.floats(min_value=0.0, max_value=2500.0), st.floats(min_value=-30.0, max_value=30.0))
def test_locate_inverts_at_for_points_beside_the_route(s: float, lateral: float) -> None:
    rs = load_routes(DEMO_DIR / "routes.geojson", epsg=25832)
    r1 = rs["R1"]
    p = r1.at(s)
    import math

    # Step sideways (left is positive) from the route point.
    h = math.radians(p.heading_deg)
    x, y = p.x - lateral * math.cos(h), p.y + lateral * math.sin(h)
    along, offset = r1.locate(x, y)
    # Near a bend the nearest point may be on the other leg; away from bends it is exact.
    bends = [float(c) for c in r1.cum[1:-1]]
    if all(abs(s - b) > abs(lateral) + 1 for b in bends) and 35 < s < 2465:
        assert along == pytest.approx(s, abs=0.05)
        assert offset == pytest.approx(lateral, abs=0.05)


def test_projector_round_trip() -> None:
    pr = Projector(25832)
    x, y = pr.to_metric(8.4660, 49.4875)
    lon, lat = pr.to_wgs84(x, y)
    assert (lon, lat) == pytest.approx((8.4660, 49.4875), abs=1e-9)
    with pytest.raises(ValueError, match="not a projected"):
        Projector(4326)
