"""One forward pass: torchvision's own forward as the oracle, captured layers, hooks that always go away."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from alexnet_viz.activations import capture
from alexnet_viz.analysis import analyze, explain
from alexnet_viz.model import DeviceError, TargetError, load_model, resolve_device
from alexnet_viz.targets import Contrast

IMAGENET = torchvision.models.AlexNet_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    # A smooth, non-square synthetic photo: gradients plus a disc, so every layer sees structure.
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx / w * 255, yy / h * 255, ((xx - 200) ** 2 + (yy - 150) ** 2 < 80**2) * 200.0], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torchvision.models.AlexNet]:
    torch.manual_seed(11)
    theirs = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp("w") / "seeded_tv.pt"
    torch.save(theirs.state_dict(), path)
    return path, theirs


def test_top5_and_probabilities_equal_torchvisions_forward(tv_file, photo: Image.Image) -> None:
    path, theirs = tv_file
    loaded = load_model("torchvision", path, "cpu")
    result = analyze(loaded, photo)
    with torch.no_grad():  # the oracle: torchvision's model and its weights' own transforms
        expected = torch.softmax(theirs(IMAGENET.transforms()(photo).unsqueeze(0))[0], dim=0)
    values, indices = expected.topk(5)
    assert [p.index for p in result.top_k] == indices.tolist()
    assert np.allclose([p.probability for p in result.top_k], values.numpy(), atol=1e-5)
    assert torch.allclose(result.probabilities, expected, atol=1e-5)
    assert [p.label for p in result.top_k] == [IMAGENET.meta["categories"][i] for i in indices.tolist()]
    assert result.probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_every_visible_layer_is_captured_uncorrupted(photo: Image.Image) -> None:
    loaded = load_model("paper", "none", "cpu")
    result = analyze(loaded, photo)
    assert list(result.activations) == loaded.layer_names
    assert result.input.shape == (1, 3, 227, 227) and result.view.size == (227, 227)
    acts = result.activations
    assert acts["conv1"].shape == (96, 55, 55) and acts["pool5"].shape == (256, 6, 6) and acts["fc8"].shape == (1000,)
    # Re-run the layers by hand: each capture equals its module applied to the previous capture.
    m = loaded.module
    with torch.no_grad():
        assert torch.allclose(acts["conv1"], m.conv1(result.input)[0], atol=1e-5)
        assert torch.equal(acts["relu1"], acts["conv1"].clamp(min=0))  # conv1 was not overwritten by relu1
        assert torch.allclose(acts["lrn1"], m.lrn1(acts["relu1"][None])[0], atol=1e-6)
        assert torch.allclose(result.logits, acts["fc8"])
    assert result.sparsity("relu1") == pytest.approx(float((acts["conv1"] <= 0).float().mean()), abs=1e-6)
    assert result.sparsity("conv1") < result.sparsity("relu1")
    assert set(result.timings) == {"decode", "preprocess", "forward"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.top_k = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.activations["conv1"] = torch.zeros(1)  # type: ignore[index]


def test_input_view_is_what_the_network_saw(photo: Image.Image) -> None:
    loaded = load_model("torchvision", "none", "cpu")
    result = analyze(loaded, photo)
    # The view, normalised again (no resize: it is already S x S), is the input up to 8-bit rounding.
    view = torch.from_numpy(np.asarray(result.view)).permute(2, 0, 1).float() / 255
    again = (view - torch.tensor(loaded.mean).view(3, 1, 1)) / torch.tensor(loaded.std).view(3, 1, 1)
    assert torch.allclose(again[None], result.input, atol=0.5 / 255 / min(loaded.std) + 1e-5)


def test_capture_removes_its_hooks_even_after_an_exception() -> None:
    model = load_model("torchvision", "none", "cpu").module

    def hook_count() -> int:
        return sum(len(m._forward_hooks) for m in model.modules())

    assert hook_count() == 0
    with pytest.raises(RuntimeError), capture(model, ["conv1", "relu5", "fc8"]):
        assert hook_count() == 3
        model(torch.zeros(1, 3, 5))  # wrong shape: fails mid-forward
    assert hook_count() == 0
    with capture(model, ["conv2"]) as acts, torch.no_grad():
        model(torch.zeros(1, 3, 100, 100))
    assert acts["conv2"].shape == (1, 192, 11, 11) and hook_count() == 0


def test_devices() -> None:
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable NVIDIA GPU"):
            resolve_device("cuda")
        with pytest.raises(DeviceError, match="no usable NVIDIA GPU"):
            load_model("torchvision", "none", "cuda")
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device("gpu please")


def test_targets_by_index_and_name() -> None:
    loaded = load_model("torchvision", "none", "cpu")
    assert loaded.class_index(281) == 281 and loaded.class_index("281") == 281
    assert loaded.categories[loaded.class_index("Tabby")] == "tabby"
    with pytest.raises(ValueError, match="out of range"):
        loaded.class_index(1000)
    with pytest.raises(ValueError, match="No single class"):
        loaded.class_index("cat")  # tabby cat? tiger cat? Persian cat? - ambiguous
    labelled = load_model("paper", "none", "cpu", num_classes=3, labels=["ant", "bee", "wasp"])
    assert labelled.categories == ("ant", "bee", "wasp") and labelled.class_index("bee") == 1


def test_explain_defaults_to_top1_and_reuses_the_analysis_input(photo: Image.Image) -> None:
    loaded = load_model("torchvision", "none", "cpu")
    result = analyze(loaded, photo)
    attr = explain(loaded, result, "saliency")
    assert attr.target == result.top1.index
    x = result.input.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loaded.module(x)[0, result.top1.index], x)
    assert torch.allclose(attr.heatmap, grad[0].abs().amax(0), atol=1e-6)
    assert explain(loaded, result, "saliency", target="tabby").target == 281


def _forward_passes(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    passes: list[int] = []
    return passes, module.register_forward_hook(lambda _m, _i, _o: passes.append(1))


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "guided_backprop", "deconvolution", "gradcam",
                                    "guided_gradcam", "deeplift"])
def test_the_top1_map_of_an_image_needs_no_pass_of_its_own(photo: Image.Image, method: str) -> None:
    """Issue #11 ("/explain does no work it does not need"): for the top-1 class a method whose passes are all at
    the input reads the class off its own forward pass; the map, its class and the view are those of predicting
    first and explaining that (bit for bit), with one forward pass fewer. DeepLIFT (a baseline pass) still
    predicts first."""
    from alexnet_viz.analysis import explain_image
    from alexnet_viz.attribution import METHODS

    loaded = load_model("torchvision", "none", "cpu")
    layer = "conv5" if METHODS[method].layer_based else None
    result = analyze(loaded, photo, capture=False)
    passes, hook = _forward_passes(loaded.module)
    try:
        two_steps = explain(loaded, analyze(loaded, photo, capture=False), method, layer=layer)
        before = len(passes)
        passes.clear()
        view, fused = explain_image(loaded, photo, method, layer=layer)
    finally:
        hook.remove()
    assert fused.target == two_steps.target == result.top1.index == int(result.logits.argmax())
    assert torch.equal(fused.heatmap, two_steps.heatmap) and torch.equal(fused.raw, two_steps.raw)
    assert np.array_equal(np.asarray(view), np.asarray(result.view))
    assert len(passes) == (before - 1 if METHODS[method].at_input_only else before), (len(passes), before)
    # a class that is asked for is explained as asked (the top-1 is not read off the pass then)
    assert explain_image(loaded, photo, method, layer=layer, target="tabby")[1].target == 281


@pytest.mark.parametrize("text", ["²", "①", "٣", "2²", "-1", "1e3", "0x1f", " ", ""])
def test_targets_are_ascii_digits_or_a_class_name(text: str) -> None:
    loaded = load_model("cifar", "none", "cpu", num_classes=3, labels=["ant", "bee", "wasp"])
    with pytest.raises(TargetError) as info:
        loaded.class_index(text)
    assert "invalid literal" not in str(info.value) and str(info.value).endswith(".")
    assert loaded.class_index(" 2 ") == 2 and loaded.class_index("002") == 2 and loaded.class_index("WASP") == 2


def test_a_huge_target_is_refused_without_echoing_it() -> None:
    loaded = load_model("cifar", "none", "cpu", num_classes=3, labels=["ant", "bee", "wasp"])
    for text in ("x" * 200_000, "9" * 200_000):  # int() of 200,000 digits would itself raise
        with pytest.raises(TargetError) as info:
            loaded.class_index(text)
        assert len(str(info.value)) < 150 and "200,000 characters" in str(info.value)
    for bad in (True, 1.0, None):
        with pytest.raises(TargetError, match="class index or a class name"):
            loaded.class_index(bad)  # type: ignore[arg-type]


def test_to_dict_is_strict_json_even_for_non_finite_scores(photo: Image.Image) -> None:
    import json

    loaded = load_model("cifar", "none", "cpu", num_classes=3)
    result = analyze(loaded, photo)
    json.dumps(result.to_dict(), allow_nan=False)
    nan = torch.full((3,), float("nan"))
    broken = dataclasses.replace(result, logits=nan, probabilities=nan,
                                 top_k=tuple(dataclasses.replace(p, probability=float("nan")) for p in result.top_k),
                                 timings={"forward": float("inf")})
    data = json.loads(json.dumps(broken.to_dict(), allow_nan=False))
    assert [p["probability"] for p in data["top_k"]] == [None] * 3 and data["timings_ms"] == {"forward": None}


def test_predicting_without_capture_hooks_nothing_and_predicts_the_same(photo: Image.Image,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import alexnet_viz.analysis as A

    loaded = load_model("cifar", "none", "cpu", num_classes=10)
    full = analyze(loaded, photo)

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("capture() called")

    monkeypatch.setattr(A, "capture", refuse)
    quick = analyze(loaded, photo, capture=False)
    assert dict(quick.activations) == {} and torch.equal(quick.logits, full.logits)
    assert quick.top_k == full.top_k
    attr = explain(loaded, photo, "saliency")  # from an image: a prediction only, then the map
    assert attr.target == full.top1.index


def test_explain_takes_a_contrast_by_name_and_reads_the_runner_up_off_the_analysis(photo: Image.Image) -> None:
    loaded = load_model("cifar", "none", "cpu", num_classes=3, labels=["ant", "bee", "wasp"])
    result = analyze(loaded, photo)
    order = result.logits.argsort(descending=True).tolist()
    attr = explain(loaded, result, "gradcam", target=Contrast("ANT", "wasp"))
    assert (attr.target, attr.contrast) == (0, 2)
    runner_up = explain(loaded, result, "saliency", target=Contrast(order[0]))
    assert (runner_up.target, runner_up.contrast) == (order[0], order[1])
    with pytest.raises(TargetError):
        explain(loaded, result, "saliency", target=Contrast("ant", "spider"))


def test_each_model_has_its_own_lock(photo: Image.Image) -> None:
    import threading

    one, two = load_model("cifar", "none", "cpu"), load_model("cifar", "none", "cpu")
    assert one.lock is one.lock and one.lock is not two.lock
    done = threading.Event()
    with one.lock:  # one is busy: two's work goes on...
        analyze(two, photo)
        t = threading.Thread(target=lambda: (analyze(one, photo), done.set()))
        t.start()
        assert not done.wait(0.3)  # ...while one's waits for its lock
    t.join(timeout=30)
    assert done.is_set()


def test_analysis_does_not_import_attribution() -> None:
    import subprocess
    import sys

    code = "import sys, alexnet_viz.analysis; print('alexnet_viz.attribution' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
