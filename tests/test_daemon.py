from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from preemption.decisions.planner import Alarm, ClaimState, Planner
from preemption.kernel.clock import SimClock
from preemption.kernel.model import Command, CommandKind, Fix, PreemptStatus, SignalState
from preemption.service.daemon import Daemon
from routes.matcher import RouteMatcher
from signal_adapters.base import AdapterConfigError, AdapterContext, ControllerUnreachable
from signal_adapters.simlink import SimLinkAdapter
from sim.controller import SignalController, SignalProgram, Stage

from .helpers import VEHICLE, fix_at
from .test_planner import CFG, ROUTES


class Recorder:
    """A controller peer that records what it is asked; it can hang or refuse."""

    def __init__(
        self, controller: str, clock: SimClock, hang: bool = False, down: bool = False
    ) -> None:
        self.controller = controller
        self.clock = clock
        self.hang = hang
        self.down = down
        self.calls: list[tuple[float, Command]] = []
        self.closed = False

    async def _answer(self, cmd: Command) -> SignalState:
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise ControllerUnreachable(self.controller, "no route to host; check the VPN")
        self.calls.append((self.clock.monotonic(), cmd))
        return SignalState(
            cmd.intersection, self.controller, PreemptStatus.REQUESTED, self.clock.now()
        )

    request = update = cancel = _answer

    async def state(self, intersection: str) -> SignalState:
        return SignalState(
            intersection, self.controller, PreemptStatus.NOT_ACTIVE, self.clock.now()
        )

    async def close(self) -> None:
        self.closed = True


async def drive(
    clock: SimClock, route: str, until_s: float, vehicle: str = VEHICLE, speed: float = 13.0
) -> AsyncIterator[Fix]:
    s = 0.0
    while s <= until_s:
        yield fix_at(ROUTES, route, s, clock.now(), speed=speed, vehicle=vehicle)
        await clock.sleep(1.0)
        s += speed


def make(clock: SimClock, adapters: dict[str, Recorder]) -> Daemon:
    planner = Planner([mr.route for mr in ROUTES], CFG, clock, {VEHICLE: "fire"})
    planner.set_emergency(VEHICLE, True)
    return Daemon(
        clock=clock,
        planner=planner,
        adapters=adapters,
        matcher_for=lambda v: RouteMatcher(v, ROUTES),
        call_timeout_s=2.0,
    )


def test_a_hanging_controller_delays_no_other_and_is_counted() -> None:
    clock = SimClock()
    recs = {f"C-K{i}": Recorder(f"C-K{i}", clock, hang=(i == 1)) for i in range(1, 6)}
    daemon = make(clock, recs)
    clock.run(daemon.run([drive(clock, "R1", 2500.0)]))
    # K2..K5 were asked at the moment the fix that triggered them arrived (no waiting
    # behind the hanging K1 worker).
    for cid in ("C-K2", "C-K3", "C-K4", "C-K5"):
        kinds = [c.kind for _, c in recs[cid].calls]
        assert kinds[0] is CommandKind.REQUEST
        assert kinds[-1] is CommandKind.CANCEL
        t_req = recs[cid].calls[0][0]
        assert t_req == pytest.approx(round(t_req))  # fixes come on whole seconds
    assert daemon.counters["request_failed"] >= 1
    assert daemon.counters["cancel_failed"] >= 1
    assert all(r.closed for r in recs.values())


def test_stopping_the_daemon_takes_back_every_held_request() -> None:
    clock = SimClock()
    recs = {f"C-K{i}": Recorder(f"C-K{i}", clock) for i in range(1, 6)}
    daemon = make(clock, recs)
    stop = asyncio.Event()

    async def main() -> None:
        async def stopper() -> None:
            await clock.sleep(25.5)  # engine at ~330 m: K1 requested, not passed
            stop.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(stopper())
            tg.create_task(daemon.run([drive(clock, "R1", 2500.0)], stop))

    clock.run(main())
    k1 = [c for _, c in recs["C-K1"].calls]
    assert [c.kind for c in k1] == [CommandKind.REQUEST, CommandKind.CANCEL]
    assert k1[-1].reason == "daemon stopping"
    assert daemon.planner.active == 0


