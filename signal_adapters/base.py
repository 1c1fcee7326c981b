"""The adapter protocol and the base every adapter subclasses.

An adapter translates :class:`~preemption.kernel.model.Command` into whatever the
controller speaks (NTCIP 1202 over SNMP, C-ITS SREM, R09.16, a relay, MQTT) and
reports what the controller says back as :class:`~preemption.kernel.model.SignalState`.

:class:`AdapterBase` writes the public calls once, over a few small hooks a
subclass fills in (as python-can's ``BusABC`` does over ``_recv_internal``):
``_open``, ``_request``, ``_update``, ``_cancel``, ``_state``, ``_close``. It
keeps the book of held requests per request id (idempotent), turns whatever a
hook lets out into a typed :class:`AdapterError`, opens the connection lazily
on the first call (no I/O in ``__init__``), takes back what it holds on
``close()``, is an async context manager, and offers :meth:`AdapterBase.states`,
a stream of the controller's states (polling by default; an adapter whose
controller reports by itself sets ``pushes_states`` and overrides it).

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

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from preemption.kernel.clock import Clock
from preemption.kernel.config import validation_problems
from preemption.kernel.errors import InputError, PreemptionError
from preemption.kernel.model import Command, CommandKind, SignalState

log = logging.getLogger(__name__)

API_VERSION = 1  # of AdapterBase's hooks; the registry refuses a plug-in written for another
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


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


class NoOptions(BaseModel):
    """The options of an adapter that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_options(model: type[M], controller: str, options: Mapping[str, Any]) -> M:
    """An adapter's options as its model, or AdapterConfigError naming each key."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"options.{key}: {msg}" if key else f"options: {msg}"
            for key, msg in validation_problems(exc)
        )
        raise AdapterConfigError(
            controller, f"{problems}; correct the controller's options"
        ) from None


_REMEMBERED_CANCELS = 4096  # cancelled ids kept, so that a late duplicate request is refused


class AdapterBase:
    """The base of every adapter, built-in or a vendor's package (docs/adapters.md).

    A subclass declares ``Options`` (a pydantic model; unknown keys forbidden)
    and fills in the hooks; it calls none of the public methods itself. The
    public calls, written here once:

    - ``request`` asks for a call; the same request id again is an update.
    - ``update`` re-sends a held request (refresh, new ETA); an id this adapter
      never saw is asserted as a request: it may be a previous process's,
      re-asserted after a restart.
    - ``cancel`` takes a request back; cancelling an id it never saw is still
      sent to the controller (again: a previous process's), cancelling one it
      already cancelled does nothing; a request or update for a cancelled id
      is refused quietly (the controller is not asked again).
    - ``state`` reads what the controller does at an intersection.
    - ``close`` cancels every held request as far as the controller can be
      reached, then releases the connection; an error while taking back is
      raised after everything else was tried.

    Whatever a hook lets out becomes an :class:`AdapterError`: an ``OSError`` or
    ``TimeoutError`` a :class:`ControllerUnreachable`, anything else an
    ``AdapterError`` that names the exception (a bug in the adapter).
    """

    api_version: ClassVar[int] = API_VERSION
    Options: ClassVar[type[BaseModel]] = NoOptions
    # True: the controller reports its states by itself (SSEM, MQTT) and states()
    # yields them as they come; the daemon then does not poll this adapter.
    pushes_states: ClassVar[bool] = False

    def __init__(
        self, controller: str, options: Mapping[str, Any], context: AdapterContext
    ) -> None:
        self.controller = controller
        self.context = context
        self.clock = context.clock
        self.options: BaseModel = parse_options(type(self).Options, controller, options)
        self._held: dict[str, Command] = {}  # request id -> the last command sent for it
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._opened = False

    # -- hooks --------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect (once, before the first call); nothing by default."""

    async def _request(self, cmd: Command) -> SignalState:
        raise NotImplementedError

    async def _update(self, cmd: Command) -> SignalState:
        """Re-send a held request; by default the same as asking again."""
        return await self._request(cmd)

    async def _cancel(self, cmd: Command) -> SignalState:
        raise NotImplementedError

    async def _state(self, intersection: str) -> SignalState:
        raise NotImplementedError

    async def _close(self) -> None:
        """Release the connection; nothing by default."""

    # -- the contract -------------------------------------------------------------------

    @property
    def held(self) -> Mapping[str, Command]:
        """Request id -> the last command sent for it, for every request held now."""
        return self._held

    async def open(self) -> None:
        if not self._opened:
            await self._call("open", self._open())
            self._opened = True

    async def request(self, cmd: Command) -> SignalState:
        if cmd.request_id in self._held:
            return await self.update(cmd)
        return await self._ask(cmd, "request", self._request)

    async def update(self, cmd: Command) -> SignalState:
        if cmd.request_id not in self._held:
            return await self._ask(cmd, "request", self._request)
        return await self._ask(cmd, "update", self._update)

    async def cancel(self, cmd: Command) -> SignalState:
        if cmd.request_id in self._cancelled:
            return await self.state(cmd.intersection)
        await self.open()
        state = await self._call("cancel", self._cancel(cmd))
        self._held.pop(cmd.request_id, None)
        self._cancelled[cmd.request_id] = None
        while len(self._cancelled) > _REMEMBERED_CANCELS:
            self._cancelled.popitem(last=False)
        return state

    async def state(self, intersection: str) -> SignalState:
        await self.open()
        return await self._call("state", self._state(intersection))

    async def states(self, every_s: float = 1.0) -> AsyncIterator[SignalState]:
        """The states of the intersections with held requests, as they come.

        By default a poll of each every ``every_s``; an adapter that sets
        ``pushes_states`` yields what its controller reports instead.
        """
        while True:
            for inter in sorted({c.intersection for c in self._held.values()}):
                yield await self.state(inter)
            await self.clock.sleep(every_s)

    async def close(self) -> None:
        first: AdapterError | None = None
        for cmd in list(self._held.values()):
            try:
                await self.cancel(_cancel_of(cmd))
            except AdapterError as exc:
                log.error("closing: cannot take back %s: %s", cmd.request_id, exc)
                first = first or exc
        try:
            if self._opened:
                await self._call("close", self._close())
        finally:
            self._opened = False
        if first is not None:
            raise first

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- inside ---------------------------------------------------------------------------

    async def _ask(
        self, cmd: Command, what: str, hook: Callable[[Command], Awaitable[SignalState]]
    ) -> SignalState:
        if cmd.request_id in self._cancelled:
            # Cancelled already: a late or repeated command must not ask again.
            return await self.state(cmd.intersection)
        await self.open()
        state = await self._call(what, hook(cmd))
        self._held[cmd.request_id] = cmd
        return state

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except AdapterError:
            raise
        except (OSError, TimeoutError) as exc:
            raise ControllerUnreachable(
                self.controller,
                f"{what} failed: {type(exc).__name__}: {exc}; check that the controller is "
                "reachable (address, port, network)",
            ) from exc
        except Exception as exc:
            raise AdapterError(
                self.controller,
                f"{what} failed: {type(exc).__name__}: {exc} (a bug in the adapter "
                f"{type(self).__name__}?)",
            ) from exc


def _cancel_of(cmd: Command) -> Command:
    return dataclasses.replace(
        cmd, kind=CommandKind.CANCEL, reason="adapter closing", duration_s=0.0
    )
