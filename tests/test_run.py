"""`preemption run`: the live daemon from a deployment file, in shadow mode (log adapter)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from gps.position_json import PositionMessage, StatusMessage, StatusSource
from preemption.kernel.clock import RealClock
from preemption.kernel.config import load_config
from preemption.kernel.model import Fix, FixQuality
from preemption.service.wiring import build, sources
from routes.geojson import load_routes
from signal_adapters import registry
from sim.nmea_out import epoch_sentences

from .broker import running_broker
from .helpers import DEMO_DIR, VEHICLE, fix_at

T0 = 1_764_320_400.0


def deployment(tmp_path: Path, gps: str) -> Path:
    shutil.copy(DEMO_DIR / "routes.geojson", tmp_path / "routes.geojson")
    options = 'options = { path = "shadow.jsonl" }'
    controllers = "".join(
        f'[[controllers]]\nid = "C-K{i}"\nadapter = "log"\n{options}\n\n' for i in range(1, 8)
    )
    path = tmp_path / "deployment.toml"
    path.write_text(
        f"""[deployment]
name = "shadow test"
epsg = 25832

[routes]
files = ["routes.geojson"]

[planner]
dead_man_s = 15.0

[[vehicles]]
id = "{VEHICLE}"
priority = "fire"

{controllers}{gps}""",
        encoding="utf-8",
    )
    return path


def track(tmp_path: Path) -> Path:
    """The engine along R1 at 12.5 m/s, one RMC+GGA epoch a second."""
    routes = load_routes(DEMO_DIR / "routes.geojson", epsg=25832)
    lines = []
    for k in range(int(2450 / 12.5)):
        p = routes["R1"].at(12.5 * k)
        lon, lat = routes.projector.to_wgs84(p.x, p.y)
        lines += epoch_sentences(T0 + k, lat, lon, 12.5, p.heading_deg)
    path = tmp_path / "r1.nmea"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="ascii")
    return path


def shadow(tmp_path: Path) -> list[dict[str, object]]:
    # Relative option paths are the adapter's business: the log lands in the cwd.
    lines = (tmp_path / "shadow.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_shadow_run_replays_a_log_and_writes_every_request_and_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = track(tmp_path)
    gps = f'[[gps]]\nkind = "nmea-file"\nvehicle = "{VEHICLE}"\npath = "{log.name}"\nrate = 40.0\n'
    cfg = deployment(tmp_path, gps)
    exe = Path(sys.executable).parent / "preemption"
    out = subprocess.run(
        [str(exe), "run", "--config", str(cfg), "--emergency", VEHICLE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The 196 s log at 40 x real time: about 5 s.
    assert out.returncode == 0, out.stderr
    records = shadow(tmp_path)
    by_inter: dict[str, list[str]] = {}
    for r in records:
        by_inter.setdefault(str(r["intersection"]), []).append(str(r["kind"]))
    assert set(by_inter) == {"K1", "K2", "K3", "K4", "K5"}
    for kinds in by_inter.values():
        assert kinds[0] == "request"
        assert kinds[-1] == "cancel"
    assert json.loads(out.stdout.splitlines()[-1])["counters"]["request_sent"] == 5


def test_run_refuses_an_unknown_emergency_vehicle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the log adapters open their file before the check
    cfg = deployment(tmp_path, "")
    exe = Path(sys.executable).parent / "preemption"
    out = subprocess.run(
        [str(exe), "run", "--config", str(cfg), "--emergency", "NOPE"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "NOPE" in out.stderr


def test_run_reports_an_unreadable_broker_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    gps = '[[gps]]\nkind = "mqtt"\nhost = "127.0.0.1"\npassword_file = "missing.txt"\n'
    cfg = deployment(tmp_path, gps)
    exe = Path(sys.executable).parent / "preemption"
    out = subprocess.run(
        [str(exe), "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "missing.txt" in out.stderr
    assert "[[gps]]" in out.stderr


@pytest.mark.integration
def test_fleet_feed_status_and_positions_drive_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with running_broker(tmp_path / "broker") as broker:
        cfg = deployment(
            tmp_path,
            f'[[gps]]\nkind = "mqtt"\nhost = "{broker.host}"\nport = {broker.port}\ntls = false\n',
        )
        dep = load_config(cfg, adapters=set(registry.installed()))
        routes = load_routes(DEMO_DIR / "routes.geojson", epsg=25832)

        async def main() -> None:
            clock = RealClock()
            daemon = build(dep, clock)
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(sources(dep, daemon, clock), stop))
            topic = f"preemption/v1/vehicles/{VEHICLE}"
            async with aiomqtt.Client(broker.host, broker.port) as client:
                await asyncio.sleep(1.0)  # the daemon subscribes
                status = StatusMessage(VEHICLE, clock.now(), True, StatusSource.BLUE_LIGHTS)
                await client.publish(f"{topic}/status", status.encode(), qos=1, retain=True)
                for k in range(12):
                    f = fix_at(routes, "R1", 150.0 + 12.5 * k, clock.now(), speed=12.5)
                    fix = Fix(
                        VEHICLE,
                        f.time,
                        f.lat,
                        f.lon,
                        12.5,
                        f.course,
                        0.9,
                        FixQuality.GPS,
                        "onboard",
                    )
                    msg = PositionMessage.from_fix(fix, seq=k)
                    await client.publish(f"{topic}/position", msg.encode(), qos=1)
                    await asyncio.sleep(0.1)
                for _ in range(100):
                    if daemon.planner.active:
                        break
                    await asyncio.sleep(0.05)
                assert daemon.planner.active == 1  # K1 requested
                off = StatusMessage(VEHICLE, clock.now(), False, StatusSource.BLUE_LIGHTS)
                await client.publish(f"{topic}/status", off.encode(), qos=1, retain=True)
                for _ in range(100):
                    if not daemon.planner.active:
                        break
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 15)

        asyncio.run(main())
    kinds = [(r["intersection"], r["kind"]) for r in shadow(tmp_path)]
    assert kinds[0] == ("K1", "request")
    assert kinds[-1] == ("K1", "cancel")
    assert "emergency status off" in str(shadow(tmp_path)[-1]["reason"])
