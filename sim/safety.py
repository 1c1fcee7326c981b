"""An independent safety monitor: judges a controller by its aspects alone.

The monitor never looks inside a controller. It is told the signal program (what
the street was built for) and, after every simulation step, the aspect of every
signal group. From that sequence it checks these rules:

``conflict``
    Two conflicting signal groups are green at the same time. Groups conflict
    when no stage of the program has both green together. Reported once when the
    pair becomes green together (not again at every sample while it lasts).
``yellow``
    A yellow shorter than ``program.yellow_s``. A green followed directly by red
    (no yellow seen at all) counts as a yellow of (at most) one sample interval.
``pedestrian_clearance``
    The same for a pedestrian group and its clearance time (Räumzeit), which the
    controller model shows as ``Aspect.YELLOW``.
``intergreen``
    For pairs the intergreen matrix names: less than its intergreen (Zwischenzeit)
    from the end of a group's green to the start of a conflicting group's green.
    (Without a matrix entry, yellow and all-red together are the intergreen.)
``all_red``
    For pairs the intergreen matrix does not name: less than ``program.all_red_s``
    between the end of a group's yellow (its
    change to red) and the start of a conflicting group's green. A green that
    starts while a conflicting group still shows yellow is always reported.
``min_green``
    A green shorter than ``program.min_green_s``.

Sampling and tolerance
----------------------
The aspects are samples at instants t0 < t1 < ...; what changed between two of
them changed at some unknown moment in (t[k-1], t[k]]. The monitor therefore
brackets every switch between the last sample before it and the first sample
after it, and reports a duration as too short only when even the *longest* true
duration consistent with the samples is too short: an interval first seen at
t[i] and first seen over at t[j] lasted less than ``t[j] - t[i-1]``. With a fixed
step dt this is "measure between sample instants and allow one dt", and it also
holds for irregular steps. No false positive can come from sampling; the price is
that a shortening by less than two sample steps may go unnoticed (one that is
longer is always caught), so sample finely: the simulator's 0.1 s against 3 s
yellows is fine.

``tolerance_s`` is slack on top of that bracket, for floating-point rounding of
the sample instants by default; raise it to accept a controller whose own clock
ticks coarser than the samples.

An interval already running at the first observation has an unknown start and
is not judged (the very first green of a group is usually cut short by the start
of observation); neither is one still running at the last.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from sim.controller import Aspect, Interval, SignalController, SignalProgram


class ViolationKind(StrEnum):
    CONFLICT = "conflict"
    YELLOW = "yellow"
    ALL_RED = "all_red"
    MIN_GREEN = "min_green"
    PEDESTRIAN_CLEARANCE = "pedestrian_clearance"
    INTERGREEN = "intergreen"


@dataclass(frozen=True, slots=True)
class Violation:
    time: float  # the observation at which it was seen
    kind: ViolationKind
    groups: tuple[str, ...]  # sorted
    detail: str


@dataclass(slots=True)
class _GroupTrack:
    aspect: Aspect
    # The sample bracket of the current aspect's onset: last sample before it (None
    # when it was already showing at the first observation) and first sample with it.
    onset_before: float | None
    onset_seen: float
    # The bracket of the group's last change to red from green or yellow.
    red_before: float | None = None
    red_seen: float | None = None
    # The last sample at which the group was still green, once a green has ended.
    green_last: float | None = None


def conflicting_pairs(program: SignalProgram) -> frozenset[frozenset[str]]:
    """Pairs of signal groups that no stage shows green together."""
    together = {
        frozenset(pair)
        for st in program.stages
        for pair in itertools.combinations(sorted(st.groups), 2)
    }
    return frozenset(
        frozenset(pair)
        for pair in itertools.combinations(sorted(program.groups), 2)
        if frozenset(pair) not in together
    )


@dataclass
class SafetyMonitor:
    """Checks yellow, all-red, minimum green and conflicts from sampled aspects."""

    program: SignalProgram
    tolerance_s: float = 1e-6
    violations: list[Violation] = field(default_factory=list, init=False)
    _conflicts: dict[str, frozenset[str]] = field(default_factory=dict, init=False)
    _tracks: dict[str, _GroupTrack] = field(default_factory=dict, init=False)
    _last_t: float | None = field(default=None, init=False)
    _green_pairs: set[frozenset[str]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if not self.tolerance_s >= 0:
            raise ValueError(f"tolerance must not be negative, not {self.tolerance_s} s")
        pairs = conflicting_pairs(self.program)
        self._conflicts = {
            g: frozenset(h for h in self.program.groups if frozenset((g, h)) in pairs)
            for g in self.program.groups
        }

    def conflicts(self, group: str) -> frozenset[str]:
        """The groups that conflict with ``group``."""
        return self._conflicts[group]

    def observe(self, t: float, aspects: Mapping[str, Aspect]) -> None:
        """Take the aspects of every signal group at time ``t`` (later than the last)."""
        if set(aspects) != self.program.groups:
            raise ValueError(
                f"observation at {t} s: aspects given for {sorted(aspects)}, but the program's "
                f"signal groups are {sorted(self.program.groups)}"
            )
        aspects = {g: Aspect(a) for g, a in aspects.items()}  # plain strings are fine too
        prev = self._last_t
        if prev is not None and not t > prev:
            raise ValueError(f"observation at {t} s is not later than the last one at {prev} s")
        self._last_t = t
        if prev is None:
            self._tracks = {g: _GroupTrack(a, None, t) for g, a in aspects.items()}
            self._check_conflicts(t, aspects)
            return
        changed = {g for g, a in aspects.items() if a is not self._tracks[g].aspect}
        for g in sorted(changed):
            self._end_interval(g, aspects[g], prev, t)
        for g in sorted(changed):
            tr = self._tracks[g]
            old, tr.aspect = tr.aspect, aspects[g]
            tr.onset_before, tr.onset_seen = prev, t
            if tr.aspect is Aspect.RED and old is not Aspect.RED:
                tr.red_before, tr.red_seen = prev, t
            if old is Aspect.GREEN:
                tr.green_last = prev
        for g in sorted(changed):
            if aspects[g] is Aspect.GREEN:
                self._check_all_red(g, prev, t)
        self._check_conflicts(t, aspects)

    # -- the rules ---------------------------------------------------------------------------

    def _report(self, t: float, kind: ViolationKind, groups: set[str], detail: str) -> None:
        self.violations.append(Violation(t, kind, tuple(sorted(groups)), detail))

    def _end_interval(self, g: str, new: Aspect, prev: float, t: float) -> None:
        """Group ``g`` was last seen in its aspect at ``prev`` and in ``new`` at ``t``."""
        tr = self._tracks[g]
        p = self.program
        if tr.aspect is Aspect.GREEN and tr.onset_before is not None:
            longest = t - tr.onset_before
            if longest < p.min_green_s - self.tolerance_s:
                self._report(
                    t,
                    ViolationKind.MIN_GREEN,
                    {g},
                    f"group {g} green for at most {longest:.3f} s "
                    f"(seen from {tr.onset_seen} s to before {t} s); "
                    f"minimum green is {p.min_green_s} s",
                )
        change = p.change_s(g)
        kind, word = (
            (ViolationKind.PEDESTRIAN_CLEARANCE, "clearance")
            if p.is_pedestrian(g)
            else (ViolationKind.YELLOW, "yellow")
        )
        if tr.aspect is Aspect.GREEN and new is Aspect.RED:
            longest = t - prev
            if longest < change - self.tolerance_s:
                self._report(
                    t,
                    kind,
                    {g},
                    f"group {g} went from green (at {prev} s) to red (at {t} s) with a {word} "
                    f"of at most {longest:.3f} s; {word} is {change} s",
                )
        if tr.aspect is Aspect.YELLOW and tr.onset_before is not None:
            longest = t - tr.onset_before
            if longest < change - self.tolerance_s:
                self._report(
                    t,
                    kind,
                    {g},
                    f"group {g} {word} for at most {longest:.3f} s "
                    f"(seen from {tr.onset_seen} s to before {t} s); {word} is {change} s",
                )

    def _check_all_red(self, g: str, prev: float, t: float) -> None:
        """Group ``g`` turned green between ``prev`` and ``t``."""
        p = self.program
        for h in sorted(self._conflicts[g]):
            other = self._tracks[h]
            needed = p.intergreen_s_between(h, g)
            in_matrix = (h, g) in p.intergreen  # the matrix rules where it speaks
            if in_matrix and other.aspect is not Aspect.GREEN and other.green_last is not None:
                longest = t - other.green_last
                if longest < needed - self.tolerance_s:
                    self._report(
                        t,
                        ViolationKind.INTERGREEN,
                        {g, h},
                        f"group {g} turned green (by {t} s) at most {longest:.3f} s after "
                        f"conflicting group {h}'s green ended (after {other.green_last} s); "
                        f"the intergreen {h} -> {g} is {needed} s",
                    )
            if other.aspect is Aspect.YELLOW:
                self._report(
                    t,
                    ViolationKind.ALL_RED,
                    {g, h},
                    f"group {g} turned green (at {t} s) while conflicting group {h} showed yellow",
                )
            elif other.aspect is Aspect.RED and other.red_before is not None and not in_matrix:
                longest = t - other.red_before
                if longest < p.all_red_s - self.tolerance_s:
                    self._report(
                        t,
                        ViolationKind.ALL_RED,
                        {g, h},
                        f"group {g} turned green (by {t} s) at most {longest:.3f} s after "
                        f"conflicting group {h} turned red (after {other.red_before} s); "
                        f"all-red is {p.all_red_s} s",
                    )

    def _check_conflicts(self, t: float, aspects: Mapping[str, Aspect]) -> None:
        green = sorted(g for g, a in aspects.items() if a is Aspect.GREEN)
        now = {
            frozenset((g, h))
            for g, h in itertools.combinations(green, 2)
            if h in self._conflicts[g]
        }
        for pair in sorted(now - self._green_pairs, key=sorted):
            self._report(
                t,
                ViolationKind.CONFLICT,
                set(pair),
                f"conflicting groups {' and '.join(sorted(pair))} green together at {t} s",
            )
        self._green_pairs = now


@dataclass
class StreetWatch:
    """A safety monitor per controller, fed at every simulation step.

    Sampling every step costs a dictionary of aspects per controller; this
    watch builds it only when a controller has switched since the last step (or
    is in a yellow, where groups may change at their own moments) and then
    hands the monitor the unchanged sample of the step before as well, so the
    monitor sees exactly what it would have seen sampling every step.
    """

    controllers: Mapping[str, SignalController]
    monitors: dict[str, SafetyMonitor] = field(default_factory=dict, init=False)
    _seen: dict[str, tuple[int, dict[str, Aspect]]] = field(default_factory=dict, init=False)
    _last_t: float | None = field(default=None, init=False)
    # per controller: (switch count, controller time at which the next group's yellow ends)
    _yellow_due: dict[str, tuple[int, float]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.monitors = {i: SafetyMonitor(c.program) for i, c in self.controllers.items()}

    def sample(self, t: float) -> None:
        prev = self._last_t
        for i, c in self.controllers.items():
            seen = self._seen.get(i)
            if seen is not None and seen[0] == c.switches:
                if c.interval is not Interval.YELLOW:
                    continue
                # In a yellow, groups turn red at their own moments (a pedestrian
                # clearance outlasts the yellow): nothing changes before the next one.
                due = self._yellow_due.get(i)
                if due is not None and due[0] == c.switches and c.t < due[1]:
                    continue
            aspects = c.aspects()
            if c.interval is Interval.YELLOW:
                ends = [
                    c.green_end + c.program.change_s(g) for g in c.program.stages[c.stage].groups
                ]
                self._yellow_due[i] = (
                    c.switches,
                    min((e for e in ends if e > c.t), default=math.inf),
                )
            if seen is not None and aspects == seen[1]:
                self._seen[i] = (c.switches, aspects)
                continue
            mon = self.monitors[i]
            if seen is not None and prev is not None and mon._last_t != prev:
                mon.observe(prev, seen[1])  # the unchanged step before the change
            mon.observe(t, aspects)
            self._seen[i] = (c.switches, aspects)
        self._last_t = t

    @property
    def violations(self) -> list[tuple[str, Violation]]:
        return [(i, v) for i, m in self.monitors.items() for v in m.violations]
