"""The JSON position format and the central MQTT source, with a real Mosquitto.

Unit tests drive :meth:`MqttFixSource.handle` and :class:`PositionReader`
directly (no broker); hypothesis fuzzes the JSON decode path; the tests
marked ``integration`` run a real mosquitto on 127.0.0.1 (tests/broker.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import reduce
from operator import xor
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gps.mqtt import (
    FIX_DROP_REASONS,
    SOURCE_DROP_REASONS,
    BrokerConfigError,
    BrokerSettings,
    LinkWatch,
    MqttFixSource,
    TopicKind,
    VehicleStatus,
    accepts_anonymous,
    insecurities,
    topic_for,
)
from gps.position_json import (
    DROP_REASONS,
    MAX_SPEED_MS,
    LinkMessage,
    PositionMessage,
    PositionReader,
    Rejected,
    StatusMessage,
    StatusSource,
    decode_position,
    fix_problem,
)
from preemption.kernel.clock import RealClock, SimClock
from preemption.kernel.model import Fix, FixQuality

from .broker import HOST, MosquittoBroker, eventually, free_port

PREFIX = "preemption/v1/vehicles"
NOW = 1_764_331_200.0  # 2025-11-28T12:00:00Z
ALL_REASONS = DROP_REASONS | SOURCE_DROP_REASONS


def fix(
    vehicle: str = "HLF1",
    t: float = NOW,
    lat: float = 49.4871,
    lon: float = 8.4661,
    speed: float | None = 13.9,
    course: float | None = 92.5,
    hdop: float | None = 0.9,
    quality: FixQuality = FixQuality.GPS,
    satellites: int | None = 9,
) -> Fix:
    return Fix(vehicle, t, lat, lon, speed, course, hdop, quality, "test", satellites)


def position(seq: int, vehicle: str = "HLF1", t: float = NOW, **kwargs: object) -> bytes:
    return PositionMessage.from_fix(fix(vehicle, t, **kwargs), seq).encode()  # type: ignore[arg-type]


def valid_dict(seq: int = 1, t: float = NOW) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(position(seq, t=t))
    return loaded


def nmea(body: str) -> bytes:
    return f"${body}*{reduce(xor, body.encode(), 0):02X}\r\n".encode()


def nmea_epoch(t: float, lat: str = "4929.1234", lon: str = "00828.5678") -> bytes:
    """RMC + GGA for the instant ``t`` (UTC epoch seconds, whole seconds)."""
    when = dt.datetime.fromtimestamp(t, dt.UTC)
    hms, day = when.strftime("%H%M%S.00"), when.strftime("%d%m%y")
    return nmea(f"GPRMC,{hms},A,{lat},N,{lon},E,20.0,90.0,{day},,,A") + nmea(
        f"GPGGA,{hms},{lat},N,{lon},E,1,08,1.0,100.0,M,47.0,M,,"
    )


def assert_valid(f: Fix) -> None:
    """The validity rules of gps/nmea.py, written out again independently."""
    assert isinstance(f.quality, FixQuality)
    assert f.quality != FixQuality.INVALID
    assert math.isfinite(f.time)
    assert math.isfinite(f.lat)
    assert math.isfinite(f.lon)
    assert -90.0 <= f.lat <= 90.0
    assert -180.0 <= f.lon <= 180.0
    assert (f.lat, f.lon) != (0.0, 0.0)
    assert f.speed is None or (math.isfinite(f.speed) and 0.0 <= f.speed <= MAX_SPEED_MS)
    assert f.course is None or 0.0 <= f.course < 360.0
    assert f.hdop is None or (math.isfinite(f.hdop) and f.hdop > 0.0)
    assert f.satellites is None or 0 <= f.satellites <= 1000


def source(
    clock: SimClock | RealClock | None = None,
    vehicles: tuple[str, ...] = ("HLF1", "DLK1", "ELW1"),
    port: int = 1883,
    **kwargs: object,
) -> MqttFixSource:
    return MqttFixSource(
        BrokerSettings(HOST, port, reconnect_min_s=0.1, reconnect_max_s=0.5),
        vehicles,
        clock or SimClock(NOW),
        **kwargs,  # type: ignore[arg-type]
    )


def assert_books_balance(src: MqttFixSource) -> None:
    """Every message was used or dropped under a known reason, exactly once."""
    assert set(src.dropped) <= ALL_REASONS
    message_drops = sum(n for r, n in src.dropped.items() if r not in FIX_DROP_REASONS)
    assert sum(src.received.values()) == sum(src.accepted.values()) + message_drops
    total_by_vehicle: Counter[str] = Counter()
    for counts in src.dropped_by_vehicle.values():
        total_by_vehicle.update(counts)
    assert total_by_vehicle == src.dropped


# -- the message format ---------------------------------------------------------


def test_a_fix_survives_the_round_trip_exactly() -> None:
    original = fix(t=NOW + 0.123, lat=-33.8688, lon=151.2093, speed=0.0, course=359.9)
    msg = decode_position(PositionMessage.from_fix(original, 7).encode(), "HLF1")
    assert isinstance(msg, PositionMessage)
    assert msg.seq == 7
    assert msg.to_fix("test") == original


def test_the_wire_format_is_the_documented_one() -> None:
    assert json.loads(position(3)) == {
        "v": 1,
        "vehicle": "HLF1",
        "time": NOW,
        "lat": 49.4871,
        "lon": 8.4661,
        "speed": 13.9,
        "course": 92.5,
        "hdop": 0.9,
        "quality": 1,
        "satellites": 9,
        "seq": 3,
    }
    status = StatusMessage("HLF1", NOW, True, StatusSource.BLUE_LIGHTS).encode()
    assert json.loads(status) == {
        "v": 1,
        "vehicle": "HLF1",
        "time": NOW,
        "emergency": True,
        "source": "blue_lights",
    }
    assert json.loads(LinkMessage("HLF1", False, None).encode()) == {
        "v": 1,
        "vehicle": "HLF1",
        "online": False,
        "time": None,
    }


def test_an_invalid_fix_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="impossible_coordinates"):
        PositionMessage.from_fix(fix(lat=0.0, lon=0.0), 1)
    assert fix_problem(fix(speed=-1.0)) == Rejected("impossible_speed", "speed -1.0 m/s")
    assert fix_problem(fix(course=360.0)) is not None
    assert fix_problem(fix(hdop=0.0)) is not None
    assert fix_problem(fix(quality=FixQuality.INVALID)) is not None
    assert fix_problem(fix(t=math.nan)) is not None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "bad_json"),
        (b"{", "bad_json"),
        (b"[" * 1500 + b"]" * 500, "bad_json"),  # nesting beyond the parser's recursion limit
        (b'{"v": 1, "v": 1}', "bad_json"),
        (position(1).replace(b"49.4871", b"NaN"), "bad_json"),
        (b" " * 5000, "too_large"),
        (b"[1, 2]", "wrong_schema"),
        (b'{"v": true}', "wrong_schema"),
        (position(1).replace(b'"v":1', b'"v":2'), "unsupported_version"),
        (position(1).replace(b',"seq":1', b""), "wrong_schema"),
        (position(1).replace(b'"seq":1', b'"seq":1,"x":0'), "wrong_schema"),
        (position(1).replace(b'"lat":49.4871', b'"lat":"49.4871"'), "wrong_schema"),
        (position(1).replace(b'"quality":1', b'"quality":1.0'), "wrong_schema"),
        (position(1).replace(b'"seq":1', b'"seq":-1'), "wrong_schema"),
        (position(1).replace(b'"vehicle":"HLF1"', b'"vehicle":"a/b"'), "wrong_schema"),
        (position(1, vehicle="DLK1"), "vehicle_mismatch"),
        (position(1).replace(b"49.4871", b"1e999"), "impossible_coordinates"),
        (position(1).replace(b"49.4871", b"90.5"), "impossible_coordinates"),
        (position(1).replace(b"8.4661", b"-180.01"), "impossible_coordinates"),
        (position(1, lat=0.0, lon=1.0).replace(b'"lon":1.0', b'"lon":0'), "impossible_coordinates"),
        (position(1).replace(b'"speed":13.9', b'"speed":100.5'), "impossible_speed"),
        (position(1).replace(b'"speed":13.9', b'"speed":-0.1'), "impossible_speed"),
        (position(1).replace(b'"course":92.5', b'"course":360'), "impossible_value"),
        (position(1).replace(b'"hdop":0.9', b'"hdop":0'), "impossible_value"),
        (position(1).replace(b'"quality":1', b'"quality":9'), "impossible_value"),
        (position(1).replace(b'"quality":1', b'"quality":0'), "no_fix"),
        (position(1).replace(b'"satellites":9', b'"satellites":100000'), "impossible_value"),
        (position(1).replace(b"1764331200.0", b"315532800"), "impossible_time"),
    ],
)
def test_bad_payloads_are_rejected_with_their_reason(payload: bytes, reason: str) -> None:
    result = decode_position(payload, "HLF1")
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result
    assert reason in DROP_REASONS


def test_the_reader_drops_stale_future_duplicate_and_backward_positions() -> None:
    clock = SimClock(NOW)
    reader = PositionReader(clock, max_age_s=30.0, max_future_s=2.0)
    ok = [reader.position(position(s, t=NOW - 10 + s), "HLF1") for s in range(3)]
    assert all(isinstance(m, PositionMessage) for m in ok)
    results = [
        reader.position(position(9, t=NOW - 31), "HLF1"),  # too old
        reader.position(position(9, t=NOW + 3), "HLF1"),  # from the future
        reader.position(position(2, t=NOW - 8), "HLF1"),  # the last one again (QoS 1)
        reader.position(position(1, t=NOW - 9), "HLF1"),  # a replay of an older one
        reader.position(position(5, t=NOW - 8), "HLF1"),  # newer seq, same time
    ]
    assert [r.reason for r in results if isinstance(r, Rejected)] == [
        "too_old",
        "from_future",
        "duplicate",
        "duplicate",
        "time_backwards",
    ]
    # A restarted unit counts from 0 again, with later times: accepted.
    assert isinstance(reader.position(position(0, t=NOW - 1), "HLF1"), PositionMessage)
    # Other vehicles have their own sequence.
    assert isinstance(reader.position(position(0, "DLK1", t=NOW - 5), "DLK1"), PositionMessage)
    assert reader.dropped == Counter(too_old=1, from_future=1, duplicate=2, time_backwards=1)
    assert reader.accepted == Counter(position=5)


def test_positions_closer_than_the_rate_allows_are_too_frequent() -> None:
    reader = PositionReader(SimClock(NOW), max_rate_hz=20.0)
    times = [NOW - 5 + 0.05 * k for k in range(5)]  # a 20 Hz receiver: exactly at the limit
    assert all(
        isinstance(reader.position(position(k, t=t), "HLF1"), PositionMessage)
        for k, t in enumerate(times)
    )
    assert reader.position(position(5, t=times[-1] + 0.01), "HLF1") == Rejected(
        "too_frequent", "fix at 1764331195.21 only 10 ms of fix time after the last (at most "
        "20 fixes per second)"
    )  # fmt: skip
    # Judged from the last accepted fix: the next one 50 ms after it is fine again.
    assert isinstance(reader.position(position(6, t=times[-1] + 0.05), "HLF1"), PositionMessage)
    assert reader.dropped == Counter(too_frequent=1)
    with pytest.raises(ValueError, match="max_rate_hz must be a finite number > 0"):
        PositionReader(SimClock(NOW), max_rate_hz=0.0)


# -- the order of statuses -------------------------------------------------------------


def status(emergency: bool, t: float, seq: int | None = None, vehicle: str = "HLF1") -> bytes:
    return StatusMessage(vehicle, t, emergency, StatusSource.BLUE_LIGHTS, seq).encode()


def link(online: bool, vehicle: str = "HLF1", t: float | None = NOW) -> bytes:
    return LinkMessage(vehicle, online, t).encode()


def emergencies(statuses: list[VehicleStatus]) -> list[bool]:
    return [s.emergency for s in statuses if isinstance(s, StatusMessage)]


@pytest.mark.parametrize("seqs", [(None, None), (0, 1)], ids=["unit without seq", "with seq"])
def test_blue_lights_off_is_applied_after_the_units_clock_stepped_back(
    seqs: tuple[int | None, int | None], caplog: pytest.LogCaptureFixture
) -> None:
    """The finding: status judged on the unit's clock; after it stepped back, "off" was
    dropped as time_backwards and the vehicle's signals stayed requested."""
    statuses: list[VehicleStatus] = []
    src = source(on_status=statuses.append)
    topic = topic_for(PREFIX, "HLF1", TopicKind.STATUS)
    src.handle(topic, status(True, NOW, seqs[0]))
    # NTP corrects the unit's clock by 90 s, then the driver switches the blue lights off.
    src.handle(topic, status(False, NOW - 89, seqs[1]))
    assert emergencies(statuses) == [True, False]
    assert src.status["HLF1"].emergency is False
    assert src.dropped == Counter()
    # Without seq the "off" looks older than the "on", and the log says so; with seq it is
    # plainly the next status.
    assert ("emergency OFF taken although it looks older" in caplog.text) == (seqs[0] is None)


