"""Captum attribution behind one call: autograd and hand-computed oracles, clean hooks, progress, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet_viz import attribution
from alexnet_viz.activations import model_lock
from alexnet_viz.architectures import ARCHITECTURES, build_model
from alexnet_viz.attribution import METHODS, Attribution, AttributionError, Contrast, OptionError, attribute

TARGET = 3
# Options that keep the slow methods quick in tests.
FAST: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 4, "internal_batch_size": 4, "tolerance": 0},
    "smoothgrad": {"samples": 2, "nt_samples_batch_size": 2},
    "occlusion": {"window": 64, "stride": 64},
}


def _randomise_biases(model: nn.Sequential, seed: int) -> nn.Sequential:
    # build_model zeroes biases, which makes the ReLU network positively homogeneous (f(a*x) = a*f(x)): then
    # integrated gradients and DeepLift from a zero baseline equal input x gradient and test nothing.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (1, 3, S, S)


@pytest.fixture(scope="module")
def model() -> nn.Sequential:
    return _randomise_biases(build_model("torchvision", num_classes=10, seed=0), seed=1)


@pytest.fixture(scope="module")
def frozen() -> nn.Sequential:
    return _randomise_biases(build_model("torchvision", num_classes=10, seed=0), seed=1).requires_grad_(False)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return _image(64)


def assert_clean(model: nn.Module) -> None:
    """No hooks, no parameter gradients and no DeepLift scratch attributes left anywhere in ``model``."""
    for name, m in model.named_modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            assert not getattr(m, hooks), f"{name or 'model'}.{hooks} not empty"
        assert not {"input", "output", "input_ref"} & set(m.__dict__), f"{name} keeps DeepLift attributes"
    assert all(p.grad is None for p in model.parameters())


def logit(model: nn.Module, x: torch.Tensor, target: int = TARGET) -> torch.Tensor:
    return model(x)[0, target]


def input_grad(model: nn.Module, x: torch.Tensor, target: int = TARGET) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(logit(model, xx, target), xx)
    return g[0]  # (3, H, W)


# ---- the table the UI is built from ----

def test_methods_table_is_complete_and_consistent() -> None:
    assert list(METHODS) == ["saliency", "input_x_gradient", "guided_backprop", "deconvolution",
                             "integrated_gradients", "smoothgrad", "gradcam", "guided_gradcam", "occlusion",
                             "deeplift"]
    assert {n for n, s in METHODS.items() if s.signed} == {"input_x_gradient", "integrated_gradients",
                                                           "occlusion", "deeplift"}
    assert {n for n, s in METHODS.items() if s.slow} == {"integrated_gradients", "smoothgrad", "occlusion"}
    assert {n for n, s in METHODS.items() if s.layer_based} == {"gradcam", "guided_gradcam"}
    for name, spec in METHODS.items():
        assert spec.name == name and spec.title and callable(spec.runner) and spec.in_words
        assert spec.contrastive or spec.contrast_note.endswith("."), "a method that cannot contrast says why"
        assert spec.caption.endswith(".") and spec.caption.count(". ") == 0, "one sentence"
        for opt in spec.options:
            assert opt.minimum <= opt.default <= opt.maximum and opt.step > 0 and opt.label and opt.help
            assert type(opt.default) is type(opt.minimum) is type(opt.maximum) is type(opt.step)


# ---- oracles ----

def test_saliency_is_abs_gradient_max_over_channels(model: nn.Sequential, x64: torch.Tensor) -> None:
    attr = attribute(model, x64, "saliency", target=TARGET)
    g = input_grad(model, x64)
    assert torch.allclose(attr.raw, g, rtol=1e-4, atol=1e-8)
    assert torch.allclose(attr.heatmap, g.abs().amax(dim=0), rtol=1e-4, atol=1e-8)
    assert attr.heatmap.shape == (64, 64) and attr.heatmap.dtype == torch.float32 and not attr.signed


def test_input_x_gradient_is_x_times_gradient_summed(model: nn.Sequential, x64: torch.Tensor) -> None:
    attr = attribute(model, x64, "input_x_gradient", target=TARGET)
    expected = x64[0] * input_grad(model, x64)
    assert torch.allclose(attr.raw, expected, rtol=1e-4, atol=1e-8)
    assert torch.allclose(attr.heatmap, expected.sum(dim=0), rtol=1e-4, atol=1e-8)


def test_integrated_gradients_completeness(model: nn.Sequential, x64: torch.Tensor) -> None:
    attr = attribute(model, x64, "integrated_gradients", target=TARGET, n_steps=64, internal_batch_size=16,
                     tolerance=0)
    assert attr.steps == 64
    with torch.no_grad():
        change = float(logit(model, x64) - logit(model, torch.zeros_like(x64)))
    total = float(attr.raw.sum())
    assert attr.convergence_delta is not None
    assert attr.convergence_delta == pytest.approx(total - change, abs=1e-5 * abs(change))
    # A ReLU network's path integrand has kinks, so the error shrinks unevenly with steps: ~3% here.
    assert abs(total - change) < 0.05 * abs(change)
    assert float(attr.heatmap.sum()) == pytest.approx(total, rel=1e-4)
    # Not the same as input x gradient: the biases make the path matter.
    ixg = attribute(model, x64, "input_x_gradient", target=TARGET)
    assert not torch.allclose(attr.raw, ixg.raw, rtol=0.05, atol=1e-7)


def test_gradcam_equals_hand_computation(model: nn.Sequential) -> None:
    x = _image(96, seed=2)
    attr = attribute(model, x, "gradcam", target=TARGET)
    # torchvision AlexNet at 96 px: conv1 23, pool1 11, pool2 5, so conv3-conv5 are 5x5.
    assert attr.layer == "conv5" and attr.raw.shape == (5, 5) and attr.heatmap.shape == (96, 96)
    seen: dict[str, torch.Tensor] = {}
    handle = model.get_submodule("relu5").register_forward_hook(lambda _m, _i, out: seen.setdefault("A", out))
    try:
        y = logit(model, x.clone().requires_grad_(True))
    finally:
        handle.remove()
    a = seen["A"]  # (1, 256, 5, 5) rectified conv5 output
    with torch.no_grad():
        assert a.shape[2:] == model[:11](x).shape[2:]  # conv5's own output size (layers conv1 ... conv5)
    (da,) = torch.autograd.grad(y, a)
    signed = (da.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)[0]  # (5, 5), before Grad-CAM's final ReLU
    assert torch.allclose(attr.raw, signed, rtol=1e-4, atol=1e-9)
    assert attr.raw.min() < 0 < attr.raw.max() and (attr.heatmap >= 0).all()
    up = F.interpolate(F.relu(signed)[None, None], size=(96, 96), mode="bilinear")[0, 0]
    assert torch.allclose(attr.heatmap, up, rtol=1e-4, atol=1e-9)


def test_gradcam_on_another_layer(model: nn.Sequential, x64: torch.Tensor) -> None:
    attr = attribute(model, x64, "gradcam", target=TARGET, layer="conv2")
    assert attr.layer == "conv2" and attr.raw.shape == (7, 7) and attr.heatmap.shape == (64, 64)


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(model: nn.Sequential) -> None:
    x = _image(96, seed=3)
    ggc = attribute(model, x, "guided_gradcam", target=TARGET)
    gb = attribute(model, x, "guided_backprop", target=TARGET)
    cam = attribute(model, x, "gradcam", target=TARGET)
    assert ggc.layer == "conv5"
    assert torch.allclose(ggc.raw, gb.raw * cam.heatmap, rtol=1e-4, atol=1e-12)
    assert torch.allclose(ggc.heatmap, ggc.raw.abs().sum(dim=0))


def _mlp() -> tuple[nn.Sequential, nn.Linear, nn.Linear, torch.Tensor]:
    torch.manual_seed(5)
    fc1, fc2 = nn.Linear(3 * 8 * 8, 16), nn.Linear(16, 4)
    return nn.Sequential(nn.Flatten(), fc1, nn.ReLU(), fc2).eval(), fc1, fc2, _image(8, 6)


def test_guided_backprop_and_deconvolution_equal_hand_rules() -> None:
    mlp, fc1, fc2, x = _mlp()
    w1, b1, w2 = fc1.weight, fc1.bias, fc2.weight
    with torch.no_grad():
        gate = (w1 @ x.flatten() + b1 > 0).float()  # (16,) where the ReLU passed its input
        g = w2[TARGET]  # d logit / d ReLU output
        plain = (w1.T @ (g * gate)).view(3, 8, 8)
        guided = (w1.T @ (F.relu(g) * gate)).view(3, 8, 8)  # forward gate, and only positive signals back
        deconv = (w1.T @ F.relu(g)).view(3, 8, 8)  # only the ReLU applied to the backward signal
    gb = attribute(mlp, x, "guided_backprop", target=TARGET)
    dc = attribute(mlp, x, "deconvolution", target=TARGET)
    assert torch.allclose(gb.raw, guided, atol=1e-6) and torch.allclose(dc.raw, deconv, atol=1e-6)
    assert not torch.allclose(guided, plain, atol=1e-4) and not torch.allclose(deconv, guided, atol=1e-4)


def test_guided_backprop_differs_from_the_plain_gradient(model: nn.Sequential, x64: torch.Tensor) -> None:
    gb = attribute(model, x64, "guided_backprop", target=TARGET).raw
    g = input_grad(model, x64)
    assert not torch.allclose(gb, g, rtol=0.1, atol=1e-6)


def _linear(h: int = 16) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)
    lin = nn.Linear(3 * h * h, 4)
    with torch.no_grad():
        lin.weight.view(4, 3, h, h)[:, :, :, : h // 2] = 0  # the left half provably does not matter
    return nn.Sequential(nn.Flatten(), lin).eval(), lin.weight.detach().view(4, 3, h, h), _image(h, 8)


def test_occlusion_on_a_linear_model_equals_hand_computation() -> None:
    lin_model, w, x = _linear()
    attr = attribute(lin_model, x, "occlusion", target=TARGET, window=8, stride=4, perturbations_per_eval=3)
    contrib = (w[TARGET] * x[0]).sum(dim=0)  # (16, 16)
    total, count = torch.zeros(16, 16), torch.zeros(16, 16)
    for i in (0, 4, 8):  # ceil((16 - 8) / 4) + 1 = 3 window positions per side
        for j in (0, 4, 8):
            # Hiding the window (baseline 0) lowers the logit by the window's share of w.x.
            total[i:i + 8, j:j + 8] += contrib[i:i + 8, j:j + 8].sum()
            count[i:i + 8, j:j + 8] += 1
    expected = total / count  # Captum averages over the windows that cover a pixel
    assert torch.allclose(attr.heatmap, expected, atol=1e-5)
    assert torch.allclose(attr.raw, expected.expand(3, 16, 16), atol=1e-5)  # same value in every channel
    assert (attr.heatmap[:, :4] == 0).all()  # only windows over zero weights cover these columns
    assert attr.heatmap[:, 4:].abs().min() > 0


def test_deeplift_on_a_linear_model_is_x_times_weight() -> None:
    lin_model, w, x = _linear()
    attr = attribute(lin_model, x, "deeplift", target=TARGET)
    expected = (x[0] - 0) * w[TARGET]
    assert torch.allclose(attr.raw, expected, atol=1e-6)
    assert torch.allclose(attr.heatmap, expected.sum(dim=0), atol=1e-6)
    assert attr.convergence_delta == pytest.approx(0.0, abs=1e-5)


def test_deeplift_on_a_relu_network_adds_up_to_the_change() -> None:
    # DeepLIFT's Rescale rule is exact for Linear + ReLU layers: the map sums to f(x) - f(0).
    mlp, _, _, x = _mlp()
    attr = attribute(mlp, x, "deeplift", target=TARGET)
    with torch.no_grad():
        change = float(logit(mlp, x) - logit(mlp, torch.zeros_like(x)))
    assert float(attr.raw.sum()) == pytest.approx(change, rel=1e-4, abs=1e-6)
    assert attr.convergence_delta == pytest.approx(0.0, abs=1e-5)


def test_deeplift_reports_its_delta_on_alexnet(model: nn.Sequential, x64: torch.Tensor) -> None:
    # On AlexNet Captum 0.9's DeepLIFT is not exact (overlapping max-pools, LRN): the delta says by how much.
    attr = attribute(model, x64, "deeplift", target=TARGET)
    with torch.no_grad():
        change = float(logit(model, x64) - logit(model, torch.zeros_like(x64)))
    assert attr.convergence_delta == pytest.approx(float(attr.raw.sum()) - change, abs=1e-6)


def test_smoothgrad_is_reproducible_and_leaves_the_rng_alone(model: nn.Sequential, x64: torch.Tensor) -> None:
    state = torch.get_rng_state()
    a = attribute(model, x64, "smoothgrad", target=TARGET, samples=4, nt_samples_batch_size=2)
    b = attribute(model, x64, "smoothgrad", target=TARGET, samples=4, nt_samples_batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)
    # same noise, batched differently: equal up to float summation order (tolerances scale with the map, since
    # other CPUs and BLAS builds round differently; a different noise draw would differ by O(the map))
    assert torch.allclose(a.heatmap, b.heatmap, rtol=1e-4, atol=1e-5 * float(b.heatmap.abs().max()))
    # No noise: the average of identical gradients is the gradient.
    still = attribute(model, x64, "smoothgrad", target=TARGET, samples=2, sigma=0.0)
    g = input_grad(model, x64)
    tol = 1e-5 * float(g.abs().max())
    assert torch.allclose(still.raw, g, rtol=1e-4, atol=tol)
    assert torch.allclose(still.heatmap, g.abs().sum(dim=0), rtol=1e-4, atol=tol)
    assert not torch.allclose(a.raw, g, rtol=0.05, atol=1e-7)


# ---- every method, every architecture ----

@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_method_on_every_architecture(arch: str) -> None:
    net = _randomise_biases(build_model(arch, num_classes=10, seed=0), seed=1).requires_grad_(False)
    size = ARCHITECTURES[arch].input_size
    x = _image(size, seed=4)
    with torch.no_grad():
        target = int(net(x)[0].argmax())
    for method in METHODS:
        opts = FAST.get(method, {})
        if method == "occlusion" and size < 128:  # cifar's 32 px input: windows of 64 px would cover it all
            opts = {"window": 8, "stride": 4}
        attr = attribute(net, x, method, target=target, **opts)
        assert attr.heatmap.shape == (size, size), method
        assert torch.isfinite(attr.heatmap).all() and attr.heatmap.std() > 0, method
        assert attr.signed or (attr.heatmap >= 0).all(), method
        assert attr.method == method and attr.target == target and attr.seconds > 0
        assert_clean(net)


@pytest.mark.parametrize("method", list(METHODS))
def test_frozen_parameters_give_the_same_map_and_leave_no_trace(
    method: str, model: nn.Sequential, frozen: nn.Sequential, x64: torch.Tensor
) -> None:
    # The app freezes parameters so backward stops at the input; the maps must not change.
    x = x64.clone()
    a = attribute(model, x, method, target=TARGET, **FAST.get(method, {}))
    assert_clean(model)
    b = attribute(frozen, x, method, target=TARGET, **FAST.get(method, {}))
    assert_clean(frozen)
    assert torch.allclose(a.heatmap, b.heatmap, rtol=1e-4, atol=1e-9)
    assert torch.equal(x, x64) and not x.requires_grad and x.grad is None  # the caller's tensor untouched
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in frozen.parameters())


def test_the_callers_tensor_is_never_changed(model: nn.Sequential, x64: torch.Tensor) -> None:
    x = x64.clone().requires_grad_(True)
    attribute(model, x, "saliency", target=TARGET)
    assert x.grad is None and x.requires_grad and torch.equal(x.detach(), x64)
    with torch.inference_mode():  # e.g. the tensor analyze() made
        xi = x64.clone()
    attr = attribute(model, xi, "integrated_gradients", target=TARGET, n_steps=4)
    assert torch.isfinite(attr.heatmap).all()
    with torch.inference_mode(), torch.no_grad():  # a caller in inference mode still gets gradients
        inside = attribute(model, xi, "saliency", target=TARGET)
    assert torch.allclose(inside.raw, input_grad(model, x64), rtol=1e-4, atol=1e-8)


# ---- failures leave the shared model clean ----

class _FailBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in backward")


class _Boom(nn.Module):
    """Passes the first forward through, then raises; the backward pass always raises."""

    def __init__(self, error: Callable[[], BaseException] = lambda: RuntimeError("boom in forward"),
                 passes: int = 1) -> None:
        super().__init__()
        self.error, self.passes, self.calls = error, passes, 0

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.passes:
            raise self.error()
        return _FailBackward.apply(t) if t.requires_grad else t


@pytest.fixture
def boom() -> tuple[nn.Sequential, _Boom]:
    net, boom = build_model("torchvision", num_classes=10, seed=0), _Boom()
    net.drop6 = boom  # replaces the (eval-mode identity) dropout, mid-network
    return net, boom


@pytest.mark.parametrize("method", list(METHODS))
def test_hooks_are_removed_after_an_exception_mid_method(
    method: str, boom: tuple[nn.Sequential, _Boom], x64: torch.Tensor
) -> None:
    net, layer = boom
    opts = {"window": 32, "stride": 16} if method == "occlusion" else FAST.get(method, {})
    with pytest.raises(RuntimeError, match="boom"):
        attribute(net, x64, method, target=TARGET, **opts)
    assert layer.calls >= 1
    assert_clean(net)
    assert not model_lock(net).locked()


@pytest.mark.parametrize("error", [lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError, torch.cuda.OutOfMemoryError])
def test_out_of_memory_becomes_one_sentence(error: Callable[[], BaseException], x64: torch.Tensor) -> None:
    net = build_model("torchvision", num_classes=10, seed=0)
    net.drop6 = _Boom(error, passes=0)
    with pytest.raises(AttributionError) as info:
        attribute(net, x64, "integrated_gradients", target=TARGET, n_steps=8)
    assert str(info.value) == ("Ran out of memory computing integrated gradients; "
                               "lower the steps or batch size.")
    assert_clean(net)


class _Cancelled(Exception):
    pass


def test_a_failing_progress_callback_propagates_and_unhooks(model: nn.Sequential, x64: torch.Tensor) -> None:
    def stop(fraction: float, _message: str) -> None:
        if fraction > 0.3:
            raise _Cancelled  # e.g. the visitor went away

    with pytest.raises(_Cancelled):
        attribute(model, x64, "integrated_gradients", target=TARGET, n_steps=8, internal_batch_size=2,
                  tolerance=0, progress=stop)
    assert_clean(model)


# ---- progress ----

@pytest.mark.parametrize(("method", "options", "passes"), [
    ("integrated_gradients", {"n_steps": 8, "internal_batch_size": 2, "tolerance": 0}, 1 + 4),  # f(x), f(0) first
    ("smoothgrad", {"samples": 5, "nt_samples_batch_size": 2}, 3),
    ("occlusion", {"window": 32, "stride": 16, "perturbations_per_eval": 4}, 1 + 3),  # 3x3 windows at 64 px
])
def test_slow_methods_report_increasing_progress_to_one(
    method: str, options: dict[str, Any], passes: int, model: nn.Sequential, x64: torch.Tensor
) -> None:
    seen: list[tuple[float, str]] = []
    attribute(model, x64, method, target=TARGET, progress=lambda f, m: seen.append((f, m)), **options)
    fractions = [f for f, _ in seen]
    # One report as each forward pass starts (the first is the 0.0 start), then 1.0 at the end.
    assert fractions == pytest.approx([i / passes for i in range(passes)] + [1.0])
    assert all(isinstance(m, str) and m for _, m in seen)
    assert_clean(model)


def test_tqdm_progress_runs_a_bar_to_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    update = attribution.tqdm_progress("demo")
    for f in (0.0, 0.25, 0.5, 1.0):
        update(f, f"step {f}")
    assert "demo" in capsys.readouterr().err


# ---- concurrency ----

def test_concurrent_calls_equal_sequential_ones(model: nn.Sequential, x64: torch.Tensor) -> None:
    expected = {m: attribute(model, x64, m, target=TARGET).heatmap for m in ("guided_backprop", "saliency")}
    results: dict[str, list[torch.Tensor]] = {m: [] for m in expected}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(method: str) -> None:
        try:
            start.wait()
            for _ in range(4):
                results[method].append(attribute(model, x64, method, target=TARGET).heatmap)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(m,)) for m in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for method, maps in results.items():
        assert len(maps) == 4
        assert all(torch.allclose(m, expected[method], rtol=1e-5, atol=1e-10) for m in maps)
    assert_clean(model)


# ---- validation ----

@pytest.mark.parametrize(("method", "kwargs", "message"), [
    ("gradient", {}, "Unknown attribution method"),
    ("saliency", {"n_steps": 8}, "has no option 'n_steps'; it takes no options"),
    ("integrated_gradients", {"steps": 8}, "has no option 'steps'; its options are"),
    ("integrated_gradients", {"n_steps": 500}, "Steps must be between 4 and 200"),
    ("integrated_gradients", {"n_steps": 2}, "Steps must be between 4 and 200"),
    ("integrated_gradients", {"n_steps": 8.5}, "Steps must be a whole number"),
    ("smoothgrad", {"sigma": float("nan")}, "Noise level must be a number"),
    ("smoothgrad", {"sigma": "0.1"}, "Noise level must be a number"),
    ("smoothgrad", {"samples": True}, "Noisy samples must be a number"),
    ("occlusion", {"window": 128}, "Window (px) must be between 8 and 64"),
    ("saliency", {"layer": "conv5"}, "does not take a layer"),
    ("gradcam", {"layer": "relu5"}, "needs a convolution layer, one of conv1, conv2"),
    ("gradcam", {"layer": "fc6"}, "needs a convolution layer"),
    ("saliency", {"target": 10}, "between 0 and 9, not 10"),
    ("saliency", {"target": -1}, "between 0 and 9, not -1"),
    ("saliency", {"target": 2.0}, "must be a class index"),
    ("saliency", {"target": True}, "must be a class index"),
])
def test_bad_requests_are_one_sentence_value_errors(
    method: str, kwargs: dict[str, object], message: str, model: nn.Sequential, x64: torch.Tensor
) -> None:
    kwargs = {"target": TARGET, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        attribute(model, x64, method, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, AttributionError) and isinstance(info.value, OptionError)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)


def test_bad_inputs_and_modes_are_refused(model: nn.Sequential, x64: torch.Tensor) -> None:
    longs = torch.zeros(1, 3, 64, 64, dtype=torch.long)
    for bad in (x64[0], torch.zeros(2, 3, 64, 64), torch.zeros(1, 1, 64, 64), longs):
        with pytest.raises(ValueError, match="input must be"):
            attribute(model, bad, "saliency", target=TARGET)
    net = build_model("torchvision", num_classes=10, seed=0).train()
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        attribute(net, x64, "saliency", target=TARGET)


def test_options_record_defaults_and_occlusion_fits_the_image(
    model: nn.Sequential, x64: torch.Tensor
) -> None:
    attr = attribute(model, x64, "integrated_gradients", target=TARGET, n_steps=6.0, internal_batch_size=None)
    assert dict(attr.options) == {"n_steps": 6, "internal_batch_size": 16, "tolerance": 0.01}
    assert isinstance(attr.options["n_steps"], int)
    with pytest.raises(TypeError):
        attr.options["n_steps"] = 7  # type: ignore[index]
    lin_model, _, x = _linear()  # 16 x 16: the window shrinks to the image, the stride to the window
    occ = attribute(lin_model, x, "occlusion", target=TARGET, window=32, stride=20)
    assert dict(occ.options) == {"window": 16, "stride": 16, "perturbations_per_eval": 16}
    assert occ.heatmap.shape == (16, 16)
    # Unset, window and stride keep their 224 px share of the image (32 and 16), within their bounds.
    assert dict(attribute(lin_model, x, "occlusion", target=TARGET).options) == {
        "window": 8, "stride": 4, "perturbations_per_eval": 16}
    at64 = attribute(model, x64, "occlusion", target=TARGET, perturbations_per_eval=32)
    assert dict(at64.options) == {"window": 9, "stride": 5, "perturbations_per_eval": 32}
    for side, expected in ((227, (32, 16)), (448, (64, 32)), (1000, (64, 64))):  # cut to the bounds
        opts: dict[str, float | int] = {"window": 32, "stride": 16, "perturbations_per_eval": 16}
        attribution._fit_occlusion(opts, {}, (side, side))
        assert (opts["window"], opts["stride"]) == expected
    assert isinstance(occ, Attribution) and occ.layer is None and occ.convergence_delta is None


def test_the_lock_serialises_calls(model: nn.Sequential, x64: torch.Tensor) -> None:
    # While another holder has the lock, attribute() waits rather than hooking the shared model.
    done = threading.Event()

    def run() -> None:
        attribute(model, x64, "saliency", target=TARGET)
        done.set()

    with model_lock(model):
        t = threading.Thread(target=run)
        t.start()
        assert not done.wait(0.3)
    t.join(timeout=30)
    assert done.is_set()


def test_deeplift_unpools_in_the_cpu_order() -> None:
    """Off the CPU, DeepLIFT's max-pool rule un-pools with _unpool2d_in_order (CUDA's F.max_unpool2d writes the
    indices that overlapping windows share in no fixed order): it must give exactly the answer of the CPU
    kernel's loop run by one thread (the last window in row-major order wins)."""
    import torch.nn.functional as F

    from alexnet_viz.attribution import _unpool2d_in_order

    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 55, 55), (1, 4, 13, 13), (2, 2, 8, 8)):
        x = torch.randn(shape, generator=gen)
        x[:, :, 2::4, 2::4] = 10.0  # each such maximum is shared by two overlapping 3x3 stride-2 windows
        pooled, indices = F.max_pool2d(x, 3, 2, 0, 1, False, True)
        values = torch.randn(pooled.shape, generator=gen)
        assert len(set(indices[0, 0].flatten().tolist())) < indices[0, 0].numel()  # repeated indices
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the CPU kernel splits N*C*H*W between threads: chunks can race mid-plane
        try:
            want = F.max_unpool2d(values, indices, 3, 2, 0, list(x.shape))
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(_unpool2d_in_order(values, indices, 3, 2, 0, list(x.shape)), want)


