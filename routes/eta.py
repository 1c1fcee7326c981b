"""Arrival prediction: when does the engine reach a stop line, with a band."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """How an engine drives on an emergency run (defaults: a 16 t HLF 20 in town)."""

    target_speed: float = 50 / 3.6  # m/s it settles at on the route
    accel: float = 1.0  # m/s^2 from standstill
    decel: float = 2.5  # m/s^2 comfortable braking
    # Band: the engine may drive this much faster / slower than the target.
    fast_factor: float = 1.25
    slow_factor: float = 0.75


def travel_time(distance: float, v0: float, v_target: float, accel: float) -> float:
    """Seconds to cover ``distance`` starting at ``v0``, accelerating at ``accel`` to
    ``v_target`` then cruising (already faster: cruise at ``v0`` down to target)."""
    if distance <= 0:
        return 0.0
    v0 = max(0.0, v0)
    if v0 >= v_target:
        return distance / max(v0, 1e-3)
    # Distance needed to reach the target speed.
    d_acc = (v_target * v_target - v0 * v0) / (2 * accel)
    if distance <= d_acc:
        v_end = math.sqrt(v0 * v0 + 2 * accel * distance)
        return (v_end - v0) / accel
    return (v_target - v0) / accel + (distance - d_acc) / v_target


def eta_band(distance: float, v0: float, profile: EngineProfile) -> tuple[float, float, float]:
    """(early, expected, late) seconds to the stop line; early <= expected <= late."""
    expected = travel_time(distance, v0, profile.target_speed, profile.accel)
    early = travel_time(
        distance,
        v0,
        profile.target_speed * profile.fast_factor,
        profile.accel * profile.fast_factor,
    )
    late = travel_time(
        distance,
        v0 * profile.slow_factor,
        profile.target_speed * profile.slow_factor,
        profile.accel * profile.slow_factor,
    )
    return min(early, expected), expected, max(late, expected)
