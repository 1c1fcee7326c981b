"""The gpsd source: report decoding, and real gpsd (under gpsfake) on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gps.backoff import Backoff
from gps.gpsd import DROP_REASONS, MAX_LINE, GpsdDecoder, GpsdSource, watch_command
from gps.nmea import parse_nmea_file
from preemption.kernel.clock import RealClock, SimClock
from preemption.kernel.model import Fix, FixQuality

from .realparts import LOOPBACK, Gpsfake, free_port, wait_for

LOGS = Path(__file__).resolve().parent / "data" / "nmea"
VEHICLE = "FW-OST-HLF1"
DEVICE = "/dev/ttyACM0"
T0 = 1_764_331_200.0  # 2025-11-28T12:00:00Z


def tpv(second: float = 0.0, **fields: Any) -> str:
    report: dict[str, Any] = {
        "class": "TPV",
        "device": DEVICE,
        "mode": 3,
        "time": f"2025-11-28T12:00:{second:06.3f}Z",
        "lat": 49.48539,
        "lon": 8.47613,
        "speed": 13.5,
        "track": 91.5,
    }
    report.update(fields)
    return json.dumps({k: v for k, v in report.items() if v is not ...})


def sky(**fields: Any) -> str:
    report: dict[str, Any] = {"class": "SKY", "device": DEVICE, "hdop": 0.9, "uSat": 9}
    report.update(fields)
    return json.dumps({k: v for k, v in report.items() if v is not ...})


# -- the decoder --------------------------------------------------------------


def test_a_tpv_becomes_a_fix_with_the_hdop_of_the_last_sky() -> None:
    decoder = GpsdDecoder(VEHICLE, "gpsd://x")
    assert decoder.feed_line(sky(), now=10.0) == []
    [fix] = decoder.feed_line(tpv(1.5, status=2).encode() + b"\r\n", now=10.5)
    assert fix == Fix(
        vehicle=VEHICLE,
        time=T0 + 1.5,
        lat=49.48539,
        lon=8.47613,
        speed=13.5,
        course=91.5,
        hdop=0.9,
        quality=FixQuality.DGPS,
        source="gpsd://x",
        satellites=9,
    )
    assert decoder.reports == {"SKY": 1, "TPV": 1}
    assert not decoder.dropped


def test_without_a_recent_sky_there_is_no_hdop_and_satellites_are_counted_from_the_list() -> None:
    decoder = GpsdDecoder(VEHICLE, "g", sky_max_age_s=5.0)
    sats = [{"PRN": n, "used": n % 2 == 0} for n in range(1, 12)]
    decoder.feed_line(sky(uSat=..., hdop=..., satellites=sats), now=0.0)
    [fix] = decoder.feed_line(tpv(1), now=1.0)
    assert fix.satellites == 5
    assert fix.hdop is None
    decoder.feed_line(sky(), now=2.0)
    [late] = decoder.feed_line(tpv(2), now=7.5)  # the SKY is 5.5 s old
    assert (late.hdop, late.satellites) == (None, None)


def test_the_first_tpv_of_an_epoch_is_used_and_its_repeats_counted() -> None:
    # gpsd repeats TPV while it learns the cycle: mode 2 first, then mode 3 with more fields.
    decoder = GpsdDecoder(VEHICLE, "g")
    [first] = decoder.feed_line(tpv(0, mode=2, track=...), now=0.0)
    assert first.course is None
    assert decoder.feed_line(tpv(0, mode=3), now=0.0) == []
    assert decoder.dropped == {"duplicate_epoch": 1}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("x" * (MAX_LINE + 1), "line_too_long"),
        ('{"class":"TPV",', "bad_json"),
        (b'{"class":"TPV"}\xff', "bad_json"),
        ("[" * 10_000 + "]" * 10_000, "bad_json"),
        ("[1, 2]", "not_a_report"),
        ('{"mode": 3}', "not_a_report"),
        ('{"class": 3}', "not_a_report"),
        (tpv(mode="3"), "bad_report"),
        (tpv(mode=True), "bad_report"),
        (tpv(mode=7), "bad_report"),
        (tpv(lat="49.5"), "bad_report"),
        (tpv(speed=[1]), "bad_report"),
        (tpv(status="fix"), "bad_report"),
        (tpv(device="/dev/ttyUSB1"), "other_device"),
        (tpv(mode=1), "no_fix"),
        (tpv(mode=0, time=..., lat=..., lon=...), "no_fix"),
        (tpv(status=0), "no_fix"),
        (tpv(time=...), "no_time"),
        (tpv(time="yesterday"), "bad_time"),
        (tpv(time=1_764_331_200), "bad_time"),
        (tpv(lat=...), "no_position"),
        (tpv(lon=...), "no_position"),
        (tpv(lat=91.0), "impossible_coordinates"),
        (tpv(lon=-180.5), "impossible_coordinates"),
        (tpv(lat=0.0, lon=0.0), "impossible_coordinates"),
        (tpv(lat=math.nan), "impossible_coordinates"),
        (tpv(speed=-0.5), "impossible_speed"),
        (tpv(speed=math.inf), "impossible_speed"),
        (tpv(speed=250.0), "impossible_speed"),
        (tpv(4.0), "time_backwards"),
        (tpv(5.0), "duplicate_epoch"),
    ],
)
def test_every_drop_reason(line: str | bytes, reason: str) -> None:
    assert reason in DROP_REASONS
    decoder = GpsdDecoder(VEHICLE, "g", device=DEVICE)
    assert len(decoder.feed_line(tpv(5.0), now=0.0)) == 1
    assert decoder.feed_line(line, now=0.0) == []
    assert decoder.dropped == {reason: 1}


def test_reports_that_are_not_positions_are_counted_by_class_not_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    decoder = GpsdDecoder(VEHICLE, "g")
    lines = [
        '{"class":"VERSION","release":"3.22","proto_major":3,"proto_minor":14}',
        '{"class":"DEVICES","devices":[]}',
        '{"class":"ERROR","message":"Unrecognized request \'WATCHX\'"}',
        "",
        "   ",
        sky(hdop="bad", uSat=-3),  # a malformed SKY lends nothing, and costs nothing
    ]
    with caplog.at_level(logging.WARNING, logger="gps.gpsd"):
        assert all(decoder.feed_line(line, now=0.0) == [] for line in lines)
    assert decoder.reports == {"VERSION": 1, "DEVICES": 1, "ERROR": 1, "SKY": 1}
    assert not decoder.dropped
    assert "Unrecognized request" in caplog.text
    [fix] = decoder.feed_line(tpv(), now=0.0)
    assert (fix.hdop, fix.satellites) == (None, None)


def test_track_out_of_range_costs_the_course_not_the_position() -> None:
    decoder = GpsdDecoder(VEHICLE, "g")
    [fix] = decoder.feed_line(tpv(track=400.0), now=0.0)
    assert fix.course is None
    [fix] = decoder.feed_line(tpv(1, track=360.0), now=0.0)
    assert fix.course == 0.0


def tpv_at(t: float, lat: float = 49.48539) -> str:
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")
    return tpv(time=stamp.replace("+00:00", "Z"), lat=lat)


def test_one_tpv_dated_ahead_is_dropped_and_the_stream_goes_on() -> None:
    # The same poisoning as in NMEA: one TPV years ahead made every later one
    # time_backwards.
    decoder = GpsdDecoder(VEHICLE, "g")
    fixes: list[Fix] = []
    for i in range(20):
        fixes += decoder.feed_line(tpv_at(T0 + i), now=float(i))
        if i == 5:
            for t in (T0 + 86_400 * 800, T0 + 10.0):  # years ahead, then 4 s ahead
                fixes += decoder.feed_line(tpv_at(t, lat=48.0), now=float(i))
                fixes += decoder.feed_line(tpv_at(T0 + 5.5), now=float(i))
    decoder.finish()
    assert [f.time - T0 for f in fixes] == [0, 1, 2, 3, 4, 5, 5.5, *range(6, 20)]
    assert all(f.lat > 49 for f in fixes)
    assert decoder.dropped == {"time_jump": 2, "duplicate_epoch": 1}
    assert decoder.held == 0


def test_a_gpsd_whose_receiver_jumped_is_followed_after_three_tpvs() -> None:
    decoder = GpsdDecoder(VEHICLE, "g")
    got = [decoder.feed_line(tpv_at(T0 + t), now=0.0) for t in (0, 1, 2, 600, 600, 601, 602)]
    assert [len(fixes) for fixes in got] == [1, 1, 1, 0, 0, 0, 3]
    assert [f.time - T0 for f in got[-1]] == [600, 601, 602]
    assert decoder.resyncs == 1
    assert decoder.dropped == {"duplicate_epoch": 1}  # gpsd's repeat of the held TPV


def test_with_max_future_the_source_judges_tpvs_by_its_clock() -> None:
    clock = SimClock(start_utc=T0)
    source = GpsdSource(VEHICLE, clock, max_future_s=2.0)
    decoder = source.decoder
    assert decoder.feed_line(tpv_at(T0 + 3.0), now=0.0) == []
    assert len(decoder.feed_line(tpv_at(T0), now=0.0)) == 1
    assert decoder.dropped == {"from_future": 1}
    # Without it, nothing is judged against the clock (recordings through gpsfake).
    assert len(GpsdSource(VEHICLE, clock).decoder.feed_line(tpv_at(T0 + 3.0), now=0.0)) == 1
    with pytest.raises(ValueError, match="max_future_s"):
        GpsdSource(VEHICLE, clock, max_future_s=math.nan)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
tpv_keys = st.sampled_from(["mode", "time", "lat", "lon", "speed", "track", "status", "device"])


@settings(max_examples=100)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=100),
            st.text(max_size=100),
            st.dictionaries(tpv_keys | st.text(max_size=5), json_values, max_size=8).map(
                lambda d: json.dumps({"class": "TPV", **d})
            ),
            st.dictionaries(st.text(max_size=8), json_values, max_size=6).map(
                lambda d: json.dumps({"class": "SKY", **d})
            ),
        ),
        max_size=5,
    )
)
def test_arbitrary_lines_never_raise(lines: list[str | bytes]) -> None:
    decoder = GpsdDecoder(VEHICLE, "g", device=DEVICE)
    for line in lines:
        for fix in decoder.feed_line(line, now=0.0):
            assert -90.0 <= fix.lat <= 90.0
            assert -180.0 <= fix.lon <= 180.0
            assert math.isfinite(fix.time)
    assert set(decoder.dropped) <= DROP_REASONS


def test_watch_asks_for_json_and_the_device() -> None:
    assert watch_command() == b'?WATCH={"enable":true,"json":true};\n'
    assert watch_command("/dev/gps0") == (
        b'?WATCH={"enable":true,"json":true,"device":"/dev/gps0"};\n'
    )


# -- the source against a scripted peer on loopback ---------------------------


async def collect(source: GpsdSource, count: int, into: list[Fix]) -> None:
    async with aclosing(aiter(source)) as fixes:
        async for fix in fixes:
            into.append(fix)
            if len(into) >= count:
                return


async def test_the_source_watches_its_device_and_survives_a_late_gpsd(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No gpsd at first (refused, logged once), then a peer speaking gpsd's protocol."""
    port = free_port()
    source = GpsdSource(
        VEHICLE, RealClock(), port=port, device=DEVICE, backoff=Backoff(0.05, 2.0, 0.2)
    )
    got: list[Fix] = []
    received: list[bytes] = []

    async def gpsd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"class":"VERSION","release":"3.22","proto_major":3,"proto_minor":14}\n')
        received.append(await reader.readline())
        for line in [
            sky(),
            tpv(0, device="/dev/other"),
            "not json",
            tpv(0),
            tpv(0, mode=3),
            tpv(1, mode=1),
            tpv(2),
        ]:
            writer.write(line.encode() + b"\n")
        await writer.drain()
        await reader.read()  # until the source hangs up

    with caplog.at_level(logging.INFO, logger="gps.gpsd"):
        task = asyncio.create_task(collect(source, 2, got))
        await wait_for(lambda: source.connect_failures >= 3, 10.0, "refused connections")
        server = await asyncio.start_server(gpsd, LOOPBACK, port)
        async with server:
            await asyncio.wait_for(task, 10.0)
    assert received == [watch_command(DEVICE)]
    assert [f.time for f in got] == [T0, T0 + 2.0]
    assert got[0].hdop == 0.9
    assert got[0].source == f"gpsd://127.0.0.1:{port}{DEVICE}"
    assert source.dropped == {
        "other_device": 1,
        "bad_json": 1,
        "duplicate_epoch": 1,
        "no_fix": 1,
    }
    assert (source.outages, source.reconnects) == (1, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"127.0.0.1:{port}" in warnings[0]
    assert "gpsd is running" in warnings[0]


async def test_a_silent_connection_is_given_up_after_the_idle_timeout() -> None:
    port = free_port()
    connections = 0

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b'{"class":"VERSION"}\n')
        await writer.drain()
        await reader.read()

    source = GpsdSource(
        VEHICLE, RealClock(), port=port, idle_timeout_s=0.2, backoff=Backoff(0.05, 2.0, 0.1)
    )
    server = await asyncio.start_server(mute, LOOPBACK, port)
    async with server:
        task = asyncio.create_task(collect(source, 1, []))
        await wait_for(lambda: connections >= 3, 10.0, "the source to reconnect twice")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert source.outages >= 2
    assert not source.connected


