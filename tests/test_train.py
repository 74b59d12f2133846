"""Training: a tiny run on a generated image folder, reloading, the app's predictions, and bad data."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from alexnet_viz.architectures import build_model
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
    config = TrainConfig(arch="cifar", data=str(folder), out=str(out), epochs=6, batch_size=16, lr=0.05, seed=1,
                         optimizer="sgd")
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


# --- issue 15: a schedule chosen from the data's size ------------------------------------------------------------


def _stripes(horizontal: bool, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """Stripes of a random period, phase and pair of colours: the class is the orientation and nothing else."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(6, 13))
    on = (((yy if horizontal else xx) + rng.integers(0, period)) % period) < period // 2
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(c1.astype(int) - c2).sum() < 150:  # two colours a person tells apart
        c2 = rng.integers(0, 256, 3)
    rgb = np.where(on[..., None], c1, c2) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _class_folder(root: Path, classes: dict[str, bool], draw: Any, per_class: int, seed: int) -> Path:
    """A folder of two classes: ``draw(flag, rng)`` makes each picture, ``flag`` being the class's value."""
    rng = np.random.default_rng(seed)
    for name, flag in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            draw(flag, rng).save(root / name / f"{i}.png")
    return root


def _stripes_folder(root: Path, per_class: int, seed: int) -> Path:
    return _class_folder(root, {"horizontal": True, "vertical": False}, _stripes, per_class, seed)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _stripes_folder(tmp_path_factory.mktemp("stripes"), 40, seed=0)


@pytest.fixture(scope="module")
def fresh_stripes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """16 images no run has seen (another seed), 8 a class."""
    root = _stripes_folder(tmp_path_factory.mktemp("fresh"), 8, seed=12345)
    return sorted(root.glob("*/*.png"))


def test_the_plan_for_a_small_folder_makes_enough_steps() -> None:
    from alexnet_viz.train import plan_training

    plan = plan_training(64, TrainConfig())  # 80 images less the validation and test tenths
    # batch 64 // 10 = 6: ceil(64 / 6) = 11 steps an epoch; ceil(200 / 11) = 19 epochs; Adam at 1e-3.
    assert (plan.optimizer, plan.batch_size, plan.steps_per_epoch, plan.epochs, plan.lr) == ("adam", 6, 11, 19, 1e-3)
    assert plan.total_steps == 209 and set(plan.chosen) == {"optimizer", "batch_size", "lr", "epochs"}
    assert plan_training(10, TrainConfig()).batch_size == 4  # never below 4 ...
    assert plan_training(12, TrainConfig(optimizer="sgd")).lr == pytest.approx(0.05 * math.sqrt(4 / 128), rel=1e-3)
    assert plan_training(64, TrainConfig(), pretrained=True).lr == pytest.approx(2e-4)  # fine-tuning: a fifth
    # Fashion-MNIST's 54,000: the old defaults (SGD, batch 128, peak 0.05, 3 epochs of 422 steps).
    big = plan_training(54_000, TrainConfig())
    assert (big.optimizer, big.batch_size, big.lr, big.epochs, big.steps_per_epoch) == ("sgd", 128, 0.05, 3, 422)
    given = plan_training(64, TrainConfig(epochs=2, batch_size=128, lr=0.3, optimizer="sgd"))
    assert (given.batch_size, given.lr, given.epochs, given.total_steps, given.chosen) == (128, 0.3, 2, 2, ())


def test_the_recorded_fashion_mnist_flags_still_mean_the_recipe() -> None:
    """benchmarks/train_fmnist.sh's flags give the recorded run's settings (issue 6), whatever the defaults."""
    import shlex

    from alexnet_viz.cli import build_parser, train_config
    from alexnet_viz.train import plan_training

    script = (Path(__file__).parents[1] / "benchmarks" / "train_fmnist.sh").read_text()
    line = next(x for x in script.splitlines() if x.startswith("alexnet-viz train"))
    argv = shlex.split(line.replace('"$epochs"', "4").replace('"$out"', "runs/fmnist"))[1:]
    config = train_config(build_parser().parse_args(argv))
    # The recorded run's TrainConfig, as the code of that run (7d5e89d) built it from its flags.
    recorded = {"arch": "cifar", "data": "fashion-mnist", "epochs": 4, "batch_size": 128, "lr": 0.05,
                "optimizer": "sgd", "augment": True, "val_fraction": 0.1, "input_size": None, "num_classes": None,
                "seed": 0}
    assert {k: getattr(config, k) for k in recorded} == recorded
    assert (config.init, config.freeze, config.snapshots) == ("none", "none", 0)
    plan = plan_training(54_000, config)
    assert (plan.optimizer, plan.batch_size, plan.lr, plan.epochs, plan.total_steps, plan.chosen) == (
        "sgd", 128, 0.05, 4, 4 * 422, ())


