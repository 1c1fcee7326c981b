"""Generated approach routes that look like a city's streets, for the matcher's benchmark.

A handful of hand-drawn routes cannot tell a good route matcher from a lucky
one. What makes matching hard is the *shape* of a station's route set: every
route leaves the station on the same street, and the routes part one by one at
junctions, some at right angles (easy), some at a Y-split or a slip road where
the two branches run side by side, closer than the GNSS error, for the first
fifty metres or more (hard). This module grows such route sets from a seed:

* a **tree** per station: a shared trunk, then binary branch points 100-600 m
  apart (``segment_m``), deeper leaves branching more readily; each leaf is
  one route, extended to a total length in 1.5-5 km (``route_length_m``,
  triangular with its mode at 1.5 km: most first-due runs are short);
* **branch angles** from the classes a city has (:class:`AngleClass`): shallow
  forks 10-30 degrees (half of them Y-splits, half slip roads), oblique 30-60,
  right-angle turns 60-120 at junctions. The angle is the one between the two
  branches' directions as they leave the branch point, exactly, because each
  branch's first 20 m segment leaves at its designed heading;
* **streets** gently curved (a random walk of the heading) with occasional
  bends; a branch turns preferably to the side with more room, so routes fan out;
* **signals** every 200-500 m along the tree. A signal on a stretch several
  routes share is one intersection listed for all of them; after a branch the
  routes meet new intersections. Every signal's approach is ``"1"``;
* **no accidental closeness**: two routes, once they have parted, come no
  closer than ``clearance_m`` (30 m) again, and the gap between them grows
  (within 0.5 m) until it first reaches 30 m; no stretch of a route passes
  within 30 m of a stretch 150 m or more further along it. The tree is grown
  branch by branch and each branch, then each route's last stretch, is
  redrawn until it keeps these rules (branches turn to the side with more
  room, last stretches veer off streets ahead); a layout that still breaks
  them is thrown away and grown anew from the same random stream.

For each branch point a route passes, :class:`BranchPoint` records the angle,
its class, the distance of the fork along the route, and ``s_apart_m``: the
distance along the route at which it is first ``apart_m`` (10 m) from every
route of the other branch (distance to their whole lines, trunk included).
The benchmark measures commit distance from there: before it the branches are
closer than even a good receiver's error.

:func:`generate_city` puts several stations on a jittered grid (7 km apart by
default) and regrows a station whose routes come within 30 m of another
station's: routes of different stations never meet, unlike in a real city,
where they cross at junctions. Five stations of ten routes give about 200
signals (180-230 over seeds 0-39, mean 203).

Geometry is generated in metres around a centre (default Mannheim, in ETRS89 /
UTM 32N, EPSG:25832) and written as WGS84 GeoJSON, rounded to 1e-7 degrees (about
1 cm). All metadata is computed on the rounded coordinates projected back, which
is what :func:`routes.geojson.load_routes` sees: its metric geometry agrees with
this module's to the float.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString

from routes.projection import FloatArray, Projector

__all__ = [
    "ANGLE_RANGES",
    "MANNHEIM",
    "AngleClass",
    "BranchPoint",
    "SyntheticCity",
    "SyntheticParams",
    "SyntheticRoute",
    "SyntheticStation",
    "generate_city",
    "generate_station",
    "write_geojson",
]

MANNHEIM = (8.4660, 49.4875)  # lon, lat of the default centre (Paradeplatz)
_DECIMALS = 7  # GeoJSON coordinates: 1e-7 degrees, about 1 cm


class AngleClass(StrEnum):
    """How two routes part at a branch point."""

    SHALLOW = "shallow"  # 10-30 degrees: Y-split, slip road
    OBLIQUE = "oblique"  # 30-60 degrees
    RIGHT = "right"  # 60-120 degrees: a turn at a junction


ANGLE_RANGES: Mapping[AngleClass, tuple[float, float]] = MappingProxyType(
    {
        AngleClass.SHALLOW: (10.0, 30.0),
        AngleClass.OBLIQUE: (30.0, 60.0),
        AngleClass.RIGHT: (60.0, 120.0),
    }
)


@dataclass(frozen=True, slots=True)
class SyntheticParams:
    """How the streets are drawn. Lengths in metres, angles in degrees."""

    segment_m: tuple[float, float] = (100.0, 600.0)  # between branch points, uniform
    route_length_m: tuple[float, float] = (1500.0, 5000.0)  # total, triangular ...
    route_length_mode_m: float = 1500.0  # ... with this mode: most runs are short
    signal_spacing_m: tuple[float, float] = (200.0, 500.0)  # uniform
    angle_weights: tuple[float, float, float] = (0.3, 0.2, 0.5)  # shallow, oblique, right
    vertex_m: float = 20.0  # vertex spacing of the drawn streets
    drift_deg: float = 3.0  # std of the heading's random walk per 100 m
    bends_per_km: float = 0.5
    bend_deg: tuple[float, float] = (10.0, 30.0)
    open_side_bias: float = 0.85  # probability that a branch turns to the side with more room
    apart_m: float = 10.0  # the distance s_apart_m refers to
    clearance_m: float = 30.0  # minimum distance between parted routes
    transition_s: float = 10.0  # written into every signal
    speed_limit_kmh: float = 50.0
    depth_preference: float = 2.0  # a leaf is chosen to branch with weight (its depth) ** this
    tail_attempts: int = 10  # redraws of one route's last stretch before starting afresh
    max_attempts: int = 200

    @property
    def route_length_m_mode(self) -> tuple[float, float, float]:
        """(low, mode, high) of the triangular route-length distribution."""
        return (self.route_length_m[0], self.route_length_mode_m, self.route_length_m[1])

    def __post_init__(self) -> None:
        lo, hi = self.route_length_m
        if not (0 < self.segment_m[0] <= self.segment_m[1]):
            raise ValueError(f"SyntheticParams.segment_m: need 0 < low <= high: {self.segment_m}")
        if not (lo <= self.route_length_mode_m <= hi and lo < hi):
            raise ValueError("SyntheticParams.route_length_m: need low < high, mode within")
        if hi < 3 * self.segment_m[1]:
            raise ValueError(
                "SyntheticParams.route_length_m: routes must be at least three segments long"
            )
        if not (0 < self.signal_spacing_m[0] <= self.signal_spacing_m[1]):
            raise ValueError("SyntheticParams.signal_spacing_m: need 0 < low <= high")
        if min(self.angle_weights) < 0 or sum(self.angle_weights) <= 0:
            raise ValueError("SyntheticParams.angle_weights: need weights >= 0, not all zero")
        if not (0 < self.apart_m < self.clearance_m):
            raise ValueError("SyntheticParams: need 0 < apart_m < clearance_m")
        if self.vertex_m <= 0 or self.segment_m[0] < 2 * self.vertex_m:
            raise ValueError("SyntheticParams.vertex_m: need 0 < vertex_m <= segment_m[0] / 2")


@dataclass(frozen=True, slots=True)
class BranchPoint:
    """A branch point as one route passes it."""

    fork: str  # id of the branch point, unique within its station
    angle_class: AngleClass
    angle_deg: float  # between the two branches as they leave the fork
    turn_deg: float  # this route's change of heading there, positive to the right
    s_fork_m: float  # distance of the fork along this route
    s_apart_m: float  # along this route: first point apart_m from every route of the other branch
    other_routes: tuple[str, ...]  # the routes that take the other branch


@dataclass(frozen=True, slots=True)
class SyntheticRoute:
    """One generated route: its geometry (metric) and what the benchmark needs to know."""

    id: str
    station: str
    length_m: float
    xy: tuple[tuple[float, float], ...]  # metric vertices, as load_routes projects them
    branch_points: tuple[BranchPoint, ...]  # in driving order
    signals: tuple[str, ...]  # intersections in driving order
    signal_s_m: tuple[float, ...]  # their stop-line distances along the route


@dataclass(frozen=True, slots=True)
class SyntheticStation:
    """A fire station's route set: a valid route GeoJSON document plus metadata."""

    id: str
    seed: int
    epsg: int
    x: float  # station position, metric
    y: float
    routes: Mapping[str, SyntheticRoute]
    signals: Mapping[str, tuple[str, ...]]  # intersection -> the routes through it
    geojson: dict[str, Any] = field(repr=False)
    attempts: int = 1  # layouts grown until one passed the checks


