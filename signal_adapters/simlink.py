"""In-process link to a simulated signal controller.

The simulator's controller model satisfies :class:`PreemptionInput`; this
adapter forwards commands to it as a wired pre-emption input would. It is what
``preemption demo`` and ``preemption sim`` use, and it exercises the same adapter
contract as the protocol adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from preemption.kernel.model import Command, PreemptStatus, SignalState
from signal_adapters.base import AdapterConfigError, AdapterContext, parse_options


class PreemptionInput(Protocol):
    """The pre-emption inputs of one simulated intersection."""

    def call(self, approach: str, request_id: str, hold_s: float) -> None:
        """Assert (or refresh) the call for ``approach``, held at most ``hold_s`` from now."""
        ...

    def release(self, request_id: str) -> None: ...

    def preempt_status(self) -> tuple[PreemptStatus, str | None]:
        """The status and the approach it serves (None when not pre-empted)."""
        ...


class SimLinkOptions(BaseModel):
    """``adapter = "simlink"`` takes no options: the simulator hands it its controllers."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SimLinkAdapter:
    """Adapter for controllers the simulator runs in the same process."""

    Options = SimLinkOptions

    def __init__(
        self, controller: str, options: Mapping[str, Any], context: AdapterContext
    ) -> None:
        parse_options(SimLinkOptions, controller, options)
        links = context.resources.get("simlink")
        if not isinstance(links, Mapping):
            raise AdapterConfigError(
                controller,
                "the 'simlink' adapter talks to simulated controllers and only runs inside "
                "'preemption demo' or 'preemption sim'; configure a real adapter for a street",
            )
        self.controller = controller
        self._links: Mapping[str, PreemptionInput] = links
        self._clock = context.clock
        self._cancelled: set[str] = set()
        self._held: dict[str, str] = {}  # request id -> intersection

    def _link(self, intersection: str) -> PreemptionInput:
        try:
            return self._links[intersection]
        except KeyError:
            raise AdapterConfigError(
                self.controller,
                f"the simulator has no intersection {intersection!r} on this controller; "
                "check the scenario's intersections against the route file",
            ) from None

    async def request(self, cmd: Command) -> SignalState:
        if cmd.request_id not in self._cancelled:
            try:
                self._link(cmd.intersection).call(cmd.approach, cmd.request_id, cmd.duration_s)
            except KeyError as exc:
                raise AdapterConfigError(self.controller, str(exc.args[0])) from None
            self._held[cmd.request_id] = cmd.intersection
        return await self.state(cmd.intersection)

    async def update(self, cmd: Command) -> SignalState:
        return await self.request(cmd)

    async def cancel(self, cmd: Command) -> SignalState:
        self._cancelled.add(cmd.request_id)
        self._held.pop(cmd.request_id, None)
        self._link(cmd.intersection).release(cmd.request_id)
        return await self.state(cmd.intersection)

    async def state(self, intersection: str) -> SignalState:
        status, approach = self._link(intersection).preempt_status()
        return SignalState(
            intersection=intersection,
            controller=self.controller,
            status=status,
            time=self._clock.now(),
            approach=approach,
        )

    async def close(self) -> None:
        for request_id, intersection in list(self._held.items()):
            self._link(intersection).release(request_id)
        self._held.clear()
        self._links = {}
