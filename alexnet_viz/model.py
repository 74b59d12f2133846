"""A model ready to analyse: module on a device, its preprocessing, class names and where its weights came from."""

from __future__ import annotations

import json
import operator
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from .activations import model_lock
from .architectures import ARCHITECTURES, build_model, conv_layer_names, visible_layer_names
from .errors import UserError
from .targets import TargetError, parse_class_index, shorten
from .weights import (
    IMAGENET,
    Untrained,
    WeightsError,
    WeightsFile,
    WeightsSource,
    canonical_keys,
    check_finite,
    imagenet_state_dict,
    load_state_dict_file,
    match_state_dict,
    parse_source,
)

__all__ = [
    "DeviceError",
    "LoadedModel",
    "TargetError",
    "WeightsInfo",
    "available_devices",
    "load_model",
    "no_imagenet_weights",
    "resolve_device",
]


class DeviceError(UserError):
    """A device that is not available here; the message says why."""


def available_devices() -> list[str]:
    """Devices this machine can run on, best first (cuda, mps, cpu)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; an unavailable device is a DeviceError, never a silent fallback."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"{name!r} is not a device name; use auto, cpu, cuda or mps.") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was asked for, but this machine has no usable NVIDIA GPU (torch sees none).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"There is no GPU {name}: this machine has {torch.cuda.device_count()}.")
    elif device.type == "mps":
        if name not in available_devices():
            raise DeviceError("MPS was asked for, but it is not available (it needs Apple silicon and macOS).")
    elif device.type != "cpu":
        raise DeviceError(f"{name!r} is not supported; use auto, cpu, cuda or mps.")
    return device


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from, in words for the banner."""

    source: str  # "imagenet" | "file" | "none": what was loaded (an unavailable ImageNet checkpoint gives "none")
    description: str  # e.g. "ImageNet-1K, torchvision, acc@1 56.5%"
    trained: bool
    warning: str | None = None  # set whenever predictions are meaningless; shown loudly


MEANINGLESS = "untrained weights: predictions are meaningless"
UNTRAINED_AS_ASKED = "untrained weights, as asked (--weights none): predictions are meaningless"


