"""Tests for alexnet_viz.images: every input kind, every limit, every mode, and fuzzed bytes.

Every test image is made here with Pillow or numpy; nothing is downloaded or read from the repository.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

from alexnet_viz import images
from alexnet_viz.images import (
    ALLOWED_FORMATS,
    MAX_ASPECT,
    MAX_BYTES,
    MAX_PIXELS,
    MAX_SIDE,
    MIN_SIDE,
    ImageError,
    load_image,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# --- helpers --------------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (JPEG-friendly, distinct pixels)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 20, (height, width))
    array = np.stack([x * 255 // width, y * 255 // height, (x + y + noise) % 256], axis=-1)
    return Image.fromarray(array.astype(np.uint8))


def halves(width: int = 80, height: int = 40, left: tuple[int, ...] = RED, right: tuple[int, ...] = BLUE):
    """Left half one colour, right half another."""
    im = Image.new("RGB", (width, height), left)
    im.paste(right, (width // 2, 0, width, height))
    return im


def close_to(pixel: Any, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4000))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_exif(im: Image.Image, orientation: Any) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, subsampling=0, exif=exif)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test (BaseException, so no except clause swallows it) if any pixel data is decoded."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(Image, "_getdecoder", refuse)


# --- constants ------------------------------------------------------------------------------------


def test_constants_are_sane() -> None:
    assert ALLOWED_FORMATS == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    assert Image.MAX_IMAGE_PIXELS is not None
    assert 0 < MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # ours must fire before Pillow's warning
    assert MIN_SIDE <= 63 < MAX_SIDE
    assert MAX_ASPECT >= 1
    assert MAX_BYTES > 1_000_000
    assert issubclass(ImageError, ValueError)


# --- every kind of source -------------------------------------------------------------------------


def test_path_str_and_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    photo().save(path)
    for source in (path, str(path)):
        out = load_image(source)
        assert out.mode == "RGB"
        assert out.size == (96, 64)
        assert out.tobytes() == photo().tobytes()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like(kind: Callable[[bytes], Any]) -> None:
    out = load_image(kind(encode(photo(), "PNG")))
    assert out.tobytes() == photo().tobytes()


def test_file_objects(tmp_path: Path) -> None:
    data = encode(photo(), "PNG")
    assert load_image(io.BytesIO(data)).tobytes() == photo().tobytes()
    path = tmp_path / "p.png"
    path.write_bytes(data)
    with open(path, "rb") as f:
        assert load_image(f).tobytes() == photo().tobytes()
    with open(path, "rb", buffering=0) as raw:  # a raw stream may return short reads
        assert load_image(raw).tobytes() == photo().tobytes()


def test_short_reads_are_followed_to_the_end() -> None:
    data = encode(photo(), "PNG")

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            chunk = data[self.pos : self.pos + 7]
            self.pos += len(chunk)
            return chunk

    out = load_image(Trickle())  # type: ignore[arg-type]
    assert out.tobytes() == photo().tobytes()


def test_text_mode_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(b"not really")
    with open(path, encoding="latin-1") as f, pytest.raises(ImageError, match="binary mode"):
        load_image(f)  # type: ignore[arg-type]


def test_failing_stream_is_an_image_error() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise OSError("disk on fire")

    with pytest.raises(ImageError, match="could not read"):
        load_image(Broken())  # type: ignore[arg-type]


def test_pil_image_is_copied_not_changed() -> None:
    source = photo()
    before = source.tobytes()
    out = load_image(source)
    assert out is not source
    assert out.tobytes() == before
    out.putpixel((0, 0), (1, 2, 3))
    assert source.tobytes() == before


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((10, 12), 200, np.uint8), (200, 200, 200)),
        (np.full((10, 12, 1), 50, np.uint8), (50, 50, 50)),
        (np.tile(np.array(RED, np.uint8), (10, 12, 1)), RED),
        (np.tile(np.array([0, 0, 255, 255], np.uint8), (10, 12, 1)), BLUE),
        (np.tile(np.array([0, 0, 255, 0], np.uint8), (10, 12, 1)), WHITE),  # transparent -> white
        (np.full((10, 12), 0.5, np.float32), (128, 128, 128)),
        (np.full((10, 12, 3), 1.0, np.float64), WHITE),
        (np.full((10, 12, 3), 7.5, np.float64), WHITE),  # clipped to 1
        (np.full((10, 12, 3), -3.0, np.float16), (0, 0, 0)),  # clipped to 0
        (np.full((10, 12), np.nan, np.float32), (0, 0, 0)),
        (np.ones((10, 12), bool), WHITE),
        (np.zeros((10, 12), bool), (0, 0, 0)),
    ],
)
def test_numpy_arrays(array: np.ndarray, expected: tuple[int, int, int]) -> None:
    out = load_image(array)
    assert out.mode == "RGB"
    assert out.size == (12, 10)  # (width, height) from (H, W)
    assert out.getpixel((3, 4)) == expected


def test_numpy_float_gradient_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (16, 1))
    out = np.asarray(load_image(ramp))[..., 0]
    assert out[0, 0] == 0
    assert out[0, -1] == 255
    assert 120 <= out.mean() <= 135


def test_numpy_non_contiguous_array() -> None:
    array = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)[:, ::-1]
    assert np.array_equal(np.asarray(load_image(array)), array)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((10, 12), np.int64),
        np.zeros((10, 12), np.uint16),
        np.zeros((10, 12, 3), np.int32),
        np.zeros((10, 12), np.complex64),
        np.zeros((10, 12), object),
        np.zeros((10, 12, 2), np.uint8),
        np.zeros((10, 12, 5), np.uint8),
        np.zeros(120, np.uint8),
        np.zeros((2, 10, 12, 3), np.uint8),
        np.zeros((0, 0), np.uint8),
        np.zeros((4, 12), np.uint8),  # smaller than MIN_SIDE
    ],
)
def test_numpy_bad_dtype_or_shape(array: np.ndarray) -> None:
    with pytest.raises(ImageError):
        load_image(array)


@pytest.mark.parametrize("source", [42, None, [1, 2, 3], {"path": "x.png"}, 3.5])
def test_unsupported_source_types(source: Any) -> None:
    with pytest.raises(ImageError, match="cannot read an image from"):
        load_image(source)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"no file named 'nope\.png'"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError):
        load_image("bad\x00path.png")


def test_messages_name_the_file_not_the_server_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "secret-dir" / "x.png")
    assert str(tmp_path) not in str(info.value)


def test_max_side_must_be_positive() -> None:
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_side"):
            load_image(photo(), max_side=bad)  # type: ignore[arg-type]


# --- size in bytes --------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    for source in (b"", io.BytesIO(), tmp_path / "empty.jpg"):
        with pytest.raises(ImageError, match=r"^The file is empty\.$"):
            load_image(source)


def test_too_many_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo(), "PNG")
    monkeypatch.setattr(images, "MAX_BYTES", len(data) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in (data, io.BytesIO(data), path):
        with pytest.raises(ImageError, match="larger than"):
            load_image(source)
    monkeypatch.setattr(images, "MAX_BYTES", len(data))
    assert load_image(io.BytesIO(data)).size == (96, 64)  # exactly at the limit is fine


def test_stream_is_read_only_up_to_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_BYTES", 1000)
    stream = io.BytesIO(b"\x00" * 10_000)
    with pytest.raises(ImageError, match="larger than"):
        load_image(stream)
    assert stream.tell() == 1001


# --- format allow-list and messages ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_load(fmt: str) -> None:
    out = load_image(encode(halves(), fmt))
    assert out.mode == "RGB"
    assert out.size == (80, 40)
    assert close_to(out.getpixel((10, 20)), RED, 40)
    assert close_to(out.getpixel((70, 20)), BLUE, 40)


def test_open_is_called_with_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real_open = Image.open

    def spy(fp: Any, mode: Any = "r", formats: Any = None) -> Any:
        seen.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    load_image(encode(photo(), "PNG"))
    assert seen == [list(ALLOWED_FORMATS)]


def _readable_by_pillow_but_not_allowed() -> list[tuple[str, bytes]]:
    samples = []
    for fmt, mode in [("PPM", "RGB"), ("ICO", "RGB"), ("TGA", "RGB"), ("PCX", "RGB"), ("SGI", "RGB"),
                      ("IM", "RGB"), ("DDS", "RGB"), ("QOI", "RGB"), ("JPEG2000", "RGB"), ("AVIF", "RGB"),
                      ("EPS", "RGB"), ("XBM", "1"), ("PDF", "RGB")]:  # fmt: skip
        # A format this Pillow build cannot write is skipped; the others still test the allow-list.
        with contextlib.suppress(OSError, KeyError, ValueError):
            samples.append((fmt, encode(photo(32, 32).convert(mode), fmt)))
    return samples


@pytest.mark.parametrize(("fmt", "data"), _readable_by_pillow_but_not_allowed())
def test_formats_outside_the_allow_list_are_refused(fmt: str, data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        load_image(data)
    message = str(info.value)
    assert "JPEG, PNG, WebP, GIF, BMP or TIFF" in message
    assert message.endswith(".")


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", r"not an image .*\(PDF\)"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9"/>', r"SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', r"does not support \(SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, r"HEIC"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64, r"AVIF"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42" + b"\x00" * 64, r"not an image .*video"),
        (b"Dear professor,\nplease find my homework attached.\n", r"not an image .*\(text\)"),
        ("caf\u00e9 na\u00efve r\u00e9sum\u00e9\n".encode(), r"\(text\)"),
        (b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>", r"web page"),
        (b"PK\x03\x04" + b"\x00" * 64, r"ZIP"),
        (b"8BPS\x00\x01" + b"\x00" * 64, r"Photoshop"),
        (b"P6\n32 32\n255\n" + b"\x00" * 64, r"Netpbm"),
        (bytes(range(256)) * 4, r"not an image alexnet-viz can read; use"),
    ],
)
def test_unsupported_files_get_a_sentence(data: bytes, pattern: str) -> None:
    with pytest.raises(ImageError, match=pattern) as info:
        load_image(data)
    message = str(info.value)
    assert "\n" not in message
    assert message[0].isupper()
    assert message.endswith(".")


# --- pixel limits, checked from the header --------------------------------------------------------


def test_too_many_pixels_refused_without_decoding(no_decoding: None) -> None:
    side = int(MAX_PIXELS**0.5) + 100  # under Pillow's own bomb limit: our check must catch it
    data = png_claiming(side, side)
    assert len(data) < 5000
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(data)


def test_decompression_bomb_refused_without_decoding(no_decoding: None) -> None:
    # 900 M pixels: Pillow raises DecompressionBombError inside open(); it must arrive as ImageError.
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(png_claiming(30_000, 30_000))


def test_decompression_bomb_warning_as_error_is_wrapped(no_decoding: None) -> None:
    # Between Pillow's warning and error limits; with warnings as errors the warning is raised in open().
    assert Image.MAX_IMAGE_PIXELS is not None
    side = int(Image.MAX_IMAGE_PIXELS**0.5) + 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="too many pixels"):
            load_image(png_claiming(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="too many pixels"):
            load_image(png_claiming(side, side))


@pytest.mark.parametrize(
    ("width", "height", "pattern"),
    [
        (20_000, 1, "at least"),
        (1, 20_000, "at least"),
        (MIN_SIDE - 1, 100, "at least"),
        (0, 100, "at least|not an image"),  # Pillow itself refuses a zero-size PNG header
        (int(MIN_SIDE * MAX_ASPECT) + 8, MIN_SIDE, "thinner"),
        (10, 400, "thinner"),
        (6000, 200, "thinner"),
    ],
)
def test_bad_shapes_refused_without_decoding(
    no_decoding: None, width: int, height: int, pattern: str
) -> None:
    with pytest.raises(ImageError, match=pattern):
        load_image(png_claiming(width, height))


def test_limits_apply_to_pil_and_numpy_sources(no_decoding: None) -> None:
    with pytest.raises(ImageError, match="thinner"):
        load_image(Image.new("RGB", (2000, 50)))
    with pytest.raises(ImageError, match="thinner"):
        load_image(np.zeros((50, 2000, 3), np.uint8))
    with pytest.raises(ImageError, match="at least"):
        load_image(Image.new("L", (5, 5)))


@pytest.mark.parametrize(
    "size", [(MIN_SIDE, MIN_SIDE), (20, 30), (63, 63), (MIN_SIDE, int(MIN_SIDE * MAX_ASPECT))]
)
def test_small_and_narrow_but_allowed(size: tuple[int, int]) -> None:
    out = load_image(encode(Image.new("RGB", size, BLUE), "PNG"))
    assert out.size == size  # never upscaled here: preprocessing does that
    assert out.getpixel((0, 0)) == BLUE


# --- downscaling ----------------------------------------------------------------------------------


def test_large_images_are_downscaled_to_max_side() -> None:
    data = encode(photo(2000, 1000), "PNG")
    assert load_image(data).size == (MAX_SIDE, MAX_SIDE // 2)
    assert load_image(data, max_side=300).size == (300, 150)
    assert load_image(data, max_side=None).size == (2000, 1000)
    assert load_image(photo(2000, 1000), max_side=500).size == (500, 250)
    assert load_image(np.zeros((1000, 2000), np.uint8), max_side=500).size == (500, 250)


def test_large_jpeg_is_drafted_small_jpeg_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any, tuple[int, int]]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: Any, size: Any) -> Any:
        result = real_draft(self, mode, size)
        calls.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    big = Image.new("RGB", (4000, 2400), (200, 40, 30))
    out = load_image(encode(big, "JPEG", quality=90), max_side=500)
    assert out.size == (500, 300)
    assert close_to(out.getpixel((250, 150)), (200, 40, 30), 6)
    assert len(calls) == 1
    mode, target, drafted = calls[0]
    assert mode == "RGB"
    assert target == (500, 300)
    assert drafted == (500, 300)  # 1/8 scale: decoded at 500x300 instead of 4000x2400

    calls.clear()
    assert load_image(encode(photo(600, 400), "JPEG"), max_side=500).size == (500, 333)
    assert calls == []  # under twice max_side: full decode, plain thumbnail
    assert load_image(encode(big, "JPEG"), max_side=None).size == (4000, 2400)
    assert calls == []


def test_wide_jpeg_draft_never_goes_below_target() -> None:
    wide = Image.new("RGB", (8000, 800), (10, 200, 10))
    out = load_image(encode(wide, "JPEG"), max_side=1000)
    assert out.size == (1000, 100)
    assert close_to(out.getpixel((500, 50)), (10, 200, 10), 6)


# --- truncated and damaged files ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.98])
def test_truncated_files_are_refused(fmt: str, keep: float) -> None:
    data = encode(photo(200, 150), fmt)
    with pytest.raises(ImageError, match=r"damaged|not an image"):
        load_image(data[: int(len(data) * keep)])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_global_pillow_settings_are_untouched() -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, dict(Image.OPEN), list(Image.ID))
    load_image(encode(photo(), "JPEG"))
    with pytest.raises(ImageError):
        load_image(png_claiming(30_000, 30_000))
    assert before == (
        ImageFile.LOAD_TRUNCATED_IMAGES,
        Image.MAX_IMAGE_PIXELS,
        dict(Image.OPEN),
        list(Image.ID),
    )


@pytest.mark.parametrize(
    "error",
    [
        OSError("broken data stream"),
        SyntaxError("not a PNG file"),
        ValueError("tile cannot extend outside image"),
        struct.error("unpack requires a buffer"),
        ZeroDivisionError("division by zero"),
        EOFError(),
        IndexError("list index out of range"),
        KeyError("transparency"),
        TypeError("unhashable"),
        RuntimeError("decoder error"),
        MemoryError(),
    ],
)
@pytest.mark.parametrize("where", ["open", "load", "convert"])
def test_every_failure_is_an_image_error(
    monkeypatch: pytest.MonkeyPatch, error: Exception, where: str
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise error

    target = {
        "open": (Image, "open"),
        "load": (ImageFile.ImageFile, "load"),
        "convert": (Image.Image, "convert"),
    }
    monkeypatch.setattr(*target[where], boom)
    data = encode(Image.new("L", (32, 32), 9), "PNG")  # L so that conversion to RGB is needed
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert type(info.value) is ImageError
    message = str(info.value)
    assert message.endswith(".")
    assert "\n" not in message
    if isinstance(error, MemoryError):
        assert "memory" in message


def test_pil_source_that_cannot_load_is_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    photo().save(path)
    im = Image.open(path)
    im.close()  # lazily opened, then closed before its pixels were read
    with pytest.raises(ImageError, match="could not be read"):
        load_image(im)


# --- EXIF orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "size", "top_or_left", "bottom_or_right"),
    [
        (1, (80, 40), RED, BLUE),  # stored upright: red left, blue right
        (3, (80, 40), BLUE, RED),  # rotated 180
        (6, (40, 80), RED, BLUE),  # rotate 90 clockwise to view: the left half goes to the top
        (8, (40, 80), BLUE, RED),  # rotate 90 anticlockwise: the left half goes to the bottom
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], top_or_left: tuple[int, ...], bottom_or_right: tuple[int, ...]
) -> None:
    out = load_image(jpeg_with_exif(halves(), orientation))
    assert out.size == size
    w, h = size
    first, second = (
        ((w // 4, h // 2), (3 * w // 4, h // 2)) if w > h else ((w // 2, h // 4), (w // 2, 3 * h // 4))
    )
    assert close_to(out.getpixel(first), top_or_left, 40)
    assert close_to(out.getpixel(second), bottom_or_right, 40)
    # The orientation is gone from the result: loading it again does not turn it twice.
    assert load_image(out).size == size
    assert out.getexif().get(0x0112) is None


def test_exif_orientation_for_png_tiff_and_pil_sources() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt in ("PNG", "TIFF", "WEBP"):
        assert load_image(encode(halves(), fmt, exif=exif)).size == (40, 80), fmt
    opened = Image.open(io.BytesIO(jpeg_with_exif(halves(), 6)))
    out = load_image(opened)
    assert out.size == (40, 80)
    assert close_to(out.getpixel((20, 10)), RED, 40)


@pytest.mark.parametrize("orientation", [0, 9, 255, 65535])
def test_absurd_orientation_values_are_ignored(orientation: Any) -> None:
    out = load_image(jpeg_with_exif(halves(), orientation))
    assert out.size == (80, 40)


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8,
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01",  # cut short
        b"Exif\x00\x00II*\x00\xff\xff\xff\xff",  # IFD offset far past the end
        b"\x00" * 40,
    ],
)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_broken_exif_does_not_crash(exif: bytes) -> None:
    out = load_image(encode(halves(), "JPEG", exif=exif))
    assert out.size == (80, 40)


def test_exif_transpose_failure_falls_back_to_stored_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    out = load_image(jpeg_with_exif(halves(), 6))
    assert out.size == (80, 40)
    assert close_to(out.getpixel((20, 20)), RED, 40)


# --- first frame of animations and multi-page files -----------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF", "PNG"])
def test_first_frame_of_multi_frame_files(fmt: str) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 3
    out = load_image(data)
    assert out.size == (32, 32)
    assert close_to(out.getpixel((16, 16)), RED, 10)


def test_pil_source_on_a_later_frame_gives_frame_zero_and_keeps_its_place() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, BLUE)]
    gif = Image.open(io.BytesIO(encode(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    gif.seek(1)
    out = load_image(gif)
    assert close_to(out.getpixel((5, 5)), RED, 10)
    assert gif.tell() == 1


# --- modes ----------------------------------------------------------------------------------------


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (16, 16), 1)
    im.putpalette([0, 0, 0, *RED, *BLUE] + [0] * (253 * 3))
    im.paste(2, (8, 0, 16, 16))  # right half blue
    if transparent:
        im.info["transparency"] = 1  # the red half is see-through
    return im


@pytest.mark.parametrize(
    ("make", "left", "right"),
    [
        (lambda: Image.new("1", (16, 16), 1), WHITE, WHITE),
        (lambda: Image.new("L", (16, 16), 77), (77, 77, 77), (77, 77, 77)),
        (lambda: Image.new("LA", (16, 16), (77, 255)), (77, 77, 77), (77, 77, 77)),
        (lambda: Image.new("LA", (16, 16), (77, 0)), WHITE, WHITE),
        (lambda: Image.new("La", (16, 16), (0, 0)), WHITE, WHITE),
        (lambda: _palette_image(False), RED, BLUE),
        (lambda: _palette_image(True), WHITE, BLUE),
        (lambda: _palette_image(False).convert("PA"), RED, BLUE),
        (lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 0)), WHITE, WHITE),
        (lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 255)), RED, RED),
        (lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 128)), (255, 127, 127), (255, 127, 127)),
        (lambda: Image.new("RGBa", (16, 16), (0, 0, 0, 0)), WHITE, WHITE),
        (lambda: Image.new("RGBX", (16, 16), (1, 2, 3, 0)), (1, 2, 3), (1, 2, 3)),
        (lambda: Image.new("CMYK", (16, 16), (255, 0, 0, 0)), (0, 255, 255), (0, 255, 255)),
        (lambda: Image.new("YCbCr", (16, 16), (76, 85, 255)), RED, RED),
        (lambda: Image.new("HSV", (16, 16), (0, 255, 255)), RED, RED),
        (lambda: Image.new("LAB", (16, 16), (255, 128, 128)), WHITE, WHITE),
        (lambda: Image.new("I;16", (16, 16), 65535), WHITE, WHITE),
        (lambda: Image.new("I;16", (16, 16), 257 * 100), (100, 100, 100), (100, 100, 100)),
        (lambda: Image.new("I;16B", (16, 16), 257 * 100), (100, 100, 100), (100, 100, 100)),
        (lambda: Image.new("I", (16, 16), 100), (100, 100, 100), (100, 100, 100)),  # e.g. L.convert("I")
        # Values above 255 in mode I: taken as 16-bit, divided by 257.
        (lambda: Image.new("I", (16, 16), 257 * 100 + 1000), (104, 104, 104), (104, 104, 104)),
        (lambda: Image.new("F", (16, 16), 0.5), (128, 128, 128), (128, 128, 128)),
        (lambda: Image.new("F", (16, 16), 200.0), (200, 200, 200), (200, 200, 200)),
        (lambda: Image.new("F", (16, 16), float("nan")), (0, 0, 0), (0, 0, 0)),
    ],
)
def test_modes_become_rgb(
    make: Callable[[], Image.Image], left: tuple[int, ...], right: tuple[int, ...]
) -> None:
    out = load_image(make())
    assert out.mode == "RGB"
    assert close_to(out.getpixel((3, 8)), left, 3)
    assert close_to(out.getpixel((12, 8)), right, 3)


def test_rgba_half_transparency_blends_on_white() -> None:
    array = np.zeros((10, 10, 4), np.uint8)
    array[..., 2] = 255  # blue
    array[:, :5, 3] = 0  # left: fully transparent
    array[:, 5:, 3] = 128  # right: half
    out = load_image(encode(Image.fromarray(array), "PNG"))
    assert out.getpixel((2, 5)) == WHITE
    assert close_to(out.getpixel((7, 5)), (127, 127, 255), 2)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_from_files(fmt: str) -> None:
    out = load_image(encode(_palette_image(True), fmt, transparency=1))
    assert out.getpixel((3, 8)) == WHITE
    assert out.getpixel((12, 8)) == BLUE


def test_rgb_png_with_colour_key_transparency() -> None:
    out = load_image(encode(halves(16, 16), "PNG", transparency=RED))
    assert out.getpixel((3, 8)) == WHITE
    assert out.getpixel((12, 8)) == BLUE


@pytest.mark.parametrize(
    ("colour", "expected"),
    [((255, 0, 0, 0), (0, 255, 255)), ((0, 255, 0, 0), (255, 0, 255)), ((0, 0, 0, 255), (0, 0, 0))],
)
@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_files(fmt: str, colour: tuple[int, ...], expected: tuple[int, ...]) -> None:
    data = encode(Image.new("CMYK", (32, 32), colour), fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    assert close_to(load_image(data).getpixel((16, 16)), expected, 8)


def test_lab_tiff() -> None:
    data = encode(Image.new("LAB", (16, 16), (136, 208, 195)), "TIFF")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "LAB"
    assert close_to(load_image(data).getpixel((8, 8)), RED, 12)


def _spread(out: Image.Image) -> np.ndarray:
    grey = np.asarray(out)[..., 0].astype(int)
    assert (np.asarray(out) == grey[..., None]).all()  # still grey
    return grey


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_gradient_is_scaled_not_clipped(fmt: str, mode: str) -> None:
    ramp = np.tile(np.linspace(0, 65535, 512).round().astype(np.uint16), (32, 1))
    # Not .convert("I;16B"): in Pillow 12 that clips to 0..255 too. A big-endian array gives I;16B.
    im = Image.fromarray(ramp.astype(">u2") if mode == "I;16B" else ramp)
    assert im.mode == mode
    data = encode(im, fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I;16")
    grey = _spread(load_image(data))
    assert grey[0, 0] == 0
    assert grey[0, -1] == 255
    assert 120 <= grey.mean() <= 135  # convert() alone gives ~254 here: 99% white
    assert (grey == 255).mean() < 0.01
    assert np.all(np.diff(grey[0]) >= 0)


def test_32_bit_integer_tiff_is_stretched() -> None:
    ramp = np.tile(np.linspace(-(2**30), 2**31 - 1, 256).astype(np.int32), (16, 1))
    data = encode(Image.fromarray(ramp), "TIFF")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "I"
    grey = _spread(load_image(data))
    assert grey[0, 0] == 0
    assert grey[0, -1] == 255
    assert 120 <= grey.mean() <= 135


@pytest.mark.parametrize(
    ("values", "low", "high"),
    [((0.0, 1.0), 0, 255), ((-1.0, 3.0), 0, 255), ((0.0, 255.0), 0, 255), ((0.0, 0.5), 0, 128)],
)
def test_float_tiff_is_scaled(values: tuple[float, float], low: int, high: int) -> None:
    ramp = np.tile(np.linspace(*values, 256, dtype=np.float32), (16, 1))
    data = encode(Image.fromarray(ramp), "TIFF")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "F"
    grey = _spread(load_image(data))
    assert grey.min() == low
    assert grey.max() == high


def test_constant_out_of_range_float_does_not_divide_by_zero() -> None:
    out = load_image(Image.new("F", (16, 16), -5.0))
    assert out.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F"])
def test_modes_from_tiff_files(mode: str) -> None:
    data = encode(Image.new("RGB", (16, 16), (30, 60, 90)).convert(mode), "TIFF")
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.size == (16, 16)


# --- the result is detached from its source -------------------------------------------------------


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF"])
def test_result_is_detached_from_the_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"p.{fmt.lower()}"
    frames = [photo(), photo(seed=1)]
    multi = {"save_all": True, "append_images": frames[1:]} if fmt in ("GIF", "TIFF") else {}
    frames[0].save(path, fmt, **multi)
    before = _open_fds()
    out = load_image(path)
    if before is not None:
        assert _open_fds() == before  # no file handle left open
    path.unlink()
    assert not isinstance(out, ImageFile.ImageFile)
    assert getattr(out, "fp", None) is None
    out.getpixel((5, 5))
    assert out.copy().tobytes() == out.tobytes()


def test_result_survives_closing_the_stream() -> None:
    stream = io.BytesIO(encode(photo(), "PNG"))
    out = load_image(stream)
    assert not stream.closed  # the caller's stream is the caller's to close
    stream.close()
    assert out.tobytes() == photo().tobytes()


def test_result_survives_closing_the_pil_source(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    photo().save(path)
    with Image.open(path) as im:
        out = load_image(im)
    assert out.tobytes() == photo().tobytes()


# --- fuzzing --------------------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    base = photo(24, 16)
    frames = [base, photo(24, 16, seed=1)]
    return [
        encode(base, "PNG"),
        encode(base.convert("RGBA"), "PNG"),
        encode(base, "JPEG", quality=80),
        encode(base, "JPEG", progressive=True),
        encode(base, "GIF", save_all=True, append_images=frames[1:]),
        encode(base, "WEBP"),
        encode(base, "BMP"),
        encode(base, "TIFF", compression="tiff_lzw"),
    ]


SEEDS = _seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048), mutated_images()))
def test_fuzz_only_image_error_or_an_rgb_image(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF and the like; not our concern
        try:
            out = load_image(data)
        except ImageError as exc:
            assert str(exc)
            return
    assert out.mode == "RGB"
    assert min(out.size) >= MIN_SIDE
    assert max(out.size) <= MAX_SIDE
    out.tobytes()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_paths_that_are_not_regular_files_are_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer would block a plain open() forever; a folder or a device is no image either."""
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_image(fifo)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    if not outcome:  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("load_image blocked on a FIFO")
    assert isinstance(outcome[0], ImageError)
    assert str(outcome[0]) == "'pipe.png' is not a regular file; choose an image file."
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        load_image(tmp_path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(ImageError, match="not a regular file"):
            load_image("/dev/zero")
