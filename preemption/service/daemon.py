"""The daemon: positions in, matched, planned, and commands out to the controllers.

Tasks under one TaskGroup, all on the Clock, each supervised (a task that
raises is logged, counted and restarted with backoff; nothing one task does
ends the others):

- one **pump** per GPS source: each fix of a vehicle on the allow-list goes into
  that vehicle's bounded inbox (the oldest is dropped and counted when it is
  full); fixes of unknown vehicles are dropped and counted;
- the **matcher**: drains the inboxes; each fix passes the vehicle's motion gate
  (an impossible jump is dropped) and its matcher; only the newest fix of a
  backlog reaches the planner (the planner also judges every position by its
  age), so a burst after a link outage never asks for signals already passed;
- one **worker per controller** (preemption/service/controllers.py): its
  commands, its polls and its circuit breaker, so a slow or dead controller
  delays no other and never the planner;
- the **ticker**: the planner's time-driven decisions (dead-man, maximum hold,
  refresh, off-delay, recovery), the journal's flush and the service manager's
  watchdog; it never waits on a controller.

History goes to the event sink (the journal), not into memory. On the way out,
whatever the reason, every request still held is cancelled, the cancels get
``shutdown_timeout_s`` to be confirmed, and every adapter is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gps.backoff import Backoff
from preemption.decisions.planner import Alarm, HeldRequest, Planner
from preemption.kernel.clock import Clock, every
from preemption.kernel.config import ServiceConfig
from preemption.kernel.model import Command, Fix, SignalState
from preemption.service.controllers import ControllerWorker, WorkerStatus
from preemption.service.events import EventSink, Note, NullSink
from preemption.service.supervision import supervise
from routes.matcher import RouteMatcher
from signal_adapters.base import SignalAdapter

log = logging.getLogger(__name__)

POSITION_EVERY_S = 1.0  # positions of a vehicle on a run go to the journal this often
PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A GPS source the daemon may open again after it failed."""

    name: str
    open: Callable[[], AsyncIterable[Fix]]
    restart: bool = True  # False: it ends for good when it fails (a one-shot iterator)


class Gate(Protocol):
    """A vehicle's plausibility check of each fix (gps.validity.MotionGate)."""

    def check(self, fix: Fix) -> str | None:
        """None to use the fix, else the reason it is dropped."""
        ...


@dataclass
class _Vehicle:
    matcher: RouteMatcher
    gate: Gate | None
    inbox: deque[Fix]
    journalled: float = float("-inf")  # UTC of the last position written to the journal


