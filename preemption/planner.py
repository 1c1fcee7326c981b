"""The pre-emption planner: turns route positions into requests, and takes them back.

Pure decisions on the Clock, no I/O. For each (vehicle, intersection) a request
goes idle -> requested -> granted -> released:

- *request* when the early bound of the ETA falls below the signal's transition
  time (the controller's worst case to bring the approach to green) plus a
  margin; before the route is committed only signals shared by every
  compatible route are asked for;
- *update* when the ETA has moved by more than a threshold, and as a refresh
  before the controller's own timer lapses;
- *cancel* when the engine has passed the stop line (plus a clearing distance),
  left the route, switched its emergency status off, gone silent (dead-man),
  or the request reached its maximum hold; and for everything on shutdown.

Every transition is recorded as a :class:`PlannerEvent` for the journal.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from preemption.clock import Clock
from preemption.config import PlannerConfig
from preemption.model import (
    Command,
    CommandKind,
    PreemptStatus,
    Route,
    RoutePosition,
    SignalEta,
    SignalState,
)


class Phase(StrEnum):
    REQUESTED = "requested"
    GRANTED = "granted"  # the controller reports the approach green (dwell)
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class PlannerEvent:
    """One decision, for the journal and the audit trail."""

    time: float  # UTC epoch seconds
    vehicle: str
    intersection: str
    request_id: str
    what: str  # request, update, refresh, granted, cancel, ignored ...
    why: str


@dataclass
class _Request:
    request_id: str
    vehicle: str
    intersection: str
    controller: str
    approach: str
    priority: str
    opened: float  # monotonic
    last_sent: float  # monotonic
    eta_at: float  # monotonic instant of expected arrival, as last sent
    phase: Phase = Phase.REQUESTED


@dataclass
class _Vehicle:
    emergency: bool = False
    last_fix: float | None = None  # monotonic
    passed: set[str] = field(default_factory=set)  # intersections already served this run


class Planner:
    def __init__(
        self,
        routes: Iterable[Route],
        config: PlannerConfig,
        clock: Clock,
        vehicles: Mapping[str, str],
    ) -> None:
        """``vehicles`` is the allow-list: vehicle id -> priority class."""
        self._routes = {r.id: r for r in routes}
        self._stop_lines = {
            rid: {s.intersection: s for s in r.signals} for rid, r in self._routes.items()
        }
        self.config = config
        self._clock = clock
        self._allowed = dict(vehicles)
        self._vehicles: dict[str, _Vehicle] = {}
        self._active: dict[tuple[str, str], _Request] = {}
        self._ids = itertools.count(1)
        self.events: list[PlannerEvent] = []
        self.ignored: dict[str, int] = {}  # positions ignored, by reason

    # -- inputs ---------------------------------------------------------------

    def set_emergency(self, vehicle: str, on: bool) -> list[Command]:
        """Blue lights / siren or dispatch status. Off takes everything back."""
        if vehicle not in self._allowed:
            self._ignore("not_allowed")
            return []
        v = self._vehicles.setdefault(vehicle, _Vehicle())
        v.emergency = on
        if not on:
            v.passed.clear()
            return self._cancel_vehicle(vehicle, "emergency status off")
        return []

    def on_position(self, pos: RoutePosition) -> list[Command]:
        if pos.vehicle not in self._allowed:
            self._ignore("not_allowed")
            return []
        now = self._clock.monotonic()
        v = self._vehicles.setdefault(pos.vehicle, _Vehicle())
        v.last_fix = now
        if not v.emergency:
            self._ignore("no_emergency_run")
            return []
        if not pos.on_route or pos.route is None:
            return self._cancel_vehicle(pos.vehicle, "left the route")
        out: list[Command] = []
        for (veh, inter), req in list(self._active.items()):
            if veh != pos.vehicle:
                continue
            sig = self._stop_lines[pos.route].get(inter)
            if sig is None:
                out.append(self._cancel(req, f"not on route {pos.route}"))
            elif pos.distance_m > sig.stop_line_m + self.config.clearing_distance_m:
                v.passed.add(inter)
                out.append(self._cancel(req, "passed the stop line"))
        for eta in pos.etas[: self.config.look_ahead]:
            cmd = self._consider(pos, v, eta, now)
            if cmd is not None:
                out.append(cmd)
        return out

    def on_state(self, state: SignalState) -> None:
        """What a controller reported; confirms a request when its approach is green."""
        for req in self._active.values():
            if (
                req.intersection == state.intersection
                and state.status is PreemptStatus.ACTIVE
                and req.phase is Phase.REQUESTED
                and (state.approach is None or state.approach == req.approach)
            ):
                req.phase = Phase.GRANTED
                self._event(req, "granted", f"controller reports {state.status.value}")

    def tick(self) -> list[Command]:
        """Time-driven checks: dead-man, maximum hold, refresh. Call about once a second."""
        now = self._clock.monotonic()
        cfg = self.config
        out: list[Command] = []
        for req in list(self._active.values()):
            last_fix = self._vehicles[req.vehicle].last_fix
            if now - req.opened >= cfg.max_hold_s:
                out.append(self._cancel(req, f"maximum hold of {cfg.max_hold_s:.0f} s reached"))
            elif last_fix is None or now - last_fix >= cfg.dead_man_s:
                out.append(self._cancel(req, f"no position for {cfg.dead_man_s:.0f} s"))
            elif now - req.last_sent >= cfg.refresh_s:
                out.append(self._send(req, CommandKind.UPDATE, now, "refresh"))
        return out

    def release_all(self, reason: str) -> list[Command]:
        return [self._cancel(req, reason) for req in list(self._active.values())]

    def withdraw(self, vehicle: str, reason: str = "withdrawn by operator") -> list[Command]:
        return self._cancel_vehicle(vehicle, reason)

    @property
    def active(self) -> int:
        return len(self._active)

    def active_at(self, intersection: str) -> int:
        return sum(1 for (_, inter) in self._active if inter == intersection)

    @property
    def allowed(self) -> Mapping[str, str]:
        """The allow-list: vehicle id -> priority class."""
        return self._allowed

    # -- decisions ------------------------------------------------------------

    def _consider(
        self, pos: RoutePosition, v: _Vehicle, eta: SignalEta, now: float
    ) -> Command | None:
        cfg = self.config
        key = (pos.vehicle, eta.intersection)
        req = self._active.get(key)
        if req is None:
            if eta.intersection in v.passed:
                return None
            if pos.committed is None and not eta.shared:
                return None
            sig = self._stop_lines[pos.route or ""].get(eta.intersection)
            transition = (sig.transition_s if sig else None) or cfg.default_transition_s
            if eta.early_s > transition + cfg.lead_margin_s:
                return None
            req = _Request(
                request_id=f"{pos.vehicle}/{eta.intersection}/{next(self._ids)}",
                vehicle=pos.vehicle,
                intersection=eta.intersection,
                controller=eta.controller,
                approach=eta.approach,
                priority=self._allowed[pos.vehicle],
                opened=now,
                last_sent=now,
                eta_at=now + eta.eta_s,
            )
            self._active[key] = req
            why = (
                f"early ETA {eta.early_s:.1f} s <= transition {transition:.0f} s "
                f"+ margin {cfg.lead_margin_s:.0f} s"
            )
            return self._send(req, CommandKind.REQUEST, now, why, eta.eta_s)
        moved = abs((now + eta.eta_s) - req.eta_at)
        if moved > cfg.eta_update_threshold_s:
            return self._send(
                req, CommandKind.UPDATE, now, f"ETA moved by {moved:.1f} s", eta.eta_s
            )
        return None

    def _send(
        self, req: _Request, kind: CommandKind, now: float, why: str, eta_s: float | None = None
    ) -> Command:
        if eta_s is not None:
            req.eta_at = now + eta_s
        req.last_sent = now
        remaining_hold = max(0.0, self.config.max_hold_s - (now - req.opened))
        eta_left = max(0.0, req.eta_at - now)
        # The controller drops the call by itself after this: a dead daemon's requests lapse.
        duration = min(remaining_hold, eta_left + 2 * self.config.refresh_s)
        self._event(req, "refresh" if why == "refresh" else kind.value, why)
        return self._command(req, kind, now, eta_left, duration, why)

    def _cancel(self, req: _Request, why: str) -> Command:
        del self._active[(req.vehicle, req.intersection)]
        req.phase = Phase.RELEASED
        self._event(req, "cancel", why)
        now = self._clock.monotonic()
        return self._command(req, CommandKind.CANCEL, now, max(0.0, req.eta_at - now), 0.0, why)

    def _cancel_vehicle(self, vehicle: str, why: str) -> list[Command]:
        return [
            self._cancel(r, why) for (veh, _), r in list(self._active.items()) if veh == vehicle
        ]

    def _command(
        self,
        req: _Request,
        kind: CommandKind,
        now: float,
        eta_s: float,
        duration: float,
        why: str,
    ) -> Command:
        return Command(
            kind=kind,
            request_id=req.request_id,
            vehicle=req.vehicle,
            intersection=req.intersection,
            controller=req.controller,
            approach=req.approach,
            time=self._clock.now(),
            eta_s=eta_s,
            duration_s=duration,
            priority=req.priority,
            reason=why,
        )

    def _event(self, req: _Request, what: str, why: str) -> None:
        self.events.append(
            PlannerEvent(
                time=self._clock.now(),
                vehicle=req.vehicle,
                intersection=req.intersection,
                request_id=req.request_id,
                what=what,
                why=why,
            )
        )

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1
