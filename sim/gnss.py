"""A GNSS error model: what a receiver on a fire engine reports, given where it really is.

The route matcher has to be judged against errors that look like a city's, not
against independent Gaussian noise: a receiver's position error wanders slowly
(the same 10 m offset for half a minute), jumps by tens of metres for a few
seconds when a facade reflects the signal, and sometimes vanishes altogether
under a bridge. A matcher tuned on white noise counts one slow error as fresh
evidence every second and commits to the wrong branch at a shallow fork. So the
model has these parts, each drawn from its own random stream:

* **Slow error** (``bias``): a first-order Gauss-Markov process per axis (east,
  north), exact for any interval ``dt`` between fixes::

      e_next = e * exp(-dt / tau) + sigma * sqrt(1 - exp(-2 dt / tau)) * N(0, 1)

  ``sigma_m`` is the stationary standard deviation **per axis**; the horizontal
  RMS error is ``sigma_m * sqrt(2)`` (:attr:`GnssErrorConfig.horizontal_rms_m`).
  The first fix draws the error from the stationary distribution, so the
  process is stationary from the start. Because the update is exact, a fix rate
  of 1 Hz, 10 Hz or irregular gives the same statistics, and a dropout simply
  means a longer ``dt``: the error on reacquisition is partly new.
* **White noise**: independent per fix and axis, ``white_m`` per axis.
* **Multipath bursts**: episodes in time, alternating with clear periods. A
  burst adds one constant offset (magnitude uniform in ``multipath_m``,
  direction uniform, or across the street with ``multipath_cross_track``) for a
  duration uniform in ``multipath_duration_s``; clear periods are exponential.
  ``multipath_rate`` is the **long-run fraction of time spent in a burst**, and
  therefore the fraction of fixes flagged ``in_multipath`` when fixes are taken
  at a rate that does not depend on the bursts (any fixed rate): the mean clear
  period is ``mean_duration * (1 - rate) / rate``. Receivers do not notice
  multipath, so HDOP is not raised during a burst.
* **Dropouts**: episodes in time during which :meth:`GnssErrorModel.observe`
  returns None; they start at ``dropout_rate_per_h`` per hour of reception
  (Poisson) and last a time uniform in ``dropout_s``.
* **Speed and course**: Doppler-derived, so **not affected by multipath** (a
  reflected signal shifts the position, not the measured velocity). Reported
  speed is ``|v + N(0, speed_sigma_ms)|``: never negative, and slightly positive
  at a standstill as real receivers report. Course is the true heading plus
  noise whose spread grows at low speed as the velocity noise does
  (``hypot(course_sigma_deg, degrees(speed_sigma_ms / speed))``), and it is
  **None when the reported speed is below** ``course_min_speed_ms``: real
  receivers blank or freeze the course there because it is noise, and a
  matcher must cope with the missing value (0 disables the cut).
* **HDOP**: a median value times a log-normal factor that wanders with the same
  time constant as the slow error. It is cosmetic: it does not scale the error,
  because in a city HDOP says little about the actual error either.

Multipath and dropout episodes are laid out in time from their own streams, so
the same seed gives the same episodes whatever the fix rate. Everything is
reproducible to the bit for the same seed and the same sequence of calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from preemption.kernel.model import Fix, FixQuality
from routes.projection import Projector
from sim.nmea_out import epoch_sentences, sentence

__all__ = [
    "PRESETS",
    "Burst",
    "Dropout",
    "GnssErrorConfig",
    "GnssErrorModel",
    "Observation",
    "to_fix",
    "to_nmea",
]


def _range(name: str, r: tuple[float, float], low: float) -> None:
    a, b = r
    if not (math.isfinite(a) and math.isfinite(b) and low <= a <= b):
        raise ValueError(f"GnssErrorConfig.{name}: expected ({low} <=) low <= high, got {r!r}")


@dataclass(frozen=True, slots=True)
class GnssErrorConfig:
    """Parameters of the error model; see the module docstring for their meaning."""

    sigma_m: float = 10.0  # stationary std of the slow error, per axis
    tau_s: float = 30.0  # its time constant
    white_m: float = 1.0  # std of the per-fix white noise, per axis
    multipath_rate: float = 0.03  # long-run fraction of time (and fixes) inside a burst
    multipath_m: tuple[float, float] = (30.0, 100.0)  # offset magnitude, uniform
    multipath_duration_s: tuple[float, float] = (2.0, 6.0)  # burst length, uniform
    multipath_cross_track: bool = False  # offset across the direction of travel (facades)
    dropout_rate_per_h: float = 2.0  # dropouts starting per hour of reception
    dropout_s: tuple[float, float] = (5.0, 60.0)  # dropout length, uniform
    speed_sigma_ms: float = 0.2  # std of the Doppler speed noise
    course_sigma_deg: float = 2.0  # std of the course noise at speed
    course_min_speed_ms: float = 1.0  # below this reported speed the course is None
    hdop: float = 0.9  # median HDOP
    hdop_spread: float = 0.2  # std of log(HDOP / median)

    def __post_init__(self) -> None:
        for name in ("sigma_m", "white_m", "speed_sigma_ms", "course_sigma_deg", "hdop_spread"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"GnssErrorConfig.{name}: must be a finite number >= 0, got {v}")
        if not (math.isfinite(self.tau_s) and self.tau_s > 0):
            raise ValueError(f"GnssErrorConfig.tau_s: must be > 0 seconds, got {self.tau_s}")
        if not 0.0 <= self.multipath_rate < 1.0:
            raise ValueError(
                f"GnssErrorConfig.multipath_rate: a fraction of time in [0, 1), "
                f"got {self.multipath_rate}"
            )
        if not (math.isfinite(self.dropout_rate_per_h) and self.dropout_rate_per_h >= 0):
            raise ValueError(
                f"GnssErrorConfig.dropout_rate_per_h: must be >= 0, got {self.dropout_rate_per_h}"
            )
        if not (math.isfinite(self.course_min_speed_ms) and self.course_min_speed_ms >= 0):
            raise ValueError("GnssErrorConfig.course_min_speed_ms: must be >= 0")
        if not (math.isfinite(self.hdop) and self.hdop > 0):
            raise ValueError(f"GnssErrorConfig.hdop: must be > 0, got {self.hdop}")
        _range("multipath_m", self.multipath_m, 0.0)
        _range("dropout_s", self.dropout_s, 0.0)
        _range("multipath_duration_s", self.multipath_duration_s, 0.0)
        if self.multipath_rate > 0 and self.multipath_duration_s[1] <= 0:
            raise ValueError("GnssErrorConfig.multipath_duration_s: bursts need a length > 0")

    @property
    def horizontal_rms_m(self) -> float:
        """RMS of the horizontal error from the slow and white parts (no multipath)."""
        return math.sqrt(2.0 * (self.sigma_m**2 + self.white_m**2))

    @property
    def mean_clear_s(self) -> float:
        """Mean time between bursts that makes the burst fraction ``multipath_rate``."""
        if self.multipath_rate <= 0:
            return math.inf
        mean_burst = 0.5 * (self.multipath_duration_s[0] + self.multipath_duration_s[1])
        return mean_burst * (1.0 - self.multipath_rate) / self.multipath_rate


PRESETS: Mapping[str, GnssErrorConfig] = MappingProxyType(
    {
        # Suburban arterial, open sky: small, slowly wandering error, rare trouble.
        "open": GnssErrorConfig(
            sigma_m=3.0, tau_s=60.0, white_m=0.5, multipath_rate=0.01, dropout_rate_per_h=0.5
        ),
        # Typical inner city: the default.
        "urban": GnssErrorConfig(),
        # Street canyon: large, quick error, frequent reflections across the street.
        "canyon": GnssErrorConfig(
            sigma_m=20.0,
            tau_s=20.0,
            white_m=2.0,
            multipath_rate=0.05,
            multipath_cross_track=True,
            dropout_rate_per_h=6.0,
            hdop=1.6,
        ),
    }
)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the receiver reports at time ``t``, with the truth kept for evaluation.

    ``x``/``y`` are metric (the projected CRS of the caller), like ``true_x``/
    ``true_y``; ``bias_x``/``bias_y`` is the slow Gauss-Markov part of the error.
    """

    t: float
    x: float
    y: float
    speed: float  # m/s, >= 0
    course: float | None  # degrees true in [0, 360), None below course_min_speed_ms
    hdop: float
    true_x: float
    true_y: float
    bias_x: float
    bias_y: float
    multipath_burst: int  # serial number (1, 2, ...) of the burst this fix is in, 0 if none
    multipath_m: float  # magnitude of this fix's multipath offset, 0 outside bursts

    @property
    def in_multipath(self) -> bool:
        return self.multipath_burst > 0

    @property
    def error_x(self) -> float:
        return self.x - self.true_x

    @property
    def error_y(self) -> float:
        return self.y - self.true_y

    @property
    def error_m(self) -> float:
        """Horizontal distance between the reported and the true position."""
        return math.hypot(self.x - self.true_x, self.y - self.true_y)


