"""The files the page sends: each picture as a PNG written once per content, and the Download zip.

Given a PIL image, ``gr.Image`` would encode it at zlib level 6 (~5x the time) and rewrite its
content-addressed file on every request (``Path.write_bytes`` truncates first): when a lecture hall gets the
same pictures (the conv1 filters, an example's maps), one visitor's download then reads a file another
request has just truncated. ``benchmarks/load.py`` saw that as 1 request in 800 failing with "peer closed
connection". So pictures go out as files written here, atomically, at ``PNG_LEVEL``. A path inside the upload
folder is served as is, and ``delete_cache`` removes it with the uploads.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from .. import export

__all__ = ["PNG_LEVEL", "as_png_files", "cache_png", "new_download_path"]

PNG_LEVEL = export.PNG_LEVEL


def as_png_files(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` for an event whose result is ``{component: value}``: every PIL picture in it (as a value, or as
    the value of a ``gr.update``) for a ``gr.Image`` becomes a PNG file named after the component's label
    ("conv1-filters.png" when downloaded)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        if not isinstance(out, Mapping):
            return out
        folder = Path(gr.utils.get_upload_folder())
        return {component: _as_file(value, folder, component) for component, value in out.items()}

    return wrapper


def _as_file(value: Any, folder: Path, component: Any) -> Any:
    if not isinstance(component, gr.Image):
        return value
    stem = _file_stem(str(component.label or "picture"))
    if isinstance(value, Image.Image):
        return cache_png(value, folder, stem)
    if isinstance(value, dict) and isinstance(value.get("value"), Image.Image):  # gr.update(value=PIL, ...)
        return {**value, "value": cache_png(value["value"], folder, stem)}
    return value


def _file_stem(label: str) -> str:
    """A download name from a component's label: "conv1 filters" -> "conv1-filters"."""
    stem = "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())
    return stem[:60] or "picture"


def cache_png(image: Image.Image, cache: Path, stem: str) -> str:
    """``image`` as a PNG file in ``cache``, content-addressed; written atomically, or touched if already there."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    data = buffer.getvalue()
    folder = cache / "alexnet-viz" / hashlib.sha256(data).hexdigest()[:32]
    path = folder / f"{stem}.png"
    try:
        os.utime(path)  # already written (by this request's twin): keep it from aging out, serve it
        return str(path)
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(path)


def new_download_path(name: str = "alexnet-viz-results.zip") -> Path:
    """A fresh path inside Gradio's upload folder: served as is, and removed by delete_cache with the uploads."""
    folder = Path(gr.utils.get_upload_folder()) / "alexnet-viz" / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
