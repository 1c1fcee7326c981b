"""Road networks for building approach routes: a SUMO network as a networkx graph.

The graph's nodes are the network's *edges* (street stretches between two
junctions, one per direction) and its arcs are SUMO's *connections* (which lane
of one edge may continue onto which lane of the next). Routing on this edge
graph respects turn restrictions, which a graph of junctions would not. Each
node carries the stretch's length, speed limit and travel time; each arc carries
the connections it stands for, with the traffic light and the link index that
control them.

Only traffic lights with a signal program (a ``tlLogic``) count as signalised
junctions; SUMO's rail signals and level crossings have none and are left out.

An OpenStreetMap extract (``.osm``, ``.osm.xml``, ``.osm.gz``) is first turned
into a SUMO network with SUMO's ``netconvert`` (installed with ``eclipse-sumo``,
the ``sumo`` extra).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import sumolib

from preemption.kernel.errors import InputError

DEFAULT_VCLASS = "emergency"
OSM_SUFFIXES = (".osm", ".osm.xml", ".osm.gz", ".osm.xml.gz")
# netconvert options for an OSM extract: guess signals the map lacks, join the
# junctions (and signals) of dual carriageways, actuated programs like SUMO's
# bundled networks, street names kept for the operator.
NETCONVERT_OSM_OPTIONS = (
    "--geometry.remove",
    "--roundabouts.guess",
    "--ramps.guess",
    "--junctions.join",
    "--tls.guess-signals",
    "--tls.discard-simple",
    "--tls.join",
    "--tls.default-type",
    "actuated",
    "--output.street-names",
    "--output.original-names",
)


class RoadNetworkError(InputError):
    """A road network cannot be loaded or converted; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class Link:
    """One SUMO connection: a lane of one edge onto a lane of the next, maybe signalised."""

    from_edge: str
    to_edge: str
    from_lane: int
    to_lane: int
    via: str  # the internal lane across the junction, "" if none
    tl: str  # the traffic light controlling it, "" if none (or not a road signal)
    link_index: int  # the TL's link index (its signal-state position), -1 if none
    junction: str  # the junction the connection crosses
    direction: str  # SUMO's s, l, r, t, L, R


@dataclass(frozen=True, slots=True)
class TlApproach:
    """A street entering a signalised junction: the edge, its name, the through link."""

    edge: str
    name: str
    link_index: int


@dataclass
class RoadNetwork:
    """A SUMO network and its edge graph for one vehicle class."""

    path: Path
    net: Any  # sumolib.net.Net (untyped library)
    graph: nx.DiGraph
    vclass: str
    signalised: frozenset[str]  # ids of the traffic lights with a signal program

    def edge(self, edge_id: str) -> Any:
        return self.net.getEdge(edge_id)

    def links(self, from_edge: str, to_edge: str) -> tuple[Link, ...]:
        links: tuple[Link, ...] = self.graph.edges[from_edge, to_edge]["links"]
        return links

    def to_lonlat(self, x: float, y: float) -> tuple[float, float]:
        lon, lat = self.net.convertXY2LonLat(x, y)
        return float(lon), float(lat)

    def to_xy(self, lon: float, lat: float) -> tuple[float, float]:
        x, y = self.net.convertLonLat2XY(lon, lat)
        return float(x), float(y)

    def approaches(self, tl: str) -> list[TlApproach]:
        """The streets entering the junction(s) of a traffic light from outside, each with
        the link index of its through movement (or its first signalised movement when it
        has no through one), in link-index order.

        Edges between two junctions of one joined traffic light (the median of a dual
        carriageway) are no approach: traffic on them came in on another.
        """
        inner = {
            link.junction for a, b in self.graph.edges for link in self.links(a, b) if link.tl == tl
        }
        found: dict[str, list[Link]] = {}
        for a, b in self.graph.edges:
            for link in self.links(a, b):
                if link.tl == tl and self.edge(a).getFromNode().getID() not in inner:
                    found.setdefault(a, []).append(link)
        out = []
        for edge_id, links in found.items():
            through = [k for k in links if k.direction == "s"] or links
            index = min(k.link_index for k in through)
            name = str(self.graph.nodes[edge_id]["name"])
            out.append(TlApproach(edge_id, name, index))
        return sorted(out, key=lambda a: a.link_index)

    def junction_name(self, tl: str) -> str:
        """The street names meeting at a traffic light, for operators ("A / B")."""
        names: set[str] = set()
        for conn in self.net.getTLS(tl).getConnections():
            for lane in conn[:2]:
                name = lane.getEdge().getName()
                if name:
                    names.add(name)
        return " / ".join(sorted(names))


