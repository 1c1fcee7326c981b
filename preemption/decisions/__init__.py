"""The decisions: when to ask a controller, when to take the request back, who goes first.

``planner`` turns matched positions, emergency status and controller answers
into commands; ``arbiter`` picks the approach when vehicles conflict at one
junction. Pure decisions on the Clock, no I/O: this layer imports only the
kernel (preemption.kernel) and nothing of routes/, gps/, signal_adapters/ or
sim/.
"""
