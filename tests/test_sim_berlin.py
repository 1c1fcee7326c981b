"""The bundled real-city scenario (Berlin-Adlershof) in the simulator: the default
of `preemption sim` and `make demo`."""

from __future__ import annotations

import pytest

from preemption.cli.simulate import BUNDLED_SCENARIO, Comparison, compare, load


@pytest.fixture(scope="module")
def comparisons() -> list[Comparison]:
    setup = load(BUNDLED_SCENARIO)
    # The trunk route and the route that leaves it right after K1.
    return [compare(setup, e) for e in setup.scenario.engines if e.route in ("R1", "R6")]


def test_the_default_scenario_is_the_real_city_one() -> None:
    assert BUNDLED_SCENARIO.parent.name == "berlin"


def test_every_signal_green_on_arrival_and_no_safety_time_cut(
    comparisons: list[Comparison],
) -> None:
    for c in comparisons:
        assert c.preempted.trip.passages, c.engine.route
        assert c.green_at_arrival == 1.0, c.engine.route
        assert c.violations == 0, c.engine.route


def test_preemption_saves_time_against_the_baseline_with_queues(
    comparisons: list[Comparison],
) -> None:
    for c in comparisons:
        base, pre = c.baseline.trip, c.preempted.trip
        assert base.stops >= 1  # background traffic and the plans stop the engine today
        assert pre.travel_time < base.travel_time
        assert pre.waiting_time < base.waiting_time
        assert c.free_flow_s <= pre.travel_time + 1e-6
        # the whole route at the engine's speed, and the signals really were crossed
        assert [p.intersection for p in pre.passages] == [p.intersection for p in base.passages]
