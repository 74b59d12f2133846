"""Feature visualisation: the picture a unit, channel or class of the network responds to most.

Lucent's recipe (``lucent.optvis``: ``param.spatial.fft_image``, ``param.color.to_valid_rgb``,
``transform.standard_transforms``, ``render.render_vis``), re-implemented on torch alone:

- the image is parameterised as a Fourier spectrum scaled by 1/f (so every frequency band starts with
  the same energy as in a natural photo), in a decorrelated colour basis, squashed by a sigmoid;
- the image is 128 px, as Lucent's; each step shows the network a randomly transformed copy: pad 12
  (grey), jitter 8, scale 0.9-1.1, rotate +-10 degrees, jitter 4, upsampled (bilinear) to the network's
  input size. A smaller input (cifar's 32) is optimised at its own size, with the amounts scaled, and so
  is the first conv layer (11-pixel units: a 128 picture upsampled to 224 cannot hold their detail);
- Adam at lr 0.05 ascends the objective: the unit's mean activation *before* its ReLU (a negative
  pre-activation behind a ReLU gives no gradient), or, for a class, its log-softmax or its margin over
  the runner-up (a raw logit rises as fast by raising every class).

The network is cut right after the target layer (:func:`cut_network`): a conv5 unit never pays for the
235 MB classifier. Several units of one layer are optimised as one batch, each image for its own
unit; their objectives are summed, and Adam works element by element, so a unit's picture does not
depend on the others in its batch. Results are cached on disk (:class:`DiskCache`) per weights
fingerprint, architecture, layer, unit and settings.

A smooth picture alone proves nothing: the parameterisation makes any network's result look smooth.
Show it beside the same unit of :func:`untrained_twin`, and check it with :func:`assess`.

Concurrency: the model is shared by every visitor. Each step's forward and backward pass holds ``lock``
(by default the model's own lock, ``loaded.lock``, which Captum's hooking methods also hold), so
steps of different visitors interleave but never overlap with an attribution's hooks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import UserError
from .model import LoadedModel, WeightsInfo

__all__ = [
    "CLASS_LOSSES",
    "OBJECTIVES",
    "DiskCache",
    "FeatVisError",
    "Frame",
    "ObjectiveSpec",
    "Settings",
    "Visualization",
    "activation_of",
    "assess",
    "benchmark_rows",
    "cut_network",
    "default_cache_dir",
    "high_frequency_share",
    "param_side",
    "parse_units",
    "resolve_target",
    "untrained_twin",
    "visualize",
    "visualize_iter",
    "visualize_units",
    "weights_fingerprint",
]

Progress = Callable[[float, str], None]

# Lucent's colour decorrelation: the square root of ImageNet's colour covariance (its SVD), columns
# normalised so the largest has unit norm. Optimising in this basis equalises the colour directions.
_COLOR_SVD_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
_COLOR = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))
_FFT_MAGIC = 4.0  # Lucid's constant: divides the image before the sigmoid; larger means less saturated
_CACHE_VERSION = 2  # bump when the recipe changes, so old cached pictures are not served


class FeatVisError(UserError):
    """A layer, unit or option that cannot be visualised; the message says what to pick instead."""


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    title: str
    caption: str


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "channel": ObjectiveSpec("channel", "Unit or channel",
                             "The mean of a conv channel's map, or an fc unit's value, before its ReLU."),
    "neuron": ObjectiveSpec("neuron", "Centre neuron",
                            "One position of a conv channel, the centre of its map, before its ReLU."),
    "class": ObjectiveSpec("class", "Class",
                           "A class's log-probability (or margin over the runner-up), from the last layer."),
}

CLASS_LOSSES: dict[str, str] = {
    "logsoftmax": "log-probability of the class: rises only by taking probability from the others",
    "margin": "the class's logit minus the largest other logit",
    "logit": "the raw logit (also raises rival classes: shown for comparison)",
}


@dataclass(frozen=True)
class Settings:
    """What decides the picture (and so the cache key). Defaults are Lucent's."""

    steps: int = 128
    lr: float = 0.05
    seed: int = 0
    fourier: bool = True  # 1/f-scaled Fourier basis; False: plain pixels (through the sigmoid)
    decorrelate: bool = True  # Lucent's colour decorrelation
    transforms: bool = True  # pad, jitter, scale, rotate, jitter
    class_loss: str = "logsoftmax"  # the "class" objective's form: a key of CLASS_LOSSES
    side: int | None = None  # the optimised image's side; None: param_side (128 or less; conv1: the input's)

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 4096:
            raise FeatVisError(f"Steps must be between 1 and 4096, not {self.steps}.")
        if not 0 < self.lr <= 1:
            raise FeatVisError(f"The learning rate must be in (0, 1], not {self.lr}.")
        if self.class_loss not in CLASS_LOSSES:
            raise FeatVisError(f"Unknown class objective {self.class_loss!r}; use one of {', '.join(CLASS_LOSSES)}.")
        if self.side is not None and not 16 <= self.side <= 512:
            raise FeatVisError(f"The image side must be between 16 and 512 pixels, not {self.side}.")


