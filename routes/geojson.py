"""Route files: GeoJSON (RFC 7946, lon/lat) in, validated routes out.

A route is a LineString feature with ``properties.kind = "route"`` and ``id``,
``name``, ``station``. Its signals are Point features with ``kind = "signal"``,
``routes`` (the ids of the routes they belong to), ``intersection``,
``controller``, ``approach`` and optionally ``transition_s``; or, equally, a
``signals`` list in the route's properties with the same keys and either
``lon``/``lat`` or ``stop_line_m``. docs/routes.md describes the format.

Whatever a file holds, loading either gives routes whose every number is finite
and in its bound, or raises :class:`RouteFileError` naming the file, the route
or feature and what to do; never another exception.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from preemption.kernel.errors import InputError
from preemption.kernel.model import Route, SignalPoint
from routes.geometry import MetricRoute
from routes.projection import AREA_MARGIN_DEG, Projector, ground_distances, utm_epsg_for

MAX_SIGNAL_OFFSET_M = 15.0  # a signal further than this from its route is a mistake
MAX_VERTEX_GAP_M = 500.0  # consecutive vertices further apart suggest a broken line
# A city's routes drawn vertex by vertex are a few MiB; a larger file is a mistake (a road
# network or a log named as a route file) and would only exhaust memory.
MAX_ROUTE_FILE_BYTES = 50 * 1024 * 1024
# Lengths in the CRS may be off from the ground by this much (UTM: 0.04 % on the central
# meridian, 0.1 % at the zone's edge); more makes every stop-line distance and ETA wrong.
MAX_SCALE_ERROR = 0.01
UTM_LATITUDES = (-80.0, 84.0)
SWAPPED = "are lat and lon swapped? GeoJSON is lon, lat"
SPEED_LIMIT = (
    5,
    130,
    "km/h",
    "the speed engines drive on this route, which the ETAs come from: below 5 km/h is no "
    "street, above 130 km/h faster than any fire engine drives",
)
TRANSITION = (
    1,
    180,
    "s",
    "the controller's worst case to bring this approach to green: at least a second, never "
    "longer than a whole signal cycle",
)
STOP_LINE = (0, 1_000_000, "m", "the stop line's distance along the route")


class RouteFileError(InputError):
    """A route file is unusable; the message names the file, the route and the feature."""


@dataclass(frozen=True)
class RouteSet:
    """Every route of a deployment, projected once."""

    projector: Projector
    routes: Mapping[str, MetricRoute]

    def __iter__(self) -> Iterator[MetricRoute]:
        return iter(self.routes.values())

    def __len__(self) -> int:
        return len(self.routes)

    def __getitem__(self, route_id: str) -> MetricRoute:
        return self.routes[route_id]


def load_routes(paths: Path | str | Sequence[Path | str], epsg: int | None = None) -> RouteSet:
    """Load, project and validate route files.

    ``epsg`` None chooses the UTM zone of the routes' centre.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    raw = [(Path(p), read_route_file(Path(p))) for p in paths]
    return _build(raw, epsg)


def read_route_file(path: Path) -> Any:
    """The JSON document in ``path``; RouteFileError for anything that is not one."""
    try:
        size = path.stat().st_size
        if size > MAX_ROUTE_FILE_BYTES:
            raise RouteFileError(
                f"{path}: {size / 2**20:.0f} MiB is too large for a route file (limit "
                f"{MAX_ROUTE_FILE_BYTES // 2**20} MiB; a city's routes are a few MiB): is it "
                "a road network or a recording named by mistake?"
            )
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError:
        raise RouteFileError(f"{path}: route file not found") from None
    except OSError as exc:
        raise RouteFileError(f"{path}: cannot read the route file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RouteFileError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); GeoJSON is UTF-8 JSON: is it the right file?"
        ) from None
    except RecursionError:
        raise RouteFileError(
            f"{path}: nested too deeply to read (lists or objects thousands deep); a route "
            "file is a FeatureCollection of features four levels deep"
        ) from None
    except MemoryError:
        raise RouteFileError(f"{path}: too large to load into memory") from None
    except ValueError as exc:  # json.JSONDecodeError, and integers of thousands of digits
        raise RouteFileError(f"{path}: not readable as GeoJSON: {exc}") from None


def load_routes_from_document(
    doc: Mapping[str, Any], epsg: int | None = None, name: str = "<document>"
) -> RouteSet:
    """Like :func:`load_routes`, for a GeoJSON document already in memory."""
    return _build([(Path(name), doc)], epsg)


