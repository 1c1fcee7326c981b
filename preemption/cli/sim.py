"""`preemption sim`: the simulator from the command line (table, JSON, time-space PNG)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_TARGETS_MISSED, EXIT_CONFIG = 0, 1, 2


def add_sim_parser(sub: Any) -> None:
    s = sub.add_parser(
        "sim", help="simulate a scenario with and without pre-emption and compare them"
    )
    s.add_argument("scenario", type=Path, nargs="?", help="scenario TOML (default: bundled)")
    s.add_argument("--sweep", type=int, metavar="N", help="N departures spread over a cycle")
    s.add_argument(
        "--route", metavar="ROUTE", help="run the scenario's engine on ROUTE (default: the first)"
    )
    s.add_argument("--sumo", action="store_true", help="also run the SUMO backend and compare")
    s.add_argument("--plot", type=Path, metavar="FILE.png", help="write a time-space diagram")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_sim_command)


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run_sim_command(args: argparse.Namespace) -> int:
    from preemption.cli.simulate import (
        bundled_scenario,
        compare,
        comparison_json,
        load,
        sweep,
        sweep_json,
    )

    if args.sumo:
        missing = [m for m in ("libsumo", "sumo") if importlib.util.find_spec(m) is None]
        if missing:
            print(
                f"error: --sumo needs SUMO ({' and '.join(missing)} not installed); install "
                "the project's sumo extra: .venv/bin/pip install -e '.[sumo]' (make does)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    setup = load(args.scenario or bundled_scenario())
    engines = setup.scenario.engines
    index = 0
    if args.route is not None:
        found = [k for k, e in enumerate(engines) if e.route == args.route]
        if not found:
            routes = ", ".join(dict.fromkeys(e.route for e in engines))
            print(
                f"error: no engine of the scenario drives route {args.route!r}; "
                f"its engines drive: {routes}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        index = found[0]
    c = compare(setup, engines[index])
    doc = comparison_json(c)
    doc["scenario"] = setup.scenario.scenario.name
    runs = []
    if args.sweep:
        show = not args.json and sys.stderr.isatty()
        runs = sweep(setup, args.sweep, progress=_progress if show else None, engine=c.engine)
        doc["sweep"] = sweep_json(runs)
        doc["violations"] = doc["violations"] + doc["sweep"]["violations"]
    if args.sumo:
        deps = [c.engine.depart_s for c in runs] if args.sweep else []
        doc.update(_sumo(setup, deps, index))
    if args.plot:
        from sim.plot import time_space

        stop_lines = {s.intersection: s.stop_line_m for s in setup.routes[c.engine.route].signals}
        time_space(
            args.plot,
            f"{setup.scenario.scenario.name}: {c.engine.vehicle} on {c.engine.route}",
            stop_lines,
            [
                ("pre-empted", c.preempted.trip, c.preempted.street.controllers, "-"),
                ("baseline", c.baseline.trip, c.baseline.street.controllers, "--"),
            ],
        )
    if args.json:
        print(json.dumps(doc))
    else:
        print("\n".join(table(doc)))
        if args.plot:
            print(f"time-space diagram: {args.plot}")
    return EXIT_OK


def _sumo(setup: Any, departures: list[float], engine_index: int) -> dict[str, Any]:
    """The SUMO backend's part of the report ("sumo", "agreement"): the same runs in SUMO
    (docs/sumo.md) and how well they agree with the in-process model."""
    from preemption.cli.sumo_run import sumo_section

    section: dict[str, Any] = sumo_section(
        setup, preempt=True, departures=departures, engine_index=engine_index
    )
    return section


def table(doc: dict[str, Any]) -> list[str]:
    b, p = doc["baseline"], doc["preempted"]
    out = [
        doc.get("scenario", ""),
        f"{'':<22}{'baseline':>10}{'pre-empted':>12}",
        f"{'travelTime (s)':<22}{b['travelTime']:>10.1f}{p['travelTime']:>12.1f}",
        f"{'timeLoss (s)':<22}{b['timeLoss']:>10.1f}{p['timeLoss']:>12.1f}",
        f"{'waitingTime (s)':<22}{b['waitingTime']:>10.1f}{p['waitingTime']:>12.1f}",
        f"{'stops':<22}{b['stops']:>10}{p['stops']:>12}",
        f"free flow {doc['free_flow_s']:.1f} s; pre-empted / free flow = "
        f"{doc['ratio_to_free_flow']:.3f}; saved {doc['saving_s']:.1f} s "
        f"({doc['saving_pct']:.0f} %)",
        "",
        f"{'signal':<8}{'arrival':>8}{'state':>8}{'lead':>7}{'base arr':>9}{'base':>7}"
        f"{'change':>13}{'by':>6}{'forced red':>11}{'recovery':>9}",
    ]
    for s in doc["signals"]:
        lead = "-" if s["green_lead"] is None else f"{s['green_lead']:.1f}"
        rec = "-" if s["recovery_s"] is None else f"{s['recovery_s']:.1f}"
        out.append(
            f"{s['intersection']:<8}{s['arrival']:>8.1f}{s['aspect']:>8}{lead:>7}"
            f"{s['baseline_arrival']:>9.1f}{s['baseline_aspect']:>7}{s['change']:>13}"
            f"{s['change_s']:>6.1f}{s['forced_red_s']:>11.1f}{rec:>9}"
        )
    x = doc["cross_traffic"]
    out += [
        "",
        f"cross traffic: {x['forced_red_s']:.1f} s of red forced against the plan, delay "
        f"{x['delay_veh_s']:.0f} veh*s (baseline {x['baseline_delay_veh_s']:.0f}), longest "
        f"queue {x['longest_queue_veh']} veh ({x['longest_queue_m']:.0f} m), recovery "
        f"{x['recovery_s']:.1f} s",
        f"green at arrival: {doc['green_at_arrival_pct']:.0f} % of signals; "
        f"safety violations: {doc['violations']}",
    ]
    if "sweep" in doc:
        w = doc["sweep"]
        out.append(
            f"sweep of {w['runs']} departures: travelTime baseline mean "
            f"{w['baseline_travelTime']['mean']:.1f} s, pre-empted mean "
            f"{w['preempted_travelTime']['mean']:.1f} s (saved {w['saving_pct']:.0f} %), "
            f"ratio to free flow max {w['ratio_to_free_flow']['max']:.3f}, green at arrival "
            f"{w['green_at_arrival_pct']:.0f} %, violations {w['violations']}"
        )
    if "agreement" in doc:
        a, net = doc["agreement"], doc.get("sumo", {}).get("network", "?")
        verdict = "agrees" if a.get("passed") else "does NOT agree"
        if "mean_travel_time_s" in a:
            detail = (
                f"mean travelTime {a['mean_travel_time_s']:.1f} s here, "
                f"{a['sumo_mean_travel_time_s']:.1f} s in SUMO ({a['difference_pct']:+.1f} %)"
            )
        else:
            detail = (
                f"travelTime {a['travel_time_s']:.1f} s here, "
                f"{a['sumo_travel_time_s']:.1f} s in SUMO"
            )
        out.append(f"SUMO ({net} network): {verdict} within the bar; {detail}")
    return out
