"""Who gets an intersection when several vehicles want it.

Pure decisions, no I/O. At one intersection, requests for different
approaches conflict (a controller can give only one of them green at a
time; treating every pair as conflicting is the safe default). Vehicles on the
same approach share one request. Among conflicting approaches the junction goes
to the claim with the higher priority class, then the earlier arrival; the
approach that holds the junction keeps it unless a challenger of a higher
class comes, or one of the same class that arrives earlier by more than
``switch_margin_s`` and the holder is not yet granted (no flip-flopping while
the controller is already changing over). When the holder's vehicles have
passed, the next approach is handed the junction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Claim:
    """One vehicle wanting green on one approach of one intersection."""

    vehicle: str
    approach: str
    rank: int  # priority class rank: lower goes first
    eta_at: float  # monotonic instant of expected arrival
    since: float  # monotonic instant the claim was made (tie-break: first come)


def order(claim: Claim) -> tuple[int, float, float, str]:
    return (claim.rank, claim.eta_at, claim.since, claim.vehicle)


def choose(
    claims: Iterable[Claim],
    holder: str | None,
    holder_granted: bool,
    switch_margin_s: float,
) -> str | None:
    """The approach that should hold the intersection, given the current holder."""
    claims = list(claims)
    if not claims:
        return None
    best = min(claims, key=order)
    if holder is None or best.approach == holder:
        return best.approach
    mine = [c for c in claims if c.approach == holder]
    if not mine:
        return best.approach  # the holder's vehicles are gone
    lead = min(mine, key=order)
    if best.rank < lead.rank:
        return best.approach  # a higher priority class always takes over
    if not holder_granted and best.eta_at < lead.eta_at - switch_margin_s:
        return best.approach
    return holder
