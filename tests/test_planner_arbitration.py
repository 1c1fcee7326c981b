"""Arbitration, dispatch and the planner's invariants under arbitrary input.

Positions are built directly (no matcher) on two crossing routes, so that every
timing here is exact: route EW runs west to east through X1 (approach "1") and
X2; route NS runs south to north through X1 on approach "2".
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from preemption.decisions.planner import DUE, Alarm, ClaimState, HeldRequest, Planner, PlannerEvent
from preemption.kernel.clock import SimClock
from preemption.kernel.config import PlannerConfig
from preemption.kernel.model import (
    Command,
    CommandKind,
    PreemptStatus,
    Route,
    SignalPoint,
    SignalState,
)

from .helpers import position

EW = Route(
    "EW",
    "west-east",
    "FW-1",
    ((8.0, 49.0), (8.1, 49.0)),
    (SignalPoint("X1", "C1", 1000.0, "1", 10.0), SignalPoint("X2", "C2", 2000.0, "1", 10.0)),
)
NS = Route(
    "NS",
    "south-north",
    "FW-2",
    ((8.05, 48.99), (8.05, 49.01)),
    (SignalPoint("X1", "C1", 800.0, "2", 10.0),),
)
CFG = PlannerConfig(
    default_transition_s=10.0,
    lead_margin_s=4.0,
    max_hold_s=120.0,
    dead_man_s=15.0,
    refresh_s=20.0,
    turnout_s=30.0,
    station_speed_ms=10.0,
)
FLEET = {"HLF-1": "fire", "HLF-2": "fire", "RTW-1": "ambulance", "BUS-7": "transit"}


class Street:
    def __init__(self, cfg: PlannerConfig = CFG) -> None:
        self.clock = SimClock()
        self.events: list[PlannerEvent] = []
        self.planner = Planner([EW, NS], cfg, self.clock, FLEET, on_event=self.events.append)
        self.sent: list[Command] = []

    def at(self, vehicle: str, route: Route, s: float, v: float = 10.0) -> list[Command]:
        out = self.planner.on_position(position(vehicle, route, s, v, self.clock.now()))
        self.sent += out
        return out

    def tick(self, dt: float = 1.0) -> list[Command]:
        self.clock.advance(dt)
        out = self.planner.tick()
        self.sent += out
        return out

    def requests_at(self, inter: str) -> list[Command]:
        return [c for c in self.sent if c.intersection == inter]


def test_two_engines_crossing_the_first_to_arrive_goes_first_then_the_other() -> None:
    st_ = Street()
    st_.planner.set_emergency("HLF-1", True)
    st_.planner.set_emergency("HLF-2", True)
    # HLF-1 (EW) 120 m before X1, HLF-2 (NS) 130 m before X1: both due; HLF-1 earlier.
    st_.at("HLF-1", EW, 880.0)
    st_.at("HLF-2", NS, 670.0)
    first = [c for c in st_.requests_at("X1") if c.kind is CommandKind.REQUEST]
    assert [(c.approach, c.vehicle) for c in first] == [("1", "HLF-1")]
    assert st_.planner.claim_state("HLF-2", "X1") is ClaimState.QUEUED
    # HLF-1 passes X1 (plus the clearing distance): the junction goes to HLF-2.
    st_.clock.advance(15.0)
    st_.at("HLF-1", EW, 1030.0)
    kinds = [(c.kind, c.approach) for c in st_.requests_at("X1")]
    assert kinds == [
        (CommandKind.REQUEST, "1"),
        (CommandKind.CANCEL, "1"),
        (CommandKind.REQUEST, "2"),
    ]
    assert st_.planner.claim_state("HLF-2", "X1") is ClaimState.REQUESTED


def test_a_higher_priority_class_takes_over_a_granted_junction() -> None:
    st_ = Street()
    st_.planner.set_emergency("BUS-7", True)
    st_.planner.set_emergency("RTW-1", True)
    st_.at("BUS-7", EW, 900.0)
    st_.planner.on_state(SignalState("X1", "C1", PreemptStatus.ACTIVE, 0.0, "1"))
    assert st_.planner.claim_state("BUS-7", "X1") is ClaimState.GRANTED
    # The ambulance comes later and farther, but outranks the bus.
    st_.at("RTW-1", NS, 650.0)
    x1 = st_.requests_at("X1")
    assert [(c.kind, c.approach) for c in x1][-2:] == [
        (CommandKind.CANCEL, "1"),
        (CommandKind.REQUEST, "2"),
    ]
    assert st_.planner.claim_state("BUS-7", "X1") is ClaimState.QUEUED


def test_a_granted_junction_is_not_flipped_for_a_slightly_earlier_rival() -> None:
    st_ = Street()
    for v in ("HLF-1", "HLF-2"):
        st_.planner.set_emergency(v, True)
    st_.at("HLF-1", EW, 880.0)  # 12 s away
    st_.planner.on_state(SignalState("X1", "C1", PreemptStatus.ACTIVE, 0.0, "1"))
    st_.at("HLF-2", NS, 700.0, v=10.0)  # 10 s away: earlier, but the same class
    assert [c.kind for c in st_.requests_at("X1")] == [CommandKind.REQUEST]


def test_two_engines_on_the_same_approach_share_one_request() -> None:
    st_ = Street()
    for v in ("HLF-1", "HLF-2"):
        st_.planner.set_emergency(v, True)
    st_.at("HLF-1", EW, 880.0)
    st_.at("HLF-2", EW, 860.0)
    reqs = [c for c in st_.requests_at("X1") if c.kind is CommandKind.REQUEST]
    assert len(reqs) == 1
    assert st_.planner.claim_state("HLF-2", "X1") is ClaimState.REQUESTED
    # The first passes: the request stays for the second, retimed to it.
    st_.clock.advance(14.0)
    st_.at("HLF-1", EW, 1030.0)
    assert CommandKind.CANCEL not in [c.kind for c in st_.requests_at("X1")]
    st_.at("HLF-2", EW, 1030.0)
    assert [c.kind for c in st_.requests_at("X1")][-1] is CommandKind.CANCEL


def test_shutdown_cancels_and_asks_for_nothing_new() -> None:
    st_ = Street()
    for v in ("HLF-1", "HLF-2"):
        st_.planner.set_emergency(v, True)
    st_.at("HLF-1", EW, 880.0)
    st_.at("HLF-2", NS, 670.0)  # queued behind HLF-1 at X1
    out = st_.planner.release_all("daemon stopping")
    assert [(c.kind, c.approach) for c in out] == [(CommandKind.CANCEL, "1")]
    assert st_.planner.active == 0
    assert st_.planner.claim_state("HLF-2", "X1") is None


def test_gps_lost_for_20_s_then_back() -> None:
    st_ = Street()
    st_.planner.set_emergency("HLF-1", True)
    st_.at("HLF-1", EW, 900.0, v=8.0)
    for _ in range(20):
        st_.tick()
    x1 = st_.requests_at("X1")
    assert [c.kind for c in x1] == [CommandKind.REQUEST, CommandKind.CANCEL]
    assert x1[-1].reason == "no position for 15 s"
    # Back before the stop line: asked again (stale is not final for the run).
    st_.at("HLF-1", EW, 950.0, v=5.0)
    assert [c.kind for c in st_.requests_at("X1")][-1] is CommandKind.REQUEST


def test_a_controller_that_rejects_is_not_asked_again_on_this_run() -> None:
    st_ = Street()
    st_.planner.set_emergency("HLF-1", True)
    st_.at("HLF-1", EW, 900.0)
    out = st_.planner.on_state(SignalState("X1", "C1", PreemptStatus.REJECTED, 0.0, "1"))
    assert [c.kind for c in out] == [CommandKind.CANCEL]
    assert st_.at("HLF-1", EW, 920.0) == []
    assert ClaimState.REJECTED.value in [e.what for e in st_.events]


def test_turning_off_the_route_and_blue_lights_off_take_everything_back() -> None:
    st_ = Street()
    st_.planner.set_emergency("HLF-1", True)
    st_.at("HLF-1", EW, 1900.0)  # X2 due
    off = st_.planner.on_position(position("HLF-1", EW, 1910.0, 10.0, 0.0, on_route=False))
    assert [(c.kind, c.intersection) for c in off] == [(CommandKind.CANCEL, "X2")]
    st_.at("HLF-1", EW, 1920.0)
    assert st_.planner.set_emergency("HLF-1", False) == []  # off must last the off-delay
    lights = st_.tick(CFG.emergency_off_delay_s)
    assert [(c.kind, c.intersection) for c in lights] == [(CommandKind.CANCEL, "X2")]
    assert st_.at("HLF-1", EW, 1930.0) == []


def test_dispatch_arms_the_first_signal_before_the_engine_reports() -> None:
    st_ = Street(CFG.model_copy(update={"emergency_sources": ["dispatch"]}))
    out = st_.planner.on_alarm(Alarm("HLF-1", route="NS"))
    assert out == []  # rolling in 30 s, X1 is 800 m (80 s) out: not yet
    assert st_.planner.claim_state("HLF-1", "X1") is ClaimState.ARMED
    requested_at = None
    for k in range(120):
        if any(c.kind is CommandKind.REQUEST for c in st_.tick()):
            requested_at = k + 1
            break
    # Due when the early ETA (30 s + 80 s - elapsed) reaches 14 s: after 96 s.
    assert requested_at == pytest.approx(96, abs=1)
    # The engine never reports: taken back dead_man_s after the request.
    for _ in range(16):
        st_.tick()
    x1 = st_.requests_at("X1")
    assert [c.kind for c in x1] == [CommandKind.REQUEST, CommandKind.CANCEL]
    assert x1[-1].reason == "no position for 15 s"


def test_an_alarm_without_a_route_picks_the_route_ending_near_the_incident() -> None:
    st_ = Street()
    assert st_.planner.route_for(Alarm("HLF-1", incident=(8.1003, 49.0004))) == "EW"
    assert st_.planner.route_for(Alarm("HLF-1", incident=(8.0501, 49.0098))) == "NS"
    assert st_.planner.route_for(Alarm("HLF-1", incident=(9.0, 50.0))) is None
    assert st_.planner.route_for(Alarm("HLF-1", route="NS", incident=(8.1, 49.0))) == "NS"
    st_.planner.on_alarm(Alarm("HLF-1", incident=(8.0501, 49.0098)))
    assert st_.planner.claim_state("HLF-1", "X1") is ClaimState.ARMED


def test_a_cancelled_alarm_takes_everything_back() -> None:
    st_ = Street(CFG.model_copy(update={"emergency_sources": ["dispatch"]}))
    st_.planner.on_alarm(Alarm("HLF-1", route="EW"))
    st_.at("HLF-1", EW, 900.0)
    assert st_.planner.active == 1
    out = st_.planner.cancel_alarm("HLF-1")
    assert [c.kind for c in out] == [CommandKind.CANCEL]
    assert st_.planner.active == 0
    assert not st_.planner.on_run("HLF-1")


def test_the_all_rule_needs_blue_lights_and_dispatch() -> None:
    st_ = Street(CFG.model_copy(update={"emergency_rule": "all"}))
    st_.planner.set_emergency("HLF-1", True, source="onboard")
    assert st_.at("HLF-1", EW, 900.0) == []
    st_.planner.on_alarm(Alarm("HLF-1"))
    assert [c.kind for c in st_.at("HLF-1", EW, 910.0)] == [CommandKind.REQUEST]


class PlannerMachine(RuleBasedStateMachine):
    """Arbitrary positions, gaps, status changes, controller answers and operator actions."""

    def __init__(self) -> None:
        super().__init__()
        self.street = Street()
        self.p = self.street.planner
        self.on: dict[str, bool] = defaultdict(bool)
        self.opened: dict[str, float] = {}
        self.closed: set[str] = set()
        self.approach_of: dict[str, tuple[str, str]] = {}
        self.live_at: dict[str, set[str]] = defaultdict(set)  # intersection -> request ids

    def _apply(self, out: list[Command]) -> None:
        now = self.street.clock.monotonic()
        for c in out:
            assert c.request_id not in self.closed, f"command after cancel: {c}"
            if c.kind is CommandKind.REQUEST:
                assert c.request_id not in self.opened, "second request for one id"
                assert c.vehicle in FLEET
                assert self.on[c.vehicle], f"request for {c.vehicle}, not on an emergency run"
                # Never two approaches requested at one intersection.
                assert not self.live_at[c.intersection], (c, self.live_at[c.intersection])
                self.opened[c.request_id] = now
                self.live_at[c.intersection].add(c.request_id)
                self.approach_of[c.request_id] = (c.intersection, c.approach)
            else:
                assert c.request_id in self.opened, "update/cancel of an unknown request"
                assert 0.0 <= c.duration_s <= CFG.max_hold_s
            if c.kind is CommandKind.CANCEL:
                self.closed.add(c.request_id)
                self.live_at[c.intersection].discard(c.request_id)

    @rule(
        vehicle=st.sampled_from([*FLEET, "ROGUE"]),
        route=st.sampled_from([EW, NS]),
        s=st.floats(min_value=0.0, max_value=2100.0),
        v=st.floats(min_value=0.0, max_value=20.0),
        committed=st.booleans(),
    )
    def position(self, vehicle: str, route: Route, s: float, v: float, committed: bool) -> None:
        out = self.p.on_position(
            position(vehicle, route, s, v, self.street.clock.now(), committed=committed)
        )
        if vehicle == "ROGUE":
            assert out == []
        self._apply(out)

    @rule(vehicle=st.sampled_from(list(FLEET)))
    def leaves_route(self, vehicle: str) -> None:
        joined = self.p._vehicles.get(vehicle) is not None and self.p._vehicles[vehicle].joined
        self._apply(self.p.on_position(position(vehicle, EW, 0.0, 5.0, 0.0, on_route=False)))
        if joined:  # left the route it was on: everything of it is taken back at once
            assert not any(self.p.claim_state(vehicle, x) for x in ("X1", "X2"))

    @rule(dt=st.floats(min_value=0.1, max_value=25.0))
    def time_passes(self, dt: float) -> None:
        self.street.clock.advance(dt)
        self._apply(self.p.tick())

    @rule(vehicle=st.sampled_from(list(FLEET)), on=st.booleans())
    def blue_lights(self, vehicle: str, on: bool) -> None:
        self._apply(self.p.set_emergency(vehicle, on))
        self.on[vehicle] = self.p.on_run(vehicle)
        if not self.on[vehicle] and self.p._vehicles[vehicle].off_since is None:
            assert not any(self.p.claim_state(vehicle, x) for x in ("X1", "X2"))

    @rule(vehicle=st.sampled_from(list(FLEET)))
    def unit_goes_offline(self, vehicle: str) -> None:
        self._apply(self.p.vehicle_offline(vehicle))
        self.on[vehicle] = self.p.on_run(vehicle)
        if not self.on[vehicle]:
            assert not any(self.p.claim_state(vehicle, x) for x in ("X1", "X2"))

    @rule(
        inter=st.sampled_from(["X1", "X2"]),
        approach=st.sampled_from(["1", "2"]),
        vehicle=st.sampled_from(list(FLEET)),
        ago=st.floats(min_value=0.0, max_value=300.0),
    )
    def restarted_with_a_leftover(
        self, inter: str, approach: str, vehicle: str, ago: float
    ) -> None:
        """A previous process's request, adopted after a restart."""
        rid = f"old/{inter}/{approach}/{len(self.opened)}"
        before = self.p.active
        held = HeldRequest(rid, inter, "C", approach, vehicle, self.street.clock.now() - ago)
        self.opened[rid] = self.street.clock.monotonic() - ago
        out = self.p.adopt([held])
        if self.live_at.get(inter) or ago >= CFG.max_hold_s:
            # a second one at a junction, or one past the maximum hold: cancelled at once
            assert [(c.request_id, c.kind) for c in out] == [(rid, CommandKind.CANCEL)]
            assert self.p.active == before
        else:
            assert out == []
            self.live_at[inter].add(rid)
        self._apply(out)

    @rule(vehicle=st.sampled_from(list(FLEET)), route=st.sampled_from(["EW", "NS", None]))
    def alarm(self, vehicle: str, route: str | None) -> None:
        self.on[vehicle] = True
        self._apply(self.p.on_alarm(Alarm(vehicle, route)))

    @rule(vehicle=st.sampled_from(list(FLEET)))
    def alarm_cancelled(self, vehicle: str) -> None:
        self._apply(self.p.cancel_alarm(vehicle))
        self.on[vehicle] = self.p.on_run(vehicle)

    @rule(vehicle=st.sampled_from(list(FLEET)))
    def operator_withdraws(self, vehicle: str) -> None:
        self._apply(self.p.withdraw(vehicle))
        self.on[vehicle] = False
        assert not any(self.p.claim_state(vehicle, x) for x in ("X1", "X2"))

    @rule(
        inter=st.sampled_from(["X1", "X2"]),
        approach=st.sampled_from(["1", "2"]),
        status=st.sampled_from(list(PreemptStatus)),
    )
    def controller_says(self, inter: str, approach: str, status: PreemptStatus) -> None:
        self._apply(self.p.on_state(SignalState(inter, "C", status, 0.0, approach)))

    @invariant()
    def no_request_outlives_the_maximum_hold(self) -> None:
        now = self.street.clock.monotonic()
        for rid, t0 in self.opened.items():
            if rid not in self.closed:
                # Ticks come at most 25 s apart in this machine.
                assert now - t0 <= CFG.max_hold_s + 25.0

    @invariant()
    def silent_vehicles_hold_nothing_for_long(self) -> None:
        # Dead-man: a vehicle unheard for longer than dead_man_s (plus one tick gap of
        # this machine) has no due claim left.
        now = self.street.clock.monotonic()
        for v in self.p._vehicles.values():
            heard = [x for x in (v.last_fix, v.departs, v.due_since) if x is not None]
            due = [c for c in v.claims.values() if c.state in DUE]
            if due and heard:
                assert now - max(heard) <= CFG.dead_man_s + 25.0

    @invariant()
    def an_emergency_status_off_releases_after_the_delay(self) -> None:
        now = self.street.clock.monotonic()
        for vid, v in self.p._vehicles.items():
            if v.off_since is not None and now - v.off_since > CFG.emergency_off_delay_s + 25.0:
                assert self.p.on_run(vid) or not v.claims

    @invariant()
    def the_planner_and_the_command_stream_agree(self) -> None:
        assert self.p.active == sum(len(ids) for ids in self.live_at.values())

    def teardown(self) -> None:
        self._apply(self.p.release_all("end"))
        assert set(self.opened) == self.closed


PlannerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_planner_invariants = PlannerMachine.TestCase
