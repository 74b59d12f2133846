"""Dataset examples and nearest neighbours: a folder of images run once, kept as an index file.

:func:`build_index` runs every image of a folder through the network once and keeps

- per channel of every conv layer, the 9 images that excite it most (at most one hit per image): the
  image, the position of its strongest response and the value (the conv output before its ReLU, whose
  maximum is the ReLU's wherever it is positive);
- every image's fc7 vector after its ReLU (the 2012 paper's Figure 4 compares images in this space),
  and a 32x32 thumbnail of what the network sees (the "pixel space" of the same figure).

:func:`receptive_field` gives the exact input window of a unit from the conv and pool arithmetic
(torchvision: conv1 11 px, conv2 51, conv3 99, conv4 131, conv5 163; pool5 195), so :func:`top_crops`
cuts out exactly what the unit saw.

The index is one ``.npz`` file (numbers) with a JSON header inside (paths, model, weights fingerprint);
it is read with ``allow_pickle=False``, so a file from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .activations import capture
from .errors import UserError
from .images import ImageError, load_image
from .model import LoadedModel

__all__ = [
    "ASSETS",
    "IMAGE_SUFFIXES",
    "TOP_K",
    "GalleryError",
    "GalleryIndex",
    "Hit",
    "Neighbour",
    "Neighbours",
    "ReceptiveField",
    "assets_index",
    "benchmark_rows",
    "build_index",
    "find_images",
    "image_features",
    "nearest",
    "neighbours",
    "network_view",
    "receptive_field",
    "top_crops",
]

Progress = Callable[[float, str], None]
TOP_K = 9
THUMB = 32  # side of the pixel-space thumbnail
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # the bundled example photos (in the repository)
_FORMAT = "alexnet-viz gallery index"
_VERSION = 1


class GalleryError(UserError):
    """An index or folder that cannot be used; the message says why."""


# --- receptive fields ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceptiveField:
    """Unit (y, x) of a layer sees input rows ``start + y*stride`` ... ``+ size - 1`` (columns alike);
    ``start`` is negative where padding reaches outside the image."""

    layer: str
    size: int
    stride: int
    start: int

    def box(self, y: int, x: int, input_size: int | None = None) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive; clipped to the image when its size is given."""
        top, left = self.start + y * self.stride, self.start + x * self.stride
        bottom, right = top + self.size, left + self.size
        if input_size is not None:
            top, left = max(0, top), max(0, left)
            bottom, right = min(input_size, bottom), min(input_size, right)
        return top, left, bottom, right


def _first(value: Any) -> int:
    return int(value if isinstance(value, int) else value[0])  # square windows: (k, k) -> k