@dataclass(frozen=True, eq=False)
class Visualization:
    """One optimised picture for one unit."""

    image: Image.Image  # RGB, input_size x input_size
    arch: str
    layer: str
    unit: int
    objective: str  # "channel" | "class"
    settings: Settings
    value: float  # the objective on the final, untransformed image
    history: tuple[float, ...]  # the objective (on the transformed image) at every step
    seconds: float  # compute time (0 when served from the cache)
    cached: bool = False
    fingerprint: str = ""

    def to_dict(self, image_path: str | None = None) -> dict[str, Any]:
        return {
            **({"image": image_path} if image_path is not None else {}),
            "arch": self.arch, "layer": self.layer, "unit": self.unit, "objective": self.objective,
            "steps": self.settings.steps, "seconds": round(self.seconds, 4), "value": self.value,
            "cached": self.cached, "settings": asdict(self.settings), "size": self.image.size[0],
            **({"weights": self.fingerprint[:16]} if self.fingerprint else {}),
        }


@dataclass(frozen=True, eq=False)
class Frame:
    """A live update: the pictures so far; the last frame of a run carries ``results``."""

    step: int
    steps: int
    images: tuple[Image.Image, ...]  # one per unit, in the order asked
    values: tuple[float, ...]  # each unit's objective at this step (transformed input)
    results: tuple[Visualization, ...] | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 1.0

    @property
    def done(self) -> bool:
        return self.results is not None


# --- the network, cut at the target ------------------------------------------------------------------


def cut_network(module: nn.Sequential, layer: str) -> nn.Sequential:
    """The children of ``module`` up to and including ``layer``; shares (does not copy) their weights."""
    names = [name for name, _ in module.named_children()]
    if layer not in names:
        raise FeatVisError(f"There is no layer {layer!r}; pick one of {', '.join(names)}.")
    children = list(module.named_children())[: names.index(layer) + 1]
    return nn.Sequential(OrderedDict(children)).eval()


def _unit_count(m: nn.Module) -> int:
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    raise TypeError(type(m).__name__)


def resolve_target(loaded: LoadedModel, layer: str | None, objective: str = "channel") -> str:
    """The layer to optimise: a conv or fc layer for "channel"; the last layer (fc8) for "class"."""
    if objective not in OBJECTIVES:
        raise FeatVisError(f"Unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}.")
    learned = [n for n, m in loaded.module.named_children() if isinstance(m, nn.Conv2d | nn.Linear)]
    if objective == "class":
        if layer not in (None, learned[-1]):
            raise FeatVisError(f"A class objective is read from the last layer, {learned[-1]}, not {layer}.")
        return learned[-1]
    if layer not in learned:
        raise FeatVisError(f"Layer {layer!r} has no units to visualise; pick one of {', '.join(learned)}.")
    return layer


def _check_units(loaded: LoadedModel, layer: str, units: Sequence[int]) -> None:
    count = _unit_count(loaded.module.get_submodule(layer))
    bad = [u for u in units if not 0 <= u < count]
    if bad:
        raise FeatVisError(f"{layer} has units 0-{count - 1}; {bad[0]} is not one of them.")
    if not units:
        raise FeatVisError("No unit was given.")


