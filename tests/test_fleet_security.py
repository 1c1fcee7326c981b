"""The fleet feed against a real Mosquitto run from the shipped configuration.

Every test here starts mosquitto on config/mosquitto/mosquitto.conf as shipped
(only its listener, on a free port of 127.0.0.1, its file paths and its user
replaced: tests/broker.py render_shipped_config), with the CA, certificates,
passwords, password file and ACL made by the shipped config/mosquitto/make-pki.
What ships is what is tested: who may connect, who may write and read which
topic, the last will of a vanishing engine, and the centre's defences against
forged, replayed, stale and flooded messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
import struct
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from gps.mqtt import (
    BrokerSettings,
    MqttFixSource,
    TopicKind,
    VehicleStatus,
    accepts_anonymous,
    topic_for,
)
from gps.onboard import OnboardForwarder, OnboardSettings
from gps.position_json import LinkMessage, PositionMessage, StatusMessage, StatusSource
from preemption.kernel.clock import RealClock
from preemption.kernel.model import Fix, FixQuality

from .broker import (
    HOST,
    SHIPPED_CONFIG_DIR,
    FleetPki,
    MosquittoBroker,
    eventually,
    in_time,
    make_fleet_pki,
    render_shipped_config,
    require_openssl,
    run_make_pki,
)

pytestmark = pytest.mark.integration

PREFIX = "preemption/v1/vehicles"
VEHICLES = ("HLF1", "DLK1", "ELW1")
OPERATORS = ("op-a", "op-b")
DAEMON = "preemption-daemon"
DISPATCH = "preemption-dispatch"


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    return make_fleet_pki(
        tmp_path_factory.mktemp("pki") / "pki", vehicles=VEHICLES, operators=OPERATORS
    )


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    """Another commissioning run: a CA that signed nothing the broker uses."""
    return make_fleet_pki(tmp_path_factory.mktemp("other") / "pki", vehicles=("HLF1",))


@pytest.fixture
def broker(tmp_path: Path, pki: FleetPki) -> Iterator[MosquittoBroker]:
    with MosquittoBroker.shipped(tmp_path / "broker", pki) as running:
        yield running


def settings_for(pki: FleetPki, name: str, port: int, **kwargs: object) -> BrokerSettings:
    """What a deployment of account ``name`` configures: password, CA, client certificate."""
    account = pki.account(name)
    values: dict[str, object] = {
        "username": name,
        "password": account.password,
        "tls_ca": pki.ca,
        "tls_cert": account.cert,
        "tls_key": account.key,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
    }
    values.update(kwargs)
    return BrokerSettings(HOST, port, **values)  # type: ignore[arg-type]


def client_for(pki: FleetPki, name: str, port: int) -> aiomqtt.Client:
    s = settings_for(pki, name, port)
    return aiomqtt.Client(
        HOST,
        port,
        username=s.username,
        password=s.password,
        tls_context=s.tls_context(),
        identifier=f"{name}-test",  # the broker uses the user name as client id anyway
        timeout=10,
    )


def position(vehicle: str, seq: int, t: float) -> bytes:
    return PositionMessage.from_fix(
        Fix(vehicle, t, 49.4871, 8.4661, 13.9, 92.5, 0.9, FixQuality.GPS, "test", 9), seq
    ).encode()


class Central:
    """The daemon's side: MqttFixSource with the daemon's account, collecting in a task."""

    def __init__(self, settings: BrokerSettings, **kwargs: object) -> None:
        self.fixes: list[Fix] = []
        self.arrived: dict[tuple[str, float], float] = {}  # (vehicle, fix time) -> monotonic
        self.statuses: list[VehicleStatus] = []
        self.source = MqttFixSource(
            settings,
            VEHICLES,
            RealClock(),
            on_status=self.statuses.append,
            **kwargs,  # type: ignore[arg-type]
        )
        self._task: asyncio.Task[None] | None = None

    async def _consume(self) -> None:
        async for f in self.source:
            self.arrived[(f.vehicle, f.time)] = time.monotonic()
            self.fixes.append(f)

    async def __aenter__(self) -> Central:
        self._task = asyncio.create_task(self._consume())
        await eventually(
            lambda: self.source.link.connected,
            "the daemon's source to connect and subscribe",
            diagnostics=lambda: str(self.source.link),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def of(self, vehicle: str) -> list[Fix]:
        return [f for f in self.fixes if f.vehicle == vehicle]


# -- the shipped files ---------------------------------------------------------------------


def test_make_pki_makes_private_keys_keeps_what_exists_and_replaces_a_ca_only_when_told(
    tmp_path: Path,
) -> None:
    openssl = require_openssl()
    directory = tmp_path / "pki"
    first = make_fleet_pki(directory, vehicles=("HLF1",), operators=("op-a",))
    for made in ("ca.crt, ca.key", "server.crt, server.key", "passwords", "acl"):
        assert f"made   {made}" in first.output
    secrets = [
        directory / "ca.key",
        directory / "server.key",
        directory / "passwords",
        directory / "acl",
    ]
    for name in ("HLF1", "op-a", DAEMON, DISPATCH):
        account = first.account(name)
        secrets += [account.key, account.key.with_suffix(".password")]
        done = subprocess.run(
            [openssl, "verify", "-CAfile", str(first.ca), str(account.cert)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    users = [line.split(":", 1)[0] for line in first.passwords.read_text().splitlines()]
    assert sorted(users) == sorted(["HLF1", "op-a", DAEMON, DISPATCH])
    assert "user op-a\ntopic write preemption/v1/operators/op-a/command\n" in first.acl.read_text()
    assert first.acl.read_text().startswith((SHIPPED_CONFIG_DIR / "acl").read_text())

    ca, hlf1 = first.ca.read_bytes(), first.account("HLF1")
    cert, password = hlf1.cert.read_bytes(), hlf1.password
    local = "user gateway-north\ntopic read preemption/v1/requests/#\n"
    (directory / "acl.local").write_text(local)
    again = make_fleet_pki(directory, vehicles=("HLF1", "DLK1"))
    assert again.acl.read_text().endswith(local)  # the administrator's own lines, kept
    assert "kept   ca.crt, ca.key" in again.output
    assert "kept   server.crt, server.key (DNS:localhost,IP:127.0.0.1)" in again.output
    assert "made   vehicle/DLK1" in again.output
    assert (first.ca.read_bytes(), hlf1.cert.read_bytes()) == (ca, cert)
    assert again.account("HLF1").password == password
    assert "user op-a\n" in again.acl.read_text()  # the operator of the first run stays

    refused = run_make_pki(directory, "--operator", "HLF1")
    assert refused.returncode == 1
    assert "operator 'HLF1' is already a vehicle" in refused.stderr
    assert "must not carry a vehicle's id" in refused.stderr
    refused = run_make_pki(directory, "--vehicle", "FW:HLF1")
    assert refused.returncode == 1
    assert "vehicle id 'FW:HLF1' is not usable" in refused.stderr
    refused = run_make_pki(directory, "--vehicle", DAEMON)
    assert refused.returncode == 1
    assert "is the name of a service account" in refused.stderr

    renewed = run_make_pki(directory, "--new-ca")
    assert renewed.returncode == 0, renewed.stderr
    assert first.ca.read_bytes() != ca
    assert hlf1.cert.read_bytes() != cert  # made again, by the new CA
    assert first.account("HLF1").password == password  # the passwords stay


def test_the_broker_of_these_tests_runs_the_shipped_configuration(
    tmp_path: Path, pki: FleetPki
) -> None:
    shipped = (SHIPPED_CONFIG_DIR / "mosquitto.conf").read_text().splitlines()
    rendered = render_shipped_config(pki, tmp_path, 1234).splitlines()
    assert len(rendered) == len(shipped)
    changed = [(a, b) for a, b in zip(shipped, rendered, strict=True) if a != b]
    assert {a.split()[0] for a, _ in changed} == {
        "user", "persistence_location", "password_file", "acl_file", "listener",
        "cafile", "certfile", "keyfile",
    }  # fmt: skip
    assert f"listener 1234 {HOST}" in rendered
    assert "allow_anonymous false" in rendered
    assert sum(line.startswith("listener ") for line in rendered) == 1  # TLS only


async def test_a_client_without_credentials_is_refused_and_the_probe_says_so(
    broker: MosquittoBroker, pki: FleetPki, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = settings_for(pki, DAEMON, broker.port)
    assert await accepts_anonymous(daemon) is False  # refused at TLS: no client certificate
    plain = BrokerSettings(HOST, broker.port)
    assert await accepts_anonymous(plain) is None  # plain MQTT to a TLS port: cannot tell

    bare = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(HOST, broker.port, tls_context=bare, timeout=1):
            pass
    with_cert = daemon.tls_context()
    with pytest.raises(aiomqtt.MqttCodeError):  # a certificate, but no password: CONNACK 5
        async with aiomqtt.Client(HOST, broker.port, tls_context=with_cert, timeout=3):
            pass
    with pytest.raises(aiomqtt.MqttCodeError):  # another account's password
        async with aiomqtt.Client(
            HOST, broker.port, username=DAEMON, password=pki.account("HLF1").password,
            tls_context=with_cert, timeout=3,
        ):  # fmt: skip
            pass

    # The daemon's source without its client certificate says what is missing.
    caplog.set_level(logging.INFO, logger="gps.mqtt")
    no_cert = settings_for(pki, DAEMON, broker.port, tls_cert=None, tls_key=None,
                           connect_timeout_s=1.0)  # fmt: skip
    src = MqttFixSource(no_cert, VEHICLES, RealClock())
    task = asyncio.create_task(drain(src))
    try:
        await eventually(lambda: src.link.failures >= 1, "the refused attempt", within_s=15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert src.link.last_error_kind == "tls"
    assert src.link.last_error is not None
    assert "client certificate" in src.link.last_error
    assert "set tls_cert and tls_key" in src.link.last_error


async def drain(src: MqttFixSource) -> None:
    async for _ in src:
        pass


async def test_tls_with_a_wrong_ca_fails_with_the_explanation(
    broker: MosquittoBroker, pki: FleetPki, other_pki: FleetPki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gps.mqtt")
    wrong_ca = settings_for(pki, DAEMON, broker.port, tls_ca=other_pki.ca)
    src = MqttFixSource(wrong_ca, VEHICLES, RealClock())
    task = asyncio.create_task(drain(src))
    try:
        await eventually(lambda: src.link.failures >= 2, "refused handshakes")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert src.link.last_error_kind == "tls"
    reported = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(reported) == 1, reported
    assert "CERTIFICATE_VERIFY_FAILED" in reported[0]
    assert "check that tls_ca is the CA that signed the broker's certificate" in reported[0]
    assert await accepts_anonymous(wrong_ca) is None  # an unverified broker: cannot tell


# -- who may write and read what ---------------------------------------------------------------


async def test_an_engine_cannot_publish_as_another_engine(
    broker: MosquittoBroker, pki: FleetPki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gps.mqtt")
    async with Central(settings_for(pki, DAEMON, broker.port)) as central:
        now = RealClock().now()
        async with client_for(pki, "HLF1", broker.port) as hlf1:
            for kind, payload in (
                (TopicKind.POSITION, position("DLK1", 0, now)),
                (TopicKind.NMEA, b"$GPGGA,,,,,,0,,,,,,,,*66\r\n"),
                (
                    TopicKind.STATUS,
                    StatusMessage("DLK1", now, True, StatusSource.DISPATCH).encode(),
                ),
                (TopicKind.LINK, LinkMessage("DLK1", False, None).encode()),
            ):
                await hlf1.publish(topic_for(PREFIX, "DLK1", kind), payload, qos=1, retain=True)
            # The broker forwards one publisher's messages in order: once this one is in,
            # the forgeries before it would have been too.
            await hlf1.publish(topic_for(PREFIX, "HLF1", TopicKind.POSITION),
                               position("HLF1", 0, now), qos=1)  # fmt: skip
            await eventually(lambda: len(central.fixes) == 1, "HLF1's own position")
    assert [f.vehicle for f in central.fixes] == ["HLF1"]
    assert central.source.received == Counter(position=1)
    assert central.statuses == []
    assert central.source.dropped == Counter()
    assert "refused the subscriptions" not in caplog.text  # the daemon may read the fleet


async def test_each_account_writes_only_its_own_topics_and_reads_only_what_it_needs(
    broker: MosquittoBroker, pki: FleetPki
) -> None:
    v1 = "preemption/v1"
    # publisher -> [(topic, who must receive it, or () for nobody)]; forbidden first, so
    # that the allowed message after them proves they had their chance.
    probes: dict[str, list[tuple[str, tuple[str, ...]]]] = {
        "HLF1": [
            (f"{v1}/operators/op-a/command", ()),
            (f"{v1}/operators/HLF1/command", ()),
            (f"{v1}/operators/op-a/reply", ()),
            (f"{v1}/dispatch/alarm", ()),
            (f"{v1}/status/HLF1", ()),
            (f"{v1}/requests/K1", ()),
            (f"{v1}/vehicles/DLK1/position", ()),
            (f"{v1}/vehicles/HLF1/position", (DAEMON,)),
        ],
        "op-a": [
            (f"{v1}/operators/op-b/command", ()),
            (f"{v1}/operators/op-a/reply", ()),
            (f"{v1}/dispatch/alarm", ()),
            (f"{v1}/status/x", ()),
            (f"{v1}/vehicles/HLF1/status", ()),
            (f"{v1}/operators/op-a/command", (DAEMON,)),
        ],
        DISPATCH: [
            (f"{v1}/operators/op-a/command", ()),
            (f"{v1}/status/x", ()),
            (f"{v1}/vehicles/HLF1/status", ()),
            (f"{v1}/dispatch/alarm/4711", (DAEMON,)),
        ],
        DAEMON: [
            (f"{v1}/vehicles/HLF1/status", ()),
            (f"{v1}/dispatch/alarm", ()),
            (f"{v1}/operators/op-a/command", ()),
            (f"{v1}/operators/op-a/reply", ("op-a",)),
            (f"{v1}/status/planner", ("op-a", "op-b")),
        ],
    }
    watchers = ("HLF1", "op-a", "op-b", DISPATCH, DAEMON)
    received: dict[str, list[tuple[str, str]]] = {name: [] for name in watchers}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(client_for(pki, name, broker.port))
            for name in watchers
        }
        tasks = []
        for name, client in clients.items():
            # Everyone asks for everything: the ACL decides what each one gets.
            await client.subscribe([("#", 1)])

            async def collect(c: aiomqtt.Client = client, into: str = name) -> None:
                async for m in c.messages:
                    received[into].append((str(m.topic), bytes(m.payload).decode()))

            tasks.append(asyncio.create_task(collect()))
        try:
            for publisher, sends in probes.items():
                for topic, _ in sends:
                    await clients[publisher].publish(topic, f"{publisher}->{topic}", qos=1)
            expected = {name: set[tuple[str, str]]() for name in watchers}
            for publisher, sends in probes.items():
                for topic, readers in sends:
                    for reader in readers:
                        expected[reader].add((topic, f"{publisher}->{topic}"))
            await eventually(
                lambda: all(expected[w] <= set(received[w]) for w in watchers),
                "every allowed message at its readers",
                diagnostics=lambda: f"received {received}",
            )
            await asyncio.sleep(0.3)  # a grace for the watchers that have nothing to wait for
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for watcher in watchers:
        assert set(received[watcher]) == expected[watcher], watcher
    assert received["HLF1"] == []  # an engine reads nothing
    assert received[DISPATCH] == []


# -- what the centre drops, over the secure broker -----------------------------------------------


async def test_malformed_replayed_future_stale_and_too_frequent_positions_are_counted(
    broker: MosquittoBroker, pki: FleetPki
) -> None:
    async with Central(settings_for(pki, DAEMON, broker.port), max_age_s=30.0) as central:
        now = RealClock().now()
        topic = topic_for(PREFIX, "HLF1", TopicKind.POSITION)
        sends = [
            position("HLF1", 0, now - 2),
            position("HLF1", 0, now - 2),  # the same again: a replay, or a QoS 1 redelivery
            position("HLF1", 1, now - 2.01),  # newer seq, older time
            position("HLF1", 2, now - 1.99),  # 10 ms of fix time later: too frequent
            position("HLF1", 3, now + 60),  # a minute ahead of the centre's clock
            position("HLF1", 4, now - 3600),  # an hour old
            b'{"v":1,"vehicle":"HLF1","time":',  # cut off
            position("DLK1", 5, now - 1),  # another vehicle's position on HLF1's own topic
            position("HLF1", 6, now - 1),
        ]
        async with client_for(pki, "HLF1", broker.port) as hlf1:
            for payload in sends:
                await hlf1.publish(topic, payload, qos=1)
            await eventually(lambda: sum(central.source.received.values()) == len(sends),
                             "every message at the centre")  # fmt: skip
    assert [f.time for f in central.fixes] == [now - 2, now - 1]
    assert central.source.dropped_by_vehicle == {
        "HLF1": Counter(
            duplicate=1, time_backwards=1, too_frequent=1, from_future=1, too_old=1,
            bad_json=1, vehicle_mismatch=1,
        )
    }  # fmt: skip


# -- the last will of an engine that vanishes ----------------------------------------------------


class LinkProxy:
    """A TCP hop between an engine and the broker that a test can cut or freeze.

    ``kill`` resets both connections (RST, no MQTT DISCONNECT): a unit that
    crashed or lost power. ``freeze`` stops forwarding but keeps the sockets
    open: a radio dead spot, where only the broker's keepalive notices. Either
    way the proxy takes no new connections afterwards.
    """

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.port = 0
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.closed = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.closed:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                await self.thawed.wait()  # frozen: hold what came, forever
                dst.write(data)
                await dst.drain()

    def _stop_accepting(self) -> None:
        self.closed = True
        if self._server is not None:
            self._server.close()

    def kill(self) -> None:
        self._stop_accepting()
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # close with RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()

    def freeze(self) -> None:
        self._stop_accepting()
        self.thawed.clear()


@pytest.mark.parametrize("how", ["killed", "frozen"])
async def test_an_engine_that_vanishes_is_offline_at_the_centre_within_the_keepalive(
    broker: MosquittoBroker, pki: FleetPki, how: str
) -> None:
    # The smallest keepalive BrokerSettings allows. The broker gives up on a silent client
    # 1.5 x keepalive after its last packet; mosquitto 2.0 checks that on a coarse timer,
    # seen here up to 4.5 s late.
    keepalive = 5
    statuses: list[tuple[float, VehicleStatus]] = []
    async with Central(settings_for(pki, DAEMON, broker.port)) as central:
        central.source.on_status = lambda msg: statuses.append((time.monotonic(), msg))
        async with LinkProxy(broker.port) as proxy:
            account = pki.account("ELW1")
            settings = OnboardSettings(
                HOST, proxy.port, "ELW1", username="ELW1", password=account.password,
                tls_ca=pki.ca, tls_cert=account.cert, tls_key=account.key,
                keepalive_s=keepalive, reconnect_min_s=0.2, reconnect_max_s=0.5,
                drain_timeout_s=0.0,
            )  # fmt: skip
            forwarder = OnboardForwarder(settings, RealClock())
            run = asyncio.create_task(forwarder.run(fixes_from(asyncio.Queue()), True))
            try:
                await eventually(
                    lambda: central.source.online.get("ELW1") is True,
                    "the engine online",
                    diagnostics=lambda: str(forwarder.link),
                )
                gone = time.monotonic()
                proxy.kill() if how == "killed" else proxy.freeze()
                bound = 1.0 if how == "killed" else 1.5 * keepalive + 5.0
                await eventually(
                    lambda: central.source.online.get("ELW1") is False,
                    f"the will of the {how} engine",
                    within_s=bound + 3.0,
                )
            finally:
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
    at, last = statuses[-1]
    assert last == LinkMessage("ELW1", online=False, time=None)  # the will, not a goodbye
    assert at - gone <= bound + 1.0
    if how == "frozen":
        assert at - gone >= keepalive  # the broker's keepalive found it, not a closed socket


async def fixes_from(queue: asyncio.Queue[Fix]) -> AsyncIterator[Fix]:
    """A receiver whose fixes a test puts in ``queue``; none yet: waits forever."""
    while True:
        yield await queue.get()


async def fixes_of(fixes: list[Fix]) -> AsyncIterator[Fix]:
    for f in fixes:
        yield f


# -- floods and backlogs ------------------------------------------------------------------------


async def raw_publish_burst(
    settings: BrokerSettings, topic: str, payload: bytes, count: int
) -> None:
    """``count`` QoS 0 PUBLISH packets in one write: a flood as fast as TCP takes it."""
    context = settings.tls_context()
    reader, writer = await asyncio.open_connection(
        settings.host, settings.port, ssl=context, server_hostname=settings.host
    )

    def text(value: str | bytes) -> bytes:
        raw = value.encode() if isinstance(value, str) else value
        return len(raw).to_bytes(2, "big") + raw

    def length(n: int) -> bytes:
        out = bytearray()
        while True:
            n, digit = divmod(n, 128)
            out.append(digit | (0x80 if n else 0))
            if not n:
                return bytes(out)

    assert settings.username is not None
    assert settings.password is not None
    variable = text("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big")  # user, password
    body = variable + text("flood") + text(settings.username) + text(settings.password)
    writer.write(b"\x10" + length(len(body)) + body)
    await writer.drain()
    assert await reader.readexactly(4) == b"\x20\x02\x00\x00", "the flood's login was refused"
    packet_body = text(topic) + payload
    writer.write((b"\x30" + length(len(packet_body)) + packet_body) * count)
    writer.write(b"\xe0\x00")
    await writer.drain()
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def test_a_flood_from_one_engine_does_not_hold_up_another_and_is_counted(
    broker: MosquittoBroker, pki: FleetPki
) -> None:
    """20,000 messages from HLF1's credentials in one write, while DLK1 sends at 10 Hz:
    every DLK1 position arrives within 3 s of being sent (well under a second here), and
    every message of the flood is counted: one used, the rest dropped, most undecoded."""
    flood = 20_000
    clock = RealClock()
    async with Central(settings_for(pki, DAEMON, broker.port)) as central:
        sent: dict[float, float] = {}
        stop = asyncio.Event()

        async def other_engine() -> None:
            async with client_for(pki, "DLK1", broker.port) as dlk1:
                seq = 0
                while not stop.is_set():
                    t = clock.now()
                    sent[t] = time.monotonic()
                    await dlk1.publish(topic_for(PREFIX, "DLK1", TopicKind.POSITION),
                                       position("DLK1", seq, t), qos=1)  # fmt: skip
                    seq += 1
                    await asyncio.sleep(0.1)

        steady = asyncio.create_task(other_engine())
        await eventually(lambda: len(central.of("DLK1")) >= 3, "DLK1 before the flood")
        flood_started = time.monotonic()
        forged = position("HLF1", 1, clock.now())
        await raw_publish_burst(
            settings_for(pki, "HLF1", broker.port),
            topic_for(PREFIX, "HLF1", TopicKind.POSITION),
            forged,
            flood,
        )

        def flood_seen() -> int:
            counted = central.source.dropped_by_vehicle.get("HLF1", Counter())
            return len(central.of("HLF1")) + sum(counted.values())

        await eventually(
            lambda: flood_seen() == flood,
            "the whole flood counted",
            within_s=30.0,
            diagnostics=lambda: f"dropped {central.source.dropped}",
        )
        flood_over = time.monotonic()
        await asyncio.sleep(0.5)
        stop.set()
        await in_time(steady, "the other engine to stop")
    during = {t: at for t, at in sent.items() if flood_started <= at <= flood_over}
    assert len(during) >= 1, "no position of DLK1 was sent while the flood was processed"
    delays = [central.arrived[("DLK1", t)] - at for t, at in sent.items()
              if ("DLK1", t) in central.arrived]  # fmt: skip
    assert len(delays) >= len(sent) - 1  # at most the last, in flight when it stopped
    assert max(delays) < 3.0, sorted(delays)[-5:]
    assert all(("DLK1", t) in central.arrived for t in during)
    counted = central.source.dropped_by_vehicle["HLF1"]
    assert len(central.of("HLF1")) == 1
    assert counted["rate_limited"] >= flood - central.source.arrival_burst - 200
    assert set(counted) == {"rate_limited", "duplicate"}
    assert "DLK1" not in central.source.dropped_by_vehicle


async def test_a_600_position_backlog_drained_at_once_arrives_whole(
    broker: MosquittoBroker, pki: FleetPki
) -> None:
    """After an outage the engine sends its whole store-and-forward buffer as fast as the
    broker takes it: the centre keeps all of it, the newest above all."""
    clock = RealClock()
    async with Central(settings_for(pki, DAEMON, broker.port)) as central:
        account = pki.account("HLF1")
        settings = OnboardSettings(
            HOST, broker.port, "HLF1", username="HLF1", password=account.password,
            tls_ca=pki.ca, tls_cert=account.cert, tls_key=account.key, buffer_size=600,
        )  # fmt: skip
        forwarder = OnboardForwarder(settings, clock)
        now = clock.now()
        times = [now - 59.9 + 0.1 * k for k in range(600)]  # the last minute at 10 Hz
        for t in times:  # buffered before the link is up, as during an outage
            forwarder.take(Fix("HLF1", t, 49.4871, 8.4661, 13.9, 92.5, 0.9, FixQuality.GPS, "r", 9))
        assert forwarder.buffered == 600
        started = time.monotonic()
        await in_time(forwarder.run(fixes_of([]), True), "the forwarder to drain", 30.0)
        await eventually(lambda: len(central.fixes) == 600, "the whole backlog at the centre",
                         diagnostics=lambda: f"dropped {central.source.dropped}")  # fmt: skip
        took = time.monotonic() - started
    assert [f.time for f in central.fixes] == times
    assert central.source.dropped == Counter()
    assert took < 0.1 * 600  # it came faster than it was recorded: a real burst


def test_the_shipped_script_is_posix_sh(tmp_path: Path) -> None:
    """make-pki runs under dash (Debian's /bin/sh), not only bash."""
    dash = Path("/usr/bin/dash")
    if not dash.exists():
        pytest.skip("dash is not installed")
    done = subprocess.run(
        [str(dash), "-n", str(SHIPPED_CONFIG_DIR / "make-pki")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert os.access(SHIPPED_CONFIG_DIR / "make-pki", os.X_OK)
