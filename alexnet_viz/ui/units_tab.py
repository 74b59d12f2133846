"""The "Units" and "Inside AlexNet" tabs (issue #13).

Units: what a unit wants (feature visualisation, :mod:`alexnet_viz.featvis`), live, beside the same unit of an
untrained copy; the 9 gallery crops that excite a conv channel most, cut at its exact receptive field; and the
visitor's image's 6 nearest gallery images in fc7 space beside its 6 nearest in pixel space
(:mod:`alexnet_viz.gallery`). Inside AlexNet: a click on the network's view picks a conv1 position; the tab
shows that position's numbers through conv1, ReLU, LRN and max pooling, the output-size arithmetic of every
layer, dropout and the parameters (:mod:`alexnet_viz.walkthrough`).

:class:`UnitsHandlers` holds the plain handlers (tests call them without a browser); :func:`add_units_tab` and
:func:`add_inside_tab` lay the tabs out and wire them (``layout.TABS``). Shared between visitors, read-only:
the untrained twins and the gallery indexes (one per model and weights, built once). Per visitor: only what
``gr.State`` holds.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import wraps
from pathlib import Path
from typing import Any, cast

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw
from torch import nn

from .. import export, render
from ..featvis import OBJECTIVES, DiskCache, FeatVisError, Settings, untrained_twin, visualize_iter, weights_fingerprint
from ..gallery import GalleryIndex, assets_index, neighbours, network_view, top_crops
from ..model import LoadedModel
from ..walkthrough import Walkthrough, conv1_position, walkthrough
from . import handlers as H
from .files import as_png_files
from .server import INSTANT
from .state import Lane, ModelPool, Session

__all__ = ["STEPS", "UnitsHandlers", "add_inside_tab", "add_units_tab", "use_gallery"]

STEPS = (16, 256, 128)  # the steps slider: minimum, maximum, default (Lucent's 128 takes ~5-12 s a unit on a CPU)
EVERY = 8  # a live picture every 8 steps
PICTURE = 512  # side of each feature-visualisation picture on screen
CROP = 192  # side of each dataset-example crop
THUMB = 168  # side of each neighbour thumbnail
VIEW_SCALE = 3  # the Inside tab's view: 224 px shown at 672
CELL = 24  # px per input pixel in the patch and filter pictures (11 px -> 264)
_GALLERY: Path | None = None  # --gallery FILE, set once at start-up by use_gallery()


def use_gallery(path: str | Path | None) -> GalleryIndex | None:
    """Serve the dataset examples and neighbours from an index file (``alexnet-viz index``) instead of the bundled
    photos; read once now, so a bad file stops the start-up with its sentence. ``None``: back to the photos."""
    global _GALLERY
    if path is None:
        _GALLERY = None
        return None
    index = GalleryIndex.load(path)  # GalleryError: a sentence for the command line
    _GALLERY = Path(path).expanduser().resolve()
    return index


# -------------------------------------------------------------------------------------------------------
# pictures (pure)


def _big(image: Image.Image, side: int = PICTURE) -> Image.Image:
    return image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)


def _crops_picture(crops: Sequence[tuple[Image.Image, str]]) -> Image.Image:
    """The crops magnified to CROP px (pixels kept sharp: a conv1 crop is 11 px), each under its caption."""
    tiles = [render.label(c.resize((CROP, CROP), Image.Resampling.NEAREST), text, size=22) for c, text in crops]
    return render.tile_rows(tiles, 3, gap=12)


def _neighbours_picture(rows: Sequence[tuple[str, Sequence[tuple[Image.Image, str]]]]) -> Image.Image:
    """One labelled row of thumbnails per space."""
    out = []
    for title, items in rows:
        thumbs = [render.label(im.resize((THUMB, THUMB), Image.Resampling.BICUBIC), text, size=22)
                  for im, text in items]
        out.append(render.label(render.hstack(thumbs, gap=10), title, size=26))
    return render.vstack(out, gap=24)


def _view_picture(view: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The network's view, magnified, with conv1's window (top, left, bottom, right) outlined."""
    big = view.convert("RGB").resize((view.width * VIEW_SCALE, view.height * VIEW_SCALE), Image.Resampling.NEAREST)
    top, left, bottom, right = (v * VIEW_SCALE for v in box)
    draw = ImageDraw.Draw(big)
    for width, colour in ((7, (255, 255, 255)), (3, (220, 20, 60))):
        draw.rectangle((left - 2, top - 2, right + 1, bottom + 1), outline=colour, width=width)
    return big


