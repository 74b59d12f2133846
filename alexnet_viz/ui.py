"""The Gradio app: ``build_demo(pool) -> gr.Blocks``. The only module that imports gradio.

Handlers are plain methods of :class:`Handlers` (testable without a browser) and only call the engine:
``analysis.analyze`` once per image, ``analysis.explain`` per attribution, ``render`` for pictures.
Per-visitor results live in ``gr.State`` (a :class:`Session`); the models are shared read-only.
"""

from __future__ import annotations

import os

# Offline-first: no analytics, no hub calls. Set before gradio (and huggingface_hub) are imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import hashlib
import io
import json
import logging
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar, cast

import gradio as gr
import torch
from PIL import Image
from torch import nn

from . import render
from .analysis import Analysis, analyze, explain
from .architectures import ARCHITECTURES, build_model
from .attribution import METHODS, Attribution, AttributionError
from .errors import is_out_of_memory
from .images import ImageError, IsolatedDecoder
from .model import DeviceError, LoadedModel, available_devices, load_model
from .summary import summarize
from .weights import WeightsError

__all__ = ["ASSETS", "Handlers", "ModelPool", "Session", "build_demo", "serve"]

log = logging.getLogger("alexnet_viz")

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MAX_FILE_SIZE = "20mb"  # the intake refuses more than 25 MB anyway; Gradio answers 413 above this
QUEUE_SIZE = 32  # waiting requests at most; the 33rd visitor is told the app is busy
CONCURRENCY = 2  # events running at once: a free Space has 2 cores
DECODER = IsolatedDecoder(timeout_s=30.0)  # one worker process for the server's uploads
SESSION_TTL_S = 2 * 3600  # forget a visitor's results after two hours
CACHE_SWEEP_S, CACHE_MAX_AGE_S = 1800, 3600  # every 30 min, delete uploads and pictures sent over an hour ago
# Computing time one request may spend in the slow attribution methods before it is stopped (between two
# batches). Gradio cannot stop a running sync handler: neither /cancel nor a closed tab ends its thread,
# which keeps the model lock; the sliders' extremes take minutes on 2 cores (occlusion with stride 4 and
# batch 1: 11 minutes, measured), so without this one visitor could hold the app that long.
SLOW_LIMIT_S = 60.0
COLORMAPS = ["viridis", "inferno", "magma", "gray", "jet", "RdBu_r", "coolwarm"]
SYSTEM_SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial",
               "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
CSS = """
.banner-warn {background: #b91c1c; color: white; padding: 10px 14px; border-radius: 8px; font-size: 1.05em}
.banner-warn code {color: white; background: #7f1d1d}
.banner-ok {background: #166534; color: white; padding: 8px 14px; border-radius: 8px}
.caption {opacity: .85; font-size: .95em}
"""

# What every panel teaches, in one line each.
CAPTIONS = {
    "filters": "The 11x11 colour filters of conv1, each stretched to full contrast. Click one to see where "
               "in this image it responds.",
    "features": "Every channel of the chosen layer for this image (bright = strong). Click a tile to "
                "enlarge that channel over the image.",
    "strongest": "The six channels with the largest mean activation in each conv layer, for this image.",
    "saliency": "Which pixels the chosen class score depends on, computed with Captum.",
    "compare": "Several methods side by side, each scaled to its own largest value so one colour bar "
               "fits all (red: supports the class; blue: speaks against it, for signed methods).",
    "architecture": "Parameters sit in the fully connected layers; compute sits in the convolutions.",
}


# -------------------------------------------------------------------------------------------------------
# shared models and per-visitor state


