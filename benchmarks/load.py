#!/usr/bin/env python
"""``python benchmarks/load.py [options]``: many visitors against a launched app (``benchmarks/visitors.py``:
load, soak, churn; ``--burst N``: ``benchmarks/burst.py``). ``--help`` for the options."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on sys.path; the package needs the checkout there instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    from benchmarks.visitors import main

    raise SystemExit(main())
