"""Replay recorded NMEA as a live source: fixes paced by their own timestamps.

The pacing runs on the :class:`~preemption.clock.Clock` handed in, so a replay
on a ``SimClock`` takes no wall time and a replay on the real clock behaves like
the receiver did. Timing follows the fixes, not the bytes: the gap between two
yielded fixes is the gap between their times divided by ``rate``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path

from gps.nmea import NmeaDecoder
from preemption.clock import Clock
from preemption.model import Fix

__all__ = ["NmeaReplay", "replay_lines", "replay_nmea"]

_CHUNK = 64 * 1024

Input = Iterable[bytes | str] | AsyncIterable[bytes | str]


class NmeaReplay:
    """An async iterable of fixes decoded from ``data`` and paced on ``clock``.

    ``data`` yields byte chunks of a stream (cut anywhere) or complete text
    lines. ``rate`` is the speed-up (2.0 = twice as fast); ``None`` replays as
    fast as possible without sleeping. Iterate once; :attr:`dropped` keeps
    counting while it runs and is final when the iteration ends.
    """

    def __init__(
        self,
        data: Input,
        vehicle: str,
        clock: Clock,
        rate: float | None = 1.0,
        source: str = "replay",
        *,
        date_hint: dt.date | None = None,
    ) -> None:
        if rate is not None and not (0.0 < rate < math.inf):
            raise ValueError(f"replay rate must be a positive finite number or None, not {rate!r}")
        self.decoder = NmeaDecoder(vehicle, source, date_hint=date_hint)
        self._data = data
        self._clock = clock
        self._rate = rate

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        vehicle: str,
        clock: Clock,
        rate: float | None = 1.0,
        source: str | None = None,
        *,
        date_hint: dt.date | None = None,
    ) -> NmeaReplay:
        """Replay a log file; the source name defaults to the file name."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"NMEA log {path} does not exist or is not a file")
        return cls(
            _read_chunks(path), vehicle, clock, rate, source or path.name, date_hint=date_hint
        )

    @property
    def dropped(self) -> Counter[str]:
        return self.decoder.dropped

    def __aiter__(self) -> AsyncIterator[Fix]:
        return self._fixes()

    async def _fixes(self) -> AsyncIterator[Fix]:
        # Anchor: the first fix is yielded at once; the rest keep its spacing.
        anchor: tuple[float, float] | None = None
        async for part in _aiter(self._data):
            for fix in self._decode(part):
                anchor = await self._pace(fix, anchor)
                yield fix
            if self._rate is None:
                await self._clock.sleep(0)  # let the consumers of the fixes run
        for fix in self.decoder.flush():
            anchor = await self._pace(fix, anchor)
            yield fix

    def _decode(self, part: bytes | str) -> list[Fix]:
        if isinstance(part, str):
            return self.decoder.feed_line(part)
        return self.decoder.feed(part)

    async def _pace(self, fix: Fix, anchor: tuple[float, float] | None) -> tuple[float, float]:
        if anchor is None:
            return fix.time, self._clock.monotonic()
        if self._rate is not None:
            first_time, first_mono = anchor
            due = first_mono + (fix.time - first_time) / self._rate
            delay = due - self._clock.monotonic()
            if delay > 0:
                await self._clock.sleep(delay)
        return anchor


async def replay_nmea(
    path: str | Path,
    vehicle: str,
    clock: Clock,
    rate: float | None = 1.0,
    source: str | None = None,
) -> AsyncIterator[Fix]:
    """Fixes from an NMEA log file, paced on ``clock``; see :class:`NmeaReplay` for counters."""
    async for fix in NmeaReplay.from_file(path, vehicle, clock, rate, source):
        yield fix


async def replay_lines(
    lines: Input,
    vehicle: str,
    clock: Clock,
    rate: float | None = 1.0,
    source: str = "lines",
) -> AsyncIterator[Fix]:
    """Fixes from NMEA text lines (or byte chunks), paced on ``clock``."""
    async for fix in NmeaReplay(lines, vehicle, clock, rate, source):
        yield fix


def _read_chunks(path: Path) -> Iterator[bytes]:
    # Plain blocking reads: log files are local and small next to the pacing
    # sleeps, and a worker thread would make simulated time nondeterministic.
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


async def _aiter(data: Input) -> AsyncIterator[bytes | str]:
    if isinstance(data, AsyncIterable):
        async for item in data:
            yield item
    else:
        for item in data:
            yield item
