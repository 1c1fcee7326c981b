"""The daemon in simulated time: supervision, workers, breakers, bounded memory.

Every test here first reproduced a fault of the old daemon (noted in its
docstring), then holds the fix.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest

from preemption.decisions.planner import Alarm, ClaimState, Planner
from preemption.kernel.clock import SimClock
from preemption.kernel.config import ServiceConfig
from preemption.kernel.model import Command, CommandKind, Fix, PreemptStatus, SignalState
from preemption.service.daemon import Daemon, SourceSpec
from preemption.service.events import Recorder
from preemption.service.supervision import BreakerState
from routes.matcher import RouteMatcher
from signal_adapters.base import AdapterConfigError, AdapterContext, ControllerUnreachable
from signal_adapters.simlink import SimLinkAdapter
from sim.controller import SignalController, SignalProgram, Stage

from .helpers import VEHICLE, fix_at
from .test_planner import CFG, ROUTES

CONTROLLERS = [f"C-K{i}" for i in range(1, 8)]
SERVICE = ServiceConfig(call_timeout_s=2.0, poll_s=1.0, release_poll_s=10.0)


@dataclass
class Peer:
    """A controller behind an adapter: answers, hangs, refuses or raises, per kind of call.

    ``commands`` and ``polls`` say how it treats request/update/cancel and state():
    "ok", "hang", "slow" (1.5 s), "down" (ControllerUnreachable), "oserror" (a
    library's OSError let out of the adapter), "bug" (ZeroDivisionError).
    """

    controller: str
    clock: SimClock
    commands: str = "ok"
    polls: str = "ok"
    calls: list[tuple[float, str, str]] = field(default_factory=list)  # (t, call, intersection)
    held: dict[str, str] = field(default_factory=dict)  # intersection -> request id
    closed: bool = False
    slow_calls: int = 0

    async def _behave(self, mode: str) -> None:
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "slow":
            self.slow_calls += 1
            await self.clock.sleep(1.5)
        if mode == "down":
            raise ControllerUnreachable(self.controller, "no route to host; check the VPN")
        if mode == "oserror":
            raise OSError(113, "No route to host")
        if mode == "bug":
            _ = 1 / 0

    async def _command(self, cmd: Command) -> SignalState:
        await self._behave(self.commands)
        self.calls.append((self.clock.monotonic(), cmd.kind.value, cmd.intersection))
        if cmd.kind is CommandKind.CANCEL:
            self.held.pop(cmd.intersection, None)
        else:
            self.held[cmd.intersection] = cmd.request_id
        return await self._state(cmd.intersection)

    request = update = cancel = _command

    async def state(self, intersection: str) -> SignalState:
        await self._behave(self.polls)
        self.calls.append((self.clock.monotonic(), "poll", intersection))
        return await self._state(intersection)

    async def _state(self, intersection: str) -> SignalState:
        status = PreemptStatus.ACTIVE if intersection in self.held else PreemptStatus.NOT_ACTIVE
        return SignalState(intersection, self.controller, status, self.clock.now())

    async def close(self) -> None:
        self.closed = True

    def times(self, call: str, intersection: str | None = None) -> list[float]:
        return [t for t, c, i in self.calls if c == call and intersection in (None, i)]


async def drive(
    clock: SimClock, route: str, until_s: float, vehicle: str = VEHICLE, speed: float = 13.0
) -> AsyncIterator[Fix]:
    s = 0.0
    while s <= until_s:
        yield fix_at(ROUTES, route, s, clock.now(), speed=speed, vehicle=vehicle)
        await clock.sleep(1.0)
        s += speed


def make(
    clock: SimClock,
    peers: dict[str, Peer],
    config: ServiceConfig = SERVICE,
    sink: Recorder | None = None,
    on_tick: Callable[[], None] | None = None,
) -> Daemon:
    planner = Planner(
        [mr.route for mr in ROUTES],
        CFG,
        clock,
        {VEHICLE: "fire"},
        on_event=None if sink is None else sink.planner_event,
    )
    planner.set_emergency(VEHICLE, True)
    return Daemon(
        clock=clock,
        planner=planner,
        adapters=peers,
        matcher_for=lambda v: RouteMatcher(v, ROUTES),
        config=config,
        sink=sink,
        on_tick=on_tick,
    )


def run_until(
    clock: SimClock,
    daemon: Daemon,
    sources: list[SourceSpec | AsyncIterator[Fix]],
    script: Callable[[], Awaitable[None]],
) -> None:
    """Run the daemon on ``sources`` while ``script`` plays; stop it when the script ends."""

    async def main() -> None:
        stop = asyncio.Event()

        async def play() -> None:
            await script()
            stop.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(play())
            tg.create_task(daemon.run(sources, stop))

    clock.run(main())


def wait(clock: SimClock, seconds: float) -> Callable[[], Awaitable[None]]:
    """A script that only lets ``seconds`` of simulated time pass."""

    async def script() -> None:
        await clock.sleep(seconds)

    return script


def peers(clock: SimClock, **modes: tuple[str, str]) -> dict[str, Peer]:
    """A peer per controller; ``C_K1=("hang", "ok")`` sets (commands, polls) of C-K1."""
    out = {}
    for cid in CONTROLLERS:
        commands, polls = modes.get(cid.replace("-", "_"), ("ok", "ok"))
        out[cid] = Peer(cid, clock, commands, polls)
    return out


def _requested_on_time(peer: Peer) -> None:
    kinds = [c for _, c, _ in peer.calls if c != "poll"]
    assert kinds[0] == "request"
    assert kinds[-1] == "cancel"
    t_req = peer.times("request")[0]
    assert t_req == pytest.approx(round(t_req))  # fixes come on whole seconds: asked at once


@pytest.mark.parametrize("polls", ["hang", "ok"])
def test_a_hanging_controller_delays_no_other_request_or_poll(polls: str) -> None:
    """Found: the old test's fake hung on requests but answered polls at once, and the
    ticker polled every controller in turn, so a controller hanging on polls stretched
    everyone's polls and the planner's tick. Here it hangs on requests, and on polls too."""
    clock = SimClock()
    ps = peers(clock, C_K1=("hang", polls))
    ticks: list[float] = []
    daemon = make(clock, ps, on_tick=lambda: ticks.append(clock.monotonic()))
    clock.run(daemon.run([drive(clock, "R1", 2500.0)]))
    for cid in ("C-K2", "C-K3", "C-K4", "C-K5"):
        _requested_on_time(ps[cid])
        inter = cid.removeprefix("C-")
        polled = ps[cid].times("poll", inter)
        assert len(polled) >= 3
        gaps = [b - a for a, b in pairwise(polled)]
        assert max(gaps) <= SERVICE.poll_s + 1e-6, gaps  # every second, whatever K1 does
    assert daemon.counters["request_failed"] >= 1
    assert all(b - a == pytest.approx(1.0) for a, b in pairwise(ticks))
    assert all(p.closed for p in ps.values())


def test_three_unreachable_controllers_do_not_stretch_the_planners_tick() -> None:
    """Found: with 3 unreachable controllers the tick (dead-man, maximum hold, refresh)
    stretched from 1 s to 6 s, because it polled them one after another."""
    clock = SimClock()
    ps = peers(clock, C_K1=("hang", "hang"), C_K2=("hang", "hang"), C_K3=("hang", "hang"))
    ticks: list[float] = []
    daemon = make(clock, ps, on_tick=lambda: ticks.append(clock.monotonic()))
    clock.run(daemon.run([drive(clock, "R1", 2500.0)]))
    assert len(ticks) > 150
    assert all(b - a == pytest.approx(1.0) for a, b in pairwise(ticks))
    _requested_on_time(ps["C-K4"])


@pytest.mark.parametrize("fault", ["oserror", "bug", "down"])
def test_an_adapter_that_raises_anything_ends_nothing(fault: str) -> None:
    """Found: one OSError out of one controller's adapter ended the whole daemon
    (ExceptionGroup out of the TaskGroup); the intersections after it were never asked."""
    clock = SimClock()
    ps = peers(clock, C_K2=(fault, fault), C_K3=("ok", fault))
    daemon = make(clock, ps)
    clock.run(daemon.run([drive(clock, "R1", 2500.0)]))
    for cid in ("C-K1", "C-K4", "C-K5"):
        _requested_on_time(ps[cid])
    assert daemon.counters["request_failed"] >= 1
    assert daemon.counters["poll_failed"] >= 1
    if fault != "down":
        name = "OSError" if fault == "oserror" else "ZeroDivisionError"
        assert daemon.counters[f"adapter_bug:{name}"] >= 2


def test_a_cancelled_request_is_polled_only_until_its_release_is_seen() -> None:
    """Found: a controller that failed a poll stayed polled for ever; a cancelled
    request was still polled 370 s later."""
    clock = SimClock()
    ps = peers(clock)
    daemon = make(clock, ps)

    run_until(clock, daemon, [drive(clock, "R1", 2500.0)], wait(clock, 600.0))
    k1 = ps["C-K1"]
    cancelled = k1.times("cancel")[0]
    assert not [t for t in k1.times("poll") if t > cancelled + SERVICE.poll_s + 1e-6]
    assert daemon.workers["C-K1"].status().polled == ()


def test_polls_of_an_unreachable_controller_stop_after_the_release_bound() -> None:
    clock = SimClock()
    ps = peers(clock)
    daemon = make(clock, ps)
    k1 = ps["C-K1"]

    async def cut_k1_after_its_request() -> None:
        while not k1.times("request"):
            await clock.sleep(0.5)
        k1.polls = "down"
        await clock.sleep(600.0)

    run_until(clock, daemon, [drive(clock, "R1", 2500.0)], cut_k1_after_its_request)
    cancelled = k1.times("cancel")[0]
    attempts = daemon.counters["poll_failed"]
    # Polls go on for at most release_poll_s after the cancel, paced by the breaker.
    assert (
        attempts
        <= (cancelled - k1.times("request")[0] + SERVICE.release_poll_s) / SERVICE.poll_s + 2
    )
    assert daemon.workers["C-K1"].status().polled == ()


def test_a_dead_controller_opens_its_breaker_and_its_request_shows_unconfirmed() -> None:
    clock = SimClock()
    ps = peers(clock, C_K1=("down", "down"))
    record = Recorder(clock)
    daemon = make(clock, ps, sink=record)
    seen: dict[str, Any] = {}

    async def watch() -> None:
        await clock.sleep(35.0)  # K1 requested at ~15 s, failing since
        seen["status"] = daemon.workers["C-K1"].status()
        seen["requests"] = daemon.planner.requests()
        seen["calls"] = daemon.counters["request_failed"] + daemon.counters["poll_failed"]
        ps["C-K1"].commands = ps["C-K1"].polls = "ok"  # back
        await clock.sleep(70.0)
        seen["after"] = daemon.workers["C-K1"].status()

    run_until(clock, daemon, [drive(clock, "R1", 2500.0, speed=6.0)], watch)
    status = seen["status"]
    assert status.breaker is BreakerState.OPEN
    k1 = [r for r in seen["requests"] if r.intersection == "K1"]
    assert [r.answer for r in k1] == ["unreachable"]
    # A breaker, not one timeout per command: a handful of calls in 20 s, not dozens.
    assert seen["calls"] <= SERVICE.breaker_failures + 4
    assert any(e.what == "unconfirmed" and e.intersection == "K1" for e in record.events)
    # Back: the held request reaches the controller, the breaker closes.
    assert seen["after"].breaker is BreakerState.CLOSED
    assert "request" in [c for _, c, _ in ps["C-K1"].calls]
    assert daemon.counters["breaker_opened"] >= 1


def test_a_cancel_that_fails_is_tried_again_until_the_controller_has_it() -> None:
    clock = SimClock()
    ps = peers(clock)
    daemon = make(clock, ps)
    k1 = ps["C-K1"]

    async def outage_around_the_cancel() -> None:
        while not k1.times("request"):
            await clock.sleep(0.5)
        k1.commands = k1.polls = "down"
        await clock.sleep(40.0)  # the engine passes K1 meanwhile: the cancel fails
        k1.commands = k1.polls = "ok"
        await clock.sleep(100.0)

    run_until(clock, daemon, [drive(clock, "R1", 2500.0)], outage_around_the_cancel)
    assert daemon.counters["cancel_failed"] >= 1
    assert k1.times("cancel"), "the cancel never reached the controller"
    assert k1.held == {}


def test_a_failing_source_is_restarted_and_the_others_go_on() -> None:
    clock = SimClock()
    ps = peers(clock)
    daemon = make(clock, ps)
    opened = []

    def broken() -> AsyncIterator[Fix]:
        async def gen() -> AsyncIterator[Fix]:
            opened.append(clock.monotonic())
            yield fix_at(ROUTES, "R1", 0.0, clock.now(), vehicle="OTHER")
            raise OSError(5, "Input/output error")

        return gen()

    sources: list[SourceSpec | AsyncIterator[Fix]] = [
        SourceSpec("broken", broken),
        drive(clock, "R1", 2500.0),
    ]
    run_until(clock, daemon, sources, wait(clock, 300.0))
    assert len(opened) >= 5
    assert daemon.counters["restart:source broken"] == len(opened)  # each opening failed
    gaps = [b - a for a, b in pairwise(opened)]
    assert gaps == sorted(gaps)  # backing off
    _requested_on_time(ps["C-K5"])


def test_a_burst_is_matched_but_only_its_newest_fix_is_planned_and_the_queue_is_bounded() -> None:
    clock = SimClock()
    ps = peers(clock)
    config = SERVICE.model_copy(update={"fix_queue": 16})
    daemon = make(clock, ps, config=config)
    seen: list[float] = []

    async def burst() -> AsyncIterator[Fix]:
        t0 = clock.now()
        for k in range(40):  # 40 fixes in one go: a buffer drained after an outage
            yield fix_at(ROUTES, "R1", 10.0 * k, t0 - 40 + k)
        await clock.sleep(3.0)
        seen.append(daemon.counters["fixes"])

    clock.run(daemon.run([burst()]))
    assert daemon.counters["fix_queue_overflow"] == 40 - 16
    assert seen == [16]
    assert daemon.counters["fix_backlog"] == 15


def test_memory_does_not_grow_with_the_number_of_fixes() -> None:
    """Found: positions, dispatched and the planner's events grew by one entry per fix."""
    clock = SimClock()
    ps = peers(clock)
    daemon = make(clock, ps)

    def run_fixes(n: int, start: int) -> None:
        for k in range(start, start + n):
            s = (13.0 * k) % 2400.0
            clock.advance(1.0)
            daemon.submit(daemon.on_fix(fix_at(ROUTES, "R1", s, clock.now())))
            if k % 10 == 0:
                daemon.submit(daemon.planner.tick())

    run_fixes(3000, 0)  # warm: every route, signal and counter seen
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    run_fixes(20_000, 3000)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    # One entry per fix would be >= 20,000 * ~100 bytes = 2 MB.
    assert grown < 200_000, [str(s) for s in after.compare_to(before, "lineno")[:5]]
    assert daemon.counters["fixes"] == 23_000


def test_stopping_the_daemon_takes_back_every_held_request() -> None:
    clock = SimClock()
    ps = peers(clock)
    record = Recorder(clock)
    daemon = make(clock, ps, sink=record)
    # Stopped with the engine at ~330 m: K1 requested, not passed.
    run_until(clock, daemon, [drive(clock, "R1", 2500.0)], wait(clock, 25.5))
    k1 = [s.command for s in record.commands if s.command.intersection == "K1"]
    assert [c.kind for c in k1] == [CommandKind.REQUEST, CommandKind.CANCEL]
    assert k1[-1].reason == "daemon stopping"
    assert ps["C-K1"].held == {}
    assert daemon.planner.active == 0


def test_a_cancel_under_way_when_the_daemon_stops_still_reaches_the_controller() -> None:
    clock = SimClock()
    ps = peers(clock)
    daemon = make(clock, ps)
    k1 = ps["C-K1"]

    async def stop_in_the_middle_of_the_cancel() -> None:
        while not k1.times("request"):
            await clock.sleep(0.5)
        k1.commands = "slow"  # the cancel after the stop line takes 1.5 s
        while not k1.slow_calls:
            await clock.sleep(0.1)
        await clock.sleep(0.5)

    run_until(clock, daemon, [drive(clock, "R1", 2500.0)], stop_in_the_middle_of_the_cancel)
    assert k1.held == {}, "the cancel was lost with the worker's task"
    assert "cancel" in [c for _, c, _ in k1.calls]


def test_stopping_does_not_wait_longer_than_the_bound_for_a_hanging_controller() -> None:
    clock = SimClock()
    ps = peers(clock)
    config = SERVICE.model_copy(update={"shutdown_timeout_s": 5.0})
    daemon = make(clock, ps, config=config)
    stop = asyncio.Event()
    stopped: list[float] = []

    async def main() -> None:
        async def stopper() -> None:
            await clock.sleep(25.5)
            ps["C-K1"].commands = "hang"
            stop.set()

        async def run() -> None:
            await daemon.run([drive(clock, "R1", 2500.0)], stop)
            stopped.append(clock.monotonic())

        async with asyncio.TaskGroup() as tg:
            tg.create_task(stopper())
            tg.create_task(run())

    clock.run(main())
    # The cancel hangs: the daemon gives up after the call timeout and the close timeout.
    assert stopped[0] - 25.5 <= config.shutdown_timeout_s + 2 * config.call_timeout_s + 1e-6


def test_unknown_vehicles_are_counted_and_never_cause_a_request() -> None:
    clock = SimClock()
    ps = peers(clock)
    daemon = make(clock, ps)
    clock.run(daemon.run([drive(clock, "R1", 2500.0, vehicle="ROGUE")]))
    assert all(not p.calls for p in ps.values())
    assert daemon.counters["fix_unknown_vehicle"] > 150


def test_the_journal_sink_sees_every_command_answer_and_transition() -> None:
    clock = SimClock()
    ps = peers(clock)
    record = Recorder(clock)
    daemon = make(clock, ps, sink=record)
    clock.run(daemon.run([drive(clock, "R1", 2500.0)]))
    sent = [s.command for s in record.commands]
    assert {c.intersection for c in sent} == {"K1", "K2", "K3", "K4", "K5"}
    calls = [a for a in record.answers if a.call != "poll"]
    assert len(calls) == len(sent)
    assert all(a.error is None and a.status for a in calls)
    whats = {e.what for e in record.events}
    assert {"armed", "due", "request", "requested", "granted", "completed", "cancel"} <= whats
    assert record.positions
    assert all(p.vehicle == VEHICLE for p in record.positions)


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
    daemon = make(clock, peers(clock))
    daemon.planner.set_emergency(VEHICLE, False, immediate=True)
    daemon.alarm(Alarm(VEHICLE, route="R2"))
    assert daemon.planner.on_run(VEHICLE)
    assert daemon.planner.claim_state(VEHICLE, "K1") is ClaimState.ARMED
    cmds = daemon.on_fix(fix_at(ROUTES, "R2", 100.0, clock.now(), speed=12.0))
    # K1 is due from 100 m at 12 m/s: the request goes out.
    assert [(c.kind, c.intersection) for c in cmds] == [(CommandKind.REQUEST, "K1")]
    assert daemon._vehicles[VEHICLE].matcher.prior["R2"] > 0.5
    daemon.cancel_alarm(VEHICLE)
    assert not daemon.planner.on_run(VEHICLE)
    assert daemon.planner.active == 0
