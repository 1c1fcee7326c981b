"""The NMEA decoder: epochs, units, drops, framing, and real receivers' logs."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import statistics
import tracemalloc
from collections import Counter
from functools import reduce
from operator import xor
from pathlib import Path

import pynmea2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gps.nmea import (
    DROP_REASONS,
    KNOT_MS,
    MAX_SENTENCE_LEN,
    MAX_SPEED_MS,
    NOT_SENTENCES,
    NmeaDecoder,
    _fields,
    parse_nmea_file,
)
from preemption.kernel.clock import SimClock
from preemption.kernel.model import Fix, FixQuality

LOGS = Path(__file__).resolve().parent / "data" / "nmea"
ALL_LOGS = sorted(p.name for p in LOGS.glob("*.log"))
BINARY_LOGS = ["bu303-moving.log", "garmin18x-bin.log", "trimble-lassen_iq-3dfix.log"]
DAY = dt.date(2025, 11, 28)
DAY_START = 1_764_288_000.0  # DAY at 00:00 UTC


def nmea(body: str) -> str:
    """A sentence with its checksum, as a receiver would send it."""
    return f"${body}*{reduce(xor, body.encode(), 0):02X}"


def stream(*bodies: str, end: str = "\r\n") -> bytes:
    return "".join(nmea(b) + end for b in bodies).encode()


def decode(data: bytes, **kwargs: object) -> tuple[list[Fix], NmeaDecoder]:
    decoder = NmeaDecoder("engine-1", "test", **kwargs)  # type: ignore[arg-type]
    fixes = decoder.feed(data)
    fixes += decoder.flush()
    return fixes, decoder


def assert_valid(fix: Fix) -> None:
    assert isinstance(fix.quality, FixQuality)
    assert math.isfinite(fix.time)
    assert math.isfinite(fix.lat)
    assert -90.0 <= fix.lat <= 90.0
    assert math.isfinite(fix.lon)
    assert -180.0 <= fix.lon <= 180.0
    assert (fix.lat, fix.lon) != (0.0, 0.0)
    assert fix.speed is None or (math.isfinite(fix.speed) and 0.0 <= fix.speed <= MAX_SPEED_MS)
    assert fix.course is None or 0.0 <= fix.course < 360.0
    assert fix.hdop is None or (math.isfinite(fix.hdop) and fix.hdop > 0.0)
    assert fix.satellites is None or fix.satellites >= 0


def assert_accounted(decoder: NmeaDecoder) -> None:
    """Every sentence went into a fix, is held, or is counted under a known reason
    (after flush)."""
    assert set(decoder.dropped) <= DROP_REASONS
    counted = sum(n for reason, n in decoder.dropped.items() if reason not in NOT_SENTENCES)
    assert decoder.sentences == decoder.used + decoder.held + counted


# One second of a typical receiver, 2025-11-28 12:00:00 UTC, near Mannheim.
RMC = "GPRMC,120000.00,A,4929.1234,N,00828.5678,E,10.0,45.5,281125,,,A"
GGA = "GPGGA,120000.00,4929.12345,N,00828.56789,E,1,09,0.9,100.0,M,47.0,M,,"
GSA = "GPGSA,A,3,01,02,03,04,05,06,07,08,09,,,,1.8,0.9,1.5"
VTG = "GPVTG,45.5,T,,M,10.0,N,18.5,K,A"
NOON = DAY_START + 12 * 3600


def second(t: str, lat: str = "4929.1234") -> tuple[str, str]:
    """RMC + GGA for time of day ``t`` on DAY."""
    return (
        f"GPRMC,{t},A,{lat},N,00828.5678,E,10.0,45.5,281125,,,A",
        f"GPGGA,{t},{lat},N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,",
    )


# -- epochs and units ------------------------------------------------------


def test_one_second_of_sentences_merges_into_one_fix() -> None:
    fixes, decoder = decode(stream(RMC, VTG, GGA, GSA))
    assert len(fixes) == 1
    fix = fixes[0]
    assert fix.vehicle == "engine-1"
    assert fix.source == "test"
    assert fix.time == NOON
    # Position from GGA, which has more digits than this RMC.
    assert fix.lat == pytest.approx(49 + 29.12345 / 60, abs=1e-12)
    assert fix.lon == pytest.approx(8 + 28.56789 / 60, abs=1e-12)
    assert fix.speed == pytest.approx(10.0 * 0.514444, rel=1e-5)
    assert fix.course == 45.5
    assert fix.hdop == 0.9
    assert fix.satellites == 9
    assert fix.quality is FixQuality.GPS
    assert decoder.used == 4
    assert_accounted(decoder)
    # Whatever the order, GGA's position wins over RMC's.
    assert decode(stream(GGA, GSA, RMC, VTG))[0] == fixes


def test_epoch_is_emitted_when_the_next_second_starts() -> None:
    decoder = NmeaDecoder("e", "s")
    assert decoder.feed(stream(*second("120000.00"))) == []
    emitted = decoder.feed(stream(*second("120001.00")))
    # The first epoch ends when the next begins; that teaches the decoder the cycle
    # (RMC + GGA), so the second is emitted the moment its GGA completes it.
    assert [f.time for f in emitted] == [NOON, NOON + 1]
    assert decoder.flush() == []


def test_complete_epochs_are_emitted_without_waiting_for_the_next() -> None:
    decoder = NmeaDecoder("e", "s")
    # VTG and GSA carry no time: they join the open epoch.
    assert decoder.feed(stream(*second("120000.00"), VTG, GSA)) == []
    rmc1, gga1 = second("120001.00")
    # The next second's RMC ends the first epoch: cycle learned = RMC, GGA, VTG, GSA.
    assert [f.time for f in decoder.feed(stream(rmc1, gga1, VTG))] == [NOON]
    assert [f.time for f in decoder.feed(stream(GSA))] == [NOON + 1]


def test_a_sentence_after_an_early_emission_widens_the_learned_cycle() -> None:
    decoder = NmeaDecoder("e", "s")
    decoder.feed(stream(*second("120000.00"), *second("120001.00")))  # cycle: RMC + GGA
    assert [f.time for f in decoder.feed(stream(*second("120002.00")))] == [NOON + 2]
    assert decoder.feed(stream(VTG)) == []  # came late: dropped, and now expected
    assert decoder.dropped["no_epoch"] == 1
    assert decoder.feed(stream(*second("120003.00"))) == []
    assert [f.time for f in decoder.feed(stream(VTG))] == [NOON + 3]
    assert_accounted(decoder)


def test_fractional_seconds_are_kept() -> None:
    fixes, _ = decode(stream(*second("120000.25"), *second("120000.75")))
    assert [f.time - NOON for f in fixes] == [0.25, 0.75]


def test_repeated_field_text_decodes_like_new_text() -> None:
    # The decoder remembers the last time and position text it converted: the
    # hemispheres are part of the position, and a bad field is never remembered.
    east = "GPRMC,{t},A,4929.1234,{ns},00828.5678,{ew},10.0,45.5,281125,,,A"
    fixes, decoder = decode(
        stream(
            east.format(t="120000.00", ns="N", ew="E"),
            east.format(t="120001.00", ns="S", ew="W"),
            east.format(t="120002.00", ns="S", ew="Q"),
            east.format(t="120003.00", ns="S", ew="W"),
            east.format(t="120003.00", ns="S", ew="W").replace("120003.00", "12x003.00"),
        )
    )
    assert [f.time - NOON for f in fixes] == [0.0, 1.0, 3.0]
    assert [c for f in fixes for c in (f.lat, f.lon)] == pytest.approx(
        [49.48539, 8.47613, -49.48539, -8.47613, -49.48539, -8.47613]
    )
    assert decoder.dropped == Counter(parse_error=2)


def test_hdop_and_satellites_from_gsa_when_there_is_no_gga() -> None:
    second_gsa = "GNGSA,A,3,65,66,,,,,,,,,,,1.8,1.1,1.5"
    fixes, _ = decode(stream(RMC, "GNGSA,A,3,01,02,03,,,,,,,,,,1.8,1.1,1.5", second_gsa))
    assert fixes[0].hdop == 1.1
    assert fixes[0].satellites == 5  # summed over the constellations' GSAs
    assert fixes[0].lat == pytest.approx(49 + 29.1234 / 60)


def test_knots_and_kmh_become_metres_per_second() -> None:
    assert pytest.approx(0.514444, rel=1e-6) == KNOT_MS
    rmc_no_speed = "GPRMC,120000.00,A,4929.1234,N,00828.5678,E,,,281125,,,A"
    fixes, _ = decode(stream(rmc_no_speed, "GPVTG,90.0,T,,M,,N,36.0,K,A"))
    assert fixes[0].speed == pytest.approx(10.0)
    assert fixes[0].course == 90.0
    fixes, _ = decode(stream(rmc_no_speed, "GPVTG,,T,,M,1.0,N,1.852,K,A"))
    assert fixes[0].speed == pytest.approx(1852 / 3600)
    assert fixes[0].course is None


def test_course_360_is_north_and_a_bad_course_is_left_out() -> None:
    rmc = "GPRMC,120000.00,A,4929.1234,N,00828.5678,E,1.0,{},281125,,,A"
    assert decode(stream(rmc.format("360.0")))[0][0].course == 0.0
    assert decode(stream(rmc.format("400.0")))[0][0].course is None


@pytest.mark.parametrize(
    ("mode", "quality"),
    [("A", FixQuality.GPS), ("D", FixQuality.DGPS), ("R", FixQuality.RTK), ("", FixQuality.GPS)],
)
def test_quality_from_rmc_mode_without_gga(mode: str, quality: FixQuality) -> None:
    rmc = f"GPRMC,120000.00,A,4929.1234,N,00828.5678,E,1.0,10.0,281125,,,{mode}"
    assert decode(stream(rmc))[0][0].quality is quality


def test_gns_and_gll_give_positions_and_any_talker_works() -> None:
    gns = "GNGNS,120000.00,4929.1234,N,00828.5678,E,ANR,12,0.8,100.0,47.0,,"
    fixes, _ = decode(stream(gns, "BDGLL,4929.1234,N,00828.5678,E,120000.00,A,A"), date_hint=DAY)
    assert fixes[0].quality is FixQuality.GPS  # first constellation with a fix: A
    assert fixes[0].satellites == 12
    assert fixes[0].hdop == 0.8
    fixes, _ = decode(stream("GAGLL,4929.1234,S,00828.5678,W,120000.00,A,D"), date_hint=DAY)
    assert (fixes[0].lat < 0, fixes[0].lon < 0, fixes[0].quality) == (True, True, FixQuality.DGPS)


# -- dates and midnight ----------------------------------------------------


def test_gga_only_epochs_take_the_last_rmc_date_and_roll_over_at_midnight() -> None:
    data = stream(
        "GPRMC,235958.00,A,4929.1234,N,00828.5678,E,0.0,,281125,,,A",
        "GPGGA,235959.00,4929.1234,N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,",
        "GPGGA,000000.00,4929.1234,N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,",
        "GPGGA,000001.00,4929.1234,N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,",
    )
    fixes, decoder = decode(data)
    next_day = DAY_START + 86_400
    assert [f.time for f in fixes] == [next_day - 2, next_day - 1, next_day, next_day + 1]
    assert decoder.dropped == Counter()


def test_an_earlier_time_of_day_away_from_midnight_is_not_a_new_day() -> None:
    # 14:00 then 01:00 without RMC: a corrupt time or a long outage, not tomorrow.
    gga = "GPGGA,{},4929.1234,N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,"
    data = stream(*second("140000.00"), gga.format("010000.00"), *second("140001.00"))
    fixes, decoder = decode(data)
    assert [f.time - DAY_START for f in fixes] == [14 * 3600, 14 * 3600 + 1]
    assert decoder.dropped == Counter({"time_backwards": 1})


def test_rmc_date_of_the_new_day_is_used_for_its_own_epoch() -> None:
    data = stream(
        *second("235959.00"),
        "GPGGA,000000.00,4929.1234,N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,",
        "GPRMC,000000.00,A,4929.1234,N,00828.5678,E,10.0,45.5,291125,,,A",
    )
    fixes, _ = decode(data)
    assert [f.time for f in fixes] == [DAY_START + 86_399, DAY_START + 86_400]


def test_without_any_date_epochs_are_dropped_unless_a_hint_is_given() -> None:
    data = stream(GGA, GSA)
    fixes, decoder = decode(data)
    assert fixes == []
    assert decoder.dropped == Counter({"no_date": 2})
    fixes, decoder = decode(data, date_hint=DAY)
    assert [f.time for f in fixes] == [NOON]
    # Once an RMC arrives its date wins over the hint.
    fixes, _ = decode(stream(*second("120000.00")), date_hint=dt.date(2000, 1, 1))
    assert fixes[0].time == NOON


# -- drop reasons ------------------------------------------------------------


def flip(sentence: str) -> str:
    """Corrupt one character while keeping the old checksum."""
    return sentence.replace("4929", "4928", 1)


DROPS: list[tuple[str, bytes, str]] = [
    ("bad_checksum", (flip(nmea(RMC)) + "\r\n").encode(), "bad_checksum"),
    ("missing_checksum", f"${RMC}\r\n".encode(), "bad_checksum"),
    ("bad_hex", f"${RMC}*ZZ\r\n".encode(), "bad_checksum"),
    ("parse_error_time", stream(RMC.replace("120000.00", "12x000.00")), "parse_error"),
    ("parse_error_lat", stream(RMC.replace("4929.1234", "49x9.1234")), "parse_error"),
    ("parse_error_hemisphere", stream(RMC.replace(",N,", ",Q,")), "parse_error"),
    ("parse_error_no_fields", stream("GPGGA"), "parse_error"),
    ("ignored_gsv", stream("GPGSV,1,1,01,05,40,083,46"), "ignored"),
    ("ignored_proprietary", stream("PUBX,00,120000.00"), "ignored"),
    ("ignored_zda", stream("GPZDA,120000.00,28,11,2025,00,00"), "ignored"),
    ("ignored_ais", b"!AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0*26\r\n", "ignored"),
    ("void_rmc", stream(RMC.replace(",A,4929", ",V,4929")), "void_status"),
    ("void_gll", stream("GPGLL,4929.1234,N,00828.5678,E,120000.00,V,N"), "void_status"),
    ("no_fix_gga", stream(GGA.replace(",E,1,09", ",E,0,00")), "no_fix"),
    ("no_fix_gsa", stream("GPGSA,A,1,,,,,,,,,,,,,99.9,99.9,99.9"), "no_fix"),
    ("no_fix_gns", stream("GNGNS,120000.00,,,,,NNN,00,,,,,"), "no_fix"),
    ("no_fix_rmc_mode", stream(RMC[:-1] + "N"), "no_fix"),
    ("no_position", stream("GPRMC,120000.00,A,,,,,0.0,,281125,,,A"), "no_position"),
    ("no_epoch", stream(VTG), "no_epoch"),
    ("no_date", stream(GGA), "no_date"),
    ("lat_out_of_range", stream(RMC.replace("4929.1234", "9129.1234")), "impossible_coordinates"),
    ("lon_out_of_range", stream(RMC.replace("00828.5678", "18128.5678")), "impossible_coordinates"),
    ("minutes_60", stream(RMC.replace("4929.1234", "4960.0000")), "impossible_coordinates"),
    (
        "null_island",
        stream(RMC.replace("4929.1234", "0000.0000").replace("00828.5678", "00000.0000")),
        "impossible_coordinates",
    ),
    ("speed_too_high", stream(RMC.replace(",10.0,", ",300.0,")), "impossible_speed"),
    ("speed_negative", stream(RMC.replace(",10.0,", ",-1.0,")), "impossible_speed"),
    ("speed_nan", stream(RMC.replace(",10.0,", ",nan,")), "impossible_speed"),
    ("speed_vtg_inf", stream(VTG.replace("10.0,N", "inf,N")), "impossible_speed"),
    ("too_long", stream(RMC[:-1] + "A," + "9" * MAX_SENTENCE_LEN), "line_too_long"),
    ("garbage", b"\xb5b\x01\x07\x5c\x00junk\x00\r\n", "garbage"),
    ("comment", b"# Name: some receiver\r\n", "comment"),
]


@pytest.mark.parametrize(("data", "reason"), [d[1:] for d in DROPS], ids=[d[0] for d in DROPS])
def test_every_drop_reason(data: bytes, reason: str) -> None:
    fixes, decoder = decode(data)
    assert fixes == []
    assert decoder.dropped[reason] >= 1, decoder.dropped
    assert_accounted(decoder)


def test_all_reasons_are_exercised() -> None:
    # The time order's reasons have their own tests below.
    exercised = {d[2] for d in DROPS} | {
        "time_backwards",
        "duplicate_epoch",
        "time_jump",
        "from_future",
    }
    assert exercised == DROP_REASONS


def test_time_backwards_and_duplicate_epochs_are_dropped() -> None:
    data = stream(*second("120002.00"), *second("120001.00"), *second("120003.00"))
    fixes, decoder = decode(data)
    assert [f.time - NOON for f in fixes] == [2, 3]
    assert decoder.dropped == Counter({"time_backwards": 2})

    decoder = NmeaDecoder("e", "s")
    decoder.feed(stream(*second("120000.00")))
    assert len(decoder.flush()) == 1
    decoder.feed(stream(*second("120000.00")))  # the same epoch again, e.g. a reconnect
    assert decoder.flush() == []
    assert decoder.dropped == Counter({"duplicate_epoch": 2})


# -- one outlier in time ----------------------------------------------------


def epoch_at(t: float, lat: str = "4929.1234", *, gga: bool = True) -> tuple[str, ...]:
    """RMC (+ GGA) of an epoch at epoch seconds ``t``, to the hundredth of a second."""
    stamp = dt.datetime.fromtimestamp(round(t, 2), dt.UTC)
    tod = f"{stamp:%H%M%S}.{stamp.microsecond // 10_000:02d}"
    rmc = f"GPRMC,{tod},A,{lat},N,00828.5678,E,10.0,45.5,{stamp:%d%m%y},,,A"
    if not gga:
        return (rmc,)
    return rmc, f"GPGGA,{tod},{lat},N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,"


def run_at(start: float, n: int, cycle: float = 1.0) -> list[tuple[str, ...]]:
    return [epoch_at(start + i * cycle) for i in range(n)]


def finish(data: bytes, **kwargs: object) -> tuple[list[Fix], NmeaDecoder]:
    """Decode to the end of the stream, as parse_nmea_file does."""
    decoder = NmeaDecoder("engine-1", "test", **kwargs)  # type: ignore[arg-type]
    fixes = decoder.feed(data)
    fixes += decoder.finish()
    return fixes, decoder


YEARS_AHEAD = dt.datetime(2031, 6, 1, 8, 0, 0, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    "when", [YEARS_AHEAD, NOON + 5 + 5.0], ids=["years_ahead", "five_seconds_ahead"]
)
def test_one_epoch_ahead_of_the_stream_is_dropped_and_the_stream_goes_on(when: float) -> None:
    # The hostile findings: one checksum-valid epoch dated years ahead (or a
    # position 5 s in the future) became the time every later epoch had to beat.
    good = run_at(NOON, 40)
    data = stream(*itertools.chain(*good[:6], epoch_at(when, "4800.0000"), *good[6:]))
    fixes, decoder = finish(data)
    assert [f.time for f in fixes] == [NOON + i for i in range(40)]
    assert all(f.lat > 49 for f in fixes)  # the outlier's position is nowhere
    assert decoder.dropped == Counter({"time_jump": 2})  # its RMC and GGA, nothing else
    assert decoder.resyncs == 0
    assert_accounted(decoder)


def test_an_outlier_in_a_real_log_costs_only_itself() -> None:
    lines = (LOGS / "sirfstarv-nmea.log").read_bytes().splitlines(keepends=True)
    # After the RMC that ends the tenth epoch (GPGGA, GLGGA, 2 GNGSA, GNRMC).
    at = [i for i, line in enumerate(lines) if line.startswith(b"$GNRMC")][10] + 1
    bad = stream(epoch_at(YEARS_AHEAD, gga=False)[0])
    expected, expected_drops = parse_nmea_file(LOGS / "sirfstarv-nmea.log", "engine-1", "test")
    fixes, decoder = finish(b"".join([*lines[:at], bad, *lines[at:]]))
    assert fixes == expected
    assert decoder.dropped == expected_drops + Counter({"time_jump": 1})


def test_the_date_of_a_dropped_epoch_does_not_date_later_gga_only_epochs() -> None:
    gga = "GPGGA,{},4929.1234,N,00828.5678,E,1,09,0.9,100.0,M,47.0,M,,"
    data = stream(
        *run_at(NOON, 3)[0],
        *run_at(NOON + 1, 2)[0],
        *run_at(NOON + 2, 1)[0],
        epoch_at(YEARS_AHEAD, gga=False)[0],  # an RMC with a date years ahead
        *(gga.format(f"1200{s:02d}.00") for s in range(3, 9)),
    )
    fixes, decoder = finish(data)
    assert [f.time - NOON for f in fixes] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert decoder.dropped == Counter({"time_jump": 1})


def test_a_receiver_that_really_jumped_is_followed_after_three_epochs() -> None:
    decoder = NmeaDecoder("e", "s")
    out = [decoder.feed(stream(*e)) for e in run_at(NOON, 5) + run_at(NOON + 600, 5)]
    # Before the jump each epoch comes out as it completes (from the second on,
    # once the cycle is learned); the first two after it are held until a third
    # continues their cadence, then all three come out at once.
    assert [len(fixes) for fixes in out] == [0, 2, 1, 1, 1, 0, 0, 3, 1, 1]
    fixes = [f for fixes in out for f in fixes] + decoder.finish()
    assert [f.time - NOON for f in fixes] == [0, 1, 2, 3, 4, 600, 601, 602, 603, 604]
    assert decoder.resyncs == 1
    assert decoder.dropped == Counter()


def test_a_log_paused_between_two_trips_decodes_fully() -> None:
    # This u-blox log has 18 minutes without a fix between its two parts.
    fixes, dropped = parse_nmea_file(LOGS / "ublox-lea-5h.log", "e")
    assert len(fixes) == 20
    assert fixes[-1].time - fixes[0].time > 1000
    assert all(a.time < b.time for a, b in itertools.pairwise(fixes))
    assert "time_jump" not in dropped


def test_held_epochs_survive_a_flush_and_are_settled_at_the_end() -> None:
    decoder = NmeaDecoder("e", "s")
    assert len(decoder.feed(stream(*itertools.chain(*run_at(NOON, 5)))) + decoder.flush()) == 5
    # A slow receiver: the caller flushes on every pause, the run still gets confirmed.
    decoder.feed(stream(*epoch_at(NOON + 600)))
    assert decoder.flush() == []
    assert decoder.held == 2
    assert_accounted(decoder)
    decoder.feed(stream(*epoch_at(NOON + 602)))
    assert decoder.flush() == []
    # The stream ends before a third epoch confirms the jump. Nothing comes after
    # them to be poisoned: a pause of minutes keeps its epochs.
    assert [f.time - NOON for f in decoder.finish()] == [600, 602]
    assert decoder.held == 0
    assert decoder.dropped == Counter()
    assert_accounted(decoder)


def test_a_last_epoch_dated_years_ahead_is_dropped_at_the_end() -> None:
    fixes, decoder = finish(stream(*itertools.chain(*run_at(NOON, 5)), *epoch_at(YEARS_AHEAD)))
    assert [f.time - NOON for f in fixes] == [0, 1, 2, 3, 4]
    assert decoder.dropped == Counter({"time_jump": 2})
    assert_accounted(decoder)


def test_with_a_clock_epochs_from_the_future_are_dropped_and_never_the_reference() -> None:
    clock = SimClock(start_utc=NOON + 0.3)
    decoder = NmeaDecoder("e", "s", clock=clock, max_future_s=2.0)
    fixes: list[Fix] = []
    # Even the first epoch: nothing but the clock can judge it.
    fixes += decoder.feed(stream(*epoch_at(YEARS_AHEAD)))
    for i in range(10):
        fixes += decoder.feed(stream(*epoch_at(NOON + i)))
        if i == 4:
            fixes += decoder.feed(stream(*epoch_at(NOON + i + 3.0)))  # 2.7 s ahead of now
        clock.advance(1.0)
    fixes += decoder.finish()
    assert [f.time - NOON for f in fixes] == list(range(10))
    assert decoder.dropped == Counter({"from_future": 4})


def test_with_a_clock_a_dropout_is_followed_at_once() -> None:
    def run(clock: SimClock | None) -> list[int]:
        decoder = NmeaDecoder("e", "s", clock=clock)
        counts = []
        for t in [*range(5), *range(35, 40)]:
            if clock is not None:
                clock.advance_to(t + 0.2)
            counts.append(len(decoder.feed(stream(*epoch_at(NOON + t)))))
        return counts

    # 30 s without a fix (a tunnel): the clock says that much time has passed.
    assert run(SimClock(start_utc=NOON)) == [0, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    # Without a clock the same gap is a jump like any other: held for two epochs.
    assert run(None) == [0, 2, 1, 1, 1, 0, 0, 3, 1, 1]


def test_with_a_clock_an_epoch_ahead_of_the_stream_is_still_held() -> None:
    clock = SimClock(start_utc=NOON)
    decoder = NmeaDecoder("e", "s", clock=clock)  # max_future_s 5 s
    good = run_at(NOON, 10)
    fixes: list[Fix] = []
    for i, epoch in enumerate(good):
        clock.advance_to(i + 0.2)
        fixes += decoder.feed(stream(*epoch))
        if i == 3:
            fixes += decoder.feed(stream(*epoch_at(NOON + i + 4.0, "4800.0000")))
    fixes += decoder.finish()
    assert [f.time - NOON for f in fixes] == list(range(10))
    assert decoder.dropped == Counter({"time_jump": 2})


CYCLES = st.sampled_from([0.1, 0.2, 0.5, 1.0, 2.0])
# Times an RMC can carry: its two-digit year reads as 1969-2068.
ANY_TIME = st.floats(
    min_value=dt.datetime(1970, 1, 1, tzinfo=dt.UTC).timestamp(),
    max_value=dt.datetime(2068, 12, 31, tzinfo=dt.UTC).timestamp(),
)


@settings(max_examples=300)
@given(
    cycle=CYCLES,
    n=st.integers(min_value=4, max_value=30),
    at=st.integers(min_value=2, max_value=30),
    offset=st.one_of(
        st.floats(min_value=-10.0, max_value=10.0),  # near the stream: the hard cases
        st.floats(min_value=-1e6, max_value=1e6),
    ),
    anywhere=st.one_of(st.none(), ANY_TIME),
    gga=st.booleans(),
)
def test_one_inserted_epoch_costs_at_most_itself_and_two_real_ones(
    cycle: float, n: int, at: int, offset: float, anywhere: float | None, gga: bool
) -> None:
    # Once the stream has shown its cycle (two epochs), one checksum-valid epoch
    # at any time, anywhere in it, must not cost more than two of the real ones.
    at = min(at, n)
    good = run_at(NOON, n, cycle)
    when = anywhere if anywhere is not None else NOON + (at - 1) * cycle + offset
    bad = epoch_at(when, "4800.0000", gga=gga)
    fixes, decoder = finish(stream(*itertools.chain(*good[:at], bad, *good[at:])))
    kept = {round(f.time, 2) for f in fixes if f.lat > 49}
    lost = [i for i in range(n) if round(NOON + i * cycle, 2) not in kept]
    assert len(lost) <= 2, (lost, decoder.dropped)
    assert all(a.time < b.time for a, b in itertools.pairwise(fixes))
    assert_accounted(decoder)


def test_a_void_sentence_voids_its_whole_epoch() -> None:
    # Garmin demo mode: GGA says "simulated", RMC says void. Nothing may come out.
    fixes, decoder = decode(stream(GGA, GSA, RMC.replace(",A,4929", ",V,4929"), VTG))
    assert fixes == []
    assert decoder.dropped == Counter({"void_status": 4})
    assert_accounted(decoder)


def test_a_void_epoch_does_not_void_its_neighbours() -> None:
    void = (RMC.replace(",A,4929", ",V,4929").replace("120000", "120001"),)
    fixes, _ = decode(stream(*second("120000.00"), *void, *second("120002.00")))
    assert [f.time - NOON for f in fixes] == [0, 2]


def test_one_bad_sentence_leaves_the_rest_of_the_epoch() -> None:
    # The RMC is impossible, the GGA of the same second still gives the position.
    fixes, decoder = decode(stream(RMC.replace(",10.0,", ",999.0,"), GGA), date_hint=DAY)
    assert len(fixes) == 1
    assert fixes[0].speed is None
    assert decoder.dropped == Counter({"impossible_speed": 1})


def test_modern_rmc_navigational_status_v_is_not_a_void() -> None:
    # NMEA 4.1 adds a navigational status; u-blox sends V ("not provided").
    rmc = "GNRMC,120000.00,A,4929.1234,N,00828.5678,E,0.025,,281125,,,A,V"
    assert len(decode(stream(rmc))[0]) == 1


# -- framing -----------------------------------------------------------------

VALID = stream(
    *second("120000.00"), VTG, GSA, "GPGSV,1,1,01,05,40,083,46", *second("120001.00"), GSA
)


@pytest.mark.parametrize("end", ["\r\n", "\n", "\r", "\n\r", "\r\r\n"])
def test_line_end_variants_give_the_same_fixes(end: str) -> None:
    lines = VALID.decode().split("\r\n")
    fixes, decoder = decode(end.join(lines).encode())
    assert fixes == decode(VALID)[0]
    assert len(fixes) == 2
    assert decoder.dropped == Counter({"ignored": 1})


def test_unterminated_last_line_is_decoded_on_flush() -> None:
    fixes, _ = decode(VALID.rstrip())
    assert len(fixes) == 2


def test_sentences_glued_together_by_an_overflow_are_separated() -> None:
    glued = nmea(RMC)[:30] + nmea(GGA) + "\r\n" + nmea(RMC.replace("120000", "120001")) + "\r\n"
    fixes, decoder = decode(stream(*second("115959.00")) + glued.encode())
    assert [f.time - NOON for f in fixes] == [-1, 0, 1]
    assert decoder.dropped["bad_checksum"] == 1  # the truncated RMC


def test_binary_blocks_between_sentences_are_garbage_not_lost_sentences() -> None:
    ubx = b"\xb5\x62\x01\x07\x5c\x00$\r\n\x00\xff$GP\x00\x10\x03"
    data = ubx + stream(*second("120000.00")) + ubx + ubx + stream(*second("120001.00")) + ubx
    fixes, decoder = decode(data)
    assert len(fixes) == 2
    assert decoder.dropped["garbage"] >= 3
    assert decoder.used == 4


def test_overlong_and_unterminated_runs_are_bounded_and_resync() -> None:
    decoder = NmeaDecoder("e", "s")
    for _ in range(1000):
        decoder.feed(b"\x00\x01binary" * 10)  # no line end for 70 kB
    decoder.feed(b"$GPGGA," + b"1" * 100_000)  # a sentence that never ends
    decoder.feed(b"1" * 1000 + b"\x00\x01binary")  # its tail is not counted again
    fixes = decoder.feed(stream(*second("120000.00"))) + decoder.flush()
    assert len(fixes) == 1
    assert decoder.dropped["line_too_long"] == 1
    assert decoder.dropped["garbage"] >= 1


def test_memory_stays_bounded_without_line_ends() -> None:
    decoder = NmeaDecoder("e", "s")
    tracemalloc.start()
    try:
        decoder.feed(b"$GPGGA,")
        for _ in range(2000):  # 2 MB of a sentence that never ends
            decoder.feed(b"1" * 1000)
        for _ in range(2000):  # 2 MB of binary without a line end
            decoder.feed(b"\x00\x01binary" * 125)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000
    assert decoder.dropped["line_too_long"] == 1


def test_feed_line_accepts_lines_with_or_without_ends() -> None:
    decoder = NmeaDecoder("e", "s")
    rmc, gga = second("120000.00")
    assert decoder.feed_line(nmea(rmc)) == []
    assert decoder.feed_line(nmea(gga) + "\r\n") == []
    assert decoder.feed_line("not nmea at all \u00e4\ud800") == []
    assert len(decoder.flush()) == 1
    assert decoder.dropped == Counter({"garbage": 1})


@settings(max_examples=60)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(VALID)), max_size=12))
def test_chunk_boundaries_do_not_matter(cuts: list[int]) -> None:
    whole, whole_decoder = decode(VALID)
    decoder = NmeaDecoder("engine-1", "test")
    fixes: list[Fix] = []
    bounds = [0, *sorted(cuts), len(VALID)]
    for a, b in itertools.pairwise(bounds):
        fixes += decoder.feed(VALID[a:b])
    fixes += decoder.flush()
    assert fixes == whole
    assert decoder.dropped == whole_decoder.dropped


@settings(max_examples=25)
@given(
    name=st.sampled_from(["tcp-torture.log", "gp-320fw-2019-04-06-overflow.log", "ac12.log"]),
    sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=40),
)
def test_chunk_boundaries_do_not_matter_in_real_logs(name: str, sizes: list[int]) -> None:
    data = (LOGS / name).read_bytes()
    whole, _ = decode(data)
    decoder = NmeaDecoder("engine-1", "test")
    fixes: list[Fix] = []
    pos = 0
    while pos < len(data):
        for size in sizes:
            fixes += decoder.feed(data[pos : pos + size])
            pos += size
    fixes += decoder.flush()
    assert fixes == whole


# -- fuzzing: nothing escapes, nothing invalid comes out ---------------------

FIELD = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "-0",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e309",
            "-1",
            "0.0",
            "360",
            "360.1",
            "99999999",
            "4807.038",
            "9000.000",
            "9000.001",
            "01131.000",
            "18000.0",
            "00000.0000",
            "4859.99999",
            "4860.0",
            "120000.00",
            "235960",
            "240000",
            "999999",
            "291125",
            "310299",
            "N",
            "S",
            "E",
            "W",
            "A",
            "V",
            "D",
            "R",
            "NNN",
            "ANR",
            "1",
            "2",
            "3",
            "6",
            "8",
            "9",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*!,"),
        max_size=12,
    ),
)
KIND = st.sampled_from(["GPRMC", "GNGGA", "GPGNS", "GPVTG", "GNGSA", "GPGLL", "GPGSV"])


def check_robust(data: bytes) -> None:
    decoder = NmeaDecoder("e", "s", date_hint=DAY)
    fixes = decoder.feed(data) + decoder.flush()
    for fix in fixes:
        assert_valid(fix)
    assert all(a.time < b.time for a, b in itertools.pairwise(fixes))
    assert_accounted(decoder)


@settings(max_examples=150)
@given(data=st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check_robust(data)


@settings(max_examples=200)
@given(kind=KIND, fields=st.lists(FIELD, max_size=16), context=st.booleans())
def test_absurd_fields_with_valid_checksums(kind: str, fields: list[str], context: bool) -> None:
    absurd = nmea(",".join([kind, *fields]))
    before = stream(*second("115959.00")) if context else b""
    after = stream(VTG, GSA, *second("120001.00")) if context else b""
    check_robust(before + absurd.encode() + b"\r\n" + after)


GNS = "GNGNS,120000.00,4929.1234,N,00828.5678,E,AN,12,0.8,100.0,47.0,,"
GLL = "GPGLL,4929.1234,N,00828.5678,E,120000.00,A,A"


@settings(max_examples=300)
@given(
    template=st.sampled_from([RMC, GGA, GSA, VTG, GNS, GLL]),
    changes=st.lists(
        st.tuples(st.integers(min_value=1, max_value=20), FIELD), min_size=1, max_size=3
    ),
)
def test_valid_sentences_with_absurd_fields(template: str, changes: list[tuple[int, str]]) -> None:
    # Checksums recomputed: only the decoder's own validation stands between these and a Fix.
    fields = template.split(",")
    for index, value in changes:
        fields[index % len(fields)] = value
    before = stream(*second("115959.00"))
    after = stream(VTG, GSA, *second("120001.00"))
    check_robust(before + stream(",".join(fields)) + after)


@settings(max_examples=400)
@given(
    address=st.sampled_from(["GPRMC", "GNGGA", "GPGNS", "GPVTG", "GNGSA", "GPGLL"]),
    rest=st.text(
        alphabet=st.sampled_from([",", "*", " ", ".", "A", "N", "0", "9", "-", "#", "\\"]),
        max_size=30,
    ),
)
def test_fields_are_what_pynmea2_parse_gives(address: str, rest: str) -> None:
    # The decoder splits the fields itself; pynmea2.parse stays the reference.
    sentence = f"${address}{rest}"
    try:
        expected: list[str] | None = pynmea2.parse(sentence).data
    except pynmea2.ParseError:
        expected = None
    assert _fields(sentence) == expected


@settings(max_examples=150)
@given(
    base=st.sampled_from([nmea(s) for s in (RMC, GGA, GSA, VTG, *second("120001.00"))]),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert"]),
            st.integers(min_value=0, max_value=100),
            st.binary(min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_sentences(base: str, edits: list[tuple[str, int, bytes]]) -> None:
    sentence = bytearray(base.encode())
    for op, at, blob in edits:
        at %= len(sentence) + 1
        if op == "flip" and at < len(sentence):
            sentence[at] ^= blob[0] or 1
        elif op == "cut":
            del sentence[at:]
        else:
            sentence[at:at] = blob
    check_robust(stream(*second("115959.00")) + bytes(sentence) + b"\r\n" + stream(VTG, GSA))


# -- real receivers' logs ----------------------------------------------------


def test_all_logs_were_copied() -> None:
    assert len(ALL_LOGS) == 18
    assert (LOGS / "COPYING.gpsd").is_file()
    assert (LOGS / "README.md").is_file()


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular: plenty for tens of kilometres."""
    x = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    return 6_371_000.0 * math.hypot(x, math.radians(lat2 - lat1))


