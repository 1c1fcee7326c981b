from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from preemption.decisions.planner import Alarm, ClaimState, Planner
from preemption.kernel.clock import SimClock
from preemption.kernel.config import PlannerConfig
from preemption.kernel.model import (
    Command,
    CommandKind,
    PreemptStatus,
    RoutePosition,
    SignalState,
)
from routes.geojson import RouteSet, load_routes
from routes.matcher import RouteMatcher

from .helpers import DEMO_DIR, VEHICLE, fix_at, position, side_street

ROUTES = load_routes(DEMO_DIR / "routes.geojson", epsg=25832)
CFG = PlannerConfig(
    default_transition_s=12.0, lead_margin_s=4.0, max_hold_s=120.0, dead_man_s=15.0, refresh_s=20.0
)


class Run:
    """A planner and a matcher on a simulated clock, fed clean fixes."""

    def __init__(
        self, routes: RouteSet = ROUTES, cfg: PlannerConfig = CFG, emergency: bool = True
    ) -> None:
        self.clock = SimClock()
        self.planner = Planner([mr.route for mr in routes], cfg, self.clock, {VEHICLE: "fire"})
        self.matcher = RouteMatcher(VEHICLE, routes)
        self.routes = routes
        self.commands: list[Command] = []
        if emergency:
            self.planner.set_emergency(VEHICLE, True)

    def drive(self, route: str, s: float, speed: float = 13.0, **kw: object) -> list[Command]:
        fix = fix_at(self.routes, route, s, self.clock.now(), speed=speed, **kw)  # type: ignore[arg-type]
        out = self.planner.on_position(self.matcher.update(fix))
        self.commands += out
        return out

    def tick(self, dt: float = 1.0) -> list[Command]:
        self.clock.advance(dt)
        out = self.planner.tick()
        self.commands += out
        return out

    def kinds(self, intersection: str) -> list[CommandKind]:
        return [c.kind for c in self.commands if c.intersection == intersection]


def test_requests_each_signal_once_in_time_and_cancels_after_the_stop_line() -> None:
    run = Run()
    requested_at: dict[str, float] = {}
    for k in range(200):
        s = 13.0 * k
        if s > 2480:
            break
        for c in run.drive("R1", s):
            if c.kind is CommandKind.REQUEST:
                requested_at[c.intersection] = s
                assert c.eta_s > 12.0  # asked before the engine is within the transition time
                assert c.duration_s <= CFG.max_hold_s
        run.tick()
    stop_lines = {sig.intersection: sig.stop_line_m for sig in ROUTES["R1"].signals}
    assert set(requested_at) == set(stop_lines)
    for inter, s in requested_at.items():
        # Early ETA (25 % faster) below 12 s + 4 s: about 16 * 13 * 1.25 = 260 m ahead.
        assert 200 < stop_lines[inter] - s < 300
        kinds = run.kinds(inter)
        assert kinds[0] is CommandKind.REQUEST
        assert kinds[-1] is CommandKind.CANCEL
        assert kinds.count(CommandKind.REQUEST) == 1
        assert kinds.count(CommandKind.CANCEL) == 1
    cancels = [c for c in run.commands if c.kind is CommandKind.CANCEL]
    assert all(c.reason == "passed the stop line" for c in cancels)
    assert run.planner.active == 0


def test_before_commitment_only_shared_signals_are_requested() -> None:
    # Engine waits at 1230 m (past the branch, on R2) - but we start it before the branch
    # with a slow speed so that K4/K6 are within reach only after the branch.
    run = Run()
    for _k, s in enumerate(range(900, 1200, 10)):
        run.drive("R2", float(s), speed=13.0)
        run.tick()
    assert {c.intersection for c in run.commands} <= {"K1", "K2", "K3"}
    for s in range(1200, 1400, 10):
        run.drive("R2", float(s), speed=13.0)
        run.tick()
    assert "K6" in {c.intersection for c in run.commands}
    assert "K4" not in {c.intersection for c in run.commands}


def test_no_request_without_emergency_run_or_for_unknown_vehicles() -> None:
    run = Run(emergency=False)
    for k in range(100):
        assert run.drive("R1", 13.0 * k) == []
        run.tick()
    assert run.planner.ignored["no_emergency_run"] == 100
    other = Run()
    fix = fix_at(ROUTES, "R1", 300.0, 0.0, vehicle="ROGUE-1")
    assert other.planner.on_position(RouteMatcher("ROGUE-1", ROUTES).update(fix)) == []
    assert other.planner.set_emergency("ROGUE-1", True) == []
    assert other.planner.ignored["not_allowed"] == 2


