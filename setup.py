"""Optional compiled build of the per-fix hot path.

Everything about the distribution is in pyproject.toml. This file only adds the
C extensions when asked for: ``PREEMPTION_COMPILE=1 pip install .`` (or
``make compiled``) compiles the modules of preemption/service/hotpath.py with mypyc,
about 1.5 times the fixes per second of the pure-Python modules. Without the
variable nothing is compiled and no compiler is needed.
"""

import os
import sys

from setuptools import setup

# The same modules as preemption.service.hotpath.HOT_MODULES (tests/test_hotpath.py checks).
HOT_MODULES = [
    "gps/nmea.py",
    "gps/validity.py",
    "routes/index.py",
    "routes/matcher.py",
    "routes/speed.py",
]

if os.environ.get("PREEMPTION_COMPILE", "") == "1":
    if "editable_wheel" in sys.argv:
        sys.exit(
            "PREEMPTION_COMPILE=1 does not work with an editable install: the compiled "
            "modules would sit beside the sources and shadow every later edit of them. "
            "Build a wheel instead (pip install ., or make compiled)."
        )
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(["--config-file=pyproject.toml", *HOT_MODULES], opt_level="3"))
else:
    setup()
