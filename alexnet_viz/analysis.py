"""One forward pass per image: predictions and every named layer's output, as a frozen result.

``analyze`` is the step every face (UI, CLI, notebook) calls; ``explain`` runs a Captum method on the
very input tensor that ``analyze`` used, so maps and activations always describe the same pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .activations import capture
from .attribution import MODEL_LOCK
from .images import ImageSource, load_image

if TYPE_CHECKING:
    from .attribution import Attribution
    from .model import LoadedModel

__all__ = ["Analysis", "Prediction", "analyze", "explain", "input_view"]


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything one forward pass computed for one image. Tensors live on the CPU, batch dim dropped."""

    image: Image.Image  # the RGB image as given (after intake)
    view: Image.Image  # the resized, centre-cropped image the model saw, (S, S) - overlays go on this
    input: torch.Tensor  # (1, 3, S, S) normalised model input, CPU
    logits: torch.Tensor  # (num_classes,)
    probabilities: torch.Tensor  # (num_classes,) softmax of logits
    top_k: tuple[Prediction, ...]
    activations: Mapping[str, torch.Tensor]  # layer -> (C, H, W) for conv/pool, (F,) for FC layers
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds: decode, preprocess, forward
    arch: str = ""
    device: str = "cpu"

    @property
    def top1(self) -> Prediction:
        return self.top_k[0]

    def sparsity(self, layer: str) -> float:
        """Share of exactly-zero values in a layer's output (ReLU sparsity)."""
        act = self.activations[layer]
        return float((act == 0).sum()) / max(act.numel(), 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready predictions, shapes and timings."""
        return {
            "arch": self.arch,
            "device": self.device,
            "top_k": [{"index": p.index, "label": p.label, "probability": p.probability} for p in self.top_k],
            "layers": {name: list(a.shape) for name, a in self.activations.items()},
            "timings_ms": {k: round(v * 1000, 2) for k, v in self.timings.items()},
        }


def input_view(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Image.Image:
    """Undo the normalisation of a (1, 3, S, S) input: the picture the network actually saw."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    rgb = (x[0].detach().float().cpu() * s + m).clamp(0, 1)  # (3, S, S)
    return Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def analyze(loaded: LoadedModel, image: ImageSource, *, top_k: int = 5) -> Analysis:
    """Load ``image``, run ONE forward pass with every visible layer hooked, and return the result."""
    t0 = time.perf_counter()
    pil = image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)
    t1 = time.perf_counter()
    x = loaded.preprocess(pil)  # (1, 3, S, S); made outside inference mode so attribution can use it
    t2 = time.perf_counter()
    # The model is shared by every visitor: capture's hooks (and Captum's) must not see another
    # request's forward pass, so forwards and attributions take turns.
    with MODEL_LOCK, torch.inference_mode(), capture(loaded.module, loaded.layer_names) as acts:
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
        image=pil,
        view=input_view(x_cpu, loaded.mean, loaded.std),
        input=x_cpu,
        logits=logits,
        probabilities=probs,
        top_k=preds,
        activations=MappingProxyType({name: a[0] for name, a in acts.items()}),
        timings=MappingProxyType({"decode": t1 - t0, "preprocess": t2 - t1, "forward": t3 - t2}),
        arch=loaded.arch,
        device=str(loaded.device),
    )


def explain(
    loaded: LoadedModel,
    subject: Analysis | ImageSource,
    method: str,
    *,
    target: int | str | None = None,
    layer: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    **options: float,
) -> Attribution:
    """Run attribution ``method`` for ``target`` (index, class name, or None for the top-1 class).

    ``subject`` is an Analysis (its input tensor is reused) or anything ``load_image`` accepts.
    """
    from .attribution import attribute

    analysis = subject if isinstance(subject, Analysis) else analyze(loaded, subject)
    index = analysis.top1.index if target is None or target == "" else loaded.class_index(target)
    x = analysis.input.to(loaded.device)
    return attribute(loaded.module, x, method, target=index, progress=progress, layer=layer or None, **options)
