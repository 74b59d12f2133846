#!/usr/bin/env python
"""How fast alexnet-viz is on this machine, against its targets, the tutorial way and the compute floor.

    python benchmarks/bench.py             # everything, ~3-4 min on 2 cores; writes results/<device>.json
    python benchmarks/bench.py --levers    # the levers (threads, batch sizes, channels-last, ...) only
    python benchmarks/bench.py --quick     # 1 warm-up + 2 runs, no cold start, no levers: a smoke test
    python benchmarks/bench.py --device cuda   # the engine's rows on the GPU; writes results/cuda.json

Every row is the median of ``--runs`` timed runs (``time.perf_counter``) after ``--warmup`` untimed ones;
``gc.collect()`` runs before every timed run (cheap: ``gc.freeze()`` after setup). The first warm-up of a
step that does arithmetic runs under ``torch.utils.flop_counter.FlopCounterMode``: that gives the step's
FLOPs (forward and backward) without an extra run. A step's *floor* is its FLOPs over this machine's
fp32 matmul throughput (the median GFLOP/s of a 2048x2048 ``torch.mm``), i.e. the time it would take if
every FLOP ran at matmul speed; ``x floor`` is measured / floor.

Rows go through the functions the app calls (``alexnet_viz.ui.Handlers``, ``analysis.explain``), on the
seeded untrained torchvision AlexNet (speed does not depend on the weights' values). See
benchmarks/README.md for what each row measures. ``main(argv)`` is the entry point (``alexnet-viz bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import io
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_IMAGE = ROOT / "assets" / "cat.jpg"
SCHEMA = 1
ARCH = "torchvision"

# key -> (target, unit, "max" (measured <= target) | "min" (measured >= target))
TARGETS: dict[str, tuple[float, str, str]] = {
    "full_view": (150.0, "ms", "max"),
    "layer_change": (30.0, "ms", "max"),
    "channel_change": (30.0, "ms", "max"),
    "opacity_change": (30.0, "ms", "max"),
    "attribution_opacity_change": (30.0, "ms", "max"),
    "saliency": (100.0, "ms", "max"),
    "input_x_gradient": (100.0, "ms", "max"),
    "guided_backprop": (100.0, "ms", "max"),
    "deconvolution": (100.0, "ms", "max"),
    "gradcam": (100.0, "ms", "max"),
    "integrated_gradients_50": (800.0, "ms", "max"),
    "integrated_gradients_50_x_floor": (1.3, "x", "max"),
    "smoothgrad": (800.0, "ms", "max"),
    "occlusion": (3000.0, "ms", "max"),
    "cold_start": (8000.0, "ms", "max"),
    "peak_rss": (1200.0, "MB", "max"),
    "speedup_full_view": (10.0, "x", "min"),
}


# ----------------------------------------------------------------------------------------------------------
# timing


@dataclass
class Stat:
    """Timed runs of one step: wall and process-CPU seconds per run, FLOPs of one run."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    flops: int | None = None
    load: float = 0.0  # 1-minute load average when the step started
    others: float | None = None  # share of the machine's CPU that other processes used during the timed runs
    waited: float = 0.0  # seconds spent waiting for the machine to settle before the step

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cores_used(self) -> float:
        """Process CPU time over wall time: ~threads when the cores were ours, less when shared."""
        return sum(self.cpu) / max(sum(self.wall), 1e-12)


@dataclass
class Settle:
    """Before a step, wait (at most ``per_step`` s, ``budget`` s in all) while other processes keep more than
    ``threshold`` of the machine's CPU busy. On a shared 2-core machine one busy neighbour makes torch's
    2-thread OpenMP regions several times slower; waiting keeps such bursts out of the medians, and every
    row still records the share the neighbours used while it ran ("others")."""

    per_step: float = 0.0
    budget: float = 0.0
    threshold: float = 0.15
    waited: float = 0.0

    def __call__(self) -> float:
        t0 = time.perf_counter()
        while self.per_step > 0 and self.waited < self.budget:
            meter = BusyMeter()
            time.sleep(0.5)
            others = meter.others()
            self.waited += 0.5
            if others is None or others < self.threshold or time.perf_counter() - t0 >= self.per_step:
                break
        return time.perf_counter() - t0


SETTLE = Settle()


def measure(fn: Callable[[], Any], *, runs: int, warmup: int, count_flops: bool = False) -> Stat:
    """Median-ready timings of ``fn``; the first warm-up counts FLOPs when asked (it is not timed)."""
    gc.collect()
    waited = SETTLE()
    stat = Stat(load=os.getloadavg()[0], waited=waited)
    for i in range(max(warmup, 1 if count_flops else 0)):
        if i == 0 and count_flops:
            stat.flops = count_flops_of(fn)
        else:
            fn()
    busy = BusyMeter()
    for _ in range(runs):
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        stat.wall.append(t1 - t0)
        stat.cpu.append(c1 - c0)
    stat.others = busy.others()
    return stat


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: totals only, no module hooks. The tracker's hooks
    break Captum ("A leaf node was passed to _will_engine_execute_node ... autograd.grad()")."""

    parents: ClassVar[set[str]] = {"Global"}

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``, forward and backward, by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(torch: Any, *, n: int = 2048, runs: int = 10) -> Stat:
    """fp32 ``torch.mm`` of two n x n matrices; the stat's samples are seconds per product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    stat = measure(lambda: torch.mm(a, b), runs=runs, warmup=2)
    stat.flops = 2 * n**3
    return stat


# ----------------------------------------------------------------------------------------------------------
# machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class BusyMeter:
    """The share of all cores that other processes kept busy since this was made (from /proc/stat)."""

    def __init__(self) -> None:
        self.jiffies, self.own = _cpu_jiffies(), _own_cpu_seconds()

    def others(self) -> float | None:
        now = _cpu_jiffies()
        if not self.jiffies or not now or now[1] <= self.jiffies[1]:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy, capacity = (now[0] - self.jiffies[0]) / hz, (now[1] - self.jiffies[1]) / hz
        return min(max((busy - (_own_cpu_seconds() - self.own)) / capacity, 0.0), 1.0)


class LoadMeter:
    """How busy the machine was with work that is not ours while we ran (other agents, other jobs)."""

    def __init__(self) -> None:
        self.start_load = os.getloadavg()
        self.jiffies = _cpu_jiffies()
        self.own = _own_cpu_seconds()
        self.wall = time.perf_counter()

    def summary(self) -> dict[str, Any]:
        end = os.getloadavg()
        out: dict[str, Any] = {
            "load_average_start": [round(v, 2) for v in self.start_load],
            "load_average_end": [round(v, 2) for v in end],
        }
        now = _cpu_jiffies()
        if self.jiffies and now:
            hz = os.sysconf("SC_CLK_TCK")
            busy_all = (now[0] - self.jiffies[0]) / hz
            capacity = (now[1] - self.jiffies[1]) / hz  # cpu-seconds available (all cores)
            ours = _own_cpu_seconds() - self.own
            out["cpu_busy_share"] = round(busy_all / max(capacity, 1e-9), 3)
            out["cpu_share_of_others"] = round(max(busy_all - ours, 0.0) / max(capacity, 1e-9), 3)
        out["wall_s"] = round(time.perf_counter() - self.wall, 1)
        return out


def machine_info(torch: Any) -> dict[str, Any]:
    import captum
    import numpy
    import PIL
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "captum": captum.__version__, "numpy": numpy.__version__,
                "pillow": PIL.__version__}
    with contextlib.suppress(ImportError):
        import gradio

        versions["gradio"] = gradio.__version__
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        mem_gb = round(int(kb.split()[1]) / 1024**2, 1)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "MALLOC_ARENA_MAX")
                if k in os.environ},
        "versions": versions,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


# ----------------------------------------------------------------------------------------------------------
# rows


