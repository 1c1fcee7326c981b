"""GPX and CSV tracks: reading, writing, drops, and paced replay."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gps.files import (
    DROP_REASONS,
    TrackFileError,
    parse_csv,
    parse_gpx,
    read_csv,
    read_gpx,
    read_track,
    write_csv,
    write_gpx,
)
from gps.nmea import parse_nmea_file
from gps.replay import NmeaReplay, TrackReplay, pace, replay_track
from preemption.kernel.clock import SimClock
from preemption.kernel.model import Fix, FixQuality

DATA = Path(__file__).resolve().parent / "data"
TRACKS = DATA / "tracks"
LOGS = DATA / "nmea"
VEHICLE = "FW-OST-HLF1"
T0 = 1_764_331_200.0  # 2025-11-28T12:00:00Z
HEADER = "time,lat,lon,speed_mps,course_deg,hdop,quality,satellites"


def fix(
    t: float,
    lat: float = 49.48539,
    lon: float = 8.47613,
    speed: float | None = 13.5,
    course: float | None = 91.5,
    hdop: float | None = 0.9,
    quality: FixQuality = FixQuality.GPS,
    satellites: int | None = 9,
    source: str = "track",
) -> Fix:
    return Fix(VEHICLE, t, lat, lon, speed, course, hdop, quality, source, satellites)


SAMPLE = [
    fix(T0),
    fix(T0 + 0.5, 49.4855, 8.4763, speed=None, course=None, hdop=None, satellites=None),
    fix(T0 + 1.25, -33.8688, -151.2093, speed=0.0, course=0.0, quality=FixQuality.DGPS),
    fix(T0 + 2.125, 89.999999, 179.999999, speed=99.0, course=359.999, hdop=25.5),
]


def csv_text(*rows: str, header: str = HEADER) -> io.StringIO:
    return io.StringIO("\n".join([header, *rows]) + "\n", newline="")


def gpx_doc(*points: str, ns: str = "http://www.topografix.com/GPX/1/1") -> bytes:
    body = "".join(points)
    return (
        f'<?xml version="1.0"?><gpx version="1.1" xmlns="{ns}"><trk><trkseg>{body}'
        "</trkseg></trk></gpx>"
    ).encode()


def pt(
    time: str | None = "2025-11-28T12:00:00Z", lat: str = "49.5", lon: str = "8.5", **children: str
) -> str:
    inner = "" if time is None else f"<time>{time}</time>"
    inner += "".join(f"<{k}>{v}</{k}>" for k, v in children.items())
    return f'<trkpt lat="{lat}" lon="{lon}">{inner}</trkpt>'


# -- round trips --------------------------------------------------------------


@pytest.mark.parametrize("time_format", ["iso", "epoch"])
def test_csv_round_trip(tmp_path: Path, time_format: str) -> None:
    path = tmp_path / "run.csv"
    write_csv(SAMPLE, path, time_format=time_format)  # type: ignore[arg-type]
    fixes, dropped = read_csv(path, VEHICLE, "track")
    assert fixes == SAMPLE
    assert not dropped


def test_gpx_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.gpx"
    write_gpx(SAMPLE, path, name="Einsatzfahrt")
    fixes, dropped = read_gpx(path, VEHICLE, "track")
    assert fixes == SAMPLE
    assert not dropped
    assert b"gpxtpx:speed" in path.read_bytes()


def test_gpx_keeps_only_the_fix_types_it_knows(tmp_path: Path) -> None:
    path = tmp_path / "rtk.gpx"
    write_gpx([fix(T0, quality=FixQuality.RTK), fix(T0 + 1, quality=FixQuality.PPS)], path)
    fixes, _ = read_gpx(path, VEHICLE)
    assert [f.quality for f in fixes] == [FixQuality.GPS, FixQuality.PPS]
    assert {f.source for f in fixes} == {"rtk.gpx"}


DAY_MS = 86_400_000


@st.composite
def fixes_strategy(draw: st.DrawFn) -> list[Fix]:
    """Tracks at any cadence, regular or not, without a gap of a day or more."""
    t = draw(st.integers(0, 253_402_300_799_000 - 21 * DAY_MS))
    fixes = []
    for gap in draw(st.lists(st.integers(1, DAY_MS - 1), max_size=20)):
        t += gap
        fixes.append(
            fix(
                t / 1000,
                draw(st.floats(-90, 90, allow_nan=False).filter(lambda v: v != 0.0)),
                draw(st.floats(-180, 180, allow_nan=False)),
                draw(st.none() | st.floats(0, 100, allow_nan=False)),
                draw(st.none() | st.floats(0, 360, exclude_max=True, allow_nan=False)),
                draw(st.none() | st.floats(0.01, 1e6, allow_nan=False, allow_infinity=False)),
                draw(st.sampled_from([FixQuality.GPS, FixQuality.DGPS, FixQuality.PPS])),
                draw(st.none() | st.integers(0, 1000)),
            )
        )
    return fixes


@settings(max_examples=60)
@given(fixes_strategy())
def test_any_track_survives_both_formats(fixes: list[Fix]) -> None:
    # Whatever its cadence and its pauses: the time order holds a jump back
    # until the track confirms it, and releases it at the end of the file.
    for time_format in ("iso", "epoch"):
        text = io.StringIO(_csv_of(fixes, time_format), newline="")
        assert parse_csv(text, VEHICLE, "track") == (fixes, Counter())
    assert parse_gpx(_gpx_of(fixes), VEHICLE, "track") == (fixes, Counter())


def test_one_record_dated_years_ahead_costs_only_itself() -> None:
    # A typo in the year of one row used to make every later row time_backwards.
    track = [fix(T0 + i) for i in range(30)]
    typo = fix(T0 + 10 * 365 * 86_400, lat=48.0)
    jumped = Counter({"time_jump": 1})
    with_typo = [*track[:8], typo, *track[8:]]
    text = io.StringIO(_csv_of(with_typo, "iso"), newline="")
    assert parse_csv(text, VEHICLE, "track") == (track, jumped)
    assert parse_gpx(_gpx_of(with_typo), VEHICLE, "track") == (track, jumped)
    # At the end of the file too: nothing is that far ahead after a mere pause.
    assert parse_gpx(_gpx_of([*track, typo]), VEHICLE, "track") == (track, jumped)


def test_a_track_that_goes_on_after_a_pause_keeps_every_point() -> None:
    track = [fix(T0 + i) for i in range(10)] + [fix(T0 + 3600 + 5 * i) for i in range(10)]
    assert parse_gpx(_gpx_of(track), VEHICLE, "track") == (track, Counter())


def _csv_of(fixes: list[Fix], time_format: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.csv"
        write_csv(fixes, path, time_format=time_format)  # type: ignore[arg-type]
        return path.read_text()


def _gpx_of(fixes: list[Fix]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.gpx"
        write_gpx(fixes, path)
        return path.read_bytes()


# -- files as other tools write them -------------------------------------------


def test_a_gpx_1_0_track_reads_as_the_nmea_it_came_from() -> None:
    fixes, dropped = read_gpx(TRACKS / "sirfstarv.gpx", VEHICLE)
    expected, _ = parse_nmea_file(LOGS / "sirfstarv-nmea.log", VEHICLE)
    assert not dropped
    assert len(fixes) == len(expected) == 59
    for got, want in zip(fixes, expected, strict=True):
        assert got.time == want.time
        assert got.lat == pytest.approx(want.lat, abs=1e-9)
        assert got.lon == pytest.approx(want.lon, abs=1e-9)
        assert got.speed == pytest.approx(want.speed, abs=1e-3)
        assert got.course == pytest.approx(want.course, abs=1e-2)
        assert (got.hdop, got.satellites) == (want.hdop, want.satellites)
        assert got.source == "sirfstarv.gpx"


def test_a_semicolon_csv_with_bom_and_crlf_reads_as_the_nmea_it_came_from() -> None:
    fixes, dropped = read_track(TRACKS / "ublox-zed-f9p.csv", VEHICLE, "csv")
    expected, _ = parse_nmea_file(LOGS / "ublox-zed-f9p-nmea.log", VEHICLE)
    assert not dropped
    assert [f.time for f in fixes] == [f.time for f in expected]
    for got, want in zip(fixes, expected, strict=True):
        assert got.lat == pytest.approx(want.lat, abs=1e-9)
        assert got.lon == pytest.approx(want.lon, abs=1e-9)
        assert got.speed == pytest.approx(want.speed, abs=1e-4)
        assert got.course is None
        assert (got.hdop, got.satellites, got.source) == (want.hdop, want.satellites, "csv")


def test_gpx_speed_and_course_from_extensions_and_without_namespace() -> None:
    doc = (
        b'<gpx xmlns="http://www.topografix.com/GPX/1/1"'
        b' xmlns:gpxtpx="http://www.garmin.com/xmlschemas/TrackPointExtension/v2"'
        b' xmlns:osmand="https://osmand.net"><trk><trkseg>'
        b'<trkpt lat="49.5" lon="8.5"><time>2025-11-28T12:00:00Z</time><extensions>'
        b"<gpxtpx:TrackPointExtension><gpxtpx:speed>12.5</gpxtpx:speed>"
        b"<gpxtpx:course>270</gpxtpx:course></gpxtpx:TrackPointExtension></extensions></trkpt>"
        b"</trkseg></trkseg></trk></gpx>"
    )
    doc = doc.replace(b"</trkseg></trkseg>", b"</trkseg><trkseg>" + _osmand_point() + b"</trkseg>")
    fixes, dropped = parse_gpx(doc, VEHICLE, "ext")
    assert not dropped
    assert [(f.speed, f.course) for f in fixes] == [(12.5, 270.0), (3.0, None)]
    bare = b'<gpx><trk><trkseg><trkpt lat="1" lon="2"><time>2025-11-28T12:00:00Z</time>'
    bare += b"</trkpt></trkseg></trk></gpx>"
    [plain], _ = parse_gpx(bare, VEHICLE, "bare")
    assert (plain.lat, plain.lon, plain.time, plain.quality) == (1.0, 2.0, T0, FixQuality.GPS)


def _osmand_point() -> bytes:
    return (
        b'<trkpt lat="49.6" lon="8.6"><time>2025-11-28T12:00:01Z</time>'
        b"<extensions><osmand:speed>3</osmand:speed></extensions></trkpt>"
    )


def test_csv_times_iso_with_offset_naive_and_epoch() -> None:
    fixes, dropped = parse_csv(
        csv_text(
            "2025-11-28T13:00:00+01:00,49.5,8.5,,,,,",
            "2025-11-28 12:00:01,49.5,8.5,,,,,",
            f"{T0 + 2},49.5,8.5,,,,,",
            "20251128T120003Z,49.5,8.5,,,,,",
        ),
        VEHICLE,
        "t",
    )
    assert not dropped
    assert [f.time - T0 for f in fixes] == [0.0, 1.0, 2.0, 3.0]


def test_csv_extra_columns_any_order_and_case_and_blank_lines() -> None:
    text = io.StringIO("\n LON ,Note,Lat,TIME\n\n8.5,hello,49.5,2025-11-28T12:00:00Z\n\n")
    [only], dropped = parse_csv(text, VEHICLE, "t")
    assert (only.lat, only.lon, only.time, only.speed, only.hdop) == (49.5, 8.5, T0, None, None)
    assert not dropped


# -- drops ----------------------------------------------------------------------

GOOD = "2025-11-28T12:00:05Z,49.5,8.5,10,90,1.2,1,8"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2025-11-28T12:00:06Z,49.5,8.5", "bad_row"),  # too few fields
        ("2025-11-28T12:00:06Z,49.5,8.5,10,90,1.2,1,8,extra", "bad_row"),
        ("2025-11-28T12:00:06Z,,8.5,10,90,1.2,1,8", "bad_row"),
        ("2025-11-28T12:00:06Z,49.5,east,10,90,1.2,1,8", "bad_row"),
        ("2025-11-28T12:00:06Z,49.5,8.5,fast,90,1.2,1,8", "bad_row"),
        ("2025-11-28T12:00:06Z,49.5,8.5,10,90,1.2,9,8", "bad_row"),  # quality beyond 8
        ("2025-11-28T12:00:06Z,49.5,8.5,10,90,1.2,1,8.5", "bad_row"),
        (",49.5,8.5,10,90,1.2,1,8", "no_time"),
        ("noon,49.5,8.5,10,90,1.2,1,8", "bad_time"),
        ("-1,49.5,8.5,10,90,1.2,1,8", "bad_time"),
        ("nan,49.5,8.5,10,90,1.2,1,8", "bad_time"),
        ("1e20,49.5,8.5,10,90,1.2,1,8", "bad_time"),
        ("2025-11-28T12:00:06Z,49.5,8.5,10,90,1.2,0,8", "no_fix"),
        ("2025-11-28T12:00:06Z,90.5,8.5,10,90,1.2,1,8", "impossible_coordinates"),
        ("2025-11-28T12:00:06Z,49.5,-181,10,90,1.2,1,8", "impossible_coordinates"),
        ("2025-11-28T12:00:06Z,0,0,10,90,1.2,1,8", "impossible_coordinates"),
        ("2025-11-28T12:00:06Z,nan,8.5,10,90,1.2,1,8", "impossible_coordinates"),
        ("2025-11-28T12:00:06Z,49.5,8.5,-1,90,1.2,1,8", "impossible_speed"),
        ("2025-11-28T12:00:06Z,49.5,8.5,101,90,1.2,1,8", "impossible_speed"),
        ("2025-11-28T12:00:06Z,49.5,8.5,inf,90,1.2,1,8", "impossible_speed"),
        ("2025-11-28T12:00:05Z,49.6,8.5,10,90,1.2,1,8", "duplicate_epoch"),
        ("2025-11-28T12:00:04Z,49.6,8.5,10,90,1.2,1,8", "time_backwards"),
        ('2025-11-28T12:00:06Z,"49.5' + "9" * 200_000 + '",8.5,10,90,1.2,1,8', "bad_row"),
    ],
)
def test_every_csv_drop_reason(row: str, reason: str) -> None:
    assert reason in DROP_REASONS
    fixes, dropped = parse_csv(
        csv_text(GOOD, row, "2025-11-28T12:00:07Z,49.5,8.5,,,,,"), VEHICLE, "t"
    )
    assert dropped == {reason: 1}
    assert [f.time - T0 for f in fixes] == [5.0, 7.0]  # the rows around it survive


def test_out_of_range_course_hdop_and_satellites_cost_only_themselves() -> None:
    [f] = parse_csv(csv_text("2025-11-28T12:00:00Z,49.5,8.5,1,361,0,1,5000"), VEHICLE, "t")[0]
    assert (f.course, f.hdop, f.satellites, f.speed) == (None, None, None, 1.0)
    [g] = parse_csv(csv_text("2025-11-28T12:00:00Z,49.5,8.5,1,360,-2,1,"), VEHICLE, "t")[0]
    assert (g.course, g.hdop) == (0.0, None)


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        ('<trkpt lat="49.5"><time>2025-11-28T12:00:06Z</time></trkpt>', "bad_row"),
        (pt("2025-11-28T12:00:06Z", lat="north"), "bad_row"),
        (pt("2025-11-28T12:00:06Z", speed="fast"), "bad_row"),
        (pt("2025-11-28T12:00:06Z", sat="many"), "bad_row"),
        (pt(None), "no_time"),
        (pt("tomorrow"), "bad_time"),
        (pt("2025-11-28T12:00:06Z", fix="none"), "no_fix"),
        (pt("2025-11-28T12:00:06Z", lat="-95"), "impossible_coordinates"),
        (pt("2025-11-28T12:00:06Z", lat="0", lon="0"), "impossible_coordinates"),
        (pt("2025-11-28T12:00:06Z", speed="-3"), "impossible_speed"),
        (pt("2025-11-28T12:00:05Z"), "duplicate_epoch"),
        (pt("2025-11-28T12:00:01Z"), "time_backwards"),
    ],
)
def test_every_gpx_drop_reason(point: str, reason: str) -> None:
    assert reason in DROP_REASONS
    doc = gpx_doc(pt("2025-11-28T12:00:05Z"), point, pt("2025-11-28T12:00:07Z", fix="dgps"))
    fixes, dropped = parse_gpx(doc, VEHICLE, "t")
    assert dropped == {reason: 1}
    assert [f.time - T0 for f in fixes] == [5.0, 7.0]
    assert fixes[1].quality == FixQuality.DGPS


def test_a_truncated_gpx_keeps_the_points_before_the_cut(caplog: pytest.LogCaptureFixture) -> None:
    doc = gpx_doc(
        pt("2025-11-28T12:00:00Z"), pt("2025-11-28T12:00:01Z"), pt("2025-11-28T12:00:02Z")
    )
    cut = doc[: doc.index(b"12:00:02")]
    fixes, dropped = parse_gpx(cut, VEHICLE, "logger.gpx")
    assert [f.time - T0 for f in fixes] == [0.0, 1.0]
    assert dropped == {"truncated": 1}
    assert "logger.gpx" in caplog.text


# -- files that are not tracks ----------------------------------------------------


def test_unusable_files_raise_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TrackFileError, match=r"empty\.csv is empty.*time, lat, lon"):
        parse_csv(io.StringIO("\n\n"), VEHICLE, "empty.csv")
    with pytest.raises(TrackFileError, match=r"x\.csv lacks the column\(s\) lon"):
        parse_csv(io.StringIO("time,lat,long\n"), VEHICLE, "x.csv")
    with pytest.raises(TrackFileError, match=r"kml is XML but not GPX.*<kml>"):
        parse_gpx(b"<kml><Placemark/></kml>", VEHICLE, "kml")
    with pytest.raises(TrackFileError, match=r"junk is not a GPX file"):
        parse_gpx(b"\x00\x01 not xml", VEHICLE, "junk")
    with pytest.raises(TrackFileError, match=r"suffix '\.kml'"):
        read_track(tmp_path / "route.kml", VEHICLE)
    with pytest.raises(FileNotFoundError, match=r"missing\.gpx"):
        read_track(tmp_path / "missing.gpx", VEHICLE)


def test_undecodable_bytes_spoil_their_row_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        b"time,lat,lon,note\n2025-11-28T12:00:00Z,49.5,8.5,Stra\xdfe\n"
        b"2025-11-28T12:00:01Z,49\xff.5,8.5,\n"
    )
    fixes, dropped = read_csv(path, VEHICLE)
    assert len(fixes) == 1
    assert dropped == {"bad_row": 1}


cell = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "0", "-0", "nan", "inf", "1e400", "49.5", "8.5", "2025-11-28T12:00:00Z", "1764331200"]
)


@settings(max_examples=100)
@given(st.lists(st.lists(cell, max_size=10), max_size=15))
def test_arbitrary_csv_rows_never_raise(rows: list[list[str]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)  # "\r\n" line ends: a lone "\r" in a field gets quoted
    writer.writerow(HEADER.split(","))
    writer.writerows(rows)
    fixes, dropped = parse_csv(io.StringIO(out.getvalue(), newline=""), VEHICLE, "fuzz")
    assert set(dropped) <= DROP_REASONS
    records = [r for r in rows if len(r) > 1 or (r and r[0].strip())]
    assert len(fixes) + dropped.total() == len(records)
    for f in fixes:
        assert -90.0 <= f.lat <= 90.0
        assert -180.0 <= f.lon <= 180.0
        assert math.isfinite(f.time)


@settings(max_examples=100)
@given(st.text(max_size=400))
def test_arbitrary_text_after_a_header_never_raises(text: str) -> None:
    fixes, dropped = parse_csv(io.StringIO(HEADER + "\n" + text, newline=""), VEHICLE, "fuzz")
    assert set(dropped) <= DROP_REASONS
    assert all(math.isfinite(f.time) for f in fixes)


# -- paced replay -------------------------------------------------------------------


async def timed(clock: SimClock, fixes: AsyncIterator[Fix]) -> list[tuple[float, Fix]]:
    start = clock.monotonic()
    return [(clock.monotonic() - start, f) async for f in fixes]


@pytest.mark.parametrize(("rate", "elapsed"), [(1.0, 58.0), (10.0, 5.8), (None, 0.0)])
def test_a_track_replays_at_its_own_pace(rate: float | None, elapsed: float) -> None:
    clock = SimClock()
    out = clock.run(timed(clock, replay_track(TRACKS / "sirfstarv.gpx", VEHICLE, clock, rate)))
    assert len(out) == 59
    first = out[0][1].time
    for at, f in out:
        assert at == pytest.approx((f.time - first) / (rate or math.inf), abs=1e-9)
    assert clock.monotonic() == pytest.approx(elapsed)


def test_track_replay_exposes_what_was_dropped(tmp_path: Path) -> None:
    path = tmp_path / "drive.csv"
    path.write_text(f"{HEADER}\n{GOOD}\nbad\n")
    clock = SimClock()
    replay = TrackReplay.from_file(path, VEHICLE, clock, rate=2.0)
    out = clock.run(timed(clock, aiter(replay)))
    assert [f.source for _, f in out] == ["drive.csv"]
    assert replay.dropped == {"bad_row": 1}
    with pytest.raises(ValueError, match="rate"):
        TrackReplay.from_file(path, VEHICLE, clock, rate=0.0)


def test_nmea_and_track_replay_pace_alike() -> None:
    # The same fixes, once decoded from NMEA and once from a list, come out at the same moments.
    clock = SimClock()
    nmea = clock.run(
        timed(clock, aiter(NmeaReplay.from_file(LOGS / "sirfstarv-nmea.log", VEHICLE, clock, 3.0)))
    )
    fixes = [f for _, f in nmea]
    clock2 = SimClock()
    listed = clock2.run(timed(clock2, pace(fixes, clock2, 3.0)))
    assert [at for at, _ in listed] == pytest.approx([at for at, _ in nmea])