def no_imagenet_weights(arch: str) -> str:
    """Why an architecture other than torchvision's has no ImageNet weights, and what to do instead."""
    return (f"no ImageNet weights exist for the {arch} architecture; train one with `alexnet-viz train` and "
            "pass --weights FILE")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """An eval-mode model with frozen parameters, shared read-only by every request."""

    arch: str
    module: nn.Sequential
    device: torch.device
    transform: Callable[[Image.Image], torch.Tensor]  # RGB PIL -> (3, S, S) normalised
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categories: tuple[str, ...]
    weights: WeightsInfo
    input_size: int

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def lock(self) -> threading.Lock:
        """This model's own lock: held by whatever runs or hooks it (``analyze``, ``attribute``)."""
        return model_lock(self.module)

    @property
    def layer_names(self) -> list[str]:
        return visible_layer_names(self.module)

    @property
    def conv_layers(self) -> list[str]:
        return conv_layer_names(self.module)

    @property
    def conv1(self) -> nn.Conv2d:
        """The first convolution, whose filters the Filters panel shows."""
        return cast(nn.Conv2d, self.module.get_submodule("conv1"))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL -> (1, 3, S, S) on the model's device, exactly as the weights' transforms do it."""
        return self.transform(image).unsqueeze(0).to(self.device)

    def class_index(self, target: int | str) -> int:
        """A class index from an index (an int or ASCII digits) or a class name (case-insensitive, exact match
        first, then a unique part). Anything else is a TargetError that echoes at most 40 characters."""
        if not isinstance(target, str):
            try:
                if isinstance(target, bool):
                    raise TypeError
                number = operator.index(target)  # int, numpy and torch integers; not floats
            except TypeError:
                raise TargetError(f"A target is a class index or a class name, not {type(target).__name__}.") from None
            if not 0 <= number < self.num_classes:
                raise TargetError(f"Class index {number} is out of range; this model has {self.num_classes} classes.")
            return number
        index = parse_class_index(target, self.num_classes)
        if index is not None:
            return index
        wanted = target.strip().lower()
        if not wanted:
            raise TargetError("The target is empty; give a class index or a class name.")
        names = [c.lower() for c in self.categories]
        if wanted in names:
            return names.index(wanted)
        partial = [i for i, n in enumerate(names) if len(wanted) <= len(n) and wanted in n]
        if len(partial) == 1:
            return partial[0]
        raise TargetError(f"No single class is called {shorten(target.strip())}; "
                          f"pick one from the list of {self.num_classes}.")


def _categories(num_classes: int, labels: Sequence[str] | str | os.PathLike[str] | None) -> tuple[str, ...]:
    if labels is not None:
        if isinstance(labels, str | os.PathLike):
            path = Path(labels)
            try:
                names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise WeightsError(f"Cannot read the labels file {path} ({e}).") from e
        else:
            names = [str(n) for n in labels]
        if len(names) != num_classes:
            raise WeightsError(f"The labels list has {len(names)} names but the model has {num_classes} classes.")
        return tuple(names)
    if num_classes == len(IMAGENET.meta["categories"]):
        return tuple(IMAGENET.meta["categories"])  # ImageNet's class space: names from torchvision's metadata
    return tuple(f"class {i}" for i in range(num_classes))


def _imagenet_description() -> str:
    acc = IMAGENET.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    return f"ImageNet-1K, torchvision, acc@1 {acc:.1f}%"


def read_card(weights_path: Path) -> dict[str, Any] | None:
    """The JSON "model card" that `alexnet-viz train` writes beside a checkpoint (``model.json``), if any."""
    card = weights_path.with_suffix(".json")
    if not card.is_file():
        return None
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"The model card {card.name} beside the weights is not readable JSON ({e}).") from e
    if not isinstance(data, dict):
        raise WeightsError(f"The model card {card.name} is not a JSON object.")
    return data


def _card_description(card: Mapping[str, Any]) -> str:
    acc = card.get("metrics", {}).get("test_accuracy")
    accuracy = f", test acc {acc:.1%}" if isinstance(acc, float) else ""
    epochs = card.get("epochs")
    init = card.get("init")
    start = "" if init in (None, "none") else f" (fine-tuned from {init}" + (
        f", {len(card['frozen'])} layers fixed)" if card.get("frozen") else ")")
    return (f"trained here: {card.get('dataset', 'a dataset')}{start}, {epochs} epoch{'s' * (epochs != 1)}"
            f"{accuracy}")


def load_model(
    arch: str | None = None,
    weights: str | os.PathLike[str] | WeightsSource = "imagenet",
    device: str | torch.device = "auto",
    *,
    num_classes: int | None = None,
    labels: Sequence[str] | str | os.PathLike[str] | None = None,
    fallback: bool = False,
    download: bool = True,
) -> LoadedModel:
    """Build ``arch``, put ``weights`` into it and move it to ``device``.

    ``weights`` is a source (:class:`~alexnet_viz.weights.ImageNet`, ``Untrained``, ``WeightsFile``) or its
    words: ``"imagenet"``, ``"none"`` or a file path. ``arch=None`` means the architecture named by a
    checkpoint's model card (``model.json`` beside it, written by `alexnet-viz train`), else ``torchvision``.
    A card also gives class names, input size and normalisation. With ``fallback=True``, ImageNet weights
    that are unavailable (not cached and offline, or none exist for ``arch``) give the seeded untrained model
    with a loud ``weights.warning`` instead of a WeightsError.
    """
    source = parse_source(weights)
    card = read_card(source.path) if isinstance(source, WeightsFile) else None
    arch = _choose_arch(arch, card, source)
    spec = ARCHITECTURES[arch]
    target_device = resolve_device(device)
    state, info = _resolve_weights(source, arch, num_classes=num_classes, card=card, fallback=fallback,
                                   download=download)
    if num_classes is None:
        head = state.get("fc8.bias") if state is not None else None
        num_classes = int(head.shape[0]) if head is not None else 1000
    seed = source.seed if isinstance(source, Untrained) else 0
    module = build_model(arch, num_classes=num_classes, seed=seed)
    if state is not None:
        module.load_state_dict(match_state_dict(state, module), strict=True)
    module.requires_grad_(False)  # attribution needs gradients w.r.t. the input only; backward stops there
    module = module.to(target_device).eval()
    if target_device.type == "cpu":
        # oneDNN convolves a single image ~25% faster with channels-last (NHWC) filters, whatever the input's
        # layout (conv layers 4.3 -> 3.3 ms, a whole forward 14.5 -> 13.1 ms on 2 cores); outputs agree to 3e-8.
        module = module.to(memory_format=torch.channels_last)

    size = int(card.get("input_size", spec.input_size)) if card else spec.input_size
    if card and "mean" in card and "std" in card:  # the normalisation the network was trained with
        transform = IMAGENET.transforms(crop_size=size, resize_size=size, mean=card["mean"], std=card["std"])
    else:  # ImageNet's preprocessing, from torchvision's weights enum (256 -> 224 scaled to the input size)
        transform = IMAGENET.transforms(crop_size=size, resize_size=max(size, round(size * 256 / 224)))
    if labels is None and card and isinstance(card.get("classes"), list):
        labels = [str(c) for c in card["classes"]]
    return LoadedModel(
        arch=arch,
        module=module,
        device=target_device,
        transform=transform,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        categories=_categories(num_classes, labels),
        weights=info,
        input_size=size,
    )


def _choose_arch(arch: str | None, card: Mapping[str, Any] | None, source: WeightsSource) -> str:
    """The architecture asked for, else the one the checkpoint's card names, else torchvision's."""
    if card is not None:
        name = source.path.name if isinstance(source, WeightsFile) else "This checkpoint"
        if arch is not None and card.get("arch") != arch:
            raise WeightsError(f"{name} was trained as {card.get('arch')!r}, not {arch!r}; drop --arch or pass "
                               f"--arch {card.get('arch')}.")
        arch = str(card.get("arch"))
    arch = arch or "torchvision"
    if arch not in ARCHITECTURES:
        raise WeightsError(f"Unknown architecture {shorten(arch)}; choose one of {', '.join(ARCHITECTURES)}.")
    return arch


def _resolve_weights(
    source: WeightsSource, arch: str, *, num_classes: int | None, card: Mapping[str, Any] | None, fallback: bool,
    download: bool,
) -> tuple[dict[str, torch.Tensor] | None, WeightsInfo]:
    """The state dict to load (None: keep the seeded initialisation) and the banner's words for it."""
    if isinstance(source, Untrained):
        return None, WeightsInfo("none", f"seeded untrained weights (seed {source.seed})", trained=False,
                                 warning=UNTRAINED_AS_ASKED)
    if isinstance(source, WeightsFile):
        state = canonical_keys(load_state_dict_file(source.path))
        check_finite(state, source.path.name)
        description = _card_description(card) if card else f"weights from {source.path.name}"
        return state, WeightsInfo("file", description, trained=True)
    if not ARCHITECTURES[arch].has_imagenet_weights:
        if not fallback:
            reason = no_imagenet_weights(arch)
            raise WeightsError(f"{reason[0].upper()}{reason[1:]}.")
        return None, WeightsInfo("none", "seeded untrained weights (seed 0)", trained=False,
                                 warning=f"{MEANINGLESS} - {no_imagenet_weights(arch)}")
    if num_classes not in (None, 1000):
        raise WeightsError("The ImageNet weights have 1000 classes; drop --num-classes or use --weights none.")
    try:
        return imagenet_state_dict(download=download), WeightsInfo("imagenet", _imagenet_description(), trained=True)
    except WeightsError as e:
        if not fallback:
            raise
        return None, WeightsInfo("none", "seeded untrained weights (ImageNet weights unavailable)", trained=False,
                                 warning=f"{MEANINGLESS} - {e}")
