"""The page's handlers without a browser: every panel from one forward pass, re-rendering from the cache, the
fc layers, a new image after any setting, one exact download, errors as sentences."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_viz import export, render
from alexnet_viz.attribution import METHODS
from alexnet_viz.cli import main as cli_main
from alexnet_viz.ui import Handlers, ModelPool, Session, build_demo, upload_path
from alexnet_viz.ui.handlers import examples, option_specs

from .conftest import ASSETS, upload

DEFAULTS = {n: o.default for n, o in option_specs().items()}
SIDE = export.DISPLAY_SIDE


def analyze(h: Handlers, path: str, layer: str = "conv1", session: Session | None = None, *, method: str = "saliency",
            opacity: float = 0.7, cmap: str = "viridis") -> dict[str, Any]:
    return h.analyze({"path": path}, "torchvision", "cpu", layer, False, cmap, opacity, method, 0.6, "auto", session)


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image["value"] if isinstance(image, dict) else image)


def test_analyze_fills_every_panel_from_one_forward_pass(h: Handlers, pool: ModelPool) -> None:
    out = analyze(h, upload("cat.jpg"))
    session = out["session"]
    assert isinstance(session, Session)
    result = session.analysis
    for p in result.top_k:  # untrained: ~0.1% each, shown with the digits that tell them apart
        assert p.label in out["top5"] and render.format_probability(p.probability) in out["top5"]
    assert "0%<" not in out["top5"].replace(" ", "")
    assert "untrained" in out["banner"] and "device `cpu`" in out["status"] and " ms" in out["status"]
    strongest = export.strongest_channel(result.activations["conv1"])
    assert np.array_equal(pixels(out["filters"]), np.asarray(export.filters_picture(pool.default, selected=strongest)))
    assert np.array_equal(pixels(out["grid"]),
                          np.asarray(export.layer_picture(result, "conv1", selected=strongest)[0]))
    assert "64x55x55" in out["layer_info"] and f"showing channel **{strongest}**" in out["layer_info"]
    for name in ("filter_map", "channel_view", "attr_image"):  # the 640 px view, plus a colour bar below
        picture = pixels(out[name])
        assert picture.shape[1] == SIDE and picture.shape[0] > SIDE, name
    assert pixels(out["strongest"]).shape[1] > 400
    assert out["target"]["choices"][0] == ("Top-1 class (default)", "") and len(out["target"]["choices"]) == 1001
    assert "Saliency" in out["attr_info"] and set(session.attributions) == {"saliency"}
    assert session.scene.methods == ("saliency",) and out["compare_image"] is None
    assert out["example_caption"].startswith("**Tabby cat:**")  # a copy of a bundled example, by content


def test_layer_changes_reuse_the_cached_tensors_for_every_layer(h: Handlers, pool: ModelPool,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    session = analyze(h, upload("espresso.jpg"), opacity=0.4, cmap="gray")["session"]

    def no_forward(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran again")

    monkeypatch.setattr(pool.default.module, "forward", no_forward)
    for layer in pool.default.layer_names:
        out = h.show_layer(session, layer, True, "inferno", 0.4)
        act = session.analysis.activations[layer]
        assert out["layer_info"].startswith(f"**{layer}**") and "x".join(map(str, act.shape)) in out["layer_info"]
        assert out["session"].scene.layers == (layer,) and out["session"].scene.cmap == "inferno"
        if act.ndim == 3:
            c = export.strongest_channel(act)
            assert np.array_equal(pixels(out["grid"]), np.asarray(
                render.feature_grid(act, sort=True, cmap="inferno", numbers=True, selected=c)[0]))
            assert out["channel"]["maximum"] == act.shape[0] - 1 and out["channel"]["visible"] is True
            # the channel view follows the colour map and opacity on screen, not the defaults
            assert np.array_equal(pixels(out["channel_view"]), np.asarray(
                export.channel_picture(session.analysis, layer, c, opacity=0.4, cmap="inferno")))
        else:  # fc: the vector, its strongest units named; no channel controls
            assert "vector" in out["layer_info"] and "strongest units" in out["layer_info"]
            top = int(act.argmax())
            assert out["layer_info"].split("strongest units ")[1].startswith(f"{top}")
            assert out["channel"]["visible"] is False and out["channel_view"]["visible"] is False
            assert np.array_equal(pixels(out["grid"]), np.asarray(export.layer_picture(
                session.analysis, layer, cmap="inferno", labels=pool.default.categories)[0]))
    fc8 = h.show_layer(session, "fc8", False, "viridis", 0.4)["layer_info"]
    assert pool.default.categories[int(session.analysis.activations["fc8"].argmax())] in fc8


def test_a_new_image_after_an_fc_layer_fills_every_panel_from_the_new_image(h: Handlers) -> None:
    first = analyze(h, upload("cat.jpg"), "fc7")
    assert first["layer_info"].startswith("**fc7**") and first["channel"]["visible"] is False
    out = analyze(h, upload("espresso.jpg"), "fc7", first["session"])
    new = out["session"].analysis
    assert not torch.equal(new.input, first["session"].analysis.input)
    assert out["layer_info"].startswith("**fc7**") and out["layer"]["value"] == "fc7"
    assert np.array_equal(pixels(out["grid"]), np.asarray(export.layer_picture(
        new, "fc7", labels=h.pool.default.categories)[0]))
    assert new.top1.label in out["status"] and new.top1.label in out["top5"]
    assert np.array_equal(pixels(out["strongest"]), np.asarray(export.strongest_picture(h.pool.default, new)))
    assert out["example_caption"].startswith("**Espresso:**")
    # back to a conv layer: its channels come back
    conv = h.show_layer(out["session"], "conv3", False, "viridis", 0.7)
    assert conv["channel"]["visible"] is True and conv["channel_view"]["visible"] is True


def test_a_new_image_forgets_the_old_channel_filter_and_comparison(h: Handlers) -> None:
    session = analyze(h, upload("cat.jpg"), "conv5")["session"]
    session = h.show_channel(session, 200, 0.7)["session"]
    assert session.scene.channel == 200
    out = analyze(h, upload("palace.jpg"), "conv5", session)
    act = out["session"].analysis.activations["conv5"]
    assert out["session"].scene.channel is None and out["channel"]["value"] == export.strongest_channel(act)
    assert out["example_caption"].startswith("**Summer Palace:**")
    own = Path(upload("own.png", Image.open(ASSETS / "palace.jpg").rotate(90)))
    mine = analyze(h, str(own))
    assert mine["example_caption"] == ""  # not an example: no caption left from before
    assert mine["examples"]["selected_index"] == -1  # and no example ringed in the gallery (none has index -1)
    titles = [e.title for e in examples()]
    assert analyze(h, upload("palace.jpg"))["examples"]["selected_index"] == titles.index("Summer Palace")


def test_clicking_a_tile_names_that_channel_everywhere(h: Handlers) -> None:
    session = analyze(h, upload("cat.jpg"), "conv2")["session"]
    session = h.show_layer(session, "conv2", True, "viridis", 0.7)["session"]
    act = session.analysis.activations["conv2"]
    grid, order = render.feature_grid(act, sort=True)
    _rows, cols = render.grid_layout(len(order))
    side = (grid.width - (cols - 1)) // cols
    click = gr.SelectData(None, {"index": [2 * (side + 1) + side // 2, 1 * (side + 1) + side // 2], "value": None})
    out = h.pick_tile(session, click)
    channel = order[cols + 2]  # row 1, column 2 of the sorted grid
    assert out["channel"]["value"] == channel and out["session"].scene.channel == channel
    assert f"showing channel **{channel}**" in out["layer_info"] and f"channel {channel}:" in out["channel_info"]
    assert np.array_equal(pixels(out["grid"]), np.asarray(
        render.feature_grid(act, sort=True, numbers=True, selected=channel)[0]))  # the clicked tile outlined
    # A click in the gap after a tile (one pixel off it) still picks that tile, not an error.
    gap_click = h.pick_tile(session, gr.SelectData(None, {"index": [2 * (side + 1) + side, side + 1], "value": None}))
    assert gap_click["session"].scene.channel == order[cols + 2]
    # An fc layer's strip: the clicked cell is that unit, ringed, named with its value (fc8: with its class).
    for layer, n in (("fc6", 4096), ("fc8", 1000)):
        fc = h.show_layer(session, layer, False, "viridis", 0.7)["session"]
        vec = fc.analysis.activations[layer]
        labels = h.pool.default.categories if layer == "fc8" else None
        strip = render.vector_panel(vec, labels=labels, bar_label=f"{layer} activation")
        rows, cols = render.grid_layout(n, columns=64 if n == 1000 else 128)
        cell = strip.width // cols
        unit = 3 * cols + 17  # row 3, column 17
        out = h.pick_tile(fc, gr.SelectData(None, {"index": [17 * cell + cell // 2, 3 * cell + cell // 2],
                                                   "value": None}))
        assert out["session"].scene.channel == unit and out["grid"]["label"] == "All units (click one)"
        name = f" ({h.pool.default.categories[unit]})" if layer == "fc8" else ""
        assert f"unit **{unit}{name}: {float(vec[unit]):.3g}**" in out["layer_info"], out["layer_info"]
        assert np.array_equal(pixels(out["grid"]), np.asarray(render.vector_panel(
            vec, labels=labels, selected=unit, bar_label=f"{layer} activation")))
        assert not np.array_equal(pixels(out["grid"]), np.asarray(strip))  # the ring is drawn
        with pytest.raises(gr.Error, match="cell of the strip"):  # below the strip: the colour bar
            h.pick_tile(fc, gr.SelectData(None, {"index": [5, rows * cell + 5], "value": None}))
        with zipfile.ZipFile(h.download(out["session"])["zip"]) as z:  # the zip: the same ringed strip
            assert json.loads(z.read("result.json"))["settings"]["channel"] == unit
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read(f"features_{layer}.png"))).convert("RGB")),
                                  pixels(out["grid"]))
    back = h.show_layer(out["session"], "conv2", False, "viridis", 0.7)
    assert back["grid"]["label"] == "All channels (click one)" and back["session"].scene.channel is None
    out = h.pick_filter(session, "torchvision", "cpu", gr.SelectData(None, {"index": [5, 5], "value": None}))
    assert "Filter **0**" in out["filter_info"] and out["session"].scene.filter == 0
    assert np.array_equal(pixels(out["filters"]), np.asarray(export.filters_picture(h.pool.default, selected=0)))


def test_a_filter_clicked_before_any_image_is_outlined_and_named(h: Handlers) -> None:
    """The filters are on the page before any image: a click there outlines the filter of the architecture
    chosen and says what an image would add, rather than an error that blanked the grid."""
    for arch, expected_n in (("torchvision", 64), ("cifar", 32)):
        loaded = h.model_for(None, arch, "cpu")
        grid = export.filters_picture(loaded)
        _rows, cols = render.grid_layout(expected_n)
        pitch = (grid.width + 2) / cols
        click = [int(3 * pitch + pitch / 2), int(pitch / 2)]  # row 0, column 3
        out = h.pick_filter(None, arch, "cpu", gr.SelectData(None, {"index": click, "value": None}))
        assert set(out) == {"filters", "filter_info"}  # no session made, the filter's map left as it is
        assert out["filter_info"] == f"Filter **3** of {expected_n}: give an image to see where it responds."
        assert np.array_equal(pixels(out["filters"]), np.asarray(export.filters_picture(loaded, selected=3)))


def test_explain_takes_options_by_name_and_restyle_redraws_the_map_on_screen(h: Handlers) -> None:
    session = analyze(h, upload("cat.jpg"))["session"]
    seen: list[float] = []
    out = h.explain(session, "integrated_gradients", "", "conv5", 0.5, "auto", {**DEFAULTS, "n_steps": 6},
                    progress=lambda f, m: seen.append(f))
    session = out["session"]
    attr = session.attributions["integrated_gradients"]
    assert attr.options["n_steps"] == 6 and attr.target == session.analysis.top1.index
    assert "Integrated gradients" in out["attr_info"] and "completeness gap" in out["attr_info"]
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    assert np.array_equal(pixels(out["attr_image"]), np.asarray(
        export.attribution_picture(session.analysis, attr, alpha=0.5)))
    again = h.restyle(session, 0.0, "auto")  # opacity 0: the photo, with the map's colour bar below
    assert np.array_equal(pixels(again["attr_image"])[:SIDE], np.asarray(export.display(session.analysis)))
    assert again["session"].scene.attr_alpha == 0.0 and again["session"].scene.methods == ("integrated_gradients",)
    out = h.explain(session, "gradcam", "281", "conv3", 0.5, "auto", DEFAULTS)
    assert "Grad-CAM** on conv3 for **tabby**" in out["attr_info"]
    assert out["session"].attributions["gradcam"].layer == "conv3"


def test_compare_dedupes_and_uses_the_chosen_layer_and_options(h: Handlers) -> None:
    session = analyze(h, upload("cat.jpg"))["session"]
    out = h.compare(session, ["saliency", "gradcam", "saliency", "integrated_gradients", "gradcam"], "", "conv3",
                    0.6, {**DEFAULTS, "n_steps": 5})
    session = out["session"]
    assert session.scene.compare == ("saliency", "gradcam", "integrated_gradients")
    assert session.attributions["gradcam"].layer == "conv3"
    assert session.attributions["integrated_gradients"].options["n_steps"] == 5
    assert [export.compare_title(session.attributions[m]) for m in session.scene.compare] == [
        "Saliency (gradient)", "Grad-CAM on conv3", "Integrated gradients"]  # the tiles say which layer
    base = session.analysis.view.resize((export.COMPARE_TILE,) * 2)
    tiles = [render.label(render.attribution_overlay(base, 0 * a.heatmap, alpha=0.6, signed=True, vmax=1.0),
                          METHODS[m].title, size=22)
             for m, a in session.attributions.items() if m in session.scene.compare]
    assert pixels(out["compare_image"]).shape[1] == render.tile_rows(tiles, export.COMPARE_PER_ROW).width
    with pytest.raises(gr.Error, match="at least one method"):
        h.compare(session, [], "", "conv5", 0.6)


def test_download_is_exactly_what_is_on_screen(h: Handlers) -> None:
    out = analyze(h, upload("cat.jpg"), "conv4")
    session = h.show_channel(out["session"], 17, 0.35)["session"]
    shown = h.explain(session, "gradcam", "tabby", "conv3", 0.8, "jet", DEFAULTS)
    session = h.compare(shown["session"], ["saliency", "deeplift"], "", "conv5", 0.8)["session"]
    path = h.download(session)["zip"]
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        meta = json.loads(z.read("result.json"), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
        on_screen = np.asarray(Image.open(io.BytesIO(z.read("attribution_gradcam.png"))))
    assert names == {"input.png", "top_k.png", "filters_conv1.png", "filter_map.png", "strongest_channels.png",
                     "features_conv4.png", "channel_conv4.png", "attribution_gradcam.png", "compare.png",
                     "result.json"}
    assert np.array_equal(on_screen, pixels(shown["attr_image"]))  # the map just computed, as drawn on screen
    settings = meta["settings"]
    assert settings["layers"] == ["conv4"] and settings["channels"] == {"conv4": 17} and settings["opacity"] == 0.35
    assert settings["methods"] == ["gradcam"] and settings["attr_cmap"] == "jet" and settings["attr_alpha"] == 0.8
    assert settings["compare"] == ["saliency", "deeplift"]
    assert meta["attributions"]["gradcam"] == {**meta["attributions"]["gradcam"], "layer": "conv3", "label": "tabby"}
    assert meta["files"] == sorted(names) and meta["model"]["weights"]["trained"] is False
    # the zip's pictures redraw from its JSON alone
    again = export.Scene(layers=tuple(settings["layers"]), channel=settings["channels"]["conv4"],
                         opacity=settings["opacity"], methods=tuple(settings["methods"]),
                         attr_alpha=settings["attr_alpha"], attr_cmap=settings["attr_cmap"])
    redrawn = export.pictures(h.pool.default, session.analysis, session.attributions, again)
    assert np.array_equal(np.asarray(redrawn["channel_conv4.png"]),
                          np.asarray(Image.open(io.BytesIO(zipfile.ZipFile(path).read("channel_conv4.png")))))


def _keys(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {f"{prefix}{k}" for k in value} | {x for k, v in value.items() for x in _keys(v, f"{prefix}{k}.")}
    return set()


def test_cli_and_page_write_the_same_files_and_keys(h: Handlers, tmp_path: Path) -> None:
    cat = upload("cat.jpg")
    session = analyze(h, cat, "conv5")["session"]
    session = h.show_channel(session, 3, 0.7)["session"]
    session = h.explain(session, "saliency", "", "conv5", 0.6, "auto", DEFAULTS)["session"]
    session = h.compare(session, ["saliency", "gradcam"], "", "conv5", 0.6)["session"]
    with zipfile.ZipFile(h.download(session)["zip"]) as z:
        page_names, page_meta = set(z.namelist()), json.loads(z.read("result.json"))
    assert cli_main(["analyze", cat, "--out", str(tmp_path), "--weights", "none", "--arch", "torchvision",
                     "--layer", "conv5", "--channel", "3", "--method", "saliency", "--compare", "saliency",
                     "--compare", "gradcam"]) == 0
    folder = tmp_path / "cat"
    cli_meta = json.loads((folder / "result.json").read_text())
    assert {p.name for p in folder.iterdir()} == page_names
    assert _keys(cli_meta) == _keys(page_meta)
    assert cli_meta["settings"]["channels"] == page_meta["settings"]["channels"] == {"conv5": 3}
    assert cli_meta["top_k"] == page_meta["top_k"]


class Boom(RuntimeError):
    pass


def test_errors_are_sentences_and_bugs_are_not_blamed_on_the_visitor(h: Handlers, pool: ModelPool,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    notes = Path(upload("cat.jpg")).with_name("notes.png")
    notes.write_text("hello")
    with pytest.raises(gr.Error, match="not an image alexnet-viz can read"):
        analyze(h, str(notes))
    for bad in ({"path": "/etc/passwd"}, {"path": str(Path(__file__))}):
        with pytest.raises(gr.Error, match="not an upload this app can read"):
            upload_path(bad)
    # controls moved before any image redraw nothing and say nothing (the next image uses them); a button does
    assert h.show_layer(None, "conv1", False, "viridis", 0.7) == {} and h.show_channel(None, 3, 0.5) == {}
    with pytest.raises(gr.Error, match="Give an image first"):
        h.explain(None, "saliency", "", "conv5", 0.6, "auto", DEFAULTS)
    with pytest.raises(gr.Error, match="not available on this server"):
        h.switch_model("torchvision", "cuda:7", None)
    session = analyze(h, upload("cat.jpg"))["session"]
    with pytest.raises(gr.Error, match="Unknown layer 'conv9'"):
        h.show_layer(session, "conv9", False, "viridis", 0.7)
    for value in (float("nan"), float("inf"), -0.1, 1.5, "x"):
        with pytest.raises(gr.Error, match="opacity must be"):
            h.show_channel(session, 3, value)  # type: ignore[arg-type]
    with pytest.raises(gr.Error, match="channel must be between 0 and 63"):
        h.show_channel(session, float("nan"), 0.5)
    with pytest.raises(gr.Error, match="steps must be between"):
        h.explain(session, "integrated_gradients", "", "conv5", 0.5, "auto", {**DEFAULTS, "n_steps": float("nan")})
    with pytest.raises(gr.Error, match="Unknown method"):
        h.explain_api({"path": upload("cat.jpg")}, "lime", "")
    long = "x" * 200_000
    with pytest.raises(gr.Error) as caught:
        h.explain(session, "saliency", long, "conv5", 0.5, "auto", DEFAULTS)
    assert len(str(caught.value)) < 200  # the visitor's text is not echoed back whole
    # A bug of ours (here: drawing fails) is logged with its traceback and shown as a generic sentence.
    monkeypatch.setattr(export.render, "feature_grid", lambda *a, **k: (_ for _ in ()).throw(Boom("bug")))
    with caplog.at_level(logging.ERROR, logger="alexnet_viz"), pytest.raises(gr.Error) as caught:
        h.show_layer(session, "conv2", False, "viridis", 0.7)
    assert "Something went wrong while drawing the layer" in str(caught.value) and "bug" not in str(caught.value)
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records)
    monkeypatch.undo()
    assert analyze(h, upload("cat.jpg"))["top5"]  # and the handlers keep working


def test_api_handlers_and_per_visitor_sessions(h: Handlers, pool: ModelPool) -> None:
    cat, coffee = upload("cat.jpg"), upload("espresso.jpg")
    a, b = analyze(h, cat)["session"], analyze(h, coffee)["session"]
    assert not torch.equal(a.analysis.input, b.analysis.input)
    assert h.predict_api({"path": cat}) == {p.label: p.probability for p in a.analysis.top_k}
    overlay = h.explain_api({"path": coffee}, "gradcam", "tabby")
    assert isinstance(overlay, Image.Image) and overlay.size == (224, 224)


def test_architecture_tab_and_switching(h: Handlers) -> None:
    out = h.architecture("paper")
    assert out["arch_table"][0][:2] == ["conv1", "Conv2d"] and out["arch_table"][0][4] == "34,944"
    assert "62,378,344 parameters" in out["arch_text"] and out["arch_chart"].width > 300
    out = h.switch_model("paper", "cpu", None)
    assert "untrained" in out["banner"] and out["target"]["value"] == ""
    assert "96 11x11 colour filters" in out["filters_caption"]
    assert "3x3" in h.switch_model("cifar", "cpu", None)["filters_caption"]


def test_a_start_without_weights_keeps_every_architecture_untrained(monkeypatch: pytest.MonkeyPatch) -> None:
    # `--arch cifar --weights none`, then torchvision chosen on the page: untrained as asked, no download tried.
    import alexnet_viz.model as model_module

    asked: list[bool] = []

    def imagenet(*, download: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
        asked.append(download)
        raise model_module.WeightsError("offline")

    monkeypatch.setattr(model_module, "imagenet_state_dict", imagenet)
    loaded = ModelPool("cifar", "none", "cpu").get("torchvision", "cpu")
    assert asked == [] and not loaded.weights.trained and "as asked (--weights none)" in str(loaded.weights.warning)
    # The default start (ImageNet weights) still asks for torchvision's ImageNet weights on a switch.
    ModelPool("cifar", "imagenet", "cpu").get("torchvision", "cpu")
    assert asked == [True]


def test_switching_the_architecture_never_leaves_the_old_untrained_copy_on_screen(h: Handlers,
                                                                                   pool: ModelPool) -> None:
    """Seen in Chromium: the untrained copy's box, opened on torchvision (64 11x11 filters), still showed them
    after a switch to cifar (32 3x3 filters). A switch closes the box and forgets its picture; opening it again
    draws the new architecture's."""
    assert h.untrained_filters(None)["untrained"].size == export.filters_picture(pool.default).size  # box opened
    out = h.switch_model("cifar", "cpu", None)
    assert out["untrained_box"]["open"] is False and out["untrained"] is None
    assert out["untrained_note"].startswith("The same architecture")
    demo = build_demo(pool)
    [switch] = [d for d in demo.fns.values() if d.name == "switch_model"]
    assert any(isinstance(o, gr.Accordion) and o.label.startswith("Compare with an untrained copy")
               for o in switch.outputs)


