"""Image intake: whatever a user hands us becomes one upright RGB PIL image, or an ImageError.

Every picture alexnet-viz analyses passes through `load_image()`, so this is where untrusted input
is bounded. Files and bytes are decoded only by the allow-listed Pillow plugins (`ALLOWED_FORMATS`),
their size is checked from the header before any pixel is decoded, and every failure, whatever
Pillow or the OS raised, reaches the caller as an `ImageError` whose text is one sentence a student
can act on. Nothing here changes Pillow's global settings.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Callable
from typing import Any, BinaryIO, TypeAlias, TypeVar

import numpy as np
from PIL import Image, ImageOps

from .errors import UserError

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_ASPECT",
    "MAX_BYTES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "ImageError",
    "ImageSource",
    "IsolatedDecoder",
    "load_image",
]

# Pillow plugin names. Only these decoders ever run on untrusted bytes: exotic ones (and their
# native code) are the ones seen crashing a server on odd uploads.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

MAX_BYTES: int = 25_000_000  # larger files are refused before decoding
MAX_PIXELS: int = 40_000_000  # width x height from the header; below Pillow's own 89 M bomb limit
MIN_SIDE: int = 8  # smaller is a mistake, not a photo; 8..62 px is upsampled by preprocessing
MAX_ASPECT: float = 20.0  # torchvision resizes the short side to 256: 1x20000 would become 5 G pixels
MAX_SIDE: int = 1024  # default long side after intake; AlexNet sees 224 px, so more is wasted memory

ImageSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image | np.ndarray"

_USE_INSTEAD = "use a JPEG, PNG, WebP, GIF, BMP or TIFF"
_FORMAT_NAMES = {"WEBP": "WebP", "MPO": "JPEG"}  # Pillow's plugin names, as people write them
_WHITE = (255, 255, 255)


class ImageError(UserError):
    """An image that alexnet-viz cannot take in; `str(error)` is a plain sentence for the user."""


def load_image(source: ImageSource, *, max_side: int | None = MAX_SIDE) -> Image.Image:
    """Return `source` as an RGB, fully loaded, upright PIL image, detached from any file.

    `source` is a path, the bytes of an image file, a binary file object (read up to MAX_BYTES + 1
    bytes; the caller keeps ownership and may close it), a PIL image (left unchanged; trusted, since
    the caller opened it, so the format allow-list does not apply), or a numpy array (H x W,
    H x W x 1, x 3 or x 4; uint8, bool, or float in [0, 1], clipped).

    Animated and multi-page images give their first frame. EXIF orientation is applied. Transparency
    is composited on white. 16-bit and 32-bit images are scaled, not clipped, to 8 bits.

    Images whose long side exceeds `max_side` are downscaled to it (`Image.thumbnail`, LANCZOS), so
    memory and time after intake stay bounded whatever the upload; `None` keeps full resolution.
    Large JPEGs are decoded at a reduced DCT scale to begin with, which is much faster.

    Raises ImageError for every input it cannot take in, never a Pillow or OS exception (a bad
    `max_side` is a programming error: ValueError).
    """
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be a positive int or None, not {max_side!r}")

    if isinstance(source, Image.Image):
        image = _guarded(_from_pil, source, what="This picture")
    elif isinstance(source, np.ndarray):
        image = _guarded(_from_array, source, what="This image array")
    else:
        image = _decode(_read_bytes(source), max_side=max_side)

    rgb = _guarded(_to_rgb, image, what="This image")
    if max_side is not None and max(rgb.size) > max_side:
        # reducing_gap first shrinks by an integer factor with a box filter, then LANCZOS finishes:
        # nearly the quality of a full LANCZOS at a fraction of its cost on big photos.
        _guarded(rgb.thumbnail, (max_side, max_side), Image.Resampling.LANCZOS, 3.0, what="This image")
    # The pixels are upright and composited now; metadata such as an EXIF orientation would only
    # mislead whoever reads this image next (loading it again would rotate it twice).
    rgb.info.clear()
    return rgb


_T = TypeVar("_T")


def _guarded(func: Callable[..., _T], *args: Any, what: str) -> _T:
    """Call `func`, turning whatever it raises into an ImageError about `what`."""
    try:
        return func(*args)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(_out_of_memory()) from exc
    except Exception as exc:
        # Pillow raises many undocumented types (OSError, ValueError, SyntaxError, struct.error...).
        raise ImageError(
            f"{what} could not be read; it may be damaged or use an unusual colour mode."
        ) from exc


# --- reading the source into bytes -----------------------------------------------------------------


def _read_bytes(source: object) -> bytes:
    """Return the bytes of a path, a bytes-like object or a binary file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source)
    if callable(getattr(source, "read", None)):
        return _read_stream(source)
    raise ImageError(f"alexnet-viz cannot read an image from a {type(source).__name__}; give it a file.")


