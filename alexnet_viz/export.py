"""What the page shows and what `alexnet-viz analyze` writes, drawn by one set of functions.

A :class:`Scene` holds the settings of every panel (layer, channel, colour map, opacity, methods, ...).
The page draws each panel with the ``*_picture`` functions below, and its Download button and the CLI
write the same pictures under the same file names with one JSON schema::

    scene = Scene(layers=("conv5",), channel=12, methods=("saliency",))
    files = pictures(loaded, analysis, attributions, scene)   # {"input.png": PIL, "features_conv5.png": ...}
    meta = result_json(loaded, analysis, attributions, scene, files=files)
    write_zip(path, files, meta)  or  write_folder(folder, files, meta)

So a zip from the page and a folder from the CLI, made with the same settings, hold the same names and keys
(a test checks it), and ``result.json`` holds every setting needed to draw them again.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from . import render

if TYPE_CHECKING:
    from .analysis import Analysis
    from .attribution import Attribution
    from .model import LoadedModel

__all__ = [
    "DISPLAY_SIDE",
    "PNG_LEVEL",
    "SCHEMA",
    "Scene",
    "attribution_picture",
    "channel_picture",
    "compare_picture",
    "compare_title",
    "conv1_grid",
    "display",
    "filter_map_picture",
    "filters_picture",
    "layer_picture",
    "pictures",
    "result_json",
    "ringed_unit",
    "strongest_channel",
    "strongest_picture",
    "to_json",
    "top_k_picture",
    "write_folder",
    "write_zip",
]

SCHEMA = 1  # result.json's "schema": raise it when a key changes meaning
DISPLAY_SIDE = 640  # overlays are drawn at ~3x the network's input so that they read on a projector
PNG_LEVEL = 1  # zlib level of every picture: level 6 costs ~5x the time for ~20% fewer bytes
FILTER_TILE = 88  # px per conv1 filter (11x11 filters x 8, 3x3 x 29): a grid of 64 is 720 px wide
COMPARE_PER_ROW = 4  # Compare: at most this many methods a row, so each tile stays >= 300 px on a projector
COMPARE_TILE = 320


@dataclass(frozen=True)
class Scene:
    """The settings behind every picture; ``None`` means "the strongest on this image"."""

    layers: tuple[str, ...] = ("conv1",)  # feature grids drawn (the page: the one chosen)
    sort: bool = False  # channels ordered by mean activation
    cmap: str = "viridis"  # feature maps' colour map
    channel: int | None = None  # the channel shown over the image (the first layer of `layers` if conv; if fc,
    # the unit ringed in its strip)
    opacity: float = 0.7  # of channel and filter maps over the image
    filter: int | None = None  # the conv1 filter whose map is shown over the image
    methods: tuple[str, ...] = ()  # attribution maps drawn, in order
    attr_alpha: float = 0.6
    attr_cmap: str = "auto"  # "auto": diverging for signed methods, inferno otherwise
    compare: tuple[str, ...] = ()  # methods side by side, one scale

    def settings(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------------------
# one function per panel


def display(analysis: Analysis) -> Image.Image:
    """The network's view (the 224 px centre crop), enlarged for the screen; maps are upsampled onto it."""
    return analysis.view.resize((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BICUBIC)


def top_k_picture(analysis: Analysis) -> Image.Image:
    return render.top_k_chart([p.label for p in analysis.top_k], [p.probability for p in analysis.top_k])


def filters_picture(loaded: LoadedModel, *, selected: int | None = None) -> Image.Image:
    """conv1's filters as one grid (``selected`` outlined)."""
    return conv1_grid(loaded.conv1.weight, selected=selected)


def conv1_grid(weight: Any, *, selected: int | None = None) -> Image.Image:
    """First-layer filters (C, 3, k, k), each magnified to ~``FILTER_TILE`` px, numbered."""
    scale = max(1, FILTER_TILE // int(weight.shape[-1]))
    return render.filter_grid(weight, scale=scale, numbers=True, selected=selected)


def strongest_channel(act: Any) -> int:
    """The channel (C, H, W) or unit (F,) with the largest mean activation."""
    return int(act.mean(dim=(1, 2)).argmax()) if act.ndim == 3 else int(act.argmax())


def filter_map_picture(analysis: Analysis, index: int, *, opacity: float = 0.7) -> Image.Image:
    """conv1's output channel ``index`` over the image: where that filter responds."""
    return render.channel_overlay(display(analysis), analysis.activations["conv1"][index], alpha=opacity,
                                  colorbar=True, bar_label=f"conv1 channel {index}: activation")


def layer_picture(analysis: Analysis, layer: str, *, sort: bool = False, cmap: str = "viridis",
                  selected: int | None = None, labels: Sequence[str] | None = None) -> tuple[Image.Image, list[int]]:
    """A conv layer's channels as one grid (and the channel drawn in each tile), or an fc layer's vector."""
    act = analysis.activations[layer]
    if act.ndim == 1:  # class names only for the output layer
        names = labels if labels is not None and len(labels) == act.shape[0] else None
        return (render.vector_panel(act, labels=names, cmap=cmap, selected=selected, bar_label=f"{layer} activation"),
                list(range(act.shape[0])))
    return render.feature_grid(act, sort=sort, cmap=cmap, numbers=True, selected=selected)


def channel_picture(analysis: Analysis, layer: str, channel: int, *, opacity: float = 0.7,
                    cmap: str = "viridis") -> Image.Image:
    """One channel of a conv layer, upsampled over the image."""
    return render.channel_overlay(display(analysis), analysis.activations[layer][channel], alpha=opacity, cmap=cmap,
                                  colorbar=True, bar_label=f"{layer} channel {channel}: activation")


def strongest_picture(loaded: LoadedModel, analysis: Analysis, *, cmap: str = "viridis") -> Image.Image:
    return render.strongest_channels_strip({n: analysis.activations[n] for n in loaded.conv_layers}, cmap=cmap)


def attribution_picture(analysis: Analysis, attr: Attribution, *, alpha: float = 0.6,
                        cmap: str = "auto") -> Image.Image:
    """The map over the image with its colour bar. Signed maps: opacity follows |value|, so the photo stays
    visible where the map is near 0; the scale ends at the 99.5th percentile of |value| (a few extreme pixels
    would otherwise make the whole map faint)."""
    from .attribution import METHODS

    vmax = max(render.shared_vmax([attr.heatmap], signed=attr.signed, percentile=99.5), 1e-12)
    title = METHODS[attr.method].title if attr.method in METHODS else attr.method
    return render.attribution_overlay(display(analysis), attr.heatmap, alpha=alpha,
                                      cmap=None if cmap == "auto" else cmap, signed=attr.signed, vmax=vmax,
                                      opacity="magnitude" if attr.signed else "uniform", colorbar=True,
                                      bar_label=f"{title} attribution")


def compare_title(attr: Attribution) -> str:
    """A Compare tile's title: the method, and the layer it was computed on for layer methods (Grad-CAM)."""
    from .attribution import METHODS

    title = METHODS[attr.method].title if attr.method in METHODS else attr.method
    return title + (f" on {attr.layer}" if attr.layer else "")


def compare_picture(analysis: Analysis, attrs: Sequence[Attribution], *, alpha: float = 0.6) -> Image.Image:
    """Methods side by side on one scale: each map divided by its own 99.5th percentile of |value|."""
    base = analysis.view.resize((COMPARE_TILE, COMPARE_TILE), Image.Resampling.BICUBIC)
    tiles = []
    for attr in attrs:
        title = compare_title(attr)
        scale = max(render.shared_vmax([attr.heatmap], signed=attr.signed, percentile=99.5), 1e-12)
        heat = (attr.heatmap / scale).clamp(-1, 1)
        tiles.append(render.label(render.attribution_overlay(base, heat, alpha=alpha, signed=True, vmax=1.0,
                                                             opacity="magnitude"), title, size=22))
    grid = render.tile_rows(tiles, COMPARE_PER_ROW)
    bar = render.colorbar("RdBu_r", vmin=-1, vmax=1, width=min(640, grid.width),
                          label="attribution / its 99.5th percentile")
    return render.vstack([grid, bar])


# ---------------------------------------------------------------------------------------------------------
# the whole scene as files


def _resolved(analysis: Analysis, scene: Scene) -> tuple[int, dict[str, int]]:
    """The filter and, per conv layer drawn, the channel shown over the image (the strongest by default)."""
    conv1 = analysis.activations["conv1"]
    filt = strongest_channel(conv1) if scene.filter is None else scene.filter
    channels: dict[str, int] = {}
    for i, layer in enumerate(scene.layers):
        act = analysis.activations[layer]
        if act.ndim == 3:
            chosen = scene.channel if (i == 0 and scene.channel is not None) else strongest_channel(act)
            channels[layer] = min(max(int(chosen), 0), act.shape[0] - 1)
    return filt, channels


def ringed_unit(analysis: Analysis, scene: Scene, layer: str) -> int | None:
    """The unit ringed in an fc layer's strip: ``scene.channel`` when that layer is the first drawn."""
    act = analysis.activations[layer]
    first = bool(scene.layers) and scene.layers[0] == layer
    ok = act.ndim == 1 and first and scene.channel is not None and 0 <= scene.channel < act.shape[0]
    return scene.channel if ok else None


def pictures(loaded: LoadedModel, analysis: Analysis, attributions: Mapping[str, Attribution],
             scene: Scene) -> dict[str, Image.Image]:
    """Every picture of ``scene``, by file name. ``attributions`` must hold each method in ``scene.methods``
    and ``scene.compare``."""

    filt, channels = _resolved(analysis, scene)
    files = {
        "input.png": analysis.view,
        "top_k.png": top_k_picture(analysis),
        "filters_conv1.png": filters_picture(loaded, selected=filt),
        "filter_map.png": filter_map_picture(analysis, filt, opacity=scene.opacity),
        "strongest_channels.png": strongest_picture(loaded, analysis, cmap=scene.cmap),
    }
    for layer in scene.layers:
        selected = channels.get(layer, ringed_unit(analysis, scene, layer))
        files[f"features_{layer}.png"] = layer_picture(analysis, layer, sort=scene.sort, cmap=scene.cmap,
                                                       selected=selected, labels=loaded.categories)[0]
        if layer in channels:
            files[f"channel_{layer}.png"] = channel_picture(analysis, layer, channels[layer], opacity=scene.opacity,
                                                            cmap=scene.cmap)
    for method in scene.methods:
        files[f"attribution_{method}.png"] = attribution_picture(analysis, attributions[method],
                                                                 alpha=scene.attr_alpha, cmap=scene.attr_cmap)
    if scene.compare:
        files["compare.png"] = compare_picture(analysis, [attributions[m] for m in scene.compare],
                                               alpha=scene.attr_alpha)
    return files


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def result_json(loaded: LoadedModel, analysis: Analysis, attributions: Mapping[str, Attribution], scene: Scene, *,
                files: Mapping[str, Any], image: str | None = None) -> dict[str, Any]:
    """``result.json``: the model, the predictions, every layer's shape, the scene's settings (resolved), each
    attribution's target and options, and the file list. Strict JSON: a non-finite number becomes null."""
    filt, channels = _resolved(analysis, scene)
    shown = dict.fromkeys([*scene.methods, *scene.compare])
    return {
        "schema": SCHEMA,
        "image": image,
        "model": {"arch": loaded.arch, "device": str(loaded.device), "num_classes": loaded.num_classes,
                  "input_size": loaded.input_size,
                  "weights": {"source": loaded.weights.source, "description": loaded.weights.description,
                              "trained": loaded.weights.trained, "warning": loaded.weights.warning}},
        "top_k": [{"index": p.index, "label": p.label, "probability": _finite(p.probability)}
                  for p in analysis.top_k],
        "layers": {name: {"shape": list(a.shape), "zeros": round(analysis.sparsity(name), 6)}
                   for name, a in analysis.activations.items()},
        "settings": {**scene.settings(), "filter": filt, "channels": channels},
        "attributions": {m: _attribution_json(loaded, attributions[m]) for m in shown},
        "timings_ms": {k: round(v * 1000, 2) for k, v in analysis.timings.items()},
        "files": sorted([*files, "result.json"]),
    }


def _attribution_json(loaded: LoadedModel, attr: Attribution) -> dict[str, Any]:
    delta = attr.convergence_delta
    return {"target": attr.target, "label": loaded.categories[attr.target], "layer": attr.layer,
            "options": dict(attr.options), "signed": attr.signed, "seconds": round(attr.seconds, 4),
            "convergence_delta": None if delta is None else _finite(delta)}


def to_json(meta: Mapping[str, Any]) -> str:
    """Strict JSON (``allow_nan=False``): a NaN here is a bug, not a file other programs cannot read."""
    return json.dumps(meta, indent=2, allow_nan=False)


def write_folder(folder: Path, files: Mapping[str, Image.Image], meta: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, picture in files.items():
        picture.save(folder / name, format="PNG", compress_level=PNG_LEVEL)
    (folder / "result.json").write_text(to_json(meta), encoding="utf-8")


def write_zip(path: Path, files: Mapping[str, Image.Image], meta: Mapping[str, Any]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for name, picture in files.items():
            with z.open(name, "w") as f:
                picture.save(f, format="PNG", compress_level=PNG_LEVEL)
        z.writestr("result.json", to_json(meta))