@dataclass(frozen=True, slots=True)
class SyntheticCity:
    """Several stations in one document, far enough apart not to touch."""

    seed: int
    epsg: int
    stations: tuple[SyntheticStation, ...]
    geojson: dict[str, Any] = field(repr=False)

    @property
    def routes(self) -> Mapping[str, SyntheticRoute]:
        return {rid: r for st in self.stations for rid, r in st.routes.items()}

    @property
    def signals(self) -> Mapping[str, tuple[str, ...]]:
        return {k: v for st in self.stations for k, v in st.signals.items()}


class _HasGeojson(Protocol):
    @property
    def geojson(self) -> dict[str, Any]: ...


def write_geojson(routes: _HasGeojson, path: Path | str) -> Path:
    """Write a station's or a city's document where load_routes can read it."""
    path = Path(path)
    path.write_text(json.dumps(routes.geojson, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


# -- growing a tree -----------------------------------------------------------


@dataclass
class _Fork:
    angle_class: AngleClass
    angle_deg: float
    turns: tuple[float, float]  # heading change of child 0 and child 1


@dataclass
class _Edge:
    parent: int | None
    xy: FloatArray  # (k, 2) vertices, first = the parent's last
    heading: float  # heading the street has at its end
    children: list[int] = field(default_factory=list)
    fork: _Fork | None = None
    lonlat: list[tuple[float, float]] = field(default_factory=list)  # as written, rounded
    start_s: float = 0.0  # along every route through it (metric, after rounding)
    length: float = 0.0


def _draw_street(
    rng: np.random.Generator,
    start: FloatArray,
    heading: float,
    length: float,
    p: SyntheticParams,
    avoid: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[FloatArray, float]:
    """A gently curved street: the first segment leaves exactly at ``heading``.

    With ``avoid``, the street veers off other streets it is heading for, as
    real streets meet others at junctions rather than running alongside.
    """
    pts = [start]
    h = heading
    done = 0.0
    while length - done > 1e-9:
        step = p.vertex_m if length - done - p.vertex_m >= 1.0 else length - done
        if done > 0:
            h += float(rng.normal(0.0, p.drift_deg * math.sqrt(step / 100.0)))
            if rng.random() < p.bends_per_km * step / 1000.0:
                h += float(rng.uniform(*p.bend_deg)) * (1 if rng.random() < 0.5 else -1)
            if avoid is not None and avoid[0].size:
                h += _steer(pts[-1], h, avoid, p)
        r = math.radians(h)
        pts.append(pts[-1] + step * np.array([math.sin(r), math.cos(r)]))
        done += step
    return np.array(pts), h % 360.0


_LOOKAHEAD_M = 150.0
_STEER_DEG = 4.0  # per vertex


def _steer(
    at: FloatArray, heading: float, avoid: tuple[FloatArray, FloatArray], p: SyntheticParams
) -> float:
    """Heading change away from a street ahead that is closer than twice the clearance."""
    probes = np.array([heading, heading - 20.0, heading + 20.0])
    r = np.radians(probes)
    pts = at + _LOOKAHEAD_M * np.column_stack([np.sin(r), np.cos(r)])
    near = _near(pts, avoid, 2 * p.clearance_m)
    if near[0].shape[0] == 0:
        return 0.0
    ahead, left, right = _distance(pts, near)
    if ahead >= 2 * p.clearance_m:
        return 0.0
    return _STEER_DEG if right > left else -_STEER_DEG


def _room(start: FloatArray, heading: float, segs: tuple[FloatArray, FloatArray]) -> float:
    """How far a street leaving ``start`` at ``heading`` would stay from the streets so far."""
    r = math.radians(heading)
    ahead = np.arange(150.0, 1501.0, 150.0)
    pts = start + ahead[:, None] * np.array([math.sin(r), math.cos(r)])
    return float(_distance(pts, segs).min())


def _design_fork(rng: np.random.Generator, edges: list[_Edge], i: int, p: SyntheticParams) -> _Fork:
    weights = np.asarray(p.angle_weights, dtype=np.float64)
    cls = list(AngleClass)[int(rng.choice(3, p=weights / weights.sum()))]
    angle = float(rng.uniform(*ANGLE_RANGES[cls]))
    edge = edges[i]
    # Streets branch off where there is room: the side whose turned direction
    # stays further from the streets drawn so far (a turn back across the tree
    # would only be thrown away later).
    segs = _segments([_Poly(e.xy) for e in edges])
    right = _room(edge.xy[-1], edge.heading + angle, segs)
    left = _room(edge.xy[-1], edge.heading - angle, segs)
    side = 1.0 if (right >= left) == (rng.random() < p.open_side_bias) else -1.0
    if cls is AngleClass.SHALLOW and rng.random() < 0.5:
        turns = (-side * angle / 2, side * angle / 2)  # Y-split
    else:
        turns = (0.0, side * angle)  # one goes on, the other turns off
    return _Fork(cls, angle, turns)


def _path_length(edges: list[_Edge], i: int) -> float:
    total = 0.0
    j: int | None = i
    while j is not None:
        total += float(np.hypot(*np.diff(edges[j].xy, axis=0).T).sum())
        j = edges[j].parent
    return total


def _grow(rng: np.random.Generator, n_routes: int, p: SyntheticParams) -> list[_Edge] | None:
    """The tree in metres around the station at (0, 0), its leaves still short.

    Each branch point is redrawn until its two new routes keep clear of the
    others so far; None when the tree cannot grow on (the caller starts afresh).
    """
    trunk_xy, h = _draw_street(
        rng, np.zeros(2), float(rng.uniform(0, 360)), float(rng.uniform(*p.segment_m)), p
    )
    edges = [_Edge(parent=None, xy=trunk_xy, heading=h)]
    leaves = [0]
    stuck: set[int] = set()
    # A leaf may branch again only if a child and a minimal tail still fit.
    room = p.route_length_m[1] - p.segment_m[1] - p.segment_m[0]
    while len(leaves) < n_routes:
        open_leaves = [i for i in leaves if i not in stuck and _path_length(edges, i) <= room]
        if not open_leaves:
            return None
        # Deeper leaves branch more readily: routes fan out progressively, as a
        # city's main roads split into ever smaller ones further out.
        depth = np.array([_path_length(edges, j) for j in open_leaves]) ** p.depth_preference
        i = open_leaves[int(rng.choice(len(open_leaves), p=depth / depth.sum()))]
        parent = edges[i]
        for _ in range(p.tail_attempts):
            parent.fork = _design_fork(rng, edges, i, p)
            children = []
            for turn in parent.fork.turns:
                xy, h = _draw_street(
                    rng, parent.xy[-1], parent.heading + turn, float(rng.uniform(*p.segment_m)), p
                )
                children.append(_Edge(parent=i, xy=xy, heading=h))
            parent.children = [len(edges), len(edges) + 1]
            edges.extend(children)
            others = [j for j in leaves if j != i]
            if all(
                _clear_of_others(edges, c, [*others, *parent.children], set(), p)
                for c in parent.children
            ):
                break
            del edges[-2:]
            parent.children, parent.fork = [], None
        else:
            stuck.add(i)
            continue
        leaves.remove(i)
        leaves.extend(parent.children)
    return edges


def _clear_of_others(
    edges: list[_Edge], leaf: int, leaves: Sequence[int], done: set[int], p: SyntheticParams
) -> bool:
    """Whether the route ending in ``leaf`` keeps clear of itself and of the other routes.

    Routes in ``done`` are complete; the others (and ``leaf``'s own, unless in
    ``done``) may still end before they have parted by the clearance.
    """
    mine_chain = _chain(edges, leaf)
    mine = _Poly(_route_xy(edges, mine_chain))
    if not _self_clear(mine.xy, p):
        return False
    for o in leaves:
        if o == leaf:
            continue
        chain = _chain(edges, o)
        other = _Poly(_route_xy(edges, chain))
        s = _path_length(edges, _fork_edge(mine_chain, chain))
        if not _parts_cleanly(mine, other, s, p, complete=leaf in done):
            return False
        if not _parts_cleanly(other, mine, s, p, complete=o in done):
            return False
    return True


def _extend_tails(rng: np.random.Generator, edges: list[_Edge], p: SyntheticParams) -> bool:
    """Draw each route's last stretch to its full length, redrawing one that runs into another.

    Each tail is checked against the routes as they are so far; a route whose
    tail is still to come is held to the rules only as far as it goes. False
    when a tail found no clear way (the caller starts the layout afresh).
    """
    leaves = _leaves_dfs(edges)
    done: set[int] = set()
    for leaf in leaves:
        e = edges[leaf]
        so_far = _path_length(edges, leaf)
        short_xy, short_heading = e.xy, e.heading
        mine = set(_chain(edges, leaf))
        avoid = _segments([_Poly(o.xy) for j, o in enumerate(edges) if j not in mine])
        for _ in range(p.tail_attempts):
            target = float(rng.triangular(*p.route_length_m_mode))
            e.xy, e.heading = short_xy, short_heading
            if target > so_far:
                # At least 1 m, so that no vertex is a rounding error away from the last.
                extra = max(target - so_far, 1.0)
                tail, h = _draw_street(rng, short_xy[-1], short_heading, extra, p, avoid)
                e.xy, e.heading = np.vstack([short_xy, tail[1:]]), h
            done.add(leaf)
            if _clear_of_others(edges, leaf, leaves, done, p):
                break
            done.discard(leaf)
        else:
            return False
    return True


# -- the checks and the metadata ------------------------------------------------


def _leaves_dfs(edges: list[_Edge]) -> list[int]:
    out: list[int] = []
    stack = [0]
    while stack:
        i = stack.pop()
        if edges[i].children:
            stack.extend(reversed(edges[i].children))
        else:
            out.append(i)
    return out


def _chain(edges: list[_Edge], leaf: int) -> list[int]:
    chain = []
    j: int | None = leaf
    while j is not None:
        chain.append(j)
        j = edges[j].parent
    return chain[::-1]


def _route_xy(edges: list[_Edge], chain: Sequence[int]) -> FloatArray:
    parts = [edges[chain[0]].xy] + [edges[j].xy[1:] for j in chain[1:]]
    return np.vstack(parts)


class _Poly:
    """A polyline in metres with the two operations the checks need, vectorised in numpy."""

    def __init__(self, xy: FloatArray) -> None:
        self.xy = xy
        self.cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
        self.length = float(self.cum[-1])

    def at(self, s: FloatArray) -> FloatArray:
        """Points at distances ``s`` along the line, (m, 2)."""
        return np.column_stack(
            [np.interp(s, self.cum, self.xy[:, 0]), np.interp(s, self.cum, self.xy[:, 1])]
        )

    def after(self, s: float) -> FloatArray:
        """The vertices of the line from ``s`` to its end."""
        k = int(np.searchsorted(self.cum, s, side="right"))
        return np.vstack([self.at(np.array([s])), self.xy[k:]])


def _segments(lines: Sequence[_Poly]) -> tuple[FloatArray, FloatArray]:
    if not lines:
        return np.zeros((0, 2)), np.zeros((0, 2))
    a = np.vstack([ln.xy[:-1] for ln in lines])
    b = np.vstack([ln.xy[1:] for ln in lines])
    return a, b


def _seg_distance(pts: FloatArray, segs: tuple[FloatArray, FloatArray]) -> FloatArray:
    """Distance of each point to each segment, (m, n)."""
    a, b = segs
    ab = b - a
    ap = pts[:, None, :] - a[None, :, :]
    den = np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-18)
    t = np.clip(np.einsum("mij,ij->mi", ap, ab) / den, 0.0, 1.0)
    d = ap - t[..., None] * ab[None, :, :]
    out: FloatArray = np.sqrt(np.einsum("mij,mij->mi", d, d))
    return out


def _distance(pts: FloatArray, segs: tuple[FloatArray, FloatArray]) -> FloatArray:
    """Distance of each point to the nearest of the segments."""
    out: FloatArray = np.min(_seg_distance(pts, segs), axis=1)
    return out


def _near(
    pts: FloatArray, segs: tuple[FloatArray, FloatArray], reach: float
) -> tuple[FloatArray, FloatArray]:
    """The segments whose bounding box comes within ``reach`` of the points' bounding box."""
    a, b = segs
    lo, hi = pts.min(axis=0) - reach, pts.max(axis=0) + reach
    keep = np.all((np.minimum(a, b) <= hi) & (np.maximum(a, b) >= lo), axis=1)
    return a[keep], b[keep]


def _first_reach(
    line: _Poly,
    segs: tuple[FloatArray, FloatArray],
    s0: float,
    level: float,
    step: float,
    precise: bool = False,
) -> float | None:
    """First s >= s0 along ``line`` at which it is ``level`` from the segments.

    To the sampling ``step`` (the first sample at or beyond ``level``), or with
    ``precise`` to 1e-4 of it.
    """
    a = s0
    while a < line.length:
        ss = np.minimum(np.arange(a, a + 200.0, step), line.length)
        pts = line.at(ss)
        # Segments further than ``level`` from every sample cannot decide anything.
        near = _near(pts, segs, level + step)
        if near[0].shape[0] == 0:
            return float(ss[0])
        hit = np.nonzero(_distance(pts, near) >= level)[0]
        if hit.size:
            k = int(hit[0])
            if k == 0:
                return float(ss[0])
            if not precise:
                return float(ss[k])
            lo, hi = float(ss[k - 1]), float(ss[k])
            near = _near(line.at(np.array([lo, hi])), near, level + step)
            # Two rounds of 100 sub-steps: 1e-4 of the step.
            for _ in range(2):
                fine = np.linspace(lo, hi, 101)
                j = int(np.nonzero(_distance(line.at(fine), near) >= level)[0][0])
                lo, hi = float(fine[max(j - 1, 0)]), float(fine[j])
            return hi
        a = float(ss[-1]) + step
    return None


def _parts_cleanly(
    line: _Poly, other: _Poly, s_fork: float, p: SyntheticParams, complete: bool = True
) -> bool:
    """After the fork, the gap grows until it reaches the clearance and never shrinks below it.

    An incomplete ``line`` (its tail still to be drawn) may end before the gap
    has reached the clearance.
    """
    segs = _segments([other])
    s_clear = _first_reach(line, segs, s_fork, p.clearance_m + 0.01, 2.0)
    if s_clear is None and complete:
        return False
    pts = line.at(np.arange(s_fork, line.length if s_clear is None else s_clear, 1.0))
    # Every sample is within clearance + 1 m of the other line: a 5 m margin keeps it exact.
    d = _distance(pts, _near(pts, segs, p.clearance_m + 5.0)) if len(pts) else np.zeros(0)
    if d.size and float(np.max(np.maximum.accumulate(d) - d)) > 0.5:
        return False
    if s_clear is None:
        return True
    rest = line.after(s_clear)
    if len(rest) < 2:  # the line ends where the gap reached the clearance
        return True
    return bool(shapely.distance(LineString(rest), LineString(other.xy)) > p.clearance_m)


def _self_clear(xy: FloatArray, p: SyntheticParams) -> bool:
    """No stretch of a route comes within the clearance of a stretch 150 m or more further on."""
    segments = shapely.linestrings(np.stack([xy[:-1], xy[1:]], axis=1))
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    tree = shapely.STRtree(segments)
    i, j = tree.query(segments, predicate="dwithin", distance=p.clearance_m)
    later = j > i
    gap = cum[j[later]] - cum[i[later] + 1]  # along the route, from the end of i to j
    return bool(np.all(gap < 150.0))


@dataclass
class _Layout:
    edges: list[_Edge]
    leaves: list[int]
    chains: dict[int, list[int]]
    lines: dict[int, _Poly]


@functools.lru_cache(maxsize=4)
def _projector(epsg: int) -> Projector:
    return Projector(epsg)


def _round_trip(edges: list[_Edge], projector: Projector, origin: FloatArray) -> None:
    """Snap every vertex to what the GeoJSON will hold, so metadata matches load_routes."""
    for e in edges:
        if e.parent is not None:  # a child starts where its parent ends, to the bit
            e.lonlat = [edges[e.parent].lonlat[-1]]
            todo = e.xy[1:]
        else:
            e.lonlat = []
            todo = e.xy
        for x, y in todo + origin:
            lon, lat = projector.to_wgs84(float(x), float(y))
            e.lonlat.append((round(lon, _DECIMALS), round(lat, _DECIMALS)))
        e.xy = projector.to_metric_many(e.lonlat)
    for e in edges:
        e.length = float(np.hypot(*np.diff(e.xy, axis=0).T).sum())
    for e in edges:  # parents come before their children
        e.start_s = 0.0 if e.parent is None else edges[e.parent].start_s + edges[e.parent].length


def _layout(edges: list[_Edge]) -> _Layout:
    leaves = _leaves_dfs(edges)
    chains = {leaf: _chain(edges, leaf) for leaf in leaves}
    lines = {leaf: _Poly(_route_xy(edges, chains[leaf])) for leaf in leaves}
    return _Layout(edges, leaves, chains, lines)


def _fork_edge(a: Sequence[int], b: Sequence[int]) -> int:
    """The last edge two routes (chains of edges) share: the one ending at their branch point."""
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common = x
    return common


def _valid(lay: _Layout, p: SyntheticParams) -> bool:
    for leaf in lay.leaves:
        if not _self_clear(lay.lines[leaf].xy, p):
            return False
    for ia, a in enumerate(lay.leaves):
        for b in lay.leaves[ia + 1 :]:
            e = lay.edges[_fork_edge(lay.chains[a], lay.chains[b])]
            s_fork = e.start_s + e.length
            if not _parts_cleanly(lay.lines[a], lay.lines[b], s_fork, p):
                return False
            if not _parts_cleanly(lay.lines[b], lay.lines[a], s_fork, p):
                return False
    return True


def _subtree_leaves(lay: _Layout, edge: int) -> list[int]:
    return [leaf for leaf in lay.leaves if edge in lay.chains[leaf]]


def _station_from_layout(
    lay: _Layout,
    rng: np.random.Generator,
    station: str,
    seed: int,
    projector: Projector,
    origin: FloatArray,
    attempts: int,
    p: SyntheticParams,
) -> SyntheticStation:
    edges = lay.edges
    rid = {leaf: f"{station}-R{k + 1}" for k, leaf in enumerate(lay.leaves)}
    on_edge = {i: [rid[leaf] for leaf in _subtree_leaves(lay, i)] for i in range(len(edges))}

    # Signals along the tree in depth-first order; both branches inherit the
    # spacing so far, so every route sees 200-500 m between consecutive signals.
    signals: list[tuple[str, int, float]] = []  # intersection, edge, s along its routes
    stack: list[tuple[int, float]] = [(0, float(rng.uniform(*p.signal_spacing_m)))]
    while stack:
        i, next_s = stack.pop()
        e = edges[i]
        end = e.start_s + e.length
        while next_s < end:
            signals.append((f"{station}-K{len(signals) + 1:03d}", i, next_s))
            next_s += float(rng.uniform(*p.signal_spacing_m))
        stack.extend((c, next_s) for c in reversed(e.children))

    fork_names = {
        i: f"{station}-F{k + 1}"
        for k, i in enumerate(i for i, e in enumerate(edges) if e.fork is not None)
    }
    features: list[dict[str, Any]] = []
    routes: dict[str, SyntheticRoute] = {}
    for leaf in lay.leaves:
        line = lay.lines[leaf]
        chain = lay.chains[leaf]
        bps: list[BranchPoint] = []
        for parent, child in itertools.pairwise(chain):
            e = edges[parent]
            assert e.fork is not None
            k = e.children.index(child)
            sibling = e.children[1 - k]
            others = _subtree_leaves(lay, sibling)
            s_fork = e.start_s + e.length
            segs = _segments([lay.lines[o] for o in others])
            s_apart = _first_reach(line, segs, s_fork, p.apart_m, 1.0, precise=True)
            assert s_apart is not None  # the layout passed _parts_cleanly
            bps.append(
                BranchPoint(
                    fork=fork_names[parent],
                    angle_class=e.fork.angle_class,
                    angle_deg=e.fork.angle_deg,
                    turn_deg=e.fork.turns[k],
                    s_fork_m=s_fork,
                    s_apart_m=s_apart,
                    other_routes=tuple(rid[o] for o in others),
                )
            )
        mine = [(name, s) for name, i, s in signals if i in chain]
        coords = [list(edges[chain[0]].lonlat[0])]
        coords += [list(ll) for j in chain for ll in edges[j].lonlat[1:]]
        routes[rid[leaf]] = SyntheticRoute(
            id=rid[leaf],
            station=station,
            length_m=float(line.length),
            xy=tuple((float(x), float(y)) for x, y in line.xy),
            branch_points=tuple(bps),
            signals=tuple(name for name, _ in mine),
            signal_s_m=tuple(s for _, s in mine),
        )
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "LineString",
                    "coordinates": coords,
                },
                "properties": {
                    "kind": "route",
                    "id": rid[leaf],
                    "name": f"{station} route {rid[leaf].rsplit('-R', 1)[1]} (synthetic)",
                    "station": station,
                    "speed_limit_kmh": p.speed_limit_kmh,
                },
            }
        )
    through: dict[str, tuple[str, ...]] = {}
    for name, i, s in signals:
        e = edges[i]
        x, y = _Poly(e.xy).at(np.array([s - e.start_s]))[0]
        lon, lat = projector.to_wgs84(float(x), float(y))
        through[name] = tuple(on_edge[i])
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Point",
                    "coordinates": [round(lon, _DECIMALS), round(lat, _DECIMALS)],
                },
                "properties": {
                    "kind": "signal",
                    "routes": list(on_edge[i]),
                    "intersection": name,
                    "controller": f"C-{name}",
                    "approach": "1",
                    "transition_s": p.transition_s,
                },
            }
        )
    doc = {
        "type": "FeatureCollection",
        "name": f"Synthetic routes of station {station} (seed {seed})",
        "features": features,
    }
    return SyntheticStation(
        id=station,
        seed=seed,
        epsg=projector.epsg,
        x=float(origin[0]),
        y=float(origin[1]),
        routes=MappingProxyType(routes),
        signals=MappingProxyType(through),
        geojson=doc,
        attempts=attempts,
    )