def _r(value: float | None, digits: int = 3) -> float | None:
    """Round to ``digits`` significant digits (at least 1 decimal below 10): stable, readable JSON."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    places = max(digits - math.floor(math.log10(abs(value))) - 1, 0)
    return round(value, min(places, 6))


def make_row(key: str, label: str, *, stat: Stat | None = None, value: float | None = None, unit: str = "ms",
             gflops_per_s: float | None = None, target_key: str | None = None,
             note: str | None = None, **extra: Any) -> dict[str, Any]:
    """One result row; ``stat`` (timed, reported in ms) or a plain ``value`` in ``unit``."""
    row: dict[str, Any] = {"key": key, "label": label, "unit": unit}
    if stat is not None and stat.wall:
        ms = [s * 1000 for s in stat.wall]
        row.update(median=_r(statistics.median(ms)), min=_r(min(ms)), max=_r(max(ms)), runs=len(ms),
                   samples=[_r(v) for v in ms])
        if stat.cpu:
            row["cores_used"] = _r(stat.cores_used, 2)
        row["load_1m"] = _r(stat.load, 2)
        if stat.others is not None:
            row["others_cpu"] = round(stat.others, 2)
        if stat.waited >= 0.75:  # more than the one 0.5 s look
            row["settle_wait_s"] = round(stat.waited, 1)
        if stat.flops:
            row["gflop"] = _r(stat.flops / 1e9)
            if gflops_per_s:
                floor_ms = stat.flops / (gflops_per_s * 1e9) * 1000
                row["floor_ms"] = _r(floor_ms)
                row["x_floor"] = _r(statistics.median(ms) / floor_ms)
    else:
        row["median"] = _r(value) if value is not None else None
    target = TARGETS.get(target_key or key)
    if target is not None:
        goal, goal_unit, sense = target
        row["target"] = goal
        row["target_op"] = "<=" if sense == "max" else ">="
        row["target_unit"] = goal_unit
        measured = row.get("median")
        row["pass"] = None if measured is None else (measured <= goal if sense == "max" else measured >= goal)
    if note:
        row["note"] = note
    row.update(extra)
    return row


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and unit == "ms" and value >= 1000:
        return f"{value / 1000:.2f} s"
    if isinstance(value, float):
        text = f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
        return f"{text} {unit}".strip()
    return f"{value} {unit}".strip()


def _target_text(row: Mapping[str, Any]) -> str:
    if "target" not in row:
        return ""
    return f"{row['target_op']} {_fmt(float(row['target']), row['target_unit'])}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table (it reads in a terminal too)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = []
    for row in rows:
        unit = row["unit"]
        spread = f"{_fmt(row['min'], unit)} - {_fmt(row['max'], unit)}" if "min" in row else ""
        verdict = {True: "pass", False: "FAIL", None: ""}[row.get("pass")]
        body.append([row["label"], _fmt(row.get("median"), unit), spread, _target_text(row), verdict,
                     _fmt(row.get("gflop")), _fmt(row.get("floor_ms"), "ms") if "floor_ms" in row else "",
                     _fmt(row.get("x_floor"), "x") if "x_floor" in row else "",
                     _fmt(row.get("cores_used")) if "cores_used" in row else "",
                     f"{row['others_cpu']:.0%}" if "others_cpu" in row else ""])
    return table(["step", "median", "min - max", "target", "result", "GFLOP", "floor", "x floor", "cores", "others"],
                 body)


# ----------------------------------------------------------------------------------------------------------
# the app's paths


@dataclass
class App:
    """The model, the handlers and an image in Gradio's upload folder, as the running app has them."""

    torch: Any
    loaded: Any
    handlers: Any
    upload: dict[str, str]  # the FileData dict Gradio hands to Handlers.analyze (preprocess=False)
    image_path: Path


def setup_app(image: Path) -> App:
    import gradio as gr
    import torch

    from alexnet_viz.ui import Handlers, ModelPool

    folder = Path(gr.utils.get_upload_folder()) / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    upload = folder / image.name
    shutil.copyfile(image, upload)
    pool = ModelPool(ARCH, "none", "cpu")
    return App(torch=torch, loaded=pool.default, handlers=Handlers(pool), upload={"path": str(upload)},
               image_path=upload)


def full_view(app: App, parts: dict[str, list[float]] | None = None) -> tuple[Any, list[Any]]:
    """The full default view: Handlers.analyze (decode, preprocess, one forward with capture, saliency, the
    conv1 filters, the current layer's (conv1) grid, the overlays, the strongest-channels strip) plus the
    grids of the other four conv layers and the top-5 chart. Returns (analyze's outputs, every picture)."""
    from PIL import Image

    from alexnet_viz import render

    t0 = time.perf_counter()
    out = app.handlers.analyze(app.upload, ARCH, "cpu", "conv1", False, "viridis", None)
    t1 = time.perf_counter()
    analysis = out[0].analysis
    pictures = [o for o in out if isinstance(o, Image.Image)]
    for name in app.loaded.conv_layers:
        if name != "conv1":  # conv1 is the current layer: analyze drew its grid
            pictures.append(render.feature_grid(analysis.activations[name], cmap="viridis")[0])
    t2 = time.perf_counter()
    pictures.append(render.top_k_chart([p.label for p in analysis.top_k], [p.probability for p in analysis.top_k]))
    t3 = time.perf_counter()
    if parts is not None:
        parts.setdefault("handlers_analyze", []).append(t1 - t0)
        parts.setdefault("other_conv_grids", []).append(t2 - t1)
        parts.setdefault("top5_chart", []).append(t3 - t2)
        for key, value in analysis.timings.items():
            parts.setdefault(f"analysis.{key}", []).append(value)
        status = next((o for o in out if isinstance(o, str) and " ms in all" in o), "")
        found = re.search(r"([\d.]+) ms in all \(forward ([\d.]+) ms, saliency ([\d.]+) ms, drawing ([\d.]+) ms",
                          status)
        if found:
            for key, value in zip(("status.total", "status.forward", "status.saliency", "status.drawing"),
                                  found.groups(), strict=True):
                parts.setdefault(key, []).append(float(value) / 1000)
    return out, pictures


def encode_png(pictures: Sequence[Any], compress_level: int | None = None, *, gradio: bool = False) -> int:
    """PNG-encode pictures as the app sends them (``ui.as_png_files``: level ``ui.PNG_LEVEL``, hashed, written
    once per content into the upload folder), or with Gradio's own encoder (``gradio=True``: what
    ``gr.Image(format="png")`` does to a returned PIL image, Pillow's default level 6), or bare at
    ``compress_level``; returns the bytes written."""
    if gradio:
        from gradio.processing_utils import encode_pil_to_bytes

        return sum(len(encode_pil_to_bytes(picture, "png")) for picture in pictures)
    if compress_level is None:
        import gradio as gr

        from alexnet_viz.ui import _cache_png

        folder = Path(gr.utils.get_upload_folder())
        return sum(Path(_cache_png(picture, folder, "bench")).stat().st_size for picture in pictures)
    total = 0
    for picture in pictures:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=compress_level)
        total += buffer.tell()
    return total


def with_encoderinfo(pictures: Sequence[Any], **info: Any) -> list[Any]:
    """Copies of ``pictures`` that carry ``encoderinfo``: Pillow >= 11.2 lets it override save()'s defaults, so
    Gradio's encoder then writes e.g. compress_level=1 without a change to Gradio."""
    out = []
    for picture in pictures:
        copy = picture.copy()
        copy.encoderinfo = dict(info)
        out.append(copy)
    return out