def _geometry(m: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a layer that moves the window, None for one that does not."""
    if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        if isinstance(m.padding, str):
            raise GalleryError(f"padding={m.padding!r} is not supported for receptive fields.")
        dilation = _first(m.dilation) if isinstance(m, nn.Conv2d | nn.MaxPool2d) else 1
        return (_first(m.kernel_size) - 1) * dilation + 1, _first(m.stride), _first(m.padding)
    return None


def receptive_field(module: nn.Sequential, layer: str) -> ReceptiveField:
    """The input window of one unit of ``layer``, from the kernel, stride and padding of every layer
    before it (ReLU, LRN and BatchNorm act per position and change nothing)."""
    size, stride, start = 1, 1, 0
    for name, m in module.named_children():
        if isinstance(m, nn.Flatten | nn.Linear | nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            raise GalleryError(f"{layer} is past the convolutions: its units see the whole image.")
        g = _geometry(m)
        if g is not None:
            k, s, p = g
            start -= p * stride
            size += (k - 1) * stride
            stride *= s
        if name == layer:
            return ReceptiveField(layer, size, stride, start)
    raise GalleryError(f"There is no layer {layer!r}.")


# --- features of images ------------------------------------------------------------------------------------


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (recursively), by suffix, sorted by path: the index's image order."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise GalleryError(f"{root} is not a folder of images.")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise GalleryError(f"There are no images ({', '.join(IMAGE_SUFFIXES)}) in {root}.")
    return found


def _embedding_layer(loaded: LoadedModel) -> str:
    """The ReLU after the second-to-last Linear: relu7 (fc7 after its ReLU)."""
    names = [n for n, _ in loaded.module.named_children()]
    fcs = [n for n, m in loaded.module.named_children() if isinstance(m, nn.Linear)]
    fc = fcs[-2] if len(fcs) > 1 else fcs[-1]
    after = names[names.index(fc) + 1]
    return after if isinstance(loaded.module.get_submodule(after), nn.ReLU) else fc


def image_features(loaded: LoadedModel, x: torch.Tensor, *, lock: Any = "model") -> dict[str, torch.Tensor]:
    """One forward pass of normalised inputs (B, 3, S, S): every conv layer's output (before its ReLU),
    ``"fc7"`` (B, D) after its ReLU and ``"pixels"`` (B, 3*32*32), the input thumbnail in [0, 1]."""
    convs = loaded.conv_layers
    embed = _embedding_layer(loaded)
    if lock == "model":
        lock = loaded.lock
    with lock if lock is not None else contextlib.nullcontext(), torch.inference_mode(), \
            capture(loaded.module, [*convs, embed]) as acts:
        loaded.module(x.to(loaded.device))
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    x01 = (x.detach().cpu().float() * std + mean).clamp(0, 1)
    thumbs = F.adaptive_avg_pool2d(x01, THUMB).flatten(1)
    out = {name: acts[name].float() for name in convs}
    out["fc7"] = F.relu(acts[embed].float())  # relu7 already is; fc7 for a model without one
    out["pixels"] = thumbs
    return out


# --- the index ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    image: int  # index into GalleryIndex.paths
    path: Path
    y: int  # position in the layer's map
    x: int
    value: float
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in the network's input, unclipped


@dataclass(frozen=True, eq=False)
class GalleryIndex:
    arch: str
    weights: str  # how the model was loaded: "imagenet", "none" or a file path
    fingerprint: str  # featvis.weights_fingerprint of the module
    input_size: int
    root: Path  # the folder the images were found in
    paths: tuple[str, ...]  # relative to root, in index order
    fc7: np.ndarray  # (N, D) float32, after ReLU
    pixels: np.ndarray  # (N, 3*32*32) float32 in [0, 1]
    top_image: MappingProxyType[str, np.ndarray]  # layer -> (C, 9) int64 image index, -1 where fewer images
    top_value: MappingProxyType[str, np.ndarray]  # layer -> (C, 9) float32
    top_pos: MappingProxyType[str, np.ndarray]  # layer -> (C, 9, 2) int32 (y, x)
    fields: MappingProxyType[str, ReceptiveField]
    skipped: tuple[str, ...] = ()  # files that were not readable images

    @property
    def layers(self) -> list[str]:
        return list(self.top_image)

    def path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def top(self, layer: str, channel: int) -> list[Hit]:
        """The (up to) 9 strongest images of a channel, strongest first."""
        if layer not in self.top_image:
            raise GalleryError(f"The index has no layer {layer!r}; it has {', '.join(self.layers)}.")
        images = self.top_image[layer]
        if not 0 <= channel < images.shape[0]:
            raise GalleryError(f"{layer} has channels 0-{images.shape[0] - 1}, not {channel}.")
        rf = self.fields[layer]
        hits = []
        for i, v, (y, x) in zip(images[channel], self.top_value[layer][channel], self.top_pos[layer][channel],
                                strict=True):
            if i < 0:
                break
            hits.append(Hit(int(i), self.path(int(i)), int(y), int(x), float(v), rf.box(int(y), int(x))))
        return hits

    # --- file format ---

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        meta = {"format": _FORMAT, "version": _VERSION, "arch": self.arch, "weights": self.weights,
                "fingerprint": self.fingerprint, "input_size": self.input_size, "root": str(self.root),
                "paths": list(self.paths), "layers": self.layers, "skipped": list(self.skipped),
                "fields": {k: [f.size, f.stride, f.start] for k, f in self.fields.items()}}
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "fc7": self.fc7, "pixels": self.pixels,
        }
        for layer in self.layers:
            arrays[f"top_image__{layer}"] = self.top_image[layer]
            arrays[f"top_value__{layer}"] = self.top_value[layer]
            arrays[f"top_pos__{layer}"] = self.top_pos[layer]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GalleryIndex:
        path = Path(path).expanduser()
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
                    raise GalleryError(f"{path.name} is not an alexnet-viz gallery index (version {_VERSION}).")
                layers = meta["layers"]
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except GalleryError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise GalleryError(f"Cannot read the gallery index {path} ({e}).") from e
        root = Path(meta["root"])
        if not root.is_dir() and path.parent.is_dir():  # moved with its images: look beside the index
            root = path.parent
        return cls(
            arch=meta["arch"], weights=meta["weights"], fingerprint=meta["fingerprint"],
            input_size=int(meta["input_size"]), root=root, paths=tuple(meta["paths"]),
            fc7=arrays["fc7"], pixels=arrays["pixels"],
            top_image=MappingProxyType({k: arrays[f"top_image__{k}"] for k in layers}),
            top_value=MappingProxyType({k: arrays[f"top_value__{k}"] for k in layers}),
            top_pos=MappingProxyType({k: arrays[f"top_pos__{k}"] for k in layers}),
            fields=MappingProxyType({k: ReceptiveField(k, *v) for k, v in meta["fields"].items()}),
            skipped=tuple(meta.get("skipped", ())),
        )


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """(N, C) -> (C, k) image indices, largest value first, ties to the lower index; -1 pads when N < k."""
    n, c = values.shape
    order = np.lexsort((np.broadcast_to(np.arange(n)[:, None], (n, c)), -values), axis=0)[:k].T  # (C, <=k)
    if n < k:
        order = np.concatenate([order, np.full((c, k - n), -1, dtype=order.dtype)], axis=1)
    return order.astype(np.int64)


def build_index(
    loaded: LoadedModel, folder: str | os.PathLike[str], *, weights: str = "", batch: int = 16,
    progress: Progress | None = None, lock: Any = "model",
) -> GalleryIndex:
    """Run every image under ``folder`` through ``loaded`` once (``batch`` at a time) and index it."""
    from .featvis import weights_fingerprint

    root = Path(folder).expanduser().resolve()
    files = find_images(root)
    convs = loaded.conv_layers
    maxima: dict[str, list[np.ndarray]] = {c: [] for c in convs}  # per batch: (B, C)
    where: dict[str, list[np.ndarray]] = {c: [] for c in convs}  # per batch: (B, C, 2)
    fc7: list[np.ndarray] = []
    pixels: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[str] = []
    for start in range(0, len(files), batch):
        tensors = []
        for path in files[start: start + batch]:
            try:
                tensors.append(loaded.preprocess(load_image(path)))
                kept.append(path.relative_to(root).as_posix())
            except ImageError:
                skipped.append(path.relative_to(root).as_posix())
        if tensors:
            feats = image_features(loaded, torch.cat(tensors), lock=lock)
            for layer in convs:
                a = feats[layer]  # (B, C, h, w)
                flat = a.flatten(2)
                value, arg = flat.max(dim=2)  # the first maximum in row-major order
                maxima[layer].append(value.numpy())
                where[layer].append(np.stack([(arg // a.shape[3]).numpy(), (arg % a.shape[3]).numpy()], -1))
            fc7.append(feats["fc7"].numpy())
            pixels.append(feats["pixels"].numpy())
        if progress is not None:
            done = min(start + batch, len(files))
            progress(done / len(files), f"{done}/{len(files)} images")
    if not kept:
        raise GalleryError(f"None of the {len(files)} files in {root} is a readable image.")
    top_image, top_value, top_pos = {}, {}, {}
    for layer in convs:
        values = np.concatenate(maxima[layer])  # (N, C)
        pos = np.concatenate(where[layer]).astype(np.int32)  # (N, C, 2)
        idx = _top_k(values, TOP_K)  # (C, 9)
        safe = np.where(idx < 0, 0, idx)
        channels = np.arange(values.shape[1])[:, None]
        top_image[layer] = idx
        top_value[layer] = np.where(idx < 0, np.nan, values[safe, channels]).astype(np.float32)
        top_pos[layer] = np.where((idx < 0)[..., None], -1, pos[safe, channels]).astype(np.int32)
    return GalleryIndex(
        arch=loaded.arch, weights=weights or loaded.weights.source, fingerprint=weights_fingerprint(loaded.module),
        input_size=loaded.input_size, root=root, paths=tuple(kept),
        fc7=np.concatenate(fc7).astype(np.float32), pixels=np.concatenate(pixels).astype(np.float32),
        top_image=MappingProxyType(top_image), top_value=MappingProxyType(top_value),
        top_pos=MappingProxyType(top_pos),
        fields=MappingProxyType({layer: receptive_field(loaded.module, layer) for layer in convs}),
        skipped=tuple(skipped),
    )


def assets_index(loaded: LoadedModel, *, folder: str | os.PathLike[str] = ASSETS, cache_dir: Path | None = None,
                 progress: Progress | None = None) -> GalleryIndex:
    """The app's default gallery: ``folder`` (the bundled photos) indexed with ``loaded``, kept on disk per
    architecture and weights fingerprint and rebuilt when the folder's images change."""
    from .featvis import default_cache_dir, weights_fingerprint

    root = Path(folder).expanduser().resolve()
    files = [p.relative_to(root).as_posix() for p in find_images(root)]
    folder_key = hashlib.sha256(json.dumps([str(root), files]).encode()).hexdigest()[:8]
    cache = cache_dir or default_cache_dir().parent / "gallery"
    path = cache / f"{loaded.arch}-{weights_fingerprint(loaded.module)[:16]}-{folder_key}.npz"
    if path.is_file():
        try:
            index = GalleryIndex.load(path)
            if index.root == root and set(index.paths) | set(index.skipped) == set(files):
                return index
        except GalleryError:
            pass  # damaged: build it again
    index = build_index(loaded, root, weights=loaded.weights.description, progress=progress)
    with contextlib.suppress(OSError):  # a read-only disk costs the cache, not the gallery
        index.save(path)
    return index


# --- what the page shows ---------------------------------------------------------------------------------------


def network_view(loaded: LoadedModel, path: Path) -> Image.Image:
    """A gallery image as the network sees it (resized and centre-cropped, input_size square)."""
    return _view(loaded, path)


def _view(loaded: LoadedModel, path: Path) -> Image.Image:
    from .analysis import input_view

    return input_view(loaded.preprocess(load_image(path)).cpu(), loaded.mean, loaded.std)


def top_crops(index: GalleryIndex, loaded: LoadedModel, layer: str, channel: int) -> list[tuple[Image.Image, Hit]]:
    """The receptive-field crops of a channel's 9 strongest images, as the network saw them (resized and
    centre-cropped); the part of a window that lies in the padding is grey."""
    out = []
    for hit in index.top(layer, channel):
        view = _view(loaded, hit.path)
        top, left, bottom, right = hit.box
        crop = Image.new("RGB", (right - left, bottom - top), (128, 128, 128))
        inside = view.crop((max(0, left), max(0, top), min(view.width, right), min(view.height, bottom)))
        crop.paste(inside, (max(0, left) - left, max(0, top) - top))
        out.append((crop, hit))
    return out


@dataclass(frozen=True)
class Neighbour:
    image: int
    path: Path
    distance: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "distance": self.distance}


