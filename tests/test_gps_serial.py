"""The serial NMEA source: real ptys (socat) for the device, a simulated clock for the timing."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing
from functools import reduce
from operator import xor
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from gps.backoff import Backoff
from gps.nmea import parse_nmea_file
from gps.serial import Closable, SerialNmeaSource
from preemption.kernel.clock import RealClock, SimClock
from preemption.kernel.model import Fix

from .realparts import SocatPty, open_fds, wait_for

LOGS = Path(__file__).resolve().parent / "data" / "nmea"
VEHICLE = "FW-OST-HLF1"
T0 = 1_764_331_200.0  # 2025-11-28T12:00:00Z


def nmea(body: str) -> bytes:
    return f"${body}*{reduce(xor, body.encode(), 0):02X}\r\n".encode()


def epoch(second: int) -> bytes:
    """One epoch (RMC + GGA) at 2025-11-28 12:00:ss."""
    t = f"1200{second:02d}.00"
    return nmea(f"GPRMC,{t},A,4929.1234,N,00828.5678,E,20.0,90.0,281125,,,A") + nmea(
        f"GPGGA,{t},4929.1234,N,00828.5678,E,1,08,1.0,100.0,M,47.0,M,,"
    )


# -- a scripted line on the simulated clock --------------------------------


class Port:
    """Stands in for the port's writer half: records that it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


Step = BaseException | Callable[[asyncio.StreamReader], None]


class Script:
    """An opener that plays one scripted step per attempt to open the line.

    A step is an exception (the open fails) or a function that fills the
    reader once it exists (data, end of file, a read error).
    """

    def __init__(self, clock: SimClock, steps: Sequence[Step]) -> None:
        self.clock = clock
        self.steps = list(steps)
        self.attempts: list[float] = []
        self.ports: list[Port] = []

    async def __call__(self) -> tuple[asyncio.StreamReader, Closable]:
        self.attempts.append(self.clock.monotonic())
        step = self.steps.pop(0) if self.steps else FileNotFoundError("no such device")
        if isinstance(step, BaseException):
            raise step
        reader = asyncio.StreamReader()
        step(reader)
        port = Port()
        self.ports.append(port)
        return reader, port


def data(*chunks: bytes, eof: bool = False) -> Callable[[asyncio.StreamReader], None]:
    def fill(reader: asyncio.StreamReader) -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
        if eof:
            reader.feed_eof()

    return fill


def fails(exc: Exception, after_s: float, *chunks: bytes) -> Step:
    """Data, then a read error ``after_s`` later (the data read before it fails)."""

    def fill(reader: asyncio.StreamReader) -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
        asyncio.get_running_loop().call_later(after_s, reader.set_exception, exc)

    return fill


def run_source(clock: SimClock, source: SerialNmeaSource, count: int) -> list[tuple[float, Fix]]:
    """The first ``count`` fixes with the simulated moment each was yielded."""

    async def main() -> list[tuple[float, Fix]]:
        out: list[tuple[float, Fix]] = []
        async with aclosing(aiter(source)) as fixes:
            async for fix in fixes:
                out.append((clock.monotonic(), fix))
                if len(out) == count:
                    break
        return out

    return clock.run(main())