def _build(raw: Sequence[tuple[Path, Any]], epsg: int | None) -> RouteSet:
    routes, where = _parse(raw)
    projector = _projector(routes, where, epsg)
    if epsg is not None:
        for route in routes:
            _check_area(route, f"{where[route.id]}: route {route.id!r}", projector)
    metric: dict[str, MetricRoute] = {}
    for route in routes:
        label = f"{where[route.id]}: route {route.id!r}"
        _check_gaps(route, label)
        _check_scale(route, label, projector)
        mr = MetricRoute.build(route, projector)
        _check_line(mr, projector, label)
        metric[route.id] = _place_signals(mr, projector, label)
    return RouteSet(projector=projector, routes=metric)


def _projector(routes: Sequence[Route], where: Mapping[str, Path], epsg: int | None) -> Projector:
    if epsg is not None:
        try:
            return Projector(epsg)
        except ValueError as exc:
            raise RouteFileError(f"epsg {epsg}: {exc}") from None
    low, high = UTM_LATITUDES
    for route in routes:
        for k, (lon, lat) in enumerate(route.geometry):
            if not low <= lat <= high:
                hint = SWAPPED if low <= lon <= high else "set epsg to a polar CRS"
                raise RouteFileError(
                    f"{where[route.id]}: route {route.id!r}: position #{k} [{lon}, {lat}] is at "
                    f"latitude {lat:g}°, where there is no UTM zone (UTM covers 80°S to "
                    f"84°N), so no CRS can be chosen for the routes; {hint}"
                )
    return Projector.for_points([pt for r in routes for pt in r.geometry])


def _check_area(route: Route, label: str, projector: Projector) -> None:
    """Every position of the route, and of its signals, in the area of use of the CRS."""
    points = [(f"position #{k}", lon, lat) for k, (lon, lat) in enumerate(route.geometry)]
    points += [
        (f"signal {s.intersection!r} at", s.lon, s.lat)
        for s in route.signals
        if s.lon is not None and s.lat is not None
    ]
    for what, lon, lat in points:
        if projector.in_area(lon, lat):
            continue
        hint = (
            SWAPPED
            if projector.in_area(lat, lon)
            else "correct the position, or set deployment.epsg to the CRS of the routes' area"
        )
        raise RouteFileError(
            f"{label}: {what} [{lon}, {lat}] is outside the area of use of EPSG:"
            f"{projector.epsg} ({projector.name}: {projector.describe_area()}, give or take "
            f"{AREA_MARGIN_DEG:g}°); {hint}"
        )