def test_status_is_ordered_by_sequence_number_not_by_the_units_clock() -> None:
    statuses: list[VehicleStatus] = []
    src = source(on_status=statuses.append, max_future_s=5.0)
    topic = topic_for(PREFIX, "HLF1", TopicKind.STATUS)
    feed = [
        status(True, NOW, 0),
        status(False, NOW - 90, 1),  # the unit's clock stepped back by 90 s
        status(True, NOW - 80, 2),  # a new run: newer by its seq, whatever its time says
        status(True, NOW - 80, 2),  # the same message again (retained, sent on reconnect)
        status(True, NOW, 0),  # a replay of the first "on"
        status(True, NOW + 60, 3),  # an "on" a minute in the future: a wrong clock
        status(False, NOW + 60, 4),  # an "off" from the future is taken all the same
        status(False, NOW - 3600, 1),  # and so is an "off" that looks old
    ]
    for payload in feed:
        src.handle(topic, payload)
    assert emergencies(statuses) == [True, False, True, True, False, False]
    assert src.dropped_by_vehicle == {"HLF1": Counter(duplicate=1, from_future=1)}
    assert src.status["HLF1"] == StatusMessage(
        "HLF1", NOW - 3600, False, StatusSource.BLUE_LIGHTS, 1
    )
    assert_books_balance(src)