@pytest.mark.parametrize("name", ALL_LOGS)
def test_every_log_decodes_to_plausible_fixes(name: str) -> None:
    decoder = NmeaDecoder("engine-1", name)
    fixes = decoder.feed((LOGS / name).read_bytes()) + decoder.flush()
    assert_accounted(decoder)
    for fix in fixes:
        assert_valid(fix)
        assert fix.vehicle == "engine-1"
        assert fix.source == name
        # Captured between 2005 and 2019, whatever the receivers' quirks.
        assert dt.datetime(2005, 1, 1, tzinfo=dt.UTC).timestamp() < fix.time
        assert fix.time < dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()
    assert all(a.time < b.time for a, b in itertools.pairwise(fixes))
    if fixes:
        lat = statistics.median(f.lat for f in fixes)
        lon = statistics.median(f.lon for f in fixes)
        assert max(distance_m(lat, lon, f.lat, f.lon) for f in fixes) < 50_000


def test_every_log_is_the_same_in_small_chunks() -> None:
    for name in ALL_LOGS:
        data = (LOGS / name).read_bytes()
        decoder = NmeaDecoder("engine-1", name)
        fixes = [f for i in range(0, len(data), 37) for f in decoder.feed(data[i : i + 37])]
        assert fixes + decoder.flush() == parse_nmea_file(LOGS / name, "engine-1")[0], name


