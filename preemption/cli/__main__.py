"""``python -m preemption.cli``: the `preemption` command without its console script."""

import sys

from preemption.cli.main import main

sys.exit(main())