def test_backoff_grows_to_its_cap() -> None:
    delays = Backoff(0.5, 2.0, 10.0).delays()
    assert [next(delays) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_by_attempt_number_matches_the_sequence() -> None:
    backoff = Backoff(0.5, 2.0, 10.0)
    delays = backoff.delays()
    assert [backoff.delay(n) for n in range(7)] == [next(delays) for _ in range(7)]
    assert backoff.delay(10_000) == 10.0  # no overflow for a very long outage


def test_backoff_jitter_shortens_each_delay_repeatably() -> None:
    backoff = Backoff(1.0, 2.0, 8.0, jitter=0.25)
    assert backoff.delay(3) == 8.0  # no rng: exact
    first = [backoff.delay(n, random.Random("seed")) for n in range(5)]
    assert first == [backoff.delay(n, random.Random("seed")) for n in range(5)]
    for n, delay in enumerate(first):
        assert 0.75 * backoff.base(n) <= delay <= backoff.base(n)
    jittered = backoff.delays(random.Random(1))
    assert all(0.75 <= next(jittered) / base <= 1.0 for base in (1.0, 2.0, 4.0, 8.0, 8.0))


@pytest.mark.parametrize(
    ("initial", "factor", "cap", "jitter"),
    [(0.0, 2.0, 1.0, 0.0), (2.0, 2.0, 1.0, 0.0), (0.5, 0.5, 1.0, 0.0), (0.5, 2.0, 1.0, 1.0)],
)
def test_a_bad_backoff_is_refused(initial: float, factor: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, factor, cap, jitter)


def test_a_missing_device_is_retried_with_backoff_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SimClock(T0)  # the epochs' day and hour: they are not from the future
    missing = FileNotFoundError(2, "No such file or directory", "/dev/ttyUSB0")
    script = Script(clock, [missing] * 6 + [data(epoch(0), epoch(1))])
    source = SerialNmeaSource(
        "/dev/ttyUSB0", VEHICLE, clock, backoff=Backoff(0.5, 2.0, 4.0), opener=script
    )
    with caplog.at_level(logging.INFO, logger="gps.serial"):
        out = run_source(clock, source, 2)
    # Six failures, sleeping 0.5, 1, 2, 4, 4, 4 s after them.
    assert script.attempts == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5])
    assert [f.time - out[0][1].time for _, f in out] == [0.0, 1.0]
    assert (source.open_failures, source.outages, source.reconnects) == (6, 1, 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "/dev/ttyUSB0" in warnings[0].getMessage()
    assert "plugged in" in warnings[0].getMessage()
    assert any("is back after 15.5 s" in r.getMessage() for r in caplog.records)


def test_a_quiet_line_flushes_the_last_epoch() -> None:
    # One epoch alone: no cycle learned yet, so only the quiet line completes it.
    clock = SimClock(T0)  # the epochs' day and hour: they are not from the future
    script = Script(clock, [data(epoch(0))])
    source = SerialNmeaSource("/dev/gps", VEHICLE, clock, quiet_flush_s=1.5, opener=script)
    [(at, fix)] = run_source(clock, source, 1)
    assert at == pytest.approx(1.5)
    assert fix.source == "/dev/gps"
    assert fix.vehicle == VEHICLE
    assert source.flushes == 1


def test_end_of_file_and_read_errors_are_outages_the_source_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SimClock(T0)  # the epochs' day and hour: they are not from the future
    unplugged = serial.SerialException("read failed: [Errno 5] Input/output error")
    script = Script(
        clock,
        [
            data(epoch(0), epoch(1), eof=True),  # cable pulled after two epochs
            fails(unplugged, 0.5, epoch(2)),  # back, one epoch, then a read error
            OSError(16, "Device or resource busy"),
            data(epoch(3), epoch(4), epoch(5)),
        ],
    )
    source = SerialNmeaSource(
        "/dev/gps", VEHICLE, clock, backoff=Backoff(1.0, 2.0, 8.0), opener=script
    )
    with caplog.at_level(logging.WARNING, logger="gps.serial"):
        out = run_source(clock, source, 6)
    seconds = [round(f.time - out[0][1].time) for _, f in out]
    assert seconds == [0, 1, 2, 3, 4, 5]
    # Data restarts the backoff: 1 s after the end of file, 1 s after the read error, then 2 s.
    assert script.attempts == pytest.approx([0.0, 1.0, 2.5, 4.5])
    assert (source.outages, source.reconnects, source.open_failures) == (2, 2, 1)
    assert all(port.closed for port in script.ports[:2])
    assert len(caplog.records) == 2  # one per outage
    assert "end of file" in caplog.records[0].getMessage()
    assert "Input/output error" in caplog.records[1].getMessage()


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=300), max_size=12), st.integers(0, 5))
def test_arbitrary_bytes_never_raise_out_of_the_source(chunks: list[bytes], at: int) -> None:
    clock = SimClock(T0)  # the epochs' day and hour: they are not from the future
    good = [epoch(0), epoch(1), epoch(2)]
    stream = [*chunks[:at], b"\r\n", *good, *chunks[at:]]
    script = Script(clock, [data(*stream, eof=True), data(epoch(10), epoch(11))])
    source = SerialNmeaSource("/dev/gps", VEHICLE, clock, opener=script)
    out = run_source(clock, source, 3)
    # Whatever came around them, the three good epochs come through, and nothing raised.
    assert [f.time for _, f in out] == [T0, T0 + 1.0, T0 + 2.0]


# -- real ptys ---------------------------------------------------------------


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[SocatPty]:
    with SocatPty(tmp_path) as pair:
        yield pair


class Collector:
    """Runs a source in a task and keeps what it yields."""

    def __init__(self, source: SerialNmeaSource) -> None:
        self.source = source
        self.fixes: list[Fix] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self.task = asyncio.create_task(self._run())
        await wait_for(lambda: self.source.connected, 10.0, "the source to open the pty")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        async with aclosing(aiter(self.source)) as fixes:
            async for fix in fixes:
                self.fixes.append(fix)


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.integration
@pytest.mark.parametrize("log", ["ublox-zed-f9p-nmea.log", "bundg_zeus_9.log"])
async def test_a_real_log_through_a_pty_gives_what_the_decoder_gives(
    cable: SocatPty, log: str
) -> None:
    expected, _ = parse_nmea_file(LOGS / log, VEHICLE, str(cable.device))
    source = SerialNmeaSource(str(cable.device), VEHICLE, RealClock(), quiet_flush_s=1.0)
    writer = cable.open_writer()
    async with Collector(source) as got:
        for chunk in chunks_of((LOGS / log).read_bytes(), 4096):
            assert await writer.write(chunk)
            await asyncio.sleep(0)
        await wait_for(lambda: len(got.fixes) >= len(expected), 15.0, "all fixes of the log")
    writer.close()
    assert got.fixes == expected
    assert source.outages == 0
    assert source.reconnects == 0
    assert source.bytes_read == (LOGS / log).stat().st_size


