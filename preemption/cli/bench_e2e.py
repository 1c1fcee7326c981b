"""`preemption bench e2e` and `bench soak`: the daemon under a fleet's load, through Mosquitto.

A city of generated routes (sim/synthetic.py: 5 stations, 10 routes each, about
200 signals). 100 engines, each with its own certificate and password from the
shipped config/mosquitto/make-pki, publish their positions at 10 Hz (QoS 1, the
onboard unit's JSON) from a separate process to a Mosquitto on the shipped
configuration (TLS, no anonymous clients, the ACL), on 127.0.0.1. The daemon runs
in this process as ``preemption run`` would (wiring.build, the journal on disk,
the fleet feed with the daemon's credentials), every engine on an emergency run;
its controllers are in-process stand-ins behind the simlink adapter that note
when each command arrives.

Measured, from the fix's own time (the publisher stamps each position with its
epoch on the receiver's 10 Hz grid, as a receiver does, so a late send counts
against the latency):

- ``p50_ms`` / ``p99_ms``: fix to command at the controller, for every command a
  fix caused (requests, ETA updates, cancels after the stop line);
- ``decision_p50_ms`` / ``decision_p99_ms``: fix to the planner's decision, for
  every fix (broker, TLS, decoding, the motion gate, the matcher, the planner);
- ``lost``: positions published and acknowledged by the broker that the daemon
  never received; ``dropped`` what it received and refused, by reason;
- ``rss_start_mb`` / ``rss_end_mb``: this process's resident memory after the
  warm-up (10 s; the soak: after the first minute) and at the end.

The engines' blue lights come on one after another over the first 5 s, and
latencies are counted after a 10 s warm-up. They go into a fixed histogram
(0.1 ms bins up to 5 s), so the measurement itself keeps nothing per fix and the
soak's memory figure is the daemon's.
The machine's load average and this process's CPU share come with the figures:
the machines are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from preemption.kernel.clock import RealClock
from preemption.kernel.config import Deployment
from preemption.kernel.model import Command, PreemptStatus
from preemption.service import hotpath
from preemption.service.daemon import Daemon
from preemption.service.journal import Journal
from preemption.service.wiring import build, sources

PREFIX = "preemption/v1/vehicles"
SPEED = 13.0  # m/s
WARMUP_S = 10.0


class Histogram:
    """Counts of latencies in fixed bins: constant memory, quantiles to the bin."""

    def __init__(self, bin_s: float = 1e-4, top_s: float = 5.0) -> None:
        self.bin_s = bin_s
        self.counts = [0] * (int(top_s / bin_s) + 1)
        self.n = 0

    def add(self, seconds: float) -> None:
        k = min(len(self.counts) - 1, max(0, int(seconds / self.bin_s)))
        self.counts[k] += 1
        self.n += 1

    def quantile_ms(self, q: float) -> float | None:
        if self.n == 0:
            return None
        want = q * self.n
        seen = 0
        for k, c in enumerate(self.counts):
            seen += c
            if seen >= want:
                return round((k + 1) * self.bin_s * 1e3, 2)
        return None


class Arrivals:
    """The controllers' side: when each command a fix caused arrives."""

    def __init__(self) -> None:
        self.origin: dict[str, float] = {}  # request id -> time of the fix behind its last command
        self.latency = Histogram()
        self.decision = Histogram()
        self.commands = 0
        self.measuring = False  # after the warm-up

    def caused(self, fix_time: float, commands: list[Command]) -> None:
        if not self.measuring:
            return
        self.decision.add(time.time() - fix_time)
        for c in commands:
            self.origin[c.request_id] = fix_time

    def arrived(self, request_id: str) -> None:
        self.commands += 1
        fix_time = self.origin.pop(request_id, None)
        if fix_time is not None:
            self.latency.add(time.time() - fix_time)


