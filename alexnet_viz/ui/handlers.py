"""Everything the page does, as plain methods of :class:`Handlers`, testable without a browser.

Each handler returns ``{name: value}`` keyed by the component names of :mod:`.layout` (``"top5"``,
``"grid"``, ...): a handler updates what it names and nothing else, and a test reads ``out["grid"]``
instead of counting positions. Handlers only call the engine (``analysis.analyze`` once per image,
``analysis.explain`` per attribution) and :mod:`alexnet_viz.export`, which draws every panel the same way
for the screen, the zip and the CLI. The visitor's :class:`.state.Session` records what each panel shows.
"""

from __future__ import annotations

import functools
import hashlib
import html
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import gradio as gr
from PIL import Image
from torch import nn

from .. import export, render
from ..analysis import Analysis, analyze, explain, explain_image
from ..architectures import ARCHITECTURES, build_model
from ..attribution import METHODS, Attribution, AttributionError, OptionSpec
from ..errors import UserError, is_out_of_memory
from ..model import LoadedModel, available_devices
from ..summary import summarize
from . import files
from .server import ASSETS, DECODER, SLOW_LIMIT_S
from .state import TRAINED_PREFIX, Lane, LatestImages, ModelPool, Session

__all__ = ["Handlers", "friendly", "option_specs", "progress_adapter", "upload_path"]

log = logging.getLogger("alexnet_viz")



def option_specs() -> dict[str, OptionSpec]:
    """One slider per distinct numeric option of the methods registered now (the page shows a method's own);
    read when the page is built, so a method registered before that gets its sliders."""
    return {o.name: o for spec in METHODS.values() for o in spec.options}

NO_IMAGE = "Give an image first: upload one, take a photo, or click an example."
MAX_ECHO = 40  # characters of a visitor's text repeated in a message

T = TypeVar("T")


# -------------------------------------------------------------------------------------------------------
# errors: a sentence for the visitor, the traceback only in the server log


