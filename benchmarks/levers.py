"""The levers: each setting the app chose, timed against its alternatives on this machine (``--levers``).

``LEVERS`` is the table: a group's name (what ``--only`` takes) -> a small function that measures it and
returns its rows. Variants of one lever run interleaved (``timing.interleaved``); a lever that needs a fresh
process (OpenMP's wait policy, torch.compile) runs ``python -m benchmarks.probe``; a lever of the served app's
memory launches it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import page, served
from benchmarks.cpu_run import Log
from benchmarks.machine import BusyMeter, LoadMeter, machine_info
from benchmarks.rows import sig
from benchmarks.timing import SETTLE, interleaved, measure

ROOT = Path(__file__).resolve().parents[1]
NO_TRITON = Path(__file__).resolve().parent / "no_triton"  # a sitecustomize.py that hides triton

Row = dict[str, Any]


@dataclass
class Bench:
    """What every lever measures on: the page's model and handlers, one analysed image, the run's settings."""

    torch: Any
    page: page.Page
    analysis: Any  # alexnet_viz.analysis.Analysis of the image
    runs: int
    warmup: int
    image: Path
    served: bool  # False with --no-cold-start: no lever launches the app

    @property
    def slow_runs(self) -> int:
        return max(3, self.runs - 2)

    def explain(self, method: str, loaded: Any = None, **options: Any) -> Callable[[], Any]:
        from alexnet_viz.analysis import explain

        return lambda: explain(loaded or self.page.loaded, self.analysis, method, **options)

    def forward(self, x: Any = None, mode: Any = None) -> Callable[[], None]:
        """The bare forward of the analysed input (or ``x``) under ``mode`` (default: inference_mode)."""
        x = self.analysis.input if x is None else x

        def run() -> None:
            with (mode or self.torch.inference_mode)():
                self.page.loaded.module(x)
        return run

    def group(self, lever: str, variants: Mapping[str, Callable[[], Any]], current: str | None, *,
              n: int | None = None, extra: Mapping[str, Mapping[str, Any]] | None = None) -> list[Row]:
        """The variants timed interleaved: one row each."""
        stats = interleaved(variants, runs=n or self.runs, warmup=self.warmup)
        return [{"lever": lever, "variant": name, "median_ms": sig(stat.median * 1000),
                 "min_ms": sig(min(stat.wall) * 1000), "runs": len(stat.wall), "current": name == current,
                 "cores_used": sig(stat.cores_used, 2), "others_cpu": sig(stat.others, 2),
                 **(extra or {}).get(name, {})} for name, stat in stats.items()]


@contextlib.contextmanager
def threads(torch: Any, n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def busy_core(on: bool = True) -> Iterator[None]:
    """One other process spinning on one core (``on``): another visitor's request, another job on a shared box."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.probe", "spin"], cwd=ROOT)
    time.sleep(0.3)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def probe(what: str, runs: int, env: Mapping[str, str] | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """``python -m benchmarks.probe WHAT RUNS OUT.json`` in a fresh process; its JSON, or {"error": ...}."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="alexnet-viz-probe-") as tmp:
        out = Path(tmp) / "out.json"
        try:
            done = subprocess.run([sys.executable, "-m", "benchmarks.probe", what, str(runs), str(out)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            return {"error": f"no result within {timeout:.0f} s"}
        if done.returncode != 0 or not out.is_file():
            return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300],
                    "wall_s": sig(time.perf_counter() - t0)}
        return dict(json.loads(out.read_text(encoding="utf-8")))


# --- the levers, one function each ------------------------------------------------------------------------------


def frozen(b: Bench) -> list[Row]:
    """Frozen parameters (load_model freezes them) vs trainable."""
    from alexnet_viz.model import load_model

    thawed = load_model(page.ARCH, "none", "cpu")
    thawed.module.requires_grad_(True)
    return [*b.group("parameters frozen: saliency", {"frozen": b.explain("saliency"),
                                                     "trainable": b.explain("saliency", thawed)}, "frozen"),
            *b.group("parameters frozen: IG (UI defaults)",
                     {"frozen": b.explain("integrated_gradients"),
                      "trainable": b.explain("integrated_gradients", thawed)}, "frozen", n=b.slow_runs)]


def grad_mode(b: Bench) -> list[Row]:
    """Grad mode of the pure forward (analyze uses inference_mode)."""
    return b.group("forward: grad mode", {"inference_mode": b.forward(), "no_grad": b.forward(mode=b.torch.no_grad),
                                          "grad enabled": b.forward(mode=contextlib.nullcontext)}, "inference_mode")


def batch_size(b: Bench) -> list[Row]:
    """IG's internal_batch_size and SmoothGrad's nt_samples_batch_size."""
    rows = []
    for steps, batches in ((32, (8, 16, 32)), (50, (4, 8, 16, 32, 50))):
        rows += b.group(f"IG {steps} steps: internal_batch_size",
                        {str(n): b.explain("integrated_gradients", n_steps=steps, internal_batch_size=n)
                         for n in batches}, "16", n=b.slow_runs)
    return rows + b.group("SmoothGrad 16 samples: nt_samples_batch_size",
                          {str(n): b.explain("smoothgrad", nt_samples_batch_size=n) for n in (4, 8, 16)}, "16",
                          n=b.slow_runs)


def torch_threads(b: Bench) -> list[Row]:
    """1 or 2 torch threads, on the machine as it is and with one more core busy."""

    def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with threads(b.torch, n):
                fn()
        return run

    rows = []
    current = f"{b.torch.get_num_threads()} threads"
    for contended in (False, True):
        where = "one core busy" if contended else "machine as is"
        with busy_core(contended):
            for what, fn, n in (("forward", b.forward(), b.runs),
                                ("full default view", lambda: page.full_view(b.page), b.runs),
                                ("IG (UI defaults)", b.explain("integrated_gradients"), 3)):
                rows += b.group(f"torch threads, {what} ({where})", {f"{k} threads": with_threads(k, fn)
                                                                     for k in (1, 2)}, current, n=n)
    return rows


def omp_wait_policy(b: Bench) -> list[Row]:
    """OpenMP's wait policy, read once when torch starts: measured in child processes."""
    rows: list[Row] = []
    default_threads = b.torch.get_num_threads()
    for contended in (False, True):
        where = "one core busy" if contended else "machine as is"
        for policy in ("", "PASSIVE"):
            with busy_core(contended):
                SETTLE()
                busy = BusyMeter()
                res = probe("omp", b.runs, {"OMP_WAIT_POLICY": policy} if policy else {}, timeout=300)
                others = busy.others()
            for label, value in res.items():
                if label.endswith("_ms"):
                    count, what = label.removesuffix("_ms").split(", ")
                    rows.append({"lever": f"OMP_WAIT_POLICY ({where}): {what}", "variant": f"{policy or 'unset'}, "
                                 f"{count}", "median_ms": sig(value), "others_cpu": sig(others, 2),
                                 "current": not policy and count == f"{default_threads} threads"})
            if "error" in res:
                rows.append({"lever": f"OMP_WAIT_POLICY ({where})", "variant": policy or "unset",
                             "error": res["error"]})
    return rows


def channels_last(b: Bench) -> list[Row]:
    """Channels-last memory format (attribution.py feeds batched methods NHWC on the CPU)."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    torch, x, target = b.torch, b.analysis.input, b.analysis.top1.index
    module = b.page.loaded.module
    base = torch.zeros_like(x)

    def nhwc(t: Any) -> Any:
        return module(t.contiguous(memory_format=torch.channels_last))

    def ig(model: Callable[[Any], Any]) -> Callable[[], Any]:
        return lambda: IntegratedGradients(model).attribute(x.clone().requires_grad_(True), baselines=base,
                                                            target=target, n_steps=32, internal_batch_size=16)

    def sg(model: Callable[[Any], Any]) -> Callable[[], Any]:
        return lambda: NoiseTunnel(Saliency(model)).attribute(x.clone().requires_grad_(True), nt_type="smoothgrad",
                                                              nt_samples=16, nt_samples_batch_size=16, stdevs=0.5,
                                                              target=target)

    xc = x.contiguous(memory_format=torch.channels_last)
    return [*b.group("channels-last: forward", {"NCHW input": b.forward(), "NHWC input": b.forward(xc)},
                     "NCHW input"),
            *b.group("channels-last: IG 32 steps, batch 16", {"NCHW batches": ig(module), "NHWC batches": ig(nhwc)},
                     "NHWC batches", n=b.slow_runs),
            *b.group("channels-last: SmoothGrad 16, batch 16", {"NCHW batches": sg(module), "NHWC batches": sg(nhwc)},
                     "NHWC batches", n=b.slow_runs)]


def png(b: Bench) -> list[Row]:
    """PNG compress level of what the page shows after analyze (Gradio saves format="png" at level 6)."""
    shown = page.full_view(b.page).shown
    fast = page.with_encoderinfo(shown, compress_level=1)
    ours = "the app's PNG files (ui.as_png_files)"
    variants: dict[str, Callable[[], int]] = {str(lv): partial(page.encode_png, shown, lv)
                                              for lv in (0, 1, 3, 6, 9)}
    variants["Gradio's encoder, as is"] = lambda: page.encode_png(shown, gradio=True)
    variants["Gradio's encoder, image.encoderinfo level 1"] = lambda: page.encode_png(fast, gradio=True)
    variants[ours] = lambda: page.encode_png(shown)
    sizes = {name: {"bytes": encode()} for name, encode in variants.items()}
    return b.group(f"PNG compress_level ({len(shown)} pictures)", variants, ours, extra=sizes)


def gc_freeze(b: Bench) -> list[Row]:
    """A full gc pass with and without gc.freeze() after start (a gen-2 collection pauses a request)."""
    gc.unfreeze()
    pause = measure(gc.collect, runs=3, warmup=0)
    gc.freeze()
    frozen_pause = measure(gc.collect, runs=3, warmup=0)
    return [{"lever": "gen-2 gc.collect() pause", "variant": name, "median_ms": sig(stat.median * 1000),
             "runs": len(stat.wall), "current": name == "no freeze"}
            for name, stat in (("no freeze", pause), ("gc.freeze() after start", frozen_pause))]


def bf16(b: Bench) -> list[Row]:
    """bfloat16 autocast (AMD Zen 4 and recent Intel CPUs have AVX512-BF16): less exact, maybe faster."""
    from alexnet_viz.analysis import explain

    torch = b.torch

    def autocast(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fn()
        return run

    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = explain(b.page.loaded, b.analysis, "integrated_gradients", n_steps=50)
    full = explain(b.page.loaded, b.analysis, "integrated_gradients", n_steps=50)
    error = sig(float((low.heatmap - full.heatmap).norm() / full.heatmap.norm()), 2)
    ig50 = b.explain("integrated_gradients", n_steps=50)
    return [*b.group("bf16 autocast: forward", {"fp32": b.forward(), "bf16": autocast(b.forward())}, "fp32"),
            *b.group("bf16 autocast: IG 50 steps", {"fp32": ig50, "bf16": autocast(ig50)}, "fp32", n=b.slow_runs,
                     extra={"bf16": {"heatmap_rel_error": error}})]


def memory(b: Bench) -> list[Row]:
    """The served app's peak RSS: glibc's malloc arenas (one per thread by default) vs MALLOC_ARENA_MAX=2, and
    without triton (what a CPU-only torch wheel gives)."""
    if not b.served:
        return []
    no_triton = {"PYTHONPATH": os.pathsep.join(filter(None, [str(NO_TRITON), os.environ.get("PYTHONPATH")]))}
    arenas = {"MALLOC_ARENA_MAX": "2"}
    rows = []
    for variant, env in (("as is", {}), ("MALLOC_ARENA_MAX=2", arenas), ("triton not importable", no_triton),
                         ("triton not importable + MALLOC_ARENA_MAX=2", {**no_triton, **arenas})):
        stat, used = served.cold_start(runs=1, warmup=0, image=b.image, env=env)
        rows.append({"lever": "app peak RSS (VmHWM)", "variant": variant, "current": not env,
                     "cold_start_ms": sig(stat.median * 1000), **used})
    return rows


def compile_forward(b: Bench, timeout: float = 60.0) -> list[Row]:
    """torch.compile of the forward, in a child process so that a hang or a crash costs only the timeout."""
    res = probe("compile", b.runs, timeout=timeout + 60)
    row: Row = {"lever": "torch.compile (forward)", "variant": "torch.compile(module)"}
    if "error" in res:
        return [{**row, "ok": False, **res}]
    gain = res["eager_ms"] - res["compiled_ms"]
    row.update(ok=res["compile_s"] <= timeout, eager_ms=sig(res["eager_ms"]), compiled_ms=sig(res["compiled_ms"]),
               compile_s=sig(res["compile_s"]),
               break_even_forwards=int(res["compile_s"] * 1000 / gain) + 1 if gain > 0 else None)
    if res["compile_s"] > timeout:
        row["error"] = f"compile took {res['compile_s']:.0f} s > {timeout:.0f} s"
    return [row]


LEVERS: dict[str, Callable[[Bench], list[Row]]] = {
    "frozen": frozen, "grad_mode": grad_mode, "batch_size": batch_size, "threads": torch_threads,
    "omp_wait_policy": omp_wait_policy, "channels_last": channels_last, "png": png, "gc_freeze": gc_freeze,
    "bf16": bf16, "memory": memory, "compile": compile_forward,
}
LEVER_GROUPS = tuple(LEVERS)


def run_levers(args: argparse.Namespace, torch: Any, log: Log) -> dict[str, Any]:
    """The levers of ``args.only`` (default: all), each row tagged with its group."""
    from alexnet_viz.analysis import analyze
    from alexnet_viz.images import load_image

    meter = LoadMeter()
    info = machine_info(torch)
    app = page.setup_page(args.image)
    gc.collect()
    gc.freeze()
    bench = Bench(torch=torch, page=app, analysis=analyze(app.loaded, load_image(app.image_path)), runs=args.runs,
                  warmup=args.warmup, image=args.image, served=not args.no_cold_start)
    rows: list[Row] = []
    for name, lever in LEVERS.items():
        if not args.only or name in args.only:
            rows += [{"group": name, **row} for row in lever(bench)]
            log(f"lever: {name} done")
    info.update(meter.summary())
    info["settle_waited_s"] = round(SETTLE.waited, 1)
    return {"machine": info, "levers": rows}
