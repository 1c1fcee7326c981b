"""WGS84 <-> metric projection through one pyproj Transformer per direction.

A projector also says whether a position is one the CRS is made for
(:meth:`Projector.in_area`, the EPSG area of use with a margin) and how far
lengths in the CRS are off from lengths on the ground there
(:meth:`Projector.scale_error`): route loading refuses routes a CRS would
measure wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import CRSError

FloatArray = npt.NDArray[np.float64]
# The EPSG area of use is where the CRS is defined for surveying; states stretch a zone
# past it (Bavaria surveys in EPSG:25832, zone 32 of 6-12°E, up to 13.8°E), and a UTM zone
# still measures within 0.1 % of the truth 3° beyond its edge.
AREA_MARGIN_DEG = 3.0
_GEOD = Geod(ellps="WGS84")


def utm_epsg_for(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone around (lon, lat).

    In Europe the ETRS89 realisation (EPSG:258zz, what German surveying offices
    use: EPSG:25832 for Mannheim) is chosen; elsewhere WGS84 UTM (326zz/327zz).
    """
    if not (-180.0 <= lon <= 180.0 and -80.0 <= lat <= 84.0):
        raise ValueError(f"no UTM zone for lon={lon}, lat={lat}: outside -180..180 / -80..84")
    zone = min(60, int((lon + 180.0) // 6.0) + 1)
    if 28 <= zone <= 38 and 34.0 <= lat <= 72.0:
        return 25800 + zone
    return (32600 if lat >= 0 else 32700) + zone


def ground_distances(lonlats: Iterable[tuple[float, float]]) -> FloatArray:
    """Distances on the ellipsoid (m) between consecutive WGS84 positions, whatever the CRS."""
    pts = np.asarray(list(lonlats), dtype=np.float64).reshape(-1, 2)
    _, _, dist = _GEOD.inv(pts[:-1, 0], pts[:-1, 1], pts[1:, 0], pts[1:, 1])
    return np.asarray(dist, dtype=np.float64).reshape(-1)


class Projector:
    """Projects WGS84 lon/lat (GeoJSON order) to a metric CRS and back."""

    def __init__(self, epsg: int) -> None:
        try:
            crs = CRS.from_epsg(epsg)
        except CRSError:
            raise ValueError(
                f"EPSG:{epsg} does not exist (no such code in the EPSG registry); choose e.g. "
                "a UTM zone (EPSG:25832 for ETRS89 / UTM 32N)"
            ) from None
        if not crs.is_projected:
            raise ValueError(f"EPSG:{epsg} is not a projected (metric) CRS; choose e.g. a UTM zone")
        units = {a.unit_name for a in crs.axis_info} - {"metre"}
        if units:
            raise ValueError(
                f"EPSG:{epsg} measures in {', '.join(sorted(units))}, not metres; choose e.g. "
                "a UTM zone"
            )
        self.epsg = epsg
        self.name: str = crs.name
        aou = crs.area_of_use
        self.area: tuple[float, float, float, float] | None = (
            None if aou is None else (aou.west, aou.south, aou.east, aou.north)
        )
        self._fwd = Transformer.from_crs(4326, crs, always_xy=True)
        self._inv = Transformer.from_crs(crs, 4326, always_xy=True)

    @classmethod
    def for_points(cls, lonlats: Iterable[tuple[float, float]]) -> Projector:
        """A projector in the UTM zone of the points' centre."""
        pts = np.asarray(list(lonlats), dtype=np.float64)
        if pts.size == 0:
            raise ValueError("cannot choose a UTM zone for no points")
        lon, lat = float(np.mean(pts[:, 0])), float(np.mean(pts[:, 1]))
        return cls(utm_epsg_for(lon, lat))

    def in_area(self, lon: float, lat: float, margin: float = AREA_MARGIN_DEG) -> bool:
        """Whether (lon, lat) lies in the CRS's area of use, widened by ``margin`` degrees."""
        if self.area is None:
            return True
        west, south, east, north = self.area
        if not south - margin <= lat <= north + margin:
            return False
        if west <= east:
            return west - margin <= lon <= east + margin
        return lon >= west - margin or lon <= east + margin  # the area crosses 180°

    def describe_area(self) -> str:
        if self.area is None:
            return "the whole world"
        west, south, east, north = self.area
        return f"lon {west:g} to {east:g}, lat {south:g} to {north:g}"

    def scale_error(self, lon: float, lat: float) -> float:
        """How far lengths in the CRS are off from lengths on the ground near (lon, lat):
        0.0004 is UTM on its central meridian, 0.54 Web Mercator at 49.5°N; inf where the
        CRS cannot project the point."""
        x0, y0 = self.to_metric(lon, lat)
        worst = 0.0
        for azimuth in (0.0, 90.0):  # along the meridian and along the parallel
            lon1, lat1, _ = _GEOD.fwd(lon, lat, azimuth, 100.0)
            x1, y1 = self.to_metric(float(lon1), float(lat1))
            k = math.hypot(x1 - x0, y1 - y0) / 100.0
            worst = max(worst, abs(k - 1.0)) if math.isfinite(k) else math.inf
        return worst

    def to_metric(self, lon: float, lat: float) -> tuple[float, float]:
        x, y = self._fwd.transform(lon, lat)
        return float(x), float(y)

    def to_metric_many(self, lonlats: Iterable[tuple[float, float]]) -> FloatArray:
        """An (n, 2) array of metric x, y."""
        pts = np.asarray(list(lonlats), dtype=np.float64).reshape(-1, 2)
        x, y = self._fwd.transform(pts[:, 0], pts[:, 1])
        return np.column_stack([x, y])

    def to_wgs84(self, x: float, y: float) -> tuple[float, float]:
        lon, lat = self._inv.transform(x, y)
        return float(lon), float(lat)
