"""Per-layer architecture table: output shape, parameters and multiply-accumulates of every layer.

The numbers are measured, not hand-derived: one forward pass of a ``(1, 3, S, S)`` input on the
``meta`` device (shapes only, no memory, no arithmetic) under ``torch.utils.flop_counter``, with
forward hooks recording each layer's output shape. MACs are FlopCounterMode's FLOPs halved, so they
cover convolutions and linear layers only - the convention of torchvision's own ``_ops`` metadata;
ReLU, pooling, LRN and BatchNorm are cheap elementwise work and count as 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .architectures import ARCHITECTURES, build_model

__all__ = ["LayerRow", "Summary", "format_table", "summarize"]

Pair = tuple[int, int]


@dataclass(frozen=True)
class LayerRow:
    """One layer of the table; shapes exclude the batch dimension."""

    name: str  # "conv1"
    type: str  # the module's class name: "Conv2d", "ReLU", "MaxPool2d", ...
    config: str  # human-readable settings: "64@11x11 /4 pad 2", "3x3 /2", "9216 -> 4096", ""
    kernel: Pair | None
    stride: Pair | None
    padding: Pair | None
    groups: int | None
    output_shape: tuple[int, ...]  # (64, 55, 55)
    params: int  # learned parameters (weights and biases)
    buffers: int  # state that is not learned by gradient descent: BatchNorm running mean/var
    macs: int  # multiply-accumulates for one image
    param_share: float  # of all the layers' params
    mac_share: float  # of all the layers' MACs


@dataclass(frozen=True)
class Summary:
    """The table for one architecture at one input size, with Keras-style totals."""

    arch: str
    input_size: int
    num_classes: int
    layers: tuple[LayerRow, ...]
    total_params: int  # trainable + non-trainable, as Keras' "Total params"
    trainable_params: int
    non_trainable: int  # frozen parameters + buffers (BatchNorm running statistics)
    macs: int

    def conv_share(self) -> tuple[float, float]:
        """(share of parameters, share of MACs) held by the convolution layers."""
        convs = [row for row in self.layers if row.type.startswith("Conv")]
        return sum(r.param_share for r in convs), sum(r.mac_share for r in convs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists, and the conv shares are included."""
        data = asdict(self)
        data["layers"] = [
            {key: list(value) if isinstance(value, tuple) else value for key, value in row.items()}
            for row in data["layers"]
        ]
        data["conv_param_share"], data["conv_mac_share"] = self.conv_share()
        return data


def summarize(
    arch: str = "torchvision",
    *,
    num_classes: int = 1000,
    input_size: int | None = None,
    model: nn.Module | None = None,
) -> Summary:
    """Measure every layer of ``arch`` (or of ``model``, labelled ``arch``) on a square input.

    ``input_size`` defaults to the architecture's native side. Without ``model`` the result is
    cached per (arch, num_classes, input_size). With ``model`` its own layers are measured on its
    own device (briefly in eval mode, so BatchNorm statistics are untouched) and ``num_classes`` is
    read off its output. Raises ValueError, with one sentence, for an input the model cannot take.
    """
    spec = ARCHITECTURES.get(arch)
    if spec is None and model is None:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}.")
    if input_size is None:
        if spec is None:
            raise ValueError(f"{arch!r} is not a known architecture; pass input_size to summarize it.")
        input_size = spec.input_size
    if input_size < 1:
        raise ValueError(f"The input size must be a positive number of pixels, not {input_size}.")
    if model is None:
        return _summarize_arch(arch, num_classes, input_size)
    return _summarize_model(model, label=arch, input_size=input_size,
                            native=spec.input_size if spec else None)


@cache  # the UI asks on every page view; a Summary is frozen, so sharing it is safe
def _summarize_arch(arch: str, num_classes: int, input_size: int) -> Summary:
    with torch.device("meta"):  # shapes and FLOPs need no weights: no memory, no arithmetic
        model = build_model(arch, num_classes=num_classes, seed=None)
    return _summarize_model(model, label=arch, input_size=input_size,
                            native=ARCHITECTURES[arch].input_size)


