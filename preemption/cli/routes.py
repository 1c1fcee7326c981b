"""``preemption routes build | check | show``: approach routes from a road network.

Wired into preemption/cli/main.py by :func:`add_routes_parser`. Unusable input (a
build spec, network, route file) exits 2 with a message naming the file and the
problem, like every other command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_INPUT = 2


def add_routes_parser(sub: Any) -> None:
    """Add ``routes`` and its tools to the CLI's subparsers."""
    r = sub.add_parser("routes", help="build, check and draw approach routes on a road network")
    r.set_defaults(help_parser=r)
    rsub = r.add_subparsers(metavar="TOOL")

    b = rsub.add_parser(
        "build",
        help="build routes, deployment and signal programs from a build spec",
        description="Read a build spec (routes.build.toml, see docs/routes.md), find the "
        "fastest route from the station to each target on the SUMO network (or an OSM "
        "extract, converted with netconvert), and write the route GeoJSON, a deployment "
        "with one [[controllers]] stub per intersection, and the signal programs.",
    )
    b.add_argument("spec", type=Path, help="build spec (TOML)")
    b.add_argument("--out-dir", type=Path, help="write here instead of next to the spec")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=_guard(_build))

    c = rsub.add_parser(
        "check", help="validate a route file and report trunks, branch points and signals"
    )
    c.add_argument("file", type=Path, nargs="+", help="route GeoJSON file(s)")
    c.add_argument("--epsg", type=int, help="metric CRS (default: UTM zone of the routes)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_guard(_check))

    s = rsub.add_parser("show", help="draw routes, trunks, branch points and signals (PNG)")
    s.add_argument("file", type=Path, nargs="+", help="route GeoJSON file(s)")
    s.add_argument("-o", "--output", type=Path, required=True, help="image file (.png)")
    s.add_argument(
        "--network",
        type=Path,
        help="SUMO network drawn underneath (default: the one the file was built from)",
    )
    s.add_argument("--epsg", type=int, help="metric CRS (default: UTM zone of the routes)")
    s.set_defaults(func=_guard(_show))


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Build and network errors exit 2 with their message (the CLI catches route files)."""

    def run(args: argparse.Namespace) -> int:
        from routes.build import RouteBuildError
        from routes.buildspec import BuildSpecError
        from routes.programs import ProgramError
        from routes.roadnet import RoadNetworkError

        try:
            return func(args)
        except (BuildSpecError, RoadNetworkError, RouteBuildError, ProgramError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT

    return run


def _build(args: argparse.Namespace) -> int:
    from routes.buildrun import run_build

    report = run_build(args.spec, args.out_dir)
    if args.json:
        print(
            json.dumps(
                {
                    "routes": [
                        {
                            "id": r.id,
                            "length_m": round(r.length_m, 1),
                            "travel_time_s": round(r.travel_time_s, 1),
                            "signals": [s.tl for s in r.signals],
                        }
                        for r in report.routes
                    ],
                    "intersections": sorted({s.intersection for s in report.signals}),
                    "untouched_traffic_lights": list(report.untouched_tls),
                    "written": [str(p) for p in report.written],
                }
            )
        )
        return EXIT_OK
    ids = {s.tl: s.intersection for s in report.signals}
    for r in report.routes:
        sigs = " ".join(ids[s.tl] for s in r.signals) or "no signals"
        print(f"{r.id:<6} {r.length_m:7.0f} m {r.travel_time_s:5.0f} s  {sigs}  ({r.name})")
    print(
        f"{len(report.routes)} routes, {len(ids)} signalised intersections; "
        f"{len(report.untouched_tls)} traffic lights of the network on no route"
    )
    for tl in report.untouched_tls:
        print(f"  not on a route: {tl} ({report.network.junction_name(tl) or 'unnamed'})")
    for p in report.written:
        print(f"wrote {p}")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from routes.geojson import load_routes
    from routes.routecheck import check_network

    routes = load_routes(args.file, epsg=args.epsg)
    result = check_network(routes)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for line in result.lines():
            print(line)
    if result.problems:
        for p in result.problems:
            print(f"error: {', '.join(str(f) for f in args.file)}: {p}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    from routes.geojson import RouteFileError, load_routes
    from routes.mapplot import draw_map
    from routes.roadnet import load_network

    routes = load_routes(args.file, epsg=args.epsg)
    network = args.network
    if network is None:
        network = _built_from(args.file[0])
    road = load_network(network) if network is not None else None
    if args.output.suffix.lower() != ".png":
        raise RouteFileError(f"{args.output}: the map is written as PNG; name it *.png")
    draw_map(routes, args.output, road=road)
    print(f"wrote {args.output}")
    return EXIT_OK


def _built_from(route_file: Path) -> Path | None:
    """The network a built route file names (``preemption_build.network``), if it exists."""
    try:
        doc = json.loads(route_file.read_text(encoding="utf-8"))
        rel = doc.get("preemption_build", {}).get("network")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(rel, str):
        return None
    path = route_file.parent / rel
    return path if path.exists() else None
