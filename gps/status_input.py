"""The engine's emergency-run status from a contact: blue-light switch or dispatch relay.

Two readers, each an ``AsyncIterable[bool]`` (True: on an emergency run) on a
:class:`~preemption.kernel.clock.Clock`, as :class:`gps.onboard.OnboardForwarder`
takes them:

* :class:`GpioInput`: a sysfs-style GPIO value file (``/sys/class/gpio/gpio17/value``,
  or the digital-input file of an industrial PC) that holds ``1`` or ``0``;
* :class:`SerialLineInput`: a modem status line (CTS, DSR, RI or CD) of a
  serial port, read with pyserial. The contact is wired from DTR (or RTS),
  which pyserial raises when it opens the port, to the line that is read.

Both poll every ``poll_s`` and yield the first reading at once, then only
changes. A change counts once ``confirm`` consecutive readings agree, so a
bouncing relay contact does not toggle the status (an "off" in the middle of
a run would make the planner take every request back). ``active_low`` inverts
the reading (a contact that opens when the lights go on).

An input that cannot be read (file gone, adapter unplugged, a device without
modem lines) reports **off** at once: a status nobody can vouch for must
never cause a request. The outage is logged once as a warning with what to
check, retried with :class:`~gps.backoff.Backoff`, and its end logged once;
nothing raises out of the iterator.

Nothing is re-asserted periodically: the forwarder publishes the status
retained and again on every connection, so a repeat would carry no news.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Final, Literal, Protocol

import serial

from gps.backoff import Backoff
from preemption.kernel.clock import Clock

__all__ = ["MODEM_LINES", "GpioInput", "ModemLines", "ModemLinesOpener", "SerialLineInput"]

log = logging.getLogger(__name__)

ModemLine = Literal["cts", "dsr", "ri", "cd"]
MODEM_LINES: Final[tuple[ModemLine, ...]] = ("cts", "dsr", "ri", "cd")


class _Unreadable(Exception):
    """The input could not be read now; the message says why and what to check."""


class _ContactInput:
    """The polling, debouncing and outage handling shared by the readers."""

    what = "emergency input"

    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        active_low: bool,
        poll_s: float,
        confirm: int,
        backoff: Backoff | None,
    ) -> None:
        if not (0.0 < poll_s < math.inf):
            raise ValueError(
                f"poll_s for {name} must be a positive number of seconds, not {poll_s!r}"
            )
        if confirm < 1:
            raise ValueError(f"confirm for {name} must be at least 1, not {confirm!r}")
        self.name = name
        self.clock = clock
        self.active_low = active_low
        self.poll_s = poll_s
        self.confirm = confirm
        self.backoff = backoff or Backoff(poll_s, 2.0, max(poll_s, 2.0))
        self.value: bool | None = None  # the status last yielded
        self.reads = 0
        self.read_failures = 0
        self.outages = 0
        self.changes = 0  # changes yielded after the first value
        self._down_since: float | None = None
        self._stopped = False

    def __aiter__(self) -> AsyncGenerator[bool, None]:
        return self._states()

    async def _read(self) -> bool:
        """The raw level of the input (True: 1 / asserted); _Unreadable if it cannot be read."""
        raise NotImplementedError

    def _release(self) -> None:
        """Let go of what the reads hold (a port), after a failure and at the end."""

    async def _states(self) -> AsyncGenerator[bool, None]:
        candidate: bool | None = None
        agreeing = 0
        delays = self.backoff.delays()
        try:
            while True:
                try:
                    raw = await self._read()
                except _Unreadable as exc:
                    self._release()
                    self._lost(str(exc))
                    candidate, agreeing = None, 0
                    if self.value is not False:
                        self._report(False)
                        yield False
                    await self.clock.sleep(next(delays))
                    continue
                self.reads += 1
                if self._down_since is not None:
                    self._back()
                    delays = self.backoff.delays()
                on = raw != self.active_low
                if self.value is None:
                    self._report(on)
                    yield on
                elif on == self.value:
                    candidate, agreeing = None, 0
                else:
                    agreeing = agreeing + 1 if on == candidate else 1
                    candidate = on
                    if agreeing >= self.confirm:
                        candidate, agreeing = None, 0
                        self._report(on)
                        yield on
                await self.clock.sleep(self.poll_s)
        finally:
            self._stopped = True
            self._release()

    def _report(self, on: bool) -> None:
        if self.value is not None:
            self.changes += 1
        self.value = on
        log.info("%s %s: emergency %s", self.what, self.name, "ON" if on else "off")

    def _lost(self, reason: str) -> None:
        self.read_failures += 1
        if self._down_since is None:
            self._down_since = self.clock.monotonic()
            self.outages += 1
            log.warning(
                "%s %s cannot be read: %s. Reporting emergency OFF (no pre-emption for this "
                "vehicle) until it can be read again; retrying every %.1f s at most.",
                self.what,
                self.name,
                reason,
                self.backoff.max_s,
            )
        else:
            log.debug("%s %s still unreadable: %s", self.what, self.name, reason)

    def _back(self) -> None:
        assert self._down_since is not None
        log.info(
            "%s %s can be read again after %.1f s",
            self.what,
            self.name,
            self.clock.monotonic() - self._down_since,
        )
        self._down_since = None


class GpioInput(_ContactInput):
    """A GPIO value file: ``1`` is on (``0`` with ``active_low``).

    The file is read on the event loop, not in a thread: a sysfs attribute is
    answered by the kernel at once, and a thread would make a run on a
    ``SimClock`` unrepeatable.
    """

    what = "emergency input (GPIO)"

    def __init__(
        self,
        path: str | Path,
        clock: Clock,
        *,
        active_low: bool = False,
        poll_s: float = 0.1,
        confirm: int = 2,
        backoff: Backoff | None = None,
    ) -> None:
        self.path = Path(path)
        super().__init__(
            str(self.path),
            clock,
            active_low=active_low,
            poll_s=poll_s,
            confirm=confirm,
            backoff=backoff,
        )

    async def _read(self) -> bool:
        try:
            text = self.path.read_bytes()[:64].decode("ascii", "replace").strip()
        except FileNotFoundError:
            raise _Unreadable(
                "the file does not exist: check the path, and that the GPIO is exported "
                "(echo N > /sys/class/gpio/export) and set as an input"
            ) from None
        except OSError as exc:
            raise _Unreadable(
                f"reading failed ({exc.strerror or exc}): check that this user may read it "
                "(group gpio, or a udev rule)"
            ) from None
        if text not in ("0", "1"):
            raise _Unreadable(f"it holds {text[:20]!r}, not 0 or 1: is it a GPIO value file?")
        return text == "1"


class ModemLines(Protocol):
    """The part of a ``serial.Serial`` the reader needs."""

    @property
    def cts(self) -> bool: ...

    @property
    def dsr(self) -> bool: ...

    @property
    def ri(self) -> bool: ...

    @property
    def cd(self) -> bool: ...

    def close(self) -> None: ...


ModemLinesOpener = Callable[[], ModemLines]


class SerialLineInput(_ContactInput):
    """A modem status line of a serial port: asserted is on (released with ``active_low``).

    The port stays open between polls (opening it raises DTR and RTS, which
    feed the contact) and is reopened after a failure. pyserial's open and
    ioctl calls block, so they run in a worker thread; ``threaded=False``
    runs them on the event loop, for a fake port (``opener``) on a
    ``SimClock``. The device must not be the receiver's: that one is locked
    by the GPS source.
    """

    what = "emergency input (serial line)"

    def __init__(
        self,
        device: str,
        line: ModemLine,
        clock: Clock,
        *,
        active_low: bool = False,
        poll_s: float = 0.1,
        confirm: int = 2,
        backoff: Backoff | None = None,
        opener: ModemLinesOpener | None = None,
        threaded: bool = True,
    ) -> None:
        if line not in MODEM_LINES:
            raise ValueError(
                f"modem line {line!r} of {device} is not one of {', '.join(MODEM_LINES)}"
            )
        super().__init__(
            f"{line.upper()} of {device}",
            clock,
            active_low=active_low,
            poll_s=poll_s,
            confirm=confirm,
            backoff=backoff,
        )
        self.device = device
        self.line = line
        self._opener = opener or self._open_serial
        self._threaded = threaded
        self._port: ModemLines | None = None

    def _open_serial(self) -> ModemLines:
        port: ModemLines = serial.Serial(self.device, timeout=0, exclusive=True)
        return port

    def _read_blocking(self) -> bool:
        try:
            if self._port is None:
                self._port = self._opener()
                if self._stopped:  # cancelled while this thread was opening: let go again
                    self._release()
                    raise _Unreadable("stopped")
            value = getattr(self._port, self.line)
        except (OSError, serial.SerialException, ValueError) as exc:
            raise _Unreadable(_explain(self.device, exc)) from None
        return bool(value)

    async def _read(self) -> bool:
        if not self._threaded:
            return self._read_blocking()
        return await asyncio.to_thread(self._read_blocking)

    def _release(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception as exc:  # closing a vanished adapter may fail; it is gone anyway
                log.debug("closing %s: %s", self.device, exc)


def _explain(device: str, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc) or type(exc).__name__
    if code == errno.ENOTTY or "Inappropriate ioctl" in text:
        return (
            f"{device} reports no modem lines ({text}): it must be a real serial port "
            "(a pty, and some USB adapters, have none)"
        )
    if code == errno.ENOENT or "No such file" in text:
        return f"{device} does not exist ({text}): check the adapter and the path"
    if code == errno.EACCES or "Permission denied" in text:
        return f"no permission to open {device} ({text}): add this user to the group dialout"
    return (
        f"{text}: check that the adapter is plugged in and that nothing else holds {device} "
        "open (not the GPS receiver's port)"
    )
