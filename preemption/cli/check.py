"""`preemption check-config`: a deployment and everything it names, checked without a network.

What a deployment can get wrong and where it is caught:

- the file itself (size, encoding, TOML, nesting), every key, every number's bound and
  the timings that depend on each other, the EPSG code, the files of ``[[gps]]``
  sources: :func:`preemption.kernel.config.load_config`;
- each controller's ``options`` against its adapter's ``Options`` model
  (``signal_adapters.registry.option_checks``);
- the route files (every number, position, the CRS's area of use and scale, signals
  near their routes and in driving order): :func:`routes.geojson.load_routes`;
- the route set as a whole (a signal on a shared stretch listed on every route, one
  controller per intersection): :func:`routes.routecheck.check_network`, the checks
  of ``preemption routes check``;
- what only the deployment and the routes together know: here;
- a fleet feed anyone on the network could forge (no TLS or no credentials) without
  ``insecure = true``: :func:`preemption.service.wiring.check_fleet_security`, the
  check ``preemption run`` makes at every start.

Every refusal is a :class:`ConfigError` (exit status 2) naming the deployment file,
the key path and what to do.
"""

from __future__ import annotations

from pathlib import Path

from preemption.cli.main import EXIT_FAILED, EXIT_OK
from preemption.kernel.config import ConfigError, Deployment, load_config
from preemption.kernel.errors import InsecureInput
from preemption.service.wiring import check_fleet_security
from routes.geojson import RouteFileError, RouteSet, load_routes
from routes.routecheck import check_network
from signal_adapters import registry


def check_config(path: Path) -> int:
    """Validate ``path``; print one line of what it holds, or raise ConfigError."""
    dep = load_config(path, adapters=registry.option_checks())
    try:
        warnings = check_fleet_security(dep)
    except InsecureInput as exc:
        raise ConfigError(path, [("gps", str(exc))]) from None
    routes = _routes(path, dep)
    problems = [("routes.files", p) for p in route_problems(dep, routes)]
    if problems:
        raise ConfigError(path, problems)
    n_signals = len({s.intersection for mr in routes for s in mr.signals})
    chosen = "" if dep.deployment.epsg is not None else ", the routes' UTM zone"
    print(
        f"{path}: ok: {len(routes)} routes, {n_signals} signalised intersections, "
        f"{len(dep.vehicles)} vehicles, {len(dep.controllers)} controllers "
        f"(EPSG:{routes.projector.epsg}{chosen})"
    )
    for warning in warnings:
        print(f"warning: {warning}")
    return EXIT_OK


def _routes(path: Path, dep: Deployment) -> RouteSet:
    try:
        return load_routes(dep.routes.files, epsg=dep.deployment.epsg)
    except RouteFileError as exc:
        raise ConfigError(path, [("routes.files", str(exc))]) from None


def route_problems(dep: Deployment, routes: RouteSet) -> list[str]:
    """Problems of the routes as a set and against the deployment, as messages."""
    return (
        _unknown_controllers(dep, routes)
        + check_network(routes).problems
        + _holds_too_short(dep, routes)
    )


def _unknown_controllers(dep: Deployment, routes: RouteSet) -> list[str]:
    controllers = {c.id for c in dep.controllers}
    return [
        f"route {mr.id!r} signal {sig.intersection!r} names controller "
        f"{sig.controller!r}, which [[controllers]] does not define"
        for mr in routes
        for sig in mr.signals
        if sig.controller not in controllers
    ]


def _holds_too_short(dep: Deployment, routes: RouteSet) -> list[str]:
    """Signals asked so early that the maximum hold ends before the engine arrives.

    The planner asks transition_s + lead_margin_s before the ETA (the signal's own
    transition_s, else planner.default_transition_s, which the config check covers).
    """
    cfg = dep.planner
    out = []
    for mr in routes:
        for sig in mr.signals:
            if sig.transition_s is None:
                continue
            ahead = sig.transition_s + cfg.lead_margin_s
            if ahead >= cfg.max_hold_s:
                out.append(
                    f"route {mr.id!r} signal {sig.intersection!r}: transition_s "
                    f"{sig.transition_s:g} s + planner.lead_margin_s {cfg.lead_margin_s:g} s "
                    f"is not less than planner.max_hold_s {cfg.max_hold_s:g} s: the request "
                    "would be taken back before the engine arrives; check the signal's "
                    "transition_s, or raise planner.max_hold_s"
                )
    return out


def probe_controllers(path: Path) -> int:
    """Connect to every controller (reads only) and print what its adapter can tell.

    Exit status 1 when any controller cannot be reached or its adapter refuses its
    options once connected (a preempt the controller does not have, say).
    """
    import asyncio

    from preemption.kernel.clock import RealClock
    from signal_adapters.base import AdapterContext, AdapterError

    dep = load_config(path, adapters=registry.option_checks())
    context = AdapterContext(RealClock())

    async def one(cid: str, adapter_name: str, options: dict[str, object]) -> bool:
        adapter = registry.load(adapter_name)(cid, options, context)
        probe = getattr(adapter, "probe", None)
        try:
            facts = await probe() if callable(probe) else [f"controller {cid!r}: {adapter_name}"]
        except AdapterError as exc:
            print(f"error: {exc}")
            return False
        finally:
            try:
                await adapter.close()
            except AdapterError as exc:
                print(f"error: closing {cid!r}: {exc}")
        for fact in facts:
            print(fact)
        return True

    async def every() -> list[bool]:
        return list(
            await asyncio.gather(*(one(c.id, c.adapter, dict(c.options)) for c in dep.controllers))
        )

    return EXIT_OK if all(asyncio.run(every())) else EXIT_FAILED
