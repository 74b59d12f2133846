#!/usr/bin/env python
"""``python benchmarks/bench.py [options]``: the benchmark's command line (``benchmarks/main.py``; ``--help``).

The harness is the ``benchmarks`` package beside this file; see its ``__init__`` for which module does what.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on sys.path; the package needs the checkout there instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    from benchmarks.main import main

    raise SystemExit(main())
