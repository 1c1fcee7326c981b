"""The signal controller model: the plain plan, the pre-emption sequence, and safety.

The safety monitor (sim.safety) watches every run; it knows the program and the
aspects, nothing of the controller's internals.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from preemption.kernel.model import PreemptStatus
from signal_adapters.simlink import PreemptionInput
from sim.controller import (
    Aspect,
    Interval,
    SignalController,
    SignalProgram,
    Stage,
    StatusChange,
    green_interval_at,
)
from sim.safety import SafetyMonitor

G, Y, R = Aspect.GREEN, Aspect.YELLOW, Aspect.RED
NOT_ACTIVE, ENTERING, ACTIVE = (
    PreemptStatus.NOT_ACTIVE,
    PreemptStatus.ENTERING,
    PreemptStatus.ACTIVE,
)
EXITING, MAX_PRESENCE = PreemptStatus.EXITING, PreemptStatus.MAX_PRESENCE
DT = 0.1

# A then B, 20 s greens, 3 s yellow, 2 s all-red: cycle 50 s.
#   A green 0-20, yellow 20-23, all-red 23-25; B green 25-45, yellow 45-48, all-red 48-50.
TWO = SignalProgram(
    stages=(Stage(frozenset({"A"}), 20.0), Stage(frozenset({"B"}), 20.0)),
    yellow_s=3.0,
    all_red_s=2.0,
    min_green_s=5.0,
    approaches={"1": "A", "2": "B"},
)
THREE = SignalProgram(
    stages=(
        Stage(frozenset({"A"}), 20.0),
        Stage(frozenset({"B"}), 20.0),
        Stage(frozenset({"C"}), 20.0),
    ),
    yellow_s=3.0,
    all_red_s=2.0,
    min_green_s=5.0,
)


@dataclass
class Run:
    """Drives a controller on a 0.1 s grid with a safety monitor watching."""

    ctrl: SignalController
    monitor: SafetyMonitor = field(init=False)
    times: list[float] = field(default_factory=list)
    aspects: list[dict[str, Aspect]] = field(default_factory=list)
    statuses: list[tuple[PreemptStatus, str | None]] = field(default_factory=list)
    k: int = 0

    def __post_init__(self) -> None:
        self.monitor = SafetyMonitor(self.ctrl.program)
        self._sample(self.ctrl.t)

    def _sample(self, t: float) -> None:
        self.ctrl.advance_to(t)
        a = self.ctrl.aspects()
        self.monitor.observe(t, a)
        self.times.append(t)
        self.aspects.append(a)
        self.statuses.append(self.ctrl.preempt_status())

    def to(self, end: float) -> None:
        """Sample every grid instant up to ``end``, then leave the controller at ``end``."""
        while (self.k + 1) * DT <= end + 1e-9:
            self.k += 1
            self._sample(self.k * DT)
        self.ctrl.advance_to(max(end, self.ctrl.t))

    def at(self, t: float) -> dict[str, Aspect]:
        """The sampled aspects at the grid instant nearest ``t``."""
        return self.aspects[round(t / DT)]

    def first_green(self, group: str, after: float) -> float:
        for t, a in zip(self.times, self.aspects, strict=True):
            if t >= after - 1e-9 and a[group] is G:
                return t
        raise AssertionError(f"{group} not green after {after}")


def switch_times(ctrl: SignalController, group: str) -> list[list[float]]:
    return ctrl.green_log.get(group, [])


def legal(a: StatusChange, b: StatusChange) -> bool:
    """Whether the status log may go from ``a`` straight to ``b``."""
    if b.status is ACTIVE and a.status is ENTERING:
        return True  # the called approach's green (or, if it ended, the next call's)
    allowed = {
        NOT_ACTIVE: {ENTERING, ACTIVE},
        ENTERING: {ENTERING, EXITING, MAX_PRESENCE},
        ACTIVE: {ACTIVE, ENTERING, EXITING, MAX_PRESENCE},
        EXITING: {NOT_ACTIVE, ENTERING, ACTIVE},
        MAX_PRESENCE: {NOT_ACTIVE, ENTERING, ACTIVE},
    }
    if b.status not in allowed.get(a.status, set()):
        return False
    # Served: an approach; not served: none. Same status twice only for a new approach.
    served = b.status in (ENTERING, ACTIVE)
    return (b.approach is not None) == served and (a.status, a.approach) != (b.status, b.approach)


# -- the program ------------------------------------------------------------------------


def test_program_checks_its_numbers() -> None:
    assert TWO.cycle_s == 50.0
    assert TWO.intergreen_s == 5.0
    assert TWO.groups == {"A", "B"}
    assert TWO.group_for("1") == "A"
    assert TWO.group_for("B") == "B"  # an approach named like its group needs no mapping
    assert TWO.stage_of("B") == 1
    with pytest.raises(ValueError, match="minimum green"):
        SignalProgram(stages=(Stage(frozenset({"A"}), 4.0),), min_green_s=5.0)
    with pytest.raises(ValueError, match="at least one stage"):
        SignalProgram(stages=())
    with pytest.raises(ValueError, match="yellow"):
        SignalProgram(stages=TWO.stages, yellow_s=0.0)
    with pytest.raises(ValueError, match="negative"):
        SignalProgram(stages=TWO.stages, all_red_s=-1.0)


# -- the plain plan ---------------------------------------------------------------------


def test_plain_plan_runs_the_stages_in_order_with_full_intergreens() -> None:
    run = Run(SignalController("K", TWO))
    run.to(150.0)
    assert run.monitor.violations == []
    assert switch_times(run.ctrl, "A") == [
        [0.0, 20.0],
        [50.0, 70.0],
        [100.0, 120.0],
        [150.0, math.inf],
    ]
    assert switch_times(run.ctrl, "B") == [[25.0, 45.0], [75.0, 95.0], [125.0, 145.0]]
    expect = {
        0.0: (G, R), 19.9: (G, R), 20.0: (Y, R), 22.9: (Y, R), 23.0: (R, R), 24.9: (R, R),
        25.0: (R, G), 45.0: (R, Y), 48.0: (R, R), 50.0: (G, R),
    }  # fmt: skip
    for t, (a, b) in expect.items():
        assert (run.at(t)["A"], run.at(t)["B"]) == (a, b), t
    assert run.ctrl.status_log == [StatusChange(0.0, NOT_ACTIVE, None)]
    assert set(run.statuses) == {(NOT_ACTIVE, None)}


def test_three_stages_follow_their_order() -> None:
    ctrl = SignalController("K", THREE)
    ctrl.advance_to(200.0)
    onsets = sorted((on, g) for g in "ABC" for on, _ in switch_times(ctrl, g))
    assert [g for _, g in onsets] == list("ABCABCABC")
    assert [on for on, _ in onsets] == [25.0 * k for k in range(9)]


@pytest.mark.parametrize(
    ("offset", "stage", "interval", "since"),
    [
        (0.0, 0, Interval.GREEN, 0.0),
        (30.0, 1, Interval.GREEN, -5.0),  # 30 s into the cycle: B green since 25
        (21.0, 0, Interval.YELLOW, -1.0),
        (49.0, 1, Interval.ALL_RED, -1.0),
        (120.0, 0, Interval.YELLOW, 0.0),  # offsets wrap round the cycle
    ],
)
def test_offset_is_the_moment_in_the_cycle_at_zero(
    offset: float, stage: int, interval: Interval, since: float
) -> None:
    prog = SignalProgram(stages=TWO.stages, yellow_s=3.0, all_red_s=2.0, offset_s=offset)
    ctrl = SignalController("K", prog)
    assert (ctrl.stage, ctrl.interval, ctrl.since) == (stage, interval, since)
    # The plan carries on from there: A's greens start where the cycle wraps.
    ctrl.advance_to(200.0)
    full = [(on, off) for on, off in switch_times(ctrl, "A") if on > 0.0 and off < math.inf]
    assert len(full) >= 3
    for on, off in full:
        assert (on + offset) % 50.0 == pytest.approx(0.0)
        assert off - on == pytest.approx(20.0)


def test_a_controller_started_later_is_in_step_with_one_started_at_zero() -> None:
    a, b = SignalController("K", TWO), SignalController("K", TWO, t=80.0)
    a.advance_to(80.0)
    assert (a.stage, a.interval, a.since) == (b.stage, b.interval, b.since)
    assert b.aspects() == {"A": R, "B": G}


def test_time_cannot_go_back() -> None:
    ctrl = SignalController("K", TWO)
    ctrl.advance_to(10.0)
    with pytest.raises(ValueError, match="time cannot go back"):
        ctrl.advance_to(9.0)


def test_green_interval_at_finds_the_green_around_an_instant() -> None:
    log = [[0.0, 20.0], [50.0, math.inf]]
    assert green_interval_at(log, 10.0) == (0.0, 20.0)
    assert green_interval_at(log, 30.0) is None
    assert green_interval_at(log, 1e6) == (50.0, math.inf)


# -- entering ---------------------------------------------------------------------------


def test_the_controller_is_a_preemption_input() -> None:
    link: PreemptionInput = SignalController("K", TWO)
    link.call("2", "r1", 30.0)
    assert link.preempt_status() == (ENTERING, "2")  # the approach as called, not the group


def test_entering_from_a_green_before_its_minimum_green() -> None:
    run = Run(SignalController("K", TWO))
    run.to(2.0)
    run.ctrl.call("2", "r1", 60.0)
    assert run.ctrl.preempt_status() == (ENTERING, "2")
    run.to(40.0)
    # A's green runs its 5 s minimum, then 3 s yellow and 2 s all-red.
    assert switch_times(run.ctrl, "A") == [[0.0, 5.0]]
    assert switch_times(run.ctrl, "B") == [[10.0, math.inf]]
    assert run.at(5.0)["A"] is Y
    assert run.at(8.0) == {"A": R, "B": R}
    assert run.ctrl.status_log == [
        StatusChange(0.0, NOT_ACTIVE, None),
        StatusChange(2.0, ENTERING, "2"),
        StatusChange(10.0, ACTIVE, "2"),
    ]
    assert run.monitor.violations == []


def test_entering_from_a_green_past_its_minimum_ends_it_at_once() -> None:
    run = Run(SignalController("K", TWO))
    run.to(12.0)
    run.ctrl.call("2", "r1", 60.0)
    run.to(30.0)
    assert switch_times(run.ctrl, "A") == [[0.0, 12.0]]
    assert switch_times(run.ctrl, "B") == [[17.0, math.inf]]
    assert run.monitor.violations == []


def test_entering_from_yellow_lets_it_run_out() -> None:
    run = Run(SignalController("K", TWO))
    run.to(21.0)
    run.ctrl.call("2", "r1", 60.0)
    run.to(40.0)
    assert switch_times(run.ctrl, "B") == [[25.0, math.inf]]
    assert run.at(22.9)["A"] is Y
    assert run.ctrl.status_log[-1] == StatusChange(25.0, ACTIVE, "2")
    assert run.monitor.violations == []


def test_a_call_for_the_group_in_yellow_brings_it_back_after_the_intergreen() -> None:
    run = Run(SignalController("K", TWO))
    run.to(21.0)
    run.ctrl.call("1", "r1", 60.0)
    run.to(60.0)
    assert switch_times(run.ctrl, "A") == [[0.0, 20.0], [25.0, math.inf]]
    assert "B" not in run.ctrl.green_log
    assert run.monitor.violations == []


def test_entering_from_all_red_goes_straight_to_the_called_stage() -> None:
    run = Run(SignalController("K", TWO))
    run.to(24.0)
    run.ctrl.call("1", "r1", 60.0)
    run.to(60.0)
    assert switch_times(run.ctrl, "A") == [[0.0, 20.0], [25.0, math.inf]]
    assert "B" not in run.ctrl.green_log
    assert run.monitor.violations == []


def test_entering_skips_the_stages_in_between() -> None:
    run = Run(SignalController("K", THREE))
    run.to(1.0)
    run.ctrl.call("C", "r1", 60.0)
    run.to(40.0)
    assert "B" not in run.ctrl.green_log
    assert switch_times(run.ctrl, "C") == [[10.0, math.inf]]
    assert run.monitor.violations == []


def test_a_call_for_the_green_approach_is_active_at_once_and_holds_it() -> None:
    run = Run(SignalController("K", TWO))
    run.to(3.0)
    run.ctrl.call("1", "r1", 60.0)
    assert run.ctrl.preempt_status() == (ACTIVE, "1")
    run.to(50.0)
    assert switch_times(run.ctrl, "A") == [[0.0, math.inf]]
    assert run.ctrl.status_log[1] == StatusChange(3.0, ACTIVE, "1")


def test_bad_calls_are_refused_and_a_zero_hold_does_nothing() -> None:
    ctrl = SignalController("K", TWO)
    with pytest.raises(KeyError, match="no-such"):
        ctrl.call("no-such", "r1", 10.0)
    with pytest.raises(ValueError, match="not a number"):
        ctrl.call("1", "r1", math.nan)
    ctrl.call("2", "r0", 0.0)
    assert ctrl.preempt_status() == (NOT_ACTIVE, None)
    ctrl.advance_to(30.0)
    assert switch_times(ctrl, "B") == [[25.0, math.inf]]


# -- dwell and exit ---------------------------------------------------------------------


def test_dwell_holds_while_the_call_is_refreshed() -> None:
    run = Run(SignalController("K", TWO))
    run.to(2.0)
    for t in range(2, 103, 10):
        run.to(float(t))
        run.ctrl.call("2", "r1", 15.0)
        assert run.ctrl.preempt_status()[0] in (ENTERING, ACTIVE)
    run.to(130.0)
    b_on, b_off = switch_times(run.ctrl, "B")[0]
    assert b_on == 10.0
    assert b_off == pytest.approx(102.0 + 15.0)  # the last refresh's hold timer
    assert all(a["A"] is R for t, a in zip(run.times, run.aspects, strict=True) if 8 <= t <= 117)
    assert run.monitor.violations == []


def test_exit_after_a_long_dwell_ends_the_green_at_once_and_resumes_the_plan() -> None:
    run = Run(SignalController("K", TWO))
    run.to(1.0)
    run.ctrl.call("1", "r1", 100.0)
    run.to(60.0)
    run.ctrl.release("r1")
    assert run.ctrl.preempt_status() == (EXITING, None)
    run.to(120.0)
    assert switch_times(run.ctrl, "A")[0] == [0.0, 60.0]
    assert switch_times(run.ctrl, "B")[0] == [65.0, 85.0]
    assert switch_times(run.ctrl, "A")[1] == [90.0, 110.0]  # full greens, in order
    assert run.ctrl.status_log[-2:] == [
        StatusChange(60.0, EXITING, None),
        StatusChange(65.0, NOT_ACTIVE, None),
    ]
    assert run.monitor.violations == []


def test_exit_soon_after_the_dwell_started_still_gives_the_planned_green() -> None:
    run = Run(SignalController("K", TWO))
    run.to(12.0)
    run.ctrl.call("2", "r1", 100.0)
    run.to(20.0)  # B green since 17
    run.ctrl.release("r1")
    run.to(70.0)
    assert switch_times(run.ctrl, "B")[0] == [17.0, 37.0]
    assert switch_times(run.ctrl, "A")[1] == [42.0, 62.0]
    assert run.monitor.violations == []


def test_release_while_entering_returns_to_the_plan_order() -> None:
    run = Run(SignalController("K", THREE))
    run.to(2.0)
    run.ctrl.call("C", "r1", 100.0)
    run.to(6.0)  # A in yellow since 5
    run.ctrl.release("r1")
    assert run.ctrl.preempt_status() == (EXITING, None)
    run.to(40.0)
    assert switch_times(run.ctrl, "B") == [[10.0, 30.0]]  # the stage after A, not C
    assert run.ctrl.status_log[-1] == StatusChange(10.0, NOT_ACTIVE, None)
    assert run.monitor.violations == []


def test_a_lapsed_call_ends_at_its_exact_moment_even_between_advances() -> None:
    ctrl = SignalController("K", TWO)
    ctrl.advance_to(2.0)
    ctrl.call("2", "r1", 30.0)
    ctrl.advance_to(100.0)  # one big step: the switches still land where they are due
    assert switch_times(ctrl, "B")[0] == [10.0, 32.0]
    assert switch_times(ctrl, "A")[1] == [37.0, 57.0]
    assert ctrl.status_log == [
        StatusChange(0.0, NOT_ACTIVE, None),
        StatusChange(2.0, ENTERING, "2"),
        StatusChange(10.0, ACTIVE, "2"),
        StatusChange(32.0, EXITING, None),
        StatusChange(37.0, NOT_ACTIVE, None),
    ]


def test_max_presence_ends_a_call_and_locks_its_request_out_until_released() -> None:
    prog = SignalProgram(stages=TWO.stages, yellow_s=3.0, all_red_s=2.0, max_presence_s=40.0)
    run = Run(SignalController("K", prog))
    run.to(2.0)
    for t in range(2, 100, 5):  # a daemon that keeps refreshing
        run.to(float(t))
        run.ctrl.call("B", "r1", 15.0)
    run.to(100.0)
    assert switch_times(run.ctrl, "B")[0] == [10.0, 42.0]
    assert run.ctrl.status_log[3:5] == [
        StatusChange(42.0, MAX_PRESENCE, None),
        StatusChange(47.0, NOT_ACTIVE, None),
    ]
    # The refreshes after 42 s are ignored: B gets only its planned greens.
    assert switch_times(run.ctrl, "B")[1] == [72.0, 92.0]
    assert run.statuses[-1] == (NOT_ACTIVE, None)
    run.ctrl.release("r1")
    run.ctrl.call("B", "r1", 15.0)  # removed and re-applied: served again
    assert run.ctrl.preempt_status() == (ENTERING, "B")
    assert run.monitor.violations == []


def test_calls_are_served_first_come_and_the_next_follows_the_first() -> None:
    run = Run(SignalController("K", TWO))
    run.to(1.0)
    run.ctrl.call("1", "r1", 100.0)
    run.to(3.0)
    run.ctrl.call("2", "r2", 100.0)
    run.to(4.0)
    run.ctrl.call("1", "r3", 100.0)
    run.to(30.0)
    assert run.ctrl.preempt_status() == (ACTIVE, "1")
    run.ctrl.release("r1")
    assert run.ctrl.preempt_status() == (ENTERING, "2")  # r2 came before r3
    run.to(50.0)
    assert switch_times(run.ctrl, "A") == [[0.0, 30.0]]
    assert switch_times(run.ctrl, "B") == [[35.0, math.inf]]
    assert run.ctrl.status_log[-1] == StatusChange(35.0, ACTIVE, "2")
    run.ctrl.release("r2")
    assert run.ctrl.preempt_status() == (ENTERING, "1")
    run.to(70.0)
    assert switch_times(run.ctrl, "B") == [[35.0, 50.0]]  # past its minimum: ends at once
    assert switch_times(run.ctrl, "A")[1] == [55.0, math.inf]
    assert run.monitor.violations == []


# -- properties -------------------------------------------------------------------------


@st.composite
def programs(draw: st.DrawFn) -> SignalProgram:
    """2-4 stages, sometimes with a second group and a group shared by two stages."""
    n = draw(st.integers(2, 4))
    min_green = draw(st.floats(3.0, 8.0))
    groups = [{f"S{i}"} | ({f"S{i}b"} if draw(st.booleans()) else set()) for i in range(n)]
    if draw(st.booleans()):
        for i in draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True)):
            groups[i].add("X")
    stages = tuple(
        Stage(frozenset(g), draw(st.floats(min_green, min_green + 20.0))) for g in groups
    )
    yellow = draw(st.floats(3.0, 4.0))
    all_red = draw(st.floats(0.0, 3.0))
    cycle = sum(s.green_s for s in stages) + n * (yellow + all_red)
    return SignalProgram(
        stages=stages,
        yellow_s=yellow,
        all_red_s=all_red,
        min_green_s=min_green,
        offset_s=draw(st.floats(0.0, cycle)),
        approaches={f"ap-{g}": g for g in sorted(set().union(*groups)) if g != "S0"},
        max_presence_s=draw(st.floats(15.0, 200.0)),
    )


def approaches_of(prog: SignalProgram) -> list[str]:
    """Every way to name an approach: mapped ids, and S0 by its group name."""
    return [*sorted(prog.approaches), "S0"]


def off_grid(t: float) -> float:
    """The instant halfway between the samples around ``t``: no sample is "at" an event."""
    return (math.floor(t / DT) + 0.5) * DT


def worst_transition(prog: SignalProgram) -> float:
    return prog.min_green_s + prog.yellow_s + prog.all_red_s


def every_stage_green(run: Run, start: float, end: float) -> list[bool]:
    prog = run.ctrl.program
    window = [
        a for t, a in zip(run.times, run.aspects, strict=True) if start - 1e-9 <= t <= end + 1e-9
    ]
    return [any(all(a[g] is G for g in s.groups) for a in window) for s in prog.stages]


@dataclass
class Request:
    """What the test expects of one request id (the spec, written independently)."""

    approach: str
    seq: int
    first: float
    expires: float
    max_at: float

    @property
    def end(self) -> float:
        return min(self.expires, self.max_at)

    @property
    def maxed(self) -> bool:
        return self.max_at <= self.expires


@dataclass(frozen=True)
class Event:
    t: float
    release: bool
    rid: int
    approach: int
    hold: float


events_st = st.lists(
    st.builds(
        Event,
        t=st.floats(0.0, 1.0),  # fraction of the time span
        release=st.sampled_from([False, False, False, True]),
        rid=st.integers(0, 3),
        approach=st.integers(0, 10),
        hold=st.floats(0.0, 60.0),
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=80, deadline=None)
@given(programs(), events_st, st.floats(10.0, 120.0))
def test_arbitrary_calls_keep_the_controller_safe_legal_and_honest(
    prog: SignalProgram, events: list[Event], max_presence: float
) -> None:
    prog = dataclasses.replace(prog, max_presence_s=max_presence)
    run = Run(SignalController("K", prog))
    names = approaches_of(prog)
    span = 3 * prog.cycle_s
    reqs: dict[str, Request] = {}
    history: list[Request] = []
    seq = 0
    for ev in sorted(events, key=lambda e: e.t):
        t = off_grid(ev.t * span)
        run.to(t)
        rid = f"r{ev.rid}"
        rec = reqs.get(rid)
        if ev.release:
            run.ctrl.release(rid)
            if rec is not None:
                rec.expires = min(rec.expires, t)
                del reqs[rid]
        else:
            approach = names[ev.approach % len(names)]
            if rec is not None and t < rec.end:
                rec.expires = t + ev.hold
            elif rec is None or not rec.maxed:
                seq += 1
                rec = Request(approach, seq, t, t + ev.hold, t + prog.max_presence_s)
                reqs[rid] = rec
                history.append(rec)
            # else: ended by max presence and not released: locked out, ignored
            run.ctrl.call(approach, rid, ev.hold)
    quiet = max([r.end for r in history] + [run.ctrl.t])
    event(f"calls served: {min(len(history), 3)}+")
    event(f"ended by max presence: {any(r.maxed and r.end < quiet for r in history)}")
    run.to(quiet + 2 * prog.cycle_s + DT)

    # Safe: the monitor saw every step.
    assert run.monitor.violations == []

    # Legal: the status log only takes the sequence's steps, and time runs forward.
    log = run.ctrl.status_log
    assert log[0].status is NOT_ACTIVE
    for a, b in itertools.pairwise(log):
        assert a.time <= b.time
        assert legal(a, b), (a, b)

    # Honest: served exactly while some call lives, the first come; dwell only on green.
    def live_at(t: float) -> list[Request]:
        return sorted((r for r in history if r.first <= t < r.end), key=lambda r: r.seq)

    for t, seen, (status, served) in zip(run.times, run.aspects, run.statuses, strict=True):
        live = live_at(t)
        if not live:
            assert status in (NOT_ACTIVE, EXITING, MAX_PRESENCE), t
            continue
        assert status in (ENTERING, ACTIVE), t
        assert served == live[0].approach, t
        assert (seen[prog.group_for(served)] is G) == (status is ACTIVE), t

    # Quick: a served call's approach is green within the worst-case transition.
    for a, b in itertools.pairwise(log):
        if a.status is ENTERING:
            assert b.time - a.time <= worst_transition(prog) + 1e-9, (a, b)
    # Back to the plan: the exit lasts at most a green and an intergreen ...
    longest = max(s.green_s for s in prog.stages) + prog.intergreen_s
    for a, b in itertools.pairwise(log):
        if a.status in (EXITING, MAX_PRESENCE):
            assert b.time - a.time <= longest + 1e-9, (a, b)
    # ... and every stage shows green again within two cycles of the last call.
    assert all(every_stage_green(run, quiet, quiet + 2 * prog.cycle_s))
    assert log[-1].status is NOT_ACTIVE


@settings(max_examples=40, deadline=None)
@given(programs(), st.floats(0.0, 1.0), st.integers(0, 10), st.floats(0.0, 60.0))
def test_a_held_call_gets_green_within_the_worst_case_and_the_plan_resumes(
    prog: SignalProgram, when: float, which: int, dwell: float
) -> None:
    prog = dataclasses.replace(prog, max_presence_s=1000.0)
    names = approaches_of(prog)
    approach = names[which % len(names)]
    group = prog.group_for(approach)
    run = Run(SignalController("K", prog))
    t_call = off_grid(when * prog.cycle_s)
    run.to(t_call)
    run.ctrl.call(approach, "r1", 300.0)
    run.to(t_call + worst_transition(prog) + 2 * DT)
    green = run.first_green(group, t_call)
    # The sample after the switch may be up to one step late.
    assert green <= t_call + worst_transition(prog) + DT + 1e-9
    assert run.statuses[run.times.index(green)] == (ACTIVE, approach)
    t_release = off_grid(green + dwell)
    run.to(t_release)
    assert all(a[group] is G for t, a in zip(run.times, run.aspects, strict=True) if t >= green)
    run.ctrl.release("r1")
    run.to(t_release + 2 * prog.cycle_s + DT)
    assert all(every_stage_green(run, t_release, t_release + 2 * prog.cycle_s))
    assert run.statuses[-1] == (NOT_ACTIVE, None)
    assert run.monitor.violations == []


@settings(max_examples=30, deadline=None)
@given(programs(), st.floats(0.0, 1.0), st.floats(1.0, 40.0))
def test_a_call_nobody_refreshes_lapses_by_itself(
    prog: SignalProgram, when: float, hold: float
) -> None:
    run = Run(SignalController("K", prog))
    t_call = off_grid(when * prog.cycle_s)
    run.to(t_call)
    run.ctrl.call(approaches_of(prog)[0], "dead-daemon", hold)
    run.to(t_call + hold + 2 * prog.cycle_s + DT)
    served = [
        t for t, (s, _) in zip(run.times, run.statuses, strict=True) if s in (ENTERING, ACTIVE)
    ]
    assert served, "the call was never served"
    end = min(hold, prog.max_presence_s)
    assert max(served) < t_call + end + 1e-9
    assert run.ctrl.status_log[-1].status is NOT_ACTIVE
    assert all(every_stage_green(run, t_call + end, t_call + end + 2 * prog.cycle_s))
    assert run.monitor.violations == []


def test_status_legality_rules_reject_what_the_sequence_forbids() -> None:
    # The checker itself: a few steps the controller must never take.
    def ok(a: tuple[PreemptStatus, str | None], b: tuple[PreemptStatus, str | None]) -> bool:
        return legal(StatusChange(0.0, *a), StatusChange(1.0, *b))

    assert ok((NOT_ACTIVE, None), (ENTERING, "1"))
    assert ok((ENTERING, "1"), (ACTIVE, "1"))
    assert ok((ACTIVE, "1"), (EXITING, None))
    assert not ok((NOT_ACTIVE, None), (EXITING, None))
    assert not ok((ENTERING, "1"), (NOT_ACTIVE, None))
    assert not ok((ACTIVE, "1"), (NOT_ACTIVE, None))
    assert not ok((ACTIVE, "1"), (ACTIVE, "1"))
    assert not ok((NOT_ACTIVE, None), (PreemptStatus.REQUESTED, "1"))
