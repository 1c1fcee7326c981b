"""Agreement between the in-process street model and SUMO.

The bar (issue 6): without background traffic, every signal's arrival within
2 s and the travel time within 2 %; with traffic, the mean travel time over a
sweep within 15 %. Arrivals are the engine's front at the stop line
(:class:`sim.street.SignalPassage`), compared signal by signal in route order.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.street import EngineTrip

ARRIVAL_TOLERANCE_S = 2.0
TRAVEL_TIME_TOLERANCE = 0.02  # relative, without traffic
SWEEP_TOLERANCE = 0.15  # relative, mean over a sweep with traffic


@dataclass(frozen=True, slots=True)
class SignalAgreement:
    intersection: str
    arrival: float  # in-process, s since the scenario's start
    sumo_arrival: float
    aspect: str
    sumo_aspect: str

    @property
    def difference_s(self) -> float:
        return self.sumo_arrival - self.arrival


@dataclass(frozen=True)
class TripAgreement:
    """One engine's run in both models, judged against the no-traffic bar."""

    signals: tuple[SignalAgreement, ...]
    missing: tuple[str, ...]  # intersections passed in one model only
    travel_time: float
    sumo_travel_time: float
    stops: int
    sumo_stops: int
    arrival_tolerance_s: float = ARRIVAL_TOLERANCE_S
    travel_time_tolerance: float = TRAVEL_TIME_TOLERANCE

    @property
    def travel_time_difference(self) -> float:
        """(SUMO - in-process) / in-process."""
        return (self.sumo_travel_time - self.travel_time) / self.travel_time

    @property
    def max_arrival_difference_s(self) -> float:
        return max((abs(s.difference_s) for s in self.signals), default=0.0)

    @property
    def aspects_agree(self) -> bool:
        return all(s.aspect == s.sumo_aspect for s in self.signals)

    @property
    def passed(self) -> bool:
        return (
            not self.missing
            and self.max_arrival_difference_s <= self.arrival_tolerance_s
            and abs(self.travel_time_difference) <= self.travel_time_tolerance
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "bar": {
                "arrival_s": self.arrival_tolerance_s,
                "travel_time_pct": 100 * self.travel_time_tolerance,
            },
            "travel_time_s": round(self.travel_time, 2),
            "sumo_travel_time_s": round(self.sumo_travel_time, 2),
            "travel_time_difference_pct": round(100 * self.travel_time_difference, 2),
            "max_arrival_difference_s": round(self.max_arrival_difference_s, 2),
            "aspects_agree": self.aspects_agree,
            "stops": self.stops,
            "sumo_stops": self.sumo_stops,
            "missing": list(self.missing),
            "signals": [
                {
                    "intersection": s.intersection,
                    "arrival_s": round(s.arrival, 2),
                    "sumo_arrival_s": round(s.sumo_arrival, 2),
                    "difference_s": round(s.difference_s, 2),
                    "aspect": s.aspect,
                    "sumo_aspect": s.sumo_aspect,
                }
                for s in self.signals
            ],
        }


def compare_trips(
    reference: EngineTrip,
    sumo: EngineTrip,
    *,
    arrival_tolerance_s: float = ARRIVAL_TOLERANCE_S,
    travel_time_tolerance: float = TRAVEL_TIME_TOLERANCE,
) -> TripAgreement:
    """Signal by signal and end to end: the in-process ``reference`` against SUMO."""
    if (reference.vehicle, reference.route) != (sumo.vehicle, sumo.route):
        raise ValueError(
            f"cannot compare {reference.vehicle} on {reference.route} with "
            f"{sumo.vehicle} on {sumo.route}: not the same engine's run"
        )
    ours = {p.intersection: p for p in reference.passages}
    theirs = {p.intersection: p for p in sumo.passages}
    signals = tuple(
        SignalAgreement(iid, ours[iid].time, theirs[iid].time, ours[iid].aspect, theirs[iid].aspect)
        for iid in ours
        if iid in theirs
    )
    missing = tuple(sorted(set(ours) ^ set(theirs)))
    return TripAgreement(
        signals=signals,
        missing=missing,
        travel_time=reference.travel_time,
        sumo_travel_time=sumo.travel_time,
        stops=reference.stops,
        sumo_stops=sumo.stops,
        arrival_tolerance_s=arrival_tolerance_s,
        travel_time_tolerance=travel_time_tolerance,
    )


@dataclass(frozen=True)
class SweepAgreement:
    """Mean travel time over a sweep (departures, seeds) in both models."""

    runs: int
    mean_travel_time: float
    sumo_mean_travel_time: float
    tolerance: float = SWEEP_TOLERANCE

    @property
    def difference(self) -> float:
        return (self.sumo_mean_travel_time - self.mean_travel_time) / self.mean_travel_time

    @property
    def passed(self) -> bool:
        return abs(self.difference) <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "bar": {"mean_travel_time_pct": 100 * self.tolerance},
            "runs": self.runs,
            "mean_travel_time_s": round(self.mean_travel_time, 2),
            "sumo_mean_travel_time_s": round(self.sumo_mean_travel_time, 2),
            "difference_pct": round(100 * self.difference, 2),
        }


def compare_sweep(
    reference: Sequence[EngineTrip],
    sumo: Sequence[EngineTrip],
    *,
    tolerance: float = SWEEP_TOLERANCE,
) -> SweepAgreement:
    if not reference or len(reference) != len(sumo):
        raise ValueError(
            f"a sweep comparison needs the same runs in both models, not "
            f"{len(reference)} in-process and {len(sumo)} in SUMO"
        )
    return SweepAgreement(
        runs=len(reference),
        mean_travel_time=statistics.fmean(t.travel_time for t in reference),
        sumo_mean_travel_time=statistics.fmean(t.travel_time for t in sumo),
        tolerance=tolerance,
    )
