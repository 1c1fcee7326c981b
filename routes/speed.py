"""How fast an engine drives each stretch of a route, and how long it takes.

The speed an engine can hold at distance s is the lowest of: the speed its
crew drives on the route (limit times the driver's factor for emergency runs),
the engine's own top speed, and the curve speed sqrt(a_lat * R) from the
route's curvature. The profile is then made drivable by the engine's
acceleration and braking (a forward and a backward pass), and the time along
it is tabulated once per route, so an ETA costs two table look-ups.

Per-stretch speeds can be given (``overrides``): learned speeds from past runs
replace the defaults without touching the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routes.geometry import MetricRoute
from routes.projection import FloatArray

STEP_M = 5.0


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """How an engine drives on an emergency run (defaults: a 16 t HLF 20 in town)."""

    target_speed: float = 50 / 3.6  # m/s where the route has no limit of its own
    max_speed: float = 80 / 3.6  # the engine's top speed in town
    accel: float = 1.0  # m/s^2
    decel: float = 2.5  # m/s^2, comfortable
    lateral_accel: float = 1.5  # m/s^2 in curves (a tall, heavy vehicle)
    # The band: drivers and traffic make runs this much faster / slower than expected.
    fast_factor: float = 1.2
    slow_factor: float = 0.8


@dataclass(frozen=True, slots=True)
class SpeedOverride:
    s0: float
    s1: float
    speed: float  # m/s


class SpeedProfile:
    """Drivable speed and cumulative time along one route."""

    def __init__(
        self,
        route: MetricRoute,
        profile: EngineProfile,
        overrides: Sequence[SpeedOverride] = (),
    ) -> None:
        self.profile = profile
        n = max(2, math.ceil(route.length / STEP_M) + 1)
        self.s: FloatArray = np.linspace(0.0, route.length, n)
        self.step = float(self.s[1] - self.s[0])
        cruise = route.route.speed_limit or profile.target_speed
        limit = np.full(n, min(cruise, profile.max_speed))
        for o in overrides:
            limit[(self.s >= o.s0) & (self.s <= o.s1)] = min(o.speed, profile.max_speed)
        radius = _curve_radius(route, self.s)
        limit = np.minimum(limit, np.sqrt(profile.lateral_accel * radius))
        self.limit: FloatArray = limit
        v = limit.copy()
        # Backward pass: brake in time for every slower stretch ahead.
        for i in range(n - 2, -1, -1):
            v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + 2 * profile.decel * self.step))
        self.v: FloatArray = v
        # Time along the profile at cruise (entering each point at v): t = ds / mean speed.
        mean = np.maximum(0.5 * (v[1:] + v[:-1]), 0.5)
        self.t: FloatArray = np.concatenate([[0.0], np.cumsum(self.step / mean)])
        # Plain lists for the hot path: a scalar look-up in Python beats np.interp's overhead.
        self._v = [float(x) for x in self.v]
        self._t = [float(x) for x in self.t]
        self._last = len(self._v) - 1

    def _lookup(self, table: list[float], s: float) -> float:
        f = s / self.step
        i = int(f)
        if i < 0:
            return table[0]
        if i >= self._last:
            return table[self._last]
        w = f - i
        return table[i] * (1.0 - w) + table[i + 1] * w

    def speed_at(self, s: float) -> float:
        return self._lookup(self._v, s)

    def time_at(self, s: float) -> float:
        """Seconds on the profile from the route start to ``s``."""
        return self._lookup(self._t, s)

    def time_between(self, s_from: float, s_to: float) -> float:
        """Seconds on the profile from ``s_from`` to ``s_to`` (entering at profile speed)."""
        return self._lookup(self._t, s_to) - self._lookup(self._t, s_from)

    def eta(self, s: float, v0: float, s_to: float) -> float:
        """Seconds from ``s`` at speed ``v0`` to ``s_to``.

        The profile's time, corrected for starting slower than the profile (the
        time lost accelerating from ``v0`` to the profile speed).
        """
        return self.etas(s, v0, (s_to,), 0.0)[0][1]

    def etas(
        self,
        s: float,
        v0: float,
        stops: Sequence[float],
        sigma_s: float,
        stop_times: Sequence[float] | None = None,
    ) -> list[tuple[float, float, float]]:
        """(early, expected, late) seconds from ``s`` at ``v0`` to each of ``stops``.

        The band widens with the driver spread (``fast_factor``/``slow_factor``)
        and with the position uncertainty ``sigma_s`` (two sigma, at the current
        speed or the profile speed, whichever is larger). ``stop_times``, if given,
        are :meth:`time_at` of each stop, worked out beforehand (fixed stop lines).
        """
        p = self.profile
        a = p.accel
        t_here = self._lookup(self._t, s)
        vp = self._lookup(self._v, s)
        # Conditional expressions in the order max() compares (this runs every fix).
        v0 = v0 if v0 > 0.0 else 0.0
        d_acc = (vp * vp - v0 * v0) / (2 * a) if v0 < vp else 0.0
        lost = (vp - v0) ** 2 / (2 * a * vp) if v0 < vp else 0.0
        v_max = vp if vp > v0 else v0
        pos = 2.0 * sigma_s / (1.0 if v_max < 1.0 else v_max)
        times = stop_times if stop_times is not None else [self._lookup(self._t, x) for x in stops]
        fast, slow = p.fast_factor, p.slow_factor
        out = []
        for s_to, t_to in zip(stops, times, strict=True):
            d = s_to - s
            if d <= 0:
                out.append((0.0, 0.0, 0.0))
                continue
            # Still accelerating when it reaches the stop line, or on the profile.
            eta = (math.sqrt(v0 * v0 + 2 * a * d) - v0) / a if d < d_acc else t_to - t_here + lost
            early = eta / fast - pos
            out.append((early if early > 0.0 else 0.0, eta, eta / slow + pos))
        return out


def eta_band(
    profile: SpeedProfile, s: float, v0: float, s_to: float, sigma_s: float
) -> tuple[float, float, float]:
    """(early, expected, late) seconds to ``s_to``; see :meth:`SpeedProfile.etas`."""
    return profile.etas(s, v0, (s_to,), sigma_s)[0]


def _curve_radius(route: MetricRoute, s: FloatArray) -> FloatArray:
    """Radius of curvature at each s, from the heading change over +-15 m."""
    half = 15.0
    xy0 = _xy_at(route, np.clip(s - half, 0.0, route.length))
    xy1 = _xy_at(route, s)
    xy2 = _xy_at(route, np.clip(s + half, 0.0, route.length))
    h0 = np.arctan2(xy1[:, 0] - xy0[:, 0], xy1[:, 1] - xy0[:, 1])
    h1 = np.arctan2(xy2[:, 0] - xy1[:, 0], xy2[:, 1] - xy1[:, 1])
    dh = np.abs((h1 - h0 + np.pi) % (2 * np.pi) - np.pi)
    arc = np.maximum(np.hypot(*(xy2 - xy0).T), 1.0)
    with np.errstate(divide="ignore"):
        radius = np.where(dh > 1e-6, arc / np.maximum(dh, 1e-9), 1e6)
    return np.asarray(np.minimum(radius, 1e6), dtype=np.float64)


def _xy_at(route: MetricRoute, s: FloatArray) -> FloatArray:
    x = np.interp(s, route.cum, route.xy[:, 0])
    y = np.interp(s, route.cum, route.xy[:, 1])
    return np.column_stack([x, y])
