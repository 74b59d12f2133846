"""The architecture table against published parameter counts and layer shapes, torchvision's meta, real models."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from alexnet_viz.architectures import ARCHITECTURES, build_model
from alexnet_viz.summary import LayerRow, Summary, format_table, summarize

# (arch, num_classes) -> trainable parameters, as published (see tests/test_architectures.py).
TRAINABLE = {
    ("torchvision", 1000): 61_100_840,
    ("paper", 1000): 62_378_344,
    ("paper-2gpu", 1000): 60_965_224,
    ("bn", 24): 46_846_040,  # the Keras BatchNorm variant's summary
}
TV_META = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta


def row(summary: Summary, name: str) -> LayerRow:
    return next(r for r in summary.layers if r.name == name)


@pytest.mark.parametrize(("arch", "num_classes"), list(TRAINABLE))
def test_trainable_parameters_match_the_published_ones(arch: str, num_classes: int) -> None:
    s = summarize(arch, num_classes=num_classes)
    assert s.trainable_params == TRAINABLE[arch, num_classes]
    assert sum(r.params for r in s.layers) == s.trainable_params
    assert s.num_classes == num_classes
    assert s.input_size == ARCHITECTURES[arch].input_size


def test_bn_counts_running_statistics_as_non_trainable_like_keras() -> None:
    s = summarize("bn", num_classes=24)
    assert s.non_trainable == 704  # running mean + var of 96 + 256 channels; not num_batches_tracked
    assert s.total_params == 46_846_744  # the Keras summary's "Total params"
    assert row(s, "bn1").buffers == 2 * 96 and row(s, "bn2").buffers == 2 * 256
    assert row(s, "bn1").params == 2 * 96  # gamma and beta are trained


def test_torchvision_matches_torchvisions_own_metadata() -> None:
    s = summarize("torchvision", input_size=224)
    assert s.trainable_params == TV_META["num_params"]
    # torchvision's "GFLOPS" field counts multiply-accumulates (0.714 for AlexNet).
    assert s.macs / 1e9 == pytest.approx(TV_META["_ops"], rel=0.01)


def test_torchvision_minimum_size_matches_its_metadata() -> None:
    side = TV_META["min_size"][0]  # 63
    assert summarize("torchvision", input_size=side).layers[-1].output_shape == (1000,)
    too_small = rf"^torchvision needs an input of at least {side}x{side} .*; got 32\.$"
    with pytest.raises(ValueError, match=too_small):
        summarize("torchvision", input_size=32)
    with pytest.raises(ValueError, match=f"at least {side}x{side}"):
        summarize("torchvision", input_size=side - 1)


def test_torchvision_takes_larger_inputs_through_its_adaptive_pool() -> None:
    s = summarize("torchvision", input_size=320)
    assert row(s, "pool5").output_shape == (256, 9, 9)
    assert row(s, "avgpool").output_shape == (256, 6, 6)
    assert s.trainable_params == 61_100_840
    assert s.macs > summarize("torchvision").macs


@pytest.mark.parametrize(
    ("arch", "shapes"),
    [
        # the paper's layer sizes on a 227x227 input (55, 27, 13, 6)
        ("paper", {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "pool2": (256, 13, 13),
                   "pool5": (256, 6, 6)}),
        ("paper-2gpu", {"conv1": (96, 55, 55), "pool5": (256, 6, 6)}),
        # the Keras BatchNorm variant: unpadded conv1 on 224
        ("bn", {"conv1": (96, 54, 54), "pool1": (96, 26, 26), "pool5": (256, 5, 5), "flatten": (6400,)}),
        ("torchvision", {"conv1": (64, 55, 55), "pool5": (256, 6, 6), "flatten": (9216,), "fc8": (1000,)}),
    ],
)
def test_output_shapes_match_the_seed_tables(arch: str, shapes: dict[str, tuple[int, ...]]) -> None:
    s = summarize(arch)
    for name, shape in shapes.items():
        assert row(s, name).output_shape == shape, name


def test_conv1_macs_match_a_hand_count() -> None:
    conv1 = row(summarize("torchvision"), "conv1")
    assert conv1.macs == 55 * 55 * 64 * (3 * 11 * 11) == 70_276_800
    assert (conv1.kernel, conv1.stride, conv1.padding, conv1.groups) == ((11, 11), (4, 4), (2, 2), 1)
    assert conv1.config == "64@11x11 /4 pad 2"


def test_fc6_macs_match_a_hand_count() -> None:
    assert row(summarize("torchvision"), "fc6").macs == 9216 * 4096


def test_two_gpu_grouping_halves_the_grouped_convolutions() -> None:
    one, two = summarize("paper"), summarize("paper-2gpu")
    for name in ("conv2", "conv4", "conv5"):
        assert 2 * row(two, name).macs == row(one, name).macs, name
        assert row(two, name).groups == 2
    assert row(two, "conv2").config == "256@5x5 pad 2 groups 2"
    assert row(two, "conv3").macs == row(one, "conv3").macs  # conv3 reads both towers


def test_only_convolutions_and_linear_layers_count_macs() -> None:
    s = summarize("paper")
    for r in s.layers:
        assert (r.macs > 0) == (r.type in ("Conv2d", "Linear")), r.name


@pytest.mark.parametrize(("arch", "num_classes"), list(TRAINABLE))
def test_shares_sum_to_one_and_layers_sum_to_totals(arch: str, num_classes: int) -> None:
    s = summarize(arch, num_classes=num_classes)
    assert sum(r.param_share for r in s.layers) == pytest.approx(1.0)
    assert sum(r.mac_share for r in s.layers) == pytest.approx(1.0)
    assert sum(r.macs for r in s.layers) == s.macs
    assert sum(r.buffers for r in s.layers) == s.non_trainable


def test_convolutions_hold_few_parameters_but_most_compute() -> None:
    s = summarize("torchvision")
    params, macs = s.conv_share()
    conv_params = 23_296 + 307_392 + 663_936 + 884_992 + 590_080  # torchvision's `features`: 2,469,696
    assert params == pytest.approx(conv_params / 61_100_840)  # 4.0%
    assert params < 0.05
    assert macs > 0.9  # 91.8%: the FC layers hold the parameters, the convolutions do the work


@pytest.mark.parametrize(("arch", "num_classes"), list(TRAINABLE))
def test_layer_rows_match_a_real_model(arch: str, num_classes: int) -> None:
    real = build_model(arch, num_classes=num_classes)
    s = summarize(arch, num_classes=num_classes)
    assert [r.name for r in s.layers] == [name for name, _ in real.named_children()]
    for r, (_, module) in zip(s.layers, real.named_children(), strict=True):
        assert r.params == sum(p.numel() for p in module.parameters()), r.name
        assert r.type == type(module).__name__


def test_a_real_cpu_model_gives_the_meta_devices_numbers() -> None:
    meta = summarize("paper-2gpu")
    real = summarize("paper-2gpu", model=build_model("paper-2gpu"))
    assert real == meta


def test_a_nested_torchvision_alexnet_is_summarized_by_its_leaves() -> None:
    with torch.device("meta"):
        theirs = torchvision.models.AlexNet()
    s = summarize("torchvision", model=theirs)
    ours = summarize("torchvision")
    assert [r.name for r in s.layers][:2] == ["features.0", "features.1"]
    assert s.macs == ours.macs == 714_188_480
    assert s.trainable_params == ours.trainable_params
    assert [r.macs for r in s.layers if r.macs] == [r.macs for r in ours.layers if r.macs]


def test_a_given_model_keeps_its_mode_statistics_and_no_hooks() -> None:
    model = build_model("bn", num_classes=24).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize("bn", model=model)
    assert all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(m._forward_hooks for m in model.modules())


def test_a_failed_probe_leaves_no_hooks() -> None:
    model = build_model("torchvision")
    with pytest.raises(ValueError, match="at least 63x63"):
        summarize("torchvision", model=model, input_size=40)
    assert not any(m._forward_hooks for m in model.modules())
    assert not model.training


@pytest.mark.parametrize(
    ("arch", "size", "message"),
    [
        ("paper", 200, "paper needs a 227x227 input (its fc6 expects 256x6x6); got 200."),
        ("paper", 32, "paper needs a 227x227 input (its fc6 expects 256x6x6); got 32."),
        ("paper-2gpu", 228, "paper-2gpu needs a 227x227 input (its fc6 expects 256x6x6); got 228."),
        ("bn", 227, "bn needs a 224x224 input (its fc6 expects 256x5x5); got 227."),
    ],
)
def test_fixed_size_architectures_reject_other_sizes(arch: str, size: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        summarize(arch, input_size=size)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "kwargs",
    [{"arch": "vgg16"}, {"num_classes": 0}, {"input_size": 0}, {"arch": "mine", "model": nn.Identity()}],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        summarize(**kwargs)


def test_summaries_are_cached_per_arch_classes_and_size() -> None:
    assert summarize("torchvision") is summarize("torchvision", input_size=224, num_classes=1000)
    assert summarize("torchvision", num_classes=10) is not summarize("torchvision")
    assert summarize("torchvision", num_classes=10).layers[-1].output_shape == (10,)


def test_to_dict_is_json_ready() -> None:
    data = json.loads(json.dumps(summarize("bn", num_classes=24).to_dict()))
    assert data["total_params"] == 46_846_744
    assert data["trainable_params"] == 46_846_040
    assert data["non_trainable"] == 704
    assert data["macs"] == summarize("bn", num_classes=24).macs
    conv1 = data["layers"][0]
    assert conv1["name"] == "conv1" and conv1["type"] == "Conv2d"
    assert conv1["output_shape"] == [96, 54, 54]
    assert conv1["kernel"] == [11, 11] and conv1["padding"] == [0, 0]
    assert {"params", "macs", "buffers", "config", "param_share", "mac_share"} <= conv1.keys()
    assert 0 < data["conv_param_share"] < data["conv_mac_share"] < 1


def test_format_table_shows_every_layer_the_totals_and_the_conv_claim() -> None:
    s = summarize("torchvision")
    text = format_table(s)
    lines = text.splitlines()
    assert "conv layers: 4.0% of parameters, 91.8% of compute" in lines
    assert "total params: 61,100,840 (trainable 61,100,840, non-trainable 0)" in lines
    assert any(line.startswith("total MACs: 714,188,480 (0.714 G") for line in lines)
    rows = [line for line in lines if line.split(" ", 1)[0] in {r.name for r in s.layers}]
    assert len(rows) == len(s.layers)
    # Right-aligned numbers: every row's parameter count ends in the same column as the header's.
    header = next(line for line in lines if line.startswith("layer"))
    end = header.index("params") + len("params")
    for line, r in zip(rows, s.layers, strict=True):
        assert line[:end].endswith(f"{r.params:,}"), line
    assert "64@11x11 /4 pad 2" in rows[0] and "64x55x55" in rows[0]
