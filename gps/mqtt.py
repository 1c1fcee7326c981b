"""Positions of the fleet from an MQTT broker (the central side), and the link helpers.

Topic layout, under a prefix (default ``preemption/v1/vehicles``), one level
per vehicle id::

    <prefix>/<vehicle>/position   JSON position (gps/position_json.py), QoS 1
    <prefix>/<vehicle>/nmea       raw NMEA: one or more complete lines per message, QoS 1
    <prefix>/<vehicle>/status     JSON emergency status, retained, QoS 1
    <prefix>/<vehicle>/link       JSON online/offline, retained, QoS 1 (offline = last will)

Beside these, the broker carries ``preemption/v1/dispatch/#`` (the dispatch
system), ``preemption/v1/operators/<operator>/command`` and ``.../reply``,
``preemption/v1/status/#`` and ``preemption/v1/requests/#`` (the daemon); who
may write and read each is config/mosquitto/acl. With that ACL an engine (MQTT
user name = vehicle id) can write only its own four topics.

:class:`MqttFixSource` subscribes to all four with a ``+`` wildcard, so that a
vehicle not on its allow-list is seen, dropped and counted
(``unknown_vehicle``) instead of silently ignored by the broker. It is an
``AsyncIterable[Fix]`` like every GPS source; status and link messages go to
an ``on_status`` callback and into :attr:`MqttFixSource.status` /
:attr:`MqttFixSource.online`. Nothing a publisher sends makes it raise: every
message is either used or counted under a reason, per vehicle.

A flood from one vehicle's credentials (a broken unit, stolen credentials)
must not starve the others: every message of a vehicle first passes that
vehicle's arrival cap (``rate_limited``: a token bucket on this clock, large
enough for a whole store-and-forward backlog at once, then twice
``max_rate_hz`` a second), which drops a flood before any decoding; positions
then pass a limit on their own fix times (``too_frequent``: no more than
``max_rate_hz`` fixes per second of fix time), which a backlog meets however
fast it arrives. A status "off" or a link "offline" that ends a vehicle's run
is never dropped by the cap.

The broker may go away at any time: the source reconnects with exponential
backoff (gps/backoff.py, with jitter) on the Clock, subscribes again, and logs
an outage once (broker address, what failed, what to check) and its end once.

The helpers for the link (:class:`BrokerSettings`, TLS, :func:`describe_failure`,
:class:`LinkState`) are shared with the onboard forwarder (gps/onboard.py).
:func:`insecurities` says in words what a configuration leaves open, and
:func:`accepts_anonymous` asks a broker whether it lets anybody in.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
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
    DEFAULT_MAX_RATE_HZ,
    LinkMessage,
    PositionReader,
    Rejected,
    StatusMessage,
    check_vehicle_id,
    decode_link,
    decode_status,
)
from preemption.kernel.clock import Clock
from preemption.kernel.errors import InputError
from preemption.kernel.model import Fix

__all__ = [
    "DEFAULT_ARRIVAL_BURST",
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
    "accepts_anonymous",
    "describe_failure",
    "insecurities",
    "library_logger",
    "topic_for",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "preemption/v1/vehicles"
MAX_NMEA_PAYLOAD: Final = 16 * 1024  # one epoch is a few hundred bytes
MAX_UNKNOWN_VEHICLES: Final = 100  # distinct unknown names counted by name; the rest as one
# The arrival cap of one vehicle: this many messages at once, then ARRIVAL_RATE_FACTOR x
# max_rate_hz a second. An onboard unit drains its store-and-forward buffer (600
# positions by default, gps/onboard.py) as fast as the broker takes them when its link
# comes back; the cap must let all of that through, with room for a second outage soon
# after. A flood beyond it is dropped before it is decoded.
DEFAULT_ARRIVAL_BURST: Final = 1500
ARRIVAL_RATE_FACTOR: Final = 2.0

# Reasons the source itself adds to those of gps/position_json.DROP_REASONS.
SOURCE_DROP_REASONS: Final = frozenset(
    {
        "bad_topic",  # not <prefix>/<vehicle>/<kind> with a known kind
        "unknown_vehicle",  # vehicle not on the allow-list
        "rate_limited",  # beyond the vehicle's arrival cap (a flood), dropped undecoded
        # These count NMEA fixes, not messages: one message may carry several.
        "nmea_too_old",  # a fix decoded from NMEA older than max_age_s
        "nmea_from_future",  # a fix decoded from NMEA later than now plus max_future_s
        "nmea_too_frequent",  # a fix decoded from NMEA closer than 1/max_rate_hz to the last
    }
)
FIX_DROP_REASONS: Final = frozenset({"nmea_too_old", "nmea_from_future", "nmea_too_frequent"})
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
    def verifies_broker(self) -> bool:
        """True when TLS checks the broker's certificate and name (tls_ca or the system CAs).

        Without it anyone on the path can pose as the broker and read or change
        what goes over the link.
        """
        return self.uses_tls

    @property
    def authenticates_client(self) -> bool:
        """True when this client proves who it is: a user name with a password, or a
        client certificate over TLS.

        Without it the broker cannot tell this client from anybody else.
        """
        has_password = self.username is not None and self.password is not None
        return has_password or (self.uses_tls and self.tls_cert is not None)

    @property
    def secure(self) -> bool:
        """Both: the broker is verified and the client authenticated (see :func:`insecurities`)."""
        return self.verifies_broker and self.authenticates_client

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port} ({'TLS' if self.uses_tls else 'plain TCP'})"

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context (reads the files now), or None without TLS; BrokerConfigError if bad."""
        return self._tls_context(client_certificate=True)

    def _tls_context(self, *, client_certificate: bool) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        cert = self.tls_cert if client_certificate else None
        key = self.tls_key if client_certificate else None
        for what, path in (("CA", self.tls_ca), ("client certificate", cert)):
            if path is not None and not Path(path).is_file():
                raise BrokerConfigError(
                    f"TLS {what} file {path} for broker {self.address} does not exist or is not "
                    "a file: fix the path in the configuration"
                )
        if key is not None and not Path(key).is_file():
            raise BrokerConfigError(
                f"TLS client key file {key} for broker {self.address} does not exist "
                "or is not a file: fix the path in the configuration"
            )
        try:
            context = ssl.create_default_context(
                cafile=None if self.tls_ca is None else str(self.tls_ca)
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert is not None:
                context.load_cert_chain(str(cert), None if key is None else str(key))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise BrokerConfigError(
                f"TLS files for broker {self.address} are unusable (CA {self.tls_ca}, "
                f"certificate {self.tls_cert}, key {self.tls_key}): {exc}; check that they are "
                "PEM files and that the key belongs to the certificate"
            ) from exc
        return context


def insecurities(settings: BrokerSettings) -> list[str]:
    """What these settings leave open, one sentence each (what, why it matters, what to do).

    Empty when the broker is verified by TLS and the client authenticated.
    """
    found = []
    if not settings.uses_tls:
        found.append(
            f"no TLS to broker {settings.address}: positions, status and credentials travel "
            "in clear, and anyone on the path can read or change them or pose as the broker; "
            "set tls_ca (or tls = true) and use the broker's TLS port (8883)"
        )
    if not settings.authenticates_client:
        if settings.username is not None:
            what = f"user {settings.username!r} has no password"
        else:
            what = "neither a user name and password nor a client certificate"
        found.append(
            f"no client credentials for broker {settings.address} ({what}): the broker cannot "
            "tell this client from anybody else, and a broker that lets it in lets anyone "
            "publish as a fire engine; set username and password, or a client certificate "
            "(tls_cert, tls_key)"
        )
    if settings.tls_cert is not None and not settings.uses_tls:
        found.append(
            f"a client certificate ({settings.tls_cert}) is configured but TLS is off, so it "
            "is not used: set tls_ca (or tls = true)"
        )
    return found


# MQTT 3.1.1 CONNACK return codes that mean "not with these credentials".
_CONNACK_REFUSED: Final = frozenset({4, 5})


async def accepts_anonymous(settings: BrokerSettings, timeout_s: float = 5.0) -> bool | None:
    """Whether the broker lets in a client with no credentials at all.

    Connects to ``settings.host:port`` with the same TLS settings (the same CA,
    the same check of the broker's certificate and name) but without user name,
    password or client certificate, sends an MQTT 3.1.1 CONNECT and reads the
    CONNACK. Publishes nothing and subscribes to nothing.

    * True: the broker accepted the connection; unless its ACL stops them
      (which this does not probe), anyone who can reach it can publish as a
      fire engine.
    * False: the broker refused: CONNACK "bad user name or password" / "not
      authorised", or it refused the TLS handshake (it wants a client
      certificate).
    * None: it could not tell: unreachable, no answer within ``timeout_s``,
      the broker's certificate not trusted by ``tls_ca`` (then nothing can be
      said about the broker behind it), a port that does not speak MQTT (or
      not TLS), another refusal.

    Raises only BrokerConfigError (an unusable CA file); never for the broker.
    """
    context = settings._tls_context(client_certificate=False)
    client_id = f"preemption-anonymous-probe-{os.getpid()}-{random.getrandbits(32):08x}"
    packet = _connect_packet(client_id, keepalive_s=10)
    what = f"anonymous probe of broker {settings.address}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                settings.host,
                settings.port,
                ssl=context,
                server_hostname=settings.host if context is not None else None,
            )
            if context is not None and await _speaks_first(reader, min(0.5, timeout_s / 4)):
                log.debug("%s: the broker spoke or closed before the CONNECT: cannot tell", what)
                return None
            writer.write(packet)
            await writer.drain()
            connack = await reader.readexactly(4)
            if connack[:2] == b"\x20\x02" and connack[3] == 0:
                writer.write(b"\xe0\x00")  # DISCONNECT: a clean goodbye
                await writer.drain()
    except TimeoutError:
        log.debug("%s: no answer within %s s", what, timeout_s)
        return None
    except ssl.SSLCertVerificationError as exc:
        log.debug("%s: the broker's certificate is not trusted (%s): cannot tell", what, exc)
        return None
    except ssl.SSLError as exc:
        # An alert from the broker during or right after the handshake (TLS 1.3 sends
        # "certificate required" then): it refuses a client without a certificate.
        refused = "ALERT" in str(exc).upper()
        log.debug("%s: TLS failed (%s): %s", what, exc, "refused" if refused else "cannot tell")
        return False if refused else None
    except (OSError, EOFError) as exc:  # refused, reset, closed before CONNACK (IncompleteRead)
        log.debug("%s: %s: cannot tell", what, exc or type(exc).__name__)
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
    if connack[:2] != b"\x20\x02":
        log.debug("%s: the answer %r is not a CONNACK: cannot tell", what, connack)
        return None
    code = connack[3]
    log.debug("%s: CONNACK return code %d", what, code)
    if code == 0:
        return True
    if code in _CONNACK_REFUSED:
        return False
    return None