class BenchInput:
    """One intersection's pre-emption input (sim's PreemptionInput protocol), noting arrivals."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        self.calls: dict[str, str] = {}  # request id -> approach

    def call(self, approach: str, request_id: str, hold_s: float) -> None:
        self.arrivals.arrived(request_id)
        self.calls[request_id] = approach

    def release(self, request_id: str) -> None:
        self.arrivals.arrived(request_id)
        self.calls.pop(request_id, None)

    def preempt_status(self) -> tuple[PreemptStatus, str | None]:
        if not self.calls:
            return PreemptStatus.NOT_ACTIVE, None
        return PreemptStatus.ACTIVE, next(iter(self.calls.values()))


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return 0.0


def bench_e2e(vehicles: int = 100, rate_hz: float = 10.0, seconds: float = 60.0) -> dict[str, Any]:
    return _measure(vehicles, rate_hz, seconds, rss_at_s=WARMUP_S)


def bench_soak(minutes: float = 10.0, vehicles: int = 100, rate_hz: float = 10.0) -> dict[str, Any]:
    out = _measure(vehicles, rate_hz, minutes * 60.0, rss_at_s=60.0)
    out["minutes"] = minutes
    out["rss_growth_pct"] = round(100.0 * (out["rss_end_mb"] / out["rss_start_mb"] - 1.0), 2)
    return out


def _measure(vehicles: int, rate_hz: float, seconds: float, rss_at_s: float) -> dict[str, Any]:
    from sim.mosquitto import LocalBroker, make_fleet_pki
    from sim.synthetic import generate_city, write_geojson

    with tempfile.TemporaryDirectory(prefix="preemption-bench-") as tmp_name:
        tmp = Path(tmp_name)
        city = generate_city(7, 5, 10)
        routes_file = write_geojson(city, tmp / "routes.geojson")
        names = [f"BENCH-{k:03d}" for k in range(vehicles)]
        pki = make_fleet_pki(tmp / "pki", vehicles=tuple(names))
        with LocalBroker(tmp / "broker", pki) as broker:
            dep = _deployment(tmp, routes_file, names, city.epsg, pki.directory, broker.port)
            return asyncio.run(
                _run(dep, pki.directory, names, rate_hz, seconds, rss_at_s, broker.port)
            )


def _deployment(
    tmp: Path, routes_file: Path, names: list[str], epsg: int, pki: Path, port: int
) -> Deployment:
    from routes.geojson import load_routes

    routes = load_routes(routes_file, epsg=epsg)
    controllers = sorted({s.controller for mr in routes for s in mr.signals})
    service = pki / "service" / "preemption-daemon"
    return Deployment.model_validate(
        {
            "deployment": {"name": "bench e2e", "epsg": epsg},
            "routes": {"files": [str(routes_file)]},
            "vehicles": [{"id": n} for n in names],
            "controllers": [{"id": c, "adapter": "simlink"} for c in controllers],
            "service": {"journal": str(tmp / "journal.sqlite")},
            "gps": [
                {
                    "kind": "mqtt",
                    "host": "127.0.0.1",
                    "port": port,
                    "username": "preemption-daemon",
                    "password_file": str(service.with_suffix(".password")),
                    "tls_ca": str(pki / "ca.crt"),
                    "tls_cert": str(service.with_suffix(".crt")),
                    "tls_key": str(service.with_suffix(".key")),
                }
            ],
        }
    )


async def _run(
    dep: Deployment,
    pki: Path,
    names: list[str],
    rate_hz: float,
    seconds: float,
    rss_at_s: float,
    port: int,
) -> dict[str, Any]:
    from routes.geojson import load_routes

    clock = RealClock()
    arrivals = Arrivals()
    routes = load_routes(dep.routes.files, epsg=dep.deployment.epsg)
    inputs = {s.intersection: BenchInput(arrivals) for mr in routes for s in mr.signals}
    assert dep.service.journal is not None
    journal = Journal(dep.service.journal, clock)
    daemon = build(dep, clock, {"simlink": inputs}, routes, sink=journal, boot_id=journal.boot_id)
    journal.counters = daemon.counters
    _instrument(daemon, arrivals)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(sources(dep, daemon, clock), stop))
    await asyncio.sleep(1.0)  # the daemon connects and subscribes
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "preemption.cli.bench_e2e", "publish",
        json.dumps({
            "port": port, "pki": str(pki),
            "routes": str(dep.routes.files[0]), "epsg": dep.deployment.epsg,
            "vehicles": names, "rate_hz": rate_hz, "seconds": seconds,
        }),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert publisher.stdout is not None
    assert (await publisher.stdout.readline()).strip() == b"go"
    started = time.monotonic()
    cpu0 = _cpu_s()
    await asyncio.sleep(WARMUP_S)
    arrivals.measuring = True
    await asyncio.sleep(max(0.0, rss_at_s - WARMUP_S))
    rss_start = rss_mb()
    report = json.loads(await publisher.stdout.read())
    await publisher.wait()
    wall = time.monotonic() - started
    cpu = _cpu_s() - cpu0
    await asyncio.sleep(2.0)  # what is in flight arrives
    fleet = next(iter(daemon.sources.values()))
    received = fleet.received["position"]  # type: ignore[attr-defined]
    dropped: Mapping[str, int] = fleet.dropped  # type: ignore[attr-defined]
    rss_end = rss_mb()
    stop.set()
    await asyncio.wait_for(task, 30)
    journal.close()
    counters = daemon.counters
    p99 = arrivals.latency.quantile_ms(0.99)
    return {
        "vehicles": len(names),
        "rate_hz": rate_hz,
        "seconds": seconds,
        "published": report["published"],
        "received": received,
        "lost": report["published"] - received,
        "dropped": dict(sorted({**dropped, **_daemon_drops(counters)}.items())),
        "commands": arrivals.commands,
        "commands_timed": arrivals.latency.n,
        "p50_ms": arrivals.latency.quantile_ms(0.5),
        "p99_ms": p99,
        "decision_p50_ms": arrivals.decision.quantile_ms(0.5),
        "decision_p99_ms": arrivals.decision.quantile_ms(0.99),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "daemon_cpu_pct": round(100.0 * cpu / wall, 1),
        "publisher_late_pct": report["late_pct"],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "target_met": p99 is not None and p99 <= 20.0 and report["published"] == received,
        "build": hotpath.describe(),
    }


def _daemon_drops(counters: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if k.startswith("fix_") and k != "fix_backlog"}


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _instrument(daemon: Daemon, arrivals: Arrivals) -> None:
    """Note each planned fix's decision latency and the fix behind each command."""
    match = daemon._match

    def timed(v: Any, fix: Any, plan: bool) -> list[Command]:
        commands = match(v, fix, plan)
        if plan:
            arrivals.caused(fix.time, commands)
        return commands

    daemon._match = timed  # type: ignore[method-assign]


