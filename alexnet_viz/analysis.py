"""One forward pass per image: predictions and every named layer's output, as a frozen result.

``analyze`` is the step every face (UI, CLI, notebook) calls; ``explain`` runs a Captum method on the
very input tensor that ``analyze`` used, so maps and activations always describe the same pixels.
``analyze(..., capture=False)`` predicts without hooking any layer (``activations`` is then empty): what an
API call that only needs the top classes or one map should pay.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .activations import capture
from .images import ImageSource, load_image
from .targets import Contrast

if TYPE_CHECKING:
    from .attribution import Attribution
    from .model import LoadedModel

__all__ = ["Analysis", "Contrast", "Prediction", "analyze", "explain", "explain_image", "finite_or_none", "input_view",
           "resolve_target"]


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything one forward pass computed for one image. Tensors live on the CPU, batch dim dropped."""

    input: torch.Tensor  # (1, 3, S, S) normalised model input, CPU
    logits: torch.Tensor  # (num_classes,)
    probabilities: torch.Tensor  # (num_classes,) softmax of logits
    top_k: tuple[Prediction, ...]
    activations: Mapping[str, torch.Tensor]  # layer -> (C, H, W) for conv/pool, (F,) for FC; {} if not captured
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds: decode, preprocess, forward
    arch: str = ""
    device: str = "cpu"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # the normalisation of ``input``, to undo it for ``view``
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @functools.cached_property
    def view(self) -> Image.Image:
        """The resized, centre-cropped image the model saw, (S, S): overlays go on this. Drawn when first asked
        for (a prediction alone never needs it)."""
        return input_view(self.input, self.mean, self.std)

    @property
    def top1(self) -> Prediction:
        return self.top_k[0]

    def sparsity(self, layer: str) -> float:
        """Share of exactly-zero values in a layer's output (ReLU sparsity)."""
        act = self.activations[layer]
        return float((act == 0).sum()) / max(act.numel(), 1)

    def to_dict(self) -> dict[str, Any]:
        """Predictions, shapes and timings, ready for strict JSON (``json.dumps(..., allow_nan=False)``): a
        value that is not a finite number (a probability from weights that overflow) is ``None`` (null)."""
        return {
            "arch": self.arch,
            "device": self.device,
            "top_k": [{"index": p.index, "label": p.label, "probability": finite_or_none(p.probability)}
                      for p in self.top_k],
            "layers": {name: list(a.shape) for name, a in self.activations.items()},
            "timings_ms": {k: finite_or_none(round(v * 1000, 2)) for k, v in self.timings.items()},
        }


def finite_or_none(value: float) -> float | None:
    """``value`` if it is a finite number, else None: strict JSON has no NaN or Infinity."""
    return value if math.isfinite(value) else None


