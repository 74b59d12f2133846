"""Attribution maps through Captum, ten methods behind one call::

    attr = attribute(model, x, "integrated_gradients", target=281, n_steps=32)
    attr.heatmap  # (H, W) float32 on the CPU, pixel-aligned with x

``model`` is an eval-mode network such as :func:`alexnet_viz.architectures.build_model` returns, ``x``
a ``(1, 3, H, W)`` normalised input on the model's device. Options are numeric keyword arguments,
checked against the method's :class:`OptionSpec` bounds (the UI builds its sliders from the same specs);
Grad-CAM's layer is the string keyword ``layer``.

Heatmap conventions (``heatmap`` is what a student sees; ``raw`` is what Captum returned, batch dim
dropped, ``(3, H, W)``):

- saliency: ``max`` over channels of ``|d logit / dx|``, as Simonyan et al. (2014) show it. ``raw`` keeps
  the signed gradient (Captum's ``Saliency(abs=False)``).
- input_x_gradient, integrated_gradients, deeplift: signed, summed over channels. IG's map adds up to
  ``f(x)[t] - f(baseline)[t]`` up to ``convergence_delta``. DeepLIFT's would too, but Captum 0.9's rules
  are not exact on AlexNet (max-pool windows overlap; a ReLU feeding a max-pool hides the pool's rule;
  LRN has none), so its reported delta can be a large share of the change.
- occlusion: signed. A window spans all three channels, so every channel holds the same value; the
  heatmap is that value (the channel mean): the average drop of the target logit when a window covering
  the pixel is replaced by the baseline. Summing channels would just triple it.
- guided_backprop, deconvolution, smoothgrad, guided_gradcam: ``|raw|`` summed over channels, as the
  SmoothGrad authors' PAIR library shows gradient maps. Smoothgrad averages the *signed* gradient over
  noisy copies and takes the magnitude afterwards (Smilkov et al. 2017).
- gradcam: ``ReLU(sum_k mean(dy/dA_k) * A_k)`` where ``A`` is the rectified output of the chosen
  convolution (the output of the ReLU that follows it, as in Selvaraju et al.'s Caffe models, whose
  in-place ReLUs make a "conv" blob rectified). ``raw`` is that ``(h, w)`` layer-resolution map; the
  heatmap is it bilinearly upsampled to ``(H, W)``. guided_gradcam is Captum's ``GuidedGradCam`` on the
  same activation (guided backprop times the upsampled Grad-CAM map).

Baselines (integrated gradients, deeplift, occlusion) are zeros *of the normalised input*: the dataset
mean colour, a flat grey-brown image, not black. Smoothgrad's noise has standard deviation
``sigma * (x.max() - x.min())`` and a fixed seed, so the same image gives the same map.

Concurrency: guided backprop, deconvolution, DeepLift and (guided) Grad-CAM put hooks on the model's
modules, and DeepLift also rewrites the model's input through a hook on the model itself. The model is
shared by every visitor of a Space, so a request running meanwhile passes through those hooks: a second
attribution gets a wrong map, and a forward pass under ``torch.inference_mode`` raises "cannot register
a hook on a tensor that doesn't require gradient". :data:`MODEL_LOCK` serialises every :func:`attribute`
call; anything else that runs this model (``analyze``'s forward pass) must hold it too. On 2 CPU cores,
parallel attributions would not be faster anyway.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .errors import UserError, is_out_of_memory

__all__ = [
    "METHODS",
    "MODEL_LOCK",
    "Attribution",
    "AttributionError",
    "MethodSpec",
    "OptionError",
    "OptionSpec",
    "attribute",
    "tqdm_progress",
]

Progress = Callable[[float, str], None]

# Captum warns on every call that it sets hooks and will remove them; they are removed (a test checks), so
# to a student the note is noise. Only these two messages are silenced.
warnings.filterwarnings("ignore", message=r"\s*Setting (forward, )?backward hooks (on ReLU|and attributes)")

MODEL_LOCK = threading.Lock()
"""Held around every attribution: Captum's hook-based methods temporarily change the shared model."""


