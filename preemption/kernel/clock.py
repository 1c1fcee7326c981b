"""Time for every component: the real clock in the daemon, a simulated one elsewhere.

A component never calls ``time.time()``, ``time.monotonic()`` or
``asyncio.sleep()`` itself; it is handed a :class:`Clock`. On the real clock
the daemon runs in wall time. On a :class:`SimClock` the same code runs in
simulated time: synchronous code advances it by hand, and asynchronous code
runs on an event loop whose own time *is* the simulated clock, so that
``asyncio.sleep``, ``asyncio.timeout`` and every ``call_later`` jump straight
to the next due moment. A ten-minute scenario takes milliseconds and gives the
same result on every run.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences mean anything."""
        ...

    def now(self) -> float:
        """UTC now as epoch seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """Wall time: what the daemon runs on."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SimClock:
    """Simulated time, starting at ``start_utc`` (epoch seconds).

    Synchronous code moves it with :meth:`advance`. Asynchronous code runs under
    :meth:`run`, on an event loop that advances this clock to the next timer
    whenever nothing is ready to run.
    """

    def __init__(self, start_utc: float = 1_764_288_000.0) -> None:
        # Default start: 2025-11-28T00:00:00Z, a fixed day so runs are repeatable.
        self._start_utc = start_utc
        self._t = 0.0

    def monotonic(self) -> float:
        return self._t

    def now(self) -> float:
        return self._start_utc + self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"simulated time cannot go backwards (asked to advance {seconds} s)")
        self._t += seconds

    def advance_to(self, monotonic: float) -> None:
        self.advance(max(0.0, monotonic - self._t))

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, SimEventLoop) or loop.sim_clock is not self:
            raise RuntimeError(
                "SimClock.sleep() awaited outside SimClock.run(): simulated time only "
                "moves on its own event loop; start the coroutine with clock.run(...)"
            )
        await asyncio.sleep(seconds)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to completion in simulated time and return its result."""
        with asyncio.Runner(loop_factory=lambda: SimEventLoop(self)) as runner:
            return runner.run(main)


class _VirtualTimeSelector(selectors.BaseSelector):
    """Polls real file descriptors without blocking; a wait becomes a clock jump."""

    def __init__(self, clock: SimClock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer is pending: only real I/O can wake the loop, so wait for it.
            return self._real.select(None)
        self._clock.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class SimEventLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is a :class:`SimClock`."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__(selector=_VirtualTimeSelector(clock))
        self.sim_clock = clock

    def time(self) -> float:
        return self.sim_clock.monotonic()


async def every(clock: Clock, period_s: float, step: Callable[[], Awaitable[None]]) -> None:
    """Call ``step`` every ``period_s`` on ``clock`` without drifting, until cancelled."""
    due = clock.monotonic()
    while True:
        await step()
        due += period_s
        await clock.sleep(max(0.0, due - clock.monotonic()))
