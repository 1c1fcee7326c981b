"""Background traffic for SUMO: the scenario's demand per approach as SUMO vehicles.

The arrivals are the in-process model's own (``sim.traffic``): the same seeded
stream per (intersection, approach), ``stream_seed(traffic.seed, intersection,
approach)``, the same Poisson or evenly spaced headways. Each vehicle is
inserted ``LEAD_M`` upstream of the stop line at the lane speed (or as fast as
the queue and the signal ahead allow: SUMO's ``departSpeed="max"``), at the moment
that brings it to the stop line at its arrival time when the road is free, and
leaves the network just past the intersection (as the in-process queue forgets
a vehicle once it has crossed), so demand on one approach does not reach the
next intersection. In SUMO the queue is real: cars of 5 m with 2.5 m gaps
(the in-process 7.5 m spacing), Krauss with sigma = 0.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sim.scenario import Scenario
from sim.sumo_export import SumoNetwork
from sim.traffic import ArrivalKind, stream_seed

LEAD_M = 100.0  # insert this far before the stop line (or at the edge's start)
EXIT_POS_M = 1.0  # leave the network this far into the outgoing edge
CAR_TYPE = "car"


@dataclass(frozen=True, slots=True)
class BackgroundVehicle:
    id: str
    depart: float
    edges: tuple[str, str]
    depart_pos: float


def arrival_times(
    seed: int, intersection: str, approach: str, veh_h: float, kind: ArrivalKind, until: float
) -> list[float]:
    """Arrival times at the stop line, drawn exactly as ``sim.traffic.ApproachQueue`` does."""
    if veh_h <= 0:
        return []
    rng = random.Random(stream_seed(seed, intersection, approach))
    headway = 3600.0 / veh_h
    t = rng.expovariate(1.0 / headway) if kind is ArrivalKind.POISSON else rng.uniform(0, headway)
    out = []
    while t < until:
        out.append(t)
        t += rng.expovariate(1.0 / headway) if kind is ArrivalKind.POISSON else headway
    return out


def background_vehicles(
    scenario: Scenario, network: SumoNetwork, until: float
) -> list[BackgroundVehicle]:
    """Every background vehicle arriving at a stop line before ``until``, by departure."""
    traffic = scenario.traffic
    out: list[BackgroundVehicle] = []
    for ic in scenario.intersections:
        links = network.signals.get(ic.id)
        if links is None:
            continue  # on no exported route
        for d in ic.demand:
            e_in, e_out = links.demand_edges[d.approach]
            edge = network.edges[e_in]
            lead = min(LEAD_M, edge.length)
            for n, t in enumerate(
                arrival_times(traffic.seed, ic.id, d.approach, d.veh_h, traffic.arrivals, until)
            ):
                depart = max(0.0, t - lead / edge.speed)
                run = (t - depart) * edge.speed  # < lead when the arrival is early in the run
                out.append(
                    BackgroundVehicle(
                        id=f"bg.{ic.id}.{d.approach}.{n}",
                        depart=depart,
                        edges=(e_in, e_out),
                        depart_pos=edge.length - run,
                    )
                )
    out.sort(key=lambda v: (v.depart, v.id))
    return out


def vehicles_xml(vehicles: list[BackgroundVehicle], step_s: float) -> list[str]:
    lines = [
        f'  <vType id="{CAR_TYPE}" vClass="passenger" carFollowModel="Krauss" sigma="0" '
        'length="5" minGap="2.5" accel="2.6" decel="4.5" tau="1" speedFactor="1" '
        'speedDev="0"/>'
    ]
    for v in vehicles:
        # Departure times on the step grid; SUMO would round them anyway.
        depart = round(v.depart / step_s) * step_s
        lines.append(
            f'  <vehicle id="{v.id}" type="{CAR_TYPE}" depart="{depart:.2f}" '
            f'departPos="{v.depart_pos:.2f}" departSpeed="max" '
            f'arrivalPos="{EXIT_POS_M}"><route edges="{" ".join(v.edges)}"/></vehicle>'
        )
    return lines