def test_units_without_seq_are_still_read_and_ordered_by_their_time() -> None:
    statuses: list[VehicleStatus] = []
    src = source(on_status=statuses.append)
    topic = topic_for(PREFIX, "HLF1", TopicKind.STATUS)
    for payload in (
        status(True, NOW - 10),
        status(True, NOW - 10),  # retained, redelivered: the same state again
        status(True, NOW - 20),  # an "on" older than the last status: time_backwards
        status(False, NOW - 30),  # an "off" is taken, whatever its time...
        status(True, NOW - 25),  # ... and the next "on" is judged against it
    ):
        src.handle(topic, payload)
    assert emergencies(statuses) == [True, True, False, True]
    assert src.dropped == Counter(time_backwards=1)
    assert b'"seq"' not in status(True, NOW)  # the old wire format, exactly
    assert_books_balance(src)


def test_a_restarted_unit_with_a_clock_behind_starts_a_new_order_with_online() -> None:
    """A restart counts from seq 0 again, perhaps on a clock that is now behind: every
    connection starts with "online", which starts the order afresh."""
    statuses: list[VehicleStatus] = []
    src = source(on_status=statuses.append)
    status_topic = topic_for(PREFIX, "HLF1", TopicKind.STATUS)
    link_topic = topic_for(PREFIX, "HLF1", TopicKind.LINK)
    src.handle(link_topic, link(True))
    src.handle(status_topic, status(True, NOW, 0))
    src.handle(status_topic, status(False, NOW + 1, 1))
    src.handle(link_topic, link(False, t=None))  # the will: the unit vanished
    src.handle(link_topic, link(True, t=NOW - 600))  # back, its clock ten minutes behind
    src.handle(status_topic, status(True, NOW - 600, 0))
    assert emergencies(statuses) == [True, False, True]
    assert src.dropped == Counter()
    # Without the "online" the same "on" would be a replay.
    replayed = source()
    replayed.handle(status_topic, status(False, NOW + 1, 1))
    replayed.handle(status_topic, status(True, NOW - 600, 0))
    assert replayed.dropped == Counter(duplicate=1)


def test_every_dropped_status_is_logged_with_vehicle_reason_and_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = source()
    topic = topic_for(PREFIX, "HLF1", TopicKind.STATUS)
    with caplog.at_level(logging.WARNING, logger="gps.mqtt"):
        for k in range(3):
            src.handle(topic, status(True, NOW + 100 + k, k))  # all from the future
    drops = [r.getMessage() for r in caplog.records if r.name == "gps.mqtt"]
    assert len(drops) == 3, drops
    for k, message in enumerate(drops):
        assert "vehicle 'HLF1'" in message
        assert "from_future" in message
        assert f"status ON at {NOW + 100 + k!r} is {100 + k}.0 s ahead" in message


