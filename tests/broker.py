"""A real Mosquitto for the integration tests: loopback only, free port, throwaway secrets.

:class:`MosquittoBroker` writes a config into a temp directory and runs
``/usr/sbin/mosquitto`` on it: a plain listener on ``127.0.0.1:<free port>``,
optionally a TLS listener (certificates from :func:`make_tls_files`, made with
the openssl CLI) and a password file (made with ``mosquitto_passwd -b``). It
keeps its ports across :meth:`MosquittoBroker.stop` and
:meth:`MosquittoBroker.start`, so a test can take the broker away and bring it
back mid-stream; with ``persistence`` the broker keeps retained messages and
persistent sessions over such a restart (it saves its database on SIGTERM).

:meth:`MosquittoBroker.shipped` runs the production configuration instead,
config/mosquitto/mosquitto.conf as shipped, with only its listener (a free
port of 127.0.0.1), its file paths and its user replaced
(:func:`render_shipped_config`), on certificates, passwords and the ACL made
by the shipped config/mosquitto/make-pki (:func:`make_fleet_pki`): what ships
is what the tests run.

Nothing here touches an address other than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from sim.mosquitto import (
    SHIPPED_CONFIG_DIR,
    Account,
    FleetPki,
    render_shipped_config,
)
from sim.mosquitto import (
    make_fleet_pki as _make_fleet_pki,
)
from sim.mosquitto import (
    run_make_pki as _run_make_pki,
)

from .realparts import LOOPBACK, Managed, RealProcess, free_port

__all__ = [
    "HOST",
    "SHIPPED_CONFIG_DIR",
    "Account",
    "FleetPki",
    "MosquittoBroker",
    "TlsFiles",
    "eventually",
    "free_port",
    "in_time",
    "make_fleet_pki",
    "make_password_file",
    "make_tls_files",
    "render_shipped_config",
    "require_mosquitto",
    "require_openssl",
    "require_passwd",
    "run_make_pki",
    "running_broker",
]

HOST = LOOPBACK
MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")

T = TypeVar("T")


def require_mosquitto() -> str:
    """The mosquitto binary, or skip the test saying how to get it."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed: apt-get install mosquitto (Debian package)")
    return MOSQUITTO


def require_passwd() -> str:
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto): no auth tests")
    return MOSQUITTO_PASSWD


def require_openssl() -> str:
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (Debian package openssl): no TLS tests")
    return OPENSSL


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a second CA that signed nothing here: a client trusting it must fail


def make_tls_files(directory: Path, client_cn: str = "test-client") -> TlsFiles:
    """Make the CA and certificates with the openssl CLI (EC keys: fast), valid for 2 days."""
    openssl = require_openssl()
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        done = subprocess.run(
            [openssl, *args], cwd=directory, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"openssl {' '.join(args[:2])} failed in {directory} "
                f"(exit {done.returncode}): {done.stderr.strip()[-500:]}"
            )

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        run(
            "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "2", "-subj", f"/CN=preemption test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    leaves = {
        "server": ("/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth\n"),
        "client": (f"/CN={client_cn}", "extendedKeyUsage=clientAuth\n"),
    }  # fmt: skip
    for name, (subject, extensions) in leaves.items():
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n" + extensions
        )
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
    )


