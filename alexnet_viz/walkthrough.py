"""Inside AlexNet, with this image's numbers: one position followed through conv1, ReLU, LRN and pooling.

:func:`walkthrough` runs the image once (every layer captured) and recomputes, by hand and in float64,
what the first block does at one position: the 11x11x3 input patch times one filter plus its bias (the
conv1 value there), how many values conv1's ReLU zeroed, local response normalisation over the
position's channel neighbourhood with the paper's constants (the ``paper`` architectures), and the
overlapping 3x3 / stride 2 max pool (its window and the value it picks). Every hand-computed number sits
beside the model's own (``model_value``), for the page to show and the tests to compare.

Also: the output-size arithmetic of every layer (from :func:`alexnet_viz.summary.summarize`, which
measured the shapes), dropout at training versus evaluation on this image's fc6 values, parameters per
layer, and for ``paper-2gpu`` the filters of each tower and which layers read across the towers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from .activations import capture
from .images import ImageSource, load_image
from .model import LoadedModel
from .summary import summarize

__all__ = [
    "ConvStep",
    "DropoutStep",
    "LrnStep",
    "PoolStep",
    "ReluStep",
    "SizeRow",
    "Towers",
    "Walkthrough",
    "conv1_position",
    "size_rows",
    "towers",
    "walkthrough",
]


@dataclass(frozen=True, eq=False)
class ConvStep:
    """conv1 at output (y, x), channel c: ``value = sum(patch * filter) + bias``."""

    layer: str
    channel: int
    y: int
    x: int
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in the input; outside it is zero padding
    patch: np.ndarray  # (3, k, k) the normalised input under the filter, zeros in the padding
    filter: np.ndarray  # (3, k, k)
    bias: float
    dot: float  # sum(patch * filter)
    value: float  # dot + bias, by hand (float64)
    model_value: float  # the model's conv1 output there


@dataclass(frozen=True)
class ReluStep:
    layer: str
    before: float
    after: float
    zeroed: int  # values of the whole layer the ReLU set to 0 (they were negative)
    total: int


@dataclass(frozen=True, eq=False)
class LrnStep:
    """b_c = a_c / (k + alpha * sum_{j in window} a_j^2) ** beta, the window n channels around c."""

    layer: str
    channel: int
    k: float
    n: int
    alpha: float  # the paper's alpha (torch's alpha divided by n)
    beta: float
    window: tuple[int, ...]  # the channels summed over (clipped at the ends)
    values: np.ndarray  # a_j for j in window (the ReLU's output at this position)
    sum_squares: float
    denominator: float
    value: float  # by hand
    model_value: float


@dataclass(frozen=True, eq=False)
class PoolStep:
    layer: str
    channel: int
    y: int  # the pool's output position
    x: int
    rows: tuple[int, int]  # the window in its input map: [rows[0], rows[1]) x [cols[0], cols[1])
    cols: tuple[int, int]
    window: np.ndarray  # (kh, kw)
    value: float  # the maximum, by hand
    argmax: tuple[int, int]  # where in the window
    model_value: float


@dataclass(frozen=True)
class SizeRow:
    layer: str
    type: str
    config: str
    in_size: int | None  # spatial side going in (None for the flat layers)
    out_shape: tuple[int, ...]
    formula: str  # "(224 + 2*2 - 11) / 4 + 1 = 55.25 -> 55"
    params: int


@dataclass(frozen=True, eq=False)
class DropoutStep:
    layer: str
    p: float
    values: np.ndarray  # this image's first values of the layer before dropout
    mask: np.ndarray  # one training-time draw: 1 kept, 0 dropped
    train: np.ndarray  # values * mask / (1 - p): the kept ones doubled at p = 0.5
    eval: np.ndarray  # identity at evaluation


@dataclass(frozen=True, eq=False)
class Towers:
    """paper-2gpu: conv1's filters as the two GPUs held them, and which layers read across the towers."""

    filters: tuple[np.ndarray, np.ndarray]  # (48, 3, 11, 11) each
    links: tuple[tuple[str, str], ...]  # (layer, "within each tower" | "across both towers")


@dataclass(frozen=True, eq=False)
class Walkthrough:
    arch: str
    input_size: int
    conv: ConvStep
    relu: ReluStep
    lrn: LrnStep | None  # None for architectures without LRN
    pool: PoolStep
    sizes: tuple[SizeRow, ...]
    input_note: str
    dropout: DropoutStep | None
    towers: Towers | None


def _pair(v: Any) -> int:
    return int(v if isinstance(v, int) else v[0])


def _children(module: nn.Sequential) -> list[tuple[str, nn.Module]]:
    return list(module.named_children())


