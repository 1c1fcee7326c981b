"""The `preemption` command."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from preemption.cli.routes import add_routes_parser
from preemption.kernel.errors import InputError, PreemptionError
from preemption.kernel.model import Fix

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2  # the input (configuration, route or scenario file) is unusable
BENCH_NAMES = (
    "pipeline",
    "match",
    "identify",
    "identify_large",
    "planner",
    "nmea",
    "demo",
    "sim",
    "e2e",
    "soak",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        (args.help_parser if hasattr(args, "help_parser") else parser).print_help()
        return EXIT_CONFIG
    try:
        code: int = args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PreemptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="preemption",
        description="Traffic-signal pre-emption for fire-brigade approach routes.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = p.add_subparsers(metavar="COMMAND")

    c = sub.add_parser("check-config", help="validate a deployment file and what it references")
    c.add_argument("file", type=Path)
    c.add_argument(
        "--probe",
        action="store_true",
        help="also connect to every controller and say what it is (backup timer, preempts); "
        "reads only, asks for nothing",
    )
    c.set_defaults(func=_check_config)

    d = sub.add_parser("demo", help="run the whole path on a scenario in simulated time")
    d.add_argument("scenario", type=Path, nargs="?", help="scenario TOML (default: bundled)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=_demo)

    from preemption.cli.sim import add_sim_parser

    add_sim_parser(sub)

    m = sub.add_parser("match", help="match an NMEA track against route files, fix by fix")
    m.add_argument("--routes", type=Path, nargs="+", required=True, help="route GeoJSON file(s)")
    m.add_argument("--track", type=Path, required=True, help="NMEA log of one vehicle")
    m.add_argument("--epsg", type=int, help="metric CRS (default: UTM zone of the routes)")
    m.add_argument("--prior", help="route id dispatch expects (sets the matcher's prior)")
    m.add_argument("--json", action="store_true", help="one JSON object per fix")
    m.set_defaults(func=_match)

    r = sub.add_parser("run", help="the daemon on the real clock, from a deployment file")
    r.add_argument("--config", type=Path, required=True, help="deployment TOML")
    r.add_argument(
        "--emergency",
        action="append",
        default=[],
        metavar="VEHICLE",
        help="treat VEHICLE as on an emergency run from the start (replays, shadow tests)",
    )
    r.set_defaults(func=_run)

    b = sub.add_parser("bench", help="benchmarks, machine-readable with --json")
    b.add_argument("name", choices=["all", *BENCH_NAMES])
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument(
        "--minutes", type=float, default=10.0, help="soak: how long the load runs (default 10)"
    )
    b.set_defaults(func=_bench)

    g = sub.add_parser("gps", help="tools for GPS recordings")
    g.set_defaults(help_parser=g)
    gsub = g.add_subparsers(metavar="TOOL")
    gp = gsub.add_parser(
        "parse",
        help="decode an NMEA log (or a *.gpx / *.csv track): one line per fix, then a summary",
        description="Decode a recording and print one line per fix and, last, the summary "
        '{"fixes": N, "dropped": {reason: count}}. NMEA unless the name ends in .gpx or .csv.',
    )
    gp.add_argument("file", type=Path)
    gp.add_argument("--json", action="store_true", help="one JSON object per line")
    gp.add_argument("--vehicle", default=None, help="vehicle id of the fixes (default: file stem)")
    gp.add_argument(
        "--date",
        type=dt.date.fromisoformat,
        help="UTC date (YYYY-MM-DD) for NMEA logs without RMC, which never state it",
    )
    gp.set_defaults(func=_gps_parse)

    o = sub.add_parser(
        "onboard",
        help="the forwarder in a vehicle: receiver and emergency status to the central broker",
        description="Run the onboard forwarder until SIGTERM or SIGINT (see docs/onboard.md).",
    )
    o.add_argument("--config", type=Path, required=True, help="onboard TOML file")
    o.add_argument("--check", action="store_true", help="validate the file, print it, exit")
    o.set_defaults(func=_onboard)

    add_routes_parser(sub)
    from preemption.cli.signal import add_signal_parser

    add_signal_parser(sub)
    return p


def _check_config(args: argparse.Namespace) -> int:
    from preemption.cli.check import check_config, probe_controllers

    code = check_config(args.file)
    if code == EXIT_OK and args.probe:
        code = probe_controllers(args.file)
    return code


def _demo(args: argparse.Namespace) -> int:
    from preemption.cli.demo import run_demo
    from preemption.cli.simulate import bundled_scenario

    report = run_demo(args.scenario or bundled_scenario())
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print("\n".join(report.lines()))
    return EXIT_OK


def _match(args: argparse.Namespace) -> int:
    from gps.nmea import parse_nmea_file
    from routes.geojson import load_routes
    from routes.matcher import RouteMatcher

    routes = load_routes(args.routes, epsg=args.epsg)
    try:
        fixes, dropped = parse_nmea_file(args.track, vehicle="track")
    except OSError as exc:
        print(f"error: {args.track}: cannot read the track: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    matcher = RouteMatcher("track", routes)
    if args.prior:
        try:
            matcher.set_prior(args.prior)
        except KeyError as exc:
            print(f"error: --prior: {exc.args[0]}", file=sys.stderr)
            return EXIT_CONFIG
    for fix in fixes:
        pos = matcher.update(fix)
        doc = {
            "t": fix.time,
            "committed": pos.committed,
            "compatible": {r: round(p, 4) for r, p in pos.compatible.items()},
            "s": round(pos.distance_m, 2) if pos.on_route else None,
            "offset": round(pos.offset_m, 2) if pos.on_route else None,
            "etas": [
                {
                    "intersection": e.intersection,
                    "eta_s": round(e.eta_s, 2),
                    "early_s": round(e.early_s, 2),
                    "late_s": round(e.late_s, 2),
                    "shared": e.shared,
                }
                for e in pos.etas
            ],
        }
        if args.json:
            print(json.dumps(doc))
        else:
            where = f"{pos.route} at {pos.distance_m:7.1f} m" if pos.on_route else "off the routes"
            nxt = (
                f", next {pos.etas[0].intersection} in {pos.etas[0].eta_s:.0f} s"
                if pos.etas
                else ""
            )
            print(f"{fix.time:.1f} {where} (committed: {pos.committed or '-'}){nxt}")
    summary = {"fixes": len(fixes), "dropped": dict(dropped), "matcher": dict(matcher.counters)}
    print(json.dumps(summary) if args.json else f"summary: {summary}", file=sys.stderr)
    return EXIT_OK


def _gps_parse(args: argparse.Namespace) -> int:
    from gps.files import TrackFileError, read_track
    from gps.nmea import parse_nmea_file

    path: Path = args.file
    vehicle = args.vehicle or path.stem or "track"
    try:
        if path.suffix.lower() in (".gpx", ".csv"):
            fixes, dropped = read_track(path, vehicle)
        else:
            fixes, dropped = parse_nmea_file(path, vehicle, date_hint=args.date)
    except TrackFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"error: {path}: cannot read the recording: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    drop_counts = dict(sorted(dropped.items()))
    summary = {"fixes": len(fixes), "dropped": drop_counts}
    try:
        for fix in fixes:
            print(json.dumps(_fix_doc(fix)) if args.json else _fix_line(fix))
        if args.json:
            print(json.dumps(summary))
        else:
            drops = ", ".join(f"{k} {v}" for k, v in drop_counts.items()) or "none"
            print(f"{len(fixes)} fixes; dropped: {drops}")
        sys.stdout.flush()
    except BrokenPipeError:
        # `| head`: the reader has seen enough. Quietly, and no second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _fix_doc(fix: Fix) -> dict[str, object]:
    return {
        "vehicle": fix.vehicle,
        "time": fix.time,
        "lat": fix.lat,
        "lon": fix.lon,
        "speed": fix.speed,
        "course": fix.course,
        "hdop": fix.hdop,
        "quality": int(fix.quality),
        "satellites": fix.satellites,
        "source": fix.source,
    }


def _fix_line(fix: Fix) -> str:
    stamp = dt.datetime.fromtimestamp(fix.time, dt.UTC).isoformat(timespec="milliseconds")
    speed = "-" if fix.speed is None else f"{fix.speed * 3.6:.1f} km/h"
    course = "-" if fix.course is None else f"{fix.course:.0f}°"
    hdop = "-" if fix.hdop is None else f"{fix.hdop:.1f}"
    sats = "-" if fix.satellites is None else str(fix.satellites)
    return (
        f"{stamp.replace('+00:00', 'Z')}  {fix.lat:.6f} {fix.lon:.6f}  {speed}  {course}  "
        f"hdop {hdop}  sats {sats}  {fix.quality.name.lower()}"
    )


def _onboard(args: argparse.Namespace) -> int:
    from preemption.service.onboard import main as onboard_main

    if not args.verbose:
        logging.getLogger().setLevel(logging.INFO)  # a service: its log says what it does
    return onboard_main(args.config, check=args.check)


def _run(args: argparse.Namespace) -> int:
    from preemption.cli.run import run_command

    return run_command(args)


def _bench(args: argparse.Namespace) -> int:
    from preemption.cli.bench import run

    result = run(args.name, minutes=args.minutes)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return EXIT_OK


if __name__ == "__main__":  # python -m preemption.cli.main
    sys.exit(main())