# -- real gpsd ------------------------------------------------------------------


@pytest.fixture
def gpsfakes() -> Iterator[list[Gpsfake]]:
    """Started gpsfakes to close at the end of the test, whatever happens."""
    started: list[Gpsfake] = []
    yield started
    for g in started:
        g.close()


def start_gpsfake(started: list[Gpsfake], log: str, port: int | None = None) -> Gpsfake:
    g = Gpsfake(LOGS / log, port, cycle_s=0.002)
    started.append(g)
    g.start()
    return g


class Running:
    """A source iterated in a task; its fixes kept."""

    def __init__(self, source: GpsdSource) -> None:
        self.source = source
        self.fixes: list[Fix] = []

    async def __aenter__(self) -> Running:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with aclosing(aiter(self.source)) as fixes:
            async for fix in fixes:
                self.fixes.append(fix)


@pytest.mark.integration
async def test_gpsd_gives_the_positions_the_nmea_decoder_gives(gpsfakes: list[Gpsfake]) -> None:
    log = "sirfstarv-nmea.log"
    expected = {f.time: f for f in parse_nmea_file(LOGS / log, VEHICLE)[0]}
    last = max(expected)
    g = start_gpsfake(gpsfakes, log)
    source = GpsdSource(VEHICLE, RealClock(), port=g.port)
    async with Running(source) as run:
        # Until the last fix, or until gpsfake, done with the log, takes gpsd down.
        await wait_for(
            lambda: (bool(run.fixes) and run.fixes[-1].time >= last) or source.outages > 0,
            25.0,
            "the log's last fix",
        )
    g.close()
    # gpsd may have read the first epochs before the source connected.
    assert len(run.fixes) >= 0.8 * len(expected)
    for fix in run.fixes:
        want = expected[fix.time]
        assert fix.lat == pytest.approx(want.lat, abs=1e-6)
        assert fix.lon == pytest.approx(want.lon, abs=1e-6)
        assert fix.speed == pytest.approx(want.speed, abs=0.01)
        assert fix.source == f"gpsd://127.0.0.1:{g.port}"
        assert fix.quality == FixQuality.GPS
    assert sum(f.hdop is not None for f in run.fixes) >= 0.8 * len(run.fixes)
    assert source.reports["TPV"] >= len(run.fixes)


