"""The outages of a reconnecting source: counted, paced by backoff, logged once.

Shared by the serial receiver (:mod:`gps.serial`) and gpsd (:mod:`gps.gpsd`).
An outage starts with the first failure (a failed open or connect, a lost
line) and is logged once as a warning that names the peer, the reason and what
to check; later failures of the same outage are logged at DEBUG. It ends when
the peer delivers again (not when an open succeeds), logged once with its
length and the attempts it took; the backoff then starts again from its first
delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Generic, Protocol, TypeVar

from gps.backoff import Backoff
from preemption.kernel.clock import Clock
from preemption.kernel.model import Fix

__all__ = ["Closable", "Outage", "ReconnectingSource", "close_quietly", "describe"]

_CLOSE_TIMEOUT_S = 2.0


class Closable(Protocol):
    """The part of a stream writer the source needs: closing the port."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Outage:
    """Outage bookkeeping of one source; counters ``outages`` and ``reconnects``.

    ``name`` names the peer in every line (``GPS receiver /dev/ttyUSB0``),
    ``who`` also whose it is (``GPS receiver /dev/ttyUSB0 of vehicle FW1``);
    ``check`` ends the warning that starts an outage.
    """

    def __init__(
        self,
        clock: Clock,
        backoff: Backoff,
        log: logging.Logger,
        *,
        name: str,
        who: str,
        check: str,
    ) -> None:
        self.outages = 0  # outages started (the peer lost, or not reachable at first)
        self.reconnects = 0  # outages ended: the peer delivered again
        self.backoff = backoff
        self._clock = clock
        self._log = log
        self._name = name
        self._who = who
        self._check = check
        self._since: float | None = None  # clock.monotonic() when the outage began
        self._attempts = 0
        self._delays = backoff.delays()

    def lost(self, reason: str) -> float:
        """Start or continue an outage; the delay to wait before the next attempt."""
        self._attempts += 1
        if self._since is None:
            self._since = self._clock.monotonic()
            self.outages += 1
            self._log.warning(
                "%s: %s. Fixes stop until it is back; retrying with backoff up to %.0f s. %s",
                self._who,
                reason,
                self.backoff.max_s,
                self._check,
            )
        else:
            self._log.debug("%s still unavailable: %s", self._name, reason)
        return next(self._delays)

    def back(self) -> None:
        """The peer delivers again: end the outage, if any, and restart the backoff."""
        if self._since is not None:
            self.reconnects += 1
            self._log.info(
                "%s is back after %.1f s (%d attempts)",
                self._who,
                self._clock.monotonic() - self._since,
                self._attempts,
            )
        self._since = None
        self._attempts = 0
        self._delays = self.backoff.delays()


class _Decoder(Protocol):
    vehicle: str
    dropped: Counter[str]


D = TypeVar("D", bound=_Decoder)


class ReconnectingSource(Generic[D]):
    """What the reconnecting sources share: a decoder, an :class:`Outage` and their counters.

    A subclass sets ``decoder`` and ``_outage`` and writes ``_fixes``; iterate once.
    """

    decoder: D
    _outage: Outage

    @property
    def vehicle(self) -> str:
        return self.decoder.vehicle

    @property
    def dropped(self) -> Counter[str]:
        return self.decoder.dropped

    @property
    def outages(self) -> int:
        return self._outage.outages

    @property
    def reconnects(self) -> int:
        return self._outage.reconnects

    def __aiter__(self) -> AsyncGenerator[Fix, None]:
        return self._fixes()

    def _fixes(self) -> AsyncGenerator[Fix, None]:
        raise NotImplementedError


async def close_quietly(handle: Closable, what: str, log: logging.Logger) -> None:
    """Close ``handle`` and wait for it, without letting a failing close raise."""
    try:
        handle.close()
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await handle.wait_closed()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("closing %s: %s", what, describe(exc))


def describe(exc: BaseException) -> str:
    """An exception as ``Type: message`` (``Type`` alone when the message is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