def _magnified(rgb01: np.ndarray) -> Image.Image:
    """(3, k, k) in [0, 1] -> a picture CELL px per value, with thin grid lines so the values can be counted."""
    k = rgb01.shape[-1]
    img = Image.fromarray(render.to_uint8(np.transpose(rgb01, (1, 2, 0)))).resize((k * CELL, k * CELL),
                                                                                   Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for i in range(1, k):
        draw.line((i * CELL, 0, i * CELL, k * CELL), fill=(255, 255, 255))
        draw.line((0, i * CELL, k * CELL, i * CELL), fill=(255, 255, 255))
    return img


def _conv_pictures(w: Walkthrough, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """Patch (as the eye sees it), filter (full contrast, grey = 0) and their product summed over colour."""
    c = w.conv
    m, s = np.asarray(mean)[:, None, None], np.asarray(std)[:, None, None]
    patch = np.clip(c.patch * s + m, 0, 1)
    patch[:, np.all(c.patch == 0, axis=0)] = 0.5  # zero padding outside the image: grey
    f = c.filter / max(float(np.abs(c.filter).max()), 1e-12)
    product = (c.patch * c.filter).sum(axis=0)
    lim = max(float(np.abs(product).max()), 1e-12)
    prod = np.transpose(render.colorize(product, cmap="RdBu_r", vmin=-lim, vmax=lim), (2, 0, 1)) / 255.0
    k = c.patch.shape[-1]
    return render.hstack([
        render.label(_magnified(patch), f"patch {k}x{k}x3", size=24),
        render.label(_magnified(0.5 + 0.5 * f), f"filter {c.channel}", size=24),
        render.label(_magnified(prod), "patch x filter", size=24),
    ], gap=24)


# -------------------------------------------------------------------------------------------------------
# words


def _num(v: float) -> str:
    return f"{v:.6g}"


def _learned_layers(loaded: LoadedModel) -> list[str]:
    return [n for n, m in loaded.module.named_children() if isinstance(m, nn.Conv2d | nn.Linear)]


def _unit_count(loaded: LoadedModel, layer: str) -> int:
    m = loaded.module.get_submodule(layer)
    return m.out_channels if isinstance(m, nn.Conv2d) else cast(nn.Linear, m).out_features


def _image_key(session: Session) -> str:
    """Which image and model a panel was drawn for: a new upload, or the same one on another model, differs."""
    data = session.analysis.input.detach().cpu().numpy().tobytes()
    return f"{session.arch}/{session.device}/{hashlib.sha256(data).hexdigest()[:16]}"


FEATVIS_CAPTION = (
    "**What does this unit want?** The picture is optimised, step by step, to make the unit respond as much as "
    "it can (Lucent's recipe: a smooth Fourier-parameterised image, randomly jittered, scaled and rotated at "
    "every step). Right: the same unit of an **untrained copy** with the same recipe. The recipe makes *any* "
    "network's picture look smooth, so only what differs from the untrained picture was learned.")
EXAMPLES_CAPTION = ("**Dataset examples:** the gallery images whose crop excites the unit most, each cut at the "
                    "unit's exact receptive field (what one position of the channel sees), strongest first.")
NEIGHBOURS_CAPTION = ("**Nearest neighbours** (2012 paper, Figure 4): the gallery images nearest your image in fc7 "
                      "space (the 4096 values before the last layer) beside the nearest in pixel space. fc7 "
                      "neighbours can look different yet mean the same; pixel neighbours share colours and "
                      "layout.")
INSIDE_CAPTION = ("**Inside AlexNet, with this image's numbers.** Click a position on the network's view (left): "
                  "the red square is the 11x11 window one conv1 unit sees. Below: that unit's arithmetic through "
                  "conv1, ReLU, local response normalisation and max pooling, and every layer's output size.")


# -------------------------------------------------------------------------------------------------------
# the handlers


class UnitsHandlers:
    """The two tabs' handlers; ``h`` gives the models (``h.model_for``) and the time limit of slow work.

    ``settings``: the feature visualisation's recipe (the steps come from the page); ``cache``: where pictures
    are kept (default: ``featvis.default_cache_dir()``); ``gallery``: an index file, else the bundled photos.
    """

    def __init__(self, h: H.Handlers, *, settings: Settings | None = None, cache: DiskCache | None = None,
                 gallery: str | Path | None = None, index_dir: Path | None = None, max_twins: int = 1) -> None:
        self.h = h
        self.settings = settings or Settings()
        self.cache = cache if cache is not None else DiskCache()
        self.gallery = Path(gallery) if gallery is not None else _GALLERY
        self.index_dir = index_dir
        self._max_twins = max_twins
        self._twins: OrderedDict[tuple[str, str, int], LoadedModel] = OrderedDict()
        self._indexes: dict[tuple[str, str, str], tuple[GalleryIndex, str]] = {}
        self._lock = threading.Lock()

    # --- shared, built once ----------------------------------------------------------------------------

    def model(self, session: Session | None, arch: str | None, device: str | None, *,
              lane: Lane = "main") -> LoadedModel:
        """The visitor's model: their image's, else the one the dropdowns name (no image is needed to visualise);
        ``lane="slow"`` for the optimisation, so that nobody's analysis waits behind it."""
        if session is not None:
            return self.h.model_for(session, lane=lane)
        return self.h.model_for(None, arch, device, lane=lane)

    def twin(self, loaded: LoadedModel) -> LoadedModel:
        """The untrained copy of ``loaded`` (seeded: the same for every visitor), kept for the next request."""
        key = (loaded.arch, str(loaded.device), loaded.num_classes)
        with self._lock:
            if key in self._twins:
                self._twins.move_to_end(key)
                return self._twins[key]
        twin = untrained_twin(loaded)
        with self._lock:
            self._twins[key] = twin
            while len(self._twins) > self._max_twins:
                self._twins.popitem(last=False)
        return twin

    def index(self, loaded: LoadedModel) -> tuple[GalleryIndex, str]:
        """The gallery index for this model and weights, and a sentence saying where it comes from."""
        key = (loaded.arch, str(loaded.device), weights_fingerprint(loaded.module))
        with self._lock:
            if key in self._indexes:
                return self._indexes[key]
        note = ""
        index = None
        if self.gallery is not None:
            index = GalleryIndex.load(self.gallery)
            if index.arch != loaded.arch or index.fingerprint != key[2]:
                note = (f" (`{self.gallery.name}` was indexed with another model or other weights, so the "
                        "bundled photos are used instead)")
                index = None
            else:
                source = f"the gallery `{self.gallery.name}` ({len(index.paths)} images)"
        if index is None:
            index = assets_index(loaded, cache_dir=self.index_dir)
            source = (f"the {len(index.paths)} bundled example photos in `assets/`{note}; start the app with "
                      "`--gallery FILE` (made by `alexnet-viz index FOLDER`) for a real dataset")
        with self._lock:
            self._indexes[key] = (index, source)
        return index, source

    # --- Units: the controls ---------------------------------------------------------------------------

    def controls(self, session: Session | None, arch: str, device: str, objective: str, layer: str,
                 unit: float, klass: str) -> dict[str, Any]:
        """The choices of the visitor's model (its layers, units and classes), keeping what fits."""
        loaded = self.model(session, arch, device)
        layers = _learned_layers(loaded)
        objective = objective if objective in OBJECTIVES else "channel"
        if objective == "neuron":
            layers = [n for n in layers if isinstance(loaded.module.get_submodule(n), nn.Conv2d)]
        layer = layer if layer in layers else layers[0]
        count = _unit_count(loaded, layer)
        classes = [(f"{name} ({i})", str(i)) for i, name in enumerate(loaded.categories)]
        if session is not None:  # the visitor's top classes first
            top = [str(p.index) for p in session.analysis.top_k]
            classes = sorted(classes, key=lambda c: top.index(c[1]) if c[1] in top else len(top))
        klass = klass if isinstance(klass, str) and klass.isdigit() and int(klass) < loaded.num_classes \
            else classes[0][1]
        is_class = objective == "class"
        return {
            "units_layer": gr.update(choices=layers, value=layer, visible=not is_class),
            "units_unit": gr.update(maximum=count - 1, value=min(max(int(unit or 0), 0), count - 1),
                                    visible=not is_class, label=f"Unit (0-{count - 1})"),
            "units_class": gr.update(choices=classes, value=klass, visible=is_class),
            "units_objective_caption": OBJECTIVES[objective].caption,
        }

    def _target(self, loaded: LoadedModel, objective: str, layer: str, unit: Any, klass: Any) -> tuple[str, int, str]:
        """(layer, unit, words) of what to visualise, every value checked (a client can send anything)."""
        objective = H._choice(objective, "objective", list(OBJECTIVES))
        if objective == "class":
            layer = _learned_layers(loaded)[-1]
            index = int(H._number(klass, "class", 0, loaded.num_classes - 1))
            return layer, index, f"class **{loaded.categories[index]}** ({index})"
        layer = H._choice(layer, "layer", _learned_layers(loaded))
        count = _unit_count(loaded, layer)
        index = int(H._number(unit, "unit", 0, count - 1))
        is_conv = isinstance(loaded.module.get_submodule(layer), nn.Conv2d)
        if objective == "neuron" and not is_conv:
            raise FeatVisError(f"{layer} is fully connected: it has no centre; pick a conv layer or 'Unit or channel'.")
        what = "channel" if is_conv else "unit"
        centre = "the centre neuron of " if objective == "neuron" else ""
        return layer, index, f"{centre}**{layer}** {what} **{index}**"

    # --- Units: feature visualisation (a generator: live pictures) -----------------------------------------

    def visualise(self, session: Session | None, arch: str, device: str, objective: str, layer: str, unit: Any,
                  klass: Any, steps: Any, *, progress: Callable[[float, str], None] | None = None
                  ) -> Iterator[dict[str, Any]]:
        """Live pictures of the unit, then of the same unit of the untrained copy; the last update says how
        strongly each picture drives its unit. Bounded by the handlers' time limit; cached results are instant."""
        loaded = self.model(session, arch, device, lane="slow")
        layer, index, words = self._target(loaded, objective, layer, unit, klass)
        settings = replace(self.settings, steps=int(H._number(steps, "steps", STEPS[0], STEPS[1])))
        twin = self.twin(loaded)
        started, event = time.monotonic(), H._current_event()
        limit = self.h.time_limit_s

        def bounded(offset: float, share: float) -> Callable[[float, str], None]:
            def check(fraction: float, message: str) -> None:
                if fraction < 1.0 and time.monotonic() - started > limit:
                    raise FeatVisError(f"The picture took longer than {limit:g} s and was stopped; choose fewer "
                                       "steps and try again.")
                if H._event_gone(event):
                    raise FeatVisError("The request was cancelled, so the picture was stopped.")
                if progress is not None:
                    progress(offset + share * fraction, message)
            return check

        yield {"units_trained": None, "units_untrained": None,
               "units_info": f"Optimising a picture for {words} of the trained model ({settings.steps} steps) ..."}
        results = []
        for n, (model, who, key) in enumerate(((loaded, "trained", "units_trained"),
                                               (twin, "untrained copy", "units_untrained"))):
            for frame in visualize_iter(model, layer, index, objective=objective, settings=settings, every=EVERY,
                                        cache=self.cache, progress=bounded(n / 2, 1 / 2)):
                if frame.results is None:
                    yield {key: _big(frame.images[0]),
                           "units_info": f"{words}, {who}: step {frame.step} of {frame.steps}, objective "
                                         f"{frame.values[0]:.3g}"}
                else:
                    results.append(frame.results[0])
                    yield {key: _big(frame.images[0])}
        trained, untrained = results
        where = "from the cache" if trained.cached and untrained.cached else \
            f"{trained.seconds + untrained.seconds:.1f} s"
        weights = loaded.weights.description
        yield {"units_info": (
            f"{words}: the trained model's picture drives it to **{trained.value:.3g}**; the untrained copy's "
            f"picture drives *its* unit to **{untrained.value:.3g}** ({settings.steps} steps, {where}; "
            f"{OBJECTIVES[objective].title.lower()} objective; model: "
            f"{weights}).")}

    # --- Units: dataset examples and neighbours ------------------------------------------------------------

    def examples(self, session: Session | None, arch: str, device: str, objective: str, layer: str,
                 unit: Any) -> dict[str, Any]:
        """The strongest gallery crops of the chosen conv channel (independent of the visitor's image)."""
        loaded = self.model(session, arch, device)
        if objective == "class" or layer not in loaded.conv_layers:
            return {"units_examples": None,
                    "units_examples_info": "Dataset examples are shown for conv channels: a fully connected "
                                           "unit sees the whole image, so there is no crop to cut."}
        channel = int(H._number(unit, "unit", 0, _unit_count(loaded, layer) - 1))
        index, source = self.index(loaded)
        crops = top_crops(index, loaded, layer, channel)
        if not crops:
            return {"units_examples": None, "units_examples_info": f"The gallery ({source}) has no images."}
        rf = index.fields[layer]
        pictures = [(crop, f"{hit.path.stem[:12]}: {hit.value:.3g}") for crop, hit in crops]
        fewer = f" (only {len(crops)}: the gallery is small)" if len(crops) < 9 else ""
        return {"units_examples": _crops_picture(pictures),
                "units_examples_info": (
                    f"**{layer}** channel **{channel}**: its {len(crops)} strongest gallery crops{fewer}, each "
                    f"{rf.size}x{rf.size} px of the network's input (stride {rf.stride}; grey: padding outside "
                    f"the image), with the channel's value there (before its ReLU). From {source}.")}

    def neighbours(self, session: Session | None) -> dict[str, Any]:
        session = H._need(session)
        loaded = self.h.model_for(session)
        index, source = self.index(loaded)
        found = neighbours(index, loaded, session.analysis.input, k=6)
        rows = [("Nearest in fc7 space", [(network_view(loaded, n.path), f"{n.distance:.2f}") for n in found.fc7]),
                ("Nearest in pixel space", [(network_view(loaded, n.path), f"{n.distance:.2f}")
                                            for n in found.pixels])]
        return {"units_neighbours": _neighbours_picture(rows), "units_stamp": _image_key(session),
                "units_neighbours_info": f"Distances under each picture (Euclidean). From {source}."}

    def refresh_neighbours(self, session: Session | None, stamp: str | None) -> dict[str, Any]:
        """A new image or model: redraw the neighbours if the visitor has looked at them (``stamp`` set),
        else leave the tab alone (an upload costs nothing here until the tab is opened)."""
        if session is None or stamp is None or stamp == _image_key(session):
            return {}
        return self.neighbours(session)

    def open_units(self, session: Session | None, stamp: str | None) -> dict[str, Any]:
        """The tab opened: the neighbours of the visitor's image, unless on screen already; "" marks the tab as
        opened before any image, so that the first image fills it."""
        if session is None:
            return {"units_stamp": ""} if stamp is None else {}
        if stamp == _image_key(session):
            return {}
        return self.neighbours(session)

    # --- Inside AlexNet ---------------------------------------------------------------------------------------

    def inside(self, session: Session | None, channel: Any, position: Sequence[int] | None) -> dict[str, Any]:
        """The walkthrough at ``position`` (conv1 row, column; None: the map's centre) for ``channel``."""
        session = H._need(session)
        loaded = self.h.model_for(session)
        conv1 = loaded.conv1
        c = int(H._number(channel, "filter", 0, conv1.out_channels - 1))
        if position is None:  # this filter's strongest position on the image: ReLU and pooling keep a value there
            act = session.analysis.activations["conv1"][c]  # (h, w)
            position = divmod(int(act.argmax()), act.shape[1])
        y, x = int(position[0]), int(position[1])
        w = walkthrough(loaded, session.analysis.input, channel=c, y=y, x=x)
        out = {
            "inside_view": _view_picture(session.analysis.view, w.conv.box),
            "inside_pictures": _conv_pictures(w, loaded.mean, loaded.std),
            "inside_conv": conv_markdown(w),
            "inside_block": block_markdown(w, loaded),
            "inside_sizes": sizes_markdown(w),
            "inside_position": [w.conv.y, w.conv.x],
            "inside_stamp": _image_key(session),
            "inside_channel": gr.update(maximum=conv1.out_channels - 1, value=c),
        }
        if w.towers is not None:
            a, b = (export.conv1_grid(t) for t in w.towers.filters)
            out["inside_towers"] = gr.update(value=render.hstack([render.label(a, "tower 1 (GPU 1)", size=26),
                                                                  render.label(b, "tower 2 (GPU 2)", size=26)],
                                                                 gap=40), visible=True)
        else:
            out["inside_towers"] = gr.update(value=None, visible=False)
        return out

    def inside_click(self, session: Session | None, channel: Any, evt: gr.SelectData) -> dict[str, Any]:
        session = H._need(session)
        loaded = self.h.model_for(session)
        index = evt.index if isinstance(evt.index, list | tuple) and len(evt.index) == 2 else None
        if index is None:
            raise H._refuse("Click on the picture to pick a position.")
        col, row = (float(v) / VIEW_SCALE for v in index)
        return self.inside(session, channel, conv1_position(loaded, row, col))

    def refresh_inside(self, session: Session | None, stamp: str | None) -> dict[str, Any]:
        """A new image or model: its strongest conv1 filter at its strongest position, if the visitor has opened
        the tab (``stamp`` set); else nothing (an upload costs nothing here until the tab is opened)."""
        if session is None or stamp is None or stamp == _image_key(session):
            return {}
        return self.inside(session, export.strongest_channel(session.analysis.activations["conv1"]), None)

    def open_inside(self, session: Session | None, stamp: str | None) -> dict[str, Any]:
        if session is None:
            return {"inside_stamp": ""} if stamp is None else {}
        if stamp == _image_key(session):
            return {}
        return self.inside(session, export.strongest_channel(session.analysis.activations["conv1"]), None)


# -------------------------------------------------------------------------------------------------------
# the numbers as Markdown


def conv_markdown(w: Walkthrough) -> str:
    c = w.conv
    k = c.patch.shape[-1]
    top, left, bottom, right = c.box
    pad = " (partly in the zero padding)" if top < 0 or left < 0 or bottom > w.input_size or right > w.input_size \
        else ""
    return (
        f"**conv1, filter {c.channel}, at position (row {c.y}, column {c.x})** of its output map, which sees input "
        f"rows {top}-{bottom - 1} and columns {left}-{right - 1}{pad}.\n\n"
        "| step | value |\n|---|---:|\n"
        f"| dot product: the sum of patch x filter over {c.patch.size} numbers ({k}x{k}x3) | {_num(c.dot)} |\n"
        f"| + bias | {_num(c.bias)} |\n"
        f"| **= by hand** | **{_num(c.value)}** |\n"
        f"| the network's conv1 output there | **{_num(c.model_value)}** |\n"
        f"| difference | {abs(c.value - c.model_value):.1e} |\n")


def block_markdown(w: Walkthrough, loaded: LoadedModel) -> str:
    r, p = w.relu, w.pool
    parts = [f"**{r.layer} (ReLU)**: max(0, {_num(r.before)}) = **{_num(r.after)}**. Over the whole conv1 output it "
             f"set **{r.zeroed:,}** of {r.total:,} values to zero ({r.zeroed / max(r.total, 1):.0%}): every negative "
             "one."]
    if w.lrn is not None:
        n = w.lrn
        cells = " | ".join(str(j) for j in n.window)
        vals = " | ".join(_num(float(v)) for v in n.values)
        parts.append(
            f"**{n.layer} (local response normalisation)** with the paper's constants k = {n.k:g}, n = {n.n}, "
            f"alpha = {n.alpha:g}, beta = {n.beta:g}: channel {n.channel} is divided by its {len(n.window)} "
            "neighbours' energy at this position.\n\n"
            f"| channel | {cells} |\n|---|{'---:|' * len(n.window)}\n| a (after ReLU) | {vals} |\n\n"
            f"sum of squares = {_num(n.sum_squares)}; denominator (k + alpha x sum)^beta = {_num(n.denominator)}; "
            f"b = {_num(float(n.values[n.window.index(n.channel)]))} / {_num(n.denominator)} = **{_num(n.value)}** "
            f"(the network: {_num(n.model_value)}).")
    else:
        parts.append(f"**No LRN** in {w.arch}: choose the `paper` architecture to see local response normalisation.")
    rows = "\n".join("| " + " | ".join((f"**{_num(float(v))}**" if (i, j) == p.argmax else _num(float(v)))
                                       for j, v in enumerate(row)) + " |" for i, row in enumerate(p.window))
    pool = cast(nn.MaxPool2d, loaded.module.get_submodule(p.layer))
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
    kw = p.window.shape[1]
    overlap = (f"overlapping: windows {stride} apart share {k - stride} row and column" if k > stride
               else "windows do not overlap")
    parts.append(
        f"**{p.layer} (max pooling, {k}x{k}, stride {stride}: {overlap})**: output (row {p.y}, column {p.x}) "
        f"takes the maximum of rows {p.rows[0]}-{p.rows[1] - 1} and columns {p.cols[0]}-{p.cols[1] - 1} of "
        f"channel {p.channel} of {w.relu.layer if w.lrn is None else w.lrn.layer}'s output.\n\n"
        + "| " + " | ".join([" "] * kw) + " |\n|" + "---:|" * kw + "\n" + rows +
        f"\n\nthe maximum: **{_num(p.value)}** (the network: {_num(p.model_value)}).")
    if w.dropout is not None:
        d = w.dropout
        parts.append(
            f"**{d.layer} (dropout, p = {d.p:g})** on this image's first {len(d.values)} values going in. In "
            f"training each is dropped with probability {d.p:g} and the kept ones are multiplied by "
            f"1 / (1 - p) = {1 / (1 - d.p):g}, so the expected value is unchanged; at evaluation (what this app "
            "runs) dropout does nothing.\n\n"
            "| | " + " | ".join(str(i) for i in range(len(d.values))) + " |\n|---|" + "---:|" * len(d.values) + "\n"
            "| going in | " + " | ".join(f"{v:.3g}" for v in d.values) + " |\n"
            "| training (one draw) | " + " | ".join(f"{v:.3g}" for v in d.train) + " |\n"
            "| evaluation | " + " | ".join(f"{v:.3g}" for v in d.eval) + " |")
    return "\n\n".join(parts)


def sizes_markdown(w: Walkthrough) -> str:
    rows = "\n".join(
        f"| {r.layer} | {r.type} | {'x'.join(map(str, r.out_shape))} | {r.formula or ''} | {r.params:,} |"
        for r in w.sizes)
    total = sum(r.params for r in w.sizes)
    links = ""
    if w.towers is not None:
        links = ("\n\n**Two towers (paper-2gpu):** each GPU held half of every layer's filters. "
                 + "; ".join(f"{layer}: {how}" for layer, how in w.towers.links) + ".")
    return (f"**Output sizes**: floor((n + 2 x padding - kernel) / stride) + 1 for every conv and pool. "
            f"{w.input_note}\n\n| layer | type | output | arithmetic | parameters |\n|---|---|---|---|---:|\n{rows}\n"
            f"| **total** | | | | **{total:,}** |{links}")


# -------------------------------------------------------------------------------------------------------
# the tabs


def _streamed(page: Any, fn: Callable[..., Iterator[dict[str, Any]]], what: str) -> Callable[..., Any]:
    """A generator event: each ``{name: value}`` update becomes ``{component: value}`` with pictures as PNG files;
    a UserError becomes its sentence, anything else a logged bug and a generic one (as ``handlers.friendly``)."""
    done = object()

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Iterator[Any]:
        updates = H.friendly(what)(fn)(*args, **kwargs)
        step = H.friendly(what)(lambda: next(updates, done))
        while (out := step()) is not done:
            yield as_png_files(lambda out=out: {page.c[k]: v for k, v in out.items()})()

    return run


_shared: weakref.WeakKeyDictionary[H.Handlers, UnitsHandlers] = weakref.WeakKeyDictionary()


def shared(h: H.Handlers) -> UnitsHandlers:
    """One :class:`UnitsHandlers` per page (both tabs share its twin and gallery caches)."""
    if h not in _shared:
        _shared[h] = UnitsHandlers(h)
    return _shared[h]


def add_units_tab(page: Any, h: H.Handlers, pool: ModelPool, *, units: UnitsHandlers | None = None) -> None:
    u = units or shared(h)
    c, on = page.c, page.on
    loaded = pool.default
    layers = _learned_layers(loaded)
    with gr.Tab("Units", id="units") as tab:
        gr.Markdown(FEATVIS_CAPTION, elem_classes="caption")
        with gr.Row(equal_height=False):
            c["units_objective"] = gr.Dropdown([(o.title, o.name) for o in OBJECTIVES.values()], value="channel",
                                               label="Objective", elem_id="units-objective", scale=1)
            c["units_layer"] = gr.Dropdown(layers, value=loaded.conv_layers[-1],
                                           label="Layer", elem_id="units-layer", scale=1)
            c["units_unit"] = gr.Slider(0, _unit_count(loaded, loaded.conv_layers[-1]) - 1, value=0, step=1,
                                        label="Unit", elem_id="units-unit", scale=2)
            c["units_class"] = gr.Dropdown([(f"{n} ({i})", str(i)) for i, n in enumerate(loaded.categories)],
                                           value="0", label="Class (type to search)", filterable=True,
                                           visible=False, elem_id="units-class", scale=2)
            c["units_steps"] = gr.Slider(*STEPS[:2], value=STEPS[2], step=16, label="Steps", elem_id="units-steps",
                                         scale=1)
            c["units_run"] = gr.Button("Visualise", variant="primary", elem_id="units-run", scale=0, min_width=140)
        c["units_objective_caption"] = gr.Markdown(OBJECTIVES["channel"].caption, elem_classes="caption")
        c["units_info"] = gr.Markdown("Pick a unit and press **Visualise** (no image needed).", elem_id="units-info")
        with gr.Row(equal_height=False):
            c["units_trained"] = _picture("This model", elem_id="units-trained")
            c["units_untrained"] = _picture("Untrained copy (same recipe)", elem_id="units-untrained")
        gr.Markdown(EXAMPLES_CAPTION, elem_classes="caption")
        c["units_examples_info"] = gr.Markdown(elem_id="units-examples-info")
        c["units_examples"] = _picture("Dataset examples", elem_id="units-examples", height=740)
        gr.Markdown(NEIGHBOURS_CAPTION, elem_classes="caption")
        c["units_neighbours_info"] = gr.Markdown("Give an image to see its neighbours.",
                                                 elem_id="units-neighbours-info")
        c["units_neighbours"] = _picture("Nearest neighbours", elem_id="units-neighbours", height=540)
        c["units_stamp"] = gr.State(None)  # the image the neighbours were drawn for; None: tab never opened

    model_in = ["session", "arch", "device"]
    controls_out = ["units_layer", "units_unit", "units_class", "units_objective_caption"]
    pick_in = [*model_in, "units_objective", "units_layer", "units_unit"]
    pick_out = ["units_examples", "units_examples_info"]

    def pick(*args: Any) -> dict[str, Any]:
        """A new objective, layer or model: the controls that fit it, the dataset examples, the old pictures gone."""
        session, arch, device, objective, layer, unit = args
        out = H.friendly("choosing the unit")(u.controls)(session, arch, device, objective, layer, unit, None)
        layer = out["units_layer"]["value"]
        unit = out["units_unit"]["value"]
        return {**out, **H.friendly("finding dataset examples")(u.examples)(session, arch, device, objective, layer,
                                                                             unit),
                "units_trained": None, "units_untrained": None, "units_info": "Press **Visualise**."}

    picked = [*controls_out, *pick_out, "units_trained", "units_untrained", "units_info"]
    on([c["units_objective"].input, c["units_layer"].input, c["banner"].change], pick, pick_in, picked,
       api_visibility="private", trigger_mode="always_last")
    # One listener per trigger where one is always_last (see Page.follow for why).
    find_examples = H.friendly("finding dataset examples")(u.examples)

    def new_unit(*args: Any) -> dict[str, Any]:
        """Another unit: its dataset examples; the pictures of the old one gone."""
        return {**find_examples(*args), "units_trained": None, "units_untrained": None}

    on([c["units_unit"].release], new_unit, pick_in, [*pick_out, "units_trained", "units_untrained"],
       api_visibility="private", trigger_mode="always_last")
    on([c["units_class"].input], lambda: {"units_trained": None, "units_untrained": None},
       [], ["units_trained", "units_untrained"], api_visibility="private", **INSTANT)

    def visualise(session: Any, arch: str, device: str, objective: str, layer: str, unit: Any, klass: Any, steps: Any,
                  progress: gr.Progress = gr.Progress()) -> Iterator[dict[str, Any]]:  # noqa: B008
        return u.visualise(session, arch, device, objective, layer, unit, klass, steps,
                           progress=H.progress_adapter(progress))

    run_out = ["units_trained", "units_untrained", "units_info"]
    gr.on([c["units_run"].click], _streamed(page, visualise, "visualising the unit"),
          [c[n] for n in [*model_in, "units_objective", "units_layer", "units_unit", "units_class", "units_steps"]],
          [c[n] for n in run_out], api_visibility="private", concurrency_id="slow-attributions",
          concurrency_limit=1, show_progress_on=[c["units_info"]])
    nb_out = ["units_neighbours", "units_neighbours_info", "units_stamp"]
    page.follow(u.refresh_neighbours, ["session", "units_stamp"], nb_out)

    def open_tab(session: Any, stamp: Any, *args: Any) -> dict[str, Any]:
        """The tab opened: the neighbours of the visitor's image (unless on screen) and the unit's examples."""
        return {**u.open_units(session, stamp), **find_examples(session, *args)}

    on([tab.select], open_tab, ["session", "units_stamp", *pick_in[1:]], [*nb_out, *pick_out],
       api_visibility="private", trigger_mode="always_last")


def add_inside_tab(page: Any, h: H.Handlers, pool: ModelPool, *, units: UnitsHandlers | None = None) -> None:
    u = units or shared(h)
    c, on = page.c, page.on
    loaded = pool.default
    with gr.Tab("Inside AlexNet", id="inside") as tab:
        gr.Markdown(INSIDE_CAPTION, elem_classes="caption")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=480):
                c["inside_view"] = _picture("The network's view (click a position)", elem_id="inside-view")
                c["inside_channel"] = gr.Slider(0, loaded.conv1.out_channels - 1, value=0, step=1,
                                                label="conv1 filter", elem_id="inside-channel")
            with gr.Column(scale=1, min_width=480):
                c["inside_pictures"] = _picture("Patch, filter and their product", elem_id="inside-pictures",
                                                show_label=False)  # the picture carries its own titles
                c["inside_conv"] = gr.Markdown("Give an image first.", elem_id="inside-conv")
        c["inside_block"] = gr.Markdown(elem_id="inside-block")
        c["inside_towers"] = _picture("conv1 filters of each tower", elem_id="inside-towers", visible=False)
        c["inside_sizes"] = gr.Markdown(elem_id="inside-sizes")
        c["inside_position"] = gr.State(None)  # [row, column] of conv1 shown; None: the centre
        c["inside_stamp"] = gr.State(None)  # the image the numbers are for; None: tab never opened

    out = ["inside_view", "inside_pictures", "inside_conv", "inside_block", "inside_sizes", "inside_position",
           "inside_stamp", "inside_channel", "inside_towers"]
    on([tab.select], H.friendly("opening the tab")(u.open_inside), ["session", "inside_stamp"], out,
       api_visibility="private")
    page.follow(H.friendly("following the new image")(u.refresh_inside), ["session", "inside_stamp"], out)
    on([c["inside_view"].select], H.friendly("picking a position")(u.inside_click), ["session", "inside_channel"], out,
       api_visibility="private")
    on([c["inside_channel"].release], H.friendly("following the filter")(u.inside),
       ["session", "inside_channel", "inside_position"], out, api_visibility="private", trigger_mode="always_last")


def _picture(label: str, **kwargs: Any) -> gr.Image:  # layout.picture, imported late: layout imports this module
    from .layout import picture

    return picture(label, **kwargs)
