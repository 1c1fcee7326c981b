"""Background traffic: a queue of vehicles at each approach's stop line.

Each approach is a *vertical queue*: a count of vehicles waiting at the stop
line, not vehicle objects. Vehicles arrive at the approach's demand (veh/h),
as a seeded Poisson stream or evenly spaced; while the approach's signal group
is green the queue discharges one vehicle per saturation headway (about 2 s,
1,800 veh/h of green) after a start-up loss (about 2 s) from green onset, so
the first vehicle crosses at onset + loss + headway. A vehicle that arrives
during green at an empty queue, once the start-up loss is over, drives through
without waiting. Each queued vehicle takes ``vehicle_spacing_m`` of road
(about 7.5 m), which is where an engine behind the queue has to stop.

The queue reads its signal group's green intervals from the controller's
``green_log`` and is advanced lazily, event by event (an arrival, a departure),
so its cost grows with the number of vehicles, not with the simulation steps.
The controller must have been advanced at least as far as the queue.

Delay is the integral of the queue length over time (vehicle-seconds spent
waiting at the line): the stopped delay of the approach.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class ArrivalKind(StrEnum):
    POISSON = "poisson"
    UNIFORM = "uniform"


@dataclass(frozen=True, slots=True)
class QueueParams:
    saturation_headway_s: float = 2.0
    start_up_loss_s: float = 2.0
    vehicle_spacing_m: float = 7.5
    arrivals: ArrivalKind = ArrivalKind.POISSON

    def __post_init__(self) -> None:
        if not (self.saturation_headway_s > 0 and self.vehicle_spacing_m > 0):
            raise ValueError(
                f"saturation headway ({self.saturation_headway_s} s) and vehicle spacing "
                f"({self.vehicle_spacing_m} m) must be positive"
            )
        if not self.start_up_loss_s >= 0:
            raise ValueError(f"start-up loss cannot be negative ({self.start_up_loss_s} s)")


def stream_seed(seed: int, *names: str) -> int:
    """A seed for one named stream, stable across processes (unlike ``hash``)."""
    return zlib.crc32(":".join([str(seed), *names]).encode())


@dataclass
class ApproachQueue:
    """Vehicles waiting at one approach's stop line."""

    intersection: str
    approach: str
    group: str
    demand_veh_h: float
    green_log: Sequence[Sequence[float]]  # the controller's [on, off] log of the group (live)
    params: QueueParams = field(default_factory=QueueParams)
    seed: int = 0
    t: float = 0.0
    queued: int = 0  # vehicles waiting now
    arrived: int = 0
    departed: int = 0
    delay_veh_s: float = 0.0  # integral of ``queued`` over time
    longest: int = 0  # the most vehicles seen waiting at once
    _rng: random.Random = field(init=False, repr=False)
    _next_arrival: float = field(default=math.inf, init=False, repr=False)
    _last_departure: float = field(default=-math.inf, init=False, repr=False)
    _gi: int = field(default=0, init=False, repr=False)  # first green not over before t

    def __post_init__(self) -> None:
        if not self.demand_veh_h >= 0:
            raise ValueError(
                f"{self.intersection} approach {self.approach}: demand cannot be negative "
                f"({self.demand_veh_h} veh/h)"
            )
        self._rng = random.Random(stream_seed(self.seed, self.intersection, self.approach))
        # A demand so small that its rate underflows to 0 veh/s is no demand (no arrival
        # would come within the age of the universe; expovariate(0) would divide by 0).
        if self.demand_veh_h / 3600.0 > 0.0 and math.isfinite(3600.0 / self.demand_veh_h):
            headway = 3600.0 / self.demand_veh_h
            first = (
                self._rng.expovariate(1.0 / headway)
                if self.params.arrivals is ArrivalKind.POISSON
                else self._rng.uniform(0.0, headway)
            )
            self._next_arrival = self.t + first

    @property
    def queue_m(self) -> float:
        return self.queued * self.params.vehicle_spacing_m

    def advance_to(self, t: float) -> None:
        """Process arrivals and departures up to ``t`` (the controller is at least there)."""
        while True:
            dep = self._next_departure()
            arr = self._next_arrival
            when = dep if dep <= arr else arr
            if when > t:
                break
            self._wait_to(when)
            if dep <= arr:
                self.queued -= 1
                self.departed += 1
                self._last_departure = when
            else:
                self._arrive(when)
        self._wait_to(t)

    # -- internals ---------------------------------------------------------------------------

    def _wait_to(self, t: float) -> None:
        if t > self.t:
            self.delay_veh_s += self.queued * (t - self.t)
            self.t = t

    def _arrive(self, t: float) -> None:
        self.arrived += 1
        p = self.params
        on = self._green_on_at(t)
        if (
            self.queued == 0
            and on is not None
            and t >= on + p.start_up_loss_s
            and t >= self._last_departure + p.saturation_headway_s
        ):
            self.departed += 1  # straight through on green
            self._last_departure = t
        else:
            self.queued += 1
            self.longest = max(self.longest, self.queued)
        headway = 3600.0 / self.demand_veh_h
        if p.arrivals is ArrivalKind.POISSON:
            self._next_arrival = t + self._rng.expovariate(1.0 / headway)
        else:
            self._next_arrival = t + headway

    def _green_on_at(self, t: float) -> float | None:
        """Onset of the green that shows at ``t``, if one does."""
        log = self.green_log
        while self._gi < len(log) and log[self._gi][1] <= self.t:
            self._gi += 1
        for on, off in log[self._gi :]:
            if on > t:
                return None
            if t < off:
                return on
        return None

    def _next_departure(self) -> float:
        """When the first queued vehicle crosses the line (inf: no known green lets it)."""
        if self.queued == 0:
            return math.inf
        p = self.params
        log = self.green_log
        while self._gi < len(log) and log[self._gi][1] <= self.t:
            self._gi += 1
        for on, off in log[self._gi :]:
            when = max(
                on + p.start_up_loss_s + p.saturation_headway_s,
                self._last_departure + p.saturation_headway_s,
                self.t,
            )
            if when < off:
                return when
        return math.inf