@pytest.mark.parametrize(
    "cause", ["dead_man", "blue_lights_off", "left_route", "operator", "max_hold"]
)
def test_every_release_condition_takes_requests_back(cause: str) -> None:
    run = Run(cfg=CFG.model_copy(update={"max_hold_s": 30.0}) if cause == "max_hold" else CFG)
    run.drive("R1", 150.0)
    assert run.kinds("K1") == [CommandKind.REQUEST]
    out: list[Command] = []
    if cause == "dead_man":
        for _ in range(20):
            out += run.tick()
    elif cause == "blue_lights_off":
        out = run.planner.set_emergency(VEHICLE, False)
    elif cause == "left_route":
        for fix in side_street(ROUTES, "R1", 160.0, run.clock.now(), n=3):
            run.clock.advance(1.0)
            out += run.planner.on_position(run.matcher.update(fix))
    elif cause == "operator":
        out = run.planner.withdraw(VEHICLE)
    else:
        for _ in range(35):  # standing still at 150 m, fixes keep coming
            run.clock.advance(1.0)
            out += run.planner.on_position(
                run.matcher.update(fix_at(ROUTES, "R1", 150.0, run.clock.now(), speed=0.0))
            )
            out += run.planner.tick()
    cancels = [c for c in out if c.kind is CommandKind.CANCEL]
    assert [c.intersection for c in cancels] == ["K1"]
    assert run.planner.active == 0


def test_refresh_before_the_controller_timer_and_update_when_the_eta_moves() -> None:
    run = Run()
    run.drive("R1", 150.0, speed=13.0)
    # Then held up at 150 m: the arrival slips second by second, so updates follow.
    outs = []
    for _ in range(25):
        run.clock.advance(1.0)
        outs += run.planner.on_position(
            run.matcher.update(fix_at(ROUTES, "R1", 150.0, run.clock.now(), speed=0.0))
        )
        outs += run.planner.tick()
    kinds = [c.kind for c in outs if c.intersection == "K1"]
    assert kinds
    assert set(kinds) == {CommandKind.UPDATE}
    assert len(kinds) >= 25 // 20  # at least the refresh
    assert len(kinds) <= 25 // 3 + 2  # hysteresis: not every second


def test_confirmation_from_the_controller_marks_the_request_granted() -> None:
    run = Run()
    run.drive("R1", 150.0)
    req = run.commands[0]
    assert run.planner.claim_state(VEHICLE, "K1") is ClaimState.REQUESTED
    run.planner.on_state(SignalState("K1", req.controller, PreemptStatus.ACTIVE, 0.0, "1"))
    assert run.planner.claim_state(VEHICLE, "K1") is ClaimState.GRANTED
    k1 = [e.what for e in run.planner.events if e.intersection == "K1"]
    assert k1 == ["armed", "due", "request", "requested", "granted"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["fix", "jump", "off", "silence", "lights", "withdraw"]),
            st.floats(min_value=0, max_value=2500),
            st.floats(min_value=0, max_value=25),
            st.floats(min_value=0.1, max_value=20),
        ),
        max_size=60,
    )
)
def test_invariants_over_arbitrary_inputs(
    steps: list[tuple[str, float, float, float]],
) -> None:
    run = Run()
    opened: dict[str, float] = {}
    closed: set[str] = set()
    lights = True
    for what, s, v, dt in steps:
        out: list[Command] = []
        if what in ("fix", "jump"):
            out = run.drive("R1", s, speed=v)
        elif what == "off":
            out = run.drive("R1", s, speed=v, lateral=100.0)
        elif what == "lights":
            lights = not lights
            out = run.planner.set_emergency(VEHICLE, lights)
        elif what == "withdraw":
            out = run.planner.withdraw(VEHICLE)
        run.clock.advance(dt)
        out += run.planner.tick()
        for c in out:
            assert c.vehicle == VEHICLE
            assert c.request_id not in closed, "command after cancel"
            if c.kind is CommandKind.REQUEST:
                assert lights, "request without an emergency run"
                assert c.request_id not in opened
                opened[c.request_id] = run.clock.monotonic()
            else:
                assert c.request_id in opened
            if c.kind is CommandKind.CANCEL:
                closed.add(c.request_id)
            else:
                assert 0 <= c.duration_s <= CFG.max_hold_s
        # No request lives beyond the maximum hold (ticks come at most every 20 s).
        for rid, t0 in opened.items():
            if rid not in closed:
                assert run.clock.monotonic() - t0 <= CFG.max_hold_s + 20
    for c in run.planner.release_all("end"):
        closed.add(c.request_id)
    assert set(opened) == closed


EARLY_ASKING = CFG.model_copy(update={"lead_margin_s": 30.0})