def breakdown(parts: Mapping[str, list[float]]) -> list[dict[str, Any]]:
    """Where the full default view's time goes, medians in ms, from analyze's status line and timings."""
    med = {k: statistics.median(v) * 1000 for k, v in parts.items() if v}
    if "status.total" not in med:
        return [{"part": "Handlers.analyze", "ms": _r(med.get("handlers_analyze"))}]
    inner = med["status.total"]
    known = med.get("analysis.preprocess", 0) + med["status.forward"] + med["status.saliency"] + med["status.drawing"]
    items = [
        ("decode + intake (load_image, upload check, Analysis bookkeeping)", inner - known),
        ("preprocess (resize, crop, normalise)", med.get("analysis.preprocess")),
        ("forward with capture (hooks on every layer)", med["status.forward"]),
        ("saliency (Captum, forward + backward)", med["status.saliency"]),
        ("drawing analyze's panels (filters, conv1 grid, overlays, strip)", med["status.drawing"]),
        ("after the status line (saliency overlay, the 1000-class dropdown)", med["handlers_analyze"] - inner),
        ("grids of conv2-conv5", med["other_conv_grids"]),
        ("top-5 chart", med["top5_chart"]),
    ]
    total = sum(v for _, v in items if v is not None)
    return [{"part": name, "ms": _r(v), "share": _r(v / total, 2) if v is not None else None} for name, v in items]


# ----------------------------------------------------------------------------------------------------------
# the tutorial way


class Tutorial:
    """What a notebook tutorial does: torchvision's alexnet() as is (parameters trainable, in-place ReLUs),
    forward hooks on the convs, one matplotlib subplot per channel, Captum's visualize_image_attr."""

    CONVS: ClassVar[dict[str, int]] = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}

    def __init__(self, torch: Any, image: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import torchvision
        from torchvision import transforms

        self.torch, self.image = torch, image
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = torchvision.models.alexnet(weights=None).eval()
        self.transform = transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        self.categories = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]

    def warm(self) -> None:
        """Import and initialise matplotlib and Captum's visualisation with one tiny figure each."""
        import matplotlib.pyplot as plt
        import numpy as np
        from captum.attr import visualization as viz

        fig, axes = plt.subplots(2, 2, figsize=(2, 2))
        for ax in axes.flat:
            ax.imshow(np.zeros((4, 4)), cmap="viridis")
            ax.axis("off")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig, _ = viz.visualize_image_attr(np.random.rand(8, 8, 3), np.random.rand(8, 8, 3),
                                              method="blended_heat_map", sign="absolute_value")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)

    def _channels_figure(self, act: Any) -> None:
        import matplotlib.pyplot as plt

        n = act.shape[0]
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols, rows))
        for i, ax in enumerate(axes.flat):
            if i < n:
                ax.imshow(act[i].numpy(), cmap="viridis")
            ax.axis("off")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)

    def view(self, parts: dict[str, list[float]] | None = None) -> None:
        """The same view as ``full_view``: top-5, conv1 filters, the five conv grids, a saliency map."""
        import matplotlib.pyplot as plt
        import numpy as np
        from captum.attr import Saliency
        from captum.attr import visualization as viz
        from PIL import Image

        torch = self.torch
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        image = Image.open(self.image).convert("RGB")
        x = self.transform(image).unsqueeze(0)
        features: dict[str, Any] = {}
        hooks = [self.model.features[i].register_forward_hook(
            lambda _m, _i, out, name=name: features.__setitem__(name, out.detach().clone()))
            for name, i in self.CONVS.items()]
        with torch.no_grad():
            logits = self.model(x)
        for hook in hooks:
            hook.remove()
        probs = torch.softmax(logits[0], dim=0)
        top = probs.topk(5)
        t["forward"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh([self.categories[int(i)] for i in top.indices][::-1], top.values.numpy()[::-1])
        fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
        plt.close(fig)
        weight = self.model.features[0].weight.detach()
        fig, axes = plt.subplots(8, 8, figsize=(8, 8))
        for w, ax in zip(weight, axes.flat, strict=False):
            w = (w - w.min()) / (w.max() - w.min())
            ax.imshow(w.permute(1, 2, 0).numpy())
            ax.axis("off")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
        t["top5_and_filters"] = time.perf_counter() - t0

        for name in self.CONVS:
            t0 = time.perf_counter()
            self._channels_figure(features[name][0])
            t[f"grid_{name}"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        xr = x.clone().requires_grad_(True)
        grads = Saliency(self.model).attribute(xr, target=int(top.indices[0]))
        original = (x[0] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
                    + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)).clamp(0, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plt.show() on the Agg backend
            fig, _ = viz.visualize_image_attr(np.transpose(grads[0].detach().numpy(), (1, 2, 0)),
                                              np.transpose(original.numpy(), (1, 2, 0)),
                                              method="blended_heat_map", sign="absolute_value",
                                              show_colorbar=True, title="Saliency")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
        t["saliency"] = time.perf_counter() - t0
        if parts is not None:
            for key, value in t.items():
                parts.setdefault(key, []).append(value)

    def integrated_gradients(self) -> None:
        """Captum's defaults: n_steps=50, one batch of 50, zero baseline, no convergence delta."""
        from captum.attr import IntegratedGradients

        IntegratedGradients(self.model).attribute(self.x.clone().requires_grad_(True), target=self.target)

    def prepare_ig(self) -> None:
        from PIL import Image

        self.x = self.transform(Image.open(self.image).convert("RGB")).unsqueeze(0)
        with self.torch.no_grad():
            self.target = int(self.model(self.x)[0].argmax())


# ----------------------------------------------------------------------------------------------------------
# cold start and memory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) of a process in kB (``benchmarks/load.py`` reads the server's with it too)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], t0: float, timeout: float = 120.0) -> float:
    """Poll Gradio's /config until it answers 200 (as tests/conftest.py does); seconds since ``t0``."""
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} was not serving after {timeout} s")


@contextlib.contextmanager
def launched_app(tmp: Path, *, port: int | None = None, extra_env: Mapping[str, str] | None = None,
                 timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:
    """``python app.py --weights none --device cpu`` on 127.0.0.1 with its own upload folder (``tmp/uploads``)
    and torch cache, its output in ``tmp/app.log`` (printed if anything fails); yields (url, process, seconds
    until /config answered 200) and stops the app afterwards. ``benchmarks/load.py`` drives it too."""
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "uploads"), "PYTHONUNBUFFERED": "1",
           "TORCH_HOME": str(tmp / "torch"), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           **(extra_env or {})}
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp / "app.log"
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--weights", "none", "--device", "cpu",
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            yield url, proc, wait_until_serving(url, proc, t0, timeout)
        except Exception:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _requests(url: str, image: Path) -> list[str]:
    """A visitor's first minute through gradio_client: predict, analyze, three attributions."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    done = []
    client.predict(handle_file(str(image)), api_name="/predict")
    done.append("/predict")
    client.predict(handle_file(str(image)), ARCH, "cpu", "conv1", False, "viridis", api_name="/analyze")
    done.append("/analyze")
    for method in ("saliency", "gradcam", "integrated_gradients", "smoothgrad"):
        client.predict(handle_file(str(image)), method, "", api_name="/explain")
        done.append(f"/explain {method}")
    return done


def cold_start(*, runs: int, warmup: int, image: Path, extra_env: Mapping[str, str] | None = None,
               measure_memory: bool = True) -> tuple[Stat, dict[str, Any]]:
    """`python app.py --weights none --device cpu --port P` to /config answering 200, ``runs`` times;
    after the last, a few requests, then the app's peak RSS (VmHWM)."""
    stat, memory = Stat(load=os.getloadavg()[0]), {}
    for i in range(warmup + runs):
        with tempfile.TemporaryDirectory(prefix="alexnet-viz-bench-") as tmp, \
                launched_app(Path(tmp), extra_env=extra_env) as (url, proc, seconds):
            if i >= warmup:
                stat.wall.append(seconds)
            if measure_memory and i == warmup + runs - 1:
                memory["idle_rss_mb"] = _r(proc_status(proc.pid).get("VmRSS", 0) * 1024 / 1e6)
                try:
                    memory["requests"] = _requests(url, image)
                except Exception as e:  # gradio_client missing or a request failed: still report
                    memory["requests_error"] = f"{type(e).__name__}: {e}"[:300]
                status = proc_status(proc.pid)
                memory["peak_rss_mb"] = _r(status.get("VmHWM", 0) * 1024 / 1e6)
                memory["rss_mb"] = _r(status.get("VmRSS", 0) * 1024 / 1e6)
        gc.collect()
    return stat, memory


