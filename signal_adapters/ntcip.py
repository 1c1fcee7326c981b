"""NTCIP 1202 over SNMP: pre-emption at an actuated signal controller (``adapter = "ntcip"``).

NTCIP 1202 is the public standard for actuated signal controllers; its
pre-emption objects live under the asc node 1.3.6.1.4.1.1206.4.2.1:

===========================  ===============================  =========================
object                       OID                              use here
===========================  ===============================  =========================
``maxPreempts``              ``...6.1.0``                     read at connect: the preempt
                                                              numbers configured must exist
``unitBackupTime``           ``...3.3.0``                     read at connect: the call is
                                                              rewritten well within it
``preemptControlState.<n>``  ``...6.3.1.2.<n>`` (0..1, RW)    1 calls preempt n, 0 releases
``preemptState.<n>``         ``...6.2.1.16.<n>`` (RO)         read back: other(1),
                                                              notActive(2),
                                                              notActiveWithCall(3),
                                                              entryStarted(4),
                                                              trackService(5), dwell(6),
                                                              linkActive(7),
                                                              exitStarted(8),
                                                              maxPresence(9)
===========================  ===============================  =========================

**The backup timer.** A cabinet drops a call that is not rewritten within its
``unitBackupTime``. This adapter rewrites every held call every ``refresh_s``
(by default a third of the backup time, at most 10 s) for as long as the
daemon's own hold of it lasts (the command's ``duration_s``), and no longer: a
daemon that dies, or stops renewing, leaves no call behind once the backup
time has passed. A controller whose backup time is 0 (disabled) is warned
about loudly at connect and by ``preemption check-config --probe`` and
``preemption signal test``: then nothing but the daemon ends a call.

**Approach to preempt.** A signal's ``approach`` in the route file is the
preempt number, or a name mapped by the option ``preempts = { north = 3 }``.

**Credentials** never stand in the deployment file: ``credentials_file`` names
a TOML file (mode 0600, readable by the daemon) with either
``version = "2c"`` and ``community``, or ``version = "3"``, ``user``,
``auth_protocol`` (SHA or SHA-256), ``auth_key``, ``priv_protocol`` (AES-128,
AES-256, or AES-256-C for the Cisco/Reeder key localisation) and ``priv_key``
(authPriv: nothing weaker is accepted for v3).

One SNMP engine per event loop is shared by every NTCIP controller of the
process (pysnmp 7, asyncio). Every call runs under ``timeout_s`` x
(``retries`` + 1); no answer is a ControllerUnreachable, a refused SET a
RequestRejected naming the SNMP error, wrong v3 credentials an
AdapterConfigError: typed errors, never a crash and never a stall of other
controllers (the daemon gives each controller its own worker).
"""

from __future__ import annotations

import asyncio
import logging
import math
import stat
import tomllib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pysnmp.hlapi.v3arch.asyncio import (
    USM_AUTH_HMAC96_SHA,
    USM_AUTH_HMAC192_SHA256,
    USM_PRIV_CFB128_AES,
    USM_PRIV_CFB256_AES,
    USM_PRIV_CFB256_AES_BLUMENTHAL,
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
    set_cmd,
)
from pysnmp.proto import errind
from pysnmp.proto.rfc1902 import Integer32

from preemption.kernel.config import validation_problems
from preemption.kernel.model import Command, PreemptStatus, SignalState
from signal_adapters.base import (
    AdapterBase,
    AdapterConfigError,
    AdapterContext,
    AdapterError,
    ControllerUnreachable,
    RequestRejected,
)

__all__ = [
    "MAX_PREEMPTS",
    "PREEMPT_CONTROL_STATE",
    "PREEMPT_STATE",
    "PREEMPT_STATES",
    "UNIT_BACKUP_TIME",
    "NtcipAdapter",
    "NtcipOptions",
    "SnmpCredentials",
    "read_credentials",
]

log = logging.getLogger(__name__)

ASC: Final = "1.3.6.1.4.1.1206.4.2.1"
MAX_PREEMPTS: Final = f"{ASC}.6.1.0"
UNIT_BACKUP_TIME: Final = f"{ASC}.3.3.0"
PREEMPT_CONTROL_STATE: Final = f"{ASC}.6.3.1.2"  # .<n>
PREEMPT_STATE: Final = f"{ASC}.6.2.1.16"  # .<n>