# ---- integrated gradients: steps doubled until the map adds up ----

def test_integrated_gradients_stops_doubling_once_complete_within_the_tolerance() -> None:
    mlp, _, _, x = _mlp()  # a ReLU MLP with biases: the path integrand has kinks, so few steps are not exact
    target = 1
    with torch.no_grad():
        change = float(logit(mlp, x, target) - logit(mlp, torch.zeros_like(x), target))
    eight = attribute(mlp, x, "integrated_gradients", target=target, n_steps=8, tolerance=0)
    assert abs(float(eight.raw.sum()) - change) > 0.01 * abs(change)  # 8 steps are not enough here...
    passes: list[float] = []
    adaptive = attribute(mlp, x, "integrated_gradients", target=target, n_steps=200, internal_batch_size=8,
                         tolerance=0.01, progress=lambda f, _m: passes.append(f))
    # ...16 are: it stops there, far below the cap of 200 steps
    assert adaptive.steps == 16 and dict(adaptive.options)["n_steps"] == 200
    assert abs(float(adaptive.raw.sum()) - change) <= 0.01 * abs(change)
    assert adaptive.convergence_delta == pytest.approx(float(adaptive.raw.sum()) - change, abs=1e-6)
    fixed = attribute(mlp, x, "integrated_gradients", target=target, n_steps=16, tolerance=0)
    assert torch.allclose(adaptive.raw, fixed.raw, rtol=1e-5, atol=1e-9)  # the same 16-point integral
    # f(x) and f(0) in one pass, then 8 and 16 steps in batches of 8: 4 passes reported, then 1.0
    assert len(passes) == 1 + 1 + 1 + 2 and passes[-1] == 1.0


