"""Where weights come from: torchvision's ImageNet checkpoint, a local file, or none (seeded, untrained).

A source is typed (:class:`ImageNet`, :class:`Untrained`, :class:`WeightsFile`); :func:`parse_source` turns
the words a person types (``imagenet``, ``none``, a path) into one, so no code compares strings with paths.

Every file is read without running code: safetensors, or ``torch.load(weights_only=True)``. The
ImageNet checkpoint goes through torch's hub cache (``$TORCH_HOME/hub/checkpoints``), is downloaded
with torch's own progress bar and hash check when missing, and its SHA-256 prefix is checked again
before each load (torchvision checks it only at download time, and unpickles with weights_only=False).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from torch import nn
from torchvision.models import AlexNet_Weights

from .architectures import torchvision_key_map
from .errors import UserError

__all__ = [
    "IMAGENET",
    "ImageNet",
    "Untrained",
    "WeightsError",
    "WeightsFile",
    "WeightsSource",
    "WeightsStatus",
    "cached_imagenet_path",
    "canonical_keys",
    "check_finite",
    "fetch_imagenet",
    "imagenet_state_dict",
    "load_state_dict_file",
    "match_state_dict",
    "parse_source",
    "weights_status",
]

IMAGENET = AlexNet_Weights.IMAGENET1K_V1
DOWNLOAD_TIMEOUT_S = 30.0  # a lecture hall's Wi-Fi must not hang the app's start forever


class WeightsError(UserError):
    """A weights source that cannot be used; the message is one plain sentence that says what to do."""


@dataclass(frozen=True)
class ImageNet:
    """torchvision's IMAGENET1K_V1 checkpoint, from torch's hub cache (only the torchvision architecture)."""

    def __str__(self) -> str:
        return "imagenet"


@dataclass(frozen=True)
class Untrained:
    """No weights: the architecture's seeded initialisation, asked for on purpose."""

    seed: int = 0

    def __str__(self) -> str:
        return "none"


