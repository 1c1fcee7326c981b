"""A receiver behind gpsd: its JSON reports in, :class:`~preemption.kernel.model.Fix` out.

gpsd owns the device and speaks JSON on TCP (port 2947): after
``?WATCH={"enable":true,"json":true};`` it sends one report per line. A TPV
report with ``mode`` 2 or 3 and a time is a fix; SKY reports carry the
dilution of precision and the satellites used, which TPV lacks, so the last
SKY of the device (if recent) fills in ``hdop`` and ``satellites``.

gpsd sends a TPV for every sentence that adds to an epoch while it learns the
receiver's cycle, several with the same time and the same position: the first
is used (it is the earliest, and lead time is what the planner lives on) and
the rest are counted as ``duplicate_epoch``. Times go through
:class:`gps.validity.TimeOrder` as NMEA epochs do: one TPV dated far ahead of
the stream is held and dropped (``time_jump``) when the next one continues the
stream, instead of making every later TPV ``time_backwards``; a receiver that
really jumped is followed after three TPVs in its new cadence (so one line may
release several fixes). With ``max_future_s``, :class:`GpsdSource` also judges
TPV times against its clock (``from_future``).

As with NMEA, nothing a peer sends raises out of the source: everything that
does not become a fix is counted in :attr:`GpsdDecoder.dropped` under a stable
reason (:data:`DROP_REASONS`). When gpsd goes away (restarted, not yet up) the
outage is logged once, and the source reconnects with backoff on the
:class:`~preemption.kernel.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gps.backoff import Backoff
from gps.outage import Outage, ReconnectingSource, close_quietly, describe
from gps.validity import (
    HELD,
    MAX_FUTURE_S,
    TimeOrder,
    course_or_none,
    plausible_coordinates,
    plausible_hdop,
    plausible_satellites,
    plausible_speed,
)
from preemption.kernel.clock import Clock
from preemption.kernel.model import Fix, FixQuality

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DROP_REASONS",
    "MAX_LINE",
    "GpsdDecoder",
    "GpsdSource",
    "watch_command",
]

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 2947
MAX_LINE: Final = 64 * 1024  # gpsd's largest reports (SKY with every satellite) are a few kB

DROP_REASONS: Final = frozenset(
    {
        "line_too_long",  # a line longer than MAX_LINE
        "bad_json",  # not JSON, or not UTF-8
        "not_a_report",  # JSON, but not an object with a string "class"
        "bad_report",  # a TPV whose fields have the wrong types (mode not 0..3, text for numbers)
        "other_device",  # a TPV of another device than the one asked for
        "no_fix",  # TPV mode 0 or 1, or status 0
        "no_time",  # TPV without time (gpsd has a position but no time yet)
        "bad_time",  # time that is not ISO 8601
        "no_position",  # TPV without lat or lon
        "impossible_coordinates",  # out of range, not finite, or exactly 0,0
        "impossible_speed",  # negative, not finite, or above MAX_SPEED_MS
        "duplicate_epoch",  # same time as the last fix (gpsd repeats TPV while it learns)
        "time_backwards",  # earlier than the last fix
        "time_jump",  # held TPV far ahead of the stream's cadence that was not confirmed
        "from_future",  # more than max_future_s ahead of the clock (only with a clock)
    }
)

# TPV "status" (gpsd 3.22 and later) to the GGA-style quality of the contract.
_STATUS_QUALITY: Final = {
    1: FixQuality.GPS,
    2: FixQuality.DGPS,
    3: FixQuality.RTK,
    4: FixQuality.FLOAT_RTK,
    5: FixQuality.ESTIMATED,  # dead reckoning alone
    6: FixQuality.GPS,  # GNSS with dead reckoning
    7: FixQuality.MANUAL,  # time only: a surveyed-in position
    8: FixQuality.SIMULATED,
    9: FixQuality.PPS,
}


class _Drop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class _Sky:
    received: float  # clock monotonic
    hdop: float | None
    satellites: int | None


def watch_command(device: str | None = None) -> bytes:
    """The WATCH that asks gpsd for JSON reports (of one device, if given)."""
    watch: dict[str, object] = {"enable": True, "json": True}
    if device is not None:
        watch["device"] = device
    return b"?WATCH=" + json.dumps(watch, separators=(",", ":")).encode() + b";\n"


class GpsdDecoder:
    """Turns gpsd's report lines into fixes for one vehicle; never raises on input.

    ``device``: use only reports of this device path (gpsd may serve several).
    ``sky_max_age_s``: how old (on the caller's monotonic clock) the last SKY
    may be to lend its hdop and satellite count to a TPV. ``clock``: judge TPV
    times against it as well (:class:`~gps.validity.TimeOrder`), with
    ``max_future_s``.
    """

    def __init__(
        self,
        vehicle: str,
        source: str,
        *,
        device: str | None = None,
        sky_max_age_s: float = 5.0,
        clock: Clock | None = None,
        max_future_s: float = MAX_FUTURE_S,
    ) -> None:
        self.vehicle = vehicle
        self.source = source
        self.device = device
        self.dropped: Counter[str] = Counter()
        self.reports: Counter[str] = Counter()  # by class, whatever became of them
        self._sky_max_age_s = sky_max_age_s
        self._sky: dict[str, _Sky] = {}
        self._order: TimeOrder[Fix] = TimeOrder(clock=clock, max_future_s=max_future_s)

    @property
    def resyncs(self) -> int:
        """How often the decoder followed the receiver's time after a confirmed jump."""
        return self._order.resyncs

    @property
    def held(self) -> int:
        """TPVs held as suspect after a jump in time: neither used nor dropped yet."""
        return len(self._order.pending)

    def feed_line(self, line: bytes | str, now: float) -> list[Fix]:
        """One line from gpsd (with or without its end); ``now`` is the monotonic time.

        The fixes it completes: usually none or one; after a confirmed jump in
        time, the held ones before it as well, in time order.
        """
        if len(line) > MAX_LINE:
            self.dropped["line_too_long"] += 1
            return []
        if not line.strip():
            return []
        try:
            report = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; deep nesting
            self.dropped["bad_json"] += 1
            return []
        if not isinstance(report, dict) or not isinstance(report.get("class"), str):
            self.dropped["not_a_report"] += 1
            return []
        kind = report["class"]
        self.reports[kind] += 1
        try:
            if kind == "TPV":
                return self._tpv(report, now)
            if kind == "SKY":
                self._take_sky(report, now)
            elif kind == "ERROR":
                log.warning(
                    "gpsd (%s) reports an error: %r; check the gpsd version and the WATCH request",
                    self.source,
                    report.get("message"),
                )
        except _Drop as drop:
            self.dropped[drop.reason] += 1
        except Exception:
            # A report shaped in a way no check above foresaw: the peer's fault, not ours.
            self.dropped["bad_report"] += 1
        return []

    def finish(self) -> list[Fix]:
        """End of the stream for good: the TPVs still held, if within a day of the last
        fix (else they are dropped as ``time_jump``)."""
        self._order.settle()
        return self._settle_held()

    def _settle_held(self) -> list[Fix]:
        released, discarded = self._order.take()
        if discarded:
            self.dropped["time_jump"] += len(discarded)
        return released

    def _tpv(self, report: Mapping[str, Any], now: float) -> list[Fix]:
        device = report.get("device")
        if self.device is not None and device != self.device:
            raise _Drop("other_device")
        mode = report.get("mode")
        if type(mode) is not int or not 0 <= mode <= 3:
            raise _Drop("bad_report")
        if mode < 2:
            raise _Drop("no_fix")
        if "time" not in report:
            raise _Drop("no_time")
        time = _time(report["time"])
        if "lat" not in report or "lon" not in report:
            raise _Drop("no_position")
        lat, lon = _number(report["lat"]), _number(report["lon"])
        if lat is None or lon is None:
            raise _Drop("bad_report")
        if not plausible_coordinates(lat, lon):
            raise _Drop("impossible_coordinates")
        speed = _number(report.get("speed"))  # read only now: a bad type here is bad_report
        if not plausible_speed(speed):
            raise _Drop("impossible_speed")
        course = course_or_none(_number(report.get("track")))
        status = report.get("status", 1)
        if type(status) is not int:
            raise _Drop("bad_report")
        if status == 0:
            raise _Drop("no_fix")  # a mode 2/3 TPV that says "no fix" is not trusted
        quality = _STATUS_QUALITY.get(status, FixQuality.GPS)
        sky = self._sky.get(device if isinstance(device, str) else "")
        if sky is not None and now - sky.received > self._sky_max_age_s:
            sky = None
        fix = Fix(
            vehicle=self.vehicle,
            time=time,
            lat=lat,
            lon=lon,
            speed=speed,
            course=course,
            hdop=sky.hdop if sky else None,
            quality=quality,
            source=self.source,
            satellites=sky.satellites if sky else None,
        )
        order = self._order
        reason = order.check(time, fix)
        out = self._settle_held() if order.changed else []
        if reason is None:
            out.append(fix)
        elif reason != HELD:
            self.dropped[reason] += 1
        return out

    def _take_sky(self, report: Mapping[str, Any], now: float) -> None:
        device = report.get("device")
        if self.device is not None and device != self.device:
            return
        # A SKY only lends to the next TPV: a malformed one lends nothing and is no drop.
        value = report.get("hdop")
        hdop = float(value) if type(value) is int or type(value) is float else None
        if hdop is not None and not plausible_hdop(hdop):
            hdop = None
        used = report.get("uSat")
        if type(used) is not int:
            satellites = report.get("satellites")
            used = (
                sum(1 for s in satellites if isinstance(s, dict) and s.get("used") is True)
                if isinstance(satellites, list)
                else None
            )
        if used is not None and not plausible_satellites(used):
            used = None
        key = device if isinstance(device, str) else ""
        self._sky[key] = _Sky(now, hdop, used)


def _number(value: object) -> float | None:
    """A JSON number as float; None when absent; a wrong type is a bad report."""
    if value is None:
        return None
    if type(value) is int or type(value) is float:
        return float(value)
    raise _Drop("bad_report")


def _time(value: object) -> float:
    if not isinstance(value, str):
        raise _Drop("bad_time")
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _Drop("bad_time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)  # gpsd speaks UTC, and says so with a Z
    try:
        return stamp.timestamp()
    except (OverflowError, ValueError):
        raise _Drop("bad_time") from None


class GpsdSource(ReconnectingSource[GpsdDecoder]):
    """Fixes of one vehicle from gpsd over TCP, reconnecting when gpsd goes away.

    Iterate once. Counters: ``outages`` (gpsd lost or not reachable at first),
    ``reconnects`` (outages that ended: gpsd answered again),
    ``connect_failures``; :attr:`dropped` and :attr:`reports` from the decoder.
    ``idle_timeout_s``: treat a connection that stays silent this long as dead
    (gpsd sends TPV every second while a receiver is attached); None waits forever.
    ``max_future_s``: drop TPVs more than this ahead of ``clock.now()``
    (``from_future``), and follow a jump in time at once when the clock explains
    it (a dropout ended); None (the default) judges TPV times by their own cadence
    alone, as for a recording replayed through gpsfake.
    """

    def __init__(
        self,
        vehicle: str,
        clock: Clock,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        device: str | None = None,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float | None = None,
        sky_max_age_s: float = 5.0,
        source: str | None = None,
        max_future_s: float | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"gpsd port must be 1..65535, not {port!r}; fix the gpsd settings")
        if not (0.0 < connect_timeout_s < math.inf):
            raise ValueError(f"connect_timeout_s must be positive, not {connect_timeout_s!r}")
        if idle_timeout_s is not None and not (0.0 < idle_timeout_s < math.inf):
            raise ValueError(f"idle_timeout_s must be positive or None, not {idle_timeout_s!r}")
        self.host = host
        self.port = port
        self.address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.decoder = GpsdDecoder(
            vehicle,
            source or f"gpsd://{self.address}{device or ''}",
            device=device,
            sky_max_age_s=sky_max_age_s,
            clock=clock if max_future_s is not None else None,
            max_future_s=max_future_s if max_future_s is not None else MAX_FUTURE_S,
        )
        self.connect_failures = 0
        self.connected = False
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._outage = Outage(
            clock,
            backoff or Backoff(),
            log,
            name=f"gpsd at {self.address}",
            who=f"gpsd at {self.address} for vehicle {vehicle}",
            check=(
                "Check that gpsd is running (systemctl status gpsd), that it listens on "
                f"{self.address}, and that a receiver is attached (gpspipe -w {self.address})."
            ),
        )

    @property
    def reports(self) -> Counter[str]:
        return self.decoder.reports

    async def _fixes(self) -> AsyncGenerator[Fix, None]:
        while True:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, limit=4 * MAX_LINE
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, unreachable, timed out, bad host name
                self.connect_failures += 1
                await self._clock.sleep(self._outage.lost(f"cannot connect ({describe(exc)})"))
                continue
            self.connected = True
            talking = False
            try:
                writer.write(watch_command(self.decoder.device))
                await writer.drain()
                while True:
                    try:
                        async with asyncio.timeout(self._idle_timeout_s):
                            line = await reader.readline()
                    except ValueError:  # longer than the stream's limit; the rest is dropped
                        self.decoder.dropped["line_too_long"] += 1
                        continue
                    if not line:
                        reason = "gpsd closed the connection"
                        break
                    if not talking:
                        talking = True
                        self._outage.back()
                    for fix in self.decoder.feed_line(line, self._clock.monotonic()):
                        yield fix
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                reason = f"gpsd sent nothing for {self._idle_timeout_s} s"
            except Exception as exc:
                reason = f"the connection failed ({describe(exc)})"
            finally:
                self.connected = False
                await close_quietly(writer, f"the connection to gpsd at {self.address}", log)
            await self._clock.sleep(self._outage.lost(reason))