def test_integrated_gradients_levels() -> None:
    levels = attribution._ig_levels
    assert levels({"n_steps": 32, "tolerance": 0.01}) == [8, 16, 32]
    assert levels({"n_steps": 50, "tolerance": 0.01}) == [8, 16, 32, 50]
    assert levels({"n_steps": 50, "tolerance": 0.0}) == [50]
    assert levels({"n_steps": 6, "tolerance": 0.01}) == [6]
    assert levels({"n_steps": 16, "tolerance": 0.05}) == [8, 16]


# ---- contrasts: why A and not B ----

def test_a_contrast_is_the_gradient_of_the_score_difference(model: nn.Sequential, x64: torch.Tensor) -> None:
    a, b = TARGET, 5
    attr = attribute(model, x64, "saliency", target=Contrast(a, b))
    xx = x64.clone().requires_grad_(True)
    out = model(xx)[0]
    (oracle,) = torch.autograd.grad(out[a] - out[b], xx)
    assert (attr.raw - oracle[0]).abs().max() <= 1e-5
    assert (attr.raw - (input_grad(model, x64, a) - input_grad(model, x64, b))).abs().max() <= 1e-5
    assert attr.target == a and attr.contrast == b
    assert_clean(model)


CONTRASTIVE = [name for name, spec in METHODS.items() if spec.contrastive]


