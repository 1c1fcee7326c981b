"""`preemption run`: the daemon on the real clock, from a deployment file."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from preemption.cli.main import EXIT_CONFIG, EXIT_OK
from preemption.kernel.config import load_config


def run_command(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from preemption.kernel.clock import RealClock
    from preemption.service import hotpath
    from preemption.service.wiring import build, sources
    from signal_adapters import registry
    from signal_adapters.base import AdapterError

    dep = load_config(args.config, adapters=set(registry.installed()))
    clock = RealClock()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            daemon = build(dep, clock)
        except AdapterError as exc:
            print(f"error: {args.config}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        for vehicle in args.emergency:
            if vehicle not in daemon.planner_vehicles:
                print(f"error: --emergency {vehicle}: not in [[vehicles]]", file=sys.stderr)
                return EXIT_CONFIG
            daemon.set_emergency(vehicle, True, "dispatch")
        try:
            inputs = sources(dep, daemon, clock)
        except (ValueError, OSError) as exc:  # bad broker settings, unreadable files
            print(f"error: {args.config}: [[gps]]: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        logging.getLogger("preemption").info(
            "running %s; per-fix path %s", dep.deployment.name, hotpath.describe()
        )
        await daemon.run(inputs, stop)
        counters = dict(sorted(daemon.counters.items()))
        print(json.dumps({"stopped": True, "counters": counters}))
        return EXIT_OK

    return asyncio.run(main())
