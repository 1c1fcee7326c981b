"""A fire engine driving its route: accelerates, cruises, stops at red stop lines.

One-dimensional along the route (distance s). The speed rule is Krauss's safe
speed reduced to a fixed obstacle: never faster than what still allows a
comfortable stop ``STOP_GAP_M`` before the next stop line that the engine has to
stop at, and never faster than the route's speed profile at s (``speed_limit``:
limits, curves and turns, with the braking for them). Signals are seen at the
start of every step.

The stop-or-go decision at a yellow is taken once, when the engine first sees the
yellow: if it can still stop comfortably (its braking distance at ``decel`` is at
most the distance to where it would halt) it stops, and keeps stopping through
the red; otherwise it is committed and drives through, also if the yellow turns
red before it reaches the stop line (the dilemma zone: braking harder than
comfortable or stopping on the crossing is worse). Deciding afresh at every step
would not do: braking along the safe-speed curve puts the engine, one step later,
just inside its own braking distance, and it would "find" it is too close and go.

Whether a committed engine clears the line before red is a matter of the yellow
time: it is at most ``v / (2 decel) + STOP_GAP_M / v`` seconds from the line when
it commits at speed ``v`` (under 2 s when slow, as it accelerates), so a yellow at
least that long plus one step keeps every crossing off red. At 2.5 m/s² RiLSA's
yellows (3 s at 50 km/h, 4 s at 60, 5 s at 70) all qualify; a faster engine on a
3 s yellow can be committed and still meet red, and then it drives on.

Queues: a stop line may report the length of the queue of background traffic
standing ahead of the engine (``StopLine.queue_m``). The engine then stops
behind its tail whatever the signal shows, and reaches the line only once the
vehicles ahead have discharged: a green that comes too late to clear them costs
the engine time even with pre-emption.

Crossing red: with ``red_crossing_speed`` set (German special rights, §35 StVO:
a red signal may be passed with due care), the engine does not stop at a red
stop line but slows to at most that speed at the line and crosses. A queue
ahead still stops it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sim.controller import Aspect

STOP_GAP_M = 1.0  # the engine halts this far before the stop line
STOPPED_SPEED = 0.1  # m/s; slower counts as standing (SUMO's waiting time)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    max_speed: float = 50 / 3.6  # m/s
    accel: float = 1.0  # m/s^2
    decel: float = 2.5  # m/s^2, comfortable
    length_m: float = 10.0

    def braking_distance(self, v: float) -> float:
        """Distance to stop from ``v`` at the comfortable deceleration."""
        return v * v / (2 * self.decel)


@dataclass(frozen=True, slots=True)
class StopLine:
    intersection: str
    s: float  # along the route
    aspect: Callable[[], Aspect]  # what the engine's approach shows now
    queue_m: Callable[[], float] | None = None  # queue of other vehicles ahead of the engine


@dataclass(frozen=True, slots=True)
class Crossing:
    intersection: str
    time: float  # simulation seconds when the front passed the stop line
    aspect: Aspect  # as seen at the start of the step in which it passed
    speed: float


@dataclass
class EngineRun:
    spec: EngineSpec
    route_length: float
    stop_lines: Sequence[StopLine]
    s: float = 0.0
    v: float = 0.0
    t: float = 0.0
    stopped_s: float = 0.0  # time spent below STOPPED_SPEED (SUMO's waitingTime)
    stops: int = 0  # times the engine came to a standstill after moving
    crossings: list[Crossing] = field(default_factory=list)
    finished_at: float | None = None  # when the front reached the end of the route
    red_crossing_speed: float | None = None  # m/s at a red line; None: stop at red
    # The route's drivable speed at s (limits, curves, braking for them in time); None:
    # the engine's maximum speed everywhere.
    speed_limit: Callable[[float], float] | None = None
    _next: int = field(default=0, init=False, repr=False)  # index of the next stop line ahead
    _was_moving: bool = field(default=False, init=False, repr=False)
    # Decisions at yellow, per stop line index, kept until it shows green or is passed.
    _committed: set[int] = field(default_factory=set, init=False, repr=False)  # drive through
    _stopping: set[int] = field(default_factory=set, init=False, repr=False)  # stop

    @property
    def finished(self) -> bool:
        return self.s >= self.route_length

    def step(self, dt: float) -> None:
        spec = self.spec
        v_allowed = min(spec.max_speed, self._safe_speed())
        if self.speed_limit is not None:
            v_allowed = min(v_allowed, self.speed_limit(self.s))
        v_new = max(0.0, min(self.v + spec.accel * dt, v_allowed))
        # Braking is bounded (twice the comfortable rate): physics, not wishes.
        v_new = max(v_new, self.v - 2 * spec.decel * dt)
        s_new = self.s + 0.5 * (self.v + v_new) * dt
        for i in range(self._next, len(self.stop_lines)):
            sl = self.stop_lines[i]
            if s_new < sl.s:
                break
            tau = self._time_to(sl.s - self.s, v_new, dt)
            speed = self.v + (v_new - self.v) * tau / dt
            self.crossings.append(Crossing(sl.intersection, self.t + tau, sl.aspect(), speed))
            self._next = i + 1
            self._committed.discard(i)
            self._stopping.discard(i)
        if self.finished_at is None and s_new >= self.route_length:
            self.finished_at = self.t + self._time_to(self.route_length - self.s, v_new, dt)
        moving = v_new >= STOPPED_SPEED
        if not moving:
            self.stopped_s += dt
            if self._was_moving:
                self.stops += 1
        self._was_moving = moving
        self.s, self.v, self.t = min(s_new, self.route_length), v_new, self.t + dt

    def _safe_speed(self) -> float:
        """The highest speed that still allows a comfortable stop where it must stop."""
        spec = self.spec
        limit = math.inf
        if self._next < len(self.stop_lines):
            sl = self.stop_lines[self._next]
            queue = 0.0 if sl.queue_m is None else sl.queue_m()
            if queue > 0:
                limit = math.sqrt(2 * spec.decel * max(sl.s - STOP_GAP_M - queue - self.s, 0.0))
        return min(limit, self._signal_speed(self._next))

    def _signal_speed(self, first: int) -> float:
        """The highest speed the signals from stop line ``first`` on allow."""
        spec = self.spec
        for i in range(first, len(self.stop_lines)):
            sl = self.stop_lines[i]
            aspect = sl.aspect()
            if aspect is Aspect.GREEN:
                self._committed.discard(i)
                self._stopping.discard(i)
                continue
            gap = sl.s - STOP_GAP_M - self.s
            if i not in self._committed and i not in self._stopping:
                # The first sight of a yellow (or of a red never seen yellow) decides.
                can_stop = aspect is Aspect.RED or spec.braking_distance(self.v) <= gap
                (self._stopping if can_stop else self._committed).add(i)
            if i in self._committed:
                continue  # too close to stop when it turned: drive through
            vc = self.red_crossing_speed
            if vc is not None:
                # Special rights: slow to vc at the line, then on to the next signal.
                here = math.sqrt(vc * vc + 2 * spec.decel * max(sl.s - self.s, 0.0))
                return min(here, self._signal_speed(i + 1))
            return math.sqrt(2 * spec.decel * max(gap, 0.0))
        return math.inf

    def _time_to(self, d: float, v_new: float, dt: float) -> float:
        """Time into this step at which the engine has covered ``d`` (speed linear in time)."""
        if d <= 0:
            return 0.0
        k = (v_new - self.v) / dt
        # Root of v*tau + k*tau**2/2 = d, in the form that is stable for k -> 0.
        return min(dt, 2 * d / (self.v + math.sqrt(max(self.v * self.v + 2 * k * d, 0.0))))
