"""The rules a fix must pass, shared by every decoder in gps/.

NMEA (:mod:`gps.nmea`), gpsd (:mod:`gps.gpsd`), GPX/CSV tracks
(:mod:`gps.files`) and the onboard JSON messages (:mod:`gps.position_json`)
all apply the same plausibility rules; each module keeps its own names for
what it drops, but the rules live here:

* coordinates in range (NaN fails the range test) and not exactly 0,0
  (``impossible_coordinates``);
* speed None or 0..:data:`MAX_SPEED_MS` m/s (``impossible_speed``);
* course in [0, 360] (360 read as 0), hdop finite and > 0, satellites
  0..:data:`MAX_SATELLITES`: the lenient decoders turn a bad one into None,
  because a bad course is not worth the position;
* fixes in strictly increasing time, and no single fix far ahead of the
  stream taken as the new time (:class:`TimeOrder`);
* no fix further from the last one than a vehicle can drive
  (:class:`MotionGate`, one per vehicle, applied by the daemon before the
  matcher).
"""

from __future__ import annotations

import math
from typing import Final, Generic, TypeVar

from preemption.kernel.clock import Clock
from preemption.kernel.model import Fix

__all__ = [
    "CONFIRM_EPOCHS",
    "CONFIRM_FIXES",
    "HDOP_SLACK_M",
    "HELD",
    "JUMP_CYCLES",
    "MAX_FUTURE_S",
    "MAX_SATELLITES",
    "MAX_SPEED_MS",
    "SETTLE_WITHIN_S",
    "SLACK_M",
    "MotionGate",
    "TimeOrder",
    "course_or_none",
    "ground_distance_m",
    "plausible_coordinates",
    "plausible_hdop",
    "plausible_satellites",
    "plausible_speed",
    "position_problem",
]

MAX_SPEED_MS: Final = 100.0  # 360 km/h: beyond any road vehicle, so a corrupt field
MAX_SATELLITES: Final = 1000


def plausible_coordinates(lat: float, lon: float) -> bool:
    """In range (NaN is not) and not exactly 0,0, where broken receivers put a fix."""
    return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0 and not (lat == 0.0 and lon == 0.0)


def plausible_speed(speed: float | None) -> bool:
    """None, or 0..MAX_SPEED_MS m/s (NaN is not)."""
    return speed is None or 0.0 <= speed <= MAX_SPEED_MS


def plausible_hdop(hdop: float) -> bool:
    return 0.0 < hdop < math.inf


def plausible_satellites(count: int) -> bool:
    return 0 <= count <= MAX_SATELLITES


def position_problem(lat: float, lon: float, speed: float | None) -> str | None:
    """``impossible_coordinates`` or ``impossible_speed``, or None if both are plausible."""
    if not plausible_coordinates(lat, lon):
        return "impossible_coordinates"
    if not plausible_speed(speed):
        return "impossible_speed"
    return None


def course_or_none(course: float | None) -> float | None:
    """A course in [0, 360] as [0, 360); anything else (NaN too) as None."""
    if course is None or not 0.0 <= course <= 360.0:
        return None
    return course % 360.0


# -- time order ---------------------------------------------------------------

T = TypeVar("T")

HELD: Final = "held"  # TimeOrder.check: kept back as suspect; not a drop (yet)
JUMP_CYCLES: Final = 2.5  # an epoch further than this many cycles past the last is a jump
CONFIRM_EPOCHS: Final = 3  # consistent epochs of a jumped stream before it is followed
MAX_FUTURE_S: Final = 5.0  # ahead of the wall clock before an epoch is from_future
# Before the stream has shown two epochs its cycle is unknown: 1 s, the rate of
# most receivers, judges the second epoch (a slower one is only held, not lost).
_FIRST_CYCLE_S: Final = 1.0
# A jumped run that never settles into a cadence is still a track of its own
# once this long: released rather than held (or lost) for ever.
_MAX_HELD_FACTOR: Final = 4
SETTLE_WITHIN_S: Final = 86_400.0  # a held run this close is released at the end of a stream


