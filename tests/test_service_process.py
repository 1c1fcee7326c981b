"""`preemption run` as a process: the service manager's protocol, signals, kill -9 and restart.

Each test starts the real command in a subprocess with a deployment in a temp
directory; controllers are shadow-mode log adapters (the JSON lines are what the
controllers would have been asked), GPS comes from NMEA replays or from a gpsd
address where nothing listens (a source that never ends). Nothing here touches an
address other than 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from routes.geojson import load_routes
from sim.nmea_out import epoch_sentences

from .helpers import DEMO_DIR, ROOT, VEHICLE
from .realparts import free_port

EXE = Path(sys.executable).parent / "preemption"
SPEED = 12.5
START_M = 150.0  # where the engine's run starts in the kill tests: K1 (400 m) is due at once


def deployment(tmp: Path, gps: str, planner: str = "") -> Path:
    shutil.copy(DEMO_DIR / "routes.geojson", tmp / "routes.geojson")
    controllers = "".join(
        f'[[controllers]]\nid = "C-K{i}"\nadapter = "log"\n'
        'options = { path = "shadow.jsonl" }\n\n'
        for i in range(1, 8)
    )
    path = tmp / "deployment.toml"
    path.write_text(
        f"""[deployment]
name = "process test"
epsg = 25832

[routes]
files = ["routes.geojson"]

[planner]
dead_man_s = 15.0
{planner}
[service]
journal = "journal.sqlite"
shutdown_timeout_s = 5.0

[[vehicles]]
id = "{VEHICLE}"
priority = "fire"

