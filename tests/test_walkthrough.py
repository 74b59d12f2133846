"""Inside AlexNet: the walk-through's hand-computed numbers against the model's own activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_viz import walkthrough as wt
from alexnet_viz.activations import capture
from alexnet_viz.images import load_image
from alexnet_viz.model import load_model

CAT = Path(__file__).resolve().parents[1] / "assets" / "cat.jpg"


@pytest.fixture(scope="module")
def models():
    return {arch: load_model(arch, "none", "cpu") for arch in ("torchvision", "paper", "paper-2gpu")}


def _acts(loaded, layers):
    with torch.no_grad(), capture(loaded.module, layers) as acts:
        loaded.module(loaded.preprocess(load_image(CAT)))
    return {k: v[0].double() for k, v in acts.items()}


@pytest.mark.parametrize("arch", ["torchvision", "paper"])
@pytest.mark.parametrize(("channel", "y", "x"), [(0, None, None), (5, 0, 0), (-1, -1, 17)])
def test_conv_relu_pool_equal_the_models_activations(models, arch, channel, y, x):
    loaded = models[arch]
    channels = loaded.conv1.out_channels
    side = 55
    channel = channel % channels
    y = None if y is None else y % side
    walk = wt.walkthrough(loaded, CAT, channel=channel, y=y, x=x, lock=None)
    acts = _acts(loaded, ["conv1", "relu1", "pool1"])
    c, yy, xx = walk.conv.channel, walk.conv.y, walk.conv.x
    assert (yy, xx) == ((side // 2, side // 2) if y is None else (y, x))
    # conv: the hand-computed dot product plus bias is the model's value; and so is a fresh F.conv2d
    assert walk.conv.value == pytest.approx(float(acts["conv1"][c, yy, xx]), abs=1e-5)
    assert walk.conv.model_value == pytest.approx(walk.conv.value, abs=1e-5)
    assert walk.conv.patch.shape == walk.conv.filter.shape == (3, 11, 11)
    # ReLU: how many of the layer's values it zeroed
    assert walk.relu.zeroed == int((acts["conv1"] < 0).sum()) and walk.relu.total == acts["conv1"].numel()
    assert walk.relu.after == pytest.approx(max(0.0, walk.conv.model_value), abs=1e-6)
    # pooling: the window's maximum is the model's pool output, and the window holds the position
    assert walk.pool.value == pytest.approx(float(acts["pool1"][c, walk.pool.y, walk.pool.x]), abs=1e-5)
    assert walk.pool.model_value == pytest.approx(walk.pool.value, abs=1e-5)
    assert walk.pool.window.shape == (3, 3)
    assert walk.pool.rows[0] <= yy < walk.pool.rows[1] and walk.pool.cols[0] <= xx < walk.pool.cols[1]


@pytest.mark.parametrize("channel", [0, 1, 47, 94, 95])  # both ends: the window is clipped there
def test_lrn_uses_the_papers_constants_and_equals_the_model(models, channel):
    loaded = models["paper"]
    walk = wt.walkthrough(loaded, CAT, channel=channel, y=20, x=31, lock=None)
    lrn = walk.lrn
    assert lrn is not None
    assert (lrn.k, lrn.n, lrn.alpha, lrn.beta) == (2.0, 5, pytest.approx(1e-4), 0.75)
    acts = _acts(loaded, ["relu1", "lrn1"])
    a = acts["relu1"][:, 20, 31]
    window = range(max(0, channel - 2), min(95, channel + 2) + 1)
    by_paper = float(a[channel] / (2 + 1e-4 * sum(float(a[j]) ** 2 for j in window)) ** 0.75)  # the paper's formula
    assert lrn.window == tuple(window)
    assert lrn.value == pytest.approx(by_paper, abs=1e-5)
    assert lrn.value == pytest.approx(float(acts["lrn1"][channel, 20, 31]), abs=1e-5)
    assert lrn.model_value == pytest.approx(lrn.value, abs=1e-5)
    assert np.asarray(walk.pool.window).max() == pytest.approx(walk.pool.model_value, abs=1e-5)  # pools lrn1


def test_torchvision_has_no_lrn_and_no_towers(models):
    walk = wt.walkthrough(models["torchvision"], CAT, lock=None)
    assert walk.lrn is None and walk.towers is None


def test_size_arithmetic_matches_the_measured_shapes(models):
    rows = {r.layer: r for r in wt.size_rows("torchvision", input_size=224)}
    assert rows["conv1"].formula == "(224 + 2*2 - 11) / 4 + 1 = 55.25 -> 55" and rows["conv1"].out_shape == (64, 55, 55)
    assert rows["pool1"].formula == "(55 - 3) / 2 + 1 = 27" and rows["pool5"].out_shape == (256, 6, 6)
    assert rows["flatten"].formula == "256 x 6 x 6 = 9216"
    paper = {r.layer: r for r in wt.size_rows("paper", input_size=227)}
    assert paper["conv1"].formula == "(227 - 11) / 4 + 1 = 55" and paper["pool5"].out_shape == (256, 6, 6)
    for arch, loaded in models.items():
        rows_ = wt.size_rows(arch, input_size=loaded.input_size)
        assert sum(r.params for r in rows_) == sum(p.numel() for p in loaded.module.parameters())
    note = wt.walkthrough(models["paper"], CAT, lock=None).input_note
    assert "54.25" in note and "(227 - 11) / 4 + 1 = 55" in note and "55.25" in note


def test_two_gpu_towers(models):
    walk = wt.walkthrough(models["paper-2gpu"], CAT, lock=None)
    assert walk.towers is not None
    left, right = walk.towers.filters
    assert left.shape == right.shape == (48, 3, 11, 11)
    np.testing.assert_array_equal(np.concatenate([left, right]), models["paper-2gpu"].conv1.weight.numpy())
    links = dict(walk.towers.links)
    assert links["conv2"] == links["conv4"] == links["conv5"] == "within each tower"
    assert links["conv3"] == links["fc6"] == links["fc8"] == "across both towers"


def test_dropout_at_training_and_at_evaluation(models):
    walk = wt.walkthrough(models["paper"], CAT, lock=None)
    d = walk.dropout
    assert d is not None and d.layer == "drop6" and d.p == 0.5
    relu6 = _acts(models["paper"], ["relu6"])["relu6"][:12].numpy()
    np.testing.assert_allclose(d.values, relu6, atol=1e-6)
    np.testing.assert_allclose(d.train, relu6 * d.mask * 2, atol=1e-6)
    np.testing.assert_array_equal(d.eval, d.values)
    assert set(np.unique(d.mask)) <= {0.0, 1.0}


def test_a_position_outside_the_map_is_refused(models):
    with pytest.raises(ValueError, match="55x55"):
        wt.walkthrough(models["torchvision"], CAT, y=55, x=0, lock=None)
    with pytest.raises(ValueError, match="channels"):
        wt.walkthrough(models["torchvision"], CAT, channel=64, lock=None)


def test_a_click_picks_the_unit_centred_nearest(models):
    loaded = models["torchvision"]
    assert wt.conv1_position(loaded, 3, 3) == (0, 0)  # unit 0 sees rows -2..8, centred on 3
    assert wt.conv1_position(loaded, 111, 7) == (27, 1)  # unit 27 is centred on 4*27 - 2 + 5 = 111
    assert wt.conv1_position(loaded, 10_000, -50) == (54, 0)