def test_a_run_the_data_cannot_support_is_warned(tmp_path: Path) -> None:
    root = _stripes_folder(tmp_path / "tiny", 5, seed=3)
    warnings: list[str] = []
    train(TrainConfig(arch="cifar", data=str(root), out=str(tmp_path / "o"), epochs=1, batch_size=128,
                      val_fraction=0.2, test_fraction=0.2), progress=False, log=lambda _: None, warn=warnings.append)
    assert any("too few images in 2 class(es)" in w for w in warnings), warnings
    assert any("only 1 optimizer steps" in w and "--batch-size" in w for w in warnings), warnings


def test_the_cli_prints_the_plan_and_the_warning(tmp_path: Path, capsys) -> None:
    root = _stripes_folder(tmp_path / "tiny", 4, seed=4)
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "o"), "--epochs", "1", "--arch", "cifar",
                 "--val-fraction", "0.2", "--test-fraction", "0.2"])
    captured = capsys.readouterr()
    assert code == 0
    # 8 images less 2 for validation and 2 for test: 4 to train on, one batch of 4 (the smallest batch chosen).
    assert "4 training images: batch 4, 1 steps an epoch, 1 epochs = 1 optimizer steps" in captured.out
    assert "chosen from the data: optimizer, batch size, lr" in captured.out
    assert "WARNING: too few images" in captured.err and "WARNING: this run makes only 1 " in captured.err


@pytest.mark.slow
def test_default_flags_learn_two_stripe_classes(stripes: Path, fresh_stripes: list[Path], tmp_path: Path,
                                                capsys) -> None:
    """Issue 15's acceptance: 40 images a class, default flags; >= 90% of 16 fresh images through `analyze`."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(stripes), "--out", str(out)]) == 0
    capsys.readouterr()
    card = json.loads((out / "model.json").read_text())
    assert card["plan"]["total_steps"] >= 200 and card["plan"]["steps_per_epoch"] >= 10
    assert main(["analyze", *map(str, fresh_stripes), "--weights", str(out / "model.safetensors"),
                 "--out", str(tmp_path / "analysis"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    correct = sum(r["top_k"][0]["label"] == Path(r["image"]).parent.name for r in results)
    assert len(results) == 16 and correct >= 15, [(r["image"], r["top_k"][0]["label"]) for r in results]


# --- transfer learning: --init imagenet|none|FILE, --freeze features ---------------------------------------------


def _tinted(red: bool, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """Stripes of either orientation in shades of red or of blue: the class is the colour."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(6, 13))
    on = (((yy if rng.random() < 0.5 else xx) + rng.integers(0, period)) % period) < period // 2
    main = np.array([rng.integers(150, 256), rng.integers(0, 90), rng.integers(0, 90)])
    main = main if red else main[::-1]
    rgb = np.where(on[..., None], main, main * rng.uniform(0.3, 0.7)) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _tinted_folder(root: Path, per_class: int, seed: int) -> Path:
    return _class_folder(root, {"blue": False, "red": True}, _tinted, per_class, seed)


@pytest.fixture
def stand_in_imagenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """A seeded torchvision-architecture AlexNet saved under torchvision's key names, in place of the ImageNet
    checkpoint (tests never download). Its convolutions are Kaiming-initialised (build_model), so their random
    features still carry an image's colours to the classifier."""
    from safetensors.torch import save_file

    from alexnet_viz import weights
    from alexnet_viz.architectures import torchvision_key_map

    theirs = {ours: key for key, ours in torchvision_key_map().items()}
    state = build_model("torchvision", seed=7).state_dict()
    path = tmp_path / "alexnet-stand-in.safetensors"
    save_file({theirs[k]: v.contiguous() for k, v in state.items()}, str(path))
    monkeypatch.setattr(weights, "cached_imagenet_path", lambda: path)
    monkeypatch.setattr(weights, "imagenet_state_dict", lambda **_: weights.load_state_dict_file(path))
    return state  # our layer names


