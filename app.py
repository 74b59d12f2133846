"""alexnet-viz: the entry point for `python app.py` and for Hugging Face Spaces.

It takes the same flags as `alexnet-viz serve` (see `python app.py --help`).
"""

import sys

if __name__ == "__main__":  # imports inside: the image decoder's worker process re-runs this file's top level
    from alexnet_viz.cli import main

    raise SystemExit(main(["serve", *sys.argv[1:]]))
