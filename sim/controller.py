"""A signal controller model with a fixed-time plan and a pre-emption sequence.

The model knows nothing of the simulation loop: it is advanced with
``advance_to(t)`` (seconds on the simulation's monotonic clock) and asked for
aspects; pre-emption calls come in through ``call`` / ``release`` as a wired
input or a protocol agent would deliver them. Virtual controllers speaking real
protocols can therefore run on the same model. Every switch happens at the exact
moment it is due, also between two ``advance_to`` instants: the end of an
interval, a call's hold timer running out, a call reaching the maximum presence.

The plan: stages in order, each a green of ``green_s`` followed by the intergreen
(yellow, then all-red). ``offset_s`` is the position in the cycle at t = 0.

Intergreen (Zwischenzeit): the least time from the end of one signal group's
green to the start of a conflicting group's green. Without an intergreen matrix
it is the ending group's yellow plus the all-red, for every pair. With a matrix
(Zwischenzeitenmatrix, ``intergreen``: (from group, to group) -> seconds) the
matrix rules for the pairs it names; the change from one stage to the next then
lasts the longest intergreen from a group that ends to a group that starts, and
never less than the longest yellow or pedestrian clearance of the ending groups.
A pedestrian group (``groups``: kind ``pedestrian``) shows its clearance time
(Räumzeit, the flashing-green or dark-red time that lets people finish
crossing) where a vehicle group shows yellow; the model reports it as
``Aspect.YELLOW``. Pre-emption never cuts a yellow, a clearance or an
intergreen.

Sequence on a call for an approach (after NTCIP 1202's pre-emption sequence):

1. *entering*: the running green ends, but never before its minimum green; then
   yellow and all-red, never shortened; stages in between are skipped. A call
   arriving in the intergreen lets it run out and goes straight to the called
   stage (which may be the stage that has just ended). With ``preempt_delay_s``
   (NTCIP 1202's preempt delay) a call is first ``REQUESTED`` for that long and
   served only if it still lives then; without one (the default) the controller
   acts on a call at once and never reports ``REQUESTED``.
2. *active* (dwell): the called approach shows green while the call is held.
3. *exiting*: the call ends by ``release``, by its own hold timer (a call is held
   at most ``hold_s`` from its last refresh, so a silent daemon's calls lapse by
   themselves) or at the controller's maximum presence. The dwell green then runs
   at least the stage's planned green counted from its start (so at least the
   minimum green), then the intergreen, then the plan resumes with the *next*
   stage in order (or with ``exit_stage`` when the program names one: NTCIP
   1202's exit phase), with full greens. Status is ``EXITING`` (``MAX_PRESENCE``
   when that ended the call) until that next green starts, then ``NOT_ACTIVE``.

Traffic-engineering choices worth knowing:

- Calls are served first come, first served; the daemon's arbiter orders them.
  A queued call is served when the one before it ends, from wherever the
  controller is (a dwell, an exit).
- Coordination is not recovered after an exit: the plan resumes in order from the
  dwell stage and its offset is lost. A real controller would run a transition
  (short- or long-way) back to its offset; cross-street traffic is better off
  with full greens at once.
- Maximum presence counts from a request's first call, refreshes do not extend
  it. A request ended by the maximum presence is locked out: calls with its id
  are ignored until it is released (NTCIP 1202: "not serviced again until the
  preempt input is removed and then re-applied"). Any other request id is served
  at once, so several engines in a row are all served.
- A signal group in two consecutive stages goes through yellow and all-red
  between them, like every other group (safe, if not the smoothest).
- ``preempt_status`` names the approach as the call named it (the
  ``PreemptionInput`` contract), not the signal group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from preemption.kernel.model import PreemptStatus


class Aspect(StrEnum):
    RED = "red"
    YELLOW = "yellow"
    GREEN = "green"


class Interval(StrEnum):
    GREEN = "green"
    YELLOW = "yellow"
    ALL_RED = "all_red"


class GroupKind(StrEnum):
    VEHICLE = "vehicle"
    PEDESTRIAN = "pedestrian"


@dataclass(frozen=True, slots=True)
class SignalGroup:
    """What the program knows of one signal group beyond its stages."""

    kind: GroupKind = GroupKind.VEHICLE
    clearance_s: float | None = None  # pedestrian clearance (Räumzeit); vehicles: the yellow


@dataclass(frozen=True, slots=True)
class Stage:
    """A set of non-conflicting signal groups that are green together (a Phase in SUMO)."""

    groups: frozenset[str]
    green_s: float


@dataclass(frozen=True)
class SignalProgram:
    stages: tuple[Stage, ...]
    yellow_s: float = 3.0
    all_red_s: float = 2.0
    min_green_s: float = 5.0
    offset_s: float = 0.0  # moment in the cycle at t = 0
    approaches: Mapping[str, str] = field(default_factory=dict)  # approach id -> signal group
    max_presence_s: float = 180.0  # the controller's own limit on a held call
    signal_groups: Mapping[str, SignalGroup] = field(default_factory=dict)  # kinds, clearances
    intergreen: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (from, to) -> s
    preempt_delay_s: float = 0.0  # a call is served only after it has lived this long
    exit_stage: int | None = None  # stage index the plan resumes with after a pre-emption
    # Precomputed in __post_init__: the controller asks these at every switch.
    _transitions: dict[tuple[int, int], float] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _change_end: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a signal program needs at least one stage")
        if not self.yellow_s > 0:
            raise ValueError(f"yellow must be longer than 0 s, not {self.yellow_s} s")
        if not (self.all_red_s >= 0 and self.min_green_s >= 0):
            raise ValueError(
                f"all-red ({self.all_red_s} s) and minimum green ({self.min_green_s} s) "
                "cannot be negative"
            )
        if not self.max_presence_s > 0:
            raise ValueError(f"maximum presence must be positive, not {self.max_presence_s} s")
        for st in self.stages:
            if not st.groups:
                raise ValueError("every stage needs at least one signal group")
            if not (st.green_s > 0 and st.green_s >= self.min_green_s):
                raise ValueError(
                    f"stage {sorted(st.groups)}: green {st.green_s} s is shorter than the "
                    f"minimum green {self.min_green_s} s (or not positive)"
                )
        groups = self.groups
        for g, spec in self.signal_groups.items():
            if g not in groups:
                raise ValueError(f"signal group {g!r} is described but in no stage")
            if spec.kind is GroupKind.PEDESTRIAN and not (
                spec.clearance_s is not None and spec.clearance_s > 0
            ):
                raise ValueError(f"pedestrian group {g!r} needs a clearance time above 0 s")
        for (g, h), t in self.intergreen.items():
            if g not in groups or h not in groups:
                raise ValueError(
                    f"intergreen {g!r} -> {h!r}: both signal groups must be in the stages "
                    f"(groups are {sorted(groups)})"
                )
            if not t >= self.change_s(g):
                kind = "clearance" if self.is_pedestrian(g) else "yellow"
                raise ValueError(
                    f"intergreen {g!r} -> {h!r} of {t} s is shorter than {g!r}'s {kind} of "
                    f"{self.change_s(g)} s; an intergreen includes it"
                )
        if not self.preempt_delay_s >= 0:
            raise ValueError(f"pre-emption delay cannot be negative ({self.preempt_delay_s} s)")
        if self.exit_stage is not None and not 0 <= self.exit_stage < len(self.stages):
            raise ValueError(
                f"exit stage {self.exit_stage} is not a stage index (0..{len(self.stages) - 1})"
            )
        n = len(self.stages)
        object.__setattr__(
            self,
            "_transitions",
            {(i, j): self._transition(i, j) for i in range(n) for j in range(n)},
        )
        object.__setattr__(
            self,
            "_change_end",
            tuple(max(self.change_s(g) for g in st.groups) for st in self.stages),
        )

    @property
    def cycle_s(self) -> float:
        n = len(self.stages)
        return sum(st.green_s for st in self.stages) + sum(
            self.transition_s(i, (i + 1) % n) for i in range(n)
        )

    def is_pedestrian(self, group: str) -> bool:
        spec = self.signal_groups.get(group)
        return spec is not None and spec.kind is GroupKind.PEDESTRIAN

    def change_s(self, group: str) -> float:
        """How long ``group`` shows its change aspect after green: yellow, or a pedestrian
        group's clearance."""
        spec = self.signal_groups.get(group)
        if spec is not None and spec.kind is GroupKind.PEDESTRIAN and spec.clearance_s:
            return spec.clearance_s
        return self.yellow_s

    def intergreen_s_between(self, ending: str, starting: str) -> float:
        """Zwischenzeit from the end of ``ending``'s green to the start of ``starting``'s."""
        t = self.intergreen.get((ending, starting))
        return self.change_s(ending) + self.all_red_s if t is None else t

    def transition_s(self, from_stage: int, to_stage: int) -> float:
        """End of ``from_stage``'s green to the start of ``to_stage``'s."""
        return self._transitions[(from_stage, to_stage)]

    def change_end_s(self, stage: int) -> float:
        """End of green to the end of the last yellow or clearance of ``stage``'s groups."""
        return self._change_end[stage]

    def _transition(self, i: int, j: int) -> float:
        ending, starting = self.stages[i].groups, self.stages[j].groups
        longest_change = max(self.change_s(g) for g in ending)
        if not self.intergreen:
            return longest_change + self.all_red_s
        return max(
            longest_change,
            max(self.intergreen_s_between(g, h) for g in ending for h in starting),
        )

    @property
    def intergreen_s(self) -> float:
        """The longest change between two stages (the uniform yellow plus all-red when no
        pedestrian clearance or intergreen matrix makes one longer)."""
        n = len(self.stages)
        return max(
            [self.yellow_s + self.all_red_s]
            + [self.transition_s(i, j) for i in range(n) for j in range(n)]
        )

    @property
    def groups(self) -> frozenset[str]:
        return frozenset().union(*(st.groups for st in self.stages))

    def group_for(self, approach: str) -> str:
        return self.approaches.get(approach, approach)

    def stage_of(self, group: str) -> int:
        for i, st in enumerate(self.stages):
            if group in st.groups:
                return i
        raise KeyError(group)