def test_an_off_from_a_unit_whose_clock_reads_1980_is_taken_an_on_is_not() -> None:
    reader = PositionReader(SimClock(NOW))
    assert reader.status(status(True, NOW), "HLF1") == StatusMessage(
        "HLF1", NOW, True, StatusSource.BLUE_LIGHTS
    )
    off_1980 = reader.status(status(False, 315_532_800.0, 9), "HLF1")
    assert isinstance(off_1980, StatusMessage)
    assert off_1980.emergency is False
    on_1980 = reader.status(status(True, 315_532_800.0, 10), "HLF1")
    assert isinstance(on_1980, Rejected)
    assert on_1980.reason == "impossible_time"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (status(True, NOW, 1).replace(b'"seq":1', b'"seq":-1'), "wrong_schema"),
        (status(True, NOW, 1).replace(b'"seq":1', b'"seq":1.0'), "wrong_schema"),
        (status(True, NOW, 1).replace(b'"seq":1', b'"seq":null'), "wrong_schema"),
        (status(True, NOW, 1).replace(b'"seq":1', b'"seq":1,"x":2'), "wrong_schema"),
        (status(True, NOW).replace(b',"source":"blue_lights"', b""), "wrong_schema"),
        (status(True, NOW, 1).replace(b"1764331200.0", b"1e999"), "impossible_time"),
        (status(False, NOW, 1).replace(b"1764331200.0", b"1e999"), "impossible_time"),
        (status(True, NOW, 1, vehicle="DLK1"), "vehicle_mismatch"),
    ],
)
def test_bad_statuses_are_rejected_with_their_reason(payload: bytes, reason: str) -> None:
    result = PositionReader(SimClock(NOW)).status(payload, "HLF1")
    assert isinstance(result, Rejected), result
    assert result.reason == reason


