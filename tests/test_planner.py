from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from preemption.decisions.planner import Alarm, ClaimState, HeldRequest, Planner, PlannerEvent
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
        self.events: list[PlannerEvent] = []
        self.planner = Planner(
            [mr.route for mr in routes],
            cfg,
            self.clock,
            {VEHICLE: "fire"},
            on_event=self.events.append,
        )
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
        assert out == []  # held for the off-delay: a bouncing contact is no release
        while run.clock.monotonic() < CFG.emergency_off_delay_s:
            out += run.tick(0.5)
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
    k1 = [e.what for e in run.events if e.intersection == "K1"]
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
        SimClock().now(),  # every test's clock starts at the same instant
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


# -- inputs as a network delivers them: late, bouncing, after a restart ---------------------


def test_the_eta_counts_from_the_fix_time_not_from_receipt() -> None:
    """A fix 3 s old: the request's ETA is 3 s shorter than the matcher's."""
    fresh, late = Run(), Run()
    late.clock.advance(3.0)  # the same fix (time 0) arrives 3 s late
    a = fresh.drive("R1", 150.0)
    fix = fix_at(ROUTES, "R1", 150.0, fresh.clock.now() - 0.0, speed=13.0)
    b = late.planner.on_position(late.matcher.update(fix))
    assert [c.kind for c in a] == [c.kind for c in b] == [CommandKind.REQUEST]
    assert b[0].eta_s == pytest.approx(a[0].eta_s - 3.0)


def test_a_backlog_after_a_link_outage_never_requests_signals() -> None:
    """Found: after a 40 s outage a buffered burst requested and cancelled two signals the
    engine had passed 20-30 s earlier. Old positions may complete claims, never request."""
    run = Run()
    t0 = run.clock.now()
    run.clock.advance(40.0)
    out: list[Command] = []
    for k in range(34):  # the burst, all at once: fixes 40 to 7 s old
        fix = fix_at(ROUTES, "R1", 13.0 * k, t0 + k, speed=13.0)
        out += run.planner.on_position(run.matcher.update(fix))
    assert out == []
    assert run.planner.ignored["old_position"] == 34
    # The newest position (1 s old) is fresh enough: K2 ahead is asked for.
    fresh = fix_at(ROUTES, "R1", 13.0 * 39, run.clock.now() - 1.0, speed=13.0)
    asked = run.planner.on_position(run.matcher.update(fresh))
    assert [c.kind for c in asked] == [CommandKind.REQUEST]
    assert asked[0].intersection not in {"K1"}  # K1 (400 m) is behind the engine at 533 m


def test_blue_lights_bouncing_every_0_2_s_toggle_no_junction() -> None:
    """Found: a blue-light input toggled every 0.2 s gave 10 request/cancel pairs in 21 s
    at one junction. With the off-delay it is one request, and nothing taken back while
    the engine is still on its run."""
    run = Run()
    lights = True
    for step in range(105):  # 21 s in 0.2 s steps
        if step % 5 == 0:
            run.drive("R1", 150.0 + 10.0 * step / 5, speed=10.0)  # K1 is at 400 m
        lights = not lights
        run.commands += run.planner.set_emergency(VEHICLE, lights)
        run.tick(0.2)
    assert run.kinds("K1").count(CommandKind.REQUEST) == 1
    assert CommandKind.CANCEL not in run.kinds("K1")


def test_an_off_that_lasts_the_delay_ends_the_run_and_an_on_in_between_keeps_it() -> None:
    run = Run()
    run.drive("R1", 150.0)
    run.commands += run.planner.set_emergency(VEHICLE, False)
    run.tick(CFG.emergency_off_delay_s - 0.5)
    run.commands += run.planner.set_emergency(VEHICLE, True)  # back on within the delay
    run.tick(CFG.emergency_off_delay_s)
    assert run.kinds("K1") == [CommandKind.REQUEST]
    run.commands += run.planner.set_emergency(VEHICLE, False)
    run.tick(CFG.emergency_off_delay_s)
    assert run.kinds("K1") == [CommandKind.REQUEST, CommandKind.CANCEL]
    assert "emergency status off" in run.commands[-1].reason


