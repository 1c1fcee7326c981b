"""Replaying NMEA logs in simulated time."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, AsyncIterator
from functools import reduce
from operator import xor
from pathlib import Path

import pytest

from gps.nmea import parse_nmea_file
from gps.replay import NmeaReplay, TrackReplay, replay_lines, replay_nmea, replay_track
from preemption.kernel.clock import SimClock
from preemption.kernel.model import Fix

LOGS = Path(__file__).resolve().parent / "data" / "nmea"
TRACKS = Path(__file__).resolve().parent / "data" / "tracks"
SIRF = LOGS / "sirfstarv-nmea.log"  # 59 fixes at 1 Hz: 58 s from first to last


def nmea(body: str) -> str:
    return f"${body}*{reduce(xor, body.encode(), 0):02X}"


def minute_log(path: Path) -> Path:
    """A 60 s log: 61 epochs at 1 Hz, RMC + GGA each, starting 2025-11-28 12:00:00."""
    lines = []
    for s in range(61):
        t = f"1200{s:02d}.00" if s < 60 else "120100.00"
        lines.append(nmea(f"GPRMC,{t},A,4929.1234,N,00828.5678,E,20.0,90.0,281125,,,A"))
        lines.append(nmea(f"GPGGA,{t},4929.1234,N,00828.5678,E,1,08,1.0,100.0,M,47.0,M,,"))
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


async def timed(clock: SimClock, fixes: AsyncIterator[Fix]) -> list[tuple[float, Fix]]:
    """Each fix with the simulated moment it was yielded, from the start of the replay."""
    start = clock.monotonic()
    return [(clock.monotonic() - start, fix) async for fix in fixes]


@pytest.mark.parametrize(("rate", "elapsed"), [(1.0, 60.0), (10.0, 6.0), (None, 0.0)])
def test_a_minute_takes_a_minute_divided_by_the_rate(
    tmp_path: Path, rate: float | None, elapsed: float
) -> None:
    clock = SimClock()
    log = minute_log(tmp_path / "minute.nmea")
    out = clock.run(timed(clock, replay_nmea(log, "engine-1", clock, rate=rate)))
    assert len(out) == 61
    assert out[-1][0] == pytest.approx(elapsed)
    assert clock.monotonic() == pytest.approx(elapsed)
    assert all(f.vehicle == "engine-1" and f.source == "minute.nmea" for _, f in out)


@pytest.mark.parametrize("rate", [1.0, 4.0])
def test_each_fix_is_yielded_at_its_own_time(rate: float) -> None:
    clock = SimClock()
    out = clock.run(timed(clock, replay_nmea(SIRF, "e", clock, rate=rate)))
    first = out[0][1].time
    for at, fix in out:
        assert at == pytest.approx((fix.time - first) / rate, abs=1e-6)
    assert out[-1][0] == pytest.approx(58.0 / rate)


def test_replay_yields_what_the_file_parser_gives() -> None:
    clock = SimClock()
    out = clock.run(timed(clock, replay_nmea(SIRF, "e", clock, rate=None, source="gps0")))
    expected, _ = parse_nmea_file(SIRF, "e", "gps0")
    assert [f for _, f in out] == expected
    assert clock.monotonic() == 0.0


def test_a_long_no_fix_gap_is_slept_through() -> None:
    # The u-blox log has ~18 minutes without a fix between its first and later epochs.
    clock = SimClock()
    out = clock.run(timed(clock, replay_nmea(LOGS / "ublox-lea-5h.log", "e", clock, rate=60.0)))
    span = out[-1][1].time - out[0][1].time
    assert span > 1000
    assert out[-1][0] == pytest.approx(span / 60.0)


def test_drop_counters_are_exposed() -> None:
    clock = SimClock()
    replay = NmeaReplay.from_file(LOGS / "tcp-torture.log", "e", clock, rate=None)

    async def run() -> list[Fix]:
        return [fix async for fix in replay]

    assert len(clock.run(run())) == 1
    assert replay.dropped["parse_error"] == 1
    assert replay.dropped == parse_nmea_file(LOGS / "tcp-torture.log", "e")[1]


def test_replay_lines_from_sync_and_async_sources(tmp_path: Path) -> None:
    lines = minute_log(tmp_path / "m.nmea").read_text().splitlines()[:20]  # 10 s

    async def agen() -> AsyncIterator[str]:
        for line in lines:
            yield line

    for source in (lines, agen()):
        clock = SimClock()
        out = clock.run(timed(clock, replay_lines(source, "e", clock, rate=2.0)))
        assert len(out) == 10
        assert out[-1][0] == pytest.approx(4.5)
        assert {f.source for _, f in out} == {"lines"}


def test_byte_chunks_are_a_stream() -> None:
    data = SIRF.read_bytes()
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
    clock = SimClock()
    out = clock.run(timed(clock, NmeaReplay(chunks, "e", clock, rate=None, source="x").__aiter__()))
    assert [f.time for _, f in out] == [f.time for f in parse_nmea_file(SIRF, "e")[0]]


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        NmeaReplay([], "e", SimClock(), rate=rate)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.nmea"):
        NmeaReplay.from_file(tmp_path / "missing.nmea", "e", SimClock())


# -- re-timed for a live run ----------------------------------------------------

NOW = 1_764_288_000.0  # the SimClock's day; the logs are years older


async def aged(
    clock: SimClock, fixes: AsyncIterable[Fix], after_s: float
) -> list[tuple[float, float, Fix]]:
    """Each fix with the moment it was yielded (from the start of the iteration,
    which begins ``after_s`` into the run) and its age at that moment."""
    await clock.sleep(after_s)
    start = clock.monotonic()
    return [(clock.monotonic() - start, clock.now() - fix.time, fix) async for fix in fixes]


def untimed(fix: Fix) -> Fix:
    return dataclasses.replace(fix, time=0.0)


@pytest.mark.parametrize("rate", [1.0, 4.0, None])
def test_a_retimed_nmea_replay_starts_at_the_clock_and_keeps_its_pace(rate: float | None) -> None:
    plain_clock = SimClock(NOW)
    plain = plain_clock.run(
        aged(plain_clock, NmeaReplay.from_file(SIRF, "e", plain_clock, rate), 42.5)
    )
    clock = SimClock(NOW)
    replay = NmeaReplay.from_file(SIRF, "e", clock, rate, retime=True)
    out = clock.run(aged(clock, replay, 42.5))
    assert len(out) == len(plain) == 59
    # The first fix carries the moment it is yielded, 42.5 s into the run.
    assert out[0][2].time == NOW + 42.5
    # The log's spacing divided by the rate (as fast as possible: as recorded), from now.
    first = plain[0][2].time
    scale = 1.0 if rate is None else rate
    expected = [NOW + 42.5 + (f.time - first) / scale for _, _, f in plain]
    assert [f.time for _, _, f in out] == pytest.approx(expected)
    assert [at for at, _, _ in out] == [at for at, _, _ in plain]
    assert [untimed(f) for _, _, f in out] == [untimed(f) for _, _, f in plain]
    assert replay.dropped == parse_nmea_file(SIRF, "e")[1]
    if rate is not None:
        # Live-like at any rate: every fix is as fresh when it comes as the first one was.
        assert [age for _, age, _ in out] == pytest.approx([0.0] * 59, abs=1e-6)


def test_a_retimed_track_replay_starts_at_the_clock() -> None:
    clock = SimClock(NOW)
    replay = TrackReplay.from_file(TRACKS / "sirfstarv.gpx", "e", clock, rate=1.0, retime=True)
    out = clock.run(aged(clock, replay, 7.0))
    assert len(out) == len(replay.fixes) == 59
    assert out[0][2].time == NOW + 7.0
    assert [age for _, age, _ in out] == pytest.approx([0.0] * 59, abs=1e-6)
    shift = NOW + 7.0 - replay.fixes[0].time
    assert [f.time for _, _, f in out] == pytest.approx([f.time + shift for f in replay.fixes])
    assert [untimed(f) for _, _, f in out] == [untimed(f) for f in replay.fixes]
    assert out[-1][0] == pytest.approx(58.0)


def test_without_retime_a_replay_keeps_the_recorded_times() -> None:
    clock = SimClock(NOW)
    out = clock.run(aged(clock, replay_nmea(SIRF, "e", clock, rate=None), 5.0))
    assert [f for _, _, f in out] == parse_nmea_file(SIRF, "e")[0]
    assert min(age for _, age, _ in out) > 365 * 86_400  # the planner would never act on these


def test_the_replay_helpers_pass_retime_on(tmp_path: Path) -> None:
    clock = SimClock(NOW)
    out = clock.run(aged(clock, replay_nmea(SIRF, "e", clock, rate=None, retime=True), 3.0))
    assert out[0][2].time == NOW + 3.0
    lines = minute_log(tmp_path / "m.nmea").read_text().splitlines()
    clock = SimClock(NOW)
    out = clock.run(aged(clock, replay_lines(lines, "e", clock, rate=None, retime=True), 3.0))
    assert out[0][2].time == NOW + 3.0
    assert out[-1][2].time == NOW + 63.0
    clock = SimClock(NOW)
    track = replay_track(TRACKS / "sirfstarv.gpx", "e", clock, rate=None, retime=True)
    assert clock.run(aged(clock, track, 3.0))[0][2].time == NOW + 3.0