@dataclass(frozen=True, slots=True)
class Burst:
    """One multipath episode: [start, end) in the model's time, and its offset."""

    number: int
    start: float
    end: float
    magnitude_m: float
    direction_deg: float  # direction of the offset (true), for uniform direction
    cross_side: float  # +1 left / -1 right of travel, for cross-track offsets


@dataclass(frozen=True, slots=True)
class Dropout:
    """One dropout: no fix in [start, end)."""

    start: float
    end: float


def _unit(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


class _Episodes:
    """Alternating clear periods (exponential) and episodes (uniform length) in time.

    Laid out lazily from its own stream as time advances, so the layout depends
    only on the seed and the start time, never on when it is asked.
    """

    def __init__(
        self, rng: np.random.Generator, mean_clear_s: float, length_s: tuple[float, float]
    ) -> None:
        self._rng = rng
        self._mean_clear = mean_clear_s
        self._length = length_s
        self.active = False
        self.start = 0.0
        self.end = math.inf
        self.count = 0

    def begin(self, t0: float) -> None:
        # Starts clear: the receiver has just produced its first fix.
        self.start = t0
        self.end = t0 + self._clear()

    def _clear(self) -> float:
        if math.isinf(self._mean_clear):
            return math.inf
        return float(self._rng.exponential(self._mean_clear))

    def advance(self, t: float) -> bool:
        """Whether an episode is running at ``t``; ``on_start`` fires for each new one."""
        while t >= self.end:
            self.active = not self.active
            self.start = self.end
            if self.active:
                self.count += 1
                self.end = self.start + _unit(self._rng, self._length)
                self.on_start()
            else:
                self.end = self.start + self._clear()
        return self.active

    def on_start(self) -> None:
        """Hook: draw what the new episode needs (after its length)."""


class _Multipath(_Episodes):
    def __init__(self, rng: np.random.Generator, cfg: GnssErrorConfig) -> None:
        super().__init__(rng, cfg.mean_clear_s, cfg.multipath_duration_s)
        self._cfg = cfg
        self.bursts: list[Burst] = []

    def on_start(self) -> None:
        magnitude = _unit(self._rng, self._cfg.multipath_m)
        direction = float(self._rng.uniform(0.0, 360.0))
        side = 1.0 if self._rng.random() < 0.5 else -1.0
        self.bursts.append(Burst(self.count, self.start, self.end, magnitude, direction, side))


class _Dropouts(_Episodes):
    def __init__(self, rng: np.random.Generator, cfg: GnssErrorConfig) -> None:
        rate = cfg.dropout_rate_per_h
        super().__init__(rng, 3600.0 / rate if rate > 0 else math.inf, cfg.dropout_s)
        self.dropouts: list[Dropout] = []

    def on_start(self) -> None:
        self.dropouts.append(Dropout(self.start, self.end))


@dataclass
class _GaussMarkov:
    """A unit-variance first-order Gauss-Markov process per axis, exact for any dt."""

    rng: np.random.Generator
    tau_s: float
    axes: int
    value: list[float] = field(default_factory=list)

    def step(self, dt: float | None) -> list[float]:
        z = self.rng.standard_normal(self.axes)
        if dt is None:
            self.value = [float(v) for v in z]
        else:
            a = math.exp(-dt / self.tau_s)
            b = math.sqrt(-math.expm1(-2.0 * dt / self.tau_s))  # 1 - a^2, exact for small dt
            self.value = [a * v + b * float(w) for v, w in zip(self.value, z, strict=True)]
        return self.value


class GnssErrorModel:
    """Turns true positions into what a receiver reports, one fix at a time.

    Time ``t`` is any seconds scale (simulation seconds or UTC epoch) that never
    goes backwards; only differences matter to the model.
    """

    def __init__(self, config: GnssErrorConfig | None = None, seed: int = 0) -> None:
        self.config = config if config is not None else GnssErrorConfig()
        self.seed = seed
        # One stream per part, so the parts never borrow each other's draws: the
        # multipath and dropout layouts depend on the seed alone, not on the fix
        # times or on the other parts' settings.
        streams = [
            np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(6)
        ]
        bias_rng, self._white, mp_rng, drop_rng, self._motion, hdop_rng = streams
        cfg = self.config
        self._bias = _GaussMarkov(bias_rng, cfg.tau_s, 2)
        self._hdop = _GaussMarkov(hdop_rng, cfg.tau_s, 1)
        self._multipath = _Multipath(mp_rng, cfg)
        self._dropout = _Dropouts(drop_rng, cfg)
        self._t_last: float | None = None  # last time asked (any answer)
        self._t_fix: float | None = None  # last time a fix was produced

    @property
    def bursts(self) -> list[Burst]:
        """Multipath bursts begun so far (evaluation: which fixes were reflected)."""
        return self._multipath.bursts

    @property
    def dropouts(self) -> list[Dropout]:
        """Dropouts begun so far (evaluation: where the matcher had to bridge a gap)."""
        return self._dropout.dropouts

    def observe(
        self, t: float, x: float, y: float, speed: float, heading_deg: float
    ) -> Observation | None:
        """The receiver's fix at ``t`` for true metric position, speed and heading.

        None while a dropout lasts.
        """
        if not math.isfinite(t):
            raise ValueError(f"GnssErrorModel.observe: time must be finite, got {t}")
        if self._t_last is None:
            self._multipath.begin(t)
            self._dropout.begin(t)
        elif t < self._t_last:
            raise ValueError(
                f"GnssErrorModel.observe: time went backwards ({t} after {self._t_last}); "
                "the error processes only run forwards"
            )
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"GnssErrorModel.observe: true speed must be >= 0 m/s, got {speed}")
        self._t_last = t
        if self._dropout.advance(t):
            return None
        cfg = self.config
        dt = None if self._t_fix is None else t - self._t_fix
        self._t_fix = t
        bx, by = (cfg.sigma_m * v for v in self._bias.step(dt))
        (h,) = self._hdop.step(dt)
        wx, wy = (cfg.white_m * float(v) for v in self._white.standard_normal(2))
        mx = my = magnitude = 0.0
        burst = 0
        if self._multipath.advance(t):
            b = self._multipath.bursts[-1]
            burst, magnitude = b.number, b.magnitude_m
            if cfg.multipath_cross_track:
                # Left of travel is the heading turned 90 degrees anticlockwise.
                ang = math.radians(heading_deg - 90.0 * b.cross_side)
            else:
                ang = math.radians(b.direction_deg)
            mx, my = magnitude * math.sin(ang), magnitude * math.cos(ang)
        v_noise, c_noise = (float(v) for v in self._motion.standard_normal(2))
        reported = abs(speed + cfg.speed_sigma_ms * v_noise)
        course: float | None = None
        if reported >= cfg.course_min_speed_ms:
            spread = math.hypot(
                cfg.course_sigma_deg,
                math.degrees(cfg.speed_sigma_ms / reported) if reported > 0 else 180.0,
            )
            course = (heading_deg + min(spread, 180.0) * c_noise) % 360.0
            if course >= 360.0:  # -1e-17 % 360.0 == 360.0 in floating point
                course = 0.0
        return Observation(
            t=t,
            x=float(x + bx + wx + mx),
            y=float(y + by + wy + my),
            speed=reported,
            course=course,
            hdop=cfg.hdop * math.exp(cfg.hdop_spread * h),
            true_x=float(x),
            true_y=float(y),
            bias_x=bx,
            bias_y=by,
            multipath_burst=burst,
            multipath_m=magnitude,
        )


