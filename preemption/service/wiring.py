"""`preemption run`: the daemon on the real clock, wired from a deployment file.

Sources come from ``[[gps]]``: NMEA log replays, serial receivers, gpsd, and
the fleet's MQTT feed, whose emergency status messages switch vehicles' runs
on and off. Controllers get the adapter their ``[[controllers]]`` entry names;
``adapter = "log"`` runs in shadow mode (docs/commissioning in
signal_adapters/logfile.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Any

from gps.gpsd import GpsdSource
from gps.mqtt import BrokerSettings, MqttFixSource, VehicleStatus
from gps.position_json import StatusMessage, StatusSource
from gps.replay import NmeaReplay
from gps.serial import SerialNmeaSource
from preemption.decisions.planner import Planner
from preemption.kernel.clock import Clock
from preemption.kernel.config import (
    Deployment,
    GpsSourceConfig,
    MqttFleetSource,
    NmeaFileSource,
    SerialSource,
)
from preemption.kernel.model import Fix
from preemption.service.daemon import Daemon
from routes.geojson import RouteSet, load_routes
from routes.index import RouteIndex
from routes.matcher import RouteMatcher
from signal_adapters import registry
from signal_adapters.base import AdapterContext, SignalAdapter

# What an onboard unit's status message says, as the planner's emergency sources.
_STATUS_SOURCE = {
    StatusSource.BLUE_LIGHTS: "onboard",
    StatusSource.CONFIG: "onboard",
    StatusSource.DISPATCH: "dispatch",
}


def build(
    dep: Deployment,
    clock: Clock,
    resources: dict[str, Any] | None = None,
    routes: RouteSet | None = None,
) -> Daemon:
    """Routes, matcher index, planner and adapters of a deployment, as one daemon.

    ``resources`` go to the adapters (the simulator's controllers for "simlink");
    ``routes`` saves loading the route files again when the caller has them.
    """
    if routes is None:
        routes = load_routes(dep.routes.files, epsg=dep.deployment.epsg)
    index = RouteIndex(routes)  # built once, shared by every vehicle's matcher
    ctx = AdapterContext(clock=clock, resources=resources or {})
    adapters: dict[str, SignalAdapter] = {
        c.id: registry.load(c.adapter)(c.id, c.options, ctx) for c in dep.controllers
    }
    planner = Planner(
        [mr.route for mr in routes],
        dep.planner,
        clock,
        {v.id: v.priority for v in dep.vehicles},
        dep.priorities,
    )
    return Daemon(
        clock=clock,
        planner=planner,
        matcher_for=lambda vehicle: RouteMatcher(vehicle, index),
        adapters=adapters,
    )


def sources(dep: Deployment, daemon: Daemon, clock: Clock) -> list[AsyncIterable[Fix]]:
    return [_source(g, dep, daemon, clock) for g in dep.gps]


def _source(
    g: GpsSourceConfig, dep: Deployment, daemon: Daemon, clock: Clock
) -> AsyncIterable[Fix]:
    if isinstance(g, NmeaFileSource):
        return NmeaReplay.from_file(g.path, g.vehicle, clock, rate=g.rate)
    if isinstance(g, SerialSource):
        return SerialNmeaSource(g.device, g.vehicle, clock, baudrate=g.baudrate)
    if isinstance(g, MqttFleetSource):
        password = g.password_file.read_text(encoding="utf-8").strip() if g.password_file else None
        broker = BrokerSettings(
            host=g.host,
            port=g.port,
            username=g.username,
            password=password,
            tls=g.tls,
            tls_ca=g.tls_ca,
            tls_cert=g.tls_cert,
            tls_key=g.tls_key,
        )

        def on_status(msg: VehicleStatus) -> None:
            if isinstance(msg, StatusMessage):
                daemon.set_emergency(msg.vehicle, msg.emergency, _STATUS_SOURCE[msg.source])

        return MqttFixSource(
            broker,
            [v.id for v in dep.vehicles],
            clock,
            prefix=g.topic_prefix,
            on_status=on_status,
        )
    return GpsdSource(g.vehicle, clock, host=g.host, port=g.port, device=g.device)


async def run(dep: Deployment, clock: Clock, stop: asyncio.Event) -> Daemon:
    """Run until ``stop`` is set (or every source has ended); every request is taken back."""
    daemon = build(dep, clock)
    await daemon.run(sources(dep, daemon, clock), stop)
    return daemon
