"""A route in metric coordinates: the shapes the matcher and the simulator work on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString

from preemption.kernel.model import Route, SignalPoint
from routes.projection import FloatArray, Projector


@dataclass(frozen=True, slots=True)
class Station:
    """A point along a route: distance s (m) and metric position."""

    s: float
    x: float
    y: float
    heading_deg: float  # direction of travel, degrees true (0 = north, clockwise)


@dataclass(frozen=True)
class MetricRoute:
    """A route projected to metres, with cumulative distance per vertex."""

    route: Route
    line: LineString
    xy: FloatArray  # (n, 2) vertices
    cum: FloatArray  # (n,) distance of each vertex along the route

    @classmethod
    def build(cls, route: Route, projector: Projector) -> MetricRoute:
        xy = projector.to_metric_many(route.geometry)
        seg = np.hypot(np.diff(xy[:, 0]), np.diff(xy[:, 1]))
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        line = LineString(xy)
        shapely.prepare(line)
        return cls(route=route, line=line, xy=xy, cum=cum)

    @property
    def id(self) -> str:
        return self.route.id

    @property
    def length(self) -> float:
        return float(self.cum[-1])

    @property
    def signals(self) -> tuple[SignalPoint, ...]:
        return self.route.signals

    def at(self, s: float) -> Station:
        """Position and heading at distance s (clamped to the route)."""
        s = min(max(s, 0.0), self.length)
        i = int(np.searchsorted(self.cum, s, side="right")) - 1
        i = min(max(i, 0), len(self.cum) - 2)
        x0, y0 = self.xy[i]
        x1, y1 = self.xy[i + 1]
        seg = self.cum[i + 1] - self.cum[i]
        f = 0.0 if seg <= 0 else (s - self.cum[i]) / seg
        heading = math.degrees(math.atan2(x1 - x0, y1 - y0)) % 360.0
        return Station(
            s=s, x=float(x0 + f * (x1 - x0)), y=float(y0 + f * (y1 - y0)), heading_deg=heading
        )

    def locate(self, x: float, y: float) -> tuple[float, float]:
        """Distance along the route of the nearest point, and the signed lateral offset.

        The offset is positive to the left of the direction of travel.
        """
        p = shapely.Point(x, y)
        s = float(shapely.line_locate_point(self.line, p))
        st = self.at(s)
        dist = float(shapely.distance(self.line, p))
        # Left of travel when the cross product of heading and offset vector is positive.
        hx, hy = math.sin(math.radians(st.heading_deg)), math.cos(math.radians(st.heading_deg))
        cross = hx * (y - st.y) - hy * (x - st.x)
        return s, dist if cross >= 0 else -dist


def heading_difference(a_deg: float, b_deg: float) -> float:
    """Smallest absolute angle between two headings, 0..180, safe across 0/360."""
    d = (a_deg - b_deg) % 360.0
    return d if d <= 180.0 else 360.0 - d
