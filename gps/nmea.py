"""NMEA 0183 in, :class:`~preemption.kernel.model.Fix` out.

A receiver speaks in *epochs*: for each instant it sends several sentences
(GGA, RMC, GSA, VTG ...) that each carry part of the picture. The decoder
frames sentences out of an untrusted byte stream, reads their fields by
pynmea2's sentence layouts and converters, and merges the sentences of one
epoch (same UTC time of day) into one Fix.

Everything that does not become part of a Fix is counted in
:attr:`NmeaDecoder.dropped` under a stable reason (see :data:`DROP_REASONS`);
nothing raised by bad input ever leaves the decoder, because a reader that dies
on one broken line would silence the engine.

Choices worth knowing:

* A sentence that says "no fix" (RMC or GLL status V, RMC/GLL/VTG mode N, GGA
  quality 0, GNS mode all N) voids its whole epoch: the receiver has told us
  the position is not valid, so a companion sentence of the same instant is not
  trusted either. GSA mode 1 is only dropped itself, because multi-GNSS
  receivers send one GSA per constellation and one of them may lack a fix.
* The date comes from RMC. An epoch without its own RMC takes the last RMC
  date, rolled over to the next day when the time of day wrapped past
  midnight (from the last two hours of a day to the first two: a wider guess
  would let one corrupt time push every later fix into ``time_backwards``).
  Before any RMC date the decoder uses ``date_hint`` if given, else
  drops the epoch as ``no_date``: guessing a day would put fixes at a wrong
  time that the planner trusts.
* Sentences without a time (VTG, GSA, NMEA 2.0 GLL) join the epoch still
  open, because receivers send them after the timed sentence they belong to.
* An epoch is emitted as soon as it is complete: the decoder learns the
  receiver's cycle (which sentences, how many of each, an epoch had when the
  next one began) and emits the moment the open epoch has them all, instead of
  waiting a whole second for the next epoch to start: that second is lead time
  the planner would lose. A sentence that arrives after its epoch was emitted
  widens the learned cycle (and is counted as ``duplicate_epoch`` or
  ``no_epoch``); an epoch that ends short shrinks it. Without a learned cycle
  an epoch is emitted when a sentence with another time arrives, or on
  :meth:`NmeaDecoder.flush`.
* Epoch times go through :class:`gps.validity.TimeOrder`: one epoch dated
  far ahead of the receiver's cadence (a corrupt but checksum-valid time) is
  held, not taken as the time every later epoch must beat; the next epoch
  that continues the stream drops it (``time_jump``), and a receiver that
  really jumped (a reset, a log that goes on after a pause) is followed
  after three epochs in its new cadence, the held ones then emitted late
  (at the end of the stream, :meth:`NmeaDecoder.finish`, a held run within a
  day of the last fix is emitted, one further ahead dropped).
  Given a ``clock``, epochs more than ``max_future_s`` ahead of it are
  ``from_future``, and a jump the clock explains (a dropout ended) is
  followed at once. Recorded logs are decoded without a clock.
* Checksums are required: a sentence without ``*hh`` could be a truncated
  line whose last number lost digits.
* ``dropped`` counts sentences, except ``garbage`` (runs of bytes outside any
  sentence) and ``comment`` (``#`` lines, as in gpsd logs), which count
  chunks. Once flushed, ``sentences == used + held + sum of the sentence
  reasons``; after :meth:`NmeaDecoder.finish` nothing is held.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Final

import pynmea2
from pynmea2 import nmea_utils

from gps.validity import (
    HELD,
    MAX_FUTURE_S,
    MAX_SPEED_MS,
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
    "DROP_REASONS",
    "KNOT_MS",
    "MAX_SENTENCE_LEN",
    "MAX_SPEED_MS",
    "NOT_SENTENCES",
    "NmeaDecoder",
    "parse_nmea_file",
]

KNOT_MS: Final = 1852.0 / 3600.0  # one knot in m/s
MAX_SENTENCE_LEN: Final = 200  # NMEA allows 82; vendors overshoot a little, never this much

DROP_REASONS: Final = frozenset(
    {
        "bad_checksum",  # checksum missing or wrong
        "parse_error",  # pynmea2 or a field conversion failed, or a mandatory field is bad
        "ignored",  # sentence of a type we do not use (GSV, ZDA, $P..., !AIVDM); no checksum test
        "void_status",  # RMC/GLL status V; voids the epoch
        "no_fix",  # GGA quality 0, GNS mode all N, RMC/GLL/VTG mode N (void epoch), GSA mode 1
        "no_position",  # position sentence without coordinates, or an epoch with none
        "no_epoch",  # untimed sentence (VTG, GSA) with no open epoch to join
        "no_date",  # epoch before any RMC date and without a date hint
        "impossible_coordinates",  # out of range, minutes >= 60, or exactly 0,0
        "impossible_speed",  # negative, not finite, or above MAX_SPEED_MS
        "time_backwards",  # epoch earlier than the last emitted fix
        "duplicate_epoch",  # epoch at the same instant as the last emitted fix (or one held)
        "time_jump",  # held epoch far ahead of the stream's cadence that was not confirmed
        "from_future",  # epoch more than max_future_s ahead of the clock (only with a clock)
        "line_too_long",  # sentence longer than MAX_SENTENCE_LEN
        "garbage",  # bytes outside any sentence (binary protocols, noise); counts chunks
        "comment",  # '#' line as in gpsd test logs; counts lines
    }
)
NOT_SENTENCES: Final = frozenset({"garbage", "comment"})

_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
_ROLLOVER_WINDOW: Final = 7_200.0  # s either side of midnight

# A sentence: '$' or '!', an upper-case address, then printable ASCII up to the
# next start character or anything unprintable. A '#' at a line start is a comment.
_TOKEN = re.compile(rb"[$!][A-Z][A-Z0-9]{2,}[,*][\x20\x22\x23\x25-\x7e]*|(?<![^\r\n])#[^\r\n]*")
_SENTENCE_BODY = re.compile(rb"[\x20\x22\x23\x25-\x7e]*")
_RESYNC = re.compile(rb"[\r\n$!]")
# The two checksum digits after '*', upper or lower case, and their value.
_HEX_BYTE: Final = {
    f"{a}{b}".encode(): int(f"{a}{b}", 16)
    for a in "0123456789ABCDEFabcdef"
    for b in "0123456789ABCDEFabcdef"
}


def _xor(body: bytes) -> int:
    """XOR of all bytes (the NMEA checksum) of up to 256 bytes, by folding one integer.

    Twice as fast as reducing byte by byte: each fold XORs the upper half of the
    remaining width onto the lower, which stays exact in the low bits.
    """
    x = int.from_bytes(body, "little")
    x ^= x >> 1024
    x ^= x >> 512
    x ^= x >> 256
    x ^= x >> 128
    x ^= x >> 64
    x ^= x >> 32
    x ^= x >> 16
    x ^= x >> 8
    return x & 0xFF


if MAX_SENTENCE_LEN > 256:
    raise RuntimeError("_xor folds at most 256 bytes: add a fold for longer sentences")

_MODE_QUALITY: Final = {
    "A": FixQuality.GPS,
    "D": FixQuality.DGPS,
    "P": FixQuality.PPS,
    "R": FixQuality.RTK,
    "F": FixQuality.FLOAT_RTK,
    "E": FixQuality.ESTIMATED,
    "M": FixQuality.MANUAL,
    "S": FixQuality.SIMULATED,
}


class _Drop(Exception):
    """Internal control flow: this sentence is dropped for ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class _Epoch:
    """What the sentences of one instant have told us so far."""

    tod: float  # UTC seconds since midnight
    kinds: dict[str, int] = field(default_factory=dict)  # sentence type -> count merged
    veto: str | None = None
    merged: int = 0
    rank: int = 0  # of the position source: GGA/GNS 3, RMC 2, GLL 1
    lat: float = 0.0
    lon: float = 0.0
    quality: FixQuality = FixQuality.INVALID
    day: int | None = None  # proleptic ordinal of the RMC date
    speed: float | None = None
    course: float | None = None
    hdop: float | None = None
    satellites: int | None = None
    gsa_hdop: float | None = None
    gsa_satellites: int = 0
    fix: Fix | None = None  # once closed: what it became, while the time order judges it


