"""Tests for alexnet_viz.render: sizes, layouts and exact pixel values against hand-computed cases.

The colour oracle is matplotlib itself (`matplotlib.colormaps[name](x, bytes=True)`); every input is
synthetic. Nothing here times anything: speed is measured by the benchmarks, not asserted.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet_viz import render
from alexnet_viz.render import (
    BAR_COLOR,
    WHITE,
    attribution_overlay,
    channel_overlay,
    colorbar,
    colorize,
    colormap_lut,
    feature_grid,
    filter_grid,
    grid_layout,
    heatmap_image,
    hstack,
    label,
    shared_vmax,
    strongest_channels_strip,
    to_uint8,
    top_k_chart,
    vector_strip,
    vstack,
)

BG = (10, 20, 30)  # a background no colormap or filter produces, so gap pixels are unambiguous


def px(image: Image.Image) -> np.ndarray:
    """The image as (H, W, 3) uint8, after checking it is what every render function promises."""
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    a = np.asarray(image)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    return a


def oracle(name: str, x: np.ndarray | list[float]) -> np.ndarray:
    """matplotlib's own colours for x in [0, 1], as (..., 3) uint8."""
    return matplotlib.colormaps[name](np.asarray(x, dtype=np.float64), bytes=True)[..., :3]


def photo(width: int = 32, height: int = 24) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------------
# grid_layout


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (64, (8, 8)),
        (96, (8, 12)),
        (192, (12, 16)),
        (256, (16, 16)),
        (384, (16, 24)),
        (1000, (25, 40)),
        (4096, (64, 64)),
        (1, (1, 1)),
        (3, (1, 3)),
        (7, (3, 3)),  # prime: 1 x 7 is too wide, so ceil(sqrt) columns with a part-filled last row
        (0, (0, 0)),
    ],
)
def test_grid_layout_known_sizes(n: int, expected: tuple[int, int]) -> None:
    assert grid_layout(n) == expected


def test_grid_layout_fits_and_is_never_taller_than_wide() -> None:
    for n in range(1, 600):
        rows, cols = grid_layout(n)
        assert rows * cols >= n
        assert (rows - 1) * cols < n  # no empty last row
        assert cols >= rows


def test_grid_layout_columns() -> None:
    assert grid_layout(12, columns=5) == (3, 5)
    assert grid_layout(3, columns=8) == (1, 3)  # no empty columns
    with pytest.raises(ValueError, match="columns"):
        grid_layout(3, columns=0)


# --------------------------------------------------------------------------------------------------------
# colorize


@pytest.mark.parametrize("name", ["viridis", "inferno", "RdBu_r", "gray"])
def test_colorize_matches_matplotlib(name: str) -> None:
    got = colorize(np.array([[0.0, 0.5, 1.0]]), cmap=name, vmin=0.0, vmax=1.0)
    assert got.shape == (1, 3, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], oracle(name, [0.0, 0.5, 1.0]))
    lut = colormap_lut(name)
    np.testing.assert_array_equal(got[0], lut[[0, 128, 255]])
    # Every one of the 256 bins, probed at its centre.
    centres = (np.arange(256) + 0.5) / 256
    np.testing.assert_array_equal(colorize(centres, cmap=name, vmin=0, vmax=1), oracle(name, centres))


def test_colorize_default_range_is_min_to_max() -> None:
    lut = colormap_lut("viridis")
    np.testing.assert_array_equal(colorize(np.array([2.0, 4.0, 6.0])), lut[[0, 128, 255]])
    # Explicit limits clip what lies outside them.
    np.testing.assert_array_equal(colorize(np.array([-5.0, 50.0]), vmin=0, vmax=1), lut[[0, 255]])


def test_colorize_accepts_tensors_with_grad() -> None:
    t = torch.linspace(-1, 1, 12, requires_grad=True).reshape(3, 4)
    np.testing.assert_array_equal(colorize(t), colorize(t.detach().numpy()))


@pytest.mark.parametrize("values", [np.full((4, 5), 3.0), np.full((4, 5), np.nan), np.zeros((0, 3))])
def test_colorize_constant_nan_and_empty_do_not_divide_by_zero(values: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning here would mean a 0/0 somewhere
        got = colorize(values, cmap="viridis")
    assert got.shape == (*values.shape, 3)
    assert (got == colormap_lut("viridis")[0]).all()


def test_colorize_nan_and_inf_pixels() -> None:
    lut = colormap_lut("viridis")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = colorize(np.array([0.0, np.nan, 1.0, np.inf, -np.inf]))
    np.testing.assert_array_equal(got, lut[[0, 0, 255, 255, 0]])


def test_colorize_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="vmin"):
        colorize(np.zeros(3), vmin=1, vmax=0)
    with pytest.raises(ValueError, match="colormap"):
        colorize(np.zeros(3), cmap="no-such-map")


