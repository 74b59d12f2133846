"""The default run on the CPU: the engine, the page's handlers, the tutorial way, the served app."""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks import page, served
from benchmarks.features import feature_rows
from benchmarks.machine import LoadMeter, machine_info
from benchmarks.rows import make_row, ratio_row, sig
from benchmarks.timing import SETTLE, matmul_gflops, measure
from benchmarks.tutorial import Tutorial

Log = Callable[[str], None]


def attribution_steps() -> list[tuple[str, str, dict[str, Any]]]:
    """(key, label, options) for every method at its UI defaults, plus IG at 50 steps."""
    from alexnet_viz.attribution import METHODS

    steps: list[tuple[str, str, dict[str, Any]]] = []
    for name, spec in METHODS.items():
        defaults = ", ".join(f"{o.name}={o.default}" for o in spec.options)
        steps.append((name, f"{spec.title}" + (f" ({defaults})" if defaults else ""), {}))
        if name == "integrated_gradients":
            batch = spec.option("internal_batch_size").default
            # tolerance 0: all 50 steps (the adaptive default stops as soon as the map adds up, at 8 on a model
            # whose biases are zero), so this row stays comparable with its floor and with earlier runs
            steps.append(("integrated_gradients_50", f"{spec.title}, 50 steps (batch {batch})",
                          {"n_steps": 50, "tolerance": 0}))
    return steps


def floor_rate(torch: Any, info: dict[str, Any], log: Log, **kwargs: Any) -> float:
    """The machine's fp32 matmul GFLOP/s, recorded in ``info``."""
    gflops, record = matmul_gflops(torch, **kwargs)
    info["matmul_gflops"] = sig(gflops)
    info["matmul"] = {k: sig(v) if isinstance(v, float) else v for k, v in record.items()}
    log(f"fp32 matmul {record['n']}x{record['n']}: {gflops:.1f} GFLOP/s (median of {record['runs']})")
    return gflops


def run_default(args: argparse.Namespace, torch: Any, log: Log) -> dict[str, Any]:
    from alexnet_viz.analysis import analyze
    from alexnet_viz.images import load_image

    runs, warmup = args.runs, args.warmup
    meter = LoadMeter()
    info = machine_info(torch)
    log(f"machine: {info['cpu_model']}, {info['cores']} cores, torch {torch.__version__}, "
        f"{info['torch_threads']} threads, load average {info['load_average']}")
    gflops = floor_rate(torch, info, log)

    app = page.setup_page(args.image)
    loaded = app.loaded
    gc.collect()
    gc.freeze()  # the imports' objects: later gc.collect() calls only walk what the steps allocate
    rows: list[dict[str, Any]] = []
    x = loaded.preprocess(load_image(app.image_path))

    def forward() -> None:
        with torch.inference_mode():
            loaded.module(x)

    rows.append(make_row("forward", "forward pass, batch 1 (inference_mode)",
                         stat=measure(forward, runs=runs, warmup=warmup, count_flops=True), gflops_per_s=gflops))
    log("forward done")
    rows.append(make_row("decode", f"decode {args.image.name} (load_image)",
                         stat=measure(lambda: load_image(app.image_path), runs=runs, warmup=warmup)))
    pil = load_image(app.image_path)
    rows.append(make_row("analyze", "analyze(): preprocess + forward with capture", gflops_per_s=gflops,
                         stat=measure(lambda: analyze(loaded, pil), runs=runs, warmup=warmup, count_flops=True)))

    parts: dict[str, list[float]] = {}
    view_stat = measure(lambda: page.full_view(app, parts), runs=runs, warmup=warmup, count_flops=True)
    for values in parts.values():  # keep the timed runs only (the warm-ups appended first)
        del values[: len(values) - runs]
    rows.append(make_row("full_view", "full default view", stat=view_stat, gflops_per_s=gflops,
                         note="Handlers.analyze + conv2-conv5 grids + top-5 chart; floor counts forward + saliency"))
    rows.extend(_page_rows(app, runs=runs, warmup=warmup))
    log("full view, layer and channel changes done")
    rows.extend(_attribution_rows(loaded, analyze(loaded, pil), gflops, runs=runs, warmup=warmup, log=log))
    if not args.quick:
        rows.extend(feature_rows(loaded, analyze(loaded, pil), runs=runs, warmup=warmup, log=log))

    tutorial_rows, speedups = run_tutorial(args, torch, app, rows, gflops, log)

    if not args.quick and not args.no_cold_start:
        cs, memory = served.cold_start(runs=args.cold_runs, warmup=1, image=args.image)
        rows.append(make_row("cold_start", "cold start: python app.py to /config 200", stat=cs))
        rows.append(make_row("idle_rss", "RSS of the app when it has started, before any request (VmRSS)", unit="MB",
                             value=memory.get("idle_rss_mb")))
        rows.append(make_row("peak_rss", "peak RSS of the app after a few requests (VmHWM)", unit="MB",
                             value=memory.get("peak_rss_mb"), **{k: v for k, v in memory.items()
                                                                 if k != "peak_rss_mb"}))
        log("cold start done")
    http_rows: list[dict[str, Any]] = []
    if not args.quick and not args.no_http:
        http_rows = served.over_http(runs=runs, warmup=warmup, image=args.image)
        log("over HTTP done")

    info.update(meter.summary())
    info["settle_waited_s"] = round(SETTLE.waited, 1)
    by_key = {r["key"]: r for r in rows}
    return {"machine": info, "rows": rows, "tutorial": tutorial_rows, "speedups": speedups, "http": http_rows,
            "full_view_breakdown": page.breakdown(parts, by_key["decode"]["median"],
                                                  by_key.get("saliency", {}).get("median"))}