@pytest.mark.parametrize("method", CONTRASTIVE)
def test_swapping_the_classes_negates_the_map(method: str, model: nn.Sequential, x64: torch.Tensor) -> None:
    opts = FAST.get(method, {})
    ab = attribute(model, x64, method, target=Contrast(TARGET, 5), **opts)
    ba = attribute(model, x64, method, target=Contrast(5, TARGET), **opts)
    scale = float(ab.raw.abs().max())
    assert scale > 0
    # gradcam's raw is its map before the final ReLU: negated too, so the heatmaps show the two sides
    assert torch.allclose(ab.raw, -ba.raw, rtol=1e-4, atol=1e-5 * scale), method
    assert_clean(model)


def test_methods_that_cannot_contrast_say_so(model: nn.Sequential, x64: torch.Tensor) -> None:
    assert set(METHODS) - set(CONTRASTIVE) == {"guided_backprop", "deconvolution", "guided_gradcam"}
    for method in set(METHODS) - set(CONTRASTIVE):
        with pytest.raises(OptionError, match="cannot show a contrast"):
            attribute(model, x64, method, target=Contrast(TARGET, 5))
    with pytest.raises(OptionError, match="two different classes"):
        attribute(model, x64, "saliency", target=Contrast(TARGET, TARGET))
    with pytest.raises(OptionError, match="between 0 and 9, not 10"):
        attribute(model, x64, "saliency", target=Contrast(TARGET, 10))