async def _speaks_first(reader: asyncio.StreamReader, wait_s: float) -> bool:
    """Whether the broker sends (or closes) before the client's CONNECT; raises its TLS alert.

    Under TLS 1.3 the client's handshake ends before the broker has checked the
    client's (missing) certificate: the broker's refusal is an alert right
    after. Waiting for it before sending anything reads it as the refusal it is;
    a CONNECT sent into it makes the broker's close a reset, which would hide it.
    An MQTT broker never speaks first, so a quiet wait is the normal case.
    """
    try:
        async with asyncio.timeout(wait_s):
            await reader.read(1)
    except TimeoutError:
        return False
    return True


def _connect_packet(client_id: str, *, keepalive_s: int) -> bytes:
    """An MQTT 3.1.1 CONNECT: clean session, no will, no user name, no password."""
    ident = client_id.encode("utf-8")
    variable = b"\x00\x04MQTT\x04\x02" + keepalive_s.to_bytes(2, "big")
    payload = len(ident).to_bytes(2, "big") + ident
    remaining = len(variable) + len(payload)
    assert remaining < 128  # one length byte
    return bytes([0x10, remaining]) + variable + payload


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


def describe_failure(
    exc: BaseException, settings: BrokerSettings, library_said: str | None = None
) -> tuple[str, str]:
    """(kind, explanation) of a failed or lost connection: what happened and what to check.

    ``library_said`` is the last problem the MQTT library logged during the
    attempt (:attr:`_QuietLogger.last_problem`): under TLS 1.3 a broker that
    wants a client certificate says so only in an alert that paho logs, and
    the attempt itself just times out.
    """
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
    if "Operation timed out" in text and library_said and "ALERT" in library_said.upper():
        if "CERTIFICATE_REQUIRED" in library_said.upper():
            todo = (
                "set tls_cert and tls_key to this client's certificate (one signed by the CA "
                "the broker trusts for clients)"
                if settings.tls_cert is None
                else "check that tls_cert is signed by the CA the broker trusts for clients"
            )
            return "tls", (
                f"broker {address} wants a client certificate and refused the TLS connection "
                f"({library_said}): {todo}; retrying slowly"
            )
        return "tls", (
            f"broker {address} refused the TLS connection ({library_said}): check the client "
            "certificate and key, that the broker trusts their CA, and the clocks; retrying slowly"
        )
    if (
        "Operation timed out" in text
        and settings.uses_tls
        and settings.tls_cert is None
        and library_said
        and "reset by peer" in library_said
    ):
        # The same refusal when the broker's close overtook its alert.
        return "tls", (
            f"broker {address} closed the TLS connection before answering the MQTT login "
            f"({library_said}): if it wants a client certificate, set tls_cert and tls_key "
            "(one signed by the CA the broker trusts for clients); else see the broker's log"
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
    """paho's and aiomqtt's own messages, all at DEBUG: the link watch reports outages once.

    The last message the library meant as a warning or error is kept in
    :attr:`last_problem`, for the explanation of a failure (describe_failure).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.last_problem: str | None = None

    def _log(self, level: int, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING and args:
            msg, fmt_args = args[0], args[1] if len(args) > 1 else ()
            try:
                text = str(msg) % fmt_args if fmt_args else str(msg)
            except (TypeError, ValueError):
                text = str(msg)
            self.last_problem = text[:300]
        if super().isEnabledFor(logging.DEBUG):
            super()._log(logging.DEBUG, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        # Warnings are always formatted (for last_problem); the rest only when wanted.
        return level >= logging.WARNING or super().isEnabledFor(logging.DEBUG)


def library_logger(name: str) -> _QuietLogger:
    quiet = _QuietLogger(f"{name}.paho")
    quiet.parent = logging.getLogger(name)
    return quiet


class LinkWatch:
    """Backoff between attempts, and an outage logged once, with its end logged once.

    The delays are :meth:`BrokerSettings.backoff`: doubling from
    ``reconnect_min_s`` to ``reconnect_max_s``, each scaled by a seeded random
    factor in [0.75, 1]; failures that need a person (credentials, TLS, a
    refusal) wait the maximum at once. ``library`` is the logger given to the
    MQTT client (:func:`library_logger`): what it last complained about goes
    into the explanation of a failure.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        clock: Clock,
        who: str,
        logger: logging.Logger,
        seed: str = "",
        library: _QuietLogger | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.who = who
        self.log = logger
        self.library = library
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
        if self.library is not None:
            self.library.last_problem = None
        st.connected = True
        st.connects += 1
        st.down_since = None
        self._attempt = 0

    def down(self, exc: BaseException, explanation: tuple[str, str] | None = None) -> float:
        """Note a failure and return the delay before the next attempt.

        Logged when it starts an outage, or when it turns into one that needs a
        person (credentials, TLS, refused); every other attempt only at DEBUG.
        """
        said = None
        if self.library is not None:
            said, self.library.last_problem = self.library.last_problem, None
        kind, text = explanation or describe_failure(exc, self.settings, said)
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

    Rate limits, per allow-listed vehicle (a flood of one vehicle's
    credentials must starve neither the other vehicles nor the CPU):

    * the arrival cap, ``rate_limited``: a token bucket on the clock's
      monotonic time holding ``arrival_burst`` messages (default
      DEFAULT_ARRIVAL_BURST, more than an onboard unit's whole
      store-and-forward backlog), refilled at ARRIVAL_RATE_FACTOR x
      ``max_rate_hz`` a second. What is beyond it is dropped before it is
      decoded, which is what keeps a flood cheap. Exempt: a status "off" while
      the vehicle is on, and a link "offline" while it is online, which end a
      run and must never be lost (they are decoded to tell; once the vehicle
      is off, further ones are not exempt).
    * the fix-time limit, ``too_frequent`` (``nmea_too_frequent`` for NMEA):
      a fix less than ``1 / max_rate_hz`` of *fix time* after the vehicle's
      last accepted one. A backlog sent all at once keeps its fixes' spacing
      and passes; the newest of it reach the planner.

    The status order is gps/position_json.PositionReader.status: by arrival
    and sequence number, and an "off" is never dropped as out of order or
    from the future. Every dropped status is logged (statuses are rare); other
    drops once per vehicle and reason, then counted.

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
        max_rate_hz: float = DEFAULT_MAX_RATE_HZ,
        arrival_burst: int = DEFAULT_ARRIVAL_BURST,
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
        if not 0.0 < max_rate_hz < math.inf:
            raise BrokerConfigError(
                f"MQTT source: max_rate_hz {max_rate_hz!r} must be a finite number > 0"
            )
        if type(arrival_burst) is not int or arrival_burst < 1:
            raise BrokerConfigError(
                f"MQTT source: arrival_burst {arrival_burst!r} must be a whole number >= 1 "
                "(at least the onboard units' buffer_size)"
            )
        self.broker = broker
        self.clock = clock
        self.prefix = prefix
        self.client_id = client_id
        self.persistent_session = persistent_session
        self.on_status = on_status
        self.reader = PositionReader(
            clock, max_age_s=max_age_s, max_future_s=max_future_s, max_rate_hz=max_rate_hz
        )
        self.max_rate_hz = max_rate_hz
        self.arrival_burst = arrival_burst
        self.arrival_rate_hz = ARRIVAL_RATE_FACTOR * max_rate_hz
        self.received: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.dropped_by_vehicle: dict[str, Counter[str]] = {}
        self.status: dict[str, StatusMessage] = {}
        self.online: dict[str, bool] = {}
        self.nmea: dict[str, NmeaDecoder] = {}
        self._tls = broker.tls_context()  # config errors now, not at the first connect
        self._library_log = library_logger(__name__)
        self._watch = LinkWatch(
            broker,
            clock,
            "MQTT position source",
            log,
            seed=client_id or "",
            library=self._library_log,
        )
        self._logged: set[tuple[str, str]] = set()
        self._kinds = {k.value: k for k in TopicKind}
        self._buckets: dict[str, list[float]] = {}  # vehicle -> [tokens, monotonic of refill]
        self._rate_limited = {  # made once: a flood must cost as little as possible
            kind: Rejected(
                "rate_limited",
                f"{kind.value} beyond the arrival cap of {arrival_burst} messages at once and "
                f"{self.arrival_rate_hz:g} a second: a flood from this vehicle's credentials; "
                "check the unit, and whether its credentials leaked",
            )
            for kind in TopicKind
        }
        self._last_nmea_fix: dict[str, float] = {}  # vehicle -> time of the last NMEA fix used

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
            logger=self._library_log,
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
        if not self._admit(vehicle) and not self._ends_a_run(vehicle, kind, payload):
            self._drop(vehicle, self._rate_limited[kind])
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
                self._drop(vehicle, status, always=True)
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
            decoder = self.nmea[vehicle] = NmeaDecoder(
                vehicle, topic, date_hint=today, clock=self.clock
            )
        self.accepted[TopicKind.NMEA.value] += 1
        fixes = []
        for fix in decoder.feed(nmea_payload(payload)):
            late = self.reader.freshness(fix.time)
            if late is None:
                late = self.reader.spacing(fix.time, self._last_nmea_fix.get(vehicle))
            if late is not None:
                self._drop(vehicle, Rejected(f"nmea_{late.reason}", late.detail))
            else:
                self._last_nmea_fix[vehicle] = fix.time
                fixes.append(fix)
        return fixes

    def _admit(self, vehicle: str) -> bool:
        """One message of ``vehicle`` through its arrival cap (a token bucket), or not."""
        now = self.clock.monotonic()
        bucket = self._buckets.get(vehicle)
        if bucket is None:
            bucket = self._buckets[vehicle] = [float(self.arrival_burst), now]
        tokens = min(
            float(self.arrival_burst), bucket[0] + (now - bucket[1]) * self.arrival_rate_hz
        )
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _ends_a_run(self, vehicle: str, kind: TopicKind, payload: bytes) -> bool:
        """A status "off" while the vehicle is on, a link "offline" while it is online."""
        if kind is TopicKind.STATUS:
            current = self.status.get(vehicle)
            if current is None or not current.emergency:
                return False
            status = decode_status(payload, vehicle)
            return isinstance(status, StatusMessage) and not status.emergency
        if kind is TopicKind.LINK:
            if self.online.get(vehicle) is not True:
                return False
            link = decode_link(payload, vehicle)
            return isinstance(link, LinkMessage) and not link.online
        return False

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

    def _drop(self, vehicle: str, why: Rejected, *, always: bool = False) -> None:
        """Count a dropped message; log it the first time per vehicle and reason (or ``always``)."""
        key = vehicle
        if vehicle not in self.vehicles and vehicle not in self.dropped_by_vehicle:
            unknown = len(self.dropped_by_vehicle.keys() - self.vehicles)
            key = vehicle[:64] if unknown < MAX_UNKNOWN_VEHICLES else _OTHER_VEHICLES
        self.dropped[why.reason] += 1
        self.dropped_by_vehicle.setdefault(key, Counter())[why.reason] += 1
        if always:
            log.warning("MQTT status of vehicle %r dropped: %s (%s)", key, why.reason, why.detail)
            return
        first = (key, why.reason) not in self._logged
        if first and len(self._logged) < 10_000:
            self._logged.add((key, why.reason))
        if first:
            log.warning(
                "MQTT message of vehicle %r dropped: %s (%s); further drops of this kind are "
                "counted, not logged",
                key,
                why.reason,
                why.detail,
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("MQTT message of vehicle %r dropped: %s (%s)", key, why.reason, why.detail)