def test_colormap_lut_is_cached_and_read_only() -> None:
    lut = colormap_lut("viridis")
    assert lut is colormap_lut("viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    with pytest.raises(ValueError):
        lut[0, 0] = 1


def test_to_uint8() -> None:
    np.testing.assert_array_equal(to_uint8([0.0, 0.5, 1.0, 2.0, -1.0, np.nan]), [0, 128, 255, 255, 0, 0])


# --------------------------------------------------------------------------------------------------------
# filter_grid


def test_filter_grid_tiles_gaps_and_colours() -> None:
    w = np.zeros((3, 3, 2, 2), np.float32)  # (C_out, 3, k, k)
    w[0, 0] = 1.0  # filter 0: red channel on, the rest off -> pure red after min-max
    w[1] = -5.0
    w[1, 2] = 5.0  # filter 1: blue, on another scale (normalised on its own)
    w[2] = 7.0  # filter 2: constant -> mid grey
    image = filter_grid(w, scale=4, gap=2, background=BG)
    a = px(image)
    assert grid_layout(3) == (1, 3)
    assert a.shape == (8, 3 * 8 + 2 * 2, 3)  # 2 px * 4, three tiles, two gaps
    assert (a[:, 0:8] == (255, 0, 0)).all()
    assert (a[:, 8:10] == BG).all()
    assert (a[:, 10:18] == (0, 0, 255)).all()
    assert (a[:, 18:20] == BG).all()
    assert (a[:, 20:28] == (128, 128, 128)).all()


def test_filter_grid_min_max_per_filter_and_pixel_order() -> None:
    w = np.zeros((1, 3, 2, 2), np.float32)
    w[0, 0] = [[0.0, 1.0], [2.0, 3.0]]  # red ramp, green and blue 0: min 0, max 3 over the whole filter
    a = px(filter_grid(w, scale=1, gap=0))
    np.testing.assert_array_equal(a[..., 0], [[0, 85], [170, 255]])
    assert (a[..., 1:] == 0).all()


def test_filter_grid_alexnet_conv1_size_and_tensor_input() -> None:
    weight = torch.nn.Conv2d(3, 64, 11).weight  # (64, 3, 11, 11), requires grad
    image = filter_grid(weight, scale=6, gap=2)
    assert image.size == (8 * 66 + 7 * 2, 8 * 66 + 7 * 2)
    px(image)


def test_filter_grid_rejects_deeper_layers() -> None:
    with pytest.raises(ValueError, match="feature_grid"):
        filter_grid(np.zeros((192, 64, 5, 5)))


def test_filter_grid_survives_nan() -> None:
    w = np.full((2, 3, 3, 3), np.nan, np.float32)
    w[1, 0, 0, 0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = px(filter_grid(w, scale=1, gap=0))
    assert (a[:, :3] == 128).all()  # no finite value: a neutral grey tile


# --------------------------------------------------------------------------------------------------------
# feature_grid


def _tile(a: np.ndarray, i: int, *, cols: int, size: int, zoom: int, gap: int) -> np.ndarray:
    """The pixels of tile i of a grid drawn by feature_grid."""
    r, c = divmod(i, cols)
    pitch = size * zoom + gap
    return a[r * pitch : r * pitch + size * zoom, c * pitch : c * pitch + size * zoom]


def test_feature_grid_sort_puts_largest_mean_first() -> None:
    offsets = np.array([1.0, 5.0, 3.0, 5.0], np.float32)
    act = np.zeros((4, 2, 2), np.float32)  # (C, H, W)
    for ch in range(4):
        act[ch] = offsets[ch]
        act[ch].flat[ch] += 1.0  # each channel's hot pixel marks which channel a tile shows
    image, order = feature_grid(act, sort=True, cell=4, gap=1)
    means = act.mean(axis=(1, 2))
    assert order == [1, 3, 2, 0]
    assert order == list(np.argsort(-means, kind="stable"))
    a = px(image)
    lut = colormap_lut("viridis")
    assert a.shape == (2 * 4 + 1, 2 * 4 + 1, 3)  # 2 x 2 grid, maps zoomed 2x to 4 px, 1 px gap
    for i, ch in enumerate(order):
        tile = _tile(a, i, cols=2, size=2, zoom=2, gap=1)
        hot = np.zeros((2, 2), bool)
        hot.flat[ch] = True
        expected = np.where(hot[..., None], lut[255], lut[0]).repeat(2, 0).repeat(2, 1)
        np.testing.assert_array_equal(tile, expected)
    assert (a[4, :] == WHITE).all() and (a[:, 4] == WHITE).all()  # the gaps


def test_feature_grid_unsorted_keeps_channel_order() -> None:
    act = np.random.default_rng(1).random((5, 3, 3))
    _, order = feature_grid(act)
    assert order == [0, 1, 2, 3, 4]


def test_feature_grid_channel_vs_layer_normalisation() -> None:
    act = np.zeros((2, 1, 2), np.float32)
    act[0, 0] = [0.0, 1.0]
    act[1, 0] = [0.0, 1000.0]
    lut = colormap_lut("viridis")
    a = px(feature_grid(act, normalize="channel", cell=1, gap=0)[0])
    np.testing.assert_array_equal(a[0], lut[[0, 255, 0, 255]])  # each channel's max -> top colour
    a = px(feature_grid(act, normalize="layer", cell=1, gap=0)[0])
    np.testing.assert_array_equal(a[0], lut[[0, 0, 0, 255]])  # 1 / 1000 of the layer's range -> bin 0


def test_feature_grid_max_channels_and_layout_fill() -> None:
    act = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 2, 2), np.float32)
    image, order = feature_grid(act, sort=True, max_channels=5, cell=2, gap=1, background=BG)
    assert order == [9, 8, 7, 6, 5]
    a = px(image)
    assert grid_layout(5) == (2, 3)
    assert a.shape == (2 * 2 + 1, 3 * 2 + 2, 3)  # 2 x 3 tiles of 2 px, the last cell empty
    assert (a[3:, 6:] == BG).all()
    assert (a[3:, 3:5] == colormap_lut("viridis")[0]).all()  # tile 4 is channel 5: constant, lowest colour


@pytest.mark.parametrize(
    ("shape", "grid", "zoom"),
    [
        ((64, 55, 55), (8, 8), 3),
        ((192, 27, 27), (12, 16), 3),
        ((384, 13, 13), (16, 24), 4),
        ((256, 13, 13), (16, 16), 5),
        ((256, 6, 6), (16, 16), 11),
    ],
)
def test_feature_grid_default_size_suits_a_projector(
    shape: tuple[int, int, int], grid: tuple[int, int], zoom: int
) -> None:
    act = torch.rand(1, *shape)  # with the batch axis, as a hook captures it
    image, order = feature_grid(act)
    rows, cols = grid
    assert 1000 <= image.width <= 1400
    assert sorted(order) == list(range(shape[0]))
    assert image.width == cols * (shape[2] * zoom + 1) - 1  # gap 1
    assert image.height == rows * (shape[1] * zoom + 1) - 1


