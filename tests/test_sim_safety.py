"""The safety monitor: every rule caught, no false positive from sampling."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.controller import Aspect, SignalController, SignalProgram, Stage
from sim.safety import SafetyMonitor, Violation, ViolationKind, conflicting_pairs

G, Y, R = Aspect.GREEN, Aspect.YELLOW, Aspect.RED

TWO = SignalProgram(
    stages=(Stage(frozenset({"A"}), 20.0), Stage(frozenset({"B"}), 20.0)),
    yellow_s=3.0,
    all_red_s=2.0,
    min_green_s=5.0,
)


class Timeline:
    """True aspects: piecewise constant, switching at the given instants."""

    def __init__(self, switches: Sequence[tuple[float, dict[str, Aspect]]]) -> None:
        self.times = [t for t, _ in switches]
        self.states = [dict(s) for _, s in switches]

    def at(self, t: float) -> dict[str, Aspect]:
        # Before the first switch the first state holds (it started at an unknown time).
        return self.states[max(bisect.bisect_right(self.times, t) - 1, 0)]


def observe_all(
    program: SignalProgram, timeline: Timeline, instants: Sequence[float]
) -> list[Violation]:
    mon = SafetyMonitor(program)
    for t in instants:
        mon.observe(t, timeline.at(t))
    return mon.violations


def grid(start: float, end: float, dt: float = 0.1) -> list[float]:
    n = round((end - start) / dt)
    return [start + k * dt for k in range(n + 1)]


def two_stage_timeline(
    green_a: float, green_b: float, yellow: float, all_red: float, cycles: int = 3
) -> Timeline:
    """A then B, ``cycles`` times, starting with A's green at 0."""
    sw: list[tuple[float, dict[str, Aspect]]] = []
    t = 0.0
    for _ in range(cycles):
        for on, off, green in (("A", "B", green_a), ("B", "A", green_b)):
            sw.append((t, {on: G, off: R}))
            sw.append((t + green, {on: Y, off: R}))
            sw.append((t + green + yellow, {on: R, off: R}))
            t += green + yellow + all_red
    sw.append((t, {"A": G, "B": R}))
    return Timeline(sw)


def kinds(violations: Sequence[Violation]) -> list[tuple[ViolationKind, tuple[str, ...]]]:
    return [(v.kind, v.groups) for v in violations]


def test_conflicts_are_pairs_no_stage_shows_together() -> None:
    prog = SignalProgram(
        stages=(
            Stage(frozenset({"A", "X"}), 10.0),
            Stage(frozenset({"B", "X"}), 10.0),
            Stage(frozenset({"C"}), 10.0),
        )
    )
    pairs = conflicting_pairs(prog)
    assert pairs == {frozenset(p) for p in (("A", "B"), ("A", "C"), ("B", "C"), ("C", "X"))}
    mon = SafetyMonitor(prog)
    assert mon.conflicts("X") == {"C"}
    assert mon.conflicts("A") == {"B", "C"}


def test_a_correct_plan_sampled_at_a_tenth_of_a_second_has_no_violation() -> None:
    tl = two_stage_timeline(20.0, 20.0, 3.0, 2.0)
    assert observe_all(TWO, tl, grid(0.0, 150.0)) == []


def test_exact_minimums_sampled_off_the_switching_instants_are_no_violation() -> None:
    # Every switch falls between two samples: measured durations lose up to one step.
    tl = two_stage_timeline(5.0, 5.0, 3.0, 2.0)
    assert observe_all(TWO, tl, grid(0.05, 60.05)) == []


def test_the_real_controller_passes_and_a_mis_programmed_one_is_caught() -> None:
    good = SignalController("K", TWO)
    # The same street, but the controller was given 2 s yellows and no all-red.
    bad = SignalController(
        "K",
        SignalProgram(stages=TWO.stages, yellow_s=2.0, all_red_s=0.0, min_green_s=5.0),
    )
    results = []
    for ctrl in (good, bad):
        mon = SafetyMonitor(TWO)  # judged against the street's program
        for t in grid(0.0, 120.0):
            ctrl.advance_to(t)
            mon.observe(t, ctrl.aspects())
        results.append(mon.violations)
    assert results[0] == []
    found = {v.kind for v in results[1]}
    assert found == {ViolationKind.YELLOW, ViolationKind.ALL_RED}
    assert all(v.groups in {("A",), ("B",), ("A", "B")} for v in results[1])


