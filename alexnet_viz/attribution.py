"""Attribution maps through Captum, ten methods behind one call::

    attr = attribute(model, x, "integrated_gradients", target=281)
    attr.heatmap  # (H, W) float32 on the CPU, pixel-aligned with x
    attribute(model, x, "saliency", target=Contrast(281, 282))  # why tabby and not tiger cat

``model`` is an eval-mode network such as :func:`alexnet_viz.architectures.build_model` returns, ``x``
a ``(1, 3, H, W)`` normalised input on the model's device. Options are numeric keyword arguments,
checked against the method's :class:`OptionSpec` bounds (the UI builds its sliders from the same specs);
Grad-CAM's layer is the string keyword ``layer``.

Each method is one :class:`MethodSpec` in :data:`METHODS`: its words, options, runner, the forward passes it
costs (for progress), what to lower when memory runs out, and whether it can show a contrast. The CLI's
``--method`` choices, the page's method list and the API are built from that table, so a new method is one
``METHODS.register(MethodSpec(...))`` plus its tests.

Heatmap conventions (``heatmap`` is what a student sees; ``raw`` is what Captum returned, batch dim
dropped, ``(3, H, W)``):

- saliency: ``max`` over channels of ``|d logit / dx|``, as Simonyan et al. (2014) show it. ``raw`` keeps
  the signed gradient (Captum's ``Saliency(abs=False)``).
- input_x_gradient, integrated_gradients, deeplift: signed, summed over channels. IG's map adds up to
  ``f(x)[t] - f(baseline)[t]`` up to ``convergence_delta``; by default it doubles its Gauss-Legendre steps
  (8, 16, 32, ...) until that error is within ``tolerance`` (1%) of the change, or ``n_steps`` is reached.
  DeepLIFT's would add up too, but Captum 0.9's rules are not exact on AlexNet (max-pool windows overlap; a
  ReLU feeding a max-pool hides the pool's rule; LRN has none), so its delta can be a large share of the change.
- occlusion: signed. A window spans all three channels, so every channel holds the same value; the
  heatmap is that value (the channel mean): the average drop of the target logit when a window covering
  the pixel is replaced by the baseline. Summing channels would just triple it.
- guided_backprop, deconvolution, smoothgrad, guided_gradcam: ``|raw|`` summed over channels, as the
  SmoothGrad authors' PAIR library shows gradient maps. Smoothgrad averages the *signed* gradient over
  noisy copies and takes the magnitude afterwards (Smilkov et al. 2017).
- gradcam: ``ReLU(sum_k mean(dy/dA_k) * A_k)`` where ``A`` is the rectified output of the chosen
  convolution (the output of the ReLU that follows it, as in Selvaraju et al.'s Caffe models, whose
  in-place ReLUs make a "conv" blob rectified). ``raw`` is the ``(h, w)`` layer-resolution map *before* that
  final ReLU (signed: for a contrast, its negative part is evidence for the other class); the heatmap is its
  ReLU bilinearly upsampled to ``(H, W)``. guided_gradcam is Captum's ``GuidedGradCam`` on the same
  activation (guided backprop times the upsampled Grad-CAM map).

Contrasts (:class:`~alexnet_viz.targets.Contrast`): the model is wrapped so that its one output is
``score[a] - score[b]``; every method that is linear in the output's gradient (or, for occlusion, in the
output) then shows what separates the two classes. Guided backpropagation and deconvolution are not: their
maps hardly depend on the class (Adebayo et al. 2018), so ``A - B`` looks like ``A``; their specs say so
(``contrastive=False``, ``contrast_note``) and a contrast is refused.

Baselines (integrated gradients, deeplift, occlusion) are zeros *of the normalised input*: the dataset
mean colour, a flat grey-brown image, not black. Smoothgrad's noise has standard deviation
``sigma * (x.max() - x.min())`` and a fixed seed, so the same image gives the same map.

Concurrency: guided backprop, deconvolution, DeepLift and (guided) Grad-CAM put hooks on the model's
modules, and DeepLift also rewrites the model's input through a hook on the model itself. A model shared by
every visitor of a Space would pass another request's forward through those hooks, so :func:`attribute`
holds the model's own lock (:func:`alexnet_viz.activations.model_lock`, also ``LoadedModel.lock``), which
``analyze`` takes too. Different models do not wait for each other.
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
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .activations import model_lock
from .errors import UserError, is_out_of_memory
from .registry import Registry
from .targets import Contrast

__all__ = [
    "METHODS",
    "TOP1",
    "Attribution",
    "AttributionError",
    "Call",
    "Contrast",
    "Maps",
    "MethodSpec",
    "OptionError",
    "OptionSpec",
    "TopOne",
    "attribute",
    "tqdm_progress",
]

Progress = Callable[[float, str], None]

# Captum warns on every call that it sets hooks and will remove them; they are removed (a test checks), so
# to a student the note is noise. Only these messages are silenced, and only around the methods' calls.
# (Before Python 3.14's context-aware warnings, catch_warnings swaps one process-wide filter list: two models'
# attributions overlapping can at worst let one note through or leave this one narrow filter in place.)
_CAPTUM_HOOK_NOTES = r"\s*Setting (forward, )?backward hooks (on ReLU|and attributes)"


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


@dataclass(frozen=True, eq=False)
class Call:
    """What a method's runner gets: the model to attribute (for a contrast, wrapped so that its single
    output is ``score[a] - score[b]``), a detached copy of the input, the output index to pass to Captum,
    the resolved options, and for layer-based methods the module whose output is Grad-CAM's ``A``."""

    model: nn.Module
    x: torch.Tensor  # (1, 3, H, W)
    target: int
    opts: Mapping[str, float | int]
    layer: nn.Module | None = None

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


