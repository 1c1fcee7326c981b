"""The daemon wired from a deployment file: routes, planner, adapters, sources, journal.

Sources come from ``[[gps]]``: NMEA log replays (re-timed to now, for shadow
runs), serial receivers, gpsd, and the fleet's MQTT feed, whose status messages
switch vehicles' runs on and off and whose last-will ``offline`` ends a
vehicle's claims at once. Controllers get the adapter their ``[[controllers]]``
entry names; ``adapter = "log"`` runs in shadow mode (signal_adapters/logfile.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable
from typing import Any

from gps.gpsd import GpsdSource
from gps.mqtt import (
    BrokerSettings,
    MqttFixSource,
    VehicleStatus,
    accepts_anonymous,
    insecurities,
)
from gps.position_json import LinkMessage, StatusMessage, StatusSource
from gps.replay import NmeaReplay
from gps.serial import SerialNmeaSource
from gps.validity import MAX_FUTURE_S, MotionGate
from preemption.decisions.planner import Planner
from preemption.kernel.clock import Clock
from preemption.kernel.config import (
    Deployment,
    GpsSourceConfig,
    MqttFleetSource,
    NmeaFileSource,
    SerialSource,
)
from preemption.kernel.errors import InsecureInput
from preemption.kernel.model import Fix
from preemption.service.daemon import Daemon, SourceSpec
from preemption.service.events import EventSink
from routes.geojson import RouteSet, load_routes
from routes.index import RouteIndex
from routes.matcher import RouteMatcher
from signal_adapters import registry
from signal_adapters.base import AdapterContext, SignalAdapter

log = logging.getLogger(__name__)

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
    *,
    sink: EventSink | None = None,
    boot_id: str = "",
) -> Daemon:
    """Routes, matcher index, planner and adapters of a deployment, as one daemon.

    ``resources`` go to the adapters (the simulator's controllers for "simlink");
    ``routes`` saves loading the route files again when the caller has them;
    ``sink`` receives the daemon's history (the journal); ``boot_id`` starts every
    request id.
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
        on_event=None if sink is None else sink.planner_event,
        id_prefix=f"{boot_id}:" if boot_id else "",
    )
    return Daemon(
        clock=clock,
        planner=planner,
        matcher_for=lambda vehicle: RouteMatcher(vehicle, index),
        adapters=adapters,
        config=dep.service,
        sink=sink,
        gate_for=_gate_for(dep),
    )


def _gate_for(dep: Deployment) -> Callable[[str], MotionGate]:
    speed = dep.service.max_implied_speed_ms
    return lambda _vehicle: MotionGate(max_speed_ms=speed)


def sources(dep: Deployment, daemon: Daemon, clock: Clock) -> list[SourceSpec]:
    """One restartable source per ``[[gps]]`` entry (BrokerConfigError for bad settings)."""
    return [_source(k, g, dep, daemon, clock) for k, g in enumerate(dep.gps)]


def _source(
    k: int, g: GpsSourceConfig, dep: Deployment, daemon: Daemon, clock: Clock
) -> SourceSpec:
    name = f"gps[{k}] ({g.kind})"
    if isinstance(g, NmeaFileSource):
        path, vehicle, rate = g.path, g.vehicle, g.rate
        # A replay plays once: when it has ended it is not started again. Re-timed, so
        # that its fixes are as old as they would have been live.
        return SourceSpec(
            name,
            lambda: NmeaReplay.from_file(path, vehicle, clock, rate=rate, retime=True),
            restart=False,
        )
    if isinstance(g, SerialSource):
        device, vehicle, baud = g.device, g.vehicle, g.baudrate
        return SourceSpec(name, lambda: SerialNmeaSource(device, vehicle, clock, baudrate=baud))
    if isinstance(g, MqttFleetSource):
        fleet = fleet_source(
            g, dep, daemon, clock
        )  # settings checked now, not at the first connect
        made = [fleet]

        def reopen() -> AsyncIterable[Fix]:
            # The first opening uses the source checked above; a restart makes a new one.
            return made.pop() if made else fleet_source(g, dep, daemon, clock)

        return SourceSpec(name, reopen)
    gpsd = g
    return SourceSpec(
        name,
        lambda: GpsdSource(
            gpsd.vehicle,
            clock,
            host=gpsd.host,
            port=gpsd.port,
            device=gpsd.device,
            max_future_s=MAX_FUTURE_S,  # a live receiver: judged against the clock too
        ),
    )


