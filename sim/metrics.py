"""What a run costs and saves, from the controllers' logs and the queues.

Everything here reads results, never a running simulation: the green logs of
the controllers (``SignalController.green_log``), their status logs, the
engine's ``EngineTrip`` and the queue figures. A street model that keeps the
same logs (the SUMO backend does, through the same controller model) gets the
same metrics.

Cross traffic is judged against the plan: the baseline run's controllers run
the plan untouched, so "forced red" on a group is the green the plan would have
given it between the first call and the controller's return to the plan, and
the pre-empted run did not. (After the return the plan runs shifted: the
offset is not recovered; the shift is not counted as forced red.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from preemption.kernel.model import PreemptStatus
from sim.controller import SignalController, green_interval_at
from sim.street import EngineTrip
from sim.traffic import ApproachQueue


def green_within(log: Sequence[Sequence[float]], start: float, end: float) -> float:
    """Seconds of green in ``[start, end]``."""
    return sum(max(0.0, min(off, end) - max(on, start)) for on, off in log)


def preemption_window(ctrl: SignalController, horizon: float) -> tuple[float, float]:
    """From the first call to the controller's return to the plan (or ``horizon``)."""
    log = ctrl.status_log
    active = [k for k, c in enumerate(log) if c.status is not PreemptStatus.NOT_ACTIVE]
    if not active:
        return 0.0, 0.0
    after = [c.time for c in log[active[-1] + 1 :] if c.status is PreemptStatus.NOT_ACTIVE]
    return log[active[0]].time, after[0] if after else horizon


def red_against_plan(
    planned: Sequence[Sequence[float]],
    actual: Sequence[Sequence[float]],
    start: float,
    end: float,
) -> float:
    """Seconds in ``[start, end]`` in which the plan shows green and the run does not."""
    total = 0.0
    for on, off in planned:
        a, b = max(on, start), min(off, end)
        if b > a:
            total += (b - a) - sum(max(0.0, min(b, off2) - max(a, on2)) for on2, off2 in actual)
    return total


@dataclass(frozen=True, slots=True)
class SignalMetrics:
    """One signal on the engine's route, the pre-empted run beside the baseline."""

    intersection: str
    group: str
    arrival: float  # seconds after departure, pre-empted run
    aspect: str  # at arrival, pre-empted run
    green_lead: float | None  # arrival minus green onset (None: not on green)
    baseline_arrival: float
    baseline_aspect: str
    change: str  # "extension", "early_green" or "none": what pre-emption did to the plan
    change_s: float  # by how much
    forced_red_s: float  # green the plan gave the other groups and the run did not
    recovery_s: float | None  # end of dwell to back in the plan (None: never pre-empted)


@dataclass(frozen=True, slots=True)
class CrossTraffic:
    """What pre-emption cost the traffic that crosses the engine's route."""

    forced_red_s: float  # summed over the conflicting groups of every intersection
    delay_veh_s: float  # stopped delay of the cross approaches, vehicle-seconds
    baseline_delay_veh_s: float
    longest_queue_veh: int  # on a cross approach
    longest_queue_m: float
    recovery_s: float  # the longest time from end of dwell back to the plan


def signal_metrics(
    trip: EngineTrip,
    baseline: EngineTrip,
    controllers: Mapping[str, SignalController],
    plan: Mapping[str, SignalController],
    horizon: float,
) -> list[SignalMetrics]:
    """Per signal passed; ``plan`` are the baseline run's controllers (the untouched plan)."""
    base = {p.intersection: p for p in baseline.passages}
    out = []
    for p in trip.passages:
        ctrl, planned = controllers[p.intersection], plan[p.intersection]
        log = ctrl.green_log.get(p.group, [])
        green = green_interval_at(log, p.time)
        lead = None if green is None else p.time - green[0]
        plan_green = green_interval_at(planned.green_log.get(p.group, []), p.time)
        change, change_s = "none", 0.0
        if green is not None:
            planned_log = planned.green_log.get(p.group, [])
            same = green_interval_at(planned_log, green[0])
            if same is not None and same[0] == green[0]:
                # The planned green itself, held on past its planned end.
                change, change_s = "extension", max(0.0, min(green[1], horizon) - same[1])
            elif plan_green is None or plan_green[0] > green[0]:
                # Brought forward: started before the plan's next green would have.
                nxt = min((on for on, _ in planned_log if on > green[0]), default=horizon)
                change, change_s = "early_green", nxt - green[0]
            if change_s == 0.0:
                change = "none"
        start, end = preemption_window(ctrl, horizon)
        forced = sum(
            red_against_plan(planned.green_log.get(g, []), ctrl.green_log.get(g, []), start, end)
            for g in ctrl.program.groups
            if g != p.group
        )
        b = base.get(p.intersection)
        out.append(
            SignalMetrics(
                intersection=p.intersection,
                group=p.group,
                arrival=p.time - trip.depart,
                aspect=p.aspect.value,
                green_lead=lead,
                baseline_arrival=math.nan if b is None else b.time - baseline.depart,
                baseline_aspect="" if b is None else b.aspect.value,
                change=change,
                change_s=change_s,
                forced_red_s=forced,
                recovery_s=recovery_time(ctrl),
            )
        )
    return out


def recovery_time(ctrl: SignalController) -> float | None:
    """The longest exit: from the end of a dwell (or entry) until the plan runs again."""
    longest: float | None = None
    log = ctrl.status_log
    for a, b in itertools.pairwise(log):
        if a.status in (PreemptStatus.EXITING, PreemptStatus.MAX_PRESENCE):
            longest = max(longest or 0.0, b.time - a.time)
    return longest


def cross_traffic(
    signals: Sequence[SignalMetrics],
    queues: Mapping[tuple[str, str], ApproachQueue],
    baseline_queues: Mapping[tuple[str, str], ApproachQueue],
    route_groups: Mapping[str, str],
) -> CrossTraffic:
    """``route_groups``: intersection -> the engine's signal group there."""
    cross = [k for k, q in queues.items() if route_groups.get(k[0]) not in (None, q.group)]
    longest = max((queues[k].longest for k in cross), default=0)
    spacing = next(iter(queues.values())).params.vehicle_spacing_m if queues else 7.5
    return CrossTraffic(
        forced_red_s=sum(s.forced_red_s for s in signals),
        delay_veh_s=sum(queues[k].delay_veh_s for k in cross),
        baseline_delay_veh_s=sum(baseline_queues[k].delay_veh_s for k in cross),
        longest_queue_veh=longest,
        longest_queue_m=longest * spacing,
        recovery_s=max((s.recovery_s or 0.0 for s in signals), default=0.0),
    )