class TimeOrder(Generic[T]):
    """The time order of one stream of epochs, robust to a single outlier in time.

    Each epoch must be later than the last accepted one (``time_backwards``,
    ``duplicate_epoch``). An epoch more than :data:`JUMP_CYCLES` of the stream's
    cycle (learned: the median of the last three intervals) past the last one is
    a *jump*: either the receiver's clock really moved on (a reset, a recorded
    log that continues after a pause, a dropout) or one corrupt but
    checksum-valid epoch is dated ahead. Taking such an epoch as the reference
    would drop every real epoch after it as ``time_backwards`` (one sentence
    dated years ahead cost 319 sentences), so it is *held* instead:

    * an epoch that continues the old stream drops what is held (``time_jump``,
      via :meth:`take`) and is accepted;
    * a held run is followed once its last ``confirm`` epochs keep a cadence of
      their own (intervals within a factor :data:`JUMP_CYCLES` of each other):
      everything held is released in time order, the last becomes the
      reference, and :attr:`resyncs` counts it. A held epoch later than the
      next one to arrive is dropped (``time_jump``) and the run goes on from
      the earlier one;
    * a held run of ``4 * confirm`` epochs is released even without a cadence.

    So one arbitrary epoch inserted into a stream costs at most itself and the
    two real epochs it may overtake (within the jump limit), once the stream
    has shown its cycle. Before that (the first two epochs) nothing but the
    wall clock can tell which epoch is wrong.

    With a ``clock``, an epoch more than ``max_future_s`` ahead of
    ``clock.now()`` is ``from_future`` and never the reference; and a jump that
    the monotonic clock explains (as much time has passed since the last
    accepted epoch arrived, give or take a cycle: a dropout ended) is accepted
    at once instead of being held. Without one (recorded logs, whose times are
    old), only the stream's own cadence judges.

    Use: ``reason = order.check(time, item)``: None, the item is accepted; :data:`HELD`,
    the order keeps it; else the drop reason. Then, if :attr:`changed`,
    :meth:`take` the held items now accepted (to use before ``item``, in order)
    and those dropped as ``time_jump``. :meth:`settle` at the end of a stream
    decides what is still held. Not thread-safe; one per stream.
    """

    __slots__ = (
        "_clock",
        "_confirm",
        "_discarded",
        "_gap1",
        "_gap2",
        "_held",
        "_held_times",
        "_last_mono",
        "_max_future_s",
        "_released",
        "changed",
        "cycle",
        "last",
        "resyncs",
    )

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_future_s: float = MAX_FUTURE_S,
        confirm: int = CONFIRM_EPOCHS,
    ) -> None:
        if not 0.0 <= max_future_s < math.inf:
            raise ValueError(f"max_future_s must be a finite number >= 0, not {max_future_s!r}")
        if confirm < 2:
            raise ValueError(f"confirm must be at least 2 epochs, not {confirm!r}")
        self.last: float | None = None  # time of the last accepted epoch: the reference
        self.cycle: float | None = None  # learned interval between epochs
        self.resyncs = 0  # jumped runs followed
        self.changed = False  # something to take()
        self._clock = clock
        self._max_future_s = max_future_s
        self._confirm = confirm
        self._last_mono = 0.0
        self._gap1 = 0.0  # the two intervals before the newest, older first; 0 = none yet
        self._gap2 = 0.0
        self._held: list[T] = []
        self._held_times: list[float] = []
        self._released: list[T] = []
        self._discarded: list[T] = []

    @property
    def pending(self) -> list[T]:
        """The items held now, in time order (a copy)."""
        return list(self._held)

    def check(self, time: float, item: T) -> str | None:
        """None (accepted), :data:`HELD`, or ``from_future``, ``duplicate_epoch``,
        ``time_backwards``."""
        clock = self._clock
        mono = 0.0
        if clock is not None:
            if time > clock.now() + self._max_future_s:
                return "from_future"
            mono = clock.monotonic()
        last = self.last
        if last is None:
            self.last = time
            self._last_mono = mono
            return None
        gap = time - last
        if not gap > 0.0:  # NaN too
            return "duplicate_epoch" if gap == 0.0 else "time_backwards"
        cycle = self.cycle
        if cycle is None:
            cycle = _FIRST_CYCLE_S
        if gap > JUMP_CYCLES * cycle and (clock is None or gap > mono - self._last_mono + cycle):
            return self._hold(time, item, mono)
        if self._held:
            self._discard(0)
        self._interval(gap)
        self.last = time
        self._last_mono = mono
        return None

    def take(self) -> tuple[list[T], list[T]]:
        """(released, discarded) since the last take: held items now accepted, in time
        order and before the item just checked, and held items dropped as ``time_jump``."""
        released, discarded = self._released, self._discarded
        self._released, self._discarded = [], []
        self.changed = False
        return released, discarded

    def settle(self) -> None:
        """End of the stream: decide what is still held.

        Nothing comes after it to be poisoned any more, so a held run that starts
        within :data:`SETTLE_WITHIN_S` of the last accepted epoch is released (a
        recording that goes on after a pause keeps its last epochs); one further
        ahead is dropped (``time_jump``): no pause is that long, a corrupt date is.
        """
        times = self._held_times
        if not times:
            return
        last = self.last
        if last is not None and times[0] - last <= SETTLE_WITHIN_S:
            self._released.extend(self._held)
            self.last = times[len(times) - 1]
            self.resyncs += 1
            self._held.clear()
            times.clear()
            self.changed = True
        else:
            self._discard(0)

    def _hold(self, time: float, item: T, mono: float) -> str | None:
        times = self._held_times
        n = len(times)
        if n and time <= times[n - 1]:
            k = n - 1
            while k > 0 and times[k - 1] >= time:
                k -= 1
            if times[k] == time:
                return "duplicate_epoch"  # a repeat of a held epoch adds nothing
            self._discard(k)  # held epochs later than this one: it cannot precede them
            n = k
        times.append(time)
        self._held.append(item)
        n += 1
        if n >= self._confirm and (
            n >= _MAX_HELD_FACTOR * self._confirm or self._keeps_cadence(times)
        ):
            self._release(mono)
            return None
        return HELD

    def _keeps_cadence(self, times: list[float]) -> bool:
        """The last ``confirm`` held epochs have intervals within JUMP_CYCLES of each other."""
        n = len(times)
        low = math.inf
        high = 0.0
        for i in range(n - self._confirm + 1, n):
            d = times[i] - times[i - 1]
            low = min(low, d)
            high = max(high, d)
        return high <= JUMP_CYCLES * low

    def _release(self, mono: float) -> None:
        times = self._held_times
        held = self._held
        n = len(times)
        self._gap1 = self._gap2 = 0.0  # the new cadence is the run's own
        for i in range(max(1, n - 3), n):
            self._interval(times[i] - times[i - 1])
        self.last = times[n - 1]
        self._last_mono = mono
        self.resyncs += 1
        # The last one is the item just checked: its caller uses it.
        self._released.extend(held[: n - 1])
        self.changed = True
        held.clear()
        times.clear()

    def _interval(self, gap: float) -> None:
        """Learn the cycle: the median of the last three intervals, so that one odd
        interval (a missed epoch, an outlier accepted) does not move it."""
        low = self._gap1
        high = self._gap2
        self._gap1 = high
        self._gap2 = gap
        if low > 0.0:
            if low > high:
                low, high = high, low
            self.cycle = low if gap < low else high if gap > high else gap
        elif high > 0.0:
            self.cycle = high if high < gap else gap
        else:
            self.cycle = gap

    def _discard(self, start: int) -> None:
        self._discarded.extend(self._held[start:])
        del self._held[start:]
        del self._held_times[start:]
        self.changed = True


