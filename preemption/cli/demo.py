"""The demo job: the whole path, end to end, in simulated time.

The simulated engine's receiver writes NMEA sentences; the gps decoder turns
them into fixes; the daemon matches them against the routes, plans, and sends
requests through the adapter named in the deployment file to the simulated
controllers; the controllers run their pre-emption sequence. The same scenario
without pre-emption is the baseline. The runner is ``preemption.cli.simulate``; this
module only shapes its result into the demo's report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from preemption.cli.simulate import BUNDLED_SCENARIO, compare, load
from preemption.kernel.model import CommandKind
from sim.controller import green_interval_at

__all__ = ["BUNDLED_SCENARIO", "DemoReport", "SignalResult", "run_demo"]


@dataclass(frozen=True, slots=True)
class SignalResult:
    """One signal on the engine's run; times are seconds after departure."""

    intersection: str
    request_s: float | None
    eta_at_request_s: float | None
    green_onset_s: float | None  # start of the green the engine crossed on
    arrival_s: float
    release_s: float | None
    aspect_at_arrival: str
    baseline_arrival_s: float
    baseline_aspect: str


@dataclass(frozen=True)
class DemoReport:
    scenario: str
    vehicle: str
    route: str
    signals: list[SignalResult]
    travel_time_s: float
    baseline_travel_time_s: float
    baseline_stops: int
    stops: int
    counters: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "vehicle": self.vehicle,
            "route": self.route,
            "signals": [{k: _r(v) for k, v in asdict(s).items()} for s in self.signals],
            "travel_time_s": _r(self.travel_time_s),
            "baseline_travel_time_s": _r(self.baseline_travel_time_s),
            "stops": self.stops,
            "baseline_stops": self.baseline_stops,
        }

    def lines(self) -> list[str]:
        out = [f"{self.scenario}: {self.vehicle} on route {self.route}"]
        for s in self.signals:
            out.append(
                f"  {s.intersection:<10} request {_t(s.request_s)} (ETA {_t(s.eta_at_request_s)})"
                f"  green {_t(s.green_onset_s)}  arrival {_t(s.arrival_s)} on {s.aspect_at_arrival}"
                f"  released {_t(s.release_s)}   baseline: arrival {_t(s.baseline_arrival_s)} on "
                f"{s.baseline_aspect}"
            )
        saved = self.baseline_travel_time_s - self.travel_time_s
        pct = 100 * saved / self.baseline_travel_time_s if self.baseline_travel_time_s else 0.0
        out.append(
            f"travel time {self.travel_time_s:.1f} s with pre-emption ({_stops(self.stops)}), "
            f"{self.baseline_travel_time_s:.1f} s without ({_stops(self.baseline_stops)}): "
            f"{saved:.1f} s ({pct:.0f} %) saved"
        )
        return out


def _stops(n: int) -> str:
    return "1 stop" if n == 1 else f"{n} stops"


def _r(v: Any) -> Any:
    return round(v, 2) if isinstance(v, float) else v


def _t(v: float | None) -> str:
    return "   -   " if v is None else f"{v:6.1f}s"


def run_demo(path: Path = BUNDLED_SCENARIO) -> DemoReport:
    """The bundled scenario's first engine, with and without pre-emption (cli.simulate)."""
    setup = load(path)
    c = compare(setup)
    depart = c.engine.depart_s
    base = {p.intersection: p for p in c.baseline.trip.passages}
    results = []
    for p in c.preempted.trip.passages:
        sent = [d for d in c.preempted.dispatched if d.command.intersection == p.intersection]
        req = next((d for d in sent if d.command.kind is CommandKind.REQUEST), None)
        rel = next((d for d in sent if d.command.kind is CommandKind.CANCEL), None)
        ctrl = c.preempted.street.controllers[p.intersection]
        green = green_interval_at(ctrl.green_log.get(p.group, []), p.time)
        results.append(
            SignalResult(
                intersection=p.intersection,
                request_s=None if req is None else req.sent_mono - depart,
                eta_at_request_s=None if req is None else req.command.eta_s,
                green_onset_s=None if green is None else green[0] - depart,
                arrival_s=p.time - depart,
                release_s=None if rel is None else rel.sent_mono - depart,
                aspect_at_arrival=p.aspect.value,
                baseline_arrival_s=base[p.intersection].time - depart,
                baseline_aspect=base[p.intersection].aspect.value,
            )
        )
    return DemoReport(
        scenario=setup.scenario.scenario.name,
        vehicle=c.engine.vehicle,
        route=c.engine.route,
        signals=results,
        travel_time_s=c.preempted.trip.travel_time,
        baseline_travel_time_s=c.baseline.trip.travel_time,
        baseline_stops=c.baseline.trip.stops,
        stops=c.preempted.trip.stops,
        counters=c.preempted.counters,
    )