# -- the fleet, in its own process ---------------------------------------------------------


async def _publish(args: dict[str, Any]) -> None:
    import aiomqtt

    from gps.position_json import PositionMessage, StatusMessage, StatusSource
    from preemption.kernel.model import Fix, FixQuality
    from routes.geojson import load_routes

    routes = load_routes(Path(args["routes"]), epsg=args["epsg"])
    ids = sorted(routes.routes)
    pki = Path(args["pki"])
    rate, seconds = float(args["rate_hz"]), float(args["seconds"])
    rng = random.Random(7)
    published = late = 0

    def client(name: str) -> aiomqtt.Client:
        base = pki / "vehicle" / name
        tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        tls.load_cert_chain(str(base.with_suffix(".crt")), str(base.with_suffix(".key")))
        password = base.with_suffix(".password").read_text().strip()
        return aiomqtt.Client(
            "127.0.0.1", args["port"], username=name, password=password,
            tls_context=tls, identifier=name,
        )  # fmt: skip

    async def engine(k: int, name: str, c: aiomqtt.Client, t0: float) -> None:
        nonlocal published, late
        mr = routes[ids[k % len(ids)]]
        s = rng.uniform(0.0, mr.length / 3)
        seq = 0
        due = t0 + k / (len(args["vehicles"]) * rate)  # spread over the period
        while due < t0 + seconds:
            now = time.time()
            if now > due + 0.05:
                late += 1
            if s > mr.length:
                s = 0.0  # round again (the motion gate sees a jump and holds it back)
            p = mr.at(s)
            lon, lat = routes.projector.to_wgs84(p.x, p.y)
            # Stamped with its epoch, as a receiver does: a late send is as old as it is.
            fix = Fix(name, due, lat, lon, SPEED, p.heading_deg, 0.9, FixQuality.GPS, "bench")
            payload = PositionMessage.from_fix(fix, seq=seq).encode()
            await c.publish(f"{PREFIX}/{name}/position", payload, qos=1)
            published += 1
            seq += 1
            s += SPEED / rate
            due += 1.0 / rate
            await asyncio.sleep(max(0.0, due - time.time()))

    async def alarm(name: str, c: aiomqtt.Client) -> None:
        # Engines turn out one after another over the warm-up, not all in one instant.
        await asyncio.sleep(rng.uniform(0.0, WARMUP_S / 2))
        on = StatusMessage(name, time.time(), True, StatusSource.BLUE_LIGHTS, seq=0)
        await c.publish(f"{PREFIX}/{name}/status", on.encode(), qos=1, retain=True)

    names: list[str] = args["vehicles"]
    clients = [client(n) for n in names]
    for c in clients:
        await c.__aenter__()
    print("go", flush=True)
    t0 = time.time()
    async with asyncio.TaskGroup() as tg:
        for k, (n, c) in enumerate(zip(names, clients, strict=True)):
            tg.create_task(alarm(n, c))
            tg.create_task(engine(k, n, c, t0))
    for n, c in zip(names, clients, strict=True):
        off = StatusMessage(n, time.time(), False, StatusSource.BLUE_LIGHTS, seq=1)
        await c.publish(f"{PREFIX}/{n}/status", off.encode(), qos=1, retain=True)
        await c.__aexit__(None, None, None)
    print(
        json.dumps({"published": published, "late_pct": round(100.0 * late / max(1, published), 2)})
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m preemption.cli.bench_e2e")
    parser.add_argument("role", choices=["publish"])
    parser.add_argument("args")
    ns = parser.parse_args(argv)
    asyncio.run(_publish(json.loads(ns.args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
