"""The issue's CI sweep: 100 departures over the cycle of a 15-signal corridor with
background traffic, each run twice (baseline and pre-empted). `make test` prints the
slowest tests, so the sweep's wall time is on record in every CI log."""

from __future__ import annotations

import statistics
from pathlib import Path

from preemption.cli.simulate import load, sweep
from sim.corridor_gen import write_corridor


def test_a_100_run_sweep_of_a_15_signal_corridor_meets_the_targets(tmp_path: Path) -> None:
    setup = load(write_corridor(tmp_path, n_signals=15))
    seen: list[int] = []
    runs = sweep(setup, 100, progress=lambda done, total: seen.append(done))
    assert seen == list(range(1, 101))
    assert len({c.engine.depart_s for c in runs}) == 100  # spread over the cycle
    for c in runs:
        assert len(c.preempted.trip.passages) == 15
        assert c.green_at_arrival == 1.0, c.engine.depart_s
        assert c.violations == 0, c.engine.depart_s
        assert c.ratio_to_free_flow <= 1.05, (c.engine.depart_s, c.ratio_to_free_flow)
        assert c.saving_s > 0, c.engine.depart_s
    # Queues and reds cost the baseline: it is slower over the cycle by far.
    base = statistics.fmean(c.baseline.trip.travel_time for c in runs)
    pre = statistics.fmean(c.preempted.trip.travel_time for c in runs)
    assert pre < 0.8 * base
