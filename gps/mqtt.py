"""Positions of the fleet from an MQTT broker (the central side), and the link helpers.

Topic layout, under a prefix (default ``preemption/v1/vehicles``), one level
per vehicle id::

    <prefix>/<vehicle>/position   JSON position (gps/position_json.py), QoS 1
    <prefix>/<vehicle>/nmea       raw NMEA: one or more complete lines per message, QoS 1
    <prefix>/<vehicle>/status     JSON emergency status, retained, QoS 1
    <prefix>/<vehicle>/link       JSON online/offline, retained, QoS 1 (offline = last will)

:class:`MqttFixSource` subscribes to all four with a ``+`` wildcard, so that a
vehicle not on its allow-list is seen, dropped and counted
(``unknown_vehicle``) instead of silently ignored by the broker. It is an
``AsyncIterable[Fix]`` like every GPS source; status and link messages go to
an ``on_status`` callback and into :attr:`MqttFixSource.status` /
:attr:`MqttFixSource.online`. Nothing a publisher sends makes it raise: every
message is either used or counted under a reason, per vehicle.

The broker may go away at any time: the source reconnects with exponential
backoff (gps/backoff.py, with jitter) on the Clock, subscribes again, and logs
an outage once (broker address, what failed, what to check) and its end once.

The helpers for the link (:class:`BrokerSettings`, TLS, :func:`describe_failure`,
:class:`LinkState`) are shared with the onboard forwarder (gps/onboard.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from gps.backoff import Backoff
from gps.nmea import NmeaDecoder
from gps.position_json import (
    LinkMessage,
    PositionReader,
    Rejected,
    StatusMessage,
    check_vehicle_id,
)
from preemption.kernel.clock import Clock
from preemption.kernel.errors import InputError
from preemption.kernel.model import Fix

__all__ = [
    "DEFAULT_PREFIX",
    "FIX_DROP_REASONS",
    "SOURCE_DROP_REASONS",
    "BrokerConfigError",
    "BrokerSettings",
    "LinkState",
    "LinkWatch",
    "MqttFixSource",
    "TopicKind",
    "VehicleStatus",
    "describe_failure",
    "library_logger",
    "topic_for",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "preemption/v1/vehicles"
MAX_NMEA_PAYLOAD: Final = 16 * 1024  # one epoch is a few hundred bytes
MAX_UNKNOWN_VEHICLES: Final = 100  # distinct unknown names counted by name; the rest as one

# Reasons the source itself adds to those of gps/position_json.DROP_REASONS.
SOURCE_DROP_REASONS: Final = frozenset(
    {
        "bad_topic",  # not <prefix>/<vehicle>/<kind> with a known kind
        "unknown_vehicle",  # vehicle not on the allow-list
        # These two count NMEA fixes, not messages: one message may carry several.
        "nmea_too_old",  # a fix decoded from NMEA older than max_age_s
        "nmea_from_future",  # a fix decoded from NMEA later than now plus max_future_s
    }
)
FIX_DROP_REASONS: Final = frozenset({"nmea_too_old", "nmea_from_future"})
_OTHER_VEHICLES: Final = "<other unknown vehicles>"
_NO_VEHICLE: Final = "<no vehicle>"

VehicleStatus = StatusMessage | LinkMessage


class TopicKind(StrEnum):
    POSITION = "position"
    NMEA = "nmea"
    STATUS = "status"
    LINK = "link"


def topic_for(prefix: str, vehicle: str, kind: TopicKind) -> str:
    return f"{prefix}/{vehicle}/{kind.value}"


class BrokerConfigError(InputError):
    """The broker settings cannot work (missing certificate file, bad port ...)."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """How to reach and authenticate to a broker.

    TLS is on when ``tls`` is true or a CA file is given; without a CA file
    the system's trusted CAs verify the broker. ``tls_cert``/``tls_key`` are
    the client certificate, when the broker asks for one (the key may be in
    the certificate file).
    """

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not self.host or any(c.isspace() for c in self.host):
            problems.append(f"host {self.host!r} is empty or has blanks")
        if not 1 <= self.port <= 65535:
            problems.append(f"port {self.port!r} is not in 1..65535")
        if self.password is not None and self.username is None:
            problems.append("a password without a username: set the username too")
        if self.tls_key is not None and self.tls_cert is None:
            problems.append("tls_key without tls_cert: give the client certificate too")
        if not 5 <= self.keepalive_s <= 3600:
            problems.append(f"keepalive_s {self.keepalive_s!r} is not in 5..3600")
        if not self.connect_timeout_s > 0:
            problems.append(f"connect_timeout_s {self.connect_timeout_s!r} is not > 0")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s < math.inf:
            problems.append(
                f"reconnect_min_s {self.reconnect_min_s!r} / reconnect_max_s "
                f"{self.reconnect_max_s!r}: need 0 < min <= max < inf"
            )
        if problems:
            raise BrokerConfigError(
                f"MQTT broker settings for {self.host}:{self.port}: " + "; ".join(problems)
            )

    def backoff(self) -> Backoff:
        """Delays between connection attempts: doubling from min to max, 25 % jitter."""
        return Backoff(self.reconnect_min_s, 2.0, self.reconnect_max_s, jitter=0.25)

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port} ({'TLS' if self.uses_tls else 'plain TCP'})"

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context (reads the files now), or None without TLS; BrokerConfigError if bad."""
        if not self.uses_tls:
            return None
        for what, path in (("CA", self.tls_ca), ("client certificate", self.tls_cert)):
            if path is not None and not Path(path).is_file():
                raise BrokerConfigError(
                    f"TLS {what} file {path} for broker {self.address} does not exist or is not "
                    "a file: fix the path in the configuration"
                )
        if self.tls_key is not None and not Path(self.tls_key).is_file():
            raise BrokerConfigError(
                f"TLS client key file {self.tls_key} for broker {self.address} does not exist "
                "or is not a file: fix the path in the configuration"
            )
        try:
            context = ssl.create_default_context(
                cafile=None if self.tls_ca is None else str(self.tls_ca)
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.tls_cert is not None:
                context.load_cert_chain(
                    str(self.tls_cert), None if self.tls_key is None else str(self.tls_key)
                )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise BrokerConfigError(
                f"TLS files for broker {self.address} are unusable (CA {self.tls_ca}, "
                f"certificate {self.tls_cert}, key {self.tls_key}): {exc}; check that they are "
                "PEM files and that the key belongs to the certificate"
            ) from exc
        return context


@dataclass(slots=True)
class LinkState:
    """What the link to the broker is doing, for status pages and tests."""

    broker: str
    connected: bool = False
    connects: int = 0  # successful connections so far
    failures: int = 0  # failed attempts and lost connections so far
    outages: int = 0
    last_error: str | None = None  # the explanation logged, with what to check
    last_error_kind: str | None = None  # auth, tls, unreachable, timeout, lost, refused, other
    down_since: float | None = None  # clock.monotonic() when the current outage began


# Failures that configuration, not waiting, fixes: logged as errors, retried slowly.
_CONFIG_KINDS: Final = frozenset({"auth", "tls", "refused"})


def describe_failure(exc: BaseException, settings: BrokerSettings) -> tuple[str, str]:
    """(kind, explanation) of a failed or lost connection: what happened and what to check."""
    address = settings.address
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if isinstance(exc, MqttConnectError):
        code = getattr(exc.rc, "value", exc.rc)
        if code in (4, 5, 134, 135):  # 3.1.1 CONNACK 4/5 as v5 reason codes 134/135
            who = (
                f"user {settings.username!r}"
                if settings.username is not None
                else "an anonymous client (no username configured)"
            )
            return "auth", (
                f"broker {address} refused the credentials of {who} ({text}): check the "
                "username and password in this configuration and the broker's password_file "
                "and ACL; retrying slowly"
            )
        return "refused", (
            f"broker {address} refused the connection ({text}): check the client id, the "
            "protocol version and the broker's log"
        )
    if isinstance(exc, TimeoutError):
        return "timeout", (
            f"broker {address} did not answer in time ({text}): the link is too slow or the "
            "broker hangs; reconnecting"
        )
    if "SSL" in text or "CERTIFICATE" in text.upper():
        return "tls", (
            f"TLS with broker {address} failed ({text}): check that tls_ca is the CA that "
            f"signed the broker's certificate, that the certificate names {settings.host!r}, "
            "the client certificate and key if the broker wants one, and the clocks"
        )
    if "Operation timed out" in text:
        hint = (
            "a TLS port without tls configured?"
            if not settings.uses_tls
            else "the network or the broker is slow"
        )
        return "timeout", (
            f"broker {address} accepted the TCP connection but did not complete the MQTT "
            f"handshake within {settings.connect_timeout_s} s: check that the port is the "
            f"broker's MQTT port ({hint})"
        )
    if "Disconnected during message iteration" in text or "Unexpected disconnection" in text:
        detail = f": {cause}" if cause is not None else ""
        return "lost", (
            f"lost the connection to broker {address}{detail}: the broker stopped or the "
            "network dropped; reconnecting"
        )
    if any(
        s in text
        for s in ("Connection refused", "reset by peer", "No route", "unreachable", "Errno")
    ):
        return "unreachable", (
            f"cannot reach broker {address} ({text}): check that the broker runs, the host "
            "and port, the network and firewalls; reconnecting"
        )
    return "other", f"MQTT with broker {address} failed ({type(exc).__name__}: {text})"


class _QuietLogger(logging.Logger):
    """paho's and aiomqtt's own messages, all at DEBUG: the link watch reports outages once."""

    def _log(self, level: int, *args: Any, **kwargs: Any) -> None:
        super()._log(logging.DEBUG, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        return super().isEnabledFor(logging.DEBUG)


def library_logger(name: str) -> logging.Logger:
    quiet = _QuietLogger(f"{name}.paho")
    quiet.parent = logging.getLogger(name)
    return quiet


class LinkWatch:
    """Backoff between attempts, and an outage logged once, with its end logged once.

    The delays are :meth:`BrokerSettings.backoff`: doubling from
    ``reconnect_min_s`` to ``reconnect_max_s``, each scaled by a seeded random
    factor in [0.75, 1]; failures that need a person (credentials, TLS, a
    refusal) wait the maximum at once.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        clock: Clock,
        who: str,
        logger: logging.Logger,
        seed: str = "",
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.who = who
        self.log = logger
        self.state = LinkState(broker=settings.address)
        self.backoff = settings.backoff()
        self._attempt = 0
        # Jitter spreads a fleet's reconnects after a broker restart; seeded: repeatable.
        self._rng = random.Random(f"{who}/{seed}")

    def up(self) -> None:
        st = self.state
        if st.down_since is not None:
            self.log.info(
                "%s: connected to broker %s again after %.1f s (%d failed attempts)",
                self.who,
                st.broker,
                self.clock.monotonic() - st.down_since,
                self._attempt,
            )
        else:
            self.log.info("%s: connected to broker %s", self.who, st.broker)
        st.connected = True
        st.connects += 1
        st.down_since = None
        self._attempt = 0

    def down(self, exc: BaseException, explanation: tuple[str, str] | None = None) -> float:
        """Note a failure and return the delay before the next attempt.

        Logged when it starts an outage, or when it turns into one that needs a
        person (credentials, TLS, refused); every other attempt only at DEBUG.
        """
        kind, text = explanation or describe_failure(exc, self.settings)
        st = self.state
        st.connected = False
        st.failures += 1
        level = logging.ERROR if kind in _CONFIG_KINDS else logging.WARNING
        if st.down_since is None:
            st.down_since = self.clock.monotonic()
            st.outages += 1
            self.log.log(level, "%s: %s", self.who, text)
        elif kind != st.last_error_kind and kind in _CONFIG_KINDS:
            # Lost, then unreachable, is every restart; a password refused needs a person.
            self.log.log(level, "%s: still no connection: %s", self.who, text)
        else:
            self.log.debug("%s: attempt %d failed: %s", self.who, self._attempt + 1, text)
        st.last_error, st.last_error_kind = text, kind
        self._attempt += 1
        return self._delay(kind)

    def _delay(self, kind: str) -> float:
        backoff = self.backoff
        # Waiting will not fix a password: do not hammer the broker.
        base = backoff.max_s if kind in _CONFIG_KINDS else backoff.base(self._attempt - 1)
        return backoff.jittered(base, self._rng)


def nmea_payload(payload: bytes) -> bytes:
    """Complete the last line: an MQTT message carries whole NMEA lines."""
    return payload if payload.endswith((b"\n", b"\r")) else payload + b"\r\n"


class MqttFixSource:
    """Fixes of the vehicles on ``vehicles`` from the broker; an AsyncIterable[Fix].

    Iterate it once (the iteration owns the connection). Counters:

    * :attr:`received` counts messages by topic kind (``other`` for a topic
      outside the layout), :attr:`accepted` the messages used (an NMEA
      message is used when it reaches its vehicle's decoder).
    * :attr:`dropped` (by reason) and :attr:`dropped_by_vehicle` (vehicle ->
      reason -> count) count what the source dropped, under the reasons of
      gps/position_json.DROP_REASONS and SOURCE_DROP_REASONS; unknown
      vehicles are counted by the name they claim (the first
      MAX_UNKNOWN_VEHICLES of them, the rest together). Every message is
      used or dropped once: ``received == accepted + dropped`` when the
      FIX_DROP_REASONS (which count NMEA fixes) are left out.
    * NMEA sentences that make no fix are counted by that vehicle's decoder,
      in :attr:`nmea_dropped`, as gps/nmea.py does for a serial line.

    ``on_status`` is called (synchronously, in the iterating task) with each
    accepted status or link message; the latest are in :attr:`status` and
    :attr:`online`. ``client_id`` with ``persistent_session`` keeps the
    subscriptions (and QoS 1 messages queued meanwhile) at the broker while
    this source is disconnected; without it, what is sent during an outage of
    this source is lost, which for positions is mostly what one wants.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        vehicles: Iterable[str],
        clock: Clock,
        *,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        persistent_session: bool = False,
        max_age_s: float = 60.0,
        max_future_s: float = 5.0,
        on_status: Callable[[VehicleStatus], None] | None = None,
    ) -> None:
        self.vehicles = frozenset(vehicles)
        for vehicle in sorted(self.vehicles):
            problem = check_vehicle_id(vehicle)
            if problem:
                raise BrokerConfigError(f"MQTT source allow-list: {problem}")
        prefix = prefix.strip("/")
        if not prefix or any(c in prefix for c in "+#") or "//" in prefix:
            raise BrokerConfigError(
                f"MQTT topic prefix {prefix!r} must be non-empty, without '+', '#' or '//'"
            )
        if persistent_session and client_id is None:
            raise BrokerConfigError(
                "a persistent MQTT session needs a fixed client_id: set one, unique per daemon"
            )
        self.broker = broker
        self.clock = clock
        self.prefix = prefix
        self.client_id = client_id
        self.persistent_session = persistent_session
        self.on_status = on_status
        self.reader = PositionReader(clock, max_age_s=max_age_s, max_future_s=max_future_s)
        self.received: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.dropped_by_vehicle: dict[str, Counter[str]] = {}
        self.status: dict[str, StatusMessage] = {}
        self.online: dict[str, bool] = {}
        self.nmea: dict[str, NmeaDecoder] = {}
        self._tls = broker.tls_context()  # config errors now, not at the first connect
        self._watch = LinkWatch(broker, clock, "MQTT position source", log, seed=client_id or "")
        self._logged: set[tuple[str, str]] = set()
        self._kinds = {k.value: k for k in TopicKind}

    @property
    def link(self) -> LinkState:
        return self._watch.state

    @property
    def subscriptions(self) -> list[str]:
        return [topic_for(self.prefix, "+", kind) for kind in TopicKind]

    @property
    def nmea_dropped(self) -> Mapping[str, Counter[str]]:
        return {vehicle: decoder.dropped for vehicle, decoder in self.nmea.items()}

    def __aiter__(self) -> AsyncIterator[Fix]:
        return self._fixes()

    async def _fixes(self) -> AsyncIterator[Fix]:
        closing = False
        while True:
            delay = self.broker.reconnect_min_s
            try:
                async with self._client() as client:
                    await self._subscribe(client)
                    self._watch.up()
                    async for message in client.messages:
                        for fix in self.handle(message.topic.value, message.payload):
                            try:
                                yield fix
                            except GeneratorExit:
                                closing = True
                                raise
            except aiomqtt.MqttError as exc:
                if closing:  # the consumer closed us and the goodbye to the broker failed
                    return
                delay = self._watch.down(exc)
            await self.clock.sleep(delay)

    def _client(self) -> aiomqtt.Client:
        b = self.broker
        client = aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=self.client_id,
            clean_session=not self.persistent_session,
            keepalive=b.keepalive_s,
            timeout=b.connect_timeout_s,
            tls_context=self._tls,
            logger=library_logger(__name__),
        )
        return client

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topics = self.subscriptions
        granted = await client.subscribe([(t, 1) for t in topics])
        refused = [
            t for t, rc in zip(topics, granted, strict=False) if getattr(rc, "is_failure", False)
        ]
        if refused:
            log.error(
                "broker %s refused the subscriptions %s for user %r: check the broker's ACL "
                "(the daemon needs read access to %s/#)",
                self.broker.address,
                refused,
                self.broker.username,
                self.prefix,
            )

    # -- one message, no I/O ---------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> list[Fix]:
        """What one message yields: its fixes; everything else is counted. Never raises."""
        parsed = self._parse_topic(topic)
        if parsed is None:
            self.received["other"] += 1
            self._drop(_NO_VEHICLE, Rejected("bad_topic", f"topic {topic[:120]!r}"))
            return []
        vehicle, kind = parsed
        self.received[kind.value] += 1
        if vehicle not in self.vehicles:
            self._drop(vehicle, Rejected("unknown_vehicle", f"on {topic[:120]!r}"))
            return []
        if kind is TopicKind.POSITION:
            msg = self.reader.position(payload, vehicle)
            if isinstance(msg, Rejected):
                self._drop(vehicle, msg)
                return []
            self.accepted[kind.value] += 1
            return [msg.to_fix(topic)]
        if kind is TopicKind.NMEA:
            return self._nmea(vehicle, topic, payload)
        if kind is TopicKind.STATUS:
            status = self.reader.status(payload, vehicle)
            if isinstance(status, Rejected):
                self._drop(vehicle, status)
                return []
            self.accepted[kind.value] += 1
            self.status[vehicle] = status
            self._notify(status)
            return []
        link = self.reader.link(payload, vehicle)
        if isinstance(link, Rejected):
            self._drop(vehicle, link)
            return []
        self.accepted[kind.value] += 1
        self.online[vehicle] = link.online
        self._notify(link)
        return []

    def _nmea(self, vehicle: str, topic: str, payload: bytes) -> list[Fix]:
        if len(payload) > MAX_NMEA_PAYLOAD:
            self._drop(vehicle, Rejected("too_large", f"{len(payload)} bytes of NMEA"))
            return []
        decoder = self.nmea.get(vehicle)
        if decoder is None:
            # Today's date lets GGA-only streams (no RMC, no date) be used at once.
            today = dt.datetime.fromtimestamp(self.clock.now(), dt.UTC).date()
            decoder = self.nmea[vehicle] = NmeaDecoder(vehicle, topic, date_hint=today)
        self.accepted[TopicKind.NMEA.value] += 1
        fixes = []
        for fix in decoder.feed(nmea_payload(payload)):
            late = self.reader.freshness(fix.time)
            if late is not None:
                self._drop(vehicle, Rejected(f"nmea_{late.reason}", late.detail))
            else:
                fixes.append(fix)
        return fixes

    def _notify(self, msg: VehicleStatus) -> None:
        if self.on_status is not None:
            self.on_status(msg)

    def _parse_topic(self, topic: str) -> tuple[str, TopicKind] | None:
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not parts[0]:
            return None
        kind = self._kinds.get(parts[1])
        return None if kind is None else (parts[0], kind)

    def _drop(self, vehicle: str, why: Rejected) -> None:
        key = vehicle
        if vehicle not in self.vehicles and vehicle not in self.dropped_by_vehicle:
            unknown = len(self.dropped_by_vehicle.keys() - self.vehicles)
            key = vehicle[:64] if unknown < MAX_UNKNOWN_VEHICLES else _OTHER_VEHICLES
        self.dropped[why.reason] += 1
        self.dropped_by_vehicle.setdefault(key, Counter())[why.reason] += 1
        first = (key, why.reason) not in self._logged
        if first and len(self._logged) < 10_000:
            self._logged.add((key, why.reason))
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "MQTT message of vehicle %r dropped: %s (%s)%s",
            key,
            why.reason,
            why.detail,
            "; further drops of this kind are counted, not logged" if first else "",
        )