class NmeaDecoder:
    """Decodes one receiver's NMEA stream into fixes for one vehicle.

    Not thread-safe; one instance per stream. ``feed`` and ``feed_line`` return
    the fixes completed by that input; ``flush`` when the line goes quiet
    returns the epoch still open, and ``finish`` at the end of the stream also
    settles the epochs held after a jump in time.
    """

    def __init__(
        self,
        vehicle: str,
        source: str,
        *,
        date_hint: dt.date | None = None,
        clock: Clock | None = None,
        max_future_s: float = MAX_FUTURE_S,
    ) -> None:
        self.vehicle = vehicle
        self.source = source
        self.dropped: Counter[str] = Counter()
        self.sentences = 0  # sentence candidates framed, whatever became of them
        self.used = 0  # sentences merged into an emitted Fix
        self._buf = b""
        self._skip = False  # discarding the rest of an overlong line
        self._epoch: _Epoch | None = None
        self._day = date_hint.toordinal() if date_hint is not None else None
        self._day_tod: float | None = None
        # Items: closed epochs with their fix and day, which set the date state once accepted.
        self._order: TimeOrder[_Epoch] = TimeOrder(clock=clock, max_future_s=max_future_s)
        self._out: list[Fix] = []
        self._kind = ""  # type of the sentence being handled
        self._cycle: dict[str, int] = {}  # learned sentences of a complete epoch
        self._early_tod: float | None = None  # epoch emitted early, before its next one began
        self._tod_text = ""  # last time field converted, and its seconds since midnight
        self._tod_value: float | None = None
        self._position_text: list[str] = []  # last position fields decoded, and the result
        self._position_value = (0.0, 0.0)

    # -- input ------------------------------------------------------------

    def feed(self, data: bytes) -> list[Fix]:
        """Accept the next chunk of the byte stream, cut anywhere."""
        data = bytes(data)
        if self._skip:
            m = _RESYNC.search(data)
            if m is None:
                return []
            data = data[m.start() :]
            self._skip = False
        buf = self._buf + data if self._buf else data
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if cut >= 0:
            self._scan(buf[: cut + 1])
            buf = buf[cut + 1 :]
        # The usual tail is empty or a short start of the next line: no need for _bound.
        self._buf = buf if len(buf) <= MAX_SENTENCE_LEN else self._bound(buf)
        out, self._out = self._out, []
        return out

    def feed_line(self, line: str) -> list[Fix]:
        """Accept one complete line (with or without its line end).

        Independent of the byte buffer of :meth:`feed`: use one or the other.
        """
        self._scan(line.encode("utf-8", "replace"))
        return self._take()

    def flush(self) -> list[Fix]:
        """A pause (or the end) of the stream: decode an unterminated last line and emit
        the open epoch.

        Epochs held as suspect after a jump in time stay held (:attr:`held`): a
        receiver slower than the caller's pause detection would otherwise never
        get a jumped run confirmed. :meth:`finish` ends the stream for good.
        """
        if self._buf:
            buf, self._buf = self._buf, b""
            self._scan(buf)
        self._skip = False
        self._close_epoch()
        return self._take()

    def finish(self) -> list[Fix]:
        """End of stream: :meth:`flush`, then settle what is still held: emitted if
        it starts within a day of the last fix (a log that goes on after a pause),
        else dropped as ``time_jump``."""
        out = self.flush()
        self._order.settle()
        self._settle_held()
        return out + self._take()

    @property
    def held(self) -> int:
        """Sentences in epochs held as suspect: neither used nor dropped yet.

        ``sentences == used + held + sum of the sentence reasons`` after a flush.
        """
        return sum(epoch.merged for epoch in self._order.pending)

    @property
    def resyncs(self) -> int:
        """How often the decoder followed the receiver's time after a confirmed jump."""
        return self._order.resyncs

    def _take(self) -> list[Fix]:
        out, self._out = self._out, []
        return out

    def _bound(self, tail: bytes) -> bytes:
        """Keep memory bounded while no line end arrives (binary blocks, runaway lines)."""
        if len(tail) <= MAX_SENTENCE_LEN:
            return tail
        start = max(tail.rfind(b"$"), tail.rfind(b"!"))
        growing = start >= 0 and _SENTENCE_BODY.fullmatch(tail, start + 1) is not None
        if not growing:
            self._scan(tail)
            return b""
        self._scan(tail[:start])
        if len(tail) - start <= MAX_SENTENCE_LEN:
            return tail[start:]
        self.sentences += 1
        self.dropped["line_too_long"] += 1
        self._skip = True
        return b""

    def _scan(self, region: bytes) -> None:
        """Frame sentences out of ``region``, in which every sentence is complete."""
        pos = 0
        for m in _TOKEN.finditer(region):
            start, end = m.span()
            if start > pos and region[pos:start].strip():
                self.dropped["garbage"] += 1
            pos = end
            if region[start] == 0x23:  # '#'
                self.dropped["comment"] += 1
            else:
                self._sentence(m.group())
        if region[pos:].strip():
            self.dropped["garbage"] += 1

    # -- one sentence -----------------------------------------------------

    def _sentence(self, token: bytes) -> None:
        self.sentences += 1
        token = token.rstrip(b" ")
        if len(token) > MAX_SENTENCE_LEN:
            self.dropped["line_too_long"] += 1
            return
        if token[0] != 0x24 or token[1] == 0x50 or token[6:7] not in (b",", b"*"):
            # '!' (AIS), '$P...' (proprietary) and addresses that are not talker + type
            self.dropped["ignored"] += 1
            return
        kind = token[3:6].decode("ascii")
        handler = _HANDLERS.get(kind)
        if handler is None:  # checked before the checksum: GSV alone is half a stream
            self.dropped["ignored"] += 1
            return
        star = len(token) - 3
        if star < 6 or token[star] != 0x2A:  # '*'
            self.dropped["bad_checksum"] += 1
            return
        # At most MAX_SENTENCE_LEN bytes, within what _xor folds; .get: None if not hex.
        if _xor(token[1:star]) != _HEX_BYTE.get(token[star + 1 :]):
            self.dropped["bad_checksum"] += 1
            return
        data = _fields(token[:star].decode("ascii"))
        if data is None:
            self.dropped["parse_error"] += 1
            return
        try:
            self._kind = kind
            handler(self, data)
            self._merged(kind)
        except _Drop as drop:
            self.dropped[drop.reason] += 1
        except Exception:
            # The boundary to pynmea2 and its converters: whatever they raise
            # on hostile input is a parse error of this sentence, never ours to raise.
            self.dropped["parse_error"] += 1

    def _merged(self, kind: str) -> None:
        """Count a merged sentence; emit the epoch at once if the learned cycle is complete."""
        epoch = self._epoch
        if epoch is None:
            return
        kinds = epoch.kinds
        kinds[kind] = kinds.get(kind, 0) + 1
        cycle = self._cycle
        if not cycle:
            return
        for k, n in cycle.items():
            if kinds.get(k, 0) < n:
                return
        self._early_tod = epoch.tod
        self._close_epoch()

    def _late(self, reason: str) -> _Drop:
        """A sentence of an epoch already emitted early: the cycle is longer than learned."""
        self._cycle[self._kind] = self._cycle.get(self._kind, 0) + 1
        return _Drop(reason)

    def _timed_epoch(self, tod: float | None, veto: str | None) -> _Epoch:
        """The epoch a timed sentence belongs to, opening it (and closing the last) if new."""
        if tod is None:
            raise _Drop(veto or "parse_error")
        epoch = self._epoch
        if epoch is None and tod == self._early_tod:
            raise self._late("duplicate_epoch")
        if epoch is None or epoch.tod != tod:
            if epoch is not None and epoch.veto is None:
                self._cycle = dict(epoch.kinds)  # it ended when the next began: a full cycle
            self._close_epoch()
            self._early_tod = None
            epoch = self._epoch = _Epoch(tod)
        if veto is not None:
            if epoch.veto is None:
                epoch.veto = veto
            raise _Drop(veto)
        return epoch

    def _open_epoch(self) -> _Epoch:
        if self._epoch is None:
            raise self._late("no_epoch") if self._early_tod is not None else _Drop("no_epoch")
        return self._epoch

    def _tod(self, text: str) -> float | None:
        """A time field as seconds since midnight (None if empty), converted by pynmea2.

        The RMC and GGA of one epoch carry the same text, so the last one is remembered:
        pynmea2's timestamp is the dearest converter of an epoch.
        """
        if text == self._tod_text:
            return self._tod_value
        if not text:
            return None
        try:
            t = nmea_utils.timestamp(text)
        except Exception:
            raise _Drop("parse_error") from None
        tod: float = t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
        self._tod_text, self._tod_value = text, tod
        return tod

    def _position(self, data: list[str], i: int) -> tuple[float, float]:
        """Latitude and longitude from the four fields at ``i`` (pynmea2's LatLonFix).

        Receivers mostly repeat the same text in the RMC and GGA of an epoch, so the
        last position decoded is remembered (only a valid one: errors are raised anew).
        """
        text = data[i : i + 4]
        if text == self._position_text:
            return self._position_value
        lat_s, lat_dir, lon_s, lon_dir = text
        if not lat_s or not lon_s:
            raise _Drop("no_position")
        if lat_dir not in ("N", "S") or lon_dir not in ("E", "W"):
            raise _Drop("parse_error")
        lat = _degrees(lat_s)
        if lat_dir == "S":
            lat = -lat
        lon = _degrees(lon_s)
        if lon_dir == "W":
            lon = -lon
        # ddmm.mmmm: pynmea2 accepts minutes >= 60 and degrees beyond the range.
        if float(lat_s) % 100.0 >= 60.0 or float(lon_s) % 100.0 >= 60.0:
            raise _Drop("impossible_coordinates")
        if not plausible_coordinates(lat, lon):
            raise _Drop("impossible_coordinates")
        self._position_text, self._position_value = text, (lat, lon)
        return lat, lon

    # The handlers read pynmea2's field list by the indices its sentence classes
    # declare (see _index), not through its attributes, and convert each field as
    # that attribute would (see _float_field). They raise in the same order as the
    # fields are checked below: the first failure names the drop.

    def _gga(self, data: list[str]) -> None:
        if len(data) < _GGA_WIDTH:
            data = data + [""] * (_GGA_WIDTH - len(data))
        quality = int(data[_GGA_QUAL])  # ValueError ("" too) -> parse_error
        if not 0 <= quality <= 8:
            raise _Drop("parse_error")
        epoch = self._timed_epoch(self._tod(data[_GGA_TIME]), "no_fix" if quality == 0 else None)
        lat, lon = self._position(data, _GGA_LAT)
        _merge_fix(epoch, lat, lon, _GGA_QUALITY[quality], data[_GGA_HDOP], data[_GGA_SATS])

    def _gns(self, data: list[str]) -> None:
        if len(data) < _GNS_WIDTH:
            data = data + [""] * (_GNS_WIDTH - len(data))
        mode = data[_GNS_MODE]
        if not mode or any(c != "N" and c not in _MODE_QUALITY for c in mode):
            raise _Drop("parse_error")
        fixed = [c for c in mode if c != "N"]
        epoch = self._timed_epoch(self._tod(data[_GNS_TIME]), None if fixed else "no_fix")
        lat, lon = self._position(data, _GNS_LAT)
        quality = _MODE_QUALITY[fixed[0]]
        _merge_fix(epoch, lat, lon, quality, data[_GNS_HDOP], data[_GNS_SATS])

    def _rmc(self, data: list[str]) -> None:
        if len(data) < _RMC_WIDTH:
            data = data + [""] * (_RMC_WIDTH - len(data))
        mode = data[_RMC_MODE]
        veto = "void_status" if data[_RMC_STATUS] != "A" else "no_fix" if mode == "N" else None
        quality = _mode_quality(mode)
        epoch = self._timed_epoch(self._tod(data[_RMC_TIME]), veto)
        lat, lon = self._position(data, _RMC_LAT)
        speed = _speed(_float_field(data[_RMC_SPEED]), KNOT_MS)
        course = course_or_none(_float_field(data[_RMC_COURSE]))
        day = _day(data[_RMC_DATE])
        _merge_position(epoch, lat, lon, quality, 2)
        if epoch.speed is None:
            epoch.speed = speed
        if epoch.course is None:
            epoch.course = course
        if epoch.day is None:
            epoch.day = day
        epoch.merged += 1

    def _gll(self, data: list[str]) -> None:
        if len(data) < _GLL_WIDTH:
            data = data + [""] * (_GLL_WIDTH - len(data))
        mode = data[_GLL_MODE]
        veto = "void_status" if data[_GLL_STATUS] != "A" else "no_fix" if mode == "N" else None
        quality = _mode_quality(mode)
        tod = self._tod(data[_GLL_TIME])
        # NMEA 2.0 GLL has no time: it joins the open epoch like VTG.
        untimed = tod is None and veto is None
        epoch = self._open_epoch() if untimed else self._timed_epoch(tod, veto)
        lat, lon = self._position(data, _GLL_LAT)
        _merge_position(epoch, lat, lon, quality, 1)
        epoch.merged += 1

    def _vtg(self, data: list[str]) -> None:
        if len(data) < _VTG_WIDTH:
            data = data + [""] * (_VTG_WIDTH - len(data))
        if data[_VTG_MODE] == "N":
            raise _Drop("no_fix")
        speed = None
        if data[_VTG_KTS_SYM] == "N":
            speed = _speed(_number(_converted(_VTG_KTS_CONV, data[_VTG_KTS])), KNOT_MS)
        if speed is None and data[_VTG_KMPH_SYM] == "K":
            speed = _speed(_float_field(data[_VTG_KMPH]), 1.0 / 3.6)
        course = (
            course_or_none(_float_field(data[_VTG_TRACK]))
            if data[_VTG_TRACK_SYM] in ("T", "")
            else None
        )
        epoch = self._open_epoch()
        _merge_motion(epoch, speed, course)
        epoch.merged += 1

    def _gsa(self, data: list[str]) -> None:
        if len(data) < _GSA_WIDTH:
            data = data + [""] * (_GSA_WIDTH - len(data))
        fix_type = data[_GSA_FIX_TYPE]
        if fix_type == "1":
            raise _Drop("no_fix")
        if fix_type not in ("2", "3"):
            raise _Drop("parse_error")
        hdop = _hdop(data[_GSA_HDOP])
        used = sum(1 for sv in data[2:14] if sv)
        epoch = self._open_epoch()
        if epoch.gsa_hdop is None:
            epoch.gsa_hdop = hdop
        epoch.gsa_satellites += used
        epoch.merged += 1

    # -- output -----------------------------------------------------------

    def _close_epoch(self) -> None:
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return
        reason = self._emit(epoch)
        if reason is None:
            self.used += epoch.merged
        elif epoch.merged and reason != HELD:
            self.dropped[reason] += epoch.merged

    def _emit(self, epoch: _Epoch) -> str | None:
        """Turn a closed epoch into a Fix; the drop reason if it cannot be one."""
        if epoch.veto is not None:
            return epoch.veto
        if epoch.rank == 0:
            return "no_position"
        day = epoch.day
        if day is None:
            if self._day is None:
                return "no_date"
            day = self._day
            last_tod = self._day_tod
            if (
                last_tod is not None
                and last_tod >= 86_400 - _ROLLOVER_WINDOW
                and epoch.tod < _ROLLOVER_WINDOW
            ):
                day += 1  # the time of day wrapped past midnight since the last date
        time = (day - _EPOCH_ORDINAL) * 86_400 + epoch.tod
        hdop = epoch.hdop if epoch.hdop is not None else epoch.gsa_hdop
        satellites = epoch.satellites
        if satellites is None and epoch.gsa_satellites:
            satellites = epoch.gsa_satellites
        fix = Fix(
            vehicle=self.vehicle,
            time=time,
            lat=epoch.lat,
            lon=epoch.lon,
            speed=epoch.speed,
            course=epoch.course,
            hdop=hdop,
            quality=epoch.quality,
            source=self.source,
            satellites=satellites,
        )
        epoch.fix = fix
        epoch.day = day
        order = self._order
        reason = order.check(time, epoch)
        if order.changed:
            self._settle_held()
        if reason is None:
            # Only an accepted epoch dates the ones after it: an epoch dated ahead and
            # dropped must not carry its date into the GGA-only epochs that follow.
            self._day, self._day_tod = day, epoch.tod
            self._out.append(fix)
        return reason

    def _settle_held(self) -> None:
        """Use the held epochs the time order released; count those it dropped."""
        released, discarded = self._order.take()
        for epoch in released:
            if epoch.fix is not None:
                self._out.append(epoch.fix)
            self.used += epoch.merged
            self._day, self._day_tod = epoch.day, epoch.tod
        for epoch in discarded:
            if epoch.merged:
                self.dropped["time_jump"] += epoch.merged


