"""Network-level checks of a route set, beyond what loading a file checks.

Loading (routes/geojson.py) makes sure every file, route and signal is well
formed. Here the routes are looked at together, through the
:class:`routes.network.RouteNetwork` of their shared stretches:

- a signal on a stretch that several routes share must be listed on every one
  of them (else the planner could not request it before the route is known);
- one intersection has one controller in every route that lists it.

The report also lists what an operator checks by eye: each route's signals, the
shared trunks with their signals, the branch points and the signals common to
all routes. ``preemption routes check`` prints it; ``preemption check-config``
(preemption/cli/check.py) refuses a deployment whose routes have any of its
``problems``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from routes.geojson import RouteSet
from routes.network import RouteNetwork


@dataclass
class CheckResult:
    routes: list[dict[str, object]] = field(default_factory=list)
    trunks: list[dict[str, object]] = field(default_factory=list)
    branch_points: list[dict[str, object]] = field(default_factory=list)
    common_signals: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": not self.problems,
            "routes": self.routes,
            "trunks": self.trunks,
            "branch_points": self.branch_points,
            "common_signals": self.common_signals,
            "problems": self.problems,
        }

    def lines(self) -> list[str]:
        out = []
        for r in self.routes:
            out.append(
                f"route {r['id']}: {r['length_m']:.0f} m, {len(r['signals'])} signals: "  # type: ignore[arg-type]
                f"{' '.join(r['signals']) or '-'}"  # type: ignore[arg-type]
            )
        for t in self.trunks:
            out.append(
                f"shared by {'+'.join(t['routes'])}: {t['length_m']:.0f} m, "  # type: ignore[arg-type]
                f"signals {' '.join(t['signals']) or '-'}"  # type: ignore[arg-type]
            )
        for b in self.branch_points:
            out.append(f"branch point: {' | '.join(b['branches'])} at {b['angle_deg']:.0f}°")  # type: ignore[arg-type]
        out.append(f"signals common to all routes: {' '.join(self.common_signals) or '-'}")
        out.append("ok" if not self.problems else f"{len(self.problems)} problem(s)")
        return out


def check_network(routes: RouteSet) -> CheckResult:
    net = RouteNetwork(routes)
    res = CheckResult()
    for mr in routes:
        res.routes.append(
            {
                "id": mr.id,
                "length_m": round(mr.length, 1),
                "signals": [s.intersection for s in mr.signals],
            }
        )
    for eid, edge in net.edges.items():
        if len(edge.routes) < 2:
            continue
        base = routes[edge.base_route]
        sigs = [
            s.intersection
            for s in base.signals
            if edge.base_s0 <= s.stop_line_m < edge.base_s0 + edge.length
        ]
        res.trunks.append(
            {
                "edge": eid,
                "routes": sorted(edge.routes),
                "length_m": round(edge.length, 1),
                "signals": sigs,
            }
        )
    for bp in net.branch_points():
        res.branch_points.append(
            {
                "x": round(bp.x, 1),
                "y": round(bp.y, 1),
                "branches": ["+".join(sorted(b)) for b in bp.branches],
                "angle_deg": round(bp.angle_deg, 1),
            }
        )
    res.common_signals = sorted({i for i, _ in net.common_signals(routes.routes)})
    controllers: dict[str, tuple[str, str]] = {}
    for mr in routes:
        for sig in mr.signals:
            seen = controllers.setdefault(sig.intersection, (sig.controller, mr.id))
            if seen[0] != sig.controller:
                res.problems.append(
                    f"route {mr.id!r} signal {sig.intersection!r}: controller "
                    f"{sig.controller!r}, but route {seen[1]!r} names {seen[0]!r} for it; "
                    "one intersection has one controller"
                )
            for other in sorted(net.routes_sharing(mr.id, sig.stop_line_m) - {mr.id}):
                if sig.intersection not in {s.intersection for s in routes[other].signals}:
                    res.problems.append(
                        f"route {other!r}: shares the stretch of route {mr.id!r} at its signal "
                        f"{sig.intersection!r} ({sig.stop_line_m:.0f} m along {mr.id!r}) but "
                        f"does not list it; add {other!r} to the signal's 'routes'"
                    )
    return res
