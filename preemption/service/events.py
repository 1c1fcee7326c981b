"""What the daemon tells the world as it works: the event sink.

The daemon keeps no history of its own (a process meant to run for months keeps
nothing per fix in memory). Every command it sends, every controller answer,
every planner transition, the positions of vehicles on a run and the inputs that
change a run (emergency status, a unit going offline, a dropped status) go to an
:class:`EventSink`: the journal (preemption/service/journal.py) in service, an
in-memory recorder in the simulator and in tests.

:meth:`EventSink.command` is called *before* the command goes to the
controller, so that a process killed in the middle of a call leaves a record of
what it may have asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from preemption.decisions.planner import PlannerEvent
from preemption.kernel.clock import Clock
from preemption.kernel.model import Command, RoutePosition

__all__ = ["Answer", "EventSink", "Fanout", "Note", "NullSink", "Recorder", "Sent"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a controller said to one call (or why it said nothing)."""

    time: float  # UTC epoch seconds when the answer (or the failure) came
    controller: str
    intersection: str
    request_id: str | None  # None for a poll of an intersection without a live request
    call: str  # request, update, cancel or poll
    status: str | None  # the PreemptStatus value; None when the call failed
    error: str | None  # what failed, for the operator; None on success
    latency_s: float  # from the call to its answer (or failure)


@dataclass(frozen=True, slots=True)
class Sent:
    """A command as it went out, with the monotonic instant (a Recorder's record)."""

    sent_mono: float
    command: Command


@dataclass(frozen=True, slots=True)
class Note:
    """An input that changed (or was refused to change) a vehicle's run."""

    time: float  # UTC epoch seconds
    what: str  # e.g. emergency_on, emergency_off, offline, status_dropped, recovered
    vehicle: str
    detail: str


class EventSink(Protocol):
    def planner_event(self, event: PlannerEvent) -> None: ...

    def command(self, cmd: Command) -> None:
        """``cmd`` is about to be sent (write-ahead)."""
        ...

    def answer(self, answer: Answer) -> None: ...

    def position(self, pos: RoutePosition) -> None:
        """A matched position of a vehicle on a run (the daemon thins them to about 1 Hz)."""
        ...

    def note(self, note: Note) -> None: ...

    def flush(self) -> None:
        """Make what was handed in durable (the daemon calls it every tick)."""
        ...

    def prune(self) -> int:
        """Forget what is older than the retention (hourly); how many records went."""
        ...


class _Quiet:
    def flush(self) -> None:
        pass

    def prune(self) -> int:
        return 0


class NullSink(_Quiet):
    """Forgets everything (benchmarks)."""

    def planner_event(self, event: PlannerEvent) -> None:
        pass

    def command(self, cmd: Command) -> None:
        pass

    def answer(self, answer: Answer) -> None:
        pass

    def position(self, pos: RoutePosition) -> None:
        pass

    def note(self, note: Note) -> None:
        pass


class Recorder(_Quiet):
    """Keeps everything in lists: for a simulated run of bounded length and for tests.

    ``commands`` pairs each command with the instant it went out: the clock's
    monotonic time when a clock is given, else the command's own UTC time.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self.events: list[PlannerEvent] = []
        self.commands: list[Sent] = []
        self.answers: list[Answer] = []
        self.positions: list[RoutePosition] = []
        self.notes: list[Note] = []

    def planner_event(self, event: PlannerEvent) -> None:
        self.events.append(event)

    def command(self, cmd: Command) -> None:
        self.commands.append(Sent(self._clock.monotonic() if self._clock else cmd.time, cmd))

    def answer(self, answer: Answer) -> None:
        self.answers.append(answer)

    def position(self, pos: RoutePosition) -> None:
        self.positions.append(pos)

    def note(self, note: Note) -> None:
        self.notes.append(note)


class Fanout:
    """Hands every event to each of ``sinks`` in turn."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    def planner_event(self, event: PlannerEvent) -> None:
        for s in self.sinks:
            s.planner_event(event)

    def command(self, cmd: Command) -> None:
        for s in self.sinks:
            s.command(cmd)

    def answer(self, answer: Answer) -> None:
        for s in self.sinks:
            s.answer(answer)

    def position(self, pos: RoutePosition) -> None:
        for s in self.sinks:
            s.position(pos)

    def note(self, note: Note) -> None:
        for s in self.sinks:
            s.note(note)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def prune(self) -> int:
        return sum(s.prune() for s in self.sinks)
