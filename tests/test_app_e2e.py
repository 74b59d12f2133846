"""The launched app (`python app.py --weights none`): gradio_client API, two visitors at once, the browser."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from alexnet_viz.analysis import analyze
from alexnet_viz.model import load_model

from .conftest import ASSETS, CHROMIUM, ROOT, Server

README_METHODS = ["saliency", "input_x_gradient", "guided_backprop", "deconvolution", "integrated_gradients",
                  "smoothgrad", "gradcam", "guided_gradcam", "occlusion", "deeplift"]


@pytest.fixture(scope="module")
def local_model():
    return load_model("torchvision", "none", "cpu")  # the same seeded model the server has


def expected_top5(local_model, image: Path) -> list[tuple[str, float]]:
    return [(p.label, p.probability) for p in analyze(local_model, image).top_k]


def test_predict_returns_five_labelled_confidences(server: Server, local_model) -> None:
    client = Client(server.url, verbose=False)
    result = client.predict(handle_file(str(ASSETS / "cat.jpg")), api_name="/predict")
    confidences = [(c["label"], c["confidence"]) for c in result["confidences"]]
    assert len(confidences) == 5
    expected = expected_top5(local_model, ASSETS / "cat.jpg")
    assert [label for label, _ in confidences] == [label for label, _ in expected]
    assert [p for _, p in confidences] == pytest.approx([p for _, p in expected], abs=1e-5)


@pytest.mark.parametrize("method", README_METHODS)
def test_explain_returns_an_image_for_every_method(server: Server, method: str) -> None:
    client = Client(server.url, verbose=False)
    path = client.predict(handle_file(str(ASSETS / "espresso.jpg")), method, "", api_name="/explain")
    with Image.open(path) as im:
        assert im.size == (224, 224)
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 100  # a map, not a blank


def test_two_clients_at_once_each_get_their_own_result(server: Server, local_model) -> None:
    images = [ASSETS / "cat.jpg", ASSETS / "rocket.jpg"]
    expected = {p.name: expected_top5(local_model, p) for p in images}
    assert expected["cat.jpg"] != expected["rocket.jpg"]
    results: dict[str, list[list[tuple[str, float]]]] = {p.name: [] for p in images}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(images))

    def visitor(image: Path) -> None:
        try:
            client = Client(server.url, verbose=False)
            barrier.wait()
            for _ in range(3):
                out = client.predict(handle_file(str(image)), api_name="/predict")
                results[image.name].append([(c["label"], c["confidence"]) for c in out["confidences"]])
        except BaseException as e:  # reported below, on the main thread
            errors.append(e)

    threads = [threading.Thread(target=visitor, args=(p,)) for p in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    for name, runs in results.items():
        assert len(runs) == 3
        for run in runs:
            assert [label for label, _ in run] == [label for label, _ in expected[name]]
            assert [p for _, p in run] == pytest.approx([p for _, p in expected[name]], abs=1e-5)


def test_server_paths_are_refused(server: Server) -> None:
    import httpx

    api = server.url + "gradio_api/"
    for target in ("/etc/passwd", str(Path(__file__).resolve()), str(ASSETS.parent / "alexnet_viz" / "ui.py")):
        response = httpx.get(f"{api}file={target}", timeout=10)
        assert response.status_code in (403, 404), target
        # A client naming a server path in the payload (no upload) is refused by our own check.
        job = httpx.post(f"{api}call/predict", json={"data": [{"path": target, "meta": {"_type": "gradio.FileData"}}]},
                         timeout=10)
        if job.status_code == 200:
            stream = httpx.get(f"{api}call/predict/{job.json()['event_id']}", timeout=60).text
            assert "event: error" in stream and "root:" not in stream and "import" not in stream
    assert httpx.get(server.url + "monitoring", timeout=10).status_code in (401, 403, 404)


# --- the browser ------------------------------------------------------------------------------------------


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but {CHROMIUM} is missing")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_page_in_chromium(server: Server, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        expect(page.locator("#banner")).to_contain_text("untrained weights", timeout=60_000)

        # Click the first example (the cat) and wait for the predictions.
        page.locator("#examples button.gallery-item").first.click()
        expect(page.locator("#status")).to_contain_text("device cpu", timeout=60_000)
        expect(page.locator("#top5")).to_contain_text("%")

        for name in ("Filters", "Feature maps", "Saliency", "Architecture", "Download"):
            tab = page.get_by_role("tab", name=name)
            tab.click()
            expect(tab).to_have_attribute("aria-selected", "true")
            if name == "Architecture":
                expect(page.get_by_text("61,100,840 parameters")).to_be_visible()

        # Feature maps: pick another layer; the grid and the info follow.
        page.get_by_role("tab", name="Feature maps").click()
        page.get_by_role("combobox", name="Layer").click()
        page.get_by_role("option", name="conv4", exact=True).click()
        expect(page.locator("#layer-info")).to_contain_text("256x13x13", timeout=30_000)
        expect(page.locator("#layer-grid img")).to_be_visible()

        # Saliency: one slow method, with its progress, to its result.
        page.get_by_role("tab", name="Saliency").click()
        page.get_by_role("combobox", name="Method").click()
        page.get_by_role("option", name="Integrated gradients").click()
        expect(page.get_by_role("slider", name="range slider for Steps")).to_be_visible()
        page.locator("#explain").click()
        expect(page.locator("#attribution-info")).to_contain_text("Integrated gradients", timeout=120_000)
        expect(page.locator("#attribution img")).to_be_visible()
        page.screenshot(path=str(tmp_path / "saliency.png"))

        hosts = {urlparse(u).hostname for u in requests if not u.startswith(("data:", "blob:"))}
        assert hosts == {"127.0.0.1"}, hosts
        assert errors == []
        browser.close()


def test_page_shows_a_bad_upload_as_one_sentence_and_goes_on(server: Server, tmp_path: Path) -> None:
    """What a student who drops the wrong file sees: one sentence in a toast, no traceback, and the next image
    works in the same page."""
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    bad = tmp_path / "shopping-list.png"
    bad.write_bytes(b"eggs, milk, bread: a text file, not a picture\n" * 10)
    bomb = tmp_path / "bomb.png"  # a few hundred bytes claiming 50000x50000 pixels
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 999))
                     + chunk(b"IEND", b""))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(server.url)
        expect(page.locator("#banner")).to_contain_text("untrained weights", timeout=60_000)
        upload = page.locator("#image input[type=file]")
        for path, sentence in ((bad, "not an image alexnet-viz can read (text)"), (bomb, "too many pixels")):
            upload.set_input_files(str(path))
            toast = page.get_by_test_id("toast-body").filter(has_text=sentence)
            expect(toast).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / f"toast-{path.stem}.png"))
            text = page.locator("body").inner_text()
            assert "Traceback" not in text and "Error:" not in text and str(ROOT) not in text
            page.locator("#image").get_by_role("button", name="Remove Image").click()
        upload.set_input_files(str(ASSETS / "espresso.jpg"))
        expect(page.locator("#status")).to_contain_text("device cpu", timeout=60_000)
        expect(page.locator("#top5")).to_contain_text("%")
        browser.close()
