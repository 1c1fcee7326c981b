"""`preemption onboard`: its configuration, the emergency inputs, and a whole run.

The end-to-end tests run the command's wiring against real parts: Mosquitto
on 127.0.0.1 (tests/broker.py), a socat pty standing in for the receiver
(tests/realparts.py) fed a real receiver log, and a GPIO value file the test
toggles.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiomqtt
import pytest

from gps.backoff import Backoff
from gps.nmea import parse_nmea_file
from gps.position_json import (
    LinkMessage,
    PositionMessage,
    StatusMessage,
    StatusSource,
    decode_link,
    decode_position,
    decode_status,
)
from gps.status_input import GpioInput, SerialLineInput
from preemption.cli import EXIT_CONFIG, EXIT_OK, main
from preemption.kernel.clock import Clock, RealClock, SimClock
from preemption.kernel.config import ConfigError
from preemption.service.onboard import load_onboard, run

from .broker import HOST, MosquittoBroker, eventually, free_port, in_time
from .helpers import DATA, ROOT
from .realparts import SocatPty, open_fds

ENGINE = "FW-OST-HLF1"
PREFIX = "preemption/v1/vehicles"
LOG = DATA / "nmea" / "sirfstarv-nmea.log"

VALID = """
[vehicle]
id = "FW-OST-HLF1"

[receiver]
kind = "serial"
device = "/dev/ttyUSB0"

[emergency]
source = "gpio"
path = "blue-lights"