STATUS_EVENTS = st.lists(
    st.one_of(
        st.tuples(
            st.just("status"),
            st.booleans(),
            st.floats(min_value=-7200, max_value=7200),  # the unit's clock, any step
            st.none() | st.integers(min_value=0, max_value=20),
        ),
        st.tuples(st.just("link"), st.booleans(), st.just(0.0), st.none()),
        st.tuples(st.just("junk"), st.booleans(), st.just(0.0), st.none()),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300)
@given(events=STATUS_EVENTS)
def test_fuzzed_status_streams_never_lose_an_off_and_take_no_on_from_the_future(
    events: list[tuple[str, bool, float, int | None]],
) -> None:
    statuses: list[VehicleStatus] = []
    src = source(on_status=statuses.append, max_future_s=5.0)
    for kind, flag, offset, seq in events:
        before = len(statuses)
        if kind == "status":
            src.handle(topic_for(PREFIX, "HLF1", TopicKind.STATUS), status(flag, NOW + offset, seq))
            taken = [s for s in statuses[before:] if isinstance(s, StatusMessage)]
            if not flag:  # an "off" is always taken, and is the status now
                assert [(s.emergency, s.time) for s in taken] == [(False, NOW + offset)]
                assert src.status["HLF1"].emergency is False
            elif taken:
                assert taken[0].time <= NOW + 5.0
        elif kind == "link":
            src.handle(topic_for(PREFIX, "HLF1", TopicKind.LINK), link(flag))
        else:
            src.handle(topic_for(PREFIX, "HLF1", TopicKind.STATUS), b'{"v":1,"emergency":false}')
        if "HLF1" in src.status:
            last = [s for s in statuses if isinstance(s, StatusMessage)][-1]
            assert src.status["HLF1"] == last  # what the source holds is the last taken
    assert set(src.dropped) <= {"from_future", "duplicate", "time_backwards", "wrong_schema"}
    assert_books_balance(src)


# -- the source, message by message (no broker) -------------------------------------


def test_the_source_routes_counts_and_attributes_every_message() -> None:
    statuses: list[VehicleStatus] = []
    src = source(on_status=statuses.append)
    t = topic_for
    fixes: list[Fix] = []
    fixes += src.handle(t(PREFIX, "HLF1", TopicKind.POSITION), position(0, t=NOW - 2))
    fixes += src.handle(t(PREFIX, "HLF1", TopicKind.POSITION), position(1, t=NOW - 1))
    fixes += src.handle(t(PREFIX, "HLF1", TopicKind.POSITION), position(1, t=NOW - 1))  # dup
    fixes += src.handle(t(PREFIX, "ELW1", TopicKind.POSITION), position(0, "ELW1", t=NOW - 1))
    for k in range(3):
        fixes += src.handle(t(PREFIX, "DLK1", TopicKind.NMEA), nmea_epoch(NOW - 5 + k))
    # forged: DLK1's topic, HLF1's position
    fixes += src.handle(t(PREFIX, "DLK1", TopicKind.POSITION), position(5, "HLF1", t=NOW))
    # a vehicle not on the allow-list, even with a perfect message
    fixes += src.handle(t(PREFIX, "TLF9", TopicKind.POSITION), position(0, "TLF9", t=NOW))
    fixes += src.handle(t(PREFIX, "HLF1", TopicKind.POSITION), b"not json")
    fixes += src.handle(f"{PREFIX}/HLF1/position/extra", position(2))
    fixes += src.handle(f"{PREFIX}/HLF1/weather", b"{}")
    fixes += src.handle(
        t(PREFIX, "HLF1", TopicKind.STATUS),
        StatusMessage("HLF1", NOW, True, StatusSource.BLUE_LIGHTS).encode(),
    )
    fixes += src.handle(
        t(PREFIX, "ELW1", TopicKind.LINK), LinkMessage("ELW1", False, None).encode()
    )
    assert [(f.vehicle, f.source) for f in fixes] == [
        ("HLF1", f"{PREFIX}/HLF1/position"),
        ("HLF1", f"{PREFIX}/HLF1/position"),
        ("ELW1", f"{PREFIX}/ELW1/position"),
        ("DLK1", f"{PREFIX}/DLK1/nmea"),
        ("DLK1", f"{PREFIX}/DLK1/nmea"),
        ("DLK1", f"{PREFIX}/DLK1/nmea"),
    ]  # once the decoder has learnt the cycle (RMC + GGA) an epoch leaves when complete
    for f in fixes:
        assert_valid(f)
    assert src.dropped == Counter(
        duplicate=1, vehicle_mismatch=1, unknown_vehicle=1, bad_json=1, bad_topic=2
    )
    assert src.dropped_by_vehicle == {
        "HLF1": Counter(duplicate=1, bad_json=1),
        "DLK1": Counter(vehicle_mismatch=1),
        "TLF9": Counter(unknown_vehicle=1),
        "<no vehicle>": Counter(bad_topic=2),
    }
    assert src.received == Counter(position=7, nmea=3, other=2, status=1, link=1)
    assert src.accepted == Counter(position=3, nmea=3, status=1, link=1)
    assert_books_balance(src)
    assert statuses == [
        StatusMessage("HLF1", NOW, True, StatusSource.BLUE_LIGHTS),
        LinkMessage("ELW1", False, None),
    ]
    assert src.status["HLF1"].emergency is True
    assert src.online == {"ELW1": False}
    assert src.nmea_dropped["DLK1"] == Counter()


def test_unknown_vehicles_cannot_grow_the_counters_without_bound() -> None:
    src = source()
    for k in range(500):
        src.handle(topic_for(PREFIX, f"X{k}", TopicKind.POSITION), b"{}")
    assert src.dropped == Counter(unknown_vehicle=500)
    assert len(src.dropped_by_vehicle) == 101
    assert src.dropped_by_vehicle["<other unknown vehicles>"] == Counter(unknown_vehicle=400)


def test_stale_nmea_is_dropped_and_counted_per_vehicle() -> None:
    src = source()
    topic = topic_for(PREFIX, "DLK1", TopicKind.NMEA)
    got = [f for k in range(4) for f in src.handle(topic, nmea_epoch(NOW - 600 + k))]
    assert got == []
    assert src.dropped_by_vehicle["DLK1"]["nmea_too_old"] == 4
    assert_books_balance(src)


# -- rate limits per vehicle -------------------------------------------------------------


def test_a_600_position_backlog_delivered_at_once_is_not_rate_limited() -> None:
    """The onboard unit drains ten minutes of store-and-forward buffer as fast as the broker
    takes it: every one of those fixes, the newest above all, must come through."""
    clock = SimClock(NOW)
    src = source(clock, max_age_s=700.0)
    topic = topic_for(PREFIX, "HLF1", TopicKind.POSITION)
    backlog = [position(k, t=NOW - 600 + k) for k in range(600)]  # 1 Hz, 10 minutes
    got = [f for payload in backlog for f in src.handle(topic, payload)]  # all at one instant
    assert [f.time for f in got] == [NOW - 600 + k for k in range(600)]
    assert src.dropped == Counter()
    # ... and the live positions after it, at the unit's 1 Hz, keep coming through.
    for k in range(120):
        clock.advance(1.0)
        assert len(src.handle(topic, position(600 + k, t=NOW + k))) == 1
    assert src.dropped == Counter()


@settings(max_examples=100)
@given(
    size=st.integers(min_value=1, max_value=1500),
    rate_hz=st.sampled_from([1.0, 5.0, 10.0, 20.0]),
    arrival_gap_s=st.sampled_from([0.0, 0.0001, 0.001]),
)
def test_any_backlog_within_the_burst_at_a_legitimate_rate_passes_whole(
    size: int, rate_hz: float, arrival_gap_s: float
) -> None:
    clock = SimClock(NOW)
    src = source(clock, vehicles=("HLF1",), max_age_s=3600.0, max_rate_hz=20.0)
    topic = topic_for(PREFIX, "HLF1", TopicKind.POSITION)
    start = NOW - size / rate_hz
    for k in range(size):
        clock.advance(arrival_gap_s)
        src.handle(topic, position(k, t=start + k / rate_hz))
    assert src.accepted["position"] == size
    assert src.dropped == Counter()


def test_a_flood_is_dropped_undecoded_and_other_vehicles_are_untouched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SimClock(NOW)
    src = source(clock, arrival_burst=1500, max_rate_hz=20.0)
    flood_topic = topic_for(PREFIX, "HLF1", TopicKind.POSITION)
    other = topic_for(PREFIX, "DLK1", TopicKind.POSITION)
    forged = position(1, t=NOW)
    with caplog.at_level(logging.WARNING, logger="gps.mqtt"):
        for k in range(20_000):
            src.handle(flood_topic, forged)
            if k % 1000 == 0:  # the other engine, once a second of its own fix time
                assert len(src.handle(other, position(k, "DLK1", t=NOW - 20 + k / 1000))) == 1
    flood = src.dropped_by_vehicle["HLF1"]
    assert flood["rate_limited"] == 20_000 - 1500
    assert flood["duplicate"] == 1499  # the burst's worth got to the decoder, no more
    assert src.reader.accepted["position"] + src.reader.dropped["duplicate"] == 1500 + 20
    assert "DLK1" not in src.dropped_by_vehicle
    assert src.accepted["position"] == 1 + 20
    limited = [r for r in caplog.records if "rate_limited" in r.getMessage()]
    assert len(limited) == 1  # logged once per vehicle and reason, then counted
    assert "HLF1" in limited[0].getMessage()
    # The cap refills at twice max_rate_hz: a second later, 40 more reach the decoder.
    clock.advance(1.0)
    decoded_before = sum(src.reader.dropped.values()) + sum(src.reader.accepted.values())
    for _ in range(100):
        src.handle(flood_topic, forged)
    decoded = sum(src.reader.dropped.values()) + sum(src.reader.accepted.values())
    assert decoded - decoded_before == 40
    assert_books_balance(src)


def test_a_flood_cannot_hold_back_the_end_of_a_run_but_can_hold_back_its_start() -> None:
    statuses: list[VehicleStatus] = []
    clock = SimClock(NOW)
    src = source(clock, arrival_burst=10, on_status=statuses.append)
    t = topic_for
    src.handle(t(PREFIX, "HLF1", TopicKind.LINK), link(True))
    src.handle(t(PREFIX, "HLF1", TopicKind.STATUS), status(True, NOW, 0))
    for _ in range(50):  # the cap is used up
        src.handle(t(PREFIX, "HLF1", TopicKind.POSITION), position(1, t=NOW))
    src.handle(t(PREFIX, "HLF1", TopicKind.STATUS), status(True, NOW, 1))  # no change: capped
    src.handle(t(PREFIX, "HLF1", TopicKind.STATUS), status(False, NOW, 2))  # ends the run
    src.handle(t(PREFIX, "HLF1", TopicKind.STATUS), status(False, NOW, 3))  # no change: capped
    src.handle(t(PREFIX, "HLF1", TopicKind.STATUS), status(True, NOW, 4))  # a start: capped
    src.handle(t(PREFIX, "HLF1", TopicKind.LINK), link(False, t=None))  # the will: taken
    src.handle(t(PREFIX, "HLF1", TopicKind.LINK), link(False, t=None))  # again: capped
    assert emergencies(statuses) == [True, False]
    assert [s.online for s in statuses if isinstance(s, LinkMessage)] == [True, False]
    assert src.online["HLF1"] is False
    # The link and status took 2 of the 10, 8 positions the rest: 42 positions and 4 capped.
    assert src.dropped_by_vehicle["HLF1"]["rate_limited"] == 42 + 4
    assert_books_balance(src)


def test_nmea_fixes_closer_than_the_rate_allows_are_dropped() -> None:
    src = source(max_rate_hz=1.0)
    topic = topic_for(PREFIX, "DLK1", TopicKind.NMEA)
    got = [f for k in range(6) for f in src.handle(topic, nmea_epoch(NOW - 10 + k // 2))]
    # Six epochs, two per second of fix time: the NMEA decoder drops the repeats of a
    # second as duplicate epochs, and nothing is left for the limit at 1 Hz...
    assert [f.time for f in got] == [NOW - 10, NOW - 9, NOW - 8]
    fast = source(max_rate_hz=0.5)  # ... which at 0.5 Hz keeps every other second.
    got = [f for k in range(4) for f in fast.handle(topic, nmea_epoch(NOW - 10 + k))]
    assert [f.time for f in got] == [NOW - 10, NOW - 8]
    assert fast.dropped_by_vehicle["DLK1"] == Counter(nmea_too_frequent=2)
    assert_books_balance(fast)


def test_rate_limit_settings_are_checked() -> None:
    with pytest.raises(BrokerConfigError, match=r"max_rate_hz 0\.0 must be a finite number > 0"):
        source(max_rate_hz=0.0)
    with pytest.raises(BrokerConfigError, match="arrival_burst 0 must be a whole number >= 1"):
        source(arrival_burst=0)


def test_bad_settings_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(BrokerConfigError, match=r"port 0 is not in 1\.\.65535"):
        BrokerSettings("127.0.0.1", 0)
    with pytest.raises(BrokerConfigError, match="password without a username"):
        BrokerSettings("127.0.0.1", password="x")
    missing = tmp_path / "nope.crt"
    with pytest.raises(BrokerConfigError, match=r"TLS CA file .*nope\.crt .* does not exist"):
        BrokerSettings("127.0.0.1", tls_ca=missing).tls_context()
    with pytest.raises(BrokerConfigError, match="vehicle id 'a/b' is not usable"):
        source(vehicles=("a/b",))
    with pytest.raises(BrokerConfigError, match="persistent MQTT session needs a fixed client_id"):
        source(persistent_session=True)


def test_the_settings_say_what_they_secure_and_insecurities_what_they_leave_open(
    tmp_path: Path,
) -> None:
    ca, cert = tmp_path / "ca.crt", tmp_path / "client.crt"
    plain = BrokerSettings("127.0.0.1")
    assert (plain.verifies_broker, plain.authenticates_client, plain.secure) == (False,) * 3
    found = insecurities(plain)
    assert len(found) == 2
    assert found[0].startswith("no TLS to broker 127.0.0.1:1883 (plain TCP): positions, status")
    assert "credentials travel in clear" in found[0]
    assert found[1].startswith("no client credentials for broker 127.0.0.1:1883 (plain TCP)")
    assert "publish as a fire engine" in found[1]

    full = BrokerSettings("h", 8883, username="u", password="p", tls_ca=ca)
    assert (full.verifies_broker, full.authenticates_client, full.secure) == (True,) * 3
    assert insecurities(full) == []
    by_cert = BrokerSettings("h", 8883, tls=True, tls_cert=cert)
    assert by_cert.authenticates_client
    assert insecurities(by_cert) == []

    password_in_clear = BrokerSettings("h", username="u", password="p")
    assert password_in_clear.authenticates_client
    assert not password_in_clear.verifies_broker
    assert [s[:6] for s in insecurities(password_in_clear)] == ["no TLS"]
    no_password = BrokerSettings("h", username="u", tls=True)
    assert not no_password.authenticates_client
    assert insecurities(no_password) == [
        "no client credentials for broker h:1883 (TLS) (user 'u' has no password): the broker "
        "cannot tell this client from anybody else, and a broker that lets it in lets anyone "
        "publish as a fire engine; set username and password, or a client certificate "
        "(tls_cert, tls_key)"
    ]
    unused_cert = BrokerSettings("h", tls_cert=cert)  # a certificate, but TLS is off
    assert not unused_cert.authenticates_client
    assert any(f"client certificate ({cert}) is configured but TLS is off" in s
               for s in insecurities(unused_cert))  # fmt: skip


def test_reconnect_delays_double_with_jitter_and_wait_long_for_a_person() -> None:
    settings = BrokerSettings("127.0.0.1", reconnect_min_s=0.5, reconnect_max_s=8.0)
    watch = LinkWatch(settings, SimClock(NOW), "test", logging.getLogger("test"), seed="x")
    lost = aiomqtt.MqttError("Disconnected during message iteration")
    delays = [watch.down(lost) for _ in range(7)]
    for delay, base in zip(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0], strict=True):
        assert 0.75 * base <= delay <= base
    again = LinkWatch(settings, SimClock(NOW), "test", logging.getLogger("test"), seed="x")
    assert [again.down(lost) for _ in range(7)] == delays  # seeded: repeatable
    watch.up()
    assert watch.down(lost) <= 0.5  # a new outage starts from the minimum
    refused = aiomqtt.MqttError("SSL: CERTIFICATE_VERIFY_FAILED")
    assert 6.0 <= watch.down(refused) <= 8.0  # waiting will not fix a certificate
    with pytest.raises(BrokerConfigError, match="need 0 < min <= max < inf"):
        BrokerSettings("127.0.0.1", reconnect_max_s=math.inf)


# -- fuzzing the decode path -------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
ABSURD_NUMBERS = (
    st.floats()  # NaN and infinities become bad_json on the wire (json refuses them)
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 90.0000001, 360.0, 100.0000001, 2**63])
)
FIELDS = [
    "v", "vehicle", "time", "lat", "lon", "speed", "course", "hdop", "quality", "satellites", "seq"
]  # fmt: skip


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    obj = valid_dict(draw(st.integers(min_value=0, max_value=10**6)), NOW - draw(st.floats(0, 90)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["replace", "absurd", "delete", "add", "vehicle"]))
        key = draw(st.sampled_from(FIELDS))
        if action == "replace":
            obj[key] = draw(JSON_VALUES)
        elif action == "absurd":
            obj[key] = draw(ABSURD_NUMBERS)
        elif action == "delete":
            obj.pop(key, None)
        elif action == "add":
            obj[draw(st.text(max_size=6))] = draw(JSON_SCALARS)
        else:
            obj["vehicle"] = draw(st.sampled_from(["DLK1", "", "HLF1 ", "x" * 65, "ü", "+"]))
    text = json.dumps(obj, allow_nan=True)
    if draw(st.booleans()):
        cut = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:cut]  # truncated in transit
    return text.encode()


