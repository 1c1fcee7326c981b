"""Real external parts for the integration tests, started and stopped reliably.

* :class:`SocatPty`: two connected pseudo-terminals (``socat``), a stand-in for
  a receiver on a serial cable. :meth:`SocatPty.unplug` pulls the cable
  (socat killed, the device node gone), :meth:`SocatPty.start` plugs it back
  in on the same paths.
* :class:`Gpsfake`: gpsd fed from a receiver log by ``gpsfake``, listening on a
  free port of 127.0.0.1.
* :func:`free_port`, :func:`wait_until` (and :func:`wait_for` on the event loop),
  :func:`require_binary`.

Every process runs in its own process group and gets SIGTERM when the process
that started it dies (``PR_SET_PDEATHSIG``), so nothing outlives a test run,
even a killed one. Start parts from the main thread: the death signal follows
the thread that forked. ``stop()`` sends SIGTERM to the whole group, then
SIGKILL after a timeout; use the parts as context managers or in fixtures.

Nothing here touches an address other than 127.0.0.1 (gpsd also listens on
::1, the IPv6 loopback, on the same port; it has no option to stop that).
A missing binary fails the test with a message to run ``make test``, which
installs the Debian packages; nothing is skipped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

__all__ = [
    "LOOPBACK",
    "Gpsfake",
    "Managed",
    "PtyWriter",
    "RealProcess",
    "SocatPty",
    "free_port",
    "open_fds",
    "require_binary",
    "wait_for",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
SYSTEM_PACKAGES = "gpsd gpsd-clients socat mosquitto snmp"
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def require_binary(name: str) -> str:
    """The path of an installed program, or a failed test telling how to install it."""
    path = shutil.which(name) or shutil.which(name, path=_SBIN_PATH)
    if path is None:
        pytest.fail(
            f"{name} is not installed, and this integration test starts it for real. "
            f"Run `make test` (as root it installs the Debian packages {SYSTEM_PACKAGES}), "
            f"or apt-get install the package that provides {name}.",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def open_fds(path: Path) -> list[str]:
    """This process's file descriptors open on ``path`` (a link is followed)."""
    target = os.path.realpath(path)
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                out.append(fd)
        except OSError:
            continue
    return out


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    process: RealProcess | None = None,
    poll_s: float = 0.02,
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` (and a dead process's output)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process is not None and not process.alive:
            pytest.fail(
                f"{process.name} exited with status {process.returncode} while waiting for "
                f"{what}; its output:\n{process.output()}",
                pytrace=False,
            )
        if time.monotonic() > deadline:
            detail = f"; output of {process.name}:\n{process.output()}" if process else ""
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}{detail}", pytrace=False)
        time.sleep(poll_s)


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}", pytrace=False)
        await asyncio.sleep(0.01)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: only async-signal-safe work.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class RealProcess:
    """One external program in its own process group, its output in a file."""

    def __init__(
        self,
        argv: Sequence[str],
        name: str,
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.log_path = log_path
        self._cwd = cwd
        self._env = env
        # Off for a process started from worker threads (asyncio.to_thread): the
        # death signal would follow the thread, not the test run.
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid}); stop it first")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,  # its own group: stop() reaches its children too
                # Fork from the main thread: see the docstring.
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "(no output file)"

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (the program and what it started)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM to the group; SIGKILL to the group if it has not exited after ``timeout_s``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                proc.wait(timeout_s)
        # Children left behind by a leader that died first (gpsd under gpsfake).
        self.signal(signal.SIGKILL)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL to the group at once, as a crash or a pulled plug would."""
        proc = self._proc
        if proc is None:
            return
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        self._proc = None


class Managed:
    """A part used as a context manager: started on entry, closed on exit.

    ``close`` is ``stop`` unless a part has more to clean up.
    """

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SocatPty(Managed):
    """A receiver on a cable: two linked ptys, ``device`` for the code, ``feed`` for the test.

    ``socat -d -d pty,raw,echo=0,link=DEVICE pty,raw,echo=0,link=FEED``; bytes
    written to ``feed`` come out of ``device``.
    """

    def __init__(self, directory: Path, name: str = "gps") -> None:
        self.device = directory / f"{name}-device"
        self.feed = directory / f"{name}-feed"
        self._process = RealProcess(
            [
                require_binary("socat"),
                "-d",
                "-d",
                f"pty,raw,echo=0,link={self.device}",
                f"pty,raw,echo=0,link={self.feed}",
            ],
            "socat",
            directory / f"{name}-socat.log",
        )
        self._starts = 0

    @property
    def alive(self) -> bool:
        return self._process.alive

    def start(self, timeout_s: float = 10.0) -> None:
        """Start socat (again) and wait until both links point at live ptys."""
        self._remove_links()
        self._starts += 1
        self._process.start()
        # Each start logs one "starting data transfer loop": then both ptys are set up.
        wait_until(
            lambda: (
                self._process.output(10**6).count("starting data transfer loop") >= self._starts
                and self.device.exists()
                and self.feed.exists()
            ),
            timeout_s,
            f"socat to link {self.device} and {self.feed}",
            process=self._process,
        )

    def unplug(self) -> None:
        """Pull the cable: socat killed outright, the device node gone (as udev does)."""
        self._process.kill()
        # SIGKILL leaves the links dangling, and a freed /dev/pts/N is soon another's.
        self._remove_links()

    def stop(self) -> None:
        self._process.stop()
        self._remove_links()

    def open_writer(self) -> PtyWriter:
        return PtyWriter(self)

    def _remove_links(self) -> None:
        for link in (self.device, self.feed):
            if link.is_symlink():
                link.unlink()


class PtyWriter:
    """Writes to the feed side of a :class:`SocatPty`, non-blocking, reopening after a replug."""

    def __init__(self, pair: SocatPty) -> None:
        self.pair = pair
        self._fd: int | None = None

    async def write(self, data: bytes, timeout_s: float = 5.0) -> bool:
        """Write all of ``data``; False if the pty went away (socat gone) meanwhile.

        Waits (on the event loop, so the reader under test keeps running) while
        the pty is full.
        """
        deadline = time.monotonic() + timeout_s
        view = memoryview(data)
        while view:
            try:
                if self._fd is None:
                    self._fd = os.open(self.pair.feed, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.pair.feed} accepted no data for {timeout_s} s: "
                        "nothing reads the device side"
                    ) from None
                await asyncio.sleep(0.002)
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.ENOENT, errno.ENXIO, errno.EBADF):
                    raise
                self.close()
                return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class Gpsfake(Managed):
    """gpsd on 127.0.0.1:``port``, fed one receiver log by gpsfake (``-1``: once).

    Quirks this wraps: gpsfake looks gpsd up on PATH (``/usr/sbin`` added
    here); it is a Python script importing the module ``gps``, which this
    project's own ``gps`` package would shadow through PYTHONPATH (dropped
    here); its control socket goes to ``$TMPDIR`` (a short private directory,
    as a Unix socket path is limited to 107 bytes); once the log is used up it
    spins a CPU until ``-W`` seconds have passed and then exits with status 1
    ("Test timed out"), taking gpsd with it: ``linger_s`` is that ``-W``.
    ``-n`` makes gpsd read the pty at once rather than at the first client.
    """

    def __init__(
        self,
        log: Path,
        port: int | None = None,
        *,
        cycle_s: float = 0.01,
        linger_s: int = 4,
        workdir: Path | None = None,
    ) -> None:
        if not log.is_file():
            raise FileNotFoundError(f"receiver log {log} for gpsfake does not exist")
        gpsfake = require_binary("gpsfake")
        require_binary("gpsd")
        self.port = port if port is not None else free_port()
        self.log = log
        self._tmp = Path(tempfile.mkdtemp(prefix="gpsfake-", dir=workdir or "/tmp"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "TMPDIR"}
        env["PATH"] = f"{env.get('PATH', '')}:{_SBIN_PATH}"
        env["TMPDIR"] = str(self._tmp)
        self._process = RealProcess(
            [
                gpsfake,
                "-1",
                "-q",
                "-n",
                "-c",
                str(cycle_s),
                "-W",
                str(linger_s),
                "-P",
                str(self.port),
                str(log),
            ],
            "gpsfake",
            self._tmp / "gpsfake.log",
            cwd=self._tmp,
            env=env,
        )

    @property
    def alive(self) -> bool:
        return self._process.alive

    def output(self) -> str:
        return self._process.output()

    def start(self, timeout_s: float = 15.0) -> None:
        self._process.start()
        wait_until(
            self._listening,
            timeout_s,
            f"gpsd (under gpsfake) to listen on {LOOPBACK}:{self.port}",
            process=self._process,
            poll_s=0.05,
        )

    def stop(self) -> None:
        self._process.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True
        except OSError:
            return False
