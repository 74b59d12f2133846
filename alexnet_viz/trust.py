"""Can a map be trusted? Deletion/insertion curves (Petsiuk et al. 2018) and the cascading-randomisation
sanity check (Adebayo et al. 2018), for any attribution method, beside baselines that know nothing::

    report = faithfulness(loaded, analysis, ["saliency", "integrated_gradients"])
    report.auc("saliency", "deletion")         # lower is better: the score falls fast
    check = sanity_check(loaded, analysis, "guided_backprop", unrelated=other_analysis)
    check.fails                                 # True: its map survives a random classifier

Curves. The pixels of the network's input are ranked by the map (highest first; equal values in a fixed
random order, so a flat region is not removed row by row). Each step changes ``8 x side`` pixels (RISE's
224 x 8), so a 224 px input gives 29 images per curve, run in batches. *Deletion* sets the ranked pixels to
the dataset mean (zero of the normalised input); *insertion* starts from a blurred copy and puts them back.
The score is the target's raw logit scaled so that the original image is 1 and the fully changed one 0
(the mean image for deletion, the blurred one for insertion): with untrained weights the softmax is ~1/1000
everywhere and says nothing. The softmax probability is added when the weights are trained. AUC is the
trapezoid area over the fraction of pixels changed. A method is only worth its AUC beside
:data:`BASELINES`, maps made without the network: random (mean of 3), a centred Gaussian blob and Sobel
edges.

Sanity check. The network's weighted layers are re-initialised from the top (fc8) down to conv1, one more
at each stage, and the method's map of the same target is compared with the original's: Spearman rank
correlation of the absolute maps and SSIM of the absolute maps scaled to [0, 1]. The "unrelated" floor is
how alike the same method's maps of two different images are. The randomised network is a *view*: a new
``nn.Sequential`` over the shared model's own modules, with fresh modules in place of the randomised
layers. The shared model is never written to, so other visitors never see random weights, nothing needs
restoring, and memory is the same as randomising in place (the fresh weights; the originals stay where
they are, not copied).
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .attribution import METHODS, OptionError, attribute

if TYPE_CHECKING:
    from .analysis import Analysis
    from .model import LoadedModel

__all__ = [
    "BASELINES",
    "CURVES",
    "SIMILARITIES",
    "BaselineSpec",
    "CurveResult",
    "CurveSpec",
    "FaithfulnessReport",
    "SanityResult",
    "SanityStage",
    "SimilaritySpec",
    "blurred",
    "cascade",
    "curve_plot",
    "faithfulness",
    "model_lock",
    "perturbation_curves",
    "randomization_stages",
    "sanity_check",
    "sanity_plot",
    "sanity_strip",
    "spearman",
    "ssim",
    "summarize_sanity",
]

Array = np.ndarray
Progress = Callable[[float, str], None]


def model_lock(loaded: LoadedModel) -> Any:
    """The lock that guards ``loaded``'s module (held by whatever runs or hooks it)."""
    return loaded.lock


# ---- images the curves start from or end at ----

def _gaussian_kernel(size: int, sigma: float, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(r**2) / (2 * sigma**2))
    return (k / k.sum()).to(dtype)  # (size,)


