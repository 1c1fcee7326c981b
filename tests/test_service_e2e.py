"""The daemon end to end through a real Mosquitto with the shipped TLS, credentials and ACL.

Positions published by an engine with its own certificate and password reach the
daemon, which asks the simulator's controllers (advanced in real time) and takes
the request back after the stop line; the journal holds the run. Then what a
hostile network does: an anonymous client, an engine publishing as another, the
broker restarting in the middle of a run, an engine whose unit dies (its last
will). Everything on 127.0.0.1 and free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from gps.mqtt import MqttFixSource
from gps.position_json import LinkMessage, PositionMessage, StatusMessage, StatusSource
from preemption.kernel.clock import RealClock
from preemption.kernel.config import Deployment, load_config
from preemption.kernel.errors import InsecureInput
from preemption.kernel.model import Fix, FixQuality, PreemptStatus
from preemption.service.daemon import Daemon
from preemption.service.journal import Journal
from preemption.service.wiring import build, probe_fleet_brokers, sources
from routes.geojson import RouteSet, load_routes
from signal_adapters import registry
from sim.controller import SignalController
from sim.scenario import load_scenario
from sim.world import controllers_of

from .broker import (
    HOST,
    FleetPki,
    MosquittoBroker,
    make_fleet_pki,
    make_tls_files,
    require_mosquitto,
)
from .helpers import DEMO_DIR, VEHICLE, fix_at

pytestmark = pytest.mark.integration

OTHER = "FW-OST-LF2"  # a second engine of the fleet, on the allow-list, not on a run
PREFIX = "preemption/v1/vehicles"
SPEED = 20.0  # m/s: a short run in real time


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    require_mosquitto()
    return make_fleet_pki(tmp_path_factory.mktemp("pki"), vehicles=(VEHICLE, OTHER))


@pytest.fixture
def broker(tmp_path: Path, pki: FleetPki) -> Iterator[MosquittoBroker]:
    with MosquittoBroker.shipped(tmp_path / "broker", pki) as b:
        yield b


def deployment(tmp: Path, pki: FleetPki, broker: MosquittoBroker) -> Path:
    shutil.copy(DEMO_DIR / "routes.geojson", tmp / "routes.geojson")
    daemon = pki.account("preemption-daemon")
    controllers = "".join(
        f'[[controllers]]\nid = "C-K{i}"\nadapter = "simlink"\n\n' for i in range(1, 8)
    )
    path = tmp / "deployment.toml"
    path.write_text(
        f"""[deployment]
name = "e2e"
epsg = 25832

[routes]
files = ["routes.geojson"]

[planner]
default_transition_s = 12.0

[service]
journal = "journal.sqlite"

[[vehicles]]
id = "{VEHICLE}"

[[vehicles]]
id = "{OTHER}"

{controllers}[[gps]]
kind = "mqtt"
host = "{HOST}"
port = {broker.port}
username = "preemption-daemon"
password_file = "{daemon.cert.with_suffix(".password")}"
tls_ca = "{pki.ca}"
tls_cert = "{daemon.cert}"
tls_key = "{daemon.key}"
""",
        encoding="utf-8",
    )
    return path


def engine_client(pki: FleetPki, broker: MosquittoBroker, name: str) -> aiomqtt.Client:
    """An onboard unit's connection: its own user name, password and certificate."""
    account = pki.account(name)
    import ssl

    tls = ssl.create_default_context(cafile=str(pki.ca))
    tls.load_cert_chain(str(account.cert), str(account.key))
    will = aiomqtt.Will(
        f"{PREFIX}/{name}/link", LinkMessage(name, False, None).encode(), qos=1, retain=True
    )
    return aiomqtt.Client(
        HOST,
        broker.port,
        username=name,
        password=account.password,
        tls_context=tls,
        identifier=name,
        will=will,
    )


@dataclass
class Street:
    """The daemon in this process with the scenario's controllers advanced in real time."""

    daemon: Daemon
    journal: Journal
    controllers: dict[str, SignalController]
    routes: RouteSet
    started: float

    def calls(self, inter: str) -> list[str]:
        return [c.request_id for c in self.controllers[inter]._calls]

    def status(self, inter: str) -> PreemptStatus:
        return self.controllers[inter].preempt_status()[0]


