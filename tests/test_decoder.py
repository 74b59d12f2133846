"""The server's image decoder: a file that stalls or crashes the decoder costs its own request only.

The stalling file is issue #11's: a progressive JPEG whose one AC scan is repeated thousands of times, generated
here (tests/crashing_decoder.py). The intake refuses it from its scan count before decoding; without that
defence, the worker's time limit stops it while other visitors' uploads go on in the other worker.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_viz.images import MAX_JPEG_SCANS, ImageError, IsolatedDecoder, _jpeg_scans, load_image

from . import crashing_decoder
from .crashing_decoder import stalling_jpeg


def _jpeg(im: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **options)
    return buf.getvalue()


def _photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message and "Error" not in message, message


# --- the scan count --------------------------------------------------------------------------------------------


def test_scan_count_of_what_encoders_write() -> None:
    photo = _photo(0)
    assert _jpeg_scans(_jpeg(photo), 1000) == 1  # baseline: one interleaved scan
    # libjpeg's standard progression (jcparam.c, jpeg_simple_progression): 10 scans for YCbCr, 6 for grey
    assert _jpeg_scans(_jpeg(photo, progressive=True), 1000) == 10
    assert _jpeg_scans(_jpeg(photo.convert("L"), progressive=True), 1000) == 6
    data, scans = stalling_jpeg(side=256, repeats=500)
    assert _jpeg_scans(data, 10_000) == scans == 501
    assert _jpeg_scans(data, 40) == 41  # stops counting past the limit


def test_a_jpeg_inside_an_app_segment_is_not_counted() -> None:
    """An EXIF thumbnail is a whole JPEG inside APP1: its scans are not the image's."""
    inner = _jpeg(_photo(1, (64, 48)), progressive=True)  # 10 scans
    outer = _jpeg(_photo(2), progressive=True)
    payload = b"Exif\x00\x00" + inner
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    data = outer[:2] + app1 + outer[2:]
    assert _jpeg_scans(data, 1000) == 10
    assert load_image(data).size == (320, 240)


def test_the_stalling_jpeg_is_refused_before_decoding() -> None:
    data, scans = stalling_jpeg()  # 6000x6000, 12,001 scans, 0.8 MB: 22 s in libjpeg
    assert len(data) < 1_000_000 and scans == 12_001
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=f"more than {MAX_JPEG_SCANS} passes") as caught:
        load_image(data)
    assert time.perf_counter() - t0 < 0.5
    _sentence(str(caught.value))


def test_a_progressive_jpeg_at_the_scan_limit_decodes() -> None:
    data, scans = stalling_jpeg(side=512, repeats=MAX_JPEG_SCANS - 1)
    assert scans == MAX_JPEG_SCANS
    assert np.asarray(load_image(data)).std() == 0  # the flat grey it was made of, decoded
    with pytest.raises(ImageError, match="passes"):
        load_image(stalling_jpeg(side=512, repeats=MAX_JPEG_SCANS)[0])


# --- the worker processes --------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for i in range(6):
        made[f"good{i}"] = tmp_path / f"good{i}.jpg"
        _photo(10 + i).save(made[f"good{i}"], quality=90)
    made["stall"] = tmp_path / "stall.jpg"
    made["stall"].write_bytes(stalling_jpeg()[0])
    for name in ("crash", "hang"):
        made[name] = tmp_path / f"{name}.jpg"
        made[name].write_bytes(made["good0"].read_bytes())
    return made


def _expected(files: dict[str, Path]) -> dict[str, np.ndarray]:
    return {name: np.asarray(load_image(path)) for name, path in files.items() if name.startswith("good")}


