"""The one exception tree of the project.

Every error this project raises on purpose, for a person to read, derives from
:class:`PreemptionError`; its message says what happened, to what (file and
key, controller, broker), and what to do. Bugs stay built-in exceptions
(``ValueError`` for a bad argument, ``AssertionError``), so they are not
mistaken for bad input::

    PreemptionError
    ├── InputError              an input a person wrote is unusable (CLI exit status 2)
    │   ├── ConfigError         deployment, onboard or scenario TOML   kernel/config.py
    │   ├── RouteFileError      a route GeoJSON file                    routes/geojson.py
    │   ├── TrackFileError      a GPX or CSV track                      gps/files.py
    │   ├── BrokerConfigError   MQTT broker settings, TLS files         gps/mqtt.py
    │   ├── BuildSpecError      a route build spec                      routes/buildspec.py
    │   ├── RoadNetworkError    a road network, netconvert              routes/roadnet.py
    │   ├── ProgramError        a signal program of the network         routes/programs.py
    │   ├── RouteBuildError     no route can be built as asked          routes/build.py
    │   ├── InsecureInput       a forgeable input without insecure=true kernel/errors.py
    │   └── AdapterConfigError  adapter options that cannot work        signal_adapters/base.py
    │       └── UnknownAdapter  no installed adapter has that name      signal_adapters/registry.py
    ├── AdapterError            a controller could not be asked         signal_adapters/base.py
    │   ├── ControllerUnreachable   no answer: network, line or gateway down
    │   ├── RequestRejected     the controller answered and refused
    │   └── AdapterConfigError  (above: both an input and an adapter error)
    ├── JournalError            the journal cannot be opened or read    service/journal.py
    └── SimulationError         a simulated run cannot go on
        └── SumoExportError     a scenario cannot become a SUMO network sim/sumo_export.py

The classes are defined where they are raised; this module holds the roots, so
that every part (routes/, gps/, signal_adapters/, sim/) can derive from them
without importing another. The command line maps :class:`InputError` to exit
status 2 and any other :class:`PreemptionError` to 1 (preemption/cli/main.py).
"""

from __future__ import annotations

__all__ = [
    "InputError",
    "InsecureInput",
    "JournalError",
    "PreemptionError",
    "SimulationError",
]


class PreemptionError(Exception):
    """The root: an error this project raises for a person to read and act on."""


class InputError(PreemptionError):
    """Something a person wrote (a file, a setting, an argument) is unusable."""


class JournalError(PreemptionError):
    """The journal (SQLite) cannot be opened, migrated or read."""


class InsecureInput(InputError):
    """An input anyone on the network could forge is configured without authentication."""


class SimulationError(PreemptionError):
    """A simulated run cannot go on (the engine never arrives, SUMO fails)."""
