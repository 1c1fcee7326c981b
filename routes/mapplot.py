"""A map of a route file for operators: routes, shared trunks, branch points, signals.

Drawn with matplotlib (Agg, no display needed) in the routes' metric CRS. The
line width grows with the number of routes on a stretch, so the trunk stands
out; branch points are marked with the angle at which routes part; each signal
is labelled with its intersection id. With a SUMO network the streets are drawn
underneath in grey.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import shapely
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from routes.geojson import RouteSet
from routes.network import RouteNetwork
from routes.roadnet import RoadNetwork

ATTRIBUTION = "Map data © OpenStreetMap contributors (ODbL); network: Eclipse SUMO"


def draw_map(
    routes: RouteSet,
    out: Path,
    road: RoadNetwork | None = None,
    title: str = "",
    dpi: int = 110,
) -> Path:
    network = RouteNetwork(routes)
    fig, ax = plt.subplots(figsize=(11, 11))
    if road is not None:
        _draw_streets(ax, routes, road)
    colours = plt.get_cmap("tab10")
    ids = list(routes.routes)
    for k, mr in enumerate(routes):
        colour = colours(k % 10)
        for piece in network.pieces[mr.id]:
            shared = len(network.edges[piece.edge].routes)
            seg = shapely.line_interpolate_point(
                mr.line, np.linspace(piece.s0, piece.s1, max(2, int((piece.s1 - piece.s0) / 5)))
            )
            xy = shapely.get_coordinates(seg)
            # Shared stretches are drawn wide and dark underneath, each route on top.
            if shared > 1:
                ax.plot(xy[:, 0], xy[:, 1], color="0.25", lw=2 + 2.2 * shared, alpha=0.35, zorder=2)
            ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=1.8, zorder=3)
        end = mr.xy[-1]
        ax.plot(*end, marker="s", color=colour, ms=7, zorder=5)
        ax.annotate(
            f"{mr.id}: {mr.route.name}",
            end,
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
            color=colour,
            weight="bold",
            zorder=6,
        )
    start = next(iter(routes)).xy[0]
    ax.plot(*start, marker="*", color="crimson", ms=18, zorder=6, mec="k")
    ax.annotate(
        next(iter(routes)).route.station,
        start,
        xytext=(8, -14),
        textcoords="offset points",
        fontsize=9,
        weight="bold",
    )
    for bp in network.branch_points():
        ax.plot(bp.x, bp.y, marker="D", color="gold", mec="k", ms=9, zorder=7)
        ax.annotate(
            f"{bp.angle_deg:.0f}°",
            (bp.x, bp.y),
            xytext=(-10, 9),
            textcoords="offset points",
            fontsize=7,
        )
    placed: dict[str, tuple[float, float]] = {}
    for mr in routes:
        for sig in mr.signals:
            st = mr.at(sig.stop_line_m)
            if sig.intersection in placed:
                continue
            placed[sig.intersection] = (st.x, st.y)
            ax.plot(st.x, st.y, marker="o", color="red", mec="k", ms=8, zorder=8)
            ax.annotate(
                sig.intersection,
                (st.x, st.y),
                xytext=(7, -10),
                textcoords="offset points",
                fontsize=8,
                color="darkred",
                weight="bold",
                zorder=9,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
            )
    handles = [
        Line2D([], [], marker="*", color="crimson", ls="", ms=12, label="station"),
        Line2D([], [], marker="o", color="red", mec="k", ls="", label="signal (stop line)"),
        Line2D([], [], marker="D", color="gold", mec="k", ls="", label="branch point (angle)"),
        Line2D([], [], color="0.25", lw=6, alpha=0.35, label="shared trunk"),
        *(Line2D([], [], color=colours(k % 10), lw=2, label=rid) for k, rid in enumerate(ids)),
    ]
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)
    summary = network.summary()
    ax.set_title(
        title
        or f"{summary['routes']} routes, {len(placed)} signalised intersections, "
        f"{summary['branch_points']} branch points",
        fontsize=11,
    )
    ax.set_aspect("equal")
    ax.set_xlabel(f"EPSG:{routes.projector.epsg} easting (m)")
    ax.set_ylabel("northing (m)")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
    fig.text(0.01, 0.005, ATTRIBUTION if road is not None else "", fontsize=7, color="0.4")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _draw_streets(ax: Axes, routes: RouteSet, road: RoadNetwork) -> None:
    xs: list[float] = []
    ys: list[float] = []
    for mr in routes:
        xs += [float(v) for v in mr.xy[:, 0]]
        ys += [float(v) for v in mr.xy[:, 1]]
    pad = 250.0
    box = (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)
    for edge_id in road.graph.nodes:
        shape = road.edge(edge_id).getShape()
        pts = routes.projector.to_metric_many([road.to_lonlat(x, y) for x, y in shape])
        inside = (
            (pts[:, 0] >= box[0])
            & (pts[:, 0] <= box[2])
            & (pts[:, 1] >= box[1])
            & (pts[:, 1] <= box[3])
        )
        if inside.any():
            ax.plot(pts[:, 0], pts[:, 1], color="0.8", lw=0.8, zorder=1)
    ax.set_xlim(box[0], box[2])
    ax.set_ylim(box[1], box[3])
