"""alexnet-viz: the entry point for `python app.py` and for Hugging Face Spaces.

It takes the same flags as `alexnet-viz serve` (see `python app.py --help`).
"""

import sys

from alexnet_viz.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *sys.argv[1:]]))