def friendly(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Show a :class:`UserError` as its sentence; log anything else with its traceback and show a short
    generic sentence, so that a bug of ours is never presented as the visitor's fault."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except UserError as e:
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:
                if is_out_of_memory(e):
                    _free_accelerator_memory()
                    raise gr.Error(f"The server ran out of memory while {what}; please try a smaller image.",
                                   print_exception=False) from None
                log.exception("unexpected error while %s", what)
                raise gr.Error(f"Something went wrong while {what}; please try again.",
                               print_exception=False) from None

        return wrapper

    return decorate


def _free_accelerator_memory() -> None:
    """Give the cached blocks of a failed allocation back, so that the next request has them."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _refuse(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def _need(session: Session | None) -> Session:
    if session is None:
        raise _refuse(NO_IMAGE)
    return session


def _echo(text: object) -> str:
    """A visitor's text, trimmed for a message."""
    s = str(text)
    return repr(s if len(s) <= MAX_ECHO else s[:MAX_ECHO] + "…")


def _number(value: Any, what: str, lo: float, hi: float) -> float:
    """A slider's value, checked before any work: a client can send NaN, inf or anything else."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise _refuse(f"The {what} must be a number.") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise _refuse(f"The {what} must be between {lo:g} and {hi:g}.")
    return v


def _choice(value: Any, what: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _refuse(f"Unknown {what} {_echo(value)}.")
    return value


def upload_path(value: Any) -> str:
    """The path of an upload (``preprocess=False`` gives Gradio's FileData dict), checked to be an upload.

    A client can send any ``{"path": ...}``; only files in Gradio's upload cache and our examples are read,
    so no request can make the server open one of its own files.
    """
    if isinstance(value, Mapping):
        value = value.get("path")
    if not value or not isinstance(value, str):
        raise _refuse(NO_IMAGE)
    path = Path(value).resolve()
    roots = [Path(gr.utils.get_upload_folder()).resolve(), ASSETS.resolve()]
    if not any(path.is_relative_to(root) for root in roots) or not path.is_file():
        raise _refuse("That file is not an upload this app can read.")
    return str(path)


# -------------------------------------------------------------------------------------------------------
# a time limit and a cancel check for the slow attributions


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


def progress_adapter(progress: Any) -> Callable[[float, str], None]:
    def report(fraction: float, message: str) -> None:
        progress(fraction, desc=message)

    return report


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


# -------------------------------------------------------------------------------------------------------
# words


def banner(loaded: LoadedModel) -> str:
    w = loaded.weights
    arch = html.escape(ARCHITECTURES[loaded.arch].title)
    if w.warning:
        return f"<div class='banner-warn'>⚠ <b>{arch}</b>: {html.escape(w.warning)}</div>"
    return f"<div class='banner-ok'>✓ <b>{arch}</b>: {html.escape(w.description)}</div>"


def probability(p: float) -> str:
    """Enough digits that an untrained model's ~0.1% values differ: 0.61 -> 61%, 0.00123 -> 0.123%."""
    return render.format_probability(p)


def top5_html(analysis: Analysis | None) -> str:
    """The top-5 as labelled bars (Gradio's Label rounds every untrained ~0.1% to "0%")."""
    if analysis is None:
        return "<div class='top5 top5-empty'>Give an image: upload, webcam, paste, or click an example.</div>"
    rows = []
    top = max(analysis.top_k[0].probability, 1e-12)
    shown = render.format_probabilities([p.probability for p in analysis.top_k])  # digits enough to differ
    for rank, (p, text) in enumerate(zip(analysis.top_k, shown, strict=True), 1):
        width = max(1.0, 100 * p.probability / top)
        rows.append(f"<div class='top5-row'><span class='top5-rank'>{rank}</span>"
                    f"<span class='top5-label'>{html.escape(p.label)}</span>"
                    f"<span class='top5-bar'><span style='width:{width:.1f}%'></span></span>"
                    f"<span class='top5-p'>{text}</span></div>")
    return f"<div class='top5'>{''.join(rows)}</div>"


def label_value(analysis: Analysis) -> dict[str, float]:
    return {p.label: p.probability for p in analysis.top_k}


def target_choices(loaded: LoadedModel, analysis: Analysis | None) -> list[tuple[str, str]]:
    texts = [] if analysis is None else render.format_probabilities([p.probability for p in analysis.top_k])
    top = [] if analysis is None else [(f"#{i + 1} {p.label} ({text})", str(p.index))
                                       for i, (p, text) in enumerate(zip(analysis.top_k, texts, strict=True))]
    shown = {value for _, value in top}
    rest = [(f"{name} ({i})", str(i)) for i, name in enumerate(loaded.categories) if str(i) not in shown]
    return [("Top-1 class (default)", ""), *top, *rest]


def filters_caption(loaded: LoadedModel) -> str:
    conv = loaded.conv1
    k = "x".join(map(str, conv.kernel_size))
    colour = "colour " if conv.in_channels == 3 else ""
    return (f"The {conv.out_channels} {k} {colour}filters of conv1, each stretched to full contrast. Click one to "
            "see where in this image it responds.")


def untrained_note(loaded: LoadedModel) -> str:
    if loaded.weights.trained:
        return ("The same architecture before training: random filters (Kaiming initialisation, seed 0). "
                "Training is what turned them into the edge and colour detectors above.")
    return ("The same architecture, freshly initialised (seed 0). The weights loaded now are untrained too, so "
            "both grids are random: with trained weights the grid above shows edge and colour detectors.")


CAPTIONS = {
    "features": "Every channel of the chosen layer for this image (bright = strong). Click a tile to "
                "enlarge that channel over the image.",
    "features_fc": "A fully connected layer is one vector: each cell is one unit (bright = strong); the "
                   "strongest units are named below it.",
    "strongest": "The six channels with the largest mean activation in each conv layer, for this image.",
    "saliency": "Which pixels the chosen class score depends on, computed with Captum.",
    "compare": "Several methods side by side, each divided by its own 99.5th percentile of |value| (so that a few "
               "extreme pixels do not wash out the rest) so one colour bar fits all (red: supports the class; "
               "blue: speaks against it, for signed methods).",
    "architecture": "Parameters sit in the fully connected layers; compute sits in the convolutions.",
}


# -------------------------------------------------------------------------------------------------------
# handlers


class Handlers:
    """Everything the page does, as plain methods; :func:`.layout.build_demo` wires them to components."""

    def __init__(self, pool: ModelPool, *, time_limit_s: float = SLOW_LIMIT_S,
                 decode: Callable[[str], Image.Image] | None = None) -> None:
        self.pool = pool
        self.time_limit_s = time_limit_s  # the slow attributions of one request stop after this
        self.decode = decode or DECODER  # uploads are decoded in a worker process: a crash costs one request
        self.latest = LatestImages()  # each visitor's latest image: older pictures are not sent (panels)

    # --- the model ---------------------------------------------------------------------------------

    def model_for(self, session: Session | None, arch: str | None = None, device: str | None = None, *,
                  lane: Lane = "main") -> LoadedModel:
        """The visitor's model (or the one asked for); ``lane="slow"``: its replica for slow attributions,
        which shares the weights but not the lock, so the analyses of others never wait for it."""
        arch = self.model_name(session, arch)
        device = device or (session.device if session else self.pool.default_key[1])
        if not str(arch).startswith(TRAINED_PREFIX):  # a model trained here the pool forgot: the pool says so
            _choice(arch, "architecture", self.pool.names())
        if device not in available_devices():
            raise _refuse(f"The device {_echo(device)} is not available on this server; it offers "
                          f"{', '.join(available_devices())}.")
        return self.pool.get(arch, device, lane)

    def model_name(self, session: Session | None, arch: str | None = None) -> str:
        """The pool's name of the model asked for (an architecture or "trained:<run>"), else the visitor's."""
        return arch or (session.arch if session else self.pool.default_key[0])

    # --- one image -> everything on screen -------------------------------------------------------------

    @friendly("analysing the image")
    def analyze(self, image: Any, arch: str, device: str, layer: str, sort: bool, cmap: str, opacity: float,
                method: str, attr_alpha: float, attr_cmap: str, session: Session | None) -> dict[str, Any]:
        """A new image (or model), everything at once: :meth:`first_look` and then :meth:`panels`, as the page
        shows them one after the other."""
        first = self.first_look(image, arch, device, layer, sort, cmap, opacity, method, attr_alpha, attr_cmap,
                                session)
        if not first:
            return {}
        return {**first, **self.panels(first["session"], method)}

    @friendly("analysing the image")
    def first_look(self, image: Any, arch: str, device: str, layer: str, sort: bool, cmap: str, opacity: float,
                   method: str, attr_alpha: float, attr_cmap: str, session: Session | None,
                   visitor: str | None = None) -> dict[str, Any]:
        """A new image (or model): one forward pass, and what it gives at once: the top-5, the status line, the
        controls that depend on the model. The pictures follow in :meth:`panels`, a step of its own, so that a
        room of visitors gets their predictions without waiting for everyone's pictures to be drawn.

        ``visitor`` (Gradio's session hash on the page) records this image as the visitor's latest, which
        :meth:`panels` checks before it writes."""
        if image is None:  # the image was cleared: keep what is on screen
            return {}
        cmap = _choice(cmap, "colour map", render_colormaps())
        opacity = _number(opacity, "opacity", 0.0, 1.0)
        attr_alpha = _number(attr_alpha, "opacity", 0.0, 1.0)
        loaded = self.model_for(session, arch, device)
        result = analyze(loaded, self.decode(upload_path(image)))
        layer = layer if layer in result.activations else "conv1"
        new = Session.start(self.pool, loaded, result, name=self.model_name(session, arch)).with_scene(
            layers=(layer,), sort=bool(sort), cmap=cmap, channel=None, opacity=opacity, filter=None, methods=(),
            attr_alpha=attr_alpha, attr_cmap=attr_cmap, compare=())
        if visitor is not None:
            self.latest.record(visitor, new.key)
        example = example_for(upload_path(image))
        return {
            "session": new,
            "top5": top5_html(result),
            "banner": banner(loaded),
            "status": self._status(loaded, result, {}),
            "layer": gr.update(choices=loaded.layer_names, value=layer),
            "cam_layer": gr.update(choices=loaded.conv_layers, value=_default_cam_layer(loaded, True)),
            "target": gr.update(choices=target_choices(loaded, result), value=""),
            "compare_image": None,
            "example_caption": f"**{example.title}:** {example.caption}" if example else "",
            # The example shown is the one ringed in the gallery; a visitor's own picture rings none (-1: Gradio
            # 6.31's gallery keeps its ring on None, and shows none for an index no picture has).
            "examples": gr.update(selected_index=examples().index(example) if example else -1),
        }

    @friendly("drawing the panels")
    def panels(self, session: Session | None, method: str, visitor: str | None = None) -> dict[str, Any]:
        """Every picture of a new analysis (:meth:`first_look`'s session): the conv1 filters, the layer's grid
        and channel, the strongest channels, and the attribution of the chosen method when it is quick (a slow
        one waits for the Explain button, and the caption says so). Nothing if the visitor has given another
        image since (``visitor``): that one's pictures come next, and this session must not overwrite it."""
        if session is None or (visitor is not None and not self.latest.is_latest(visitor, session.key)):
            return {}
        loaded = self.model_for(session)
        result = session.analysis
        timings = dict(session.timings)
        with _timed(timings, "drawing"):
            quick = method if method in METHODS and not METHODS[method].slow else "saliency"
            with _timed(timings, "attribution"):
                attr = explain(loaded, result, quick, layer=_default_cam_layer(loaded, METHODS[quick].layer_based))
            new = session.with_attribution(attr).with_scene(methods=(quick,))
            with _timed(timings, "render"):
                out = {**self._filters_panels(loaded, new), **self._layer_panels(loaded, new),
                       **self._attribution_panels(loaded, new)}
                out["strongest"] = export.strongest_picture(loaded, result, cmap=new.scene.cmap)
        if quick != method and method in METHODS:
            out["attr_info"] += (f" {METHODS[method].title} takes a while: press **Explain** to compute it for this "
                                 "image (saliency is shown meanwhile).")
        if visitor is not None and not self.latest.is_latest(visitor, session.key):
            return {}  # another image arrived while these were drawn
        return {**out, "session": new, "method": quick, "status": self._status(loaded, result, timings)}

    @staticmethod
    def _status(loaded: LoadedModel, result: Analysis, timings: Mapping[str, float]) -> str:
        """The status line: the prediction and the forward pass at once; once the pictures are drawn, the time
        of every step (``timings`` from :meth:`panels`)."""
        t = {**result.timings, **timings}
        head = f"**{result.top1.label}** ({probability(result.top1.probability)}) · device `{loaded.device}` · "
        if "drawing" not in t:
            return head + f"forward {t['forward'] * 1000:.0f} ms · drawing the pictures…"
        total = t["decode"] + t["preprocess"] + t["forward"] + t["drawing"]
        return head + (f"{total * 1000:.0f} ms in all (forward {t['forward'] * 1000:.0f} ms, attribution "
                       f"{t['attribution'] * 1000:.0f} ms, drawing {t['render'] * 1000:.0f} ms)")

    # --- panels from the session's scene -------------------------------------------------------------

    def _filters_panels(self, loaded: LoadedModel, session: Session) -> dict[str, Any]:
        result, scene = session.analysis, session.scene
        strongest = export.strongest_channel(result.activations["conv1"])
        chosen = strongest if scene.filter is None else scene.filter
        conv1 = result.activations["conv1"][chosen]
        which = " (the strongest on this image)" if chosen == strongest else ""
        return {
            "filters": export.filters_picture(loaded, selected=chosen),
            "filter_map": export.filter_map_picture(result, chosen, opacity=scene.opacity),
            "filter_info": f"Filter **{chosen}**{which}: mean response {float(conv1.mean()):.3f} on this image",
            "filters_caption": filters_caption(loaded),
        }

    def _layer_panels(self, loaded: LoadedModel, session: Session) -> dict[str, Any]:
        """The layer grid, its line of text, the channel slider and the channel view, all for one layer."""
        result, scene = session.analysis, session.scene
        layer = scene.layers[0]
        act = result.activations[layer]
        shape = "x".join(map(str, act.shape))
        zeros = result.sparsity(layer)
        if act.ndim == 1:  # a fully connected layer: one vector, its units picked by a click on the strip
            unit = export.ringed_unit(result, scene, layer)
            grid, _ = export.layer_picture(result, layer, cmap=scene.cmap, labels=loaded.categories, selected=unit)
            top = act.topk(min(5, act.shape[0]))
            is_output = act.shape[0] == loaded.num_classes and layer == loaded.layer_names[-1]
            names = loaded.categories if is_output else None

            def named(i: int) -> str:
                return f"{i}{f' ({names[i]})' if names else ''}: {float(act[i]):.3g}"

            picked = f" · unit **{named(unit)}**" if unit is not None else ""
            return {
                "grid": gr.update(value=grid, label=GRID_LABELS["fc"]),
                "layer_info": f"**{layer}**: a vector of {shape} values · {zeros:.0%} of them are zero · "
                              f"strongest units {', '.join(named(int(i)) for i in top.indices)}{picked}",
                "layer_caption": CAPTIONS["features_fc"],
                "channel": gr.update(visible=False, interactive=False),
                "opacity": gr.update(visible=False),
                "channel_view": gr.update(value=None, visible=False),
                "channel_info": "",
            }
        channel = export.strongest_channel(act) if scene.channel is None else scene.channel
        channel = min(max(int(channel), 0), act.shape[0] - 1)
        grid, _order = export.layer_picture(result, layer, sort=scene.sort, cmap=scene.cmap, selected=channel)
        mean = float(act[channel].mean())
        return {
            "grid": gr.update(value=grid, label=GRID_LABELS["conv"]),
            "layer_info": f"**{layer}**: output {shape} (channels x height x width) · {zeros:.0%} of values are zero"
                          f" · showing channel **{channel}**",
            "layer_caption": CAPTIONS["features"],
            "channel": gr.update(minimum=0, maximum=act.shape[0] - 1, value=channel, visible=True, interactive=True),
            "opacity": gr.update(visible=True),
            "channel_view": gr.update(value=export.channel_picture(result, layer, channel, opacity=scene.opacity,
                                                                   cmap=scene.cmap), visible=True),
            "channel_info": f"**{layer}** channel {channel}: mean activation {mean:.3f}, "
                            f"{float((act[channel] == 0).float().mean()):.0%} zeros",
        }

    def _attribution_panels(self, loaded: LoadedModel, session: Session) -> dict[str, Any]:
        scene = session.scene
        if not scene.methods:
            return {"attr_image": None, "attr_info": ""}
        attr = session.attributions[scene.methods[0]]
        return {
            "attr_image": export.attribution_picture(session.analysis, attr, alpha=scene.attr_alpha,
                                                     cmap=scene.attr_cmap),
            "attr_info": self._attr_caption(loaded, attr),
        }

    @staticmethod
    def _attr_caption(loaded: LoadedModel, attr: Attribution) -> str:
        spec = METHODS[attr.method]
        delta = (f" · completeness gap {attr.convergence_delta:.2g}" if attr.convergence_delta is not None else "")
        layer = f" on {attr.layer}" if attr.layer else ""
        return (f"**{spec.title}**{layer} for **{loaded.categories[attr.target]}**, {attr.seconds * 1000:.0f} ms"
                f"{delta}. {spec.caption}")

    # --- re-rendering from the cached tensors -------------------------------------------------------

    @friendly("drawing the layer")
    def show_layer(self, session: Session | None, layer: str, sort: bool, cmap: str,
                   opacity: float) -> dict[str, Any]:
        """A new layer, sort order or colour map: the grid, its text and the channel view (the layer's
        strongest channel), from the tensors of the visitor's image. Before any image there is nothing to
        redraw: the choice waits for the image (analyze reads it), and no message interrupts the visitor."""
        if session is None:
            return {}
        layer = _choice(layer, "layer", list(session.analysis.activations))
        cmap = _choice(cmap, "colour map", render_colormaps())
        opacity = _number(opacity, "opacity", 0.0, 1.0)
        same_layer = session.scene.layers[0] == layer
        session = session.with_scene(layers=(layer,), sort=bool(sort), cmap=cmap, opacity=opacity,
                                     channel=session.scene.channel if same_layer else None)
        loaded = self.model_for(session)
        return {**self._layer_panels(loaded, session), "session": session,
                "strongest": export.strongest_picture(loaded, session.analysis, cmap=cmap)}

    @friendly("drawing the channel")
    def show_channel(self, session: Session | None, channel: float, opacity: float) -> dict[str, Any]:
        if session is None:  # a slider moved before any image: it applies to the next one
            return {}
        act = session.analysis.activations[session.scene.layers[0]]
        opacity = _number(opacity, "opacity", 0.0, 1.0)
        new_opacity = opacity != session.scene.opacity
        out: dict[str, Any] = {}
        if act.ndim == 3:
            c = int(_number(channel, "channel", 0, act.shape[0] - 1))
            session = session.with_scene(channel=c, opacity=opacity)
            out.update(self._layer_panels(self.model_for(session), session))
        else:
            session = session.with_scene(opacity=opacity)
        if new_opacity:  # the filter map shares the opacity; a channel change alone leaves the Filters tab as it is
            out.update(self._filters_panels(self.model_for(session), session))
        return {**out, "session": session}

    @friendly("picking a tile")
    def pick_tile(self, session: Session | None, evt: gr.SelectData) -> dict[str, Any]:
        session = _need(session)
        scene = session.scene
        act = session.analysis.activations[scene.layers[0]]
        if act.ndim == 1:  # an fc layer's strip: the cell clicked is a unit
            strip, _ = export.layer_picture(session.analysis, scene.layers[0], cmap=scene.cmap)
            unit = render.vector_unit_at(strip.width, act.shape[0], evt.index)
            if unit is None:
                raise _refuse("Click on a cell of the strip: each one is a unit of this layer.")
            session = session.with_scene(channel=unit)
            return {**self._layer_panels(self.model_for(session), session), "session": session}
        grid, order = export.layer_picture(session.analysis, scene.layers[0], sort=scene.sort, cmap=scene.cmap)
        tile = render.tile_at(grid.size, len(order), evt.index, snap=True)
        if tile is None:
            raise _refuse("Click on a tile: this part of the grid is empty.")
        session = session.with_scene(channel=order[tile])
        return {**self._layer_panels(self.model_for(session), session), "session": session}

    @friendly("picking a filter")
    def pick_filter(self, session: Session | None, arch: str, device: str, evt: gr.SelectData) -> dict[str, Any]:
        """A click on conv1's filters. Before any image (the filters are on the page from the start) it
        outlines the filter and names it: a lecturer can point at one before showing an image."""
        loaded = self.model_for(session) if session is not None else self.model_for(None, arch, device)
        n = loaded.conv1.out_channels
        tile = render.tile_at(export.filters_picture(loaded).size, n, evt.index, gap=2, snap=True)
        if tile is None:
            raise _refuse("Click on a filter: this part of the grid is empty.")
        if session is None:
            return {"filters": export.filters_picture(loaded, selected=tile),
                    "filter_info": f"Filter **{tile}** of {n}: give an image to see where it responds."}
        session = session.with_scene(filter=tile)
        return {**self._filters_panels(loaded, session), "session": session}

    @friendly("drawing the untrained filters")
    def untrained_filters(self, session: Session | None) -> dict[str, Any]:
        """conv1 of the same architecture, freshly initialised with seed 0: what training starts from."""
        loaded = self.model_for(session)
        fresh = build_model(loaded.arch, num_classes=loaded.num_classes, seed=0).get_submodule("conv1")
        return {"untrained": export.conv1_grid(cast(nn.Conv2d, fresh).weight),
                "untrained_note": untrained_note(loaded)}

    # --- attribution ----------------------------------------------------------------------------------

    def _options(self, method: str, options: Mapping[str, Any]) -> dict[str, float]:
        """The method's own options from the sliders' values (by name), each checked for NaN and range."""
        chosen = {}
        for o in METHODS[method].options:
            value = options.get(o.name, o.default)
            chosen[o.name] = _number(value, o.label.lower(), o.minimum, o.maximum)
        return chosen

    def _explain(self, loaded: LoadedModel, session: Session, method: str, target: str, cam_layer: str,
                 options: Mapping[str, Any], bound: _Bounded) -> Attribution:
        spec = METHODS[method]
        if len(str(target or "")) > 200:
            raise _refuse(f"No class is called {_echo(target)}.")
        return explain(loaded, session.analysis, method, target=target or None,
                       layer=_choice(cam_layer, "layer", loaded.conv_layers) if spec.layer_based else None,
                       progress=bound, **self._options(method, options))

    @friendly("computing the attribution")
    def explain(self, session: Session | None, method: str, target: str, cam_layer: str, alpha: float, cmap: str,
                options: Mapping[str, Any] | None = None, *,
                progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
        session = _need(session)
        method = _choice(method, "method", list(METHODS))
        alpha = _number(alpha, "opacity", 0.0, 1.0)
        cmap = _choice(cmap, "colour map", ["auto", *render_colormaps()])
        loaded = self.model_for(session, lane="slow" if METHODS[method].slow else "main")
        bound = _Bounded(progress if METHODS[method].slow else None, self.time_limit_s)
        attr = self._explain(loaded, session, method, target, cam_layer, options or {}, bound)
        session = session.with_attribution(attr).with_scene(methods=(method,), attr_alpha=alpha, attr_cmap=cmap)
        return {**self._attribution_panels(loaded, session), "session": session}

    @friendly("redrawing the attribution")
    def restyle(self, session: Session | None, alpha: float, cmap: str) -> dict[str, Any]:
        """New opacity or colour map for the attribution on screen (whatever the method dropdown says now)."""
        if session is None or not session.scene.methods:
            return {}
        alpha = _number(alpha, "opacity", 0.0, 1.0)
        cmap = _choice(cmap, "colour map", ["auto", *render_colormaps()])
        session = session.with_scene(attr_alpha=alpha, attr_cmap=cmap)
        return {**self._attribution_panels(self.model_for(session), session), "session": session}

    @friendly("comparing methods")
    def compare(self, session: Session | None, methods: Sequence[str] | None, target: str, cam_layer: str,
                alpha: float, options: Mapping[str, Any] | None = None, *,
                progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
        session = _need(session)
        alpha = _number(alpha, "opacity", 0.0, 1.0)
        chosen = list(dict.fromkeys(m for m in methods or [] if isinstance(m, str) and m in METHODS))
        if not chosen:
            raise _refuse("Tick at least one method to compare.")
        loaded = self.model_for(session, lane="slow")  # the slow group's replica: nobody's forward waits for it
        bound = _Bounded(None, self.time_limit_s)  # one time limit for all the methods of this request
        for i, method in enumerate(chosen):
            if progress is not None:
                progress(i / len(chosen), f"{METHODS[method].title} ({i + 1} of {len(chosen)})")
            session = session.with_attribution(self._explain(loaded, session, method, target, cam_layer,
                                                             options or {}, bound))
        if progress is not None:
            progress(1.0, "done")
        session = session.with_scene(compare=tuple(chosen), attr_alpha=alpha)
        picture = export.compare_picture(session.analysis, [session.attributions[m] for m in chosen], alpha=alpha)
        return {"compare_image": picture, "session": session}

    # --- architecture -----------------------------------------------------------------------------------

    @friendly("summarising the architecture")
    def architecture(self, arch: str) -> dict[str, Any]:
        if arch in ARCHITECTURES:
            s = summarize(arch)
        elif isinstance(arch, str) and arch.startswith(TRAINED_PREFIX):  # a model trained here: its architecture
            loaded = self.model_for(None, arch)  # at its own input size and number of classes
            arch = loaded.arch
            s = summarize(arch, num_classes=loaded.num_classes, input_size=loaded.input_size)
        else:
            raise _refuse(f"Unknown architecture {_echo(arch)}.")
        rows = [[r.name, r.type, r.config, "x".join(map(str, r.output_shape)), f"{r.params:,}",
                 f"{r.param_share:.1%}", f"{r.macs / 1e6:,.1f} M", f"{r.mac_share:.1%}"] for r in s.layers]
        conv_p, conv_m = s.conv_share()
        text = (f"**{ARCHITECTURES[arch].title}** at {s.input_size}x{s.input_size}: {s.total_params:,} parameters, "
                f"{s.macs / 1e9:.3f} G multiply-adds per image. Convolutions hold **{conv_p:.1%}** of the "
                f"parameters but do **{conv_m:.1%}** of the compute.")
        weighted = [r for r in s.layers if r.params or r.macs]
        chart = render.share_chart([r.name for r in weighted], [r.param_share for r in weighted],
                                   [r.mac_share for r in weighted])
        return {"arch_table": rows, "arch_chart": chart, "arch_text": text}

    # --- switching model ----------------------------------------------------------------------------------

    @friendly("switching the model")
    def switch_model(self, arch: str, device: str, session: Session | None) -> dict[str, Any]:
        loaded = self.model_for(None, arch, device)
        # The untrained copy belongs to the architecture it was drawn for: its box closes and forgets it (opening
        # it again draws the new architecture's), so it never shows another model's filters.
        return {"banner": banner(loaded), "target": gr.update(choices=target_choices(loaded, None), value=""),
                "filters": export.filters_picture(loaded), "filters_caption": filters_caption(loaded),
                "untrained_box": gr.update(open=False), "untrained": None, "untrained_note": untrained_note(loaded)}

    def current_model(self, session: Session | None) -> dict[str, Any]:
        """The architecture and device of the visitor's results (the app's default before any image)."""
        arch, device = (session.arch, session.device) if session else self.pool.default_key
        return {"arch": arch, "device": device}

    # --- examples -----------------------------------------------------------------------------------------

    @staticmethod
    def pick_example(evt: gr.SelectData) -> dict[str, Any]:
        listed = examples()
        index = evt.index if isinstance(evt.index, int) else -1
        if not 0 <= index < len(listed):
            raise _refuse("Click on one of the example pictures.")
        example = listed[index]
        return {"image": example.path, "example_caption": f"**{example.title}:** {example.caption}"}

    # --- download -----------------------------------------------------------------------------------------

    @friendly("preparing the download")
    def download(self, session: Session | None) -> dict[str, Any]:
        """Exactly what is on the visitor's screen (the session's scene) as one zip, plus result.json."""
        session = _need(session)
        loaded = self.model_for(session)
        pictures = export.pictures(loaded, session.analysis, session.attributions, session.scene)
        meta = export.result_json(loaded, session.analysis, session.attributions, session.scene, files=pictures)
        path = files.new_download_path()
        export.write_zip(path, pictures, meta)
        return {"zip": str(path)}

    # --- the API for scripts --------------------------------------------------------------------------------

    @friendly("classifying the image")
    def predict_api(self, image: Any) -> dict[str, float]:
        """Image -> the top-5 classes with their probabilities (the default model)."""
        return label_value(analyze(self.pool.default, self.decode(upload_path(image)), capture=False))

    @friendly("explaining the image")
    def explain_api(self, image: Any, method: str, target: str | None) -> Image.Image:
        """Image, method name, class name or index (empty: the top-1) -> the attribution overlay."""
        if method not in METHODS:
            raise _refuse(f"Unknown method {_echo(method)}; use one of {', '.join(METHODS)}.")
        if len(str(target or "")) > 200:
            raise _refuse(f"No class is called {_echo(target)}.")
        loaded = self.pool.get(*self.pool.default_key, lane="slow")  # runs in the slow group: its replica
        # No layer is hooked, and the top-1 class comes from the method's own forward pass where it can.
        view, attr = explain_image(loaded, self.decode(upload_path(image)), method, target=target or None,
                                   layer=_default_cam_layer(loaded, METHODS[method].layer_based),
                                   progress=_Bounded(None, self.time_limit_s))
        return render.attribution_overlay(view, attr.heatmap, alpha=0.6, signed=attr.signed)


def _default_cam_layer(loaded: LoadedModel, layer_based: bool) -> str | None:
    return loaded.conv_layers[-1] if layer_based else None


GRID_LABELS = {"conv": "All channels (click one)", "fc": "All units (click one)"}  # the layer grid's label
COLORMAPS = ["viridis", "inferno", "magma", "gray", "jet", "RdBu_r", "coolwarm"]


def render_colormaps() -> list[str]:
    return COLORMAPS


class Example(NamedTuple):
    path: str
    title: str  # under the thumbnail
    caption: str  # what it teaches, shown once it is picked


def example_for(path: str) -> Example | None:
    """The bundled example a file is a copy of (Gradio caches what a gallery click sends), by content."""
    digest = _sha256(path)
    return next((e for e in examples() if _sha256(e.path) == digest), None)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sha256(path: str) -> str:
    st = Path(path).stat()
    return _sha256_cached(path, st.st_size, st.st_mtime)


def examples() -> list[Example]:
    """The bundled examples, from assets/examples.json (files and licences in assets/README.md)."""
    import json

    try:
        listed = json.loads((ASSETS / "examples.json").read_text(encoding="utf-8"))
        return [Example(str(ASSETS / e["file"]), str(e.get("title") or e["file"]), str(e["caption"]))
                for e in listed if (ASSETS / e["file"]).is_file()]
    except (OSError, ValueError, KeyError, TypeError):
        return []