def size_rows(arch: str, *, input_size: int, num_classes: int = 1000) -> tuple[SizeRow, ...]:
    """Each layer's output size with its arithmetic: floor((n + 2p - k) / s) + 1 for convs and pools,
    checked against the shapes :func:`summarize` measured."""
    rows: list[SizeRow] = []
    side: int | None = input_size
    for row in summarize(arch, num_classes=num_classes, input_size=input_size).layers:
        formula = ""
        if row.kernel and row.stride and row.padding is not None and side is not None:
            k, s, p = row.kernel[0], row.stride[0], row.padding[0]
            exact = (side + 2 * p - k) / s + 1
            pad = f" + 2*{p}" if p else ""
            out = int(np.floor(exact))
            formula = f"({side}{pad} - {k}) / {s} + 1 = {exact:g}" + ("" if exact == out else f" -> {out}")
            if len(row.output_shape) == 3 and row.output_shape[1] != out:  # the measurement is the truth
                raise AssertionError(f"{row.name}: arithmetic {out} != measured {row.output_shape[1]}")
        elif len(row.output_shape) == 3 and side is not None and row.output_shape[1] != side:
            formula = f"adaptive: {side} -> {row.output_shape[1]}"
        elif row.type == "Linear":
            formula = row.config
        elif row.type == "Flatten":
            formula = " x ".join(str(d) for d in _last_3d(rows)) + f" = {row.output_shape[0]}"
        rows.append(SizeRow(row.name, row.type, row.config, side, row.output_shape, formula, row.params))
        side = row.output_shape[1] if len(row.output_shape) == 3 else None
    return tuple(rows)


def _last_3d(rows: list[SizeRow]) -> tuple[int, ...]:
    return next((r.out_shape for r in reversed(rows) if len(r.out_shape) == 3), ())


def _input_note(module: nn.Sequential, input_size: int) -> str:
    conv1 = cast(nn.Conv2d, module.get_submodule("conv1"))
    k, s, p = _pair(conv1.kernel_size), _pair(conv1.stride), _pair(conv1.padding)

    def out(n: int, pad: int) -> float:
        return (n + 2 * pad - k) / s + 1

    if k == 11 and s == 4:
        return (f"The paper says 224x224 inputs and 55x55 conv1 maps, but (224 - 11) / 4 + 1 = {out(224, 0):g}: "
                f"not a whole number. With 227: (227 - 11) / 4 + 1 = {out(227, 0):g}. torchvision keeps 224 and "
                f"pads by 2: (224 + 4 - 11) / 4 + 1 = {out(224, 2):g}, floored to 55. This model: "
                f"({input_size}{f' + 2*{p}' if p else ''} - {k}) / {s} + 1 = {out(input_size, p):g}.")
    return f"conv1: ({input_size}{f' + 2*{p}' if p else ''} - {k}) / {s} + 1 = {out(input_size, p):g}."


def towers(module: nn.Sequential) -> Towers | None:
    """Only for models with grouped convolutions (paper-2gpu)."""
    groups = [m.groups for _, m in _children(module) if isinstance(m, nn.Conv2d)]
    if max(groups, default=1) < 2:
        return None
    w = cast(nn.Conv2d, module.get_submodule("conv1")).weight.detach().cpu().numpy()
    half = w.shape[0] // 2
    links = []
    for name, m in _children(module)[1:]:  # conv1 reads the image, which both towers have
        if isinstance(m, nn.Conv2d):
            links.append((name, "within each tower" if m.groups > 1 else "across both towers"))
        elif isinstance(m, nn.Linear):
            links.append((name, "across both towers"))
    return Towers((w[:half], w[half:]), tuple(links))


def conv1_position(loaded: LoadedModel, row: float, col: float) -> tuple[int, int]:
    """The conv1 unit whose window is centred nearest input pixel (row, col), e.g. a click on the view."""
    conv1 = cast(nn.Conv2d, loaded.module.get_submodule("conv1"))
    k, s, p = _pair(conv1.kernel_size), _pair(conv1.stride), _pair(conv1.padding)
    side = (loaded.input_size + 2 * p - k) // s + 1

    def unit(v: float) -> int:
        return int(min(side - 1, max(0, round((v + p - (k - 1) / 2) / s))))

    return unit(row), unit(col)