def test_the_onboard_units_last_will_ends_its_claims_at_once() -> None:
    run = Run()
    run.drive("R1", 150.0)
    out = run.planner.vehicle_offline(VEHICLE)
    assert [(c.kind, c.intersection, c.reason) for c in out] == [
        (CommandKind.CANCEL, "K1", "onboard unit offline")
    ]
    assert not run.planner.on_run(VEHICLE)
    assert run.drive("R1", 170.0) == []  # offline counts as off until the unit says on
    run.planner.set_emergency(VEHICLE, True)
    assert [c.kind for c in run.drive("R1", 190.0)] == [CommandKind.REQUEST]


def test_request_ids_carry_the_boot_id() -> None:
    clock = SimClock()
    a = Planner([mr.route for mr in ROUTES], CFG, clock, {VEHICLE: "fire"}, id_prefix="b1:")
    b = Planner([mr.route for mr in ROUTES], CFG, clock, {VEHICLE: "fire"}, id_prefix="b2:")
    ids = set()
    for p in (a, b):
        p.set_emergency(VEHICLE, True)
        cmds = p.on_position(
            RouteMatcher(VEHICLE, ROUTES).update(fix_at(ROUTES, "R1", 150.0, clock.now()))
        )
        ids |= {c.request_id for c in cmds}
    assert len(ids) == 2
    assert {i.split(":")[0] for i in ids} == {"b1", "b2"}


def _leftover(run: Run, ago: float = 5.0) -> HeldRequest:
    sig = next(s for s in ROUTES["R1"].signals if s.intersection == "K1")
    return HeldRequest(
        "old:K1/1/7", "K1", sig.controller, sig.approach, VEHICLE, run.clock.now() - ago
    )


def test_a_leftover_request_is_re_asserted_under_its_own_id_when_its_engine_is_heard() -> None:
    run = Run()
    assert run.planner.adopt([_leftover(run)]) == []
    assert run.planner.requests()[0].recovered
    out = run.drive("R1", 200.0)  # the engine, still on its run, due at K1
    assert [(c.kind, c.request_id) for c in out] == [(CommandKind.UPDATE, "old:K1/1/7")]
    assert "re-asserted after restart" in out[0].reason
    assert not run.planner.requests()[0].recovered
    # Its maximum hold counts from the first request, 5 s before the restart.
    total = 0.0
    while run.planner.active:  # the engine waits at 200 m, still reporting
        run.tick(1.0)
        run.drive("R1", 200.0, speed=0.0)
        total += 1.0
    assert total == pytest.approx(CFG.max_hold_s - 5.0, abs=1.0)
    assert "maximum hold" in run.commands[-1].reason


def test_a_leftover_request_is_cancelled_when_its_engine_is_not_heard() -> None:
    run = Run()
    run.planner.adopt([_leftover(run)])
    out: list[Command] = []
    while run.clock.monotonic() < CFG.recovery_grace_s + 1:
        out += run.tick(1.0)
    assert [(c.kind, c.request_id) for c in out] == [(CommandKind.CANCEL, "old:K1/1/7")]
    assert "not heard on its run" in out[0].reason
    assert any(e.what == "recovered" for e in run.events)


def test_an_unreachable_controller_leaves_the_request_held_and_says_so() -> None:
    run = Run()
    req = run.drive("R1", 150.0)[0]
    state = SignalState("K1", req.controller, PreemptStatus.UNREACHABLE, 0.0, detail="breaker open")
    assert run.planner.on_state(state) == []
    view = run.planner.requests()[0]
    assert view.answer == "unreachable"
    assert [e.why for e in run.events if e.what == "unconfirmed"] == ["breaker open"]
