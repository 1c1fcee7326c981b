"""Runs of a scenario in SUMO, with or without the daemon, and their agreement with
the in-process model.

``sim.sumo`` may not import the daemon (the dependency direction), so the runs
are wired here, with the simulator's own runner (``preemption.cli.simulate``):
``run_baseline`` and ``run_preempted`` over a :class:`sim.street.Street`, the
in-process corridor or a :class:`sim.sumo.SumoStreet`, so both backends see the
same daemon, the same dispatch alarm and the same safety watch.

``preemption sim --sumo`` wires in with :func:`sumo_section`: it returns the
``"sumo"`` and ``"agreement"`` parts of the JSON report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preemption.cli.simulate import Setup, run_baseline, run_preempted
from preemption.cli.simulate import trip_json as simulate_trip_json
from preemption.kernel.config import Deployment
from routes.geojson import RouteSet
from sim.scenario import EngineConfig, Scenario
from sim.street import EngineTrip, Street
from sim.sumo import SumoStreet
from sim.sumo_compare import TripAgreement, compare_sweep, compare_trips
from sim.sumo_realnet import StopLineCheck

Loaded = tuple[Scenario, Deployment, RouteSet]
Scenarioish = Path | str | Loaded | Setup


def load(path: Path | str) -> Loaded:
    from preemption.cli.simulate import load as load_setup

    setup = load_setup(path)
    return setup.scenario, setup.deployment, setup.routes


def _setup(scenario: Scenarioish) -> Setup:
    if isinstance(scenario, Setup):
        return scenario
    if isinstance(scenario, Path | str):
        from preemption.cli.simulate import load as load_setup

        return load_setup(scenario)
    scen, dep, routes = scenario
    return Setup(Path(scen.scenario.deployment), scen, dep, routes)


def without_demand(scenario: Scenarioish) -> Setup:
    """The scenario with no background traffic: the like-for-like check of both models."""
    setup = _setup(scenario)
    scen = setup.scenario
    quiet = scen.model_copy(
        update={
            "intersections": [ic.model_copy(update={"demand": []}) for ic in scen.intersections]
        }
    )
    return Setup(setup.path, quiet, setup.deployment, setup.routes)


def _engine(scen: Scenario, engine_index: int, depart_s: float | None) -> EngineConfig:
    engine = scen.engines[engine_index]
    if depart_s is not None:
        engine = engine.model_copy(update={"depart_s": depart_s})
    return engine


def run_inprocess(
    scenario: Scenarioish, *, preempt: bool, depart_s: float | None = None, engine_index: int = 0
) -> EngineTrip:
    """One engine's run in the in-process model, with the simulator's runner."""
    setup = _setup(scenario)
    engine = _engine(setup.scenario, engine_index, depart_s)
    run = run_preempted(setup, engine) if preempt else run_baseline(setup, engine)
    return run.trip


@dataclass
class SumoRun:
    """A run in SUMO and what it says about the network it ran on."""

    trip: EngineTrip
    network: str  # "real" (the route file's SUMO network) or "exported" (from the geometry)
    net_file: str
    stop_lines: list[StopLineCheck] = field(default_factory=list)
    speed_factor: float = 1.0
    background: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "net_file": self.net_file,
            "engine_speedFactor": round(self.speed_factor, 3),
            "background_vehicles": self.background,
            "stop_lines": [
                {
                    "intersection": c.intersection,
                    "route_m": round(c.route_m, 2),
                    "sumo_m": round(c.sumo_m, 2),
                    "difference_m": round(c.difference_m, 2),
                }
                for c in self.stop_lines
            ],
        }


def sumo_run(
    scenario: Scenarioish,
    *,
    preempt: bool,
    depart_s: float | None = None,
    engine_index: int = 0,
    seed: int = 42,
    workdir: Path | None = None,
) -> SumoRun:
    """One engine's run in SUMO; with ``preempt`` the daemon drives the lights."""
    setup = _setup(scenario)
    engine = _engine(setup.scenario, engine_index, depart_s)
    opened: list[SumoStreet] = []

    def factory(eng: EngineConfig, red_crossing: bool) -> Street:
        # SUMO's engine always stops at red: baseline.red = "cautious" is not modelled there.
        street = SumoStreet(
            setup.scenario,
            setup.routes,
            eng,
            workdir=workdir,
            seed=seed,
            route_files=setup.deployment.routes.files,
        )
        opened.append(street)
        return street

    try:
        run = (
            run_preempted(setup, engine, factory)
            if preempt
            else run_baseline(setup, engine, factory)
        )
        street = opened[-1]
        real = street.real_net is not None
        return SumoRun(
            trip=run.trip,
            network="real" if real else "exported",
            net_file=str(street.real_net if real else street.network.net_file),
            stop_lines=street.stop_lines(),
            speed_factor=getattr(street, "speed_factor", 1.0),
            background=street.background,
        )
    finally:
        for street in opened:
            street.close()


