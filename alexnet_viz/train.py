"""Train a seed AlexNet on real images: an image folder, CIFAR-10, or Fashion-MNIST from Debian's package.

The seeds' recipe (000, 002, 003): SGD with momentum (or Adam), random crops with padding, horizontal
flips, normalisation, cross-entropy. The result is a checkpoint the app and ``alexnet-viz analyze`` load
with its own class names, input size and normalisation::

    runs/fmnist/model.safetensors   weights (our layer names)
    runs/fmnist/model.json          the model card: arch, input size, classes, mean/std, metrics
    runs/fmnist/curves.png          loss and accuracy per epoch
    runs/fmnist/checkpoint.pt       model + optimiser + history, for --resume (weights_only-loadable)
    runs/fmnist/snapshots.safetensors   conv1 every K optimizer steps (--snapshots K), and filters.gif from them

Batch size, learning rate and epochs that are not given are chosen from the data's size (:func:`plan_training`)
so that a folder of 80 photos gets as many optimizer steps as Fashion-MNIST does. ``init`` starts from the
ImageNet weights (torchvision architecture), a weights file or the seeded initialisation; the classifier's last
layer is always new, sized for the data's classes, and ``freeze="features"`` keeps every layer before it
that is not a fully connected one exactly as loaded (transfer learning).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2 as T

from .architectures import ARCHITECTURES, build_model
from .errors import UserError
from .images import MAX_BYTES, ImageError, load_image
from .model import resolve_device
from .weights import WeightsError

__all__ = ["DataError", "StepInfo", "TrainConfig", "TrainPlan", "TrainResult", "filters_animation", "frozen_layers",
           "plan_training", "read_snapshots", "train"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


class DataError(UserError):
    """Training data that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "cifar"
    data: str = "fashion-mnist"  # an image folder, "cifar10" or "fashion-mnist"
    out: str = "runs/run"
    epochs: int | None = None  # None: chosen from the data's size (plan_training)
    batch_size: int | None = None  # None: chosen from the data's size
    lr: float | None = None  # the one-cycle schedule's peak; None: chosen from the batch size and the init
    optimizer: str = "auto"  # "sgd" (momentum 0.9, as in the 2012 paper), "adam"; "auto": from the data's size
    init: str = "auto"  # "imagenet", "none", a weights file; "auto": imagenet where cached (torchvision), else none
    freeze: str = "auto"  # "features" or "none"; "auto": features when starting from trained weights
    snapshots: int = 0  # save conv1 every this many optimizer steps (0: never)
    augment: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # image folders only; the datasets bring their own test split
    input_size: int | None = None  # default: the architecture's
    num_classes: int | None = None  # default: the data's
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    data_root: str = "~/.cache/alexnet-viz/data"


@dataclass
class TrainResult:
    out: Path
    history: list[dict[str, float]]
    test_accuracy: float
    test_loss: float
    skipped_images: int
    seconds: float
    card: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # ``stop`` was set: the run ended early, its last history row a part of an epoch


@dataclass(frozen=True)
class StepInfo:
    """What ``train(on_step=...)`` is told after each optimizer step. ``model`` is the network being trained:
    read it (copy conv1's weights), never change it; the callback runs on the training thread, so keep it short."""

    step: int  # optimizer steps made so far (a resumed run counts on from its checkpoint)
    total_steps: int  # the plan's
    epoch: int  # the epoch this step belongs to, from 1
    loss: float  # this batch's mean cross-entropy
    accuracy: float  # this batch's accuracy
    images: int  # this batch's size
    model: nn.Module


# --------------------------------------------------------------------------------------------------
# the schedule, from the data's size

MIN_STEPS = 200  # optimizer steps a run makes at the least, when the epochs are left to us
MIN_STEPS_PER_EPOCH = 10  # ... and per epoch, when the batch size is
MAX_BATCH, MIN_BATCH = 128, 4
ADAM_BELOW = 10_000  # fewer training images than this: Adam, which leaves the plateau in a few hundred steps
SGD_LR = 0.05  # the one-cycle peak for SGD at batch MAX_BATCH (the Fashion-MNIST recipe); sqrt-scaled below it
ADAM_LR = 1e-3
PRETRAINED_LR_FACTOR = 0.2  # weights that already mean something are fine-tuned, not thrown about
FEW_PER_CLASS = 10  # fewer images than this in a class: the run is warned that it may learn nothing


