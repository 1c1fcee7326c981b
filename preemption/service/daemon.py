"""The daemon: positions in, matched, planned, and commands out to the controllers.

Tasks under one TaskGroup, all on the Clock:

- one pump per GPS source: fix -> matcher -> planner -> outboxes;
- one worker per controller, so a slow or dead controller never delays another;
  every adapter call runs under a timeout;
- a ticker for the planner's time-driven decisions (dead-man, maximum hold,
  refresh) and for polling the controllers' pre-emption state.

On the way out, whatever the reason, every request still held is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass

from preemption.decisions.planner import Alarm, Planner
from preemption.kernel.clock import Clock, every
from preemption.kernel.model import Command, CommandKind, Fix, RoutePosition, SignalState
from routes.matcher import RouteMatcher
from signal_adapters.base import AdapterError, SignalAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Dispatched:
    """A command as it went out, with the controller's answer (or the failure)."""

    command: Command
    sent_mono: float
    state: SignalState | None
    error: str | None


class Daemon:
    def __init__(
        self,
        *,
        clock: Clock,
        planner: Planner,
        matcher_for: Callable[[str], RouteMatcher],
        adapters: Mapping[str, SignalAdapter],
        call_timeout_s: float = 2.0,
        tick_s: float = 1.0,
    ) -> None:
        self.clock = clock
        self.planner = planner
        self._matcher_for = matcher_for
        self._matchers: dict[str, RouteMatcher] = {}
        self.adapters = dict(adapters)
        self.call_timeout_s = call_timeout_s
        self.tick_s = tick_s
        self._outbox: dict[str, asyncio.Queue[Command]] = {}
        self.dispatched: list[Dispatched] = []
        self.positions: list[RoutePosition] = []
        self.counters: Counter[str] = Counter()
        self._polled: set[tuple[str, str]] = set()  # (controller, intersection) with requests

    async def run(
        self, sources: Sequence[AsyncIterable[Fix]], stop: asyncio.Event | None = None
    ) -> None:
        """Run until ``stop`` is set, or until every source has ended and nothing is held."""
        stop = stop or asyncio.Event()
        self._outbox = {cid: asyncio.Queue() for cid in self.adapters}
        try:
            async with asyncio.TaskGroup() as tg:
                workers = [tg.create_task(self._worker(cid)) for cid in self.adapters]
                workers.append(tg.create_task(self._ticker()))
                pumps = [tg.create_task(self._pump(src)) for src in sources]
                await self._until_done(pumps, stop)
                for t in (*pumps, *workers):
                    t.cancel()
        finally:
            await self._shutdown()

    def on_fix(self, fix: Fix) -> list[Command]:
        """One fix through the matcher and the planner (synchronous, no I/O)."""
        if fix.vehicle not in self.planner_vehicles:
            self.counters["fix_unknown_vehicle"] += 1
            return []
        matcher = self._matchers.get(fix.vehicle)
        if matcher is None:
            matcher = self._matchers[fix.vehicle] = self._matcher_for(fix.vehicle)
        pos = matcher.update(fix)
        self.positions.append(pos)
        self.counters["fixes"] += 1
        return self.planner.on_position(pos)

    def alarm(self, alarm: Alarm) -> None:
        """Dispatch sent a vehicle: set its matcher's prior and arm the station exit."""
        alarm = Alarm(alarm.vehicle, self.planner.route_for(alarm), alarm.incident)
        if alarm.vehicle in self.planner_vehicles and alarm.route is not None:
            matcher = self._matchers.get(alarm.vehicle)
            if matcher is None:
                matcher = self._matchers[alarm.vehicle] = self._matcher_for(alarm.vehicle)
            try:
                matcher.set_prior(alarm.route)
            except KeyError:
                self.counters["alarm_unknown_route"] += 1
        self.submit(self.planner.on_alarm(alarm))

    def cancel_alarm(self, vehicle: str) -> None:
        self.submit(self.planner.cancel_alarm(vehicle))

    def set_emergency(self, vehicle: str, on: bool, source: str = "onboard") -> None:
        self.submit(self.planner.set_emergency(vehicle, on, source))

    @property
    def planner_vehicles(self) -> Mapping[str, str]:
        return self.planner.allowed

    def submit(self, commands: Sequence[Command]) -> None:
        for cmd in commands:
            box = self._outbox.get(cmd.controller)
            if box is None:
                self.counters["command_no_adapter"] += 1
                log.error(
                    "no adapter for controller %r: %s for %s dropped; add the controller to "
                    "[[controllers]] in the deployment file",
                    cmd.controller,
                    cmd.kind.value,
                    cmd.intersection,
                )
                continue
            if cmd.kind is not CommandKind.CANCEL:
                self._polled.add((cmd.controller, cmd.intersection))
            box.put_nowait(cmd)

    async def _until_done(self, pumps: Sequence[asyncio.Task[None]], stop: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Future[object]] = {*pumps, stopper}  # type: ignore[arg-type]
            while not stop.is_set():
                _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if all(p.done() for p in pumps):
                    break
        finally:
            stopper.cancel()

    async def _pump(self, source: AsyncIterable[Fix]) -> None:
        async for fix in source:
            self.submit(self.on_fix(fix))

    async def _ticker(self) -> None:
        await self.clock.sleep(self.tick_s)
        await every(self.clock, self.tick_s, self._tick)

    async def _tick(self) -> None:
        self.submit(self.planner.tick())
        for controller, intersection in sorted(self._polled):
            await self._poll(controller, intersection)

    async def _poll(self, controller: str, intersection: str) -> None:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                state = await self.adapters[controller].state(intersection)
        except (AdapterError, TimeoutError) as exc:
            self.counters["state_poll_failed"] += 1
            log.warning("state of %s at controller %r unknown: %s", intersection, controller, exc)
            return
        self.submit(self.planner.on_state(state))
        if self.planner.active_at(intersection) == 0:
            self._polled.discard((controller, intersection))

    async def _worker(self, controller: str) -> None:
        box = self._outbox[controller]
        while True:
            cmd = await box.get()
            await self._send(cmd)

    async def _send(self, cmd: Command) -> None:
        adapter = self.adapters[cmd.controller]
        sent = self.clock.monotonic()
        call = {
            CommandKind.REQUEST: adapter.request,
            CommandKind.UPDATE: adapter.update,
            CommandKind.CANCEL: adapter.cancel,
        }[cmd.kind]
        try:
            async with asyncio.timeout(self.call_timeout_s):
                state = await call(cmd)
        except (AdapterError, TimeoutError) as exc:
            what = str(exc) or f"no answer within {self.call_timeout_s} s"
            self.counters[f"{cmd.kind.value}_failed"] += 1
            log.error(
                "%s %s to controller %r failed: %s",
                cmd.kind.value,
                cmd.request_id,
                cmd.controller,
                what,
            )
            self.dispatched.append(Dispatched(cmd, sent, None, what))
            return
        self.counters[f"{cmd.kind.value}_sent"] += 1
        if cmd.kind is not CommandKind.CANCEL:
            self.submit(self.planner.on_state(state))
        self.dispatched.append(Dispatched(cmd, sent, state, None))

    async def _shutdown(self) -> None:
        """Take back everything still held, then close the adapters."""
        leftovers = [cmd for box in self._outbox.values() for cmd in _drain(box)]
        for cmd in leftovers + self.planner.release_all("daemon stopping"):
            if cmd.controller in self.adapters:
                await self._send(cmd)
        for cid, adapter in self.adapters.items():
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    await adapter.close()
            except (AdapterError, TimeoutError) as exc:
                log.error("closing the adapter of controller %r failed: %s", cid, exc)


def _drain(box: asyncio.Queue[Command]) -> list[Command]:
    out = []
    while not box.empty():
        out.append(box.get_nowait())
    return out