class Daemon:
    def __init__(
        self,
        *,
        clock: Clock,
        planner: Planner,
        matcher_for: Callable[[str], RouteMatcher],
        adapters: Mapping[str, SignalAdapter],
        gate_for: Callable[[str], Gate] | None = None,
        config: ServiceConfig | None = None,
        sink: EventSink | None = None,
        tick_s: float = 1.0,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self.planner = planner
        self.config = config or ServiceConfig()
        self.sink: EventSink = sink or NullSink()
        self.tick_s = tick_s
        self.counters: Counter[str] = Counter()
        self._matcher_for = matcher_for
        self._gate_for = gate_for
        self._vehicles: dict[str, _Vehicle] = {}
        self._ready: dict[str, None] = {}  # vehicles with fixes waiting, in arrival order
        self._wake = asyncio.Event()
        self.on_tick = on_tick  # the service manager's watchdog, say
        self.adapters = dict(adapters)
        self.workers = {
            cid: ControllerWorker(
                cid, adapter, clock, self.config, self._controller_said, self.sink, self.counters
            )
            for cid, adapter in self.adapters.items()
        }
        self._last_prune = clock.monotonic()
        self.running = False
        self.sources: dict[str, AsyncIterable[Fix]] = {}  # name -> the source open now

    # -- inputs (synchronous, no I/O) ----------------------------------------------------

    def take(self, fix: Fix) -> None:
        """A fix from a source: into its vehicle's inbox (never blocks)."""
        if fix.vehicle not in self.planner.allowed:
            self.counters["fix_unknown_vehicle"] += 1
            return
        v = self._vehicle(fix.vehicle)
        if len(v.inbox) == v.inbox.maxlen:
            self.counters["fix_queue_overflow"] += 1  # the oldest goes: the newest matter
        v.inbox.append(fix)
        self._ready[fix.vehicle] = None
        self._wake.set()

    def on_fix(self, fix: Fix) -> list[Command]:
        """One fix through gate, matcher and planner at once (synchronous, no I/O)."""
        if fix.vehicle not in self.planner.allowed:
            self.counters["fix_unknown_vehicle"] += 1
            return []
        return self._match(self._vehicle(fix.vehicle), fix, plan=True)

    def alarm(self, alarm: Alarm) -> None:
        """Dispatch sent a vehicle: set its matcher's prior and arm the station exit."""
        alarm = Alarm(alarm.vehicle, self.planner.route_for(alarm), alarm.incident)
        if alarm.vehicle in self.planner.allowed and alarm.route is not None:
            try:
                self._vehicle(alarm.vehicle).matcher.set_prior(alarm.route)
            except KeyError:
                self.counters["alarm_unknown_route"] += 1
        self._note("alarm", alarm.vehicle, f"route {alarm.route}")
        self.submit(self.planner.on_alarm(alarm))

    def cancel_alarm(self, vehicle: str) -> None:
        self._note("alarm_cancelled", vehicle, "")
        self.submit(self.planner.cancel_alarm(vehicle))

    def set_emergency(self, vehicle: str, on: bool, source: str = "onboard") -> None:
        if vehicle not in self.planner.allowed:
            self.counters["status_unknown_vehicle"] += 1
            return
        self._note("emergency_on" if on else "emergency_off", vehicle, source)
        self.submit(self.planner.set_emergency(vehicle, on, source))

    def vehicle_offline(self, vehicle: str) -> None:
        """The vehicle's onboard unit is gone (its last will): its claims end at once."""
        if vehicle not in self.planner.allowed:
            return
        self._note("offline", vehicle, "onboard unit offline")
        self.submit(self.planner.vehicle_offline(vehicle))

    def recover(self, held: Sequence[HeldRequest]) -> None:
        """Requests a previous process left active: handed to the planner (re-asserted or
        cancelled); those of controllers no longer configured are logged and left to lapse."""
        known = [h for h in held if h.controller in self.workers]
        for h in held:
            if h.controller not in self.workers:
                self.counters["recovered_no_adapter"] += 1
                log.error(
                    "request %s at %s was left active by the previous process, but controller "
                    "%r is no longer configured: it lapses at the controller by itself",
                    h.request_id,
                    h.intersection,
                    h.controller,
                )
        if known:
            log.warning(
                "%d request(s) left active by the previous process: each is re-asserted if its "
                "vehicle is heard on its run within %.0f s, else cancelled",
                len(known),
                self.planner.config.recovery_grace_s,
            )
        self.counters["recovered"] += len(known)
        self.submit(self.planner.adopt(known))

    def submit(self, commands: Sequence[Command]) -> None:
        for cmd in commands:
            worker = self.workers.get(cmd.controller)
            if worker is None:
                self.counters["command_no_adapter"] += 1
                log.error(
                    "no adapter for controller %r: %s for %s dropped; add the controller to "
                    "[[controllers]] in the deployment file",
                    cmd.controller,
                    cmd.kind.value,
                    cmd.intersection,
                )
                continue
            worker.submit(cmd)

    # -- views ---------------------------------------------------------------------------

    def controller_status(self) -> list[WorkerStatus]:
        return [w.status() for w in self.workers.values()]

    # -- running -------------------------------------------------------------------------

    async def run(
        self,
        sources: Sequence[SourceSpec | AsyncIterable[Fix]],
        stop: asyncio.Event | None = None,
        started: Callable[[], None] | None = None,
    ) -> None:
        """Run until ``stop`` is set, or until every source has ended.

        ``started`` is called once every task is running (the service manager's READY).
        """
        stop = stop or asyncio.Event()
        specs = [s if isinstance(s, SourceSpec) else _once(s, k) for k, s in enumerate(sources)]
        restart = Backoff(self.config.restart_min_s, 2.0, self.config.restart_max_s)
        self.running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(
                        supervise(f"controller {cid}", w.run, self.clock, restart, self.counters)
                    )
                    for cid, w in self.workers.items()
                ]
                tasks.append(
                    tg.create_task(
                        supervise("matcher", self._matching, self.clock, restart, self.counters)
                    )
                )
                tasks.append(
                    tg.create_task(
                        supervise("ticker", self._ticker, self.clock, restart, self.counters)
                    )
                )
                pumps = [tg.create_task(self._pump(spec, restart)) for spec in specs]
                if started is not None:
                    started()
                await _until_done(pumps, stop)
                for t in (*pumps, *tasks):
                    t.cancel()
        finally:
            self.running = False
            await self._shutdown()

    async def _pump(self, spec: SourceSpec, restart: Backoff) -> None:
        async def pump() -> None:
            source = self.sources[spec.name] = spec.open()
            async for fix in source:
                self.take(fix)

        if spec.restart:
            await supervise(f"source {spec.name}", pump, self.clock, restart, self.counters)
            return
        try:
            await pump()
        except Exception:  # a one-shot source that fails has ended
            self.counters[f"source_failed:{spec.name}"] += 1
            log.exception("GPS source %s failed and cannot be opened again", spec.name)

    async def _matching(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready:
                vehicle = next(iter(self._ready))
                del self._ready[vehicle]
                v = self._vehicles[vehicle]
                while v.inbox:
                    fix = v.inbox.popleft()
                    # Only the newest fix of a backlog may reach the planner.
                    self.submit(self._match(v, fix, plan=not v.inbox))
                await asyncio.sleep(0)  # let the sources and workers in between vehicles

    def _match(self, v: _Vehicle, fix: Fix, plan: bool) -> list[Command]:
        if v.gate is not None and (why := v.gate.check(fix)) is not None:
            self.counters[f"fix_{why}"] += 1
            return []
        pos = v.matcher.update(fix)
        self.counters["fixes"] += 1
        if not plan:
            self.counters["fix_backlog"] += 1
            return []
        if pos.time - v.journalled >= POSITION_EVERY_S and self.planner.on_run(fix.vehicle):
            v.journalled = pos.time
            self.sink.position(pos)
        return self.planner.on_position(pos)

    async def _ticker(self) -> None:
        await self.clock.sleep(self.tick_s)
        await every(self.clock, self.tick_s, self._tick)

    async def _tick(self) -> None:
        self.submit(self.planner.tick())
        self.sink.flush()
        if self.clock.monotonic() - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = self.clock.monotonic()
            self.sink.prune()
        if self.on_tick is not None:
            self.on_tick()

    def _controller_said(self, state: SignalState) -> None:
        self.submit(self.planner.on_state(state))

    def _vehicle(self, vehicle: str) -> _Vehicle:
        v = self._vehicles.get(vehicle)
        if v is None:
            v = self._vehicles[vehicle] = _Vehicle(
                self._matcher_for(vehicle),
                None if self._gate_for is None else self._gate_for(vehicle),
                deque(maxlen=self.config.fix_queue),
            )
        return v

    def _note(self, what: str, vehicle: str, detail: str) -> None:
        self.sink.note(Note(self.clock.now(), what, vehicle, detail))

    async def _shutdown(self) -> None:
        """Take back everything still held, give the cancels a bound to go out, close."""
        self.submit(self.planner.release_all("daemon stopping"))
        deadline = self.clock.monotonic() + self.config.shutdown_timeout_s
        left = await asyncio.gather(*(w.flush(deadline) for w in self.workers.values()))
        if any(left):
            log.error(
                "%d command(s) not sent within the shutdown bound of %.0f s; those requests "
                "lapse at their controllers by themselves",
                sum(left),
                self.config.shutdown_timeout_s,
            )
            self.counters["shutdown_unsent"] += sum(left)
        for cid, adapter in self.adapters.items():
            try:
                async with asyncio.timeout(self.config.call_timeout_s):
                    await adapter.close()
            except Exception as exc:  # closing one adapter must not skip the others
                log.error("closing the adapter of controller %r failed: %s", cid, exc)
        self.sink.flush()


def _once(source: AsyncIterable[Fix], k: int) -> SourceSpec:
    return SourceSpec(f"#{k}", lambda: source, restart=False)


async def _until_done(pumps: Sequence[asyncio.Task[None]], stop: asyncio.Event) -> None:
    stopper = asyncio.create_task(stop.wait())
    try:
        pending: set[asyncio.Future[object]] = {*pumps, stopper}  # type: ignore[arg-type]
        while not stop.is_set():
            _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if all(p.done() for p in pumps):
                break
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