def test_the_top5_shows_the_digits_that_tell_an_untrained_models_guesses_apart() -> None:
    """The untrained cifar model's top-5 for the astronaut: five times "0.101%" at 3 digits."""
    from types import SimpleNamespace

    from alexnet_viz.ui.handlers import target_choices, top5_html

    ps = [0.00101338, 0.00101273, 0.00101235, 0.0010122, 0.00101211]
    analysis = SimpleNamespace(top_k=[SimpleNamespace(label=f"c{i}", index=i, probability=p) for i, p in enumerate(ps)])
    shown = re.findall(r"class='top5-p'>([^<]+)<", top5_html(analysis))  # type: ignore[arg-type]
    assert shown == ["0.10134%", "0.10127%", "0.10123%", "0.10122%", "0.10121%"]
    loaded = SimpleNamespace(categories=[f"c{i}" for i in range(10)])
    assert target_choices(loaded, analysis)[1][0] == "#1 c0 (0.10134%)"  # type: ignore[arg-type]


def test_build_demo_names_the_api_endpoints(pool: ModelPool) -> None:
    demo = build_demo(pool)
    names = {dep.api_name for dep in demo.fns.values() if dep.api_visibility == "public"}
    assert {"predict", "explain", "analyze", "show_layer", "show_channel"} <= names
    slow = {dep.api_name: dep.concurrency_id for dep in demo.fns.values() if dep.concurrency_limit == 1}
    assert slow.get("explain") == "slow-attributions"  # slow work never holds the fast events' slots


