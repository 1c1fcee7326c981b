"""The identification harness (sim/identify.py) on a small seeded sample: the
verdict bounds the issue sets hold under the GNSS error model, not only on clean
fixes (docs/benchmarks.md has the full figures)."""

from __future__ import annotations

import pytest

from sim.gnss import GnssErrorConfig
from sim.identify import LEAVE_FIXES, LEAVE_M, Results, Station, run_leave, run_uturn, stations

GNSS = GnssErrorConfig(sigma_m=10.0, dropout_rate_per_h=0.0)


@pytest.fixture(scope="module")
def sample() -> list[Station]:
    return list(stations(23, 4))


def test_turning_off_into_a_side_street_is_noticed_within_3_fixes_or_20_m(
    sample: list[Station],
) -> None:
    res = Results()
    for i, st in enumerate(sample):
        for k, rid in enumerate(st.routes.routes):
            for seed in range(4):
                run_leave(st, rid, GNSS, 1000 * i + 10 * k + seed, res)
    assert len(res.leave) == 4 * sum(len(st.routes) for st in sample)
    late = [(f, m) for f, m in res.leave if f > LEAVE_FIXES and m > LEAVE_M]
    # The benchmark: 99.65 % in time, the rest one fix late; before the course counted,
    # 12 % were in time.
    assert len(late) <= len(res.leave) // 20
    assert all(f <= LEAVE_FIXES + 1 for f, _ in res.leave)


def test_u_turns_are_noticed_within_3_fixes(sample: list[Station]) -> None:
    res = Results()
    for i, st in enumerate(sample):
        for k, rid in enumerate(st.routes.routes):
            run_uturn(st, rid, GNSS, 1000 * i + 10 * k, res)
    assert max(res.uturn_fixes) <= 3
