"""The Units and Inside AlexNet tabs: handlers without a browser (oracles: featvis.visualize run on its own, the
analysis's own conv1 tensor, gallery.neighbours on the file), and one walk in Debian's Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest

from alexnet_viz import featvis, gallery
from alexnet_viz.featvis import DiskCache, Settings
from alexnet_viz.ui import Handlers, ModelPool
from alexnet_viz.ui.state import Session
from alexnet_viz.ui.units_tab import VIEW_SCALE, UnitsHandlers, _big
from alexnet_viz.walkthrough import conv1_position

from .conftest import ASSETS, upload

TINY = Settings(side=32)  # 32 px pictures: the recipe, at a tenth of the cost


def analyse(h: Handlers, name: str, arch: str = "torchvision") -> Session:
    return h.analyze({"path": upload(name)}, arch, "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6, "auto",
                     None)["session"]


@pytest.fixture(scope="module")
def units(h: Handlers, tmp_path_factory: pytest.TempPathFactory) -> UnitsHandlers:
    tmp = tmp_path_factory.mktemp("units")
    return UnitsHandlers(h, settings=TINY, cache=DiskCache(tmp / "featvis"), index_dir=tmp / "gallery")


@pytest.fixture(scope="module")
def cat(h: Handlers) -> Session:
    return analyse(h, "cat.jpg")


def png_equal(a: Any, b: Any) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_visualise_streams_live_frames_then_the_untrained_copy_then_serves_the_cache(
        units: UnitsHandlers, pool: ModelPool, cat: Session) -> None:
    seen: list[float] = []
    live = list(units.visualise(cat, "torchvision", "cpu", "channel", "conv2", 7, None, 16,
                                progress=lambda f, m: seen.append(f)))
    assert live[0] == {"units_trained": None, "units_untrained": None, "units_info": live[0]["units_info"]}
    trained = [o["units_trained"] for o in live if o.get("units_trained") is not None]
    untrained = [o["units_untrained"] for o in live if o.get("units_untrained") is not None]
    assert len(trained) == len(untrained) == 2  # a live frame at step 8, then the result at 16
    assert all(o["units_info"].count("step") for o in live[1:-1] if "units_info" in o)
    assert seen == sorted(seen) and seen[-1] == 1.0 and seen[len(seen) // 2 - 1] == pytest.approx(0.5)
    # Oracle: the same recipe run by the library alone, without cache or lock.
    loaded = pool.get("torchvision", "cpu")
    settings = Settings(side=32, steps=16)
    alone = featvis.visualize(loaded, "conv2", 7, settings=settings, lock=None)
    twin = featvis.visualize(featvis.untrained_twin(loaded), "conv2", 7, settings=settings, lock=None)
    assert png_equal(trained[-1], _big(alone.image)) and png_equal(untrained[-1], _big(twin.image))
    assert f"**{alone.value:.3g}**" in live[-1]["units_info"] and f"**{twin.value:.3g}**" in live[-1]["units_info"]
    # Again: from the cache, no live frame, the same pictures.
    again = list(units.visualise(cat, "torchvision", "cpu", "channel", "conv2", 7, None, 16))
    assert len(again) == 4 and "from the cache" in again[-1]["units_info"]
    assert png_equal(again[1]["units_trained"], trained[-1]) and png_equal(again[2]["units_untrained"], untrained[-1])


def test_visualise_needs_no_image_checks_every_value_and_stops_at_the_time_limit(
        units: UnitsHandlers, pool: ModelPool, tmp_path: Path) -> None:
    out = list(units.visualise(None, "torchvision", "cpu", "channel", "conv1", 2, None, 16))  # no image needed
    assert "**conv1** channel **2**" in out[-1]["units_info"]
    for args, words in [(("channel", "conv2", 192, None, 16), "unit must be between 0 and 191"),
                        (("channel", "relu1", 0, None, 16), "Unknown layer"),
                        (("neuron", "fc6", 0, None, 16), "no centre"),
                        (("channel", "conv1", 0, None, 4096), "steps must be between 16 and 256"),
                        (("class", "", 0, "nan", 16), "class must be")]:
        with pytest.raises((gr.Error, featvis.FeatVisError), match=words):
            list(units.visualise(None, "torchvision", "cpu", *args))
    hurried = UnitsHandlers(Handlers(pool, time_limit_s=0.0), settings=TINY, cache=DiskCache(tmp_path))
    with pytest.raises(featvis.FeatVisError, match="longer than 0 s"):
        list(hurried.visualise(None, "torchvision", "cpu", "channel", "conv1", 3, None, 16))


def test_controls_follow_the_objective_and_put_the_visitors_classes_first(units: UnitsHandlers,
                                                                         cat: Session) -> None:
    out = units.controls(cat, "torchvision", "cpu", "class", "conv5", 300, None)
    assert out["units_class"]["visible"] and not out["units_layer"]["visible"]
    assert [c[1] for c in out["units_class"]["choices"][:5]] == [str(p.index) for p in cat.analysis.top_k]
    neuron = units.controls(cat, "torchvision", "cpu", "neuron", "fc7", 300, "3")
    assert neuron["units_layer"]["choices"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert neuron["units_layer"]["value"] == "conv1" and neuron["units_unit"]["value"] == 63  # clipped to conv1


def test_dataset_examples_are_the_index_crops_at_the_exact_receptive_field(units: UnitsHandlers, pool: ModelPool,
                                                                          cat: Session) -> None:
    loaded = pool.get("torchvision", "cpu")
    out = units.examples(cat, "torchvision", "cpu", "channel", "conv3", 11)
    index, source = units.index(loaded)
    hits = index.top("conv3", 11)
    rf = gallery.receptive_field(loaded.module, "conv3")
    assert rf.size == 99 and f"{rf.size}x{rf.size} px" in out["units_examples_info"]
    assert f"its {len(hits)} strongest" in out["units_examples_info"] and "assets/" in source
    assert out["units_examples"].width >= 600
    fc = units.examples(cat, "torchvision", "cpu", "channel", "fc7", 11)
    assert fc["units_examples"] is None and "whole image" in fc["units_examples_info"]
    assert units.index(loaded)[0] is index  # built once per weights


def test_neighbours_are_the_gallerys_for_this_image_and_follow_a_new_one(units: UnitsHandlers, pool: ModelPool,
                                                                        h: Handlers, cat: Session) -> None:
    loaded = pool.get("torchvision", "cpu")
    out = units.neighbours(cat)
    index, _ = units.index(loaded)
    oracle = gallery.neighbours(index, loaded, ASSETS / "cat.jpg", k=6, lock=None)  # from the file, not the session
    assert oracle.fc7[0].path.name == "cat.jpg" and oracle.fc7[0].distance < 1e-3  # cat.jpg is in the gallery
    assert out["units_neighbours"].width >= 600 and out["units_stamp"]
    assert units.refresh_neighbours(cat, None) == {}  # tab never opened: an upload costs nothing here
    assert units.refresh_neighbours(cat, out["units_stamp"]) == {}  # already on screen
    assert units.open_units(None, None) == {"units_stamp": ""}  # opened before any image
    rocket = analyse(h, "rocket.jpg")
    fresh = units.refresh_neighbours(rocket, out["units_stamp"])
    assert fresh["units_stamp"] != out["units_stamp"] and fresh["units_neighbours"] is not None
    with pytest.raises(gr.Error, match="Give an image first"):
        units.neighbours(None)


def numbers(markdown: str, row: str) -> float:
    line = next(li for li in markdown.splitlines() if li.startswith(f"| {row}"))
    return float(line.split("|")[-2].strip().strip("*"))


def test_inside_shows_dot_product_plus_bias_equal_to_the_feature_value_where_clicked(units: UnitsHandlers,
                                                                                    pool: ModelPool,
                                                                                    cat: Session) -> None:
    loaded = pool.get("torchvision", "cpu")
    evt = gr.SelectData(None, {"index": [60 * VIEW_SCALE, 150 * VIEW_SCALE], "value": None})  # x=60, y=150
    out = units.inside_click(cat, 9, evt)
    y, x = conv1_position(loaded, 150, 60)
    assert out["inside_position"] == [y, x] and f"(row {y}, column {x})" in out["inside_conv"]
    md = out["inside_conv"]
    dot, bias = numbers(md, "dot product"), numbers(md, "+ bias")
    oracle = float(cat.analysis.activations["conv1"][9, y, x])  # the analysis's own forward pass
    assert numbers(md, "**= by hand") == pytest.approx(dot + bias, abs=2e-6)
    assert numbers(md, "**= by hand") == pytest.approx(oracle, abs=1e-4)
    assert numbers(md, "the network") == pytest.approx(oracle, abs=1e-4)
    assert out["inside_view"].size == (224 * VIEW_SCALE, 224 * VIEW_SCALE)
    assert "55.25" in out["inside_sizes"] and "227" in out["inside_sizes"] and "61,100,840" in out["inside_sizes"]
    assert "No LRN" in out["inside_block"] and "dropout, p = 0.5" in out["inside_block"]
    # Opened on a new image: its strongest filter at that filter's strongest position.
    first = units.open_inside(cat, None)
    act = cat.analysis.activations["conv1"]
    c = int(act.mean(dim=(1, 2)).argmax())
    assert first["inside_channel"]["value"] == c
    assert first["inside_position"] == list(divmod(int(act[c].argmax()), act.shape[2]))
    assert units.refresh_inside(cat, first["inside_stamp"]) == {}


def test_inside_shows_lrn_with_the_papers_constants_and_the_two_towers(h: Handlers, units: UnitsHandlers) -> None:
    paper = units.inside(analyse(h, "cat.jpg", "paper"), 5, None)
    assert re.search(r"k = 2, n = 5, alpha = 0\.0001, beta = 0\.75", paper["inside_block"]), paper["inside_block"]
    assert "(227 - 11) / 4 + 1 = 55" in paper["inside_sizes"] and not paper["inside_towers"]["visible"]
    towers = units.inside(analyse(h, "cat.jpg", "paper-2gpu"), 5, None)
    assert towers["inside_towers"]["visible"] and "across both towers" in towers["inside_sizes"]


@pytest.mark.browser
@pytest.mark.slow
def test_units_and_inside_tabs_in_chromium(tmp_path: Path, browser_ready: None) -> None:
    from alexnet_viz.browser import Driver, Watch, with_page
    from alexnet_viz.launcher import launched_app


    def walk(d: Driver, watch: Watch) -> None:
        d.tab("Units")  # before any image: feature visualisation needs none
        d.choose("units-layer", "conv2")
        d.wait_text("units-examples-info", r"conv2\*?\*? channel")
        d.check("a new layer")
        d.set_slider("units-steps", 16)
        d.idle()
        d.page.locator("#units-run").click()
        d.wait_text("units-info", r"drives it to", timeout=180_000)
        d.check("visualise before an image")
        d.upload(ASSETS / "cat.jpg")
        d.wait_text("units-neighbours-info", r"Distances")
        d.check("upload on the Units tab")
        d.tab("Inside AlexNet")
        conv = d.wait_text("inside-conv", r"by hand")
        d.click_picture("inside-view", 0.2, 0.7)
        conv = d.wait_text("inside-conv", r"by hand", changed_from=conv)
        d.check("a click on the view")
        d.set_slider("inside-channel", 5)
        conv = d.wait_text("inside-conv", r"filter 5\b", changed_from=conv)
        d.check("another filter")
        d.example(3)  # a new image while on the Inside tab: its numbers, not the cat's
        d.wait_text("inside-conv", r"by hand", changed_from=conv)
        d.tab("Units")
        d.choose("units-objective", "Class")
        d.idle()
        d.page.locator("#units-run").click()
        d.wait_text("units-info", r"class .* drives it to", timeout=180_000)
        d.check("a class after an image")
        assert watch.console_errors == [], watch.console_errors
        assert watch.hosts() <= {"127.0.0.1"}, watch.hosts()

    with launched_app(tmp_path, env={"ALEXNET_VIZ_CACHE": str(tmp_path / "cache")}) as app:
        with_page(app.url, walk)