# preemptState values -> what the daemon understands.
PREEMPT_STATES: Final[Mapping[int, tuple[str, PreemptStatus]]] = {
    1: ("other", PreemptStatus.UNKNOWN),
    2: ("notActive", PreemptStatus.NOT_ACTIVE),
    3: ("notActiveWithCall", PreemptStatus.REQUESTED),
    4: ("entryStarted", PreemptStatus.ENTERING),
    5: ("trackService", PreemptStatus.ENTERING),
    6: ("dwell", PreemptStatus.ACTIVE),
    # Another preempt linked to this one is being served: not this approach's dwell.
    7: ("linkActive", PreemptStatus.ENTERING),
    8: ("exitStarted", PreemptStatus.EXITING),
    9: ("maxPresence", PreemptStatus.MAX_PRESENCE),
}
CONFIRMED: Final = frozenset({4, 5, 6})  # entryStarted, trackService, dwell
DWELL: Final = 6

# SNMP error-status names (RFC 3416), for messages a traffic engineer can act on.
_ERROR_STATUS: Final = {
    1: "tooBig", 2: "noSuchName", 3: "badValue", 4: "readOnly", 5: "genErr",
    6: "noAccess", 7: "wrongType", 8: "wrongLength", 9: "wrongEncoding",
    10: "wrongValue", 11: "noCreation", 12: "inconsistentValue",
    13: "resourceUnavailable", 14: "commitFailed", 15: "undoFailed",
    16: "authorizationError", 17: "notWritable", 18: "inconsistentName",
}  # fmt: skip
_AUTH: Final = {"SHA": USM_AUTH_HMAC96_SHA, "SHA-256": USM_AUTH_HMAC192_SHA256}
# AES-256 has two key localisations in the wild: Blumenthal's draft (net-snmp's "AES256",
# most controllers) and Reeder's (Cisco, net-snmp's "AES256C"). With SHA-256 they agree.
_PRIV: Final = {
    "AES-128": USM_PRIV_CFB128_AES,
    "AES-256": USM_PRIV_CFB256_AES_BLUMENTHAL,
    "AES-256-C": USM_PRIV_CFB256_AES,
}
MAX_REFRESH_S: Final = 10.0
# What an agent says to v3 credentials it does not accept: a configuration problem.
_CREDENTIALS_REFUSED: Final = (
    errind.UnknownUserName,
    errind.WrongDigest,
    errind.DecryptionError,
    errind.AuthenticationFailure,
    errind.AuthenticationError,
    errind.UnsupportedAuthProtocol,
    errind.UnsupportedPrivProtocol,
    errind.UnsupportedSecurityLevel,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SnmpCredentials(_Strict):
    """The contents of a credentials file (TOML)."""

    version: Literal["2c", "3"]
    community: str | None = Field(default=None, min_length=1)
    user: str | None = Field(default=None, min_length=1)
    auth_protocol: Literal["SHA", "SHA-256"] | None = None
    auth_key: str | None = Field(default=None, min_length=8, repr=False)
    priv_protocol: Literal["AES-128", "AES-256", "AES-256-C"] | None = None
    priv_key: str | None = Field(default=None, min_length=8, repr=False)

    @model_validator(mode="after")
    def _complete(self) -> SnmpCredentials:
        if self.version == "2c":
            if self.community is None:
                raise ValueError("version 2c needs community (the controller's write community)")
            extra = [k for k in ("user", "auth_key", "priv_key") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} belong to version 3, not 2c")
            return self
        missing = [
            k
            for k in ("user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")
            if getattr(self, k) is None
        ]
        if missing:
            raise ValueError(
                f"version 3 needs authPriv: set {', '.join(missing)} (no weaker security level "
                "is accepted for a controller)"
            )
        if self.community is not None:
            raise ValueError("community belongs to version 2c, not 3")
        return self

    def auth_data(self) -> CommunityData | UsmUserData:
        if self.version == "2c":
            return CommunityData(self.community, mpModel=1)
        return UsmUserData(
            self.user,
            authKey=self.auth_key,
            privKey=self.priv_key,
            authProtocol=_AUTH[self.auth_protocol or "SHA-256"],
            privProtocol=_PRIV[self.priv_protocol or "AES-256"],
        )


def read_credentials(path: Path) -> SnmpCredentials:
    """The credentials in ``path``; ValueError saying what is wrong with the file."""
    try:
        info = path.stat()
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path} is not a TOML file: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "SNMP credentials file %s can be read by others (mode %o): chmod 600 it",
            path,
            stat.S_IMODE(info.st_mode),
        )
    try:
        return SnmpCredentials.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{k}: {m}" if k else m for k, m in validation_problems(exc))
        raise ValueError(f"{path}: {problems}") from None