_HANDLERS: Final[dict[str, Callable[[NmeaDecoder, list[str]], None]]] = {
    "GGA": NmeaDecoder._gga,
    "GNS": NmeaDecoder._gns,
    "RMC": NmeaDecoder._rmc,
    "GLL": NmeaDecoder._gll,
    "VTG": NmeaDecoder._vtg,
    "GSA": NmeaDecoder._gsa,
}


# -- where pynmea2 keeps the fields -------------------------------------------
#
# Attribute access on a pynmea2 sentence looks the field up by name and converts
# it on every read; the decoder reads a dozen fields of each sentence, and that
# access was most of its time. So the indices are looked up once, here, from the
# field specs of pynmea2's sentence classes, along with a check that each field
# still converts the way the handlers assume: a pynmea2 release that moves or
# retypes a field fails at import instead of decoding differently.


def _fields(sentence: str) -> list[str] | None:
    """The field list ``pynmea2.parse(sentence).data`` gives for a framed, checksum-
    verified talker sentence without its ``*hh`` ("$GPRMC,f1,f2,..."), or None
    where pynmea2 raises.

    The framing (_TOKEN) has already admitted only "$", an upper-case address and
    printable ASCII without "$" or "!"; of pynmea2's sentence pattern that leaves a
    comma after the five-letter address and no "*" among the fields. Splitting
    here instead of calling pynmea2.parse takes a fifth off the decoder's time:
    parse matches its pattern, checks the checksum again and builds a sentence
    object whose fields the handlers do not read through anyway (tests/test_gps_nmea.py
    compares the two on arbitrary input).
    """
    if sentence[6:7] != "," or "*" in sentence:
        return None
    return sentence[7:].split(",")