class AttributionError(UserError):
    """A failure to show the visitor as one plain sentence."""


class OptionError(AttributionError):
    """A bad method name, option, layer, target or input: a ValueError the UI can show as is."""


@dataclass(frozen=True)
class OptionSpec:
    """One numeric option; the UI makes a slider from it and :func:`attribute` enforces its bounds."""

    name: str
    default: float | int
    minimum: float | int
    maximum: float | int
    step: float | int
    label: str
    help: str

    @property
    def integer(self) -> bool:
        return isinstance(self.default, int)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    title: str
    caption: str  # one sentence that teaches what the map shows
    signed: bool  # the heatmap has a meaningful sign: show it with a diverging colormap
    slow: bool  # many forward passes: reports progress
    options: tuple[OptionSpec, ...] = ()
    layer_based: bool = False  # takes a `layer` (a convolution's name)

    def option(self, name: str) -> OptionSpec:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(name)


@dataclass(frozen=True, eq=False)
class Attribution:
    """One attribution map for one input and one target class. Tensors live on the CPU."""

    method: str
    target: int
    heatmap: torch.Tensor  # (H, W) float32, aligned with the input; signed if `signed`, else >= 0
    raw: torch.Tensor  # (3, H, W) as Captum returned it; gradcam: the (h, w) layer-resolution map
    signed: bool
    options: Mapping[str, float | int]  # the values used, defaults filled in
    seconds: float  # compute time, not counting the wait for MODEL_LOCK
    convergence_delta: float | None = None  # integrated gradients, deeplift: sum(raw) - (f(x) - f(0))
    layer: str | None = None  # gradcam, guided_gradcam: the convolution whose rectified output was used


_BATCH_HELP = "Images per forward pass: higher is a little faster and needs more memory."

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "saliency", "Saliency (gradient)",
            "How much a tiny change of each pixel would move the class score: the largest absolute "
            "gradient over the three colour channels.",
            signed=False, slow=False,
        ),
        MethodSpec(
            "input_x_gradient", "Input × gradient",
            "Each pixel's value times its gradient, a first-order estimate of its contribution: positive "
            "pixels push the class score up, negative ones pull it down.",
            signed=True, slow=False,
        ),
        MethodSpec(
            "guided_backprop", "Guided backpropagation",
            "The gradient with every ReLU passing back only positive signals, which shows the sharp edges "
            "and textures that excite the class score.",
            signed=False, slow=False,
        ),
        MethodSpec(
            "deconvolution", "Deconvolution (Zeiler & Fergus)",
            "The class signal projected back through the network with ReLUs applied to the backward "
            "signal, showing the patterns the network responds to rather than this image's evidence.",
            signed=False, slow=False,
        ),
        MethodSpec(
            "integrated_gradients", "Integrated gradients",
            "Gradients averaged along a straight path from the mean image to this photo, times the "
            "difference, so the map adds up to how much the class score changed.",
            signed=True, slow=True,
            options=(
                OptionSpec("n_steps", 32, 4, 200, 1, "Steps",
                           "Points on the path from the mean image to the photo: more is exact and slower."),
                OptionSpec("internal_batch_size", 16, 1, 64, 1, "Batch size", _BATCH_HELP),
            ),
        ),
        MethodSpec(
            "smoothgrad", "SmoothGrad",
            "The gradient averaged over many noisy copies of the image, which removes speckle and keeps "
            "what stays important under small changes.",
            signed=False, slow=True,
            options=(
                OptionSpec("samples", 16, 1, 64, 1, "Noisy samples",
                           "Noisy copies to average: more gives a smoother map and takes longer."),
                OptionSpec("sigma", 0.15, 0.0, 0.5, 0.01, "Noise level",
                           "Noise standard deviation as a fraction of the image's value range."),
                OptionSpec("nt_samples_batch_size", 16, 1, 64, 1, "Batch size", _BATCH_HELP),
            ),
        ),
        MethodSpec(
            "gradcam", "Grad-CAM",
            "Where the chosen convolution layer's features support this class: its channels weighted by "
            "their average gradient, kept where positive and enlarged to the image.",
            signed=False, slow=False, layer_based=True,
        ),
        MethodSpec(
            "guided_gradcam", "Guided Grad-CAM",
            "Guided backpropagation's fine detail kept only inside Grad-CAM's coarse class region, so it "
            "is both sharp and specific to the class.",
            signed=False, slow=False, layer_based=True,
        ),
        MethodSpec(
            "occlusion", "Occlusion",
            "How much the class score drops when a mean-colour square hides each region: a direct "
            "experiment with one forward pass per position.",
            signed=True, slow=True,
            options=(
                OptionSpec("window", 32, 8, 64, 1, "Window (px)",
                           "Side of the square that hides part of the image (default scales with the image)."),
                OptionSpec("stride", 16, 4, 64, 1, "Stride (px)",
                           "Step between window positions (at most the window): smaller is finer, slower."),
                OptionSpec("perturbations_per_eval", 16, 1, 64, 1, "Batch size", _BATCH_HELP),
            ),
        ),
        MethodSpec(
            "deeplift", "DeepLIFT",
            "Each pixel's share of how far the class score moved from the mean image's, passed back layer "
            "by layer with DeepLIFT's difference rules instead of gradients.",
            signed=True, slow=False,
        ),
    )
}

