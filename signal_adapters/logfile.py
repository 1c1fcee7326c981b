"""Shadow mode: an adapter that asks no controller and writes down what it would ask.

For commissioning. The daemon runs live on the engines' real positions, and
every request, update and cancel goes as one JSON line to a file (option
``path``, relative to the daemon's working directory; standard output when
absent) instead of to the controller. A traffic
engineer compares those lines with the engines' runs before a single signal is
touched. The adapter reports ``requested`` while it holds a request and
``not_active`` otherwise; it never claims that a signal turned green.

A line that cannot be written (a full disk, a vanished mount) is a
:class:`~signal_adapters.base.ControllerUnreachable` for that command: the
daemon counts it and goes on, and the request is not held, because nothing
recorded it. Each line is one ``write`` to a file opened for appending, so a
failed line leaves nothing half-written behind to be flushed later.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from preemption.kernel.model import Command, PreemptStatus, SignalState
from signal_adapters.base import (
    AdapterConfigError,
    AdapterContext,
    ControllerUnreachable,
    parse_options,
)


class LogOptions(BaseModel):
    """``[[controllers]] options`` of ``adapter = "log"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The shadow log (JSON lines, appended); relative to the daemon's working directory.
    # Absent: standard output.
    path: str | None = Field(default=None, min_length=1)


class LogAdapter:
    Options = LogOptions

    def __init__(
        self, controller: str, options: Mapping[str, Any], context: AdapterContext
    ) -> None:
        opts = parse_options(LogOptions, controller, options)
        self.controller = controller
        self._clock = context.clock
        self._held: dict[str, str] = {}  # intersection -> request id
        self._where = opts.path or "standard output"
        self._fd: int | None = None
        if opts.path is not None:
            try:
                self._fd = os.open(opts.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise AdapterConfigError(
                    controller,
                    f"cannot open the shadow log {opts.path}: {exc.strerror}; "
                    "check the path and its permissions",
                ) from None

    def _write(self, cmd: Command) -> None:
        record = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(cmd).items()}
        line = json.dumps(record, sort_keys=True) + "\n"
        try:
            if self._fd is None:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                _write_all(self._fd, line.encode("utf-8"))
        except OSError as exc:
            raise ControllerUnreachable(
                self.controller,
                f"cannot write the shadow log {self._where}: {exc.strerror or exc}; {_remedy(exc)}",
            ) from None

    async def request(self, cmd: Command) -> SignalState:
        self._write(cmd)
        self._held[cmd.intersection] = cmd.request_id
        return await self.state(cmd.intersection)

    async def update(self, cmd: Command) -> SignalState:
        return await self.request(cmd)

    async def cancel(self, cmd: Command) -> SignalState:
        self._write(cmd)
        if self._held.get(cmd.intersection) == cmd.request_id:
            del self._held[cmd.intersection]
        return await self.state(cmd.intersection)

    async def state(self, intersection: str) -> SignalState:
        held = self._held.get(intersection)
        status = PreemptStatus.REQUESTED if held else PreemptStatus.NOT_ACTIVE
        return SignalState(
            intersection, self.controller, status, self._clock.now(), request_id=held
        )

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                raise ControllerUnreachable(
                    self.controller, f"cannot close the shadow log {self._where}: {exc.strerror}"
                ) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remedy(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space"
    if exc.errno == errno.EPIPE:
        return "the reader of standard output has gone; log to a file (option path)"
    return "check the file system the log is on"
