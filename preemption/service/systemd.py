"""Telling the service manager how the daemon is: sd_notify READY, WATCHDOG, STOPPING.

systemd (config/systemd/preemption.service, ``Type=notify`` with
``WatchdogSec=``) passes the address of its notification socket in
``$NOTIFY_SOCKET`` and the watchdog interval in ``$WATCHDOG_USEC``. The daemon
says READY=1 once its tasks run, WATCHDOG=1 from its ticker (at most every half
interval), so a daemon whose event loop is stuck is killed and restarted, and
STOPPING=1 when it starts taking its requests back.

The protocol is one datagram per message on a Unix socket (an abstract one when
the address starts with ``@``); it is spoken here directly rather than through
a library because it is that small, and python-systemd would need the C library
and its headers at install time. Without ``$NOTIFY_SOCKET`` (not under systemd)
every call does nothing. A failed send is counted, never raised.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from preemption.kernel.clock import Clock

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, clock: Clock, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self.clock = clock
        self.failures = 0
        self._last_ping = float("-inf")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8"), self.address)
        except OSError:
            self.failures += 1
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """From the ticker: a ping at most every half watchdog interval."""
        if self.watchdog_s is None:
            return
        now = self.clock.monotonic()
        if now - self._last_ping >= self.watchdog_s / 2:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