PAYLOADS = st.binary(max_size=300) | mutated_messages() | st.just(position(1, t=NOW - 1))


@settings(max_examples=400)
@given(payloads=st.lists(PAYLOADS, min_size=1, max_size=8))
def test_fuzzed_positions_never_raise_never_make_invalid_fixes_and_are_all_counted(
    payloads: list[bytes],
) -> None:
    reader = PositionReader(SimClock(NOW), max_age_s=60.0, max_future_s=5.0)
    for n, payload in enumerate(payloads, start=1):
        result = reader.position(payload, "HLF1")
        if isinstance(result, Rejected):
            assert result.reason in DROP_REASONS
        else:
            assert result.vehicle == "HLF1"
            made = result.to_fix("fuzz")
            assert_valid(made)
            assert fix_problem(made) is None
        assert sum(reader.dropped.values()) + reader.accepted["position"] == n


@settings(max_examples=300)
@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from(["HLF1", "DLK1", "TLF9", "a+b", ""]),
            st.sampled_from([*(k.value for k in TopicKind), "junk"]),
            PAYLOADS
            | st.just(StatusMessage("HLF1", NOW, True, StatusSource.DISPATCH).encode())
            | st.just(LinkMessage("DLK1", True, NOW).encode()),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_fuzzed_messages_on_any_topic_are_used_or_counted(
    messages: list[tuple[str, str, bytes]],
) -> None:
    src = source()
    for vehicle, kind, payload in messages:
        for made in src.handle(f"{PREFIX}/{vehicle}/{kind}", payload):
            assert made.vehicle == vehicle
            assert_valid(made)
    assert_books_balance(src)


