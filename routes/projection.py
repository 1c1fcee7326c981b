"""WGS84 <-> metric projection through one pyproj Transformer per direction."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from pyproj import CRS, Transformer

FloatArray = npt.NDArray[np.float64]


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


class Projector:
    """Projects WGS84 lon/lat (GeoJSON order) to a metric CRS and back."""

    def __init__(self, epsg: int) -> None:
        crs = CRS.from_epsg(epsg)
        if not crs.is_projected:
            raise ValueError(f"EPSG:{epsg} is not a projected (metric) CRS; choose e.g. a UTM zone")
        self.epsg = epsg
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
