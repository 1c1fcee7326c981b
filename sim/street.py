"""The seam between a street model and whatever drives it.

Two street models exist: the in-process one (``sim.world``) and SUMO through
libsumo (``sim.sumo``). The runner that wires the daemon's parts to a street
(``preemption.cli.simulate``) knows only this protocol, so both run the same
planner against the same controller models (``sim.controller``), and give the
same result type, named as SUMO's tripinfo output names things.

Times are seconds since the scenario's start on the simulation clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sim.controller import Aspect, SignalController


@dataclass(frozen=True, slots=True)
class SignalPassage:
    """The engine's front crossing a stop line on its route."""

    intersection: str
    group: str  # the signal group that governs the engine's movement there
    time: float
    aspect: Aspect  # what that group showed when the engine crossed
    speed: float  # m/s at the stop line


@dataclass(frozen=True, slots=True)
class TrajectoryPoint:
    t: float
    s: float  # distance along the engine's route, m
    v: float  # m/s


@dataclass(frozen=True)
class EngineTrip:
    """One engine's run, with SUMO's tripinfo names where SUMO has one."""

    vehicle: str
    route: str
    depart: float
    arrival: float  # front at the end of the route
    route_length: float
    travel_time: float  # tripinfo duration
    time_loss: float  # tripinfo timeLoss: against driving the whole route at max speed
    waiting_time: float  # tripinfo waitingTime: seconds below 0.1 m/s
    stops: int  # tripinfo waitingCount: standstills after moving
    passages: Sequence[SignalPassage]
    trajectory: Sequence[TrajectoryPoint] = field(default=(), repr=False)


class Street(Protocol):
    """A simulated street with signal controllers and one fire engine on its route."""

    @property
    def t(self) -> float:
        """Seconds since the scenario's start."""
        ...

    @property
    def controllers(self) -> Mapping[str, SignalController]:
        """Every controller of the scenario by intersection id; the planner's
        commands reach them through the ``simlink`` adapter."""
        ...

    @property
    def departed(self) -> bool: ...

    @property
    def finished(self) -> bool:
        """The engine's front has reached the end of its route."""
        ...

    def advance(self, dt: float) -> None:
        """Move controllers, traffic and the engine on by ``dt`` seconds."""
        ...

    def nmea(self, t_utc: float) -> list[str]:
        """What the engine's receiver writes for the current epoch (RMC and GGA)."""
        ...

    def trip(self) -> EngineTrip:
        """The engine's run so far (complete once ``finished``)."""
        ...
