"""Time-space diagram: the engine's trajectory over bars of each signal's state.

Distance along the route upwards, time to the right (seconds after departure).
At each stop line a horizontal bar shows the engine's signal group: green,
yellow (or clearance), red. The pre-empted run is drawn solid, the baseline
dashed; each run's own signal states are drawn just above (pre-empted) and
below (baseline) the stop line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sim.controller import SignalController
from sim.street import EngineTrip

COLOURS = {"green": "#2ca02c", "yellow": "#ffbf00", "red": "#d62728"}
BAR_SHARE = 0.018  # thickness of a signal bar as a share of the route length


def _states(
    ctrl: SignalController, group: str, start: float, end: float
) -> list[tuple[float, float, str]]:
    """(from, to, colour) intervals of ``group`` within [start, end]."""
    out: list[tuple[float, float, str]] = []
    t = start
    change = ctrl.program.change_s(group)
    for on, off in ctrl.green_log.get(group, []):
        if off <= start or on >= end:
            continue
        if on > t:
            out.append((t, on, "red"))
        out.append((max(on, start), min(off, end), "green"))
        out.append((off, min(off + change, end), "yellow"))
        t = min(off + change, end)
    if t < end:
        out.append((t, end, "red"))
    return [x for x in out if x[1] > x[0]]


def time_space(
    path: Path,
    title: str,
    stop_lines: Mapping[str, float],
    runs: Sequence[tuple[str, EngineTrip, Mapping[str, SignalController], str]],
) -> None:
    """``runs``: (label, trip, controllers, line style); the first run's bars go above the
    stop line, the second's below."""
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    depart = runs[0][1].depart
    end = max(r[1].arrival for r in runs) - depart + 10.0
    groups = {p.intersection: p.group for r in runs for p in r[1].passages}
    bar = BAR_SHARE * max(r[1].route_length for r in runs)
    for k, (label, trip, ctrls, style) in enumerate(runs):
        offset = bar / 2 if k == 0 else -bar / 2
        for ix, s in stop_lines.items():
            if ix not in groups or ix not in ctrls:
                continue
            for a, b, colour in _states(ctrls[ix], groups[ix], depart, depart + end):
                ax.broken_barh(
                    [(a - depart, b - a)],
                    (s + offset - bar / 2, bar * 0.9),
                    facecolors=COLOURS[colour],
                    alpha=0.85 if k == 0 else 0.45,
                    linewidth=0,
                )
        ts = [p.t - depart for p in trip.trajectory]
        ss = [p.s for p in trip.trajectory]
        ax.plot(
            ts, ss, style, color="black", linewidth=1.6, label=f"{label}: {trip.travel_time:.0f} s"
        )
    for ix, s in stop_lines.items():
        ax.annotate(ix, (end, s), xytext=(4, -3), textcoords="offset points", fontsize=8)
    ax.set_xlim(0, end)
    ax.set_xlabel("time after departure (s)")
    ax.set_ylabel("distance along the route (m)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.25)
    ax.legend(
        loc="upper left",
        fontsize=9,
        title="bars: above = pre-empted, below = baseline",
        title_fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
