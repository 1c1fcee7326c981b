"""``preemption routes build SPEC``: a build spec in, route file, deployment and programs out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from routes.build import BuiltRoute, build_route
from routes.buildout import (
    Demand,
    SignalEntry,
    deployment_toml,
    intersection_ids,
    intersections_toml,
    relative,
    routes_geojson,
    scenario_toml,
    signal_entries,
)
from routes.buildspec import load_spec
from routes.programs import ProgramData, program_of
from routes.roadnet import RoadNetwork, load_network


@dataclass(frozen=True)
class BuildReport:
    routes: tuple[BuiltRoute, ...]
    signals: tuple[SignalEntry, ...]
    written: tuple[Path, ...]
    untouched_tls: tuple[str, ...]  # signalised junctions of the network no route crosses
    network: RoadNetwork


def run_build(spec_path: Path | str, out_dir: Path | None = None) -> BuildReport:
    spec, base = load_spec(spec_path)
    out = out_dir or base
    net_path = base / spec.network.file
    rn = load_network(net_path, vclass=spec.network.vclass)
    programs: dict[str, ProgramData] = {
        tl: program_of(rn.net, tl, spec.signals.program, spec.signals.max_green_s)
        for tl in sorted(rn.signalised)
    }
    green_of = {
        tl: {int(g[1:]): p.group_green_s(g) for st in p.stages for g in st.groups}
        for tl, p in programs.items()
    }
    routes = tuple(
        build_route(rn, spec.station, t, spec.network.snap_radius_m, green_of) for t in spec.targets
    )
    ids = intersection_ids(routes, spec.signals.id_prefix, spec.signals.names)
    names = {tl: rn.junction_name(tl) for tl in ids if tl in rn.signalised}
    demand = None
    if spec.scenario is not None and spec.scenario.demand is not None:
        d = spec.scenario.demand
        demand = Demand(
            approaches={tl: rn.approaches(tl) for tl in sorted(rn.signalised)},
            route_veh_h=d.route_veh_h,
            other_veh_h=d.other_veh_h,
            max_saturation=d.max_saturation,
        )
    signals = signal_entries(routes, ids, programs, names, rn.to_lonlat, demand)
    used_tls = {s.tl for s in signals}
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    routes_path = out / spec.output.routes
    doc = routes_geojson_doc(routes, signals, rn, routes_path.parent)
    routes_path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    written.append(routes_path)

    dep_path = out / spec.output.deployment
    dep = spec.deployment
    dep_path.write_text(
        deployment_toml(
            dep.name,
            relative(routes_path, dep_path.parent),
            dep.adapter,
            dep.epsg,
            [(v.id, v.name, v.priority) for v in dep.vehicles],
            signals,
            programs,
            Path(spec_path).name,
        ),
        encoding="utf-8",
    )
    written.append(dep_path)

    inter = intersections_toml(signals, programs, demand)
    if spec.scenario is None:
        prog_path = out / spec.output.programs
        prog_path.write_text(inter, encoding="utf-8")
        written.append(prog_path)
    else:
        sc = spec.scenario
        default_vehicle = dep.vehicles[0].id
        engines = [
            (t.vehicle or default_vehicle, t.id, sc.depart_s + k * sc.spacing_s)
            for k, t in enumerate(spec.targets)
        ]
        scen_path = out / spec.output.scenario
        scen_path.write_text(
            scenario_toml(
                sc.name,
                relative(dep_path, scen_path.parent),
                sc.start_utc,
                engines,
                inter,
                Path(spec_path).name,
            ),
            encoding="utf-8",
        )
        written.append(scen_path)
    return BuildReport(
        routes=routes,
        signals=tuple(signals),
        written=tuple(written),
        untouched_tls=tuple(sorted(rn.signalised - used_tls)),
        network=rn,
    )


def routes_geojson_doc(
    routes: tuple[BuiltRoute, ...], signals: list[SignalEntry], rn: RoadNetwork, where: Path
) -> dict[str, object]:
    return routes_geojson(
        routes, signals, rn.to_lonlat, relative(rn.path.resolve(), where.resolve()), rn.vclass
    )
