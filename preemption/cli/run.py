"""`preemption run`: the daemon on the real clock, from a deployment file.

Start: the configuration is validated, the journal opened (a new boot id for
every request id of this process), the requests a previous process left active
are handed to the planner (re-asserted or cancelled), the fleet feed's
authentication is checked, then every task starts and systemd hears READY=1.

Stop: SIGTERM or SIGINT takes every request back, waits up to
``[service] shutdown_timeout_s`` for the cancels, closes the adapters and the
journal and exits 0; a second signal exits at once (status 1; the journal lets
the next start take back what was left). The last line on stdout is a JSON
object with the daemon's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from preemption.cli.main import EXIT_CONFIG, EXIT_OK
from preemption.kernel.clock import RealClock
from preemption.kernel.config import Deployment, load_config
from preemption.kernel.errors import InputError
from preemption.service import hotpath
from preemption.service.daemon import Daemon
from preemption.service.journal import Journal
from preemption.service.systemd import Notifier
from preemption.service.wiring import (
    build,
    check_fleet_security,
    probe_fleet_brokers,
    sources,
)
from signal_adapters import registry

log = logging.getLogger("preemption.run")


def run_command(args: argparse.Namespace) -> int:
    dep = load_config(args.config, adapters=registry.option_checks())
    if not args.verbose:
        logging.getLogger().setLevel(logging.INFO)  # a service: its log says what it does
    for warning in check_fleet_security(dep):
        log.warning("%s", warning)
    clock = RealClock()
    assert dep.service.journal is not None  # load_config resolves it
    journal = Journal(
        dep.service.journal,
        clock,
        retention_days=dep.service.journal_retention_days,
        deployment=str(args.config),
    )
    clean = False
    try:
        daemon = build(dep, clock, sink=journal, boot_id=journal.boot_id)
        journal.counters = daemon.counters  # one set of counters for the whole process
        for vehicle in args.emergency:
            if vehicle not in daemon.planner.allowed:
                print(f"error: --emergency {vehicle}: not in [[vehicles]]", file=sys.stderr)
                return EXIT_CONFIG
        code = asyncio.run(_serve(dep, daemon, journal, args.emergency))
        clean = code == EXIT_OK
        return code
    finally:
        journal.close(clean=clean)


async def _serve(dep: Deployment, daemon: Daemon, journal: Journal, emergency: list[str]) -> int:
    clock = daemon.clock
    notifier = Notifier(clock)
    daemon.on_tick = notifier.watchdog
    try:
        inputs = sources(dep, daemon, clock)
    except OSError as exc:  # a password file that cannot be read
        raise InputError(f"[[gps]]: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.error("second %s: stopping at once", signal.Signals(signum).name)
            journal.flush()
            os._exit(1)
        log.warning("%s: taking every request back, then stopping", signal.Signals(signum).name)
        notifier.stopping()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    for warning in await probe_fleet_brokers(dep):
        log.warning("%s", warning)
    for vehicle in emergency:
        daemon.set_emergency(vehicle, True, "dispatch")
    daemon.recover(journal.leftovers())
    log.info(
        "running %s (boot %s, journal %s); per-fix path %s",
        dep.deployment.name,
        journal.boot_id,
        journal.path,
        hotpath.describe(),
    )

    def started() -> None:
        notifier.ready(f"{dep.deployment.name}: boot {journal.boot_id}")

    await daemon.run(inputs, stop, started=started)
    notifier.close()
    counters = dict(sorted(daemon.counters.items()))
    print(json.dumps({"stopped": True, "boot": journal.boot_id, "counters": counters}))
    return EXIT_OK