def input_view(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Image.Image:
    """Undo the normalisation of a (1, 3, S, S) input: the picture the network actually saw."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    rgb = (x[0].detach().float().cpu() * s + m).clamp(0, 1)  # (3, S, S)
    return Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def analyze(loaded: LoadedModel, image: ImageSource, *, top_k: int = 5, capture: bool = True) -> Analysis:
    """Load ``image``, run ONE forward pass and return the result; with ``capture`` every visible layer's output
    is kept too (``capture=False``: no hooks, ``activations`` empty, for callers that need only predictions)."""
    t0 = time.perf_counter()
    pil = _rgb(image)
    t1 = time.perf_counter()
    x = loaded.preprocess(pil)  # (1, 3, S, S); made outside inference mode so attribution can use it
    t2 = time.perf_counter()
    # The model is shared by every visitor: capture's hooks (and Captum's) must not see another
    # request's forward pass, so forwards and attributions on this model take turns.
    with loaded.lock, torch.inference_mode(), _capture(loaded, capture) as acts:
        logits = loaded.module(x)[0].float()  # (num_classes,)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    t3 = time.perf_counter()
    logits = logits.cpu()
    probs = torch.softmax(logits, dim=0)
    k = max(1, min(top_k, loaded.num_classes))
    values, indices = probs.topk(k)
    preds = tuple(
        Prediction(int(i), loaded.categories[int(i)], float(v)) for v, i in zip(values, indices, strict=True)
    )
    x_cpu = x.detach().cpu()
    return Analysis(
        input=x_cpu,
        logits=logits,
        probabilities=probs,
        top_k=preds,
        activations=MappingProxyType({name: a[0] for name, a in acts.items()}),
        timings=MappingProxyType({"decode": t1 - t0, "preprocess": t2 - t1, "forward": t3 - t2}),
        arch=loaded.arch,
        device=str(loaded.device),
        mean=tuple(loaded.mean),
        std=tuple(loaded.std),
    )


def _capture(loaded: LoadedModel, enabled: bool) -> AbstractContextManager[dict[str, torch.Tensor]]:
    return capture(loaded.module, loaded.layer_names) if enabled else nullcontext({})


def explain(
    loaded: LoadedModel,
    subject: Analysis | ImageSource,
    method: str,
    *,
    target: int | str | Contrast | None = None,
    layer: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    **options: float,
) -> Attribution:
    """Run attribution ``method`` for ``target``: an index, a class name, None for the top-1 class, or
    ``Contrast(a, b)`` (names or indices) for "why a and not b".

    ``subject`` is an Analysis (its input tensor and scores are reused) or anything ``load_image`` accepts
    (then only a prediction is made, no layer captured). In a Contrast, ``b=None`` is the runner-up: the
    best-scoring class other than ``a``, read off the analysis.
    """
    from .attribution import attribute

    if not isinstance(subject, Analysis):
        return explain_image(loaded, subject, method, target=target, layer=layer, progress=progress, **options)[1]
    resolved = resolve_target(loaded, subject, target)
    x = subject.input.to(loaded.device)
    return attribute(loaded.module, x, method, target=resolved, progress=progress, layer=layer or None, **options)


def explain_image(
    loaded: LoadedModel,
    image: ImageSource,
    method: str,
    *,
    target: int | str | Contrast | None = None,
    layer: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    **options: float,
) -> tuple[Image.Image, Attribution]:
    """:func:`explain` for an image with no :class:`Analysis` (the API's ``/explain``), and the view its map is
    drawn on. For the top-1 class with a method whose passes are all at the input (saliency, Grad-CAM, ...)
    the class is read off the method's own forward pass: one forward pass fewer than predicting first."""
    from .attribution import METHODS, TOP1, attribute

    spec = METHODS.get(method)
    if spec is not None and spec.at_input_only and (target is None or _blank(target)):
        x = loaded.preprocess(_rgb(image))
        attr = attribute(loaded.module, x, method, target=TOP1, progress=progress, layer=layer or None, **options)
        return input_view(x.detach().cpu(), loaded.mean, loaded.std), attr
    analysis = analyze(loaded, image, capture=False)
    return analysis.view, explain(loaded, analysis, method, target=target, layer=layer, progress=progress, **options)


def _rgb(image: ImageSource) -> Image.Image:
    """An RGB picture as it is; anything else through the intake (:func:`load_image`)."""
    return image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)


def _blank(target: object) -> bool:
    """Whether ``target`` is text with nothing typed in it (which, like None, asks for the top-1 class)."""
    return isinstance(target, str) and not target.strip()


def resolve_target(loaded: LoadedModel, analysis: Analysis, target: int | str | Contrast | None) -> int | Contrast:
    """An index, or a Contrast of two indices, from what a person or a caller gave (see :func:`explain`)."""
    if isinstance(target, Contrast):
        a = loaded.class_index(target.a)
        if target.b is not None:
            return Contrast(a, loaded.class_index(target.b))
        scores = analysis.logits.clone()
        scores[a] = -math.inf
        return Contrast(a, int(scores.argmax()))
    if target is None or _blank(target):  # nothing given: the top-1 class
        return analysis.top1.index
    return loaded.class_index(target)
