"""The launched app (`python app.py --weights none`): gradio_client API, two visitors at once, the browser."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from alexnet_viz.analysis import analyze
from alexnet_viz.browser import CHROMIUM_ARGS, Driver, open_page
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
    page_module = ASSETS.parent / "alexnet_viz" / "ui" / "layout.py"
    for target in ("/etc/passwd", str(Path(__file__).resolve()), str(page_module)):
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


FONT_JS = ("(sel) => { const e = document.querySelector(sel);"
           " return e ? parseFloat(getComputedStyle(e).fontSize) : -1; }")


@pytest.mark.browser
def test_presenter_mode_reads_from_the_back_and_fits_the_first_screen(server: Server, tmp_path: Path) -> None:
    """At 1920x1080: default body text >= 16 px; presenter mode (the page's toggle, as --presenter starts it)
    body text >= 24 px and labels >= 20 px, and after an upload the tab's main picture starts in the first
    screen and is >= 600 px wide."""
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser, page, watch = open_page(p, server.url)
        d = Driver(page)
        page.locator("#filters-caption p").wait_for(timeout=60_000)  # drawn after the banner open_page waits for
        for selector in (".gradio-container", "#top5 .top5-empty", "#filters-caption p"):
            size = page.evaluate(FONT_JS, selector)
            assert size >= 16, (selector, size)  # a laptop
        page.locator("#presenter input").check()
        page.wait_for_function("() => document.body.classList.contains('presenter')")
        d.upload(ASSETS / "cat.jpg")
        page.evaluate("() => window.scrollTo(0, 0)")
        for selector in (".gradio-container", "#status p", "#top5 .top5-label", "#filter-info p"):
            size = page.evaluate(FONT_JS, selector)
            assert size >= 24, (selector, size)
        for selector in ("#presenter .label-text", "#filter-map [data-testid=block-label]"):
            size = page.evaluate(FONT_JS, selector)
            assert size >= 20, (selector, size)
        for picture in ("filters-grid", "filter-map"):
            box = page.locator(f"#{picture} img").first.bounding_box()
            assert box is not None and box["y"] < 1080 and box["width"] >= 600, (picture, box)
        page.screenshot(path=str(tmp_path / "presenter.png"))
        d.tab("Feature maps")
        for selector in ("#layer [data-testid=block-info]", "#channel [data-testid=block-info]"):
            size = page.evaluate(FONT_JS, selector)
            assert size >= 20, (selector, size)
        d.check("presenter mode")
        assert watch.console_errors == [] and watch.hosts() == {"127.0.0.1"}
        browser.close()


@pytest.mark.browser
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
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
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
            # the refused file leaves the box empty for the next try (not shown as a broken picture)
            expect(page.locator("#image img")).to_have_count(0, timeout=30_000)
        upload.set_input_files(str(ASSETS / "espresso.jpg"))
        expect(page.locator("#status")).to_contain_text("device cpu", timeout=60_000)
        expect(page.locator("#top5")).to_contain_text("%")
        browser.close()


@pytest.mark.browser
@pytest.mark.parametrize(("width", "height", "presenter"), [(1280, 720, False), (1920, 1080, True)])
def test_the_architecture_table_shows_every_row_and_column_for_every_architecture(
        server: Server, width: int, height: int, presenter: bool) -> None:
    """Seen: beside the chart, the table's last columns (MACs, % MACs) scrolled out of its box at 1280x720 and in
    presenter mode at 1920x1080. Every architecture's table shows all its rows and columns, nothing scrolls."""
    import re

    from alexnet_viz.architectures import ARCHITECTURES
    from alexnet_viz.summary import summarize

    sync_playwright = _browser_or_skip()
    scrolled = """() => [...document.querySelectorAll('#arch-table *')].filter(e => e.clientHeight > 0 && (
        e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)
        && /(auto|scroll|hidden)/.test(getComputedStyle(e).overflowX + getComputedStyle(e).overflowY))
        .map(e => `${e.className} ${e.scrollWidth}x${e.scrollHeight} in ${e.clientWidth}x${e.clientHeight}`)"""
    with sync_playwright() as p:
        browser, page, watch = open_page(p, server.url, width=width, height=height)
        d = Driver(page)
        if presenter:
            page.locator("#presenter input").check()
            page.wait_for_function("() => document.body.classList.contains('presenter')")
            page.locator("#setup").get_by_text("Examples and model").click()
        d.tab("Architecture")
        for arch, spec in ARCHITECTURES.items():
            if page.locator("#arch input").input_value() != arch:
                d.choose("arch", arch)
                d.wait_text("arch-text", re.escape(spec.title))
                d.idle()
            layers = summarize(arch).layers
            page.wait_for_function("(n) => document.querySelectorAll('#arch-table .virtual-row').length === n",
                                   arg=len(layers))
            last = page.locator("#arch-table .virtual-row").last
            assert last.inner_text().split()[0] == layers[-1].name and last.is_visible()
            assert page.evaluate(scrolled) == [], (arch, width, presenter)
            header = page.locator("#arch-table").inner_text()
            assert "% MACs" in header and page.locator("#arch-table").get_by_text("% MACs").first.is_visible()
            d.check(f"architecture {arch}")
        assert watch.console_errors == [] and watch.hosts() == {"127.0.0.1"}
        browser.close()


@pytest.mark.browser
@pytest.mark.parametrize(("width", "height"), [(1280, 720), (1920, 1080)])
def test_labels_cover_no_tile_number_and_every_example_shows_its_title(server: Server, width: int,
                                                                       height: int) -> None:
    """Seen at 1920x1080: each picture's label lay over its top edge (the numbers of conv1 filters 0 and 1, of
    feature-map tiles 0 to 2), and the square example thumbnails hid their titles below the gallery's edge."""
    sync_playwright = _browser_or_skip()
    below = """(id) => { const b = document.getElementById(id); const l = b.querySelector('[data-testid=block-label]');
        return l.getBoundingClientRect().bottom - b.querySelector('img').getBoundingClientRect().top; }"""
    titles = """() => { const g = document.querySelector('#examples .grid-wrap').getBoundingClientRect();
        return [...document.querySelectorAll('#examples .caption-label')].map(c => {
          const r = c.getBoundingClientRect(); return [c.innerText, r.top >= g.top && r.bottom <= g.bottom]; }); }"""
    with sync_playwright() as p:
        browser, page, watch = open_page(p, server.url, width=width, height=height)
        d = Driver(page)
        # the gallery is drawn after the banner (seen once in CI: no .grid-wrap yet when asked)
        page.wait_for_function("() => document.querySelector('#examples .grid-wrap') !== null && "
                               "document.querySelectorAll('#examples .caption-label').length === 7", timeout=60_000)
        shown = page.evaluate(titles)
        assert len(shown) == 7 and all(inside for _, inside in shown), shown
        d.upload(ASSETS / "cat.jpg")
        for picture in ("filters-grid", "filter-map"):
            assert page.evaluate(below, picture) <= 0, picture
        d.tab("Feature maps")
        d.choose("layer", "conv2")
        d.wait_text("layer-info", r"^conv2\b")
        for picture in ("layer-grid", "channel-view"):
            assert page.evaluate(below, picture) <= 0, picture
        d.check("labels")
        assert watch.console_errors == [] and watch.hosts() == {"127.0.0.1"}
        browser.close()