def _page_rows(app: page.Page, *, runs: int, warmup: int) -> list[dict[str, Any]]:
    """PNG encoding, layer, channel and opacity changes: what a visitor's clicks cost after the upload."""
    view = page.full_view(app)
    session, shown = view.session, view.shown
    rows = [
        make_row("png_encode", f"PNG files of analyze's {len(shown)} pictures (as_png_files)",
                 stat=measure(lambda: page.encode_png(shown), runs=runs, warmup=warmup),
                 bytes=page.encode_png(shown)),
        make_row("full_view_png", f"full default view + PNG of all {len(view.pictures)} pictures",
                 stat=measure(lambda: page.encode_png(page.full_view(app).pictures), runs=runs, warmup=warmup)),
    ]
    layers = app.loaded.conv_layers
    per_layer = {name: measure(partial(page.layer_change, app, session, name), runs=runs, warmup=warmup)
                 for name in layers}
    slowest = max(per_layer, key=lambda n: per_layer[n].median)
    channels, alphas = itertools.count(), itertools.count()
    rows += [
        make_row("layer_change", f"layer change (show_layer; slowest conv layer: {slowest})",
                 stat=per_layer[slowest], per_layer_ms={n: sig(s.median * 1000) for n, s in per_layer.items()}),
        make_row("layer_change_png", f"layer change + its PNG file ({slowest})",
                 stat=measure(lambda: page.encode_png(page.layer_change(app, session, slowest)), runs=runs,
                              warmup=warmup)),
        make_row("channel_change", "channel change (show_channel, conv1)",
                 stat=measure(lambda: page.channel_change(app, session, "conv1", next(channels) % 64, 0.7),
                              runs=runs, warmup=warmup)),
        make_row("channel_change_png", "channel change + its PNG file",
                 stat=measure(lambda: page.encode_png(page.channel_change(app, session, "conv1",
                                                                          next(channels) % 64, 0.7)),
                              runs=runs, warmup=warmup)),
        make_row("opacity_change", "opacity change (show_channel, new alpha)",
                 stat=measure(lambda: page.channel_change(app, session, "conv1", 5, (next(alphas) % 20) / 20),
                              runs=runs, warmup=warmup)),
        make_row("attribution_opacity_change", "attribution opacity change (restyle)",
                 stat=measure(lambda: page.attribution_restyle(app, session, "saliency", (next(alphas) % 20) / 20),
                              runs=runs, warmup=warmup)),
    ]
    return rows


def _attribution_rows(loaded: Any, analysis: Any, gflops: float, *, runs: int, warmup: int,
                      log: Log) -> list[dict[str, Any]]:
    """Every method at its UI defaults, and integrated gradients at 50 steps with its x-floor row."""
    from alexnet_viz.analysis import explain

    rows = []
    for key, label, options in attribution_steps():
        stat = measure(partial(explain, loaded, analysis, key.removesuffix("_50"), **options), runs=runs,
                       warmup=min(warmup, 1) if key == "occlusion" else warmup, count_flops=True)
        row = make_row(key, label, stat=stat, gflops_per_s=gflops)
        rows.append(row)
        if key == "integrated_gradients_50" and "x_floor" in row:
            rows.append(make_row("integrated_gradients_50_x_floor", "integrated gradients, 50 steps: x floor",
                                 value=row["x_floor"], unit="x"))
        log(f"{key} done")
    return rows


def run_tutorial(args: argparse.Namespace, torch: Any, app: page.Page, rows: list[dict[str, Any]], gflops: float,
                 log: Log) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    tutorial = Tutorial(torch, app.image_path)
    tutorial.warm()
    tutorial.prepare_ig()
    gc.collect()
    parts: dict[str, list[float]] = {}
    view = measure(lambda: tutorial.view(parts), runs=1 if args.quick else args.runs, warmup=0)
    tutorial_rows = [make_row("tutorial_full_view", "tutorial: same view with matplotlib subplots + "
                              "visualize_image_attr", stat=view,
                              parts_ms={k: sig(statistics.median(v) * 1000) for k, v in parts.items()},
                              note="warm-up: one tiny figure of each kind (a full run takes ~10-20 s)")]
    log("tutorial view done")
    ig = measure(tutorial.integrated_gradients, runs=args.runs, warmup=args.warmup, count_flops=True)
    tutorial_rows.append(make_row("tutorial_integrated_gradients", "tutorial: IntegratedGradients, Captum "
                                  "defaults (50 steps, one batch)", stat=ig, gflops_per_s=gflops))
    log("tutorial IG done")
    return tutorial_rows, speedups(rows, tutorial_rows, full_view=True)


def speedups(rows: list[dict[str, Any]], tutorial_rows: list[dict[str, Any]], *,
             full_view: bool) -> list[dict[str, Any]]:
    """The tutorial's medians over ours: the full view (+PNG) and integrated gradients (50 steps, UI defaults)."""
    ours = {r["key"]: r.get("median") for r in rows}
    theirs = {r["key"]: r.get("median") for r in tutorial_rows}
    pairs = [("speedup_integrated_gradients_50", "integrated gradients, 50 steps, vs Captum defaults",
              "integrated_gradients_50", "tutorial_integrated_gradients"),
             ("speedup_integrated_gradients_ui", "integrated gradients at UI defaults vs Captum defaults",
              "integrated_gradients", "tutorial_integrated_gradients")]
    if full_view:
        pairs.insert(0, ("speedup_full_view", "full default view (+PNG) vs the tutorial way", "full_view_png",
                         "tutorial_full_view"))
    return [ratio_row(key, label, ours.get(mine), theirs.get(other), invert=True, ours_ms=ours.get(mine),
                      tutorial_ms=theirs.get(other)) for key, label, mine, other in pairs]