# ----------------------------------------------------------------------------------------------------------
# the default run


def attribution_steps() -> list[tuple[str, str, dict[str, Any]]]:
    """(key, label, options) for every method at its UI defaults, plus IG at 50 steps."""
    from alexnet_viz.attribution import METHODS

    steps = []
    for name, spec in METHODS.items():
        defaults = ", ".join(f"{o.name}={o.default}" for o in spec.options)
        steps.append((name, f"{spec.title}" + (f" ({defaults})" if defaults else ""), {}))
        if name == "integrated_gradients":
            batch = spec.option("internal_batch_size").default
            steps.append(("integrated_gradients_50", f"{spec.title}, 50 steps (batch {batch})", {"n_steps": 50}))
    return steps


def run_default(args: argparse.Namespace, torch: Any, log: Callable[[str], None]) -> dict[str, Any]:
    from alexnet_viz.analysis import analyze, explain
    from alexnet_viz.images import load_image

    runs, warmup = args.runs, args.warmup
    meter = LoadMeter()
    info = machine_info(torch)
    log(f"machine: {info['cpu_model']}, {info['cores']} cores, torch {torch.__version__}, "
        f"{info['torch_threads']} threads, load average {info['load_average']}")

    mm = matmul_gflops(torch)
    gflops = mm.flops / mm.median / 1e9
    info["matmul_gflops"] = _r(gflops)
    info["matmul"] = {"n": 2048, "median_ms": _r(mm.median * 1000), "runs": len(mm.wall),
                      "best_gflops": _r(mm.flops / min(mm.wall) / 1e9)}
    log(f"fp32 matmul 2048x2048: {gflops:.1f} GFLOP/s (median of {len(mm.wall)})")

    app = setup_app(args.image)
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
    view_stat = measure(lambda: full_view(app, parts), runs=runs, warmup=warmup, count_flops=True)
    for values in parts.values():  # keep the timed runs only (the warm-ups appended first)
        del values[: len(values) - runs]
    rows.append(make_row("full_view", "full default view", stat=view_stat, gflops_per_s=gflops,
                         note="Handlers.analyze + conv2-conv5 grids + top-5 chart; floor counts forward + saliency"))
    out, pictures = full_view(app)
    session = out[0]
    shown = [o for o in out if hasattr(o, "save")]  # what analyze puts on the page
    rows.append(make_row("png_encode", f"PNG files of analyze's {len(shown)} pictures (as_png_files)",
                         stat=measure(lambda: encode_png(shown), runs=runs, warmup=warmup),
                         bytes=encode_png(shown)))
    rows.append(make_row("full_view_png", f"full default view + PNG of all {len(pictures)} pictures",
                         stat=measure(lambda: encode_png(full_view(app)[1]), runs=runs, warmup=warmup)))
    log("full view done")

    h = app.handlers
    per_layer = {name: measure(lambda name=name: h.show_layer(session, name, False, "viridis"), runs=runs,
                               warmup=warmup) for name in loaded.conv_layers}
    slowest = max(per_layer, key=lambda n: per_layer[n].median)
    rows.append(make_row("layer_change", f"layer change (show_layer; slowest conv layer: {slowest})",
                         stat=per_layer[slowest],
                         per_layer_ms={n: _r(s.median * 1000) for n, s in per_layer.items()}))
    rows.append(make_row("layer_change_png", f"layer change + its PNG file ({slowest})",
                         stat=measure(lambda: encode_png([o for o in h.show_layer(session, slowest, False, "viridis")
                                                          if hasattr(o, "save")]), runs=runs, warmup=warmup)))
    channels = iter(range(10**6))
    rows.append(make_row("channel_change", "channel change (show_channel, conv1)",
                         stat=measure(lambda: h.show_channel(session, "conv1", next(channels) % 64, 0.7, "viridis"),
                                      runs=runs, warmup=warmup)))
    rows.append(make_row("channel_change_png", "channel change + its PNG file",
                         stat=measure(lambda: encode_png([h.show_channel(session, "conv1", next(channels) % 64, 0.7,
                                                                         "viridis")[0]]), runs=runs, warmup=warmup)))
    alphas = iter(range(10**6))
    rows.append(make_row("opacity_change", "opacity change (show_channel, new alpha)",
                         stat=measure(lambda: h.show_channel(session, "conv1", 5, (next(alphas) % 20) / 20, "viridis"),
                                      runs=runs, warmup=warmup)))
    rows.append(make_row("attribution_opacity_change", "attribution opacity change (restyle)",
                         stat=measure(lambda: h.restyle(session, "saliency", (next(alphas) % 20) / 20, "auto"),
                                      runs=runs, warmup=warmup)))
    log("layer/channel done")

    analysis = analyze(loaded, pil)
    for key, label, options in attribution_steps():
        slow = key in ("occlusion",)
        stat = measure(lambda key=key, options=options: explain(loaded, analysis, key.removesuffix("_50"), **options),
                       runs=runs, warmup=warmup if not slow else min(warmup, 1), count_flops=True)
        row = make_row(key, label, stat=stat, gflops_per_s=gflops)
        if key == "integrated_gradients_50" and "x_floor" in row:
            rows.append(row)
            rows.append(make_row("integrated_gradients_50_x_floor", "integrated gradients, 50 steps: x floor",
                                 value=row["x_floor"], unit="x"))
            continue
        rows.append(row)
        log(f"{key} done")

    tutorial_rows, speedups = run_tutorial(args, torch, app, rows, gflops, log)

    if not args.quick and not args.no_cold_start:
        cs, memory = cold_start(runs=args.cold_runs, warmup=1, image=args.image)
        rows.append(make_row("cold_start", "cold start: python app.py to /config 200", stat=cs))
        rows.append(make_row("peak_rss", "peak RSS of the app after a few requests (VmHWM)", unit="MB",
                             value=memory.get("peak_rss_mb"), **{k: v for k, v in memory.items()
                                                                 if k != "peak_rss_mb"}))
        log("cold start done")

    info.update(meter.summary())
    info["settle_waited_s"] = round(SETTLE.waited, 1)
    return {"machine": info, "rows": rows, "tutorial": tutorial_rows, "speedups": speedups,
            "full_view_breakdown": breakdown(parts)}