def test_feature_grid_dead_and_nan_channels() -> None:
    act = np.random.default_rng(2).random((3, 4, 4)).astype(np.float32)
    act[0] = 0.0  # a dead ReLU channel
    act[2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, order = feature_grid(act, sort=True, cell=4, gap=0)
    assert order[-1] == 2  # no finite value: sorted last
    a = px(image)
    lut = colormap_lut("viridis")
    assert (_tile(a, order.index(0), cols=2, size=4, zoom=1, gap=0) == lut[0]).all()
    assert (_tile(a, order.index(2), cols=2, size=4, zoom=1, gap=0) == lut[0]).all()


def test_feature_grid_rejects_vectors_with_a_hint() -> None:
    with pytest.raises(ValueError, match="vector_strip"):
        feature_grid(np.zeros(4096))
    with pytest.raises(ValueError, match="normalize"):
        feature_grid(np.zeros((2, 2, 2)), normalize="global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gap"):
        feature_grid(np.zeros((2, 2, 2)), gap=-1)


@settings(max_examples=60, deadline=None)
@given(
    c=st.integers(1, 40),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    cell=st.integers(1, 30),
    gap=st.integers(0, 3),
    sort=st.booleans(),
)
def test_feature_grid_geometry_property(c: int, h: int, w: int, cell: int, gap: int, sort: bool) -> None:
    act = np.random.default_rng(c * 100 + h * 10 + w).standard_normal((c, h, w))
    image, order = feature_grid(act, cell=cell, gap=gap, sort=sort, background=BG)
    rows, cols = grid_layout(c)
    zoom = max(1, round(cell / max(h, w)))
    assert sorted(order) == list(range(c))
    # Oracle: the same grid built the slow, obvious way, tile by tile with np.repeat.
    expected = np.empty((rows * (h * zoom + gap) - gap, cols * (w * zoom + gap) - gap, 3), np.uint8)
    expected[...] = BG
    for i, ch in enumerate(order):
        r, col = divmod(i, cols)
        tile = colorize(act[ch]).repeat(zoom, axis=0).repeat(zoom, axis=1)
        y, x = r * (h * zoom + gap), col * (w * zoom + gap)
        expected[y : y + h * zoom, x : x + w * zoom] = tile
    np.testing.assert_array_equal(px(image), expected)


# --------------------------------------------------------------------------------------------------------
# vector_strip


def test_vector_strip_fc6_is_a_square_of_cells() -> None:
    values = np.arange(4096, dtype=np.float32)
    a = px(vector_strip(values, width=640))
    assert a.shape == (640, 640, 3)  # 64 x 64 cells of 10 px
    lut = colormap_lut("viridis")
    for r, c in [(0, 0), (0, 63), (31, 17), (63, 63)]:
        v = r * 64 + c
        expected = lut[min(v * 256 // 4095, 255)]
        assert (a[r * 10 : r * 10 + 10, c * 10 : c * 10 + 10] == expected).all()


def test_vector_strip_unused_cells_and_columns() -> None:
    a = px(vector_strip(np.ones(10), columns=4, width=40, background=BG))
    assert a.shape == (30, 40, 3)  # 3 rows x 4 columns of 10 px
    assert (a[20:, 20:] == BG).all()  # cells 10 and 11 are empty
    assert (a[:20] == colormap_lut("viridis")[0]).all()  # a constant vector: one colour
    strip = vector_strip(np.arange(5), columns=5, width=50, height=7)
    assert strip.size == (50, 7)


# --------------------------------------------------------------------------------------------------------
# overlays


def test_channel_overlay_alpha_extremes_and_upsampling() -> None:
    image = photo(8, 6)
    fmap = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(px(channel_overlay(image, fmap, alpha=0.0)), np.asarray(image))
    a = px(channel_overlay(image, fmap, alpha=1.0, cmap="viridis"))
    lut = colormap_lut("viridis")
    assert a.shape == (6, 8, 3)
    assert (a[:, 0] == lut[0]).all() and (a[:, -1] == lut[255]).all()  # bilinear keeps the edge values
    # Increasing left to right: every column's colour is a LUT entry further along.
    row = [next(i for i in range(256) if (lut[i] == a[0, x]).all()) for x in range(8)]
    assert row == sorted(row) and row[0] == 0 and row[-1] == 255


def test_channel_overlay_constant_and_nan_maps() -> None:
    image = photo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fmap in (np.zeros((3, 3)), np.full((3, 3), np.nan)):
            a = px(channel_overlay(image, fmap, alpha=1.0))
            assert (a == colormap_lut("inferno")[0]).all()


def test_attribution_overlay_alpha_extremes() -> None:
    image = photo()
    heat = torch.rand(24, 32)
    np.testing.assert_array_equal(px(attribution_overlay(image, heat, alpha=0.0)), np.asarray(image))
    pure = px(attribution_overlay(image, heat, alpha=1.0))
    np.testing.assert_array_equal(pure, px(heatmap_image(heat)))
    half = px(attribution_overlay(image, heat, alpha=0.5)).astype(int)
    mean = (np.asarray(image).astype(int) + pure.astype(int)) / 2
    assert np.abs(half - mean).max() <= 1


def test_signed_heat_is_symmetric_around_the_diverging_centre() -> None:
    heat = np.array([[-2.0, 0.0, 2.0, 1.0]])
    a = px(heatmap_image(heat, signed=True))
    lut = colormap_lut("RdBu_r")
    np.testing.assert_array_equal(a[0, :3], lut[[0, 128, 255]])
    assert (a[0, 1] > 230).all()  # 0 is the white-ish centre
    assert a[0, 0, 2] > a[0, 0, 0] and a[0, 2, 0] > a[0, 2, 2]  # negative blue, positive red
    # A shared vmax puts +1 at three quarters of [-2, 2] even when this map's own max is 1.
    np.testing.assert_array_equal(px(heatmap_image(heat[:, 1:], signed=True, vmax=2.0))[0, 2], lut[192])


def test_unsigned_heat_scale_and_shared_vmax() -> None:
    heat = np.array([[0.0, 0.5, 1.0, -1.0]])
    lut = colormap_lut("inferno")
    np.testing.assert_array_equal(px(heatmap_image(heat))[0], lut[[0, 128, 255, 0]])  # negatives clip
    np.testing.assert_array_equal(px(heatmap_image(heat, vmax=2.0))[0], lut[[0, 64, 128, 0]])
    np.testing.assert_array_equal(
        px(heatmap_image(heat, cmap="jet"))[0], colormap_lut("jet")[[0, 128, 255, 0]]
    )


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("fill", [0.0, np.nan, 3.0])
def test_degenerate_heat_maps_give_finite_images(signed: bool, fill: float) -> None:
    image = photo()
    heat = np.full((5, 5), fill)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = px(attribution_overlay(image, heat, alpha=1.0, signed=signed))
    assert a.shape == (24, 32, 3)
    assert (a == a[0, 0]).all()  # one colour
    if signed and fill != 3.0:
        np.testing.assert_array_equal(a[0, 0], colormap_lut("RdBu_r")[128])  # no signal: neutral centre


def test_heatmap_image_resizes_and_squeezes() -> None:
    heat = torch.rand(1, 1, 7, 7)  # as some attribution methods return it
    assert heatmap_image(heat, size=(20, 10)).size == (20, 10)
    assert heatmap_image(heat).size == (7, 7)


def test_shared_vmax() -> None:
    maps = [np.array([1.0, -3.0]), torch.tensor([2.0, np.nan])]
    assert shared_vmax(maps, signed=True) == 3.0
    assert shared_vmax(maps) == 2.0
    assert shared_vmax([np.arange(101.0)], percentile=50) == 50.0
    assert shared_vmax([np.full(3, np.nan)]) == 0.0
    assert shared_vmax([]) == 0.0


# --------------------------------------------------------------------------------------------------------
# charts and text


def _runs(line: np.ndarray, color: tuple[int, int, int]) -> list[int]:
    """Lengths of the runs of exactly `color` along a row of pixels."""
    hit = (line == color).all(axis=-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hit, [0]])))
    return list(edges[1::2] - edges[::2])