def test_conflicting_greens_are_reported_once_per_onset() -> None:
    tl = Timeline(
        [
            (0.0, {"A": G, "B": R}),
            (10.0, {"A": G, "B": G}),  # B's short green is reported as well
            (12.0, {"A": G, "B": R}),
            (20.0, {"A": G, "B": G}),
            (21.0, {"A": G, "B": R}),
        ]
    )
    vs = observe_all(TWO, tl, grid(0.0, 30.0))
    conflicts = [v for v in vs if v.kind is ViolationKind.CONFLICT]
    assert [v.groups for v in conflicts] == [("A", "B"), ("A", "B")]
    assert [v.time for v in conflicts] == pytest.approx([10.0, 20.0])


def test_a_short_yellow_is_caught() -> None:
    tl = Timeline(
        [
            (0.0, {"A": G, "B": R}),
            (10.0, {"A": Y, "B": R}),
            (12.5, {"A": R, "B": R}),
            (14.5, {"A": R, "B": G}),
        ]
    )
    vs = observe_all(TWO, tl, grid(0.0, 30.0))
    assert kinds(vs) == [(ViolationKind.YELLOW, ("A",))]
    assert vs[0].time == pytest.approx(12.5)


def test_green_straight_to_red_is_a_missing_yellow() -> None:
    tl = Timeline([(0.0, {"A": G, "B": R}), (10.0, {"A": R, "B": R}), (15.0, {"A": R, "B": G})])
    vs = observe_all(TWO, tl, grid(0.0, 30.0))
    assert kinds(vs) == [(ViolationKind.YELLOW, ("A",))]
    assert "from green" in vs[0].detail


def test_a_short_all_red_is_caught() -> None:
    tl = Timeline(
        [
            (0.0, {"A": G, "B": R}),
            (10.0, {"A": Y, "B": R}),
            (13.0, {"A": R, "B": R}),
            (14.0, {"A": R, "B": G}),
        ]
    )
    vs = observe_all(TWO, tl, grid(0.0, 30.0))
    assert kinds(vs) == [(ViolationKind.ALL_RED, ("A", "B"))]
    assert vs[0].time == pytest.approx(14.0)


def test_green_during_a_conflicting_yellow_is_an_all_red_violation() -> None:
    prog = SignalProgram(stages=TWO.stages, yellow_s=3.0, all_red_s=0.0, min_green_s=5.0)
    tl = Timeline(
        [
            (0.0, {"A": G, "B": R}),
            (10.0, {"A": Y, "B": R}),
            (12.0, {"A": Y, "B": G}),
            (13.0, {"A": R, "B": G}),
        ]
    )
    vs = observe_all(prog, tl, grid(0.0, 30.0))
    assert kinds(vs) == [(ViolationKind.ALL_RED, ("A", "B"))]


def test_zero_all_red_allows_green_at_the_yellow_end() -> None:
    prog = SignalProgram(stages=TWO.stages, yellow_s=3.0, all_red_s=0.0, min_green_s=5.0)
    tl = Timeline([(0.0, {"A": G, "B": R}), (10.0, {"A": Y, "B": R}), (13.0, {"A": R, "B": G})])
    assert observe_all(prog, tl, grid(0.0, 30.0)) == []


def test_a_short_green_is_caught_but_not_the_first_one_cut_by_the_start() -> None:
    tl = Timeline(
        [
            (0.0, {"A": G, "B": R}),
            (1.0, {"A": Y, "B": R}),  # A's green before 0 is unknown: not judged
            (4.0, {"A": R, "B": R}),
            (6.0, {"A": R, "B": G}),
            (9.0, {"A": R, "B": Y}),  # B's green lasted 3 s
            (12.0, {"A": R, "B": R}),
            (14.0, {"A": G, "B": R}),
        ]
    )
    vs = observe_all(TWO, tl, grid(0.0, 30.0))
    assert kinds(vs) == [(ViolationKind.MIN_GREEN, ("B",))]
    assert vs[0].time == pytest.approx(9.0)


def test_a_yellow_running_at_the_start_is_not_judged() -> None:
    tl = Timeline([(0.0, {"A": Y, "B": R}), (0.5, {"A": R, "B": R}), (2.5, {"A": R, "B": G})])
    assert observe_all(TWO, tl, grid(0.0, 10.0)) == []


