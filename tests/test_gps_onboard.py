"""The onboard forwarder: buffering, ordering, status, TLS and credentials, the last will.

The integration tests run the forwarder against a real mosquitto on
127.0.0.1 (tests/broker.py) and read what arrives with the central source
(gps/mqtt.py), end to end.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gps.mqtt import BrokerConfigError, BrokerSettings, MqttFixSource, VehicleStatus
from gps.onboard import OnboardForwarder, OnboardSettings, run_onboard
from gps.position_json import LinkMessage, StatusMessage, StatusSource
from preemption.kernel.clock import RealClock, SimClock
from preemption.kernel.model import Fix, FixQuality

from .broker import (
    HOST,
    MosquittoBroker,
    TlsFiles,
    eventually,
    free_port,
    in_time,
    make_tls_files,
)

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_764_331_200.0
ENGINE = "HLF1"
USERS = {ENGINE: "engine-secret", "central": "central-secret"}


def fix(t: float, lat: float = 49.4871, lon: float = 8.4661, **kwargs: object) -> Fix:
    values: dict[str, object] = {
        "speed": 13.9,
        "course": 92.5,
        "hdop": 0.9,
        "quality": FixQuality.GPS,
        "satellites": 9,
    }
    values.update(kwargs)
    return Fix(ENGINE, t, lat, lon, source="receiver", **values)  # type: ignore[arg-type]


class Feed:
    """An async iterable the test feeds by hand; ``end()`` ends it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._end = object()

    def put(self, item: object) -> None:
        self._queue.put_nowait(item)

    def end(self) -> None:
        self._queue.put_nowait(self._end)

    async def items(self) -> AsyncIterator[object]:
        while (item := await self._queue.get()) is not self._end:
            yield item


async def fixes_of(feed: Feed) -> AsyncIterator[Fix]:
    async for item in feed.items():
        assert isinstance(item, Fix)
        yield item


async def bools_of(feed: Feed) -> AsyncIterator[bool]:
    async for item in feed.items():
        assert isinstance(item, bool)
        yield item


