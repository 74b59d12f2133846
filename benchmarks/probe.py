"""Levers that must start a fresh process, measured there: ``python -m benchmarks.probe WHAT RUNS OUT.json``.

- ``omp``: forward (batch 1 and 16) and integrated gradients at UI defaults with 1 and 2 torch threads;
  OpenMP reads ``OMP_WAIT_POLICY`` once when torch starts, so each policy needs a process of its own.
- ``compile``: ``torch.compile`` of the forward (a hang or a crash costs only the parent's timeout).
- ``spin``: keep one core busy until killed (another visitor's request, another job on a shared box).
- ``triton``: exit 0 if ``import triton`` works here, 1 (and say why) if not: checks ``no_triton/``.

The medians (ms, s) go to ``OUT.json`` as one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

IMAGE = Path(__file__).resolve().parents[1] / "assets" / "cat.jpg"


def median_ms(fn: Callable[[], Any], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def compile_forward(runs: int) -> dict[str, float]:
    import torch

    from alexnet_viz import load_model

    loaded = load_model("torchvision", "none", "cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        out = {"eager_ms": median_ms(lambda: loaded.module(x), runs)}
        t0 = time.perf_counter()
        compiled = torch.compile(loaded.module)
        compiled(x)
        out["compile_s"] = time.perf_counter() - t0
        out["compiled_ms"] = median_ms(lambda: compiled(x), runs)
    return out


def thread_counts(runs: int) -> dict[str, float]:
    import torch

    from alexnet_viz import analyze, explain, load_model

    loaded = load_model("torchvision", "none", "cpu")
    analysis = analyze(loaded, IMAGE)
    x, xb = torch.randn(1, 3, 224, 224), torch.randn(16, 3, 224, 224)
    slow = max(3, runs - 2)
    out = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        with torch.inference_mode():
            out[f"{n} threads, forward_ms"] = median_ms(lambda: loaded.module(x), runs)
            out[f"{n} threads, forward batch 16_ms"] = median_ms(lambda: loaded.module(xb), slow)
        out[f"{n} threads, IG (UI defaults)_ms"] = median_ms(
            lambda: explain(loaded, analysis, "integrated_gradients"), slow)
    return out


def spin() -> None:
    while True:
        pass


def main(argv: list[str]) -> int:
    what = argv[0]
    if what == "spin":
        spin()
    if what == "triton":
        try:
            import triton  # noqa: F401
        except ImportError as e:
            print(e)
            return 1
        return 0
    runs, out = int(argv[1]), Path(argv[2])
    result = compile_forward(runs) if what == "compile" else thread_counts(runs)
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
