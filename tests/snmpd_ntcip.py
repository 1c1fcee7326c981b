"""net-snmp's snmpd as an NTCIP 1202 peer that is not our own agent.

snmpd (Debian package snmpd) runs on a free port of 127.0.0.1 with a config of
its own (``-C``: no system config), v2c communities and v3 users, and hands the
NTCIP asc subtree to :mod:`tests.snmpd_pass_persist` over its ``pass_persist``
protocol: writable ``preemptControlState``, a ``preemptState`` that moves with
time, ``maxPreempts`` and a writable ``unitBackupTime`` whose backup timer drops
an unrefreshed call. So the NTCIP adapter is tested against a real SNMP agent
that we did not write, not only against sim/ntcip_agent.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .realparts import LOOPBACK, Managed, RealProcess, free_port

SNMPD = shutil.which("snmpd") or ("/usr/sbin/snmpd" if Path("/usr/sbin/snmpd").exists() else None)
PEER = Path(__file__).with_name("snmpd_pass_persist.py")
ASC = "1.3.6.1.4.1.1206.4.2.1"


def require_snmpd() -> str:
    if SNMPD is None:
        pytest.skip("snmpd is not installed: apt-get install snmpd (Debian package)")
    return SNMPD


@dataclass(frozen=True)
class V3User:
    name: str
    auth: str  # net-snmp's names: SHA, SHA-256
    auth_key: str
    priv: str  # AES, AES256, AES256C
    priv_key: str


class Snmpd(Managed):
    """One snmpd with the NTCIP pass_persist peer; ``backup_s`` is its unitBackupTime."""

    def __init__(
        self,
        workdir: Path,
        *,
        community: str = "private",
        users: tuple[V3User, ...] = (),
        preempts: int = 4,
        backup_s: int = 30,
        entry_s: float = 1.0,
        exit_s: float = 1.0,
    ) -> None:
        binary = require_snmpd()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "persist").mkdir(exist_ok=True)
        self.host = LOOPBACK
        self.port = free_port()
        self.community = community
        self.state_file = workdir / "peer-state.json"
        lines = [
            f"agentAddress udp:{LOOPBACK}:{self.port}",
            f"rwcommunity {community} {LOOPBACK}",
            f"rocommunity public-read {LOOPBACK}",
        ]
        for u in users:
            lines += [
                f'createUser {u.name} {u.auth} "{u.auth_key}" {u.priv} "{u.priv_key}"',
                f"rwuser {u.name} priv",
            ]
        args = f"--preempts {preempts} --backup {backup_s} --entry {entry_s} --exit {exit_s}"
        lines.append(f"pass_persist .{ASC} {sys.executable} {PEER} {args}")
        conf = workdir / "snmpd.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process = RealProcess(
            [binary, "-f", "-Lo", "-C", "-c", str(conf), "-p", str(workdir / "snmpd.pid")],
            "snmpd",
            workdir / "snmpd.log",
            env={**os.environ, "SNMP_PERSISTENT_DIR": str(workdir / "persist")},
        )

    def start(self) -> None:
        self._process.start()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if self.get(f"{ASC}.6.1.0") is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"snmpd did not answer on {LOOPBACK}:{self.port}: {self._process.output()}"
        )

    def stop(self) -> None:
        self._process.stop()

    @property
    def pid(self) -> int:
        """snmpd's process id (to stop it with SIGSTOP: a controller that answers nothing)."""
        if self._process.pid is None:
            raise RuntimeError("snmpd is not running")
        return self._process.pid

    def get(self, oid: str) -> int | None:
        """One value through net-snmp's own snmpget (None when nothing answers)."""
        done = subprocess.run(
            ["snmpget", "-v2c", "-c", self.community, "-Oqv", "-t", "0.5", "-r", "0",
             f"{LOOPBACK}:{self.port}", oid],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        text = done.stdout.strip()
        return int(text) if done.returncode == 0 and text.lstrip("-").isdigit() else None

    def control(self, n: int) -> int | None:
        return self.get(f"{ASC}.6.3.1.2.{n}")

    def state(self, n: int) -> int | None:
        return self.get(f"{ASC}.6.2.1.16.{n}")
