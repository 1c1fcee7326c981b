"""A local Mosquitto on the shipped configuration: for benchmarks and tests.

config/mosquitto/ ships what a city's broker runs: mosquitto.conf (TLS only, no
anonymous clients, client certificates), the ACL and make-pki, which makes the
CA, the certificates, the passwords and the password file. This module runs
make-pki the way an administrator does and renders the shipped mosquitto.conf
with only the listener (a free port on 127.0.0.1), the paths and the user
replaced, so that what a benchmark or a test measures is what ships. It needs a
source checkout (config/ is not in the wheel) and the Debian packages mosquitto
and openssl.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from preemption.kernel.errors import SimulationError

__all__ = [
    "SHIPPED_CONFIG_DIR",
    "Account",
    "FleetPki",
    "LocalBroker",
    "free_port",
    "make_fleet_pki",
    "render_shipped_config",
    "run_make_pki",
]

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "mosquitto"
HOST = "127.0.0.1"


def _need(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SimulationError(f"{program} is not installed: apt-get install {package} (Debian)")
    return found


@dataclass(frozen=True, slots=True)
class Account:
    """One broker account made by make-pki: user name, password, client certificate."""

    name: str
    kind: str  # vehicle, operator or service
    password: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class FleetPki:
    """What config/mosquitto/make-pki made in ``directory``."""

    directory: Path
    output: str  # what the script printed

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def passwords(self) -> Path:
        return self.directory / "passwords"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    def account(self, name: str) -> Account:
        for kind in ("vehicle", "operator", "service"):
            base = self.directory / kind / name
            if base.with_suffix(".password").is_file():
                return Account(
                    name=name,
                    kind=kind,
                    password=base.with_suffix(".password").read_text().strip(),
                    cert=base.with_suffix(".crt"),
                    key=base.with_suffix(".key"),
                )
        raise KeyError(f"make-pki made no account {name!r} in {self.directory}")


def run_make_pki(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The shipped script as an administrator runs it (through /bin/sh: POSIX sh)."""
    _need("openssl", "openssl")
    _need("mosquitto_passwd", "mosquitto")
    if not (SHIPPED_CONFIG_DIR / "make-pki").is_file():
        raise SimulationError(
            f"{SHIPPED_CONFIG_DIR / 'make-pki'} is missing: the broker configuration comes with "
            "a source checkout, not with an installed wheel"
        )
    return subprocess.run(
        ["/bin/sh", str(SHIPPED_CONFIG_DIR / "make-pki"), str(directory), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_fleet_pki(
    directory: Path,
    *,
    vehicles: tuple[str, ...] = (),
    operators: tuple[str, ...] = (),
    hosts: tuple[str, ...] = (),
) -> FleetPki:
    """CA, server certificate, accounts, password file and ACL by config/mosquitto/make-pki."""
    args: list[str] = []
    for flag, names in (("--host", hosts), ("--vehicle", vehicles), ("--operator", operators)):
        for name in names:
            args += [flag, name]
    done = run_make_pki(directory, *args)
    if done.returncode != 0:
        raise SimulationError(
            f"config/mosquitto/make-pki {directory} {' '.join(args)} failed "
            f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()[-1000:]}"
        )
    return FleetPki(directory, done.stdout)


def render_shipped_config(pki: FleetPki, workdir: Path, port: int) -> str:
    """config/mosquitto/mosquitto.conf with only the listener, the paths and the user replaced.

    Each replaced line must be in the shipped file exactly once: a change there
    that this rendering does not know fails here, rather than silently testing
    something else.
    """
    text = (SHIPPED_CONFIG_DIR / "mosquitto.conf").read_text()
    replacements = {
        # As root, mosquitto would switch to the user 'mosquitto', who cannot read the
        # temp dir; as anyone else the option is ignored.
        "\nuser mosquitto\n": f"\nuser {getpass.getuser()}\n",
        "\nlistener 8883\n": f"\nlistener {port} {HOST}\n",
        "\npersistence_location /var/lib/mosquitto/\n": f"\npersistence_location {workdir}/\n",
    }
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise AssertionError(
                f"{SHIPPED_CONFIG_DIR / 'mosquitto.conf'} no longer has the line {old.strip()!r} "
                "exactly once: update render_shipped_config in sim/mosquitto.py"
            )
        text = text.replace(old, new)
    paths = "/etc/mosquitto/preemption/"
    lines = text.splitlines(keepends=True)
    settings = [k for k, line in enumerate(lines) if paths in line and not line.startswith("#")]
    if len(settings) != 5:  # password_file, acl_file, cafile, certfile, keyfile
        raise AssertionError(f"the shipped mosquitto.conf no longer keeps its 5 files in {paths}")
    for k in settings:
        lines[k] = lines[k].replace(paths, f"{pki.directory}/")
    return "".join(lines)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class LocalBroker:
    """The shipped mosquitto.conf on ``pki``, on a free port of 127.0.0.1, while in use.

    ``with LocalBroker(workdir, pki) as broker:`` starts it and waits until it
    listens; leaving the block stops it (SIGTERM, then SIGKILL after 5 s). Its log
    is ``workdir/mosquitto.log``.
    """

    def __init__(self, workdir: Path, pki: FleetPki) -> None:
        self.binary = _need("mosquitto", "mosquitto")
        self.workdir = workdir
        self.pki = pki
        self.host = HOST
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(render_shipped_config(self.pki, self.workdir, self.port))
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(0.2)
                s.connect((HOST, self.port))
                return self
            time.sleep(0.05)
        self.__exit__()
        raise SimulationError(
            f"mosquitto did not listen on {HOST}:{self.port} within 10 s; its log "
            f"{self.log_path}: {self.log_path.read_text(errors='replace')[-800:]}"
        )

    def __exit__(self, *exc: object) -> None:
        proc, self._process = self._process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