def walkthrough(loaded: LoadedModel, image: ImageSource | torch.Tensor, *, channel: int = 0, y: int | None = None,
                x: int | None = None, lock: Any = "model", seed: int = 0) -> Walkthrough:
    """Follow conv1's unit (``y``, ``x``) of ``channel`` (default: the map's centre) through the first block.

    ``image``: a file, bytes or picture (preprocessed here), or the normalised input (1, 3, S, S) itself."""
    module = loaded.module
    names = [n for n, _ in _children(module)]
    conv1 = cast(nn.Conv2d, module.get_submodule("conv1"))
    if not 0 <= channel < conv1.out_channels:
        raise ValueError(f"conv1 has channels 0-{conv1.out_channels - 1}, not {channel}.")
    pool_name = next(n for n, m in _children(module) if isinstance(m, nn.MaxPool2d))
    pool_input = names[names.index(pool_name) - 1]
    relu_name = names[names.index("conv1") + 1]
    lrn_name = next((n for n in names[: names.index(pool_name)] if isinstance(module.get_submodule(n),
                                                                               nn.LocalResponseNorm)), None)
    drop_name = next((n for n, m in _children(module) if isinstance(m, nn.Dropout)), None)
    before_drop = names[names.index(drop_name) - 1] if drop_name else None
    wanted = [n for n in ("conv1", relu_name, lrn_name, pool_input, pool_name, before_drop) if n]

    if isinstance(image, torch.Tensor):  # already the network's input, e.g. Analysis.input: no second resize
        inputs = image.detach().to(loaded.device)
    else:
        pil = image if isinstance(image, Image.Image) else load_image(image)
        inputs = loaded.preprocess(pil.convert("RGB"))  # (1, 3, S, S)
    if lock == "model":
        lock = loaded.lock
    with lock if lock is not None else contextlib.nullcontext(), torch.inference_mode(), \
            capture(module, list(dict.fromkeys(wanted))) as acts:
        module(inputs)
    a = {k: v[0].double().numpy() for k, v in acts.items()}  # (C, h, w) or (D,)
    h, w = a["conv1"].shape[1:]
    y = h // 2 if y is None else y
    x = w // 2 if x is None else x
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"conv1's map is {h}x{w}; ({y}, {x}) is outside it.")

    # conv1: the patch under the filter, zero-padded as the convolution pads it.
    k, s, p = _pair(conv1.kernel_size), _pair(conv1.stride), _pair(conv1.padding)
    padded = np.pad(inputs[0].detach().cpu().double().numpy(), ((0, 0), (p, p), (p, p)))
    patch = padded[:, y * s: y * s + k, x * s: x * s + k]
    filt = conv1.weight[channel].detach().cpu().double().numpy()
    bias = float(conv1.bias[channel]) if conv1.bias is not None else 0.0
    dot = float((patch * filt).sum())
    conv = ConvStep("conv1", channel, y, x, (y * s - p, x * s - p, y * s - p + k, x * s - p + k), patch, filt, bias,
                    dot, dot + bias, float(a["conv1"][channel, y, x]))

    relu_out = a[relu_name]
    relu = ReluStep(relu_name, conv.model_value, float(relu_out[channel, y, x]),
                    int((a["conv1"] < 0).sum()), int(a["conv1"].size))

    lrn = None
    if lrn_name is not None:
        m = cast(nn.LocalResponseNorm, module.get_submodule(lrn_name))
        lo, hi = max(0, channel - m.size // 2), min(relu_out.shape[0] - 1, channel + (m.size - 1) // 2)
        values = relu_out[lo: hi + 1, y, x]
        alpha = m.alpha / m.size  # torch divides alpha by n (Caffe); the paper's alpha is this
        sum_sq = float((values**2).sum())
        denominator = float((m.k + alpha * sum_sq) ** m.beta)
        lrn = LrnStep(lrn_name, channel, float(m.k), m.size, alpha, m.beta, tuple(range(lo, hi + 1)), values,
                      sum_sq, denominator, float(relu_out[channel, y, x]) / denominator,
                      float(a[lrn_name][channel, y, x]))

    pool_m = cast(nn.MaxPool2d, module.get_submodule(pool_name))
    pk, ps = _pair(pool_m.kernel_size), _pair(pool_m.stride or pool_m.kernel_size)
    ph, pw = a[pool_name].shape[1:]
    py, px = min(y // ps, ph - 1), min(x // ps, pw - 1)  # the pool window holding (y, x)
    window = a[pool_input][channel, py * ps: py * ps + pk, px * ps: px * ps + pk]
    arg = np.unravel_index(int(window.argmax()), window.shape)
    pool = PoolStep(pool_name, channel, py, px, (py * ps, py * ps + pk), (px * ps, px * ps + pk), window,
                    float(window.max()), (int(arg[0]), int(arg[1])), float(a[pool_name][channel, py, px]))

    dropout = None
    if drop_name is not None and before_drop is not None:
        dm = cast(nn.Dropout, module.get_submodule(drop_name))
        values = a[before_drop].reshape(-1)[:12]
        gen = torch.Generator().manual_seed(seed)
        mask = (torch.rand(values.shape, generator=gen, dtype=torch.float64) >= dm.p).numpy().astype(np.float64)
        dropout = DropoutStep(drop_name, dm.p, values, mask, values * mask / (1 - dm.p), values.copy())

    return Walkthrough(
        arch=loaded.arch, input_size=loaded.input_size, conv=conv, relu=relu, lrn=lrn, pool=pool,
        sizes=size_rows(loaded.arch, input_size=loaded.input_size, num_classes=loaded.num_classes),
        input_note=_input_note(module, loaded.input_size), dropout=dropout, towers=towers(module),
    )