class ModelPool:
    """Loaded models, one per (arch, device), loaded on first use and shared read-only by all visitors.

    The architecture given at start gets the weights given at start; the others are seeded and untrained
    (the banner says so). At most ``max_models`` stay in memory (about 250 MB each).
    """

    def __init__(self, arch: str | None = None, weights: str = "imagenet", device: str = "auto", *,
                 num_classes: int | None = None, labels: str | None = None, max_models: int = 3) -> None:
        self._weights, self._num_classes, self._labels = weights, num_classes, labels
        self._max = max_models
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        first = load_model(arch, weights, device, num_classes=num_classes, labels=labels, fallback=True)
        self.default_key = (first.arch, str(first.device))
        self._models[self.default_key] = first

    @property
    def default(self) -> LoadedModel:
        return self.get(*self.default_key)

    def get(self, arch: str, device: str) -> LoadedModel:
        key = (arch, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            if arch == self.default_key[0]:
                loaded = load_model(arch, self._weights, device, num_classes=self._num_classes, labels=self._labels,
                                    fallback=True)
            else:
                loaded = load_model(arch, "none", device)
            self._models[key] = loaded
            while len(self._models) > self._max:
                oldest = next(k for k in self._models if k != self.default_key)
                del self._models[oldest]
            return loaded


@dataclass
class Session:
    """One visitor's results: the analysis of their image and the attributions computed for it."""

    arch: str
    device: str
    analysis: Analysis
    attributions: dict[str, Attribution] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------------------
# errors: a sentence for the visitor, the traceback only in the server log

T = TypeVar("T")
USER_ERRORS = (ImageError, WeightsError, DeviceError, AttributionError, ValueError)


def friendly(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Turn engine errors into ``gr.Error`` sentences; anything unexpected is logged and summarised."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except USER_ERRORS as e:
                raise gr.Error(str(e), print_exception=False) from None
            except MemoryError:
                raise gr.Error(f"The server ran out of memory while {what}; please try a smaller image.",
                               print_exception=False) from None
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError, MPS's "... out of memory"
                if not is_out_of_memory(e):
                    log.exception("unexpected error while %s", what)
                    raise gr.Error(f"Something went wrong while {what}; please try again.",
                                   print_exception=False) from None
                _free_accelerator_memory()
                raise gr.Error(f"The server ran out of memory while {what}; please try a smaller image.",
                               print_exception=False) from None
            except Exception:
                log.exception("unexpected error while %s", what)
                raise gr.Error(f"Something went wrong while {what}; please try again.",
                               print_exception=False) from None

        return wrapper

    return decorate


def _free_accelerator_memory() -> None:
    """Give the cached blocks of a failed allocation back, so that the next request has them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _need(session: Session | None) -> Session:
    if session is None:
        raise gr.Error("Give an image first: upload one, take a photo, or click an example.",
                       print_exception=False)
    return session


def _upload_path(value: Any) -> str:
    """The path of an upload (``preprocess=False`` gives Gradio's FileData dict), checked to be an upload.

    A client can send any ``{"path": ...}``; only files in Gradio's upload cache and our examples are read,
    so no request can make the server open one of its own files.
    """
    if isinstance(value, Mapping):
        value = value.get("path")
    if not value or not isinstance(value, str):
        raise gr.Error("Give an image first: upload one, take a photo, or click an example.",
                       print_exception=False)
    path = Path(value).resolve()
    roots = [Path(gr.utils.get_upload_folder()).resolve(), ASSETS.resolve()]
    if not any(path.is_relative_to(root) for root in roots) or not path.is_file():
        raise gr.Error("That file is not an upload this app can read.", print_exception=False)
    return str(path)


# -------------------------------------------------------------------------------------------------------
# handlers


def _banner(loaded: LoadedModel) -> str:
    w = loaded.weights
    arch = ARCHITECTURES[loaded.arch].title
    if w.warning:
        return f"<div class='banner-warn'>⚠ <b>{arch}</b>: {w.warning}</div>"
    return f"<div class='banner-ok'>✓ <b>{arch}</b>: {w.description}</div>"


DISPLAY_SIDE = 448  # overlays are drawn at twice the network's input so that they read on a projector


def _display(analysis: Analysis) -> Image.Image:
    """The network's view, enlarged for the screen; maps are upsampled onto it."""
    return analysis.view.resize((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BICUBIC)


def _label(analysis: Analysis) -> dict[str, float]:
    return {p.label: p.probability for p in analysis.top_k}


def _target_choices(loaded: LoadedModel, analysis: Analysis | None) -> list[tuple[str, str]]:
    top = [] if analysis is None else [(f"#{i + 1} {p.label} ({p.probability:.1%})", str(p.index))
                                       for i, p in enumerate(analysis.top_k)]
    shown = {value for _, value in top}
    rest = [(f"{name} ({i})", str(i)) for i, name in enumerate(loaded.categories) if str(i) not in shown]
    return [("Top-1 class (default)", ""), *top, *rest]


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _progress_adapter(progress: Any) -> Callable[[float, str], None]:
    def report(fraction: float, message: str) -> None:
        progress(fraction, desc=message)

    return report


class _Bounded:
    """A progress callback for attributions that stops the work once it has run ``limit_s`` seconds or its
    visitor has gone (``/cancel``, or the page closed); it forwards to ``progress`` (if any) otherwise.

    The engine calls it before every batch of the slow methods (and at the start and end of every method),
    so raising here stops the computation between two batches; the error reaches the visitor as a sentence.
    One instance spans one request: the clock starts at the first call, once the model lock is held.
    """

    def __init__(self, progress: Callable[[float, str], None] | None, limit_s: float) -> None:
        self.progress, self.limit_s = progress, limit_s
        self.started: float | None = None
        self.event: Any = None

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started, self.event = now, _current_event()
        elif fraction < 1.0:
            if now - self.started > self.limit_s:
                raise AttributionError(
                    f"This attribution took longer than {self.limit_s:g} s and was stopped; lower its steps, "
                    "samples or batch size (or raise the stride) and try again.")
            if _event_gone(self.event):
                raise AttributionError("The request was cancelled, so the attribution was stopped.")
        if self.progress is not None:
            self.progress(fraction, message)


def _current_event() -> Any:
    """Gradio's queue event this thread runs for, or None outside a queued event (tests, the CLI)."""
    try:
        from gradio.context import LocalContext

        blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
        queue = getattr(blocks, "_queue", None)
        return None if queue is None or event_id is None else (queue, queue.event_ids_to_events.get(event_id))
    except Exception:  # private API: without it only the time limit applies
        return None


def _event_gone(current: Any) -> bool:
    """Whether the visitor left: Gradio marks a disconnected event not alive or closed and drops a cancelled
    one from its table, but it cannot stop our thread. Only positive evidence counts."""
    if current is None or current[1] is None:
        return False
    try:
        queue, event = current
        return (not event.alive) or bool(event.closed) or event._id not in queue.event_ids_to_events
    except Exception:
        return False


class Handlers:
    """Everything the page does, as plain methods; ``build_demo`` wires them to components."""

    def __init__(self, pool: ModelPool, *, time_limit_s: float = SLOW_LIMIT_S,
                 decode: Callable[[str], Image.Image] | None = None) -> None:
        self.pool = pool
        self.time_limit_s = time_limit_s  # the slow attributions of one request stop after this
        self.decode = decode or DECODER  # uploads are decoded in a worker process: a crash costs one request

    # --- the model ---------------------------------------------------------------------------------

    def model_for(self, session: Session | None, arch: str | None = None, device: str | None = None) -> LoadedModel:
        arch = arch or (session.arch if session else self.pool.default_key[0])
        device = device or (session.device if session else self.pool.default_key[1])
        if arch not in ARCHITECTURES:
            raise gr.Error(f"Unknown architecture {arch!r}.", print_exception=False)
        if device not in available_devices():
            raise gr.Error(f"The device {device!r} is not available on this server; it offers "
                           f"{', '.join(available_devices())}.", print_exception=False)
        return self.pool.get(arch, device)

    # --- one image -> everything on screen -------------------------------------------------------------

    @friendly("analysing the image")
    def analyze(self, image: Any, arch: str, device: str, layer: str, sort: bool, cmap: str,
                session: Session | None) -> tuple[Any, ...]:
        if image is None:  # the image was cleared: keep what is on screen
            return tuple(gr.skip() for _ in range(16))
        loaded = self.model_for(session, arch, device)
        timings: dict[str, float] = {}
        with _timed(timings, "total"):
            result = analyze(loaded, self.decode(_upload_path(image)))
            session = Session(arch=loaded.arch, device=str(loaded.device), analysis=result)
            with _timed(timings, "saliency"):
                session.attributions["saliency"] = explain(loaded, result, "saliency")
            with _timed(timings, "render"):
                views = self._views(loaded, session, layer, sort, cmap)
        status = self._status(loaded, result, timings)
        layer_choices = gr.update(choices=loaded.layer_names,
                                  value=layer if layer in loaded.layer_names else "conv1")
        return (session, _label(result), _banner(loaded), status, *views, layer_choices,
                gr.update(choices=_target_choices(loaded, result), value=""),
                render.attribution_overlay(_display(result), session.attributions["saliency"].heatmap, alpha=0.6),
                self._attr_caption(loaded, session.attributions["saliency"]))

    def _views(self, loaded: LoadedModel, session: Session, layer: str, sort: bool,
               cmap: str) -> tuple[Any, ...]:
        """Filters, the filter's map, the layer grid, its info, one channel, the strongest strip."""
        result = session.analysis
        layer = layer if layer in result.activations else "conv1"
        conv1 = result.activations["conv1"]
        best = int(conv1.mean(dim=(1, 2)).argmax())
        grid, info, channel_view, channel = self._layer(session, layer, sort, cmap, None)
        strongest = render.strongest_channels_strip({n: result.activations[n] for n in loaded.conv_layers})
        return (
            self._filters(loaded),
            render.channel_overlay(_display(result), conv1[best], alpha=0.7),
            f"Filter **{best}** (the strongest on this image)",
            grid, info, channel_view, channel, strongest,
        )

    @staticmethod
    def _filters(loaded: LoadedModel) -> Image.Image:
        return render.filter_grid(loaded.conv1.weight, scale=6)

    @friendly("drawing the untrained filters")
    def untrained_filters(self, session: Session | None) -> Image.Image:
        """conv1 of the same architecture, freshly initialised with seed 0: what training starts from."""
        loaded = self.model_for(session)
        fresh = build_model(loaded.arch, num_classes=loaded.num_classes, seed=0).get_submodule("conv1")
        return render.filter_grid(cast(nn.Conv2d, fresh).weight, scale=6)

    @staticmethod
    def _status(loaded: LoadedModel, result: Analysis, timings: Mapping[str, float]) -> str:
        t = {**result.timings, **timings}
        return (f"**{result.top1.label}** ({result.top1.probability:.1%}) · device `{loaded.device}` · "
                f"{t['total'] * 1000:.0f} ms in all (forward {t['forward'] * 1000:.0f} ms, saliency "
                f"{t['saliency'] * 1000:.0f} ms, drawing {t['render'] * 1000:.0f} ms)")

    # --- re-rendering from the cached tensors -------------------------------------------------------

    def _layer(self, session: Session, layer: str, sort: bool, cmap: str,
               channel: int | None) -> tuple[Any, str, Any, Any]:
        act = session.analysis.activations[layer]
        shape = "x".join(map(str, act.shape))
        sparsity = session.analysis.sparsity(layer)
        if act.ndim == 1:
            grid = render.vector_strip(act, cmap=cmap, width=1024)
            info = f"**{layer}**: {shape} values · {sparsity:.0%} zeros"
            return grid, info, None, gr.update(maximum=0, value=0, interactive=False)
        grid, _order = render.feature_grid(act, sort=sort, cmap=cmap)
        strongest = int(act.mean(dim=(1, 2)).argmax())
        channel = strongest if channel is None else min(max(int(channel), 0), act.shape[0] - 1)
        info = (f"**{layer}**: output {shape} (channels x height x width) · {sparsity:.0%} of values are zero"
                f" · showing channel {channel}")
        view = render.channel_overlay(_display(session.analysis), act[channel], alpha=0.7)
        return grid, info, view, gr.update(maximum=act.shape[0] - 1, value=channel, interactive=True)

    @friendly("drawing the layer")
    def show_layer(self, session: Session | None, layer: str, sort: bool, cmap: str) -> tuple[Any, ...]:
        session = _need(session)
        if layer not in session.analysis.activations:
            raise gr.Error(f"This model has no layer called {layer!r}.", print_exception=False)
        return self._layer(session, layer, sort, cmap, None)

    @friendly("drawing the channel")
    def show_channel(self, session: Session | None, layer: str, channel: float, alpha: float,
                     cmap: str) -> tuple[Any, str]:
        session = _need(session)
        act = session.analysis.activations.get(layer)
        if act is None or act.ndim != 3:
            return None, ""
        c = min(max(int(channel), 0), act.shape[0] - 1)
        mean = float(act[c].mean())
        return (render.channel_overlay(_display(session.analysis), act[c], alpha=alpha, cmap=cmap),
                f"**{layer}** channel {c}: mean activation {mean:.3f}, {float((act[c] == 0).float().mean()):.0%} zeros")

    @friendly("picking a tile")
    def pick_tile(self, session: Session | None, layer: str, sort: bool, evt: gr.SelectData) -> int:
        session = _need(session)
        act = session.analysis.activations[layer]
        if act.ndim != 3:
            raise gr.Error("Fully connected layers have no channels to pick.", print_exception=False)
        grid, order = render.feature_grid(act, sort=sort)
        tile = render.tile_at(grid.size, len(order), evt.index)
        if tile is None:
            raise gr.Error("Click on a tile, not between them.", print_exception=False)
        return order[tile]

    @friendly("picking a filter")
    def pick_filter(self, session: Session | None, evt: gr.SelectData) -> tuple[Any, str]:
        session = _need(session)
        loaded = self.model_for(session)
        n = loaded.conv1.out_channels
        tile = render.tile_at(self._filters(loaded).size, n, evt.index, gap=2)
        if tile is None:
            raise gr.Error("Click on a filter, not between them.", print_exception=False)
        conv1 = session.analysis.activations["conv1"]
        return (render.channel_overlay(_display(session.analysis), conv1[tile], alpha=0.7),
                f"Filter **{tile}**: mean response {float(conv1[tile].mean()):.3f} on this image")

    # --- attribution ----------------------------------------------------------------------------------

    def _attr_caption(self, loaded: LoadedModel, attr: Attribution) -> str:
        spec = METHODS[attr.method]
        delta = (f" · completeness gap {attr.convergence_delta:.2g}" if attr.convergence_delta is not None else "")
        layer = f" on {attr.layer}" if attr.layer else ""
        return (f"**{spec.title}**{layer} for **{loaded.categories[attr.target]}**, {attr.seconds * 1000:.0f} ms"
                f"{delta}. {spec.caption}")

    @friendly("computing the attribution")
    def explain(self, session: Session | None, method: str, target: str, layer: str, alpha: float, cmap: str,
                *values: float, progress: gr.Progress = gr.Progress()) -> tuple[Any, str, Session]:  # noqa: B008
        session = _need(session)
        loaded = self.model_for(session)
        if method not in METHODS:
            raise gr.Error(f"Unknown method {method!r}.", print_exception=False)
        spec = METHODS[method]
        options = dict(zip(OPTION_NAMES, values, strict=True))
        chosen = {o.name: options[o.name] for o in spec.options}
        attr = explain(loaded, session.analysis, method, target=target or None,
                       layer=layer if spec.layer_based else None,
                       progress=_Bounded(_progress_adapter(progress) if spec.slow else None, self.time_limit_s),
                       **chosen)
        session = replace(session, attributions={**session.attributions, method: attr})
        return self._overlay(session, method, alpha, cmap), self._attr_caption(loaded, attr), session

    def _overlay(self, session: Session, method: str, alpha: float, cmap: str) -> Image.Image:
        attr = session.attributions[method]
        chosen = None if cmap == "auto" else cmap
        return render.attribution_overlay(_display(session.analysis), attr.heatmap, alpha=alpha, cmap=chosen,
                                          signed=attr.signed)

    @friendly("redrawing the attribution")
    def restyle(self, session: Session | None, method: str, alpha: float, cmap: str) -> Any:
        if session is None or method not in session.attributions:
            return gr.update()
        return self._overlay(session, method, alpha, cmap)

    @friendly("comparing methods")
    def compare(self, session: Session | None, methods: list[str], target: str, alpha: float,
                progress: gr.Progress = gr.Progress()) -> tuple[Any, Session]:  # noqa: B008
        session = _need(session)
        loaded = self.model_for(session)
        chosen = [m for m in methods or [] if m in METHODS]
        if not chosen:
            raise gr.Error("Tick at least one method to compare.", print_exception=False)
        attributions = dict(session.attributions)
        tiles = []
        bound = _Bounded(None, self.time_limit_s)  # one time limit for all the methods of this request
        for i, method in enumerate(chosen):
            progress(i / len(chosen), desc=f"{METHODS[method].title} ({i + 1} of {len(chosen)})")
            attr = explain(loaded, session.analysis, method, target=target or None, progress=bound)
            attributions[method] = attr
            heat = attr.heatmap / max(render.shared_vmax([attr.heatmap], signed=attr.signed, percentile=99.5),
                                      1e-12)
            overlay = render.attribution_overlay(session.analysis.view, heat.clamp(-1, 1), alpha=alpha,
                                                 signed=True, vmax=1.0)
            tiles.append(render.label(overlay, METHODS[method].title, size=22))
        progress(1.0, desc="done")
        bar = render.colorbar("RdBu_r", vmin=-1, vmax=1, width=480, label="attribution / its 99.5th percentile")
        return render.vstack([render.hstack(tiles), bar]), replace(session, attributions=attributions)

    # --- architecture -----------------------------------------------------------------------------------

    @staticmethod
    @friendly("summarising the architecture")
    def architecture(arch: str) -> tuple[list[list[Any]], Any, str]:
        s = summarize(arch)
        rows = [[r.name, r.type, r.config, "x".join(map(str, r.output_shape)), f"{r.params:,}",
                 f"{r.param_share:.1%}", f"{r.macs / 1e6:,.1f} M", f"{r.mac_share:.1%}"] for r in s.layers]
        conv_p, conv_m = s.conv_share()
        text = (f"**{ARCHITECTURES[arch].title}** at {s.input_size}x{s.input_size}: {s.total_params:,} parameters, "
                f"{s.macs / 1e9:.3f} G multiply-adds per image. Convolutions hold **{conv_p:.1%}** of the "
                f"parameters but do **{conv_m:.1%}** of the compute.")
        weighted = [r for r in s.layers if r.params or r.macs]
        chart = render.share_chart([r.name for r in weighted], [r.param_share for r in weighted],
                                   [r.mac_share for r in weighted])
        return rows, chart, text

    # --- switching model ----------------------------------------------------------------------------------

    @friendly("switching the model")
    def switch_model(self, arch: str, device: str, session: Session | None) -> tuple[Any, ...]:
        loaded = self.model_for(None, arch, device)
        return _banner(loaded), gr.update(choices=_target_choices(loaded, None), value="")

    def current_model(self, session: Session | None) -> tuple[str, str]:
        """The architecture and device of the visitor's results (the app's default before any image)."""
        return (session.arch, session.device) if session else self.pool.default_key

    # --- download -----------------------------------------------------------------------------------------

    @friendly("preparing the download")
    def download(self, session: Session | None) -> str:
        session = _need(session)
        loaded = self.model_for(session)
        result = session.analysis
        # Inside Gradio's upload folder: served as is, and removed by delete_cache with the uploads.
        folder = Path(gr.utils.get_upload_folder()) / "alexnet-viz" / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "alexnet-viz-results.zip"
        files: dict[str, Image.Image] = {
            "input.png": result.view,
            "top_k.png": render.top_k_chart([p.label for p in result.top_k], [p.probability for p in result.top_k]),
            "filters_conv1.png": self._filters(loaded),
        }
        for layer, act in result.activations.items():
            files[f"features_{layer}.png"] = (render.vector_strip(act) if act.ndim == 1
                                              else render.feature_grid(act)[0])
        for method, attr in session.attributions.items():
            files[f"attribution_{method}.png"] = render.attribution_overlay(result.view, attr.heatmap,
                                                                            signed=attr.signed)
        meta = {**result.to_dict(),
                "weights": {"description": loaded.weights.description, "trained": loaded.weights.trained,
                            "warning": loaded.weights.warning},
                "attributions": {m: {"target": a.target, "label": loaded.categories[a.target],
                                     "options": dict(a.options), "layer": a.layer} for m, a in
                                 session.attributions.items()}}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:  # PNGs are compressed already
            for name, image in files.items():
                with z.open(name, "w") as f:
                    image.save(f, format="PNG", compress_level=PNG_LEVEL)
            z.writestr("result.json", json.dumps(meta, indent=2))
        return str(path)

    # --- the API for scripts --------------------------------------------------------------------------------

    @friendly("classifying the image")
    def predict_api(self, image: Any) -> dict[str, float]:
        """Image -> the top-5 classes with their probabilities (the default model)."""
        return _label(analyze(self.pool.default, self.decode(_upload_path(image))))

    @friendly("explaining the image")
    def explain_api(self, image: Any, method: str, target: str | None) -> Image.Image:
        """Image, method name, class name or index (empty: the top-1) -> the attribution overlay."""
        if method not in METHODS:
            raise gr.Error(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.", print_exception=False)
        loaded = self.pool.default
        result = analyze(loaded, self.decode(_upload_path(image)))
        attr = explain(loaded, result, method, target=target or None, progress=_Bounded(None, self.time_limit_s))
        return render.attribution_overlay(result.view, attr.heatmap, alpha=0.6, signed=attr.signed)


# One slider per distinct numeric option of any method; the method dropdown shows the ones it uses.
OPTION_SPECS = {o.name: o for spec in METHODS.values() for o in spec.options}
OPTION_NAMES = list(OPTION_SPECS)


def _option_visibility(method: str) -> list[Any]:
    used = {o.name for o in METHODS[method].options} if method in METHODS else set()
    layer_based = method in METHODS and METHODS[method].layer_based
    return [gr.update(visible=layer_based), *(gr.update(visible=n in used) for n in OPTION_NAMES),
            METHODS[method].caption if method in METHODS else ""]


PNG_LEVEL = 1  # zlib level of the page's pictures: Gradio's 6 costs ~5x the time for ~20% fewer bytes


def as_png_files(fn: Callable[..., Any], outputs: list[Any]) -> Callable[..., Any]:
    """``fn`` for an event: the PIL pictures it returns for ``gr.Image`` outputs become PNG files.

    Each is written at ``PNG_LEVEL`` into Gradio's upload folder once per content, under a temporary name
    and renamed into place, and named after its component ("conv1-filters.png" when downloaded). Given a PIL
    image, ``gr.Image`` would encode it at zlib level 6 (~5x the time) and rewrite its content-addressed file
    on every request (``Path.write_bytes`` truncates first): when a lecture hall gets the same pictures (the
    conv1 filters, an example's maps), one visitor's download then reads a file another request has just
    truncated. ``benchmarks/load.py`` saw that as 1 request in 800 failing with "peer closed connection".
    A path inside the upload folder is served as is, and ``delete_cache`` removes it with the uploads.
    """
    stems = [_file_stem(str(o.label or "picture")) if isinstance(o, gr.Image) else None for o in outputs]

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        values = out if isinstance(out, tuple) else (out,)
        folder = Path(gr.utils.get_upload_folder())
        files = tuple(_cache_png(v, folder, stem) if stem and isinstance(v, Image.Image) else v
                      for v, stem in zip(values, stems, strict=False))
        return files if isinstance(out, tuple) else files[0]

    return wrapper


def _file_stem(label: str) -> str:
    """A download name from a component's label: "conv1 filters" -> "conv1-filters"."""
    stem = "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())
    return stem[:60] or "picture"


def _cache_png(image: Image.Image, cache: Path, stem: str) -> str:
    """``image`` as a PNG file in ``cache``, content-addressed; written atomically, or touched if already there."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    data = buffer.getvalue()
    folder = cache / "alexnet-viz" / hashlib.sha256(data).hexdigest()[:32]
    path = folder / f"{stem}.png"
    try:
        os.utime(path)  # already written (by this request's twin): keep it from aging out, serve it
        return str(path)
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(path)


def _picture(label: str, value: Any = None, **kwargs: Any) -> gr.Image:
    """An output picture: PNG (lossless maps), download and fullscreen buttons, no share-to-hub button."""
    return gr.Image(value, label=label, format="png", interactive=False, buttons=["download", "fullscreen"],
                    **kwargs)


def _examples() -> list[tuple[str, str]]:
    try:
        listed = json.loads((ASSETS / "examples.json").read_text(encoding="utf-8"))
        return [(str(ASSETS / e["file"]), e["caption"]) for e in listed if (ASSETS / e["file"]).is_file()]
    except (OSError, ValueError, KeyError):
        return []


# -------------------------------------------------------------------------------------------------------
# layout


def build_demo(pool: ModelPool) -> gr.Blocks:
    """The whole page. Every event has an ``api_name`` (or is private); outputs come from ``Handlers``."""
    h = Handlers(pool)
    loaded = pool.default
    arch0, device0 = pool.default_key
    examples = _examples()

    with gr.Blocks(title="alexnet-viz", delete_cache=(CACHE_SWEEP_S, CACHE_MAX_AGE_S), analytics_enabled=False) as demo:
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        gr.Markdown("## alexnet-viz: what AlexNet computes for your image", elem_id="title")
        banner = gr.HTML(_banner(loaded), elem_id="banner")

        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                                 height=260, elem_id="image")
                gr.Examples([[path] for path, _ in examples], inputs=[image], label="Examples (click one)",
                            examples_per_page=8, elem_id="examples")
                with gr.Row():
                    arch = gr.Dropdown(list(ARCHITECTURES), value=arch0, label="Architecture", elem_id="arch")
                    device = gr.Dropdown(available_devices(), value=device0, label="Device", elem_id="device")
            with gr.Column(scale=3, min_width=420):
                top5 = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="top5")
                status = gr.Markdown("Give an image: upload, webcam, paste, or click an example.",
                                     elem_id="status")

        with gr.Tabs():
            with gr.Tab("Filters", id="filters"):
                gr.Markdown(CAPTIONS["filters"], elem_classes="caption")
                with gr.Row():
                    filters = _picture("conv1 filters", h._filters(loaded), elem_id="filters-grid")
                    with gr.Column():
                        filter_map = _picture("This filter's feature map on the image", elem_id="filter-map")
                        filter_info = gr.Markdown()
                with gr.Accordion("Compare with an untrained copy (seed 0)", open=False) as untrained_box:
                    gr.Markdown("The same architecture before training: Kaiming-random filters. Training is what "
                                "turns them into the edge and colour detectors above.", elem_classes="caption")
                    untrained = _picture("untrained conv1 filters", elem_id="untrained-filters")
            with gr.Tab("Feature maps", id="features"):
                gr.Markdown(CAPTIONS["features"], elem_classes="caption")
                with gr.Row():
                    layer = gr.Dropdown(loaded.layer_names, value="conv1", label="Layer", elem_id="layer")
                    sort = gr.Checkbox(False, label="Sort channels by mean activation")
                    cmap = gr.Dropdown(COLORMAPS, value="viridis", label="Colour map")
                layer_info = gr.Markdown(elem_id="layer-info")
                with gr.Row(equal_height=False):
                    grid = _picture("All channels (click one)", scale=3,
                                    elem_id="layer-grid")
                    with gr.Column(scale=2):
                        channel = gr.Slider(0, 63, value=0, step=1, label="Channel")
                        opacity = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="Opacity")
                        channel_view = _picture("Channel over the image", elem_id="channel-view")
                        channel_info = gr.Markdown()
                gr.Markdown(CAPTIONS["strongest"], elem_classes="caption")
                strongest = _picture("Strongest channels per conv layer")
            with gr.Tab("Saliency", id="saliency"):
                gr.Markdown(CAPTIONS["saliency"], elem_classes="caption")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=300):
                        method = gr.Dropdown([(s.title, s.name) for s in METHODS.values()], value="saliency",
                                             label="Method", elem_id="method")
                        method_caption = gr.Markdown(METHODS["saliency"].caption, elem_classes="caption")
                        target = gr.Dropdown(_target_choices(loaded, None), value="", label="Class to explain "
                                             "(type to search all classes)", filterable=True, elem_id="target")
                        cam_layer = gr.Dropdown(loaded.conv_layers, value="conv5", label="Grad-CAM layer",
                                                visible=False)
                        sliders = [gr.Slider(o.minimum, o.maximum, value=o.default, step=o.step, label=o.label,
                                             info=o.help, visible=False) for o in OPTION_SPECS.values()]
                        with gr.Row():
                            attr_alpha = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Opacity")
                            attr_cmap = gr.Dropdown(["auto", *COLORMAPS], value="auto", label="Colour map")
                        run = gr.Button("Explain", variant="primary", elem_id="explain")
                    with gr.Column(scale=3):
                        attr_image = _picture("Attribution", elem_id="attribution")
                        attr_info = gr.Markdown(elem_id="attribution-info")
                gr.Markdown(CAPTIONS["compare"], elem_classes="caption")
                with gr.Row():
                    compare_methods = gr.CheckboxGroup([(s.title, s.name) for s in METHODS.values()],
                                                       value=["saliency", "guided_backprop", "gradcam",
                                                              "integrated_gradients"], label="Methods")
                    compare_run = gr.Button("Compare", elem_id="compare", scale=0)
                compare_image = _picture("Side by side", elem_id="compare-image")
            with gr.Tab("Architecture", id="architecture"):
                gr.Markdown(CAPTIONS["architecture"], elem_classes="caption")
                rows0, chart0, text0 = h.architecture(arch0)
                arch_text = gr.Markdown(text0)
                with gr.Row(equal_height=False):
                    arch_table = gr.Dataframe(rows0, headers=["layer", "type", "config", "output", "params",
                                                              "% params", "MACs", "% MACs"],
                                              interactive=False, wrap=True, scale=3)
                    arch_chart = _picture("Share of parameters vs compute", chart0, scale=2, show_label=False)
            with gr.Tab("Download", id="download"):
                gr.Markdown("Everything on screen as one zip: the PNGs and a JSON of predictions and settings.")
                download = gr.DownloadButton("Download results (zip)", elem_id="download-zip")

        # API-only endpoints for scripts (gradio_client): invisible components, documented in README.
        with gr.Row(visible=False):
            api_image = gr.Image(type="filepath")
            api_method = gr.Textbox()
            api_target = gr.Textbox()
            api_label = gr.Label(num_top_classes=5)
            api_overlay = gr.Image(format="png", label="Overlay")
            api_predict = gr.Button()
            api_explain = gr.Button()

        # ---- events ---- (the API endpoints first, so that they get their names before any handler does)
        api_predict.click(h.predict_api, [api_image], [api_label], api_name="predict", preprocess=False)
        api_explain.click(h.explain_api, [api_image, api_method, api_target], [api_overlay], api_name="explain",
                          preprocess=False)
        analysis_outputs = [session, top5, banner, status, filters, filter_map, filter_info, grid, layer_info,
                            channel_view, channel, strongest, layer, target, attr_image, attr_info]
        analysis_inputs = [image, arch, device, layer, sort, cmap, session]
        # One event for upload, webcam, paste and example clicks. We decode uploads ourselves
        # (preprocess=False) so that our intake, not Gradio, owns every error message.
        # Progress (and, on a refused file, Gradio's "Error" badge) on the predictions only: not on the banner,
        # the status line and every panel at once; the sentence itself is the toast.
        image.change(h.analyze, analysis_inputs, analysis_outputs, api_name="analyze", preprocess=False,
                     trigger_mode="always_last", show_progress_on=[top5])
        gr.on([layer.input, sort.input, cmap.input], h.show_layer, [session, layer, sort, cmap],
              [grid, layer_info, channel_view, channel], api_name="show_layer")
        gr.on([channel.release, opacity.release, cmap.input], h.show_channel, [session, layer, channel, opacity,
                                                                               cmap],
              [channel_view, channel_info], api_name="show_channel", queue=False)
        grid.select(h.pick_tile, [session, layer, sort], [channel], api_visibility="private").then(
            h.show_channel, [session, layer, channel, opacity, cmap], [channel_view, channel_info],
            api_visibility="private")
        filters.select(h.pick_filter, [session], [filter_map, filter_info], api_visibility="private")
        method.change(_option_visibility, [method], [cam_layer, *sliders, method_caption],
                      api_visibility="private", queue=False)
        run.click(h.explain, [session, method, target, cam_layer, attr_alpha, attr_cmap, *sliders],
                  [attr_image, attr_info, session], api_visibility="private")
        gr.on([attr_alpha.release, attr_cmap.input], h.restyle, [session, method, attr_alpha, attr_cmap],
              [attr_image], api_visibility="private", queue=False)
        compare_run.click(h.compare, [session, compare_methods, target, attr_alpha], [compare_image, session],
                          api_visibility="private")
        # A switch that fails (the model does not load) keeps the visitor's model: the dropdowns go back to it
        # and nothing is re-analysed.
        switched = gr.on([arch.input, device.input], h.switch_model, [arch, device, session], [banner, target],
                         api_visibility="private")
        switched.success(
            h.architecture, [arch], [arch_table, arch_chart, arch_text], api_visibility="private").success(
            h.analyze, analysis_inputs, analysis_outputs, api_visibility="private", preprocess=False,
            show_progress_on=[top5])
        switched.failure(h.current_model, [session], [arch, device], api_visibility="private", queue=False)
        untrained_box.expand(h.untrained_filters, [session], [untrained], api_visibility="private")
        download.click(h.download, [session], [download], api_visibility="private")
    for event in demo.fns.values():  # every event's pictures go out as PNG files (see as_png_files)
        if any(isinstance(o, gr.Image) for o in event.outputs):
            event.fn = as_png_files(event.fn, event.outputs)
    return demo


MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, fixed: see return_freed_memory()


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc give large freed blocks (tensors, decoded pictures) back to the system at once.

    glibc serves blocks of 128 KiB and more with mmap, but raises that threshold each time such a block is
    freed (up to 32 MiB); after a few requests, activations and attribution batches come from the heap arenas,
    which keep their freed pages. A server with a few worker threads then sits near 1.9 GB after 8 visitors at
    once instead of 1.2 GB (benchmarks/LOAD.md). Fixing the threshold (what ``MALLOC_MMAP_THRESHOLD_`` does
    before start) turns that raising off. Returns whether it was set: elsewhere than glibc it does nothing.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018  (glibc's: musl has mallopt but no such threshold raising)
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # M_MMAP_THRESHOLD in malloc.h
    return bool(libc.mallopt(m_mmap_threshold, threshold) == 1)


def serve(*, arch: str | None = None, weights: str = "imagenet", device: str = "auto",
          num_classes: int | None = None, labels: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          share: bool = False, block: bool = True) -> gr.Blocks:
    """Load the model, build the page and serve it (``block=False`` returns once it serves: for tests)."""
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return_freed_memory()
    if block and threading.current_thread() is threading.main_thread():
        # `kill -TERM` (how Spaces, systemd and docker stop a server) ends the process at once by default,
        # leaving its decoder workers behind; handled as Ctrl-C is, Gradio closes the server and we go on below.
        # Python drops an exception raised where it cannot propagate (an import lock's callback, a __del__):
        # should this one land there, the timer ends the process anyway (its workers follow it by themselves).
        def interrupt(signum: int, _frame: object) -> None:
            backstop = threading.Timer(3.0, os._exit, args=(128 + signum,))
            backstop.daemon = True
            backstop.start()
            raise KeyboardInterrupt

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, interrupt)
    DECODER.start()
    try:
        pool = ModelPool(arch, weights, device, num_classes=num_classes, labels=labels)
        if pool.default.weights.warning:
            log.warning(pool.default.weights.warning)
        demo = build_demo(pool)
        try:
            return launch(demo, host=host, port=port, share=share, block=block)
        except KeyboardInterrupt:  # before launch() got to wait for one: its server may be up already
            demo.close()
            raise
    finally:
        if block:  # served until interrupted (or failed to start): stop the workers before the interpreter ends
            DECODER.close()


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           queue_size: int = QUEUE_SIZE, concurrency: int = CONCURRENCY) -> gr.Blocks:
    """Queue and serve a page from ``build_demo`` with the public app's settings (tests use smaller queues)."""
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=gr.themes.Default(font=SYSTEM_SANS, font_mono=SYSTEM_MONO),  # no web fonts from a CDN
        css=CSS,
        show_error=False,  # our gr.Error sentences still show; tracebacks never do
        max_file_size=MAX_FILE_SIZE,
        enable_monitoring=False,  # /monitoring would otherwise answer anyone
        ssr_mode=False,  # no Node server: HF Spaces turn SSR on by default
        allowed_paths=[str(ASSETS)],
        footer_links=["gradio"],
        run_history=False,  # no runs page, no "connect a bucket" endpoint on a public app
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return demo