def test_unknown_vehicles_are_counted_and_never_cause_a_request() -> None:
    clock = SimClock()
    recs = {f"C-K{i}": Recorder(f"C-K{i}", clock) for i in range(1, 6)}
    daemon = make(clock, recs)
    clock.run(daemon.run([drive(clock, "R1", 2500.0, vehicle="ROGUE")]))
    assert all(not r.calls for r in recs.values())
    assert daemon.counters["fix_unknown_vehicle"] > 150


def test_unreachable_controller_failures_are_counted_not_raised() -> None:
    clock = SimClock()
    recs = {f"C-K{i}": Recorder(f"C-K{i}", clock, down=(i == 3)) for i in range(1, 6)}
    daemon = make(clock, recs)
    clock.run(daemon.run([drive(clock, "R1", 2500.0)]))
    assert daemon.counters["request_failed"] >= 1
    assert next(c.kind for _, c in recs["C-K4"].calls) is CommandKind.REQUEST


def _controller() -> SignalController:
    prog = SignalProgram(
        stages=(Stage(frozenset({"A"}), 30.0), Stage(frozenset({"B"}), 30.0)), approaches={"1": "A"}
    )
    return SignalController("K1", prog)


def _cmd(kind: CommandKind, rid: str = "r1") -> Command:
    return Command(kind, rid, VEHICLE, "K1", "C-K1", "1", 0.0, 10.0, 60.0, "fire")


def test_simlink_adapter_is_idempotent_and_releases_on_close() -> None:
    clock = SimClock()
    ctrl = _controller()
    ctrl.advance_to(40.0)  # in stage B
    ad = SimLinkAdapter("C-K1", {}, AdapterContext(clock, {"simlink": {"K1": ctrl}}))

    async def main() -> None:
        st = await ad.request(_cmd(CommandKind.REQUEST))
        assert st.status is PreemptStatus.ENTERING  # the model acts on a call at once
        await ad.request(_cmd(CommandKind.REQUEST))  # twice: one call
        ctrl.advance_to(52.0)
        assert (await ad.state("K1")).status is PreemptStatus.ACTIVE
        await ad.cancel(_cmd(CommandKind.CANCEL))
        await ad.cancel(_cmd(CommandKind.CANCEL))  # twice: fine
        await ad.cancel(_cmd(CommandKind.CANCEL, rid="never-sent"))
        await ad.request(_cmd(CommandKind.REQUEST))  # after cancel: stays cancelled
        ctrl.advance_to(70.0)
        assert (await ad.state("K1")).status is not PreemptStatus.ACTIVE
        await ad.request(_cmd(CommandKind.REQUEST, rid="r2"))
        ctrl.advance_to(80.0)
        assert (await ad.state("K1")).status is PreemptStatus.ACTIVE
        await ad.close()
        ctrl.advance_to(100.0)
        assert ctrl.preempt_status()[0] is not PreemptStatus.ACTIVE

    clock.run(main())


def test_simlink_outside_the_simulator_is_a_config_error() -> None:
    with pytest.raises(AdapterConfigError, match="only runs inside"):
        SimLinkAdapter("C-K1", {}, AdapterContext(SimClock()))


def test_an_alarm_sets_the_matcher_prior_and_arms_the_route() -> None:
    clock = SimClock()
    recs = {f"C-K{i}": Recorder(f"C-K{i}", clock) for i in range(1, 8)}
    daemon = make(clock, recs)
    daemon.planner.set_emergency(VEHICLE, False)
    daemon.alarm(Alarm(VEHICLE, route="R2"))
    assert daemon.planner.on_run(VEHICLE)
    assert daemon.planner.claim_state(VEHICLE, "K1") is ClaimState.ARMED
    cmds = daemon.on_fix(fix_at(ROUTES, "R2", 100.0, clock.now(), speed=12.0))
    # K1 is due from 100 m at 12 m/s: the request goes out.
    assert [(c.kind, c.intersection) for c in cmds] == [(CommandKind.REQUEST, "K1")]
    assert daemon._matchers[VEHICLE].prior["R2"] > 0.5
    daemon.cancel_alarm(VEHICLE)
    assert not daemon.planner.on_run(VEHICLE)
    assert daemon.planner.active == 0