@pytest.mark.slow
def test_a_stalling_decode_costs_only_its_own_request(files: dict[str, Path]) -> None:
    """The stalling JPEG (its scan limit lifted) beside six normal uploads: the normal ones are all decoded
    before the stalling one reaches its time limit, it gets the time-limit sentence, nothing else fails."""
    expected = _expected(files)
    decoder = IsolatedDecoder(timeout_s=3.0, target=crashing_decoder.decode_without_scan_limit, workers=2)
    decoder.start()
    try:
        done: dict[str, float] = {}

        def decode(name: str) -> np.ndarray:
            try:
                return np.asarray(decoder(str(files[name])))
            finally:
                done[name] = time.monotonic()

        with ThreadPoolExecutor(7) as threads:
            t0 = time.monotonic()
            stalled = threads.submit(decode, "stall")
            good = {name: threads.submit(decode, name) for name in expected}
            for name, future in good.items():
                assert np.array_equal(future.result(timeout=60), expected[name])
            with pytest.raises(ImageError) as caught:
                stalled.result(timeout=60)
        assert str(caught.value) == decoder.timeout_message()
        assert "took longer than 3 s, so it was stopped" in str(caught.value)
        _sentence(str(caught.value))
        assert max(done[name] for name in expected) < done["stall"]  # nobody waited behind it
        assert 3.0 <= done["stall"] - t0 < 15.0  # its own limit, counted from when its decode began
        assert np.array_equal(np.asarray(decoder(str(files["good1"]))), expected["good1"])  # and it serves on
    finally:
        decoder.close()


@pytest.mark.slow
def test_replacing_a_worker_never_fails_another_request(files: dict[str, Path]) -> None:
    """One worker only, so every other request waits for the one that hangs or crashes it: each is then decoded
    in the replacement (never cancelled), and only the culprits get a sentence."""
    expected = _expected(files)
    decoder = IsolatedDecoder(timeout_s=2.0, target=crashing_decoder.decode, workers=1)
    decoder.start()
    try:
        with ThreadPoolExecutor(8) as threads:
            hang = threads.submit(decoder, str(files["hang"]))
            started = Path(f"{files['hang']}.started")
            deadline = time.monotonic() + 60
            while not started.exists() and time.monotonic() < deadline:  # the worker is busy with it now
                time.sleep(0.01)
            assert started.exists()
            crash = threads.submit(decoder, str(files["crash"]))
            good = {name: threads.submit(decoder, str(files[name])) for name in expected}
            for name, future in good.items():
                assert np.array_equal(np.asarray(future.result(timeout=120)), expected[name])
            with pytest.raises(ImageError, match="took longer than 2 s"):
                hang.result(timeout=60)
            with pytest.raises(ImageError) as caught:
                crash.result(timeout=60)
            assert str(caught.value) == IsolatedDecoder.CRASHED
    finally:
        decoder.close()


def test_a_refused_file_keeps_its_worker(files: dict[str, Path], tmp_path: Path) -> None:
    """The intake's own refusal comes back as the same ImageError, and the worker that said it is used again."""
    text = tmp_path / "notes.png"
    text.write_text("a shopping list, not a picture\n" * 20)
    decoder = IsolatedDecoder(target=crashing_decoder.decode, workers=1)
    pid = IsolatedDecoder(target=crashing_decoder.pid, workers=1)
    try:
        with pytest.raises(ImageError) as caught:
            decoder(str(text))
        with pytest.raises(ImageError) as direct:
            load_image(text)
        assert str(caught.value) == str(direct.value)
        assert pid(str(text)) == pid(str(text))  # one worker, kept between requests
    finally:
        decoder.close()
        pid.close()


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        IsolatedDecoder(workers=0)


def test_close_leaves_no_executor_winding_down() -> None:
    """After close(), every worker's executor thread has ended, so none is left for the interpreter's exit hook
    to race for its wake-up pipe (that race printed an ``OSError: Bad file descriptor`` traceback under an
    app that exits on bad weights, about once in 15 exits, before close() waited)."""
    import threading

    decoder = IsolatedDecoder(workers=2)
    decoder.start()
    managers = [pool._executor_manager_thread for pool in decoder._idle]
    assert len(managers) == 2 and all(thread.is_alive() for thread in managers)
    decoder.close()
    assert not any(thread.is_alive() for thread in managers)
    assert not set(managers) & set(threading.enumerate())