def _check_scale(route: Route, label: str, projector: Projector) -> None:
    """Lengths in the CRS are lengths on the ground (within 1 %) along the route."""
    line = route.geometry
    for lon, lat in (line[0], line[len(line) // 2], line[-1]):
        err = projector.scale_error(lon, lat)
        if err <= MAX_SCALE_ERROR:
            continue
        utm = utm_epsg_for(lon, lat) if UTM_LATITUDES[0] <= lat <= UTM_LATITUDES[1] else None
        better = f"e.g. EPSG:{utm}, the UTM zone there" if utm else "e.g. a polar stereographic"
        raise RouteFileError(
            f"{label}: EPSG:{projector.epsg} ({projector.name}) distorts lengths by "
            f"{err * 100:.0f} % at [{lon}, {lat}] (at most {MAX_SCALE_ERROR * 100:g} % is "
            "usable): every stop-line distance and ETA would be off by as much; choose a "
            f"CRS made for the area, {better}"
        )


def parse_routes(docs: Sequence[tuple[Path, Any]]) -> list[Route]:
    """Routes with signals in file order; stop-line distances are filled in later."""
    return _parse(docs)[0]


def _parse(docs: Sequence[tuple[Path, Any]]) -> tuple[list[Route], dict[str, Path]]:
    """The routes, and the file each comes from."""
    routes: dict[str, Route] = {}
    where: dict[str, Path] = {}
    point_signals: list[tuple[Path, int, Mapping[str, Any], tuple[float, float]]] = []
    for path, doc in docs:
        for i, feat in enumerate(_features(path, doc)):
            label = f"{path}: feature #{i}"
            props, geom = _parts(label, feat)
            kind = props.get("kind", "route" if geom.get("type") == "LineString" else "signal")
            if kind == "route":
                route = _parse_route(label, props, geom)
                if route.id in routes:
                    raise RouteFileError(
                        f"{label}: route id {route.id!r} already defined in {where[route.id]}"
                    )
                routes[route.id] = route
                where[route.id] = path
            elif kind == "signal":
                point_signals.append((path, i, props, _point(label, geom)))
            else:
                raise RouteFileError(f"{label}: unknown kind {kind!r}; use 'route' or 'signal'")
    for path, i, props, (lon, lat) in point_signals:
        label = f"{path}: feature #{i} (signal {props.get('intersection')!r})"
        sig = _parse_signal(label, props, lon=lon, lat=lat)
        for rid in _route_ids(label, props.get("routes")):
            if rid not in routes:
                raise RouteFileError(f"{label}: names route {rid!r}, which no file defines")
            routes[rid] = replace(routes[rid], signals=(*routes[rid].signals, sig))
    if not routes:
        names = ", ".join(str(p) for p, _ in docs)
        raise RouteFileError(f"{names}: no route (LineString feature with kind 'route') found")
    return list(routes.values()), where


def _features(path: Path, doc: Any) -> list[Any]:
    if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
        raise RouteFileError(f"{path}: expected a GeoJSON FeatureCollection at the top level")
    features = doc.get("features")
    if not isinstance(features, list):
        raise RouteFileError(f"{path}: 'features' must be a list")
    return features


def _parts(label: str, feat: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """A feature's properties and geometry, each an object."""
    if not isinstance(feat, Mapping):
        raise RouteFileError(f"{label}: not a GeoJSON Feature object")
    props = feat.get("properties") or {}
    geom = feat.get("geometry") or {}
    if not isinstance(props, Mapping):
        raise RouteFileError(f"{label}: 'properties' must be an object")
    if not isinstance(geom, Mapping):
        raise RouteFileError(f"{label}: 'geometry' must be a GeoJSON geometry object")
    return props, geom


def _route_ids(label: str, ids: Any) -> list[str]:
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not ids or not all(isinstance(r, str) and r for r in ids):
        raise RouteFileError(f"{label}: 'routes' must list the ids of the routes it is on")
    return ids


def _parse_route(label: str, props: Mapping[str, Any], geom: Mapping[str, Any]) -> Route:
    rid = props.get("id")
    if not isinstance(rid, str) or not rid:
        raise RouteFileError(f"{label}: route needs a non-empty string 'id'")
    label = f"{label} (route {rid!r})"
    if geom.get("type") != "LineString":
        raise RouteFileError(f"{label}: geometry must be a LineString, not {geom.get('type')!r}")
    coords = geom.get("coordinates")
    if not isinstance(coords, list) or len(coords) < 2:
        raise RouteFileError(f"{label}: a LineString needs at least two positions")
    line = tuple(_lonlat(f"{label}: position #{k}", c) for k, c in enumerate(coords))
    listed = props.get("signals") or []
    if not isinstance(listed, list):
        raise RouteFileError(f"{label}: 'signals' must be a list of signal objects")
    signals = tuple(_listed_signal(f"{label}: signals[{k}]", s) for k, s in enumerate(listed))
    limit = _number(label, props, "speed_limit_kmh", *SPEED_LIMIT)
    return Route(
        id=rid,
        name=str(props.get("name", rid)),
        station=str(props.get("station", "")),
        geometry=line,
        signals=signals,
        speed_limit=None if limit is None else limit / 3.6,
    )


def _listed_signal(label: str, props: Any) -> SignalPoint:
    if not isinstance(props, Mapping):
        raise RouteFileError(f"{label}: a signal must be an object")
    return _parse_signal(label, props, lon=props.get("lon"), lat=props.get("lat"))


def _number(
    label: str, props: Mapping[str, Any], key: str, lo: float, hi: float, unit: str, why: str
) -> float | None:
    """``props[key]`` as a float in lo..hi (None when absent); NaN, inf and true are refused."""
    v = props.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise RouteFileError(
            f"{label}: {key} must be a number from {lo:g} to {hi:g} {unit}, not "
            f"{json.dumps(v)[:40]}: {why}"
        )
    return float(v)


def _parse_signal(label: str, props: Mapping[str, Any], lon: Any, lat: Any) -> SignalPoint:
    values: dict[str, str] = {}
    for key in ("intersection", "controller", "approach"):
        v = props.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v:
            raise RouteFileError(f"{label}: signal needs '{key}' (a non-empty string)")
        values[key] = v
    transition = _number(label, props, "transition_s", *TRANSITION)
    stop = _number(label, props, "stop_line_m", *STOP_LINE)
    if lon is None and stop is None:
        raise RouteFileError(f"{label}: signal needs a position (lon/lat) or 'stop_line_m'")
    if lon is not None:
        lon, lat = _lonlat(label, [lon, lat])
    return SignalPoint(
        intersection=values["intersection"],
        controller=values["controller"],
        approach=values["approach"],
        transition_s=transition,
        stop_line_m=math.nan if stop is None else stop,
        lon=lon,
        lat=lat,
    )


def _point(label: str, geom: Mapping[str, Any]) -> tuple[float, float]:
    if geom.get("type") != "Point":
        raise RouteFileError(f"{label}: a signal's geometry must be a Point")
    return _lonlat(label, geom.get("coordinates"))


def _lonlat(label: str, c: Any) -> tuple[float, float]:
    if (
        not isinstance(c, list | tuple)
        or len(c) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in c[:2])
    ):
        raise RouteFileError(
            f"{label}: a position must be [lon, lat] numbers, got {json.dumps(c)[:60]}"
        )
    lon, lat = c[0], c[1]
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):  # NaN and inf fail here too
        raise RouteFileError(
            f"{label}: [{lon}, {lat}] is not a WGS84 [lon, lat] position "
            "(GeoJSON order is longitude first)"
        )
    return float(lon), float(lat)


def _check_gaps(route: Route, label: str) -> None:
    """A continuous line: consecutive vertices close together on the ground."""
    seg = ground_distances(route.geometry)
    # Measured on the ground, so that a CRS that distorts lengths is named as such (in
    # _check_scale) and not as a broken line; the slack allows for files drawn in metres of
    # a CRS, whose lengths differ from the ground's by up to MAX_SCALE_ERROR.
    if float(seg.max(initial=0.0)) > MAX_VERTEX_GAP_M * (1 + MAX_SCALE_ERROR):
        k = int(seg.argmax())
        hint = f" ({SWAPPED})" if seg[k] > 100_000 else ""
        raise RouteFileError(
            f"{label}: positions #{k} and #{k + 1} are {seg[k]:.0f} m apart; the line is "
            f"broken or a vertex is misplaced{hint} (limit {MAX_VERTEX_GAP_M:.0f} m)"
        )


def _check_line(mr: MetricRoute, projector: Projector, label: str) -> None:
    """Finite positions in the CRS, and a route at least a metre long."""
    if not np.isfinite(mr.xy).all():
        k = int(np.flatnonzero(~np.isfinite(mr.xy).all(axis=1))[0])
        raise RouteFileError(
            f"{label}: position #{k} {list(mr.route.geometry[k])} cannot be projected to "
            f"EPSG:{projector.epsg}; correct the position or the CRS"
        )
    if mr.length < 1.0:
        raise RouteFileError(f"{label}: the route is shorter than 1 m")


def _place_signals(mr: MetricRoute, projector: Projector, label: str) -> MetricRoute:
    """Fill in stop-line distances and check them: near the line, in driving order."""
    placed: list[SignalPoint] = []
    seen: set[str] = set()
    for sig in mr.signals:
        slabel = f"{label}: signal at intersection {sig.intersection!r}"
        if sig.intersection in seen:
            raise RouteFileError(f"{slabel}: listed twice on this route")
        seen.add(sig.intersection)
        if sig.lon is not None and sig.lat is not None:
            s, offset = mr.locate(*projector.to_metric(sig.lon, sig.lat))
            if not abs(offset) <= MAX_SIGNAL_OFFSET_M:
                hint = f"; {SWAPPED}" if _fits_swapped(mr, projector, sig.lon, sig.lat) else ""
                raise RouteFileError(
                    f"{slabel}: {abs(offset):.1f} m from the route line (limit "
                    f"{MAX_SIGNAL_OFFSET_M:.0f} m); check its position or the route it "
                    f"names{hint}"
                )
        else:
            s = sig.stop_line_m
            if not 0 <= s <= mr.length:
                raise RouteFileError(
                    f"{slabel}: stop_line_m {s} is outside the route (0..{mr.length:.0f} m)"
                )
            lon, lat = projector.to_wgs84(*_xy(mr, s))
            sig = replace(sig, lon=lon, lat=lat)
        if placed and s <= placed[-1].stop_line_m:
            raise RouteFileError(
                f"{slabel}: at {s:.0f} m along the route, not after the previous signal "
                f"{placed[-1].intersection!r} at {placed[-1].stop_line_m:.0f} m; list signals "
                "in driving order"
            )
        placed.append(replace(sig, stop_line_m=round(s, 2)))
    route = replace(mr.route, signals=tuple(placed))
    return MetricRoute(route=route, line=mr.line, xy=mr.xy, cum=mr.cum)


def _fits_swapped(mr: MetricRoute, projector: Projector, lon: float, lat: float) -> bool:
    """Whether the signal at [lon, lat] would lie on the route written the other way round."""
    if not (-180 <= lat <= 180 and -90 <= lon <= 90):
        return False
    _, offset = mr.locate(*projector.to_metric(lat, lon))
    return abs(offset) <= MAX_SIGNAL_OFFSET_M


def _xy(mr: MetricRoute, s: float) -> tuple[float, float]:
    st = mr.at(s)
    return st.x, st.y
