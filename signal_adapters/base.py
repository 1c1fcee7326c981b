"""The adapter protocol: how the daemon's commands reach a signal controller.

An adapter translates :class:`~preemption.kernel.model.Command` into whatever the
controller speaks (NTCIP 1202 over SNMP, C-ITS SREM, R09.16, a relay, MQTT) and
reports what the controller says back as :class:`~preemption.kernel.model.SignalState`.

Contract, for every adapter, built-in or a vendor's:

- ``request``, ``update`` and ``cancel`` are idempotent per request id: sending
  the same command twice has the effect of sending it once, and cancelling an
  unknown or already cancelled request succeeds.
- Failures raise :class:`AdapterError` subclasses carrying the controller id and
  what an operator should do; an adapter never exits the process and never lets
  a library's own exception escape.
- Every call returns promptly; the daemon still wraps each call in a timeout.
- ``close`` takes back every request the adapter still holds, as far as the
  controller can be reached, then releases the connection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from preemption.kernel.clock import Clock
from preemption.kernel.errors import InputError, PreemptionError
from preemption.kernel.model import Command, SignalState


@runtime_checkable
class SignalAdapter(Protocol):
    controller: str  # the controller id this adapter speaks to

    async def request(self, cmd: Command) -> SignalState: ...

    async def update(self, cmd: Command) -> SignalState: ...

    async def cancel(self, cmd: Command) -> SignalState: ...

    async def state(self, intersection: str) -> SignalState: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class AdapterContext:
    """What the wiring hands every adapter besides its own options."""

    clock: Clock
    # In-process peers provided by the wiring, by name: the simulator's controllers
    # for the "simlink" adapter, a shared MQTT client, and so on.
    resources: Mapping[str, Any] = field(default_factory=dict)


# A factory builds one adapter for one controller from its configured options.
AdapterFactory = Callable[[str, Mapping[str, Any], AdapterContext], SignalAdapter]


class AdapterError(PreemptionError):
    """A controller could not be asked; the message says which and what to do."""

    def __init__(self, controller: str, message: str) -> None:
        super().__init__(f"controller {controller!r}: {message}" if controller else message)
        self.controller = controller


class ControllerUnreachable(AdapterError):
    """No answer from the controller (network, serial line, gateway down)."""


class RequestRejected(AdapterError):
    """The controller answered and refused the request."""


class AdapterConfigError(AdapterError, InputError):
    """The adapter's options cannot work (missing address, bad approach number)."""