def parse_units(text: str) -> list[int]:
    """``"0-15"``, ``"3,7,9"`` or ``"0-3,8"`` -> a list of unit indices, in order, without repeats."""
    units: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                units.extend(range(lo, hi + 1))
            else:
                units.append(int(part))
    except ValueError as e:
        raise FeatVisError(f"{text!r} is not a list of units like 0-15 or 3,7,9.") from e
    if len(units) > 4096:
        raise FeatVisError("At most 4096 units at once.")
    return list(dict.fromkeys(units))


# --- parameterisation and transforms -----------------------------------------------------------------


def _freqs(h: int, w: int) -> np.ndarray:
    """Radial frequency (cycles/pixel) of each coefficient of an rfft2 of an h x w image."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2] if w % 2 == 1 else np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


class _Image:
    """B images of side ``size``: learnable tensor -> (B, 3, size, size) RGB in [0, 1]."""

    def __init__(self, count: int, size: int, *, fourier: bool, decorrelate: bool, seeds: Sequence[int],
                 device: torch.device) -> None:
        self.size, self.fourier, self.decorrelate = size, fourier, decorrelate
        if fourier:
            freqs = _freqs(size, size)
            scale = 1.0 / np.maximum(freqs, 1.0 / size)  # 1/f, capped at the lowest frequency
            self.scale = torch.tensor(scale, dtype=torch.float32, device=device)[None, None, ..., None]
            shape: tuple[int, ...] = (3, *freqs.shape, 2)
            sd = 0.01
        else:
            shape, sd = (3, size, size), 0.01
        # One generator per image, seeded by (seed, unit): a unit's start does not depend on its batch.
        init = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) * sd for s in seeds]
        self.param = torch.stack(init).to(device).requires_grad_(True)
        self.color = torch.tensor(_COLOR.T, device=device)

    def __call__(self) -> torch.Tensor:
        if self.fourier:
            spectrum = torch.view_as_complex((self.scale * self.param).contiguous())
            x = torch.fft.irfftn(spectrum, s=(self.size, self.size), norm="ortho") / _FFT_MAGIC
        else:
            x = self.param
        if self.decorrelate:
            x = (x.permute(0, 2, 3, 1) @ self.color).permute(0, 3, 1, 2)
        return torch.sigmoid(x)  # (B, 3, S, S)


PARAM_SIDE = 128  # Lucent's image side; larger inputs see it upsampled, smaller ones (cifar) at their own


def param_side(input_size: int, *, first_layer: bool = False) -> int:
    """The side of the optimised image: 128, or the input's own side when it is smaller (no upsampling).

    The first conv layer gets the input's own side: its units see 11 pixels, finer than a 128-pixel picture
    upsampled to 224 can hold (on white-noise filters the best such picture reaches a cosine of only 0.42-0.45
    with its filter, against 0.74 at 224; tests/test_featvis.py), and the network cut there is one convolution,
    so the larger picture costs little."""
    return input_size if first_layer else min(input_size, PARAM_SIDE)


def _transform_amounts(size: int) -> tuple[int, int, int]:
    """Lucent's pixel amounts (pad 12, jitter 8, jitter 4) are for a 128 image; scaled for a smaller one."""
    f = size / PARAM_SIDE
    return max(1, round(12 * f)), max(2, round(8 * f)), max(2, round(4 * f))