def _read_path(path: str | os.PathLike[Any]) -> bytes:
    """Read a regular file of at most MAX_BYTES."""
    # Only the file's base name goes into messages: a full server path is nobody's business.
    try:
        name = repr(os.path.basename(os.fsdecode(path)))
    except (TypeError, ValueError):
        name = "this path"
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(f"{name} is not a regular file; choose an image file.")
            if info.st_size > MAX_BYTES:
                raise ImageError(_too_many_bytes())
            return f.read(MAX_BYTES + 1)
    except ImageError:  # a ValueError: keep it from the catch-all below
        raise
    except FileNotFoundError:
        raise ImageError(f"There is no file named {name}.") from None
    except IsADirectoryError:
        raise ImageError(f"{name} is a folder, not an image file.") from None
    except PermissionError:
        raise ImageError(f"alexnet-viz is not allowed to read the file {name}.") from None
    except (OSError, ValueError) as exc:  # ValueError: a path containing a NUL byte
        raise ImageError(f"alexnet-viz could not read the file {name}.") from exc


def _read_stream(stream: Any) -> bytes:
    """Read a binary stream to its end, or to just past MAX_BYTES."""
    # A raw stream may return fewer bytes than asked without being at the end, so read until
    # MAX_BYTES + 1 bytes or end of file: enough to tell "too large" without reading it all.
    chunks: list[bytes] = []
    remaining = MAX_BYTES + 1
    try:
        while remaining > 0:
            chunk = stream.read(remaining)
            if not chunk:  # b"" at end of file; None from a non-blocking stream with nothing ready
                break
            if isinstance(chunk, str):
                raise ImageError("The file was opened as text; open it in binary mode ('rb').")
            chunks.append(bytes(chunk))
            remaining -= len(chunk)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError("alexnet-viz could not read from this file.") from exc
    return b"".join(chunks)


# --- decoding -------------------------------------------------------------------------------------


