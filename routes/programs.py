"""Signal programs from a SUMO network's traffic-light logic (``tlLogic``), as plain data.

SUMO describes a program as phases, each a duration and one state letter per
link index (``G``/``g`` green, ``y`` yellow, ``r`` red, ``u`` red-yellow, ...).
The simulator's controller model wants stages (signal groups green together,
with a green time) and one intergreen (Zwischenzeit: yellow then all-red) for
the whole intersection. The conversion:

- every link index is a signal group named ``L<index>`` (``L3`` is link 3);
- a phase with green links starts a stage whose groups are those links; a
  phase right after it whose greens are a subset of the stage's (SUMO's
  pedestrian clearance tail, where crossings go red while vehicles run on) is
  added to that stage's green time rather than made a stage of its own;
- phases with yellow are the yellow (the longest one becomes ``yellow_s``);
- phases with no green and no yellow are the all-red; consecutive ones add up,
  the longest such run becomes ``all_red_s`` (0 s when the program has none);
- actuated programs are simplified to fixed time: each stage gets the phase's
  ``duration`` (SUMO's starting green), and the minimum green is the largest
  ``minDur`` of a stage phase, capped at the shortest stage green.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preemption.kernel.errors import InputError

GREEN = frozenset("Gg")
YELLOW = frozenset("yY")
DEFAULT_YELLOW_S = 3.0
ALL_PROGRAMS = "all"


class ProgramError(InputError):
    """A traffic light's logic cannot be turned into a stage program."""


@dataclass(frozen=True, slots=True)
class StageData:
    groups: tuple[str, ...]
    green_s: float


@dataclass(frozen=True, slots=True)
class ProgramData:
    """One intersection's program in the simulator's terms (scenario ``[[intersections]]``)."""

    tl: str  # SUMO traffic light id
    program_id: str
    kind: str  # SUMO's type: static, actuated, delay_based
    stages: tuple[StageData, ...]
    yellow_s: float
    all_red_s: float
    min_green_s: float

    @property
    def cycle_s(self) -> float:
        """Stage greens plus one intergreen (yellow, all-red) after each stage."""
        change = self.yellow_s + self.all_red_s
        return sum(st.green_s for st in self.stages) + len(self.stages) * change

    def group_green_s(self, group: str) -> float:
        return sum(st.green_s for st in self.stages if group in st.groups)


def group_name(link_index: int) -> str:
    return f"L{link_index}"


def program_from_phases(
    tl: str,
    program_id: str,
    kind: str,
    phases: list[tuple[float, float | None, str]],
    max_green_s: float | None = None,
) -> ProgramData:
    """``phases`` are (duration, minDur or None, state) in program order."""
    stages: list[tuple[set[str], float]] = []
    yellow, all_red, run_red = 0.0, 0.0, 0.0
    min_durs: list[float] = []
    previous_was_green = False
    for duration, min_dur, state in phases:
        greens = {group_name(i) for i, ch in enumerate(state) if ch in GREEN}
        if any(ch in YELLOW for ch in state):
            yellow = max(yellow, duration)
            run_red, previous_was_green = 0.0, False
        elif not greens:
            run_red += duration
            all_red = max(all_red, run_red)
            previous_was_green = False
        elif previous_was_green and greens <= stages[-1][0]:
            stages[-1] = (stages[-1][0], stages[-1][1] + duration)
        else:
            stages.append((greens, duration))
            if min_dur is not None and min_dur > 0:
                min_durs.append(min_dur)
            run_red, previous_was_green = 0.0, True
    if not stages:
        raise ProgramError(f"traffic light {tl!r} program {program_id!r} has no green phase")
    green_s = [min(g, max_green_s) if max_green_s else g for _, g in stages]
    shortest = min(green_s)
    min_green = min(max(min_durs, default=min(5.0, shortest)), shortest)
    return ProgramData(
        tl=tl,
        program_id=program_id,
        kind=kind,
        stages=tuple(
            StageData(tuple(sorted(g, key=lambda n: int(n[1:]))), round(green, 1))
            for (g, _), green in zip(stages, green_s, strict=True)
        ),
        yellow_s=round(yellow or DEFAULT_YELLOW_S, 1),
        all_red_s=round(all_red, 1),
        min_green_s=round(min_green, 1),
    )


def program_of(
    net: Any, tl: str, program_id: str | None = None, max_green_s: float | None = None
) -> ProgramData:
    """The stage program of SUMO traffic light ``tl`` (its first program unless named).

    ``program_id`` ``"all"`` chains the phases of every program in file order:
    for networks that keep one stage per program and switch programs (SUMO's
    Braunschweig game network does).
    """
    programs = net.getTLS(tl).getPrograms()
    if not programs:
        raise ProgramError(f"traffic light {tl!r} has no signal program (tlLogic) in the network")
    if program_id is None:
        program_id = next(iter(programs))
    chosen = list(programs) if program_id == ALL_PROGRAMS else [program_id]
    for pid in chosen:
        if pid not in programs:
            raise ProgramError(
                f"traffic light {tl!r} has no program {pid!r}; it has {', '.join(programs)} "
                f"(or use {ALL_PROGRAMS!r})"
            )
    phases = [
        (
            float(ph.duration),
            float(ph.minDur) if ph.minDur is not None and float(ph.minDur) > 0 else None,
            str(ph.state),
        )
        for pid in chosen
        for ph in programs[pid].getPhases()
    ]
    kind = str(programs[chosen[0]].getType())
    return program_from_phases(tl, program_id, kind, phases, max_green_s)