def test_the_untrained_copy_is_described_honestly(h: Handlers, pool: ModelPool, tmp_path: Path) -> None:
    from alexnet_viz.architectures import build_model

    fresh = export.conv1_grid(build_model("torchvision", seed=0).conv1.weight)
    out = h.untrained_filters(None)
    assert np.array_equal(np.asarray(out["untrained"]), np.asarray(fresh))
    assert "untrained too" in out["untrained_note"]  # these weights are untrained: no claim about training
    other = build_model("torchvision", seed=5).state_dict()
    torch.save(other, tmp_path / "other.pt")
    trained = Handlers(ModelPool("torchvision", str(tmp_path / "other.pt"), "cpu"))
    assert not np.array_equal(np.asarray(export.filters_picture(trained.pool.default)),
                              np.asarray(export.filters_picture(pool.default)))
    assert np.array_equal(np.asarray(trained.untrained_filters(None)["untrained"]), np.asarray(fresh))


def test_examples_carry_their_captions(h: Handlers) -> None:
    from alexnet_viz.ui.handlers import examples

    listed = examples()
    assert len(listed) == len(json.loads((ASSETS / "examples.json").read_text()))
    out = h.pick_example(gr.SelectData(None, {"index": 3, "value": None}))
    assert out["image"] == listed[3].path and listed[3].caption in out["example_caption"]
    with pytest.raises(gr.Error, match="example pictures"):
        h.pick_example(gr.SelectData(None, {"index": 99, "value": None}))