@dataclass(frozen=True)
class TrainPlan:
    """The schedule a run makes: what was given, and what was chosen from the data's size."""

    train_size: int
    optimizer: str
    batch_size: int
    lr: float
    epochs: int
    steps_per_epoch: int
    chosen: tuple[str, ...]  # the settings chosen here ("batch_size", "lr", "epochs"), the others were given

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def describe(self) -> str:
        chosen = f"; chosen from the data: {', '.join(c.replace('_', ' ') for c in self.chosen)}" if self.chosen else ""
        return (f"{self.train_size} training images: batch {self.batch_size}, {self.steps_per_epoch} steps an epoch, "
                f"{self.epochs} epochs = {self.total_steps} optimizer steps, peak learning rate {self.lr:g} "
                f"({self.optimizer}, one-cycle){chosen}")


def plan_training(train_size: int, config: TrainConfig, *, pretrained: bool = False) -> TrainPlan:
    """Optimizer, batch size, peak learning rate and epochs for ``train_size`` training images; what the config
    gives wins.

    The optimizer is Adam below 10,000 training images (SGD from scratch sat on the loss plateau for most of a
    200-step run on 64 images, or diverged at 0.05), SGD with momentum above. The batch is a tenth of the
    training set, between 4 and 128, so an epoch makes at least 10 optimizer steps where the data allows; the
    epochs (at least 3) bring the run to at least 200 steps. The peak is 1e-3 for Adam, and for SGD 0.05 at
    batch 128 scaled by sqrt(batch / 128); a fifth of that when starting from trained weights. Fashion-MNIST
    (54,000 training images) gets SGD, batch 128, 0.05 and 3 epochs: the old defaults.
    """
    chosen = []
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = "adam" if train_size < ADAM_BELOW else "sgd"
        chosen.append("optimizer")
    batch = config.batch_size
    if batch is None:
        batch = min(MAX_BATCH, max(MIN_BATCH, train_size // MIN_STEPS_PER_EPOCH))
        chosen.append("batch_size")
    steps_per_epoch = max(1, math.ceil(train_size / batch))
    lr = config.lr
    if lr is None:
        base = ADAM_LR if optimizer == "adam" else SGD_LR * math.sqrt(min(batch, MAX_BATCH) / MAX_BATCH)
        lr = float(f"{base * (PRETRAINED_LR_FACTOR if pretrained else 1.0):.3g}")
        chosen.append("lr")
    epochs = config.epochs
    if epochs is None:
        epochs = max(3, math.ceil(MIN_STEPS / steps_per_epoch))
        chosen.append("epochs")
    return TrainPlan(train_size, optimizer, batch, lr, epochs, steps_per_epoch, tuple(chosen))


def _data_warnings(plan: TrainPlan, counts: dict[str, int], train_counts: dict[str, int]) -> list[str]:
    """Sentences for a run the data cannot support: too few images in a class, too few optimizer steps."""
    warnings = []
    few = {name: n for name, n in counts.items() if n < FEW_PER_CLASS}
    if few:
        shown = ", ".join(f"{name!r} {n}" for name, n in sorted(few.items(), key=lambda kv: kv[1])[:5])
        warnings.append(f"too few images in {len(few)} class(es) ({shown}): with under {FEW_PER_CLASS} a class the "
                        "network may learn nothing and the test accuracy means little; add images")
    missing = [name for name, n in train_counts.items() if n == 0]
    if missing:
        warnings.append(f"no training image of class(es) {', '.join(map(repr, missing[:5]))}: the network "
                        "cannot learn them")
    if plan.total_steps < MIN_STEPS:
        warnings.append(f"this run makes only {plan.total_steps} optimizer steps ({plan.epochs} epochs of "
                        f"{plan.steps_per_epoch}); with so few it may learn nothing - leave --batch-size and "
                        "--epochs out to have them chosen from the data, or give a smaller batch or more epochs")
    return warnings


# --------------------------------------------------------------------------------------------------
# data


class _SafeFolder(datasets.ImageFolder):
    """ImageFolder whose loader is our intake; an unreadable image becomes None (skipped and counted).

    Its walk follows no linked folder (a link to a parent folder would loop forever or copy images across
    classes) and opens nothing but regular files; an image that is in the folder twice (the same file through
    a link, or the same bytes) is kept once, and one found in two classes is left out of both: otherwise the
    same picture could land in the training and the test split and make the test accuracy a lie.
    """

    def __init__(self, root: str, transform: Callable[[Any], Any] | None = None) -> None:
        self.duplicates, self.conflicting = 0, 0  # set by make_dataset, which the base class's __init__ calls
        super().__init__(root, transform=transform, loader=self._load, allow_empty=True)
        self.skipped: set[int] = set()

    @staticmethod
    def _load(path: str) -> Any:
        try:
            return load_image(path)
        except ImageError:
            return None

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        image = self.loader(path)
        if image is None:
            self.skipped.add(index)
            return None
        return (self.transform(image) if self.transform else image), target

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        # Real folders only: a linked one is another class's folder, or a loop.
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=False))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(  # an instance method (a static one in torchvision): it records what it left out
        self, directory: str | os.PathLike[str], class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None, is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        allowed = extensions or datasets.folder.IMG_EXTENSIONS
        found: list[tuple[str, int, os.stat_result]] = []
        for name in sorted(class_to_idx):
            for top, folders, files in os.walk(os.path.join(directory, name), followlinks=False):
                folders.sort()
                for file in sorted(files):
                    path = os.path.join(top, file)
                    if is_valid_file is not None and not is_valid_file(path):
                        continue
                    if is_valid_file is None and not datasets.folder.has_file_allowed_extension(path, allowed):
                        continue
                    try:
                        info = os.stat(path)  # follows a link to a file; opens nothing (a FIFO would block)
                    except OSError:
                        continue
                    if stat.S_ISREG(info.st_mode):
                        found.append((path, class_to_idx[name], info))
        samples, self.duplicates, self.conflicting = _distinct(found)
        return samples


def _distinct(found: list[tuple[str, int, os.stat_result]]) -> tuple[list[tuple[str, int]], int, int]:
    """(path, class) of each distinct image once, how many copies were dropped, how many images were dropped
    for being in more than one class. The same file (device and inode: links, hard links) or the same bytes
    (SHA-256, computed only for files whose size another file shares) is one image."""
    by_size: dict[int, set[tuple[int, int]]] = {}
    for _, _, info in found:
        by_size.setdefault(info.st_size, set()).add((info.st_dev, info.st_ino))
    digests: dict[tuple[int, int], str] = {}
    groups: dict[object, list[tuple[str, int]]] = {}
    for path, label, info in found:
        inode = (info.st_dev, info.st_ino)
        key: object = inode
        if len(by_size[info.st_size]) > 1 and info.st_size <= MAX_BYTES:
            if inode not in digests:
                try:
                    with open(path, "rb") as f:  # a regular file (checked): no blocking open
                        digests[inode] = hashlib.sha256(f.read(MAX_BYTES)).hexdigest()
                except OSError:
                    digests[inode] = f"unreadable:{inode}"
            key = digests[inode]
        groups.setdefault(key, []).append((path, label))
    samples, duplicates, conflicting = [], 0, 0
    for copies in groups.values():
        if len({label for _, label in copies}) > 1:
            conflicting += 1
            continue
        samples.append(copies[0])
        duplicates += len(copies) - 1
    return sorted(samples), duplicates, conflicting


class _Transformed(Dataset):
    """A subset seen through its own transform (train gets augmentation, val/test do not)."""

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable[[Any], Any]) -> None:
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        item = self.base[self.indices[i]]
        if item is None:
            return None
        image, target = item
        return self.transform(image), target