def _decode(data: bytes, *, max_side: int | None) -> Image.Image:
    """Decode file bytes with the allow-listed plugins into a loaded, upright image (any mode)."""
    if not data:
        raise ImageError("The file is empty.")
    if len(data) > MAX_BYTES:
        raise ImageError(_too_many_bytes())
    fmt = "file"
    try:
        # A BytesIO we own: no file handle outlives this call, and the caller's file is never kept.
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as im:
            fmt = f"{_FORMAT_NAMES.get(im.format, im.format)} file" if im.format else fmt
            # The header has told us the size; refuse before a single pixel is decoded.
            _check_size(*im.size)
            # No seek(0) needed: open() leaves every allowed plugin on frame 0 (animated GIF, WebP and
            # PNG, multi-page TIFF), and the first frame is the one we analyse.
            if max_side is not None and max(im.size) >= 2 * max_side:
                # JPEG only (other plugins ignore draft): libjpeg's scaled IDCT decodes at 1/2, 1/4
                # or 1/8 size, never below the target, so thumbnail() only has the rest to do.
                long_side = max(im.size)
                im.draft(
                    "RGB",
                    (max(1, im.width * max_side // long_side), max(1, im.height * max_side // long_side)),
                )
            im.load()
            return _upright(im)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(_unsupported_message(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit fires inside open() for sizes far above ours (and the warning is an
        # exception when warnings are errors): the same refusal as _check_size.
        raise ImageError(_too_many_pixels()) from exc
    except MemoryError as exc:
        raise ImageError(_out_of_memory()) from exc
    except Exception as exc:
        # Truncated data (OSError), corrupt headers (SyntaxError, struct.error, ValueError, ...):
        # Pillow's exception types for a bad file are many and undocumented.
        raise ImageError(f"This {fmt} looks damaged or is not a complete image.") from exc


def _from_pil(source: Image.Image) -> Image.Image:
    """A loaded, upright copy of frame 0 of a PIL image; the caller's image is left as it was."""
    _check_size(*source.size)
    frame = source.tell()
    if frame != 0:
        source.seek(0)
    try:
        source.load()
        return _upright(source)
    finally:
        if frame != 0:
            source.seek(frame)


def _from_array(array: np.ndarray) -> Image.Image:
    """An L, RGB or RGBA image from a uint8, bool or float ([0, 1], clipped) numpy array."""
    shape = array.shape
    dims = " x ".join(map(str, shape))
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))):
        raise ImageError(f"An image array must be H x W, H x W x 3 or H x W x 4; this one is {dims}.")
    _check_size(shape[1], shape[0])
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        # Floats are taken to be in [0, 1], like torchvision's ToTensor output; NaN counts as black.
        unit = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        array = np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(
            f"An image array must hold uint8, bool or float values in [0, 1]; this one holds {array.dtype}."
        )
    return Image.fromarray(np.ascontiguousarray(array))


def _upright(im: Image.Image) -> Image.Image:
    """A copy of `im` turned the way its EXIF orientation says (no turn if the metadata is broken)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        # Broken or absurd EXIF should not cost the student their photo: show it as stored.
        return im.copy()


# --- modes ----------------------------------------------------------------------------------------


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: transparency on white, high bit depths scaled to 8 bits."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # convert() clips these to 0..255 instead of scaling (a 16-bit photo turns white).
        im = _scale_to_l(im)
    if im.has_transparency_data:
        # "La" (premultiplied) has no direct route to RGBA in Pillow; LA does.
        rgba = im.convert("LA").convert("RGBA") if im.mode == "La" else im.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))  # alpha-blends onto white
        return out
    return im if im.mode == "RGB" else im.convert("RGB")


def _scale_to_l(im: Image.Image) -> Image.Image:
    """Map a 16-bit, 32-bit or float single-channel image to 8-bit grey by its value range.

    I;16*: the full 0..65535 range (divide by 257). I (32-bit ints, whose bit depth the mode does not
    record): values in 0..255 are kept, values in 0..65535 are treated as 16-bit, anything else is
    stretched from its minimum to its maximum. F: 0..1 is scaled by 255, 0..255 is kept, anything
    else is stretched. NaN becomes 0.
    """
    values = np.asarray(im).astype(np.float32)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if im.mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0 and im.mode == "F":
            scaled = values * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = values
        elif lo >= 0.0 and hi <= 65535.0 and im.mode == "I":
            scaled = values / 257.0
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.full_like(values, min(max(lo, 0.0), 255.0))
    return Image.fromarray(np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8))


# --- limits and messages --------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    """Refuse sizes that are too small, too many pixels, or too long and thin."""
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"This image is only {width}x{height} pixels; alexnet-viz needs at least {MIN_SIDE} on each side."
        )
    if width * height > MAX_PIXELS:
        raise ImageError(_too_many_pixels(width, height))
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(
            f"This image is {width}x{height} pixels, longer and thinner than {MAX_ASPECT:g} to 1; "
            "crop it closer to a square."
        )


def _too_many_pixels(width: int | None = None, height: int | None = None) -> str:
    size = f" ({width}x{height})" if width is not None and height is not None else ""
    return (
        f"This image has too many pixels{size}; alexnet-viz takes up to "
        f"{MAX_PIXELS / 1e6:g} million, so make it smaller and try again."
    )


def _too_many_bytes() -> str:
    return f"This file is larger than {MAX_BYTES / 1e6:g} MB; use a smaller image."


def _out_of_memory() -> str:
    return "This image is too large to decode with the memory available; use a smaller image."


# Magic numbers of things people upload by mistake, so the message can say what the file is.
_UNSUPPORTED_IMAGES: tuple[tuple[bytes, int, str], ...] = (
    (b"8BPS", 0, "Photoshop PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "JPEG XL"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x01\x00", 0, "Windows icon (ICO)"),
    (b"\x00\x00\x02\x00", 0, "Windows cursor (CUR)"),
    (b"qoif", 0, "QOI"),
    (b"DDS ", 0, "DirectDraw Surface (DDS)"),
    (b"\x76\x2f\x31\x01", 0, "OpenEXR"),
    (b"#?RADIANCE", 0, "Radiance HDR"),
    (b"%!PS", 0, "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "PostScript/EPS"),
)
_NOT_IMAGES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "a ZIP archive or Office document"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"Rar!", 0, "a RAR archive"),
    (b"7z\xbc\xaf", 0, "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0", 0, "an Office document"),
    (b"OggS", 0, "audio or video"),
    (b"ID3", 0, "audio"),
    (b"\x1aE\xdf\xa3", 0, "a video"),
    (b"\x7fELF", 0, "a program"),
    (b"MZ", 0, "a program"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def _unsupported_message(data: bytes) -> str:
    """One sentence saying what this unreadable file seems to be and what to use instead."""
    head = data[:4096]
    kind: str | None = None
    is_image = True
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            kind = "HEIC/HEIF, the iPhone photo format"
        elif brand in (b"avif", b"avis"):
            kind = "AVIF"
        else:
            kind, is_image = "a video", False
    elif head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"WAVE"):
        kind, is_image = "audio or video", False
    elif head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in (b"\n", b"\r", b" ", b"\t"):
        kind = "Netpbm (PPM/PGM/PBM)"
    else:
        for magic, offset, name in _UNSUPPORTED_IMAGES:
            if head[offset : offset + len(magic)] == magic:
                kind = name
                break
        else:
            for magic, offset, name in _NOT_IMAGES:
                if head[offset : offset + len(magic)] == magic:
                    kind, is_image = name, False
                    break
    if kind is None and _looks_like_text(head):
        lowered = head.lower()
        if b"<svg" in lowered:
            kind = "SVG drawing"
        elif b"<html" in lowered or b"<!doctype html" in lowered:
            return (
                "This file is a web page (HTML), not an image; "
                "save the picture itself (right-click it, then 'Save image as')."
            )
        else:
            kind, is_image = "text", False
    if kind is None:
        return f"This file is not an image alexnet-viz can read; {_USE_INSTEAD}."
    if is_image:
        return f"This image is in a format alexnet-viz does not support ({kind}); {_USE_INSTEAD}."
    return f"This file is not an image alexnet-viz can read ({kind}); {_USE_INSTEAD}."


def _looks_like_text(head: bytes) -> bool:
    """Whether these first bytes read as UTF-8 text (which is also how SVG and HTML look)."""
    if b"\x00" in head:
        return False
    text = head.decode("utf-8", errors="replace")
    # Allow one replacement character: the 4 KB cut may split a multi-byte character.
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f")
    return text.count("\ufffd") <= 1 and controls == 0


# ---------------------------------------------------------------------------------------------------------
# a decoder the server can lose


class IsolatedDecoder:
    """``load_image(path)`` in a worker process, so that a native decoder that crashes or hangs on a file
    costs that one request its answer, not every visitor their server.

    The allow-list keeps exotic decoders away, but libjpeg, libpng, libwebp and libtiff run native code on
    untrusted bytes too. The worker is a plain ``concurrent.futures.ProcessPoolExecutor`` of one spawned
    process (Pillow and numpy only; 43 MB); what comes back is the intake's result, at most ``MAX_SIDE``
    on its long side. A worker that dies is replaced; each request that was in it is tried once more in a
    worker of its own (it may only have been queued behind the culprit), and a file that kills that one
    too is refused in a sentence. A decode that runs past ``timeout_s`` has its worker killed and is refused.
    Where no worker process can be started at all, decoding stays in this process (logged once).
    """

    CRASHED = ("This file crashed the image decoder, so it was not read; save it again as a PNG or JPEG "
               "and try that.")

    def __init__(self, timeout_s: float = 30.0, target: Callable[[str], Image.Image] | None = None) -> None:
        import threading

        self.timeout_s = timeout_s
        self._target = target or load_image  # a module-level function: the worker imports it by name
        self._lock = threading.Lock()
        self._pool: Any = None
        self.isolated = True  # False once a worker process cannot be started here at all

    def start(self) -> None:
        """Start the worker now (a server calls this at start, so its first visitor does not wait)."""
        self._worker_runs()

    def _worker_runs(self) -> bool:
        """Whether a worker process can be started and answer; if not, decoding goes on in this process."""
        pool = self._executor()
        try:
            pool.submit(os.getpid).result(timeout=120)
            return True
        except Exception as e:  # e.g. a __main__ the spawned interpreter cannot re-import (`python - < script`)
            self._discard(pool, kill=True)
            self.isolated = False
            logging.getLogger(__name__).warning("image decoding stays in the server process: no worker process "
                                                "could be started (%s: %s)", type(e).__name__, e)
            return False

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, path: str) -> Image.Image:
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures.process import BrokenProcessPool

        for attempt in range(2):
            if not self.isolated:
                break
            # the shared worker first; after it died, a worker of this request's own, so that a file that
            # kills it again cannot take another visitor's retry down with it
            pool = self._executor() if attempt == 0 else self._new_pool()
            try:
                image: Image.Image = pool.submit(self._target, os.fspath(path)).result(timeout=self.timeout_s)
                return image
            except BrokenProcessPool:
                self._discard(pool)
                if attempt and self._worker_runs():  # a worker can run: it was this file
                    raise ImageError(self.CRASHED) from None
            except FutureTimeout:
                self._discard(pool, kill=True)
                raise ImageError(f"Reading this file took longer than {self.timeout_s:.0f} s, so it was stopped; "
                                 "save it again as a PNG or JPEG and try that.") from None
            finally:
                if attempt:
                    pool.shutdown(wait=False, cancel_futures=True)
        return self._target(os.fspath(path))  # no worker process can run here at all: decode in this one

    def _executor(self) -> Any:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool()
            return self._pool

    @staticmethod
    def _new_pool() -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter, never a fork of a server with threads and a model in memory
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def _discard(self, pool: Any, *, kill: bool = False) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        if kill:  # a hung decoder never returns: end its process (terminate_workers is Python >= 3.14)
            terminate = getattr(pool, "terminate_workers", None)
            if terminate is not None:
                terminate()
            else:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