def load_network(
    path: Path | str, vclass: str = DEFAULT_VCLASS, converted: Path | None = None
) -> RoadNetwork:
    """Load a SUMO network (``.net.xml``, gzip allowed) or convert an OSM extract first.

    ``converted`` is where an OSM extract's SUMO network is written (default: next
    to the extract, ``<name>.net.xml.gz``).
    """
    path = Path(path)
    if not path.exists():
        raise RoadNetworkError(f"{path}: road network file not found")
    if path.name.lower().endswith(OSM_SUFFIXES):
        stem = path.name[: path.name.lower().rfind(".osm")]
        target = converted or path.with_name(f"{stem}.net.xml.gz")
        path = convert_osm(path, target)
    try:
        with warnings.catch_warnings():
            # sumolib falls back to a brute-force search without rtree; fine at city scale.
            warnings.filterwarnings("ignore", message=".*rtree.*")
            net = sumolib.net.readNet(str(path), withInternal=True, withPrograms=True)
    except Exception as exc:  # sumolib raises whatever its XML parser raises
        raise RoadNetworkError(
            f"{path}: not readable as a SUMO network ({type(exc).__name__}: {exc}); "
            "give a .net.xml(.gz) written by netconvert or an OSM extract"
        ) from None
    return build_graph(path, net, vclass)


def build_graph(path: Path, net: Any, vclass: str) -> RoadNetwork:
    signalised = frozenset(tl.getID() for tl in net.getTrafficLights() if tl.getPrograms())
    graph = nx.DiGraph()
    for edge in net.getEdges(withInternal=False):
        if edge.getFunction() or not edge.allows(vclass):
            continue
        length, speed = float(edge.getLength()), float(edge.getSpeed())
        graph.add_node(
            edge.getID(),
            length=length,
            speed=speed,
            time=length / max(speed, 0.1),
            name=edge.getName() or "",
        )
    for edge_id in list(graph.nodes):
        edge = net.getEdge(edge_id)
        for to_edge, conns in edge.getOutgoing().items():
            to_id = to_edge.getID()
            if to_id not in graph:
                continue
            links = tuple(
                _link(c, signalised)
                for c in conns
                if c.getFromLane().allows(vclass) and c.getToLane().allows(vclass)
            )
            if not links:
                continue
            via_len = _via_length(net, links[0].via)
            graph.add_edge(
                edge_id,
                to_id,
                links=links,
                time=via_len / max(float(edge.getSpeed()), 0.1),
            )
    if graph.number_of_nodes() == 0:
        raise RoadNetworkError(
            f"{path}: no street in the network allows vehicle class {vclass!r}; "
            "check the class (emergency, passenger) or the netconvert type map"
        )
    return RoadNetwork(path=path, net=net, graph=graph, vclass=vclass, signalised=signalised)


def _link(conn: Any, signalised: frozenset[str]) -> Link:
    tl = conn.getTLSID() or ""
    road_tl = tl if tl in signalised else ""
    return Link(
        from_edge=conn.getFrom().getID(),
        to_edge=conn.getTo().getID(),
        from_lane=int(conn.getFromLane().getIndex()),
        to_lane=int(conn.getToLane().getIndex()),
        via=conn.getViaLaneID() or "",
        tl=road_tl,
        link_index=int(conn.getTLLinkIndex()) if road_tl else -1,
        junction=conn.getFrom().getToNode().getID(),
        direction=str(conn.getDirection()),
    )


def _via_length(net: Any, via: str) -> float:
    if not via:
        return 0.0
    try:
        return float(net.getLane(via).getLength())
    except (KeyError, AttributeError):
        return 0.0


def find_netconvert() -> Path | None:
    """SUMO's netconvert: on PATH, next to this Python (a virtualenv), under $SUMO_HOME,
    or in the eclipse-sumo package; None when none of these has it."""
    candidates: list[Path] = []
    found = shutil.which("netconvert")
    if found:
        candidates.append(Path(found))
    candidates.append(Path(sys.executable).parent / "netconvert")
    if os.environ.get("SUMO_HOME"):
        candidates.append(Path(os.environ["SUMO_HOME"]) / "bin" / "netconvert")
    try:
        home = importlib.import_module("sumo").SUMO_HOME  # the eclipse-sumo wheel
        candidates.append(Path(str(home)) / "bin" / "netconvert")
    except ImportError:
        pass
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def _sumo_env() -> dict[str, str]:
    """The environment for netconvert, with a SUMO_HOME that has its type maps."""
    env = dict(os.environ)
    if not (Path(env.get("SUMO_HOME", "")) / "data" / "typemap").is_dir():
        with contextlib.suppress(ImportError):
            env["SUMO_HOME"] = str(importlib.import_module("sumo").SUMO_HOME)
    return env


def convert_osm(osm: Path, target: Path, timeout_s: float = 600.0) -> Path:
    """Convert an OpenStreetMap extract to a SUMO network with netconvert."""
    exe = find_netconvert()
    if exe is None:
        raise RoadNetworkError(
            f"{osm}: converting an OSM extract needs SUMO's netconvert, which is not "
            "installed; install the sumo extra (pip install '.[sumo]') or convert it "
            "yourself and pass the .net.xml"
        )
    cmd = [
        str(exe),
        "--osm-files",
        str(osm),
        "--output-file",
        str(target),
        *NETCONVERT_OSM_OPTIONS,
    ]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=_sumo_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RoadNetworkError(f"{osm}: netconvert did not run: {exc}") from None
    if done.returncode != 0 or not target.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RoadNetworkError(
            f"{osm}: netconvert failed (exit {done.returncode}); its last messages:\n{tail}"
        )
    return target