def generate_station(
    seed: int,
    n_routes: int,
    *,
    station: str = "FW-1",
    centre: tuple[float, float] = MANNHEIM,
    offset_m: tuple[float, float] = (0.0, 0.0),
    epsg: int = 25832,
    params: SyntheticParams | None = None,
) -> SyntheticStation:
    """A station ``offset_m`` (east, north) from ``centre`` with ``n_routes`` approach routes.

    Deterministic for a seed. Raises ValueError when the parameters cannot
    produce a layout that passes the checks within ``params.max_attempts``.
    """
    if n_routes < 1:
        raise ValueError(f"a station needs at least one route, not {n_routes}")
    p = params if params is not None else SyntheticParams()
    projector = _projector(epsg)
    origin = np.asarray(projector.to_metric(*centre)) + np.asarray(offset_m, dtype=np.float64)
    rng = np.random.Generator(np.random.PCG64(seed))
    for attempt in range(1, p.max_attempts + 1):
        edges = _grow(rng, n_routes, p)
        if edges is None or not _extend_tails(rng, edges, p):
            continue
        _round_trip(edges, projector, origin)
        lay = _layout(edges)
        if _valid(lay, p):
            return _station_from_layout(lay, rng, station, seed, projector, origin, attempt, p)
    raise ValueError(
        f"station {station!r} (seed {seed}): no layout of {n_routes} routes kept "
        f"{p.clearance_m:.0f} m between parted routes in {p.max_attempts} attempts; "
        "allow longer routes or fewer routes per station"
    )