def test_top_k_chart_bars_are_proportional() -> None:
    probs = [0.6, 0.2, 0.05]
    bar_height, pad, row_gap = 44, 12, 8
    a = px(top_k_chart(["golden retriever", "Labrador retriever", "tennis ball"], probs))
    assert a.shape[1] == 900
    assert a.shape[0] == 2 * pad + 3 * bar_height + 2 * row_gap
    lengths = []
    for i in range(3):
        middle = pad + i * (bar_height + row_gap) + bar_height // 2
        runs = _runs(a[middle], BAR_COLOR)
        assert len(runs) == 1
        lengths.append(runs[0])
    assert lengths[0] > lengths[1] > lengths[2]
    assert abs(lengths[0] / lengths[1] - 3.0) < 0.02
    assert abs(lengths[0] / lengths[2] - 12.0) < 0.3
    # The bar of 0.6 starts where the others start.
    starts = [int(np.argmax((a[pad + i * 52 + 22] == BAR_COLOR).all(axis=-1))) for i in range(3)]
    assert len(set(starts)) == 1


def test_top_k_chart_text_is_projector_sized() -> None:
    a = px(top_k_chart(["Hg"], [0.0], bar_height=44))
    ink = (a.astype(int).sum(axis=-1) < 300).any(axis=1)  # rows holding dark text pixels
    rows = np.flatnonzero(ink)
    # "H" top to "g" bottom is about 0.88 em in this font: 19 px or more means a font of 22 px or more.
    assert rows.max() - rows.min() + 1 >= 19
    assert not (a == BAR_COLOR).all(axis=-1).any()  # probability 0: no bar at all


def test_top_k_chart_rejects_mismatch_and_handles_odd_values() -> None:
    with pytest.raises(ValueError, match="labels"):
        top_k_chart(["a", "b"], [0.5])
    px(top_k_chart(["x" * 300, "nan", "neg"], [1.5, float("nan"), -0.2]))  # clipped, truncated, no crash


def test_colorbar_gradient_and_size() -> None:
    image = colorbar("RdBu_r", vmin=-1, vmax=1, width=300, height=20, label="attribution")
    a = px(image)
    assert image.width == 300
    lut = colormap_lut("RdBu_r")
    bar_rows = np.flatnonzero((a[:, 8] == lut[0]).all(axis=-1))
    assert len(bar_rows) == 20  # the bar is `height` px thick
    y = bar_rows[0]
    np.testing.assert_array_equal(a[y, 8], lut[0])
    np.testing.assert_array_equal(a[y, 300 - 9], lut[255])
    np.testing.assert_array_equal(a[y, 8 + 142], lut[128])  # the middle of 284 px
    px(colorbar("viridis", vmin=0, vmax=0))  # a zero range does not crash


def test_strongest_channels_strip_picks_the_top_means() -> None:
    cell = 16
    act = np.zeros((3, 4, 4), np.float32)  # (C, H, W)
    act[0] = 0.0  # weakest, all lowest colour
    act[1] = np.arange(4)[None, :] / 3  # middle: a ramp whose first column is the lowest colour
    act[2] = 10.0  # strongest: constant, all lowest colour
    activations = {"conv": act, "fc6": np.ones(4096)}  # the 1-D layer is skipped
    a = px(strongest_channels_strip(activations, per_layer=2, cell=cell))
    lowest = (a == colormap_lut("viridis")[0]).all(axis=-1).sum()
    assert lowest == cell * cell + cell * cell // 4  # channel 2 whole, channel 1 its first column
    assert (a == colormap_lut("viridis")[255]).all(axis=-1).sum() == cell * cell // 4  # ramp's top column


def test_strongest_channels_strip_rows_and_errors() -> None:
    acts = {"conv1": torch.rand(1, 64, 55, 55), "conv5": torch.rand(256, 13, 13)}
    one = px(strongest_channels_strip({"conv1": acts["conv1"]}, per_layer=6, cell=96))
    two = px(strongest_channels_strip(acts, per_layer=6, cell=96))
    assert two.shape[0] > one.shape[0] + 96  # a second row
    assert two.shape[1] >= 6 * 96
    with pytest.raises(ValueError, match="activation"):
        strongest_channels_strip({"fc": np.ones(10)})


# --------------------------------------------------------------------------------------------------------
# composition


def test_hstack_vstack_sizes_gaps_and_centring() -> None:
    red = Image.new("RGB", (10, 4), (255, 0, 0))
    blue = Image.new("RGB", (6, 8), (0, 0, 255))
    a = px(hstack([red, blue], gap=3, background=BG))
    assert a.shape == (8, 19, 3)
    assert (a[2:6, :10] == (255, 0, 0)).all() and (a[:2, :10] == BG).all()  # centred vertically
    assert (a[:, 10:13] == BG).all()
    assert (a[:, 13:] == (0, 0, 255)).all()
    b = px(vstack([red, blue.convert("L")], gap=2, background=BG))  # non-RGB inputs are converted
    assert b.shape == (14, 10, 3)
    assert (b[:4] == (255, 0, 0)).all() and (b[4:6] == BG).all()
    assert (b[6:, 2:8] == b[6, 2]).all() and (b[6:, :2] == BG).all()
    with pytest.raises(ValueError):
        hstack([])


def test_label_puts_text_above_an_unchanged_image() -> None:
    image = photo(200, 50)
    out = px(label(image, "Saliency", size=24))
    assert out.shape[1] == 200 and out.shape[0] > 50 + 20
    np.testing.assert_array_equal(out[-50:], np.asarray(image))
    caption = out[:-50]
    assert (caption.astype(int).sum(axis=-1) < 300).any()  # some ink
    wide = label(Image.new("RGB", (10, 10)), "a caption wider than the image")
    assert wide.width > 10


# --------------------------------------------------------------------------------------------------------
# purity


