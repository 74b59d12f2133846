"""Weights: files of every accepted layout, refusals with named keys, pickles that run code, the hub cache."""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from alexnet_viz import weights as W
from alexnet_viz.model import load_model
from alexnet_viz.weights import ImageNet, Untrained, WeightsError, WeightsFile, load_state_dict_file, parse_source


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return torchvision.models.alexnet(weights=None).state_dict()


def test_torchvision_state_dict_file_loads_under_our_names(tmp_path: Path, tv_state: dict) -> None:
    path = tmp_path / "tv.pt"
    torch.save(tv_state, path)
    loaded = load_model("torchvision", path, "cpu")
    assert torch.equal(loaded.module.conv1.weight, tv_state["features.0.weight"])
    assert torch.equal(loaded.module.fc8.bias, tv_state["classifier.6.bias"])
    assert loaded.weights.source == "file" and loaded.weights.trained and loaded.weights.warning is None
    assert loaded.categories[0] == torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"][0]
    assert not any(p.requires_grad for p in loaded.module.parameters())  # frozen: backward stops at input


def test_safetensors_nested_checkpoints_and_dataparallel_prefixes(tmp_path: Path) -> None:
    from alexnet_viz.architectures import build_model

    state = build_model("paper", num_classes=10, seed=5).state_dict()
    save_file(state, tmp_path / "paper.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "nested.pth")
    for name in ("paper.safetensors", "nested.pth"):
        loaded = load_model("paper", tmp_path / name, "cpu")
        assert loaded.num_classes == 10  # read off fc8's shape
        assert loaded.categories == tuple(f"class {i}" for i in range(10))
        assert torch.equal(loaded.module.conv4.weight, state["conv4.weight"])


def test_wrong_architecture_names_the_keys(tmp_path: Path, tv_state: dict) -> None:
    path = tmp_path / "tv.pt"
    torch.save(tv_state, path)
    shapes = r"wrong shape: conv1\.weight \(64, 3, 11, 11\) \(model has \(96, 3, 11, 11\)\)"
    with pytest.raises(WeightsError, match=shapes):
        load_model("paper", path, "cpu")
    with pytest.raises(WeightsError, match=r"missing: bn1\.weight"):
        load_model("bn", path, "cpu")
    partial = {k: v for k, v in tv_state.items() if not k.startswith("classifier.4")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, path)
    with pytest.raises(WeightsError, match=r"missing: fc7\.weight, fc7\.bias; unexpected: extra\.weight"):
        load_model("torchvision", path, "cpu")


def test_truncated_and_garbage_files_are_clear(tmp_path: Path, tv_state: dict) -> None:
    good = tmp_path / "tv.pt"
    torch.save(tv_state, good)
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good.read_bytes()[: 10_000])
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file"):
        load_state_dict_file(bad)
    st = tmp_path / "cut.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_state_dict_file(st)
    with pytest.raises(WeightsError, match="There is no weights file"):
        load_state_dict_file(tmp_path / "absent.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_state_dict_file(tmp_path / "tensor.pt")


def test_safetensors_with_integer_weights_is_refused(tmp_path: Path) -> None:
    from alexnet_viz.architectures import build_model

    state = {k: v.to(torch.int32) if k == "conv1.weight" else v for k, v in build_model("paper").state_dict().items()}
    save_file(state, tmp_path / "ints.safetensors")
    with pytest.raises(WeightsError, match=r"wrong number type for conv1\.weight"):
        load_model("paper", tmp_path / "ints.safetensors", "cpu")


class _RunsCode:
    """Unpickling this calls Path.touch(marker): code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(WeightsError, match="refused: loading it would run code"):
        load_model("torchvision", path, "cpu")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the oracle: an unsafe load really does run the payload
    assert marker.exists()
    marker.unlink()
    raw = tmp_path / "evil.pkl.pt"  # a bare pickle, not a torch zip
    raw.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(WeightsError):
        load_state_dict_file(raw)
    assert not marker.exists()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # make get_dir() read TORCH_HOME again
    return tmp_path / "th"


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return calls


def test_offline_without_cache_says_how_to_fix_and_falls_back_loudly(torch_home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _offline(monkeypatch)
    assert W.cached_imagenet_path() == torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(WeightsError, match=r"could not be downloaded \(Name or service not known\).*weights fetch"):
        load_model("torchvision", "imagenet", "cpu")
    assert calls == [torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url]
    loaded = load_model("torchvision", "imagenet", "cpu", fallback=True)
    assert not loaded.weights.trained
    assert loaded.weights.warning is not None and "predictions are meaningless" in loaded.weights.warning
    assert "weights fetch" in loaded.weights.warning
    assert "not cached" in W.weights_status().describe()
    with pytest.raises(WeightsError, match=r"^No ImageNet weights exist for the paper architecture; train one"):
        load_model("paper", "imagenet", "cpu")


def test_cached_checkpoint_is_hash_checked_and_used_without_network(torch_home: Path, tv_state: dict,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _offline(monkeypatch)
    path = W.cached_imagenet_path()
    path.parent.mkdir(parents=True)
    torch.save(tv_state, path)
    # The real file's SHA-256 starts with 7be5be79; our stand-in's does not, so it is called damaged...
    with pytest.raises(WeightsError, match="are damaged"):
        load_model("torchvision", "imagenet", "cpu")
    # ...and with the expected prefix pointed at our stand-in, it loads from the cache, offline.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(W, "_hash_prefix", lambda url: digest[:8])
    loaded = load_model("torchvision", "imagenet", "cpu")
    assert calls == []
    assert loaded.weights.description == "ImageNet-1K, torchvision, acc@1 56.5%" and loaded.weights.trained
    assert torch.equal(loaded.module.conv2.weight, tv_state["features.3.weight"])
    status = W.weights_status()
    assert status.cached and status.size_bytes == path.stat().st_size and str(path) in status.describe()


def test_fetch_uses_torch_hub_download_with_hash_check(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        seen.update(url=url, hash_prefix=hash_prefix, progress=progress)
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = W.fetch_imagenet()
    assert path.read_bytes() == b"weights"
    assert seen == {"url": torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url, "hash_prefix": "7be5be79",
                    "progress": True}
    assert W.fetch_imagenet() == path  # cached: no second download


def test_weights_words_become_typed_sources(tmp_path: Path) -> None:
    assert parse_source("imagenet") == parse_source(" ImageNet ") == ImageNet()
    assert parse_source("none") == parse_source("NONE") == Untrained()
    assert parse_source("w.pt") == WeightsFile(Path("w.pt")) and parse_source(tmp_path) == WeightsFile(tmp_path)
    assert parse_source("./none") == WeightsFile(Path("none"))  # a file really called none
    assert parse_source(Untrained(seed=3)) == Untrained(seed=3)
    with pytest.raises(WeightsError, match="No weights were named"):
        parse_source("  ")
    # a typed source loads like its words; Untrained(seed) picks the initialisation
    a, b = load_model("cifar", Untrained(), "cpu"), load_model("cifar", "none", "cpu")
    assert torch.equal(a.module.conv1.weight, b.module.conv1.weight)
    c = load_model("cifar", Untrained(seed=1), "cpu")
    assert not torch.equal(a.module.conv1.weight, c.module.conv1.weight)
    assert c.weights.description == "seeded untrained weights (seed 1)"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_weights_with_non_finite_values_are_refused(tmp_path: Path, bad: float) -> None:
    from alexnet_viz.architectures import build_model

    state = build_model("cifar", num_classes=10).state_dict()
    state["fc7.weight"][3, 4] = bad
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match=r"^bad\.safetensors holds values that are not numbers \(NaN or infinity\) "
                                           r"in fc7\.weight; these weights cannot be used"):
        load_model("cifar", tmp_path / "bad.safetensors", "cpu")


def test_the_banner_words_fit_the_architecture_and_the_source(torch_home: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    asked = load_model("torchvision", "none", "cpu").weights
    assert asked.warning == "untrained weights, as asked (--weights none): predictions are meaningless"
    assert load_model("paper", "none", "cpu").weights.warning == asked.warning  # any architecture, the same words
    offline = load_model("torchvision", "imagenet", "cpu", fallback=True).weights
    assert offline.warning is not None
    assert offline.warning.startswith("untrained weights: predictions are meaningless - The ImageNet weights are "
                                      "not cached")
    assert "run `alexnet-viz weights fetch` while online" in offline.warning and "as asked" not in offline.warning
    for arch in ("paper", "paper-2gpu", "bn", "cifar"):
        other = load_model(arch, "imagenet", "cpu", fallback=True).weights
        assert other.warning == (f"untrained weights: predictions are meaningless - no ImageNet weights exist for the "
                                 f"{arch} architecture; train one with `alexnet-viz train` and pass --weights FILE")
        assert not other.trained and other.source == "none"
    assert not hasattr(asked, "path")
