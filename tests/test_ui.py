"""The page's handlers without a browser: outputs, re-rendering from the cache, errors as sentences."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_viz import render
from alexnet_viz.attribution import METHODS
from alexnet_viz.ui import DISPLAY_SIDE, Handlers, ModelPool, Session, _display, _upload_path, build_demo

from .conftest import upload


def analyze(h: Handlers, path: str, layer: str = "conv1") -> tuple:
    return h.analyze({"path": path}, "torchvision", "cpu", layer, False, "viridis", None)


def test_analyze_fills_every_panel_from_one_forward_pass(h: Handlers, pool: ModelPool) -> None:
    out = analyze(h, upload("cat.jpg"))
    (session, label, banner, status, filters, filter_map, _filter_info, grid, layer_info, channel_view,
     _channel, strongest, _layer, target, attr_image, attr_info) = out
    assert isinstance(session, Session)
    result = session.analysis
    assert label == {p.label: p.probability for p in result.top_k} and len(label) == 5
    assert "untrained weights: predictions are meaningless" in banner and "weights fetch" in banner
    assert "device `cpu`" in status and " ms" in status
    assert filters.size == render.filter_grid(pool.default.module.conv1.weight).size
    assert grid.size == render.feature_grid(result.activations["conv1"])[0].size
    assert "64x55x55" in layer_info and "zero" in layer_info
    for image in (filter_map, channel_view, attr_image):
        assert isinstance(image, Image.Image) and image.size == (DISPLAY_SIDE, DISPLAY_SIDE)
    assert strongest.width > 400
    assert target["choices"][0] == ("Top-1 class (default)", "") and len(target["choices"]) == 1001
    assert "Saliency" in attr_info and "saliency" in session.attributions


def test_layer_and_channel_changes_reuse_the_cached_tensors(h: Handlers, pool: ModelPool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    session = analyze(h, upload("espresso.jpg"))[0]

    def no_forward(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran again")

    monkeypatch.setattr(pool.default.module, "forward", no_forward)
    for layer in pool.default.layer_names:
        grid, info, view, slider = h.show_layer(session, layer, True, "inferno")
        act = session.analysis.activations[layer]
        assert layer in info and "x".join(map(str, act.shape)) in info
        if act.ndim == 3:
            assert grid.size == render.feature_grid(act, sort=True)[0].size
            assert view.size == (DISPLAY_SIDE, DISPLAY_SIDE) and slider["maximum"] == act.shape[0] - 1
    image, info = h.show_channel(session, "conv5", 7, 0.0, "gray")
    assert np.array_equal(np.asarray(image), np.asarray(_display(session.analysis)))  # opacity 0: the image alone
    assert "channel 7" in info


def test_clicking_a_tile_picks_that_channel(h: Handlers) -> None:
    session = analyze(h, upload("cat.jpg"))[0]
    act = session.analysis.activations["conv2"]
    grid, order = render.feature_grid(act, sort=True)
    _rows, cols = render.grid_layout(len(order))
    side = (grid.width - (cols - 1)) // cols
    click = gr.SelectData(None, {"index": [2 * (side + 1) + side // 2, 1 * (side + 1) + side // 2], "value": None})
    assert h.pick_tile(session, "conv2", True, click) == order[cols + 2]  # row 1, column 2 of the sorted grid
    gap = gr.SelectData(None, {"index": [side, 3], "value": None})
    with pytest.raises(gr.Error, match="not between them"):
        h.pick_tile(session, "conv2", True, gap)
    image, info = h.pick_filter(session, gr.SelectData(None, {"index": [5, 5], "value": None}))
    assert "Filter **0**" in info and image.size == (DISPLAY_SIDE, DISPLAY_SIDE)


def test_explain_with_progress_and_restyle_without_recomputing(h: Handlers) -> None:
    session = analyze(h, upload("cat.jpg"))[0]
    seen: list[float] = []

    def progress(fraction: float, desc: str | None = None) -> None:
        seen.append(fraction)

    values = [spec.default for spec in {o.name: o for s in METHODS.values() for o in s.options}.values()]
    names = [o.name for s in METHODS.values() for o in s.options]
    values = [6 if n == "n_steps" else v for n, v in zip(dict.fromkeys(names), values, strict=True)]
    image, caption, session = h.explain(session, "integrated_gradients", "", "conv5", 0.5, "auto", *values,
                                        progress=progress)
    attr = session.attributions["integrated_gradients"]
    assert attr.options["n_steps"] == 6 and attr.target == session.analysis.top1.index
    assert image.size == (DISPLAY_SIDE, DISPLAY_SIDE)
    assert "Integrated gradients" in caption and "completeness gap" in caption
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    again = h.restyle(session, "integrated_gradients", 1.0, "auto")
    expected = render.heatmap_image(attr.heatmap, signed=True, size=(DISPLAY_SIDE, DISPLAY_SIDE))
    assert np.array_equal(np.asarray(again), np.asarray(expected))  # opacity 1: the heat colours alone
    _img, caption, session = h.explain(session, "gradcam", "281", "conv3", 0.5, "auto", *values,
                                       progress=progress)
    assert "Grad-CAM** on conv3 for **tabby**" in caption


def test_compare_puts_methods_side_by_side(h: Handlers) -> None:
    session = analyze(h, upload("cat.jpg"))[0]
    image, session = h.compare(session, ["saliency", "gradcam", "deeplift"], "", 0.6, progress=lambda *a, **k: None)
    assert {"saliency", "gradcam", "deeplift"} <= set(session.attributions)
    assert image.width > 3 * 224 and image.height > 224
    with pytest.raises(gr.Error, match="at least one method"):
        h.compare(session, [], "", 0.6, progress=lambda *a, **k: None)


def test_download_zip_holds_the_pngs_and_json(h: Handlers, tmp_path: Path) -> None:
    session = analyze(h, upload("cat.jpg"))[0]
    path = h.download(session)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        meta = json.loads(z.read("result.json"))
    assert {"input.png", "top_k.png", "filters_conv1.png", "features_conv5.png", "attribution_saliency.png"} <= names
    assert meta["top_k"][0]["label"] == session.analysis.top1.label and meta["weights"]["trained"] is False


def test_errors_are_sentences(h: Handlers, pool: ModelPool) -> None:
    with pytest.raises(gr.Error, match="not an image alexnet-viz can read"):
        notes = Path(upload("cat.jpg")).with_name("notes.png")
        notes.write_text("hello")
        analyze(h, str(notes))
    with pytest.raises(gr.Error, match="not an upload this app can read"):
        _upload_path({"path": "/etc/passwd"})
    with pytest.raises(gr.Error, match="not an upload this app can read"):
        _upload_path({"path": str(Path(__file__))})
    with pytest.raises(gr.Error, match="Give an image first"):
        h.show_layer(None, "conv1", False, "viridis")
    with pytest.raises(gr.Error, match="not available on this server"):
        h.switch_model("torchvision", "cuda:7", None)
    session = analyze(h, upload("cat.jpg"))[0]
    with pytest.raises(gr.Error, match="no layer called 'conv9'"):
        h.show_layer(session, "conv9", False, "viridis")
    with pytest.raises(gr.Error, match="Unknown method"):
        h.explain_api({"path": upload("cat.jpg")}, "lime", "")
    assert analyze(h, upload("cat.jpg"))[1]  # and the handlers keep working


def test_api_handlers_and_per_visitor_sessions(h: Handlers, pool: ModelPool) -> None:
    cat, coffee = upload("cat.jpg"), upload("espresso.jpg")
    a, b = analyze(h, cat)[0], analyze(h, coffee)[0]
    assert not torch.equal(a.analysis.input, b.analysis.input)
    assert h.predict_api({"path": cat}) == {p.label: p.probability for p in a.analysis.top_k}
    overlay = h.explain_api({"path": coffee}, "gradcam", "tabby")
    assert isinstance(overlay, Image.Image) and overlay.size == (224, 224)


def test_architecture_tab_and_switching(h: Handlers) -> None:
    rows, chart, text = h.architecture("paper")
    assert rows[0][:2] == ["conv1", "Conv2d"] and rows[0][4] == "34,944" and "62,378,344 parameters" in text
    assert chart.width > 300
    banner, target = h.switch_model("paper", "cpu", None)
    assert "untrained" in banner and target["value"] == ""


def test_build_demo_names_the_api_endpoints(pool: ModelPool) -> None:
    demo = build_demo(pool)
    names = {dep.api_name for dep in demo.fns.values() if dep.api_visibility == "public"}
    assert {"predict", "explain", "analyze", "show_layer", "show_channel"} <= names


def test_untrained_copy_filters_differ_from_the_loaded_ones(h: Handlers, pool: ModelPool, tmp_path: Path) -> None:
    from alexnet_viz.architectures import build_model

    fresh = render.filter_grid(build_model("torchvision", seed=0).conv1.weight)
    assert np.array_equal(np.asarray(h.untrained_filters(None)), np.asarray(fresh))
    # A model with other weights shows other filters beside the untrained copy.
    other = build_model("torchvision", seed=5).state_dict()
    torch.save(other, tmp_path / "other.pt")
    trained = Handlers(ModelPool("torchvision", str(tmp_path / "other.pt"), "cpu"))
    assert not np.array_equal(np.asarray(trained._filters(trained.pool.default)), np.asarray(fresh))
    assert np.array_equal(np.asarray(trained.untrained_filters(None)), np.asarray(fresh))


def test_pictures_are_written_once_per_content_atomically_at_png_level_1(pool: ModelPool) -> None:
    from alexnet_viz.ui import PNG_LEVEL, as_png_files

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    outputs = [gr.Image(label="conv1 filters"), gr.Markdown(), gr.Image(label="!!")]
    event = as_png_files(lambda im: (im, "text", None), outputs)
    first, text, nothing = event(image)
    assert (text, nothing) == ("text", None)  # only pictures for picture outputs are touched
    path = Path(first)
    assert path.name == "conv1-filters.png" and path.is_relative_to(Path(gr.utils.get_upload_folder()))
    expected = io.BytesIO()
    image.save(expected, format="PNG", compress_level=PNG_LEVEL)
    assert PNG_LEVEL == 1 and path.read_bytes() == expected.getvalue()
    with Image.open(path) as back:
        assert np.array_equal(np.asarray(back), np.asarray(image))
    inode = path.stat().st_ino
    # a room of visitors getting the same picture at once: the file is never rewritten under a reader
    seen: list[int] = []
    errors: list[BaseException] = []

    def visitor() -> None:
        try:
            for _ in range(20):
                assert event(image.copy())[0] == first
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
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind
    assert event(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))[0] != first  # another content, another file
    assert as_png_files(lambda im: im, [outputs[2]])(image).endswith("/picture.png")
    # and the page's events are wrapped so: the filters picture of analyze arrives as such a file
    demo = build_demo(pool)
    [analyze_event] = [e for e in demo.fns.values() if e.api_name == "analyze"]
    out = analyze_event.fn({"path": upload("cat.jpg")}, "torchvision", "cpu", "conv1", False, "viridis", None)
    pictures = [v for v in out if isinstance(v, str) and v.endswith(".png")]
    assert pictures and all(Path(v).is_file() for v in pictures)
    assert not any(isinstance(v, Image.Image) for v in out)
