"""Trust checks: deletion/insertion curves, the sanity check, similarity measures, occlusion by hand, the CLI.

Oracles: hand-computed ranks and SSIM windows, forward passes of the network one image at a time, Captum's
occlusion map, and the homogeneity of an untrained AlexNet with zero biases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_viz import trust
from alexnet_viz.analysis import analyze, input_view
from alexnet_viz.attribution import OptionError, attribute
from alexnet_viz.cli import main
from alexnet_viz.model import load_model
from alexnet_viz.occlude import Patch, Patches, occlude, occluded_input

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def loaded():
    return load_model("torchvision", "none", "cpu")


@pytest.fixture(scope="module")
def cat(loaded):
    return analyze(loaded, ASSETS / "cat.jpg")


@pytest.fixture(scope="module")
def espresso(loaded):
    return analyze(loaded, ASSETS / "espresso.jpg")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    def bits(t: torch.Tensor) -> torch.Tensor:  # bytes in logical order (a CPU model's filters are channels-last)
        return t.contiguous().view(torch.uint8) if t.is_floating_point() else t

    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])) for k in a)


# ---- similarity measures ----

def _slow_average_ranks(a: np.ndarray) -> np.ndarray:
    return np.array([np.sum(a < v) + (np.sum(a == v) - 1) / 2 for v in a])


def test_spearman_hand_cases_and_ties():
    assert trust.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))  # classic formula
    assert trust.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # a tie: 2.5, 2.5
    assert trust.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(trust.spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_equals_pearson_of_slow_ranks():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 200).astype(float), rng.normal(size=200)  # many ties in a
    ra, rb = _slow_average_ranks(a), _slow_average_ranks(b)
    assert trust.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert trust.spearman(np.exp(a), b**3) == pytest.approx(trust.spearman(a, b), abs=1e-12)  # ranks only


def _slow_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_against_window_by_window_formula():
    rng = np.random.default_rng(1)
    a = rng.random((15, 14))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert trust.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert trust.ssim(a, b) == pytest.approx(_slow_ssim(a, b), abs=1e-6)
    assert trust.ssim(a, 1 - a) < 0  # anti-correlated
    assert trust.ssim(a, 1 - a) == pytest.approx(_slow_ssim(a, 1 - a), abs=1e-6)
    m1, m2 = rng.random((60, 60)) ** 8, rng.random((60, 60)) ** 8  # like unit-scaled maps: mostly near 0
    assert trust.ssim(m1, m2) == pytest.approx(_slow_ssim(m1, m2), abs=1e-6)
    assert trust.ssim(m1, m1 * 0.5) == pytest.approx(_slow_ssim(m1, m1 * 0.5), abs=1e-6)
    with pytest.raises(ValueError):
        trust.ssim(a[:8, :8], a[:8, :8])


# ---- curves ----

def test_blur_is_an_11_tap_gaussian_of_sigma_5():
    x = torch.zeros(1, 3, 40, 40)
    x[0, :, 20, 20] = 1.0
    y = trust.blurred(x)[0, 0]
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r**2) / 50)
    g = g / g.sum()
    assert torch.allclose(y[15:26, 15:26].double(), torch.outer(g, g), atol=1e-7)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-5)
    flat = torch.full((1, 3, 32, 32), -0.7)
    assert torch.allclose(trust.blurred(flat), flat, atol=1e-6)  # mirrored borders: no fade at the edges


def test_ranks_and_steps():
    h = torch.tensor([[0.5, 3.0], [0.5, -1.0]])
    ranks = trust.pixel_ranks(h)
    assert ranks[0, 1] == 0 and ranks[1, 1] == 3 and {int(ranks[0, 0]), int(ranks[1, 0])} == {1, 2}
    assert torch.equal(trust.pixel_ranks(h), ranks)  # ties broken the same way every time
    counts = trust.step_counts(224, 224)
    assert len(counts) == 29 and counts[1] == 224 * 8 and counts[-1] == 224 * 224
    counts = trust.step_counts(227, 227)
    assert counts[-1] == 227 * 227 and counts[-2] < counts[-1]


def test_curve_images_change_exactly_the_top_ranked_pixels():
    x = torch.randn(1, 3, 16, 16)
    blur = trust.blurred(x)
    ranks = trust.pixel_ranks(torch.randn(16, 16))
    counts = trust.step_counts(16, 16)
    deletion = trust.CURVES["deletion"].images(x, ranks, counts, blur)
    insertion = trust.CURVES["insertion"].images(x, ranks, counts, blur)
    assert torch.equal(deletion[0], x[0]) and not deletion[-1].any()
    assert torch.equal(insertion[0], blur[0]) and torch.equal(insertion[-1], x[0])
    k = 2
    top = ranks < counts[k]  # (H, W)
    assert int(top.sum()) == int(counts[k])
    assert not deletion[k][:, top].any() and torch.equal(deletion[k][:, ~top], x[0][:, ~top])
    assert torch.equal(insertion[k][:, top], x[0][:, top]) and torch.equal(insertion[k][:, ~top], blur[0][:, ~top])


def test_curves_match_one_forward_per_image(loaded, cat):
    heat = attribute(loaded.module, cat.input, "saliency", target=cat.top1.index).heatmap
    fractions, curves = trust.perturbation_curves(loaded, cat.input, heat, cat.top1.index)
    assert fractions[0] == 0 and fractions[-1] == 1 and len(fractions) == 29
    ranks, counts = trust.pixel_ranks(heat), trust.step_counts(224, 224)
    blur = trust.blurred(cat.input)
    points = [0, 1, 7, 20, 28]  # both ends (they scale the curve) and a few points between
    for name, spec in trust.CURVES.items():
        images = spec.images(cat.input, ranks, counts, blur)[points]
        with torch.no_grad():
            raw = np.array([float(loaded.module(images[i:i + 1])[0, cat.top1.index]) for i in range(len(points))])
        original, changed = (raw[-1], raw[0]) if spec.insertion else (raw[0], raw[-1])
        assert np.allclose(curves[name]["logit"][points], (raw - changed) / (original - changed), atol=1e-4)
    assert curves["deletion"]["logit"][0] == 1 and curves["deletion"]["logit"][-1] == 0
    assert curves["insertion"]["logit"][0] == 0 and curves["insertion"]["logit"][-1] == 1


@pytest.fixture(scope="module")
def reports(loaded, cat, espresso):
    return {name: trust.faithfulness(loaded, a, ["saliency"], baselines=["random"])
            for name, a in (("cat", cat), ("espresso", espresso))}


@pytest.fixture(scope="module")
def small():  # the 32 px cifar AlexNet: 5 points a curve, for checks of structure rather than of numbers
    loaded = load_model("cifar", "none", "cpu")
    return loaded, analyze(loaded, ASSETS / "cat.jpg")


@pytest.mark.parametrize("photo", ["cat", "espresso"])
def test_saliency_beats_random_maps(reports, photo):
    report = reports[photo]
    assert report.auc("saliency", "deletion") < report.auc("random", "deletion")
    assert report.auc("saliency", "insertion") > report.auc("random", "insertion")


def test_report_lists_every_baseline_and_ranks_by_the_right_direction(small):
    seen: list[float] = []
    report = trust.faithfulness(*small, ["saliency"], progress=lambda f, _m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len(seen) == 1 + sum(b.repeats for b in trust.BASELINES.values())
    with pytest.raises(OptionError, match="nope"):
        trust.faithfulness(*small, ["saliency"], baselines=["nope"])
    assert list(report.results) == ["saliency", *trust.BASELINES]
    deletion = [auc for _, auc in report.ranking("deletion")]
    insertion = [auc for _, auc in report.ranking("insertion")]
    assert deletion == sorted(deletion) and insertion == sorted(insertion, reverse=True)
    d = report.to_dict()
    assert d["scores"] == ["logit"]  # untrained: no softmax score
    assert set(d["maps"]) == {"saliency", *trust.BASELINES}
    assert set(d["maps"]["random"]["auc"]) == set(trust.CURVES)
    assert "probability" not in d["maps"]["saliency"]["auc"]["deletion"]
    assert "Random (mean of 3)" in report.table()


def test_trained_weights_add_the_softmax_score(tmp_path):
    from alexnet_viz.architectures import build_model

    torch.save(build_model("cifar", num_classes=10, seed=1).state_dict(), tmp_path / "model.pt")
    loaded = load_model("cifar", tmp_path / "model.pt", "cpu")  # a weights file counts as trained
    analysis = analyze(loaded, ASSETS / "cat.jpg")
    report = trust.faithfulness(loaded, analysis, ["saliency"], baselines=["centre"])
    assert report.trained and report.scores == ["logit", "probability"]
    probability = report.results["saliency"].curves["deletion"]["probability"]
    assert probability[0] == pytest.approx(float(analysis.probabilities[analysis.top1.index]), abs=1e-5)
    assert "probability" in report.to_dict()["maps"]["saliency"]["auc"]["insertion"]
    assert "softmax" in report.table("probability")


def test_random_baseline_is_the_mean_of_three_orders(small):
    loaded, cat = small
    report = trust.faithfulness(loaded, cat, [], baselines=["random"])
    rgb = torch.from_numpy(np.asarray(cat.view, dtype=np.float32) / 255).permute(2, 0, 1)
    runs = [trust.perturbation_curves(loaded, cat.input, trust.BASELINES["random"].runner(rgb, s), cat.top1.index,
                                      seed=s)[1]["deletion"]["logit"] for s in range(3)]
    assert np.allclose(report.results["random"].curves["deletion"]["logit"], np.mean(runs, axis=0), atol=1e-9)


def test_integrated_gradients_with_zero_baseline_equals_input_x_gradient(loaded, cat):
    # Zero biases make the untrained net positively homogeneous (f(a x) = a f(x)): the gradient is the same
    # all along the path from 0, so IG = x * grad f(x). A baseline other than zero breaks this.
    biases = [m.bias for m in loaded.module.modules() if getattr(m, "bias", None) is not None]
    assert biases and all(not b.any() for b in biases)
    t = cat.top1.index
    ig = attribute(loaded.module, cat.input, "integrated_gradients", target=t, n_steps=8).heatmap
    ixg = attribute(loaded.module, cat.input, "input_x_gradient", target=t).heatmap
    assert (ig - ixg).abs().max() <= 0.01 * ixg.abs().max()


# ---- sanity check ----

def test_stages_top_down_with_batchnorm_in_its_conv_stage():
    from alexnet_viz.architectures import build_model

    stages = trust.randomization_stages(build_model("torchvision"))
    assert [s for s, _ in stages] == ["fc8", "fc7", "fc6", "conv5", "conv4", "conv3", "conv2", "conv1"]
    bn = dict(trust.randomization_stages(build_model("bn")))
    assert bn["conv1"] == ("conv1", "bn1") and bn["conv2"] == ("conv2", "bn2") and bn["fc8"] == ("fc8",)


def test_cascade_randomises_a_view_and_never_the_shared_model(loaded, cat):
    before = _state(loaded.module)
    children = dict(loaded.module.named_children())
    original = loaded.module(cat.input)
    for stage, network in trust.cascade(loaded.module, stages=3):
        assert network.get_submodule(stage) is not children[stage]  # fresh
        assert network.get_submodule("conv1") is children["conv1"]  # shared, not copied
        assert not torch.equal(network(cat.input), original)
    assert _same_bits(before, _state(loaded.module))


def test_cascade_on_batchnorm_gives_no_nans():
    model = load_model("bn", "none", "cpu")
    x = torch.randn(1, 3, 224, 224)
    last = None
    for stage, network in trust.cascade(model.module):
        bn = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all((m.running_var > 0).all() for m in bn)
        with torch.no_grad():
            out = network(x)
        assert torch.isfinite(out).all(), stage
        last = stage
    assert last == "conv1"


def test_sanity_check_saliency_passes_and_guided_backprop_fails(loaded, cat, espresso):
    # Issue #14: with fc8, fc7 and fc6 random, saliency's map is near the unrelated floor, guided backprop's
    # barely changes; with every layer random, guided backprop's has moved too.
    before = _state(loaded.module)
    sal = trust.sanity_check(loaded, cat, "saliency", unrelated=espresso, stages=3)
    gbp = trust.sanity_check(loaded, cat, "guided_backprop", unrelated=espresso)
    assert sal.classifier_stage == gbp.classifier_stage == "fc6"
    rho = sal.stage("fc6").similarity["spearman"]
    assert rho is not None and sal.floor["spearman"] is not None
    assert rho <= sal.floor["spearman"] + 0.25
    assert gbp.stage("fc6").similarity["spearman"] >= 0.95
    assert gbp.stage("conv1").similarity["spearman"] <= 0.8
    assert sal.fails is False and gbp.fails is True
    assert [s.name for s in gbp.stages] == ["original", "fc8", "fc7", "fc6", "conv5", "conv4", "conv3", "conv2",
                                            "conv1"]
    assert gbp.stages[0].similarity == {"spearman": 1.0, "ssim": pytest.approx(1.0)}
    assert _same_bits(before, _state(loaded.module))
    d = gbp.to_dict()
    assert d["fails"] is True and len(d["stages"]) == 9 and set(d["floor"]) == set(trust.SIMILARITIES)
    assert trust.sanity_strip(sal).width > 4 * 112
    assert trust.sanity_plot([sal, gbp]).size[0] > 0


def test_sanity_check_leaves_the_model_bit_identical_after_an_error(loaded, cat, monkeypatch):
    before = _state(loaded.module)
    calls = 0
    real = trust.attribute

    def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(trust, "attribute", failing)
    with pytest.raises(RuntimeError, match="boom"):
        trust.sanity_check(loaded, cat, "saliency", stages=4)
    assert calls == 3
    assert _same_bits(before, _state(loaded.module))
    assert not loaded.module._forward_hooks and all(not m._forward_hooks and not m._backward_hooks
                                                    for m in loaded.module.modules())


def test_all_zero_maps_are_counted_not_averaged(loaded, cat, monkeypatch):
    real = trust.attribute
    calls = 0

    def zero_after_first(*args, **kwargs):
        nonlocal calls
        calls += 1
        attr = real(*args, **kwargs)
        if calls == 2:  # the fc8 stage's map comes out all zero
            object.__setattr__(attr, "heatmap", torch.zeros_like(attr.heatmap))
        return attr

    monkeypatch.setattr(trust, "attribute", zero_after_first)
    seen: list[float] = []
    result = trust.sanity_check(loaded, cat, "gradcam", stages=2, progress=lambda f, _m: seen.append(f))
    assert seen == [1 / 3, 2 / 3, 1.0]
    assert result.zero_maps == 1 and result.stage("fc8").zero
    assert result.stage("fc8").similarity == {"spearman": None, "ssim": None}
    assert result.stage("fc7").similarity["spearman"] is not None
    assert result.to_dict()["stages"][1]["spearman"] is None


def test_summary_over_images_counts_zero_maps_instead_of_averaging_them():
    heat = torch.ones(2, 2)

    def result(fc8: float | None, floor: float) -> trust.SanityResult:
        stages = (trust.SanityStage("original", heat, {"spearman": 1.0, "ssim": 1.0}, False),
                  trust.SanityStage("fc8", heat * 0 if fc8 is None else heat, {"spearman": fc8, "ssim": fc8},
                                    fc8 is None))
        return trust.SanityResult("gradcam", 0, stages, {"spearman": floor, "ssim": floor}, "fc8", 0.0)

    summary = trust.summarize_sanity([result(0.2, 0.1), result(None, 0.3), result(0.6, 0.5)])
    assert summary["fc8"]["spearman"] == pytest.approx(0.4) and summary["fc8"]["zero_maps"] == 1
    assert summary["fc8"]["maps"] == 3 and summary["original"]["ssim"] == 1.0
    assert summary["unrelated"]["spearman"] == pytest.approx(0.3) and summary["unrelated"]["zero_maps"] == 0
    assert trust.summarize_sanity([result(None, 0.1)])["fc8"]["spearman"] is None


# ---- occlusion by hand ----

def test_patches_are_an_immutable_list():
    empty = Patches()
    one = empty.add(Patch(10, 10, 8))
    two = one.add(Patch(50, 60, 16, "blur"))
    assert len(empty) == 0 and len(one) == 1 and len(two) == 2
    assert two.undo() == one and two.clear() == empty and empty.undo() == empty
    assert Patch(0, 0, 8).bounds(224) == (0, 4, 0, 4)  # cut at the border
    assert Patch(223, 100, 9).bounds(224) == (96, 105, 219, 224)


def test_occluded_input_fills_the_square_with_mean_or_blur():
    x = torch.randn(1, 3, 32, 32)
    out = occluded_input(x, Patches().add(Patch(10, 20, 6)).add(Patch(25, 5, 4, "blur")))
    assert not out[..., 17:23, 7:13].any()
    assert torch.equal(out[..., 3:7, 23:27], trust.blurred(x)[..., 3:7, 23:27])
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[17:23, 7:13] = False
    mask[3:7, 23:27] = False
    assert torch.equal(out[..., mask], x[..., mask]) and not torch.equal(out, x)
    for bad in (Patch(32, 0, 8), Patch(0, 0, 2), Patch(0, 0, 8, "noise"), Patch(1.5, 0, 8)):  # type: ignore[arg-type]
        with pytest.raises(OptionError):
            occluded_input(x, (bad,))


def test_occlude_matches_a_fresh_forward_and_undo_restores_exactly(loaded, cat):
    patches = Patches().add(Patch(100, 90, 40)).add(Patch(150, 120, 24, "blur"))
    result = occlude(loaded, cat, patches)
    x = cat.input.clone()
    x[..., 70:110, 80:120] = 0
    x[..., 108:132, 138:162] = trust.blurred(cat.input)[..., 108:132, 138:162]
    with torch.no_grad():
        fresh = torch.softmax(loaded.module(x)[0], dim=0)
    values, indices = fresh.topk(5)
    assert [p.index for p in result.top_k] == indices.tolist()
    assert np.allclose([p.probability for p in result.top_k], values.numpy(), atol=1e-5)
    assert len(result.label()) == 5
    view = np.asarray(result.view, dtype=np.int16)
    mean_colour = np.asarray(input_view(torch.zeros(1, 3, 1, 1), loaded.mean, loaded.std))[0, 0]
    assert (np.abs(view[70:110, 80:120] - mean_colour) <= 1).all()  # the hidden square shows the mean colour
    undone = occlude(loaded, cat, patches.clear())
    assert torch.equal(undone.probabilities, cat.probabilities) and undone.top_k == cat.top_k
    assert not undone.logit_change.any()


def test_occlusion_cells_equal_captums_map(loaded, cat):
    t = cat.top1.index
    captum = attribute(loaded.module, cat.input, "occlusion", target=t, window=32, stride=32).heatmap  # (224, 224)
    for row, col in ((0, 0), (3, 3), (2, 6), (6, 1)):
        result = occlude(loaded, cat, Patches().add(Patch(col * 32 + 16, row * 32 + 16, 32)))
        drop = -float(result.logit_change[t])  # Captum: f(x) - f(occluded)
        assert drop == pytest.approx(float(captum[row * 32 + 5, col * 32 + 7]), abs=1e-4)


# ---- CLI ----

def test_cli_trust_json(tmp_path, capsys):
    code = main(["trust", str(ASSETS / "cat.jpg"), "--arch", "cifar", "--weights", "none", "--device", "cpu",
                 "--method", "saliency", "--method", "guided_backprop", "--stages", "3", "--json",
                 "--out", str(tmp_path)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    maps = out["faithfulness"]["maps"]
    assert set(maps) == {"saliency", "guided_backprop", *trust.BASELINES}
    for m in maps.values():
        assert set(m["auc"]) == set(trust.CURVES) and all(math.isfinite(v["logit"]) for v in m["auc"].values())
        assert m["curves"]["deletion"]["logit"][0] == 1 and len(m["curves"]["insertion"]["logit"]) == 5  # 32 px
    sanity = out["sanity"]["methods"]
    assert set(sanity) == {"saliency", "guided_backprop"}
    assert [s["stage"] for s in sanity["saliency"]["stages"]] == ["original", "fc8", "fc7", "fc6"]
    assert out["sanity"]["unrelated"] and "cat" not in Path(out["sanity"]["unrelated"]).name
    assert {p.name for p in tmp_path.iterdir()} >= {"curves.png", "sanity.png", "sanity_saliency.png", "trust.json"}


def test_cli_trust_table_and_bad_method(capsys):
    assert main(["trust", str(ASSETS / "cat.jpg"), "--arch", "cifar", "--weights", "none", "--device", "cpu",
                 "--method", "saliency", "--no-sanity"]) == 0
    text = capsys.readouterr().out
    assert "Saliency (gradient)" in text and "Edges (Sobel)" in text
    assert main(["trust", str(ASSETS / "cat.jpg"), "--weights", "none", "--method", "nope"]) == 2
