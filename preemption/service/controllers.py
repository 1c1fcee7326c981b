"""One worker per controller: its commands, its polls, its circuit breaker.

Everything that waits on a controller happens in that controller's worker, so a
controller that hangs, refuses or raises delays nothing but its own
intersections, and the planner's clock (the daemon's ticker) never waits on I/O.

- **Commands** are queued per request id, newest wins: an update that arrives
  while the request is still queued replaces it (and stays a request: the
  controller has not seen it yet), so a dead controller's queue holds at most
  one command per live request. A failed command is tried again (after
  ``poll_s``, then as the breaker allows) until a newer one replaces it; a
  cancel is tried until it is confirmed or the controller's own hold of that
  request has surely run out.
- **Polls**: every intersection with a live request is polled every ``poll_s``;
  after a cancel, for ``release_poll_s`` or until the controller says the call
  has ended. Nothing else is polled.
- **Breaker** (preemption/service/supervision.py): ``breaker_failures`` failed
  calls in a row open it; then one trial call per wait (5 s doubling to 60 s by
  default). When it opens, every held request is reported ``unreachable`` to the
  planner (which keeps it, refreshes it and shows it as unconfirmed): a request
  is never silently dropped.

Every call runs under ``call_timeout_s``; any exception an adapter lets out
(a typed AdapterError, a library's OSError, a bug) is a failed call, counted and
logged, never raised out of the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from preemption.kernel.clock import Clock
from preemption.kernel.config import ServiceConfig
from preemption.kernel.model import Command, CommandKind, PreemptStatus, SignalState
from preemption.service.events import Answer, EventSink
from preemption.service.supervision import Breaker, BreakerState, wait_any
from signal_adapters.base import AdapterError, RequestRejected, SignalAdapter

log = logging.getLogger(__name__)

LAPSE_MARGIN_S = 5.0  # past the controller-side hold: the call has surely lapsed by itself
ENDED = frozenset({PreemptStatus.NOT_ACTIVE, PreemptStatus.REJECTED})


@dataclass(slots=True)
class _Poll:
    request_id: str
    approach: str
    due: float  # monotonic
    until: float | None = None  # monotonic; set once the request is cancelled
    last: PreemptStatus | None = None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What a controller's worker is doing, for status pages and tests."""

    controller: str
    breaker: BreakerState
    failures_in_a_row: int
    breaker_trips: int
    queued: int
    polled: tuple[str, ...]
    last_error: str | None
    last_ok_utc: float | None


