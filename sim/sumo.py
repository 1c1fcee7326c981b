"""The SUMO street model: the scenario run in SUMO through libsumo.

``SumoStreet`` is a :class:`sim.street.Street` like the in-process corridor, so
the same runner drives it with the same daemon. Our controller models
(``sim.controller``) stay the truth of the signal state: the planner's commands
reach them through the ``simlink`` adapter, and before every SUMO step each
intersection's aspects are pushed into SUMO with
``trafficlight.setRedYellowGreenState`` (the TraCI call), so SUMO's lights
follow them exactly. SUMO moves the engine (Krauss car following with
sigma = 0, ballistic update) and any background traffic.

The engine obeys red in SUMO as in the in-process model: it is an emergency
vehicle type without the blue-light device, so the comparison holds like for
like. What SUMO reports is turned into the same :class:`sim.street.EngineTrip`
with the same definitions (passage = the front crossing the stop line, with
the aspect its group showed at the start of that step; waiting time = seconds
below 0.1 m/s; stops = standstills after moving).

Two network sources: a scenario whose route file was built from a SUMO network
(``preemption_build.network`` names a file that exists) runs on that network
(``sim.sumo_realnet``); any other scenario on a network exported from its route
geometry (``sim.sumo_export``).

libsumo runs one simulation per process: a ``SumoStreet`` is a context manager
and must be closed; opening a second while one is open is an error.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from routes.geojson import RouteSet
from sim.controller import Aspect, SignalController
from sim.nmea_out import epoch_sentences
from sim.scenario import EngineConfig, Scenario
from sim.street import EngineTrip, SignalPassage, TrajectoryPoint
from sim.sumo_demand import CAR_TYPE, EXIT_POS_M, background_vehicles, vehicles_xml
from sim.sumo_export import SUMO_STATE, SumoExportError, SumoNetwork, export_network, sumo_binary
from sim.sumo_realnet import (
    BuiltRoute,
    RouteDistance,
    StopLineCheck,
    TlBinding,
    bind_traffic_lights,
    built_network,
    built_route,
    engine_speed_factor,
    lane_position,
    route_distance,
    traffic_lights,
)
from sim.sumo_realnet import background_vehicles as real_background_vehicles
from sim.world import controllers_of, engine_profile, engine_route, signals_on_route

STOPPED_SPEED = 0.1  # m/s; slower counts as standing (SUMO's waitingTime)
ENGINE_TYPE = "fire_engine"

_open_street: SumoStreet | None = None  # libsumo holds one simulation per process


def libsumo_available() -> str | None:
    """None when the SUMO backend can run here, else why not."""
    try:
        import libsumo  # noqa: F401
    except ImportError as exc:
        return f"libsumo is not installed ({exc}); install the 'sumo' extra"
    try:
        sumo_binary("netconvert")
        sumo_binary("sumo")
    except SumoExportError as exc:
        return str(exc)
    return None


@dataclass
class _Track:
    s: float = 0.0  # along the route file's geometry
    d: float = 0.0  # along SUMO's lanes (equal to s on the exported network)
    v: float = 0.0
    in_sumo: bool = False
    arrived_at: float | None = None
    waiting_s: float = 0.0
    stops: int = 0
    was_moving: bool = False
    passages: list[SignalPassage] = field(default_factory=list)
    trajectory: list[TrajectoryPoint] = field(default_factory=list)
    next_signal: int = 0


class SumoStreet:
    """The scenario's controllers and one engine (plus background traffic) in SUMO."""

    def __init__(
        self,
        scenario: Scenario,
        routes: RouteSet,
        engine: EngineConfig,
        *,
        workdir: Path | None = None,
        seed: int = 42,
        extra_args: tuple[str, ...] = (),
        route_files: Sequence[Path] = (),
    ) -> None:
        global _open_street
        import libsumo

        if _open_street is not None:
            raise RuntimeError(
                "a SUMO simulation is already open in this process (libsumo runs one at a "
                "time); close the other SumoStreet first"
            )
        self.scenario = scenario
        self.engine_cfg = engine
        self.route = engine_route(scenario, routes, engine)
        self.projector = routes.projector
        self.step_s = scenario.scenario.step_s
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="preemption-sumo-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self._controllers = controllers_of(scenario)
        self.signals = signals_on_route(scenario, self.route, engine, self._controllers)
        self._t = 0.0
        self._steps = 0
        self._track = _Track()
        # The engine drives its speed profile (slower in curves and turns) in both street
        # models: SUMO's own turn speeds are the network's, not the engine's.
        self._profile = engine_profile(self.route, engine)
        self._max_set = math.nan
        self.background = 0
        self.real_net: Path | None = built_network(route_files) if route_files else None
        self._bindings: dict[str, TlBinding] = {}
        self._shown: dict[str, str] = {}
        self._distance: RouteDistance | None = None
        if self.real_net is not None:
            self.built: BuiltRoute = built_route(route_files, engine.route)
            self.max_speed = min(
                engine.max_speed_kmh / 3.6, self.route.route.speed_limit or math.inf
            )
            net_file = self.real_net
            files = ["-a", str(self._write_types())]
        else:
            self.network: SumoNetwork = export_network(scenario, routes, workdir)
            self.route_edges = self.network.routes[engine.route]
            self.max_speed = min(
                engine.max_speed_kmh / 3.6, self.network.edges[self.route_edges.edges[0]].speed
            )
            route_file = workdir / "demand.rou.xml"
            route_file.write_text(self._demand_xml(), encoding="utf-8")
            net_file = self.network.net_file
            files = ["-r", str(route_file)]
        args = [
            str(sumo_binary("sumo")),
            "-n", str(net_file),
            *files,
            "--step-length", f"{self.step_s}",
            "--step-method.ballistic", "true",
            "--time-to-teleport", "-1",
            "--collision.action", "warn",
            "--seed", str(seed),
            "--no-step-log", "true",
            "--no-warnings", "true",
            "--begin", "0",
            *extra_args,
        ]  # fmt: skip
        libsumo.start(args)
        _open_street = self
        self._libsumo: Any = libsumo
        try:
            if self.real_net is not None:
                self._populate_real_net(route_files)
            else:
                self._check_links()
        except BaseException:
            self.close()
            raise

    # -- the Street protocol -----------------------------------------------------------------

    @property
    def t(self) -> float:
        return self._t

    @property
    def controllers(self) -> Mapping[str, SignalController]:
        return self._controllers

    @property
    def departed(self) -> bool:
        return self._t >= self.engine_cfg.depart_s

    @property
    def finished(self) -> bool:
        return self._track.arrived_at is not None

    def advance(self, dt: float) -> None:
        """Run SUMO for ``dt`` seconds, in whole scenario steps."""
        n = round(dt / self.step_s)
        if n < 1 or abs(n * self.step_s - dt) > 1e-6:
            raise ValueError(
                f"SumoStreet advances in whole steps of {self.step_s} s (the scenario's "
                f"step_s); {dt} s is not one"
            )
        for _ in range(n):
            self._step()

    def nmea(self, t_utc: float) -> list[str]:
        """RMC and GGA at the engine's position along its route (no GNSS error)."""
        st = self.route.at(self._track.s)
        lon, lat = self.projector.to_wgs84(st.x, st.y)
        return epoch_sentences(t_utc, lat, lon, self._track.v, st.heading_deg)

    def trip(self) -> EngineTrip:
        tr = self._track
        depart = self.engine_cfg.depart_s
        end = tr.arrived_at if tr.arrived_at is not None else self._t
        travel = end - depart
        return EngineTrip(
            vehicle=self.engine_cfg.vehicle,
            route=self.engine_cfg.route,
            depart=depart,
            arrival=end,
            route_length=self.route.length,
            travel_time=travel,
            time_loss=travel - self.route.length / self.max_speed,
            waiting_time=tr.waiting_s,
            stops=tr.stops,
            passages=tuple(tr.passages),
            trajectory=tuple(tr.trajectory),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        global _open_street
        if _open_street is self:
            try:
                self._libsumo.close()
            finally:
                _open_street = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SumoStreet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _demand_xml(self) -> str:
        e = self.engine_cfg
        # SUMO inserts a vehicle at the end of the step at its departure time, so it first
        # moves one step later; inserting it one step early makes it move from depart_s on,
        # as the in-process engine does.
        depart = max(0.0, e.depart_s - self.step_s)
        engine = [
            f'  <vehicle id="{e.vehicle}" type="{ENGINE_TYPE}" depart="{depart:.2f}" '
            'departPos="0" departSpeed="0" departLane="0">'
            f'<route edges="{" ".join(self.route_edges.edges)}"/></vehicle>'
        ]
        background = background_vehicles(
            self.scenario, self.network, self.scenario.scenario.time_limit_s
        )
        cars = vehicles_xml(background, self.step_s)
        # Vehicles in order of departure, as SUMO reads them; the engine first at a tie.
        k = sum(1 for v in background if v.depart < depart)
        lines = [
            "<routes>",
            self._engine_vtype(),
            cars[0],
            *cars[1 : k + 1],
            *engine,
            *cars[k + 1 :],
            "</routes>",
        ]
        self.background = len(background)
        return "\n".join(lines) + "\n"

    def _engine_vtype(self) -> str:
        e = self.engine_cfg
        return (
            f'  <vType id="{ENGINE_TYPE}" vClass="emergency" carFollowModel="Krauss" '
            f'sigma="0" tau="1" accel="{e.accel}" decel="{e.decel}" '
            f'emergencyDecel="{2 * e.decel}" apparentDecel="{e.decel}" '
            f'maxSpeed="{e.max_speed_kmh / 3.6:.4f}" length="{e.length_m}" minGap="1.0" '
            'speedFactor="1" speedDev="0" guiShape="firebrigade" color="red"/>'
        )

    def _write_types(self) -> Path:
        """The engine's and the cars' vTypes, for a run on a real network."""
        path = self.workdir / "types.add.xml"
        car = vehicles_xml([], self.step_s)[0]
        path.write_text(
            f"<additional>\n{self._engine_vtype()}\n{car}\n</additional>\n", encoding="utf-8"
        )
        return path

    def _populate_real_net(self, route_files: Sequence[Path]) -> None:
        """Bind the traffic lights, place the engine on its edges, add the demand."""
        sumo = self._libsumo
        built = self.built
        self._bindings = bind_traffic_lights(
            sumo,
            self.scenario,
            traffic_lights(route_files),
            {s.intersection: s.links for s in built.signals},
        )
        ours = [s.intersection for s in self.signals]
        theirs = [s.intersection for s in built.signals]
        if ours != theirs:
            raise SumoExportError(
                f"route {built.id!r}: the route file lists signals {ours} but their SUMO "
                f"approach edges give {theirs}; rebuild the route file"
            )
        first = self.projector.to_wgs84(*map(float, self.route.xy[0]))
        last = self.projector.to_wgs84(*map(float, self.route.xy[-1]))
        depart_pos = lane_position(sumo, f"{built.edges[0]}_0", *first)
        arrival_pos = lane_position(sumo, f"{built.edges[-1]}_0", *last)
        self._distance = route_distance(
            sumo,
            built,
            depart_pos,
            arrival_pos,
            [s.stop_line_m for s in self.signals],
            self.route.length,
        )
        self.speed_factor = engine_speed_factor(sumo, self.engine_cfg, built.edges)
        sumo.vehicletype.setSpeedFactor(ENGINE_TYPE, self.speed_factor)
        e = self.engine_cfg
        sumo.route.add("engine", list(built.edges))
        sumo.vehicle.add(
            e.vehicle,
            "engine",
            typeID=ENGINE_TYPE,
            depart=f"{max(0.0, e.depart_s - self.step_s):.2f}",  # see _demand_xml
            departLane="best",
            departPos=f"{depart_pos:.2f}",
            departSpeed="0",
            arrivalPos=f"{arrival_pos:.2f}",
        )
        routes: set[tuple[str, str]] = set()
        cars = real_background_vehicles(
            sumo, self.scenario, self._bindings, self.scenario.scenario.time_limit_s
        )
        for car, lane in cars:
            rid = "bg:" + ">".join(car.edges)
            if car.edges not in routes:
                sumo.route.add(rid, list(car.edges))
                routes.add(car.edges)
            sumo.vehicle.add(
                car.id,
                rid,
                typeID=CAR_TYPE,
                depart=f"{round(car.depart / self.step_s) * self.step_s:.2f}",
                departLane=str(lane),
                departPos=f"{car.depart_pos:.2f}",
                departSpeed="max",
                arrivalPos=f"{EXIT_POS_M}",
            )
        self.background = len(cars)

    def stop_lines(self) -> list[StopLineCheck]:
        """Each stop line's distance along the route, the route file's and SUMO's own
        (SUMO's is measured once the engine has driven onto the approach edge)."""
        dist = self._distance
        if dist is None:
            return [
                StopLineCheck(s.intersection, s.stop_line_m, s.stop_line_m) for s in self.signals
            ]
        out = [
            StopLineCheck(s.intersection, s.stop_line_m, dist.sumo_m[k + 1])
            for k, s in enumerate(self.signals)
        ]
        out.append(StopLineCheck("end of route", self.route.length, dist.sumo_m[-1]))
        return out

    def _check_links(self) -> None:
        """The link indices netconvert kept are the ones the export asked for."""
        tl = self._libsumo.trafficlight
        for iid, links in self.network.signals.items():
            got = tl.getControlledLinks(links.tl_id)
            if len(got) != len(links.groups):
                raise SumoExportError(
                    f"intersection {iid!r}: SUMO controls {len(got)} links, the export "
                    f"asked for {len(links.groups)}; look at {self.workdir}/plain.tll.xml"
                )

    def _push_signals(self) -> None:
        tl = self._libsumo.trafficlight
        if self.real_net is not None:
            for iid, b in self._bindings.items():
                state = b.state(self._controllers[iid])
                if self._shown.get(iid) != state:  # SUMO holds a set state until the next
                    tl.setRedYellowGreenState(b.tl, state)
                    self._shown[iid] = state
            return
        for iid, links in self.network.signals.items():
            ctrl = self._controllers[iid]
            state = "".join(SUMO_STATE[ctrl.aspect(g)] for g in links.groups)
            tl.setRedYellowGreenState(links.tl_id, state)

    def _step(self) -> None:
        t0, dt = self._t, self.step_s
        for c in self._controllers.values():
            c.advance_to(t0)
        aspects: dict[int, Aspect] = {}
        tr = self._track
        for i in range(tr.next_signal, len(self.signals)):
            sig = self.signals[i]
            aspects[i] = self._controllers[sig.intersection].aspect(sig.group)
        self._push_signals()
        if tr.in_sumo and tr.arrived_at is None:
            v_max = min(self.max_speed, self._profile.speed_at(tr.s))
            if not abs(v_max - self._max_set) < 1e-3:
                self._libsumo.vehicle.setMaxSpeed(self.engine_cfg.vehicle, v_max)
                self._max_set = v_max
        self._libsumo.simulationStep()
        self._steps += 1
        self._t = self._steps * dt
        self._observe(t0, dt, aspects)
        for c in self._controllers.values():
            c.advance_to(self._t)

    def _observe(self, t0: float, dt: float, aspects: Mapping[int, Aspect]) -> None:
        tr = self._track
        if tr.arrived_at is not None:
            return
        veh = self._libsumo.vehicle
        vid = self.engine_cfg.vehicle
        dist = self._distance
        end = self.route.length if dist is None else dist.sumo_m[-1]
        d_old, v_old = tr.d, tr.v
        if vid in self._libsumo.simulation.getArrivedIDList():
            # Gone at the end of its route this step: where it would be, at its acceleration.
            v_new = min(v_old + self.engine_cfg.accel * dt, self.max_speed)
            d_new = max(d_old + 0.5 * (v_old + v_new) * dt, end)
        elif vid in veh.getIDList():
            tr.in_sumo = True
            edge = veh.getRoadID(vid)
            v_new = veh.getSpeed(vid)
            if dist is not None:
                # SUMO's odometer runs from the insertion point, the route's start.
                d_new = veh.getDistance(vid)
                if edge in dist.approach:
                    pos = veh.getLanePosition(vid)
                    lane_len = self._libsumo.lane.getLength(veh.getLaneID(vid))
                    dist.measure(edge, d_new + lane_len - pos)
            elif edge not in self.route_edges.edges:
                return  # on an internal lane (not built with --no-internal-links)
            else:
                d_new = self.route_edges.start_of(edge) + veh.getLanePosition(vid)
        else:
            return  # not yet inserted
        for i in range(tr.next_signal, len(self.signals)):
            sig = self.signals[i]
            stop = sig.stop_line_m if dist is None else dist.sumo_m[i + 1]
            if d_new < stop:
                break
            tau = _time_to(stop - d_old, v_old, v_new, dt)
            speed = v_old + (v_new - v_old) * tau / dt
            tr.passages.append(
                SignalPassage(sig.intersection, sig.group, t0 + tau, aspects[i], speed)
            )
            tr.next_signal = i + 1
        if d_new >= end:
            tr.arrived_at = t0 + _time_to(end - d_old, v_old, v_new, dt)
            d_new = end
        moving = v_new >= STOPPED_SPEED
        if not moving:
            tr.waiting_s += dt
            if tr.was_moving:
                tr.stops += 1
        tr.was_moving = moving
        s_new = d_new if dist is None else min(dist.to_route(d_new), self.route.length)
        tr.s, tr.d, tr.v = s_new, d_new, v_new
        tr.trajectory.append(TrajectoryPoint(t0 + dt, s_new, v_new))


def _time_to(d: float, v0: float, v1: float, dt: float) -> float:
    """Time into a step at which ``d`` is covered, speed linear from ``v0`` to ``v1``."""
    if d <= 0:
        return 0.0
    k = (v1 - v0) / dt
    return min(dt, 2 * d / (v0 + math.sqrt(max(v0 * v0 + 2 * k * d, 0.0))))