def _width(kind: str) -> int:
    """Fields declared by pynmea2 for ``kind``; shorter sentences read as padded with ''."""
    return len(pynmea2.TalkerSentence.sentence_types[kind].fields)


def _index(kind: str, name: str, conv: object = None) -> int:
    """Index of pynmea2's field ``name`` of ``kind``, which must convert with ``conv``."""
    for i, spec in enumerate(pynmea2.TalkerSentence.sentence_types[kind].fields):
        if spec[1] == name:
            declared = spec[2] if len(spec) >= 3 else None
            if declared is not conv:
                raise RuntimeError(f"pynmea2 {kind}.{name} converts with {declared!r}")
            return i
    raise RuntimeError(f"pynmea2 {kind} has no field {name}")


def _lat_index(kind: str) -> int:
    """Index of the latitude; its hemisphere, the longitude and its hemisphere follow."""
    i = _index(kind, "lat")
    for k, name in enumerate(("lat_dir", "lon", "lon_dir"), 1):
        if _index(kind, name) != i + k:
            raise RuntimeError(f"pynmea2 {kind} has its position fields out of order")
    return i


_TIMESTAMP = nmea_utils.timestamp
_GGA_WIDTH: Final = _width("GGA")
_GGA_TIME: Final = _index("GGA", "timestamp", _TIMESTAMP)
_GGA_LAT: Final = _lat_index("GGA")
_GGA_QUAL: Final = _index("GGA", "gps_qual", int)
_GGA_SATS: Final = _index("GGA", "num_sats")
_GGA_HDOP: Final = _index("GGA", "horizontal_dil")
_GGA_QUALITY: Final = tuple(FixQuality(q) for q in range(9))  # by quality indicator
_GNS_WIDTH: Final = _width("GNS")
_GNS_TIME: Final = _index("GNS", "timestamp", _TIMESTAMP)
_GNS_LAT: Final = _lat_index("GNS")
_GNS_MODE: Final = _index("GNS", "mode_indicator")
_GNS_SATS: Final = _index("GNS", "num_sats")
_GNS_HDOP: Final = _index("GNS", "hdop")
_RMC_WIDTH: Final = _width("RMC")
_RMC_TIME: Final = _index("RMC", "timestamp", _TIMESTAMP)
_RMC_LAT: Final = _lat_index("RMC")
_RMC_STATUS: Final = _index("RMC", "status")
_RMC_MODE: Final = _index("RMC", "mode_indicator")
_RMC_SPEED: Final = _index("RMC", "spd_over_grnd", float)
_RMC_COURSE: Final = _index("RMC", "true_course", float)
_RMC_DATE: Final = _index("RMC", "datestamp", nmea_utils.datestamp)
_GLL_WIDTH: Final = _width("GLL")
_GLL_TIME: Final = _index("GLL", "timestamp", _TIMESTAMP)
_GLL_LAT: Final = _lat_index("GLL")
_GLL_STATUS: Final = _index("GLL", "status")
_GLL_MODE: Final = _index("GLL", "faa_mode")
_VTG_WIDTH: Final = _width("VTG")
_VTG_MODE: Final = _index("VTG", "faa_mode")
_VTG_TRACK: Final = _index("VTG", "true_track", float)
_VTG_TRACK_SYM: Final = _index("VTG", "true_track_sym")
_VTG_KTS_CONV: Final = Decimal
_VTG_KTS: Final = _index("VTG", "spd_over_grnd_kts", _VTG_KTS_CONV)
_VTG_KTS_SYM: Final = _index("VTG", "spd_over_grnd_kts_sym")
_VTG_KMPH: Final = _index("VTG", "spd_over_grnd_kmph", float)
_VTG_KMPH_SYM: Final = _index("VTG", "spd_over_grnd_kmph_sym")
_GSA_WIDTH: Final = _width("GSA")
_GSA_FIX_TYPE: Final = _index("GSA", "mode_fix_type")
_GSA_HDOP: Final = _index("GSA", "hdop")
if _index("GSA", "sv_id01") != 2 or _index("GSA", "sv_id12") != 13:
    raise RuntimeError("pynmea2 GSA has its satellite ids out of place")