[broker]
host = "127.0.0.1"
port = 1883
username = "FW-OST-HLF1"
password_file = "password"
"""


def write_config(directory: Path, text: str, password: str = "s3cret-engine") -> Path:
    (directory / "password").write_text(password + "\n")
    (directory / "password").chmod(0o600)
    path = directory / "onboard.toml"
    path.write_text(text)
    return path


def check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    code = main(["onboard", "--config", str(path), "--check"])
    out, err = capsys.readouterr()
    return code, out, err


# -- the configuration -----------------------------------------------------------------


def test_a_valid_file_is_checked_and_described_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, write_config(tmp_path, VALID))
    assert code == EXIT_OK, err
    assert out.startswith(f"{tmp_path / 'onboard.toml'}: ok\n")
    assert "NMEA on serial port /dev/ttyUSB0 at 9600 baud" in out
    assert f"blue_lights from the GPIO value file {tmp_path / 'blue-lights'}" in out
    assert f"password from password_file {tmp_path / 'password'}" in out
    assert "the password goes over plain TCP" in out  # a note, not an error
    assert "s3cret" not in out + err
    loaded = load_onboard(tmp_path / "onboard.toml")
    assert loaded.settings.password == "s3cret-engine"  # the file's line end is not part of it
    assert "s3cret" not in repr(loaded.settings) + repr(loaded.config)


def test_the_example_configuration_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "config" / "onboard.example.toml").read_text()
    (tmp_path / "ca.crt").write_text("")  # only its existence is checked before TLS reads it
    text = text.replace("/etc/preemption/onboard.password", "password")
    text = text.replace('tls_ca = "/etc/preemption/ca.crt"', "")
    loaded = load_onboard(write_config(tmp_path, text))
    assert loaded.settings.vehicle == ENGINE
    assert (loaded.settings.port, loaded.settings.buffer_size) == (8883, 600)


CASES = {
    "missing key": (
        VALID.replace('id = "FW-OST-HLF1"\n', ""),
        "vehicle.id: required key is missing",
    ),
    "missing section": (
        VALID.split("[broker]")[0],
        "broker: required key is missing",
    ),
    "wrong type": (
        VALID.replace("port = 1883", 'port = "mqtt"'),
        "broker.port: Input should be a valid integer",
    ),
    "wrong type in a variant": (
        VALID.replace('device = "/dev/ttyUSB0"', 'device = "/dev/ttyUSB0"\nbaudrate = "fast"'),
        "receiver.baudrate: Input should be a valid integer",
    ),
    "unknown receiver kind": (
        VALID.replace('kind = "serial"', 'kind = "usb"'),
        "receiver.kind: unknown receiver kind 'usb'; known: serial, gpsd",
    ),
    "no receiver kind": (
        VALID.replace('kind = "serial"\n', ""),
        "receiver.kind: required key is missing; one of: serial, gpsd",
    ),
    "unknown emergency source": (
        VALID.replace('source = "gpio"', 'source = "radio"'),
        "emergency.source: unknown emergency source 'radio'; known: config, gpio, serial-line",
    ),
    "misspelt key": (
        VALID.replace("host =", "hots ="),
        "broker.hots: unknown key",
    ),
    "key of another variant": (
        VALID.replace('path = "blue-lights"', 'path = "blue-lights"\nline = "cts"'),
        "emergency.line: unknown key",
    ),
    "bad vehicle id": (
        VALID.replace('id = "FW-OST-HLF1"', 'id = "HLF 1"'),
        "vehicle.id: String should match pattern",
    ),
    "bad modem line": (
        VALID.replace(
            'source = "gpio"\npath = "blue-lights"',
            'source = "serial-line"\ndevice = "/dev/ttyS1"\nline = "dtr"',
        ),
        "emergency.line: Input should be 'cts', 'dsr', 'ri' or 'cd'",
    ),
    "password twice": (
        VALID.replace('password_file = "password"', 'password_file = "password"\npassword = "x"'),
        "broker.password: give password or password_file, not both",
    ),
    "password without user": (
        VALID.replace('username = "FW-OST-HLF1"\n', ""),
        "broker.username: required key is missing (a password needs a user)",
    ),
    "missing password file": (
        VALID.replace('password_file = "password"', 'password_file = "nowhere"'),
        "broker.password_file: {dir}/nowhere does not exist",
    ),
    "missing CA file": (
        VALID + 'tls_ca = "ca.pem"\n',
        "broker.tls_ca: {dir}/ca.pem does not exist or is not a file",
    ),
    "unusable CA file": (
        VALID + 'tls_ca = "password"\n',
        "broker: TLS files for broker 127.0.0.1:1883 (TLS) are unusable",
    ),
    "key without certificate": (
        VALID + 'tls_ca = "password"\ntls_key = "password"\n',
        "broker.tls_cert: required with tls_key",
    ),
    "contact on the receiver's port": (
        VALID.replace(
            'source = "gpio"\npath = "blue-lights"',
            'source = "serial-line"\ndevice = "/dev/ttyUSB0"\nline = "cts"',
        ),
        "emergency.device: /dev/ttyUSB0 is the receiver's port",
    ),
    "bad topic prefix": (
        VALID + 'topic_prefix = "fleet/#"\n',
        "broker.topic_prefix: 'fleet/#'",
    ),
    "not TOML": (
        VALID.replace("[broker]", "[broker"),
        "not valid TOML",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_an_unusable_file_names_the_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    text, expected = CASES[case]
    path = write_config(tmp_path, text)
    code, out, err = check(capsys, path)
    assert code == EXIT_CONFIG
    assert out == ""
    assert f"{path}: {expected.format(dir=tmp_path)}" in err, err
    assert "s3cret" not in err
    with pytest.raises(ConfigError):
        load_onboard(path)


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, tmp_path / "absent.toml")
    assert code == EXIT_CONFIG
    assert f"{tmp_path / 'absent.toml'}: file not found" in err


# -- the emergency inputs, on a simulated clock ------------------------------------------


async def collect(
    clock: SimClock, states: GpioInput | SerialLineInput, until_s: float
) -> list[tuple[float, bool]]:
    """What the input yields, with the simulated moment, until ``until_s``."""
    seen: list[tuple[float, bool]] = []

    async def consume() -> None:
        async with aclosing(aiter(states)) as it:
            async for on in it:
                seen.append((round(clock.monotonic(), 6), on))

    task = asyncio.create_task(consume())
    await clock.sleep(until_s)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return seen


async def write_at(clock: Clock, path: Path, script: list[tuple[float, str | None]]) -> None:
    """Write each value (None: delete the file) at its moment; times miss the polls on purpose."""
    for at, text in script:
        await clock.sleep(at - clock.monotonic())
        set_value(path, text)


def set_value(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink()
    else:
        path.write_text(text + "\n")


def test_the_gpio_input_yields_confirmed_changes_only(tmp_path: Path) -> None:
    clock = SimClock()
    value = tmp_path / "value"
    value.write_text("0\n")
    script: list[tuple[float, str | None]] = [
        (1.05, "1"),  # on: read at 1.1 and confirmed at 1.2
        (3.05, "0"),  # a bounce: one reading of 0 ...
        (3.15, "1"),  # ... then 1 again: no change
        (5.05, "0"),  # off: confirmed at 5.2
    ]

    async def main() -> list[tuple[float, bool]]:
        gpio = GpioInput(value, clock, poll_s=0.1, confirm=2)
        writer = asyncio.create_task(write_at(clock, value, script))
        seen = await collect(clock, gpio, 8.0)
        await writer
        assert (gpio.changes, gpio.read_failures) == (2, 0)
        return seen

    seen = clock.run(main())
    assert [on for _, on in seen] == [False, True, False]
    assert [t for t, _ in seen] == pytest.approx([0.0, 1.2, 5.2])


def test_gpio_active_low_inverts(tmp_path: Path) -> None:
    clock = SimClock()
    value = tmp_path / "value"
    value.write_text("0\n")

    async def main() -> list[tuple[float, bool]]:
        writer = asyncio.create_task(write_at(clock, value, [(2.05, "1")]))
        seen = await collect(clock, GpioInput(value, clock, active_low=True), 4.0)
        await writer
        return seen

    assert [on for _, on in clock.run(main())] == [True, False]


def test_an_unreadable_gpio_reports_off_logs_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SimClock()
    value = tmp_path / "value"
    value.write_text("1\n")
    script: list[tuple[float, str | None]] = [(1.05, None), (4.05, "1"), (9.05, "x")]

    async def main() -> list[tuple[float, bool]]:
        gpio = GpioInput(value, clock, poll_s=0.1, backoff=Backoff(0.1, 2.0, 1.0))
        writer = asyncio.create_task(write_at(clock, value, script))
        seen = await collect(clock, gpio, 10.0)
        await writer
        assert gpio.outages == 2
        return seen

    with caplog.at_level(logging.INFO, logger="gps.status_input"):
        seen = clock.run(main())
    # Gone at 1.05: off at the next poll (no confirmation needed to fail safe). Retries at
    # 1.2, 1.4, 1.8, 2.6, 3.6, 4.6 (backoff); back at 4.6, on again once confirmed at 4.7.
    assert seen == [(0.0, True), (pytest.approx(1.1), False), (pytest.approx(4.7), True),
                    (pytest.approx(9.1), False)]  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "the file does not exist" in warnings[0]
    assert "Reporting emergency OFF" in warnings[0]
    assert "holds 'x', not 0 or 1" in warnings[1]
    assert any("can be read again after 3.5 s" in r.getMessage() for r in caplog.records)


@dataclass
class FakePort:
    cts: bool = False
    dsr: bool = False
    ri: bool = False
    cd: bool = False
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeOpener:
    ports: list[FakePort] = field(default_factory=list)
    failures: int = 1  # the first open fails: the adapter is not there yet

    def __call__(self) -> FakePort:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENOENT, "No such file or directory")
        self.ports.append(FakePort())
        return self.ports[-1]


def test_a_serial_modem_line_is_polled_and_its_port_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SimClock()
    opener = FakeOpener()

    async def flip() -> None:
        await clock.sleep(2.05)
        opener.ports[-1].dsr = True

    async def main() -> list[tuple[float, bool]]:
        line = SerialLineInput("/dev/ttyS1", "dsr", clock, opener=opener, threaded=False)
        flipper = asyncio.create_task(flip())
        seen = await collect(clock, line, 3.0)
        await flipper
        return seen

    with caplog.at_level(logging.WARNING, logger="gps.status_input"):
        seen = clock.run(main())
    assert [on for _, on in seen] == [False, True]
    assert seen[1][0] == pytest.approx(2.2)
    assert len(opener.ports) == 1  # kept open between polls ...
    assert opener.ports[0].closed  # ... and closed when the reader stops
    assert "/dev/ttyS1 does not exist" in caplog.text


def test_a_device_without_modem_lines_is_explained(caplog: pytest.LogCaptureFixture) -> None:
    controller, device = os.openpty()  # a pty: pyserial opens it, the modem ioctl fails
    try:
        line = SerialLineInput(os.ttyname(device), "cts", RealClock(), poll_s=0.05)

        async def first() -> bool:
            async with aclosing(aiter(line)) as states:
                return await anext(states)

        with caplog.at_level(logging.WARNING, logger="gps.status_input"):
            assert asyncio.run(first()) is False
        assert "reports no modem lines" in caplog.text
        assert "must be a real serial port" in caplog.text
    finally:
        os.close(controller)
        os.close(device)


# -- the whole command against real parts ----------------------------------------------


@dataclass
class Seen:
    positions: list[PositionMessage] = field(default_factory=list)
    statuses: list[StatusMessage] = field(default_factory=list)
    links: list[LinkMessage] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


@asynccontextmanager
async def subscriber(port: int) -> AsyncIterator[Seen]:
    """A plain MQTT client on the vehicle's topics, decoding what arrives."""
    seen = Seen()
    async with aiomqtt.Client(HOST, port, identifier="test-subscriber") as client:
        await client.subscribe(f"{PREFIX}/{ENGINE}/#", qos=1)

        async def consume() -> None:
            async for message in client.messages:
                kind = message.topic.value.rsplit("/", 1)[-1]
                payload = message.payload
                assert isinstance(payload, bytes)
                decoded = {"position": decode_position, "status": decode_status,
                           "link": decode_link}[kind](payload, ENGINE)  # fmt: skip
                if isinstance(decoded, PositionMessage):
                    seen.positions.append(decoded)
                elif isinstance(decoded, StatusMessage):
                    seen.statuses.append(decoded)
                elif isinstance(decoded, LinkMessage):
                    seen.links.append(decoded)
                else:
                    seen.other.append(f"{message.topic.value}: {decoded}")

        task = asyncio.create_task(consume())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[SocatPty]:
    with SocatPty(tmp_path) as pair:
        yield pair


