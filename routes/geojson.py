"""Route files: GeoJSON (RFC 7946, lon/lat) in, validated routes out.

A route is a LineString feature with ``properties.kind = "route"`` and ``id``,
``name``, ``station``. Its signals are Point features with ``kind = "signal"``,
``routes`` (the ids of the routes they belong to), ``intersection``,
``controller``, ``approach`` and optionally ``transition_s``; or, equally, a
``signals`` list in the route's properties with the same keys and either
``lon``/``lat`` or ``stop_line_m``. docs/routes.md describes the format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from preemption.kernel.errors import InputError
from preemption.kernel.model import Route, SignalPoint
from routes.geometry import MetricRoute
from routes.projection import Projector

MAX_SIGNAL_OFFSET_M = 15.0  # a signal further than this from its route is a mistake
MAX_VERTEX_GAP_M = 500.0  # consecutive vertices further apart suggest a broken line


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
    raw: list[tuple[Path, Mapping[str, Any]]] = []
    for p in paths:
        path = Path(p)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RouteFileError(f"{path}: route file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RouteFileError(f"{path}: not readable as GeoJSON: {exc}") from None
        raw.append((path, doc))
    return _build(raw, epsg)


def load_routes_from_document(
    doc: Mapping[str, Any], epsg: int | None = None, name: str = "<document>"
) -> RouteSet:
    """Like :func:`load_routes`, for a GeoJSON document already in memory."""
    return _build([(Path(name), doc)], epsg)


def _build(raw: Sequence[tuple[Path, Mapping[str, Any]]], epsg: int | None) -> RouteSet:
    routes = parse_routes(raw)
    allpts = [pt for r in routes for pt in r.geometry]
    projector = Projector(epsg) if epsg is not None else Projector.for_points(allpts)
    metric: dict[str, MetricRoute] = {}
    for route in routes:
        metric[route.id] = _place_signals(MetricRoute.build(route, projector), projector)
    return RouteSet(projector=projector, routes=metric)


def parse_routes(docs: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[Route]:
    """Routes with signals in file order; stop-line distances are filled in later."""
    routes: dict[str, Route] = {}
    where: dict[str, Path] = {}
    point_signals: list[tuple[Path, int, Mapping[str, Any], tuple[float, float]]] = []
    for path, doc in docs:
        if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
            raise RouteFileError(f"{path}: expected a GeoJSON FeatureCollection at the top level")
        features = doc.get("features")
        if not isinstance(features, list):
            raise RouteFileError(f"{path}: 'features' must be a list")
        for i, feat in enumerate(features):
            label = f"{path}: feature #{i}"
            if not isinstance(feat, Mapping):
                raise RouteFileError(f"{label}: not a GeoJSON Feature object")
            props = feat.get("properties") or {}
            geom = feat.get("geometry") or {}
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
        ids = props.get("routes")
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, list) or not ids:
            raise RouteFileError(f"{label}: 'routes' must list the ids of the routes it is on")
        sig = _parse_signal(label, props, lon=lon, lat=lat)
        for rid in ids:
            if rid not in routes:
                raise RouteFileError(f"{label}: names route {rid!r}, which no file defines")
            routes[rid] = replace(routes[rid], signals=(*routes[rid].signals, sig))
    if not routes:
        names = ", ".join(str(p) for p, _ in docs)
        raise RouteFileError(f"{names}: no route (LineString feature with kind 'route') found")
    return list(routes.values())


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
    signals = tuple(
        _parse_signal(f"{label}: signals[{k}]", s, lon=s.get("lon"), lat=s.get("lat"))
        for k, s in enumerate(props.get("signals") or [])
    )
    limit = props.get("speed_limit_kmh")
    if limit is not None and (not isinstance(limit, int | float) or limit <= 0):
        raise RouteFileError(f"{label}: speed_limit_kmh must be a positive number")
    return Route(
        id=rid,
        name=str(props.get("name", rid)),
        station=str(props.get("station", "")),
        geometry=line,
        signals=signals,
        speed_limit=None if limit is None else float(limit) / 3.6,
    )


def _parse_signal(label: str, props: Mapping[str, Any], lon: Any, lat: Any) -> SignalPoint:
    if not isinstance(props, Mapping):
        raise RouteFileError(f"{label}: a signal must be an object")
    values: dict[str, str] = {}
    for key in ("intersection", "controller", "approach"):
        v = props.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v:
            raise RouteFileError(f"{label}: signal needs '{key}' (a non-empty string)")
        values[key] = v
    transition = props.get("transition_s")
    if transition is not None and (
        not isinstance(transition, int | float) or not 0 < transition <= 180
    ):
        raise RouteFileError(f"{label}: transition_s must be a number of seconds in (0, 180]")
    stop = props.get("stop_line_m")
    if lon is None and stop is None:
        raise RouteFileError(f"{label}: signal needs a position (lon/lat) or 'stop_line_m'")
    if lon is not None:
        lon, lat = _lonlat(label, [lon, lat])
    return SignalPoint(
        intersection=values["intersection"],
        controller=values["controller"],
        approach=values["approach"],
        transition_s=None if transition is None else float(transition),
        stop_line_m=float(stop) if isinstance(stop, int | float) else math.nan,
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
        raise RouteFileError(f"{label}: a position must be [lon, lat] numbers, got {c!r}")
    lon, lat = float(c[0]), float(c[1])
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise RouteFileError(
            f"{label}: [{lon}, {lat}] is not a WGS84 [lon, lat] position "
            "(GeoJSON order is longitude first)"
        )
    return lon, lat


def _place_signals(mr: MetricRoute, projector: Projector) -> MetricRoute:
    """Fill in stop-line distances, then check the route is usable as a whole."""
    label = f"route {mr.id!r}"
    seg = mr.cum[1:] - mr.cum[:-1]
    if float(seg.max(initial=0.0)) > MAX_VERTEX_GAP_M:
        k = int(seg.argmax())
        hint = " (longitude and latitude swapped?)" if seg[k] > 100_000 else ""
        raise RouteFileError(
            f"{label}: positions #{k} and #{k + 1} are {seg[k]:.0f} m apart; the line is "
            f"broken or a vertex is misplaced{hint} (limit {MAX_VERTEX_GAP_M:.0f} m)"
        )
    if mr.length < 1.0:
        raise RouteFileError(f"{label}: the route is shorter than 1 m")
    placed: list[SignalPoint] = []
    seen: set[str] = set()
    for sig in mr.signals:
        slabel = f"{label}: signal at intersection {sig.intersection!r}"
        if sig.intersection in seen:
            raise RouteFileError(f"{slabel}: listed twice on this route")
        seen.add(sig.intersection)
        if sig.lon is not None and sig.lat is not None:
            s, offset = mr.locate(*projector.to_metric(sig.lon, sig.lat))
            if abs(offset) > MAX_SIGNAL_OFFSET_M:
                raise RouteFileError(
                    f"{slabel}: {abs(offset):.1f} m from the route line (limit "
                    f"{MAX_SIGNAL_OFFSET_M:.0f} m); check its position or the route it names"
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


def _xy(mr: MetricRoute, s: float) -> tuple[float, float]:
    st = mr.at(s)
    return st.x, st.y