class ControllerWorker:
    def __init__(
        self,
        controller: str,
        adapter: SignalAdapter,
        clock: Clock,
        config: ServiceConfig,
        report: Callable[[SignalState], None],
        sink: EventSink,
        counters: Counter[str],
    ) -> None:
        self.controller = controller
        self.adapter = adapter
        self.clock = clock
        self.config = config
        self._report = report
        self._sink = sink
        self.counters = counters
        self.breaker = Breaker(
            clock, config.breaker_failures, config.breaker_min_s, config.breaker_max_s
        )
        self._pending: dict[str, Command] = {}  # request id -> newest unsent command
        self._polls: dict[str, _Poll] = {}  # intersection -> what is polled there
        self._lapse: dict[str, float] = {}  # request id -> UTC when the controller drops it
        self._retry_at = 0.0  # monotonic: after a failed command, not before this
        self._wake = asyncio.Event()
        self.last_error: str | None = None
        self.last_ok: float | None = None

    # -- from the daemon (synchronous, never waits) -----------------------------------

    def submit(self, cmd: Command) -> None:
        prev = self._pending.get(cmd.request_id)
        if prev is not None and prev.kind is CommandKind.REQUEST and cmd.kind is CommandKind.UPDATE:
            cmd = dataclasses.replace(
                cmd, kind=CommandKind.REQUEST
            )  # not seen yet: still a request
        self._pending[cmd.request_id] = cmd  # keeps its place in the queue
        now = self.clock.monotonic()
        poll = self._polls.get(cmd.intersection)
        if cmd.kind is CommandKind.CANCEL:
            if poll is not None and poll.request_id == cmd.request_id:
                poll.until = now + self.config.release_poll_s
        elif poll is None or poll.request_id != cmd.request_id:
            self._polls[cmd.intersection] = _Poll(
                cmd.request_id, cmd.approach, now + self.config.poll_s
            )
        self._wake.set()

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            controller=self.controller,
            breaker=self.breaker.state,
            failures_in_a_row=self.breaker.in_a_row,
            breaker_trips=self.breaker.trips,
            queued=len(self._pending),
            polled=tuple(sorted(self._polls)),
            last_error=self.last_error,
            last_ok_utc=self.last_ok,
        )

    @property
    def idle(self) -> bool:
        return not self._pending

    # -- the worker ---------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: send what is queued, poll what is held, as the breaker allows."""
        while True:
            await self.step()

    async def step(self) -> None:
        """One call, or one wait until there is something to do."""
        now = self.clock.monotonic()
        if self._pending and now >= self._retry_at and self.breaker.allows():
            rid, cmd = next(iter(self._pending.items()))
            del self._pending[rid]
            try:
                sent = await self._send(cmd)
            except asyncio.CancelledError:
                # Stopped in the middle of the call: keep the command for flush(), so that
                # a cancel under way at shutdown is not lost with the task.
                if rid not in self._pending:
                    self._pending = {rid: cmd, **self._pending}
                raise
            if not sent:
                self._again(cmd)
            return
        due = min(self._polls.items(), key=lambda kv: kv[1].due, default=None)
        if due is not None and due[1].due <= now and self.breaker.allows():
            await self._poll(*due)
            return
        self._wake.clear()
        await wait_any([self._wake], self._next_wake(now), self.clock)

    def _next_wake(self, now: float) -> float | None:
        """Seconds until the next poll or retry is due (None: only a submission wakes it)."""
        times = [p.due for p in self._polls.values()]
        if self._pending:
            times.append(self._retry_at)
        if not times:
            return None
        return max(0.0, min(times) - now, self.breaker.wait_s())

    def _again(self, cmd: Command) -> None:
        """Queue a failed command again, first in line, unless something newer replaced it."""
        if cmd.request_id in self._pending:
            return
        if cmd.kind is CommandKind.CANCEL:
            lapse = self._lapse.get(cmd.request_id)
            if lapse is not None and self.clock.now() > lapse + LAPSE_MARGIN_S:
                log.warning(
                    "cancel of %s at controller %r never confirmed; its hold at the controller "
                    "ran out %.0f s ago, so the call has lapsed by itself",
                    cmd.request_id,
                    self.controller,
                    self.clock.now() - lapse,
                )
                self.counters["cancel_lapsed"] += 1
                self._lapse.pop(cmd.request_id, None)
                return
        self._pending = {cmd.request_id: cmd, **self._pending}
        self._retry_at = self.clock.monotonic() + self.config.poll_s

    async def _send(self, cmd: Command) -> bool:
        call = {
            CommandKind.REQUEST: self.adapter.request,
            CommandKind.UPDATE: self.adapter.update,
            CommandKind.CANCEL: self.adapter.cancel,
        }[cmd.kind]
        self._sink.command(cmd)
        state = await self._call(
            cmd.kind.value, cmd.intersection, cmd.request_id, lambda: call(cmd)
        )
        if state is None:
            return False
        self.counters[f"{cmd.kind.value}_sent"] += 1
        if cmd.kind is CommandKind.CANCEL:
            self._lapse.pop(cmd.request_id, None)
        else:
            self._lapse[cmd.request_id] = cmd.time + cmd.duration_s
            self._report(state)
        log.info(
            "%s %s at %s (%s, approach %s) -> %s: %s",
            cmd.kind.value,
            cmd.request_id,
            cmd.intersection,
            self.controller,
            cmd.approach,
            state.status.value,
            cmd.reason,
        )
        return True

    async def _poll(self, intersection: str, poll: _Poll) -> None:
        poll.due = self.clock.monotonic() + self.config.poll_s
        state = await self._call(
            "poll", intersection, poll.request_id, lambda: self.adapter.state(intersection)
        )
        released = poll.until is not None
        if state is not None:
            if not released:
                self._report(state)
            elif state.status in ENDED or state.status is PreemptStatus.UNKNOWN:
                del self._polls[intersection]
                return
        if released and poll.until is not None and self.clock.monotonic() >= poll.until:
            del self._polls[intersection]

    async def _call(
        self,
        call: str,
        intersection: str,
        request_id: str | None,
        do: Callable[[], Awaitable[SignalState]],
    ) -> SignalState | None:
        """One adapter call under the timeout; the state, or None when it failed."""
        started = self.clock.monotonic()
        error: str | None = None
        state: SignalState | None = None
        try:
            async with asyncio.timeout(self.config.call_timeout_s):
                result: object = await do()
            if not isinstance(result, SignalState):
                raise TypeError(f"the adapter returned {type(result).__name__}, not a SignalState")
            state = result
        except RequestRejected as exc:
            # The controller is alive and answered no: not a breaker failure.
            state = SignalState(
                intersection,
                self.controller,
                PreemptStatus.REJECTED,
                self.clock.now(),
                detail=str(exc),
            )
        except AdapterError as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer within {self.config.call_timeout_s} s"
        except Exception as exc:  # a library's OSError, a bug: never the daemon's end
            error = f"{type(exc).__name__}: {exc}"
            if self.counters[f"adapter_bug:{type(exc).__name__}"] == 0:
                log.exception(
                    "the adapter of controller %r raised %s on %s; counted as a failed call "
                    "(the adapter should raise AdapterError)",
                    self.controller,
                    type(exc).__name__,
                    call,
                )
            self.counters[f"adapter_bug:{type(exc).__name__}"] += 1
        latency = self.clock.monotonic() - started
        status = None if state is None else state.status.value
        self._sink.answer(
            Answer(
                self.clock.now(),
                self.controller,
                intersection,
                request_id,
                call,
                status,
                error,
                latency,
            )
        )
        if error is None:
            self.last_ok = self.clock.now()
            if self.breaker.success():
                log.warning("controller %r answers again: circuit breaker closed", self.controller)
            return state
        self.last_error = error
        self.counters[f"{call}_failed"] += 1
        if self.breaker.failure():
            self._breaker_opened(error)
        else:
            log.log(
                logging.WARNING if self.breaker.in_a_row == 1 else logging.DEBUG,
                "%s %s at %s to controller %r failed: %s",
                call,
                request_id or "",
                intersection,
                self.controller,
                error,
            )
        return None

    def _breaker_opened(self, error: str) -> None:
        self.counters["breaker_opened"] += 1
        wait = self.breaker.wait_s()
        log.error(
            "controller %r: %d calls in a row failed (last: %s); circuit breaker open, next try in "
            "%.0f s; its requests are unconfirmed and lapse at the controller by themselves",
            self.controller,
            self.breaker.in_a_row,
            error,
            wait,
        )
        detail = f"circuit breaker open: {error}"
        for inter, poll in self._polls.items():
            if poll.until is None:
                self._report(
                    SignalState(
                        inter,
                        self.controller,
                        PreemptStatus.UNREACHABLE,
                        self.clock.now(),
                        approach=poll.approach,
                        request_id=poll.request_id,
                        detail=detail,
                    )
                )

    # -- shutdown -----------------------------------------------------------------------

    async def flush(self, deadline: float) -> int:
        """Send every queued command once, breaker or not, until ``deadline`` (monotonic).

        Returns how many are left unsent.
        """
        while self._pending and self.clock.monotonic() < deadline:
            rid, cmd = next(iter(self._pending.items()))
            del self._pending[rid]
            await self._send(cmd)
        return len(self._pending)
