"""The onboard forwarder: the engine's fixes and emergency status to the central broker.

It takes the fixes of the engine's receiver (any ``AsyncIterable[Fix]``: the
serial or gpsd source) and its emergency status (an async iterator of bool,
or a fixed value from the configuration), and publishes them with the
engine's own credentials, normally over TLS, in the layout of gps/mqtt.py:

* each valid fix as a JSON position (gps/position_json.py), QoS 1, with a
  sequence number counting up from 0;
* the status, retained, QoS 1, when it changes and again on every connection,
  with its own sequence number counting up from 0 at each start (the centre
  orders statuses by it and by arrival, never by this unit's clock, which may
  step);
* ``online`` on the link topic (retained) on every connection, ``offline`` when
  it stops; the same ``offline`` is the MQTT last will, which the broker sends
  when the engine vanishes without saying goodbye.

While the link is down, positions wait in a bounded store-and-forward buffer:
when it is full the oldest position is dropped (counted as
``buffer_overflow``), because the newest are the ones the planner needs.
When the link comes back the buffer is sent in order, a window of positions
in flight at a time; a position leaves the buffer only when the broker has
acknowledged it. A connection that breaks with positions in flight sends them
again on the next one, so the central side can see one twice: it drops such
duplicates by their sequence number.

Invalid fixes (the rules of gps/nmea.py) are dropped and counted by reason in
:attr:`OnboardForwarder.dropped`, never sent. Outages are logged once, with the
broker's address and what to check (gps/mqtt.py :class:`~gps.mqtt.LinkWatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, deque
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiomqtt

from gps.mqtt import (
    DEFAULT_PREFIX,
    BrokerConfigError,
    BrokerSettings,
    LinkState,
    LinkWatch,
    TopicKind,
    library_logger,
    topic_for,
)
from gps.position_json import (
    LinkMessage,
    PositionMessage,
    StatusMessage,
    StatusSource,
    check_vehicle_id,
    fix_problem,
)
from preemption.kernel.clock import Clock
from preemption.kernel.model import Fix

__all__ = ["FORWARDER_DROP_REASONS", "OnboardForwarder", "OnboardSettings", "run_onboard"]

log = logging.getLogger(__name__)

WINDOW: Final = 20  # positions in flight at once (paho's default max_inflight_messages)
GOODBYE_TIMEOUT_S: Final = 2.0  # for the offline message on the way out

FORWARDER_DROP_REASONS: Final = frozenset(
    {
        "buffer_overflow",  # the buffer was full: the oldest position was dropped
        "undelivered",  # still buffered when the forwarder stopped (drain timeout)
        # ... and the validity reasons of gps/position_json.fix_problem:
        "impossible_time",
        "impossible_coordinates",
        "impossible_speed",
        "impossible_value",
        "no_fix",
        "wrong_schema",
    }
)


@dataclass(frozen=True, slots=True)
class OnboardSettings:
    """The engine's connection to the central broker.

    TLS is on when ``tls_ca`` is given (or ``tls`` is true: the system CAs).
    ``buffer_size`` positions are kept while the link is down (600: ten
    minutes at 1 Hz). When the fixes end, the forwarder keeps trying to
    deliver what is buffered for ``drain_timeout_s``, then stops.
    """

    host: str
    port: int
    vehicle: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    topic_prefix: str = DEFAULT_PREFIX
    buffer_size: int = 600
    keepalive_s: int = 30
    tls: bool = False
    status_source: StatusSource = StatusSource.BLUE_LIGHTS  # of an iterated status
    publish_timeout_s: float = 10.0
    drain_timeout_s: float = 30.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        problem = check_vehicle_id(self.vehicle)
        if problem:
            raise BrokerConfigError(f"onboard settings: {problem}")
        prefix = self.topic_prefix
        if not prefix or prefix != prefix.strip("/") or any(c in prefix for c in "+#"):
            raise BrokerConfigError(
                f"onboard settings: topic prefix {prefix!r} must be non-empty, without '+', "
                "'#' or a leading/trailing '/'"
            )
        if self.buffer_size < 1:
            raise BrokerConfigError(
                f"onboard settings: buffer_size {self.buffer_size!r} must be at least 1"
            )
        if not (self.publish_timeout_s > 0 and self.drain_timeout_s >= 0):
            raise BrokerConfigError(
                f"onboard settings: publish_timeout_s {self.publish_timeout_s!r} must be > 0 "
                f"and drain_timeout_s {self.drain_timeout_s!r} >= 0"
            )
        self.broker()  # validates the rest

    def broker(self) -> BrokerSettings:
        return BrokerSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            tls=self.tls,
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            keepalive_s=self.keepalive_s,
            connect_timeout_s=self.publish_timeout_s,
            reconnect_min_s=self.reconnect_min_s,
            reconnect_max_s=self.reconnect_max_s,
        )


@dataclass(frozen=True, slots=True)
class _Outgoing:
    seq: int
    payload: bytes


class OnboardForwarder:
    """The forwarder's state and counters; :meth:`run` does the work (once)."""

    def __init__(self, settings: OnboardSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.broker = settings.broker()
        self._tls = self.broker.tls_context()  # config errors now, not at the first connect
        self.dropped: Counter[str] = Counter()
        self.queued = 0  # valid fixes taken into the buffer
        self.sent = 0  # positions acknowledged by the broker
        self.status: StatusMessage | None = None  # the latest status
        self._status_sent: StatusMessage | None = None  # acknowledged on this connection
        self._outbox: deque[_Outgoing] = deque()
        self._seq = -1
        self._status_seq = -1  # counts statuses from 0 at each start, as _seq counts positions
        self._wake = asyncio.Event()
        self._fixes_done = False
        self._fixes_ended = asyncio.Event()  # cuts a reconnect pause short: start draining
        self._drain_deadline = math.inf
        self._overflow_logged = False
        self._relabel_logged = False
        vehicle, prefix = settings.vehicle, settings.topic_prefix
        self.position_topic = topic_for(prefix, vehicle, TopicKind.POSITION)
        self.status_topic = topic_for(prefix, vehicle, TopicKind.STATUS)
        self.link_topic = topic_for(prefix, vehicle, TopicKind.LINK)
        self._library_log = library_logger(__name__)
        self._watch = LinkWatch(
            self.broker, clock, f"onboard {vehicle}", log, seed=vehicle, library=self._library_log
        )

    @property
    def link(self) -> LinkState:
        return self._watch.state

    @property
    def buffered(self) -> int:
        """Positions not yet acknowledged by the broker (not counting a batch in flight)."""
        return len(self._outbox)

    async def run(self, fixes: AsyncIterable[Fix], status: AsyncIterable[bool] | bool) -> None:
        """Forward until ``fixes`` ends and the buffer is delivered (or drain_timeout_s passes).

        Raises what ``fixes`` or ``status`` raise; never raises for the link.
        """
        if isinstance(status, bool):
            self._set_status(status, StatusSource.CONFIG)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_fixes(fixes))
                watcher = None
                if not isinstance(status, bool):
                    watcher = tg.create_task(self._read_status(status))
                await self._link()
                if watcher is not None:
                    watcher.cancel()
        except BaseExceptionGroup as group:
            # One input failed: raise its own exception rather than the group around it.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise

    # -- inputs ------------------------------------------------------------------

    async def _read_fixes(self, fixes: AsyncIterable[Fix]) -> None:
        async for fix in fixes:
            self.take(fix)
        self._fixes_done = True
        self._fixes_ended.set()
        self._drain_deadline = self.clock.monotonic() + self.settings.drain_timeout_s
        self._wake.set()

    async def _read_status(self, status: AsyncIterable[bool]) -> None:
        async for on in status:
            self._set_status(bool(on), self.settings.status_source)

    def take(self, fix: Fix) -> None:
        """Check one fix and put it in the buffer (or count why not); no I/O."""
        problem = fix_problem(fix)
        if problem is not None:
            first = self.dropped[problem.reason] == 0
            self.dropped[problem.reason] += 1
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "onboard %s: fix dropped, not sent: %s (%s)%s",
                self.settings.vehicle,
                problem.reason,
                problem.detail,
                "; further ones are counted, not logged" if first else "",
            )
            return
        if fix.vehicle != self.settings.vehicle and not self._relabel_logged:
            self._relabel_logged = True
            log.warning(
                "onboard %s: the receiver's fixes are labelled %r; they are sent as %r (the "
                "vehicle of this unit): align the receiver source's vehicle name",
                self.settings.vehicle,
                fix.vehicle,
                self.settings.vehicle,
            )
        self._seq += 1
        msg = PositionMessage.from_fix(fix, self._seq, vehicle=self.settings.vehicle)
        if len(self._outbox) >= self.settings.buffer_size:
            self._outbox.popleft()
            self._overflow()
        self._outbox.append(_Outgoing(self._seq, msg.encode()))
        self.queued += 1
        self._wake.set()

    def _overflow(self) -> None:
        self.dropped["buffer_overflow"] += 1
        if not self._overflow_logged:
            self._overflow_logged = True
            log.warning(
                "onboard %s: store-and-forward buffer full (%d positions) while the link to %s "
                "is down: dropping the oldest positions; raise buffer_size to keep more",
                self.settings.vehicle,
                self.settings.buffer_size,
                self.broker.address,
            )

    def _set_status(self, on: bool, source: StatusSource) -> None:
        if self.status is None or self.status.emergency != on:
            self._status_seq += 1
            self.status = StatusMessage(
                self.settings.vehicle, self.clock.now(), on, source, seq=self._status_seq
            )
            self._wake.set()

    # -- the link ------------------------------------------------------------------

    async def _link(self) -> None:
        while True:
            if self._fixes_done and self.clock.monotonic() >= self._drain_deadline:
                self._give_up()
                return
            failure: BaseException | None = None
            try:
                async with self._client() as client:
                    client.pending_calls_threshold = WINDOW + 5
                    self._watch.up()
                    self._status_sent = None  # the retained status again on each connection
                    self._overflow_logged = False
                    if self._outbox:
                        log.info(
                            "onboard %s: sending %d buffered positions",
                            self.settings.vehicle,
                            len(self._outbox),
                        )
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:
                        await self._goodbye(client)
                        raise
                    await self._goodbye(client)
                    return
            except* (aiomqtt.MqttError, TimeoutError) as group:
                failure = group.exceptions[0]
                while isinstance(failure, BaseExceptionGroup):
                    failure = failure.exceptions[0]
            assert failure is not None
            delay = self._watch.down(failure, self._explain(failure))
            if self._fixes_done:
                delay = min(delay, max(0.0, self._drain_deadline - self.clock.monotonic()))
                await self.clock.sleep(delay)
            else:
                await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Wait before the next attempt, but no longer once the fixes end (a stop).

        A long pause would otherwise hold up a stop for up to reconnect_max_s;
        the drain that follows has its own deadline.
        """
        pause = asyncio.ensure_future(self.clock.sleep(delay))
        ended = asyncio.ensure_future(self._fixes_ended.wait())
        try:
            await asyncio.wait({pause, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (pause, ended):
                waiter.cancel()
            await asyncio.gather(pause, ended, return_exceptions=True)

    def _explain(self, failure: BaseException) -> tuple[str, str] | None:
        if isinstance(failure, TimeoutError):
            return "timeout", (
                f"broker {self.broker.address} did not acknowledge a publish within "
                f"publish_timeout_s={self.settings.publish_timeout_s} s: the link is too slow "
                "or the broker hangs; reconnecting, unacknowledged positions stay buffered"
            )
        return None  # describe_failure's explanation

    def _client(self) -> aiomqtt.Client:
        b = self.broker
        offline = LinkMessage(self.settings.vehicle, online=False, time=None)
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=f"onboard-{self.settings.vehicle}",
            clean_session=True,  # the buffer here is the store-and-forward, not the broker
            keepalive=b.keepalive_s,
            timeout=b.connect_timeout_s,
            tls_context=self._tls,
            will=aiomqtt.Will(self.link_topic, offline.encode(), qos=1, retain=True),
            max_inflight_messages=WINDOW,
            logger=self._library_log,
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: online, status, positions, until finished or the link breaks."""
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(_until_disconnected(client))
            online = LinkMessage(self.settings.vehicle, online=True, time=self.clock.now())
            await self._publish(client, self.link_topic, online.encode(), retain=True)
            await self._send(client)
            watcher.cancel()

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            status = self.status
            if status is not None and status != self._status_sent:
                await self._publish(client, self.status_topic, status.encode(), retain=True)
                self._status_sent = status
            elif self._outbox:
                await self._send_batch(client)
            elif self._fixes_done:
                return
            else:
                await self._wake.wait()

    async def _send_batch(self, client: aiomqtt.Client) -> None:
        batch = [self._outbox.popleft() for _ in range(min(WINDOW, len(self._outbox)))]
        acked: set[int] = set()

        async def one(item: _Outgoing) -> None:
            await client.publish(self.position_topic, item.payload, qos=1, timeout=math.inf)
            acked.add(item.seq)

        try:
            async with asyncio.timeout(self.settings.publish_timeout_s), asyncio.TaskGroup() as tg:
                for item in batch:  # tasks start in this order: paho sends in this order
                    tg.create_task(one(item))
        finally:
            self.sent += len(acked)
            self._requeue([item for item in batch if item.seq not in acked])

    def _requeue(self, items: list[_Outgoing]) -> None:
        """Unacknowledged positions back to the front, the oldest dropped if there is no room."""
        for item in reversed(items):
            if len(self._outbox) < self.settings.buffer_size:
                self._outbox.appendleft(item)
            else:
                self._overflow()

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, *, retain: bool
    ) -> None:
        async with asyncio.timeout(self.settings.publish_timeout_s):
            await client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Say offline before a clean disconnect (which, unlike a lost link, sends no will)."""
        offline = LinkMessage(self.settings.vehicle, online=False, time=self.clock.now())
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await client.publish(self.link_topic, offline.encode(), qos=1, retain=True)

    def _give_up(self) -> None:
        left = len(self._outbox)
        if left:
            self.dropped["undelivered"] += left
            log.warning(
                "onboard %s: stopping with %d positions undelivered: the link to %s did not "
                "come back within drain_timeout_s=%s (%s)",
                self.settings.vehicle,
                left,
                self.broker.address,
                self.settings.drain_timeout_s,
                self.link.last_error,
            )
            self._outbox.clear()


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Raises MqttError when the connection drops (nothing is subscribed: no messages come)."""
    async for _ in client.messages:
        pass


async def run_onboard(
    config: OnboardSettings,
    fixes: AsyncIterable[Fix],
    status: AsyncIterable[bool] | bool,
    clock: Clock,
) -> None:
    """Forward ``fixes`` and ``status`` to the central broker until the fixes end.

    ``status`` is the emergency status: an async iterator of bool (blue lights,
    dispatch) or a fixed value from the configuration.
    """
    await OnboardForwarder(config, clock).run(fixes, status)