{controllers}{gps}""",
        encoding="utf-8",
    )
    return path


def never_ending_source() -> str:
    """A gpsd that is not there: the source retries for ever and the daemon keeps running."""
    return (
        f'[[gps]]\nkind = "gpsd"\nvehicle = "{VEHICLE}"\nhost = "127.0.0.1"\nport = {free_port()}\n'
    )


def track(tmp: Path, name: str, start_m: float, end_m: float, t0: float) -> Path:
    """The engine along R1 from ``start_m`` to ``end_m`` at 12.5 m/s, one epoch a second."""
    routes = load_routes(DEMO_DIR / "routes.geojson", epsg=25832)
    lines = []
    k = 0
    while start_m + SPEED * k <= end_m:
        p = routes["R1"].at(start_m + SPEED * k)
        lon, lat = routes.projector.to_wgs84(p.x, p.y)
        lines += epoch_sentences(t0 + k, lat, lon, SPEED, p.heading_deg)
        k += 1
    path = tmp / name
    path.write_text("\r\n".join(lines) + "\r\n", encoding="ascii")
    return path


def replay(log: Path, rate: float = 1.0) -> str:
    return (
        f'[[gps]]\nkind = "nmea-file"\nvehicle = "{VEHICLE}"\npath = "{log.name}"\nrate = {rate}\n'
    )


def start(cfg: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EXE), "run", "--config", str(cfg), *extra],
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def shadow(tmp: Path) -> list[dict[str, object]]:
    path = tmp / "shadow.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def wait_for(what: str, predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20.0)
    yield sock, path
    sock.close()


def test_the_service_manager_hears_ready_watchdog_and_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    cfg = deployment(tmp_path, never_ending_source())
    proc = start(cfg, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    try:
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        pings = 0
        t0 = time.monotonic()
        while pings < 3:
            if sock.recv(4096).decode() == "WATCHDOG=1":
                pings += 1
        assert time.monotonic() - t0 < 5.0  # every half second or so, not once
        proc.send_signal(signal.SIGTERM)
        rest: list[str] = []
        while "STOPPING=1" not in rest:
            rest.append(sock.recv(4096).decode())
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["stopped"] is True


def test_sigterm_takes_every_request_back_and_exits_0(tmp_path: Path) -> None:
    t0 = time.time()
    log = track(tmp_path, "r1.nmea", 0.0, 2400.0, t0)
    cfg = deployment(tmp_path, replay(log, rate=4.0) + never_ending_source())
    proc = start(cfg, "--emergency", VEHICLE)
    try:
        wait_for("a request", lambda: any(r["kind"] == "request" for r in shadow(tmp_path)))
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    records = shadow(tmp_path)
    opened = {r["request_id"] for r in records if r["kind"] == "request"}
    cancelled = {r["request_id"] for r in records if r["kind"] == "cancel"}
    assert opened
    assert opened == cancelled
    assert "daemon stopping" in {r["reason"] for r in records if r["kind"] == "cancel"}
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM requests WHERE closed IS NULL").fetchone()[0] == 0
        assert db.execute("SELECT clean FROM boots").fetchall() == [(1,)]


def _killed_in_a_preemption(tmp: Path) -> tuple[str, float]:
    """Run the daemon until K1 is requested, then kill -9 it: (request id, kill time)."""
    t0 = time.time()
    log = track(tmp, "first.nmea", START_M, 2400.0, t0)  # K1's stop line is at 400 m
    cfg = deployment(tmp, replay(log) + never_ending_source())
    proc = start(cfg, "--emergency", VEHICLE)
    try:
        wait_for("K1 requested", lambda: any(r["kind"] == "request" for r in shadow(tmp)))
        proc.kill()  # SIGKILL: no shutdown, nothing taken back
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = time.time()
    (req,) = [r for r in shadow(tmp) if r["kind"] == "request"]
    assert not [r for r in shadow(tmp) if r["kind"] == "cancel"]
    return str(req["request_id"]), killed


def test_after_kill_9_the_next_start_takes_the_request_back(tmp_path: Path) -> None:
    rid, killed = _killed_in_a_preemption(tmp_path)
    # Restarted without the engine: nothing hears it again.
    cfg = deployment(tmp_path, never_ending_source(), planner="recovery_grace_s = 3.0\n")
    proc = start(cfg)
    try:
        wait_for(
            "the old request cancelled",
            lambda: any(r["kind"] == "cancel" and r["request_id"] == rid for r in shadow(tmp_path)),
        )
        cancelled = time.time()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert cancelled - killed < 3.0 + 10.0  # the grace, plus starting the process
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        closed, reason = db.execute(
            "SELECT closed, close_reason FROM requests WHERE request_id = ?", (rid,)
        ).fetchone()
        assert closed is not None
        assert "not heard on its run" in reason
        boots = db.execute("SELECT clean FROM boots ORDER BY started").fetchall()
        assert boots == [(None,), (1,)]  # the killed one never ended cleanly


def test_after_kill_9_a_request_whose_engine_is_still_on_its_run_is_re_asserted(
    tmp_path: Path,
) -> None:
    rid, killed = _killed_in_a_preemption(tmp_path)
    # The engine drives on; the restarted daemon hears it from where it is now.
    travelled = START_M + SPEED * (time.time() - killed) + 30.0
    log = track(tmp_path, "second.nmea", travelled, 2400.0, time.time())
    cfg = deployment(tmp_path, replay(log, rate=4.0) + never_ending_source())
    proc = start(cfg, "--emergency", VEHICLE)
    try:
        wait_for(
            "K1 passed",
            lambda: any(r["kind"] == "cancel" and r["request_id"] == rid for r in shadow(tmp_path)),
        )
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    k1 = [r for r in shadow(tmp_path) if r["intersection"] == "K1"]
    assert [r["kind"] for r in k1] == ["request", "update", "cancel"]
    assert {r["request_id"] for r in k1} == {rid}
    assert "re-asserted after restart" in str(k1[1]["reason"])
    assert k1[2]["reason"] == "passed the stop line"


def test_the_systemd_unit_is_valid() -> None:
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = (ROOT / "config/systemd/preemption.service").read_text(encoding="utf-8")
    assert "Type=notify" in unit
    assert "WatchdogSec=" in unit
    assert "Restart=always" in unit
    local = unit.replace("/opt/preemption/bin/preemption", str(EXE))
    path = Path("/tmp") / f"preemption-test-{os.getpid()}.service"
    path.write_text(local, encoding="utf-8")
    try:
        done = subprocess.run(
            [verify, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        path.unlink()
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