# A latitude or longitude field; pynmea2's dm_to_sd accepts the same.
_LATLON = re.compile(r"^(\d+)(\d\d\.\d+)$")


def _converted(conv: Callable[[str], object], text: str) -> object:
    """A field as pynmea2's attribute returns it: converted, raw text on a failed
    conversion, None when empty."""
    if text == "":
        return None
    try:
        return conv(text)
    except Exception:
        return text


def _float_field(text: str) -> float | None:
    """A field pynmea2 converts with ``float``, as :func:`_number` of its attribute.

    Same result, one conversion: the attribute would be None for '', a float, or the
    raw text when ``float`` fails, and _number would then fail on that text again.
    """
    return float(text) if text else None  # ValueError -> parse_error at the boundary


def _merge_fix(
    epoch: _Epoch,
    lat: float,
    lon: float,
    quality: FixQuality,
    hdop_text: str,
    satellites_text: str,
) -> None:
    """Merge a GGA or GNS: position, hdop and satellites (all read before any is merged)."""
    hdop = _hdop(hdop_text)
    satellites = _count(satellites_text)
    _merge_position(epoch, lat, lon, quality, 3)
    if epoch.hdop is None:
        epoch.hdop = hdop
    if epoch.satellites is None:
        epoch.satellites = satellites
    epoch.merged += 1