@pytest.mark.integration
async def test_garbage_in_the_stream_is_counted_not_raised(cable: SocatPty) -> None:
    rng = random.Random(7)
    clean = (LOGS / "ublox-zed-f9p-nmea.log").read_bytes()
    binary = (LOGS / "garmin18x-bin.log").read_bytes()
    noisy = bytearray()
    for i, line in enumerate(clean.splitlines(keepends=True)):
        noisy += line
        if i % 25 == 0:  # noise between sentences, ended by a line end so it cannot eat one
            noisy += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))) + b"\r\n"
        if i == 500:
            noisy += binary + b"\r\n"
    expected, _ = parse_nmea_file(LOGS / "ublox-zed-f9p-nmea.log", VEHICLE, str(cable.device))
    source = SerialNmeaSource(str(cable.device), VEHICLE, RealClock(), quiet_flush_s=1.0)
    writer = cable.open_writer()
    async with Collector(source) as got:
        for chunk in chunks_of(bytes(noisy), 1000):
            assert await writer.write(chunk)
            await asyncio.sleep(0)
        await wait_for(lambda: len(got.fixes) >= len(expected), 15.0, "all fixes of the log")
        assert got.task is not None
        assert not got.task.done()  # still running: nothing raised
    writer.close()
    assert [f.time for f in got.fixes] == [f.time for f in expected]
    assert source.dropped["garbage"] >= 40
    assert source.outages == 0


@pytest.mark.integration
async def test_an_unplugged_cable_is_survived_and_fixes_keep_coming(
    cable: SocatPty, caplog: pytest.LogCaptureFixture
) -> None:
    lines = (LOGS / "bundg_zeus_9.log").read_bytes().splitlines(keepends=True)
    source = SerialNmeaSource(
        str(cable.device),
        VEHICLE,
        RealClock(),
        quiet_flush_s=1.0,
        backoff=Backoff(0.05, 2.0, 0.4),
    )
    writer = cable.open_writer()
    plugged = asyncio.Event()
    plugged.set()

    async def feed() -> None:
        for i in range(0, len(lines), 20):
            if not await writer.write(b"".join(lines[i : i + 20])):
                await plugged.wait()  # cable out: these lines are lost, wait for the replug
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO, logger="gps.serial"):
        async with Collector(source) as got:
            feeder = asyncio.create_task(feed())
            await wait_for(lambda: len(got.fixes) >= 15, 15.0, "fixes before the unplug")
            plugged.clear()
            cable.unplug()
            before = len(got.fixes)
            await wait_for(lambda: source.outages == 1, 10.0, "the source to notice the unplug")
            await asyncio.sleep(0.3)  # a few failed reopens: the device node is gone
            assert source.open_failures >= 1
            cable.start()
            plugged.set()
            await wait_for(lambda: len(got.fixes) >= before + 15, 15.0, "fixes after the replug")
            feeder.cancel()
    writer.close()
    assert (source.outages, source.reconnects) == (1, 1)
    times = [f.time for f in got.fixes]
    assert times == sorted(set(times))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(cable.device) in warnings[0]
    assert "reading failed" in warnings[0]
    assert any("is back after" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
async def test_cancelling_the_reader_closes_the_port(cable: SocatPty) -> None:
    source = SerialNmeaSource(str(cable.device), VEHICLE, RealClock())
    writer = cable.open_writer()
    async with Collector(source) as got:
        assert open_fds(cable.device)  # open while it runs
        assert await writer.write(epoch(0) + epoch(1) + epoch(2))
        await wait_for(lambda: len(got.fixes) >= 2, 10.0, "fixes")
    writer.close()
    assert not source.connected
    assert open_fds(cable.device) == []


@pytest.mark.integration
async def test_a_second_reader_of_the_same_device_is_refused(
    cable: SocatPty, caplog: pytest.LogCaptureFixture
) -> None:
    first = SerialNmeaSource(str(cable.device), VEHICLE, RealClock())
    second = SerialNmeaSource(
        str(cable.device), "other", RealClock(), backoff=Backoff(0.05, 2.0, 0.1)
    )
    writer = cable.open_writer()
    with caplog.at_level(logging.WARNING, logger="gps.serial"):
        async with Collector(first) as got:
            intruder = asyncio.create_task(Collector(second)._run())
            await wait_for(lambda: second.open_failures >= 2, 10.0, "the second open to fail")
            assert await writer.write(epoch(0) + epoch(1) + epoch(2))
            await wait_for(lambda: len(got.fixes) >= 2, 10.0, "fixes for the first reader")
            intruder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await intruder
    writer.close()
    assert second.bytes_read == 0
    assert "lock" in caplog.text
