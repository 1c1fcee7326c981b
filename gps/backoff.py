"""Delays between attempts to reach something that has gone away.

One rule for every reconnecting part of gps/: the serial receiver and gpsd
(:mod:`gps.serial`, :mod:`gps.gpsd`), the MQTT link (:class:`gps.mqtt.LinkWatch`,
used by the central source and the onboard forwarder) and the emergency inputs
(:mod:`gps.status_input`). The first delay is ``initial_s``, each next one
``factor`` times the last, never more than ``max_s``; the caller starts again
from the first delay once the peer delivers again.

``jitter`` spreads the attempts of many units (a fleet reconnecting after a
broker restart): each delay is scaled by a random factor in
``[1 - jitter, 1]`` drawn from the ``random.Random`` the caller passes (seeded
by the caller, so runs stay repeatable). Without an rng, or with jitter 0,
the delays are exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``initial_s``, times ``factor`` each attempt, capped at ``max_s``."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 < self.initial_s <= self.max_s < math.inf):
            raise ValueError(
                f"backoff needs 0 < initial_s <= max_s < inf, got initial_s={self.initial_s!r}, "
                f"max_s={self.max_s!r}; fix the reconnect settings"
            )
        if not (1.0 <= self.factor < math.inf):
            raise ValueError(
                f"backoff factor must be a finite number >= 1, got {self.factor!r}; "
                "fix the reconnect settings"
            )
        if not (0.0 <= self.jitter < 1.0):
            raise ValueError(
                f"backoff jitter must be in [0, 1), got {self.jitter!r}; fix the reconnect settings"
            )

    def base(self, attempt: int) -> float:
        """The delay after failed attempt number ``attempt`` (0 for the first), without jitter."""
        if attempt <= 0:
            return self.initial_s
        try:
            grown = self.initial_s * self.factor**attempt
        except OverflowError:
            return self.max_s
        return min(grown, self.max_s)

    def jittered(self, delay: float, rng: random.Random | None) -> float:
        """``delay`` scaled into ``[delay * (1 - jitter), delay]``; unchanged without an rng."""
        if rng is None or self.jitter == 0.0:
            return delay
        return delay * rng.uniform(1.0 - self.jitter, 1.0)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay after failed attempt number ``attempt`` (0 for the first)."""
        return self.jittered(self.base(attempt), rng)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delays of one outage, in order; endless (the last repeats at the cap)."""
        delay = self.initial_s
        while True:
            yield self.jittered(delay, rng)
            delay = min(delay * self.factor, self.max_s)
