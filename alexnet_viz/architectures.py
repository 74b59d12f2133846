"""AlexNet and its common variants (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks"), as flat ``nn.Sequential`` models with human layer names.

Every builder returns ``nn.Sequential(OrderedDict(conv1=..., relu1=..., ..., fc8=...))``, so
``model.conv5`` is the fifth convolution everywhere: in hooks, Captum layer methods, the summary
table, file names, the UI and the CLI. All ReLUs are out-of-place: forward hooks and Captum's
ReLU-overriding methods (guided backprop, deconvolution, DeepLift) need to see untouched tensors.

The ``torchvision`` architecture has exactly the modules of ``torchvision.models.AlexNet`` in the same
order; :func:`torchvision_key_map` translates its state-dict keys (``features.0.weight``) to ours
(``conv1.weight``), derived from torchvision's own module, not typed by hand.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "build_model",
    "conv_layer_names",
    "torchvision_key_map",
    "visible_layer_names",
]


def _relu() -> nn.ReLU:
    return nn.ReLU(inplace=False)


def _lrn() -> nn.LocalResponseNorm:
    # The paper (section 3.3) uses b = a / (k + alpha * sum(a^2))^beta with k=2, n=5, alpha=1e-4, beta=0.75.
    # torch divides alpha by `size` (Caffe's convention), so pass size * alpha to get the paper's.
    size = 5
    return nn.LocalResponseNorm(size=size, alpha=size * 1e-4, beta=0.75, k=2.0)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2)  # overlapping pooling: window 3 > stride 2


def _classifier(in_features: int, num_classes: int, *, dropout_first: bool) -> list[tuple[str, nn.Module]]:
    """fc6-fc7-fc8 with dropout 0.5; torchvision puts dropout before each FC, Keras/paper after."""
    if dropout_first:  # torchvision: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
        return [
            ("drop6", nn.Dropout(0.5)), ("fc6", nn.Linear(in_features, 4096)), ("relu6", _relu()),
            ("drop7", nn.Dropout(0.5)), ("fc7", nn.Linear(4096, 4096)), ("relu7", _relu()),
            ("fc8", nn.Linear(4096, num_classes)),
        ]
    return [
        ("fc6", nn.Linear(in_features, 4096)), ("relu6", _relu()), ("drop6", nn.Dropout(0.5)),
        ("fc7", nn.Linear(4096, 4096)), ("relu7", _relu()), ("drop7", nn.Dropout(0.5)),
        ("fc8", nn.Linear(4096, num_classes)),
    ]


def _torchvision(num_classes: int) -> list[tuple[str, nn.Module]]:
    # torchvision.models.AlexNet (the "one weird trick" single-tower variant): 64-192-384-256-256.
    return [
        ("conv1", nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2)), ("relu1", _relu()),
        ("pool1", _pool()),
        ("conv2", nn.Conv2d(64, 192, kernel_size=5, padding=2)), ("relu2", _relu()),
        ("pool2", _pool()),
        ("conv3", nn.Conv2d(192, 384, kernel_size=3, padding=1)), ("relu3", _relu()),
        ("conv4", nn.Conv2d(384, 256, kernel_size=3, padding=1)), ("relu4", _relu()),
        ("conv5", nn.Conv2d(256, 256, kernel_size=3, padding=1)), ("relu5", _relu()),
        ("pool5", _pool()),
        ("avgpool", nn.AdaptiveAvgPool2d((6, 6))),
        ("flatten", nn.Flatten(1)),
        *_classifier(256 * 6 * 6, num_classes, dropout_first=True),
    ]


def _paper(num_classes: int, *, groups: int = 1) -> list[tuple[str, nn.Module]]:
    # Krizhevsky et al. 2012 on a 227x227 input (the paper's "224" does not divide out): 55 -> 27 -> 13 -> 6.
    # groups=2 splits conv2, conv4 and conv5 as on the paper's two GPUs (its figure 2); conv3 and the
    # FC layers read both towers, as in the paper.
    return [
        ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)), ("relu1", _relu()), ("lrn1", _lrn()),
        ("pool1", _pool()),
        ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups)), ("relu2", _relu()),
        ("lrn2", _lrn()), ("pool2", _pool()),
        ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)), ("relu3", _relu()),
        ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups)), ("relu4", _relu()),
        ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups)), ("relu5", _relu()),
        ("pool5", _pool()),
        ("flatten", nn.Flatten(1)),
        *_classifier(256 * 6 * 6, num_classes, dropout_first=False),
    ]


def _bn(num_classes: int) -> list[tuple[str, nn.Module]]:
    # The common Keras re-implementation: BatchNorm after the ReLU of conv1 and conv2 instead of LRN, 224
    # input, unpadded first conv: 54 -> 26 -> 12 -> 5. Keras' BatchNormalization defaults are
    # momentum 0.99 (torch: 1 - 0.99) and epsilon 1e-3.
    def bn(channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)

    return [
        ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)), ("relu1", _relu()), ("bn1", bn(96)),
        ("pool1", _pool()),
        ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2)), ("relu2", _relu()), ("bn2", bn(256)),
        ("pool2", _pool()),
        ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)), ("relu3", _relu()),
        ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1)), ("relu4", _relu()),
        ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1)), ("relu5", _relu()),
        ("pool5", _pool()),
        ("flatten", nn.Flatten(1)),
        *_classifier(256 * 5 * 5, num_classes, dropout_first=False),
    ]


def _cifar(num_classes: int) -> list[tuple[str, nn.Module]]:
    # For 32x32 images (CIFAR-10, Fashion-MNIST padded to 32) an 11x11 stride-4 first conv would leave
    # almost nothing, so conv1 is 3x3 stride 1. The widths are torchvision's halved (32-96-192-128-128) and
    # the FC layers 512 wide, so the network trains in minutes on two CPU cores: 32 -> 15 -> 7 -> 3 with the
    # same overlapping pooling.
    return [
        ("conv1", nn.Conv2d(3, 32, kernel_size=3, padding=1)), ("relu1", _relu()),
        ("pool1", _pool()),
        ("conv2", nn.Conv2d(32, 96, kernel_size=5, padding=2)), ("relu2", _relu()),
        ("pool2", _pool()),
        ("conv3", nn.Conv2d(96, 192, kernel_size=3, padding=1)), ("relu3", _relu()),
        ("conv4", nn.Conv2d(192, 128, kernel_size=3, padding=1)), ("relu4", _relu()),
        ("conv5", nn.Conv2d(128, 128, kernel_size=3, padding=1)), ("relu5", _relu()),
        ("pool5", _pool()),
        ("flatten", nn.Flatten(1)),
        ("drop6", nn.Dropout(0.5)), ("fc6", nn.Linear(128 * 3 * 3, 512)), ("relu6", _relu()),
        ("drop7", nn.Dropout(0.5)), ("fc7", nn.Linear(512, 512)), ("relu7", _relu()),
        ("fc8", nn.Linear(512, num_classes)),
    ]


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to build it and what it expects."""

    name: str
    title: str
    input_size: int  # side of the square input the FC layers were sized for
    layers: Callable[[int], list[tuple[str, nn.Module]]]
    has_imagenet_weights: bool = False


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("torchvision", "torchvision AlexNet (64-192-384-256-256)", 224, _torchvision,
                 has_imagenet_weights=True),
        ArchSpec("paper", "AlexNet 2012, one tower, LRN (96-256-384-384-256)", 227, _paper),
        ArchSpec("paper-2gpu", "AlexNet 2012, two-GPU grouped conv2/4/5", 227,
                 lambda n: _paper(n, groups=2)),
        ArchSpec("bn", "AlexNet with BatchNorm instead of LRN, 224 input", 224, _bn),
        ArchSpec("cifar", "small-input AlexNet for 32x32 images (3x3 stride-1 conv1)", 32, _cifar),
    )
}