def _summarize_model(model: nn.Module, *, label: str, input_size: int, native: int | None) -> Summary:
    layers = _layers(model)
    adaptive = any(isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) for _, m in layers)
    if not adaptive and native is not None and input_size != native:
        # Sizes a few pixels off the native one may still run (227-230 all give 55x55 after conv1),
        # but only the native size is the architecture as published.
        raise _size_error(model, label=label, input_size=input_size, native=native, adaptive=False)

    shapes: dict[str, tuple[int, ...]] = {}
    x = _input(model, input_size)
    # The first FlopCounterMode of a process imports torch._dynamo (about 1 s); later ones are fast.
    counter = FlopCounterMode(display=False)
    try:
        with _eval_mode(model), _record_shapes(layers, shapes), torch.no_grad(), counter:
            out = model(x)
    except RuntimeError as err:
        raise _size_error(model, label=label, input_size=input_size, native=native,
                          adaptive=adaptive) from err

    # FlopCounterMode names modules by the root's class name plus the FQN: "Sequential.conv1".
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    macs = {name: sum(counts.get(f"{prefix}.{name}", {}).values()) // 2 for name, _ in layers}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in layers}
    total_macs = sum(macs.values())
    total_layer_params = sum(params.values())

    rows = tuple(
        LayerRow(
            name=name,
            type=type(m).__name__,
            config=_config(m),
            kernel=_pair(getattr(m, "kernel_size", None)),
            stride=_pair(getattr(m, "stride", None)),
            padding=_pair(getattr(m, "padding", None)),
            groups=getattr(m, "groups", None),
            output_shape=shapes.get(name, ()),
            params=params[name],
            buffers=_buffer_count(m),
            macs=macs[name],
            param_share=params[name] / total_layer_params if total_layer_params else 0.0,
            mac_share=macs[name] / total_macs if total_macs else 0.0,
        )
        for name, m in layers
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    buffers = _buffer_count(model)
    return Summary(
        arch=label,
        input_size=input_size,
        num_classes=out.shape[-1],
        layers=rows,
        total_params=trainable + frozen + buffers,
        trainable_params=trainable,
        non_trainable=frozen + buffers,
        macs=total_macs,
    )


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that compute: our flat Sequential's children, or any model's leaves."""
    return [(name, m) for name, m in model.named_modules() if name and not any(m.children())]


def _input(model: nn.Module, size: int) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    return torch.zeros(1, 3, size, size, device=device, dtype=dtype)  # (B, C, H, W)


def _buffer_count(module: nn.Module) -> int:
    # num_batches_tracked is a bookkeeping counter, not model state (Keras has no such weight).
    return sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the probe, so a train-mode BatchNorm does not update its running statistics."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def _record_shapes(layers: list[tuple[str, nn.Module]], shapes: dict[str, tuple[int, ...]]) -> Iterator[None]:
    """Forward hooks writing each layer's output shape (batch dimension dropped) into ``shapes``."""

    def hook(name: str) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape[1:])

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _runs(model: nn.Module, size: int) -> bool:
    try:
        with _eval_mode(model), torch.no_grad():
            model(_input(model, size))
    except RuntimeError:
        return False
    return True


def _size_error(model: nn.Module, *, label: str, input_size: int, native: int | None,
                adaptive: bool) -> ValueError:
    """One sentence on what input ``model`` needs, worked out by probing it."""
    got = f"got {input_size}"
    if native is None or not _runs(model, native):
        return ValueError(f"{label} cannot take a {input_size}x{input_size} input.")
    if adaptive:
        # The output size of every conv and pool grows with the input, so "it runs" is monotone in
        # the size: bisect for the smallest size that runs.
        lo, hi = 1, native
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _runs(model, mid) else (mid + 1, hi)
        return ValueError(f"{label} needs an input of at least {lo}x{lo} "
                          f"(smaller maps shrink to nothing before the classifier); {got}.")
    # Fixed flatten size: name the first Linear layer and the feature map it was sized for.
    layers = _layers(model)
    fc = next(((n, m) for n, m in layers if isinstance(m, nn.Linear)), None)
    flat = next((m for _, m in layers if isinstance(m, nn.Flatten)), None)
    if fc is None:
        return ValueError(f"{label} needs a {native}x{native} input; {got}.")
    expects: list[tuple[int, ...]] = [(fc[1].in_features,)]
    if flat is not None:
        def record(_module: nn.Module, inputs: Any, _output: Any) -> None:
            expects.append(tuple(inputs[0].shape[1:]))  # (C, H, W) before flattening

        handle = flat.register_forward_hook(record)
        try:
            _runs(model, native)
        finally:
            handle.remove()
    shape = "x".join(str(d) for d in expects[-1])
    return ValueError(f"{label} needs a {native}x{native} input (its {fc[0]} expects {shape}); {got}.")


def _pair(value: object) -> Pair | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    return None  # absent, or padding="same"


def _side(pair: Pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _config(m: nn.Module) -> str:
    """Settings a student reads as the layer's definition; defaults (stride 1, pad 0) left out."""
    if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        kernel, stride, padding = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
        parts = [f"{kernel[0]}x{kernel[1]}" if kernel else "?"]
        if isinstance(m, nn.Conv2d):
            parts[0] = f"{m.out_channels}@{parts[0]}"
        if stride and stride != (1, 1):
            parts.append(f"/{_side(stride)}")
        if padding and padding != (0, 0):
            parts.append(f"pad {_side(padding)}")
        elif isinstance(m, nn.Conv2d) and isinstance(m.padding, str):
            parts.append(f"pad {m.padding}")
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            parts.append(f"groups {m.groups}")
        return " ".join(parts)
    if isinstance(m, nn.Linear):
        return f"{m.in_features} -> {m.out_features}"
    if isinstance(m, nn.LocalResponseNorm):
        return f"size {m.size}"
    if isinstance(m, nn.BatchNorm2d):
        return f"{m.num_features} channels"
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        out = m.output_size
        return "to " + ("x".join(str(s) for s in out) if isinstance(out, tuple) else f"{out}x{out}")
    if isinstance(m, nn.Dropout):
        return f"p {m.p:g}"
    return ""


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _share_cell(share: float) -> str:
    if not share:
        return ""  # blank, not "0.0%", for the many layers with none
    return "<0.1%" if share < 0.0005 else _percent(share)  # conv1 holds 0.04%, not nothing


def format_table(summary: Summary) -> str:
    """An aligned plain-text table for the terminal, with totals and the conv-layer shares."""
    header = ("layer", "type", "config", "output", "params", "%", "MACs", "%")
    body = [
        (
            row.name,
            row.type,
            row.config,
            "x".join(str(d) for d in row.output_shape),
            f"{row.params:,}",
            _share_cell(row.param_share),
            f"{row.macs:,}",
            _share_cell(row.mac_share),
        )
        for row in summary.layers
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    numeric = {4, 5, 6, 7}  # right-align numbers so their digits line up

    def line(cells: tuple[str, ...]) -> str:
        cols = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in cols).rstrip()

    rule = "-" * len(line(header))
    conv_params, conv_macs = summary.conv_share()
    spec = ARCHITECTURES.get(summary.arch)
    size = summary.input_size
    return "\n".join([
        f"{summary.arch} - {spec.title}" if spec else summary.arch,
        f"input {size}x{size}, {summary.num_classes:,} classes",
        rule,
        line(header),
        rule,
        *(line(cells) for cells in body),
        rule,
        f"total params: {summary.total_params:,} (trainable {summary.trainable_params:,}, "
        f"non-trainable {summary.non_trainable:,})",
        f"total MACs: {summary.macs:,} ({summary.macs / 1e9:.3f} G per image, conv and linear layers)",
        f"conv layers: {_percent(conv_params)} of parameters, {_percent(conv_macs)} of compute",
    ])