def _merge_position(epoch: _Epoch, lat: float, lon: float, quality: FixQuality, rank: int) -> None:
    # GGA/GNS first: they carry the fix quality and often more digits than RMC.
    if rank > epoch.rank:
        epoch.rank, epoch.lat, epoch.lon, epoch.quality = rank, lat, lon, quality


def _merge_motion(epoch: _Epoch, speed: float | None, course: float | None) -> None:
    if epoch.speed is None:
        epoch.speed = speed
    if epoch.course is None:
        epoch.course = course


@functools.lru_cache(maxsize=64)
def _day_ordinal(text: str) -> int:
    # strptime is slow and the date repeats in every RMC of a day.
    date: dt.date = nmea_utils.datestamp(text)
    return date.toordinal()


def _day(text: str) -> int | None:
    """The RMC date as a proleptic ordinal, None if empty."""
    if not text:
        return None
    try:
        return _day_ordinal(text)
    except Exception:
        raise _Drop("parse_error") from None


def _degrees(dm: str) -> float:
    """pynmea2's dm_to_sd: ddmm.mmmm to degrees; raises ValueError like it."""
    if not dm or dm == "0":
        return 0.0
    r = _LATLON.match(dm)
    if not r:
        raise ValueError(f"Geographic coordinate value '{dm}' is not valid DDDMM.MMM")
    d, m = r.groups()
    return float(d) + float(m) / 60