@dataclass(frozen=True, eq=False)
class Maps:
    """A runner's answer: ``raw`` (what Captum returned, batch dim dropped), the ``(H, W)`` heatmap, and for
    methods that promise completeness the error ``sum(raw) - (f(x) - f(baseline))`` and the steps used."""

    raw: torch.Tensor
    heatmap: torch.Tensor
    delta: float | None = None
    steps: int | None = None


Runner = Callable[[Call], Maps]
Passes = Callable[[Mapping[str, float | int], tuple[int, int]], int]  # (options, (H, W)) -> forward passes


def _no_counted_passes(_opts: Mapping[str, float | int], _size: tuple[int, int]) -> int:
    return 0


@dataclass(frozen=True)
class MethodSpec:
    """Everything about one attribution method; the CLI, the page and the API are generated from these."""

    name: str
    title: str
    caption: str  # one sentence that teaches what the map shows
    signed: bool  # the heatmap has a meaningful sign: show it with a diverging colormap
    slow: bool  # many forward passes: reports progress
    options: tuple[OptionSpec, ...] = ()
    layer_based: bool = False  # takes a `layer` (a convolution's name)
    runner: Runner = field(kw_only=True)  # Call -> Maps
    phrase: str = field(default="", kw_only=True)  # the method inside a sentence ("the saliency map")
    passes: Passes = field(default=_no_counted_passes, kw_only=True)  # forward passes, for progress (0: not counted)
    memory_hint: str = field(default="try a smaller image", kw_only=True)  # what to lower when memory runs out
    contrastive: bool = field(default=True, kw_only=True)  # can explain score[a] - score[b]
    contrast_note: str = field(default="", kw_only=True)  # when not contrastive: why, in one sentence
    # Every forward pass is at the input itself (no baseline, noise or perturbed copy), so the top-1 class can
    # be read off the method's own pass (target=TOP1) instead of a pass of its own.
    at_input_only: bool = field(default=False, kw_only=True)
    # Adjusts defaults to the input before the run: (options resolved, options given, (H, W)) -> None.
    fit: Callable[[dict[str, float | int], Mapping[str, Any], tuple[int, int]], None] | None = field(
        default=None, kw_only=True)

    def option(self, name: str) -> OptionSpec:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    @property
    def in_words(self) -> str:
        return self.phrase or self.title


