"""`preemption onboard`: the forwarder in a fire engine, as a process.

One TOML file (docs/onboard.md, config/onboard.example.toml) says which
vehicle this is, where its GNSS receiver is (a serial port or gpsd), where the
emergency status comes from (a fixed value, a GPIO value file or a serial
port's modem line) and how to reach the central broker. It is validated like
the deployment file (preemption/kernel/config.py): an unusable file raises
:class:`~preemption.kernel.config.ConfigError` naming the file, the key and the
problem, which the CLI turns into exit status 2. Paths are relative to the
file.

:func:`run` wires the receiver and the emergency input into
:class:`gps.onboard.OnboardForwarder` on the real clock until ``stop`` is set
(SIGTERM or SIGINT in :func:`main`); then the receiver is closed, what is
buffered gets :data:`SHUTDOWN_DRAIN_S` to reach the broker, and the forwarder
publishes ``offline`` on its link topic before it disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from gps.gpsd import GpsdSource
from gps.mqtt import DEFAULT_PREFIX, BrokerConfigError
from gps.onboard import OnboardForwarder, OnboardSettings
from gps.position_json import StatusSource
from gps.serial import SerialNmeaSource
from gps.status_input import GpioInput, SerialLineInput
from preemption.kernel.clock import Clock, RealClock
from preemption.kernel.config import ConfigError, Id, format_loc, read_toml, validation_problems
from preemption.kernel.model import Fix

__all__ = [
    "SHUTDOWN_DRAIN_S",
    "LoadedOnboard",
    "OnboardConfig",
    "describe",
    "load_onboard",
    "main",
    "notes",
    "run",
]

log = logging.getLogger(__name__)

SHUTDOWN_DRAIN_S: Final = 5.0  # on stop: time for buffered positions to reach the broker
_SHUTDOWN_GRACE_S: Final = 5.0  # beyond the drain: a connect attempt or the goodbye in flight

Port = Annotated[int, Field(ge=1, le=65535)]
PollSeconds = Annotated[float, Field(gt=0, le=10)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VehicleSection(_Strict):
    id: Id


class SerialReceiver(_Strict):
    """An NMEA receiver on a serial port (USB adapters: use a /dev/serial/by-id/ path)."""

    kind: Literal["serial"]
    device: str = Field(min_length=1)
    baudrate: int = Field(default=9600, gt=0, le=4_000_000)


class GpsdReceiver(_Strict):
    """A receiver behind gpsd; ``device`` picks one when gpsd serves several."""

    kind: Literal["gpsd"]
    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 2947
    device: str | None = None


Receiver = Annotated[SerialReceiver | GpsdReceiver, Field(discriminator="kind")]

Signal = Literal["blue_lights", "dispatch"]  # what a contact input stands for


class ConfigEmergency(_Strict):
    """A fixed status: ``true`` for a unit that is always on a run when it moves (tests)."""

    source: Literal["config"]
    value: bool


class GpioEmergency(_Strict):
    source: Literal["gpio"]
    path: Path
    active_low: bool = False
    poll_s: PollSeconds = 0.1
    signal: Signal = "blue_lights"


class SerialLineEmergency(_Strict):
    source: Literal["serial-line"]
    device: str = Field(min_length=1)
    line: Literal["cts", "dsr", "ri", "cd"]
    active_low: bool = False
    poll_s: PollSeconds = 0.1
    signal: Signal = "blue_lights"


Emergency = Annotated[
    ConfigEmergency | GpioEmergency | SerialLineEmergency, Field(discriminator="source")
]


class BrokerSection(_Strict):
    host: str = Field(min_length=1)
    port: Port | None = None  # default 8883 with TLS, 1883 without
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: bool = False  # TLS with the system's CAs; implied by tls_ca
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    topic_prefix: str = DEFAULT_PREFIX
    buffer_size: int = Field(default=600, ge=1, le=1_000_000)
    keepalive: int = Field(default=30, ge=5, le=3600)

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.uses_tls else 1883


class OnboardConfig(_Strict):
    vehicle: VehicleSection
    receiver: Receiver
    emergency: Emergency
    broker: BrokerSection


# The tag of a tagged union is not a key the user wrote: (section, tag field).
_TAGGED: Final = {"receiver": "kind", "emergency": "source"}
_TAGS: Final = {
    "receiver": ("serial", "gpsd"),
    "emergency": ("config", "gpio", "serial-line"),
}


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    """validation_problems, with the union tags taken out of the key paths."""
    problems = []
    for (_, msg), err in zip(validation_problems(exc), exc.errors(), strict=True):
        loc = list(err["loc"])
        section = loc[0] if loc else None
        if isinstance(section, str) and section in _TAGGED:
            field, known = _TAGGED[section], ", ".join(_TAGS[section])
            if err["type"] == "union_tag_invalid":
                tag = (err.get("ctx") or {}).get("tag")
                loc, msg = [section, field], f"unknown {section} {field} {tag!r}; known: {known}"
            elif err["type"] == "union_tag_not_found":
                loc, msg = [section, field], f"required key is missing; one of: {known}"
            elif len(loc) > 1 and loc[1] in _TAGS[section]:
                del loc[1]
        problems.append((format_loc(loc), msg))
    return problems


@dataclass(frozen=True, slots=True)
class LoadedOnboard:
    """A valid configuration: the file's sections (paths absolute) and the forwarder's settings."""

    path: Path
    config: OnboardConfig
    settings: OnboardSettings
    password_from: str | None  # "password_file <path>", "the configuration file" or None


def load_onboard(path: Path | str) -> LoadedOnboard:
    """Read and validate an onboard configuration; ConfigError naming key and problem."""
    path = Path(path)
    data = read_toml(path)
    try:
        cfg = OnboardConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _problems(exc)) from None
    cfg = _absolute(cfg, path.parent)
    problems = _cross_check(cfg)
    password, password_from = None, None
    b = cfg.broker
    if b.password is not None:
        password, password_from = b.password.get_secret_value(), "the configuration file"
    elif b.password_file is not None:
        password = _read_password(b.password_file, problems)
        password_from = f"password_file {b.password_file}"
    for key in ("tls_ca", "tls_cert", "tls_key"):
        file = getattr(b, key)
        if file is not None and not file.is_file():
            problems.append((f"broker.{key}", f"{file} does not exist or is not a file"))
    if problems:
        raise ConfigError(path, problems)
    try:
        settings = OnboardSettings(
            host=b.host,
            port=b.effective_port,
            vehicle=cfg.vehicle.id,
            username=b.username,
            password=password,
            tls=b.tls,
            tls_ca=b.tls_ca,
            tls_cert=b.tls_cert,
            tls_key=b.tls_key,
            topic_prefix=b.topic_prefix,
            buffer_size=b.buffer_size,
            keepalive_s=b.keepalive,
            status_source=_status_source(cfg),
            drain_timeout_s=SHUTDOWN_DRAIN_S,
        )
        settings.broker().tls_context()  # reads the PEM files: a bad one is a config error
    except BrokerConfigError as exc:
        raise ConfigError(path, [("broker", str(exc))]) from None
    return LoadedOnboard(path, cfg, settings, password_from)


def _absolute(cfg: OnboardConfig, base: Path) -> OnboardConfig:
    b = cfg.broker
    files = {
        key: base / value
        for key in ("password_file", "tls_ca", "tls_cert", "tls_key")
        if (value := getattr(b, key)) is not None
    }
    update: dict[str, Any] = {"broker": b.model_copy(update=files)}
    if isinstance(cfg.emergency, GpioEmergency):
        update["emergency"] = cfg.emergency.model_copy(update={"path": base / cfg.emergency.path})
    return cfg.model_copy(update=update)


def _cross_check(cfg: OnboardConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    b = cfg.broker
    if b.password is not None and b.password_file is not None:
        problems.append(
            ("broker.password", "give password or password_file, not both (prefer the file)")
        )
    if (b.password is not None or b.password_file is not None) and b.username is None:
        problems.append(("broker.username", "required key is missing (a password needs a user)"))
    if b.tls_key is not None and b.tls_cert is None:
        problems.append(("broker.tls_cert", "required with tls_key: the client certificate"))
    prefix = b.topic_prefix
    if (
        not prefix
        or prefix != prefix.strip("/")
        or any(c in prefix for c in "+#")
        or "//" in prefix
    ):
        problems.append(
            ("broker.topic_prefix", f"{prefix!r}: no '+', '#', empty levels or outer '/'")
        )
    em, rx = cfg.emergency, cfg.receiver
    device = rx.device if isinstance(rx, SerialReceiver) else None
    if isinstance(em, SerialLineEmergency) and em.device == device:
        problems.append(
            (
                "emergency.device",
                f"{em.device} is the receiver's port, which the GPS source locks; wire "
                "the contact to a second serial port",
            )
        )
    return problems


def _read_password(file: Path, problems: list[tuple[str, str]]) -> str | None:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(("broker.password_file", f"{file} does not exist"))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        problems.append(("broker.password_file", f"cannot read {file}: {reason}"))
        return None
    password = text.rstrip("\r\n")
    if not password:
        problems.append(("broker.password_file", f"{file} is empty"))
        return None
    return password


def _status_source(cfg: OnboardConfig) -> StatusSource:
    em = cfg.emergency
    return StatusSource.CONFIG if isinstance(em, ConfigEmergency) else StatusSource(em.signal)


def describe(loaded: LoadedOnboard) -> list[str]:
    """What the configuration sets up, in words, without the password."""
    cfg, s = loaded.config, loaded.settings
    rx, em = cfg.receiver, cfg.emergency
    if isinstance(rx, SerialReceiver):
        receiver = f"NMEA on serial port {rx.device} at {rx.baudrate} baud"
    else:
        receiver = f"gpsd at {rx.host}:{rx.port}" + (f", device {rx.device}" if rx.device else "")
    if isinstance(em, ConfigEmergency):
        emergency = f"fixed to {'ON' if em.value else 'off'} by the configuration"
    else:
        where = (
            f"GPIO value file {em.path}"
            if isinstance(em, GpioEmergency)
            else f"{em.line.upper()} line of serial port {em.device}"
        )
        level = "0" if em.active_low else "1"
        emergency = f"{em.signal} from the {where} ({level} = on, polled every {em.poll_s} s)"
    broker = s.broker()
    if s.username is None:
        user = "anonymous"
    elif loaded.password_from is None:
        user = f"user {s.username!r} without password"
    else:
        user = f"user {s.username!r}, password from {loaded.password_from}"
    if broker.tls_cert is not None:
        user += f", client certificate {broker.tls_cert}"
    return [
        f"vehicle {s.vehicle}",
        f"receiver: {receiver}",
        f"emergency status: {emergency}",
        f"broker: {broker.address}, {user}",
        f"topics: {s.topic_prefix}/{s.vehicle}/{{position,status,link}}; "
        f"buffer {s.buffer_size} positions",
    ]


def notes(loaded: LoadedOnboard) -> list[str]:
    """What works but deserves a look: absent devices (the engine may be off), exposed secrets."""
    cfg = loaded.config
    paths: list[tuple[str, str]] = []
    if isinstance(cfg.receiver, SerialReceiver):
        paths.append(("receiver.device", cfg.receiver.device))
    if isinstance(cfg.emergency, GpioEmergency):
        paths.append(("emergency.path", str(cfg.emergency.path)))
    elif isinstance(cfg.emergency, SerialLineEmergency):
        paths.append(("emergency.device", cfg.emergency.device))
    out = [
        f"{key}: {where} is not present now; the forwarder waits for it and logs the outage"
        for key, where in paths
        if "://" not in where and not Path(where).exists()
    ]
    b = cfg.broker
    if loaded.password_from is not None and not b.uses_tls:
        out.append(
            "broker: the password goes over plain TCP, readable on the way: set tls_ca "
            "(or tls = true)"
        )
    if b.password is not None:
        out.append("broker.password: in the configuration file; prefer password_file (mode 0600)")
    if b.password_file is not None and b.password_file.stat().st_mode & 0o077:
        out.append(f"broker.password_file: {b.password_file} is readable by others: chmod 600 it")
    return out


# -- running -------------------------------------------------------------------------


def receiver_source(config: OnboardConfig, clock: Clock) -> SerialNmeaSource | GpsdSource:
    rx, vehicle = config.receiver, config.vehicle.id
    if isinstance(rx, SerialReceiver):
        # Receivers that send GGA without RMC never say the date: today's lets them be used.
        today = dt.datetime.fromtimestamp(clock.now(), dt.UTC).date()
        return SerialNmeaSource(rx.device, vehicle, clock, baudrate=rx.baudrate, date_hint=today)
    return GpsdSource(vehicle, clock, host=rx.host, port=rx.port, device=rx.device)


def emergency_input(config: OnboardConfig, clock: Clock) -> AsyncIterable[bool] | bool:
    em = config.emergency
    if isinstance(em, ConfigEmergency):
        return em.value
    if isinstance(em, GpioEmergency):
        return GpioInput(em.path, clock, active_low=em.active_low, poll_s=em.poll_s)
    return SerialLineInput(em.device, em.line, clock, active_low=em.active_low, poll_s=em.poll_s)


async def until_stopped(fixes: AsyncIterable[Fix], stop: asyncio.Event) -> AsyncIterator[Fix]:
    """``fixes`` until ``stop`` is set; then the source is cancelled, which closes its port."""
    it = aiter(fixes)
    stopping = asyncio.ensure_future(stop.wait())
    pending: asyncio.Future[Fix] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(_next(it))
            await asyncio.wait({pending, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                return
            try:
                fix = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield fix
    finally:
        stopping.cancel()
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


async def _next(it: AsyncIterator[Fix]) -> Fix:
    return await anext(it)


async def run(
    loaded: LoadedOnboard, stop: asyncio.Event, clock: Clock | None = None
) -> OnboardForwarder:
    """Forward until ``stop`` is set, then shut down cleanly; returns the forwarder (counters).

    Cancelling the task that runs this cuts the drain short (the forwarder
    still says offline if it is connected).
    """
    clock = clock or RealClock()
    forwarder = OnboardForwarder(loaded.settings, clock)
    source = receiver_source(loaded.config, clock)
    status = emergency_input(loaded.config, clock)
    vehicle = loaded.settings.vehicle
    log.info("onboard %s: starting: %s", vehicle, "; ".join(describe(loaded)[1:]))
    for note in notes(loaded):
        log.warning("onboard %s: %s", vehicle, note)
    task = asyncio.create_task(forwarder.run(until_stopped(source, stop), status))
    try:
        await _first(task, stop.wait())
        if not task.done():
            log.info(
                "onboard %s: stopping: closing the receiver, %d positions still buffered",
                vehicle,
                forwarder.buffered,
            )
            limit = loaded.settings.drain_timeout_s + _SHUTDOWN_GRACE_S
            try:
                async with asyncio.timeout(limit):
                    await asyncio.shield(task)
            except TimeoutError:
                log.warning(
                    "onboard %s: the link did not finish within %.0f s; stopping anyway",
                    vehicle,
                    limit,
                )
        if not stop.is_set():
            task.result()  # raises what stopped the forwarder
            # The receiver's sources reconnect forever: ending by itself is a bug.
            raise RuntimeError(f"onboard {vehicle}: the receiver's source ended by itself")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    log.info(
        "onboard %s: stopped: %d positions sent, dropped %s",
        vehicle,
        forwarder.sent,
        dict(forwarder.dropped) or "none",
    )
    return forwarder


async def _first(task: asyncio.Task[None], other: Awaitable[Any]) -> None:
    waiter = asyncio.ensure_future(other)
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


async def _serve(loaded: LoadedOnboard) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: stopping at once", signum.name)
            main_task.cancel()
            return
        log.info("%s: stopping (a second one stops at once)", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await run(loaded, stop)
    except asyncio.CancelledError:
        return 0 if stop.is_set() else 1
    except Exception:
        log.exception("onboard %s: failed", loaded.settings.vehicle)
        return 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


def main(path: Path, *, check: bool = False) -> int:
    """The `preemption onboard` command; ConfigError (exit 2) for an unusable file."""
    loaded = load_onboard(path)
    if check:
        print(f"{path}: ok")
        for line in describe(loaded):
            print(f"  {line}")
        for note in notes(loaded):
            print(f"note: {note}")
        return 0
    return asyncio.run(_serve(loaded))
