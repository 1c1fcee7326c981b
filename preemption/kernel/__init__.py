"""The kernel: the contracts between the parts, time, configuration and errors.

``model`` holds the frozen dataclasses every part speaks (Fix, Route,
RoutePosition, Command, SignalState), ``clock`` the real and the simulated
Clock, ``config`` the validated deployment file, ``errors`` the one exception
tree of the project. The kernel imports nothing of ours outside itself, so
routes/, gps/, signal_adapters/, sim/ and every layer of preemption/ may import
it.
"""
