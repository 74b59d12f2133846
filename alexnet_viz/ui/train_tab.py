"""The Train tab: train a small AlexNet on the server while watching its loss, accuracy and conv1 filters, then
use it in every tab.

The engine is :func:`alexnet_viz.train.train`; it runs in a thread of its own (one run at a time for the whole
server) and tells :class:`Run` of every optimizer step and epoch; the Start event is a generator that draws
what the run has logged every second or so. Data: the bundled example photos (one photo a class, so each is
cut into augmented crops), a zip of class folders the visitor uploads (checked and decoded by the app's
isolated decoder first), or Fashion-MNIST when Debian's ``dataset-fashion-mnist`` package is installed. When
the run ends (finished or stopped) its checkpoint joins the model pool as ``"trained:<run>"``, a choice of the
visitor's Architecture list, so every tab can use it.

Training is on where the app runs for one person (``python app.py``) and off on a public Hugging Face Space
(``SPACE_ID`` set) unless the server was started with ``--allow-training``.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
import weakref
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from .. import render
from ..analysis import analyze
from ..architectures import ARCHITECTURES
from ..errors import UserError
from ..images import MAX_BYTES
from ..train import FASHION_MNIST_DIR, FASHION_MNIST_FILES, StepInfo, TrainConfig, TrainResult, train
from . import handlers as H
from .server import ASSETS
from .state import TRAINED_PREFIX, ModelPool

__all__ = ["TrainHandlers", "TrainingRefused", "add_train_tab", "allow_training", "bundled_folder",
           "curves_picture", "extract_zip", "training_enabled"]

log = logging.getLogger("alexnet_viz")

TRAIN_GROUP = "training"  # the Start event's concurrency group: it waits on the run's thread, computing nothing
TRAIN_CONCURRENCY = 4  # Start events at once: one watches the run, the others are told a run is in progress
TRAIN_LIMIT_S = 600.0  # a run is stopped after this long: a shared server is not a training farm
POLL_S = 0.25  # how often the Start event looks at the run
DRAW_EVERY_S = 1.0  # at most one new curves picture a second ...
DRAW_SHARE = 0.2  # ... and drawing at most a fifth of the time: matplotlib holds the GIL, which the training
# thread takes again after each of the hundreds of torch operations of a step (waiting up to 5 ms each time)
FILTERS_EVERY = 10  # conv1 is copied (and redrawn) every this many optimizer steps
# An uploaded zip: at most this big, this many entries and images, this much unpacked; an entry that unpacks to
# more than RATIO times its packed size (and over a megabyte) is a zip bomb.
MAX_ZIP_BYTES = 50_000_000
MAX_ENTRIES = 5_000
MAX_IMAGES = 3_000
MAX_UNPACKED = 500_000_000
RATIO = 100
MIN_PER_CLASS = 2
IMAGE_SIDE = 96  # the decoded images are kept this large at most (the 32 px cifar net needs no more)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BUNDLED_PER_CLASS = 24  # crops of each bundled photo
ARCH_CHOICES = [(f"{name} ({spec.input_size} px)", name) for name, spec in ARCHITECTURES.items()]

SOURCES = {
    "bundled": "The bundled example photos",
    "zip": "A zip of class folders (upload it below)",
    "fashion-mnist": "Fashion-MNIST",
}

CAPTION = (
    "Train a small AlexNet here and watch it learn: the loss falls, the accuracy climbs, and conv1's filters turn "
    "from noise into edges and colours. When the run ends (or you stop it), the trained network becomes a choice "
    "of the **Architecture** list above, so every tab can look inside it. The `cifar` network (32 px input) "
    "trains in seconds to minutes on a CPU; the 224 px ones are much slower."
)
BUNDLED_NOTE = (
    "The bundled photos are one photo a class, so each is cut into {n} random crops (flipped and tinted now and "
    "then): the network learns to tell these photos apart, and its test crops come from the same photos, so its "
    "test accuracy says little about new pictures."
)
SOURCE_INFO = "A zip: one folder per class (e.g. cats/…, dogs/…), each with its images; at most 3,000 images."

_ALLOW = False  # --allow-training, set once at start-up by allow_training()


class TrainingRefused(UserError):
    """A run that cannot start (another is in progress, the data cannot be used): one sentence."""


def allow_training(allowed: bool) -> None:
    """``serve --allow-training``: train even on a public Space."""
    global _ALLOW
    _ALLOW = bool(allowed)


def training_enabled(allowed: bool | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Training is on unless the app runs on a Hugging Face Space (``SPACE_ID`` is set there) and was not started
    with ``--allow-training``."""
    env = os.environ if env is None else env
    allowed = _ALLOW if allowed is None else allowed
    return allowed or not env.get("SPACE_ID")