def test_pictures_are_written_once_per_content_atomically_at_png_level_1(pool: ModelPool) -> None:
    from alexnet_viz.ui import PNG_LEVEL, as_png_files

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    picture, text, unnamed = gr.Image(label="conv1 filters"), gr.Markdown(), gr.Image(label="!!")
    event = as_png_files(lambda im: {picture: im, text: "text", unnamed: gr.update(value=im, visible=True)})
    out = event(image)
    assert out[text] == "text"  # only pictures for picture outputs are touched
    path = Path(out[picture])
    assert path.name == "conv1-filters.png" and path.is_relative_to(Path(gr.utils.get_upload_folder()))
    assert out[unnamed]["value"].endswith("/picture.png") and out[unnamed]["visible"] is True
    expected = io.BytesIO()
    image.save(expected, format="PNG", compress_level=PNG_LEVEL)
    assert PNG_LEVEL == 1 and path.read_bytes() == expected.getvalue()
    inode = path.stat().st_ino
    # a room of visitors getting the same picture at once: the file is never rewritten under a reader
    seen: list[int] = []
    errors: list[BaseException] = []

    def visitor() -> None:
        try:
            for _ in range(20):
                assert event(image.copy())[picture] == str(path)
                seen.append(len(path.read_bytes()))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=visitor) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(seen) == {len(expected.getvalue())}
    assert path.stat().st_ino == inode  # the same file, not rewritten
    # no partial file left behind (the same content under the unnamed output's name shares the folder)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, "picture.png"])
    assert event(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))[picture] != str(path)
    # and the page's events are wrapped so: analyze's pictures arrive as such files
    demo = build_demo(pool)
    [analyze_event] = [e for e in demo.fns.values() if e.api_name == "analyze"]
    [panels_event] = [e for e in demo.fns.values() if e.api_name == "panels"]
    first = analyze_event.fn({"path": upload("cat.jpg")}, "torchvision", "cpu", "conv1", False, "viridis", 0.7,
                             "saliency", 0.6, "auto", None)
    session = next(v for v in first.values() if isinstance(v, Session))
    out = panels_event.fn(session, "saliency")
    files = [v.get("value") if isinstance(v, dict) else v for v in out.values()]  # a value, or a gr.update's
    files = [v for v in files if isinstance(v, str) and v.endswith(".png")]
    assert len(files) >= 5 and all(Path(v).is_file() for v in files)
    assert not any(isinstance(v, Image.Image) for v in out.values())


