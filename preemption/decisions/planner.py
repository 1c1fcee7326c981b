"""The pre-emption planner: when to ask, when to take back, who goes first.

Pure decisions on the Clock, no I/O. Two levels:

**Claims**, one per (vehicle, intersection): what a vehicle wants. Named after
RSMP's signal-priority statuses where they match::

    armed --due--> queued <--arbiter--> requested --controller--> granted
      |               |                     |                        |
      +---------------+---------------------+------------------------+--> completed
                                                  (passed the stop line)
    any live claim --> cancelled (left the route, emergency off, operator,
                                  alarm cancelled, shutdown)
                   --> stale     (no position for dead_man_s)
                   --> timeout   (the request reached max_hold_s)
                   --> rejected  (the controller refused)

A claim is *armed* while its signal is in the look-ahead, and *due* once the
early bound of its ETA falls below the signal's transition time (the
controller's worst case to bring the approach to green) plus a margin. Before
the route is committed only signals shared by every compatible route are
claimed. After completed, timeout or rejected the vehicle does not claim that
intersection again on this run; after stale or cancelled it may (it came back).

**Requests**, at most one per intersection: what the controller is asked. The
arbiter (preemption/decisions/arbiter.py) picks the approach; vehicles on that approach
share the request, the others wait queued. A request is updated when its ETA
moves by more than a threshold (hysteresis against noise), refreshed before the
controller's own timer lapses, and cancelled when its last vehicle is done, at
the maximum hold, or when the junction is handed to another approach, always
before a conflicting request is made. Every command carries ``duration_s``,
the controller-side hold, so a dead daemon's requests lapse by themselves.

Gates: only vehicles on the allow-list, only on an emergency run (from the
configured sources: the onboard unit's blue lights / siren, dispatch). An
emergency status that goes off ends the run only once it has stayed off for
``emergency_off_delay_s`` (a bouncing contact does not toggle the junctions);
an operator's withdrawal, dispatch's cancellation and the onboard unit going
offline end it at once.

Positions are judged by their age (now minus the fix's own time): ETAs count
from the fix's time, and a position older than ``max_fix_age_s`` (a backlog
after a link outage) may complete or cancel claims but never makes a request.

After a restart the service hands the planner the requests a previous process
left active (:meth:`Planner.adopt`): each is re-asserted under its own id if
its vehicle is heard on its run and due at that approach within
``recovery_grace_s``, else cancelled; its maximum hold counts from when it was
first opened.

Every transition is a :class:`PlannerEvent`, handed to ``on_event`` (the
journal); the planner keeps no history itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from preemption.decisions.arbiter import Claim, choose
from preemption.kernel.clock import Clock
from preemption.kernel.config import PlannerConfig
from preemption.kernel.model import (
    Command,
    CommandKind,
    PreemptStatus,
    Route,
    RoutePosition,
    SignalEta,
    SignalPoint,
    SignalState,
)


class ClaimState(StrEnum):
    ARMED = "armed"
    QUEUED = "queued"
    REQUESTED = "requested"  # RSMP: received
    GRANTED = "granted"  # RSMP: activated
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    STALE = "stale"
    TIMED_OUT = "timeout"
    REJECTED = "rejected"


DUE = frozenset({ClaimState.QUEUED, ClaimState.REQUESTED, ClaimState.GRANTED})
FINAL_FOR_RUN = frozenset({ClaimState.COMPLETED, ClaimState.TIMED_OUT, ClaimState.REJECTED})


@dataclass(frozen=True, slots=True)
class PlannerEvent:
    """One decision, for the journal and the audit trail."""

    time: float  # UTC epoch seconds
    vehicle: str
    intersection: str
    request_id: str  # empty for a claim not (yet) served by a request
    what: str  # a ClaimState value, or request / update / refresh / cancel
    why: str


@dataclass(frozen=True, slots=True)
class HeldRequest:
    """A request a previous process left active at a controller (from the journal)."""

    request_id: str
    intersection: str
    controller: str
    approach: str
    vehicle: str
    opened_utc: float  # when it was first sent: its maximum hold counts from here


@dataclass(frozen=True, slots=True)
class RequestView:
    """One live request, for status pages and the operators."""

    request_id: str
    intersection: str
    controller: str
    approach: str
    vehicle: str  # the lead vehicle the request is timed for
    vehicles: tuple[str, ...]  # every vehicle it serves
    eta_s: float  # seconds from now
    held_s: float  # since it was opened
    granted: bool
    answer: str  # the controller's last answer (a PreemptStatus value), "" before any
    recovered: bool  # adopted from a previous process and not yet re-asserted


@dataclass(frozen=True, slots=True)
class Alarm:
    """Dispatch has sent a vehicle on an emergency run."""

    vehicle: str
    route: str | None = None  # the approach route dispatch expects, if it knows
    incident: tuple[float, float] | None = None  # lon, lat of the incident


@dataclass
class _Claim:
    vehicle: str
    intersection: str
    controller: str
    approach: str
    rank: int
    since: float
    eta_at: float
    state: ClaimState = ClaimState.ARMED


@dataclass
class _Request:
    request_id: str
    intersection: str
    controller: str
    approach: str
    opened: float
    last_sent: float
    eta_at: float  # as last sent
    lead: str  # vehicle whose arrival the request is timed for
    granted: bool = False
    answer: PreemptStatus | None = None  # the controller's last answer
    orphan_until: float | None = None  # adopted after a restart: cancelled at this time


@dataclass
class _Vehicle:
    sources: dict[str, bool] = field(default_factory=dict)  # emergency status per source
    last_fix: float | None = None  # monotonic
    done: set[str] = field(default_factory=set)  # intersections finished for this run
    claims: dict[str, _Claim] = field(default_factory=dict)  # by intersection
    alarm: Alarm | None = None
    departs: float | None = None  # monotonic: expected to roll (alarm + turnout)
    joined: bool = False  # has been on a route during this run
    due_since: float | None = None  # monotonic: a claim last became due
    off_since: float | None = None  # monotonic: the emergency status went off (pending)


def _ground_distance(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Metres between two WGS84 points (haversine; plenty for choosing a route)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_000.0 * math.asin(math.sqrt(a))


class Planner:
    def __init__(
        self,
        routes: Iterable[Route],
        config: PlannerConfig,
        clock: Clock,
        vehicles: Mapping[str, str],
        priorities: Mapping[str, int] | None = None,
        *,
        on_event: Callable[[PlannerEvent], None] | None = None,
        id_prefix: str = "",
    ) -> None:
        """``vehicles`` is the allow-list (vehicle id -> priority class); ``priorities``
        ranks the classes, lower first. ``on_event`` receives every transition (the
        journal); ``id_prefix`` starts every request id (the service's boot id, so that
        a restarted daemon never reuses an id a controller may still hold)."""
        self._routes = {r.id: r for r in routes}
        self._signals: dict[str, dict[str, SignalPoint]] = {
            rid: {s.intersection: s for s in r.signals} for rid, r in self._routes.items()
        }
        self.config = config
        self._clock = clock
        self._allowed = dict(vehicles)
        self._rank = dict(priorities or {"fire": 0, "ambulance": 1, "police": 2, "transit": 3})
        self._vehicles: dict[str, _Vehicle] = {}
        self._requests: dict[str, _Request] = {}  # by intersection
        self._claims_at: dict[str, dict[str, _Claim]] = {}  # intersection -> vehicle -> claim
        self._ids = itertools.count(1)
        self._id_prefix = id_prefix
        self._on_event = on_event
        self.ignored: dict[str, int] = {}  # inputs ignored, by reason

    # -- inputs ---------------------------------------------------------------

    def set_emergency(
        self, vehicle: str, on: bool, source: str = "onboard", *, immediate: bool = False
    ) -> list[Command]:
        """Emergency status from one source (blue lights / siren, dispatch).

        Off (by the deployment's rule) takes everything of the vehicle back once it has
        stayed off for ``emergency_off_delay_s`` (:meth:`tick` does), or at once with
        ``immediate``. While the off is pending nothing new is asked for.
        """
        v = self._vehicle(vehicle)
        if v is None:
            return []
        v.sources[source] = on
        if self._on_run(v):
            v.off_since = None
            return []
        if immediate or self.config.emergency_off_delay_s <= 0:
            return self._end_run(vehicle, v, f"emergency status off ({source})")
        if v.off_since is None:
            v.off_since = self._clock.monotonic()
        return []

    def vehicle_offline(self, vehicle: str) -> list[Command]:
        """The onboard unit went away (its MQTT last will): its claims end at once.

        Its onboard status counts as off until the unit reports again.
        """
        v = self._vehicles.get(vehicle)
        if v is None:
            return []
        v.sources["onboard"] = False
        if self._on_run(v):
            return []  # dispatch alone keeps the run (emergency_rule "any")
        return self._end_run(vehicle, v, "onboard unit offline")

    def _end_run(self, vehicle: str, v: _Vehicle, why: str) -> list[Command]:
        v.done.clear()
        v.alarm = v.departs = v.off_since = None
        return self._end_vehicle(vehicle, ClaimState.CANCELLED, why)

    def on_alarm(self, alarm: Alarm) -> list[Command]:
        """Dispatch's alarm: the vehicle is on a run; the first signals are armed from
        the station so that the green is coming while the engine leaves the yard."""
        v = self._vehicle(alarm.vehicle)
        if v is None:
            return []
        if alarm.route is not None and alarm.route not in self._routes:
            self._ignore("alarm_unknown_route")
            alarm = Alarm(alarm.vehicle, None, alarm.incident)
        if alarm.route is None:
            alarm = Alarm(alarm.vehicle, self.route_for(alarm), alarm.incident)
        v.alarm = alarm
        v.departs = self._clock.monotonic() + self.config.turnout_s
        v.joined = False
        v.done.clear()
        out = self.set_emergency(alarm.vehicle, True, source="dispatch")
        return out + self._from_station(alarm.vehicle, v)

    def route_for(self, alarm: Alarm) -> str | None:
        """The route dispatch meant: as named, else the one ending nearest the incident.

        Only a route ending within ``incident_radius_m`` of the incident counts: an
        incident off every main approach route gets no station-exit arming.
        """
        if alarm.route is not None:
            return alarm.route if alarm.route in self._routes else None
        if alarm.incident is None:
            return None
        lon, lat = alarm.incident
        best: tuple[float, str] | None = None
        for rid, r in self._routes.items():
            elon, elat = r.geometry[-1]
            d = _ground_distance(lon, lat, elon, elat)
            if best is None or d < best[0]:
                best = (d, rid)
        if best is None or best[0] > self.config.incident_radius_m:
            return None
        return best[1]

    def cancel_alarm(self, vehicle: str) -> list[Command]:
        v = self._vehicles.get(vehicle)
        if v is None:
            return []
        v.alarm = v.departs = None
        return self.set_emergency(vehicle, False, source="dispatch", immediate=True)

    def on_position(self, pos: RoutePosition) -> list[Command]:
        v = self._vehicle(pos.vehicle)
        if v is None:
            return []
        now = self._clock.monotonic()
        # Judged by the fix's own time: a position from a backlog is as old as it is.
        age = max(0.0, self._clock.now() - pos.time)
        seen = now - age
        v.last_fix = seen if v.last_fix is None else max(v.last_fix, seen)
        if not self._on_run(v):
            self._ignore("no_emergency_run")
            return []
        if not pos.on_route or pos.route is None:
            if not v.joined:
                return []  # still in the station yard: the station estimate stands
            v.joined = False
            return self._end_vehicle(pos.vehicle, ClaimState.CANCELLED, "left the route")
        v.joined = True
        v.departs = None  # on the route: the station estimate is no longer needed
        out: list[Command] = []
        signals = self._signals[pos.route]
        held = self._held_for_dispatch(v, pos)
        for inter, claim in list(v.claims.items()):
            sig = signals.get(inter)
            if sig is None:
                if inter in held:
                    continue  # the dispatched route is still likely: no cancel-and-ask-again
                out += self._end(claim, ClaimState.CANCELLED, f"not on route {pos.route}")
            elif pos.distance_m > sig.stop_line_m + self.config.clearing_distance_m:
                out += self._end(claim, ClaimState.COMPLETED, "passed the stop line")
        if age > self.config.max_fix_age_s:
            self._ignore("old_position")  # may complete or cancel (above), never request
            return out
        dispatched = self._dispatched_route(v, pos)
        for eta in pos.etas[: self.config.look_ahead]:
            if pos.committed is None and not eta.shared and not dispatched:
                continue
            sig = signals.get(eta.intersection)
            out += self._consider(pos.vehicle, v, eta, sig, now, age)
        return out

    def _dispatched_route(self, v: _Vehicle, pos: RoutePosition) -> bool:
        """Is the engine, not yet committed, most likely on the route dispatch named?

        Then the signals past the next branch point may be asked for already: at a
        fork just before a signal, waiting for the commitment would leave that signal
        no time to turn green. If the engine takes the other branch, the matcher's
        best route changes and those requests are taken back at once (not on route).
        """
        a = v.alarm
        return (
            a is not None
            and a.route is not None
            and pos.route == a.route
            and pos.confidence >= self.config.dispatch_confidence
        )

    def _held_for_dispatch(self, v: _Vehicle, pos: RoutePosition) -> Collection[str]:
        """Intersections of the dispatched route whose claims stay although the matcher's
        best route has moved to another branch: while the matcher, uncommitted, still
        gives the dispatched route ``dispatch_keep``, the lead may flip back (hysteresis
        against asking, cancelling and asking again near a fork)."""
        a = v.alarm
        if a is None or a.route is None or pos.committed is not None:
            return ()
        if pos.compatible.get(a.route, 0.0) < self.config.dispatch_keep:
            return ()
        return self._signals[a.route].keys()

    def on_state(self, state: SignalState) -> list[Command]:
        """What a controller reported for an intersection."""
        req = self._requests.get(state.intersection)
        if req is None or (state.approach is not None and state.approach != req.approach):
            return []
        if state.request_id is not None and state.request_id != req.request_id:
            return []  # about another (an older) request at this junction
        before, req.answer = req.answer, state.status
        if state.status is PreemptStatus.UNREACHABLE and before is not state.status:
            # Still held by the planner and refreshed: the controller's own timer is the
            # backstop. Reported, never silently dropped.
            self._request_event(req, "unconfirmed", state.detail or "controller unreachable")
            return []
        if state.status is PreemptStatus.ACTIVE and not req.granted:
            req.granted = True
            for c in self._members(req):
                self._set(c, ClaimState.GRANTED, f"controller reports {state.status.value}", req)
            return []
        if state.status is PreemptStatus.REJECTED:
            return self._close(req, ClaimState.REJECTED, "the controller rejected the request")
        if state.status is PreemptStatus.MAX_PRESENCE:
            return self._close(
                req, ClaimState.TIMED_OUT, "the controller's maximum presence ended it"
            )
        return []

    def tick(self) -> list[Command]:
        """Time-driven decisions: dead-man, maximum hold, refresh, station departures.

        Call about once a second.
        """
        now = self._clock.monotonic()
        cfg = self.config
        out: list[Command] = []
        for vid, v in self._vehicles.items():
            if v.off_since is not None and not self._on_run(v):
                if now - v.off_since >= cfg.emergency_off_delay_s:
                    why = f"emergency status off for {cfg.emergency_off_delay_s:.0f} s"
                    out += self._end_run(vid, v, why)
                continue
            # Silence counts from the last fix, the expected roll-out, or the moment a claim
            # became due on the station estimate, whichever is latest; armed claims ask
            # for nothing and wait.
            heard = [x for x in (v.last_fix, v.departs, v.due_since) if x is not None]
            due = any(c.state in DUE for c in v.claims.values())
            if due and heard and now - max(heard) >= cfg.dead_man_s:
                why = f"no position for {cfg.dead_man_s:.0f} s"
                out += self._end_vehicle(vid, ClaimState.STALE, why)
            elif v.departs is not None and not v.joined and self._on_run(v):
                out += self._from_station(vid, v)
        for req in list(self._requests.values()):
            if req.orphan_until is not None and now >= req.orphan_until:
                why = (
                    f"left by the previous process; {req.lead} not heard on its run "
                    f"within {cfg.recovery_grace_s:.0f} s of the restart"
                )
                out += self._close(req, ClaimState.CANCELLED, why)
            elif now - req.opened >= cfg.max_hold_s:
                out += self._close(
                    req, ClaimState.TIMED_OUT, f"maximum hold of {cfg.max_hold_s:.0f} s reached"
                )
            elif now - req.last_sent >= cfg.refresh_s:
                out.append(self._send(req, CommandKind.UPDATE, "refresh"))
        return out

    def release_all(self, reason: str) -> list[Command]:
        """Take back every request and end every claim (shutdown): nothing new is asked."""
        out = [self._cancel(req, reason) for req in list(self._requests.values())]
        for v in self._vehicles.values():
            for claim in list(v.claims.values()):
                self._set(claim, ClaimState.CANCELLED, reason)
            v.claims.clear()
        self._claims_at.clear()
        return out

    def adopt(self, held: Iterable[HeldRequest]) -> list[Command]:
        """Requests a previous process left active (after a crash): held for their
        vehicles for ``recovery_grace_s``, then cancelled unless re-asserted.

        A second leftover at an intersection already held, and one already past the
        maximum hold, are cancelled at once.
        """
        now = self._clock.monotonic()
        utc = self._clock.now()
        out: list[Command] = []
        for h in held:
            req = _Request(
                request_id=h.request_id,
                intersection=h.intersection,
                controller=h.controller,
                approach=h.approach,
                opened=now - max(0.0, utc - h.opened_utc),
                last_sent=now,
                eta_at=now,
                lead=h.vehicle,
                orphan_until=now + self.config.recovery_grace_s,
            )
            if h.intersection in self._requests:
                out.append(self._command(req, CommandKind.CANCEL, 0.0, "duplicate after restart"))
                continue
            if now - req.opened >= self.config.max_hold_s:
                hold = self.config.max_hold_s
                why = f"left by the previous process beyond the maximum hold of {hold:.0f} s"
                out.append(self._command(req, CommandKind.CANCEL, 0.0, why))
                continue
            self._requests[h.intersection] = req
            self._request_event(req, "recovered", "left active by the previous process")
        return out

    def withdraw(self, vehicle: str, reason: str = "withdrawn by operator") -> list[Command]:
        v = self._vehicles.get(vehicle)
        if v is not None:
            v.sources = {s: False for s in v.sources}
            v.alarm = v.departs = None
        return self._end_vehicle(vehicle, ClaimState.CANCELLED, reason)

    # -- views ----------------------------------------------------------------

    @property
    def active(self) -> int:
        """Requests the controllers currently hold (or are being asked for)."""
        return len(self._requests)

    def requests(self) -> list[RequestView]:
        """Every live request, in no particular order."""
        now = self._clock.monotonic()
        return [
            RequestView(
                request_id=r.request_id,
                intersection=r.intersection,
                controller=r.controller,
                approach=r.approach,
                vehicle=r.lead,
                vehicles=tuple(sorted(c.vehicle for c in self._members(r))),
                eta_s=max(0.0, r.eta_at - now),
                held_s=now - r.opened,
                granted=r.granted,
                answer=r.answer.value if r.answer is not None else "",
                recovered=r.orphan_until is not None,
            )
            for r in self._requests.values()
        ]

    def active_at(self, intersection: str) -> int:
        return 1 if intersection in self._requests else 0

    def claim_state(self, vehicle: str, intersection: str) -> ClaimState | None:
        v = self._vehicles.get(vehicle)
        c = v.claims.get(intersection) if v else None
        return c.state if c else None

    def on_run(self, vehicle: str) -> bool:
        v = self._vehicles.get(vehicle)
        return v is not None and self._on_run(v)

    @property
    def allowed(self) -> Mapping[str, str]:
        """The allow-list: vehicle id -> priority class."""
        return self._allowed

    # -- claims ---------------------------------------------------------------

    def _vehicle(self, vehicle: str) -> _Vehicle | None:
        if vehicle not in self._allowed:
            self._ignore("not_allowed")
            return None
        return self._vehicles.setdefault(vehicle, _Vehicle())

    def _on_run(self, v: _Vehicle) -> bool:
        states = [v.sources.get(s, False) for s in self.config.emergency_sources]
        return all(states) if self.config.emergency_rule == "all" else any(states)

    def _consider(
        self,
        vehicle: str,
        v: _Vehicle,
        eta: SignalEta,
        sig: SignalPoint | None,
        now: float,
        age: float = 0.0,
    ) -> list[Command]:
        """``age``: how old the position behind ``eta`` is; the ETA counts from its time."""
        cfg = self.config
        inter = eta.intersection
        if inter in v.done:
            return []
        claim = v.claims.get(inter)
        if claim is None:
            claim = _Claim(
                vehicle=vehicle,
                intersection=inter,
                controller=eta.controller,
                approach=eta.approach,
                rank=self._rank.get(self._allowed[vehicle], len(self._rank)),
                since=now,
                eta_at=now - age + eta.eta_s,
            )
            v.claims[inter] = claim
            self._claims_at.setdefault(inter, {})[vehicle] = claim
            self._set(claim, ClaimState.ARMED, f"ETA {eta.eta_s:.0f} s, in the look-ahead")
        claim.eta_at = now - age + eta.eta_s
        transition = (sig.transition_s if sig else None) or cfg.default_transition_s
        if claim.state is ClaimState.ARMED:
            if eta.early_s - age > transition + cfg.lead_margin_s:
                return []
            claim.state = ClaimState.QUEUED  # due; the arbiter decides what it becomes
            v.due_since = now
            self._event(
                claim,
                "due",
                f"early ETA {eta.early_s - age:.1f} s <= transition "
                f"{transition:.0f} s + margin {cfg.lead_margin_s:.0f} s",
                "",
            )
        return self._arbitrate(inter)

    def _from_station(self, vehicle: str, v: _Vehicle) -> list[Command]:
        """ETAs from the station for an alarm's route, until the engine reports positions."""
        if v.alarm is None or v.alarm.route is None or v.departs is None:
            return []
        now = self._clock.monotonic()
        wait = max(0.0, v.departs - now)
        speed = self.config.station_speed_ms
        rolled = speed * max(0.0, now - v.departs)  # dead reckoning from the turnout estimate
        out: list[Command] = []
        for sig in self._routes[v.alarm.route].signals[: self.config.look_ahead]:
            if sig.stop_line_m <= rolled:
                continue
            eta = wait + (sig.stop_line_m - rolled) / speed
            est = SignalEta(
                intersection=sig.intersection,
                controller=sig.controller,
                approach=sig.approach,
                distance_m=sig.stop_line_m,
                eta_s=eta,
                early_s=eta,
                late_s=eta * 1.5,
                shared=True,
            )
            out += self._consider(vehicle, v, est, sig, now)
        return out

    def _end(self, claim: _Claim, state: ClaimState, why: str) -> list[Command]:
        v = self._vehicles[claim.vehicle]
        del v.claims[claim.intersection]
        at = self._claims_at.get(claim.intersection, {})
        at.pop(claim.vehicle, None)
        if not at:
            self._claims_at.pop(claim.intersection, None)
        if state in FINAL_FOR_RUN:
            v.done.add(claim.intersection)
        self._set(claim, state, why, self._requests.get(claim.intersection))
        return self._arbitrate(claim.intersection, why)

    def _end_vehicle(self, vehicle: str, state: ClaimState, why: str) -> list[Command]:
        v = self._vehicles.get(vehicle)
        if v is None:
            return []
        out: list[Command] = []
        for claim in list(v.claims.values()):
            out += self._end(claim, state, why)
        return out

    def _set(self, claim: _Claim, state: ClaimState, why: str, req: _Request | None = None) -> None:
        claim.state = state
        self._event(claim, state.value, why, req.request_id if req else "")

    # -- requests -------------------------------------------------------------

    def _members(self, req: _Request) -> list[_Claim]:
        return [
            c
            for c in self._claims_at.get(req.intersection, {}).values()
            if c.approach == req.approach and c.state in DUE
        ]

    def _arbitrate(self, inter: str, why_gone: str = "") -> list[Command]:
        cfg = self.config
        due = [c for c in self._claims_at.get(inter, {}).values() if c.state in DUE]
        req = self._requests.get(inter)
        winner = choose(
            (Claim(c.vehicle, c.approach, c.rank, c.eta_at, c.since) for c in due),
            req.approach if req else None,
            req.granted if req else False,
            cfg.switch_margin_s,
        )
        out: list[Command] = []
        if req is not None and winner != req.approach:
            why = why_gone or "last vehicle done"
            if winner is not None:
                why = f"junction handed to approach {winner}"
                for c in self._members(req):
                    self._set(c, ClaimState.QUEUED, why, req)
            out.append(self._cancel(req, why))
            req = None
        if winner is None:
            return out
        members = [c for c in due if c.approach == winner]
        lead = min(members, key=lambda c: (c.eta_at, c.since, c.vehicle))
        now = self._clock.monotonic()
        if req is not None and req.orphan_until is not None:
            req.orphan_until = None
            req.eta_at, req.lead = lead.eta_at, lead.vehicle
            out.append(
                self._send(req, CommandKind.UPDATE, f"re-asserted after restart for {lead.vehicle}")
            )
        elif req is None:
            sample = members[0]
            req = _Request(
                request_id=f"{self._id_prefix}{inter}/{winner}/{next(self._ids)}",
                intersection=inter,
                controller=sample.controller,
                approach=winner,
                opened=now,
                last_sent=now,
                eta_at=lead.eta_at,
                lead=lead.vehicle,
            )
            self._requests[inter] = req
            out.append(self._send(req, CommandKind.REQUEST, f"for {lead.vehicle}"))
        elif abs(lead.eta_at - req.eta_at) > cfg.eta_update_threshold_s or lead.vehicle != req.lead:
            moved = lead.eta_at - req.eta_at
            req.eta_at, req.lead = lead.eta_at, lead.vehicle
            out.append(self._send(req, CommandKind.UPDATE, f"ETA moved by {moved:+.1f} s"))
        for c in due:
            if c.approach == winner and c.state is ClaimState.QUEUED:
                self._set(
                    c,
                    ClaimState.GRANTED if req.granted else ClaimState.REQUESTED,
                    "shares the request" if c.vehicle != req.lead else "requested",
                    req,
                )
            elif c.approach != winner and c.state is not ClaimState.QUEUED:
                self._set(c, ClaimState.QUEUED, f"approach {winner} holds the junction", req)
        return out

    def _close(self, req: _Request, state: ClaimState, why: str) -> list[Command]:
        """End a request and every claim it serves."""
        out = [self._cancel(req, why)]
        for c in self._members(req):
            v = self._vehicles[c.vehicle]
            del v.claims[c.intersection]
            self._claims_at.get(c.intersection, {}).pop(c.vehicle, None)
            if state in FINAL_FOR_RUN:
                v.done.add(c.intersection)
            self._set(c, state, why, req)
        if not self._claims_at.get(req.intersection):
            self._claims_at.pop(req.intersection, None)
        return out + self._arbitrate(req.intersection, why)

    def _cancel(self, req: _Request, why: str) -> Command:
        self._requests.pop(req.intersection, None)
        return self._command(req, CommandKind.CANCEL, 0.0, why)

    def _send(self, req: _Request, kind: CommandKind, why: str) -> Command:
        now = self._clock.monotonic()
        req.last_sent = now
        remaining = max(0.0, self.config.max_hold_s - (now - req.opened))
        eta_left = max(0.0, req.eta_at - now)
        # The controller drops the call by itself after this: a dead daemon's requests lapse.
        duration = min(remaining, eta_left + 2 * self.config.refresh_s)
        return self._command(req, kind, duration, why)

    def _command(self, req: _Request, kind: CommandKind, duration: float, why: str) -> Command:
        now = self._clock.monotonic()
        self._request_event(req, "refresh" if why == "refresh" else kind.value, why)
        return Command(
            kind=kind,
            request_id=req.request_id,
            vehicle=req.lead,
            intersection=req.intersection,
            controller=req.controller,
            approach=req.approach,
            time=self._clock.now(),
            eta_s=max(0.0, req.eta_at - now),
            duration_s=duration,
            priority=self._allowed.get(req.lead, ""),
            reason=why,
        )

    def _event(self, claim: _Claim, what: str, why: str, request_id: str) -> None:
        if self._on_event is not None:
            self._on_event(
                PlannerEvent(
                    self._clock.now(), claim.vehicle, claim.intersection, request_id, what, why
                )
            )

    def _request_event(self, req: _Request, what: str, why: str) -> None:
        if self._on_event is not None:
            self._on_event(
                PlannerEvent(
                    self._clock.now(), req.lead, req.intersection, req.request_id, what, why
                )
            )

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1