OFF_SENTENCE = ("Training is off on this public server; whoever runs it can turn it on by starting the app with "
                "`--allow-training` (it is always on when you run `python app.py` on your own computer).")


def fashion_mnist_installed(folder: Path | None = None) -> bool:
    folder = FASHION_MNIST_DIR if folder is None else folder
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES)


def source_choices() -> list[tuple[str, str]]:
    fashion = SOURCES["fashion-mnist"]
    if not fashion_mnist_installed():
        fashion += " (not installed: `apt install dataset-fashion-mnist`)"
    return [(SOURCES["bundled"], "bundled"), (SOURCES["zip"], "zip"), (fashion, "fashion-mnist")]


# -------------------------------------------------------------------------------------------------------
# data


def bundled_folder(root: Path, *, per_class: int = BUNDLED_PER_CLASS, side: int = 64, seed: int = 0) -> Path:
    """A class folder made of the bundled example photos: one class a photo (named after its file), each with
    ``per_class`` random crops (a third to all of the photo), mirrored half the time and slightly tinted.
    Made once under ``root``; the same seed gives the same pictures."""
    folder = root / f"bundled-{per_class}-{side}-{seed}" / "example photos"  # the name the model card gives
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    listed = json.loads((ASSETS / "examples.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    work = Path(tempfile.mkdtemp(prefix="bundled-", dir=root))
    for item in listed:
        photo = Image.open(ASSETS / item["file"]).convert("RGB")
        target = work / Path(item["file"]).stem
        target.mkdir()
        w, h = photo.size
        for i in range(per_class):
            share = float(rng.uniform(0.35, 1.0))
            cw, ch = max(8, int(w * share ** 0.5)), max(8, int(h * share ** 0.5))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = photo.crop((x, y, x + cw, y + ch)).resize((side, side), Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            tint = 1.0 + rng.normal(0, 0.08, 3)
            pixels = np.clip(np.asarray(crop, dtype=np.float32) * tint, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(target / f"{i:03d}.png")
    try:
        work.rename(folder)
    except OSError:  # made meanwhile by another run
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _entry_parts(name: str) -> tuple[str, ...]:
    """The parts of a zip entry's path, or a refusal if it would leave the folder it is unpacked into."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise TrainingRefused(f"The zip holds a path that would leave its folder ({H._echo(name)}); it was refused.")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise TrainingRefused(f"The zip holds a path that would leave its folder ({H._echo(name)}); it was refused.")
    return parts


def extract_zip(path: str | os.PathLike[str], dest: Path, decode: Callable[[str], Image.Image]) -> Path:
    """Check an uploaded zip of class folders and unpack its images into ``dest`` (one folder per class), each
    decoded by ``decode`` (the app's isolated decoder) and saved as a PNG of at most ``IMAGE_SIDE`` px.

    One folder per class, at the top of the zip or inside one folder that holds them all; files elsewhere,
    hidden files and ``__MACOSX`` are left out; unreadable images are skipped. Refused with one sentence: not a
    zip, too big, too many entries, a zip bomb, a path that leaves the folder, a link, fewer than two classes or
    fewer than ``MIN_PER_CLASS`` images in a class, more than ``MAX_IMAGES`` images."""
    source = Path(path)
    if source.stat().st_size > MAX_ZIP_BYTES:
        raise TrainingRefused(f"The zip is larger than {MAX_ZIP_BYTES // 1_000_000} MB; give a smaller one.")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError):
        raise TrainingRefused("That file is not a zip archive; give a .zip of one folder per class.") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise TrainingRefused(f"The zip holds {len(infos):,} entries, more than the {MAX_ENTRIES:,} allowed.")
        images: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
        unpacked = 0
        for info in infos:
            parts = _entry_parts(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise TrainingRefused(f"The zip holds a link ({H._echo(info.filename)}); links are refused.")
            if info.is_dir() or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                continue
            if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if info.file_size > MAX_BYTES:
                raise TrainingRefused(f"The entry {H._echo(info.filename)} unpacks to {info.file_size:,} bytes, more "
                                      f"than the {MAX_BYTES // 1_000_000} MB an image may be.")
            if info.file_size > 1_000_000 and info.file_size > RATIO * max(info.compress_size, 1):
                raise TrainingRefused(f"The entry {H._echo(info.filename)} unpacks to {info.file_size:,} bytes from "
                                      f"{info.compress_size:,}: the zip looks like a zip bomb and was refused.")
            unpacked += info.file_size
            if unpacked > MAX_UNPACKED:
                raise TrainingRefused(f"The zip unpacks to more than {MAX_UNPACKED // 1_000_000} MB; give a "
                                      "smaller one.")
            images.append((parts, info))
        if len(images) > MAX_IMAGES:
            raise TrainingRefused(f"The zip holds {len(images):,} images, more than the {MAX_IMAGES:,} allowed.")
        tops = {parts[0] for parts, _ in images}
        strip = 1 if len(tops) == 1 and all(len(parts) >= 3 for parts, _ in images) else 0  # one folder of classes
        by_class: dict[str, list[zipfile.ZipInfo]] = {}
        for parts, info in images:
            if len(parts) - strip >= 2:  # class/.../image
                by_class.setdefault(parts[strip], []).append(info)
        if len(by_class) < 2:
            raise TrainingRefused(f"The zip has {len(by_class)} class folder(s) with images; training needs at least "
                                  "two (one folder per class, each with its images).")
        dest.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="zip-", dir=dest.parent))
        try:
            counts: dict[str, int] = {}
            for klass, entries in sorted(by_class.items()):
                target = dest / klass  # one part of a checked path: no separator, not "." nor ".."
                target.mkdir(parents=True, exist_ok=True)
                counts[klass] = 0
                for n, info in enumerate(entries):
                    with archive.open(info) as f:
                        data = f.read(MAX_BYTES + 1)  # the header's size may lie: never read more than this
                    if len(data) > MAX_BYTES:
                        raise TrainingRefused(f"The entry {H._echo(info.filename)} is larger than the "
                                              f"{MAX_BYTES // 1_000_000} MB an image may be.")
                    temp = scratch / f"{n}{Path(info.filename).suffix.lower()}"
                    temp.write_bytes(data)
                    try:
                        picture = decode(str(temp))
                    except (UserError, gr.Error, OSError, ValueError):
                        continue  # unreadable: skipped (the run's log counts what the folder holds)
                    finally:
                        temp.unlink(missing_ok=True)
                    picture = picture.convert("RGB")
                    picture.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
                    picture.save(target / f"{n:05d}.png")
                    counts[klass] += 1
        except zipfile.BadZipFile:
            raise TrainingRefused("The zip is damaged (an entry could not be unpacked).") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    few = {k: n for k, n in counts.items() if n < MIN_PER_CLASS}
    if few:
        name, n = min(few.items(), key=lambda kv: kv[1])
        raise TrainingRefused(f"The class {name!r} has {n} readable image(s); give every class at least "
                              f"{MIN_PER_CLASS} (10 or more to learn anything).")
    return dest


# -------------------------------------------------------------------------------------------------------
# a run and its pictures


@dataclass
class Run:
    """One training run: what its thread has logged so far (appended by the training thread, read by the page)."""

    id: str
    owner: str  # the Gradio session that started it: only it may stop it
    name: str  # shown in the Architecture list as "trained here: <name>"
    config: TrainConfig
    device: str
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    steps: list[tuple[int, float, float, int]] = field(default_factory=list)  # (step, loss, accuracy, images)
    epochs: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, history row)
    lines: list[str] = field(default_factory=list)  # the run's log
    warnings: list[str] = field(default_factory=list)
    total_steps: int = 0
    conv1: tuple[int, torch.Tensor] | None = None  # (step, weight): the latest copy
    result: TrainResult | None = None
    error: str | None = None
    model_name: str | None = None  # the pool's name once registered
    stopped_by: str = ""  # why it was stopped ("by you", "the time limit", "the page was closed")
    note: str = ""  # what to know about the data (the bundled photos' caveat)

    def on_step(self, info: StepInfo) -> None:
        self.total_steps = info.total_steps
        self.steps.append((info.step, info.loss, info.accuracy, info.images))
        conv1 = getattr(info.model, "conv1", None)
        if conv1 is not None and (self.conv1 is None or info.step % FILTERS_EVERY == 0):
            self.conv1 = (info.step, conv1.weight.detach().cpu().clone())

    def on_epoch(self, row: dict[str, float]) -> None:
        self.epochs.append((self.steps[-1][0] if self.steps else 0, dict(row)))

    def curves(self) -> dict[str, list[float]]:
        """What the curves picture draws, all from the run's own log: each step's batch loss and accuracy, and
        each epoch's (or the stopped epoch part's) validation loss and accuracy at the step it ended."""
        steps, epochs = list(self.steps), list(self.epochs)
        return {"step": [s[0] for s in steps], "loss": [s[1] for s in steps], "accuracy": [s[2] for s in steps],
                "val_step": [s for s, _ in epochs], "val_loss": [r["val_loss"] for _, r in epochs],
                "val_accuracy": [r["val_accuracy"] for _, r in epochs]}


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def curves_picture(data: Mapping[str, list[float]], title: str = "") -> Image.Image:
    """Loss and accuracy against the optimizer step: each batch (faint), their running mean over 10 steps, and
    the validation set at the end of each epoch (dots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: this runs beside other threads' figures
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    steps = data["step"]
    for ax, key, val, what in ((ax1, "loss", "val_loss", "cross-entropy loss"),
                               (ax2, "accuracy", "val_accuracy", "accuracy")):
        if steps:
            ax.plot(steps, data[key], color="#1f77b4", alpha=0.25, linewidth=1)
            ax.plot(steps, _smooth(list(data[key]), 10), color="#1f77b4", linewidth=2, label="training (batches)")
        if data[val]:
            ax.plot(data["val_step"], data[val], "o-", color="#d62728", linewidth=2, label="validation (epochs)")
        ax.set(xlabel="optimizer step", ylabel=what, title=what)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if steps or data[val]:
            ax.legend(loc="best")
    if not steps:
        ax1.text(0.5, 0.5, "waiting for the first step ...", ha="center", va="center", transform=ax1.transAxes)
    ax2.set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


# The engine's advice names the command line's flags; the page has its Epochs slider instead.
_CLI_ADVICE = ("leave --batch-size and --epochs out to have them chosen from the data, or give a smaller batch or "
               "more epochs")
_PAGE_ADVICE = "set Epochs to 0 to have them chosen from the data, or give more epochs"


def _for_the_page(warning: str) -> str:
    return warning.replace(_CLI_ADVICE, _PAGE_ADVICE)


def filters_picture(run: Run) -> Image.Image | None:
    if run.conv1 is None:
        return None
    step, weight = run.conv1
    k = int(weight.shape[-1])  # each filter ~48 px, as in train's filters.gif: the grid fits beside the curves
    return render.label(render.filter_grid(weight.float().numpy(), scale=max(2, 48 // k)),
                        f"conv1 after optimizer step {step}")


# -------------------------------------------------------------------------------------------------------
# the handlers


_RUN_LOCK = threading.Lock()  # one run at a time in this process (the whole server)
_ACTIVE: Run | None = None


def active_run() -> Run | None:
    return _ACTIVE


class TrainHandlers:
    """The tab's handlers; each update is ``{name: value}``. ``runs`` is where run folders go."""

    OUTPUTS = ("train_status", "train_curves", "train_filters", "train_top5", "arch")

    def __init__(self, h: H.Handlers, runs: Path | None = None, *, time_limit_s: float = TRAIN_LIMIT_S) -> None:
        self.h = h
        self.pool: ModelPool = h.pool
        if runs is None:  # a folder of our own, gone with this object (or at exit)
            self.runs = Path(tempfile.mkdtemp(prefix="alexnet-viz-train-"))
            weakref.finalize(self, shutil.rmtree, self.runs, ignore_errors=True)
        else:
            self.runs = Path(runs)
            self.runs.mkdir(parents=True, exist_ok=True)
        self.time_limit_s = time_limit_s
        self.names: dict[str, str] = {}  # run id -> its name, for the Architecture list
        self.last: Run | None = None  # the latest run this page started

    # --- starting ------------------------------------------------------------------------------------

    def _data(self, source: str, upload: Any, folder: Path) -> tuple[str, str]:
        """The data argument of the run and a sentence about it."""
        if source == "bundled":
            return str(bundled_folder(self.runs)), BUNDLED_NOTE.format(n=BUNDLED_PER_CLASS)
        if source == "zip":
            if not upload:
                raise TrainingRefused("Upload a zip of class folders first (one folder per class).")
            path = Path(H.upload_path(upload))
            stem = re.sub(r"[^\w .-]+", "_", path.stem).strip(" .") or "data"  # the model card's dataset name
            return str(extract_zip(path, folder / stem, self.h.decode)), ""
        if source == "fashion-mnist":
            if not fashion_mnist_installed():
                raise TrainingRefused("Fashion-MNIST is not installed on this server (Debian's "
                                      "dataset-fashion-mnist package).")
            return "fashion-mnist", "Fashion-MNIST: 54,000 training images of 28 px clothes in 10 classes."
        raise TrainingRefused(f"Unknown data source {H._echo(source)}.")

    def begin(self, owner: str, source: str, upload: Any, arch: str, epochs: Any, *, device: str | None = None,
              seed: int = 0) -> Run:
        """Check the settings, take the server's one training slot, prepare the data and start the thread."""
        global _ACTIVE
        if not training_enabled():
            raise TrainingRefused(OFF_SENTENCE)
        arch = H._choice(arch, "architecture", list(ARCHITECTURES))
        n_epochs = int(H._number(epochs, "number of epochs", 0, 100))
        if not _RUN_LOCK.acquire(blocking=False):
            raise TrainingRefused("A training run is in progress on this server; wait until it ends, then try again.")
        folder: Path | None = None
        try:
            run_id = time.strftime("%H%M%S-") + uuid.uuid4().hex[:6]
            folder = self.runs / run_id
            folder.mkdir(parents=True)
            data, note = self._data(source, upload, folder)
            name = f"{arch} on {source if source != 'zip' else Path(str(H.upload_path(upload))).stem} {run_id}"
            device = device or self.pool.default_key[1]
            config = TrainConfig(arch=arch, data=data, out=str(folder / "run"), epochs=n_epochs or None, seed=seed,
                                 device=device, init="none", snapshots=0)
            run = Run(id=run_id, owner=owner, name=name, config=config, device=device, note=note)
            _ACTIVE = self.last = run
            threading.Thread(target=self._work, args=(run,), name=f"train-{run_id}", daemon=True).start()
            return run
        except BaseException:
            _ACTIVE = None
            _RUN_LOCK.release()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _work(self, run: Run) -> None:
        """The training thread: train, register the model, give the slot back."""
        global _ACTIVE
        try:
            run.result = train(run.config, progress=False, log=run.lines.append, warn=run.warnings.append,
                               on_step=run.on_step, on_epoch=run.on_epoch, stop=run.stop)
            run.model_name, forgotten = self.pool.add_trained(run.id, run.result.out / "model.safetensors",
                                                              run.device)
            conv1 = getattr(self.pool.get(run.model_name, run.device).module, "conv1", None)
            if conv1 is not None:  # the last picture shows the weights the run ended with
                run.conv1 = (run.steps[-1][0] if run.steps else 0, conv1.weight.detach().cpu().clone())
            for weights in forgotten:  # the run folders of models the pool no longer keeps
                folder = weights.parent.parent
                if folder.parent == self.runs:
                    shutil.rmtree(folder, ignore_errors=True)
        except UserError as e:
            run.error = str(e)
        except Exception:
            log.exception("training run %s failed", run.id)
            run.error = "Something went wrong while training; please try again."
        finally:
            if run.model_name is None:  # nothing to keep
                shutil.rmtree(Path(run.config.out).parent, ignore_errors=True)
            _ACTIVE = None
            run.done.set()
            _RUN_LOCK.release()

    # --- watching --------------------------------------------------------------------------------------

    def status(self, run: Run) -> str:
        done = run.steps[-1][0] if run.steps else 0
        seconds = time.monotonic() - run.started
        if not run.done.is_set():
            of = f" of {run.total_steps}" if run.total_steps else ""
            last = run.epochs[-1][1] if run.epochs else None
            val = (f"; validation accuracy {last['val_accuracy']:.1%} after epoch {last['epoch']:g}" if last else "")
            head = run.lines[-1] if run.lines and not run.steps else ""
            return (f"**Training** {html.escape(run.name)}: step {done}{of}, {seconds:.0f} s{val}. "
                    + (html.escape(head) if head else "Press **Stop** to end it early.")
                    + (f"\n\n{run.note}" if run.note else ""))
        r = run.result
        if run.error or r is None:
            return f"**The run failed:** {html.escape(run.error or 'it ended without a result')}"
        how = (f"Stopped ({run.stopped_by or 'on request'}) after {done} optimizer steps" if r.stopped
               else f"Finished: {done} optimizer steps")
        warn = "".join(f"\n\n⚠ {html.escape(_for_the_page(w))}" for w in run.warnings)
        warn += f"\n\n{run.note}" if run.note else ""
        return (f"**{how}** in {r.seconds:.0f} s; test accuracy **{r.test_accuracy:.1%}** on "
                f"{r.card.get('test_size', '?')} images. Choose **trained here: {html.escape(run.name)}** in the "
                f"Architecture list above to use it in every tab.{warn}")

    def arch_choices(self) -> list[tuple[str, str]]:
        """The Architecture list: every architecture, then the models trained here that the pool keeps."""
        return [(name, name) for name in ARCHITECTURES] + [(self.label(n), n) for n in self.pool.trained]

    def label(self, name: str) -> str:
        run = name[len(TRAINED_PREFIX):]
        return f"trained here: {self.names.get(run, run)}"

    def _final(self, run: Run, image: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"train_status": self.status(run), "train_curves": self._curves(run),
                               "train_filters": filters_picture(run)}
        if run.model_name is not None:
            self.names[run.id] = run.name
            out["arch"] = gr.update(choices=self.arch_choices())
            try:
                out["train_top5"] = self.top5(run.model_name, image)
            except (UserError, gr.Error) as e:
                out["train_top5"] = f"<div class='top5 top5-empty'>{html.escape(str(e))}</div>"
        return out

    def _curves(self, run: Run) -> Image.Image:
        return curves_picture(run.curves(), f"{run.name}: loss and accuracy")

    def top5(self, name: str, image: Any) -> str:
        """The trained model's top-5 for the visitor's image (or a sentence when there is none)."""
        if not image:
            return "<div class='top5 top5-empty'>Give an image above to see what the trained network makes of it.</div>"
        loaded = self.pool.get(name, self.pool.default_key[1])
        return H.top5_html(analyze(loaded, self.h.decode(H.upload_path(image)), capture=False))

    def start(self, owner: str, source: str, upload: Any, arch: str, epochs: Any, image: Any = None, *,
              event: Any = None) -> Iterator[dict[str, Any]]:
        """Start a run and follow it: a new curves picture at most every second, conv1 when a new copy came,
        then the result. The run is stopped if the visitor leaves or it passes the time limit."""
        run = self.begin(owner, source, upload, arch, epochs)
        try:
            yield {"train_status": self.status(run), "train_curves": self._curves(run), "train_filters": None,
                   "train_top5": ""}
            drawn_steps, drawn_filters, due = 0, -1, 0.0
            while not run.done.wait(POLL_S):
                if not run.stop.is_set():
                    if time.monotonic() - run.started > self.time_limit_s:
                        run.stopped_by = f"the {self.time_limit_s:.0f} s time limit"
                        run.stop.set()
                    elif H._event_gone(event):
                        run.stopped_by = "the page was closed"
                        run.stop.set()
                if len(run.steps) == drawn_steps or time.monotonic() < due:
                    continue
                began = time.monotonic()
                drawn_steps = len(run.steps)
                out = {"train_status": self.status(run), "train_curves": self._curves(run)}
                if run.conv1 is not None and run.conv1[0] != drawn_filters:
                    drawn_filters = run.conv1[0]
                    out["train_filters"] = filters_picture(run)
                took = time.monotonic() - began
                due = began + max(DRAW_EVERY_S, took / DRAW_SHARE)
                yield out
        except GeneratorExit:  # Gradio closed the event (the visitor left or cancelled): nobody watches the run
            if not run.done.is_set():
                run.stopped_by = "the page was closed"
                run.stop.set()
            raise
        yield self._final(run, image)

    def stop(self, owner: str) -> dict[str, Any]:
        """Stop the visitor's run (between two optimizer steps); the Start event then shows its result."""
        run = _ACTIVE
        if run is None or run.done.is_set():
            raise TrainingRefused("No training run is in progress.")
        if run.owner != owner:
            raise TrainingRefused("The run in progress was started by someone else; only they can stop it.")
        run.stopped_by = "by you"
        run.stop.set()
        return {"train_status": "Stopping after this optimizer step ..."}


_shared: weakref.WeakKeyDictionary[H.Handlers, TrainHandlers] = weakref.WeakKeyDictionary()


def shared(h: H.Handlers) -> TrainHandlers:
    if h not in _shared:
        _shared[h] = TrainHandlers(h)
    return _shared[h]


# -------------------------------------------------------------------------------------------------------
# the tab


def add_train_tab(page: Any, h: H.Handlers, pool: ModelPool) -> None:
    """The Train tab; with training off (a public Space without ``--allow-training``) one sentence instead."""
    from .layout import picture
    from .units_tab import _streamed

    c, on = page.c, page.on
    with gr.Tab("Train", id="train"):
        if not training_enabled():
            gr.Markdown(OFF_SENTENCE, elem_id="train-off")
            return
        t = shared(h)
        gr.Markdown(CAPTION, elem_classes="caption")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                c["train_source"] = gr.Radio(source_choices(), value="bundled", label="Data", info=SOURCE_INFO,
                                             elem_id="train-source")
                c["train_zip"] = gr.File(label="Zip of class folders", file_types=[".zip"], height=100,
                                         elem_id="train-zip")
                with gr.Row():
                    c["train_arch"] = gr.Dropdown(ARCH_CHOICES, value="cifar", label="Network to train",
                                                  elem_id="train-arch")
                    c["train_epochs"] = gr.Slider(0, 100, value=0, step=1, label="Epochs",
                                                  info="0: enough for about 200 optimizer steps",
                                                  elem_id="train-epochs")
                with gr.Row():
                    c["train_start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
                    c["train_stop"] = gr.Button("Stop", variant="stop", elem_id="train-stop")
                c["train_status"] = gr.Markdown("Choose the data and press **Start training**.",
                                                elem_id="train-status")
                c["train_top5"] = gr.HTML(elem_id="train-top5")
            with gr.Column(scale=3):
                c["train_curves"] = picture("Loss and accuracy", elem_id="train-curves")
                c["train_filters"] = picture("conv1 filters while training", elem_id="train-filters")

    def start(source: str, upload: Any, arch: str, epochs: Any, image: Any,
              request: gr.Request) -> Iterator[dict[str, Any]]:
        return t.start(request.session_hash or "", source, upload, arch, epochs, image, event=H._current_event())

    def stop(request: gr.Request) -> dict[str, Any]:
        return H.friendly("stopping the run")(t.stop)(request.session_hash or "")

    outputs = list(TrainHandlers.OUTPUTS)
    gr.on([c["train_start"].click], _streamed(page, start, "training"),
          [c[n] for n in ("train_source", "train_zip", "train_arch", "train_epochs", "image")],
          [c[n] for n in outputs], api_visibility="private", preprocess=False, concurrency_id=TRAIN_GROUP,
          concurrency_limit=TRAIN_CONCURRENCY, show_progress_on=[c["train_status"]])
    on([c["train_stop"].click], stop, [], ["train_status"], api_visibility="private", concurrency_id="instant",
       concurrency_limit=None)