@pytest.mark.parametrize("name", BINARY_LOGS)
def test_binary_only_logs_are_garbage_and_no_sentences(name: str) -> None:
    fixes, dropped = parse_nmea_file(LOGS / name, "e")
    assert fixes == []
    assert dropped["garbage"] >= 1
    assert set(dropped) == {"garbage", "comment"}


def test_moving_boat_speeds_match_its_track() -> None:
    # B&G chartplotter on the IJsselmeer at about 5.6 kn. If knots were taken
    # for m/s (or the other way round) the track and the speeds would disagree.
    fixes, dropped = parse_nmea_file(LOGS / "bundg_zeus_9.log", "boat")
    moving = [f for f in fixes if f.speed is not None and f.speed > 1.0]
    assert len(moving) > 100
    assert all(f.course is not None for f in moving)
    travelled = sum(distance_m(a.lat, a.lon, b.lat, b.lon) for a, b in itertools.pairwise(fixes))
    by_speed = sum((a.speed or 0.0) * (b.time - a.time) for a, b in itertools.pairwise(fixes))
    assert travelled == pytest.approx(by_speed, rel=0.2)
    # Its first GGA comes before any RMC: no date yet, dropped, not guessed.
    assert dropped["no_date"] > 0
    assert dt.datetime.fromtimestamp(fixes[0].time, dt.UTC) == dt.datetime(
        2018, 8, 20, 9, 47, 37, tzinfo=dt.UTC
    )