def run_tutorial(args: argparse.Namespace, torch: Any, app: App, rows: list[dict[str, Any]], gflops: float,
                 log: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    tutorial = Tutorial(torch, app.image_path)
    tutorial.warm()
    tutorial.prepare_ig()
    gc.collect()
    t_runs = 1 if args.quick else args.runs
    parts: dict[str, list[float]] = {}
    view = measure(lambda: tutorial.view(parts), runs=t_runs, warmup=0)
    tutorial_rows = [make_row("tutorial_full_view", "tutorial: same view with matplotlib subplots + "
                              "visualize_image_attr", stat=view,
                              parts_ms={k: _r(statistics.median(v) * 1000) for k, v in parts.items()},
                              note="warm-up: one tiny figure of each kind (a full run takes ~10-20 s)")]
    log("tutorial view done")
    ig = measure(tutorial.integrated_gradients, runs=args.runs, warmup=args.warmup, count_flops=True)
    tutorial_rows.append(make_row("tutorial_integrated_gradients", "tutorial: IntegratedGradients, Captum "
                                  "defaults (50 steps, one batch)", stat=ig, gflops_per_s=gflops))
    by_key = {r["key"]: r for r in rows}

    def speedup(key: str, label: str, ours_key: str, theirs: Mapping[str, Any]) -> dict[str, Any]:
        ours = by_key.get(ours_key, {}).get("median")
        value = theirs["median"] / ours if ours and theirs.get("median") else None
        return make_row(key, label, value=value, unit="x", ours_ms=ours, tutorial_ms=theirs.get("median"))

    speedups = [
        speedup("speedup_full_view", "full default view (+PNG) vs the tutorial way", "full_view_png",
                tutorial_rows[0]),
        speedup("speedup_integrated_gradients_50", "integrated gradients, 50 steps, vs Captum defaults",
                "integrated_gradients_50", tutorial_rows[1]),
        speedup("speedup_integrated_gradients_ui", "integrated gradients at UI defaults vs Captum defaults",
                "integrated_gradients", tutorial_rows[1]),
    ]
    log("tutorial IG done")
    return tutorial_rows, speedups


# ----------------------------------------------------------------------------------------------------------
# the engine on a GPU (--device cuda)

# Rows of the CPU run that --device cuda does not measure, and why (recorded in the JSON's "skipped").
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
    "levers": "CPU levers (threads, OpenMP, oneDNN channels-last, bf16 on the CPU, PNG, gc); --levers is CPU-only",
}


def _nvidia_driver() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi or /proc/driver/nvidia/version."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    with contextlib.suppress(OSError):
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found.group(1)
    return None


