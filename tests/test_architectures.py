"""The AlexNet variants: counts, shapes, names, initialisation, and torchvision's forward as an oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from alexnet_viz.architectures import (
    ARCHITECTURES,
    build_model,
    conv_layer_names,
    torchvision_key_map,
    visible_layer_names,
)

# (arch, num_classes) -> trainable parameters: torchvision's meta ("num_params"), the paper's "60 million" for the
# two-tower net, the one-tower count often quoted as "62.3 million", and a common Keras BatchNorm variant's summary.
PARAMS = {
    ("torchvision", 1000): 61_100_840,
    ("paper", 1000): 62_378_344,  # the often-quoted "62.3 million"
    ("paper-2gpu", 1000): 60_965_224,
    ("bn", 24): 46_846_040,  # the Keras BatchNorm variant's summary: trainable params
}


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("arch", "num_classes"), list(PARAMS))
def test_parameter_counts_match_the_published_ones(arch: str, num_classes: int) -> None:
    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes, seed=None)
    assert trainable(model) == PARAMS[arch, num_classes]


def test_bn_running_statistics_complete_the_keras_total() -> None:
    model = build_model("bn", num_classes=24)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert stats == 704
    assert trainable(model) + stats == 46_846_744  # Keras' "Total params"
    bn1 = model.bn1
    assert isinstance(bn1, nn.BatchNorm2d) and bn1.eps == pytest.approx(1e-3) and bn1.momentum == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("arch", "shapes"),
    [
        ("paper", {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "pool2": (256, 13, 13), "pool5": (256, 6, 6)}),
        ("paper-2gpu", {"conv2": (256, 27, 27), "conv5": (256, 13, 13), "pool5": (256, 6, 6)}),
        ("bn", {"conv1": (96, 54, 54), "pool1": (96, 26, 26), "pool2": (256, 12, 12), "pool5": (256, 5, 5)}),
        ("torchvision", {"conv1": (64, 55, 55), "pool2": (192, 13, 13), "avgpool": (256, 6, 6)}),
    ],
)
def test_output_shapes_follow_seed_tables(arch: str, shapes: dict[str, tuple[int, ...]]) -> None:
    model = build_model(arch)
    size = ARCHITECTURES[arch].input_size
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, tuple(o.shape[1:])))
        for n in shapes
    ]
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    assert seen == shapes
    assert out.shape == (1, 1000)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_human_layer_names_and_out_of_place_relus(arch: str) -> None:
    model = build_model(arch)
    names = [n for n, _ in model.named_children()]
    assert conv_layer_names(model) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [n for n in names if n.startswith("fc")] == ["fc6", "fc7", "fc8"]
    assert [n for n in names if n.startswith("relu")] == [f"relu{i}" for i in range(1, 8)]
    norm = {"paper": "lrn", "paper-2gpu": "lrn", "bn": "bn"}.get(arch)
    if norm:  # after the first two ReLUs, before pooling
        assert names.index(f"{norm}1") == names.index("relu1") + 1
        assert names.index(f"{norm}2") == names.index("relu2") + 1
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert all(not r.inplace for r in relus)
    assert len({id(r) for r in relus}) == 7  # one ReLU module per position (DeepLift needs that)
    assert "flatten" not in visible_layer_names(model) and "fc8" in visible_layer_names(model)


def test_two_gpu_split_groups_conv2_4_5_only() -> None:
    model = build_model("paper-2gpu")
    assert {n: m.groups for n, m in model.named_children() if isinstance(m, nn.Conv2d)} == {
        "conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2,
    }


def test_lrn_is_the_papers_formula() -> None:
    # b_i = a_i / (k + alpha * sum_{j in window of 5 around i} a_j^2) ** beta, alpha = 1e-4, k = 2, beta = 0.75
    lrn = build_model("paper").lrn1
    a = torch.arange(1.0, 8.0).view(1, 7, 1, 1) * 10  # 7 channels: 10, 20, ..., 70
    got = lrn(a).flatten()
    for i in range(7):
        window = a.flatten()[max(0, i - 2): min(7, i + 3)]
        expected = a.flatten()[i] / (2 + 1e-4 * (window**2).sum()) ** 0.75
        assert got[i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_seeded_initialisation_is_reproducible_and_kaiming_for_convs() -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_model("paper", seed=0), build_model("paper", seed=0), build_model("paper", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    assert torch.equal(a.conv3.weight, b.conv3.weight) and not torch.equal(a.conv3.weight, c.conv3.weight)
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k))
    assert a.conv3.weight.std().item() == pytest.approx(math.sqrt(2 / (384 * 9)), rel=0.02)
    assert a.fc6.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert a.fc6.bias.abs().sum().item() == 0 and a.conv1.bias.abs().sum().item() == 0


def test_torchvision_arch_computes_exactly_what_torchvision_computes() -> None:
    torch.manual_seed(3)
    theirs = torchvision.models.alexnet(weights=None).eval()
    ours = build_model("torchvision")
    ours.load_state_dict({torchvision_key_map()[k]: v for k, v in theirs.state_dict().items()})
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6, rtol=1e-5)


def test_unknown_architecture_and_bad_class_count_are_clear() -> None:
    with pytest.raises(ValueError, match="Unknown architecture 'vgg'"):
        build_model("vgg")
    with pytest.raises(ValueError, match="at least 1"):
        build_model("paper", num_classes=0)


def test_architectures_are_described_in_their_own_words() -> None:
    import inspect

    from alexnet_viz import architectures

    for spec in ARCHITECTURES.values():
        assert spec.title and "seed" not in spec.title.lower(), spec.title
    source = inspect.getsource(architectures).lower()
    assert "seed document" not in source and not any(f"seed 00{i}" in source for i in range(10))
    assert "krizhevsky et al. 2012" in source