def blurred(x: torch.Tensor, *, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's blurred copy of a (N, 3, H, W) normalised input: a separable Gaussian (11 taps, sigma 5) per
    channel, mirrored at the border so the edges do not fade to the mean."""
    k = _gaussian_kernel(size, sigma, dtype=x.dtype).to(x.device)
    c = x.shape[1]
    pad = size // 2
    y = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    y = F.pad(y, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(y, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


# ---- baselines: maps made without the network ----

@dataclass(frozen=True)
class BaselineSpec:
    """A map that does not look at the network. ``runner(rgb, seed)`` gets the network's view as (3, H, W)
    floats in [0, 1] and returns an (H, W) float map, higher = "more important"."""

    name: str
    title: str
    caption: str
    runner: Callable[[torch.Tensor, int], torch.Tensor]
    repeats: int = 1  # maps averaged (random: several seeds, so one lucky draw does not decide)


def _random_map(rgb: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rgb.shape[1:], generator=g)


def _centre_map(rgb: torch.Tensor, seed: int) -> torch.Tensor:
    h, w = rgb.shape[1:]
    ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    sigma = min(h, w) / 4
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


def _edge_map(rgb: torch.Tensor, seed: int) -> torch.Tensor:
    gray = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None, None]  # (1, 1, H, W), ITU-R 601 luma
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sx, sx.T])[:, None]  # (2, 1, 3, 3)
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)  # (1, 2, H, W)
    return g[0].pow(2).sum(0).sqrt()


BASELINES: dict[str, BaselineSpec] = {
    spec.name: spec
    for spec in (
        BaselineSpec("random", "Random (mean of 3)",
                     "Pixels in a random order, averaged over three orders: the score any map must beat.",
                     _random_map, repeats=3),
        BaselineSpec("centre", "Centred Gaussian blob",
                     "The middle of the picture first: photographers centre the object, so this knows more "
                     "than it seems and can beat a real map on deletion.",
                     _centre_map),
        BaselineSpec("edges", "Edges (Sobel)",
                     "Strong brightness edges first, from the image alone: a map that only finds edges is "
                     "no better than this.",
                     _edge_map),
    )
}


# ---- the two curves ----

@dataclass(frozen=True)
class CurveSpec:
    """One perturbation curve. ``start``/``end`` name the images at 0 % and 100 % of pixels changed."""

    name: str
    title: str
    caption: str
    better: str  # "lower" or "higher" AUC
    insertion: bool  # ranked pixels go from the blurred copy back to the original (else: to the mean)

    def images(self, x: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor,
               blur: torch.Tensor) -> torch.Tensor:
        """The curve's (K, 3, H, W) inputs: ``counts[k]`` top-ranked pixels changed in image k."""
        changed = ranks.view(1, 1, *ranks.shape) < counts.view(-1, 1, 1, 1)  # (K, 1, H, W)
        if self.insertion:
            return torch.where(changed, x, blur)
        return torch.where(changed, torch.zeros((), dtype=x.dtype, device=x.device), x)


CURVES: dict[str, CurveSpec] = {
    spec.name: spec
    for spec in (
        CurveSpec("deletion", "Deletion",
                  "The most important pixels are replaced by the mean colour first: a faithful map makes the "
                  "class score collapse early (lower area is better).",
                  better="lower", insertion=False),
        CurveSpec("insertion", "Insertion",
                  "The most important pixels are put back into a blurred copy first: a faithful map makes the "
                  "class score recover early (higher area is better).",
                  better="higher", insertion=True),
    )
}

SCORES = {"logit": "target logit, scaled: original 1, fully changed 0",
          "probability": "softmax probability of the target (trained weights only)"}


@dataclass(frozen=True, eq=False)
class CurveResult:
    """The curves of one map (a method's, or a baseline's averaged over its repeats)."""

    name: str
    title: str
    kind: str  # "method" | "baseline"
    fractions: Array  # (K,) share of pixels changed, 0 ... 1
    curves: Mapping[str, Mapping[str, Array]]  # curve name -> score name -> (K,) values
    seconds: float

    def auc(self, curve: str, score: str = "logit") -> float:
        return _trapezoid(self.curves[curve][score], self.fractions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "kind": self.kind, "seconds": round(self.seconds, 4),
            "auc": {c: {s: round(self.auc(c, s), 6) for s in scores} for c, scores in self.curves.items()},
            "fractions": [round(float(f), 6) for f in self.fractions],
            "curves": {c: {s: [round(float(v), 6) for v in values] for s, values in scores.items()}
                       for c, scores in self.curves.items()},
        }


def _trapezoid(y: Array, x: Array) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def pixel_ranks(heatmap: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """(H, W) int64: 0 for the pixel with the highest value, ties in a fixed random order."""
    h = heatmap.detach().float().cpu().reshape(-1).numpy()
    tiebreak = np.random.default_rng(seed).permutation(h.size)
    order = np.lexsort((tiebreak, -np.nan_to_num(h, nan=-np.inf)))  # primary key last: value, descending
    ranks = np.empty(h.size, dtype=np.int64)
    ranks[order] = np.arange(h.size)
    return torch.from_numpy(ranks).view(heatmap.shape)


def step_counts(height: int, width: int, *, pixels_per_step: int | None = None) -> torch.Tensor:
    """Pixels changed at each point of a curve: 0, s, 2s, ..., all (s = 8 x the side, RISE's 224 x 8)."""
    n = height * width
    s = pixels_per_step or 8 * min(height, width)
    steps = math.ceil(n / s)
    return torch.tensor([min(k * s, n) for k in range(steps + 1)], dtype=torch.int64)


def _forward(loaded: LoadedModel, batch: torch.Tensor, target: int, *, batch_size: int) -> torch.Tensor:
    """(K,) logits and (K,) probabilities of ``target`` for a (K, 3, H, W) batch, in chunks, under the lock."""
    out = []
    module = loaded.module
    channels_last = batch.device.type == "cpu"
    for chunk in batch.split(batch_size):
        if channels_last:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        with model_lock(loaded), torch.inference_mode():
            logits = module(chunk).float()  # (k, classes)
        out.append(torch.stack([logits[:, target], torch.softmax(logits, dim=1)[:, target]], dim=1).cpu())
    return torch.cat(out)  # (K, 2)


def _scaled(values: Array, *, insertion: bool) -> Array:
    """Scale a logit curve so the original image is 1 and the fully changed one 0."""
    original, changed = (values[-1], values[0]) if insertion else (values[0], values[-1])
    span = original - changed
    if not np.isfinite(span) or abs(span) <= 1e-6 * max(abs(original), abs(changed), 1e-12):
        raise OptionError("The target's score is the same for the original and the fully changed image, so the "
                          "curve cannot be scaled; pick another target class.")
    return (values - changed) / span


def perturbation_curves(
    loaded: LoadedModel,
    x: torch.Tensor,
    heatmap: torch.Tensor,
    target: int,
    *,
    blur: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[Array, dict[str, dict[str, Array]]]:
    """Deletion and insertion curves of one (H, W) map for ``x`` (1, 3, H, W, normalised).

    Returns the fractions (K,) and ``{curve: {"logit": scaled (K,), "probability": (K,)}}``.
    """
    x = x.to(loaded.device)
    blur = blurred(x) if blur is None else blur.to(loaded.device)
    height, width = x.shape[2:]
    if tuple(heatmap.shape) != (height, width):
        raise OptionError(f"The map is {tuple(heatmap.shape)} but the input is {(height, width)}.")
    ranks = pixel_ranks(heatmap, seed=seed).to(loaded.device)
    counts = step_counts(height, width).to(loaded.device)
    batches = [CURVES[name].images(x, ranks, counts, blur) for name in CURVES]
    scores = _forward(loaded, torch.cat(batches), target, batch_size=batch_size).double().numpy()  # (2K, 2)
    k = len(counts)
    result: dict[str, dict[str, Array]] = {}
    for i, (name, spec) in enumerate(CURVES.items()):
        part = scores[i * k:(i + 1) * k]
        result[name] = {"logit": _scaled(part[:, 0], insertion=spec.insertion), "probability": part[:, 1]}
    return counts.cpu().double().numpy() / (height * width), result


@dataclass(frozen=True, eq=False)
class FaithfulnessReport:
    """Deletion/insertion curves of every method asked for and of every baseline, for one image and target."""

    target: int
    label: str
    trained: bool  # the probability score is shown only then
    results: Mapping[str, CurveResult]  # methods first, then baselines

    @property
    def scores(self) -> list[str]:
        return ["logit", "probability"] if self.trained else ["logit"]

    def auc(self, name: str, curve: str, score: str = "logit") -> float:
        return self.results[name].auc(curve, score)

    def ranking(self, curve: str, score: str = "logit") -> list[tuple[str, float]]:
        """(name, AUC) best first: ascending for deletion, descending for insertion."""
        pairs = [(name, r.auc(curve, score)) for name, r in self.results.items()]
        return sorted(pairs, key=lambda p: p[1], reverse=CURVES[curve].better == "higher")

    def rows(self, score: str = "logit") -> list[tuple[str, str, float, float]]:
        """(title, kind, deletion AUC, insertion AUC) per map, best deletion first: the ranking table."""
        return [(r.title, r.kind, r.auc("deletion", score), r.auc("insertion", score))
                for r in (self.results[name] for name, _ in self.ranking("deletion", score))]

    def table(self, score: str = "logit") -> str:
        """The ranking table as plain text."""
        lines = [f"{'map':<28} {'deletion':>9} {'insertion':>9}   ({SCORES[score]})"]
        for title, kind, deletion, insertion in self.rows(score):
            mark = "" if kind == "method" else "  [baseline]"
            lines.append(f"{title:<28} {deletion:9.3f} {insertion:9.3f}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = {name: r.to_dict() for name, r in self.results.items()}
        if not self.trained:  # the softmax of an untrained network is ~1/classes everywhere: not shown
            for r in out.values():
                for scores in (*r["auc"].values(), *r["curves"].values()):
                    scores.pop("probability", None)
        return {"target": self.target, "label": self.label, "scores": self.scores, "maps": out}


def faithfulness(
    loaded: LoadedModel,
    analysis: Analysis,
    methods: Sequence[str],
    *,
    target: int | str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
    batch_size: int = 32,
    progress: Progress | None = None,
    detailed: bool = False,
) -> FaithfulnessReport:
    """Deletion and insertion curves for ``methods`` (with their ``options[method]``) and ``baselines``.
    ``progress(fraction, message)`` is called after each map's curves; with ``detailed`` also by each method's
    own batches, within its share (so a callback that raises stops a slow method between two batches)."""
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS] + [b for b in baselines if b not in BASELINES]
    if unknown:
        raise OptionError(f"Unknown method or baseline {unknown[0]!r}; choose from "
                          f"{', '.join([*METHODS, *BASELINES])}.")
    total, done = len(methods) + sum(BASELINES[b].repeats for b in baselines), 0
    index = analysis.top1.index if target is None or target == "" else loaded.class_index(target)
    x = analysis.input.to(loaded.device)
    blur = blurred(x)
    rgb = torch.from_numpy(np.asarray(analysis.view, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)
    results: dict[str, CurveResult] = {}

    def run(name: str, title: str, kind: str, maps: Sequence[torch.Tensor], t0: float) -> None:
        nonlocal done
        runs = []
        for i, m in enumerate(maps):
            runs.append(perturbation_curves(loaded, x, m, index, blur=blur, seed=i, batch_size=batch_size))
            done += 1
            if progress is not None:
                progress(done / total, f"Deletion and insertion: {title} ({done} of {total})")
        curves = {c: {s: np.mean([r[1][c][s] for r in runs], axis=0) for s in SCORES} for c in CURVES}
        results[name] = CurveResult(name, title, kind, runs[0][0], MappingProxyType(curves),
                                    time.perf_counter() - t0)

    for method in methods:
        t0 = time.perf_counter()
        attr = attribute(loaded.module, x, method, target=index,
                         progress=_within(progress, done, total) if detailed else None,
                         **dict((options or {}).get(method, {})))
        run(method, METHODS[method].title, "method", [attr.heatmap], t0)
    for name in baselines:
        spec = BASELINES[name]
        t0 = time.perf_counter()
        run(name, spec.title, "baseline", [spec.runner(rgb, seed) for seed in range(spec.repeats)], t0)
    return FaithfulnessReport(index, loaded.categories[index], loaded.weights.trained, MappingProxyType(results))


def _within(progress: Progress | None, done: int, total: int) -> Progress | None:
    """``progress`` for the (done+1)-th of ``total`` steps: its fractions 0..1 map onto that step's share."""
    if progress is None:
        return None
    outer = progress

    def report(fraction: float, message: str) -> None:
        outer((done + fraction) / total, message)

    return report


# ---- similarity of two maps ----

def _average_ranks(a: Array) -> Array:
    """Ranks 0..n-1 of a flat array, tied values sharing their mean rank (as scipy.stats.rankdata - 1)."""
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])  # first index of each run of ties
    ends = np.r_[starts[1:], a.size]
    mean_rank = (starts + ends - 1) / 2.0
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks. NaN if either is constant."""
    ra = _average_ranks(np.asarray(a, dtype=np.float64).ravel())
    rb = _average_ranks(np.asarray(b, dtype=np.float64).ravel())
    if ra.size != rb.size:
        raise ValueError(f"The maps differ in size: {ra.size} and {rb.size} values.")
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else math.nan


def ssim(a: Any, b: Any, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity of two (H, W) images (Wang et al. 2004): Gaussian window 11, sigma 1.5,
    K1 = 0.01, K2 = 0.03, population statistics, over the windows that fit inside the image."""
    x = torch.as_tensor(np.asarray(a, dtype=np.float64))
    y = torch.as_tensor(np.asarray(b, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"SSIM needs two (H, W) images of one size, not {tuple(x.shape)} and {tuple(y.shape)}.")
    if min(x.shape) < window:
        raise ValueError(f"SSIM's {window}-pixel window does not fit a {tuple(x.shape)} image.")
    k = _gaussian_kernel(window, sigma)  # float32: convolutions in float64 are 3x slower on the CPU
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # The five local moments of the centred images (no cancellation in float32), filtered in one batch by
    # the separable window, "valid": only windows inside the image.
    mean_x, mean_y = x.mean(), y.mean()
    xc, yc = x - mean_x, y - mean_y
    stack = torch.stack([xc, yc, xc * xc, yc * yc, xc * yc])[:, None].float()  # (5, 1, H, W)
    stack = F.conv2d(F.conv2d(stack, k.view(1, 1, 1, window)), k.view(1, 1, window, 1))[:, 0].double()
    mcx, mcy, xx, yy, xy = stack
    vx, vy, cxy = xx - mcx * mcx, yy - mcy * mcy, xy - mcx * mcy
    mx, my = mcx + mean_x, mcy + mean_y
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def _unit(m: torch.Tensor) -> Array:
    """|map| scaled to [0, 1] by its maximum (all zeros stays all zeros)."""
    a = m.detach().abs().double().cpu().numpy()
    top = a.max() if a.size else 0.0
    return a / top if top > 0 else a


@dataclass(frozen=True)
class SimilaritySpec:
    """How alike a randomised stage's map is to the original's: 1 = the same; ``runner(a, b)`` on (H, W)."""

    name: str
    title: str
    caption: str
    runner: Callable[[torch.Tensor, torch.Tensor], float]


SIMILARITIES: dict[str, SimilaritySpec] = {
    spec.name: spec
    for spec in (
        SimilaritySpec("spearman", "Rank correlation (Spearman)",
                       "Do the two maps put the pixels in the same order of importance? Absolute values; "
                       "1 is the same order, 0 none in common.",
                       lambda a, b: spearman(a.detach().abs().cpu().numpy(), b.detach().abs().cpu().numpy())),
        SimilaritySpec("ssim", "Structural similarity (SSIM)",
                       "Do the two maps look alike, blob for blob and edge for edge? Absolute values scaled to "
                       "[0, 1]; 1 is identical.",
                       lambda a, b: ssim(_unit(a), _unit(b))),
    )
}


# ---- cascading randomisation ----

def randomization_stages(module: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """The layers each stage re-initialises, top first: ``[("fc8", ("fc8",)), ..., ("conv1", ("conv1", "bn1"))]``.

    A stage is a convolution or linear layer with the BatchNorm layers that follow it before the next one.
    """
    groups: list[list[str]] = []
    for name, m in module.named_children():
        if isinstance(m, nn.Conv2d | nn.Linear):
            groups.append([name])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and groups:
            groups[-1].append(name)
    return [(g[0], tuple(g)) for g in reversed(groups)]


def _fresh(m: nn.Module, generator: torch.Generator) -> nn.Module:
    """A new module like ``m`` with newly drawn weights (the architectures' initialisation: Kaiming normal,
    fan-out, for convolutions, N(0, 0.01) for linear layers, zero biases). BatchNorm gets a random scale
    N(1, 0.1), zero shift and fresh statistics (mean 0, variance 1: a variance must stay positive)."""
    first = next(m.parameters(), None)
    device, dtype = (first.device, first.dtype) if first is not None else (None, None)
    new: nn.Module
    with torch.no_grad():
        if isinstance(m, nn.Conv2d):
            conv = nn.utils.skip_init(
                nn.Conv2d, m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                dilation=m.dilation, groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode,
                device=device, dtype=dtype)
            fan_out = m.weight.shape[0] * math.prod(m.weight.shape[2:])
            conv.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
            new = conv
        elif isinstance(m, nn.Linear):
            linear = nn.utils.skip_init(nn.Linear, m.in_features, m.out_features, bias=m.bias is not None,
                                        device=device, dtype=dtype)
            linear.weight.normal_(0.0, 0.01, generator=generator)
            new = linear
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            norm = type(m)(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                           track_running_stats=m.track_running_stats, device=device, dtype=dtype)
            if norm.affine:
                norm.weight.normal_(1.0, 0.1, generator=generator)
            new = norm
        else:
            raise TypeError(f"Cannot re-initialise a {type(m).__name__}.")
        for name, param in new.named_parameters():
            if name == "bias":
                param.zero_()
    return new.requires_grad_(False).eval()


def cascade(module: nn.Sequential, *, seed: int = 0, stages: int | None = None
            ) -> Iterator[tuple[str, nn.Sequential]]:
    """Yield ``(stage, network)`` for fc8, fc8+fc7, ... down to conv1 (or the first ``stages`` of them).

    Each network is a view: a new ``nn.Sequential`` over ``module``'s own child modules, with freshly
    initialised modules for the layers randomised so far. ``module`` itself is never changed.
    """
    if not isinstance(module, nn.Sequential):
        raise TypeError("The sanity check needs a flat nn.Sequential with named layers.")
    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    children: OrderedDict[str, nn.Module] = OrderedDict(module.named_children())
    for stage, names in randomization_stages(module)[:stages]:
        for name in names:
            children[name] = _fresh(children[name], generator)
        yield stage, nn.Sequential(OrderedDict(children)).eval()


@dataclass(frozen=True, eq=False)
class SanityStage:
    """One stage: the map with the layers from the top down to ``name`` randomised."""

    name: str  # "original", or the lowest layer randomised so far
    heatmap: torch.Tensor  # (H, W)
    similarity: Mapping[str, float | None]  # metric -> value against the original; None: an all-zero map
    zero: bool  # the map is all zeros (Grad-CAM of a dead layer): counted, never averaged in


@dataclass(frozen=True, eq=False)
class SanityResult:
    """Cascading randomisation of one method for one image."""

    method: str
    target: int
    stages: tuple[SanityStage, ...]  # original first
    floor: Mapping[str, float | None]  # the same method's maps of two unrelated images
    classifier_stage: str  # the stage at which every linear layer is random: where ``fails`` is read
    seconds: float

    @property
    def zero_maps(self) -> int:
        return sum(s.zero for s in self.stages)

    def stage(self, name: str) -> SanityStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def fails(self) -> bool | None:
        """True when, with the classifier random, the map's rank correlation with the original is still
        nearer to 1 than to the unrelated floor: the map does not depend on what the network learnt."""
        reached = [s for s in self.stages if s.name == self.classifier_stage]
        rho = reached[0].similarity["spearman"] if reached else None
        floor = self.floor.get("spearman")
        if rho is None or floor is None or math.isnan(rho) or math.isnan(floor):
            return None
        return rho > (1 + floor) / 2

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None or math.isnan(v) else round(v, 6)

        return {
            "method": self.method, "target": self.target, "seconds": round(self.seconds, 4),
            "classifier_stage": self.classifier_stage, "fails": self.fails, "zero_maps": self.zero_maps,
            "floor": {k: r(v) for k, v in self.floor.items()},
            "stages": [{"stage": s.name, "zero": s.zero, **{k: r(v) for k, v in s.similarity.items()}}
                       for s in self.stages],
        }


def _similarities(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | None]:
    if not bool(a.any()) or not bool(b.any()):
        return dict.fromkeys(SIMILARITIES)
    return {name: spec.runner(a, b) for name, spec in SIMILARITIES.items()}


def sanity_check(
    loaded: LoadedModel,
    analysis: Analysis,
    method: str,
    *,
    unrelated: Analysis | None = None,
    target: int | str | None = None,
    seed: int = 0,
    stages: int | None = None,
    progress: Progress | None = None,
    detailed: bool = False,
    **options: Any,
) -> SanityResult:
    """Cascading randomisation (Adebayo et al. 2018) of ``method`` on ``analysis``'s image, for ``target``
    (default: the top-1 of the trained network) held fixed at every stage. ``unrelated``: another image
    whose map gives the floor. ``stages`` stops after the first n stages (fc8, fc7, ...). ``options`` go to
    :func:`attribute` (e.g. Grad-CAM's ``layer``); ``progress(fraction, message)`` follows each map, and with
    ``detailed`` each method's own batches too (a callback that raises then stops a slow method mid-map)."""
    if method not in METHODS:
        raise OptionError(f"Unknown attribution method {method!r}; choose one of {', '.join(METHODS)}.")
    t0 = time.perf_counter()
    index = analysis.top1.index if target is None or target == "" else loaded.class_index(target)
    x = analysis.input.to(loaded.device)
    all_stages = randomization_stages(loaded.module)
    total = 1 + len(all_stages[:stages]) + (unrelated is not None)
    done = 0

    def heat(module: nn.Module, inp: torch.Tensor, what: str) -> torch.Tensor:
        nonlocal done
        inner = _within(progress, done, total) if detailed else None
        h = attribute(module, inp, method, target=index, progress=inner, **options).heatmap
        done += 1
        if progress is not None:
            progress(done / total, f"Sanity check of {METHODS[method].title}: {what} ({done} of {total})")
        return h

    original = heat(loaded.module, x, "the trained network")
    results = [SanityStage("original", original, _similarities(original, original), not bool(original.any()))]
    for name, network in cascade(loaded.module, seed=seed, stages=stages):
        # ``network`` reuses the shared model's unrandomised layers, and Captum hooks them: hold the shared
        # model's lock too (attribute() takes ``network``'s own, another lock), so no visitor runs it meanwhile.
        with loaded.lock:
            h = heat(network, x, f"randomised down to {name}")
        results.append(SanityStage(name, h, _similarities(h, original), not bool(h.any())))
        del network
    floor: dict[str, float | None] = dict.fromkeys(SIMILARITIES)
    if unrelated is not None:
        floor = _similarities(heat(loaded.module, unrelated.input.to(loaded.device), "an unrelated image"),
                             original)
    linear = [n for n, _ in all_stages if isinstance(loaded.module.get_submodule(n), nn.Linear)]
    top = linear[-1] if linear else all_stages[0][0]
    return SanityResult(method, index, tuple(results), MappingProxyType(floor), top, time.perf_counter() - t0)


def summarize_sanity(results: Sequence[SanityResult]) -> dict[str, dict[str, Any]]:
    """Several images' checks of one method, stage by stage: each similarity's mean over the maps that are
    not all zero, how many were all zero (counted, never averaged in as 0 or NaN) and how many in all."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        for s in (*r.stages, SanityStage("unrelated", r.stages[0].heatmap, r.floor, False)):
            row = out.setdefault(s.name, {"maps": 0, "zero_maps": 0, **{m: [] for m in SIMILARITIES}})
            row["maps"] += 1
            row["zero_maps"] += s.zero or any(v is None for v in s.similarity.values())
            for m, v in s.similarity.items():
                if v is not None and math.isfinite(v):
                    row[m].append(v)
    for row in out.values():
        for m in SIMILARITIES:
            row[m] = float(np.mean(row[m])) if row[m] else None
    return out


# ---- pictures ----

def sanity_strip(result: SanityResult, *, side: int = 112, text_px: int = 14,
                 per_row: int | None = None) -> Image.Image:
    """The map of every stage in a row (or rows of ``per_row``), each scaled to its own maximum, captioned
    with its stage in ``text_px`` px text."""
    from . import render

    tiles = []
    for s in result.stages:
        tile = render.heatmap_image(s.heatmap.abs().numpy(), size=(side, side))
        caption = s.name if s.name == "original" else f"to {s.name}"
        tiles.append(render.label(tile, caption + (" (zero)" if s.zero else ""), size=text_px))
    if per_row is not None:
        return render.tile_rows(tiles, per_row, gap=max(4, text_px // 2))
    return render.hstack(tiles, gap=4)


def _text_style(text_px: int | None) -> Any:
    """Matplotlib's settings for text ``text_px`` pixels tall at the 100 dpi the pictures are saved at (None:
    matplotlib's own sizes, as the CLI's files have them)."""
    import contextlib

    import matplotlib

    if text_px is None:
        return contextlib.nullcontext()
    pt = text_px * 72 / 100
    return matplotlib.rc_context({"font.size": pt, "axes.titlesize": pt, "axes.labelsize": pt,
                                  "xtick.labelsize": pt, "ytick.labelsize": pt, "legend.fontsize": pt,
                                  "lines.linewidth": 2.5, "lines.markersize": 9})


def _figure_to_image(fig: Any) -> Image.Image:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    buf.seek(0)
    image = Image.open(buf)
    image.load()
    return image.convert("RGB")


def curve_plot(report: FaithfulnessReport, score: str = "logit", *, text_px: int | None = None,
               figsize: tuple[float, float] = (10, 4)) -> Image.Image:
    """Deletion and insertion curves side by side, methods solid, baselines dashed, AUC in the legend.
    ``text_px``: every text that many pixels tall, and one legend under both plots (for a projector)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no window; savefig renders with Agg

    with _text_style(text_px):
        fig = Figure(figsize=figsize)
        axes = fig.subplots(1, 2)
        for ax, (name, spec) in zip(axes, CURVES.items(), strict=True):
            for r in report.results.values():
                ax.plot(r.fractions, r.curves[name][score], "-" if r.kind == "method" else "--",
                        label=r.title if text_px is not None else f"{r.title} ({r.auc(name, score):.3f})")
            ax.set_title(f"{spec.title} ({spec.better} area is better)")
            ax.set_xlabel("share of pixels changed")
            ax.set_ylabel(SCORES[score].split(":")[0])
            if text_px is None:
                ax.legend(fontsize=7)
        if text_px is not None:  # one legend for both: the same maps in the same colours (AUCs in the table)
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), frameon=False)
            fig.set_layout_engine("constrained")
        else:
            fig.tight_layout()
        return _figure_to_image(fig)


def sanity_plot(results: Sequence[SanityResult], *, text_px: int | None = None,
                figsize: tuple[float, float] = (10, 4)) -> Image.Image:
    """Similarity to the original map at each stage, one line per method, the unrelated floor dotted.
    ``text_px``: every text that many pixels tall (for a projector)."""
    with _text_style(text_px):
        return _sanity_figure(results, text_px, figsize)


def _sanity_figure(results: Sequence[SanityResult], text_px: int | None, figsize: tuple[float, float]) -> Image.Image:
    from matplotlib.figure import Figure  # no pyplot: no global backend, no window; savefig renders with Agg

    small = 7 if text_px is None else None  # None: the rc_context's size
    fig = Figure(figsize=figsize, layout="constrained" if text_px is not None else None)
    for ax, (metric, spec) in zip(fig.subplots(1, 2), SIMILARITIES.items(), strict=True):
        for i, r in enumerate(results):
            names = [s.name for s in r.stages]
            values = [np.nan if s.similarity[metric] is None else s.similarity[metric] for s in r.stages]
            mark = " - fails" if r.fails else ""
            (line,) = ax.plot(range(len(names)), values, "o-", label=f"{METHODS[r.method].title}{mark}")
            floor = r.floor.get(metric)
            if floor is not None:
                ax.axhline(floor, color=line.get_color(), linestyle=":", linewidth=1,
                           label="unrelated image" if i == 0 else None)
            ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8 if text_px is None else None)
        ax.set_title(spec.title)
        ax.set_xlabel("randomised from the top layer down to")
        shown = [v for r in results for v in (*(s.similarity[metric] for s in r.stages), r.floor.get(metric))
                 if v is not None and math.isfinite(v)]
        ax.set_ylim(min([-0.2, *shown]) - 0.05, 1.05)
        ax.legend(fontsize=small)
    if text_px is None:
        fig.tight_layout()
    return _figure_to_image(fig)


