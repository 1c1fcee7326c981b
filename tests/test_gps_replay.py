"""Replaying NMEA logs in simulated time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import reduce
from operator import xor
from pathlib import Path

import pytest

from gps.nmea import parse_nmea_file
from gps.replay import NmeaReplay, replay_lines, replay_nmea
from preemption.kernel.clock import SimClock
from preemption.kernel.model import Fix

LOGS = Path(__file__).resolve().parent / "data" / "nmea"
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