@contextlib.asynccontextmanager
async def street(cfg: Path) -> AsyncIterator[Street]:
    dep: Deployment = load_config(cfg, adapters=set(registry.installed()))
    scen, _ = load_scenario(DEMO_DIR / "scenario.toml")
    controllers = controllers_of(scen)
    clock = RealClock()
    assert dep.service.journal is not None
    journal = Journal(dep.service.journal, clock)
    daemon = build(dep, clock, {"simlink": controllers}, sink=journal, boot_id=journal.boot_id)
    stop = asyncio.Event()
    t0 = clock.monotonic()

    async def advance() -> None:
        while not stop.is_set():
            for c in controllers.values():
                c.advance_to(clock.monotonic() - t0)
            await asyncio.sleep(0.1)

    assert await probe_fleet_brokers(dep) == []  # the shipped broker lets nobody in anonymously
    routes = load_routes(dep.routes.files, epsg=25832)
    task = asyncio.create_task(daemon.run(sources(dep, daemon, clock), stop))
    ticker = asyncio.create_task(advance())
    try:
        await asyncio.sleep(1.0)  # the daemon connects and subscribes
        yield Street(daemon, journal, controllers, routes, t0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await ticker
        journal.close()


async def drive(
    client: aiomqtt.Client,
    routes: RouteSet,
    vehicle: str,
    start_m: float,
    end_m: float,
    seq0: int = 0,
    hz: float = 5.0,
) -> int:
    """Positions along R1 in real time at SPEED, ``hz`` a second; returns the next seq."""
    seq = seq0
    s = start_m
    while s <= end_m:
        f = fix_at(routes, "R1", s, time.time(), speed=SPEED, vehicle=vehicle)
        fix = Fix(vehicle, f.time, f.lat, f.lon, SPEED, f.course, 0.9, FixQuality.GPS, "onboard")
        await client.publish(
            f"{PREFIX}/{vehicle}/position", PositionMessage.from_fix(fix, seq=seq).encode(), qos=1
        )
        seq += 1
        s += SPEED / hz
        await asyncio.sleep(1.0 / hz)
    return seq


async def blue_lights(client: aiomqtt.Client, vehicle: str, on: bool, seq: int) -> None:
    status = StatusMessage(vehicle, time.time(), on, StatusSource.BLUE_LIGHTS, seq=seq)
    await client.publish(f"{PREFIX}/{vehicle}/status", status.encode(), qos=1, retain=True)


async def until(what: str, condition: object, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.05)


def test_an_engine_on_its_run_gets_green_and_the_junction_back(
    tmp_path: Path, pki: FleetPki, broker: MosquittoBroker
) -> None:
    cfg = deployment(tmp_path, pki, broker)

    async def main() -> None:
        async with street(cfg) as st, engine_client(pki, broker, VEHICLE) as engine:
            await blue_lights(engine, VEHICLE, True, 0)
            seq = await drive(engine, st.routes, VEHICLE, 150.0, 330.0)
            assert st.calls("K1"), "K1 was not asked while the engine approached it"
            await until(
                "K1 entering or in dwell",
                lambda: st.status("K1") in (PreemptStatus.ENTERING, PreemptStatus.ACTIVE),
            )
            await drive(engine, st.routes, VEHICLE, 330.0, 460.0, seq)
            await until("K1 released", lambda: not st.calls("K1"))
            journal = st.journal
            k1 = journal.rows("commands", "intersection = 'K1'")
            assert k1[0]["kind"] == "request"
            assert k1[-1]["kind"] == "cancel"
            assert k1[-1]["reason"] == "passed the stop line"
            assert all(c["request_id"].startswith(journal.boot_id + ":") for c in k1)
            answers = journal.rows("answers", "intersection = 'K1' AND call != 'poll'")
            assert [a["error"] for a in answers] == [None] * len(answers)
            whats = {e["what"] for e in journal.rows("events", "intersection = 'K1'")}
            assert {"armed", "due", "requested", "granted", "completed"} <= whats
            assert journal.rows("positions", "vehicle = ?", [VEHICLE])
            assert [n["what"] for n in journal.rows("notes")][:1] == ["emergency_on"]
            assert journal.rows("requests", "closed IS NULL") == []

    asyncio.run(main())


def test_what_a_hostile_network_sends_causes_nothing(
    tmp_path: Path, pki: FleetPki, broker: MosquittoBroker
) -> None:
    cfg = deployment(tmp_path, pki, broker)

    async def main() -> None:
        async with street(cfg) as st:
            # No credentials: refused at the door.
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(HOST, broker.port, timeout=5) as anonymous:
                    await anonymous.publish(f"{PREFIX}/{VEHICLE}/status", b"{}")
            async with engine_client(pki, broker, OTHER) as other:
                # Another engine posing as VEHICLE: its topics (the ACL drops it) ...
                await blue_lights(other, VEHICLE, True, 0)
                await drive(other, st.routes, VEHICLE, 150.0, 250.0, hz=10.0)
                # ... and its own topic with VEHICLE's name inside (vehicle_mismatch);
                f = fix_at(st.routes, "R1", 200.0, time.time(), vehicle=VEHICLE)
                forged = PositionMessage.from_fix(f, seq=1).encode()
                await other.publish(f"{PREFIX}/{OTHER}/position", forged, qos=1)
                # replayed, future-dated and malformed positions of its own;
                own = fix_at(st.routes, "R1", 200.0, time.time(), vehicle=OTHER)
                msg = PositionMessage.from_fix(own, seq=5).encode()
                await other.publish(f"{PREFIX}/{OTHER}/position", msg, qos=1)
                await other.publish(f"{PREFIX}/{OTHER}/position", msg, qos=1)  # replay
                ahead = fix_at(st.routes, "R1", 210.0, time.time() + 3600, vehicle=OTHER)
                await other.publish(
                    f"{PREFIX}/{OTHER}/position",
                    PositionMessage.from_fix(ahead, seq=6).encode(),
                    qos=1,
                )
                await other.publish(f"{PREFIX}/{OTHER}/position", b"\xff{not json", qos=1)
                # and it may not speak for the daemon or the operators.
                await other.publish("preemption/v1/status/K1", b"granted", qos=1)
                await asyncio.sleep(1.0)
            assert all(not c._calls for c in st.controllers.values())
            assert st.journal.rows("commands") == []
            assert not st.daemon.planner.on_run(VEHICLE)
            (fleet,) = [s for s in _fleet_sources(st)]
            dropped = fleet.dropped_by_vehicle[OTHER]
            assert dropped["vehicle_mismatch"] == 1
            assert dropped["duplicate"] == 1
            assert dropped["from_future"] == 1
            assert dropped["bad_json"] == 1
            assert VEHICLE not in fleet.dropped_by_vehicle  # the forgeries never arrived

    asyncio.run(main())


def _fleet_sources(st: Street) -> list[MqttFixSource]:
    return [s for s in st.daemon.sources.values() if isinstance(s, MqttFixSource)]


def test_a_broker_restart_in_the_middle_of_a_run_is_ridden_out(
    tmp_path: Path, pki: FleetPki, broker: MosquittoBroker
) -> None:
    cfg = deployment(tmp_path, pki, broker)

    async def main() -> None:
        async with street(cfg) as st:
            async with engine_client(pki, broker, VEHICLE) as engine:
                await blue_lights(engine, VEHICLE, True, 0)
                seq = await drive(engine, st.routes, VEHICLE, 150.0, 250.0)
                assert st.calls("K1")
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(3.0)
            await asyncio.to_thread(broker.start)
            async with engine_client(pki, broker, VEHICLE) as engine:  # the unit reconnects
                await until(
                    "the daemon back on the broker",
                    lambda: all(s.link.connected for s in _fleet_sources(st)),
                    within_s=40.0,
                )
                await drive(engine, st.routes, VEHICLE, 300.0, 460.0, seq)
                await until("K1 released after the stop line", lambda: not st.calls("K1"))
            k1 = st.journal.rows("commands", "intersection = 'K1'")
            assert k1[0]["kind"] == "request"
            assert k1[-1]["reason"] == "passed the stop line"
            assert st.daemon.counters["restart:source gps[0] (mqtt)"] == 0

    asyncio.run(main())


UNIT = """
import asyncio, ssl, sys, time
import aiomqtt
from gps.position_json import LinkMessage, StatusMessage, StatusSource
name, port, ca, cert, key, password = sys.argv[1:7]
tls = ssl.create_default_context(cafile=ca)
tls.load_cert_chain(cert, key)
topic = "preemption/v1/vehicles/" + name
gone = LinkMessage(name, False, None).encode()
async def main():
    will = aiomqtt.Will(topic + "/link", gone, qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", int(port), username=name, password=password,
                              tls_context=tls, identifier=name, will=will, keepalive=5) as c:
        here = LinkMessage(name, True, time.time()).encode()
        await c.publish(topic + "/link", here, qos=1, retain=True)
        on = StatusMessage(name, time.time(), True, StatusSource.BLUE_LIGHTS, seq=0).encode()
        await c.publish(topic + "/status", on, qos=1, retain=True)
        print("on", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_a_unit_that_dies_ends_its_engines_claims_at_once(
    tmp_path: Path, pki: FleetPki, broker: MosquittoBroker
) -> None:
    """Found: the onboard unit's last-will "offline" was ignored; its requests stood until
    the dead-man ran out."""
    cfg = deployment(tmp_path, pki, broker)
    account = pki.account(VEHICLE)
    script = tmp_path / "unit.py"
    script.write_text(UNIT, encoding="utf-8")

    async def main() -> None:
        async with street(cfg) as st:
            unit = await asyncio.create_subprocess_exec(
                sys.executable, str(script), VEHICLE, str(broker.port), str(pki.ca),
                str(account.cert), str(account.key), account.password,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                assert unit.stdout is not None
                assert (await unit.stdout.readline()).strip() == b"on"
                await until("on its run", lambda: st.daemon.planner.on_run(VEHICLE))
                # The engine's positions, straight into the daemon's intake.
                for k in range(6):
                    st.daemon.take(fix_at(st.routes, "R1", 150.0 + 20.0 * k, time.time()))
                    await asyncio.sleep(0.2)
                await until("K1 asked", lambda: bool(st.calls("K1")))
                killed = time.monotonic()
                unit.kill()  # the unit dies: no goodbye, the broker publishes its will
                await until("K1 released", lambda: not st.calls("K1"), within_s=5.0)
                released = time.monotonic() - killed
            finally:
                if unit.returncode is None:
                    unit.kill()
                await unit.wait()
            assert released < 3.0  # at once, not after the 15 s dead-man
            k1 = st.journal.rows("commands", "intersection = 'K1'")
            assert k1[-1]["reason"] == "onboard unit offline"
            assert "offline" in [n["what"] for n in st.journal.rows("notes")]

    asyncio.run(main())


def test_run_refuses_a_broker_that_lets_anyone_in(tmp_path: Path) -> None:
    """A TLS broker with credentials configured in the daemon, but allow_anonymous true."""
    tls = make_tls_files(tmp_path / "tls")
    with MosquittoBroker(tmp_path / "open", tls=tls) as open_broker:
        (tmp_path / "pw").write_text("whatever\n", encoding="utf-8")
        shutil.copy(DEMO_DIR / "routes.geojson", tmp_path / "routes.geojson")
        cfg = tmp_path / "deployment.toml"
        shadow = 'adapter = "log"\noptions = { path = "shadow.jsonl" }'
        cfg.write_text(
            (DEMO_DIR / "deployment.toml")
            .read_text(encoding="utf-8")
            .replace('adapter = "simlink"', shadow)
            + f'\n[[gps]]\nkind = "mqtt"\nhost = "{HOST}"\nport = {open_broker.tls_port}\n'
            f'username = "preemption-daemon"\npassword_file = "pw"\ntls_ca = "{tls.ca}"\n',
            encoding="utf-8",
        )
        dep = load_config(cfg, adapters=set(registry.installed()))
        with pytest.raises(InsecureInput, match="lets in clients without credentials"):
            asyncio.run(probe_fleet_brokers(dep))
        exe = Path(sys.executable).parent / "preemption"
        done = subprocess.run(
            [str(exe), "run", "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "lets in clients without credentials" in done.stderr