# -- motion ------------------------------------------------------------------

_WGS84_A: Final = 6_378_137.0
_WGS84_E2: Final = 6.694379990141317e-3
_RAD: Final = math.pi / 180.0
# GNSS error a jump must exceed before it counts as impossible. The receiver's own
# error moves between two fixes: multipath in a street canyon shifts a fix by tens
# of metres when a reflection starts or ends (the simulator's city model draws
# 30-100 m), and it does so between two fixes 0.1 s apart as readily as 1 s apart.
SLACK_M: Final = 120.0
HDOP_SLACK_M: Final = 20.0  # per unit of hdop, when that is more than SLACK_M
CONFIRM_FIXES: Final = 5


def _metres_per_degree(lat: float) -> tuple[float, float]:
    """(east, north) metres per degree at ``lat`` on the WGS84 ellipsoid."""
    s = math.sin(lat * _RAD)
    w = 1.0 - _WGS84_E2 * s * s
    n = _WGS84_A / math.sqrt(w)  # prime vertical radius of curvature
    m = n * (1.0 - _WGS84_E2) / w  # meridional radius of curvature
    return n * math.cos(lat * _RAD) * _RAD, m * _RAD


def ground_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Ground distance by a local equirectangular approximation on WGS84.

    Metres per degree are taken at the first point, with the ellipsoid's radii
    of curvature there, so the error comes only from the latitude changing
    along the way: below 0.05 % up to 5 km (under 70° latitude), about 0.5 % at
    50 km. Longitude differences are taken across the antimeridian.
    """
    kx, ky = _metres_per_degree(lat1)
    return math.sqrt(_squared_m(lat2 - lat1, _wrap(lon2 - lon1), kx, ky))


def _wrap(dlon: float) -> float:
    if dlon > 180.0:
        return dlon - 360.0
    if dlon < -180.0:
        return dlon + 360.0
    return dlon


def _squared_m(dlat: float, dlon: float, kx: float, ky: float) -> float:
    dx = dlon * kx
    dy = dlat * ky
    return dx * dx + dy * dy


class MotionGate:
    """Drops fixes of one vehicle that are further from the last one than it can drive.

    A fix more than ``max_speed_ms * dt + slack`` from the last accepted fix is an
    ``impossible_jump`` (``dt`` the time between them, 0 if it does not advance:
    time order is :class:`TimeOrder`'s business). ``slack`` is the GNSS error the
    two fixes may carry: ``slack_m`` (default :data:`SLACK_M`), or ``hdop_slack_m``
    per unit of the larger hdop of the two when that is more. A receiver that
    really is somewhere else (after a bad stretch, or a first fix that was
    wrong) is not locked out: when ``confirm`` dropped fixes in a row are
    consistent with each other by the same rule, the last of them is accepted
    as the new track (:attr:`resyncs` counts it).

    One per vehicle, between the decoder and the matcher; a few float
    operations per fix (distance: :func:`ground_distance_m`'s approximation,
    with the metres per degree kept from the fix they are measured from).
    """

    __slots__ = (
        "_c_kx",
        "_c_ky",
        "_c_lat",
        "_c_lon",
        "_c_slack",
        "_c_time",
        "_count",
        "_kx",
        "_ky",
        "_lat",
        "_lon",
        "_slack",
        "_started",
        "_time",
        "confirm",
        "hdop_slack_m",
        "max_speed_ms",
        "resyncs",
        "slack_m",
    )

    def __init__(
        self,
        max_speed_ms: float = 60.0,
        slack_m: float = SLACK_M,
        confirm: int = CONFIRM_FIXES,
        *,
        hdop_slack_m: float = HDOP_SLACK_M,
    ) -> None:
        for name, value in (
            ("max_speed_ms", max_speed_ms),
            ("slack_m", slack_m),
            ("hdop_slack_m", hdop_slack_m),
        ):
            if not 0.0 <= value < math.inf:
                raise ValueError(f"MotionGate {name} must be a finite number >= 0, not {value!r}")
        if confirm < 1:
            raise ValueError(f"MotionGate confirm must be at least 1 fix, not {confirm!r}")
        self.max_speed_ms = max_speed_ms
        self.slack_m = slack_m
        self.hdop_slack_m = hdop_slack_m
        self.confirm = confirm
        self.resyncs = 0
        self._started = False
        # The last accepted fix, with its metres per degree and its own slack.
        self._time = self._lat = self._lon = self._kx = self._ky = self._slack = 0.0
        # The last dropped fix and how many consistent drops in a row end with it.
        self._c_time = self._c_lat = self._c_lon = self._c_kx = self._c_ky = 0.0
        self._c_slack = 0.0
        self._count = 0

    def check(self, fix: Fix) -> str | None:
        """None: use the fix (it is the new reference); else ``impossible_jump``."""
        hdop = fix.hdop
        slack = self.slack_m
        if hdop is not None and hdop * self.hdop_slack_m > slack:
            slack = hdop * self.hdop_slack_m
        if not self._started:
            self._started = True
            self._accept(fix, slack)
            return None
        if self._reachable(
            self._time, self._lat, self._lon, self._kx, self._ky, self._slack, fix, slack
        ):
            self._accept(fix, slack)
            return None
        if self._count > 0 and self._reachable(
            self._c_time,
            self._c_lat,
            self._c_lon,
            self._c_kx,
            self._c_ky,
            self._c_slack,
            fix,
            slack,
        ):
            self._count += 1
        else:
            self._count = 1
        if self._count >= self.confirm:
            self.resyncs += 1
            self._accept(fix, slack)
            return None
        self._c_time, self._c_lat, self._c_lon = fix.time, fix.lat, fix.lon
        self._c_kx, self._c_ky = _metres_per_degree(fix.lat)
        self._c_slack = slack
        return "impossible_jump"

    def _reachable(
        self,
        time: float,
        lat: float,
        lon: float,
        kx: float,
        ky: float,
        slack0: float,
        fix: Fix,
        slack: float,
    ) -> bool:
        dt = fix.time - time
        if not dt > 0.0:
            dt = 0.0
        reach = self.max_speed_ms * dt + max(slack0, slack)
        # Not "> reach": a NaN coordinate must not pass.
        return _squared_m(fix.lat - lat, _wrap(fix.lon - lon), kx, ky) <= reach * reach

    def _accept(self, fix: Fix, slack: float) -> None:
        self._time, self._lat, self._lon = fix.time, fix.lat, fix.lon
        self._kx, self._ky = _metres_per_degree(fix.lat)
        self._slack = slack
        self._count = 0