@dataclass(frozen=True)
class WeightsFile:
    """A local ``.safetensors`` or ``.pt``/``.pth`` state dict (and the ``model.json`` card beside it, if any)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


WeightsSource: TypeAlias = ImageNet | Untrained | WeightsFile


def parse_source(value: str | os.PathLike[str] | WeightsSource) -> WeightsSource:
    """``"imagenet"`` -> ImageNet(), ``"none"`` -> Untrained(), anything else -> WeightsFile(path).

    The words are matched without regard to case or surrounding spaces; a file that is really called
    ``none`` is ``./none``. A typed source is returned as it is.
    """
    if isinstance(value, ImageNet | Untrained | WeightsFile):
        return value
    if not isinstance(value, str | os.PathLike):
        raise WeightsError(f"Weights must be 'imagenet', 'none' or a file path, not {type(value).__name__}.")
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "imagenet":
            return ImageNet()
        if word == "none":
            return Untrained()
        if not word:
            raise WeightsError("No weights were named; pass 'imagenet', 'none' or a file path.")
    return WeightsFile(Path(value).expanduser())


def check_finite(state: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse weights holding NaN or infinity: every prediction and map made from them would be NaN."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise WeightsError(f"{name} holds values that are not numbers (NaN or infinity) in {shown}; "
                           "these weights cannot be used - retrain or export them again.")


def _hash_prefix(url: str) -> str:
    # torch.hub's convention: the file name ends in the first hex digits of the file's SHA-256.
    match = re.search(r"-([a-f0-9]{8,})\.", Path(url).name)
    if match is None:  # pragma: no cover - torchvision's URL always carries one
        raise WeightsError(f"{url} has no hash prefix in its name.")
    return match.group(1)


def cached_imagenet_path() -> Path:
    """Where torch's hub cache keeps (or would keep) the ImageNet checkpoint; respects TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET.url).name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_imagenet(*, progress: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download torchvision's ImageNet AlexNet checkpoint into the hub cache (hash checked); return its path.

    Does nothing when the file is already there. Raises WeightsError when offline.
    """
    path = cached_imagenet_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torch.hub's urlopen takes no timeout of its own
    try:
        # Writes to a temporary file, checks the SHA-256 prefix, then moves it into place.
        torch.hub.download_url_to_file(IMAGENET.url, str(path), hash_prefix=_hash_prefix(IMAGENET.url),
                                       progress=progress)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
        reason = getattr(e, "reason", None) or e
        raise WeightsError(
            f"The ImageNet weights are not cached at {path} and could not be downloaded ({reason}); "
            "run `alexnet-viz weights fetch` while online, or pass --weights FILE."
        ) from e
    finally:
        socket.setdefaulttimeout(previous)
    return path


def imagenet_state_dict(*, download: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 state dict, from the hub cache (downloading it if allowed)."""
    path = cached_imagenet_path()
    if not path.is_file():
        if not download:
            raise WeightsError(
                f"The ImageNet weights are not cached at {path}; "
                "run `alexnet-viz weights fetch` while online, or pass --weights FILE."
            )
        fetch_imagenet(progress=progress)
    expected = _hash_prefix(IMAGENET.url)
    if not _sha256(path).startswith(expected):
        raise WeightsError(
            f"The cached ImageNet weights at {path} are damaged (their SHA-256 does not start with "
            f"{expected}); delete the file and run `alexnet-viz weights fetch` again."
        )
    return load_state_dict_file(path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside common checkpoint layouts ({"state_dict": ...}, {"model": ...})."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("state_dict", "model_state_dict", "model") if k in obj), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise WeightsError(f"{path.name} holds no state dict of tensors (a whole pickled model is not accepted).")


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pt``/``.pth`` file into a CPU state dict without running any code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"There is no weights file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path.name} is not a readable safetensors file ({e}).") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only's unpickler refuses any global it does not know, before calling it.
        raise WeightsError(
            f"{path.name} was refused: loading it would run code or build objects that are not plain "
            "tensors; save a state_dict (or safetensors) instead."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        raise WeightsError(f"{path.name} is not a readable PyTorch weights file ({e}).") from e
    return _unwrap(obj, path)


def canonical_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision-style (``features.0.weight``) and DataParallel (``module.``) keys to ours."""
    renames = torchvision_key_map()
    return {renames.get(k.removeprefix("module."), k.removeprefix("module.")): v for k, v in state.items()}


def match_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Check a state dict's names, shapes and number types against ``model``, after :func:`canonical_keys`.

    Raises WeightsError naming the missing, unexpected and mis-shaped keys.
    """
    renamed = canonical_keys(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in renamed]
    unexpected = [k for k in renamed if k not in expected]
    misshaped = [
        f"{k} {tuple(renamed[k].shape)} (model has {tuple(v.shape)})"
        for k, v in expected.items()
        if k in renamed and renamed[k].shape != v.shape
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if keys:
            shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
            problems.append(f"{what}: {shown}")
    if problems:
        raise WeightsError("These weights do not fit this architecture; " + "; ".join(problems) + ".")
    floating = [k for k, v in renamed.items() if expected[k].is_floating_point() != v.is_floating_point()]
    if floating:
        raise WeightsError(f"These weights have the wrong number type for {', '.join(floating[:6])}.")
    return renamed


@dataclass(frozen=True)
class WeightsStatus:
    """What is cached where, for `alexnet-viz weights status`."""

    torch_home: Path
    path: Path
    cached: bool
    size_bytes: int | None

    def describe(self) -> str:
        if self.cached:
            assert self.size_bytes is not None  # noqa: S101 - set together with cached
            return (f"ImageNet weights cached: {self.path} ({self.size_bytes / 1e6:.1f} MB); "
                    "the app works offline.")
        return (f"ImageNet weights not cached (would be at {self.path}); run `alexnet-viz weights fetch` "
                "while online. TORCH_HOME decides the folder.")


def weights_status() -> WeightsStatus:
    path = cached_imagenet_path()
    cached = path.is_file()
    return WeightsStatus(Path(torch.hub.get_dir()).parent, path, cached, path.stat().st_size if cached else None)
