"""Occlusion by hand: hide squares of the network's view and watch the top-5 change, one forward pass a click.

    patches = Patches().add(Patch(112, 80, 32))      # centre (x, y) and side, in pixels of the 224 px view
    result = occlude(loaded, analysis, patches)       # the top-5 of the occluded image
    patches = patches.undo()                          # immutable: every edit returns a new list

Coordinates are those of the network's input view (the centre crop after resizing, ``analysis.view``). A
patch covers columns ``x - size // 2`` to ``x - size // 2 + size - 1`` (and the same rows around ``y``), cut
to the image. Its fill is the dataset mean (zero of the normalised input, as Captum's occlusion baseline) or
the same pixels of a blurred copy (the blur of the insertion curve). Later patches are drawn over earlier
ones. The state is a plain tuple, so a page can keep it in ``gr.State`` and nothing lives on globals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from .analysis import Prediction, input_view
from .attribution import OptionError, OptionSpec
from .trust import blurred, model_lock

if TYPE_CHECKING:
    from PIL import Image

    from .analysis import Analysis
    from .model import LoadedModel

__all__ = ["FILLS", "PATCH_SIZE", "OcclusionResult", "Patch", "Patches", "occlude", "occluded_input"]

FILLS = {"mean": "Mean colour", "blur": "Blurred"}
PATCH_SIZE = OptionSpec("size", 32, 4, 112, 1, "Patch (px)",
                        "Side of the square a click hides, in pixels of the 224 px view the network sees.")


@dataclass(frozen=True)
class Patch:
    """A square: centre ``(x, y)`` and side ``size`` in pixels of the network's view; ``fill`` from FILLS."""

    x: int
    y: int
    size: int = int(PATCH_SIZE.default)
    fill: str = "mean"

    def bounds(self, side: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right), end-exclusive, cut to a ``side`` x ``side`` image."""
        half = self.size // 2
        top, left = self.y - half, self.x - half
        return max(top, 0), min(top + self.size, side), max(left, 0), min(left + self.size, side)

    def check(self, side: int) -> Patch:
        """This patch, or an OptionError saying what is wrong for a ``side`` px view."""
        for name, value in (("x", self.x), ("y", self.y), ("size", self.size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionError(f"The patch's {name} must be a whole number of pixels, not {value!r}.")
        if not (0 <= self.x < side and 0 <= self.y < side):
            raise OptionError(f"The patch centre ({self.x}, {self.y}) is outside the {side}x{side} view.")
        if not PATCH_SIZE.minimum <= self.size <= min(PATCH_SIZE.maximum, side):
            raise OptionError(f"The patch size must be between {PATCH_SIZE.minimum} and "
                              f"{min(int(PATCH_SIZE.maximum), side)} pixels, not {self.size}.")
        if self.fill not in FILLS:
            raise OptionError(f"The fill must be one of {', '.join(FILLS)}, not {self.fill!r}.")
        return self


@dataclass(frozen=True)
class Patches:
    """An immutable list of patches in the order they were placed; every edit returns a new list."""

    items: tuple[Patch, ...] = ()

    def add(self, patch: Patch) -> Patches:
        return Patches((*self.items, patch))

    def undo(self) -> Patches:
        return Patches(self.items[:-1])

    def clear(self) -> Patches:
        return Patches()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Patch]:
        return iter(self.items)


def occluded_input(x: torch.Tensor, patches: Patches | tuple[Patch, ...]) -> torch.Tensor:
    """``x`` (1, 3, S, S) normalised, with every patch filled in order; ``x`` itself is not changed."""
    side = x.shape[-1]
    items = tuple(patches)
    for p in items:
        p.check(side)
    out = x.clone()
    blur = blurred(x) if any(p.fill == "blur" for p in items) else None
    for p in items:
        top, bottom, left, right = p.bounds(side)
        if p.fill == "blur":
            assert blur is not None  # noqa: S101 - made above whenever a patch blurs
            out[..., top:bottom, left:right] = blur[..., top:bottom, left:right]
        else:
            out[..., top:bottom, left:right] = 0.0  # the dataset mean
    return out


@dataclass(frozen=True, eq=False)
class OcclusionResult:
    """The network's answer for the occluded view."""

    patches: Patches
    input: torch.Tensor  # (1, 3, S, S) normalised, CPU
    logits: torch.Tensor  # (classes,) CPU
    probabilities: torch.Tensor  # (classes,)
    top_k: tuple[Prediction, ...]
    logit_change: torch.Tensor  # (classes,) occluded - original logits
    mean: tuple[float, ...]  # the normalisation, to turn ``input`` back into a picture
    std: tuple[float, ...]

    @cached_property
    def view(self) -> Image.Image:
        """The occluded picture the network saw (made on first use: a click's answer needs only the top-k)."""
        return input_view(self.input, self.mean, self.std)

    def label(self) -> dict[str, float]:
        """``{class name: probability}`` for the top-k, the shape ``/predict`` answers with."""
        return {p.label: p.probability for p in self.top_k}


def occlude(loaded: LoadedModel, analysis: Analysis, patches: Patches, *, top_k: int = 5) -> OcclusionResult:
    """The top-k of ``analysis``'s view with ``patches`` hidden: one forward pass (none for no patches, which
    gives back the analysis's own scores exactly)."""
    if not patches.items:
        x, logits, probs = analysis.input, analysis.logits, analysis.probabilities
    else:
        x = occluded_input(analysis.input, patches)
        with model_lock(loaded), torch.inference_mode():
            logits = loaded.module(x.to(loaded.device))[0].float().cpu()  # (classes,)
        probs = torch.softmax(logits, dim=0)
    values, indices = probs.topk(max(1, min(top_k, loaded.num_classes)))
    preds = tuple(Prediction(int(i), loaded.categories[int(i)], float(v)) for v, i in zip(values, indices,
                                                                                           strict=True))
    return OcclusionResult(patches, x, logits, probs, preds, logits - analysis.logits, loaded.mean, loaded.std)