def to_fix(
    obs: Observation,
    projector: Projector,
    vehicle: str,
    *,
    time_offset_s: float = 0.0,
    source: str = "sim-gnss",
    satellites: int | None = None,
) -> Fix:
    """The observation as the matcher receives it (WGS84; time ``obs.t + time_offset_s``).

    ``time_offset_s`` turns simulation seconds into UTC epoch seconds.
    """
    lon, lat = projector.to_wgs84(obs.x, obs.y)
    return Fix(
        vehicle=vehicle,
        time=obs.t + time_offset_s,
        lat=lat,
        lon=lon,
        speed=obs.speed,
        course=obs.course,
        hdop=obs.hdop,
        quality=FixQuality.GPS,
        source=source,
        satellites=satellites,
    )


def to_nmea(
    obs: Observation,
    projector: Projector,
    *,
    time_offset_s: float = 0.0,
    satellites: int = 9,
    talker: str = "GN",
) -> list[str]:
    """RMC and GGA of the observation, as the receiver would send them.

    A missing course is an empty RMC course field, as receivers send it at a
    standstill: ``epoch_sentences`` always writes one, so the field is blanked
    and the checksum recomputed.
    """
    lon, lat = projector.to_wgs84(obs.x, obs.y)
    lines = epoch_sentences(
        obs.t + time_offset_s,
        lat,
        lon,
        obs.speed,
        0.0 if obs.course is None else obs.course,
        hdop=obs.hdop,
        satellites=satellites,
        talker=talker,
    )
    if obs.course is None:
        fields = lines[0][1 : lines[0].index("*")].split(",")
        fields[8] = ""  # RMC: ..., speed (7), course (8), date (9), ...
        lines[0] = sentence(",".join(fields))
    return lines