def _mode_quality(mode: str) -> FixQuality:
    if not mode:
        return FixQuality.GPS  # before NMEA 2.3 there was no mode field
    quality = _MODE_QUALITY.get(mode)
    if quality is None and mode != "N":
        raise _Drop("parse_error")
    return quality or FixQuality.INVALID  # N: the sentence vetoes its epoch anyway


def _number(value: object) -> float | None:
    """A numeric field as pynmea2 hands it over: converted, raw text, or None when empty."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return float(value)  # ValueError -> parse_error at the boundary
    if isinstance(value, float | int) or hasattr(value, "__float__"):
        return float(value)
    raise _Drop("parse_error")


def _speed(number: float | None, to_ms: float) -> float | None:
    if number is None:
        return None
    speed = number * to_ms
    if not plausible_speed(speed):
        raise _Drop("impossible_speed")
    return speed


def _hdop(text: str) -> float | None:
    """An hdop field (pynmea2 leaves it text); None if empty or implausible."""
    number = float(text) if text else None  # ValueError -> parse_error at the boundary
    return number if number is not None and plausible_hdop(number) else None


def _count(text: str) -> int | None:
    """A satellite count (pynmea2 leaves it text); None if empty or implausible."""
    if not text:
        return None
    count = int(text)
    return count if plausible_satellites(count) else None


def parse_nmea_file(
    path: str | Path,
    vehicle: str,
    source: str | None = None,
    *,
    date_hint: dt.date | None = None,
) -> tuple[list[Fix], Counter[str]]:
    """Decode a whole NMEA log: the fixes and the drop counters, for tools and tests."""
    path = Path(path)
    decoder = NmeaDecoder(vehicle, source or path.name, date_hint=date_hint)
    fixes = decoder.feed(path.read_bytes())
    fixes.extend(decoder.finish())
    return fixes, decoder.dropped
