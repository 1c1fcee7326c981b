"""Writing what ``preemption routes build`` built: route GeoJSON, deployment stub, programs.

Routes and signals follow docs/routes.md exactly (``routes.geojson.load_routes``
reads them back); SUMO's names ride along in extra properties (``sumo_edges``,
``sumo_tl``, ``sumo_links``) that the loader ignores. The deployment is a whole
file ``preemption check-config`` accepts, with TODO comments where the operator
must decide (adapter, address). Programs are the scenario's
``[[intersections]]`` (sim/scenario.py), written as TOML text here because
routes/ must not import the simulator.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routes.build import BuiltRoute, PathSignal
from routes.programs import ProgramData, group_name
from routes.roadnet import TlApproach


@dataclass(frozen=True, slots=True)
class SignalEntry:
    """One signal feature: an intersection's stop line on one approach, shared by routes."""

    intersection: str
    controller: str
    approach: str
    tl: str
    junction: str
    name: str
    routes: tuple[str, ...]
    links: tuple[int, ...]  # SUMO link indices of the movement; the first is the route's
    lonlat: tuple[float, float]
    transition_s: float
    also: tuple[tuple[str, str, tuple[int, ...]], ...]


def intersection_ids(
    routes: Sequence[BuiltRoute], prefix: str, fixed: Mapping[str, str]
) -> dict[str, str]:
    """SUMO TL id -> intersection id: fixed names first, then K1, K2, ... in route order."""
    ids = dict(fixed)
    used = set(ids.values())
    n = 0
    for r in routes:
        for s in r.signals:
            if s.tl in ids:
                continue
            n += 1
            while f"{prefix}{n}" in used:
                n += 1
            ids[s.tl] = f"{prefix}{n}"
            used.add(ids[s.tl])
    return ids


@dataclass(frozen=True, slots=True)
class Demand:
    """Background traffic to write: per traffic light its approaches, and the rates."""

    approaches: Mapping[str, Sequence[TlApproach]]  # SUMO TL id -> streets entering it
    route_veh_h: float
    other_veh_h: float
    max_saturation: float  # highest degree of saturation (flow / capacity) on an approach
    saturation_flow_veh_h: float = 1800.0  # one lane, 2 s headway


def capped_rate(rate: float, group: str, program: ProgramData, demand: Demand) -> float:
    """``rate``, or less where the group's share of green could not serve it: an
    oversaturated approach queues without end, in the baseline and with pre-emption."""
    capacity = demand.saturation_flow_veh_h * program.group_green_s(group) / program.cycle_s
    return round(min(rate, demand.max_saturation * capacity), 0)


START_UP_LOSS_S = 2.0
HEADWAY_S = 2.0


def transition_estimate(p: ProgramData, queue_clearance_s: float = 0.0) -> float:
    """Worst case to green from the program alone (a minimum green, then the
    intergreen), plus the time the queue ahead of the engine needs to clear."""
    return round(min(180.0, p.min_green_s + p.yellow_s + p.all_red_s + queue_clearance_s), 1)


def queue_clearance(p: ProgramData, group: str, demand: Demand | None) -> float:
    """Seconds a typical queue on the route's approach needs to discharge once green:
    the vehicles that arrive during the group's red (mean plus one standard deviation
    of Poisson arrivals), at the saturation headway after the start-up loss.

    The engine can go no faster than the queue in front of it; asking for green this
    much earlier is what clears its way (queue clearance). 0 without demand."""
    if demand is None:
        return 0.0
    red = max(p.cycle_s - p.group_green_s(group), 0.0)
    rate = capped_rate(demand.route_veh_h, group, p, demand)
    queued = rate * red / 3600.0
    return START_UP_LOSS_S + HEADWAY_S * (queued + math.sqrt(queued))


