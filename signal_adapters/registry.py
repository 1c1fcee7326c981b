"""Adapters are found by name through the entry-point group ``preemption.signal_adapters``.

The built-in adapters register there in pyproject.toml exactly as a vendor's
package would (an OCIT-O gateway, say), so both take the same path::

    [project.entry-points."preemption.signal_adapters"]
    ocit = "ocit_gateway.adapter:OcitAdapter"

The object named must be an :data:`~signal_adapters.base.AdapterFactory`: a
callable ``(controller_id, options, context) -> SignalAdapter`` (a class whose
``__init__`` takes those arguments serves).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import cast

from signal_adapters.base import AdapterConfigError, AdapterFactory

GROUP = "preemption.signal_adapters"


class UnknownAdapter(AdapterConfigError):
    """No installed package provides an adapter of that name."""

    def __init__(self, name: str, installed: list[str], controller: str = "") -> None:
        have = ", ".join(installed) or "none"
        super().__init__(
            controller,
            f"no signal adapter named {name!r} is installed (installed: {have}); "
            f"install the package that provides it, or correct the name",
        )
        self.name = name


def installed() -> dict[str, EntryPoint]:
    """Every adapter name an installed package provides."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(name: str) -> AdapterFactory:
    eps = installed()
    if name not in eps:
        raise UnknownAdapter(name, sorted(eps))
    return cast(AdapterFactory, eps[name].load())
