"""Pure, fast rendering: tensors and arrays in, RGB PIL images out.

Nothing here knows about models, hooks or gradio. All channels of a layer become one image, never one
matplotlib subplot per channel (that costs seconds a layer): values are quantised to 256 levels and
looked up in a colormap table that matplotlib builds once per name. numpy only touches the small arrays
(the maps themselves); everything projector-sized is made by Pillow in C: the lookup as a palette image
("P" -> "RGB") and the magnification as nearest-neighbour resizes of whole bands. Large numpy temporaries
cost more in page faults than in arithmetic (the same 1300 px grid gathered in numpy took 3-4x as long).

Inputs may be numpy arrays or torch tensors (anything with `.detach()`); torch is never imported here.
Text uses the DejaVu Sans fonts that matplotlib ships (every glyph the page uses: "×", "–", "→", "≥",
accents), so nothing is fetched at runtime; Pillow's bundled font is only a fallback if they are missing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BAR_COLOR",
    "MAC_COLOR",
    "PARAM_COLOR",
    "SELECT_COLOR",
    "WHITE",
    "Opacity",
    "Unit",
    "attribution_overlay",
    "channel_overlay",
    "colorbar",
    "colorize",
    "colormap_lut",
    "feature_grid",
    "filter_grid",
    "format_probabilities",
    "format_probability",
    "grid_layout",
    "heatmap_image",
    "hstack",
    "label",
    "share_chart",
    "shared_vmax",
    "strongest_channels_strip",
    "strongest_units",
    "tile_at",
    "tile_rows",
    "to_uint8",
    "top_k_chart",
    "vector_panel",
    "vector_strip",
    "vector_unit_at",
    "vstack",
]

ArrayLike: TypeAlias = Any  # a numpy array, a torch tensor, or anything np.asarray takes
RGB: TypeAlias = tuple[int, int, int]
Font: TypeAlias = "ImageFont.FreeTypeFont | ImageFont.ImageFont"

WHITE: RGB = (255, 255, 255)
BAR_COLOR: RGB = (31, 119, 180)  # top_k_chart's bars (matplotlib's tab:blue, readable on projectors)
PARAM_COLOR: RGB = (31, 119, 180)  # share_chart: parameters (tab:blue)
MAC_COLOR: RGB = (255, 127, 14)  # share_chart: compute (tab:orange)
_INK: RGB = (34, 34, 34)  # text: near-black is softer than pure black on bright projectors
# feature_grid's default width band: fills a 1280x720 projector; wider only costs memory and time.
_GRID_MIN_WIDTH = 1000
_GRID_MAX_WIDTH = 1400
_MIN_TEXT = 22  # px; smaller text is unreadable from the back of a lecture hall


# ---------------------------------------------------------------------------------------------------------
# conversions


def _as_numpy(x: ArrayLike) -> np.ndarray:
    """Return `x` as a float32 numpy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed to recognise it
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def to_uint8(x01: ArrayLike) -> np.ndarray:
    """Map floats in [0, 1] to uint8 0..255 (rounded, clipped); NaN becomes 0."""
    a = np.nan_to_num(_as_numpy(x01), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


# ---------------------------------------------------------------------------------------------------------
# colour


@functools.cache
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 table of matplotlib's colormap `name`; built once per name, read-only.

    Entry i is exactly `matplotlib.colormaps[name](x, bytes=True)[:3]` for every x in [i/256, (i+1)/256).
    """
    import matplotlib  # lazy, and only for the colour tables: no figure is ever made

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"Unknown colormap {name!r}; try 'viridis', 'inferno' or 'RdBu_r'.") from None
    lut = np.ascontiguousarray(cmap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3])
    lut.flags.writeable = False
    return lut


@functools.cache
def _palette(name: str) -> bytes:
    return colormap_lut(name).tobytes()  # the 768 bytes Image.putpalette takes


def _indexed(idx: np.ndarray, cmap: str) -> Image.Image:
    """(H, W) uint8 LUT indices -> RGB image of those colours; Pillow does the lookup, in C."""
    h, w = idx.shape
    image = Image.frombytes("P", (w, h), np.ascontiguousarray(idx, dtype=np.uint8).tobytes())
    image.putpalette(_palette(cmap))
    return image.convert("RGB")


def _finite_range(a: np.ndarray, axis: int | tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max over the finite values of `a` (0, 0 where there are none)."""
    if np.isfinite(a).all():
        if a.size == 0:
            zero = np.zeros((), np.float32)
            return zero, zero
        return a.min(axis=axis), a.max(axis=axis)
    finite = np.isfinite(a)
    lo = np.where(finite, a, np.inf).min(axis=axis)
    hi = np.where(finite, a, -np.inf).max(axis=axis)
    none = ~finite.any(axis=axis)
    return np.where(none, 0.0, lo).astype(np.float32), np.where(none, 0.0, hi).astype(np.float32)


def _quantize(v: np.ndarray, lo: ArrayLike, hi: ArrayLike) -> np.ndarray:
    """Map [lo, hi] to LUT indices 0..255 the way matplotlib does (floor(x * 256), 1.0 -> 255).

    `lo`/`hi` broadcast against `v` (per-channel ranges). NaN goes to 0. Where lo == hi there is no scale:
    values above it go to 255 and the rest to 0, so a constant map is one colour, not a division by zero.
    """
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    span = hi - lo
    flat = span <= 0
    scale = np.where(flat, 0.0, 256.0 / np.where(flat, 1.0, span)).astype(np.float32)
    with np.errstate(invalid="ignore"):  # inf * 0 on flat ranges; fixed just below
        t = (v - lo) * scale
        if flat.any():
            t = np.where(flat, np.where(v > hi, 256.0, 0.0), t).astype(np.float32)
    np.nan_to_num(t, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(t, 0.0, 255.0, out=t)
    return t.astype(np.uint8)


def _limits(v: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    if vmin is None or vmax is None:
        lo, hi = _finite_range(v)
        vmin = float(lo) if vmin is None else vmin
        vmax = float(hi) if vmax is None else vmax
    if vmin > vmax:
        raise ValueError(f"vmin ({vmin}) must not exceed vmax ({vmax}).")
    return float(vmin), float(vmax)


def colorize(
    values: ArrayLike, *, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 colours; the range defaults to the finite min..max.

    NaN gets the lowest colour; a constant input gets one colour (the lowest) instead of a division by zero.
    Works for any shape: the colour axis is appended.
    """
    v = _as_numpy(values)
    lo, hi = _limits(v, vmin, vmax)
    return np.take(colormap_lut(cmap), _quantize(v, lo, hi), axis=0)


def _heat_scale(heat: np.ndarray, *, signed: bool, vmax: float | None) -> tuple[float, float]:
    """The (vmin, vmax) an attribution map is drawn with: symmetric around 0 if signed, from 0 if not."""
    if vmax is None:
        lo, hi = _finite_range(heat)
        vmax = max(abs(float(lo)), abs(float(hi))) if signed else float(hi)
    vmax = max(float(vmax), 0.0)
    return (-vmax if signed else 0.0), vmax


def _heat_indices(heat: np.ndarray, *, signed: bool, vmax: float | None) -> np.ndarray:
    heat = np.nan_to_num(heat, nan=0.0)  # a missing value means "no attribution"
    lo, hi = _heat_scale(heat, signed=signed, vmax=vmax)
    if signed and hi == 0.0:  # an all-zero signed map is neutral: the colormap's centre, not its end
        return np.full(heat.shape, 128, np.uint8)
    return _quantize(heat, lo, hi)


def shared_vmax(heats: Iterable[ArrayLike], *, signed: bool = False, percentile: float = 100.0) -> float:
    """One vmax for several attribution maps, so that methods compared side by side share a scale.

    Takes the `percentile` of |values| (signed) or values (unsigned) over all finite entries; a
    percentile below 100 (e.g. 99.5) keeps a few outlier pixels from washing out the rest.
    """
    parts = [_as_numpy(h).ravel() for h in heats]
    if not parts:
        return 0.0
    v = np.concatenate(parts)
    v = v[np.isfinite(v)]
    if signed:
        v = np.abs(v)
    if v.size == 0:
        return 0.0
    return max(float(np.percentile(v, percentile)), 0.0)


# ---------------------------------------------------------------------------------------------------------
# grids


def grid_layout(n: int, *, columns: int | None = None) -> tuple[int, int]:
    """(rows, cols) for `n` tiles, never taller than wide (screens and projectors are landscape).

    The most square exact factorisation with cols >= rows is used when it is at most 2:1 (64 -> 8x8,
    96 -> 8 rows x 12, 384 -> 16 x 24, 1000 -> 25 x 40); otherwise cols = ceil(sqrt(n)) with the last row
    part-filled. `columns` fixes the number of columns.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if n == 0:
        return (0, 0)
    if columns is not None:
        if columns < 1:
            raise ValueError(f"columns must be >= 1, not {columns}")
        cols = min(columns, n)
        return (math.ceil(n / cols), cols)
    for rows in range(math.isqrt(n), 0, -1):
        if n % rows == 0:
            cols = n // rows
            if cols <= max(2 * rows, 3):
                return (rows, cols)
            break
    cols = math.ceil(math.sqrt(n))
    return (math.ceil(n / cols), cols)


def _tiles_image(small: Image.Image, n: int, rows: int, cols: int, background: RGB) -> Image.Image:
    """Blank the unused cells (index >= n) of a (rows*h, cols*w) mosaic of tiles, in place."""
    h, w = small.height // rows, small.width // cols
    for i in range(n, rows * cols):
        r, c = divmod(i, cols)
        small.paste(background, (c * w, r * h, (c + 1) * w, (r + 1) * h))
    return small


def _magnify(
    small: Image.Image, rows: int, cols: int, *, zoom: int, gap: int, background: RGB
) -> Image.Image:
    """A (rows*h, cols*w) mosaic of tiles -> each tile `zoom` times larger (nearest), `gap` px apart.

    Separable, in Pillow: one resize per tile column into a short band image, then one per tile row into
    the output, so the work is O(output pixels) in C with rows + cols calls, not one call per tile.
    """
    h, w = small.height // rows, small.width // cols
    if gap == 0:
        return small.resize((small.width * zoom, small.height * zoom), Image.Resampling.NEAREST)
    width, height = cols * (w * zoom + gap) - gap, rows * (h * zoom + gap) - gap
    band = Image.new("RGB", (width, small.height), background)  # columns magnified, rows not yet
    for c in range(cols):
        part = small.resize(
            (w * zoom, small.height), Image.Resampling.NEAREST, box=(c * w, 0, (c + 1) * w, small.height)
        )
        band.paste(part, (c * (w * zoom + gap), 0))
    out = Image.new("RGB", (width, height), background)
    for r in range(rows):
        part = band.resize((width, h * zoom), Image.Resampling.NEAREST, box=(0, r * h, width, (r + 1) * h))
        out.paste(part, (0, r * (h * zoom + gap)))
    return out


SELECT_COLOR: RGB = (255, 0, 255)  # the selected tile's ring: magenta, in none of the colormaps used here
_TAG_BACK: RGB = (0, 0, 0)  # tile numbers: white on black reads over any colour
_TAG_MIN_FONT, _TAG_MAX_FONT = 17, 28  # px; DejaVu Sans Bold digits are 0.73 em: 12..20 px tall


@functools.cache
def _digit_glyphs(size: int) -> tuple[tuple[Image.Image, ...], int]:
    """White bold digits 0-9 on black, each one advance wide (DejaVu's digits share one advance), and
    the top offset; rendered once per size so a grid's hundreds of numbers are pastes, not text layout."""
    font = _font(size, bold=True)
    _, top, _, bottom = font.getbbox("0123456789")  # one height for every number, whatever its digits
    advance = max(_text_width(font, d) for d in "0123456789")
    glyphs = []
    for d in "0123456789":
        glyph = Image.new("RGB", (advance, int(bottom - top)), _TAG_BACK)
        ImageDraw.Draw(glyph).text((0, -top), d, font=font, fill=WHITE)
        glyphs.append(glyph)
    return tuple(glyphs), advance


@functools.lru_cache(maxsize=4096)
def _number_tag(text: str, size: int) -> Image.Image:
    """A non-negative integer `text` in white bold digits on a black box, cropped tight."""
    glyphs, advance = _digit_glyphs(size)
    pad_x, pad_y = max(2, size // 6), max(2, size // 8)
    height = glyphs[0].height
    tag = Image.new("RGB", (len(text) * advance + 2 * pad_x, height + 2 * pad_y), _TAG_BACK)
    for i, d in enumerate(text):
        tag.paste(glyphs[int(d)], (pad_x + i * advance, pad_y))
    return tag


def _tag_size(tile_w: int, tile_h: int, widest: str) -> int | None:
    """The font size for tile numbers on tiles `tile_w` x `tile_h` px, or None if no legible one fits.

    About a fifth of the tile side, from 17 px (digits 12 px tall) to 28 px; the tag of the widest
    number must cover at most 4/5 of the tile's width and 2/5 of its height, so the map stays visible.
    """
    size = min(max(round(min(tile_w, tile_h) / 5), _TAG_MIN_FONT), _TAG_MAX_FONT)
    tag = _number_tag(widest, size)
    if tag.width > 0.8 * tile_w or tag.height > 0.4 * tile_h:
        return None
    return size


def _ring_width(tile_w: int, tile_h: int) -> int:
    return min(max(round(min(tile_w, tile_h) / 12), 4), 8)


def _mark_tiles(
    image: Image.Image,
    channels: Sequence[int],
    cols: int,
    tile_w: int,
    tile_h: int,
    gap: int,
    *,
    numbers: bool,
    selected: int | None,
) -> None:
    """Draw, in place and inside the tiles only, each tile's channel number and the selected tile's ring.

    Tile i (row-major) shows channel `channels[i]` and occupies the `tile_w` x `tile_h` px at
    (col * (tile_w + gap), row * (tile_h + gap)): nothing is drawn in the gaps, so `tile_at` still inverts
    the layout.
    """
    ring = _ring_width(tile_w, tile_h)
    chosen = channels.index(selected) if selected is not None and selected in channels else None
    if numbers:
        size = _tag_size(tile_w, tile_h, str(max(channels)))
        if size is not None:
            for i, ch in enumerate(channels):
                r, c = divmod(i, cols)
                inset = ring if i == chosen else 0  # inside the ring, not under it
                image.paste(_number_tag(str(ch), size), (c * (tile_w + gap) + inset, r * (tile_h + gap) + inset))
    if chosen is not None:
        r, c = divmod(chosen, cols)
        x0, y0 = c * (tile_w + gap), r * (tile_h + gap)
        draw = ImageDraw.Draw(image)
        draw.rectangle((x0, y0, x0 + tile_w - 1, y0 + tile_h - 1), outline=SELECT_COLOR, width=ring)
        if tile_w > 2 * ring + 2 and tile_h > 2 * ring + 2:  # a thin black line inside: shows on light maps
            draw.rectangle(
                (x0 + ring, y0 + ring, x0 + tile_w - 1 - ring, y0 + tile_h - 1 - ring), outline=_TAG_BACK, width=1
            )


def _check_selected(selected: int | None, n: int) -> None:
    if selected is not None and not 0 <= selected < n:
        raise ValueError(f"selected must be a channel index in 0..{n - 1}, not {selected}")


def _mosaic_indices(idx: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(N, h, w) -> (rows*h, cols*w), tiles row-major; unused cells hold 0 (blanked afterwards)."""
    n, h, w = idx.shape
    padded = np.zeros((rows * cols, h, w), idx.dtype)
    padded[:n] = idx
    return padded.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def filter_grid(
    weight: ArrayLike,
    *,
    scale: int = 6,
    gap: int = 2,
    columns: int | None = None,
    background: RGB = WHITE,
    numbers: bool = False,
    selected: int | None = None,
) -> Image.Image:
    """First-layer filters (C_out, 3, k, k) as RGB tiles, each min-max normalised on its own.

    Every filter is scaled to [0, 1] across its three channels together (so its colour balance is kept),
    magnified `scale` times (nearest) and laid out by `grid_layout` with `gap` px of `background` between
    tiles. A constant filter is mid-grey. Single-channel filters (C_out, 1, k, k) are shown in grey.

    `numbers=True` writes each filter's index in its tile's top-left corner, white bold digits 12 to 20 px
    tall on black; they are left out when the tiles are too small to hold one legibly (the tag of the
    largest index must fit in 4/5 of the width and 2/5 of the height: tiles of about 45 px or more).
    `selected` rings that filter's tile in `SELECT_COLOR`. Both draw inside the tiles, never in the gaps:
    the layout, and so `tile_at`, is the same as without them.
    """
    w = _as_numpy(weight)  # (C_out, C_in, k, k)
    if w.ndim != 4 or w.shape[1] not in (1, 3) or w.shape[0] == 0:
        raise ValueError(
            f"filter_grid shows first-layer filters shaped (C_out, 3, k, k), not {tuple(w.shape)}; "
            "show deeper layers with feature_grid."
        )
    if scale < 1 or gap < 0:
        raise ValueError("scale must be >= 1 and gap >= 0")
    c = w.shape[0]
    _check_selected(selected, c)
    if w.shape[1] == 1:
        w = np.repeat(w, 3, axis=1)
    flat = w.reshape(c, -1)
    lo, hi = _finite_range(flat, axis=1)  # (C,) each
    span = (hi - lo)[:, None, None, None]
    lo4 = lo[:, None, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(span > 0, (w - lo4) / np.where(span > 0, span, 1.0), 0.5)  # (C, 3, k, k) in [0, 1]
    x = np.where(np.isnan(x), 0.5, x)
    tiles = to_uint8(x).transpose(0, 2, 3, 1)  # (C, k, k, 3)
    rows, cols = grid_layout(c, columns=columns)
    k = tiles.shape[1]
    padded = np.zeros((rows * cols, k, k, 3), np.uint8)
    padded[:c] = tiles
    small = padded.reshape(rows, cols, k, k, 3).transpose(0, 2, 1, 3, 4).reshape(rows * k, cols * k, 3)
    small_image = _tiles_image(Image.fromarray(small), c, rows, cols, background)
    image = _magnify(small_image, rows, cols, zoom=scale, gap=gap, background=background)
    if numbers or selected is not None:
        _mark_tiles(image, range(c), cols, k * scale, k * scale, gap, numbers=numbers, selected=selected)
    return image


def _channel_means(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C,) mean over finite values; channels with none get -inf (sorted last)."""
    flat = a.reshape(a.shape[0], -1)
    if np.isfinite(flat).all():
        return flat.mean(axis=1)
    finite = np.isfinite(flat)
    count = finite.sum(axis=1)
    total = np.where(finite, flat, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), -np.inf)


def _spatial(act: ArrayLike, what: str) -> np.ndarray:
    a = _as_numpy(act)
    if a.ndim == 4 and a.shape[0] == 1:  # a batch of one, as hooks capture it
        a = a[0]
    if a.ndim != 3:
        hint = " Draw 1-D (fully connected) activations with vector_strip." if a.ndim <= 2 else ""
        raise ValueError(f"{what} needs activations shaped (C, H, W), not {tuple(a.shape)}.{hint}")
    return a


def feature_grid(
    act: ArrayLike,
    *,
    sort: bool = False,
    cmap: str = "viridis",
    cell: int | None = None,
    gap: int = 1,
    columns: int | None = None,
    max_channels: int | None = None,
    normalize: Literal["channel", "layer"] = "channel",
    background: RGB = WHITE,
    numbers: bool = False,
    selected: int | None = None,
) -> tuple[Image.Image, list[int]]:
    """Every channel of a conv activation (C, H, W) tiled into one image; returns (image, channel order).

    `order[i]` is the channel drawn in tile i (row-major), so a UI can map a tile back to its channel.
    `sort=True` orders channels by mean activation, largest first (ties keep index order);
    `max_channels` keeps the first ones of that order. `normalize="channel"` stretches each map to the
    full colormap (shows the pattern of weak channels); `"layer"` uses one range for the whole layer (shows
    which channels are strong). Each map is magnified by an integer factor to about `cell` px; by default
    by the smallest factor that makes the grid at least 1000 px wide (and at most 1400 where possible):
    AlexNet's conv1..conv5 give 3x, 3x, 4x, 5x, 5x.

    `numbers=True` writes each tile's channel index (not its position) in its top-left corner, white
    bold digits 12 to 20 px tall on black; they are left out when the tiles are too small to hold one
    legibly (the tag of the largest index must fit in 4/5 of the width and 2/5 of the height: tiles of
    about 50 px or more, which every default AlexNet grid has). `selected` (a channel index) rings the
    tile showing that channel, wherever the sort put it, in `SELECT_COLOR`; nothing is ringed if
    `max_channels` left it out. Both draw inside the tiles, never in the gaps: the layout, and so
    `tile_at`, is the same as without them.
    """
    a = _spatial(act, "feature_grid")  # (C, H, W)
    c, h, w = a.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"feature_grid got an empty activation {tuple(a.shape)}.")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, not {gap}")
    if normalize not in ("channel", "layer"):
        raise ValueError(f"normalize must be 'channel' or 'layer', not {normalize!r}")
    _check_selected(selected, c)
    order = np.argsort(-_channel_means(a), kind="stable") if sort else np.arange(c)
    if max_channels is not None:
        order = order[: max(int(max_channels), 0)]
    if order.size == 0:
        raise ValueError("max_channels must be at least 1.")
    shown = a[order]  # (N, H, W)
    if normalize == "channel":
        lo, hi = _finite_range(shown.reshape(len(order), -1), axis=1)
        idx = _quantize(shown, np.asarray(lo)[:, None, None], np.asarray(hi)[:, None, None])
    else:
        lo, hi = _finite_range(a)  # the whole layer, so the scale does not change with max_channels
        idx = _quantize(shown, lo, hi)
    rows, cols = grid_layout(len(order), columns=columns)
    if cell is not None:
        zoom = max(1, round(cell / max(h, w)))
    else:
        # The smallest integer factor that reaches the band's lower edge, unless that overshoots it.
        zoom = max(1, math.ceil((_GRID_MIN_WIDTH - gap * (cols - 1)) / (cols * w)))
        if zoom > 1 and cols * w * zoom + gap * (cols - 1) > _GRID_MAX_WIDTH:
            zoom -= 1
    small = _tiles_image(_indexed(_mosaic_indices(idx, rows, cols), cmap), len(order), rows, cols, background)
    image = _magnify(small, rows, cols, zoom=zoom, gap=gap, background=background)
    channels = [int(i) for i in order]
    if numbers or selected is not None:
        _mark_tiles(image, channels, cols, w * zoom, h * zoom, gap, numbers=numbers, selected=selected)
    return image, channels


def vector_strip(
    values: ArrayLike,
    *,
    cmap: str = "viridis",
    width: int = 640,
    height: int | None = None,
    columns: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    background: RGB = WHITE,
) -> Image.Image:
    """A 1-D activation (F,) as a grid of coloured cells, exactly `width` x `height` px.

    Cells follow `grid_layout` (4096 -> 64 x 64, 1000 -> 25 x 40), row-major, unused cells `background`.
    `columns=F` gives a one-row strip. `height` defaults to keeping the cells square.
    """
    v = _vector(values, "vector_strip")
    lo, hi = _limits(v, vmin, vmax)
    rows, cols = grid_layout(v.size, columns=columns)
    if height is None:
        height = max(1, round(width * rows / cols))
    if width < 1 or height < 1:
        raise ValueError("width and height must be >= 1")
    cells = np.zeros(rows * cols, np.uint8)
    cells[: v.size] = _quantize(v, lo, hi)
    small = _tiles_image(_indexed(cells.reshape(rows, cols), cmap), v.size, rows, cols, background)
    return small.resize((width, height), Image.Resampling.NEAREST)


@dataclass(frozen=True)
class Unit:
    """One unit of a 1-D activation: its index, its value, and its class name when labels are known."""

    index: int
    value: float
    label: str | None


def _vector(values: ArrayLike, what: str) -> np.ndarray:
    v = _as_numpy(values)
    if v.ndim == 2 and v.shape[0] == 1:  # a batch of one
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{what} needs a non-empty vector (F,), not {tuple(v.shape)}.")
    return v


def strongest_units(values: ArrayLike, *, k: int = 8, labels: Sequence[str] | None = None) -> list[Unit]:
    """The `k` units with the largest values, largest first; equal values in index order; NaN never.

    `labels[i]` names unit i (fc8's class names); it must have one entry per unit.
    """
    v = _vector(values, "strongest_units")
    if labels is not None and len(labels) != v.size:
        raise ValueError(f"{len(labels)} labels for {v.size} units")
    finite_first = np.where(np.isnan(v), -np.inf, v)
    order = np.argsort(-finite_first, kind="stable")  # stable: ties keep index order
    order = order[~np.isnan(v[order])][: max(int(k), 0)]
    return [Unit(int(i), float(v[i]), None if labels is None else str(labels[i])) for i in order]


def _panel_columns(n: int) -> int:
    """Columns of a vector panel's strip: one row up to 64 units, else about 4 columns per row."""
    return n if n <= 64 else math.ceil(math.sqrt(4 * n))  # 4096 -> 128 x 32, 1000 -> 64 x 16


def vector_panel(
    values: ArrayLike,
    *,
    labels: Sequence[str] | None = None,
    k: int = 8,
    cmap: str = "viridis",
    width: int = 1024,
    columns: int | None = None,
    selected: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    bar_label: str | None = "activation",
    font_size: int = _MIN_TEXT,
) -> Image.Image:
    """A 1-D activation (F,) for a projector: every unit as a coloured cell, then its `k` strongest named.

    From the top: the strip (`vector_strip`, `columns` per row, by default one row up to 64 units, else
    about 4 columns a row: 4096 -> 128 x 32, 1000 -> 64 x 16), its cells `width // columns` px square so
    the picture is that many cells wide (`vector_unit_at` maps a click on it back to a unit); a colour
    bar of the same range (`colorbar`, titled `bar_label`); and the `strongest_units`, one row each: a
    swatch of the unit's colour, `#index`, its value and, with `labels` (fc8's class names), its name.
    `selected` rings that unit's cell in `SELECT_COLOR`. Colours span [vmin, vmax], by default the
    finite min..max. Text is `font_size` px (at least 22).
    """
    v = _vector(values, "vector_panel")
    n = v.size
    _check_selected(selected, n)
    lo, hi = _limits(v, vmin, vmax)
    units = strongest_units(v, k=k, labels=labels)
    rows, cols = grid_layout(n, columns=columns or _panel_columns(n))
    cell = width // cols
    if cell < 1:
        raise ValueError(f"width {width} px is narrower than {cols} cells; use columns= or a wider panel")
    strip = vector_strip(v, cmap=cmap, width=cell * cols, height=cell * rows, columns=cols, vmin=lo, vmax=hi)
    if selected is not None and cell >= 24:  # a large cell is ringed inside, as a grid's tile is
        _mark_tiles(strip, range(n), cols, cell, cell, 0, numbers=False, selected=selected)
    elif selected is not None:  # a small one around, over its neighbours, or the ring would hide it
        r, c = divmod(selected, cols)
        ring = max(3, cell // 3)
        x0, y0 = c * cell - ring, r * cell - ring
        ImageDraw.Draw(strip).rectangle(
            (x0, y0, x0 + cell + 2 * ring - 1, y0 + cell + 2 * ring - 1), outline=SELECT_COLOR, width=ring
        )
    parts = [strip]
    if colorbar:
        parts.append(_scale_bar(cmap, lo, hi, strip.width, bar_label, font_size))
    if units:
        parts.append(_units_table(units, cmap, lo, hi, strip.width, font_size))
    return vstack(parts, gap=0)


def _units_table(units: Sequence[Unit], cmap: str, lo: float, hi: float, width: int, size: int) -> Image.Image:
    """The named units under a vector panel: in two columns when the panel is wide enough."""
    font, bold = _font(size), _font(size, bold=True)
    top, bottom = _line_box(font)
    pad, line = 12, bottom - top + 10
    ncol = 2 if width >= 900 and len(units) > 4 else 1
    per_col = math.ceil(len(units) / ncol)
    col_w = (width - pad) // ncol
    colors = colorize(np.array([u.value for u in units], np.float32), cmap=cmap, vmin=lo, vmax=hi)
    title = "strongest units"
    height = pad + line + per_col * line + pad
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad - top), title, font=bold, fill=_INK)
    index_w = max(_text_width(font, f"#{u.index}") for u in units)
    value_w = max(_text_width(font, _tick_text(u.value)) for u in units)
    swatch = bottom - top
    for i, (unit, color) in enumerate(zip(units, colors, strict=True)):
        c, r = divmod(i, per_col)
        x, y = pad + c * col_w, pad + line + r * line
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=tuple(int(ch) for ch in color), outline=_INK)
        x += swatch + 10
        index_text, value_text = f"#{unit.index}", _tick_text(unit.value)
        draw.text((x + index_w - _text_width(font, index_text), y - top), index_text, font=font, fill=_INK)
        x += index_w + 14
        draw.text((x + value_w - _text_width(font, value_text), y - top), value_text, font=font, fill=_INK)
        x += value_w + 14
        if unit.label:
            text = _fit(unit.label, font, pad + (c + 1) * col_w - x - pad)
            draw.text((x, y - top), text, font=font, fill=_INK)
    return image


def vector_unit_at(
    panel_width: int, n: int, xy: Sequence[float], *, columns: int | None = None
) -> int | None:
    """The unit under pixel `xy` of a `vector_panel` of `n` units drawn `panel_width` px wide (its
    `image.width`, with the same `columns`); None outside the strip or on an unused cell."""
    rows, cols = grid_layout(n, columns=columns or _panel_columns(n))
    cell = panel_width // cols
    return tile_at((cell * cols, cell * rows), n, xy, gap=0, columns=cols)


# ---------------------------------------------------------------------------------------------------------
# overlays


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float map -> (H, W) float32 with Pillow's bilinear filter; `size` is PIL's (W, H)."""
    if (a.shape[1], a.shape[0]) == size:
        return a.astype(np.float32, copy=False)
    mode_f = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))  # Pillow's 32-bit float mode "F"
    return np.asarray(mode_f.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _map2d(x: ArrayLike, what: str) -> np.ndarray:
    a = _as_numpy(x)
    while a.ndim > 2 and a.shape[0] == 1:  # (1, H, W) or (1, 1, H, W) as a method may return it
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{what} needs a 2-D map (H, W), not {tuple(a.shape)}.")
    return a


def _scale_bar(cmap: str, lo: float, hi: float, width: int, label: str | None, size: int = _MIN_TEXT) -> Image.Image:
    # `colorbar` under another name: the pictures that append one take a `colorbar` flag
    return colorbar(cmap, vmin=lo, vmax=hi, width=width, label=label, font_size=size)


def _with_colorbar(picture: Image.Image, cmap: str, lo: float, hi: float, label: str | None) -> Image.Image:
    """`picture` with a colour bar of the same width under it (`lo`..`hi`: the range its colours used)."""
    return vstack([picture, _scale_bar(cmap, lo, hi, picture.width, label)], gap=0)


def channel_overlay(
    image: Image.Image,
    fmap: ArrayLike,
    *,
    alpha: float = 0.5,
    cmap: str = "inferno",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = False,
    bar_label: str | None = None,
) -> Image.Image:
    """One feature map (h, w) upsampled (bilinear) to the image, coloured, and alpha-blended over it.

    `image` should be what the network saw (the 224 px crop), or the map is stretched over parts it
    never looked at. `alpha` 0 gives the image, 1 the map alone. The colours span [vmin, vmax], by
    default the map's finite min..max. `colorbar=True` appends a colour bar as wide as the image with
    exactly that range (title `bar_label`, if any); the overlay itself stays the top `image.height` px.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    base = _rgb(image)
    f = _map2d(fmap, "channel_overlay")
    lo, hi = _limits(f, vmin, vmax)
    f = np.nan_to_num(f, nan=lo, posinf=hi, neginf=lo)  # bilinear filtering would spread a NaN
    idx = _quantize(_resize_float(f, base.size), lo, hi)
    out = Image.blend(base, _indexed(idx, cmap), alpha)
    return _with_colorbar(out, cmap, lo, hi, bar_label) if colorbar else out


def heatmap_image(
    heat: ArrayLike,
    *,
    cmap: str | None = None,
    signed: bool = False,
    vmax: float | None = None,
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """An attribution map (H, W) in colour, without an underlay; `size` (W, H) resizes it bilinearly.

    Signed maps use a diverging colormap ("RdBu_r") over [-vmax, vmax], so 0 is the neutral centre;
    unsigned maps use "inferno" over [0, vmax] (negatives clip to the bottom). `vmax` defaults to the
    map's own max |value|; pass one value to several maps to put them on one scale (`shared_vmax`).
    """
    h = _map2d(heat, "heatmap_image")
    if size is not None:
        h = _resize_float(np.nan_to_num(h, nan=0.0), size)
    cmap = cmap or ("RdBu_r" if signed else "inferno")
    return _indexed(_heat_indices(h, signed=signed, vmax=vmax), cmap)


Opacity: TypeAlias = Literal["uniform", "magnitude"]


def attribution_overlay(
    image: Image.Image,
    heat: ArrayLike,
    *,
    alpha: float = 0.5,
    cmap: str | None = None,
    signed: bool = False,
    vmax: float | None = None,
    opacity: Opacity = "uniform",
    colorbar: bool = False,
    bar_label: str | None = None,
) -> Image.Image:
    """`heatmap_image(heat)` resized to `image` and blended over it.

    `image` should be what the network saw (the 224 px crop) so the pixels line up with the heat.
    The colours span [-vmax, vmax] if `signed`, else [0, vmax]; vmax defaults to the max |value| (the
    max) of the map resized to the image, as `heatmap_image(heat, size=image.size)` draws it.

    `opacity="uniform"`: every pixel is `(1 - alpha) * photo + alpha * colour` (alpha 0: the photo,
    1: the heat colours alone). `opacity="magnitude"`: the opacity follows the value, per pixel
    `out = photo * (1 - alpha * m) + colour * (alpha * m)` with `m = clip(|v| / vmax, 0, 1)` (unsigned
    maps: `clip(v / vmax, 0, 1)`), so where the attribution is 0 the photo shows untouched and only at
    |v| >= vmax does the blend reach `alpha`; m is linear, so equal steps in value are equal steps in
    opacity. Use it for signed maps: their diverging colormap is white at 0, so a uniform blend paints
    a white veil over the whole photo (at 0.6 it is washed out). Unsigned maps keep "uniform" by
    default: their colormap ("inferno") is near-black at 0, which dims where nothing is without hiding
    the photo's shapes, and the colour already tells the value; "magnitude" works for them too.
    With "magnitude", a vmax from a high percentile (`shared_vmax(..., percentile=99.5)`) keeps a few
    extreme pixels from making the rest nearly transparent.

    `colorbar=True` appends a colour bar as wide as the image with exactly the range the colours used
    (title `bar_label`, if any); the overlay itself stays the top `image.height` px.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    if opacity not in ("uniform", "magnitude"):
        raise ValueError(f"opacity must be 'uniform' or 'magnitude', not {opacity!r}")
    base = _rgb(image)
    h = _resize_float(np.nan_to_num(_map2d(heat, "attribution_overlay"), nan=0.0), base.size)  # (H, W)
    lo, hi = _heat_scale(h, signed=signed, vmax=vmax)
    cmap = cmap or ("RdBu_r" if signed else "inferno")
    colored = _indexed(_heat_indices(h, signed=signed, vmax=hi), cmap)
    if opacity == "uniform":
        out = Image.blend(base, colored, alpha)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.abs(h) if signed else h
            m = np.clip(m / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(h)
        mask = np.rint(np.nan_to_num(m, nan=0.0) * (255.0 * alpha)).astype(np.uint8)  # (H, W) in 0..255
        out = Image.composite(colored, base, Image.fromarray(mask, "L"))  # colour * mask + photo * (1 - mask)
    return _with_colorbar(out, cmap, lo, hi, bar_label) if colorbar else out


# ---------------------------------------------------------------------------------------------------------
# text and charts


@functools.cache
def _font_file(bold: bool) -> str | None:
    """matplotlib's DejaVu Sans (a dependency already, so nothing to ship or download), or None."""
    import matplotlib  # the package only, for its data path: no pyplot, no figure

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return str(path) if path.is_file() else None


@functools.cache
def _font(size: int, bold: bool = False) -> Font:
    # DejaVu Sans covers Latin, Greek, arrows and maths signs: labels like "Input × gradient", "≥ 0.5",
    # "café" never show a missing-glyph box. Pillow's bundled font (which lacks "×", "→", "é") only if
    # matplotlib's data files were stripped.
    path = _font_file(bold)
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def _text_width(font: Font, text: str) -> int:
    return math.ceil(font.getlength(text))


def _line_box(font: Font) -> tuple[int, int]:
    """(top, bottom) of the ink of a line, from a reference with ascender and descender, so every row
    of text sits on the same baseline whatever its letters."""
    _, top, _, bottom = font.getbbox("Hg")
    return int(top), math.ceil(bottom)


def _text_centered_y(
    draw: ImageDraw.ImageDraw, x: float, cy: float, text: str, font: Font, fill: RGB
) -> None:
    top, bottom = _line_box(font)
    draw.text((x, cy - (top + bottom) / 2), text, font=font, fill=fill)


def _fit(text: str, font: Font, max_width: int) -> str:
    """`text`, shortened with an ellipsis if it is wider than `max_width` px."""
    if _text_width(font, text) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if _text_width(font, text[:mid].rstrip() + "…") <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


def _percent(p: float) -> str:
    if 0.0 < p < 0.001:
        return "<0.1%"
    return f"{p * 100:.1f}%"


def format_probability(p: float, digits: int = 3) -> str:
    """A probability as a percentage with ``digits`` (3) significant digits: 0.61 -> "61%", 0.00123 -> "0.123%".

    Trailing zeros after the point are dropped ("61.0%" -> "61%"), so two values that differ at 3
    significant digits always read differently; an untrained model's ~0.1% guesses show as "0.102%",
    "0.0998%", never "0%". Below 0.01% it reads "<0.01%"; exactly 0 reads "0%"; a value just under 1
    that would round to 100 reads ">99.9%". Values outside [0, 1] are clipped; NaN reads "n/a".
    """
    p = float(p)
    if math.isnan(p):
        return "n/a"
    if p <= 0.0:
        return "0%"
    if p >= 1.0:
        return "100%"
    pct = p * 100.0
    if pct < 0.01:
        return "<0.01%"
    decimals = max(0, digits - 1 - math.floor(math.log10(pct)))
    text = f"{pct:.{decimals}f}"
    if float(text) >= 100.0:  # 99.96% rounds up: do not claim certainty
        return ">99.9%"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def format_probabilities(probabilities: Sequence[float], max_digits: int = 6) -> list[str]:
    """A ranked list of probabilities, each with the fewest significant digits (3 to ``max_digits``) at which
    neighbours that differ read differently: an untrained cifar model's top-5 (0.101338%, 0.101273%, ...) reads
    "0.1013%", "0.1013%"... at 4 digits and "0.10134%", "0.10127%", ... at 5, never five times "0.101%"."""
    values = [float(p) for p in probabilities]
    for digits in range(3, max_digits + 1):
        texts = [format_probability(p, digits) for p in values]
        if all(a == b or ta != tb for a, b, ta, tb in zip(values, values[1:], texts, texts[1:], strict=False)):
            return texts
    return texts


def top_k_chart(
    labels: Sequence[str],
    probabilities: Sequence[float],
    *,
    width: int = 900,
    bar_height: int = 44,
    font_size: int | None = None,
) -> Image.Image:
    """Horizontal bars, one row per label in the given order, with the probability as a percentage.

    Bar length is proportional to the probability (1.0 fills the bar area). Text is at least 22 px.
    Labels too long for 45% of the width are shortened with an ellipsis. Percentages are
    `format_probability`'s (3 significant digits, never "0%" for a non-zero value).
    """
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels but {len(probabilities)} probabilities")
    if not labels:
        raise ValueError("top_k_chart needs at least one label")
    size = font_size or max(_MIN_TEXT, round(bar_height * 0.55))
    font = _font(size)
    pad, row_gap = 12, 8
    probs = [min(max(float(p), 0.0), 1.0) if math.isfinite(float(p)) else 0.0 for p in probabilities]
    texts = [_fit(str(t), font, int(width * 0.45)) for t in labels]
    label_w = max(_text_width(font, t) for t in texts)
    pcts = format_probabilities(probabilities)  # NaN reads "n/a", not "0%"; neighbours that differ read differently
    pct_w = max(_text_width(font, t) for t in [*pcts, "100%"])
    x0 = pad + label_w + pad
    length = width - x0 - pad - 8 - pct_w  # the bar of probability 1.0
    if length < 20:
        raise ValueError(f"width {width} px leaves no room for bars; use a wider chart or shorter labels")
    height = 2 * pad + len(texts) * bar_height + (len(texts) - 1) * row_gap
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    for i, (text, p, pct) in enumerate(zip(texts, probs, pcts, strict=True)):
        y = pad + i * (bar_height + row_gap)
        cy = y + bar_height / 2
        _text_centered_y(draw, pad + label_w - _text_width(font, text), cy, text, font, _INK)  # right-aligned
        bar = round(p * length)
        if bar > 0:
            draw.rectangle((x0, y + 3, x0 + bar - 1, y + bar_height - 4), fill=BAR_COLOR)
        _text_centered_y(draw, x0 + bar + 8, cy, pct, font, _INK)
    return image


def tile_at(
    grid_size: tuple[int, int], n: int, xy: Sequence[float], *, gap: int = 1, columns: int | None = None,
    snap: bool = False,
) -> int | None:
    """The tile under pixel `xy` = (x, y) of a grid of `n` tiles drawn `grid_size` = (W, H) px with `gap`.

    Inverts the layout of `feature_grid` / `filter_grid` (which share `grid_layout`), so a click on the
    image can pick a channel. None for the gaps between tiles, unused cells and points outside; with `snap`,
    a point in a gap is the tile before that gap (left or above), so that a click a pixel off a tile still
    picks it (the middle of an even grid is a gap: about 4% of a filter grid's area is).
    """
    rows, cols = grid_layout(n, columns=columns)
    width, height = grid_size
    x, y = float(xy[0]), float(xy[1])
    pitch_x, pitch_y = (width + gap) / cols, (height + gap) / rows  # tile side + gap
    if not (0 <= x < width and 0 <= y < height):
        return None
    col, row = int(x // pitch_x), int(y // pitch_y)
    if not snap and (x - col * pitch_x >= pitch_x - gap or y - row * pitch_y >= pitch_y - gap):
        return None  # in a gap
    index = row * cols + col
    return index if index < n else None


def share_chart(
    names: Sequence[str],
    param_shares: Sequence[float],
    mac_shares: Sequence[float],
    *,
    width: int = 760,
    row_height: int = 34,
    font_size: int = _MIN_TEXT,
) -> Image.Image:
    """Per layer, two bars: its share of the parameters and its share of the compute (MACs).

    AlexNet's lesson in one picture: the FC layers hold the parameters, the convs do the work.
    """
    if not (len(names) == len(param_shares) == len(mac_shares)) or not names:
        raise ValueError("share_chart needs one parameter share and one MAC share per layer name")
    font = _font(font_size)
    pad = 12
    label_w = max(_text_width(font, str(n)) for n in names)
    pct_w = _text_width(font, "100.0%")
    x0 = pad + label_w + pad
    length = width - x0 - pad - 8 - pct_w
    if length < 20:
        raise ValueError(f"width {width} px leaves no room for bars")
    legend_h = font_size + 2 * pad
    height = legend_h + pad + len(names) * (2 * row_height + pad)
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    colors = (PARAM_COLOR, MAC_COLOR)
    x = pad
    for text, color in zip(("parameters", "compute (MACs)"), colors, strict=True):
        draw.rectangle((x, pad, x + font_size, pad + font_size), fill=color)
        _text_centered_y(draw, x + font_size + 8, pad + font_size / 2, text, font, _INK)
        x += font_size + 8 + _text_width(font, text) + 3 * pad
    for i, name in enumerate(names):
        y = legend_h + pad + i * (2 * row_height + pad)
        _text_centered_y(draw, pad + label_w - _text_width(font, str(name)), y + row_height, str(name), font, _INK)
        for j, (share, color) in enumerate(zip((param_shares[i], mac_shares[i]), colors, strict=True)):
            p = min(max(float(share), 0.0), 1.0) if math.isfinite(float(share)) else 0.0
            top = y + j * row_height
            bar = round(p * length)
            if bar > 0:
                draw.rectangle((x0, top + 2, x0 + bar - 1, top + row_height - 3), fill=color)
            _text_centered_y(draw, x0 + bar + 8, top + row_height / 2, _percent(p), font, _INK)
    return image


_BAR_PAD = 8  # px between a colour bar's ends and the picture's edges


def _tick_text(value: float) -> str:
    """A tick value in 3 significant digits, with a true minus sign (reads better than a hyphen)."""
    text = f"{value:.3g}"
    return "0" if text in ("0", "-0") else text.replace("-", "\u2212")


def colorbar(
    cmap: str = "viridis",
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    width: int = 480,
    height: int = 24,
    label: str | None = None,
    font_size: int = _MIN_TEXT,
) -> Image.Image:
    """A horizontal colour scale `width` px wide with a bar `height` px thick; tick values under it
    (vmin, 0 when the range spans it, else the middle, vmax) and an optional label above it.

    The bar runs from x = 8 to `width` - 8. Its pixel x shows the colour that `colorize` (and every
    overlay here) gives the value at that pixel's centre, vmin + (x - 8 + 0.5) / (width - 16) * (vmax -
    vmin): the same quantiser, so a value's colour on the bar is exactly its colour in the picture. A
    middle tick that would collide with the end ones is left out.
    """
    if vmin > vmax:
        raise ValueError(f"vmin ({vmin}) must not exceed vmax ({vmax}).")
    font = _font(font_size)
    top, bottom = _line_box(font)
    line = bottom - top + 6
    pad, tick = _BAR_PAD, 5
    bar_len = width - 2 * pad
    if bar_len < 2 or height < 1:
        raise ValueError("colorbar is too small")
    y_bar = pad + (line if label else 0)
    image = Image.new("RGB", (width, y_bar + height + tick + 2 + line + pad // 2), WHITE)
    centres = (np.arange(bar_len, dtype=np.float32) + 0.5) / bar_len  # (L,) in (0, 1)
    if vmax > vmin:
        idx = _quantize(np.float32(vmin) + centres * np.float32(vmax - vmin), vmin, vmax)
    else:  # no range to show: the whole scale, ticks all at the one value
        idx = (centres * 256).astype(np.uint8)
    image.paste(_indexed(idx[None, :], cmap).resize((bar_len, height), Image.Resampling.NEAREST), (pad, y_bar))
    draw = ImageDraw.Draw(image)
    if label:
        text = _fit(label, font, width - 2 * pad)
        draw.text(((width - _text_width(font, text)) / 2, pad - top), text, font=font, fill=_INK)
    span = vmax - vmin
    mid = 0.0 if vmin < 0.0 < vmax else (vmin + vmax) / 2
    ticks = [(vmin, 0.0), (vmax, 1.0), (mid, 0.5 if span == 0 else (mid - vmin) / span)]
    y_text = y_bar + height + tick + 2 - top
    placed: list[tuple[float, float]] = []  # (left, right) of tick texts drawn so far
    for value, frac in ticks:
        text = _tick_text(value)
        tw = _text_width(font, text)
        x = min(max(pad + frac * bar_len - tw / 2, pad // 2), width - pad // 2 - tw)  # centred on its value
        if any(x < right + 12 and left < x + tw + 12 for left, right in placed):
            continue  # would collide with an end tick (a narrow bar): the ends matter more
        placed.append((x, x + tw))
        xt = round(pad + frac * (bar_len - 1))
        draw.line((xt, y_bar + height, xt, y_bar + height + tick), fill=_INK, width=2)
        draw.text((x, y_text), text, font=font, fill=_INK)
    return image


def strongest_channels_strip(
    activations: Mapping[str, ArrayLike],
    *,
    per_layer: int = 6,
    cell: int = 96,
    cmap: str = "viridis",
    font_size: int = _MIN_TEXT,
) -> Image.Image:
    """One row per layer: its `per_layer` channels with the highest mean activation, strongest first.

    Each tile is one channel, normalised on its own and magnified (nearest) to fit `cell` px, captioned
    `#index`; the layer name starts the row. Activations that are not (C, H, W) (e.g. fully connected
    layers) are skipped.
    """
    rows: list[tuple[str, list[tuple[int, Image.Image]]]] = []
    for name, act in activations.items():
        a = _as_numpy(act)
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 3 or a.size == 0:
            continue
        top_channels = np.argsort(-_channel_means(a), kind="stable")[:per_layer]
        tiles = []
        for ch in top_channels:
            m = a[ch]  # (H, W)
            lo, hi = _finite_range(m)
            h, w = m.shape
            th, tw = (cell, max(1, round(cell * w / h))) if h >= w else (max(1, round(cell * h / w)), cell)
            tile = _indexed(_quantize(m, lo, hi), cmap).resize((tw, th), Image.Resampling.NEAREST)
            tiles.append((int(ch), tile))
        rows.append((str(name), tiles))
    if not rows:
        raise ValueError("strongest_channels_strip needs at least one (C, H, W) activation.")
    name_font, cap_font = _font(font_size + 2), _font(font_size)
    cap_top, cap_bottom = _line_box(cap_font)
    pad, tile_gap, row_gap = 12, 10, 14
    name_w = max(_text_width(name_font, name) for name, _ in rows)
    x_tiles = pad + name_w + 2 * pad
    row_h = cell + 4 + (cap_bottom - cap_top)
    width = x_tiles + max(1, max(len(t) for _, t in rows)) * (cell + tile_gap) - tile_gap + pad
    height = 2 * pad + len(rows) * row_h + (len(rows) - 1) * row_gap
    image = Image.new("RGB", (width, height), WHITE)
    captions: list[tuple[float, int, str]] = []  # (centre x, top y, text)
    for r, (_, tiles) in enumerate(rows):
        y = pad + r * (row_h + row_gap)
        for i, (ch, tile) in enumerate(tiles):
            x = x_tiles + i * (cell + tile_gap)
            image.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
            captions.append((x + cell / 2, y + cell + 4, f"#{ch}"))
    draw = ImageDraw.Draw(image)
    for r, (name, _) in enumerate(rows):
        _text_centered_y(draw, pad, pad + r * (row_h + row_gap) + cell / 2, name, name_font, _INK)
    for cx, cy, text in captions:
        draw.text((cx - _text_width(cap_font, text) / 2, cy - cap_top), text, font=cap_font, fill=_INK)
    return image


# ---------------------------------------------------------------------------------------------------------
# composition


def _stack(images: Sequence[Image.Image], *, horizontal: bool, gap: int, background: RGB) -> Image.Image:
    if not images:
        raise ValueError("nothing to stack")
    images = [_rgb(im) for im in images]
    along = [im.width if horizontal else im.height for im in images]
    across = [im.height if horizontal else im.width for im in images]
    total, thick = sum(along) + gap * (len(images) - 1), max(across)
    out = Image.new("RGB", (total, thick) if horizontal else (thick, total), background)
    pos = 0
    for im, a, c in zip(images, along, across, strict=True):
        offset = (thick - c) // 2  # centred across the stacking direction
        out.paste(im, (pos, offset) if horizontal else (offset, pos))
        pos += a + gap
    return out


def hstack(images: Sequence[Image.Image], *, gap: int = 8, background: RGB = WHITE) -> Image.Image:
    """Images side by side, left to right, vertically centred, `gap` px of `background` between them."""
    return _stack(images, horizontal=True, gap=gap, background=background)


def vstack(images: Sequence[Image.Image], *, gap: int = 8, background: RGB = WHITE) -> Image.Image:
    """Images top to bottom, horizontally centred, `gap` px of `background` between them."""
    return _stack(images, horizontal=False, gap=gap, background=background)


def tile_rows(
    images: Sequence[Image.Image], per_row: int, *, gap: int = 16, background: RGB = WHITE
) -> Image.Image:
    """`images` in reading order, in rows of at most `per_row`, each row centred, `gap` px apart.

    The rows are as even as they can be (10 images at 4 a row: 4, 3, 3, not 4, 4, 2), the longer ones
    first. The images are not resized: give them the size they should be seen at (>= 300 px wide for a
    projector).
    """
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, not {per_row}")
    if not images:
        raise ValueError("nothing to lay out")
    n_rows = math.ceil(len(images) / per_row)
    base, extra = divmod(len(images), n_rows)
    rows, start = [], 0
    for r in range(n_rows):
        count = base + (1 if r < extra else 0)
        rows.append(hstack(images[start : start + count], gap=gap, background=background))
        start += count
    return vstack(rows, gap=gap, background=background)


def label(
    image: Image.Image, text: str, *, size: int = 24, color: RGB = _INK, background: RGB = WHITE
) -> Image.Image:
    """`image` with `text` centred above it (the canvas widens if the text is wider than the image)."""
    base = _rgb(image)
    font = _font(size)
    top, bottom = _line_box(font)
    pad = max(4, size // 4)
    tw = _text_width(font, text)
    width = max(base.width, tw + 2 * pad)
    caption_h = bottom - top + 2 * pad
    out = Image.new("RGB", (width, caption_h + base.height), background)
    ImageDraw.Draw(out).text(((width - tw) / 2, pad - top), text, font=font, fill=color)
    out.paste(base, ((width - base.width) // 2, caption_h))
    return out