class NtcipOptions(_Strict):
    """``[[controllers]] options`` of ``adapter = "ntcip"``."""

    host: str = Field(min_length=1)
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 161  # some controllers use 501
    # A TOML file with the community (v2c) or the v3 user and keys: never in the deployment.
    credentials_file: Path
    timeout_s: Annotated[float, Field(ge=0.05, le=10.0)] = 0.5  # one attempt
    retries: Annotated[int, Field(strict=True, ge=0, le=5)] = 1
    # approach id (as the route file names it) -> preempt number; without an entry the
    # approach id itself is the number.
    preempts: dict[str, Annotated[int, Field(strict=True, ge=1, le=255)]] = Field(
        default_factory=dict
    )
    # How often a held call is rewritten; default a third of unitBackupTime, at most 10 s.
    refresh_s: Annotated[float, Field(ge=0.5, le=60.0)] | None = None

    @field_validator("credentials_file")
    @classmethod
    def _credentials(cls, v: Path) -> Path:
        read_credentials(v)  # a local file: checked by check-config, before any request
        return v

    def preempt(self, approach: str) -> int:
        if approach in self.preempts:
            return self.preempts[approach]
        if approach.isdigit() and 1 <= int(approach) <= 255:
            return int(approach)
        raise ValueError(
            f"approach {approach!r} is not a preempt number and options.preempts has no entry "
            "for it: name the preempt, e.g. preempts = { " + f"{approach!r} = 1" + " }"
        )


@dataclass
class _Call:
    """A call this adapter holds at the controller."""

    request_id: str
    approach: str
    intersection: str
    lapse_at: float  # UTC: the daemon's hold runs out; no rewriting after this
    sent: float  # monotonic: the first SET
    confirmed_after_s: float | None = None  # first entryStarted, trackService or dwell seen
    dwell_after_s: float | None = None  # first dwell seen: the approach shows green


class _Engines:
    """One SNMP engine per event loop, shared by the adapters on it; closed with the last."""

    def __init__(self) -> None:
        self._engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def take(self) -> SnmpEngine:
        loop = asyncio.get_running_loop()
        entry = self._engines.get(loop)
        if entry is None:
            entry = self._engines[loop] = [SnmpEngine(), 0]
        entry[1] += 1
        engine: SnmpEngine = entry[0]
        return engine

    def give_back(self) -> None:
        loop = asyncio.get_running_loop()
        entry = self._engines.get(loop)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._engines[loop]
            entry[0].close_dispatcher()


_ENGINES = _Engines()