# What to say when a method runs out of memory: the method's name inside a sentence, and what to lower.
_OOM_MESSAGE = {
    "saliency": ("the saliency map", "try a smaller image"),
    "input_x_gradient": ("input × gradient", "try a smaller image"),
    "guided_backprop": ("guided backpropagation", "try a smaller image"),
    "deconvolution": ("the deconvolution map", "try a smaller image"),
    "integrated_gradients": ("integrated gradients", "lower the steps or batch size"),
    "smoothgrad": ("SmoothGrad", "lower the samples or batch size"),
    "gradcam": ("Grad-CAM", "try a smaller image"),
    "guided_gradcam": ("guided Grad-CAM", "try a smaller image"),
    "occlusion": ("the occlusion map", "lower the batch size or raise the stride"),
    "deeplift": ("DeepLIFT", "try a smaller image"),
}

# Attributes DeepLift sets on modules during the forward pass and deletes in the backward pass: an
# exception in between would leave them (and their tensors) on the shared model.
_DEEPLIFT_ATTRS = ("input", "output", "input_ref")


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    *,
    target: int,
    progress: Progress | None = None,
    layer: str | None = None,
    **options: float | int | None,
) -> Attribution:
    """Attribute ``model(x)[0, target]`` to the pixels of ``x`` (1, 3, H, W) with ``method``.

    Options missing (or None) take their defaults. Raises :class:`OptionError` (a ValueError) for a bad
    method, option, layer, target or input, and :class:`AttributionError` for running out of memory.
    ``progress(fraction, message)`` gets non-decreasing fractions ending at 1.0.
    """
    spec = METHODS.get(method)
    if spec is None:
        raise OptionError(f"Unknown attribution method {method!r}; choose one of {', '.join(METHODS)}.")
    opts = _resolve_options(spec, options)
    _check_input(x)
    if model.training:
        raise OptionError("The model is in training mode (dropout is random); call model.eval() first.")
    layer_name, layer_module = _resolve_layer(model, spec, layer)

    with MODEL_LOCK:
        t0 = time.perf_counter()
        with torch.inference_mode(False):  # gradients are needed even if the caller is in inference mode
            x0 = x.detach().clone()  # (1, 3, H, W) ours; a normal tensor even if x is an inference one
        target = _check_target(model, x0, target)
        if spec.name == "occlusion":
            _fit_occlusion(spec, opts, options, side=min(x0.shape[2], x0.shape[3]))
        report = _Reporter(progress, spec.title)
        report(0.0, f"{spec.title}: starting")
        leftovers = _attrs_present(model)
        try:
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                _count_batches(model, report, _expected_batches(spec.name, opts, x0)),
            ):
                raw, heatmap, delta = _RUNNERS[spec.name](_Call(model, x0, target, opts, layer_module))
        except (MemoryError, RuntimeError) as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err):
                raise
            if x0.is_cuda:
                torch.cuda.empty_cache()
            what, hint = _OOM_MESSAGE[spec.name]
            raise AttributionError(f"Ran out of memory computing {what}; {hint}.") from err
        finally:
            _remove_new_attrs(model, leftovers)
        heatmap = heatmap.detach().float().cpu().contiguous()
        raw = raw.detach().float().cpu().contiguous()
        seconds = time.perf_counter() - t0
        report(1.0, f"{spec.title}: done")
    return Attribution(
        method=spec.name, target=target, heatmap=heatmap, raw=raw, signed=spec.signed,
        options=MappingProxyType(opts), seconds=seconds, convergence_delta=delta, layer=layer_name,
    )