def test_haicom_walk_moves_and_keeps_fractional_seconds() -> None:
    fixes, dropped = parse_nmea_file(LOGS / "haicom-305N.log", "e")
    assert sum(1 for f in fixes if f.speed is not None and f.speed > 1.0) > 20
    # SiRF-II stamps its epochs at .787 to .802 s, drifting.
    assert all(0.78 < f.time % 1 < 0.81 for f in fixes)
    # It starts without a fix: GGA quality 0 and RMC status V.
    assert dropped["no_fix"] > 0
    assert dropped["void_status"] > 0


def test_ac12_position_comes_from_gga_with_gsa_and_rmc_merged() -> None:
    fixes, dropped = parse_nmea_file(LOGS / "ac12.log", "e")
    assert len(fixes) == 7  # one per GGA/GSA/RMC second; ZDA runs 2 s ahead and is ignored
    first = fixes[0]
    assert first.lat == pytest.approx(20 + 37.72792 / 60, abs=1e-12)  # GGA, not RMC's 37.7279
    assert (first.hdop, first.satellites) == (1.7, 4)
    assert first.speed == pytest.approx(0.1 * KNOT_MS)
    assert dropped["ignored"] == 30  # 24 GSV + 6 ZDA


def test_corrupted_gga_in_a_real_log_is_a_checksum_error_and_rmc_stands_in() -> None:
    # None of these logs has a real checksum error, so make some: one digit of
    # every GGA latitude changes, its checksum does not.
    lines = (LOGS / "mt3339.log").read_bytes().split(b"\n")
    ggas = [i for i, line in enumerate(lines) if line.startswith(b"$GPGGA,")]
    for i in ggas:
        lines[i] = lines[i].replace(b",4404.", b",4414.", 1)
    fixes, decoder = decode(b"\n".join(lines))
    assert decoder.dropped["bad_checksum"] == len(ggas) == 30
    assert len(fixes) == 30  # each second still has its RMC
    assert all(44.06 < f.lat < 44.07 for f in fixes)  # not the corrupted 44.23
    assert_accounted(decoder)