def gpu_info(torch: Any, device: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_gb": round(props.total_memory / 1024**3, 1),
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "driver": _nvidia_driver(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_convolutions": bool(torch.backends.cudnn.allow_tf32),  # torch's default: True
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),  # torch's default: False
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def run_engine(args: argparse.Namespace, torch: Any, device: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The engine's rows on a GPU: forward, analyze, every attribution at its UI defaults, IG 50 steps, and
    Captum's default IG. Every timed call ends with ``torch.cuda.synchronize()``, so the clock stops when the
    GPU is done (and the next run starts on an idle GPU). Rows that need the app are listed in "skipped"."""
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

    def synced(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            fn()
            torch.cuda.synchronize(dev)
        return run

    def timed(fn: Callable[[], Any], *, count_flops: bool = False) -> tuple[Stat, float]:
        """measure() of the synchronised ``fn``, and the peak GPU memory it allocated (MB)."""
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        stat = measure(synced(fn), runs=runs, warmup=warmup, count_flops=count_flops)
        return stat, (torch.cuda.max_memory_allocated(dev) - base) / 1e6

    # The floor: fp32 matmul (TF32 off, torch's default for matmul). cuDNN convolves in TF32 by default, so
    # convolution-heavy steps can come in under this "floor"; a 4096 product (2048 is too small for a GPU).
    n = 4096
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    mm = measure(synced(lambda: torch.mm(a, b)), runs=10, warmup=3)
    gflops = 2 * n**3 / mm.median / 1e9
    info["matmul_gflops"] = _r(gflops)
    info["matmul"] = {"n": n, "dtype": "float32 (TF32 off)", "median_ms": _r(mm.median * 1000), "runs": len(mm.wall),
                      "best_gflops": _r(2 * n**3 / min(mm.wall) / 1e9)}
    log(f"fp32 matmul {n}x{n} on {dev}: {gflops:.0f} GFLOP/s (median of {len(mm.wall)})")

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
        rows.append(make_row(key, label, stat=stat, gflops_per_s=gflops, gpu_peak_mb=_r(peak)))
    log("forward done")
    rows.append(make_row("decode", f"decode {args.image.name} (load_image, on the CPU)",
                         stat=measure(lambda: load_image(args.image), runs=runs, warmup=warmup)))
    stat, peak = timed(lambda: analyze(loaded, pil), count_flops=True)
    rows.append(make_row("analyze", "analyze(): preprocess + forward with capture (layers copied to the CPU)",
                         stat=stat, gflops_per_s=gflops, gpu_peak_mb=_r(peak)))
    log("analyze done")

    analysis = analyze(loaded, pil)
    for key, label, options in attribution_steps():
        stat, peak = timed(lambda key=key, options=options: explain(loaded, analysis, key.removesuffix("_50"),
                                                                    **options), count_flops=True)
        row = make_row(key, label, stat=stat, gflops_per_s=gflops, gpu_peak_mb=_r(peak))
        rows.append(row)
        if key == "integrated_gradients_50" and "x_floor" in row:  # the 1.3 x target is the CPU's (compute-bound)
            rows.append(make_row("integrated_gradients_50_x_floor", "integrated gradients, 50 steps: x floor",
                                 value=row["x_floor"], unit="x", target_key="-",
                                 note="no target on a GPU: batch-16 steps are bound by kernel launches, not FLOPs"))
        log(f"{key} done")

    # Captum's defaults the tutorial way (torchvision's alexnet as is, 50 steps in one batch), on the GPU
    from captum.attr import IntegratedGradients

    tutorial = Tutorial(torch, args.image)
    tutorial.prepare_ig()
    tutorial.model.to(dev)
    tutorial.x = tutorial.x.to(dev)
    stat, peak = timed(tutorial.integrated_gradients, count_flops=True)
    tutorial_rows = [make_row("tutorial_integrated_gradients", "tutorial: IntegratedGradients, Captum defaults "
                              "(50 steps, one batch)", stat=stat, gflops_per_s=gflops, gpu_peak_mb=_r(peak))]
    ours50 = lambda: IntegratedGradients(loaded.module).attribute(  # noqa: E731
        x.detach().clone().requires_grad_(True), baselines=torch.zeros_like(x), target=analysis.top1.index, n_steps=50)
    stat, peak = timed(ours50, count_flops=True)
    tutorial_rows.append(make_row("integrated_gradients_50_one_batch", "our model, IntegratedGradients 50 steps in one "
                                  "batch (frozen parameters)", stat=stat, gflops_per_s=gflops, gpu_peak_mb=_r(peak)))
    by_key = {r["key"]: r for r in rows}

    def speedup(key: str, label: str, ours_key: str) -> dict[str, Any]:
        ours, theirs = by_key[ours_key].get("median"), tutorial_rows[0].get("median")
        value = theirs / ours if ours and theirs else None
        return make_row(key, label, value=value, unit="x", ours_ms=ours, tutorial_ms=theirs)

    speedups = [
        speedup("speedup_integrated_gradients_50", "integrated gradients, 50 steps, vs Captum defaults",
                "integrated_gradients_50"),
        speedup("speedup_integrated_gradients_ui", "integrated gradients at UI defaults vs Captum defaults",
                "integrated_gradients"),
    ]
    log("tutorial IG done")

    info.update(meter.summary())
    info["settle_waited_s"] = round(SETTLE.waited, 1)
    skipped = [{"key": key, "reason": reason} for key, reason in GPU_SKIPPED.items()]
    return {"machine": info, "rows": rows, "tutorial": tutorial_rows, "speedups": speedups, "skipped": skipped}


def report_engine(result: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    mach, gpu = result["machine"], result["machine"]["gpu"]
    print(f"\n# alexnet-viz benchmark on {settings['device']} ({settings['mode']}: median of {settings['runs']} runs "
          f"after {settings['warmup']} warm-up)\n")
    print(f"{mach['date']} · {gpu['name']} · driver {gpu['driver']} · CUDA {gpu['cuda_runtime']} · cuDNN "
          f"{gpu['cudnn']} · torch {mach['versions']['torch']} · TF32 convolutions {gpu['tf32_convolutions']} · "
          f"fp32 matmul {mach['matmul_gflops']} GFLOP/s · host {mach['cpu_model']}, {mach['cores']} cores\n")
    print(results_table([*result["rows"], *result["tutorial"], *result["speedups"]]))
    print("\nNot measured on the GPU:\n")
    reasons: dict[str, list[str]] = {}
    for skip in result["skipped"]:
        reasons.setdefault(skip["reason"], []).append(skip["key"])
    for reason, keys in reasons.items():
        print(f"- {', '.join(keys)}: {reason}")
    targets = [r for r in [*result["rows"], *result["speedups"]] if "pass" in r]
    passed = sum(bool(r["pass"]) for r in targets)
    print(f"\n{passed} of {len(targets)} targets met (the targets are the CPU's).")


# ----------------------------------------------------------------------------------------------------------
# levers


@contextlib.contextmanager
def threads(torch: Any, n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """One other process spinning on one core: another visitor's request, another job on a shared box."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


PROBE = r"""
import json, statistics, sys, time, torch
from alexnet_viz import analyze, explain, load_model
what, runs = sys.argv[1], int(sys.argv[2])
loaded = load_model("torchvision", "none", "cpu")
x = torch.randn(1, 3, 224, 224)
def med(f, n=runs):
    for _ in range(2): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
out = {}
if what == "compile":
    with torch.inference_mode():
        out["eager_ms"] = med(lambda: loaded.module(x))
        t0 = time.perf_counter()
        compiled = torch.compile(loaded.module)
        compiled(x)
        out["compile_s"] = time.perf_counter() - t0
        out["compiled_ms"] = med(lambda: compiled(x))
else:  # forward batch 1 and 16, and integrated gradients at UI defaults, with 1 and 2 threads
    analysis = analyze(loaded, "assets/cat.jpg")
    xb = torch.randn(16, 3, 224, 224)
    for n in (1, 2):
        torch.set_num_threads(n)
        with torch.inference_mode():
            out[f"{n} threads, forward_ms"] = med(lambda: loaded.module(x))
            out[f"{n} threads, forward batch 16_ms"] = med(lambda: loaded.module(xb), max(3, runs - 2))
        out[f"{n} threads, IG (UI defaults)_ms"] = med(lambda: explain(loaded, analysis, "integrated_gradients"),
                                                       max(3, runs - 2))
print("RESULT " + json.dumps(out))
"""


def probe(what: str, runs: int, env: Mapping[str, str] | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Run PROBE in a child process (fresh OpenMP settings; a hang or crash costs only the timeout)."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, what, str(runs)], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    found = re.search(r"^RESULT (.*)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300], "wall_s": _r(time.perf_counter() - t0)}
    return dict(json.loads(found.group(1)))


def compile_lever(runs: int, timeout: float = 60.0) -> dict[str, Any]:
    """torch.compile of the forward, in a child process so that a hang or a crash costs only the timeout."""
    res = probe("compile", runs, timeout=timeout + 60)
    if "error" in res:
        return {"ok": False, **res}
    gain = res["eager_ms"] - res["compiled_ms"]
    out = {"ok": res["compile_s"] <= timeout, "eager_ms": _r(res["eager_ms"]), "compiled_ms": _r(res["compiled_ms"]),
           "compile_s": _r(res["compile_s"]),
           "break_even_forwards": int(res["compile_s"] * 1000 / gain) + 1 if gain > 0 else None}
    if res["compile_s"] > timeout:
        out["error"] = f"compile took {res['compile_s']:.0f} s > {timeout:.0f} s"
    return out


def interleaved(variants: Mapping[str, Callable[[], Any]], *, runs: int, warmup: int) -> dict[str, Stat]:
    """Time several variants round-robin (the order rotates each round), so that a change in the machine's
    load while they run hits them all alike instead of whichever happened to run then."""
    waited = SETTLE()
    stats = {name: Stat(load=os.getloadavg()[0], waited=waited) for name in variants}
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names = list(variants)
    busy = BusyMeter()
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            variants[name]()
            t1, c1 = time.perf_counter(), time.process_time()
            stats[name].wall.append(t1 - t0)
            stats[name].cpu.append(c1 - c0)
    others = busy.others()
    for stat in stats.values():
        stat.others = others
    return stats


NO_TRITON = """import sys
from importlib.abc import MetaPathFinder


class _NoTriton(MetaPathFinder):  # as if triton were not installed (CPU-only torch wheels do not have it)
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTriton())
"""

LEVER_GROUPS = ("frozen", "grad_mode", "batch_size", "threads", "omp_wait_policy", "channels_last", "png", "gc_freeze",
                "bf16", "memory", "compile")


class _Levers(list):  # type: ignore[type-arg]
    """The levers' rows, each tagged with the group (``--only`` name) it was measured in."""

    group = ""

    def append(self, item: dict[str, Any]) -> None:
        super().append({"group": self.group, **item})


def run_levers(args: argparse.Namespace, torch: Any, log: Callable[[str], None]) -> dict[str, Any]:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    from alexnet_viz.analysis import analyze, explain
    from alexnet_viz.images import load_image
    from alexnet_viz.model import load_model

    runs, warmup = args.runs, args.warmup
    slow_runs = max(3, runs - 2)
    meter = LoadMeter()
    info = machine_info(torch)
    app = setup_app(args.image)
    loaded = app.loaded
    gc.collect()
    gc.freeze()
    analysis = analyze(loaded, load_image(app.image_path))
    x = analysis.input
    target = analysis.top1.index
    levers = _Levers()
    default_threads = torch.get_num_threads()

    def want(name: str) -> bool:
        levers.group = name  # every entry appended from here on is tagged with it
        return not args.only or name in args.only

    def group(lever: str, variants: Mapping[str, Callable[[], Any]], current: str | None, *, n: int | None = None,
              extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        stats = interleaved(variants, runs=n or runs, warmup=warmup)
        for name, stat in stats.items():
            levers.append({"lever": lever, "variant": name, "median_ms": _r(stat.median * 1000),
                           "min_ms": _r(min(stat.wall) * 1000), "runs": len(stat.wall), "current": name == current,
                           "cores_used": _r(stat.cores_used, 2), "others_cpu": _r(stat.others, 2),
                           **(extra or {}).get(name, {})})

    def inference(fn: Callable[[], Any], mode: Any = None) -> Callable[[], None]:
        def run() -> None:
            with (mode or torch.inference_mode)():
                fn()
        return run

    forward = inference(lambda: loaded.module(x))

    # 1. frozen parameters (load_model freezes them) vs trainable
    if want("frozen"):
        thawed = load_model(ARCH, "none", "cpu")
        thawed.module.requires_grad_(True)
        group("parameters frozen: saliency", {"frozen": lambda: explain(loaded, analysis, "saliency"),
                                              "trainable": lambda: explain(thawed, analysis, "saliency")}, "frozen")
        group("parameters frozen: IG (UI defaults)",
              {"frozen": lambda: explain(loaded, analysis, "integrated_gradients"),
               "trainable": lambda: explain(thawed, analysis, "integrated_gradients")}, "frozen", n=slow_runs)
        log("lever: frozen done")

    # 2. grad mode for the pure forward (analyze uses inference_mode)
    if want("grad_mode"):
        group("forward: grad mode", {"inference_mode": forward,
                                     "no_grad": inference(lambda: loaded.module(x), torch.no_grad),
                                     "grad enabled": inference(lambda: loaded.module(x), contextlib.nullcontext)},
              "inference_mode")
        log("lever: grad mode done")

    # 3. IG / SmoothGrad internal batch size
    if want("batch_size"):
        for steps, batches in ((32, (8, 16, 32)), (50, (4, 8, 16, 32, 50))):
            group(f"IG {steps} steps: internal_batch_size",
                  {str(b): (lambda s=steps, b=b: explain(loaded, analysis, "integrated_gradients", n_steps=s,
                                                         internal_batch_size=b)) for b in batches}, "16", n=slow_runs)
        group("SmoothGrad 16 samples: nt_samples_batch_size",
              {str(b): (lambda b=b: explain(loaded, analysis, "smoothgrad", nt_samples_batch_size=b))
               for b in (4, 8, 16)}, "16", n=slow_runs)
        log("lever: batch sizes done")

    # 4. torch threads, on the machine as it is and with one more core busy
    if want("threads"):

        def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> None:
                with threads(torch, n):
                    fn()
            return run

        for contended in (False, True):
            where = "one core busy" if contended else "machine as is"
            with busy_core() if contended else contextlib.nullcontext():
                for what, fn, n in (("forward", forward, runs), ("full default view", lambda: full_view(app), runs),
                                    ("IG (UI defaults)", lambda: explain(loaded, analysis, "integrated_gradients"), 3)):
                    group(f"torch threads, {what} ({where})", {f"{k} threads": with_threads(k, fn) for k in (1, 2)},
                          f"{default_threads} threads", n=n)
        log("lever: threads done")

    # 5. OpenMP's wait policy: read once when torch starts, so measured in child processes
    if want("omp_wait_policy"):
        for contended in (False, True):
            where = "one core busy" if contended else "machine as is"
            for policy in ("", "PASSIVE"):
                with busy_core() if contended else contextlib.nullcontext():
                    SETTLE()
                    busy = BusyMeter()
                    res = probe("omp", runs, {"OMP_WAIT_POLICY": policy} if policy else {}, timeout=300)
                    others = busy.others()
                for label, value in res.items():
                    if label.endswith("_ms"):
                        levers.append({"lever": f"OMP_WAIT_POLICY ({where}): {label.split(', ')[1][:-3]}",
                                       "variant": f"{policy or 'unset'}, {label.split(', ')[0]}",
                                       "median_ms": _r(value), "current": not policy and label.startswith(
                                           f"{default_threads} "), "others_cpu": _r(others, 2)})
                if "error" in res:
                    levers.append({"lever": f"OMP_WAIT_POLICY ({where})", "variant": policy or "unset",
                                   "error": res["error"]})
        log("lever: OpenMP wait policy done")

    # 6. channels-last memory format (attribution.py feeds batched methods NHWC on the CPU)
    if want("channels_last"):
        xc = x.contiguous(memory_format=torch.channels_last)
        group("channels-last: forward", {"NCHW input": forward, "NHWC input": inference(lambda: loaded.module(xc))},
              "NCHW input")
        nhwc = lambda t: loaded.module(t.contiguous(memory_format=torch.channels_last))  # noqa: E731
        base = torch.zeros_like(x)

        def ig(model: Callable[[Any], Any]) -> Callable[[], Any]:
            return lambda: IntegratedGradients(model).attribute(x.clone().requires_grad_(True), baselines=base,
                                                                target=target, n_steps=32, internal_batch_size=16)

        def sg(model: Callable[[Any], Any]) -> Callable[[], Any]:
            return lambda: NoiseTunnel(Saliency(model)).attribute(x.clone().requires_grad_(True), nt_type="smoothgrad",
                                                                  nt_samples=16, nt_samples_batch_size=16, stdevs=0.5,
                                                                  target=target)

        group("channels-last: IG 32 steps, batch 16", {"NCHW batches": ig(loaded.module), "NHWC batches": ig(nhwc)},
              "NHWC batches", n=slow_runs)
        group("channels-last: SmoothGrad 16, batch 16", {"NCHW batches": sg(loaded.module), "NHWC batches": sg(nhwc)},
              "NHWC batches", n=slow_runs)
        log("lever: channels-last done")

    # 7. PNG compress level of what the page shows after analyze (Gradio saves format="png" at level 6)
    if want("png"):
        out, _ = full_view(app)
        shown = [o for o in out if hasattr(o, "save")]
        levels = (0, 1, 3, 6, 9)
        fast = with_encoderinfo(shown, compress_level=1)
        variants = {str(lv): (lambda lv=lv: encode_png(shown, lv)) for lv in levels}
        variants["Gradio's encoder, as is"] = lambda: encode_png(shown, gradio=True)
        variants["Gradio's encoder, image.encoderinfo level 1"] = lambda: encode_png(fast, gradio=True)
        variants["the app's PNG files (ui.as_png_files)"] = lambda: encode_png(shown)
        sizes = {str(lv): {"bytes": encode_png(shown, lv)} for lv in levels}
        sizes["Gradio's encoder, as is"] = {"bytes": encode_png(shown, gradio=True)}
        sizes["Gradio's encoder, image.encoderinfo level 1"] = {"bytes": encode_png(fast, gradio=True)}
        sizes["the app's PNG files (ui.as_png_files)"] = {"bytes": encode_png(shown)}
        group(f"PNG compress_level ({len(shown)} pictures)", variants, "the app's PNG files (ui.as_png_files)",
              extra=sizes)
        log("lever: png done")

    # 8. a full gc pass with and without gc.freeze() after start (a gen-2 collection pauses a request)
    if want("gc_freeze"):
        gc.unfreeze()
        pause = measure(gc.collect, runs=3, warmup=0)
        gc.freeze()
        frozen = measure(gc.collect, runs=3, warmup=0)
        for name, stat in (("no freeze", pause), ("gc.freeze() after start", frozen)):
            levers.append({"lever": "gen-2 gc.collect() pause", "variant": name, "median_ms": _r(stat.median * 1000),
                           "runs": len(stat.wall), "current": name == "no freeze"})

    # 9. bfloat16 autocast (AMD Zen 4 and recent Intel CPUs have AVX512-BF16): less exact, maybe faster
    if want("bf16"):
        def bf16(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    fn()
            return run

        ig50 = lambda: explain(loaded, analysis, "integrated_gradients", n_steps=50)  # noqa: E731
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = explain(loaded, analysis, "integrated_gradients", n_steps=50)
        full = explain(loaded, analysis, "integrated_gradients", n_steps=50)
        error = _r(float((low.heatmap - full.heatmap).norm() / full.heatmap.norm()), 2)
        group("bf16 autocast: forward", {"fp32": forward, "bf16": bf16(forward)}, "fp32")
        group("bf16 autocast: IG 50 steps", {"fp32": ig50, "bf16": bf16(ig50)}, "fp32", n=slow_runs,
              extra={"bf16": {"heatmap_rel_error": error}})
        log("lever: bf16 done")

    # 10. the app's memory: glibc's malloc arenas (one per thread by default) vs MALLOC_ARENA_MAX=2
    #     and without triton (torchvision's import pulls in torch._dynamo, which maps the 70 MB libtriton that
    #     only CUDA wheels of torch bring; a CPU-only wheel has none): the app's peak after a few requests
    if want("memory") and not args.no_cold_start:
        with tempfile.TemporaryDirectory(prefix="alexnet-viz-bench-") as site:
            (Path(site) / "sitecustomize.py").write_text(NO_TRITON, encoding="utf-8")
            no_triton = {"PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}
            arenas = {"MALLOC_ARENA_MAX": "2"}
            for variant, env in (("as is", {}), ("MALLOC_ARENA_MAX=2", arenas), ("triton not importable", no_triton),
                                 ("triton not importable + MALLOC_ARENA_MAX=2", {**no_triton, **arenas})):
                stat, memory = cold_start(runs=1, warmup=0, image=args.image, extra_env=env)
                levers.append({"lever": "app peak RSS (VmHWM)", "variant": variant, "current": not env,
                               "cold_start_ms": _r(stat.median * 1000), **memory})
        log("lever: memory done")

    # 11. torch.compile on the forward
    if want("compile"):
        compiled = compile_lever(runs)
        levers.append({"lever": "torch.compile (forward)", "variant": "torch.compile(module)", **compiled})
        log("lever: compile done")

    info.update(meter.summary())
    info["settle_waited_s"] = round(SETTLE.waited, 1)
    return {"machine": info, "levers": list(levers)}


def levers_table(levers: Sequence[Mapping[str, Any]]) -> str:
    current = {lv["lever"]: lv["median_ms"] for lv in levers if lv.get("current") and lv.get("median_ms")}
    body = []
    for lv in levers:
        star = " *" if lv.get("current") else ""
        if "median_ms" in lv:
            extra = f"{lv['bytes']:,} B" if "bytes" in lv else ""
            if "heatmap_rel_error" in lv:
                extra = f"heatmap rel. error {lv['heatmap_rel_error']}"
            base = current.get(lv["lever"])
            ratio = f"{lv['median_ms'] / base:.2f}" if base and lv["median_ms"] is not None else ""
            others = f"{lv['others_cpu']:.0%}" if lv.get("others_cpu") is not None else ""
            body.append([lv["lever"], lv["variant"] + star, _fmt(lv["median_ms"], "ms"), ratio,
                         _fmt(lv.get("cores_used")), others, extra])
        elif "peak_rss_mb" in lv:
            body.append([lv["lever"], lv["variant"] + star, f"{lv['peak_rss_mb']} MB peak", "", "", "",
                         f"idle {lv.get('idle_rss_mb')} MB, after requests {lv.get('rss_mb')} MB"])
        else:
            text = (f"eager {lv.get('eager_ms')} ms, compiled {lv.get('compiled_ms')} ms, compile "
                    f"{lv.get('compile_s')} s, break-even {lv.get('break_even_forwards')} forwards")
            body.append([lv["lever"], lv["variant"], text if "eager_ms" in lv else lv.get("error", ""), "", "", "",
                         ""])
    return table(["lever", "variant (* = current)", "median", "x current", "cores", "others", "notes"], body)


# ----------------------------------------------------------------------------------------------------------
# entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alexnet-viz bench", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 warm-up + 2 runs; no cold start, no levers (smoke test)")
    mode.add_argument("--levers", action="store_true", help="measure the levers only (updates the JSON's 'levers')")
    parser.add_argument("--only", action="append", choices=LEVER_GROUPS, default=None, metavar="LEVER",
                        help=f"with --levers: measure only these (repeatable; one of {', '.join(LEVER_GROUPS)}); "
                             "the others' results in the JSON are kept")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (default): every row; cuda: the engine's rows (forward, analyze, attributions) "
                             "on the GPU, synchronised, to results/cuda.json; the app's rows are skipped")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per step (default 5, cuda 10; quick: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1, cuda 3)")
    parser.add_argument("--cold-runs", type=int, default=5, help="timed cold starts (after one untimed)")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold start and memory rows")
    parser.add_argument("--settle", type=float, default=None,
                        help="before each step wait up to this many seconds while other processes use more than 15%% "
                             "of the CPU (default 10; quick: 0)")
    parser.add_argument("--settle-budget", type=float, default=45.0, help="most seconds to wait in all (default 45)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image to analyse (default assets/cat.jpg)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write (default benchmarks/results/cpu.json; --quick writes only with --out)")
    args = parser.parse_args(argv)
    gpu = args.device != "cpu"
    args.runs = args.runs if args.runs is not None else (2 if args.quick else (10 if gpu else 5))
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu and not args.quick else 1)
    if gpu and args.levers:
        parser.error("--levers measures the CPU only; drop --device")
    args.image = args.image.resolve()
    args.settle = args.settle if args.settle is not None else (0.0 if args.quick else 10.0)
    SETTLE.per_step, SETTLE.budget, SETTLE.waited = args.settle, args.settle_budget, 0.0
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    saved_env = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE",
                                                "HF_HUB_DISABLE_TELEMETRY", "MPLBACKEND")}
    tmp = tempfile.mkdtemp(prefix="alexnet-viz-bench-")
    os.environ.update(GRADIO_TEMP_DIR=tmp, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
                      HF_HUB_DISABLE_TELEMETRY="1", MPLBACKEND="Agg")
    started = time.perf_counter()
    gc_was_frozen = gc.get_freeze_count()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        import torch

        # The CPU path is the device a free Space and a lecture laptop have; --device cuda measures the engine only.
        device = args.device
        if device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA GPU here")
        out_path = args.out or (None if args.quick else RESULTS_DIR / f"{device}.json")
        previous: dict[str, Any] = {}
        if out_path is not None and out_path.exists():
            with contextlib.suppress(OSError, ValueError):
                previous = json.loads(out_path.read_text(encoding="utf-8"))
        mode_name = "levers" if args.levers else ("quick" if args.quick else "default")
        settings = {"mode": mode_name, "runs": args.runs, "warmup": args.warmup, "settle_s": args.settle,
                    "settle_budget_s": args.settle_budget, "image": _rel(args.image),
                    "arch": ARCH, "weights": "none (seeded, untrained)", "device": device}
        if args.levers:
            result = run_levers(args, torch, log)
            print("\n## Levers\n")
            print(levers_table(result["levers"]))
            kept = []
            if args.only and "levers" in previous:  # keep the groups not measured now, with when they were
                old = previous["levers"]
                kept = [{**lv, "measured_at": lv.get("measured_at", old.get("machine", {}).get("date"))}
                        for lv in old.get("results", []) if lv.get("group") not in args.only]
            fresh = [{**lv, "measured_at": result["machine"]["date"]} for lv in result["levers"]]
            order = {g: i for i, g in enumerate(LEVER_GROUPS)}
            merged = sorted([*kept, *fresh], key=lambda lv: order.get(lv.get("group", ""), len(order)))
            data = {**{k: v for k, v in previous.items() if k != "levers"},
                    "levers": {"settings": settings, "machine": result["machine"], "results": merged}}
            data.setdefault("schema", SCHEMA)
        else:
            if device == "cpu":
                result = run_default(args, torch, log)
                report(result, settings)
            else:
                result = run_engine(args, torch, device, log)
                report_engine(result, settings)
            data = {"schema": SCHEMA, "settings": settings, **result}
            if "levers" in previous:
                data["levers"] = previous["levers"]
        elapsed = time.perf_counter() - started
        log(f"finished in {elapsed:.0f} s")
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"\nwrote {_rel(out_path)}")
        return 0
    finally:
        if gc.get_freeze_count() and not gc_was_frozen:
            gc.unfreeze()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def report(result: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    mach = result["machine"]
    print(f"\n# alexnet-viz benchmark ({settings['mode']}: median of {settings['runs']} runs after "
          f"{settings['warmup']} warm-up)\n")
    print(f"{mach['date']} · {mach['cpu_model']} · {mach['cores']} cores · torch {mach['versions']['torch']} · "
          f"{mach['torch_threads']} threads · fp32 matmul {mach['matmul_gflops']} GFLOP/s · load average "
          f"{' '.join(map(str, mach['load_average_start']))} -> {' '.join(map(str, mach['load_average_end']))}"
          f" · other processes used {mach.get('cpu_share_of_others', 0):.0%} of the CPU\n")
    print(results_table([*result["rows"], *result["tutorial"], *result["speedups"]]))
    print("\n## Where the full default view's time goes (medians)\n")
    print(table(["part", "ms", "share"], [[b["part"], _fmt(b.get("ms")), f"{b['share']:.0%}" if b.get("share") else ""]
                                        for b in result["full_view_breakdown"]]))
    targets = [r for r in [*result["rows"], *result["speedups"]] if "pass" in r]
    passed = sum(bool(r["pass"]) for r in targets)
    print(f"\n{passed} of {len(targets)} targets met.")


if __name__ == "__main__":
    raise SystemExit(main())