# ---- the methods: one call -> (raw, heatmap (H, W), convergence delta) ----

@dataclass(frozen=True, eq=False)
class _Call:
    model: nn.Module
    x: torch.Tensor  # (1, 3, H, W), a detached copy of the caller's input
    target: int
    opts: Mapping[str, float | int]
    layer: nn.Module | None  # Grad-CAM methods: the module whose output is A

    def leaf(self) -> torch.Tensor:
        # A fresh leaf that requires grad: Captum would otherwise set requires_grad on it (with a
        # warning), and gradients reach it even when every parameter is frozen.
        return self.x.detach().clone().requires_grad_(True)

    def whole(self, name: str) -> int:
        return int(self.opts[name])

    def batched(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model for methods that run it on batches: fed channels-last (NHWC) on the CPU, where
        oneDNN convolves and max-pools such batches 10-15% faster (measured at batch 16, 224 px)."""
        if self.x.device.type != "cpu":
            return self.model
        return lambda t: self.model(t.contiguous(memory_format=torch.channels_last))


Result = tuple[torch.Tensor, torch.Tensor, float | None]


def _saliency(c: _Call) -> Result:
    from captum.attr import Saliency

    raw = Saliency(c.model).attribute(c.leaf(), target=c.target, abs=False)[0]  # (3, H, W) signed
    return raw, raw.abs().amax(dim=0), None


def _input_x_gradient(c: _Call) -> Result:
    from captum.attr import InputXGradient

    raw = InputXGradient(c.model).attribute(c.leaf(), target=c.target)[0]
    return raw, raw.sum(dim=0), None


def _guided_backprop(c: _Call) -> Result:
    from captum.attr import GuidedBackprop

    raw = GuidedBackprop(c.model).attribute(c.leaf(), target=c.target)[0]
    return raw, raw.abs().sum(dim=0), None


def _deconvolution(c: _Call) -> Result:
    from captum.attr import Deconvolution

    raw = Deconvolution(c.model).attribute(c.leaf(), target=c.target)[0]
    return raw, raw.abs().sum(dim=0), None


def _integrated_gradients(c: _Call) -> Result:
    from captum.attr import IntegratedGradients

    attrs, delta = IntegratedGradients(c.batched()).attribute(
        c.leaf(), baselines=torch.zeros_like(c.x), target=c.target, n_steps=c.whole("n_steps"),
        internal_batch_size=c.whole("internal_batch_size"), return_convergence_delta=True,
    )
    return attrs[0], attrs[0].sum(dim=0), float(delta.reshape(-1)[0])


def _smoothgrad(c: _Call) -> Result:
    from captum.attr import NoiseTunnel, Saliency

    stdev = float(c.opts["sigma"]) * float(c.x.max() - c.x.min())  # Captum asserts a Python float
    with _fixed_seed(c.x.device):  # the same image gives the same map
        raw = NoiseTunnel(Saliency(c.batched())).attribute(
            c.leaf(), nt_type="smoothgrad", nt_samples=c.whole("samples"),
            nt_samples_batch_size=c.whole("nt_samples_batch_size"), stdevs=stdev, target=c.target,
            abs=False,  # average the signed gradient, then take its magnitude, as Smilkov et al. do
        )[0]
    return raw, raw.abs().sum(dim=0), None


def _gradcam(c: _Call) -> Result:
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(c.model, c.layer).attribute(c.leaf(), target=c.target, relu_attributions=True)
    cam = torch.as_tensor(cam)  # (1, 1, h, w)
    up = LayerAttribution.interpolate(cam, tuple(c.x.shape[2:]), interpolate_mode="bilinear")  # (1, 1, H, W)
    return cam[0, 0], up[0, 0], None


def _guided_gradcam(c: _Call) -> Result:
    from captum.attr import GuidedGradCam

    raw = GuidedGradCam(c.model, c.layer).attribute(c.leaf(), target=c.target, interpolate_mode="bilinear")
    if raw.numel() == 0:  # Captum swallows an upsampling failure and returns an empty tensor
        raise AttributionError("Guided Grad-CAM could not enlarge the layer's map to the image size.")
    return raw[0], raw[0].abs().sum(dim=0), None


def _occlusion(c: _Call) -> Result:
    from captum.attr import Occlusion

    w, s = c.whole("window"), c.whole("stride")
    with torch.no_grad():  # forward passes only
        raw = Occlusion(c.batched()).attribute(
            c.x, sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=0.0, target=c.target,
            perturbations_per_eval=c.whole("perturbations_per_eval"),
        )[0]
    return raw, raw.mean(dim=0), None  # the three channels hold the same value


def _deeplift(c: _Call) -> Result:
    from captum.attr import DeepLift

    with _pool_rule_in_order(c.x.device):
        attrs, delta = DeepLift(c.model).attribute(
            c.leaf(), baselines=torch.zeros_like(c.x), target=c.target, return_convergence_delta=True,
        )
    return attrs[0], attrs[0].sum(dim=0), float(delta.reshape(-1)[0])


def _unpool2d_in_order(
    values: torch.Tensor, indices: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
    output_size: Any = None,
) -> torch.Tensor:
    """``F.max_unpool2d`` with a fixed answer on every device: where overlapping windows share a maximum
    (AlexNet's 3x3 stride-2 pools), the last window in row-major order wins, as in the CPU kernel's loop on
    one thread. CUDA's kernel writes such repeated indices in whatever order its threads finish."""
    n, ch = values.shape[:2]
    height, width = (int(v) for v in output_size[-2:])
    flat_values, flat_indices = values.reshape(n, ch, -1), indices.reshape(n, ch, -1)
    order = torch.arange(flat_indices.shape[-1], device=values.device).expand_as(flat_indices)
    winner = torch.full((n, ch, height * width), -1, dtype=torch.long, device=values.device)
    winner.scatter_reduce_(2, flat_indices, order, reduce="amax")  # a max: the same on any order of writes
    out = flat_values.gather(2, winner.clamp(min=0)).masked_fill_(winner < 0, 0)
    return out.reshape(n, ch, height, width)


@contextmanager
def _pool_rule_in_order(device: torch.device) -> Iterator[None]:
    """Off the CPU, DeepLift's max-pool rule un-pools with :func:`_unpool2d_in_order`, so that its map is the
    same on every call and matches the CPU's (Captum 0.9 uses ``F.max_unpool2d``: on CUDA a different map each
    call, cosine ~0.5 with the CPU's, for networks whose pools keep their rule, e.g. the paper's with LRN
    before each pool). Captum's rule table is swapped while MODEL_LOCK is held and restored after."""
    from captum.attr._core import deep_lift

    rules, maxpool = getattr(deep_lift, "SUPPORTED_NON_LINEAR", None), getattr(deep_lift, "maxpool", None)
    if device.type == "cpu" or not isinstance(rules, dict) or maxpool is None or nn.MaxPool2d not in rules:
        yield
        return

    def maxpool2d(module: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor, grad_input: torch.Tensor,
                  grad_output: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return maxpool(module, nn.functional.max_pool2d, _unpool2d_in_order, inputs, outputs, grad_input,
                       grad_output, eps=eps)

    before = rules[nn.MaxPool2d]
    rules[nn.MaxPool2d] = maxpool2d
    try:
        yield
    finally:
        rules[nn.MaxPool2d] = before


_RUNNERS: dict[str, Callable[[_Call], Result]] = {
    "saliency": _saliency,
    "input_x_gradient": _input_x_gradient,
    "guided_backprop": _guided_backprop,
    "deconvolution": _deconvolution,
    "integrated_gradients": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "gradcam": _gradcam,
    "guided_gradcam": _guided_gradcam,
    "occlusion": _occlusion,
    "deeplift": _deeplift,
}


# ---- checks ----

def _resolve_options(spec: MethodSpec, given: Mapping[str, Any]) -> dict[str, float | int]:
    known = {opt.name for opt in spec.options}
    unknown = sorted(set(given) - known)
    if unknown:
        takes = f"its options are {', '.join(sorted(known))}" if known else "it takes no options"
        raise OptionError(f"{spec.title} has no option {unknown[0]!r}; {takes}.")
    resolved: dict[str, float | int] = {}
    for opt in spec.options:
        value = given.get(opt.name)
        if value is None:
            resolved[opt.name] = opt.default
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise OptionError(f"{opt.label} must be a number, not {value!r}.")
        if opt.integer and float(value) != int(value):
            raise OptionError(f"{opt.label} must be a whole number, not {value!r}.")
        if not opt.minimum <= value <= opt.maximum:
            raise OptionError(f"{opt.label} must be between {opt.minimum} and {opt.maximum}, not {value!r}.")
        resolved[opt.name] = int(value) if opt.integer else float(value)
    return resolved


def _fit_occlusion(spec: MethodSpec, opts: dict[str, float | int], given: Mapping[str, Any], *, side: int) -> None:
    """Window and stride defaults are for 224 px: scale them with the image (a 32 px CIFAR image gets 8 and
    4, not one window over everything). Any window is cut to the image, and the stride to the window."""
    for name in ("window", "stride"):
        if given.get(name) is None:
            opt = spec.option(name)
            opts[name] = int(min(opt.maximum, max(opt.minimum, round(opt.default * side / 224))))
    opts["window"] = min(int(opts["window"]), side)
    opts["stride"] = min(int(opts["stride"]), int(opts["window"]))


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise OptionError(f"The input must be one RGB image tensor of shape (1, 3, H, W), not {shape}.")
    if not x.is_floating_point():
        raise OptionError(f"The input must be a floating-point tensor, not {x.dtype}.")


def _resolve_layer(
    model: nn.Module, spec: MethodSpec, layer: str | None
) -> tuple[str | None, nn.Module | None]:
    """The convolution's name and the module whose output Grad-CAM reads: the ReLU right after it, if any."""
    if not spec.layer_based:
        if layer is not None:
            raise OptionError(f"{spec.title} does not take a layer; only Grad-CAM methods do.")
        return None, None
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    name = layer if layer is not None else ("conv5" if "conv5" in convs else (convs[-1] if convs else ""))
    if name not in convs:
        raise OptionError(f"{spec.title} needs a convolution layer, one of {', '.join(convs)}; not {name!r}.")
    children = list(model.named_children())
    for (this, _), (_, following) in itertools.pairwise(children):
        if this == name and isinstance(following, nn.ReLU):
            return name, following  # rectified feature maps, as Grad-CAM's authors used
    return name, model.get_submodule(name)


def _check_target(model: nn.Module, x: torch.Tensor, target: int) -> int:
    try:
        if isinstance(target, bool):
            raise TypeError
        index = operator.index(target)
    except TypeError:
        raise OptionError(f"The target must be a class index (a whole number), not {target!r}.") from None
    last = list(model.children())[-1] if len(list(model.children())) else None
    if isinstance(last, nn.Linear):
        num_classes = last.out_features
    else:  # not a classifier head we recognise: ask the model
        with torch.no_grad():
            num_classes = model(x).shape[-1]
    if not 0 <= index < num_classes:
        raise OptionError(f"The target class must be between 0 and {num_classes - 1}, not {index}.")
    return index


# ---- hooks, progress, seeds, clean-up ----

class _Reporter:
    """Passes only increasing fractions on, so a callback never sees the bar go back."""

    def __init__(self, progress: Progress | None, title: str) -> None:
        self.progress, self.title, self.last = progress, title, -1.0

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.progress is not None and fraction > self.last:
            self.last = fraction
            self.progress(fraction, message)


def _expected_batches(method: str, opts: Mapping[str, float | int], x: torch.Tensor) -> int:
    """Forward passes the slow methods make (0: not counted), from Captum 0.9's batching."""
    if method == "integrated_gradients":  # ceil(steps / batch) batches, then f(baseline) and f(x) for delta
        return math.ceil(int(opts["n_steps"]) / int(opts["internal_batch_size"])) + 2
    if method == "smoothgrad":
        return math.ceil(int(opts["samples"]) / min(int(opts["samples"]), int(opts["nt_samples_batch_size"])))
    if method == "occlusion":  # one unoccluded pass, then the windows in batches
        w, s = int(opts["window"]), int(opts["stride"])
        positions = math.prod(math.ceil((side - w) / s) + 1 for side in x.shape[2:])
        return 1 + math.ceil(positions / int(opts["perturbations_per_eval"]))
    return 0


@contextmanager
def _count_batches(model: nn.Module, report: _Reporter, total: int) -> Iterator[None]:
    """Report (batches started - 1) / total before each forward pass; the hook always goes away."""
    if total <= 0:
        yield
        return
    started = 0

    def pre_hook(_module: nn.Module, _args: tuple[Any, ...]) -> None:
        nonlocal started
        started += 1
        report((started - 1) / total, f"{report.title}: pass {min(started, total)} of {total}")

    handle = model.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _fixed_seed(device: torch.device, seed: int = 0) -> Iterator[None]:
    """Seed the generator of ``device`` (and the CPU's) inside, and give back the caller's RNG state after."""
    accel = device.type != "cpu"
    devices = [device.index if device.index is not None else 0] if accel else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accel else "cuda"):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif accel:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


def _attrs_present(model: nn.Module) -> set[tuple[int, str]]:
    return {(id(m), a) for m in model.modules() for a in _DEEPLIFT_ATTRS if a in m.__dict__}


def _remove_new_attrs(model: nn.Module, before: set[tuple[int, str]]) -> None:
    for m in model.modules():
        for a in _DEEPLIFT_ATTRS:
            if a in m.__dict__ and (id(m), a) not in before:
                delattr(m, a)


# ---- CLI helper ----

def tqdm_progress(desc: str) -> Progress:
    """A progress callback that drives a tqdm bar (created on the first call, closed at 1.0)."""
    from tqdm import tqdm

    bar: Any = None

    def update(fraction: float, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=100, desc=desc, unit="%", leave=False,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        bar.update(round(fraction * 100) - bar.n)
        bar.set_postfix_str(message, refresh=True)
        if fraction >= 1.0:
            bar.close()

    return update
