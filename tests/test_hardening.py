"""Hardening: a corpus of bad and odd images through every face (library, CLI, page handler, HTTP API), a
fuzz test of the page's handler, and faults (weights, devices, out of memory, slow work, a visitor who leaves).

Every file is generated here; nothing is downloaded. The launched app is the session `server` fixture.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet_viz import cli, ui
from alexnet_viz.analysis import analyze
from alexnet_viz.attribution import AttributionError
from alexnet_viz.images import ImageError, load_image
from alexnet_viz.model import available_devices
from alexnet_viz.ui import Handlers, ModelPool, Session, build_demo
from alexnet_viz.weights import WeightsError

from .conftest import ASSETS, ROOT, Server, free_port, upload

# --- what a good error looks like --------------------------------------------------------------------------

EXCEPTION_NAME = re.compile(r"\b\w*(Error|Exception|Warning)\b|\bTraceback\b")
SERVER_PATH = re.compile(r"(^|[\s'\"(=])/(tmp|home|work|root|usr|etc|var|proc|opt)/")


def assert_sentence(message: str) -> None:
    """One line a student can read: ends with '.', no traceback, no exception class, no server path."""
    assert message == message.strip() and message, repr(message)
    assert "\n" not in message, message
    assert message.endswith("."), message
    assert not EXCEPTION_NAME.search(message), message
    assert not SERVER_PATH.search(message), message
    assert str(ROOT) not in message and "site-packages" not in message, message


def assert_friendly(message: str) -> None:
    """A sentence that is one of ours, not the catch-all for an unexpected exception."""
    assert_sentence(message)
    assert not message.startswith("Something went wrong"), message


# --- the corpus ---------------------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 4000))
            + _chunk(b"IEND", b""))


def _photo(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, (height, width))
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x * y + noise) % 256], -1)
                           .astype(np.uint8))


def _encode(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


RED, BLUE = (255, 0, 0), (0, 0, 255)


def _upright() -> Image.Image:
    """A portrait picture: red top half, blue bottom half (what the EXIF-rotated file must show)."""
    im = Image.new("RGB", (120, 160), RED)
    im.paste(BLUE, (0, 80, 120, 160))
    return im


def _corpus_bytes() -> dict[str, bytes]:
    jpeg, png = _encode(_photo(), "JPEG", quality=90), _encode(_photo(), "PNG")
    rgba = _photo().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    palette = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    frames = [_photo(seed=i).convert("P") for i in range(3)]
    sideways = Image.Exif()
    sideways[0x0112] = 6  # "rotate 90 degrees clockwise to view": how a phone held sideways stores its photo
    absurd = Image.Exif()
    absurd[0x010E] = "x" * 60_000  # ImageDescription: a 60 KB EXIF block
    iend = png.rindex(b"IEND") - 4
    meta_chunks = (_chunk(b"tEXt", b"Comment\x00" + b"y" * 3_000_000)  # 3 MB of text
                   + _chunk(b"iCCP", b"bogus\x00\x00" + zlib.compress(b"not an ICC profile"))
                   + _chunk(b"pHYs", struct.pack(">IIB", 0xFFFFFFFF, 0, 1)))  # 4 G pixels per metre by 0
    gray16 = np.linspace(0, 65535, 100 * 200).reshape(100, 200).astype(np.uint16)
    return {
        "empty.png": b"",
        "text.png": b"hello, this is a shopping list, not a picture\n" * 20,
        "document.png": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "one_pixel.png": _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "strip_1x20000.png": _encode(Image.new("L", (1, 20000), 128), "PNG"),
        "gray16.png": _encode(Image.fromarray(gray16), "PNG"),  # uint16: mode I;16
        "cmyk.jpg": _encode(_photo().convert("CMYK"), "JPEG"),
        "rgba.png": _encode(rgba, "PNG"),
        "palette_transparent.png": _encode(palette, "PNG", transparency=0),
        "palette_transparent.gif": _encode(palette, "GIF", transparency=0),
        "animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "exif_rotated.jpg": _encode(_upright().transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95,
                                    exif=sideways),
        "multipage.tiff": _encode(_photo(seed=1), "TIFF", save_all=True, append_images=[_photo(seed=2)]),
        "image.webp": _encode(_photo(), "WEBP"),
        "image.bmp": _encode(_photo(), "BMP"),
        "absurd_exif_icc_dpi.jpg": _encode(_photo(), "JPEG", exif=absurd, dpi=(0, 99_999_999),
                                           icc_profile=b"\x00" * 200_000),
        "absurd_text_icc_dpi.png": png[:iend] + meta_chunks + png[iend:],
        "bomb_50000.png": _png_claiming(50_000, 50_000),  # 2.5 G pixels: above Pillow's own limit
        "bomb_8000.png": _png_claiming(8_000, 8_000),  # 64 M pixels: under Pillow's limit, above ours
    }


# None: the image is taken in; a pattern: the sentence that refuses it.
EXPECTED: dict[str, str | None] = {
    "empty.png": r"^The file is empty\.$",
    "text.png": r"not an image alexnet-viz can read \(text\)",
    "document.png": r"not an image alexnet-viz can read \(PDF\)",
    "truncated.jpg": r"^This JPEG file looks damaged or is not a complete image\.$",
    "truncated.png": r"^This PNG file looks damaged or is not a complete image\.$",
    "one_pixel.png": r"only 1x1 pixels; alexnet-viz needs at least 8",
    "strip_1x20000.png": r"only 1x20000 pixels",
    "gray16.png": None,
    "cmyk.jpg": None,
    "rgba.png": None,
    "palette_transparent.png": None,
    "palette_transparent.gif": None,
    "animated.gif": None,
    "exif_rotated.jpg": None,
    "multipage.tiff": None,
    "image.webp": None,
    "image.bmp": None,
    "absurd_exif_icc_dpi.jpg": None,
    "absurd_text_icc_dpi.png": None,
    "bomb_50000.png": r"too many pixels",
    "bomb_8000.png": r"too many pixels \(8000x8000\)",
}
BAD = [name for name, pattern in EXPECTED.items() if pattern]
GOOD = [name for name, pattern in EXPECTED.items() if not pattern]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    files = {}
    for name, data in _corpus_bytes().items():
        (folder / name).write_bytes(data)
        files[name] = folder / name
    assert set(files) == set(EXPECTED)
    return files


def _top_rows_red_bottom_rows_blue(im: Image.Image) -> None:
    a = np.asarray(im.convert("RGB")).astype(int)
    h = a.shape[0]
    top, bottom = a[: h // 4].reshape(-1, 3).mean(0), a[-h // 4 :].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60, top  # red
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue


@pytest.fixture(scope="module")
def local_model(pool: ModelPool):
    return pool.default  # the same seeded model as the server's (`--weights none`)


def _page_analyze(h: Handlers, path: str, session: Session | None = None) -> tuple[Session, dict[str, float]]:
    """The page's analyze event: the visitor's new session and its top-5 (label -> probability)."""
    out = h.analyze({"path": path}, "torchvision", "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6, "auto",
                    session)
    return out["session"], {p.label: p.probability for p in out["session"].analysis.top_k}


# --- face 1: the library's intake ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_corpus_through_the_intake(corpus: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pattern = EXPECTED[name]
    if name.startswith("bomb"):  # refused from the header: no pixel is decoded
        def refuse(*args: Any, **kwargs: Any) -> None:
            pytest.fail("pixel data was decoded")

        monkeypatch.setattr(Image, "_getdecoder", refuse)
    if pattern:
        with pytest.raises(ImageError) as caught:
            load_image(corpus[name])
        assert re.search(pattern, str(caught.value)), str(caught.value)
        assert_friendly(str(caught.value))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = load_image(corpus[name])
    assert im.mode == "RGB" and min(im.size) >= 8
    if name == "exif_rotated.jpg":
        assert im.size == (120, 160)  # portrait again
        _top_rows_red_bottom_rows_blue(im)
    if name == "gray16.png":  # scaled, not clipped to white
        values = np.asarray(im)[..., 0]
        assert values.min() < 10 and values.max() > 245 and 100 < values.mean() < 155
    if name == "rgba.png":  # transparency composited on white: the fully transparent corner is white
        assert min(np.asarray(im)[0, 0].tolist()) >= 250


# --- face 2: the page's handler (in process) ----------------------------------------------------------------


def test_corpus_through_the_page_handler(corpus: dict[str, Path], h: Handlers) -> None:
    good = upload(ASSETS / "cat.jpg")
    for name, pattern in EXPECTED.items():
        path = upload(corpus[name])
        if pattern:
            with pytest.raises(gr.Error) as caught:
                _page_analyze(h, path)
            assert re.search(pattern, caught.value.message), (name, caught.value.message)
            assert_friendly(caught.value.message)
            assert len(h.predict_api({"path": good})) == 5  # and the next request is served
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = _page_analyze(h, path)
            assert isinstance(out[0], Session) and len(out[1]) == 5, name
            if name == "exif_rotated.jpg":
                _top_rows_red_bottom_rows_blue(out[0].analysis.view)


# --- face 3: the command line ---------------------------------------------------------------------------------


def _check_cli_output(stdout: str, stderr: str, corpus: dict[str, Path], out: Path) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr
    bad = [name for name in BAD if name in corpus]
    assert len(errors) == len(bad), stderr
    for name in bad:
        [line] = [e for e in errors if e.startswith(f"error: {corpus[name]}: ")]
        message = line.removeprefix(f"error: {corpus[name]}: ")
        assert re.search(EXPECTED[name], message), line
        assert_friendly(message)
    for name in (name for name in GOOD if name in corpus):
        result = json.loads((out / Path(name).stem / "result.json").read_text())
        assert len(result["top_k"]) == 5, name
        assert f"{corpus[name]}: " in stdout
    with Image.open(out / "exif_rotated" / "input.png") as view:
        _top_rows_red_bottom_rows_blue(view)


def test_corpus_through_the_cli_in_process(corpus: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # the bad files and two good ones here; the console script below takes the whole corpus
    subset = {name: path for name, path in corpus.items() if name in BAD or name in ("exif_rotated.jpg", "cmyk.jpg")}
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["analyze", *map(str, subset.values()), "--out", str(out), "--weights", "none",
                         "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1  # some images were bad; the batch went on
    _check_cli_output(captured.out, captured.err, subset, out)


@pytest.mark.slow
def test_corpus_through_the_console_script(corpus: dict[str, Path], tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("alexnet-viz")
    assert script.is_file()
    out = tmp_path / "out"
    run = subprocess.run([str(script), "analyze", *map(str, corpus.values()), "--out", str(out), "--weights",
                          "none", "--device", "cpu"], capture_output=True, text=True, timeout=600,
                         env={**_env(), "TORCH_HOME": str(tmp_path / "torch")})
    assert run.returncode == 1, run.stderr
    _check_cli_output(run.stdout, run.stderr, corpus, out)


def _env() -> dict[str, str]:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "ignore"}


# --- face 4: the launched app through gradio_client ----------------------------------------------------------


def _predict_labels(client: Client, path: Path | str) -> list[str]:
    out = client.predict(handle_file(str(path)), api_name="/predict")
    return [c["label"] for c in out["confidences"]]


def test_corpus_through_the_http_api(server: Server, corpus: dict[str, Path], local_model) -> None:
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    good = [p.label for p in analyze(local_model, ASSETS / "cat.jpg").top_k]
    for name, pattern in EXPECTED.items():
        if pattern:
            with pytest.raises(AppError) as caught:
                client.predict(handle_file(str(corpus[name])), api_name="/predict")
            message = str(caught.value)
            assert re.search(pattern, message), (name, message)
            assert_friendly(message)
            # the same sentence from the page's own event
            with pytest.raises(AppError, match=pattern):
                client.predict(handle_file(str(corpus[name])), "torchvision", "cpu", "conv1", False, "viridis",
                               0.7, "saliency", 0.6, "auto", api_name="/analyze")
            assert _predict_labels(client, ASSETS / "cat.jpg") == good  # the server answers normally
        else:
            labels = _predict_labels(client, corpus[name])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = [p.label for p in analyze(local_model, load_image(corpus[name])).top_k]
            assert labels == expected, name


def test_exif_rotation_reaches_the_model_upright_over_http(server: Server, corpus: dict[str, Path],
                                                           local_model) -> None:
    path = corpus["exif_rotated.jpg"]
    upright = [p.label for p in analyze(local_model, path).top_k]  # the intake turns it (checked above)
    with Image.open(path) as im:
        as_stored = np.asarray(im.convert("RGB"))  # the decoded pixels, EXIF ignored (an array has none)
    assert as_stored.shape[:2] == (120, 160)
    stored = [p.label for p in analyze(local_model, as_stored).top_k]
    assert upright != stored  # so the check below can tell them apart
    client = Client(server.url, verbose=False)
    assert _predict_labels(client, corpus["exif_rotated.jpg"]) == upright


# --- fuzz: generated images through the page's handler ---------------------------------------------------------

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I;16", "I", "F"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


@st.composite
def generated_images(draw: st.DrawFn) -> tuple[bytes, str]:
    """An image of a random mode, size and format, sometimes multi-frame, EXIF-oriented or cut short."""
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    def side() -> int:  # one side in ten below the intake's minimum of 8 or near it
        return draw(st.integers(1, 23) if draw(st.integers(0, 9)) == 9 else st.integers(24, 400))

    width, height = side(), side()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    try:
        im = base.convert(mode)
    except (ValueError, OSError):
        im = base
    options: dict[str, Any] = {}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # orientation, valid (1-8) or not
        options["exif"] = exif
    frames = draw(st.integers(1, 3))
    if frames > 1 and fmt in ("GIF", "PNG", "TIFF", "WEBP"):
        options.update(save_all=True, append_images=[im.copy() for _ in range(frames - 1)])
    try:
        data = _encode(im, fmt, **options)
    except (OSError, ValueError, KeyError, TypeError):  # this format cannot store this mode
        im = im.convert("RGB")
        if "append_images" in options:
            options["append_images"] = [im.copy() for _ in options["append_images"]]
        data = _encode(im, fmt, **options)
    if draw(st.integers(0, 3)) == 3:  # a quarter are cut short somewhere
        data = data[: int(len(data) * draw(st.floats(0.0, 1.0)))]
    return data, fmt.lower()


@pytest.mark.slow
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated_images())
def test_fuzz_the_page_handler(h: Handlers, image: tuple[bytes, str]) -> None:
    data, ext = image
    folder = Path(gr.utils.get_upload_folder()) / "fuzz"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"image.{ext}"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = _page_analyze(h, str(path))
        except gr.Error as e:
            assert_friendly(e.message)
            return
    assert isinstance(out[0], Session) and len(out[1]) == 5


# --- faults: weights -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import save_file

    from alexnet_viz.architectures import build_model

    folder = tmp_path_factory.mktemp("weights")
    tv = build_model("torchvision", num_classes=1000, seed=3).state_dict()
    files: dict[str, Path] = {}
    torch.save(tv, folder / "good.pt")
    (folder / "truncated.pt").write_bytes((folder / "good.pt").read_bytes()[:50_000])
    torch.save(build_model("paper", seed=1).state_dict(), folder / "paper.pt")  # another architecture
    shapes = dict(tv)
    shapes["conv2.weight"] = torch.zeros(192, 64, 3, 3)
    torch.save(shapes, folder / "shapes.pt")
    save_file({k: v.to(torch.int16) if k.endswith("weight") else v for k, v in tv.items()},
              str(folder / "ints.safetensors"))

    class RunsCode:
        def __reduce__(self):  # unpickling would create a file next to the weights
            return (Path.touch, (folder / "pwned",))

    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCode()}, folder / "evil.pt")
    for name in ("truncated.pt", "paper.pt", "shapes.pt", "ints.safetensors", "evil.pt"):
        files[name] = folder / name
    return files


WEIGHTS_MESSAGES = {
    "truncated.pt": r"^truncated\.pt is not a readable PyTorch weights file",
    "paper.pt": r"^These weights do not fit this architecture; .*wrong shape: conv1\.weight",
    "shapes.pt": r"wrong shape: conv2\.weight \(192, 64, 3, 3\) \(model has \(192, 64, 5, 5\)\)",
    "ints.safetensors": r"^These weights have the wrong number type for conv1\.weight",
    "evil.pt": r"^evil\.pt was refused: loading it would run code",
}


@pytest.mark.parametrize("name", list(WEIGHTS_MESSAGES))
def test_bad_weights_are_one_sentence_and_the_app_does_not_start(bad_weights: dict[str, Path], name: str) -> None:
    with pytest.raises(WeightsError) as caught:
        ModelPool("torchvision", str(bad_weights[name]), "cpu")
    message = str(caught.value)
    assert re.search(WEIGHTS_MESSAGES[name], message), message
    assert "\n" not in message and message.endswith(".") and "Traceback" not in message
    assert not (bad_weights[name].parent / "pwned").exists()


def _one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    return errors[0]


def _app(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args, "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**_env(), "GRADIO_TEMP_DIR": str(tmp / "g"), "TORCH_HOME": str(tmp / "t")})


@pytest.mark.slow
def test_app_with_bad_weights_or_absent_device_exits_with_one_error_line(bad_weights: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    line = _one_error_line(_app("--weights", str(bad_weights["evil.pt"]), tmp=tmp_path))
    assert "refused: loading it would run code" in line
    assert not (bad_weights["evil.pt"].parent / "pwned").exists()
    absent = next(d for d in ("cuda", "mps") if d not in available_devices())
    line = _one_error_line(_app("--weights", "none", "--device", absent, tmp=tmp_path))
    assert re.search(r"(CUDA|MPS) was asked for, but", line), line


def test_a_failed_model_switch_keeps_the_visitors_model(h: Handlers, pool: ModelPool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    session = _page_analyze(h, upload(ASSETS / "cat.jpg"))[0]
    before = dict(pool._models)
    for failure in (WeightsError("These weights do not fit this architecture; missing: conv1.weight."),
                    RuntimeError("CUDA out of memory. Tried to allocate 230.00 MiB"),
                    OSError("No space left on device")):
        def refuse(*args: Any, failure: Exception = failure, **kwargs: Any) -> None:
            raise failure

        monkeypatch.setattr(ui.state, "load_model", refuse)
        with pytest.raises(gr.Error) as caught:
            h.switch_model("paper", "cpu", session)
        assert_sentence(caught.value.message)
        assert dict(pool._models) == before  # nothing half-loaded was kept
    monkeypatch.undo()
    # the page puts the dropdowns back on the visitor's model, and everything still works with it
    assert h.current_model(session) == {"arch": "torchvision", "device": "cpu"}
    assert h.current_model(None) == dict(zip(("arch", "device"), pool.default_key, strict=True))
    assert "conv3" in h.show_layer(session, "conv3", False, "viridis", 0.7)["layer_info"]
    assert h.explain(session, "gradcam", "", "conv5", 0.5, "auto", _options(), progress=_no_progress)["session"]
    assert len(_page_analyze(h, upload(ASSETS / "espresso.jpg"), session)[1]) == 5


def test_the_page_reverts_the_dropdowns_when_a_switch_fails(pool: ModelPool) -> None:
    demo = build_demo(pool)
    deps = list(demo.fns.values())
    [switch] = [d for d in deps if d.name == "switch_model"]
    after = [d for d in deps if d.trigger_after == switch._id]
    failure = [d for d in after if d.trigger_only_on_failure]
    success = [d for d in after if d.trigger_only_on_success]
    assert [d.name for d in failure] == ["current_model"]
    assert {o._id for o in failure[0].outputs} == {c._id for c in _dropdowns(demo, "arch", "device")}
    assert [d.name for d in success] == ["architecture"]
    chained = [d for d in deps if d.trigger_after == success[0]._id]
    assert [d.name for d in chained] == ["first_look"] and chained[0].trigger_only_on_success
    pictures = [d for d in deps if d.trigger_after == chained[0]._id and d.name == "panels"]
    assert len(pictures) == 1 and pictures[0].trigger_only_on_success  # then the new model's pictures


def _dropdowns(demo: gr.Blocks, *elem_ids: str) -> list[Any]:
    return [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.elem_id in elem_ids]


# --- faults: devices and memory ------------------------------------------------------------------------------


def test_device_choices_are_only_the_available_ones(pool: ModelPool) -> None:
    demo = build_demo(pool)
    [device] = _dropdowns(demo, "device")
    assert [value for _, value in device.choices] == available_devices()


def test_an_absent_device_over_the_api_is_a_sentence(server: Server) -> None:
    from gradio_client.exceptions import AppError

    absent = next(d for d in ("cuda", "mps", "cuda:7") if d not in available_devices())
    client = Client(server.url, verbose=False)
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(ASSETS / "cat.jpg")), "torchvision", absent, "conv1", False, "viridis",
                       0.7, "saliency", 0.6, "auto", api_name="/analyze")
    assert "is not available on this server" in str(caught.value)
    assert_friendly(str(caught.value))
    assert len(_predict_labels(client, ASSETS / "cat.jpg")) == 5


def _options(**chosen: float) -> dict[str, float]:
    """The page's sliders by name: the defaults, with ``chosen`` ones changed."""
    return {name: chosen.get(name, o.default) for name, o in ui.option_specs().items()}


