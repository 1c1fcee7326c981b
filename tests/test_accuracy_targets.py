"""The identification and ETA targets of docs/benchmarks.md, held by CI.

`preemption bench identify` runs seeded synthetic stations (sim/identify.py)
and reports route identification, position and ETA accuracy, U-turn and
leaving-the-route detection. The runs are deterministic, so a change that
costs accuracy fails here instead of only showing in the next benchmark table.
Each test asserts a target, not today's figure: the figures may improve.
"""

from __future__ import annotations

from typing import Any

import pytest

from preemption.cli.bench import bench_identify


@pytest.fixture(scope="module")
def identify() -> dict[str, Any]:
    """One run of the benchmark, as `preemption bench identify --json` gives it (~30 s)."""
    return bench_identify()


def test_the_benchmark_ran_its_seeded_runs(identify: dict[str, Any]) -> None:
    # A benchmark that ran nothing would meet every target below.
    assert identify["runs"] == 288
    assert identify["runs_branch_points"] > 800
    assert identify["undecided"] == 0


def test_commit_within_50m_pct(identify: dict[str, Any]) -> None:
    assert identify["commit_within_50m_pct"] >= 99.0


def test_median_commit_m(identify: dict[str, Any]) -> None:
    assert identify["median_commit_m"] <= 25.0


def test_wrong_commit_pct(identify: dict[str, Any]) -> None:
    assert identify["wrong_commit_pct"] <= 0.1


def test_pos_err_p95_m_sigma5(identify: dict[str, Any]) -> None:
    assert identify["pos_err_p95_m_sigma5"] <= 10.0


def test_pos_err_p95_m_sigma15(identify: dict[str, Any]) -> None:
    assert identify["pos_err_p95_m_sigma15"] <= 20.0


def test_eta30_median_abs_s(identify: dict[str, Any]) -> None:
    assert identify["eta30_median_abs_s"] <= 2.0


def test_eta30_p90_abs_s(identify: dict[str, Any]) -> None:
    assert identify["eta30_p90_abs_s"] <= 5.0


def test_uturn_detect_fixes_max(identify: dict[str, Any]) -> None:
    assert identify["uturn_detect_fixes_max"] <= 3


def test_leave_within_3_fixes_or_20m_pct(identify: dict[str, Any]) -> None:
    assert identify["leave_within_3_fixes_or_20m_pct"] >= 99.0
