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


# --- the folder walk: no links followed, nothing blocking, one image in one class and one split ------------------


def _digest(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def tangled(tmp_path: Path) -> Path:
    """Two classes of 4 distinct images each, plus every way the same picture can appear twice."""
    import os

    root = tmp_path / "tangled"
    rng = np.random.default_rng(5)
    for kind in ("disc", "stripes"):
        (root / kind / "sub").mkdir(parents=True)
        for i in range(4):
            _image(kind, rng).save(root / kind / ("sub" if i == 3 else "") / f"{i}.png")
    os.symlink(root, root / "disc" / "up")  # a link to the parent: a loop, and every class inside "disc"
    os.symlink(root / "stripes", root / "disc" / "sub" / "other")  # a link to another class's folder
    os.symlink(root / "disc", root / "linked_class")  # a class folder that is a link
    os.symlink(root / "stripes" / "0.png", root / "disc" / "borrowed.png")  # a file of another class
    shutil.copy(root / "disc" / "1.png", root / "disc" / "sub" / "copy.png")  # the same bytes, same class
    os.link(root / "disc" / "2.png", root / "disc" / "hard.png")  # the same file, same class
    shutil.copy(root / "stripes" / "1.png", root / "disc" / "stolen.png")  # the same bytes in two classes
    os.mkfifo(root / "stripes" / "pipe.png")  # opening it would block forever
    return root


def test_the_walk_follows_no_links_and_keeps_each_image_once(tangled: Path) -> None:
    import time

    from alexnet_viz.train import _folder

    t0 = time.monotonic()
    folder = _folder(tangled)
    assert time.monotonic() - t0 < 10  # the loop is not walked, the FIFO not opened
    assert folder.classes == ["disc", "stripes"]  # not "linked_class"
    paths = [Path(p).relative_to(tangled).as_posix() for p, _ in folder.samples]
    assert not any(part in ("up", "other") for p in paths for part in p.split("/")), paths
    digests = [_digest(p) for p, _ in folder.samples]
    assert len(set(digests)) == len(digests)  # one picture, one sample: it cannot be in two splits
    # disc/1 and its copy, disc/2 and its hard link: kept once. stripes/0 (linked into disc as "borrowed") and
    # stripes/1 (copied into disc as "stolen"): in two classes, so in neither.
    by_class = {name: sorted(Path(p).relative_to(tangled / name).as_posix() for p, t in folder.samples if t == i)
                for i, name in enumerate(folder.classes)}
    assert by_class == {"disc": ["0.png", "1.png", "2.png", "sub/3.png"], "stripes": ["2.png", "sub/3.png"]}
    assert (folder.duplicates, folder.conflicting) == (2, 2)


def test_a_file_linked_into_another_class_is_in_neither(tmp_path: Path) -> None:
    import os

    from alexnet_viz.train import _folder

    rng = np.random.default_rng(6)
    for kind in ("disc", "stripes"):
        (tmp_path / kind).mkdir()
        for i in range(2):
            _image(kind, rng).save(tmp_path / kind / f"{i}.png")
    os.symlink(tmp_path / "stripes" / "0.png", tmp_path / "disc" / "borrowed.png")
    folder = _folder(tmp_path)
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p, _ in folder.samples) == [
        "disc/0.png", "disc/1.png", "stripes/1.png"]
    assert (folder.duplicates, folder.conflicting) == (0, 1)


def test_training_on_a_folder_with_a_parent_link_is_quick_and_honest(tangled: Path, tmp_path: Path) -> None:
    config = TrainConfig(arch="cifar", data=str(tangled), out=str(tmp_path / "o"), epochs=1, batch_size=8,
                         val_fraction=0.2, test_fraction=0.2)
    result = train(config, progress=False, log=lambda _: None)
    card = result.card
    assert (card["train_size"], card["val_size"], card["test_size"]) == (4, 1, 1)  # the 6 distinct images only


# --- settings that cannot train: one sentence, before any data is read -------------------------------------------


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"input_size": 1}, r"cifar cannot take|input|at least"),
        ({"input_size": 0}, "positive"),
        ({"lr": 0.0}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
        ({"val_fraction": 0.0}, "validation fraction"),
        ({"val_fraction": 1.5}, "validation fraction"),
        ({"num_classes": 1}, "at least 2 classes"),
        ({"epochs": 0}, "at least 1"),
    ],
)
def test_bad_settings_are_refused_before_the_data(tmp_path: Path, change: dict[str, object], pattern: str) -> None:
    config = TrainConfig(arch="cifar", data=str(tmp_path / "never-read"), out=str(tmp_path / "o"))
    with pytest.raises(DataError, match=pattern):
        train(TrainConfig(**{**config.__dict__, **change}), progress=False)
    assert not (tmp_path / "o").exists()


def test_bad_out_and_bad_checkpoint_are_one_error_line(folder: Path, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    assert main(["train", "--data", str(folder), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is a file" in err
    assert main(["train", "--data", str(folder), "--out", "/proc/alexnet-viz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Cannot write" in err
    out = tmp_path / "run"
    out.mkdir()
    for damaged in (b"not a checkpoint at all", None):
        if damaged is None:
            torch.save({"arch": "cifar", "model": {}}, out / "checkpoint.pt")  # loads, but lacks the rest
        else:
            (out / "checkpoint.pt").write_bytes(damaged)
        code = main(["train", "--data", str(folder), "--out", str(out), "--resume", "--epochs", "1"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err and "--resume" in err