def test_garmin_demo_mode_gives_no_fix() -> None:
    fixes, dropped = parse_nmea_file(LOGS / "garmin-geko201.log", "e")
    assert fixes == []
    assert dropped["void_status"] > 0
    assert dropped["bad_checksum"] == 0


def test_tcp_torture_cookie_damaged_gga_is_a_parse_error() -> None:
    # Four '|' delay cookies cancel out in the checksum, so only the time is bad.
    fixes, dropped = parse_nmea_file(LOGS / "tcp-torture.log", "e")
    assert dropped["parse_error"] == 1
    assert dropped["garbage"] == 1
    assert len(fixes) == 1
    assert fixes[0].hdop is None


def test_multi_gnss_receivers() -> None:
    fixes, _ = parse_nmea_file(LOGS / "ublox-zed-f9p-nmea.log", "e")
    assert len(fixes) == 29  # one per RMC: its NMEA 4.1 navigational status V is no void
    assert all(f.satellites == 12 and f.lat < -45 for f in fixes)
    fixes, dropped = parse_nmea_file(LOGS / "beidou-gb.log", "e")
    assert fixes
    assert all(f.satellites == 6 for f in fixes)
    assert dropped["no_fix"] > 0
    fixes, _ = parse_nmea_file(LOGS / "mt3339.log", "e")
    assert len(fixes) == 30
    assert {f.quality for f in fixes} == {FixQuality.DGPS}


def test_source_name_defaults_to_the_file_name() -> None:
    fixes, _ = parse_nmea_file(LOGS / "navika-100-fix.log", "e")
    assert {f.source for f in fixes} == {"navika-100-fix.log"}
    fixes, _ = parse_nmea_file(str(LOGS / "navika-100-fix.log"), "e", "usb0")
    assert {f.source for f in fixes} == {"usb0"}


def test_logs_without_nmea_fixes() -> None:
    assert parse_nmea_file(LOGS / "skytraq-err.log", "e")[1]["ignored"] == 6
