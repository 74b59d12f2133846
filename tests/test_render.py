"""Tests for alexnet_viz.render: sizes, layouts and exact pixel values against hand-computed cases.

The colour oracle is matplotlib itself (`matplotlib.colormaps[name](x, bytes=True)`); every input is
synthetic. Nothing here times anything: speed is measured by the benchmarks, not asserted.
"""

from __future__ import annotations

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