def run_sumo(
    scenario: Scenarioish,
    *,
    preempt: bool,
    depart_s: float | None = None,
    engine_index: int = 0,
    seed: int = 42,
    workdir: Path | None = None,
) -> EngineTrip:
    """One engine's run in SUMO (its trip only)."""
    return sumo_run(
        scenario,
        preempt=preempt,
        depart_s=depart_s,
        engine_index=engine_index,
        seed=seed,
        workdir=workdir,
    ).trip


def trip_json(trip: EngineTrip) -> dict[str, Any]:
    """The run's tripinfo figures as the in-process report has them, with the engine,
    its route and each signal passage (SUMO's side of the comparison)."""
    return {
        "vehicle": trip.vehicle,
        "route": trip.route,
        **simulate_trip_json(trip),
        "signals": [
            {
                "intersection": p.intersection,
                "group": p.group,
                "arrival_s": round(p.time - trip.depart, 2),
                "aspect": p.aspect.value,
                "speed": round(p.speed, 2),
            }
            for p in trip.passages
        ],
    }


def compare(
    scenario: Scenarioish,
    *,
    preempt: bool,
    depart_s: float | None = None,
    engine_index: int = 0,
) -> tuple[EngineTrip, EngineTrip, TripAgreement]:
    """The same run in-process and in SUMO, and how well they agree."""
    ours, theirs, agreement = compare_run(
        scenario, preempt=preempt, depart_s=depart_s, engine_index=engine_index
    )
    return ours, theirs.trip, agreement


def compare_run(
    scenario: Scenarioish,
    *,
    preempt: bool,
    depart_s: float | None = None,
    engine_index: int = 0,
) -> tuple[EngineTrip, SumoRun, TripAgreement]:
    """As :func:`compare`, with what the SUMO run says about its network."""
    setup = _setup(scenario)
    ours = run_inprocess(setup, preempt=preempt, depart_s=depart_s, engine_index=engine_index)
    theirs = sumo_run(setup, preempt=preempt, depart_s=depart_s, engine_index=engine_index)
    return ours, theirs, compare_trips(ours, theirs.trip)


def sumo_section(
    scenario: Scenarioish,
    *,
    preempt: bool = True,
    departures: Sequence[float] = (),
    engine_index: int = 0,
) -> dict[str, Any]:
    """The ``"sumo"`` and ``"agreement"`` parts of ``preemption sim --sumo``'s JSON.

    Without ``departures``, one run at the scenario's departure; with them, a sweep
    and its mean travel time judged by the sweep bar.
    """
    setup = _setup(scenario)
    if not departures:
        mine, theirs, agreement = compare_run(setup, preempt=preempt, engine_index=engine_index)
        sumo = {**trip_json(theirs.trip), **theirs.to_json()}
        if any(ic.demand for ic in setup.scenario.intersections):
            # With background traffic the bar is on travel time alone (the two models'
            # queues differ vehicle by vehicle): one departure is a sweep of one.
            one = compare_sweep([mine], [theirs.trip])
            return {"sumo": sumo, "agreement": {**one.to_json(), "per_run": [agreement.to_json()]}}
        return {"sumo": sumo, "agreement": agreement.to_json()}
    ours = [
        run_inprocess(setup, preempt=preempt, depart_s=d, engine_index=engine_index)
        for d in departures
    ]
    runs = [
        sumo_run(setup, preempt=preempt, depart_s=d, engine_index=engine_index) for d in departures
    ]
    theirs_all = [r.trip for r in runs]
    sweep = compare_sweep(ours, theirs_all)
    per_run = [compare_trips(a, b).to_json() for a, b in zip(ours, theirs_all, strict=True)]
    return {
        "sumo": {"runs": [trip_json(t) for t in theirs_all], **runs[0].to_json()},
        "agreement": {**sweep.to_json(), "per_run": per_run},
    }