# -- with a real broker ---------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
async def publisher(broker: MosquittoBroker) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(HOST, broker.port, identifier="test-publisher") as client:
        yield client


async def consume(src: MqttFixSource, into: list[Fix]) -> None:
    async for f in src:
        into.append(f)


@pytest.mark.integration
async def test_several_vehicles_over_a_real_broker_with_forgeries_dropped(
    broker: MosquittoBroker, publisher: aiomqtt.Client
) -> None:
    clock = RealClock()
    statuses: list[VehicleStatus] = []
    src = source(clock, port=broker.port, on_status=statuses.append)
    got: list[Fix] = []
    task = asyncio.create_task(consume(src, got))
    try:
        await eventually(lambda: src.link.connected, "the source to subscribe")
        now = float(int(clock.now()))
        pub = publisher.publish
        for k in range(5):
            for vehicle in ("HLF1", "ELW1"):
                topic = topic_for(PREFIX, vehicle, TopicKind.POSITION)
                await pub(topic, position(k, vehicle, t=now - 5 + k), qos=1)
            await pub(topic_for(PREFIX, "DLK1", TopicKind.NMEA), nmea_epoch(now - 5 + k), qos=1)
        await pub(topic_for(PREFIX, "TLF9", TopicKind.POSITION), position(0, "TLF9", t=now), qos=1)
        await pub(topic_for(PREFIX, "ELW1", TopicKind.POSITION), position(9, "HLF1", t=now), qos=1)
        await pub(topic_for(PREFIX, "ELW1", TopicKind.POSITION), b"\x00garbage", qos=1)
        await pub(
            topic_for(PREFIX, "HLF1", TopicKind.STATUS),
            StatusMessage("HLF1", now, True, StatusSource.DISPATCH).encode(),
            qos=1,
            retain=True,
        )
        await eventually(
            lambda: len(got) >= 15 and src.received["status"] == 1,
            "15 fixes and the status",
            diagnostics=lambda: f"got {len(got)} fixes, dropped {src.dropped}",
        )
        await eventually(lambda: sum(src.dropped.values()) == 3, "three drops")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    by_vehicle = Counter(f.vehicle for f in got)
    assert by_vehicle == Counter(HLF1=5, ELW1=5, DLK1=5)
    for vehicle in ("HLF1", "ELW1", "DLK1"):
        times = [f.time for f in got if f.vehicle == vehicle]
        assert times == sorted(times)
    for f in got:
        assert_valid(f)
    assert src.dropped_by_vehicle == {
        "TLF9": Counter(unknown_vehicle=1),
        "ELW1": Counter(vehicle_mismatch=1, bad_json=1),
    }
    assert statuses == [StatusMessage("HLF1", now, True, StatusSource.DISPATCH)]
    assert_books_balance(src)