def test_a_method_registered_once_reaches_the_page(pool: ModelPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a method is one entry in METHODS: its name, title and sliders reach the page's dropdown, the
    Compare list and the event that runs it, with no other edit."""
    from tests.test_registry import TOY

    monkeypatch.setitem(METHODS, TOY.name, TOY)
    demo = build_demo(pool)
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "method")
    group = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "compare-methods")
    assert (TOY.title, TOY.name) in [tuple(c) for c in dropdown.choices]
    assert (TOY.title, TOY.name) in [tuple(c) for c in group.choices]
    for o in TOY.options:
        assert any(getattr(b, "elem_id", None) == f"opt-{o.name}" for b in demo.blocks.values())
    h = Handlers(pool)
    session = analyze(h, upload("cat.jpg"))["session"]
    out = h.explain(session, TOY.name, "", "conv5", 0.6, "auto", {o.name: o.default for o in TOY.options})
    assert TOY.title in out["attr_info"] and out["session"].scene.methods == (TOY.name,)


def test_events_with_nothing_to_update_skip_every_output(pool: ModelPool) -> None:
    """A cleared image (or a model switch before any image) updates nothing: Gradio gets a skip per output,
    not ``{}``, which it would read as one value for many outputs and show as "Error"."""
    demo = build_demo(pool)
    [analyze_event] = [e for e in demo.fns.values() if e.api_name == "analyze"]
    out = analyze_event.fn(None, "torchvision", "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6, "auto", None)
    assert isinstance(out, tuple) and len(out) == len(analyze_event.outputs)
    assert all(o == gr.skip() for o in out)


def test_no_trigger_with_an_always_last_listener_has_a_second_listener(pool: ModelPool) -> None:
    """Gradio's page (6.x) repeats an ``always_last`` event that was triggered while it ran by dispatching its
    whole trigger again: with two such listeners on one trigger each repeat restarts the other, and their
    panels can spin forever (seen in Chromium when four followed the status line). So a trigger with an
    ``always_last`` listener has no other; the panels that follow each analysis hang off it with ``.success``,
    and every one of them runs after both ways an analysis starts (a new image, a model switch)."""
    from collections import defaultdict

    config = build_demo(pool).get_config_file()
    listeners: dict[tuple[int, str], list[str]] = defaultdict(list)
    modes: dict[tuple[int, str], set[str]] = defaultdict(set)
    for dep in config["dependencies"]:
        for target, event in dep["targets"]:
            if target is not None:  # .then / .success steps are dispatched one by one
                listeners[(target, event)].append(dep["api_name"])
                modes[(target, event)].add(dep["trigger_mode"])
    shared = {k: v for k, v in listeners.items() if len(v) > 1 and "always_last" in modes[k]}
    assert not shared, shared
    by_id = {dep["id"]: dep for dep in config["dependencies"]}
    analyses = [d for d in config["dependencies"] if d["api_name"] in {"analyze", "first_look"}]
    assert len(analyses) == 2
    for analysis in analyses:
        followers = {re.sub(r"_\d+$", "", by_id[d["id"]]["api_name"]) for d in config["dependencies"]
                     if d.get("trigger_after") == analysis["id"] and d.get("trigger_only_on_success")}
        assert {"refresh_neighbours", "refresh_inside", "trust_new_image", "occ_new_image", "panels"} <= followers