def generate_city(
    seed: int,
    n_stations: int,
    routes_per_station: int,
    *,
    centre: tuple[float, float] = MANNHEIM,
    epsg: int = 25832,
    spacing_m: float = 7000.0,
    params: SyntheticParams | None = None,
) -> SyntheticCity:
    """Stations on a jittered grid ``spacing_m`` apart, each with its own route tree.

    Stations are regrown (with the next sub-seed) until none of their routes
    comes within ``clearance_m`` of another station's, so the only near
    neighbours a route has are its own station's routes.
    """
    if n_stations < 1:
        raise ValueError(f"a city needs at least one station, not {n_stations}")
    p = params if params is not None else SyntheticParams()
    rng = np.random.Generator(np.random.PCG64(seed))
    cols = math.ceil(math.sqrt(n_stations))
    rows = math.ceil(n_stations / cols)
    stations: list[SyntheticStation] = []
    placed: list[LineString] = []
    for k in range(n_stations):
        r, c = divmod(k, cols)
        jitter = rng.uniform(-0.15, 0.15, size=2) * spacing_m
        offset = (
            float((c - (cols - 1) / 2) * spacing_m + jitter[0]),
            float((r - (rows - 1) / 2) * spacing_m + jitter[1]),
        )
        for attempt in range(p.max_attempts):
            sub = int(np.random.SeedSequence([seed, k, attempt]).generate_state(1)[0])
            st = generate_station(
                sub,
                routes_per_station,
                station=f"FW-{k + 1}",
                centre=centre,
                offset_m=offset,
                epsg=epsg,
                params=p,
            )
            lines = [LineString(r.xy) for r in st.routes.values()]
            if (
                not placed
                or float(shapely.distance(MultiLineString(lines), MultiLineString(placed)))
                > p.clearance_m
            ):
                break
        else:
            raise ValueError(
                f"station FW-{k + 1}: its routes kept running into other stations' in "
                f"{p.max_attempts} attempts; increase spacing_m (now {spacing_m:.0f} m)"
            )
        stations.append(st)
        placed.extend(lines)
    doc = {
        "type": "FeatureCollection",
        "name": f"Synthetic city: {n_stations} stations x {routes_per_station} routes "
        f"(seed {seed})",
        "features": [f for st in stations for f in st.geojson["features"]],
    }
    return SyntheticCity(seed=seed, epsg=epsg, stations=tuple(stations), geojson=doc)