def make_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file with ``users`` (name -> password), hashed by mosquitto_passwd."""
    passwd = require_passwd()
    path.write_text("")
    for user, password in users.items():
        done = subprocess.run(
            [passwd, "-b", str(path), user, password], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"mosquitto_passwd could not add user {user!r} to {path} "
                f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
            )
    return path


def run_make_pki(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """config/mosquitto/make-pki (sim/mosquitto.py), or skip naming the missing package."""
    require_openssl()
    require_passwd()
    return _run_make_pki(directory, *args)


def make_fleet_pki(
    directory: Path,
    *,
    vehicles: tuple[str, ...] = (),
    operators: tuple[str, ...] = (),
    hosts: tuple[str, ...] = (),
) -> FleetPki:
    require_openssl()
    require_passwd()
    return _make_fleet_pki(directory, vehicles=vehicles, operators=operators, hosts=hosts)


class MosquittoBroker(Managed):
    """One mosquitto process on 127.0.0.1 that can be stopped and started on the same ports."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_client_cert: bool = False,
        persistence: bool = True,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        tls_port = free_port() if tls is not None else None
        self.tls = tls
        lines = [
            # Running as root, mosquitto would switch to the user 'mosquitto', who cannot
            # read this temp dir; as anyone else the option is ignored.
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "autosave_interval 0",  # save on exit only
        ]
        if users is not None:
            password_file = make_password_file(workdir / "passwords", users)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines += ["allow_anonymous true"]
        lines += ["", f"listener {port} {HOST}"]
        if tls is not None:
            lines += [
                "",
                f"listener {tls_port} {HOST}",
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                f"require_certificate {'true' if require_client_cert else 'false'}",
            ]
        self._setup(workdir, port, tls_port, "\n".join(lines) + "\n")

    @classmethod
    def shipped(cls, workdir: Path, pki: FleetPki) -> MosquittoBroker:
        """The shipped config/mosquitto/mosquitto.conf on ``pki``: one TLS listener.

        Its port is both :attr:`port` and :attr:`tls_port`; there is no plain listener.
        """
        broker = cls.__new__(cls)
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        broker.tls = None
        broker._setup(workdir, port, port, render_shipped_config(pki, workdir, port))
        return broker

    def _setup(self, workdir: Path, port: int, tls_port: int | None, config: str) -> None:
        self.binary = require_mosquitto()
        self.workdir = workdir
        self.host = HOST
        self.port = port
        self.tls_port = tls_port
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(config)
        # Tests stop and start it from worker threads (asyncio.to_thread): no death signal.
        self._process = RealProcess(
            [self.binary, "-c", str(self.config_path)],
            "mosquitto",
            self.log_path,
            die_with_parent=False,
        )

    @property
    def running(self) -> bool:
        return self._process.alive

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> None:
        """Start mosquitto and wait until every listener accepts connections."""
        if self.running:
            return
        self._process.start()
        deadline = time.monotonic() + timeout
        ports = sorted({p for p in (self.port, self.tls_port) if p is not None})
        while ports:
            if not self._process.alive:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode} at start "
                    f"(config {self.config_path}); its log:\n{self.log_text()[-2000:]}"
                )
            try:
                with socket.create_connection((HOST, ports[0]), timeout=1.0):
                    ports.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mosquitto did not accept connections on {HOST}:{ports[0]} within "
                        f"{timeout} s; its log:\n{self.log_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its database and exits), SIGKILL if it takes too long."""
        self._process.stop(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_broker(
    workdir: Path,
    *,
    users: Mapping[str, str] | None = None,
    tls: TlsFiles | None = None,
    require_client_cert: bool = False,
) -> Iterator[MosquittoBroker]:
    """A started broker, stopped (terminate, kill after a timeout) on the way out."""
    broker = MosquittoBroker(workdir, users=users, tls=tls, require_client_cert=require_client_cert)
    with broker:
        yield broker


async def eventually(
    condition: Callable[[], bool],
    what: str,
    within_s: float = 10.0,
    poll: float = 0.02,
    diagnostics: Callable[[], str] | None = None,
) -> None:
    """Wait in real time until ``condition()`` holds; fail naming ``what`` after ``within_s``.

    Generous timeouts and polling instead of fixed sleeps: the tests run on loaded
    machines, and a condition that holds early ends the wait early.
    """
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            extra = f"\n{diagnostics()}" if diagnostics is not None else ""
            pytest.fail(f"timed out after {within_s} s waiting for {what}{extra}")
        await asyncio.sleep(poll)


async def in_time(awaitable: Awaitable[T], what: str, within_s: float = 10.0) -> T:
    try:
        async with asyncio.timeout(within_s):
            return await awaitable
    except TimeoutError:
        pytest.fail(f"timed out after {within_s} s waiting for {what}")
