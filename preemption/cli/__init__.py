"""The command line: the `preemption` command and the runs it starts.

``main`` parses the command line; ``routes`` and ``sim`` add their
sub-commands; ``demo``, ``bench``, ``simulate`` and ``sumo_run`` are the
simulated runs behind `preemption demo`, `bench` and `sim`. This layer may
import everything: the service layer, the simulator (sim/), the decisions,
routes/, gps/, signal_adapters/ and the kernel. Nothing imports it but the
console script and the tests.
"""

from preemption.cli.main import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, main

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "main"]
