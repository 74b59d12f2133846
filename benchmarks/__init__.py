"""The benchmark harness of alexnet-viz (``python benchmarks/bench.py``) and its recorded results.

Modules, one concern each:

- ``timing``     medians of timed runs, FLOP counting, the matmul floor, waiting for a quiet machine
- ``machine``    facts about the machine (CPU, memory, versions, GPU) and how busy its other processes kept it
- ``rows``       one result row (median, spread, floor, target verdict) and the tables that print them
- ``page``       the only module that knows the page's handlers (``alexnet_viz.ui``): what a visitor's clicks cost
- ``tutorial``   the notebook way: matplotlib subplots and Captum's defaults, for the speed-ups
- ``served``     through a launched server: cold start, peak memory, and ours vs ``baseline_app`` over HTTP
- ``cpu_run`` / ``gpu_run``   the default run on each device
- ``levers``     the settings we chose, each against its alternatives: a table of small functions
- ``probe``      the levers measured in a fresh process (``python -m benchmarks.probe``)
- ``report``     printing a run; ``main`` the command line; ``bench.py`` the script entry
- ``load`` / ``burst``   many visitors at once against a launched app (``python benchmarks/load.py``)
"""