@pytest.mark.slow  # 20 s on 2 quiet cores: every step updates fc6 and fc7's 54 M parameters
def test_transfer_learning_keeps_the_features_and_learns_the_head(
        stand_in_imagenet: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from alexnet_viz.train import frozen_layers

    folder = _tinted_folder(tmp_path / "tinted", 40, seed=0)
    fresh = sorted(_tinted_folder(tmp_path / "fresh", 8, seed=54321).glob("*/*.png"))
    out = tmp_path / "tl"
    # 64 px keeps the test quick (the adaptive pooling takes it); batch 16: 4 steps an epoch.
    assert main(["train", "--arch", "torchvision", "--data", str(folder), "--out", str(out), "--init", "imagenet",
                 "--freeze", "features", "--input-size", "64", "--epochs", "8", "--batch-size", "16"]) == 0
    saved = load_file(str(out / "model.safetensors"))
    card = json.loads((out / "model.json").read_text())
    assert card["init"] == "imagenet" and card["frozen"] == frozen_layers(build_model("torchvision"))
    fixed = [k for k in saved if k.split(".")[0] in card["frozen"]]
    assert {k.split(".")[0] for k in fixed} == {"conv1", "conv2", "conv3", "conv4", "conv5"}
    for key in fixed:  # bit for bit
        assert torch.equal(saved[key], stand_in_imagenet[key]), key
    assert not torch.equal(saved["fc6.weight"], stand_in_imagenet["fc6.weight"])  # the classifier did learn
    assert saved["fc8.weight"].shape == (2, 4096)  # a new head for the folder's two classes
    assert card["mean"] == [0.485, 0.456, 0.406]  # the stand-in's (ImageNet's) normalisation, not the folder's
    # The app's loader takes the run with its class names, and the head tells the fresh images apart.
    loaded = load_model(None, out / "model.safetensors", "cpu")
    assert loaded.arch == "torchvision" and loaded.categories == ("blue", "red")
    with torch.inference_mode():
        batch = torch.cat([loaded.preprocess(Image.open(p).convert("RGB")) for p in fresh])
        predicted = loaded.module(batch).argmax(1).tolist()
    truth = [loaded.categories.index(p.parent.name) for p in fresh]
    assert sum(a == b for a, b in zip(predicted, truth, strict=True)) >= 15, (predicted, truth)


def test_the_init_default_and_its_errors(stand_in_imagenet: dict[str, torch.Tensor], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet_viz import weights
    from alexnet_viz.train import _resolve_init

    config = TrainConfig(arch="torchvision", data="unused", out=str(tmp_path / "o"))
    assert _resolve_init(config).name == "imagenet"  # cached: the default for the torchvision architecture
    assert _resolve_init(TrainConfig(arch="cifar")).name == "none"  # no ImageNet weights for it
    with pytest.raises(DataError, match="needs --arch torchvision"):
        _resolve_init(TrainConfig(arch="cifar", init="imagenet"))
    missing = tmp_path / "not-cached.pth"
    monkeypatch.setattr(weights, "cached_imagenet_path", lambda: missing)
    assert _resolve_init(config).name == "none"  # not cached: never downloaded unasked

    def offline(**_: object) -> dict[str, torch.Tensor]:
        raise WeightsError(f"The ImageNet weights are not cached at {missing} and could not be downloaded "
                           "(no network); run `alexnet-viz weights fetch` while online, or pass --weights FILE.")

    monkeypatch.setattr(weights, "imagenet_state_dict", offline)
    with pytest.raises(DataError, match=r"not cached .* or train from scratch with --init none\.$"):
        _resolve_init(TrainConfig(arch="torchvision", init="imagenet"))
    with pytest.raises(WeightsError, match="no weights file"):
        _resolve_init(TrainConfig(arch="cifar", init=str(tmp_path / "absent.safetensors")))


def test_init_from_a_trained_run_file(run, tmp_path: Path) -> None:
    """--init FILE: a run of this folder's three classes starts a two-class one; its conv layers come along."""
    from alexnet_viz.train import _resolve_init

    init = _resolve_init(TrainConfig(arch="cifar", init=str(run.out / "model.safetensors")))
    saved = load_file(str(run.out / "model.safetensors"))
    assert init.state is not None and "fc8.weight" not in init.state
    assert all(torch.equal(init.state[k], saved[k]) for k in init.state)
    assert init.mean == tuple(run.card["mean"])  # the card's normalisation comes along
    with pytest.raises(DataError, match="trained as 'cifar', not 'paper'"):
        _resolve_init(TrainConfig(arch="paper", init=str(run.out / "model.safetensors")))


# --- conv1 over time: --snapshots K and filters-gif --------------------------------------------------------------


def test_snapshots_every_k_steps_and_their_animation(stripes: Path, tmp_path: Path) -> None:
    from alexnet_viz.train import read_snapshots

    out = tmp_path / "snap"
    # 64 training images in batches of 8: 8 steps an epoch, 16 in all; every 4 steps: 0, 4, 8, 12, 16.
    assert main(["train", "--arch", "cifar", "--data", str(stripes), "--out", str(out), "--epochs", "2",
                 "--batch-size", "8", "--snapshots", "4"]) == 0
    snaps = read_snapshots(out)
    assert [s for s, _, _ in snaps] == [0, 4, 8, 12, 16]
    assert snaps[0][2] is None and all(a is not None and 0 <= a <= 1 for _, _, a in snaps[1:])
    initial = build_model("cifar", num_classes=2, seed=0).state_dict()["conv1.weight"]
    assert torch.equal(snaps[0][1], initial)  # step 0 is the seeded initialisation
    assert torch.equal(snaps[-1][1], load_file(str(out / "model.safetensors"))["conv1.weight"])  # the last, the end
    for (_, a, _), (_, b, _) in itertools.pairwise(snaps):
        assert not torch.equal(a, b)
    frames_dir = tmp_path / "frames"
    assert main(["filters-gif", str(out), "--out", str(tmp_path / "f.gif"), "--frames", str(frames_dir)]) == 0
    with Image.open(tmp_path / "f.gif") as gif:
        count = getattr(gif, "n_frames", 1)
        assert count == 5
        frames: list[np.ndarray] = []
        for i in range(count):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
    assert (out / "filters.gif").is_file()  # train wrote one too
    pngs = sorted(frames_dir.glob("*.png"))
    assert [p.name for p in pngs] == [f"step_{s:08d}.png" for s in (0, 4, 8, 12, 16)]
    from alexnet_viz.render import label

    grid_top = label(Image.new("RGB", (1, 1)), "step").height - 1  # the caption's height: the grid is below it
    for before, after in itertools.pairwise(frames):  # the filters moved, not only the caption
        assert before.shape == after.shape and not np.array_equal(before[grid_top:], after[grid_top:])


def test_frozen_batchnorm_keeps_its_statistics(tmp_path: Path) -> None:
    """--init FILE --freeze features on the BatchNorm variant: the running means and variances, not only the
    weights, come out bit for bit as they went in (fixed layers run in eval mode while the rest trains)."""
    from safetensors.torch import save_file

    start = build_model("bn", num_classes=5, seed=3)
    with torch.no_grad():  # statistics that training in train mode would certainly move
        start.bn1.running_mean.uniform_(-1, 1)
        start.bn2.running_var.uniform_(0.5, 2)
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(path))
    folder = _tinted_folder(tmp_path / "tinted", 6, seed=1)
    out = tmp_path / "bn"
    assert main(["train", "--arch", "bn", "--data", str(folder), "--out", str(out), "--init", str(path),
                 "--epochs", "1", "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    saved = load_file(str(out / "model.safetensors"))
    before = start.state_dict()
    fixed = [k for k in saved if k.split(".")[0] in _frozen_layers_of("bn")]
    assert any("running_mean" in k for k in fixed) and any(k.startswith("conv5.") for k in fixed)
    for key in fixed:
        assert torch.equal(saved[key], before[key]), key
    assert not torch.equal(saved["fc7.weight"], before["fc7.weight"])  # the FC layers did train (default freeze)
    assert saved["fc8.weight"].shape[0] == 2


def _frozen_layers_of(arch: str) -> list[str]:
    from alexnet_viz.train import frozen_layers

    return frozen_layers(build_model(arch, num_classes=2))


def test_filters_gif_without_snapshots_is_one_sentence(run, capsys) -> None:
    assert main(["filters-gif", str(run.out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--snapshots" in err


def test_resumed_snapshots_carry_on_from_the_checkpoint(stripes: Path, tmp_path: Path) -> None:
    from alexnet_viz.train import read_snapshots

    flags = ["train", "--arch", "cifar", "--data", str(stripes), "--out", str(tmp_path), "--batch-size", "8",
             "--snapshots", "4", "--no-augment"]
    assert main([*flags, "--epochs", "1"]) == 0  # 8 steps: 0, 4, 8
    assert [s for s, _, _ in read_snapshots(tmp_path)] == [0, 4, 8]
    assert main([*flags, "--epochs", "2", "--resume"]) == 0  # 8 more
    snaps = read_snapshots(tmp_path)
    assert [s for s, _, _ in snaps] == [0, 4, 8, 12, 16]
    assert torch.equal(snaps[-1][1], load_file(str(tmp_path / "model.safetensors"))["conv1.weight"])


def test_the_banner_says_where_a_fine_tuned_model_started() -> None:
    from alexnet_viz.model import _card_description

    card = {"dataset": "my-photos", "epochs": 4, "metrics": {"test_accuracy": 0.9375}}
    assert _card_description({**card, "init": "none"}) == "trained here: my-photos, 4 epochs, test acc 93.8%"
    tuned = _card_description({**card, "init": "imagenet", "frozen": ["conv1", "relu1", "pool1"]})
    assert tuned == "trained here: my-photos (fine-tuned from imagenet, 3 layers fixed), 4 epochs, test acc 93.8%"