def engine_config(directory: Path, broker: MosquittoBroker, receiver: str, emergency: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / "onboard.toml"
    path.write_text(
        f'[vehicle]\nid = "{ENGINE}"\n\n[receiver]\n{receiver}\n\n[emergency]\n{emergency}\n\n'
        f'[broker]\nhost = "{HOST}"\nport = {broker.port}\nkeepalive = 5\n'
    )
    return path


@pytest.mark.integration
async def test_the_onboard_command_forwards_a_receiver_and_its_blue_lights(
    tmp_path: Path, broker: MosquittoBroker, cable: SocatPty
) -> None:
    lights = tmp_path / "engine" / "blue-lights"
    path = engine_config(
        tmp_path / "engine",
        broker,
        f'kind = "serial"\ndevice = "{cable.device}"\nbaudrate = 9600',
        'source = "gpio"\npath = "blue-lights"\npoll_s = 0.05',  # relative to the file
    )
    lights.write_text("1\n")
    loaded = load_onboard(path)
    today = RealClock().now()
    expected, _ = parse_nmea_file(LOG, ENGINE)
    assert len(expected) > 50
    assert expected[0].time < today - 86_400  # its own dates, not today's
    stop = asyncio.Event()
    async with subscriber(broker.port) as seen:
        engine = asyncio.create_task(run(loaded, stop))
        await eventually(lambda: bool(seen.links), "the engine's link message")
        assert seen.links[0].online is True
        writer = cable.open_writer()
        lines = LOG.read_bytes().splitlines(keepends=True)
        for i in range(0, len(lines), 25):
            assert await writer.write(b"".join(lines[i : i + 25]))
            await asyncio.sleep(0.005)
        await eventually(
            lambda: len(seen.positions) == len(expected),
            "every fix of the log as a position",
            diagnostics=lambda: f"{len(seen.positions)} of {len(expected)}",
        )
        await eventually(lambda: bool(seen.statuses), "the emergency status")
        lights.write_text("0\n")
        await eventually(lambda: len(seen.statuses) == 2, "the blue lights off")
        assert open_fds(cable.device)  # the receiver's port is open while it runs
        stop.set()
        forwarder = await in_time(engine, "the onboard command to stop", within_s=8.0)
        await eventually(lambda: len(seen.links) == 2, "the offline link message")
        writer.close()
    assert [p.time for p in seen.positions] == [f.time for f in expected]
    assert [(p.lat, p.lon) for p in seen.positions] == [(f.lat, f.lon) for f in expected]
    assert [p.seq for p in seen.positions] == list(range(len(expected)))
    assert [(s.emergency, s.source) for s in seen.statuses] == [
        (True, StatusSource.BLUE_LIGHTS), (False, StatusSource.BLUE_LIGHTS)
    ]  # fmt: skip
    assert seen.links[-1].online is False
    assert seen.links[-1].time is not None  # said by the engine itself, not the last will
    assert seen.other == []
    assert forwarder.sent == len(expected)
    assert open_fds(cable.device) == []  # the receiver's port is closed


async def test_a_stop_without_a_broker_ends_within_the_drain_time(tmp_path: Path) -> None:
    nobody = free_port()  # nothing listens: every connection attempt is refused at once
    path = tmp_path / "onboard.toml"
    path.write_text(
        f'[vehicle]\nid = "{ENGINE}"\n[receiver]\nkind = "gpsd"\nport = {nobody}\n'
        f'[emergency]\nsource = "config"\nvalue = false\n[broker]\nhost = "{HOST}"\n'
        f"port = {nobody}\n"
    )
    loaded = load_onboard(path)
    # Long reconnect pauses: a stop must not sit them out.
    slow = replace(loaded.settings, drain_timeout_s=0.5, reconnect_min_s=30.0)
    stop = asyncio.Event()
    engine = asyncio.create_task(run(replace(loaded, settings=slow), stop))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    stop.set()
    forwarder = await in_time(engine, "the stop", within_s=5.0)
    assert time.monotonic() - started < 2.0
    assert forwarder.link.outages == 1
    assert forwarder.link.last_error_kind == "unreachable"


@pytest.mark.integration
async def test_sigterm_stops_the_command_cleanly_with_offline_published(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    path = engine_config(
        tmp_path / "engine",
        broker,
        f'kind = "serial"\ndevice = "{tmp_path / "unplugged"}"',  # an outage, logged
        'source = "config"\nvalue = true',
    )
    async with subscriber(broker.port) as seen:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "preemption.cli", "onboard", "--config", str(path),
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await eventually(
                lambda: bool(seen.links) and bool(seen.statuses),
                "the engine online with its status",
                diagnostics=lambda: f"exit status {process.returncode}",
            )
            process.send_signal(signal.SIGTERM)
            out, err = await in_time(process.communicate(), "the command to exit", within_s=8.0)
            await eventually(lambda: len(seen.links) == 2, "the offline link message")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    log = err.decode()
    assert process.returncode == EXIT_OK, log
    assert out == b""
    assert [link.online for link in seen.links] == [True, False]
    assert seen.links[-1].time is not None
    assert [(s.emergency, s.source) for s in seen.statuses] == [(True, StatusSource.CONFIG)]
    assert f"onboard {ENGINE}: starting" in log
    assert f"GPS receiver {tmp_path / 'unplugged'} of vehicle {ENGINE}" in log  # the outage
    assert "SIGTERM: stopping" in log
    assert f"onboard {ENGINE}: stopped: 0 positions sent" in log