def signal_entries(
    routes: Sequence[BuiltRoute],
    ids: Mapping[str, str],
    programs: Mapping[str, ProgramData],
    names: Mapping[str, str],
    to_lonlat: Any,
    demand: Demand | None = None,
) -> list[SignalEntry]:
    """Signals grouped by (intersection, approach): one feature per stop line."""
    order: list[tuple[str, str]] = []
    first: dict[tuple[str, str], PathSignal] = {}
    members: dict[tuple[str, str], list[str]] = {}
    for r in routes:
        for s in r.signals:
            key = (s.tl, s.approach_edge)
            if key not in first:
                first[key] = s
                order.append(key)
            members.setdefault(key, []).append(r.id)
    out = []
    for key in order:
        s = first[key]
        iid = ids[s.tl]
        out.append(
            SignalEntry(
                intersection=iid,
                controller=f"C-{iid}",
                approach=s.approach_edge,
                tl=s.tl,
                junction=s.junction,
                name=names.get(s.tl, ""),
                routes=tuple(members[key]),
                links=s.link_indices,
                lonlat=to_lonlat(*s.stop_xy),
                transition_s=transition_estimate(
                    programs[s.tl],
                    queue_clearance(programs[s.tl], group_name(s.link_indices[0]), demand),
                ),
                also=tuple(s.also),
            )
        )
    return out


def routes_geojson(
    routes: Sequence[BuiltRoute],
    signals: Sequence[SignalEntry],
    to_lonlat: Any,
    network: str,
    vclass: str,
) -> dict[str, Any]:
    features: list[dict[str, Any]] = []
    for r in routes:
        props: dict[str, Any] = {
            "kind": "route",
            "id": r.id,
            "name": r.name,
            "station": r.station,
            "length_m": round(r.length_m, 1),
            "travel_time_s": round(r.travel_time_s, 1),
            "sumo_edges": list(r.edges),
        }
        if r.speed_limit_kmh is not None:
            props["speed_limit_kmh"] = r.speed_limit_kmh
        coords = [[round(v, 7) for v in to_lonlat(x, y)] for x, y in r.xy]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": coords},
                "properties": props,
            }
        )
    for s in signals:
        sprops: dict[str, Any] = {
            "kind": "signal",
            "routes": list(s.routes),
            "intersection": s.intersection,
            "controller": s.controller,
            "approach": s.approach,
            "transition_s": s.transition_s,
            "name": s.name,
            "sumo_tl": s.tl,
            "sumo_junction": s.junction,
            "sumo_links": list(s.links),
        }
        if s.also:
            sprops["sumo_also"] = [
                {"junction": j, "edge": e, "links": list(ls)} for j, e, ls in s.also
            ]
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Point",
                    "coordinates": [round(s.lonlat[0], 7), round(s.lonlat[1], 7)],
                },
                "properties": sprops,
            }
        )
    return {
        "type": "FeatureCollection",
        # A foreign member (RFC 7946 section 6.1): what the file was built from.
        "preemption_build": {
            "network": network,
            "vclass": vclass,
            "generator": "preemption routes build",
        },
        "features": features,
    }


