"""The NTCIP 1202 adapter against a real SNMP agent we did not write: net-snmp's snmpd.

(tests/test_ntcip_agent.py tests our own virtual controller; tests further down
drive the adapter against it too.) Everything on 127.0.0.1 and free ports.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from preemption.kernel.clock import RealClock
from preemption.kernel.model import Command, CommandKind, PreemptStatus
from signal_adapters.base import (
    AdapterConfigError,
    AdapterContext,
    ControllerUnreachable,
    RequestRejected,
)
from signal_adapters.ntcip import NtcipAdapter, read_credentials

from .helpers import DEMO_DIR
from .realparts import free_port
from .snmpd_ntcip import Snmpd, V3User

pytestmark = pytest.mark.integration

EXE = Path(sys.executable).parent / "preemption"
USER = V3User("preemption", "SHA-256", "auth-secret-1", "AES", "priv-secret-1")
USER256 = V3User("preemption256", "SHA-256", "auth-secret-2", "AES256", "priv-secret-2")


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[Snmpd]:
    with Snmpd(tmp_path / "snmpd", users=(USER, USER256), backup_s=4) as agent:
        yield agent


def credentials(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "snmp.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def v2c(tmp_path: Path, community: str = "private") -> Path:
    return credentials(tmp_path, f'version = "2c"\ncommunity = "{community}"\n')


def v3(tmp_path: Path, user: V3User, priv: str = "AES-128", auth_key: str | None = None) -> Path:
    return credentials(
        tmp_path,
        f'version = "3"\nuser = "{user.name}"\nauth_protocol = "SHA-256"\n'
        f'auth_key = "{auth_key or user.auth_key}"\npriv_protocol = "{priv}"\n'
        f'priv_key = "{user.priv_key}"\n',
    )


def adapter(host: str, port: int, creds: Path, **options: object) -> NtcipAdapter:
    opts = {"host": host, "port": port, "credentials_file": str(creds), "timeout_s": 0.3}
    return NtcipAdapter("C-K1", {**opts, **options}, AdapterContext(RealClock()))


def cmd(
    kind: CommandKind, rid: str = "b1:K1/2/1", approach: str = "2", hold: float = 60.0
) -> Command:
    return Command(kind, rid, "FW-1", "K1", "C-K1", approach, time.time(), 20.0, hold, "fire")


async def until(what: str, condition: object, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("version", ["2c", "3-aes128", "3-aes256"])
def test_call_confirm_and_release_at_snmpd(tmp_path: Path, snmpd: Snmpd, version: str) -> None:
    creds = {
        "2c": lambda: v2c(tmp_path),
        "3-aes128": lambda: v3(tmp_path, USER, "AES-128"),
        "3-aes256": lambda: v3(tmp_path, USER256, "AES-256"),
    }[version]()

    async def main() -> None:
        async with adapter(snmpd.host, snmpd.port, creds) as ad:
            assert (ad.max_preempts, ad.backup_time_s) == (4, 4)
            first = await ad.request(cmd(CommandKind.REQUEST))
            assert first.status is PreemptStatus.ENTERING  # entryStarted
            assert first.extra["preempt"] == "2"
            assert snmpd.control(2) == 1

            async def dwell() -> bool:
                return (await ad.state("K1")).status is PreemptStatus.ACTIVE

            await until("dwell", dwell)
            st = await ad.state("K1")
            assert st.request_id == "b1:K1/2/1"
            assert 0.0 <= float(st.extra["confirm_latency_s"]) < 0.5  # entryStarted at once
            assert 0.9 < float(st.extra["dwell_after_s"]) < 3.0  # the peer's 1 s entry
            gone = await ad.cancel(cmd(CommandKind.CANCEL))
            assert gone.status is PreemptStatus.EXITING
            assert snmpd.control(2) == 0

            async def ended() -> bool:
                return (await ad.state("K1")).status is PreemptStatus.NOT_ACTIVE

            await until("not active", ended)

    asyncio.run(main())


def test_a_held_call_is_rewritten_within_the_backup_time(tmp_path: Path, snmpd: Snmpd) -> None:
    """snmpd's peer drops a call not rewritten for 4 s; the adapter holds it for 10 s."""

    async def main() -> None:
        async with adapter(snmpd.host, snmpd.port, v2c(tmp_path)) as ad:
            assert ad.refresh_s is not None
            assert ad.refresh_s < 4 / 2
            await ad.request(cmd(CommandKind.REQUEST))
            await asyncio.sleep(10.0)
            assert snmpd.control(2) == 1
            assert (await ad.state("K1")).status is PreemptStatus.ACTIVE

    asyncio.run(main())


