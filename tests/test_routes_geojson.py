from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routes.geojson import (
    MAX_ROUTE_FILE_BYTES,
    RouteFileError,
    RouteSet,
    load_routes,
    load_routes_from_document,
)
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


# -- numbers, positions and projections: everything a route file can get wrong ---------------


def _doc_load(doc: dict[str, Any], epsg: int | None = 25832) -> RouteSet:
    return load_routes_from_document(doc, epsg=epsg, name="r.geojson")


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, 1e-300, 0, -30, 4.9, 130.5, 5000, True, "50", [50]],
)
def test_speed_limits_beyond_what_a_street_has_are_refused(value: object) -> None:
    doc = copy.deepcopy(DOC)
    doc["features"][0]["properties"]["speed_limit_kmh"] = value
    with pytest.raises(RouteFileError, match=r"route 'R1'.*speed_limit_kmh.*5 to 130 km/h"):
        _doc_load(doc)


@pytest.mark.parametrize("value", [5, 30, 50.0, 130])
def test_speed_limits_of_streets_load(value: float) -> None:
    doc = copy.deepcopy(DOC)
    doc["features"][0]["properties"]["speed_limit_kmh"] = value
    assert _doc_load(doc)["R1"].route.speed_limit == pytest.approx(value / 3.6)


@pytest.mark.parametrize("value", [math.nan, math.inf, 0, 0.5, 180.5, True, "10"])
def test_transition_times_beyond_a_signal_programme_are_refused(value: object) -> None:
    doc = copy.deepcopy(DOC)
    _signal(doc, "K3")["properties"]["transition_s"] = value
    with pytest.raises(RouteFileError, match=r"'K3'.*transition_s.*1 to 180 s"):
        _doc_load(doc)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, True, "120"])
def test_stop_line_distances_must_be_numbers_along_the_route(value: object) -> None:
    route = copy.deepcopy(DOC["features"][0])
    route["properties"]["signals"] = [
        {"intersection": "X1", "controller": "C1", "approach": "2", "stop_line_m": value}
    ]
    with pytest.raises(RouteFileError, match=r"signals\[0\].*stop_line_m"):
        _doc_load({"type": "FeatureCollection", "features": [route]})


def _swap(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for f in out["features"]:
        g = f["geometry"]
        g["coordinates"] = (
            g["coordinates"][::-1] if g["type"] == "Point" else [c[::-1] for c in g["coordinates"]]
        )
    return out


def test_swapped_positions_outside_the_crs_area_say_so() -> None:
    with pytest.raises(
        RouteFileError,
        match=r"r.geojson: route 'R1': position #0 \[49.489, 8.492\] is outside the area of use "
        r"of EPSG:25832 .*are lat and lon swapped\? GeoJSON is lon, lat",
    ):
        _doc_load(_swap(DOC))


def test_the_area_of_use_has_a_margin_for_states_that_stretch_a_zone() -> None:
    # Bavaria surveys in EPSG:25832 up to 13.8°E, past the zone's edge at 12°E: Passau loads.
    route: dict[str, Any] = {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[13.45, 48.57], [13.452, 48.571]]},
        "properties": {"kind": "route", "id": "P1"},
    }
    rs = _doc_load({"type": "FeatureCollection", "features": [route]})
    assert rs["P1"].length == pytest.approx(185, abs=5)
    # ... and three degrees further east it is refused.
    route["geometry"]["coordinates"] = [[16.45, 48.57], [16.452, 48.571]]  # Vienna
    with pytest.raises(RouteFileError, match="outside the area of use of EPSG:25832"):
        _doc_load({"type": "FeatureCollection", "features": [route]})


def test_without_epsg_latitudes_no_utm_zone_covers_are_named() -> None:
    north = copy.deepcopy(DOC)
    for f in north["features"]:
        g = f["geometry"]
        for c in [g["coordinates"]] if g["type"] == "Point" else g["coordinates"]:
            # A corridor at 86°E, 27.7°N (Kathmandu) written lat, lon: no UTM zone at 86°N.
            c[0], c[1] = c[1] - 49.49 + 27.7, c[0] - 8.5 + 86.0
    with pytest.raises(RouteFileError, match="are lat and lon swapped"):
        _doc_load(north, epsg=None)


def test_a_projection_that_distorts_lengths_is_refused() -> None:
    with pytest.raises(RouteFileError, match=r"EPSG:3857 .*lengths .*5\d %"):
        _doc_load(DOC, epsg=3857)


@pytest.mark.parametrize(("epsg", "what"), [(4326, "not a projected"), (99999, "does not exist")])
def test_an_unusable_epsg_is_an_input_error(epsg: int, what: str) -> None:
    with pytest.raises(RouteFileError, match=what):
        _doc_load(DOC, epsg=epsg)


def test_a_signal_with_swapped_coordinates_is_named() -> None:
    doc = copy.deepcopy(DOC)
    g = _signal(doc, "K5")["geometry"]
    g["coordinates"] = g["coordinates"][::-1]
    with pytest.raises(RouteFileError, match=r"'K5'.*are lat and lon swapped"):
        _doc_load(doc)


def test_route_files_too_large_or_too_deep_are_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.geojson"
    with big.open("wb") as f:
        f.truncate(MAX_ROUTE_FILE_BYTES + 1)
    with pytest.raises(RouteFileError, match=r"big.geojson: .*50 MiB"):
        load_routes(big)
    deep = tmp_path / "deep.geojson"
    deep.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000, encoding="utf-8")
    with pytest.raises(RouteFileError, match=r"deep.geojson: .*nested too deeply"):
        load_routes(deep)
    binary = tmp_path / "bin.geojson"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(RouteFileError, match=r"bin.geojson: not UTF-8"):
        load_routes(binary)
    folder = tmp_path / "dir.geojson"
    folder.mkdir()
    with pytest.raises(RouteFileError, match=r"dir.geojson: cannot read"):
        load_routes(folder)


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document a value sits at."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*here, i))
    return out


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
    | st.sampled_from(["R1", "R2", "K1", "route", "signal", "Point", "LineString"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "id", "kind", "coordinates", "x"]), children,
                      max_size=3),
    max_leaves=12,
)  # fmt: skip
SMALL = {
    "type": "FeatureCollection",
    "features": [copy.deepcopy(DOC["features"][0]), copy.deepcopy(_signal(DOC, "K1"))],
}
SMALL["features"][1]["properties"]["routes"] = ["R1"]
SMALL["features"][0]["properties"]["signals"] = [
    {"intersection": "X1", "controller": "C1", "approach": "2", "stop_line_m": 900.0}
]


@settings(max_examples=400)
@given(st.sampled_from(_paths(SMALL)), JSON_VALUES)
def test_any_value_anywhere_is_loaded_or_refused_never_a_traceback(
    where: tuple[Any, ...], value: Any
) -> None:
    doc: Any = copy.deepcopy(SMALL)
    if not where:
        doc = value
    else:
        node = doc
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = value
    try:
        rs = _doc_load(doc)
    except RouteFileError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert message.startswith("r.geojson"), message  # names the file
        return
    for mr in rs:  # what loads is usable: finite numbers in their bounds
        assert mr.route.speed_limit is None or 5 / 3.6 <= mr.route.speed_limit <= 130 / 3.6
        for sig in mr.signals:
            assert 0 <= sig.stop_line_m <= mr.length
            assert sig.transition_s is None or 1 <= sig.transition_s <= 180