def test_render_imports_neither_torch_nor_gradio() -> None:
    code = (
        "import sys, numpy as np, alexnet_viz.render as r; r.colorize(np.zeros(2)); "
        "bad = [m for m in ('torch', 'gradio', 'matplotlib.pyplot') if m in sys.modules]; "
        "sys.exit(', '.join(bad) or 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_public_names_exist() -> None:
    for name in render.__all__:
        assert hasattr(render, name), name


# --- tile_at / share_chart (added with the UI: a click on a grid picks a channel) ---------------------------


@pytest.mark.parametrize(("n", "gap"), [(64, 1), (96, 2), (192, 1), (256, 1), (7, 3)])
def test_tile_at_inverts_the_feature_grid_layout(n: int, gap: int) -> None:
    act = np.zeros((n, 13, 13), np.float32)
    image, order = render.feature_grid(act, gap=gap)
    _rows, cols = render.grid_layout(n)
    side = (image.width - gap * (cols - 1)) // cols  # each tile's side in px
    for index in {0, 1, cols - 1, cols, n - 1}:
        r, c = divmod(index, cols)
        centre = (c * (side + gap) + side // 2, r * (side + gap) + side // 2)
        assert render.tile_at(image.size, n, centre, gap=gap) == index
        corner = (c * (side + gap), r * (side + gap))  # first pixel of the tile belongs to it
        assert render.tile_at(image.size, n, corner, gap=gap) == index
    if gap:
        assert render.tile_at(image.size, n, (side, 0), gap=gap) is None  # first gap column
    assert render.tile_at(image.size, n, (-1, 5), gap=gap) is None
    assert render.tile_at(image.size, n, (image.width, 5), gap=gap) is None
    assert order == list(range(n))


def test_tile_at_matches_filter_grid_and_skips_unused_cells() -> None:
    w = np.zeros((96, 3, 11, 11), np.float32)
    w[37, 0] = 1.0  # filter 37 is pure red
    image = render.filter_grid(w, scale=6, gap=2)
    pixels = np.asarray(image)
    red = np.argwhere((pixels[..., 0] == 255) & (pixels[..., 1] == 0))
    y, x = red.mean(axis=0)
    assert render.tile_at(image.size, 96, (x, y), gap=2) == 37
    # 7 tiles in a 3x3 layout: the last two cells are empty
    rows, cols = render.grid_layout(7)
    if rows * cols > 7:
        assert render.tile_at((cols * 10, rows * 10), 7, (cols * 10 - 1, rows * 10 - 1), gap=0) is None


@pytest.mark.parametrize(("n", "gap"), [(64, 2), (96, 2), (192, 1), (7, 3)])
def test_tile_at_with_snap_gives_every_gap_to_the_tile_before_it(n: int, gap: int) -> None:
    """With snap, every pixel of a used cell, its gaps included, is that cell's tile (a click a pixel off a
    tile picks it); without snap, exactly the gap pixels are None. Empty cells and points outside stay None."""
    image, _ = render.feature_grid(np.zeros((n, 13, 13), np.float32), gap=gap)
    _rows, cols = render.grid_layout(n)
    side = (image.width - gap * (cols - 1)) // cols
    for y in range(image.height):
        for x in range(0, image.width, 3):
            cell = (y // (side + gap)) * cols + x // (side + gap)
            in_gap = x % (side + gap) >= side or y % (side + gap) >= side
            expected = cell if cell < n else None
            assert render.tile_at(image.size, n, (x, y), gap=gap, snap=True) == expected, (x, y)
            assert render.tile_at(image.size, n, (x, y), gap=gap) == (None if in_gap else expected), (x, y)
    assert render.tile_at(image.size, n, (image.width, 0), gap=gap, snap=True) is None
    assert render.tile_at(image.size, n, (0, -1), gap=gap, snap=True) is None


def test_share_chart_bar_lengths_follow_the_shares() -> None:
    image = render.share_chart(["conv", "fc"], [0.1, 0.9], [0.8, 0.2])
    pixels = np.asarray(image)

    def run_length(color: tuple[int, int, int]) -> list[int]:
        mask = np.all(pixels == color, axis=-1)
        rows = [int(m.sum()) for m in mask if m.sum() > 30]  # bar rows (skip the legend swatch)
        return sorted(set(rows))

    blue, orange = run_length(render.PARAM_COLOR), run_length(render.MAC_COLOR)
    assert len(blue) == 2 and len(orange) == 2
    assert blue[1] / blue[0] == pytest.approx(9, rel=0.05)  # 0.9 vs 0.1
    assert orange[1] / orange[0] == pytest.approx(4, rel=0.05)  # 0.8 vs 0.2
    with pytest.raises(ValueError, match="one parameter share"):
        render.share_chart(["a"], [0.1, 0.2], [0.3])


# --- issue #10: pictures that read from the back of a lecture hall ------------------------------------------


def _glyph(font: object, char: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(char)  # type: ignore[attr-defined]
    return mask.size, bytes(mask)


@pytest.mark.parametrize("bold", [False, True])
def test_font_has_every_glyph_the_page_uses(bold: bool) -> None:
    font = render._font(24, bold)
    missing = _glyph(font, "\ue000")  # a private-use code point no font here defines: the missing-glyph box
    for char in "×–→≥·é±−…":
        assert _glyph(font, char) != missing, f"{char!r} renders as the missing-glyph box"
    # In a picture: the caption with "×" differs from the same caption with an undefined character.
    image = Image.new("RGB", (300, 10), WHITE)
    times = px(label(image, "Input × gradient", size=24))
    boxed = px(label(image, "Input \ue000 gradient", size=24))
    assert times.shape == boxed.shape and (times != boxed).any()


def _bar_rows(a: np.ndarray, top: int, cmap: str, x0: int, x1: int) -> np.ndarray:
    """Rows at or below `top` whose pixels x0..x1 are all entries of `cmap`'s table: the colour bar."""
    lut = {tuple(c) for c in colormap_lut(cmap).tolist()}
    return np.array(
        [y for y in range(top, a.shape[0]) if all(tuple(p) in lut for p in a[y, x0:x1].tolist())], int
    )


def _lut_index(cmap: str, color: np.ndarray) -> int:
    return int(np.flatnonzero((colormap_lut(cmap) == color).all(axis=1))[0])


@pytest.mark.parametrize("kind", ["signed", "unsigned", "channel"])
def test_colorbar_under_an_overlay_matches_its_colours(kind: str) -> None:
    width, height, pad = 200, 6, 8
    bar_len = width - 2 * pad
    base = photo(width, height)
    lo, hi = (-3.0, 3.0) if kind == "signed" else (0.5, 4.0) if kind == "channel" else (0.0, 4.0)
    # Row 0 holds, at column x, the value at the centre of bar pixel x; the map's range is [lo, hi].
    values = lo + (np.arange(width) - pad + 0.5) / bar_len * (hi - lo)
    heat = np.full((height, width), (lo + hi) / 2, np.float32)
    heat[0] = np.clip(values, lo, hi)
    heat[1, 0], heat[1, 1] = lo, hi
    if kind == "channel":
        cmap = "inferno"
        plain = channel_overlay(base, heat, alpha=1.0)
        out = channel_overlay(base, heat, alpha=1.0, colorbar=True, bar_label="conv5 #3")
        title: str | None = "conv5 #3"
    else:
        cmap = "RdBu_r" if kind == "signed" else "inferno"
        plain = attribution_overlay(base, heat, alpha=1.0, signed=kind == "signed")
        out = attribution_overlay(base, heat, alpha=1.0, signed=kind == "signed", colorbar=True)
        title = None
    a = px(out)
    # The bar always runs through the whole colormap; what says which value each colour means is its
    # ticks, so the part under the picture must be exactly the bar of the range the picture used.
    np.testing.assert_array_equal(a[height:], px(colorbar(cmap, vmin=lo, vmax=hi, width=width, label=title)))
    assert out.width == width and out.height > height + 24
    np.testing.assert_array_equal(a[:height], px(plain))  # the picture itself is unchanged
    rows = _bar_rows(a, height, cmap, pad, width - pad)
    assert len(rows) == 24 and np.all(np.diff(rows) == 1)  # one bar, 24 px thick
    bar = a[rows[0]]
    for x in range(pad, width - pad):  # within one quantisation step of the colour the picture gives v
        assert abs(_lut_index(cmap, bar[x]) - _lut_index(cmap, a[0, x])) <= 1, x
    assert _lut_index(cmap, bar[pad]) <= 3 and _lut_index(cmap, bar[width - pad - 1]) >= 252  # lo..hi


def test_colorbar_ticks_are_projector_sized_and_say_the_range() -> None:
    wide = px(colorbar("RdBu_r", vmin=-0.00272, vmax=0.00272, width=640, label="Input × gradient"))
    narrow = px(colorbar("RdBu_r", vmin=-0.00272, vmax=0.00272, width=224))
    lut = colormap_lut("RdBu_r")
    for a in (wide, narrow):
        bar = _bar_rows(a, 0, "RdBu_r", 8, a.shape[1] - 8)
        below = a[bar[-1] + 1 :]
        ink = np.flatnonzero((below.astype(int).sum(axis=-1) < 200).any(axis=1))
        assert ink.max() - ink.min() + 1 >= 15  # tick marks + digits of a 22 px font (digits are 0.73 em)
        assert lut[0].tolist() != lut[255].tolist()
    # Tick texts never collide: 640 px holds three (-v, 0, v); 224 px drops the middle one for two.
    for a, texts in ((wide, 3), (narrow, 2)):
        text_rows = a[_bar_rows(a, 0, "RdBu_r", 8, a.shape[1] - 8)[-1] + 8 :]
        ink = np.flatnonzero((text_rows.astype(int).sum(axis=-1) < 200).any(axis=0))
        assert np.count_nonzero(np.diff(ink) > 10) == texts - 1  # blank runs between texts, not in them


def test_magnitude_opacity_keeps_the_photo_where_there_is_no_attribution() -> None:
    base = photo(7, 3)
    heat = np.array(
        [
            [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, -0.0],
            [0.0, -0.5, -1.0, -1.5, -2.0, -9.0, 0.0],
            [0.0, 0.25, -0.25, 1.0, 1.0, 1.0, 1.0],
        ],
        np.float32,
    )
    alpha, vmax = 0.6, 2.0
    out = px(attribution_overlay(base, heat, alpha=alpha, signed=True, vmax=vmax, opacity="magnitude")).astype(int)
    photo_px = np.asarray(base).astype(int)
    zero = heat == 0
    np.testing.assert_array_equal(out[zero], photo_px[zero])  # no attribution: the photo, exactly
    plain = px(attribution_overlay(base, heat, alpha=alpha, signed=True, vmax=vmax)).astype(int)
    full = np.abs(heat) >= vmax
    assert np.abs(out[full] - plain[full]).max() <= 1  # at |v| >= vmax: the uniform blend at alpha
    # Everywhere: photo * (1 - alpha m) + colour * alpha m with m = |v| / vmax clipped (hand-computed).
    colour = px(heatmap_image(heat, signed=True, vmax=vmax)).astype(float)
    m = np.clip(np.abs(heat) / vmax, 0, 1)[..., None]
    expected = photo_px * (1 - alpha * m) + colour * alpha * m
    assert np.abs(out - expected).max() <= 1
    # Monotone: on a black photo, out = w * colour; the recovered opacity w grows with |v| up to alpha.
    black = Image.new("RGB", (11, 2), (0, 0, 0))
    ramp = np.linspace(0.0, 2.5, 11)[None, :] * np.array([[1.0], [-1.0]])  # positive row, negative row
    out = px(attribution_overlay(black, ramp, alpha=alpha, signed=True, vmax=vmax, opacity="magnitude"))
    colour = px(heatmap_image(ramp, signed=True, vmax=vmax)).astype(float)
    w = out.max(axis=-1) / colour.max(axis=-1)  # the brightest channel: the least rounding
    assert (np.diff(w, axis=1) >= -0.01).all() and (w[:, 0] == 0).all()
    assert np.allclose(w[:, -3:], alpha, atol=0.01)  # |v| >= vmax: full alpha
    # Unsigned maps: negatives count as no attribution.
    neg = px(attribution_overlay(base, -np.abs(heat), alpha=alpha, opacity="magnitude"))
    np.testing.assert_array_equal(neg, np.asarray(base))
    with pytest.raises(ValueError, match="opacity"):
        attribution_overlay(base, heat, opacity="linear")  # type: ignore[arg-type]


def _marks(grid: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """(N, 2) (x, y) of the pixels where numbers or a ring changed a grid."""
    ys, xs = np.nonzero((grid != plain).any(axis=-1))
    return np.stack([xs, ys], axis=1)


def _tag_box(grid: np.ndarray, plain: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The changed pixels in the tile at (x0, y0), cropped to their bounding box (the number's tag)."""
    tile, ref = grid[y0 : y0 + side, x0 : x0 + side], plain[y0 : y0 + side, x0 : x0 + side]
    ys, xs = np.nonzero((tile != ref).any(axis=-1))
    return tile[: ys.max() + 1, : xs.max() + 1]


def test_feature_grid_numbers_name_the_channel_not_the_position() -> None:
    rng = np.random.default_rng(3)
    act = rng.random((12, 13, 13)).astype(np.float32) + np.arange(12)[:, None, None] % 5  # sort shuffles
    zoom, gap = 5, 1
    side = 13 * zoom
    sorted_plain, order = feature_grid(act, sort=True, cell=side, gap=gap)
    sorted_grid, order2 = feature_grid(act, sort=True, cell=side, gap=gap, numbers=True)
    plain, _ = feature_grid(act, cell=side, gap=gap)
    grid, _ = feature_grid(act, cell=side, gap=gap, numbers=True)
    assert order == order2 and order != list(range(12))
    assert sorted_grid.size == sorted_plain.size  # numbers do not move the layout
    a, p, sa, sp = px(grid), px(plain), px(sorted_grid), px(sorted_plain)
    _rows, cols = grid_layout(12)
    marks = _marks(sa, sp)
    assert all(render.tile_at(sorted_grid.size, 12, xy, gap=gap) is not None for xy in marks)  # never a gap
    tags = {}
    for ch in range(12):
        r, c = divmod(ch, cols)
        tags[ch] = _tag_box(a, p, c * (side + gap), r * (side + gap), side)
        ink = tags[ch].astype(int).sum(axis=-1)
        assert set(np.unique(tags[ch].reshape(-1, 3), axis=0)[:, 0]) >= {0, 255}  # white on black
        assert (tags[ch] == tags[ch][..., :1]).all()  # grey levels only: readable on any colour
        digits = np.flatnonzero((ink > 600).any(axis=1))
        assert digits.max() - digits.min() + 1 >= 12  # digits at least 12 px tall
    assert len({t.tobytes() for t in tags.values()}) == 12  # every channel its own number
    for i, ch in enumerate(order):  # tile i of the sorted grid carries channel order[i]'s number
        r, c = divmod(i, cols)
        box = tags[ch]
        y0, x0 = r * (side + gap), c * (side + gap)
        np.testing.assert_array_equal(sa[y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]], box)


def test_feature_grid_selection_rings_the_channel_wherever_it_is_sorted() -> None:
    act = np.random.default_rng(4).random((64, 11, 11)).astype(np.float32)
    act += np.arange(64)[:, None, None] % 7  # channel 5 does not land at tile 5 when sorted
    gap = 2
    plain, order = feature_grid(act, sort=True, gap=gap)
    ringed, _ = feature_grid(act, sort=True, gap=gap, selected=5)
    both, _ = feature_grid(act, sort=True, gap=gap, selected=5, numbers=True)
    position = order.index(5)
    assert position != 5 and ringed.size == plain.size == both.size
    a, p = px(ringed), px(plain)
    marks = _marks(a, p)
    assert len(marks) > 0
    assert {render.tile_at(ringed.size, 64, xy, gap=gap) for xy in marks} == {position}  # inside that tile
    _rows, cols = grid_layout(64)
    side = (plain.width - gap * (cols - 1)) // cols
    r, c = divmod(position, cols)
    x0, y0 = c * (side + gap), r * (side + gap)
    outer = np.concatenate([a[y0, x0 : x0 + side], a[y0 + side - 1, x0 : x0 + side], a[y0 : y0 + side, x0]])
    assert (outer == render.SELECT_COLOR).all()
    assert (a[y0 + 3, x0 : x0 + side] == render.SELECT_COLOR).all()  # at least 4 px thick
    # With numbers too, every click still finds the tile it falls on (the layout is the same).
    for xy in [(x0, y0), (x0 + side - 1, y0 + side - 1), (x0 + side // 2, y0 + 2)]:
        assert render.tile_at(both.size, 64, xy, gap=gap) == position
    assert render.tile_at(both.size, 64, (x0 + side, y0), gap=gap) is None  # the gap stays a gap
    # A channel that max_channels left out rings nothing; one that does not exist is an error.
    cut, shown = feature_grid(act, sort=True, gap=gap, max_channels=8)
    missing = next(ch for ch in range(64) if ch not in shown)
    np.testing.assert_array_equal(px(feature_grid(act, sort=True, gap=gap, max_channels=8, selected=missing)[0]),
                                  px(cut))
    with pytest.raises(ValueError, match="selected"):
        feature_grid(act, selected=64)


def test_numbers_are_left_out_of_tiles_too_small_to_hold_them() -> None:
    act = np.random.default_rng(5).random((256, 6, 6)).astype(np.float32)
    small, _ = feature_grid(act, cell=24)  # 24 px tiles: no legible "255" fits
    np.testing.assert_array_equal(px(feature_grid(act, cell=24, numbers=True)[0]), px(small))
    big, _ = feature_grid(act, numbers=True)  # the default 66 px tiles hold them
    assert (px(big) != px(feature_grid(act)[0])).any()


def test_filter_grid_numbers_and_selection_stay_inside_the_tiles() -> None:
    w = np.random.default_rng(6).standard_normal((96, 3, 11, 11)).astype(np.float32)
    plain = filter_grid(w, scale=6, gap=2)
    marked = filter_grid(w, scale=6, gap=2, numbers=True, selected=37)
    assert marked.size == plain.size
    marks = _marks(px(marked), px(plain))
    tiles = {render.tile_at(marked.size, 96, xy, gap=2) for xy in marks}
    assert None not in tiles and tiles == set(range(96))  # every tile numbered, nothing in the gaps
    ring = _marks(px(filter_grid(w, scale=6, gap=2, selected=37)), px(plain))
    assert {render.tile_at(marked.size, 96, xy, gap=2) for xy in ring} == {37}
    with pytest.raises(ValueError, match="selected"):
        filter_grid(w, selected=-1)


def test_strongest_units_are_the_top_k_with_ties_in_index_order() -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 6, 1000).astype(np.float32)  # many ties
    values[[11, 500]] = np.nan
    labels = [f"class {i}" for i in range(1000)]
    got = render.strongest_units(values, k=20, labels=labels)
    finite = [i for i in range(1000) if not np.isnan(values[i])]
    expected = sorted(finite, key=lambda i: (-values[i], i))[:20]  # the oracle: sort by (-value, index)
    assert [u.index for u in got] == expected
    assert [u.value for u in got] == [float(values[i]) for i in expected]
    assert [u.label for u in got] == [labels[i] for i in expected]
    assert render.strongest_units(torch.tensor([[1.0, 3.0, 2.0]]), k=8)[0] == render.Unit(1, 3.0, None)
    with pytest.raises(ValueError, match="labels"):
        render.strongest_units(values, labels=labels[:10])


def test_vector_panel_shows_the_vector_and_names_the_strongest_units() -> None:
    n, k = 1000, 6
    values = np.linspace(0, 1, n, dtype=np.float32)[np.random.default_rng(8).permutation(n)]
    labels = [f"class {i}" for i in range(n)]
    panel = render.vector_panel(values, labels=labels, k=k, width=1024, colorbar=False)
    a = px(panel)
    with_bar = px(render.vector_panel(values, labels=labels, k=k, width=1024))
    np.testing.assert_array_equal(with_bar[-50:], a[-50:])  # the same table ends both
    assert len(_bar_rows(with_bar, 0, "viridis", 8, 1024 - 8)) == 15 * 16 + 24  # full strip rows + the bar
    rows, _cols = grid_layout(n, columns=64)
    cell = 1024 // 64
    assert panel.width == 64 * cell
    strip = px(vector_strip(values, width=64 * cell, height=rows * cell, columns=64))
    np.testing.assert_array_equal(a[: rows * cell], strip)  # the whole vector, cell by cell
    table = a[rows * cell :]
    lut = colormap_lut("viridis")
    named = render.strongest_units(values, k=k, labels=labels)
    for unit in named:  # a swatch of each named unit's colour
        colour = lut[min(int(unit.value * 256), 255)]
        assert (table == colour).all(axis=-1).sum() >= 16 * 16, unit
    weak = lut[int(0.5 * 256)]  # a middling unit is not named: its colour appears nowhere in the table
    assert not (table == weak).all(axis=-1).any()
    for index in (0, 63, 64, 999):  # a click on a cell finds its unit
        r, c = divmod(index, 64)
        assert render.vector_unit_at(panel.width, n, (c * cell + cell // 2, r * cell + cell // 2)) == index
    assert render.vector_unit_at(panel.width, n, (5, rows * cell + 5)) is None  # below the strip
    ringed = px(render.vector_panel(values, labels=labels, k=k, selected=70, colorbar=False))
    r, c = divmod(70, 64)
    assert (ringed[r * cell - 1, c * cell : (c + 1) * cell] == render.SELECT_COLOR).all()  # just above it
    assert ringed.shape == a.shape
    # Large cells (a 10-class fc8, one row) are ringed inside, so the ring never covers a neighbour.
    ten = np.arange(10, dtype=np.float32)
    plain10 = px(render.vector_panel(ten, k=3, width=800, colorbar=False))
    ringed10 = render.vector_panel(ten, k=3, width=800, colorbar=False, selected=3)
    marks = _marks(px(ringed10), plain10)
    assert len(marks) > 0 and {render.vector_unit_at(800, 10, xy) for xy in marks} == {3}


def test_format_probability() -> None:
    f = render.format_probability
    assert f(0.00123) == "0.123%"
    assert f(0.61) == "61%"
    assert f(0.615) == "61.5%"
    assert f(1e-7) == "<0.01%"
    assert f(0.0) == "0%" and f(1.0) == "100%" and f(0.99996) == ">99.9%"
    assert f(0.001) == "0.1%" and f(0.05) == "5%" and f(float("nan")) == "n/a"
    # An untrained model's top-5: values that differ at 3 significant digits read differently.
    rng = np.random.default_rng(9)
    for p in rng.uniform(1e-4, 1.0, 2000):
        q = p * (1 + rng.choice([-1, 1]) * rng.uniform(0.005, 0.02))
        if float(f"{p:.3g}") != float(f"{q:.3g}") and q < 0.9995:
            assert f(p) != f(q), (p, q)
        assert f(p) != "0%"


def test_format_probabilities_gives_neighbours_that_differ_the_digits_to_show_it() -> None:
    """The untrained cifar and paper models' top-5 for the astronaut (torch forward, to 6 digits): at 3
    significant digits they read "0.101%" five times and "0.111%", "0.111%", "0.109%" x3."""
    f = render.format_probabilities
    assert f([0.00101338, 0.00101273, 0.00101235, 0.0010122, 0.00101211]) == [
        "0.10134%", "0.10127%", "0.10123%", "0.10122%", "0.10121%"]
    assert f([0.00110926, 0.00110725, 0.00109211, 0.00109107, 0.00108866]) == [
        "0.1109%", "0.1107%", "0.1092%", "0.1091%", "0.1089%"]
    assert f([0.00121, 0.00118, 0.00117]) == ["0.121%", "0.118%", "0.117%"]  # 3 digits when they suffice
    assert f([0.61, 0.2, 0.1]) == ["61%", "20%", "10%"] and f([0.5, 0.5]) == ["50%", "50%"]  # equal stay equal
    rng = np.random.default_rng(4)
    for _ in range(300):
        ps = sorted(0.001 * (1 + rng.uniform(0, 1e-3, 5)), reverse=True)
        texts = f(ps)
        for p, text in zip(ps, texts, strict=True):  # every text is its value, rounded
            digits = len(text.rstrip("%").replace("0.", "", 1).lstrip("0").replace(".", ""))
            unit = 10 ** (math.floor(math.log10(p)) - digits + 1)
            assert abs(float(text.rstrip("%")) / 100 - p) <= 0.5 * unit + 1e-15
        assert all(f"{a * 100:.6g}" == f"{b * 100:.6g}" or ta != tb  # up to 6 significant digits
                   for a, b, ta, tb in zip(ps, ps[1:], texts, texts[1:], strict=False))


def test_top_k_chart_shows_differences_an_untrained_model_makes() -> None:
    a = px(top_k_chart(["a", "b"], [0.00102, 0.00101]))
    b = px(top_k_chart(["a", "b"], [0.00102, 0.00102]))
    assert (a != b).any()  # "0.101%" is not "0.102%" (the old chart wrote "0.1%" for both)


def test_tile_rows_balances_and_centres_rows() -> None:
    colours = [(i * 20, 255 - i * 20, 100) for i in range(10)]
    tiles = [Image.new("RGB", (300, 200), c) for c in colours]
    out = px(render.tile_rows(tiles, 4, gap=10, background=BG))
    assert out.shape == (3 * 200 + 2 * 10, 4 * 300 + 3 * 10, 3)  # rows of 4, 3, 3
    starts = [0, 4, 7]
    for r, (first, count) in enumerate(zip(starts, [4, 3, 3], strict=True)):
        y = r * 210 + 100
        x0 = (out.shape[1] - (count * 300 + (count - 1) * 10)) // 2  # centred
        for j in range(count):
            assert (out[y, x0 + j * 310 + 150] == colours[first + j]).all()
        assert (out[y, : max(x0, 0)] == BG).all()
    with pytest.raises(ValueError):
        render.tile_rows(tiles, 0)


def test_text_in_every_picture_is_at_least_22_px(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = render._font

    def recording(size: int, bold: bool = False) -> object:
        sizes.append(size)
        return real(size, bold)

    monkeypatch.setattr(render, "_font", recording)
    base = photo(224, 224)
    heat = np.random.default_rng(10).standard_normal((14, 14))
    attribution_overlay(base, heat, signed=True, colorbar=True, bar_label="Saliency")
    channel_overlay(base, np.abs(heat), colorbar=True, bar_label="conv1 #3")
    render.vector_panel(np.abs(heat).ravel(), labels=[str(i) for i in range(196)])
    top_k_chart(["tabby"], [0.5])
    colorbar("viridis", label="x")
    label(base, "Grad-CAM")
    render.share_chart(["conv1"], [0.1], [0.2])
    strongest_channels_strip({"conv1": np.random.default_rng(1).random((4, 5, 5))})
    assert sizes and min(sizes) >= 22
