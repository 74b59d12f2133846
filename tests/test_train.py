"""Training: a tiny run on a generated image folder, reloading, the app's predictions, and bad data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from alexnet_viz.cli import main
from alexnet_viz.model import load_model
from alexnet_viz.train import DataError, TrainConfig, train
from alexnet_viz.weights import WeightsError

CLASSES = {"disc": 0, "stripes": 1, "noise": 2}


def _image(kind: str, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:40, 0:40]
    if kind == "disc":
        a = ((xx - 20) ** 2 + (yy - 20) ** 2 < rng.integers(60, 140)) * 220.0
    elif kind == "stripes":
        a = ((xx + rng.integers(0, 8)) // 4 % 2) * 220.0
    else:
        a = rng.uniform(0, 255, (40, 40))
    rgb = np.stack([a, a * 0.8, 255 - a], axis=-1) + rng.normal(0, 12, (40, 40, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (root / kind).mkdir()
        for i in range(40):
            _image(kind, rng).save(root / kind / f"{i}.png")
    (root / "noise" / "broken.png").write_text("not an image")  # skipped and counted
    (root / "disc" / "cut.png").write_bytes((root / "disc" / "0.png").read_bytes()[:60])
    return root


@pytest.fixture(scope="module")
def run(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(arch="cifar", data=str(folder), out=str(out), epochs=6, batch_size=16, lr=0.05, seed=1)
    return train(config, progress=False, log=lambda _: None)


def test_loss_falls_and_everything_is_written(run) -> None:
    losses = [h["train_loss"] for h in run.history]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    assert run.skipped_images == 2
    card = json.loads((run.out / "model.json").read_text())
    assert card["arch"] == "cifar" and card["input_size"] == 32 and card["classes"] == sorted(CLASSES)
    assert len(card["mean"]) == 3 and len(card["std"]) == 3 and card["skipped_images"] == 2
    assert card["metrics"]["test_accuracy"] == pytest.approx(run.test_accuracy, abs=1e-5)
    with Image.open(run.out / "curves.png") as im:
        assert im.width >= 800


def test_checkpoint_reloads_bit_for_bit(run) -> None:
    saved = load_file(str(run.out / "model.safetensors"))
    loaded = load_model(None, run.out / "model.safetensors", "cpu")  # arch from the model card
    assert loaded.arch == "cifar" and loaded.categories == tuple(sorted(CLASSES))
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, saved[key]), key
    checkpoint = torch.load(run.out / "checkpoint.pt", weights_only=True)
    for key, value in checkpoint["model"].items():
        assert torch.equal(value, saved[key]), key
    assert loaded.mean == tuple(json.loads((run.out / "model.json").read_text())["mean"])
    assert "trained here: " in loaded.weights.description and "6 epochs" in loaded.weights.description


def test_the_app_predicts_with_the_folders_class_names(run, folder: Path) -> None:
    import gradio as gr

    from alexnet_viz.ui import Handlers, ModelPool

    h = Handlers(ModelPool(None, str(run.out / "model.safetensors"), "cpu"))
    upload = Path(gr.utils.get_upload_folder()) / "train-test"
    upload.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "stripes" / "3.png", upload / "stripes.png")
    label = h.predict_api({"path": str(upload / "stripes.png")})
    assert set(label) <= set(CLASSES) and len(label) == 3  # top-5 of 3 classes is all 3
    assert sum(label.values()) == pytest.approx(1.0, abs=1e-5)
    assert "trained here" in h.pool.default.weights.description


def test_resume_continues_where_it_stopped(folder: Path, tmp_path: Path) -> None:
    base = {"arch": "cifar", "data": str(folder), "out": str(tmp_path), "batch_size": 32, "seed": 3}
    train(TrainConfig(**base, epochs=1), progress=False, log=lambda _: None)
    resumed = train(TrainConfig(**base, epochs=2, resume=True), progress=False, log=lambda _: None)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_bad_data_is_a_clear_message(tmp_path: Path, run) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        train(TrainConfig(data=str(empty), out=str(tmp_path / "o")), progress=False)
    one = tmp_path / "one" / "cats"
    one.mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(one / "a.png")
    with pytest.raises(DataError, match="at least two"):
        train(TrainConfig(data=str(one.parent), out=str(tmp_path / "o")), progress=False)
    with pytest.raises(DataError, match="is not a folder"):
        train(TrainConfig(data=str(tmp_path / "missing"), out=str(tmp_path / "o")), progress=False)
    with pytest.raises(WeightsError, match="trained as 'cifar', not 'paper'"):
        load_model("paper", run.out / "model.safetensors", "cpu")
    code = main(["train", "--data", str(empty), "--out", str(tmp_path / "o")])
    assert code == 2