# ---- the CLI: `alexnet-viz trust IMAGE` ----

DEFAULT_METHODS = ("saliency", "input_x_gradient", "guided_backprop", "gradcam")


def _bundled_photo(other_than: Analysis) -> Path | None:
    """A bundled example photo whose view differs from ``other_than``'s, for the unrelated floor."""
    folder = Path(__file__).resolve().parents[1] / "assets"
    mine = np.asarray(other_than.view)
    for path in sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png")):
        try:
            with Image.open(path) as im:
                view = np.asarray(im.convert("RGB").resize(other_than.view.size))
        except OSError:
            continue
        if view.shape != mine.shape or np.abs(view.astype(int) - mine).mean() > 8:
            return path
    return None


def run_cli(args: Any, load: Callable[[], LoadedModel]) -> int:
    """`alexnet-viz trust`: deletion/insertion AUCs per method and baseline, and the sanity check per stage.
    ``load()`` gives the model, called once the arguments are known to be good."""
    import json

    from .analysis import analyze

    methods = list(dict.fromkeys(m for given in (args.method or DEFAULT_METHODS)
                                 for m in (METHODS if given == "all" else [given])))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)} or all", file=sys.stderr)
        return 2
    loaded = load()
    analysis = analyze(loaded, Path(args.image))
    unrelated_path = Path(args.unrelated) if args.unrelated else _bundled_photo(analysis)
    unrelated = analyze(loaded, unrelated_path) if unrelated_path is not None else None
    report = faithfulness(loaded, analysis, methods, target=args.target)
    checks = [] if args.no_sanity else [
        sanity_check(loaded, analysis, m, unrelated=unrelated, target=report.target, stages=args.stages)
        for m in methods]
    result = {
        "image": str(args.image),
        "arch": loaded.arch,
        "weights": {"source": loaded.weights.source, "trained": loaded.weights.trained,
                    "warning": loaded.weights.warning},
        "faithfulness": report.to_dict(),
        "sanity": {"unrelated": None if unrelated_path is None else str(unrelated_path),
                   "methods": {c.method: c.to_dict() for c in checks}},
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        curve_plot(report).save(out / "curves.png")
        if checks:
            sanity_plot(checks).save(out / "sanity.png")
            for c in checks:
                sanity_strip(c).save(out / f"sanity_{c.method}.png")
        (out / "trust.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.image}: target {report.label} ({report.target})")
    print(report.table())
    for c in checks:
        verdict = {True: "FAILS (its map survives a random classifier)", False: "passes", None: "undecided"}[c.fails]
        last = [s for s in c.stages if s.name == c.classifier_stage] or [c.stages[-1]]
        rho, floor = last[0].similarity["spearman"], c.floor.get("spearman")
        print(f"sanity {METHODS[c.method].title}: {verdict}; rank correlation randomised to {last[0].name} "
              f"{'-' if rho is None else f'{rho:.2f}'}, unrelated image {'-' if floor is None else f'{floor:.2f}'}"
              + (f"; {c.zero_maps} all-zero maps" if c.zero_maps else ""))
    return 0