@pytest.mark.integration
async def test_the_source_reconnects_and_resubscribes_after_a_broker_restart(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gps.mqtt")
    clock = RealClock()
    src = source(clock, port=broker.port)
    got: list[Fix] = []
    stop = asyncio.Event()

    async def keep_publishing() -> None:
        """1 position per 50 ms, reconnecting like any robust publisher."""
        seq = 0
        while not stop.is_set():
            try:
                async with aiomqtt.Client(HOST, broker.port, timeout=2) as client:
                    while not stop.is_set():
                        topic = topic_for(PREFIX, "HLF1", TopicKind.POSITION)
                        await client.publish(topic, position(seq, t=clock.now()), qos=1)
                        seq += 1
                        await asyncio.sleep(0.05)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    consumer = asyncio.create_task(consume(src, got))
    producer = asyncio.create_task(keep_publishing())
    try:
        await eventually(lambda: len(got) >= 5, "fixes before the restart")
        await asyncio.to_thread(broker.stop)
        await eventually(lambda: not src.link.connected, "the source to notice the outage")
        await asyncio.sleep(0.3)  # a real outage, with failed reconnect attempts
        restarted_at = clock.now()
        await asyncio.to_thread(broker.start)
        await eventually(
            lambda: sum(f.time > restarted_at for f in got) >= 5,
            "fixes published after the restart",
            within_s=15.0,
            diagnostics=lambda: f"link {src.link}",
        )
    finally:
        stop.set()
        consumer.cancel()
        await asyncio.gather(consumer, producer, return_exceptions=True)
    assert src.link.connects == 2
    assert src.link.outages == 1
    assert src.link.failures >= 2  # the lost connection and at least one refused attempt
    outage_logs = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(outage_logs) == 1, [r.getMessage() for r in outage_logs]
    message = outage_logs[0].getMessage()
    assert f"{HOST}:{broker.port}" in message
    assert "reconnecting" in message
    assert any("again after" in r.getMessage() for r in caplog.records)
    times = [f.time for f in got]
    assert times == sorted(times)


@pytest.mark.integration
async def test_a_wrong_password_is_reported_once_and_clearly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gps.mqtt")
    with MosquittoBroker(tmp_path / "auth", users={"central": "right"}) as broker:
        settings_ = BrokerSettings(
            HOST,
            broker.port,
            username="central",
            password="wrong",
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
        )
        src = MqttFixSource(settings_, ["HLF1"], RealClock())
        task = asyncio.create_task(consume(src, []))
        try:
            await eventually(lambda: src.link.failures >= 4, "several refused attempts")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert not task.done() or task.cancelled()
    assert src.link.last_error_kind == "auth"
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].levelno == logging.ERROR
    text = errors[0].getMessage()
    assert f"{HOST}:{broker.port}" in text
    assert "refused the credentials of user 'central'" in text
    assert "password" in text


@pytest.mark.integration
async def test_the_right_password_gets_in(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "auth", users={"central": "right", "pub": "p"}) as broker:
        settings_ = BrokerSettings(HOST, broker.port, username="central", password="right")
        src = MqttFixSource(settings_, ["HLF1"], RealClock())
        got: list[Fix] = []
        task = asyncio.create_task(consume(src, got))
        try:
            await eventually(lambda: src.link.connected, "the source to log in")
            async with aiomqtt.Client(HOST, broker.port, username="pub", password="p") as pub:
                topic = topic_for(PREFIX, "HLF1", TopicKind.POSITION)
                await pub.publish(topic, position(0, t=RealClock().now()), qos=1)
            await eventually(lambda: len(got) == 1, "the position")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.integration
async def test_a_broker_that_allows_anonymous_clients_is_found_out(broker: MosquittoBroker) -> None:
    settings_ = BrokerSettings(HOST, broker.port, username="any", password="thing")
    assert await accepts_anonymous(settings_) is True  # probed without the credentials
    assert "preemption-anonymous-probe-" in broker.log_text()


@pytest.mark.integration
async def test_a_broker_with_passwords_refuses_the_anonymous_probe(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "auth", users={"central": "right"}) as broker:
        settings_ = BrokerSettings(HOST, broker.port, username="central", password="right")
        assert await accepts_anonymous(settings_) is False


async def test_the_anonymous_probe_cannot_tell_without_a_broker() -> None:
    nobody = BrokerSettings(HOST, free_port())  # nothing listens: refused at once
    assert await accepts_anonymous(nobody) is None

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)  # takes the CONNECT and never answers
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        started = asyncio.get_running_loop().time()
        assert await accepts_anonymous(BrokerSettings(HOST, port), timeout_s=0.3) is None
        assert asyncio.get_running_loop().time() - started < 2.0