@dataclass(slots=True)
class _Call:
    request_id: str
    approach: str
    group: str
    called_at: float
    expires_at: float  # the call's own hold timer: a silent daemon's call lapses
    act_at: float  # end of the pre-emption delay: served from then on

    def max_presence_at(self, max_presence_s: float) -> float:
        return self.called_at + max_presence_s


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One entry of the controller's pre-emption status log."""

    time: float
    status: PreemptStatus
    approach: str | None


@dataclass
class SignalController:
    """One intersection's controller."""

    intersection: str
    program: SignalProgram
    t: float = 0.0
    stage: int = field(default=0, init=False)
    interval: Interval = field(default=Interval.GREEN, init=False)
    since: float = field(default=0.0, init=False)  # start of the current interval
    green_end: float = field(default=-math.inf, init=False)  # end of the last stage green
    green_log: dict[str, list[list[float]]] = field(default_factory=dict)  # group -> [[on, off]]
    status_log: list[StatusChange] = field(default_factory=list, init=False)
    _calls: list[_Call] = field(default_factory=list, init=False)  # in order of arrival
    _serving: _Call | None = field(default=None, init=False)
    _exit: PreemptStatus | None = field(default=None, init=False)  # EXITING or MAX_PRESENCE
    _locked_out: set[str] = field(default_factory=set, init=False)  # ended by max presence
    switches: int = field(default=0, init=False)  # counts interval changes (cheap change test)
    # The next moment anything can change by itself; advancing to before it is free.
    _next_event: float = field(default=-math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        self._start_in_plan(self.t)
        self._log_status()

    # -- pre-emption inputs (the signal_adapters.simlink.PreemptionInput protocol) ----------

    def call(self, approach: str, request_id: str, hold_s: float) -> None:
        """Assert or refresh a call; it is held until ``hold_s`` from now at the latest.

        A request id names one approach: a refresh keeps the approach first called.
        """
        group = self.program.group_for(approach)
        if group not in self.program.groups:
            raise KeyError(
                f"intersection {self.intersection!r}: approach {approach!r} maps to signal group "
                f"{group!r}, which the program does not have"
            )
        if math.isnan(hold_s):
            raise ValueError(f"intersection {self.intersection!r}: hold time is not a number")
        if request_id in self._locked_out:
            return  # reached the maximum presence: must be released before it counts again
        for c in self._calls:
            if c.request_id == request_id:
                c.expires_at = self.t + hold_s
                break
        else:
            delay = self.program.preempt_delay_s
            self._calls.append(
                _Call(request_id, approach, group, self.t, self.t + hold_s, self.t + delay)
            )
        self._next_event = -math.inf
        self.advance_to(self.t)  # act on it now

    def release(self, request_id: str) -> None:
        self._locked_out.discard(request_id)
        self._calls = [c for c in self._calls if c.request_id != request_id]
        self._next_event = -math.inf
        self.advance_to(self.t)

    def preempt_status(self) -> tuple[PreemptStatus, str | None]:
        """The status and the approach being served (None when no call is served)."""
        if self._serving is not None:
            return self._status(), self._serving.approach
        if self._calls:
            return PreemptStatus.REQUESTED, self._calls[0].approach  # in its delay
        return self._status(), None

    # -- aspects -----------------------------------------------------------------------------

    def aspect(self, group: str) -> Aspect:
        if group not in self.program.stages[self.stage].groups:
            return Aspect.RED
        if self.interval is Interval.GREEN:
            return Aspect.GREEN
        if self.interval is Interval.YELLOW and self.t < self.green_end + self.program.change_s(
            group
        ):
            return Aspect.YELLOW  # or a pedestrian group's clearance
        return Aspect.RED

    def aspects(self) -> dict[str, Aspect]:
        return {g: self.aspect(g) for g in sorted(self.program.groups)}

    # -- time --------------------------------------------------------------------------------

    def advance_to(self, t: float) -> None:
        """Run the controller up to time ``t``, switching at the exact moments due."""
        if t < self._next_event and t >= self.t:
            self.t = t  # nothing is due before the next event: the hot path of a simulation
            return
        if t < self.t:
            raise ValueError(
                f"controller {self.intersection!r}: time cannot go back ({t} < {self.t})"
            )
        while True:
            self._update_calls()
            self._log_status()
            interval_end = self._interval_end()
            call_end = self._next_call_end()  # always later than self.t here
            if min(interval_end, call_end) > t:
                self._next_event = min(interval_end, call_end)
                break
            if call_end <= interval_end:
                # Calls end first at a tie: the green then ends by the plan's rule.
                self.t = call_end
            else:
                self.t = max(self.t, interval_end)
                self._next_interval()
        self.t = t

    # -- internals ---------------------------------------------------------------------------

    def _start_in_plan(self, t: float) -> None:
        p = self.program
        pos = (t + p.offset_s) % p.cycle_s
        for i, st in enumerate(p.stages):
            for interval, length in (
                (Interval.GREEN, st.green_s),
                (Interval.YELLOW, p.yellow_s),
                (Interval.ALL_RED, p.all_red_s),
            ):
                if interval is Interval.ALL_RED:
                    length = p.transition_s(i, (i + 1) % len(p.stages)) - p.change_end_s(i)
                elif interval is Interval.YELLOW:
                    length = p.change_end_s(i)
                if pos < length:
                    self._enter(i, interval, t - pos)
                    if interval is not Interval.GREEN:
                        self.green_end = (
                            t - pos if interval is Interval.YELLOW else t - pos - p.change_end_s(i)
                        )
                    return
                pos -= length
        self._enter(0, Interval.GREEN, t)  # rounding put us at the end of the cycle

    def _enter(self, stage: int, interval: Interval, since: float) -> None:
        self.stage, self.interval, self.since = stage, interval, since
        self.switches += 1
        if interval is Interval.GREEN:
            for g in self.program.stages[stage].groups:
                self.green_log.setdefault(g, []).append([since, math.inf])

    def _status(self) -> PreemptStatus:
        if self._serving is not None:
            return PreemptStatus.ACTIVE if self._dwelling() else PreemptStatus.ENTERING
        return self._exit or PreemptStatus.NOT_ACTIVE

    def _log_status(self) -> None:
        status, approach = self.preempt_status()
        last = self.status_log[-1] if self.status_log else None
        if last is None or (last.status, last.approach) != (status, approach):
            self.status_log.append(StatusChange(self.t, status, approach))

    def _dwelling(self) -> bool:
        return (
            self._serving is not None
            and self.interval is Interval.GREEN
            and self._serving.group in self.program.stages[self.stage].groups
        )

    def _next_call_end(self) -> float:
        mp = self.program.max_presence_s
        end = min((min(c.expires_at, c.max_presence_at(mp)) for c in self._calls), default=math.inf)
        if self._serving is None and self._calls and self._calls[0].act_at > self.t:
            end = min(end, self._calls[0].act_at)  # the pre-emption delay runs out
        return end

    def _update_calls(self) -> None:
        """Drop calls that have ended by now; serve the next one when the served one ended."""
        now, mp = self.t, self.program.max_presence_s
        live = []
        for c in self._calls:
            if c.max_presence_at(mp) <= now:
                self._locked_out.add(c.request_id)
            elif c.expires_at > now:
                live.append(c)
        self._calls = live
        serving = self._serving
        if serving is not None and not any(c is serving for c in live):
            maxed = serving.request_id in self._locked_out
            self._exit = PreemptStatus.MAX_PRESENCE if maxed else PreemptStatus.EXITING
            self._serving = None
        if self._serving is None and live and live[0].act_at <= now:
            self._serving = live[0]
            self._exit = None

    def _interval_end(self) -> float:
        p = self.program
        if self.interval is Interval.YELLOW:
            return self.green_end + p.change_end_s(self.stage)
        if self.interval is Interval.ALL_RED:
            # The target may change during the intergreen (a call arrives): the
            # intergreens towards the new target then rule.
            return max(self.green_end + p.transition_s(self.stage, self._target()), self.t)
        if self._serving is not None:
            if self._dwelling():
                return math.inf  # dwell: held while the call is
            return max(self.since + p.min_green_s, self.t)  # entering: end it when allowed
        # The plan's green; after a dwell it may already have run longer than planned.
        return max(self.since + p.stages[self.stage].green_s, self.t)

    def _next_interval(self) -> None:
        t = self.t
        if self.interval is Interval.GREEN:
            for g in self.program.stages[self.stage].groups:
                self.green_log[g][-1][1] = t
            self.interval, self.since, self.green_end = Interval.YELLOW, t, t
            self.switches += 1
        elif self.interval is Interval.YELLOW:
            self.interval, self.since = Interval.ALL_RED, t
            self.switches += 1
        else:
            nxt = self._target()
            if self._serving is None:
                self._exit = None  # back in the plan
            self._enter(nxt, Interval.GREEN, t)

    def _target(self) -> int:
        """The stage the running intergreen leads to."""
        p = self.program
        if self._serving is not None:
            return p.stage_of(self._serving.group)
        if self._exit is not None and p.exit_stage is not None:
            return p.exit_stage
        return (self.stage + 1) % len(p.stages)


def green_interval_at(log: Sequence[Sequence[float]], t: float) -> tuple[float, float] | None:
    """The (on, off) green interval of a group's log that contains ``t``."""
    for on, off in log:
        if on <= t <= off:
            return on, off
    return None
