"""`preemption signal test`: commissioning one intersection at the cabinet.

What a traffic engineer runs with the controller in front of them: the
deployment's own adapter for that intersection's controller asks for
pre-emption of one approach, the command waits for the controller to confirm
(entry, then dwell), holds the dwell for ``--hold`` seconds, takes the request
back and waits until the controller says the call has ended, printing every
state it reads with its time since the request, and what the adapter knows of
the controller (for NTCIP: maxPreempts and the backup timer, with a loud
warning if the backup timer is disabled).

Exit status: 0 the controller confirmed, showed the approach's dwell and
released; 1 it refused, never confirmed, never reached dwell, or did not end
the call in time; 2 the configuration is unusable (unknown intersection,
adapter options, credentials).

It really pre-empts the junction: without ``--yes`` it asks first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from preemption.cli.main import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from preemption.kernel.clock import RealClock
from preemption.kernel.config import ConfigError, load_config
from preemption.kernel.errors import InputError
from preemption.kernel.model import Command, CommandKind, PreemptStatus, SignalPoint, SignalState
from routes.geojson import load_routes
from signal_adapters import registry
from signal_adapters.base import AdapterContext, AdapterError, SignalAdapter

POLL_S = 0.5
CONFIRMED = frozenset({PreemptStatus.ENTERING, PreemptStatus.ACTIVE})
ENDED = frozenset({PreemptStatus.NOT_ACTIVE})


def add_signal_parser(sub: Any) -> None:
    s = sub.add_parser("signal", help="commissioning tools for one signalised intersection")
    s.set_defaults(help_parser=s)
    ssub = s.add_subparsers(metavar="TOOL")
    t = ssub.add_parser(
        "test",
        help="pre-empt one approach through the configured adapter, confirm, release",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", type=Path, required=True, help="deployment TOML")
    t.add_argument("--intersection", required=True, help="intersection id, as the routes name it")
    t.add_argument("--approach", help="approach as the controller knows it (default: the routes')")
    t.add_argument("--hold", type=float, default=5.0, help="seconds to hold the dwell (default 5)")
    t.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each step (default 60)"
    )
    t.add_argument("--yes", action="store_true", help="do not ask before pre-empting")
    t.set_defaults(func=_test)


def _test(args: argparse.Namespace) -> int:
    dep = load_config(args.config, adapters=registry.option_checks())
    routes = load_routes(dep.routes.files, epsg=dep.deployment.epsg)
    signal = _signal(args.config, routes, args.intersection)
    approach = args.approach or signal.approach
    controller = dep.controller(signal.controller)
    if not args.yes and not _confirm(
        f"This asks controller {controller.id!r} (adapter {controller.adapter}) to pre-empt "
        f"intersection {args.intersection}, approach {approach}, for real. Go on? [y/N] "
    ):
        print("not asked", file=sys.stderr)
        return EXIT_FAILED
    clock = RealClock()
    adapter = registry.load(controller.adapter)(
        controller.id, controller.options, AdapterContext(clock)
    )
    try:
        return asyncio.run(_run(adapter, signal, approach, args.hold, args.timeout, clock))
    except AdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, InputError) else EXIT_FAILED


def _signal(path: Path, routes: Any, intersection: str) -> SignalPoint:
    for mr in routes:
        for sig in mr.signals:
            if sig.intersection == intersection:
                return sig  # type: ignore[no-any-return]
    known = sorted({s.intersection for mr in routes for s in mr.signals})
    raise ConfigError(
        path, [("routes.files", f"no intersection {intersection!r}; known: {', '.join(known)}")]
    )


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


async def _run(
    adapter: SignalAdapter,
    signal: SignalPoint,
    approach: str,
    hold_s: float,
    timeout_s: float,
    clock: RealClock,
) -> int:
    started = time.monotonic()

    def show(what: str, state: SignalState | None = None) -> None:
        t = time.monotonic() - started
        if state is None:
            print(f"{t:7.2f} s  {what}", flush=True)
            return
        extra = " ".join(f"{k}={v}" for k, v in sorted(state.extra.items()))
        print(f"{t:7.2f} s  {what:8} {state.status.value:12} {state.detail} {extra}".rstrip())

    probe = getattr(adapter, "probe", None)
    if callable(probe):
        for fact in await probe():
            show(fact)
    rid = f"commissioning-{int(clock.now())}:{signal.intersection}/{approach}/1"
    duration = hold_s + 2 * timeout_s  # the controller-side hold: it ends by itself after this

    def command(kind: CommandKind) -> Command:
        return Command(
            kind, rid, "commissioning", signal.intersection, signal.controller, approach,
            clock.now(), 0.0, 0.0 if kind is CommandKind.CANCEL else duration, "fire",
            "preemption signal test",
        )  # fmt: skip

    code = EXIT_OK
    try:
        state = await adapter.request(command(CommandKind.REQUEST))
        show("request", state)
        if state.status is PreemptStatus.REJECTED:
            return EXIT_FAILED
        if not await _until(adapter, signal, CONFIRMED, timeout_s, show):
            show(f"not confirmed within {timeout_s:.0f} s")
            code = EXIT_FAILED
        elif not await _until(adapter, signal, {PreemptStatus.ACTIVE}, timeout_s, show):
            show(f"no dwell (the approach's green) within {timeout_s:.0f} s")
            code = EXIT_FAILED
        else:
            await asyncio.sleep(hold_s)
    finally:
        state = await adapter.cancel(command(CommandKind.CANCEL))
        show("release", state)
        if not await _until(adapter, signal, ENDED, timeout_s, show):
            show(f"the call did not end within {timeout_s:.0f} s of the release")
            code = EXIT_FAILED
        await adapter.close()
    show("ok: confirmed, dwell, released" if code == EXIT_OK else "FAILED")
    return code


async def _until(
    adapter: SignalAdapter,
    signal: SignalPoint,
    wanted: frozenset[PreemptStatus] | set[PreemptStatus],
    timeout_s: float,
    show: Callable[[str, SignalState | None], None],
) -> bool:
    """Poll until the state is one of ``wanted``; print every change."""
    deadline = time.monotonic() + timeout_s
    last: tuple[PreemptStatus, str] | None = None
    while time.monotonic() < deadline:
        state = await adapter.state(signal.intersection)
        if (state.status, state.detail) != last:
            show("state", state)
            last = (state.status, state.detail)
        if state.status in wanted:
            return True
        if state.status in (PreemptStatus.REJECTED, PreemptStatus.MAX_PRESENCE):
            return False
        await asyncio.sleep(POLL_S)
    return False