def _robust(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Lucent's standard_transforms on (B, 3, H, W) in [0, 1]; one random draw per step, shared by the batch."""
    pad, jit1, jit2 = _transform_amounts(x.shape[-1])
    x = F.pad(x, [pad] * 4, mode="constant", value=0.5)
    x = _jitter(x, jit1, rng)
    scale = float(rng.choice([1 + (i - 5) / 50.0 for i in range(11)]))  # 0.9 ... 1.1
    side = [math.ceil(scale * d) for d in x.shape[-2:]]
    x = F.interpolate(x, size=side, mode="bilinear", align_corners=True)
    angle = float(rng.choice([*range(-10, 11), *[0] * 5]))
    x = _rotate(x, angle)
    return _jitter(x, jit2, rng)


def _jitter(x: torch.Tensor, d: int, rng: np.random.Generator) -> torch.Tensor:
    dx, dy = int(rng.integers(d)), int(rng.integers(d))
    h, w = x.shape[-2:]
    return x[..., dx: dx + h - d, dy: dy + w - d]


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    if degrees == 0:
        return x
    t = math.radians(degrees)
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]],
                         dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _normalise(x: torch.Tensor, loaded: LoadedModel) -> torch.Tensor:
    mean = torch.tensor(loaded.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# --- objectives -----------------------------------------------------------------------------------------


def _scores(out: torch.Tensor, units: torch.Tensor, objective: str, class_loss: str) -> torch.Tensor:
    """Per-image objective (B,) from the cut network's output: (B, C, h, w) or (B, C)."""
    rows = torch.arange(out.shape[0], device=out.device)
    if objective == "class":
        if class_loss == "logsoftmax":
            return torch.log_softmax(out, dim=1)[rows, units]
        if class_loss == "margin":
            target = out[rows, units]
            rivals = out.scatter(1, units[:, None], float("-inf"))
            return target - rivals.max(dim=1).values
        return out[rows, units]
    picked = out[rows, units]  # (B, h, w) or (B,)
    if objective == "neuron" and picked.ndim == 3:
        return picked[:, picked.shape[1] // 2, picked.shape[2] // 2]
    return picked.flatten(1).mean(1) if picked.ndim > 1 else picked


def _upsample(x01: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, size, size), as Lucent's final ``Upsample(224, bilinear, align_corners)``."""
    if x01.shape[-2:] == (size, size):
        return x01
    return F.interpolate(x01, size=(size, size), mode="bilinear", align_corners=True)


def _model_inputs(x01: torch.Tensor, loaded: LoadedModel) -> torch.Tensor:
    return _normalise(_upsample(x01, loaded.input_size), loaded)


def _to_pil(x01: torch.Tensor) -> list[Image.Image]:
    arr = (x01.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def _unit_seed(seed: int, layer: str, unit: int) -> int:
    digest = hashlib.sha256(f"{seed}/{layer}/{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _optimise(
    loaded: LoadedModel, layer: str, units: Sequence[int], objective: str, settings: Settings, *,
    every: int, lock: AbstractContextManager[Any] | None, progress: Progress | None,
) -> Iterator[Frame]:
    net = cut_network(loaded.module, layer)
    side = settings.side or param_side(loaded.input_size, first_layer=layer == loaded.conv_layers[0])
    image = _Image(len(units), side, fourier=settings.fourier,
                   decorrelate=settings.decorrelate, seeds=[_unit_seed(settings.seed, layer, u) for u in units],
                   device=loaded.device)
    optimiser = torch.optim.Adam([image.param], lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    index = torch.tensor(list(units), device=loaded.device)
    guard: AbstractContextManager[Any] = lock if lock is not None else contextlib.nullcontext()
    history: list[list[float]] = []
    t0 = time.perf_counter()
    with torch.enable_grad():
        for step in range(1, settings.steps + 1):
            optimiser.zero_grad(set_to_none=True)
            x = image()
            if settings.transforms:
                x = _robust(x, rng)
            with guard:
                scores = _scores(net(_model_inputs(x, loaded)), index, objective, settings.class_loss)
                (-scores.sum()).backward()  # a sum: each image's gradient is its own unit's alone
            optimiser.step()
            history.append([float(v) for v in scores.detach().cpu()])
            if progress is not None:
                progress(step / settings.steps, f"step {step}/{settings.steps}")
            if step % every == 0 and step < settings.steps:
                with torch.no_grad():
                    yield Frame(step, settings.steps, tuple(_to_pil(image())), tuple(history[-1]))  # param side
        with torch.no_grad():
            final = image()
            with guard:
                values = _scores(net(_model_inputs(final, loaded)), index, objective,
                                 settings.class_loss)
    seconds = time.perf_counter() - t0
    pictures = _to_pil(_upsample(final, loaded.input_size))
    results = tuple(
        Visualization(image=pictures[i], arch=loaded.arch, layer=layer, unit=int(u), objective=objective,
                      settings=settings, value=float(values[i]), history=tuple(h[i] for h in history),
                      seconds=seconds / len(units))
        for i, u in enumerate(units)
    )
    yield Frame(settings.steps, settings.steps, tuple(pictures), tuple(float(v) for v in values), results)


# --- weights fingerprint and disk cache ------------------------------------------------------------------

_fingerprints: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()
_fingerprint_lock = threading.Lock()


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of the module's state (names, dtypes, shapes, bytes); memoised until a tensor changes."""
    state = module.state_dict()
    # A tensor's _version counts its in-place updates (optimiser steps, load_state_dict's copy_).
    key = tuple((k, v.data_ptr(), v._version) for k, v in state.items())
    with _fingerprint_lock:
        memo = _fingerprints.get(module)
        if memo is not None and memo[0] == key:
            return memo[1]
    h = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    with _fingerprint_lock:
        _fingerprints[module] = (key, digest)
    return digest


def default_cache_dir() -> Path:
    """``$ALEXNET_VIZ_CACHE/featvis``, else ``~/.cache/alexnet-viz/featvis``."""
    root = os.environ.get("ALEXNET_VIZ_CACHE")
    return Path(root).expanduser() / "featvis" if root else Path.home() / ".cache" / "alexnet-viz" / "featvis"


@dataclass(frozen=True)
class DiskCache:
    """One PNG + one JSON per picture, named by the hash of everything that decides it. No pickle."""

    folder: Path = field(default_factory=default_cache_dir)

    @staticmethod
    def key(fingerprint: str, loaded: LoadedModel, layer: str, unit: int, objective: str,
            settings: Settings) -> str:
        ident = {"v": _CACHE_VERSION, "weights": fingerprint, "arch": loaded.arch, "size": loaded.input_size,
                 "mean": list(loaded.mean), "std": list(loaded.std), "layer": layer, "unit": unit,
                 "objective": objective, "settings": asdict(settings)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str, loaded: LoadedModel, layer: str, unit: int, objective: str,
            settings: Settings, fingerprint: str) -> Visualization | None:
        png, meta = self.folder / f"{key}.png", self.folder / f"{key}.json"
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            with Image.open(png, formats=["PNG"]) as im:
                image = im.convert("RGB")
        except (OSError, ValueError):
            return None  # absent or damaged: compute it again
        return Visualization(image=image, arch=loaded.arch, layer=layer, unit=unit, objective=objective,
                             settings=settings, value=float(data["value"]),
                             history=tuple(float(v) for v in data["history"]), seconds=0.0, cached=True,
                             fingerprint=fingerprint)

    def put(self, key: str, vis: Visualization) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader never sees half a file, and two writers of one key agree.
            for suffix, write in ((".png", lambda p: vis.image.save(p, format="PNG")),
                                  (".json", lambda p: p.write_text(json.dumps(
                                      {"value": vis.value, "history": list(vis.history),
                                       "seconds": vis.seconds}), encoding="utf-8"))):
                tmp = self.folder / f".{key}{suffix}.{os.getpid()}.{threading.get_ident()}"
                write(tmp)
                os.replace(tmp, self.folder / f"{key}{suffix}")
        except OSError:
            pass  # a read-only or full disk costs the cache, never the picture


# --- the public verbs ---------------------------------------------------------------------------------------


def visualize_iter(
    loaded: LoadedModel, layer: str | None, units: int | Sequence[int], *, objective: str = "channel",
    settings: Settings | None = None, every: int = 8, cache: DiskCache | None = None,
    lock: AbstractContextManager[Any] | str | None = "model", progress: Progress | None = None,
) -> Iterator[Frame]:
    """Optimise pictures for ``units`` of ``layer``, yielding a :class:`Frame` every ``every`` steps.

    The last frame has ``results`` (one :class:`Visualization` per unit, in order). With a ``cache``,
    units found there are not recomputed; if all are, the only frame is the last. ``lock="model"`` takes
    the shared model's lock around each step; pass ``None`` for a model of one's own.
    """
    settings = settings or Settings()
    unit_list = [units] if isinstance(units, int) else [int(u) for u in units]
    layer = resolve_target(loaded, layer, objective)
    _check_units(loaded, layer, unit_list)
    guard = loaded.lock if lock == "model" else lock
    assert not isinstance(guard, str)  # noqa: S101 - "model" is the only string
    fingerprint = weights_fingerprint(loaded.module) if cache is not None else ""
    found: dict[int, Visualization] = {}
    if cache is not None:
        for u in unit_list:
            hit = cache.get(DiskCache.key(fingerprint, loaded, layer, u, objective, settings), loaded, layer, u,
                            objective, settings, fingerprint)
            if hit is not None:
                found[u] = hit
    todo = [u for u in unit_list if u not in found]
    if todo:
        for frame in _optimise(loaded, layer, todo, objective, settings, every=max(1, every), lock=guard,
                               progress=progress):
            if frame.results is None:
                by_unit = dict(zip(todo, frame.images, strict=True))
                yield Frame(frame.step, frame.steps,
                            tuple(found[u].image if u in found else by_unit[u] for u in unit_list), frame.values)
                continue
            for vis in frame.results:
                vis = replace(vis, fingerprint=fingerprint)
                found[vis.unit] = vis
                if cache is not None:
                    cache.put(DiskCache.key(fingerprint, loaded, layer, vis.unit, objective, settings), vis)
    elif progress is not None:
        progress(1.0, "from the cache")
    results = tuple(found[u] for u in unit_list)
    yield Frame(settings.steps, settings.steps, tuple(v.image for v in results), tuple(v.value for v in results),
                results)


def visualize(loaded: LoadedModel, layer: str | None, unit: int, **options: Any) -> Visualization:
    """One unit's picture (the last frame of :func:`visualize_iter`); options as there."""
    *_, last = visualize_iter(loaded, layer, unit, **options)
    assert last.results is not None  # noqa: S101 - the last frame always has them
    return last.results[0]


def visualize_units(loaded: LoadedModel, layer: str | None, units: Sequence[int], *, batch: int = 16,
                    progress: Progress | None = None, **options: Any) -> list[Visualization]:
    """Many units (an atlas), ``batch`` at a time; progress runs over all of them."""
    out: list[Visualization] = []
    chunks = [list(units[i: i + batch]) for i in range(0, len(units), batch)] or [[]]
    for n, chunk in enumerate(chunks):
        def scaled(f: float, msg: str, n: int = n, chunk: list[int] = chunk) -> None:
            if progress is not None:
                progress((n + f) / len(chunks), f"units {chunk[0]}-{chunk[-1]}: {msg}")

        *_, last = visualize_iter(loaded, layer, chunk, progress=scaled, **options)
        assert last.results is not None  # noqa: S101
        out.extend(last.results)
    return out


def untrained_twin(loaded: LoadedModel, *, seed: int | None = None) -> LoadedModel:
    """The same architecture, preprocessing and classes with seeded untrained weights: the control
    picture. Seed 0 (the app's untrained model) unless ``loaded`` is that model, then seed 1."""
    from .architectures import build_model

    if seed is None:
        seed = 1 if loaded.weights.source == "none" else 0
    module = build_model(loaded.arch, num_classes=loaded.num_classes, seed=seed)
    module.requires_grad_(False)
    return replace(loaded, module=module.to(loaded.device).eval(),
                   weights=WeightsInfo("none", f"seeded untrained weights (seed {seed})", trained=False))


# --- checks: what the acceptance criteria measure --------------------------------------------------------


def high_frequency_share(image: Image.Image | np.ndarray, cutoff: float = 0.25) -> float:
    """Share of the image's power (DC removed, summed over colours) above ``cutoff`` cycles/pixel.

    A natural photo scores ~0.003-0.024; per-pixel noise ~0.8 (its power is flat up to 0.71)."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr - arr.mean(axis=(0, 1), keepdims=True)
    power = (np.abs(np.fft.fft2(arr, axes=(0, 1))) ** 2).sum(axis=2)
    fy, fx = np.fft.fftfreq(arr.shape[0])[:, None], np.fft.fftfreq(arr.shape[1])[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    total = power.sum()
    return float(power[radius > cutoff].sum() / total) if total > 0 else 0.0


def activation_of(loaded: LoadedModel, layer: str, images: torch.Tensor | Sequence[Image.Image], *,
                  lock: AbstractContextManager[Any] | str | None = "model") -> torch.Tensor:
    """Mean post-ReLU activation of every unit of ``layer``: (B, C). ``images``: normalised (B, 3, H, W)
    inputs, or RGB pictures taken as they are (values / 255, normalised, at their own size)."""
    if not isinstance(images, torch.Tensor):
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]
        x01 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(loaded.device)
        images = _normalise(x01, loaded)
    net = cut_network(loaded.module, layer)
    guard = loaded.lock if lock == "model" else lock
    assert not isinstance(guard, str)  # noqa: S101
    with guard if guard is not None else contextlib.nullcontext(), torch.no_grad():
        out = F.relu(net(images.to(loaded.device)))
    return (out.flatten(2).mean(2) if out.ndim == 4 else out).float().cpu()


def assess(loaded: LoadedModel, vis: Visualization, natural: torch.Tensor, *, scale: float = 0.8) -> dict[str, float]:
    """The acceptance numbers for one channel picture, against ``natural`` (B, 3, S, S) normalised photos.

    ``ratio``: the picture's mean post-ReLU activation of its channel over the channel's mean on the
    photos; ``rank_quantile``: where that ratio ranks among all the layer's channels (0 = best);
    ``hf_share``: :func:`high_frequency_share`; ``scale_retention``: the activation when the picture is
    shown at ``scale`` times its size, over the activation at full size."""
    layer, unit = vis.layer, vis.unit
    on_photos = activation_of(loaded, layer, natural).mean(0)  # (C,)
    on_picture = activation_of(loaded, layer, [vis.image])[0]  # (C,)
    ratios = on_picture / on_photos.clamp_min(1e-12)
    side = round(vis.image.size[0] * scale)
    small = vis.image.resize((side, side), Image.Resampling.BILINEAR)
    on_small = activation_of(loaded, layer, [small])[0]
    rank = int((ratios > ratios[unit]).sum())
    return {
        "activation": float(on_picture[unit]), "natural": float(on_photos[unit]), "ratio": float(ratios[unit]),
        "rank_quantile": rank / len(ratios), "hf_share": high_frequency_share(vis.image),
        "scale_retention": float(on_small[unit] / on_picture[unit]) if on_picture[unit] > 0 else 0.0,
    }


def benchmark_rows(loaded: LoadedModel, *, repeats: int = 5, steps: int = 128) -> list[dict[str, Any]]:
    """Median seconds per unit (conv1, conv5, fc7, a class) at ``steps`` steps, and per step, for the
    benchmark harness: wall clock and this process's CPU time (which a busy machine inflates less).
    No cache, no lock."""
    rows = []
    last_fc = resolve_target(loaded, None, "class")
    fcs = [n for n, m in loaded.module.named_children() if isinstance(m, nn.Linear)]
    cases = [("conv1", "channel"), ("conv5", "channel"), (fcs[-2] if len(fcs) > 1 else last_fc, "channel"),
             (last_fc, "class")]
    for layer, objective in cases:
        wall, cpu = [], []
        for r in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            visualize(loaded, layer, r, objective=objective, settings=Settings(steps=steps, seed=r), lock=None)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        median = float(np.median(wall))
        rows.append({"name": f"featvis {layer} ({objective})", "unit_s": round(median, 3),
                     "unit_cpu_s": round(float(np.median(cpu)), 3), "step_ms": round(1000 * median / steps, 2),
                     "steps": steps, "repeats": repeats, "threads": torch.get_num_threads(),
                     "device": str(loaded.device)})
    return rows
