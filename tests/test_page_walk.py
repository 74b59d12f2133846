"""A lecturer's hour in one test: every control of the page, in more than one order, in Debian's Chromium.

Each step waits for what the page shows, then fails on any "Error" badge or toast; at the end, on any
console error and on any request beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from alexnet_viz.architectures import ARCHITECTURES
from alexnet_viz.attribution import METHODS
from alexnet_viz.browser import Driver, Watch, with_page

from .conftest import ASSETS, Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TV_LAYERS = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4", "conv5",
             "relu5", "pool5", "fc6", "relu6", "fc7", "relu7", "fc8"]


def walk(d: Driver, watch: Watch, tmp: Path, layers: list[str]) -> dict[str, object]:
    page = d.page
    seen: dict[str, object] = {}
    # Before any image: another architecture and back (nothing to analyse yet, nothing may fail).
    d.tab("Architecture")
    for arch in ("paper", "torchvision"):
        d.choose("arch", arch)
        d.wait_text("arch-text", re.escape(ARCHITECTURES[arch].title))
        d.idle()
        d.check(f"architecture {arch} before an image")
    d.tab("Filters")
    d.upload(ASSETS / "cat.jpg")
    d.check("upload")
    assert re.search(r"\d\.\d+%", d.text("top5")), d.text("top5")  # untrained ~0.1%: never "0%"

    # Filters: a filter click names that filter.
    d.tab("Filters")
    d.click_picture("filters-grid", 0.07, 0.07)  # the first tile
    d.wait_text("filter-info", r"Filter \*?\*?0\b|Filter 0\b")
    d.check("filter click")

    # Feature maps: every layer, conv and fc; then a new image while an fc layer is chosen.
    d.tab("Feature maps")
    for layer in layers:
        d.choose("layer", layer)
        info = d.wait_text("layer-info", rf"^{layer}\b")
        d.check(f"layer {layer}")
        if layer.startswith(("fc", "relu6", "relu7")):
            assert "vector" in info and "strongest units" in info, info
            assert not page.locator("#channel").is_visible()
    d.example(1)  # the espresso, with fc8 chosen
    d.check("new image after an fc layer")
    before = d.wait_text("layer-info", r"^fc8\b.*vector")
    d.click_picture("layer-grid", 0.1, 0.05)  # a cell of the strip: that unit, named with its class
    d.wait_text("layer-info", r"unit \d+ \(.+\): ", changed_from=before)
    d.check("fc8 unit click")
    # conv5: a tile click names the clicked channel in the layer line and under the view.
    d.choose("layer", "conv5")
    d.wait_text("layer-info", r"^conv5\b")
    before = d.text("layer-info")
    d.click_picture("layer-grid", 0.55, 0.3)
    info = d.wait_text("layer-info", r"showing channel", changed_from=before)
    channel = int(d.slider_value("channel"))
    assert f"showing channel {channel}" in info, (info, channel)
    d.wait_text("channel-info", rf"channel {channel}\b")
    d.check("tile click")
    # sort, colour maps and opacity, each redrawn from the cached tensors.
    page.locator("#sort input").check()
    d.wait_text("layer-info", r"^conv5\b")
    for cmap in ("inferno", "gray", "RdBu_r", "viridis"):
        shown = d.picture("layer-grid")
        d.choose("cmap", cmap)
        d.wait_picture_change("layer-grid", shown)
        d.check(f"colour map {cmap}")
    shown = d.picture("channel-view")
    d.set_slider("opacity", 0.3)
    d.wait_picture_change("channel-view", shown)
    d.check("opacity")

    # Saliency: every method, then a class found by typing.
    d.tab("Saliency")
    for name, spec in METHODS.items():
        d.choose("method", spec.title)
        before = d.text("attribution-info")
        page.locator("#explain").click()
        d.wait_text("attribution-info", re.escape(spec.title), changed_from=before, timeout=180_000)
        d.check(f"method {name}")
    last = list(METHODS)[-1]
    d.choose("method", METHODS["saliency"].title)
    d.choose("target", "tabby (281)", search="tabby")
    before = d.text("attribution-info")
    page.locator("#explain").click()
    d.wait_text("attribution-info", r"Saliency.*tabby", changed_from=before)
    d.check("class search")
    last = "saliency"
    # Compare with every method.
    for spec in METHODS.values():
        box = page.locator("#compare-methods").get_by_label(spec.title, exact=True)
        if not box.is_checked():
            box.check()
    shown = d.picture("compare-image")
    page.locator("#compare").click()
    d.wait_picture_change("compare-image", shown, timeout=300_000)
    d.check("compare")

    # Download: one click, exactly what is on screen.
    d.tab("Download")
    zipped = d.download(tmp / "results.zip")
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        meta = json.loads(z.read("result.json"))
    seen["zip"] = names
    assert f"attribution_{last}.png" in names and "compare.png" in names, names
    assert meta["settings"]["methods"] == [last] and meta["attributions"][last]["label"] == "tabby"
    assert meta["settings"]["layers"] == ["conv5"] and meta["settings"]["channels"] == {"conv5": channel}
    assert {"features_conv5.png", "channel_conv5.png", "strongest_channels.png", "filter_map.png"} <= names

    # Every architecture, a new image after each, then a layer of it.
    for i, arch in enumerate(ARCHITECTURES):
        if arch == "torchvision":
            continue
        before = d.text("status")
        d.choose("arch", arch)
        d.wait_text("status", r"ms in all", changed_from=before, timeout=180_000)
        d.check(f"architecture {arch}")
        d.tab("Filters")
        d.wait_text("filter-info", r"Filter")
        d.upload(ASSETS / ["palace.jpg", "rocket.jpg", "astronaut.jpg", "cameraman.png"][i % 4])
        d.check(f"new image on {arch}")
        d.tab("Feature maps")
        d.choose("layer", "fc7")
        d.wait_text("layer-info", r"^fc7\b")
        d.check(f"fc7 on {arch}")
        d.tab("Architecture")
        d.wait_text("arch-text", re.escape(ARCHITECTURES[arch].title))
        d.tab("Saliency")
        d.choose("method", METHODS["gradcam"].title)
        page.locator("#explain").click()
        # Not "changed from before": Grad-CAM is quick, so the upload above may have drawn it already, and the
        # same map's caption (its milliseconds included) can come back word for word.
        d.wait_text("attribution-info", "Grad-CAM")
        d.idle()
        d.check(f"Grad-CAM on {arch}")
    page.screenshot(path=str(tmp / "end.png"))
    return seen


def test_every_control_in_chromium(server: Server, tmp_path: Path, browser_ready: None) -> None:
    def run(d: Driver, watch: Watch) -> None:
        walk(d, watch, tmp_path, TV_LAYERS)
        assert watch.hosts() == {"127.0.0.1"}, watch.hosts()
        assert watch.console_errors == []

    with_page(server.url, run)


def test_settings_chosen_before_an_image_apply_to_it(server: Server, tmp_path: Path, browser_ready: None) -> None:
    """Another order: pick an fc layer, a colour map, sorting, a method and an architecture first, then give
    images (an upload, then an example): every panel comes from the newest image with those settings."""

    def run(d: Driver, watch: Watch) -> None:
        page = d.page
        d.tab("Feature maps")
        d.choose("layer", "fc6")
        d.choose("cmap", "magma")
        page.locator("#sort input").check()
        d.tab("Saliency")
        d.choose("method", METHODS["gradcam"].title)
        d.tab("Architecture")
        d.choose("arch", "bn")
        d.wait_text("arch-text", re.escape(ARCHITECTURES["bn"].title))
        d.idle()
        d.check("settings before an image")
        d.tab("Feature maps")
        status = d.upload(ASSETS / "rocket.jpg")
        d.check("upload with settings chosen first")
        info = d.wait_text("layer-info", r"^fc6\b.*vector")
        assert not page.locator("#channel").is_visible()
        d.tab("Saliency")
        d.wait_text("attribution-info", r"Grad-CAM")  # a quick method: computed with the image
        first = d.picture("attribution")
        d.tab("Filters")
        d.example(5)  # the cameraman, grey
        d.check("example after an upload")
        assert d.text("status") != status and "Cameraman" in d.text("example-caption")
        ringed = "() => [...document.querySelectorAll('#examples .thumbnail-item')].flatMap((e, i) => " \
                 "e.className.includes('selected') ? [i] : [])"
        assert page.evaluate(ringed) == [5]  # the example shown, and only it, ringed in the gallery
        d.tab("Feature maps")
        assert d.wait_text("layer-info", r"^fc6\b") != info  # the new image's vector
        d.tab("Saliency")
        assert d.wait_picture_change("attribution", first)
        d.tab("Download")
        with zipfile.ZipFile(d.download(tmp_path / "r.zip")) as z:
            meta = json.loads(z.read("result.json"))
        assert meta["model"]["arch"] == "bn" and meta["settings"]["layers"] == ["fc6"]
        assert meta["settings"]["cmap"] == "magma" and meta["settings"]["sort"] is True
        assert meta["settings"]["methods"] == ["gradcam"] and "channel_fc6.png" not in z.namelist()
        assert watch.hosts() == {"127.0.0.1"}, watch.hosts()
        assert watch.console_errors == []

    with_page(server.url, run)


def test_each_new_image_is_analysed_once(server: Server, tmp_path: Path, browser_ready: None) -> None:
    """An upload that replaces an image and an example click after it each start every event of a new image
    exactly once; a refused file then shows its sentence once and leaves the image box empty. (Gradio 6.31
    fires an image's `change` twice when an upload replaces an image: the page listened to it, and analysed
    and drew every picture after the first twice, with two toasts for a refused file.)"""

    def run(d: Driver, watch: Watch) -> None:
        page = d.page
        joins: list[int] = []

        def on_request(request: object) -> None:
            url, body = getattr(request, "url", ""), getattr(request, "post_data", None)
            if "/queue/join" in url and body:
                joins.append(int(json.loads(body)["fn_index"]))

        page.on("request", on_request)
        runs: dict[str, list[int]] = {}
        d.upload(ASSETS / "cat.jpg")
        for what, give in [("upload over an image", lambda: d.upload(ASSETS / "palace.jpg")),
                           ("example over an upload", lambda: d.example(3))]:
            joins.clear()
            give()
            d.idle()
            runs[what] = list(joins)
        for what, events in runs.items():
            assert len(events) >= 5 and len(events) == len(set(events)), (what, events)  # analysis + panels
        joins.clear()
        notes = tmp_path / "notes.png"
        notes.write_text("a shopping list, not a picture\n" * 20)
        page.locator("#image input[type=file]").set_input_files(str(notes))
        toast = page.get_by_test_id("toast-body").first
        toast.wait_for(timeout=60_000)
        page.wait_for_function("() => !document.querySelector('#image img')", timeout=30_000)  # the box emptied
        d.idle()
        assert len(joins) == 2 and joins[0] == runs["upload over an image"][0], joins  # refused; no panels follow
        assert len([line for line in toast.inner_text().splitlines() if line.endswith(".")]) == 1, toast.inner_text()
        assert "Falcon 9" in d.text("example-caption")  # the page keeps the last image analysed (example 3)

    with_page(server.url, run)
