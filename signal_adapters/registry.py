"""Adapters are found by name through the entry-point group ``preemption.signal_adapters``.

The built-in adapters register there in pyproject.toml exactly as a vendor's
package would (an OCIT-O gateway, say), so both take the same path::

    [project.entry-points."preemption.signal_adapters"]
    ocit = "ocit_gateway.adapter:OcitAdapter"

The object named must be an :data:`~signal_adapters.base.AdapterFactory`: a
callable ``(controller_id, options, context) -> SignalAdapter`` (a class whose
``__init__`` takes those arguments serves).

**Options.** A factory declares the ``options`` table it understands as a class
attribute ``Options``: a pydantic model with ``extra="forbid"`` and no I/O in it
(an address, a path, a preempt number; not a connection). ``preemption
check-config`` and ``load_config(adapters=option_checks())`` validate each
controller's options against it, and the adapter parses its options with
:func:`parse_options` in ``__init__``, so that a misspelt key is an error
before a single request and not a silent default. A factory without
``Options`` is not checked.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from preemption.kernel.config import OptionsCheck, validation_problems
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
    try:
        factory = eps[name].load()
    except (ImportError, AttributeError) as exc:
        raise AdapterConfigError(
            "",
            f"the signal adapter {name!r} is installed ({eps[name].value}) but cannot be "
            f"loaded: {exc}; reinstall the package that provides it",
        ) from None
    return cast(AdapterFactory, factory)


def model_of(factory: object) -> type[BaseModel] | None:
    """The ``Options`` model a factory declares, or None when it declares none."""
    model = getattr(factory, "Options", None)
    if model is None:
        return None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise AdapterConfigError(
            "",
            f"{getattr(factory, '__qualname__', factory)}.Options is not a pydantic model "
            "(a BaseModel subclass); the adapter's package must declare its options as one",
        )
    return model


def options_model(name: str) -> type[BaseModel] | None:
    """The options model of the installed adapter ``name`` (None: it declares none)."""
    return model_of(load(name))


def check_options(model: type[BaseModel], options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key path below ``options``, message) for each way ``options`` fails ``model``."""
    try:
        model.model_validate(dict(options))
    except ValidationError as exc:
        return validation_problems(exc)
    return []


def validate_options(name: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check one controller's ``options`` against adapter ``name``'s model; [] when fine
    (or when the adapter declares no model). Raises AdapterConfigError if it cannot load."""
    model = options_model(name)
    return [] if model is None else check_options(model, options)


def option_checks() -> dict[str, OptionsCheck]:
    """For ``load_config(adapters=...)``: every installed name with its options check.

    An adapter's module is imported only when a controller uses it.
    """
    return {name: functools.partial(validate_options, name) for name in installed()}
