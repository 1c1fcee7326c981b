"""Intergreen matrix, pedestrian clearance, pre-emption delay and exit stage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preemption.kernel.model import PreemptStatus
from sim.controller import GroupKind, SignalController, SignalGroup, SignalProgram, Stage
from sim.safety import SafetyMonitor, ViolationKind

# Stage 1: vehicles A and pedestrians P (parallel); stage 2: cross street B.
PROG = SignalProgram(
    stages=(Stage(frozenset({"A", "P"}), 20.0), Stage(frozenset({"B"}), 20.0)),
    yellow_s=3.0,
    all_red_s=2.0,
    min_green_s=5.0,
    signal_groups={"P": SignalGroup(GroupKind.PEDESTRIAN, 8.0)},
    intergreen={("A", "B"): 6.0, ("P", "B"): 11.0, ("B", "A"): 5.0, ("B", "P"): 4.0},
    approaches={"1": "A", "2": "B"},
)


def drive(ctrl: SignalController, until: float, mon: SafetyMonitor, t0: float = 0.0) -> None:
    t = t0
    while t < until - 1e-9:
        t = round(t + 0.1, 6)
        ctrl.advance_to(t)
        mon.observe(t, ctrl.aspects())


def test_the_matrix_and_the_pedestrian_clearance_set_the_change_times() -> None:
    assert PROG.transition_s(0, 1) == 11.0  # pedestrian clearance 8 s + 3 s
    assert PROG.transition_s(1, 0) == 5.0
    assert PROG.cycle_s == 56.0
    ctrl = SignalController("K", PROG)
    mon = SafetyMonitor(PROG)
    mon.observe(0.0, ctrl.aspects())
    drive(ctrl, 120.0, mon)
    assert ctrl.green_log["B"][0] == [31.0, 51.0]
    assert ctrl.green_log["A"][1][0] == 56.0
    assert mon.violations == []


def test_a_call_never_cuts_the_pedestrian_clearance() -> None:
    ctrl = SignalController("K", PROG)
    mon = SafetyMonitor(PROG)
    mon.observe(0.0, ctrl.aspects())
    drive(ctrl, 6.0, mon)
    ctrl.call("2", "r1", 60.0)  # past the minimum green: the green ends now
    drive(ctrl, 30.0, mon, 6.0)
    assert ctrl.green_log["B"][0][0] == pytest.approx(6.0 + 11.0)
    assert mon.violations == []


def test_the_monitor_catches_an_intergreen_shorter_than_the_matrix() -> None:
    loose = SignalProgram(stages=PROG.stages, signal_groups=PROG.signal_groups)
    # A controller run without the matrix switches P -> B after 8 + 2 = 10 s, not 11.
    ctrl = SignalController("K", loose)
    mon = SafetyMonitor(PROG)
    mon.observe(0.0, ctrl.aspects())
    drive(ctrl, 40.0, mon)
    assert {v.kind for v in mon.violations} == {ViolationKind.INTERGREEN}


def test_matrix_entries_shorter_than_the_yellow_are_refused() -> None:
    with pytest.raises(ValueError, match="shorter than"):
        SignalProgram(stages=PROG.stages, intergreen={("A", "B"): 2.0})
    with pytest.raises(ValueError, match="clearance"):
        SignalProgram(stages=PROG.stages, signal_groups={"P": SignalGroup(GroupKind.PEDESTRIAN)})


def test_a_preemption_delay_reports_requested_then_enters() -> None:
    prog = SignalProgram(stages=PROG.stages, preempt_delay_s=4.0, approaches={"2": "B"})
    ctrl = SignalController("K", prog)
    ctrl.advance_to(10.0)
    ctrl.call("2", "r1", 60.0)
    assert ctrl.preempt_status() == (PreemptStatus.REQUESTED, "2")
    ctrl.advance_to(13.9)
    assert ctrl.green_log["A"][0][1] == float("inf")
    ctrl.advance_to(14.0)
    assert ctrl.preempt_status() == (PreemptStatus.ENTERING, "2")
    assert ctrl.green_log["A"][0][1] == 14.0


def test_the_exit_stage_is_where_the_plan_resumes() -> None:
    three = SignalProgram(
        stages=(
            Stage(frozenset({"A"}), 20.0),
            Stage(frozenset({"B"}), 20.0),
            Stage(frozenset({"C"}), 20.0),
        ),
        exit_stage=0,
    )
    ctrl = SignalController("K", three)
    ctrl.advance_to(2.0)
    ctrl.call("B", "r1", 100.0)
    ctrl.advance_to(40.0)
    ctrl.release("r1")
    ctrl.advance_to(80.0)
    b_end = ctrl.green_log["B"][0][1]
    assert ctrl.green_log["A"][1][0] == pytest.approx(b_end + 5.0)  # back to A, not on to C
    assert "C" not in ctrl.green_log or ctrl.green_log["C"][0][0] > ctrl.green_log["A"][1][0]


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 56.0), st.floats(0.0, 40.0), st.sampled_from(["1", "2"]))
def test_any_call_keeps_matrix_and_clearance(t_call: float, dwell: float, approach: str) -> None:
    ctrl = SignalController("K", PROG)
    mon = SafetyMonitor(PROG)
    mon.observe(0.0, ctrl.aspects())
    t_call = round(t_call, 1) + 0.05
    drive(ctrl, t_call - 0.05, mon)
    ctrl.advance_to(t_call)
    ctrl.call(approach, "r", 300.0)
    drive(ctrl, t_call + 20 + dwell, mon, t_call - 0.05)
    ctrl.release("r")
    drive(ctrl, t_call + 20 + dwell + 120, mon, t_call + 20 + dwell)
    assert mon.violations == []
