"""The service: the long-running processes and their wiring.

``daemon`` runs positions through the matcher and the planner and sends the
commands through one supervised worker per controller; ``wiring`` builds it
from a deployment file; ``supervision`` restarts what fails, with backoff and
circuit breakers; ``journal`` records every command, answer and decision in
SQLite and recovers after a crash; ``fleet`` takes the engines' positions and
status from MQTT with the checks a network input needs; ``systemd`` speaks to
the service manager; ``onboard`` wires the forwarder in an engine. This layer
may import the decisions, routes/, gps/, signal_adapters/ and the kernel, never
the command line (preemption.cli) or the simulator (sim/).
"""
