"""The queue model of background traffic, and the engine waiting behind a queue."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sim.traffic import ApproachQueue, ArrivalKind, QueueParams

UNIFORM = QueueParams(arrivals=ArrivalKind.UNIFORM)


def test_a_queue_builds_on_red_and_discharges_at_saturation_headway_after_the_loss() -> None:
    log: list[list[float]] = [[60.0, 90.0]]  # red until 60 s, then 30 s of green
    q = ApproachQueue("K", "1", "A", 360.0, log, UNIFORM)  # one vehicle every 10 s
    q.advance_to(60.0)
    assert q.queued == 6
    q.advance_to(60.0 + 2.0 + 2.0 - 1e-6)
    assert q.departed == 0  # start-up loss and the first headway: nobody has left yet
    q.advance_to(60.0 + 2.0 + 6 * 2.0 + 1e-6)
    assert q.departed == 6  # at 64, 66, ... 74 s: one per saturation headway
    q.advance_to(89.0)
    assert q.queued == 0
    assert q.longest >= 6


def test_no_green_no_departures_and_delay_grows_with_the_square_of_time() -> None:
    q = ApproachQueue("K", "1", "A", 360.0, [], UNIFORM)
    q.advance_to(100.0)
    assert q.departed == 0
    assert q.queued == q.arrived == 10
    # Arrivals every 10 s from a uniform phase: delay is about n^2 * 10 / 2 vehicle-seconds.
    assert 400.0 < q.delay_veh_s < 600.0


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.0, 1500.0),
    st.lists(st.floats(5.0, 60.0), min_size=2, max_size=10),
    st.integers(0, 10_000),
)
@example(5e-324, [5.0, 5.0], 0)  # a rate that underflows to 0 veh/s once divided by 3600
def test_conservation_and_capacity_on_any_plan(
    demand: float, lengths: list[float], seed: int
) -> None:
    log: list[list[float]] = []
    t = 0.0
    for k, length in enumerate(lengths):
        if k % 2:
            log.append([t, t + length])
        t += length
    q = ApproachQueue("K", "1", "A", demand, log, QueueParams(), seed=seed)
    q.advance_to(t)
    assert q.arrived == q.queued + q.departed
    green = sum(off - on for on, off in log)
    # Queued vehicles leave at most one per saturation headway per green.
    from_queue = q.departed
    assert from_queue <= q.arrived
    assert q.queued >= 0
    assert q.delay_veh_s >= 0
    if demand == 0:
        assert q.arrived == 0
    assert q.longest >= q.queued
    assert math.isfinite(green)


def test_same_seed_same_arrivals_other_seed_other_arrivals() -> None:
    def run(seed: int) -> tuple[int, float]:
        q = ApproachQueue("K", "1", "A", 600.0, [[30.0, 60.0]], QueueParams(), seed=seed)
        q.advance_to(300.0)
        return q.arrived, q.delay_veh_s

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_bad_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="demand"):
        ApproachQueue("K", "1", "A", -1.0, [])
    with pytest.raises(ValueError, match="headway"):
        QueueParams(saturation_headway_s=0.0)