def test_a_call_the_daemon_stops_renewing_lapses_at_the_backup_time(
    tmp_path: Path, snmpd: Snmpd, caplog: pytest.LogCaptureFixture
) -> None:
    """The command's own hold (duration_s) bounds the rewriting: then the backup timer ends it."""

    async def main() -> None:
        async with adapter(snmpd.host, snmpd.port, v2c(tmp_path)) as ad:
            await ad.request(cmd(CommandKind.REQUEST, hold=2.0))
            await asyncio.sleep(2.0 + 4.0 + 2.0)  # its hold, the backup time, a rewrite period
            assert snmpd.control(2) == 0
            assert (await ad.state("K1")).status is PreemptStatus.NOT_ACTIVE

    with caplog.at_level(logging.WARNING, logger="signal_adapters.ntcip"):
        asyncio.run(main())
    assert any("not renewed by the daemon" in r.getMessage() for r in caplog.records)


def test_wrong_credentials_and_values_are_typed_errors(tmp_path: Path, snmpd: Snmpd) -> None:
    async def main() -> None:
        with pytest.raises(ControllerUnreachable, match="community or v3 user"):
            await adapter(snmpd.host, snmpd.port, v2c(tmp_path, "guess")).open()
        bad_key = v3(tmp_path, USER, auth_key="not-the-key")
        with pytest.raises(AdapterConfigError, match="refused the SNMPv3 credentials"):
            await adapter(snmpd.host, snmpd.port, bad_key).open()
        async with adapter(snmpd.host, snmpd.port, v2c(tmp_path)) as ad:
            with pytest.raises(AdapterConfigError, match="maxPreempts 4"):
                await ad.request(cmd(CommandKind.REQUEST, approach="9"))
        with pytest.raises(AdapterConfigError, match="maxPreempts 4"):
            await adapter(snmpd.host, snmpd.port, v2c(tmp_path), preempts={"north": 7}).open()
        read_only = v2c(tmp_path, "public-read")
        ad = adapter(snmpd.host, snmpd.port, read_only)
        with pytest.raises(RequestRejected, match="no write access"):
            await ad.request(cmd(CommandKind.REQUEST))
        await ad.close()

    asyncio.run(main())


def test_an_unreachable_controller_is_a_typed_error_within_its_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        ad = adapter("127.0.0.1", free_port(), v2c(tmp_path), retries=1)
        started = time.monotonic()
        with pytest.raises(ControllerUnreachable, match="no SNMP answer"):
            await ad.request(cmd(CommandKind.REQUEST))
        assert time.monotonic() - started < 0.3 * 2 + 0.5
        await ad.close()

    asyncio.run(main())


def test_a_disabled_backup_timer_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> list[str]:
        with Snmpd(tmp_path / "nobackup", backup_s=0) as agent:
            async with adapter(agent.host, agent.port, v2c(tmp_path)) as ad:
                return await ad.probe()

    with caplog.at_level(logging.WARNING, logger="signal_adapters.ntcip"):
        facts = asyncio.run(main())
    assert any("unitBackupTime is 0" in f for f in facts)
    assert any("unitBackupTime is 0" in r.getMessage() for r in caplog.records)


