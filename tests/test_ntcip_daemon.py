"""The daemon over NTCIP 1202 to real SNMP agents (net-snmp's snmpd with the NTCIP peer).

- a daemon killed with SIGKILL in the middle of a pre-emption leaves no call
  behind once the controller's backup time has passed;
- a controller that stops answering (its snmpd stopped with SIGSTOP) delays
  neither the requests nor the polls of another.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from preemption.kernel.clock import RealClock
from preemption.kernel.config import load_config
from preemption.service.daemon import Daemon
from preemption.service.events import Recorder
from preemption.service.wiring import build
from routes.geojson import load_routes
from signal_adapters import registry

from .helpers import DEMO_DIR, VEHICLE, fix_at
from .snmpd_ntcip import Snmpd
from .test_service_process import START_M, never_ending_source, replay, start, track, wait_for

pytestmark = pytest.mark.integration

BACKUP_S = 4


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Snmpd, Snmpd]]:
    with (
        Snmpd(tmp_path / "a", backup_s=BACKUP_S) as a,
        Snmpd(tmp_path / "b", backup_s=BACKUP_S) as b,
    ):
        yield a, b


def deployment(tmp: Path, agents: dict[str, Snmpd], gps: str = "") -> Path:
    """The demo routes; controllers in ``agents`` over NTCIP, the others in shadow mode."""
    shutil.copy(DEMO_DIR / "routes.geojson", tmp / "routes.geojson")
    creds = tmp / "snmp.toml"
    creds.write_text('version = "2c"\ncommunity = "private"\n', encoding="utf-8")
    creds.chmod(0o600)
    controllers = ""
    for i in range(1, 8):
        cid = f"C-K{i}"
        if cid in agents:
            a = agents[cid]
            options = (
                f'{{ host = "127.0.0.1", port = {a.port}, credentials_file = "{creds}", '
                "timeout_s = 0.3, retries = 0 }"
            )
            controllers += (
                f'[[controllers]]\nid = "{cid}"\nadapter = "ntcip"\noptions = {options}\n\n'
            )
        else:
            controllers += (
                f'[[controllers]]\nid = "{cid}"\nadapter = "log"\n'
                f'options = {{ path = "{tmp / "shadow.jsonl"}" }}\n\n'
            )
    path = tmp / "deployment.toml"
    path.write_text(
        f"""[deployment]
name = "ntcip test"
epsg = 25832

[routes]
files = ["routes.geojson"]

[service]
journal = "journal.sqlite"

[[vehicles]]
id = "{VEHICLE}"

{controllers}{gps}""",
        encoding="utf-8",
    )
    return path


def test_a_killed_daemons_call_lapses_at_the_backup_time(
    tmp_path: Path, two: tuple[Snmpd, Snmpd]
) -> None:
    k1, _ = two
    log = track(tmp_path, "run.nmea", START_M, 2400.0, time.time())
    cfg = deployment(tmp_path, {"C-K1": k1}, replay(log) + never_ending_source())
    proc = start(cfg, "--emergency", VEHICLE)
    try:
        wait_for("K1 called over SNMP", lambda: k1.control(1) == 1, timeout_s=30.0)
        # Held past the backup time: only the adapter's own rewriting keeps it (the
        # planner's refresh is every 20 s).
        time.sleep(BACKUP_S + 2.0)
        assert k1.control(1) == 1
        proc.kill()  # SIGKILL: no cancel
        proc.communicate(timeout=10)
        killed = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for("the controller's backup timer to drop it", lambda: k1.control(1) == 0, 15.0)
    lapsed = time.monotonic() - killed
    # At most the backup time after the last rewrite (rewrites every backup/3).
    assert lapsed <= BACKUP_S + 1.5
    assert lapsed >= BACKUP_S - BACKUP_S / 3 - 0.5


def test_a_silent_controller_delays_no_other_request_or_poll(
    tmp_path: Path, two: tuple[Snmpd, Snmpd]
) -> None:
    a, b = two
    cfg = deployment(tmp_path, {"C-K1": a, "C-K2": b})
    dep = load_config(cfg, adapters=set(registry.installed()))
    routes = load_routes(dep.routes.files, epsg=25832)
    record = Recorder(RealClock())

    async def main() -> tuple[Daemon, bool]:
        clock = RealClock()
        daemon = build(dep, clock, sink=record)
        daemon.planner.set_emergency(VEHICLE, True)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run([], stop))
        os.kill(a.pid, signal.SIGSTOP)  # K1's controller answers nothing any more
        try:
            s = START_M
            while s < 900.0 and b.control(1) != 1:
                daemon.take(fix_at(routes, "R1", s, clock.now(), speed=20.0))
                await asyncio.sleep(0.5)
                s += 10.0
            reached = b.control(1) == 1
            await asyncio.sleep(3.0)  # polls of K2 go on meanwhile
            return daemon, reached
        finally:
            os.kill(a.pid, signal.SIGCONT)
            stop.set()
            await asyncio.wait_for(task, 30)

    daemon, reached = asyncio.run(main())
    assert reached, "K2's controller was never called"
    k2_answers = [x for x in record.answers if x.intersection == "K2"]
    first = next(x for x in k2_answers if x.call == "request")
    assert first.error is None
    assert first.latency_s < 0.3  # answered at once, K1's silence notwithstanding
    polls = [x.time for x in k2_answers if x.call == "poll" and x.error is None]
    assert len(polls) >= 2
    assert max(q - p for p, q in pairwise(polls)) < 1.6
    assert daemon.counters["request_failed"] + daemon.counters["poll_failed"] >= 1  # K1
