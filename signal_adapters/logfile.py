"""Shadow mode: an adapter that asks no controller and writes down what it would ask.

For commissioning. The daemon runs live on the engines' real positions, and
every request, update and cancel goes as one JSON line to a file (option
``path``, relative to the daemon's working directory; standard output when
absent) instead of to the controller. A traffic
engineer compares those lines with the engines' runs before a single signal is
touched. The adapter reports ``requested`` while it holds a request and
``not_active`` otherwise; it never claims that a signal turned green.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from preemption.kernel.model import Command, PreemptStatus, SignalState
from signal_adapters.base import AdapterConfigError, AdapterContext


class LogAdapter:
    def __init__(
        self, controller: str, options: Mapping[str, Any], context: AdapterContext
    ) -> None:
        self.controller = controller
        self._clock = context.clock
        self._held: dict[str, str] = {}  # intersection -> request id
        path = options.get("path")
        self._out: TextIO
        if path is None:
            self._out, self._own = sys.stdout, False
        else:
            try:
                self._out = Path(str(path)).open("a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise AdapterConfigError(
                    controller,
                    f"cannot open the shadow log {path}: {exc.strerror}; "
                    "check the path and its permissions",
                ) from None
            self._own = True

    def _write(self, cmd: Command) -> None:
        record = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(cmd).items()}
        self._out.write(json.dumps(record, sort_keys=True) + "\n")
        self._out.flush()

    async def request(self, cmd: Command) -> SignalState:
        self._held[cmd.intersection] = cmd.request_id
        self._write(cmd)
        return await self.state(cmd.intersection)

    async def update(self, cmd: Command) -> SignalState:
        return await self.request(cmd)

    async def cancel(self, cmd: Command) -> SignalState:
        if self._held.get(cmd.intersection) == cmd.request_id:
            del self._held[cmd.intersection]
        self._write(cmd)
        return await self.state(cmd.intersection)

    async def state(self, intersection: str) -> SignalState:
        held = self._held.get(intersection)
        status = PreemptStatus.REQUESTED if held else PreemptStatus.NOT_ACTIVE
        return SignalState(
            intersection, self.controller, status, self._clock.now(), request_id=held
        )

    async def close(self) -> None:
        if self._own:
            self._out.close()
