"""The engine's rows on a GPU (``--device cuda``): forward, analyze, every attribution, Captum's default IG.

Every timed call ends with ``torch.cuda.synchronize()``, so the clock stops when the GPU is done (and the next
run starts on an idle GPU). Rows that need the app or the CPU are listed in the result's "skipped".
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.cpu_run import Log, attribution_steps, floor_rate, speedups
from benchmarks.machine import LoadMeter, gpu_info, machine_info
from benchmarks.page import ARCH
from benchmarks.rows import make_row, sig
from benchmarks.timing import SETTLE, Stat, measure
from benchmarks.tutorial import Tutorial

_THROUGH_THE_APP = ("goes through alexnet_viz.ui.Handlers, which imports gradio (not needed to measure the engine); "
                    "its time is the CPU's drawing and PNG encoding on any device")
GPU_SKIPPED: dict[str, str] = {
    **{key: _THROUGH_THE_APP for key in ("full_view", "png_encode", "full_view_png", "layer_change", "layer_change_png",
                                         "channel_change", "channel_change_png", "opacity_change",
                                         "attribution_opacity_change")},
    "tutorial_full_view": "matplotlib drawing on the CPU; it is compared with full_view, which needs the app",
    "speedup_full_view": "needs full_view (the app) and the tutorial's matplotlib view",
    "cold_start": "starts app.py (gradio) and measures its start-up on the CPU side",
    "peak_rss": "the app's process memory (gradio + torch) on the CPU side",
    "http": "the served apps (ours and the plain one) run on the CPU",
    "levers": "CPU levers (threads, OpenMP, oneDNN channels-last, bf16 on the CPU, PNG, gc); --levers is CPU-only",
}


def run_engine(args: argparse.Namespace, torch: Any, device: str, log: Log) -> dict[str, Any]:
    from captum.attr import IntegratedGradients

    from alexnet_viz.analysis import analyze, explain
    from alexnet_viz.images import load_image
    from alexnet_viz.model import load_model

    runs, warmup = args.runs, args.warmup
    dev = torch.device(device)
    meter = LoadMeter()
    info = machine_info(torch)
    info["gpu"] = gpu_info(torch, dev)
    log(f"machine: {info['gpu']['name']} (driver {info['gpu']['driver']}, CUDA {torch.version.cuda}), "
        f"{info['cpu_model']}, {info['cores']} cores, torch {torch.__version__}")

    def timed(fn: Callable[[], Any], *, count_flops: bool = False) -> tuple[Stat, float | None]:
        """measure() of ``fn`` ending in a synchronize, and the peak GPU memory it allocated (MB)."""
        def synced() -> None:
            fn()
            torch.cuda.synchronize(dev)

        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        stat = measure(synced, runs=runs, warmup=warmup, count_flops=count_flops)
        return stat, sig((torch.cuda.max_memory_allocated(dev) - base) / 1e6)

    # The floor: fp32 matmul (TF32 off, torch's default for matmul). cuDNN convolves in TF32 by default, so
    # convolution-heavy steps can come in under this "floor"; a 4096 product (2048 is too small for a GPU).
    gflops = floor_rate(torch, info, log, n=4096, device=dev)

    loaded = load_model(ARCH, "none", device)
    gc.collect()
    gc.freeze()
    rows: list[dict[str, Any]] = []
    pil = load_image(args.image)
    x = loaded.preprocess(pil)
    xb = x.expand(64, -1, -1, -1).contiguous()

    def forward(batch: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                loaded.module(batch)
        return run

    for key, label, batch in (("forward", "forward pass, batch 1 (inference_mode)", x),
                              ("forward_batch64", "forward pass, batch 64 (inference_mode)", xb)):
        stat, peak = timed(forward(batch), count_flops=True)
        rows.append(make_row(key, label, stat=stat, gflops_per_s=gflops, gpu_peak_mb=peak))
    log("forward done")
    rows.append(make_row("decode", f"decode {args.image.name} (load_image, on the CPU)",
                         stat=measure(lambda: load_image(args.image), runs=runs, warmup=warmup)))
    stat, peak = timed(lambda: analyze(loaded, pil), count_flops=True)
    rows.append(make_row("analyze", "analyze(): preprocess + forward with capture (layers copied to the CPU)",
                         stat=stat, gflops_per_s=gflops, gpu_peak_mb=peak))
    log("analyze done")

    analysis = analyze(loaded, pil)
    for key, label, options in attribution_steps():
        stat, peak = timed(partial(explain, loaded, analysis, key.removesuffix("_50"), **options), count_flops=True)
        row = make_row(key, label, stat=stat, gflops_per_s=gflops, gpu_peak_mb=peak)
        rows.append(row)
        if key == "integrated_gradients_50" and "x_floor" in row:  # the 1.3 x target is the CPU's (compute-bound)
            rows.append(make_row("integrated_gradients_50_x_floor", "integrated gradients, 50 steps: x floor",
                                 value=row["x_floor"], unit="x", target_key="-",
                                 note="no target on a GPU: batch-16 steps are bound by kernel launches, not FLOPs"))
        log(f"{key} done")

    # Captum's defaults the tutorial way (torchvision's alexnet as is, 50 steps in one batch), on the GPU
    tutorial = Tutorial(torch, args.image)
    tutorial.prepare_ig()
    tutorial.model.to(dev)
    tutorial.x = tutorial.x.to(dev)
    stat, peak = timed(tutorial.integrated_gradients, count_flops=True)
    tutorial_rows = [make_row("tutorial_integrated_gradients", "tutorial: IntegratedGradients, Captum defaults "
                              "(50 steps, one batch)", stat=stat, gflops_per_s=gflops, gpu_peak_mb=peak)]

    def ours50() -> None:
        IntegratedGradients(loaded.module).attribute(x.detach().clone().requires_grad_(True),
                                                     baselines=torch.zeros_like(x), target=analysis.top1.index,
                                                     n_steps=50)

    stat, peak = timed(ours50, count_flops=True)
    tutorial_rows.append(make_row("integrated_gradients_50_one_batch", "our model, IntegratedGradients 50 steps in one "
                                  "batch (frozen parameters)", stat=stat, gflops_per_s=gflops, gpu_peak_mb=peak))
    log("tutorial IG done")

    info.update(meter.summary())
    info["settle_waited_s"] = round(SETTLE.waited, 1)
    skipped = [{"key": key, "reason": reason} for key, reason in GPU_SKIPPED.items()]
    return {"machine": info, "rows": rows, "tutorial": tutorial_rows,
            "speedups": speedups(rows, tutorial_rows, full_view=False), "skipped": skipped}