@pytest.mark.integration
async def test_a_restarted_gpsd_is_reconnected_and_fixes_keep_coming(
    gpsfakes: list[Gpsfake], caplog: pytest.LogCaptureFixture
) -> None:
    first = start_gpsfake(gpsfakes, "sirfstarv-nmea.log")
    source = GpsdSource(VEHICLE, RealClock(), port=first.port, backoff=Backoff(0.05, 2.0, 0.4))
    with caplog.at_level(logging.INFO, logger="gps.gpsd"):
        async with Running(source) as run:
            await wait_for(lambda: len(run.fixes) >= 10, 20.0, "fixes from the first gpsd")
            first.stop()  # gpsd and gpsfake gone
            await wait_for(lambda: source.outages == 1, 10.0, "the source to notice")
            before = len(run.fixes)
            # The same port, another receiver log (later times: the decoder keeps time order).
            start_gpsfake(gpsfakes, "ublox-zed-f9p-nmea.log", first.port)
            await wait_for(lambda: len(run.fixes) >= before + 8, 20.0, "fixes after the restart")
    assert (source.outages, source.reconnects) == (1, 1)
    times = [f.time for f in run.fixes]
    assert times == sorted(set(times))
    assert run.fixes[-1].lat < -45.0  # Dunedin: the second log
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gpsd closed the connection" in warnings[0]