def _requested_before_the_branch(run: Run, route: str) -> set[str]:
    for s in range(900, 1160, 10):  # R1 and R2 part at about 1200 m
        run.drive(route, float(s), speed=13.0)
        run.tick()
    return {c.intersection for c in run.commands if c.kind is CommandKind.REQUEST}


def test_the_route_dispatch_named_is_asked_for_past_the_branch_before_commitment() -> None:
    # A 30 s lead margin puts K6 (R2 only, 1550 m) within reach before the branch.
    plain = Run(cfg=EARLY_ASKING)
    assert "K6" not in _requested_before_the_branch(plain, "R2")
    run = Run(cfg=EARLY_ASKING)
    run.planner.on_alarm(Alarm(VEHICLE, route="R2"))
    run.matcher.set_prior("R2")
    asked = _requested_before_the_branch(run, "R2")
    assert "K6" in asked
    assert "K4" not in asked
    assert run.matcher.update(fix_at(ROUTES, "R2", 1160.0, run.clock.now())).committed is None


def test_a_wrong_dispatch_route_is_taken_back_when_the_engine_takes_the_other_branch() -> None:
    run = Run(cfg=EARLY_ASKING)
    run.planner.on_alarm(Alarm(VEHICLE, route="R1"))
    run.matcher.set_prior("R1")
    assert "K4" in _requested_before_the_branch(run, "R2")
    for s in range(1160, 1450, 10):
        run.drive("R2", float(s), speed=13.0)
        run.tick()
    k4 = [c for c in run.commands if c.intersection == "K4"]
    assert [c.kind for c in k4][-1] is CommandKind.CANCEL
    assert "not on route R2" in (k4[-1].reason or "")
    assert "K6" in {c.intersection for c in run.commands if c.kind is CommandKind.REQUEST}
    # less trust than configured: nothing past the branch
    cautious = Run(cfg=EARLY_ASKING.model_copy(update={"dispatch_confidence": 1.0}))
    cautious.planner.on_alarm(Alarm(VEHICLE, route="R1"))
    cautious.matcher.set_prior("R1")
    assert "K4" not in _requested_before_the_branch(cautious, "R2")


def _near_fork(route: str, compatible: dict[str, float], committed: bool = False) -> RoutePosition:
    """The matcher's output 50 m before the R1/R2 branch, signals ahead on ``route``."""
    return position(
        VEHICLE,
        ROUTES[route].route,
        1150.0,
        13.0,
        0.0,
        committed=committed,
        compatible=compatible,
        shared=("K1", "K2", "K3"),
    )


def test_dispatched_requests_are_held_while_the_route_stays_likely_near_a_fork() -> None:
    clock = SimClock()
    planner = Planner([mr.route for mr in ROUTES], EARLY_ASKING, clock, {VEHICLE: "fire"})
    planner.set_emergency(VEHICLE, True)
    planner.on_alarm(Alarm(VEHICLE, route="R2"))
    asked = planner.on_position(_near_fork("R2", {"R2": 0.8, "R1": 0.2}))
    assert "K6" in {c.intersection for c in asked if c.kind is CommandKind.REQUEST}
    # The lead flips to R1 for a fix, R2 still likely: K6 is held, nothing cancelled.
    flip = planner.on_position(_near_fork("R1", {"R1": 0.6, "R2": 0.4}))
    assert not [c for c in flip if c.kind is CommandKind.CANCEL and c.intersection == "K6"]
    back = planner.on_position(_near_fork("R2", {"R2": 0.7, "R1": 0.3}))
    assert not [c for c in back if c.intersection == "K6" and c.kind is CommandKind.REQUEST]
    # R2 falls below dispatch_keep: K6 is taken back.
    gone = planner.on_position(_near_fork("R1", {"R1": 0.9, "R2": 0.1}))
    k6 = [c for c in gone if c.intersection == "K6"]
    assert [c.kind for c in k6] == [CommandKind.CANCEL]
    assert "not on route R1" in (k6[0].reason or "")


def test_a_commitment_to_another_route_ends_the_hold() -> None:
    clock = SimClock()
    planner = Planner([mr.route for mr in ROUTES], EARLY_ASKING, clock, {VEHICLE: "fire"})
    planner.set_emergency(VEHICLE, True)
    planner.on_alarm(Alarm(VEHICLE, route="R2"))
    planner.on_position(_near_fork("R2", {"R2": 0.8, "R1": 0.2}))
    out = planner.on_position(_near_fork("R1", {"R1": 0.7, "R2": 0.3}, committed=True))
    assert [c.kind for c in out if c.intersection == "K6"] == [CommandKind.CANCEL]


def test_dispatch_keep_may_not_exceed_dispatch_confidence() -> None:
    with pytest.raises(ValueError, match="dispatch_keep"):
        PlannerConfig(dispatch_confidence=0.4, dispatch_keep=0.5)