def test_bad_observations_are_refused() -> None:
    mon = SafetyMonitor(TWO)
    mon.observe(0.0, {"A": G, "B": R})
    with pytest.raises(ValueError, match="not later"):
        mon.observe(0.0, {"A": G, "B": R})
    with pytest.raises(ValueError, match="signal groups"):
        mon.observe(1.0, {"A": G})
    with pytest.raises(ValueError, match="signal groups"):
        mon.observe(1.0, {"A": G, "B": R, "C": R})
    with pytest.raises(ValueError, match="tolerance"):
        SafetyMonitor(TWO, tolerance_s=-1.0)


# -- sampling: no false positives, and real shortenings caught ---------------------------


@st.composite
def sampled_plans(draw: st.DrawFn) -> tuple[SignalProgram, Timeline, list[float], float]:
    """A correct two-stage plan at its exact minimums, sampled at irregular instants."""
    yellow = draw(st.floats(3.0, 4.0))
    all_red = draw(st.floats(0.0, 3.0))
    min_green = draw(st.floats(3.0, 8.0))
    prog = SignalProgram(
        stages=(Stage(frozenset({"A"}), min_green), Stage(frozenset({"B"}), min_green)),
        yellow_s=yellow,
        all_red_s=all_red,
        min_green_s=min_green,
    )
    max_step = draw(st.floats(0.01, 0.5))
    steps = draw(st.lists(st.floats(0.005, max_step), min_size=1, max_size=8))
    t = draw(st.floats(-3.0, 0.0))
    instants = []
    i = 0
    while t < 80.0:
        instants.append(t)
        t += steps[i % len(steps)]
        i += 1
    tl = two_stage_timeline(min_green, min_green, yellow, all_red, cycles=5)
    return prog, tl, instants, max(steps)


@settings(max_examples=60, deadline=None)
@given(sampled_plans())
def test_sampling_never_makes_a_correct_plan_look_unsafe(
    case: tuple[SignalProgram, Timeline, list[float], float],
) -> None:
    prog, tl, instants, _ = case
    assert observe_all(prog, tl, instants) == []


@settings(max_examples=60, deadline=None)
@given(sampled_plans(), st.sampled_from(["yellow", "all_red", "min_green"]), st.data())
def test_a_shortening_by_more_than_two_steps_is_always_caught(
    case: tuple[SignalProgram, Timeline, list[float], float], rule: str, data: st.DataObject
) -> None:
    prog, _, instants, step = case
    full = {"yellow": prog.yellow_s, "all_red": prog.all_red_s, "min_green": prog.min_green_s}
    if full[rule] <= 2 * step + 0.02:
        return  # nothing that short can be shortened detectably (all-red of 0, say)
    cut = data.draw(st.floats(2 * step + 0.01, full[rule] - 0.01), label="cut")
    lengths = {**full, rule: full[rule] - cut}
    # A's second green, or the yellow / all-red after it, is too short; the rest is correct.
    g, y, ar = prog.min_green_s, prog.yellow_s, prog.all_red_s
    cycle = 2 * (g + y + ar)
    sw: list[tuple[float, dict[str, Aspect]]] = [
        (0.0, {"A": G, "B": R}),
        (g, {"A": Y, "B": R}),
        (g + y, {"A": R, "B": R}),
        (g + y + ar, {"A": R, "B": G}),
        (2 * g + y + ar, {"A": R, "B": Y}),
        (2 * g + 2 * y + ar, {"A": R, "B": R}),
    ]
    t = cycle
    sw.append((t, {"A": G, "B": R}))
    t += lengths["min_green"]
    sw.append((t, {"A": Y, "B": R}))
    t += lengths["yellow"]
    sw.append((t, {"A": R, "B": R}))
    t += lengths["all_red"]
    sw.append((t, {"A": R, "B": G}))
    sw.append((t + g, {"A": R, "B": Y}))
    sw.append((t + g + y, {"A": R, "B": R}))
    sw.append((t + g + y + ar, {"A": G, "B": R}))
    vs = observe_all(prog, Timeline(sw), instants)
    assert {v.kind.value for v in vs} == {rule}
    assert all(cycle - 1.0 < v.time < t + 1.0 for v in vs)