def check_fleet_security(dep: Deployment) -> list[str]:
    """Warnings for every fleet feed that anyone on the network could forge.

    Raises InsecureInput for such a feed (no TLS, or no client credentials) unless it
    says ``insecure = true``; with it, the warnings say why at every start. Whether the
    broker itself lets anonymous clients in is :func:`probe_fleet_brokers`'s question.
    """
    warnings = []
    for k, g in enumerate(dep.gps):
        if not isinstance(g, MqttFleetSource):
            continue
        gaps = insecurities(broker_settings(g))
        if not gaps:
            continue
        text = f"gps[{k}]: the fleet feed is not authenticated: " + "; ".join(gaps)
        if not g.insecure:
            raise InsecureInput(
                f"{text}. Configure TLS and the daemon's credentials (config/mosquitto/), or "
                "set insecure = true in this [[gps]] entry for a closed test network"
            )
        warnings.append(f"{text} (insecure = true)")
    return warnings


async def probe_fleet_brokers(dep: Deployment) -> list[str]:
    """Ask each fleet broker whether it lets a client in without credentials.

    Raises InsecureInput when one does (anyone could publish as a fire engine) and
    the feed is not marked ``insecure``; returns warnings for what could not be told
    (a broker not reachable yet) and for insecure feeds.
    """
    warnings = []
    for k, g in enumerate(dep.gps):
        if not isinstance(g, MqttFleetSource):
            continue
        settings = broker_settings(g)
        open_door = await accepts_anonymous(settings)
        where = f"gps[{k}]: broker {settings.address}"
        if open_door is None:
            warnings.append(
                f"{where} could not be asked whether it refuses clients without credentials "
                "(not reachable yet); check its allow_anonymous false (config/mosquitto/)"
            )
        elif open_door:
            text = (
                f"{where} lets in clients without credentials: anyone who reaches it can "
                "publish positions as a fire engine"
            )
            if not g.insecure:
                raise InsecureInput(
                    f"{text}; set allow_anonymous false and install the ACL of "
                    "config/mosquitto/, or set insecure = true for a closed test network"
                )
            warnings.append(f"{text} (insecure = true)")
    return warnings


def broker_settings(g: MqttFleetSource) -> BrokerSettings:
    password = g.password_file.read_text(encoding="utf-8").strip() if g.password_file else None
    return BrokerSettings(
        host=g.host,
        port=g.port,
        username=g.username,
        password=password,
        tls=g.tls,
        tls_ca=g.tls_ca,
        tls_cert=g.tls_cert,
        tls_key=g.tls_key,
    )


def fleet_source(
    g: MqttFleetSource, dep: Deployment, daemon: Daemon, clock: Clock
) -> MqttFixSource:
    def on_status(msg: VehicleStatus) -> None:
        if isinstance(msg, StatusMessage):
            daemon.set_emergency(msg.vehicle, msg.emergency, _STATUS_SOURCE[msg.source])
        elif isinstance(msg, LinkMessage) and not msg.online:
            daemon.vehicle_offline(msg.vehicle)

    return MqttFixSource(
        broker_settings(g),
        [v.id for v in dep.vehicles],
        clock,
        prefix=g.topic_prefix,
        on_status=on_status,
        max_age_s=g.max_age_s,
        max_future_s=g.max_future_s,
        max_rate_hz=g.max_rate_hz,
        arrival_burst=g.arrival_burst,
    )