def test_the_default_other_class_is_the_runner_up(model: nn.Sequential, x64: torch.Tensor) -> None:
    with torch.no_grad():
        order = model(x64)[0].argsort(descending=True).tolist()
    top, second = order[0], order[1]
    assert attribute(model, x64, "saliency", target=Contrast(top)).contrast == second
    assert attribute(model, x64, "saliency", target=Contrast(second)).contrast == top


# ---- warnings ----

def test_captum_notes_are_silenced_only_inside_the_call(model: nn.Sequential, x64: torch.Tensor) -> None:
    import warnings

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for method in ("guided_backprop", "deeplift"):  # the two that announce their hooks
            attribute(model, x64, method, target=TARGET)
    assert not [w for w in caught if "hooks" in str(w.message)], [str(w.message) for w in caught]
    assert warnings.filters == before
    from captum.attr import GuidedBackprop  # the oracle: Captum itself does warn

    with pytest.warns(UserWarning, match="Setting backward hooks"):
        GuidedBackprop(model).attribute(x64.clone().requires_grad_(True), target=TARGET)
    assert_clean(model)


def test_to_dict_is_strict_json(model: nn.Sequential, x64: torch.Tensor) -> None:
    import dataclasses
    import json

    attr = attribute(model, x64, "integrated_gradients", target=Contrast(TARGET, 5), n_steps=4)
    data = json.loads(json.dumps(attr.to_dict(), allow_nan=False))
    assert data == {"method": "integrated_gradients", "target": TARGET, "contrast": 5, "layer": None,
                    "options": {"n_steps": 4, "internal_batch_size": 16, "tolerance": 0.01},
                    "seconds": round(attr.seconds, 4), "convergence_delta": attr.convergence_delta, "steps": 4}
    broken = dataclasses.replace(attr, convergence_delta=float("nan"), seconds=float("inf"))
    assert json.loads(json.dumps(broken.to_dict(), allow_nan=False))["convergence_delta"] is None


@pytest.mark.parametrize("method", list(METHODS))
def test_top1_target_is_the_highest_score_for_every_method(frozen: nn.Sequential, x64: torch.Tensor,
                                                           method: str) -> None:
    """``target=TOP1``: the class the model scores highest, read off the method's own pass where all its passes
    are at the input, else fixed by a pass first; either way the same map as asking for that class by index."""
    with torch.no_grad():
        best = int(frozen(x64)[0].argmax())
    options: dict[str, Any] = {"n_steps": 4, "tolerance": 0.0} if method == "integrated_gradients" else {}
    options |= {"samples": 2} if method == "smoothgrad" else {}
    options |= {"window": 16, "stride": 16} if method == "occlusion" else {}
    by_index = attribute(frozen, x64, method, target=best, **options)
    top = attribute(frozen, x64, method, target=attribution.TOP1, **options)
    assert top.target == best
    assert torch.equal(top.heatmap, by_index.heatmap), method  # SmoothGrad's noise is seeded: the same too
