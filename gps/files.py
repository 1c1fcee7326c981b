"""Recorded tracks in GPX and CSV: read into fixes, and written back out.

Test drives, tracks exported from vehicle telematics and routes recorded with a
phone arrive as GPX or CSV; replaying them (see :mod:`gps.replay`) exercises
the matcher and the planner with real driving.

GPX: every ``trkpt`` of every track, in document order (GPX 1.0 and 1.1,
namespaced or not). ``lat``/``lon`` attributes and ``<time>`` are required;
``<hdop>``, ``<sat>``, ``<fix>`` are read; speed (m/s) and course (degrees)
come from GPX 1.0's ``<speed>``/``<course>`` or from an extension element of
the same name (Garmin ``gpxtpx:speed``/``gpxtpx:course``, OsmAnd, ...). A file
cut off mid-write (a logger that lost power) keeps the points before the cut
and counts the rest once as ``truncated``.

CSV: a header row naming the columns, in any order and case: ``time``,
``lat``, ``lon`` required; ``speed_mps``, ``course_deg``, ``hdop``,
``quality`` (the NMEA GGA indicator, 0-8) and ``satellites`` optional; other
columns are ignored. ``time`` is ISO 8601 or epoch seconds; a time without a
UTC offset is taken as UTC (GPX requires UTC, and GNSS tools write it).
Comma or semicolon separated; UTF-8, with or without a byte-order mark.

A file that is not a track at all (no header, a required column missing, XML
that is not GPX) raises :class:`TrackFileError` naming the file and what to
fix. Within a usable file, a record that cannot be a fix is dropped and
counted under a stable reason (:data:`DROP_REASONS`), never raised: one bad
row must not cost the rest of a test drive. Course and hdop out of range
become None rather than costing the position, as in :mod:`gps.nmea`. Times
go through :class:`gps.validity.TimeOrder` as NMEA epochs do: one record
dated far ahead of the track's cadence (a typo'd year) is dropped as
``time_jump`` instead of making every later record ``time_backwards``, and a
track that really goes on after a pause keeps all its points (the last
ones too, unless more than a day ahead of the rest).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Final, Literal

from gps.validity import (
    HELD,
    TimeOrder,
    course_or_none,
    plausible_hdop,
    plausible_satellites,
    position_problem,
)
from preemption.kernel.errors import InputError
from preemption.kernel.model import Fix, FixQuality

__all__ = [
    "CSV_COLUMNS",
    "CSV_REQUIRED",
    "DROP_REASONS",
    "TrackFileError",
    "parse_csv",
    "parse_gpx",
    "read_csv",
    "read_gpx",
    "read_track",
    "write_csv",
    "write_gpx",
]

log = logging.getLogger(__name__)

DROP_REASONS: Final = frozenset(
    {
        "bad_row",  # a CSV row or GPX point that cannot be read: field count, text for numbers
        "no_time",  # no time in the record
        "bad_time",  # a time that is neither ISO 8601 nor epoch seconds in 1970..9999
        "no_fix",  # GPX <fix>none</fix>, CSV quality 0
        "impossible_coordinates",  # out of range, not finite, or exactly 0,0
        "impossible_speed",  # negative, not finite, or above MAX_SPEED_MS
        "duplicate_epoch",  # same time as the last fix
        "time_backwards",  # earlier than the last fix
        "time_jump",  # far ahead of the track's cadence, and not confirmed by the records after it
        "truncated",  # GPX broken off or malformed from here on; counted once
    }
)

CSV_REQUIRED: Final = ("time", "lat", "lon")
CSV_COLUMNS: Final = (*CSV_REQUIRED, "speed_mps", "course_deg", "hdop", "quality", "satellites")

GPX_NS: Final = "http://www.topografix.com/GPX/1/1"
TPX_NS: Final = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"

_MAX_EPOCH: Final = 253_402_300_800.0  # 10000-01-01T00:00:00Z
_GPX_FIX: Final = {
    "none": None,
    "2d": FixQuality.GPS,
    "3d": FixQuality.GPS,
    "dgps": FixQuality.DGPS,
    "pps": FixQuality.PPS,
}
_QUALITY_GPX_FIX: Final = {FixQuality.DGPS: "dgps", FixQuality.PPS: "pps"}


class TrackFileError(InputError):
    """The file as a whole is not a usable track."""


class _Drop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Track:
    """Builds fixes from records, checking each and the time order between them."""

    def __init__(self, vehicle: str, source: str) -> None:
        self.vehicle = vehicle
        self.source = source
        self.fixes: list[Fix] = []
        self.dropped: Counter[str] = Counter()
        self._order: TimeOrder[Fix] = TimeOrder()

    def add(
        self,
        *,
        time: float,
        lat: float,
        lon: float,
        speed: float | None,
        course: float | None,
        hdop: float | None,
        quality: FixQuality,
        satellites: int | None,
    ) -> None:
        problem = position_problem(lat, lon, speed)
        if problem is not None:
            raise _Drop(problem)
        course = course_or_none(course)
        if hdop is not None and not plausible_hdop(hdop):
            hdop = None
        if satellites is not None and not plausible_satellites(satellites):
            satellites = None
        fix = Fix(
            vehicle=self.vehicle,
            time=time,
            lat=lat,
            lon=lon,
            speed=speed,
            course=course,
            hdop=hdop,
            quality=quality,
            source=self.source,
            satellites=satellites,
        )
        order = self._order
        problem = order.check(time, fix)
        if order.changed:
            self._settle_held()
        if problem is None:
            self.fixes.append(fix)
        elif problem != HELD:
            raise _Drop(problem)

    def _settle_held(self) -> None:
        released, discarded = self._order.take()
        self.fixes.extend(released)
        if discarded:
            self.dropped["time_jump"] += len(discarded)

    def result(self) -> tuple[list[Fix], Counter[str]]:
        """The fixes and the drop counters, at the end of the track: records still held
        after a jump in time are settled (:meth:`~gps.validity.TimeOrder.settle`)."""
        self._order.settle()
        self._settle_held()
        return self.fixes, self.dropped


# -- fields -------------------------------------------------------------


def _time(text: str | None) -> float:
    """ISO 8601 or epoch seconds as UTC epoch seconds."""
    text = (text or "").strip()
    if not text:
        raise _Drop("no_time")
    try:
        seconds = float(text)
    except ValueError:
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _Drop("bad_time") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        try:
            seconds = stamp.timestamp()
        except (OverflowError, ValueError):
            raise _Drop("bad_time") from None
    if not 0.0 <= seconds < _MAX_EPOCH:  # also NaN
        raise _Drop("bad_time")
    return seconds


def _required(text: str | None) -> float:
    value = _optional(text)
    if value is None:
        raise _Drop("bad_row")
    return value


def _optional(text: str | None) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise _Drop("bad_row") from None


def _integer(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise _Drop("bad_row") from None


def _quality(text: str | None) -> FixQuality:
    value = _integer(text)
    if value is None:
        return FixQuality.GPS
    if not 0 <= value <= 8:
        raise _Drop("bad_row")
    if value == 0:
        raise _Drop("no_fix")
    return FixQuality(value)


# -- CSV ----------------------------------------------------------------


def parse_csv(lines: Iterable[str], vehicle: str, source: str) -> tuple[list[Fix], Counter[str]]:
    """Fixes from the lines of a CSV track (header first) and the drop counters."""
    it = iter(lines)
    first = next(it, None)
    while first is not None and not first.strip():
        first = next(it, None)
    if first is None:
        raise TrackFileError(
            f"CSV track {source} is empty: it needs a header row naming at least the "
            f"columns {', '.join(CSV_REQUIRED)}"
        )
    first = first.removeprefix("\ufeff")
    delimiter = ";" if ";" in first and "," not in first else ","
    header = [name.strip().lower() for name in next(csv.reader([first], delimiter=delimiter))]
    missing = [name for name in CSV_REQUIRED if name not in header]
    if missing:
        raise TrackFileError(
            f"CSV track {source} lacks the column(s) {', '.join(missing)} in its header "
            f"{header!r}; the header must name {', '.join(CSV_REQUIRED)} (and may name "
            f"{', '.join(CSV_COLUMNS[len(CSV_REQUIRED) :])})"
        )
    track = _Track(vehicle, source)
    for row in _rows(it, delimiter, track.dropped):
        if not any(cell.strip() for cell in row) and len(row) <= 1:
            continue  # a blank line
        try:
            if len(row) != len(header):
                raise _Drop("bad_row")
            cells = dict(zip(header, row, strict=True))
            track.add(
                time=_time(cells["time"]),
                lat=_required(cells["lat"]),
                lon=_required(cells["lon"]),
                speed=_optional(cells.get("speed_mps")),
                course=_optional(cells.get("course_deg")),
                hdop=_optional(cells.get("hdop")),
                quality=_quality(cells.get("quality")),
                satellites=_integer(cells.get("satellites")),
            )
        except _Drop as drop:
            track.dropped[drop.reason] += 1
    return track.result()


def _rows(lines: Iterator[str], delimiter: str, dropped: Counter[str]) -> Iterator[list[str]]:
    """CSV rows; a row the csv module cannot split (an overlong field) is a bad row."""
    reader = csv.reader(lines, delimiter=delimiter)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            dropped["bad_row"] += 1
            continue
        yield row


def read_csv(
    path: str | Path, vehicle: str, source: str | None = None
) -> tuple[list[Fix], Counter[str]]:
    """Fixes from a CSV track file; the source name defaults to the file name."""
    path = _existing(path, "CSV track")
    # Undecodable bytes become U+FFFD: they spoil their row, not the file.
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        return parse_csv(f, vehicle, source or path.name)


def write_csv(
    fixes: Iterable[Fix], path: str | Path, *, time_format: Literal["iso", "epoch"] = "iso"
) -> None:
    """Write fixes as a CSV track that :func:`read_csv` reads back.

    Numbers are written in full (``repr``), so they read back exactly; ISO
    times carry microseconds (epoch seconds keep every bit of the float).
    """
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for fix in fixes:
            writer.writerow(
                [
                    _iso(fix.time) if time_format == "iso" else repr(fix.time),
                    repr(fix.lat),
                    repr(fix.lon),
                    _text(fix.speed),
                    _text(fix.course),
                    _text(fix.hdop),
                    str(int(fix.quality)),
                    "" if fix.satellites is None else str(fix.satellites),
                ]
            )


# -- GPX ----------------------------------------------------------------


def parse_gpx(data: bytes | IO[bytes], vehicle: str, source: str) -> tuple[list[Fix], Counter[str]]:
    """Fixes from a GPX document (bytes or a binary file) and the drop counters."""
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    track = _Track(vehicle, source)
    root_seen = False
    try:
        for event, elem in ET.iterparse(stream, events=("start", "end")):
            if not root_seen:
                root_seen = True
                if _local(elem.tag) != "gpx":
                    raise TrackFileError(
                        f"{source} is XML but not GPX: its root element is "
                        f"<{_local(elem.tag)}>, expected <gpx>; export the track as GPX"
                    )
            if event == "end" and _local(elem.tag) == "trkpt":
                try:
                    _trkpt(track, elem)
                except _Drop as drop:
                    track.dropped[drop.reason] += 1
                elem.clear()  # bounded memory on long tracks
    except ET.ParseError as exc:
        if not root_seen:
            raise TrackFileError(
                f"{source} is not a GPX file ({exc}); export the track as GPX 1.0 or 1.1"
            ) from None
        track.dropped["truncated"] += 1
        log.warning(
            "GPX track %s breaks off at %s: kept the %d points before it",
            source,
            exc,
            len(track.fixes),
        )
    return track.result()


def _trkpt(track: _Track, point: ET.Element) -> None:
    lat = _required(point.get("lat"))
    lon = _required(point.get("lon"))
    fields: dict[str, str] = {}
    for child in point.iter():
        if child is point:
            continue
        name = _local(child.tag).lower()
        if name not in fields and child.text is not None:
            fields[name] = child.text  # the first wins: GPX 1.0 fields come before extensions
    fix_type = fields.get("fix", "").strip().lower()
    quality = _GPX_FIX.get(fix_type, FixQuality.GPS)
    if quality is None:
        raise _Drop("no_fix")
    track.add(
        time=_time(fields.get("time")),
        lat=lat,
        lon=lon,
        speed=_optional(fields.get("speed")),
        course=_optional(fields.get("course")),
        hdop=_optional(fields.get("hdop")),
        quality=quality,
        satellites=_integer(fields.get("sat")),
    )


def read_gpx(
    path: str | Path, vehicle: str, source: str | None = None
) -> tuple[list[Fix], Counter[str]]:
    """Fixes from a GPX file; the source name defaults to the file name."""
    path = _existing(path, "GPX track")
    with path.open("rb") as f:
        return parse_gpx(f, vehicle, source or path.name)


def write_gpx(fixes: Iterable[Fix], path: str | Path, *, name: str | None = None) -> None:
    """Write fixes as one GPX 1.1 track that :func:`read_gpx` reads back.

    Speed and course go into Garmin's TrackPointExtension v2, which most tools
    read. GPX knows no RTK or dead-reckoning fix type: those read back as GPS.
    """
    ET.register_namespace("", GPX_NS)
    ET.register_namespace("gpxtpx", TPX_NS)
    root = ET.Element(f"{{{GPX_NS}}}gpx", {"version": "1.1", "creator": "preemption"})
    trk = ET.SubElement(root, f"{{{GPX_NS}}}trk")
    if name is not None:
        ET.SubElement(trk, f"{{{GPX_NS}}}name").text = name
    seg = ET.SubElement(trk, f"{{{GPX_NS}}}trkseg")
    for fix in fixes:
        pt = ET.SubElement(seg, f"{{{GPX_NS}}}trkpt", {"lat": repr(fix.lat), "lon": repr(fix.lon)})
        # Child order as the GPX 1.1 schema wants it: time, fix, sat, hdop, extensions.
        ET.SubElement(pt, f"{{{GPX_NS}}}time").text = _iso(fix.time)
        if fix.quality in _QUALITY_GPX_FIX:
            ET.SubElement(pt, f"{{{GPX_NS}}}fix").text = _QUALITY_GPX_FIX[fix.quality]
        if fix.satellites is not None:
            ET.SubElement(pt, f"{{{GPX_NS}}}sat").text = str(fix.satellites)
        if fix.hdop is not None:
            ET.SubElement(pt, f"{{{GPX_NS}}}hdop").text = repr(fix.hdop)
        if fix.speed is not None or fix.course is not None:
            ext = ET.SubElement(pt, f"{{{GPX_NS}}}extensions")
            tpx = ET.SubElement(ext, f"{{{TPX_NS}}}TrackPointExtension")
            if fix.speed is not None:
                ET.SubElement(tpx, f"{{{TPX_NS}}}speed").text = repr(fix.speed)
            if fix.course is not None:
                ET.SubElement(tpx, f"{{{TPX_NS}}}course").text = repr(fix.course)
    ET.indent(root)
    ET.ElementTree(root).write(Path(path), encoding="utf-8", xml_declaration=True)


# -- either -------------------------------------------------------------


def read_track(
    path: str | Path, vehicle: str, source: str | None = None
) -> tuple[list[Fix], Counter[str]]:
    """A GPX or CSV track, by the file's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gpx":
        return read_gpx(path, vehicle, source)
    if suffix == ".csv":
        return read_csv(path, vehicle, source)
    raise TrackFileError(
        f"track file {path} has the suffix {suffix or '(none)'!r}; "
        "name GPX files *.gpx and CSV files *.csv (NMEA logs go to gps.replay.NmeaReplay)"
    )


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a file")
    return path


def _local(tag: object) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _iso(time: float) -> str:
    stamp = dt.datetime.fromtimestamp(time, dt.UTC)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text(value: float | None) -> str:
    return "" if value is None else repr(value)