@dataclass(frozen=True, eq=False)
class Attribution:
    """One attribution map for one input and one target class. Tensors live on the CPU."""

    method: str
    target: int
    heatmap: torch.Tensor  # (H, W) float32, aligned with the input; signed if `signed`, else >= 0
    raw: torch.Tensor  # (3, H, W) as Captum returned it; gradcam: the (h, w) layer-resolution map before ReLU
    signed: bool
    options: Mapping[str, float | int]  # the values used, defaults filled in
    seconds: float  # compute time, not counting the wait for the model's lock
    convergence_delta: float | None = None  # integrated gradients, deeplift: sum(raw) - (f(x) - f(0))
    layer: str | None = None  # gradcam, guided_gradcam: the convolution whose rectified output was used
    contrast: int | None = None  # the class B of a contrast: the map explains score[target] - score[contrast]
    steps: int | None = None  # integrated gradients: the steps of the integral reported

    def to_dict(self) -> dict[str, Any]:
        """What was computed and how, ready for strict JSON (``allow_nan=False``): non-finite numbers are None."""
        return {
            "method": self.method, "target": self.target, "contrast": self.contrast, "layer": self.layer,
            "options": dict(self.options), "seconds": _finite(round(self.seconds, 4)),
            "convergence_delta": None if self.convergence_delta is None else _finite(self.convergence_delta),
            "steps": self.steps,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---- the methods: one Call -> Maps ----

def _saliency(c: Call) -> Maps:
    from captum.attr import Saliency

    raw = Saliency(c.model).attribute(c.leaf(), target=c.target, abs=False)[0]  # (3, H, W) signed
    return Maps(raw, raw.abs().amax(dim=0))


def _input_x_gradient(c: Call) -> Maps:
    from captum.attr import InputXGradient

    raw = InputXGradient(c.model).attribute(c.leaf(), target=c.target)[0]
    return Maps(raw, raw.sum(dim=0))


def _guided_backprop(c: Call) -> Maps:
    from captum.attr import GuidedBackprop

    raw = GuidedBackprop(c.model).attribute(c.leaf(), target=c.target)[0]
    return Maps(raw, raw.abs().sum(dim=0))


def _deconvolution(c: Call) -> Maps:
    from captum.attr import Deconvolution

    raw = Deconvolution(c.model).attribute(c.leaf(), target=c.target)[0]
    return Maps(raw, raw.abs().sum(dim=0))


def _ig_levels(opts: Mapping[str, float | int]) -> list[int]:
    """The step counts integrated gradients tries in turn: n_steps alone at tolerance 0, else 8, 16, ...
    doubling up to n_steps (Gauss-Legendre nodes do not nest, so each level is a fresh integral)."""
    cap = int(opts["n_steps"])
    if float(opts["tolerance"]) <= 0 or cap <= 8:
        return [cap]
    levels = [8]
    while levels[-1] * 2 < cap:
        levels.append(levels[-1] * 2)
    return [*levels, cap]


def _ig_passes(opts: Mapping[str, float | int], _size: tuple[int, int]) -> int:
    # f(x) and f(baseline) in one batch for the completeness error, then ceil(steps / batch) per level
    batch = int(opts["internal_batch_size"])
    return 1 + sum(math.ceil(k / batch) for k in _ig_levels(opts))


def _integrated_gradients(c: Call) -> Maps:
    from captum.attr import IntegratedGradients

    baseline = torch.zeros_like(c.x)
    with torch.no_grad():
        ends = c.model(torch.cat([c.x, baseline]))[:, c.target]  # f(x), f(baseline): one pass
    change = float(ends[0] - ends[1])
    tolerance = float(c.opts["tolerance"]) * abs(change)
    ig = IntegratedGradients(c.batched())
    attrs, delta, steps = torch.zeros_like(c.x), math.inf, 0
    for steps in _ig_levels(c.opts):
        attrs = ig.attribute(c.leaf(), baselines=baseline, target=c.target, n_steps=steps, method="gausslegendre",
                             internal_batch_size=c.whole("internal_batch_size"))
        delta = float(attrs.detach().sum(dtype=torch.float64)) - change
        if abs(delta) <= tolerance:
            break
    return Maps(attrs[0], attrs[0].sum(dim=0), delta, steps)


def _smoothgrad_passes(opts: Mapping[str, float | int], _size: tuple[int, int]) -> int:
    samples = int(opts["samples"])
    return math.ceil(samples / min(samples, int(opts["nt_samples_batch_size"])))


def _smoothgrad(c: Call) -> Maps:
    from captum.attr import NoiseTunnel, Saliency

    stdev = float(c.opts["sigma"]) * float(c.x.max() - c.x.min())  # Captum asserts a Python float
    with _fixed_seed(c.x.device):  # the same image gives the same map
        raw = NoiseTunnel(Saliency(c.batched())).attribute(
            c.leaf(), nt_type="smoothgrad", nt_samples=c.whole("samples"),
            nt_samples_batch_size=c.whole("nt_samples_batch_size"), stdevs=stdev, target=c.target,
            abs=False,  # average the signed gradient, then take its magnitude, as Smilkov et al. do
        )[0]
    return Maps(raw, raw.abs().sum(dim=0))


def _gradcam(c: Call) -> Maps:
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(c.model, c.layer).attribute(c.leaf(), target=c.target, relu_attributions=False)
    cam = torch.as_tensor(cam)  # (1, 1, h, w), before the final ReLU
    up = LayerAttribution.interpolate(cam.clamp(min=0), tuple(c.x.shape[2:]), interpolate_mode="bilinear")
    return Maps(cam[0, 0], up[0, 0])  # raw (h, w) signed; heatmap (H, W) >= 0


def _guided_gradcam(c: Call) -> Maps:
    from captum.attr import GuidedGradCam

    raw = GuidedGradCam(c.model, c.layer).attribute(c.leaf(), target=c.target, interpolate_mode="bilinear")
    if raw.numel() == 0:  # Captum swallows an upsampling failure and returns an empty tensor
        raise AttributionError("Guided Grad-CAM could not enlarge the layer's map to the image size.")
    return Maps(raw[0], raw[0].abs().sum(dim=0))


def _occlusion_passes(opts: Mapping[str, float | int], size: tuple[int, int]) -> int:
    # one unoccluded pass, then the windows in batches
    w, s = int(opts["window"]), int(opts["stride"])
    positions = math.prod(math.ceil((side - w) / s) + 1 for side in size)
    return 1 + math.ceil(positions / int(opts["perturbations_per_eval"]))


def _fit_occlusion(opts: dict[str, float | int], given: Mapping[str, Any], size: tuple[int, int]) -> None:
    """Window and stride defaults are for 224 px: scale them with the image (a 32 px CIFAR image gets 8 and
    4, not one window over everything). Any window is cut to the image, and the stride to the window."""
    side = min(size)
    spec = METHODS["occlusion"]
    for name in ("window", "stride"):
        if given.get(name) is None:
            opt = spec.option(name)
            opts[name] = int(min(opt.maximum, max(opt.minimum, round(opt.default * side / 224))))
    opts["window"] = min(int(opts["window"]), side)
    opts["stride"] = min(int(opts["stride"]), int(opts["window"]))


def _occlusion(c: Call) -> Maps:
    from captum.attr import Occlusion

    w, s = c.whole("window"), c.whole("stride")
    with torch.no_grad():  # forward passes only
        raw = Occlusion(c.batched()).attribute(
            c.x, sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=0.0, target=c.target,
            perturbations_per_eval=c.whole("perturbations_per_eval"),
        )[0]
    return Maps(raw, raw.mean(dim=0))  # the three channels hold the same value


def _deeplift(c: Call) -> Maps:
    from captum.attr import DeepLift

    with _pool_rule_in_order(c.x.device):
        attrs, delta = DeepLift(c.model).attribute(
            c.leaf(), baselines=torch.zeros_like(c.x), target=c.target, return_convergence_delta=True,
        )
    return Maps(attrs[0], attrs[0].sum(dim=0), float(delta.reshape(-1)[0]))


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


_CAPTUM_RULES_LOCK = threading.Lock()


@contextmanager
def _pool_rule_in_order(device: torch.device) -> Iterator[None]:
    """Off the CPU, DeepLift's max-pool rule un-pools with :func:`_unpool2d_in_order`, so that its map is the
    same on every call and matches the CPU's (Captum 0.9 uses ``F.max_unpool2d``: on CUDA a different map each
    call, cosine ~0.5 with the CPU's, for networks whose pools keep their rule, e.g. the paper's with LRN
    before each pool). Captum's rule table is global: it is swapped under a lock of its own (DeepLIFT runs on two
    accelerator models take turns) and restored after."""
    from captum.attr._core import deep_lift

    rules, maxpool = getattr(deep_lift, "SUPPORTED_NON_LINEAR", None), getattr(deep_lift, "maxpool", None)
    if device.type == "cpu" or not isinstance(rules, dict) or maxpool is None or nn.MaxPool2d not in rules:
        yield
        return

    def maxpool2d(module: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor, grad_input: torch.Tensor,
                  grad_output: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return maxpool(module, nn.functional.max_pool2d, _unpool2d_in_order, inputs, outputs, grad_input,
                       grad_output, eps=eps)

    with _CAPTUM_RULES_LOCK:
        before = rules[nn.MaxPool2d]
        rules[nn.MaxPool2d] = maxpool2d
        try:
            yield
        finally:
            rules[nn.MaxPool2d] = before


_BATCH_HELP = "Images per forward pass: higher is a little faster and needs more memory."
_CLASS_BLIND = ("its map hardly depends on the class (guided ReLUs pass back only what excites any unit), so the "
                "map for A minus B looks like the map for A")

METHODS: Registry[MethodSpec] = Registry("attribution method", (
    MethodSpec(
        "saliency", "Saliency (gradient)",
        "How much a tiny change of each pixel would move the class score: the largest absolute "
        "gradient over the three colour channels.",
        signed=False, slow=False, runner=_saliency, phrase="the saliency map", at_input_only=True,
    ),
    MethodSpec(
        "input_x_gradient", "Input × gradient",
        "Each pixel's value times its gradient, a first-order estimate of its contribution: positive "
        "pixels push the class score up, negative ones pull it down.",
        signed=True, slow=False, runner=_input_x_gradient, phrase="input × gradient", at_input_only=True,
    ),
    MethodSpec(
        "guided_backprop", "Guided backpropagation",
        "The gradient with every ReLU passing back only positive signals, which shows the sharp edges "
        "and textures that excite the class score.",
        signed=False, slow=False, runner=_guided_backprop, phrase="guided backpropagation", at_input_only=True,
        contrastive=False, contrast_note=f"Guided backpropagation cannot show a contrast: {_CLASS_BLIND}.",
    ),
    MethodSpec(
        "deconvolution", "Deconvolution (Zeiler & Fergus)",
        "The class signal projected back through the network with ReLUs applied to the backward "
        "signal, showing the patterns the network responds to rather than this image's evidence.",
        signed=False, slow=False, runner=_deconvolution, phrase="the deconvolution map", at_input_only=True,
        contrastive=False,
        contrast_note="Deconvolution cannot show a contrast: its map hardly depends on the class, so the map "
                      "for A minus B looks like the map for A.",
    ),
    MethodSpec(
        "integrated_gradients", "Integrated gradients",
        "Gradients averaged along a straight path from the mean image to this photo, times the "
        "difference, so the map adds up to how much the class score changed.",
        signed=True, slow=True, runner=_integrated_gradients, phrase="integrated gradients",
        passes=_ig_passes, memory_hint="lower the steps or batch size",
        options=(
            OptionSpec("n_steps", 32, 4, 200, 1, "Steps",
                       "Points on the path from the mean image to the photo (at most, with a tolerance): more is "
                       "exact and slower."),
            OptionSpec("internal_batch_size", 16, 1, 64, 1, "Batch size", _BATCH_HELP),
            OptionSpec("tolerance", 0.01, 0.0, 0.2, 0.005, "Tolerance",
                       "Stop doubling the steps once the map adds up to the score change within this "
                       "fraction; 0 always uses every step."),
        ),
    ),
    MethodSpec(
        "smoothgrad", "SmoothGrad",
        "The gradient averaged over many noisy copies of the image, which removes speckle and keeps "
        "what stays important under small changes.",
        signed=False, slow=True, runner=_smoothgrad, phrase="SmoothGrad", passes=_smoothgrad_passes,
        memory_hint="lower the samples or batch size",
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
        signed=False, slow=False, layer_based=True, runner=_gradcam, phrase="Grad-CAM", at_input_only=True,
    ),
    MethodSpec(
        "guided_gradcam", "Guided Grad-CAM",
        "Guided backpropagation's fine detail kept only inside Grad-CAM's coarse class region, so it "
        "is both sharp and specific to the class.",
        signed=False, slow=False, layer_based=True, runner=_guided_gradcam, phrase="guided Grad-CAM",
        at_input_only=True, contrastive=False,
        contrast_note="Guided Grad-CAM cannot show a contrast: its detail comes from guided backpropagation, "
                      "whose map hardly depends on the class; use Grad-CAM for a contrast.",
    ),
    MethodSpec(
        "occlusion", "Occlusion",
        "How much the class score drops when a mean-colour square hides each region: a direct "
        "experiment with one forward pass per position.",
        signed=True, slow=True, runner=_occlusion, phrase="the occlusion map", passes=_occlusion_passes,
        memory_hint="lower the batch size or raise the stride", fit=_fit_occlusion,
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
        signed=True, slow=False, runner=_deeplift, phrase="DeepLIFT",
    ),
))

# Attributes DeepLift sets on modules during the forward pass and deletes in the backward pass: an
# exception in between would leave them (and their tensors) on the shared model.
_DEEPLIFT_ATTRS = ("input", "output", "input_ref")


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    *,
    target: int | Contrast | TopOne,
    progress: Progress | None = None,
    layer: str | None = None,
    **options: float | int | None,
) -> Attribution:
    """Attribute ``model(x)[0, target]`` to the pixels of ``x`` (1, 3, H, W) with ``method``; with
    ``target=Contrast(a, b)``, attribute ``model(x)[0, a] - model(x)[0, b]`` (``b=None``: the runner-up);
    with ``target=TOP1``, the class scored highest (``Attribution.target`` says which).

    Options missing (or None) take their defaults. Raises :class:`OptionError` (a ValueError) for a bad
    method, option, layer, target or input, and :class:`AttributionError` for running out of memory.
    ``progress(fraction, message)`` gets non-decreasing fractions ending at 1.0.
    """
    spec = METHODS.get(method)
    if spec is None:
        raise OptionError(f"Unknown attribution method {_short(method)}; choose one of {', '.join(METHODS)}.")
    opts = _resolve_options(spec, options)
    _check_input(x)
    if model.training:
        raise OptionError("The model is in training mode (dropout is random); call model.eval() first.")
    layer_name, layer_module = _resolve_layer(model, spec, layer)
    if isinstance(target, Contrast) and not spec.contrastive:
        raise OptionError(spec.contrast_note or f"{spec.title} cannot show a contrast between two classes.")

    with model_lock(model):
        t0 = time.perf_counter()
        with torch.inference_mode(False):  # gradients are needed even if the caller is in inference mode
            x0 = x.detach().clone()  # (1, 3, H, W) ours; a normal tensor even if x is an inference one
        picker: _TopOne | None = None
        forward: nn.Module
        if isinstance(target, TopOne) and not spec.at_input_only:  # the class first, from a pass of its own
            with torch.no_grad():
                target = int(model(x0)[0].argmax())
        if isinstance(target, TopOne):  # read off the method's own forward pass
            picker = _TopOne(model)
            index, other, forward, output = -1, None, picker, 0
        else:
            index, other = _check_target(model, x0, target)
            forward, output = (model, index) if other is None else (_Difference(model, index, other), 0)
        size = (int(x0.shape[2]), int(x0.shape[3]))
        if spec.fit is not None:
            spec.fit(opts, options, size)
        report = _Reporter(progress, spec.title)
        report(0.0, f"{spec.title}: starting")
        leftovers = _attrs_present(model)
        try:
            with (
                warnings.catch_warnings(),
                torch.inference_mode(False),
                torch.enable_grad(),
                _count_batches(model, report, spec.passes(opts, size)),
            ):
                warnings.filterwarnings("ignore", message=_CAPTUM_HOOK_NOTES)
                maps = spec.runner(Call(forward, x0, output, opts, layer_module))
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            if x0.is_cuda:
                torch.cuda.empty_cache()
            raise AttributionError(f"Ran out of memory computing {spec.in_words}; {spec.memory_hint}.") from err
        finally:
            _remove_new_attrs(model, leftovers)
        if picker is not None:
            if picker.index is None:  # a runner that never ran the model
                raise AttributionError(f"{spec.title} did not run the model, so it has no top-1 class.")
            index = picker.index
        heatmap = maps.heatmap.detach().float().cpu().contiguous()
        raw = maps.raw.detach().float().cpu().contiguous()
        seconds = time.perf_counter() - t0
        report(1.0, f"{spec.title}: done")
    return Attribution(
        method=spec.name, target=index, heatmap=heatmap, raw=raw, signed=spec.signed,
        options=MappingProxyType(opts), seconds=seconds, convergence_delta=maps.delta, layer=layer_name,
        contrast=other, steps=maps.steps,
    )


@dataclass(frozen=True)
class TopOne:
    """``target=TOP1``: the class the model scores highest for this input. Methods ``at_input_only`` read it
    off their own forward pass (one pass fewer than asking for the class first); the others fix it with a pass
    of its own before they start."""


TOP1 = TopOne()


class _TopOne(nn.Module):
    """``model`` with one output, its highest score, ``score[argmax]``: (B, 3, H, W) -> (B, 1); ``index`` is
    that class for the first input row. Wraps, never changes, it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.index: int | None = None
        self.training = False  # not .eval(): that would also set the shared model's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        pick = out.detach().argmax(dim=1, keepdim=True)
        if self.index is None:
            self.index = int(pick[0, 0])
        return out.gather(1, pick)


class _Difference(nn.Module):
    """``model`` with one output, ``score[a] - score[b]``: (B, 3, H, W) -> (B, 1). Wraps, never changes, it."""

    def __init__(self, model: nn.Module, a: int, b: int) -> None:
        super().__init__()
        self.model, self.a, self.b = model, a, b
        self.training = False  # not .eval(): that would also set the shared model's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return (out[:, self.a] - out[:, self.b]).unsqueeze(1)


# ---- checks ----

def _resolve_options(spec: MethodSpec, given: Mapping[str, Any]) -> dict[str, float | int]:
    known = {opt.name for opt in spec.options}
    unknown = sorted(set(given) - known)
    if unknown:
        takes = f"its options are {', '.join(sorted(known))}" if known else "it takes no options"
        raise OptionError(f"{spec.title} has no option {_short(unknown[0])}; {takes}.")
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


def _check_target(model: nn.Module, x: torch.Tensor, target: int | Contrast) -> tuple[int, int | None]:
    """The class index to explain and, for a contrast, the other class (the runner-up when not given)."""
    a, b = (target.a, target.b) if isinstance(target, Contrast) else (target, None)
    last = list(model.children())[-1] if len(list(model.children())) else None
    scores: torch.Tensor | None = None
    if isinstance(last, nn.Linear):
        num_classes = last.out_features
    else:  # not a classifier head we recognise: ask the model
        with torch.no_grad():
            scores = model(x)[0]
        num_classes = scores.shape[-1]
    index = _class_index(a, num_classes)
    if not isinstance(target, Contrast):
        return index, None
    if b is None:
        if num_classes < 2:
            raise OptionError("A contrast needs a model with at least two classes.")
        if scores is None:
            with torch.no_grad():
                scores = model(x)[0]
        scores = scores.float().clone()
        scores[index] = -math.inf
        return index, int(scores.argmax())
    other = _class_index(b, num_classes)
    if other == index:
        raise OptionError(f"A contrast needs two different classes, not class {index} twice.")
    return index, other


def _class_index(target: object, num_classes: int) -> int:
    try:
        if isinstance(target, bool):
            raise TypeError
        index = operator.index(target)  # type: ignore[arg-type]
    except TypeError:
        shown = _short(target) if isinstance(target, str) else f"{target!r}"[:40]
        raise OptionError(f"The target must be a class index (a whole number), not {shown}.") from None
    if not 0 <= index < num_classes:
        raise OptionError(f"The target class must be between 0 and {num_classes - 1}, not {index}.")
    return index


def _short(text: str) -> str:
    from .targets import shorten

    return shorten(text) if isinstance(text, str) else f"{text!r}"[:40]


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