def test_credentials_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="authPriv"):
        read_credentials(credentials(tmp_path, 'version = "3"\nuser = "x"\n'))
    with pytest.raises(ValueError, match="community"):
        read_credentials(credentials(tmp_path, 'version = "2c"\n'))
    with pytest.raises(ValueError, match="not a TOML file"):
        read_credentials(credentials(tmp_path, "version = "))
    with pytest.raises(ValueError, match="cannot read"):
        read_credentials(tmp_path / "missing.toml")
    with pytest.raises(AdapterConfigError, match="credentials_file"):
        adapter("127.0.0.1", 161, tmp_path / "missing.toml")


# -- commissioning at the cabinet: preemption signal test ---------------------------------


def _commissioning_deployment(tmp_path: Path, agent: Snmpd, creds: Path) -> Path:
    shutil.copy(DEMO_DIR / "routes.geojson", tmp_path / "routes.geojson")
    ntcip = (
        'adapter = "ntcip"\noptions = { host = "127.0.0.1", port = '
        f'{agent.port}, credentials_file = "{creds}", timeout_s = 0.3 }}'
    )
    text = (DEMO_DIR / "deployment.toml").read_text(encoding="utf-8")
    path = tmp_path / "deployment.toml"
    path.write_text(text.replace('adapter = "simlink"', ntcip, 1), encoding="utf-8")
    return path


def _signal_test(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), "signal", "test", "--config", str(cfg), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_commissioning_asks_confirms_holds_and_releases(tmp_path: Path, snmpd: Snmpd) -> None:
    cfg = _commissioning_deployment(tmp_path, snmpd, v3(tmp_path, USER))
    done = _signal_test(cfg, "--intersection", "K1", "--yes", "--hold", "1", "--timeout", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "unitBackupTime 4 s" in out
    for seen in ("entryStarted", "dwell", "exitStarted", "notActive"):
        assert f"preemptState.1 = {seen}" in out
    assert out.strip().endswith("ok: confirmed, dwell, released")
    assert snmpd.control(1) == 0


def test_commissioning_fails_loudly_on_a_refusal_and_on_bad_input(
    tmp_path: Path, snmpd: Snmpd
) -> None:
    refused = _commissioning_deployment(tmp_path, snmpd, v2c(tmp_path, "public-read"))
    done = _signal_test(refused, "--intersection", "K1", "--yes", "--timeout", "3")
    assert done.returncode == 1
    assert "no write access" in done.stderr
    unknown = _signal_test(refused, "--intersection", "K99", "--yes")
    assert unknown.returncode == 2
    assert "no intersection 'K99'" in unknown.stderr
    asked = subprocess.run(
        [str(EXE), "signal", "test", "--config", str(refused), "--intersection", "K1"],
        input="n\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert asked.returncode == 1
    assert "not asked" in asked.stderr
    assert snmpd.control(1) == 0


def test_check_config_probe_reads_each_controller_and_warns_of_a_disabled_backup_timer(
    tmp_path: Path,
) -> None:
    with Snmpd(tmp_path / "nobackup", backup_s=0) as agent:
        cfg = _commissioning_deployment(tmp_path, agent, v2c(tmp_path))
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(text.replace('adapter = "simlink"', 'adapter = "log"'), encoding="utf-8")
        done = subprocess.run(
            [str(EXE), "check-config", str(cfg), "--probe"],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "maxPreempts 4, unitBackupTime 0 s" in done.stdout
        assert "warning: controller 'C-K1'" in done.stdout
        assert "backup timer is disabled" in done.stdout
        assert snmpd_control_untouched(agent)
    gone = subprocess.run(
        [str(EXE), "check-config", str(cfg), "--probe"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert gone.returncode == 1
    assert "no SNMP answer" in gone.stdout


def snmpd_control_untouched(agent: Snmpd) -> bool:
    """A probe reads; it never calls a preempt."""
    return all(agent.control(n) == 0 for n in range(1, 5))
