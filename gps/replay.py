"""Replay recorded positions as a live source: fixes paced by their own timestamps.

NMEA logs (:class:`NmeaReplay`) and GPX/CSV tracks (:class:`TrackReplay`, read
by :mod:`gps.files`) share one pacing rule, :class:`Pacer`. It runs on the
:class:`~preemption.kernel.clock.Clock` handed in, so a replay on a ``SimClock`` takes
no wall time and a replay on the real clock behaves like the receiver did.
Timing follows the fixes, not the bytes: the gap between two yielded fixes is
the gap between their times divided by ``rate``; ``rate=None`` replays as fast
as possible.

A recording carries the times it was made at, and the planner judges a fix by
its age: ``retime=True`` shifts every fix's time by one constant so that the
first fix carries ``clock.now()`` at the moment it is yielded, and a replay at
``rate=1`` then looks like a live receiver (at another rate the times keep the
log's pace, so their age drifts). The pacing is the same either way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from gps.files import read_track
from gps.nmea import NmeaDecoder
from preemption.kernel.clock import Clock
from preemption.kernel.model import Fix

__all__ = [
    "NmeaReplay",
    "Pacer",
    "Retimer",
    "TrackReplay",
    "pace",
    "replay_lines",
    "replay_nmea",
    "replay_track",
]

_CHUNK = 64 * 1024

T = TypeVar("T")

Input = Iterable[bytes | str] | AsyncIterable[bytes | str]


def _check_rate(rate: float | None) -> None:
    if rate is not None and not (0.0 < rate < math.inf):
        raise ValueError(f"replay rate must be a positive finite number or None, not {rate!r}")


class Pacer:
    """Holds each fix back until its moment on ``clock``.

    The first fix anchors the replay and passes at once; every later one waits
    until ``(fix.time - first.time) / rate`` after it. A fix already late is
    not held (a slow consumer does not make the replay slower still). With
    ``rate=None`` nothing waits.
    """

    def __init__(self, clock: Clock, rate: float | None = 1.0) -> None:
        _check_rate(rate)
        self.clock = clock
        self.rate = rate
        self._anchor: tuple[float, float] | None = None  # (fix time, clock monotonic)

    async def wait(self, fix_time: float) -> None:
        if self._anchor is None:
            self._anchor = fix_time, self.clock.monotonic()
            return
        if self.rate is None:
            return
        first_time, first_mono = self._anchor
        due = first_mono + (fix_time - first_time) / self.rate
        delay = due - self.clock.monotonic()
        if delay > 0:
            await self.clock.sleep(delay)


class Retimer:
    """Gives each fix the moment it is replayed: the first fix passed gets ``clock.now()``,
    each later one that plus its offset in the log divided by ``rate``.

    So a fix's age (now minus its time) is what it would have been live, at any
    rate, and the planner judges a replay as it judges a receiver. With
    ``rate=None`` (as fast as possible) the times keep the log's spacing, shifted by
    one constant. With ``enabled=False`` fixes pass unchanged.
    """

    def __init__(self, clock: Clock, enabled: bool = True, rate: float | None = 1.0) -> None:
        self.clock = clock
        self.enabled = enabled
        self.rate = rate
        self.anchor: tuple[float, float] | None = None  # (first fix time, clock.now() then)

    def __call__(self, fix: Fix) -> Fix:
        if not self.enabled:
            return fix
        if self.anchor is None:
            self.anchor = fix.time, self.clock.now()
        first, now = self.anchor
        offset = fix.time - first
        return dataclasses.replace(
            fix, time=now + (offset if self.rate is None else offset / self.rate)
        )


async def pace(
    fixes: Iterable[Fix] | AsyncIterable[Fix],
    clock: Clock,
    rate: float | None = 1.0,
    *,
    retime: bool = False,
) -> AsyncIterator[Fix]:
    """Yield ``fixes`` paced on ``clock`` by their own times (see :class:`Pacer`),
    retimed to the clock if asked (see :class:`Retimer`)."""
    pacer = Pacer(clock, rate)
    retimer = Retimer(clock, retime, rate)
    async for fix in _aiter(fixes):
        await pacer.wait(fix.time)
        yield retimer(fix)
        if rate is None:
            await clock.sleep(0)  # let the consumers of the fixes run


class NmeaReplay:
    """An async iterable of fixes decoded from ``data`` and paced on ``clock``.

    ``data`` yields byte chunks of a stream (cut anywhere) or complete text
    lines. ``rate`` is the speed-up (2.0 = twice as fast); ``None`` replays as
    fast as possible without sleeping. ``retime``: shift the fix times so that
    the first fix carries ``clock.now()`` when it is yielded (the decoder still
    judges the log by its own times, without the clock). Iterate once;
    :attr:`dropped` keeps counting while it runs and is final when the
    iteration ends.
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
        retime: bool = False,
    ) -> None:
        _check_rate(rate)
        self.decoder = NmeaDecoder(vehicle, source, date_hint=date_hint)
        self._data = data
        self._clock = clock
        self._rate = rate
        self._retime = retime

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
        retime: bool = False,
    ) -> NmeaReplay:
        """Replay a log file; the source name defaults to the file name."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"NMEA log {path} does not exist or is not a file")
        return cls(
            _read_chunks(path),
            vehicle,
            clock,
            rate,
            source or path.name,
            date_hint=date_hint,
            retime=retime,
        )

    @property
    def dropped(self) -> Counter[str]:
        return self.decoder.dropped

    def __aiter__(self) -> AsyncIterator[Fix]:
        return self._fixes()

    async def _fixes(self) -> AsyncIterator[Fix]:
        pacer = Pacer(self._clock, self._rate)
        retimer = Retimer(self._clock, self._retime, self._rate)
        async for part in _aiter(self._data):
            for fix in self._decode(part):
                await pacer.wait(fix.time)
                yield retimer(fix)
            if self._rate is None:
                await self._clock.sleep(0)  # let the consumers of the fixes run
        for fix in self.decoder.finish():
            await pacer.wait(fix.time)
            yield retimer(fix)

    def _decode(self, part: bytes | str) -> list[Fix]:
        if isinstance(part, str):
            return self.decoder.feed_line(part)
        return self.decoder.feed(part)


class TrackReplay:
    """An async iterable of the fixes of a GPX or CSV track, paced on ``clock``.

    The file is read at once (tracks are small next to the memory of a
    daemon); :attr:`dropped` holds what :mod:`gps.files` dropped while reading.
    ``retime``: shift the fix times so that the first fix carries
    ``clock.now()`` when it is yielded; :attr:`fixes` keep the file's times.
    """

    def __init__(
        self,
        fixes: Iterable[Fix],
        clock: Clock,
        rate: float | None = 1.0,
        dropped: Counter[str] | None = None,
        *,
        retime: bool = False,
    ) -> None:
        _check_rate(rate)
        self.fixes = list(fixes)
        self.dropped: Counter[str] = dropped if dropped is not None else Counter()
        self._clock = clock
        self._rate = rate
        self._retime = retime

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        vehicle: str,
        clock: Clock,
        rate: float | None = 1.0,
        source: str | None = None,
        *,
        retime: bool = False,
    ) -> TrackReplay:
        """Replay a ``*.gpx`` or ``*.csv`` track; the source name defaults to the file name."""
        _check_rate(rate)
        fixes, dropped = read_track(path, vehicle, source)
        return cls(fixes, clock, rate, dropped, retime=retime)

    def __aiter__(self) -> AsyncIterator[Fix]:
        return pace(self.fixes, self._clock, self._rate, retime=self._retime)


async def replay_nmea(
    path: str | Path,
    vehicle: str,
    clock: Clock,
    rate: float | None = 1.0,
    source: str | None = None,
    *,
    retime: bool = False,
) -> AsyncIterator[Fix]:
    """Fixes from an NMEA log file, paced on ``clock``; see :class:`NmeaReplay` for counters."""
    async for fix in NmeaReplay.from_file(path, vehicle, clock, rate, source, retime=retime):
        yield fix


async def replay_lines(
    lines: Input,
    vehicle: str,
    clock: Clock,
    rate: float | None = 1.0,
    source: str = "lines",
    *,
    retime: bool = False,
) -> AsyncIterator[Fix]:
    """Fixes from NMEA text lines (or byte chunks), paced on ``clock``."""
    async for fix in NmeaReplay(lines, vehicle, clock, rate, source, retime=retime):
        yield fix


async def replay_track(
    path: str | Path,
    vehicle: str,
    clock: Clock,
    rate: float | None = 1.0,
    source: str | None = None,
    *,
    retime: bool = False,
) -> AsyncIterator[Fix]:
    """Fixes from a GPX or CSV track, paced on ``clock``; see :class:`TrackReplay`."""
    async for fix in TrackReplay.from_file(path, vehicle, clock, rate, source, retime=retime):
        yield fix


def _read_chunks(path: Path) -> Iterator[bytes]:
    # Plain blocking reads: log files are local and small next to the pacing
    # sleeps, and a worker thread would make simulated time nondeterministic.
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


async def _aiter(data: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(data, AsyncIterable):
        async for item in data:
            yield item
    else:
        for item in data:
            yield item
