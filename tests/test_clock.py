from __future__ import annotations

import asyncio
import time

import pytest

from preemption.kernel.clock import Clock, RealClock, SimClock, every


def test_sim_clock_runs_sleeps_in_simulated_time_without_waiting() -> None:
    clock = SimClock(start_utc=1000.0)

    async def main() -> float:
        await clock.sleep(600.0)
        return clock.monotonic()

    wall = time.monotonic()
    assert clock.run(main()) == pytest.approx(600.0)
    assert time.monotonic() - wall < 5.0
    assert clock.now() == pytest.approx(1600.0)


def test_sim_clock_orders_concurrent_sleepers_by_due_time() -> None:
    clock = SimClock()
    order: list[tuple[str, float]] = []

    async def sleeper(name: str, dt: float) -> None:
        await clock.sleep(dt)
        order.append((name, clock.monotonic()))

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sleeper("c", 3.0))
            tg.create_task(sleeper("a", 1.0))
            tg.create_task(sleeper("b", 2.0))

    clock.run(main())
    assert [n for n, _ in order] == ["a", "b", "c"]
    assert [t for _, t in order] == pytest.approx([1.0, 2.0, 3.0])


def test_asyncio_timeouts_fire_in_simulated_time() -> None:
    clock = SimClock()

    async def main() -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30.0):
                await asyncio.Event().wait()
        return clock.monotonic()

    assert clock.run(main()) == pytest.approx(30.0)


def test_every_does_not_drift() -> None:
    clock = SimClock()
    ticks: list[float] = []

    async def step() -> None:
        ticks.append(clock.monotonic())
        clock.advance(0.3)  # the step itself takes time

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10.05):
                await every(clock, 1.0, step)

    clock.run(main())
    assert ticks == pytest.approx([float(i) for i in range(11)])


def test_sim_clock_refuses_to_go_backwards_and_to_sleep_on_a_foreign_loop() -> None:
    clock = SimClock()
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1.0)
    with pytest.raises(RuntimeError, match=r"clock\.run"):
        asyncio.run(clock.sleep(1.0))


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(RealClock(), Clock)
    assert isinstance(SimClock(), Clock)
    real = RealClock()
    assert abs(real.now() - time.time()) < 1.0