@dataclass(frozen=True)
class Neighbours:
    fc7: tuple[Neighbour, ...]
    pixels: tuple[Neighbour, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"fc7": [n.to_dict() for n in self.fc7], "pixels": [n.to_dict() for n in self.pixels]}


def nearest(bank: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` rows of ``bank`` (N, D) nearest ``query`` (D,) in Euclidean distance (float64), nearest
    first, ties to the lower row."""
    d = np.sqrt(((bank.astype(np.float64) - query.astype(np.float64)[None, :]) ** 2).sum(axis=1))
    order = np.lexsort((np.arange(len(d)), d))[:k]
    return [(int(i), float(d[i])) for i in order]


def neighbours(index: GalleryIndex, loaded: LoadedModel, image: Any, *, k: int = 6, lock: Any = "model") -> Neighbours:
    """The ``k`` gallery images nearest ``image`` in fc7 space and in pixel space (2012 paper, Figure 4).

    ``image``: a file or picture (preprocessed here), or the normalised input (1, 3, S, S) itself."""
    from .featvis import weights_fingerprint

    if loaded.arch != index.arch or weights_fingerprint(loaded.module) != index.fingerprint:
        raise GalleryError("The gallery index was built with another model or other weights; rebuild it "
                           f"with `alexnet-viz index` for {loaded.arch} and these weights.")
    if not 1 <= k <= len(index.paths):
        k = max(1, min(k, len(index.paths)))
    if isinstance(image, torch.Tensor):  # already the network's input (1, 3, S, S), e.g. Analysis.input
        x = image.detach()
    else:
        pil = image if isinstance(image, Image.Image) else load_image(image)
        x = loaded.preprocess(pil.convert("RGB"))
    feats = image_features(loaded, x, lock=lock)

    def rank(bank: np.ndarray, query: torch.Tensor) -> tuple[Neighbour, ...]:
        return tuple(Neighbour(i, index.path(i), d) for i, d in nearest(bank, query[0].numpy(), k))

    return Neighbours(fc7=rank(index.fc7, feats["fc7"]), pixels=rank(index.pixels, feats["pixels"]))



def benchmark_rows(loaded: LoadedModel, folder: str | os.PathLike[str], *, repeats: int = 5,
                   query: Any = None) -> list[dict[str, Any]]:
    """Median seconds to index ``folder`` (per image) and to find one image's neighbours in it."""
    import time

    index_s, neighbour_s = [], []
    index = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        index = build_index(loaded, folder, lock=None)
        index_s.append((time.perf_counter() - t0) / len(index.paths))
    assert index is not None  # noqa: S101 - repeats >= 1
    probe = query if query is not None else index.path(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        neighbours(index, loaded, probe, lock=None)
        neighbour_s.append(time.perf_counter() - t0)
    common = {"repeats": repeats, "threads": torch.get_num_threads(), "device": str(loaded.device),
              "images": len(index.paths)}
    return [{"name": "gallery index (per image)", "seconds": round(float(np.median(index_s)), 4), **common},
            {"name": "neighbours (one image, fc7 + pixels)", "seconds": round(float(np.median(neighbour_s)), 4),
             **common}]
