"""Keeping the daemon's tasks alive: restarts with backoff, and circuit breakers.

A pre-emption service runs unattended for months beside systems that must not
be disturbed. Whatever one part does, a bug in a GPS source, a library's
``OSError`` out of an adapter, a controller that stops answering, the other
parts go on:

- :func:`supervise` runs a task and, when it raises, logs it once with its
  traceback, counts it and starts it again after a backoff (doubling from
  ``restart_min_s`` to ``restart_max_s``; back to the start once the task has
  run for a minute). A task that ends normally (a replayed file at its end) is
  not restarted.
- :class:`Breaker` is the circuit breaker of one controller: after
  ``failures`` calls in a row have failed it opens, and the controller's worker
  stops calling for a while (doubling from ``min_s`` to ``max_s``), then tries
  one call (half open): success closes it, failure opens it again for longer.
  A dead controller costs one call per wait, not one timeout per command.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from gps.backoff import Backoff
from preemption.kernel.clock import Clock

log = logging.getLogger(__name__)

HEALTHY_RUN_S = 60.0  # a task that ran this long before failing starts its backoff afresh


async def supervise(
    name: str,
    task: Callable[[], Awaitable[None]],
    clock: Clock,
    backoff: Backoff,
    counters: Counter[str],
) -> None:
    """Run ``task()`` until it returns; restart it after a backoff whenever it raises.

    Cancellation passes through (that is how the daemon stops its tasks).
    """
    attempt = 0
    while True:
        started = clock.monotonic()
        try:
            await task()
            return
        except Exception as exc:  # any failure of one task must not end the others
            if clock.monotonic() - started >= HEALTHY_RUN_S:
                attempt = 0
            delay = backoff.delay(attempt)
            counters[f"restart:{name}"] += 1
            log.error(
                "%s failed (%s: %s); restarting it in %.1f s (restart %d). This is a bug or a "
                "fault of the peer: the traceback follows",
                name,
                type(exc).__name__,
                exc,
                delay,
                counters[f"restart:{name}"],
                exc_info=attempt == 0,
            )
            attempt += 1
        await clock.sleep(delay)


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # no calls until the wait is over
    HALF_OPEN = "half_open"  # one trial call


@dataclass
class Breaker:
    """The circuit breaker of one controller (see the module docstring)."""

    clock: Clock
    failures: int = 3
    min_s: float = 5.0
    max_s: float = 60.0
    state: BreakerState = BreakerState.CLOSED
    in_a_row: int = 0  # failed calls in a row
    opened: int = 0  # times it opened since it last closed
    retry_at: float = 0.0  # monotonic: when an open breaker lets one call through
    trips: int = 0  # times it opened, ever

    def allows(self) -> bool:
        """May a call go out now? An open breaker past its wait turns half open."""
        if self.state is BreakerState.OPEN and self.clock.monotonic() >= self.retry_at:
            self.state = BreakerState.HALF_OPEN
        return self.state is not BreakerState.OPEN

    def wait_s(self) -> float:
        """Seconds until an open breaker lets a call through (0 if it does now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.retry_at - self.clock.monotonic())

    def success(self) -> bool:
        """Note a call that worked; True if this closed an open or half-open breaker."""
        was = self.state
        self.state, self.in_a_row, self.opened = BreakerState.CLOSED, 0, 0
        return was is not BreakerState.CLOSED

    def failure(self) -> bool:
        """Note a failed call; True if this opened the breaker."""
        self.in_a_row += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.in_a_row >= self.failures
        ):
            wait = Backoff(self.min_s, 2.0, self.max_s).base(self.opened)
            self.state = BreakerState.OPEN
            self.retry_at = self.clock.monotonic() + wait
            self.opened += 1
            self.trips += 1
            return True
        return False


async def wait_any(events: list[asyncio.Event], timeout_s: float | None, clock: Clock) -> None:
    """Until one of ``events`` is set or ``timeout_s`` has passed on ``clock``."""
    if any(e.is_set() for e in events):
        return
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(e.wait()) for e in events]
    if timeout_s is not None:
        waiters.append(asyncio.ensure_future(clock.sleep(max(0.0, timeout_s))))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
