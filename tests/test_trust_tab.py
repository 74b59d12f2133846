"""The "Can you trust this map?" tab, occlusion by hand, "why A and not B", and `analyze --raw/--contrast`.

Oracles: torch.autograd.grad of the class scores (and of their difference) for the CLI's maps, a fresh forward
of the occluded input for the top-5 after clicks, the library's own reports for the tab's tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from alexnet_viz.analysis import analyze, explain
from alexnet_viz.cli import main as cli_main
from alexnet_viz.model import load_model
from alexnet_viz.targets import Contrast

from .conftest import ASSETS


# ---- the CLI: --raw and --contrast ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded():  # what `--weights none` loads: the same seeded untrained network the CLI runs
    return load_model("torchvision", "none", "cpu")


def _grad(loaded: Any, x: torch.Tensor, score: Any) -> torch.Tensor:
    """d score(model(x)) / dx, (3, H, W): the oracle."""
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(score(loaded.module(leaf)[0]), leaf)
    return g[0]


def test_analyze_raw_writes_each_map_as_float32_at_the_input_size(tmp_path: Path, seeded: Any) -> None:
    image = ASSETS / "cat.jpg"
    code = cli_main(["analyze", str(image), "--weights", "none", "--method", "saliency", "--method",
                     "input_x_gradient", "--compare", "gradcam", "--layer", "conv1", "--raw", "--out", str(tmp_path)])
    assert code == 0
    folder = tmp_path / "cat"
    analysis = analyze(seeded, image)
    side = seeded.input_size
    for method in ("saliency", "input_x_gradient", "gradcam"):
        values = np.load(folder / f"attribution_{method}.npy")
        assert values.dtype == np.float32 and values.shape == (side, side), method
        layer = seeded.conv_layers[-1] if method == "gradcam" else None
        assert np.array_equal(values, explain(seeded, analysis, method, layer=layer).heatmap.numpy()), method
    top1 = analysis.top1.index
    grad = _grad(seeded, analysis.input, lambda out: out[top1])
    saliency = np.load(folder / "attribution_saliency.npy")
    np.testing.assert_allclose(saliency, grad.abs().amax(0).numpy(), rtol=1e-5, atol=1e-9)
    ixg = np.load(folder / "attribution_input_x_gradient.npy")  # signed: both signs present, sum over channels
    assert ixg.min() < 0 < ixg.max()
    np.testing.assert_allclose(ixg, (analysis.input[0] * grad).sum(0).numpy(), rtol=1e-4, atol=1e-8)
    assert saliency.min() >= 0  # saliency's map is a magnitude
    listed = json.loads((folder / "result.json").read_text())["files"]
    assert {"attribution_saliency.npy", "attribution_gradcam.npy"} <= set(listed)


def test_analyze_contrast_explains_a_minus_b(tmp_path: Path, seeded: Any, capsys: pytest.CaptureFixture[str]) -> None:
    image = ASSETS / "espresso.jpg"
    analysis = analyze(seeded, image)
    a = analysis.top_k[2].index
    b = 7
    code = cli_main(["analyze", str(image), "--weights", "none", "--method", "input_x_gradient", "--method",
                     "saliency", "--layer", "conv1", "--target", str(a), "--contrast", str(b), "--raw",
                     "--out", str(tmp_path / "ab"), "--json"])
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    folder = tmp_path / "ab" / "espresso"
    grad = _grad(seeded, analysis.input, lambda out: out[a] - out[b])
    np.testing.assert_allclose(np.load(folder / "attribution_saliency.npy"), grad.abs().amax(0).numpy(),
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.load(folder / "attribution_input_x_gradient.npy"),
                               (analysis.input[0] * grad).sum(0).numpy(), rtol=1e-4, atol=1e-8)
    assert meta["attributions"]["saliency"]["target"] == a
    assert meta["attributions"]["saliency"]["contrast"]["index"] == b

    # runner-up: B is the best class other than A (A defaults to the top-1)
    code = cli_main(["analyze", str(image), "--weights", "none", "--method", "gradcam", "--layer", "conv1",
                     "--contrast", "runner-up", "--raw", "--out", str(tmp_path / "ru"), "--json"])
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    runner_up = analysis.top_k[1].index
    assert meta["attributions"]["gradcam"]["contrast"]["index"] == runner_up
    expected = explain(seeded, analysis, "gradcam", target=Contrast(analysis.top1.index, runner_up),
                       layer=seeded.conv_layers[-1]).heatmap.numpy()
    assert np.array_equal(np.load(tmp_path / "ru" / "espresso" / "attribution_gradcam.npy"), expected)


def test_analyze_contrast_refuses_a_method_that_cannot_show_one(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["analyze", str(ASSETS / "cat.jpg"), "--weights", "none", "--method", "guided_backprop",
                     "--contrast", "runner-up", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot show a contrast" in errors[0]
    assert not list(tmp_path.iterdir())  # refused before any image was analysed