def toml_str(s: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(s, ensure_ascii=False)


def deployment_toml(
    name: str,
    routes_file: str,
    adapter: str,
    epsg: int | None,
    vehicles: Sequence[tuple[str, str, str]],
    signals: Sequence[SignalEntry],
    programs: Mapping[str, ProgramData],
    source: str,
) -> str:
    """A whole deployment file; ``[[controllers]]`` one per intersection, commented."""
    lines = [
        f"# Deployment written by `preemption routes build {source}`.",
        "# TODO(operator): every [[controllers]] needs the adapter your controller speaks",
        "# and its address in options; 'log' is shadow mode (asks no controller, writes",
        "# each command as a JSON line), 'simlink' is the simulator's in-process link.",
        "",
        "[deployment]",
        f"name = {toml_str(name)}",
    ]
    if epsg is not None:
        lines.append(f"epsg = {epsg}")
    lines += ["", "[routes]", f"files = [{toml_str(routes_file)}]", ""]
    for vid, vname, prio in vehicles:
        lines += [
            "[[vehicles]]",
            f"id = {toml_str(vid)}",
            f"name = {toml_str(vname)}",
            f"priority = {toml_str(prio)}",
            "",
        ]
    by_controller: dict[str, list[SignalEntry]] = {}
    for s in signals:
        by_controller.setdefault(s.controller, []).append(s)
    for cid, entries in by_controller.items():
        e0 = entries[0]
        p = programs[e0.tl]
        lines.append(f"# {e0.intersection}: {e0.name or 'unnamed junction'}")
        lines.append(f"#   SUMO traffic light {e0.tl} (program {p.program_id}, {p.kind})")
        for e in entries:
            extra = "".join(
                f"; then junction {j} from edge {ed}, links {list(ls)}" for j, ed, ls in e.also
            )
            lines.append(
                f"#   approach {e.approach!r} (incoming edge) -> SUMO links {list(e.links)}, "
                f"signal group {group_name(e.links[0])}; routes {', '.join(e.routes)}{extra}"
            )
        lines += [
            "[[controllers]]",
            f"id = {toml_str(cid)}",
            f"adapter = {toml_str(adapter)}  # TODO(operator): the controller's adapter",
            "options = {}  # TODO(operator): address, credentials, preempt numbers",
            "",
        ]
    return "\n".join(lines)


def demand_lines(entries: Sequence[SignalEntry], program: ProgramData, demand: Demand) -> list[str]:
    """``demand = [...]``: the routes' approaches at ``route_veh_h``, every other street
    entering the junction at ``other_veh_h`` on its through movement's signal group
    (streets whose movements the program never shows green are left out); each capped
    at ``max_saturation`` of what its green can serve."""
    green = {g for st in program.stages for g in st.groups}
    own = {e.approach: group_name(e.links[0]) for e in entries}
    items = []
    for edge, group in own.items():
        rate = capped_rate(demand.route_veh_h, group, program, demand)
        items.append(
            f"{{ approach = {toml_str(edge)}, veh_h = {rate}, "
            f"name = {toml_str('route approach')} }}"
        )
    for ap in demand.approaches.get(program.tl, ()):
        group = group_name(ap.link_index)
        if ap.edge in own or group not in green:
            continue
        rate = capped_rate(demand.other_veh_h, group, program, demand)
        items.append(
            f"{{ approach = {toml_str(ap.edge)}, group = {toml_str(group)}, "
            f"veh_h = {rate}, name = {toml_str(ap.name or ap.edge)} }}"
        )
    return ["demand = [", *(f"  {i}," for i in items), "]"]


def intersections_toml(
    signals: Sequence[SignalEntry],
    programs: Mapping[str, ProgramData],
    demand: Demand | None = None,
) -> str:
    """``[[intersections]]`` tables, one per intersection, from the SUMO programs."""
    seen: dict[str, list[SignalEntry]] = {}
    for s in signals:
        seen.setdefault(s.intersection, []).append(s)
    lines: list[str] = []
    for iid, entries in seen.items():
        p = programs[entries[0].tl]
        approaches = ", ".join(
            f"{toml_str(e.approach)} = {toml_str(group_name(e.links[0]))}" for e in entries
        )
        stages = ",\n  ".join(
            f"{{ groups = [{', '.join(toml_str(g) for g in st.groups)}], green_s = "
            f"{float(st.green_s)} }}"
            for st in p.stages
        )
        lines += [
            f"# {entries[0].name or 'unnamed junction'}: SUMO {p.tl}, program {p.program_id} "
            f"({p.kind}{', as fixed time' if p.kind != 'static' else ''})",
            "[[intersections]]",
            f"id = {toml_str(iid)}",
            f"yellow_s = {float(p.yellow_s)}",
            f"all_red_s = {float(p.all_red_s)}",
            f"min_green_s = {float(p.min_green_s)}",
            f"approaches = {{ {approaches} }}",
            f"stages = [\n  {stages},\n]",
            *(demand_lines(entries, p, demand) if demand is not None else []),
            "",
        ]
    return "\n".join(lines)


def scenario_toml(
    name: str,
    deployment_file: str,
    start_utc: str,
    engines: Sequence[tuple[str, str, float]],
    intersections: str,
    source: str,
) -> str:
    lines = [
        f"# Scenario written by `preemption routes build {source}`: signal programs from",
        "# the network's own traffic-light logic (actuated programs run as fixed time),",
        "# one engine per route, departures spaced so that runs do not overlap.",
        "",
        "[scenario]",
        f"name = {toml_str(name)}",
        f"deployment = {toml_str(deployment_file)}",
        f"start_utc = {start_utc}",
        "",
        "[preemption]",
        "# Dispatch knows the incident's address, so its alarm names the approach route:",
        "# the matcher starts with that prior and the planner may ask past branch points.",
        "dispatch = true",
        "",
    ]
    for vehicle, route, depart in engines:
        lines += [
            "[[engines]]",
            f"vehicle = {toml_str(vehicle)}",
            f"route = {toml_str(route)}",
            f"depart_s = {float(depart)}",
            "",
        ]
    return "\n".join(lines) + "\n" + intersections


def relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()