class Central:
    """The central side: MqttFixSource collecting fixes and status in a task."""

    def __init__(self, broker: BrokerSettings, **kwargs: object) -> None:
        self.statuses: list[VehicleStatus] = []
        self.fixes: list[Fix] = []
        self.source = MqttFixSource(
            broker,
            [ENGINE],
            RealClock(),
            on_status=self.statuses.append,
            max_age_s=600.0,
            **kwargs,  # type: ignore[arg-type]
        )
        self._task: asyncio.Task[None] | None = None

    async def _consume(self) -> None:
        async for f in self.source:
            self.fixes.append(f)

    async def __aenter__(self) -> Central:
        self._task = asyncio.create_task(self._consume())
        await eventually(
            lambda: self.source.link.connected,
            "the central source to subscribe",
            diagnostics=lambda: str(self.source.link),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def times(self) -> list[float]:
        return [f.time for f in self.fixes]


def onboard_settings(port: int, **kwargs: object) -> OnboardSettings:
    values: dict[str, object] = {
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "publish_timeout_s": 5.0,
        "drain_timeout_s": 5.0,
    }
    values.update(kwargs)
    return OnboardSettings(HOST, port, ENGINE, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


# -- no broker ---------------------------------------------------------------------


def test_invalid_fixes_are_counted_and_never_buffered() -> None:
    forwarder = OnboardForwarder(onboard_settings(1883), SimClock(NOW))
    for bad in (
        fix(NOW, lat=0.0, lon=0.0),
        fix(NOW, lat=91.0),
        fix(NOW, speed=-3.0),
        fix(NOW, speed=float("nan")),
        fix(NOW, course=361.0),
        fix(NOW, hdop=0.0),
        fix(NOW, quality=FixQuality.INVALID),
        fix(float("inf")),
    ):
        forwarder.take(bad)
    forwarder.take(fix(NOW))
    assert forwarder.dropped == Counter(
        impossible_coordinates=2, impossible_speed=2, impossible_value=2, no_fix=1,
        impossible_time=1,
    )  # fmt: skip
    assert forwarder.buffered == 1
    assert forwarder.queued == 1


def test_a_full_buffer_drops_the_oldest_first() -> None:
    forwarder = OnboardForwarder(onboard_settings(1883, buffer_size=3), SimClock(NOW))
    for k in range(7):
        forwarder.take(fix(NOW + k))
    assert forwarder.dropped == Counter(buffer_overflow=4)
    assert [item.seq for item in forwarder._outbox] == [4, 5, 6]


def test_settings_are_checked_with_clear_messages(tls_files: TlsFiles) -> None:
    with pytest.raises(BrokerConfigError, match="vehicle id 'HLF 1' is not usable"):
        OnboardSettings(HOST, 8883, "HLF 1")
    with pytest.raises(BrokerConfigError, match="buffer_size 0 must be at least 1"):
        OnboardSettings(HOST, 8883, ENGINE, buffer_size=0)
    with pytest.raises(BrokerConfigError, match="tls_key without tls_cert"):
        OnboardSettings(HOST, 8883, ENGINE, tls_ca=tls_files.ca, tls_key=tls_files.client_key)
    wrong_key = onboard_settings(8883, tls_ca=tls_files.ca, tls_cert=tls_files.client_cert,
                                 tls_key=tls_files.server_key)  # fmt: skip
    with pytest.raises(BrokerConfigError, match="the key belongs to the certificate"):
        OnboardForwarder(wrong_key, RealClock())


async def test_without_a_broker_the_forwarder_gives_up_after_the_drain_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gps.onboard")
    nobody = free_port()  # nothing listens there: every attempt is refused at once
    settings = onboard_settings(nobody, drain_timeout_s=0.5, reconnect_min_s=0.05)
    forwarder = OnboardForwarder(settings, RealClock())
    feed = Feed()
    for k in range(4):
        feed.put(fix(NOW + k))
    feed.end()
    await in_time(forwarder.run(fixes_of(feed), True), "the forwarder to give up")
    assert forwarder.dropped == Counter(undelivered=4)
    assert forwarder.link.last_error_kind == "unreachable"
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 2, messages
    assert f"cannot reach broker {HOST}:{nobody}" in messages[0]
    assert "check that the broker runs" in messages[0]
    assert "stopping with 4 positions undelivered" in messages[1]


# -- with a real broker ----------------------------------------------------------------


@pytest.mark.integration
async def test_positions_sent_during_an_outage_arrive_in_order_and_the_oldest_overflow(
    broker: MosquittoBroker,
) -> None:
    clock = RealClock()
    plain = BrokerSettings(HOST, broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5)
    # A persistent session keeps the central subscription (persisted by the broker over its
    # restart), so positions flushed before the central reconnects still reach it.
    async with Central(plain, client_id="central-test", persistent_session=True) as central:
        forwarder = OnboardForwarder(onboard_settings(broker.port, buffer_size=5), clock)
        feed = Feed()
        run = asyncio.create_task(forwarder.run(fixes_of(feed), True))
        start = clock.now()
        before = [start + 0.1 * k for k in range(3)]
        for t in before:
            feed.put(fix(t))
        await eventually(lambda: len(central.fixes) == 3, "the positions before the outage")

        await asyncio.to_thread(broker.stop)
        await eventually(lambda: not forwarder.link.connected, "the forwarder to see the outage")
        during = [start + 1.0 + 0.1 * k for k in range(8)]
        for t in during:
            feed.put(fix(t))
        await eventually(lambda: forwarder.queued == 11, "the forwarder to take every fix")
        assert forwarder.dropped == Counter(buffer_overflow=3)
        assert forwarder.buffered == 5

        await asyncio.to_thread(broker.start)
        await eventually(
            lambda: len(central.fixes) == 8,
            "the buffered positions after the restart",
            within_s=15.0,
            diagnostics=lambda: f"central {central.times()}, onboard {forwarder.link}",
        )
        after = [during[-1] + 0.1]
        feed.put(fix(after[0]))
        feed.end()
        await in_time(run, "the forwarder to finish")
        await eventually(lambda: len(central.fixes) == 9, "the position after the restart")
    assert central.times() == before + during[3:] + after  # in order; the 3 oldest dropped
    assert forwarder.sent == 9
    assert forwarder.buffered == 0
    assert forwarder.link.outages == 1
    # Stopped just after delivering, before it processed the central's acknowledgements,
    # the broker redelivers those positions after its restart: dropped as duplicates.
    assert set(central.source.dropped) <= {"duplicate"}, central.source.dropped


@pytest.mark.integration
async def test_tls_with_passwords_and_client_certificate_end_to_end_with_status(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    clock = RealClock()
    with MosquittoBroker(
        tmp_path / "tls", users=USERS, tls=tls_files, require_client_cert=True
    ) as broker:
        assert broker.tls_port is not None
        central_tls = BrokerSettings(
            HOST, broker.tls_port, username="central", password=USERS["central"],
            tls_ca=tls_files.ca, tls_cert=tls_files.client_cert, tls_key=tls_files.client_key,
        )  # fmt: skip
        async with Central(central_tls) as central:
            settings = onboard_settings(
                broker.tls_port, username=ENGINE, password=USERS[ENGINE], tls_ca=tls_files.ca,
                tls_cert=tls_files.client_cert, tls_key=tls_files.client_key,
            )  # fmt: skip
            feed, lights = Feed(), Feed()
            run = asyncio.create_task(
                run_onboard(settings, fixes_of(feed), bools_of(lights), clock)
            )
            lights.put(False)
            lights.put(True)
            times = [clock.now() + 0.1 * k for k in range(5)]
            for t in times:
                feed.put(fix(t))
            await eventually(lambda: len(central.fixes) == 5, "the positions over TLS")
            await eventually(
                lambda: any(isinstance(s, StatusMessage) and s.emergency for s in central.statuses),
                "emergency on",
            )
            lights.put(True)  # no change: not sent again
            lights.put(False)
            await eventually(
                lambda: central.source.status[ENGINE].emergency is False, "emergency off"
            )
            feed.end()
            await in_time(run, "the forwarder to finish")
            await eventually(lambda: central.source.online.get(ENGINE) is False, "offline")
    assert central.times() == times
    emergency = [s.emergency for s in central.statuses if isinstance(s, StatusMessage)]
    assert emergency in ([True, False], [False, True, False])  # the first may be overtaken
    assert all(s.source is StatusSource.BLUE_LIGHTS for s in central.statuses
               if isinstance(s, StatusMessage))  # fmt: skip
    links = [s for s in central.statuses if isinstance(s, LinkMessage)]
    assert [link.online for link in links] == [True, False]
    assert links[-1].time is not None  # said goodbye itself: not the will (time null)
    assert central.source.dropped == Counter()


@pytest.mark.integration
async def test_a_wrong_password_is_reported_once_and_clearly_and_positions_wait(
    tmp_path: Path, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gps.onboard")
    with MosquittoBroker(tmp_path / "tls", users=USERS, tls=tls_files) as broker:
        assert broker.tls_port is not None
        settings = onboard_settings(
            broker.tls_port, username=ENGINE, password="guessed", tls_ca=tls_files.ca,
            reconnect_min_s=0.05, reconnect_max_s=0.2,
        )  # fmt: skip
        forwarder = OnboardForwarder(settings, RealClock())
        feed = Feed()
        run = asyncio.create_task(forwarder.run(fixes_of(feed), False))
        try:
            feed.put(fix(RealClock().now()))
            await eventually(lambda: forwarder.link.failures >= 4, "several refused attempts")
            assert not run.done()  # keeps trying: a password can be fixed at the broker
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert forwarder.buffered == 1
    assert forwarder.link.last_error_kind == "auth"
    reported = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(reported) == 1, [r.getMessage() for r in reported]
    assert reported[0].levelno == logging.ERROR
    text = reported[0].getMessage()
    assert f"{HOST}:{broker.tls_port} (TLS)" in text
    assert f"refused the credentials of user {ENGINE!r}" in text
    assert "check the username and password" in text


@pytest.mark.integration
async def test_an_untrusted_broker_certificate_is_reported_as_a_tls_problem(
    tmp_path: Path, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gps.onboard")
    with MosquittoBroker(tmp_path / "tls", tls=tls_files) as broker:
        assert broker.tls_port is not None
        settings = onboard_settings(broker.tls_port, tls_ca=tls_files.other_ca)
        forwarder = OnboardForwarder(settings, RealClock())
        run = asyncio.create_task(forwarder.run(fixes_of(Feed()), False))
        try:
            await eventually(lambda: forwarder.link.failures >= 2, "refused handshakes")
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert forwarder.link.last_error_kind == "tls"
    reported = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(reported) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in reported[0]
    assert "check that tls_ca is the CA that signed the broker's certificate" in reported[0]


_VANISHING_ENGINE = """
import asyncio, sys
from gps.onboard import OnboardSettings, run_onboard
from preemption.kernel.clock import RealClock
from preemption.kernel.model import Fix, FixQuality

async def fixes():
    clock = RealClock()
    while True:
        yield Fix("HLF1", clock.now(), 49.48, 8.46, 10.0, 90.0, 0.9, FixQuality.GPS, "sub")
        await asyncio.sleep(0.1)

settings = OnboardSettings("127.0.0.1", int(sys.argv[1]), "HLF1")
asyncio.run(run_onboard(settings, fixes(), True, RealClock()))
"""


@pytest.mark.integration
async def test_an_engine_that_vanishes_is_marked_offline_by_its_last_will(
    broker: MosquittoBroker,
) -> None:
    plain = BrokerSettings(HOST, broker.port)
    async with Central(plain) as central:
        engine = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _VANISHING_ENGINE, str(broker.port),
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await eventually(
                lambda: central.source.online.get(ENGINE) is True and len(central.fixes) >= 2,
                "the engine online with positions",
                within_s=20.0,
                diagnostics=lambda: f"engine exit code {engine.returncode}",
            )
            engine.kill()  # no goodbye: the broker must send the will
            await in_time(engine.wait(), "the engine process to die")
            await eventually(lambda: central.source.online.get(ENGINE) is False, "the will")
        finally:
            if engine.returncode is None:
                engine.kill()
                await in_time(engine.wait(), "the engine process to die")
    last = central.statuses[-1]
    assert last == LinkMessage(ENGINE, online=False, time=None)
    assert central.source.status[ENGINE].emergency is True
    assert central.source.status[ENGINE].source is StatusSource.CONFIG


@pytest.mark.integration
async def test_a_stopped_forwarder_says_offline_itself(broker: MosquittoBroker) -> None:
    async with Central(BrokerSettings(HOST, broker.port)) as central:
        forwarder = OnboardForwarder(onboard_settings(broker.port), RealClock())
        feed = Feed()
        run = asyncio.create_task(forwarder.run(fixes_of(feed), False))
        feed.put(fix(RealClock().now()))
        await eventually(lambda: len(central.fixes) == 1, "the position")
        run.cancel()  # as on SIGTERM: cancelled while connected
        await asyncio.gather(run, return_exceptions=True)
        await eventually(lambda: central.source.online.get(ENGINE) is False, "offline")
    last = central.statuses[-1]
    assert isinstance(last, LinkMessage)
    assert last.time is not None  # its own goodbye, not the will
    assert central.source.status[ENGINE].emergency is False


class SteppingClock(RealClock):
    """Wall time that a test can step, as NTP or a GNSS time fix steps a unit's clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset


@pytest.mark.integration
async def test_blue_lights_off_reaches_the_centre_after_the_units_clock_stepped_back(
    broker: MosquittoBroker,
) -> None:
    """The finding, end to end: the unit's clock steps back an hour between "on" and "off";
    the centre must apply the "off" (it used to drop it as time_backwards)."""
    unit_clock = SteppingClock()
    async with Central(BrokerSettings(HOST, broker.port)) as central:
        forwarder = OnboardForwarder(onboard_settings(broker.port), unit_clock)
        feed, lights = Feed(), Feed()
        run = asyncio.create_task(forwarder.run(fixes_of(feed), bools_of(lights)))
        lights.put(True)
        await eventually(lambda: central.source.status.get(ENGINE) is not None, "on")
        unit_clock.offset = -3600.0
        lights.put(False)
        await eventually(
            lambda: central.source.status[ENGINE].emergency is False,
            "the blue lights off at the centre",
            diagnostics=lambda: f"dropped {central.source.dropped}",
        )
        lights.put(True)  # and a new run after the step is taken too
        await eventually(lambda: central.source.status[ENGINE].emergency is True, "on again")
        feed.end()
        await in_time(run, "the forwarder to finish")
    statuses = [s for s in central.statuses if isinstance(s, StatusMessage)]
    assert [(s.emergency, s.seq) for s in statuses] == [(True, 0), (False, 1), (True, 2)]
    assert statuses[1].time < statuses[0].time  # the "off" did carry the stepped time
    assert central.source.dropped == Counter()


@pytest.mark.integration
async def test_the_status_is_sent_again_on_reconnect_with_its_own_sequence_number(
    broker: MosquittoBroker,
) -> None:
    async with Central(BrokerSettings(HOST, broker.port), client_id="central-seq",
                       persistent_session=True) as central:  # fmt: skip
        forwarder = OnboardForwarder(onboard_settings(broker.port), RealClock())
        feed, lights = Feed(), Feed()
        run = asyncio.create_task(forwarder.run(fixes_of(feed), bools_of(lights)))
        lights.put(True)
        await eventually(lambda: len(central.statuses) >= 2, "online and the status")
        await asyncio.to_thread(broker.restart)
        await eventually(lambda: forwarder.link.connects == 2, "the forwarder to reconnect")
        await eventually(
            lambda: sum(isinstance(s, StatusMessage) for s in central.statuses) >= 2,
            "the status again",
            within_s=15.0,
        )
        feed.end()
        await in_time(run, "the forwarder to finish")
    statuses = [s for s in central.statuses if isinstance(s, StatusMessage)]
    assert {(s.emergency, s.seq) for s in statuses} == {(True, 0)}  # the same message again
    assert central.source.dropped == Counter()