def _no_progress(*args: Any, **kwargs: Any) -> None:
    return None


def _no_hooks_left(module: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in module.modules())


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"),
                                   MemoryError()])
def test_out_of_memory_is_a_sentence_and_the_model_stays_usable(h: Handlers, pool: ModelPool, error: BaseException,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    good = upload(ASSETS / "cat.jpg")
    session = _page_analyze(h, good)[0]
    lanes = [pool.get(*pool.default_key, lane=lane) for lane in ("main", "slow", "restore")]

    def boom(*args: Any, **kwargs: Any) -> None:
        raise error

    for loaded in lanes:  # the page's forward passes, its slow attributions and their recomputation
        monkeypatch.setattr(loaded.module.get_submodule("conv3"), "forward", boom)
    with pytest.raises(gr.Error) as caught:
        _page_analyze(h, good)
    assert caught.value.message.startswith("The server ran out of memory while analysing the image; ")
    assert_friendly(caught.value.message)
    for method in ("gradcam", "integrated_gradients"):
        with pytest.raises(gr.Error) as caught:
            h.explain(session, method, "", "conv5", 0.5, "auto", _options(n_steps=4), progress=_no_progress)
        assert caught.value.message.startswith("Ran out of memory computing "), caught.value.message
        assert_friendly(caught.value.message)
    with pytest.raises(gr.Error, match="out of memory"):
        h.predict_api({"path": good})
    monkeypatch.undo()
    # the same model serves the next requests: no lock held, no hook left behind
    for loaded in lanes:
        assert loaded.lock.acquire(blocking=False)
        loaded.lock.release()
        assert _no_hooks_left(loaded.module)
    assert len(_page_analyze(h, good)[1]) == 5
    assert h.explain(session, "integrated_gradients", "", "conv5", 0.5, "auto", _options(n_steps=4),
                     progress=_no_progress)["session"].attributions["integrated_gradients"].options["n_steps"] == 4


# --- faults: slow work ---------------------------------------------------------------------------------------------


def test_slow_attributions_stop_at_the_time_limit(pool: ModelPool) -> None:
    h = Handlers(pool, time_limit_s=0.3)
    session = _page_analyze(h, upload(ASSETS / "cat.jpg"))[0]
    seen: list[float] = []

    def progress(fraction: float, desc: str | None = None) -> None:
        seen.append(fraction)

    slow = _options(n_steps=200, tolerance=0, internal_batch_size=1, window=8, stride=4, perturbations_per_eval=1,
                    samples=64, nt_samples_batch_size=1)
    for method in ("integrated_gradients", "occlusion", "smoothgrad"):  # minutes each without the limit
        t0 = time.perf_counter()
        with pytest.raises(gr.Error, match=r"took longer than 0\.3 s and was stopped") as caught:
            h.explain(session, method, "", "conv5", 0.5, "auto", slow, progress=progress)
        assert time.perf_counter() - t0 < 60
        assert_friendly(caught.value.message)
    assert seen and max(seen) < 1.0  # it reported progress until it stopped
    with pytest.raises(gr.Error, match="took longer than"):
        h.compare(session, ["saliency", "occlusion", "integrated_gradients"], "", "conv5", 0.6, _options(tolerance=0),
                  progress=_no_progress)
    h.time_limit_s = 0.0
    with pytest.raises(gr.Error, match="took longer than"):
        h.explain_api({"path": upload(ASSETS / "cat.jpg")}, "occlusion", "")
    # the model is free again and fast methods are not affected by the limit
    assert pool.default.lock.acquire(blocking=False)
    pool.default.lock.release()
    assert _no_hooks_left(pool.default.module)
    assert h.explain(session, "gradcam", "", "conv5", 0.5, "auto", slow, progress=progress)["session"]
    h.time_limit_s = ui.SLOW_LIMIT_S
    out = h.explain(session, "integrated_gradients", "", "conv5", 0.5, "auto", _options(n_steps=8),
                    progress=progress)
    assert "integrated_gradients" in out["session"].attributions


class _FakeEvent:
    def __init__(self) -> None:
        self._id, self.alive, self.closed = "e1", True, False


class _FakeQueue:
    def __init__(self, event: _FakeEvent) -> None:
        self.event_ids_to_events = {event._id: event}


@pytest.mark.parametrize("leave", ["disconnect", "close", "cancel"])
def test_a_visitor_who_leaves_stops_the_attribution(leave: str) -> None:
    event = _FakeEvent()
    queue = _FakeQueue(event)
    bound = ui._Bounded(None, 3600)
    bound(0.0, "starting")
    bound.event = (queue, event)  # as _current_event() finds it inside a queued Gradio event
    bound(0.5, "pass 2 of 4")  # still there: goes on
    if leave == "disconnect":
        event.alive = False  # Gradio: the SSE stream went away (clean_events)
    elif leave == "close":
        event.closed = True  # Gradio: the page's heartbeat ended
    else:
        del queue.event_ids_to_events[event._id]  # Gradio: /cancel ended the task, not our thread
    with pytest.raises(AttributionError, match="cancelled"):
        bound(0.75, "pass 3 of 4")
    bound(1.0, "done")  # finished work is never thrown away
    assert ui._Bounded(None, 3600).event is None and ui._current_event() is None  # outside Gradio: time only


@contextmanager
def _app_in_process(pool: ModelPool, **queue: int) -> Iterator[tuple[gr.Blocks, Client]]:
    """The page, queued and launched by ``ui.launch`` with the app's settings, on a free port of this process
    (so a test can hook the model it serves); closed afterwards."""
    demo = ui.launch(build_demo(pool), port=free_port(), block=False, **queue)
    try:
        yield demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.mark.slow
def test_cancelling_over_http_frees_the_model(pool: ModelPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio's /cancel (what gradio_client's Job.cancel and the page's Stop do) cannot stop a running sync
    handler's thread; our progress callback notices and stops the attribution at its next batch."""
    slow = pool.get(*pool.default_key, lane="slow")  # /explain runs on the slow attributions' replica
    module = slow.module
    calls: list[int] = []

    def slow_batch(_module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        calls.append(1)
        time.sleep(0.4)

    handle = module.register_forward_pre_hook(slow_batch)
    try:
        with _app_in_process(pool, queue_size=8) as (_, client):
            # /explain: one forward pass to analyse, then occlusion's unoccluded pass and 11 batches of windows
            job = client.submit(handle_file(str(ASSETS / "cat.jpg")), "occlusion", "", api_name="/explain")
            deadline = time.monotonic() + 60
            while len(calls) < 4 and time.monotonic() < deadline:  # the attribution is running
                time.sleep(0.05)
            assert len(calls) >= 4
            assert job.cancel()
            cancelled_at = len(calls)
            deadline = time.monotonic() + 60
            free = False
            while not free and time.monotonic() < deadline:
                free = slow.lock.acquire(timeout=0.1)
            assert free, "the attribution kept the model after its visitor cancelled"
            slow.lock.release()
            stopped_at = len(calls)
            assert stopped_at <= cancelled_at + 2 < 13  # stopped at the next batch, not after all 13 passes
            time.sleep(1.0)
            assert len(calls) == stopped_at  # nothing runs on behind the visitor's back
    finally:
        handle.remove()
    assert _no_hooks_left(module)


def _until(condition: Any, *, what: str, timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds (checked every 10 ms), or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_full_queue_turns_visitors_away_and_then_serves_again(pool: ModelPool) -> None:
    """More visitors than the queue holds: the extra ones are told at once (Gradio answers 503 "queue full",
    the page shows it), the queued ones are all served in turn, and the next visitor is served normally."""
    from gradio_client.utils import QueueError

    module = pool.default.module
    gate, running = threading.Event(), threading.Event()

    def wait_for_gate(_module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        running.set()
        assert gate.wait(120), "the test never opened the gate"

    handle = module.register_forward_pre_hook(wait_for_gate)
    try:
        with _app_in_process(pool, queue_size=3, concurrency=1) as (demo, client):
            # The order is decided by what the server reports, never by sleeps: one runs (held at the gate),
            # three wait in the queue, three are turned away.
            jobs = [client.submit(handle_file(str(ASSETS / "cat.jpg")), api_name="/predict")]
            assert running.wait(60), "the first request never reached the model"
            for waiting in range(1, 4):
                jobs.append(client.submit(handle_file(str(ASSETS / "cat.jpg")), api_name="/predict"))
                _until(lambda n=waiting: len(demo._queue) == n, what=f"{waiting} request(s) waiting in the queue")
            jobs += [client.submit(handle_file(str(ASSETS / "cat.jpg")), api_name="/predict") for _ in range(3)]
            outcomes: list[str] = []
            turned_away = []
            for job in jobs[4:]:
                try:
                    job.result(timeout=30)
                    outcomes.append("served")
                except QueueError as e:
                    turned_away.append(str(e))
                    outcomes.append("full")
            assert outcomes == ["full"] * 3, outcomes
            assert all("full" in message.lower() for message in turned_away), turned_away
            gate.set()
            served = [job.result(timeout=60) for job in jobs[:4]]
            assert [len(out["confidences"]) for out in served] == [5, 5, 5, 5]
            after = client.predict(handle_file(str(ASSETS / "espresso.jpg")), api_name="/predict")
            assert len(after["confidences"]) == 5
    finally:
        gate.set()
        handle.remove()


# --- memory: what a worker thread frees goes back to the system ----------------------------------------------

FRAGMENT = """
import ctypes, sys, threading
import time
from alexnet_viz.ui import trim_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
MB = 1 << 20


def rss():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))


def request():  # what a handler thread does: a big block freed, then many, with small survivors between them
    libc.free(libc.malloc(3 * MB))
    big = []
    for _ in range(100):
        big.append(libc.malloc(2 * MB))
        ctypes.memset(big[-1], 1, 2 * MB)
        libc.malloc(256)  # kept, like a request's small leftovers
    for block in big:
        libc.free(block)


trimming = sys.argv[1] == "trimmed" and trim_freed_memory(0.1) is not None
before = rss()
worker = threading.Thread(target=request)
worker.start()
worker.join()
time.sleep(0.5)  # a few trims
print(trimming, rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_server_gives_freed_tensors_back_to_the_system() -> None:
    """The soak figure in benchmarks/LOAD.md (RSS after 8 visitors: 1.9 GB without, 1.4 GB with) in small."""
    kept = {}
    for mode in ("default", "trimmed"):
        run = subprocess.run([sys.executable, "-c", FRAGMENT, mode], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, check=True)
        trimming, grown = run.stdout.split()
        assert trimming == str(mode == "trimmed")
        kept[mode] = int(grown)
    assert kept["default"] >= 150, kept  # glibc's own behaviour: 200 MB freed in a thread stay with the process
    assert kept["trimmed"] <= 20, kept  # the server's trims give them back


REUSE = """
import ctypes, sys, threading, time
from alexnet_viz.ui import trim_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
MB = 1 << 20


def faults():  # minor page faults of this process so far (/proc/self/stat, field 10)
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])


def requests(seen):  # one visitor asking again and again: 16 MB used and freed each time, in a worker thread
    libc.free(libc.malloc(3 * MB))  # as in FRAGMENT: glibc's mmap threshold rises, blocks come from the arena
    for i in range(25):
        blocks = []
        for _ in range(16):  # tensors, with a request's small survivors between them (so not one top chunk)
            blocks.append(libc.malloc(MB))
            ctypes.memset(blocks[-1], 1, MB)
            libc.malloc(64)
        for block in blocks:
            libc.free(block)
        if i == 4:
            seen.append(faults())  # from here on the freed pages could be reused
        time.sleep(0.04)
    seen.append(faults())


clock = sys.argv[1] == "clock"  # the old policy: a trim every tick, grown or not
trim_freed_memory(0.1, slack_mb=0.0 if clock else 32.0, at_least_s=0.0 if clock else 30.0)
seen = []
worker = threading.Thread(target=requests, args=(seen,))
worker.start()
worker.join()
print(seen[1] - seen[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_visitor_reusing_freed_pages_is_not_made_to_fault_them_in_again() -> None:
    """Trims follow growth, not a clock: 20 requests that reuse 16 MB of freed pages in 0.8 s, with a look every
    0.1 s, fault (almost) none in again; trimming at every look makes each request after a trim pay 4,096 faults."""
    faulted = {}
    for mode in ("clock", "growth"):
        run = subprocess.run([sys.executable, "-c", REUSE, mode], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, check=True)
        faulted[mode] = int(run.stdout)
    assert faulted["clock"] >= 4 * 4096, faulted  # several trims, each costing the next request 16 MB of faults
    assert faulted["growth"] <= 1024, faulted


# --- the upload cache stays bounded ------------------------------------------------------------------------------


def test_delete_cache_removes_uploads_and_the_pictures_sent(pool: ModelPool) -> None:
    """`gr.Blocks(delete_cache=...)` is what keeps a public app's disk bounded: every upload and every PNG file
    the page was sent must be among the files it deletes (Gradio's own sweep, run here with age 0)."""
    from gradio.route_utils import delete_files_created_by_app

    cache = Path(gr.utils.get_upload_folder())
    with _app_in_process(pool, queue_size=8) as (demo, client):
        assert demo.delete_cache == (ui.CACHE_SWEEP_S, ui.CACHE_MAX_AGE_S)
        photo = Image.fromarray(np.random.default_rng(7).integers(0, 256, (90, 120, 3), dtype=np.uint8))
        source = cache.parent / "delete-cache-test.png"
        photo.save(source)
        before = {p for p in cache.rglob("*") if p.is_file()}
        client.predict(handle_file(str(source)), "torchvision", "cpu", "conv2", False, "viridis", 0.7, "saliency",
                       0.6, "auto", api_name="/analyze")
        client.predict(handle_file(str(source)), "gradcam", "", api_name="/explain")
        made = {p for p in cache.rglob("*") if p.is_file()} - before
        assert any(p.suffix == ".png" and "alexnet-viz" in p.parts for p in made)  # the pictures sent
        assert any(p.name == "delete-cache-test.png" for p in made)  # the upload
        delete_files_created_by_app(demo, 0)
        left = {p for p in made if p.exists()}
        assert not left, sorted(map(str, left))


# --- a decoder that crashes or hangs costs one request, not the server ------------------------------------------


@pytest.mark.slow
def test_a_crashing_or_hanging_decoder_costs_one_request(tmp_path: Path, pool: ModelPool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from alexnet_viz.images import IsolatedDecoder

    from . import crashing_decoder

    good = tmp_path / "photo.png"
    _photo().save(good)
    crash, hang = tmp_path / "crash.png", tmp_path / "hang.png"
    shutil.copy(good, crash)
    shutil.copy(good, hang)
    decoder = IsolatedDecoder(timeout_s=3.0, target=crashing_decoder.decode)
    try:
        expected = np.asarray(load_image(good))
        assert np.array_equal(np.asarray(decoder(str(good))), expected)  # the worker's result is the intake's
        with pytest.raises(ImageError) as caught:
            decoder(str(crash))
        assert str(caught.value) == IsolatedDecoder.CRASHED
        assert_friendly(str(caught.value))
        assert np.array_equal(np.asarray(decoder(str(good))), expected)  # a new worker took over
        t0 = time.monotonic()
        with pytest.raises(ImageError, match=r"took longer than 3 s, so it was stopped") as caught:
            decoder(str(hang))
        assert time.monotonic() - t0 < 20
        assert_friendly(str(caught.value))
        assert np.array_equal(np.asarray(decoder(str(good))), expected)
        # a visitor whose image was queued behind the crash is still served (tried again in the new worker)
        with ThreadPoolExecutor(4) as threads:  # whatever order they reach the workers in
            bad_one = threads.submit(decoder, str(crash))
            good_ones = [threads.submit(decoder, str(good)) for _ in range(3)]
            for good_one in good_ones:
                assert np.array_equal(np.asarray(good_one.result(timeout=60)), expected)
            with pytest.raises(ImageError, match="crashed the image decoder"):
                bad_one.result(timeout=60)
        # and through the page: a sentence, then the next upload is analysed
        h = Handlers(pool, decode=decoder)
        with pytest.raises(gr.Error) as page:
            _page_analyze(h, upload(crash, folder="crash"))
        assert page.value.message == IsolatedDecoder.CRASHED
        assert len(_page_analyze(h, upload(good, folder="crash"))[1]) == 5
    finally:
        decoder.close()


def test_the_server_decodes_uploads_in_a_worker_process(h: Handlers) -> None:
    from alexnet_viz.images import IsolatedDecoder

    from . import crashing_decoder

    assert isinstance(h.decode, IsolatedDecoder) and h.decode is ui.DECODER
    worker = IsolatedDecoder(target=crashing_decoder.pid)
    try:
        assert worker(str(ASSETS / "cat.jpg")) != os.getpid()
    finally:
        worker.close()


def test_where_no_worker_can_start_decoding_stays_in_process(tmp_path: Path) -> None:
    """`python - < script` has a __main__ a spawned interpreter cannot re-import: that must not read as
    'this file crashed the decoder' for every upload; the decoder says so in the log and decodes here."""
    script = ("from alexnet_viz.images import IsolatedDecoder\n"
              "d = IsolatedDecoder()\n"
              f"image = d({str(ASSETS / 'cat.jpg')!r})\n"
              "print(d.isolated, image.size)\n")
    run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == f"False {load_image(ASSETS / 'cat.jpg').size}"
    assert "image decoding stays in the server process" in run.stderr
