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
import re
import stat
from collections.abc import Callable
from typing import Any, BinaryIO, TypeAlias, TypeVar

import numpy as np
from PIL import Image, ImageOps

from .errors import UserError

__all__ = [
    "ALLOWED_FORMATS",
    "DECODE_TIMEOUT_S",
    "DECODE_WORKERS",
    "MAX_ASPECT",
    "MAX_BYTES",
    "MAX_JPEG_SCANS",
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
# libjpeg decodes every scan of a progressive JPEG over the whole image, whatever draft() asks: a 1.2 MB file
# that repeats one tiny scan 12,000 times over 6000x6000 pixels takes 22 s (1.8 ms a scan). Encoders write
# 1 to 3 scans (baseline) or about 10 (progressive); libjpeg-turbo's djpeg offers -maxscans for this attack.
MAX_JPEG_SCANS: int = 100

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
        # O_NONBLOCK: opening a FIFO (or a serial device) would otherwise wait forever for a writer. It has no
        # effect on reading a regular file, the only kind read below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ImageError(f"{name} is a folder, not an image file.")
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(f"{name} is not a regular file; choose an image file.")
            if info.st_size > MAX_BYTES:
                raise ImageError(_too_many_bytes())
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as f:
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
            if im.info.get("progressive") and _jpeg_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
                raise ImageError(
                    f"This JPEG file is split into more than {MAX_JPEG_SCANS} passes (photos have at most a "
                    "few dozen), which would take very long to decode; save it again as a PNG or JPEG and try that."
                )
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


# A marker where a JPEG segment may start: fill bytes (0xFF) and a code that is not a stuffed 0x00 or a
# restart marker (those two occur inside a scan's entropy-coded data). The second form, without a repeat,
# is the one to search with: 25 times faster through 12 MB of entropy-coded data.
_JPEG_MARKER = re.compile(rb"\xff+([\x01-\xcf\xd8-\xfe])")
_JPEG_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def _jpeg_scans(data: bytes, limit: int) -> int:
    """How many scans (SOS segments) the first image of a JPEG file has; counting stops past `limit`.

    Walks the segments by their lengths, so thumbnails inside EXIF (APP1) are not counted, and finds the end
    of each scan's entropy-coded data with one regex search. A damaged file ends the count early: Pillow
    then says it is damaged.
    """
    scans, i, n = 0, 2, len(data)  # after SOI
    while i < n:
        marker = _JPEG_MARKER.match(data, i)
        if marker is None:
            return scans
        code, i = marker.group(1)[0], marker.end()
        if code == 0xD9:  # EOI
            return scans
        if code == 0x01:  # TEM: no length
            continue
        i += int.from_bytes(data[i:i + 2], "big")
        if code == 0xDA:  # SOS: the header, then entropy-coded data up to the next marker
            scans += 1
            if scans > limit:
                return scans
            following = _JPEG_NEXT_MARKER.search(data, i)
            if following is None:
                return scans
            i = following.start()
    return scans


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

# The slowest legitimate files within the limits above (a 40 MP PNG at maximum compression, a 40 MP WebP or
# progressive JPEG) took 0.7 to 3.3 s here on 2 busy cores; a 12 MP JPEG takes 0.1 s. Twice the worst of those
# still ends a decoder that never returns well before a visitor gives up.
DECODE_TIMEOUT_S: float = 8.0
DECODE_WORKERS: int = 2  # as many as the server runs events at once (ui.CONCURRENCY): nobody queues for one
CLOSE_WAIT_S: float = 5.0  # close() waits this long at most for each stopped worker's executor to let go


def _worker_init(parent: int) -> None:
    """Run in each decoder worker at its start: leave Ctrl-C to the server, and die with the server.

    A server ended by SIGKILL, or by a SIGTERM that gives it no time to clean up, cannot stop its workers;
    each then exits by itself within a quarter of a second of being orphaned. (Linux's PR_SET_PDEATHSIG is
    no substitute: it fires when the *thread* that spawned the worker exits, and request threads come and go.)
    """
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C reaches the whole group; the server decides

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        os._exit(0)  # orphaned: whatever this worker was decoding has nobody to go to

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


class IsolatedDecoder:
    """``load_image(path)`` in worker processes, so that a native decoder that crashes or hangs on a file
    costs that one request its answer, not every visitor their server or their own upload.

    The allow-list keeps exotic decoders away, but libjpeg, libpng, libwebp and libtiff run native code on
    untrusted bytes too. Each worker is a ``ProcessPoolExecutor`` of one spawned process (Pillow and numpy
    only; about 43 MB) that decodes **one request at a time**: a request waits for a free worker (at most
    ``workers`` run at once), never inside another request's worker, so killing or losing a worker can only
    ever cost the request it was decoding. What comes back is the intake's result, at most ``MAX_SIDE`` on its
    long side.

    - A decode that runs past ``timeout_s`` (its own, counted from when its worker starts on it) has its worker
      killed and is refused in a sentence.
    - A worker that dies is replaced, and the request is tried once more in a fresh worker; a file that kills
      that one too is refused in a sentence (`CRASHED`).
    - Where no worker process can be started at all (a ``__main__`` the spawned interpreter cannot import, as
      with ``python - < script``), decoding stays in this process (logged once).
    - Workers exit by themselves when the server process is gone (`_worker_init`).
    """

    CRASHED = ("This file crashed the image decoder, so it was not read; save it again as a PNG or JPEG "
               "and try that.")

    def __init__(self, timeout_s: float = DECODE_TIMEOUT_S, target: Callable[[str], Image.Image] | None = None,
                 *, workers: int = DECODE_WORKERS) -> None:
        import threading

        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers!r}")
        self.timeout_s = timeout_s
        self.workers = workers
        self._target = target or load_image  # a module-level function: the worker imports it by name
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(workers)  # one request per worker at a time
        self._idle: list[Any] = []  # started workers that answered and wait for a request
        self._live: set[Any] = set()  # every worker not yet shut down, for close()
        self.isolated = True  # False once a worker process cannot be started here at all

    def timeout_message(self) -> str:
        return (f"Reading this file took longer than {self.timeout_s:g} s, so it was stopped; save it again as "
                "a PNG or JPEG and try that.")

    def start(self) -> None:
        """Start the workers now (a server calls this at start, so that its first visitors do not wait)."""
        started = []
        for _ in range(self.workers):
            pool = self._started()
            if pool is None:
                break
            started.append(pool)
        with self._lock:
            self._idle.extend(started)

    def close(self) -> None:
        """Stop every worker and wait (a few seconds at most) until each executor has let go of it.

        A later call starts new ones. The wait matters at exit: an executor whose thread is still winding down
        when the interpreter ends races CPython's own exit hook for its wake-up pipe, and the loser prints an
        ``OSError: Bad file descriptor`` traceback (about 1 exit in 15 here, without the wait).
        """
        with self._lock:
            pools, self._live, self._idle = list(self._live), set(), []
        for pool in pools:
            _kill(pool, wait_s=CLOSE_WAIT_S)

    def __call__(self, path: str) -> Image.Image:
        from concurrent.futures import CancelledError
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures.process import BrokenProcessPool

        path = os.fspath(path)
        with self._slots:
            for attempt in range(2):
                pool = self._checkout(fresh=attempt > 0)
                if pool is None:  # no worker process can run here at all: decode in this one
                    break
                try:
                    image: Image.Image = pool.submit(self._target, path).result(timeout=self.timeout_s)
                except FutureTimeout:
                    self._discard(pool)
                    raise ImageError(self.timeout_message()) from None
                except (BrokenProcessPool, CancelledError):  # it died under this request (or close() ended it)
                    self._discard(pool)
                    continue
                except BaseException:  # the target's own answer, such as an ImageError: the worker is fine
                    self._checkin(pool)
                    raise
                self._checkin(pool)
                return image
            else:  # two workers died on this file: never risk it in this process
                pool = self._checkout(fresh=True)  # start the next one now, not on the next visitor's time
                if pool is not None:
                    self._checkin(pool)
                raise ImageError(self.CRASHED)
        return self._target(path)

    # --- workers ---------------------------------------------------------------------------------------

    def _checkout(self, *, fresh: bool) -> Any:
        """A started worker for this request alone (an idle one unless `fresh`), or None if none can run."""
        if not self.isolated:
            return None
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
        return self._started()

    def _checkin(self, pool: Any) -> None:
        with self._lock:
            if pool in self._live:  # not closed meanwhile
                self._idle.append(pool)

    def _started(self) -> Any:
        """A new worker that has started and answered (its start-up is not counted in any decode's time)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter, never a fork of a server with threads and a model in memory
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))
        with self._lock:
            self._live.add(pool)
        try:
            pool.submit(os.getpid).result(timeout=120)
            return pool
        except Exception as e:  # e.g. a __main__ the spawned interpreter cannot re-import (`python - < script`)
            self._discard(pool)
            self.isolated = False
            logging.getLogger(__name__).warning("image decoding stays in the server process: no worker process "
                                                "could be started (%s: %s)", type(e).__name__, e)
            return None

    def _discard(self, pool: Any) -> None:
        with self._lock:
            self._live.discard(pool)
            if pool in self._idle:
                self._idle.remove(pool)
        _kill(pool)


def _kill(pool: Any, *, wait_s: float = 0.0) -> None:
    """End a worker's process now, whatever it is doing (a hung decoder never returns), and its executor.

    With `wait_s`, wait that long at most for the executor's own thread to finish (it notices the killed
    process, closes its pipes and ends); a request that discards a worker does not wait.
    """
    manager = getattr(pool, "_executor_manager_thread", None)  # gone from the executor once it is shut down
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    if wait_s > 0 and manager is not None:
        manager.join(timeout=wait_s)