class NtcipAdapter(AdapterBase):
    Options = NtcipOptions

    def __init__(
        self, controller: str, options: Mapping[str, Any], context: AdapterContext
    ) -> None:
        super().__init__(controller, options, context)
        opts = self.options
        assert isinstance(opts, NtcipOptions)
        self.opts = opts
        self.address = f"{opts.host}:{opts.port}"
        self.max_preempts: int | None = None
        self.backup_time_s: int | None = None
        self.refresh_s: float | None = None
        self._calls: dict[int, _Call] = {}  # preempt number -> the call held there
        self._last_preempt: dict[str, int] = {}  # intersection -> preempt asked last
        self._engine: SnmpEngine | None = None
        self._target: UdpTransportTarget | None = None
        self._auth: CommunityData | UsmUserData | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_failing = False

    # -- connecting -----------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            credentials = read_credentials(self.opts.credentials_file)
        except ValueError as exc:
            raise AdapterConfigError(self.controller, f"options.credentials_file: {exc}") from None
        self._auth = credentials.auth_data()
        self._target = await UdpTransportTarget.create(
            (self.opts.host, self.opts.port), timeout=self.opts.timeout_s, retries=self.opts.retries
        )
        self._engine = _ENGINES.take()
        try:
            maximum, backup = await self._get(MAX_PREEMPTS, UNIT_BACKUP_TIME)
            self.max_preempts, self.backup_time_s = maximum, backup
            for approach, n in self.opts.preempts.items():
                if n > maximum:
                    raise AdapterConfigError(
                        self.controller,
                        f"options.preempts.{approach} = {n}, but the controller at "
                        f"{self.address} has maxPreempts {maximum}: check the preempt numbers",
                    )
            self.refresh_s = self._refresh_interval(backup)
            for warning in self.warnings():
                log.warning("%s", warning)
            log.info(
                "controller %r at %s: NTCIP 1202, maxPreempts %d, unitBackupTime %d s, calls "
                "rewritten every %.1f s",
                self.controller,
                self.address,
                maximum,
                backup,
                self.refresh_s,
            )
        except BaseException:
            self._give_back_engine()
            raise
        self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    def _refresh_interval(self, backup: int) -> float:
        chosen = self.opts.refresh_s
        if chosen is None:
            return MAX_REFRESH_S if backup <= 0 else min(MAX_REFRESH_S, max(0.5, backup / 3.0))
        if backup > 0 and chosen >= backup:
            raise AdapterConfigError(
                self.controller,
                f"options.refresh_s = {chosen:g} s is not shorter than the controller's "
                f"unitBackupTime of {backup} s: its calls would drop between two rewrites; "
                f"set refresh_s below {backup / 2:g} s or remove it",
            )
        return chosen

    def warnings(self) -> list[str]:
        """What a traffic engineer must know about this controller (after connecting)."""
        if self.backup_time_s == 0:
            return [
                f"controller {self.controller!r} at {self.address}: unitBackupTime is 0 (the "
                "backup timer is disabled): a call this daemon makes is ended only by this "
                "daemon's cancel, or by the controller's maximum presence; if the daemon dies "
                "in the middle of a pre-emption, the junction stays pre-empted until then. "
                "Set unitBackupTime in the controller (e.g. 30 s)"
            ]
        return []

    async def probe(self) -> list[str]:
        """Connect and say what the controller is (commissioning, check-config --probe)."""
        await self.open()
        facts = [
            f"controller {self.controller!r} at {self.address}: maxPreempts {self.max_preempts}, "
            f"unitBackupTime {self.backup_time_s} s, calls rewritten every {self.refresh_s:.1f} s"
        ]
        return facts + [f"warning: {w}" for w in self.warnings()]

    async def _close(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._give_back_engine()

    def _give_back_engine(self) -> None:
        if self._engine is not None:
            self._engine = None
            _ENGINES.give_back()

    # -- the calls ------------------------------------------------------------------------

    async def _request(self, cmd: Command) -> SignalState:
        n = self._preempt(cmd.approach)
        await self._set(n, 1)
        call = self._calls.get(n)
        if call is None or call.request_id != cmd.request_id:
            call = self._calls[n] = _Call(
                cmd.request_id, cmd.approach, cmd.intersection, 0.0, self.clock.monotonic()
            )
        call.lapse_at = cmd.time + cmd.duration_s
        self._last_preempt[cmd.intersection] = n
        return await self._read(cmd.intersection, n)

    async def _cancel(self, cmd: Command) -> SignalState:
        n = self._preempt(cmd.approach)
        call = self._calls.get(n)
        if call is not None and call.request_id != cmd.request_id:
            # Another request holds this preempt now: an old id's cancel must not end it.
            return await self._read(cmd.intersection, n)
        await self._set(n, 0)
        self._calls.pop(n, None)
        self._last_preempt[cmd.intersection] = n
        return await self._read(cmd.intersection, n)

    async def _state(self, intersection: str) -> SignalState:
        n = self._last_preempt.get(intersection)
        if n is None:
            held = [p for p, c in self._calls.items() if c.intersection == intersection]
            n = held[0] if held else 1
        return await self._read(intersection, n)

    async def _read(self, intersection: str, n: int) -> SignalState:
        (value,) = await self._get(f"{PREEMPT_STATE}.{n}")
        name, status = PREEMPT_STATES.get(value, (f"value {value}", PreemptStatus.UNKNOWN))
        call = self._calls.get(n)
        extra = {"preempt": str(n), "preemptState": name}
        if self.backup_time_s is not None:
            extra["unitBackupTime_s"] = str(self.backup_time_s)
        if call is not None:
            if call.confirmed_after_s is None and value in CONFIRMED:
                call.confirmed_after_s = self.clock.monotonic() - call.sent
                log.info(
                    "controller %r confirmed %s (preempt %d, %s) %.3f s after the call",
                    self.controller,
                    call.request_id,
                    n,
                    name,
                    call.confirmed_after_s,
                )
            if call.dwell_after_s is None and value == DWELL:
                call.dwell_after_s = self.clock.monotonic() - call.sent
            if call.confirmed_after_s is not None:
                extra["confirm_latency_s"] = f"{call.confirmed_after_s:.3f}"
            if call.dwell_after_s is not None:
                extra["dwell_after_s"] = f"{call.dwell_after_s:.3f}"
        return SignalState(
            intersection,
            self.controller,
            status,
            self.clock.now(),
            approach=call.approach if call is not None else None,
            request_id=call.request_id if call is not None else None,
            detail=f"preemptState.{n} = {name}",
            extra=extra,
        )

    def _preempt(self, approach: str) -> int:
        try:
            n = self.opts.preempt(approach)
        except ValueError as exc:
            raise AdapterConfigError(self.controller, str(exc)) from None
        if self.max_preempts is not None and n > self.max_preempts:
            raise AdapterConfigError(
                self.controller,
                f"approach {approach!r} is preempt {n}, but the controller at {self.address} "
                f"has maxPreempts {self.max_preempts}: check the route file's approach",
            )
        return n

    async def _refresh(self) -> None:
        """Rewrite every held call well within the backup time, while the daemon holds it."""
        assert self.refresh_s is not None
        while True:
            await self.clock.sleep(self.refresh_s)
            now = self.clock.now()
            for n, call in list(self._calls.items()):
                if now >= call.lapse_at:
                    log.warning(
                        "controller %r: %s (preempt %d) not renewed by the daemon within its "
                        "hold; no longer rewritten, the controller's backup timer ends it",
                        self.controller,
                        call.request_id,
                        n,
                    )
                    del self._calls[n]
                    continue
                try:
                    await self._set(n, 1)
                except AdapterError as exc:
                    if not self._refresh_failing:
                        log.warning("controller %r: rewriting preempt %d failed: %s",
                                    self.controller, n, exc)  # fmt: skip
                    self._refresh_failing = True
                else:
                    self._refresh_failing = False

    # -- SNMP -----------------------------------------------------------------------------

    async def _set(self, n: int, value: int) -> None:
        oid = f"{PREEMPT_CONTROL_STATE}.{n}"
        indication, status, index, _binds = await set_cmd(
            *self._session(),
            ContextData(),
            ObjectType(ObjectIdentity(oid), Integer32(value)),
            lookupMib=False,
        )
        self._check(f"SET preemptControlState.{n} = {value}", indication, status, index)

    async def _get(self, *oids: str) -> list[int]:
        indication, status, index, binds = await get_cmd(
            *self._session(),
            ContextData(),
            *(ObjectType(ObjectIdentity(oid)) for oid in oids),
            lookupMib=False,
        )
        what = "GET " + ", ".join(oids)
        self._check(what, indication, status, index)
        out = []
        for oid, (_name, value) in zip(oids, binds, strict=True):
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise AdapterConfigError(
                    self.controller,
                    f"{what}: the controller at {self.address} has no {oid} "
                    f"({type(value).__name__}): is it an NTCIP 1202 controller, and is the "
                    "preempt number configured?",
                ) from None
            if not math.isfinite(number):  # pragma: no cover - ints are finite
                raise AdapterError(self.controller, f"{what}: {value!r}")
            out.append(number)
        return out

    def _session(self) -> tuple[SnmpEngine, CommunityData | UsmUserData, UdpTransportTarget]:
        if self._engine is None or self._auth is None or self._target is None:
            raise AdapterError(self.controller, "the SNMP session is not open (a bug: open first)")
        return self._engine, self._auth, self._target

    def _check(self, what: str, indication: object, status: object, index: object) -> None:
        if indication:
            text = str(indication)
            if isinstance(indication, errind.EncryptionError):
                raise AdapterConfigError(
                    self.controller,
                    f"{what}: SNMPv3 privacy needs the Python package cryptography, which is "
                    "not installed: pip install cryptography (it is a dependency of this package)",
                )
            if isinstance(indication, _CREDENTIALS_REFUSED):
                raise AdapterConfigError(
                    self.controller,
                    f"{what}: the controller at {self.address} refused the SNMPv3 "
                    f"credentials ({text}): check user, protocols and keys in "
                    f"{self.opts.credentials_file}",
                )
            raise ControllerUnreachable(
                self.controller,
                f"{what}: no SNMP answer from {self.address} within {self.opts.timeout_s:g} s x "
                f"{self.opts.retries + 1} ({text}): check that the controller is on, the address "
                "and port (some controllers listen on 501), the community or v3 user, and the "
                "network",
            )
        code = int(status) if status is not None else 0  # type: ignore[call-overload]
        if code:
            name = _ERROR_STATUS.get(code, f"error {code}")
            raise RequestRejected(
                self.controller,
                f"{what}: the controller at {self.address} answered {name} (index {index}): "
                + _remedy(name),
            )


def _remedy(name: str) -> str:
    if name in ("noAccess", "notWritable", "readOnly", "authorizationError"):
        return "the community or v3 user has no write access to the pre-emption objects"
    if name in ("noSuchName", "noCreation"):
        return "the preempt number is not configured in the controller"
    if name in ("wrongValue", "badValue", "inconsistentValue"):
        return "the controller refuses this pre-emption now (check its preempt configuration)"
    return "see the controller's log"