def _collate(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    return torch.stack([b[0] for b in kept]), torch.tensor([b[1] for b in kept])


def _fashion_mnist(root: Path) -> tuple[Any, Any, list[str]]:
    """torchvision's FashionMNIST over the files of Debian's dataset-fashion-mnist package (no download)."""
    raw = root / "FashionMNIST" / "raw"
    if not all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        if not all((FASHION_MNIST_DIR / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
            raise DataError(f"Fashion-MNIST is not installed at {FASHION_MNIST_DIR}; run "
                            "`apt-get install dataset-fashion-mnist`, or pass an image folder.")
        raw.mkdir(parents=True, exist_ok=True)
        for name in FASHION_MNIST_FILES:  # torchvision reads the unpacked idx files
            with gzip.open(FASHION_MNIST_DIR / f"{name}.gz", "rb") as src, (raw / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    train = datasets.FashionMNIST(str(root), train=True, download=False)
    test = datasets.FashionMNIST(str(root), train=False, download=False)
    return train, test, list(train.classes)


def _cifar10(root: Path) -> tuple[Any, Any, list[str]]:
    try:
        train = datasets.CIFAR10(str(root), train=True, download=True)
        test = datasets.CIFAR10(str(root), train=False, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise DataError(f"CIFAR-10 is not in {root} and could not be downloaded ({getattr(e, 'reason', e)}); "
                        "run once while online, or pass an image folder or fashion-mnist.") from e
    return train, test, list(train.classes)


def _folder(path: Path) -> _SafeFolder:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder, nor one of cifar10 or fashion-mnist.")
    try:
        folder = _SafeFolder(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path} has no class sub-folders; put each class's images in a folder of its own.") from e
    if len(folder.classes) < 2:
        raise DataError(f"{path} has {len(folder.classes)} class folder(s); a classifier needs at least two.")
    if len(folder) == 0:
        raise DataError(f"{path} holds no image files in its class folders.")
    if folder.duplicates or folder.conflicting:
        print(f"{path}: left out {folder.duplicates} copies of images it holds twice and {folder.conflicting} "
              "image(s) found in more than one class folder", file=sys.stderr)
    return folder


def _check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train, before any data is read; each as one sentence."""
    from .summary import summarize

    if config.arch not in ARCHITECTURES:
        raise DataError(f"Unknown architecture {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    if (config.epochs is not None and config.epochs < 1) or (config.batch_size is not None and config.batch_size < 1):
        raise DataError("Epochs and batch size must be at least 1.")
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr > 0):
        raise DataError(f"The learning rate must be a positive number, not {config.lr}.")
    if config.optimizer not in ("auto", "sgd", "adam"):
        raise DataError(f"Unknown optimizer {config.optimizer!r}; use sgd or adam.")
    if config.freeze not in ("auto", "features", "none"):
        raise DataError(f"Unknown --freeze {config.freeze!r}; use features or none.")
    if config.snapshots < 0:
        raise DataError(f"--snapshots must be 0 (none) or a number of steps, not {config.snapshots}.")
    for name, fraction in (("validation", config.val_fraction), ("test", config.test_fraction)):
        if not 0 < fraction < 0.5:
            raise DataError(f"The {name} fraction must be between 0 and 0.5, not {fraction}.")
    if config.num_classes is not None and config.num_classes < 2:
        raise DataError(f"A classifier needs at least 2 classes, not {config.num_classes}.")
    if config.input_size is not None:
        try:  # on the meta device: shapes only, no memory
            summarize(config.arch, num_classes=2, input_size=config.input_size)
        except ValueError as e:
            raise DataError(str(e)) from None


def _output_folder(out: Path) -> Path:
    """Create the output folder (before any training, so that a bad --out costs nothing)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give --out a folder to write the model into.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".alexnet-viz-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DataError(f"Cannot write into {out} ({e.strerror or e}); give --out a folder you can write to.") from e
    return out


def _stats(dataset: Any, indices: Sequence[int], size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to 5000 of) the training images: the normalisation to train with."""
    to_tensor = T.Compose([T.ToImage(), T.RGB(), T.Resize(size), T.CenterCrop(size),
                           T.ToDtype(torch.float32, scale=True)])
    picked = list(indices)[:: max(1, len(indices) // 5000)]
    tensors = [to_tensor(item[0]) for item in (dataset[i] for i in picked) if item is not None]
    if not tensors:
        raise DataError("None of the training images could be read.")
    stacked = torch.stack(tensors)  # (N, 3, S, S)
    std = stacked.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return [round(float(v), 4) for v in stacked.mean(dim=(0, 2, 3))], [round(float(v), 4) for v in std]


def _transforms(size: int, mean: Sequence[float], std: Sequence[float], *, augment: bool) -> tuple[Any, Any]:
    common = [T.ToImage(), T.RGB(), T.Resize(size), T.CenterCrop(size)]
    tail = [T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
    # The seeds' augmentation: random crops with padding and horizontal flips.
    aug = [T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip()] if augment else []
    return T.Compose([*common, *aug, *tail]), T.Compose([*common, *tail])


# --------------------------------------------------------------------------------------------------
# training


def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            x, y = batch[0].to(device), batch[1].to(device)
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
    return (loss_sum / max(count, 1), correct / max(count, 1))


def _plot(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax2.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# where the weights start, and what stays fixed


@dataclass(frozen=True)
class _Init:
    name: str  # "imagenet", "none" or the file's path: for the log and the model card
    state: dict[str, torch.Tensor] | None  # our key names, without the classifier's last layer
    mean: tuple[float, ...] | None  # the normalisation the weights were trained with, if known
    std: tuple[float, ...] | None


HEAD = "fc8"  # the classifier's last layer: always new, sized for the data's classes


def _resolve_init(config: TrainConfig) -> _Init:
    """The weights a run starts from. ``auto`` is the ImageNet checkpoint for the torchvision architecture when
    it is in torch's hub cache (never downloaded unasked), the seeded initialisation otherwise."""
    from . import weights as w
    from .model import read_card

    spec = ARCHITECTURES[config.arch]
    word = config.init.strip().lower()
    if word == "auto":
        word = "imagenet" if spec.has_imagenet_weights and w.cached_imagenet_path().is_file() else "none"
    source = w.parse_source(word if word in ("imagenet", "none") else config.init)
    if isinstance(source, w.Untrained):
        return _Init("none", None, None, None)
    if isinstance(source, w.ImageNet):
        if not spec.has_imagenet_weights:
            raise DataError(f"--init imagenet needs --arch torchvision, the only architecture with ImageNet weights; "
                            f"train {config.arch} from scratch with --init none.")
        try:
            state = w.imagenet_state_dict(download=True)
        except WeightsError as e:
            raise DataError(f"{str(e).removesuffix('.').replace(', or pass --weights FILE', '')}, or train from "
                            "scratch with --init none.") from e
        transform = w.IMAGENET.transforms()
        name = "imagenet"
        mean: tuple[float, ...] | None = tuple(transform.mean)
        std: tuple[float, ...] | None = tuple(transform.std)
    else:
        state = w.load_state_dict_file(source.path)
        card = read_card(source.path)
        if card is not None and card.get("arch") != config.arch:
            raise DataError(f"--init {source.path.name} was trained as {card.get('arch')!r}, not {config.arch!r}; "
                            f"pass --arch {card.get('arch')}.")
        has_norm = card is not None and "mean" in card and "std" in card
        name = str(source.path)
        mean = tuple(float(v) for v in card["mean"]) if card is not None and has_norm else None
        std = tuple(float(v) for v in card["std"]) if card is not None and has_norm else None
    state = w.canonical_keys(state)
    w.check_finite(state, name)
    return _Init(name, {k: v for k, v in state.items() if not k.startswith(f"{HEAD}.")}, mean, std)


def _load_init(model: nn.Sequential, init: _Init) -> None:
    """Put the start weights into ``model``, all but its new last layer (names and shapes checked)."""
    from .weights import match_state_dict

    if init.state is None:
        return
    head = {k: v for k, v in model.state_dict().items() if k.startswith(f"{HEAD}.")}
    try:
        model.load_state_dict(match_state_dict({**init.state, **head}, model), strict=True)
    except WeightsError as e:
        raise DataError(f"--init {init.name}: {e}") from e


def frozen_layers(model: nn.Sequential) -> list[str]:
    """The layers ``freeze="features"`` keeps fixed: every one before the flatten (convolutions, pooling, norms)."""
    names = [name for name, _ in model.named_children()]
    return names[: names.index("flatten")] if "flatten" in names else []


# --------------------------------------------------------------------------------------------------
# conv1 over time


SNAPSHOTS_FILE = "snapshots.safetensors"


def _save_snapshots(path: Path, snaps: list[tuple[int, torch.Tensor, float | None]], every: int) -> None:
    from safetensors.torch import save_file

    tensors = {f"step_{step:08d}": weight.contiguous() for step, weight, _ in snaps}
    meta = {"every": str(every), "steps": json.dumps([s for s, _, _ in snaps]),
            "accuracy": json.dumps([a for _, _, a in snaps])}
    save_file(tensors, str(path), metadata=meta)


def read_snapshots(run: str | os.PathLike[str]) -> list[tuple[int, torch.Tensor, float | None]]:
    """(optimizer step, conv1 weight, training accuracy over the steps since the last snapshot or None) from a run
    folder that ``train(snapshots=K)`` wrote (or the snapshots file itself), in step order."""
    from safetensors import safe_open

    path = Path(run)
    path = path / SNAPSHOTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"There are no filter snapshots at {path}; train with --snapshots K to record them.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            steps, accuracy = json.loads(meta["steps"]), json.loads(meta["accuracy"])
            return [(int(s), f.get_tensor(f"step_{int(s):08d}"), a) for s, a in zip(steps, accuracy, strict=True)]
    except Exception as e:  # safetensors, JSON and key errors of a damaged or foreign file
        raise DataError(f"{path} is not a filter-snapshot file alexnet-viz wrote ({type(e).__name__}).") from e


def filters_animation(run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                      frames_dir: str | os.PathLike[str] | None = None, duration_ms: int = 250) -> Path:
    """An animated GIF of conv1's filters over training, one frame per snapshot with its step and accuracy drawn
    above the grid (``render.filter_grid`` and ``render.label``); ``frames_dir`` also gets each frame as a PNG.
    Returns the GIF's path (default: ``filters.gif`` in the run folder)."""
    from .render import filter_grid, label

    snaps = read_snapshots(run)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    target = Path(out) if out is not None else run_dir / "filters.gif"
    k = int(snaps[0][1].shape[-1])
    frames = []
    for step, weight, acc in snaps:
        text = f"step {step}: " + ("before training" if acc is None else f"train accuracy {acc:.0%}")
        frames.append(label(filter_grid(weight.float().numpy(), scale=max(2, 48 // k)), text))
    width, height = max(f.width for f in frames), max(f.height for f in frames)  # a longer caption widens one
    frames = [_padded(f, width, height) for f in frames]
    target.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(target, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0, optimize=False)
    if frames_dir is not None:
        folder = Path(frames_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for (step, _, _), frame in zip(snaps, frames, strict=True):
            frame.save(folder / f"step_{step:08d}.png")
    return target


def _padded(image: Any, width: int, height: int) -> Any:
    from PIL import Image

    if image.size == (width, height):
        return image
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(image, ((width - image.width) // 2, 0))
    return canvas


# --------------------------------------------------------------------------------------------------
# the run


def _class_counts(base: Any, indices: Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    targets = getattr(base, "targets", None)
    counts = dict.fromkeys(classes, 0)
    if targets is None:
        return counts
    for i in indices:
        counts[classes[int(targets[i])]] += 1
    return counts


def train(config: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print,
          warn: Callable[[str], None] | None = None, on_step: Callable[[StepInfo], None] | None = None,
          on_epoch: Callable[[dict[str, float]], None] | None = None,
          stop: threading.Event | None = None) -> TrainResult:
    """Train ``config.arch`` on ``config.data``; write weights, model card, curves and a resumable checkpoint.

    Warnings (too few images in a class, too few optimizer steps) go to ``warn`` (default: stderr).
    ``on_step`` hears of every optimizer step, ``on_epoch`` gets each history row as it is made. Setting
    ``stop`` (checked before each step) ends the run early but not abruptly: the part of the epoch done is
    validated and becomes the last history row (its ``epoch`` a fraction), the model is tested and written
    with its card (``"stopped": true``) as at the end of a full run; ``checkpoint.pt`` keeps the last full
    epoch, so ``--resume`` goes on from there."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    def _warn(text: str) -> None:
        (warn or (lambda t: print(f"WARNING: {t}", file=sys.stderr)))(text)

    _check_config(config)
    out = _output_folder(Path(config.out))
    t_start = time.perf_counter()
    device = resolve_device(config.device)
    size = config.input_size or ARCHITECTURES[config.arch].input_size
    root = Path(os.path.expanduser(config.data_root))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    init = _resolve_init(config)
    freeze = config.freeze if config.freeze != "auto" else ("features" if init.state is not None else "none")

    # Data: a train/val split (and a test split for folders), each with its own transform.
    if config.data == "fashion-mnist":
        base, test_base, classes = _fashion_mnist(root)
        dataset_name = "fashion-mnist"
    elif config.data == "cifar10":
        base, test_base, classes = _cifar10(root)
        dataset_name = "cifar10"
    else:
        base = _folder(Path(config.data))
        test_base, classes, dataset_name = None, list(base.classes), Path(config.data).name
    n = len(base)
    n_test = 0 if test_base is not None else max(1, round(n * config.test_fraction))
    n_val = max(1, round(n * config.val_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} images are too few to split into training, validation and test sets.")
    order = torch.randperm(n, generator=generator).tolist()
    n_train = n - n_val - n_test
    train_idx, val_idx, test_idx = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    if init.mean is not None and init.std is not None:  # trained weights expect their own normalisation
        mean, std = [round(v, 4) for v in init.mean], [round(v, 4) for v in init.std]
    else:
        mean, std = _stats(base, train_idx, size)
    train_tf, eval_tf = _transforms(size, mean, std, augment=config.augment)
    train_set = _Transformed(base, train_idx, train_tf)
    val_set = _Transformed(base, val_idx, eval_tf)
    test_set = (_Transformed(test_base, range(len(test_base)), eval_tf) if test_base is not None
                else _Transformed(base, test_idx, eval_tf))
    num_classes = config.num_classes or len(classes)
    if num_classes != len(classes):
        raise DataError(f"The data has {len(classes)} classes but --num-classes says {num_classes}.")

    plan = plan_training(len(train_set), config, pretrained=init.state is not None)
    log(plan.describe())

    loader_args: dict[str, Any] = {"batch_size": plan.batch_size, "collate_fn": _collate, "num_workers": 0}
    train_loader = DataLoader(train_set, shuffle=True, generator=generator, drop_last=False, **loader_args)
    val_loader = DataLoader(val_set, **loader_args)
    test_loader = DataLoader(test_set, **loader_args)

    model = build_model(config.arch, num_classes=num_classes, seed=config.seed)
    _load_init(model, init)
    frozen = frozen_layers(model) if freeze == "features" else []
    for name in frozen:
        getattr(model, name).requires_grad_(False)
    learned = [name for name in frozen if any(True for _ in getattr(model, name).parameters())]  # not pools
    log(f"starting from {'the seeded initialisation' if init.name == 'none' else init.name}; "
        + (f"fixed: {', '.join(learned)}; the rest learns" if frozen else "every layer learns"))
    auto = config.init.strip().lower() == "auto"
    if init.name == "none" and auto and ARCHITECTURES[config.arch].has_imagenet_weights:
        log("the ImageNet weights are not cached, so this starts from scratch; run `alexnet-viz weights fetch` "
            "while online to fine-tune them instead (transfer learning: far better on a small folder)")
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if plan.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(trainable, lr=plan.lr)
    else:
        optimizer = torch.optim.SGD(trainable, lr=plan.lr, momentum=0.9, weight_decay=5e-4)
    # One cycle: a linear warm-up over 15% of the steps, then cosine decay. A function of the step only,
    # so a resumed run (even one given more epochs) picks the curve up where the step count stands.
    total = plan.total_steps
    warm = max(1, round(0.15 * total))

    def one_cycle(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.01, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm)))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle)

    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint_path = out / "checkpoint.pt"
    if config.resume:
        if not checkpoint_path.is_file():
            raise DataError(f"There is no checkpoint to resume at {checkpoint_path}.")
        try:
            state = torch.load(checkpoint_path, map_location=device, weights_only=True)
            arch = state.get("arch") if isinstance(state, dict) else None
        except Exception as e:  # pickle, zip and torch errors of a damaged or foreign file are many
            raise DataError(f"{checkpoint_path} is not a checkpoint alexnet-viz can resume from "
                            f"({type(e).__name__}); delete it, or train again without --resume.") from e
        if arch != config.arch:
            raise WeightsError(f"{checkpoint_path} is for architecture {arch!r}, not {config.arch!r}.")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            history, start_epoch = list(state["history"]), int(state["epoch"])
        except Exception as e:  # missing keys, other shapes (another --num-classes), wrong types
            raise DataError(f"{checkpoint_path} does not fit this run ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); delete it, or train "
                            "again without --resume.") from e
        log(f"resuming after epoch {start_epoch}")
    if test_base is None:  # a folder: are there images enough in every class?
        counts, train_counts = _class_counts(base, range(n), classes), _class_counts(base, train_idx, classes)
    else:  # the datasets bring thousands a class
        counts, train_counts = {}, {}
    for text in _data_warnings(plan, counts, train_counts):  # after every error: a run that fails says one thing
        _warn(text)

    conv1 = getattr(model, "conv1", None)
    snapshots_path = out / SNAPSHOTS_FILE
    snaps: list[tuple[int, torch.Tensor, float | None]] = []
    if config.snapshots and isinstance(conv1, nn.Conv2d):
        step_now = int(scheduler.last_epoch)
        if config.resume and snapshots_path.is_file():
            snaps = [s for s in read_snapshots(snapshots_path) if s[0] <= step_now]
        if not snaps:
            snaps = [(step_now, conv1.weight.detach().cpu().clone(), None)]
    window_correct, window_count = 0, 0  # training accuracy since the last snapshot
    stopped = False

    for epoch in range(start_epoch, plan.epochs):
        model.train()
        for name in frozen:  # fixed layers stay in eval mode: no BatchNorm statistics drift, no dropout
            getattr(model, name).eval()
        loss_sum, correct, count = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{plan.epochs}", unit="batch", disable=not progress,
                   leave=False)
        steps_done = 0
        for batch in bar:
            if stop is not None and stop.is_set():
                stopped = True
                break
            if batch is None:
                continue
            x, y = batch[0].to(device), batch[1].to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            hits = int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
            correct += hits
            count += len(y)
            window_correct, window_count = window_correct + hits, window_count + len(y)
            if snaps and scheduler.last_epoch % config.snapshots == 0 and isinstance(conv1, nn.Conv2d):
                snaps.append((int(scheduler.last_epoch), conv1.weight.detach().cpu().clone(),
                              round(window_correct / max(window_count, 1), 5)))
                window_correct, window_count = 0, 0
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.1%}")
            steps_done += 1
            if on_step is not None:
                on_step(StepInfo(int(scheduler.last_epoch), total, epoch + 1, float(loss.detach()), hits / len(y),
                                 len(y), model))
        bar.close()
        if stopped and count == 0:  # stopped before this epoch made a step: nothing new to validate
            break
        done = epoch + 1 if not stopped else round(epoch + steps_done / plan.steps_per_epoch, 3)
        val_loss, val_acc = _evaluate(model, val_loader, device)
        row = {"epoch": done, "train_loss": round(loss_sum / max(count, 1), 5),
               "train_accuracy": round(correct / max(count, 1), 5), "val_loss": round(val_loss, 5),
               "val_accuracy": round(val_acc, 5), "seconds": round(time.perf_counter() - t_start, 1)}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        log(f"epoch {done:g}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.1%} | "
            f"val loss {val_loss:.4f} acc {val_acc:.1%}")
        if stopped:
            if snaps:
                _save_snapshots(snapshots_path, snaps, config.snapshots)
            break
        torch.save({"arch": config.arch, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(), "history": history}, checkpoint_path)
        if snaps:
            _save_snapshots(snapshots_path, snaps, config.snapshots)

    if stopped:
        log(f"stopped after optimizer step {int(scheduler.last_epoch)} of {total}")
    test_loss, test_acc = _evaluate(model, test_loader, device)
    skipped = len(getattr(base, "skipped", ()))  # image folders only: unreadable files, each counted once
    log(f"test loss {test_loss:.4f} acc {test_acc:.1%}" + (f"; {skipped} unreadable image(s) skipped" if skipped
                                                            else ""))
    weights_path = out / "model.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    card = {
        "arch": config.arch, "input_size": size, "classes": classes, "mean": mean, "std": std,
        "dataset": dataset_name, "epochs": plan.epochs,
        "metrics": {"test_accuracy": round(test_acc, 5), "test_loss": round(test_loss, 5),
                    "final_val_accuracy": history[-1]["val_accuracy"] if history else None},
        "train_size": len(train_set), "val_size": len(val_set), "test_size": len(test_set),
        "skipped_images": skipped, "config": asdict(config),
        "plan": {**asdict(plan), "total_steps": plan.total_steps}, "init": init.name, "frozen": frozen,
        "history": history, "stopped": stopped, "steps": int(scheduler.last_epoch), "torch": torch.__version__,
        "device": str(device),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (out / "model.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    _plot(history, out / "curves.png", f"{config.arch} on {dataset_name}: test accuracy {test_acc:.1%}")
    if snaps:
        log(f"conv1 over {len(snaps)} snapshots: {filters_animation(out)}")
    return TrainResult(out, history, test_acc, test_loss, skipped, time.perf_counter() - t_start, card, stopped)
