"""The simulator's runner on the bundled corridor: targets, metrics, CLI, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from preemption.cli.simulate import Comparison, Setup, compare, comparison_json, load, sweep
from sim.street import Street
from sim.world import Corridor

from .helpers import DEMO_DIR


@pytest.fixture(scope="module")
def setup() -> Setup:
    return load(DEMO_DIR / "scenario.toml")


@pytest.fixture(scope="module")
def comparison(setup: Setup) -> Comparison:
    return compare(setup)


def test_the_corridor_is_a_street(setup: Setup) -> None:
    street: Street = Corridor(setup.scenario, setup.routes, setup.scenario.engines[0])
    assert street.t == 0.0
    assert not street.finished


def test_preemption_meets_the_targets_on_the_bundled_corridor(comparison: Comparison) -> None:
    assert comparison.preempted.trip.travel_time <= 1.05 * comparison.free_flow_s
    assert comparison.green_at_arrival == 1.0
    assert comparison.violations == 0
    # The baseline waits at red and behind queues: much slower.
    assert comparison.baseline.trip.travel_time > 1.3 * comparison.free_flow_s
    assert comparison.baseline.trip.waiting_time > 30.0
    assert comparison.baseline.trip.stops >= 3


def test_cross_traffic_pays_for_it(comparison: Comparison) -> None:
    c = comparison.cross
    assert c.forced_red_s > 0
    assert c.delay_veh_s > c.baseline_delay_veh_s
    assert c.longest_queue_veh > 0
    assert 0 < c.recovery_s <= 30 + 5 + 1e-9  # at most a green and an intergreen
    for s in comparison.signals:
        assert s.green_lead is not None
        assert s.green_lead > 0


def test_queues_ahead_cost_the_baseline_time(setup: Setup) -> None:
    empty = setup.scenario.model_copy(
        update={
            "intersections": [
                ic.model_copy(update={"demand": []}) for ic in setup.scenario.intersections
            ]
        }
    )
    quiet = compare(Setup(setup.path, empty, setup.deployment, setup.routes))
    loaded = compare(setup)
    assert loaded.baseline.trip.travel_time > quiet.baseline.trip.travel_time


def _variant(setup: Setup, red: str, demand: bool) -> Setup:
    scen = setup.scenario.model_copy(
        update={
            "baseline": setup.scenario.baseline.model_copy(update={"red": red}),
            "intersections": [
                ic if demand else ic.model_copy(update={"demand": []})
                for ic in setup.scenario.intersections
            ],
        }
    )
    return Setup(setup.path, scen, setup.deployment, setup.routes)


def test_cautious_red_crossing_saves_little_behind_queues(setup: Setup) -> None:
    # On empty streets crossing red slowly under special rights saves a lot ...
    free_stop = compare(_variant(setup, "stop", demand=False)).baseline.trip
    free_cautious = compare(_variant(setup, "cautious", demand=False)).baseline.trip
    assert any(p.aspect.value == "red" for p in free_cautious.passages)
    assert free_cautious.travel_time < free_stop.travel_time - 30.0
    # ... behind queues the engine waits for them to discharge anyway.
    stop = compare(_variant(setup, "stop", demand=True))
    cautious = compare(_variant(setup, "cautious", demand=True))
    assert cautious.baseline.trip.travel_time >= stop.baseline.trip.travel_time - 10.0
    assert cautious.preempted.trip.travel_time < cautious.baseline.trip.travel_time - 60.0


def test_sweep_is_repeatable_and_within_target(setup: Setup) -> None:
    runs = sweep(setup, 3)
    again = sweep(setup, 3)
    assert [comparison_json(c) for c in runs] == [comparison_json(c) for c in again]
    assert all(c.ratio_to_free_flow <= 1.05 for c in runs)
    assert sum(c.violations for c in runs) == 0


def test_sim_cli_json_and_plot(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "preemption"
    png = tmp_path / "ts.png"
    out = subprocess.run(
        [str(exe), "sim", "--json", "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert {"baseline", "preempted", "free_flow_s", "ratio_to_free_flow", "signals"} <= set(doc)
    assert doc["violations"] == 0
    assert doc["preempted"]["travelTime"] < doc["baseline"]["travelTime"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stderr == ""  # no progress bar in JSON mode


def test_sim_sumo_without_sumo_installed_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from preemption.cli import main

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "libsumo" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["sim", "--sumo"]) == 2
    err = capsys.readouterr().err
    assert "libsumo not installed" in err
    assert "[sumo]" in err


def test_sim_route_picks_the_engine_on_that_route(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from preemption.cli import main

    assert main(["sim", "--route", "R6", "--json"]) == 0  # the Berlin scenario's sixth
    doc = json.loads(capsys.readouterr().out)
    assert [s["intersection"] for s in doc["signals"]] == ["K1", "K10"]
    assert main(["sim", "--route", "R9"]) == 2
    err = capsys.readouterr().err
    assert "R9" in err
    assert "R1, R2, R3, R4, R5, R6" in err