def _init_weights(model: nn.Module) -> None:
    """Kaiming normal (fan_out, ReLU) for convs (He et al. 2015), so every variant trains from scratch without
    the paper's per-layer bias tuning; N(0, 0.01) for linears, the paper's initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(arch: str = "torchvision", *, num_classes: int = 1000, seed: int | None = 0) -> nn.Sequential:
    """Build architecture ``arch`` with seeded initial weights, in eval mode.

    ``seed=None`` leaves torch's global RNG in charge; any int gives the same weights on every call
    without disturbing the caller's RNG state.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}.")
    spec = ARCHITECTURES[arch]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = nn.Sequential(OrderedDict(spec.layers(num_classes)))
        _init_weights(model)
    return model.eval()


def visible_layer_names(model: nn.Sequential) -> list[str]:
    """Layers whose outputs are worth showing: all but flatten and dropout (identity at eval)."""
    return [name for name, m in model.named_children() if not isinstance(m, nn.Flatten | nn.Dropout)]


def conv_layer_names(model: nn.Sequential) -> list[str]:
    return [name for name, m in model.named_children() if isinstance(m, nn.Conv2d)]


@cache
def torchvision_key_map() -> dict[str, str]:
    """``features.0.weight`` -> ``conv1.weight``, etc., read off torchvision's own AlexNet."""
    from torchvision.models import AlexNet

    with torch.device("meta"):  # no memory, no init cost
        theirs = AlexNet()
        ours = build_model("torchvision", seed=None)
    their_keys = list(theirs.state_dict())
    our_keys = list(ours.state_dict())
    return dict(zip(their_keys, our_keys, strict=True))
