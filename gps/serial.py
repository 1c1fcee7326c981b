"""A receiver on a serial line: NMEA bytes in, :class:`~preemption.kernel.model.Fix` out.

The port is opened with pyserial-asyncio-fast and decoded by
:class:`~gps.nmea.NmeaDecoder`. A serial receiver in a fire engine gets
unplugged, browns out with the ignition and re-enumerates on USB, so the
source outlives its device: a read error, an end of file or a failed open
(the path is gone) starts an *outage*, logged once with the device and what to
check; the source then reopens the port with exponential backoff
(:class:`~gps.backoff.Backoff`) on the :class:`~preemption.kernel.clock.Clock` until
the device is back, and carries on with the same decoder (so time order and
drop counters span the outage). An outage ends when bytes arrive again, not
when the open succeeds: a port that opens and drops at once is still an
outage, and is not logged again at every attempt.

A receiver sends an epoch as a burst of sentences and then nothing until the
next one. When the line has been quiet for ``quiet_flush_s`` the decoder is
flushed, so the last epoch before a pause (or the only epoch of a receiver
whose cycle the decoder has not learned yet) is not held back.

Nothing that comes down the line raises out of the iterator; cancelling the
task that iterates (or closing the iterator) closes the port.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable

import serial_asyncio_fast

from gps.backoff import Backoff
from gps.nmea import NmeaDecoder
from gps.outage import Closable, Outage, ReconnectingSource, close_quietly, describe
from preemption.kernel.clock import Clock
from preemption.kernel.model import Fix

__all__ = ["Closable", "Opener", "SerialNmeaSource"]

log = logging.getLogger(__name__)


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, Closable]]]
"""Opens the line once: a reader of its bytes and a handle that closes it."""


class SerialNmeaSource(ReconnectingSource[NmeaDecoder]):
    """Fixes of one vehicle from an NMEA receiver on a serial device.

    ``device`` is a path (``/dev/ttyUSB0``, a ``/dev/serial/by-id/...`` link)
    or any pyserial URL (``rfc2217://host:port``). Iterate once; the counters
    keep counting while it runs:

    * ``outages``: times the device was lost (or could not be opened at first);
    * ``reconnects``: outages that ended: the device was reopened and sent data;
    * ``open_failures``: failed attempts to open it;
    * ``flushes``: quiet-line flushes that completed an epoch;
    * ``bytes_read``; :attr:`dropped`: the decoder's drop counters.

    The port is locked (``flock``) while open, so a second reader of the same
    device fails to open it instead of stealing half of its bytes. ``opener``
    replaces pyserial-asyncio-fast, for tests and unusual transports: on a
    ``SimClock`` use one, because pyserial-asyncio-fast opens (and closes) the
    port in a worker thread, and simulated time jumps ahead while it works.
    """

    def __init__(
        self,
        device: str,
        vehicle: str,
        clock: Clock,
        *,
        baudrate: int = 9600,
        quiet_flush_s: float = 1.5,
        backoff: Backoff | None = None,
        source: str | None = None,
        date_hint: dt.date | None = None,
        read_size: int = 4096,
        opener: Opener | None = None,
    ) -> None:
        if not (0.0 < quiet_flush_s < math.inf):
            raise ValueError(
                f"quiet_flush_s for {device} must be a positive number of seconds, "
                f"not {quiet_flush_s!r}"
            )
        if baudrate <= 0:
            raise ValueError(f"baudrate for {device} must be positive, not {baudrate!r}")
        self.device = device
        # With the clock the decoder judges a receiver's time against now, and a gap the
        # clock explains (a dropout) costs no held epochs (gps/validity.py TimeOrder).
        self.decoder = NmeaDecoder(vehicle, source or device, date_hint=date_hint, clock=clock)
        self.open_failures = 0
        self.flushes = 0
        self.bytes_read = 0
        self.connected = False
        self._clock = clock
        self._baudrate = baudrate
        self._quiet_s = quiet_flush_s
        self._read_size = read_size
        self._opener = opener or self._open_serial
        self._outage = Outage(
            clock,
            backoff or Backoff(),
            log,
            name=f"GPS receiver {device}",
            who=f"GPS receiver {device} of vehicle {vehicle}",
            check=(
                "Check that the receiver is plugged in and powered, that "
                f"{device} exists (ls -l; USB adapters may come back under another name, use a "
                "/dev/serial/by-id/ path), that nothing else holds it open, and that this user "
                "may read it (group dialout)."
            ),
        )

    async def _open_serial(self) -> tuple[asyncio.StreamReader, Closable]:
        return await serial_asyncio_fast.open_serial_connection(
            url=self.device, baudrate=self._baudrate, exclusive=True
        )

    async def _fixes(self) -> AsyncGenerator[Fix, None]:
        while True:
            try:
                reader, port = await self._opener()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The device boundary: a missing path, a permission, a busy or
                # half-enumerated USB adapter; all of them mean "not now".
                self.open_failures += 1
                await self._clock.sleep(self._outage.lost(f"cannot open it ({describe(exc)})"))
                continue
            self.connected = True
            talking = False  # the outage ends with the first bytes, not with the open
            pending = False  # bytes fed since the last flush
            try:
                while True:
                    try:
                        async with asyncio.timeout(self._quiet_s if pending else None):
                            data = await reader.read(self._read_size)
                    except TimeoutError:
                        pending = False
                        fixes = self.decoder.flush()
                        self.flushes += bool(fixes)
                    else:
                        if not data:
                            reason = "the line ended (end of file)"
                            break
                        if not talking:
                            talking = True
                            self._outage.back()
                        pending = True
                        self.bytes_read += len(data)
                        fixes = self.decoder.feed(data)
                    for fix in fixes:
                        yield fix
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"reading failed ({describe(exc)})"
            finally:
                self.connected = False
                await close_quietly(port, self.device, log)
            # Whatever the decoder still holds arrived before the outage.
            for fix in self.decoder.flush():
                yield fix
            await self._clock.sleep(self._outage.lost(reason))
