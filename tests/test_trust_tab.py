"""The "Can you trust this map?" tab, occlusion by hand, "why A and not B", and `analyze --raw/--contrast`.

Oracles: torch.autograd.grad of the class scores (and of their difference) for the CLI's maps, a fresh forward
of the occluded input for the top-5 after clicks, the library's own reports for the tab's tables.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch

from alexnet_viz import export, occlude, trust
from alexnet_viz.analysis import analyze, explain, input_view
from alexnet_viz.attribution import METHODS
from alexnet_viz.cli import main as cli_main
from alexnet_viz.model import load_model
from alexnet_viz.targets import Contrast
from alexnet_viz.ui import Handlers, trust_tab
from alexnet_viz.ui import handlers as H
from alexnet_viz.ui.trust_tab import FAITHFULNESS_HEADERS, TrustHandlers, analysis_key

from .conftest import ASSETS, upload

# ---- the CLI: --raw and --contrast ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded():  # what `--weights none` loads: the same seeded untrained network the CLI runs
    return load_model("torchvision", "none", "cpu")


def _grad(loaded: Any, x: torch.Tensor, score: Any) -> torch.Tensor:
    """d score(model(x)) / dx, (3, H, W): the oracle."""
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(score(loaded.module(leaf)[0]), leaf)
    return g[0]


def test_analyze_raw_writes_each_map_as_float32_at_the_input_size(tmp_path: Path, seeded: Any) -> None:
    image = ASSETS / "cat.jpg"
    code = cli_main(["analyze", str(image), "--weights", "none", "--method", "saliency", "--method",
                     "input_x_gradient", "--compare", "gradcam", "--layer", "conv1", "--raw", "--out", str(tmp_path)])
    assert code == 0
    folder = tmp_path / "cat"
    analysis = analyze(seeded, image)
    side = seeded.input_size
    for method in ("saliency", "input_x_gradient", "gradcam"):
        values = np.load(folder / f"attribution_{method}.npy")
        assert values.dtype == np.float32 and values.shape == (side, side), method
        layer = seeded.conv_layers[-1] if method == "gradcam" else None
        assert np.array_equal(values, explain(seeded, analysis, method, layer=layer).heatmap.numpy()), method
    top1 = analysis.top1.index
    grad = _grad(seeded, analysis.input, lambda out: out[top1])
    saliency = np.load(folder / "attribution_saliency.npy")
    np.testing.assert_allclose(saliency, grad.abs().amax(0).numpy(), rtol=1e-5, atol=1e-9)
    ixg = np.load(folder / "attribution_input_x_gradient.npy")  # signed: both signs present, sum over channels
    assert ixg.min() < 0 < ixg.max()
    np.testing.assert_allclose(ixg, (analysis.input[0] * grad).sum(0).numpy(), rtol=1e-4, atol=1e-8)
    assert saliency.min() >= 0  # saliency's map is a magnitude
    listed = json.loads((folder / "result.json").read_text())["files"]
    assert {"attribution_saliency.npy", "attribution_gradcam.npy"} <= set(listed)


def test_analyze_contrast_explains_a_minus_b(tmp_path: Path, seeded: Any, capsys: pytest.CaptureFixture[str]) -> None:
    image = ASSETS / "espresso.jpg"
    analysis = analyze(seeded, image)
    a = analysis.top_k[2].index
    b = 7
    code = cli_main(["analyze", str(image), "--weights", "none", "--method", "input_x_gradient", "--method",
                     "saliency", "--layer", "conv1", "--target", str(a), "--contrast", str(b), "--raw",
                     "--out", str(tmp_path / "ab"), "--json"])
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    folder = tmp_path / "ab" / "espresso"
    grad = _grad(seeded, analysis.input, lambda out: out[a] - out[b])
    np.testing.assert_allclose(np.load(folder / "attribution_saliency.npy"), grad.abs().amax(0).numpy(),
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.load(folder / "attribution_input_x_gradient.npy"),
                               (analysis.input[0] * grad).sum(0).numpy(), rtol=1e-4, atol=1e-8)
    assert meta["attributions"]["saliency"]["target"] == a
    assert meta["attributions"]["saliency"]["contrast"]["index"] == b

    # runner-up: B is the best class other than A (A defaults to the top-1)
    code = cli_main(["analyze", str(image), "--weights", "none", "--method", "gradcam", "--layer", "conv1",
                     "--contrast", "runner-up", "--raw", "--out", str(tmp_path / "ru"), "--json"])
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    runner_up = analysis.top_k[1].index
    assert meta["attributions"]["gradcam"]["contrast"]["index"] == runner_up
    expected = explain(seeded, analysis, "gradcam", target=Contrast(analysis.top1.index, runner_up),
                       layer=seeded.conv_layers[-1]).heatmap.numpy()
    assert np.array_equal(np.load(tmp_path / "ru" / "espresso" / "attribution_gradcam.npy"), expected)


def test_analyze_contrast_refuses_a_method_that_cannot_show_one(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["analyze", str(ASSETS / "cat.jpg"), "--weights", "none", "--method", "guided_backprop",
                     "--contrast", "runner-up", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot show a contrast" in errors[0]
    assert not list(tmp_path.iterdir())  # refused before any image was analysed


# ---- the tab's handlers, without a browser ----------------------------------------------------------------

def _session(h: Any, name: str) -> Any:
    return h.analyze({"path": upload(name)}, "torchvision", "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6,
                     "auto", None)["session"]


@pytest.fixture(scope="module")
def t(h: Any) -> TrustHandlers:
    return TrustHandlers(h)


@pytest.fixture(scope="module")
def cat_session(h: Any) -> Any:
    return _session(h, "cat.jpg")


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """Record what ``trust.<name>`` returns to the tab (the library is tested in test_trust.py)."""
    returned: list[Any] = []
    real = getattr(trust, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        returned.append(real(*args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(trust, name, spy)
    return returned


def test_faithfulness_table_is_the_reports_ranking_with_every_baseline(t: TrustHandlers, cat_session: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    said: list[str] = []
    reports = _spy(monkeypatch, "faithfulness")
    out = t.faithfulness(cat_session, ["saliency", "bogus"], progress=lambda f, m: (seen.append(f), said.append(m)))
    (report,) = reports
    assert next(iter(report.results)) == "saliency" and report.target == cat_session.analysis.top1.index
    names = [name for name, _ in report.ranking("deletion")]
    assert len(names) == 1 + len(trust.BASELINES)
    assert [row[1] for row in out["trust_table"]] == [report.results[n].title for n in names]
    for row, name in zip(out["trust_table"], names, strict=True):
        assert row[3] == f"{report.auc(name, 'deletion'):.3f}" and row[4] == f"{report.auc(name, 'insertion'):.3f}"
        assert ("baseline" in row[2]) == (name in trust.BASELINES)
    assert [float(r[3]) for r in out["trust_table"]] == sorted(float(r[3]) for r in out["trust_table"])
    assert "lower is better" in FAITHFULNESS_HEADERS[3] and "higher is better" in FAITHFULNESS_HEADERS[4]
    assert "Saliency" in out["trust_summary"] and "baseline" in out["trust_summary"]
    assert out["trust_curves"].width >= 1200 and out["trust_owner"] == analysis_key(cat_session)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    # the method's own batches report too (and so can be stopped between two of them), within its share
    first_map_done = said.index("Deletion and insertion: Saliency (gradient) (1 of 6)")
    assert said.index("Saliency (gradient): starting") < first_map_done
    with pytest.raises(gr.Error, match="Tick at least one"):
        t.faithfulness(cat_session, [])
    with pytest.raises(gr.Error, match="Give an image first"):
        t.faithfulness(None, ["saliency"])


def test_slow_work_stops_at_the_time_limit(pool: Any, cat_session: Any) -> None:
    quick = TrustHandlers(Handlers(pool, time_limit_s=0.0))
    with pytest.raises(gr.Error, match="longer than 0 s"):
        quick.faithfulness(cat_session, ["saliency"])
    with pytest.raises(gr.Error, match="longer than 0 s"):
        quick.sanity(cat_session, "saliency", stages=1)


def test_sanity_check_marks_guided_backprop_failing_and_saliency_passing(t: TrustHandlers, cat_session: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    results = _spy(monkeypatch, "sanity_check")
    for method, mark in (("guided_backprop", "FAILS"), ("saliency", "PASSES")):
        out = t.sanity(cat_session, method, stages=3)  # fc8, fc7, fc6: the whole classifier random
        oracle = results[-1]
        assert oracle.method == method and oracle.fails is (mark == "FAILS")
        assert [s.name for s in oracle.stages] == ["original", "fc8", "fc7", "fc6"]
        assert oracle.floor["spearman"] is not None  # a bundled photo gave the unrelated floor
        assert mark in out["sanity_verdict"] and METHODS[method].title in out["sanity_verdict"]
        rho = oracle.stage("fc6").similarity["spearman"]
        assert f"| randomised down to fc6 | {rho:.2f} |" in out["sanity_info"]
        assert f"| *unrelated photo (floor)* | {oracle.floor['spearman']:.2f} |" in out["sanity_info"]
        assert out["sanity_strip"].width >= 600 and out["sanity_plot"].width >= 1200


def test_contrast_shows_a_minus_b_beside_a_and_a_note_where_it_cannot(t: TrustHandlers, pool: Any,
                                                                     cat_session: Any) -> None:
    loaded, analysis = pool.default, cat_session.analysis
    top1, runner_up = analysis.top_k[0], analysis.top_k[1]
    out = t.contrast(cat_session, "", "", "gradcam")
    assert runner_up.label in out["contrast_info"] and "runner-up" in out["contrast_info"]
    layer = loaded.conv_layers[-1]
    expected = export.attribution_picture(analysis, explain(loaded, analysis, "gradcam", layer=layer,
                                                            target=Contrast(top1.index, runner_up.index)))
    diff = np.asarray(out["contrast_diff"])
    assert np.array_equal(diff[-expected.height:], np.asarray(expected))  # the picture under its title
    alone = export.attribution_picture(analysis, explain(loaded, analysis, "gradcam", layer=layer))
    assert np.array_equal(np.asarray(out["contrast_alone"])[-alone.height:], np.asarray(alone))

    b = str(analysis.top_k[4].index)  # any class, chosen by index (the dropdown's value)
    out = t.contrast(cat_session, str(runner_up.index), b, "input_x_gradient")
    expected = export.attribution_picture(analysis, explain(loaded, analysis, "input_x_gradient",
                                                            target=Contrast(runner_up.index, int(b))))
    assert np.array_equal(np.asarray(out["contrast_diff"])[-expected.height:], np.asarray(expected))
    assert "blue" in out["contrast_info"]  # signed: both directions explained

    out = t.contrast(cat_session, "", "", "guided_backprop")
    assert out["contrast_diff"] is None and METHODS["guided_backprop"].contrast_note in out["contrast_info"]
    assert out["contrast_alone"] is not None
    with pytest.raises(gr.Error, match="two different classes"):
        t.contrast(cat_session, str(top1.index), str(top1.index), "saliency")


def _top5_by_hand(loaded: Any, x: torch.Tensor, squares: list[tuple[int, int, int, str]]) -> list[tuple[str, float]]:
    """The oracle: fill the squares by hand, one forward pass, softmax, top-5."""
    x = x.clone()
    blur = trust.blurred(x)
    for cx, cy, size, fill in squares:
        top, left = cy - size // 2, cx - size // 2
        region = (..., slice(max(top, 0), top + size), slice(max(left, 0), left + size))
        x[region] = 0.0 if fill == "mean" else blur[region]
    with torch.no_grad():
        p = torch.softmax(loaded.module(x)[0], 0)
    values, indices = p.topk(5)
    return [(loaded.categories[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]


def _shown(html_text: str) -> list[str]:
    return re.findall(r"class='top5-label'>([^<]*)<", html_text)


def test_occlusion_clicks_undo_and_clear(t: TrustHandlers, h: Any, pool: Any, cat_session: Any) -> None:
    loaded, analysis = pool.default, cat_session.analysis
    out = t.occ_new_image(cat_session, None)
    assert out["occ_state"] == (analysis_key(cat_session), occlude.Patches())
    assert _shown(out["occ_top5"]) == [html.escape(p.label) for p in analysis.top_k]
    assert out["occ_view"].size == (export.DISPLAY_SIDE, export.DISPLAY_SIDE)
    scale = export.DISPLAY_SIDE / analysis.view.size[0]
    state = out["occ_state"]

    first = t.occ_click(cat_session, state, 48, "mean", 100 * scale, 60 * scale)
    want = _top5_by_hand(loaded, analysis.input, [(100, 60, 48, "mean")])
    assert _shown(first["occ_top5"]) == [html.escape(label) for label, _ in want]
    for _, p in want:
        assert H.probability(p) in first["occ_top5"]
    assert "1 square" in first["occ_info"] and " ms" in first["occ_info"]
    view = np.asarray(first["occ_view"])
    assert tuple(view[int(36 * scale) + 1, round(100 * scale)]) == trust_tab.PATCH_COLOUR  # the square's outline

    mean_colour = input_view(torch.zeros(1, 3, 1, 1), loaded.mean, loaded.std).getpixel((0, 0))
    assert tuple(view[round(60 * scale), round(100 * scale)]) == mean_colour  # inside: the dataset mean

    second = t.occ_click(cat_session, first["occ_state"], 64, "blur", 150 * scale, 170 * scale)
    want2 = _top5_by_hand(loaded, analysis.input, [(100, 60, 48, "mean"), (150, 170, 64, "blur")])
    assert _shown(second["occ_top5"]) == [html.escape(label) for label, _ in want2]
    assert "2 squares" in second["occ_info"]
    # inside the blurred square: the pixels the network saw (the occluded input, un-normalised, enlarged)
    seen = occlude.occluded_input(analysis.input, occlude.Patches().add(occlude.Patch(150, 170, 64, "blur")))
    saw = np.asarray(input_view(seen, loaded.mean, loaded.std).resize((export.DISPLAY_SIDE,) * 2), dtype=float)
    inner = (slice(round(145 * scale), round(195 * scale)), slice(round(125 * scale), round(175 * scale)))
    assert np.abs(np.asarray(second["occ_view"], dtype=float)[inner] - saw[inner]).mean() < 2.0

    undone = t.occ_undo(cat_session, second["occ_state"])
    assert undone["occ_top5"] == first["occ_top5"] and undone["occ_state"] == first["occ_state"]
    cleared = t.occ_clear(cat_session, undone["occ_state"])
    assert cleared["occ_top5"] == out["occ_top5"] and "No squares" in cleared["occ_info"]

    # Another setting elsewhere (same image) keeps the squares; a new image starts without any.
    assert t.occ_new_image(cat_session.with_scene(layers=("conv2",)), first["occ_state"]) == {}
    other = _session(h, "espresso.jpg")
    fresh = t.occ_new_image(other, first["occ_state"])
    assert fresh["occ_state"] == (analysis_key(other), occlude.Patches())
    clicked = t.occ_click(other, first["occ_state"], 32, "mean", 10, 10)  # a stale state: the old squares go
    assert "1 square" in clicked["occ_info"]
    for bad, match in (((-5, 10), "click position"), ((10, float("nan")), "click position")):
        with pytest.raises(gr.Error, match=match):
            t.occ_click(other, None, 32, "mean", *bad)
    with pytest.raises(gr.Error, match="fill"):
        t.occ_click(other, None, 32, "paint", 10, 10)
    with pytest.raises(gr.Error, match="patch size"):
        t.occ_click(other, None, 500, "mean", 10, 10)


def test_trust_panels_belong_to_one_image(t: TrustHandlers, h: Any, cat_session: Any) -> None:
    key = analysis_key(cat_session)
    out = t.trust_new_image(cat_session, "")
    assert out["trust_owner"] == key and out["trust_curves"] is None and out["contrast_diff"] is None
    assert out["contrast_a"]["choices"][1][1] == str(cat_session.analysis.top1.index)
    assert out["contrast_b"]["choices"][0][1] == "" and "Runner-up" in out["contrast_b"]["choices"][0][0]
    assert t.trust_new_image(cat_session.with_scene(layers=("conv3",)), key) == {}  # same image: kept
    assert t.trust_guard(cat_session, key) == {}
    other = _session(h, "espresso.jpg")
    late = t.trust_guard(other, key)  # a slow result for the cat arrived after the espresso: cleared
    assert late["trust_owner"] == analysis_key(other) and late["sanity_strip"] is None
    assert analysis_key(other) != key and analysis_key(None) == ""


# ---- the /occlude API and the page in Chromium ---------------------------------------------------------------

def test_occlude_api_answers_like_predict(server: Any, seeded: Any) -> None:
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    image = ASSETS / "cat.jpg"
    result = client.predict(handle_file(str(image)), 112, 80, 40, api_name="/occlude")
    got = [(c["label"], c["confidence"]) for c in result["confidences"]]
    want = _top5_by_hand(seeded, analyze(seeded, image).input, [(112, 80, 40, "mean")])
    assert [label for label, _ in got] == [label for label, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-5)
    predicted = client.predict(handle_file(str(image)), api_name="/predict")
    assert set(result) == set(predicted)  # the same shape as /predict's answer
    from gradio_client.exceptions import AppError

    for args, match in (((500, 80, 40), "x must be between 0 and 223"), ((10, 10, 40.5), "whole number"),
                        ((10, 10, 1000), "size must be between")):
        with pytest.raises(AppError, match=match):
            client.predict(handle_file(str(image)), *args, api_name="/occlude")


@pytest.mark.browser
@pytest.mark.slow
def test_trust_and_occlusion_tabs_in_chromium(server: Any, browser_ready: None) -> None:
    from alexnet_viz.browser import Driver, Watch, with_page


    def walk(d: Driver, watch: Watch) -> None:
        # Before any image: a run says what to do, and nothing breaks.
        d.tab("Occlusion by hand")
        d.page.locator("#occ-undo").click()
        d.page.get_by_test_id("toast-body").first.wait_for(timeout=30_000)
        assert "Give an image first" in d.page.get_by_test_id("toast-body").first.inner_text()
        d.page.locator("button.toast-close").first.click()
        d.upload(ASSETS / "cat.jpg")
        # Occlusion: three clicks (one with blur, one with a bigger square), undo, clear.
        d.wait_text("occ-info", "No squares")
        d.click_picture("occ-view", 0.5, 0.4)
        d.wait_text("occ-info", "1 square hidden")
        d.page.locator("#occ-fill").get_by_text("Blurred").click()
        d.set_slider("occ-size", 80)
        d.click_picture("occ-view", 0.3, 0.7)
        d.wait_text("occ-info", "2 squares hidden")
        d.page.locator("#occ-undo").click()
        d.wait_text("occ-info", "1 square hidden")
        d.check("occlusion clicks and undo")
        # Trust tab: contrast first, then the sanity check, then faithfulness with fewer methods.
        d.tab("Can you trust this map?")
        d.page.locator("#contrast-run").click()
        d.wait_text("contrast-info", "runner-up", timeout=120_000)
        d.choose("contrast-method", "Guided backpropagation")
        d.page.locator("#contrast-run").click()
        d.wait_text("contrast-info", "cannot show a contrast", timeout=120_000)
        d.choose("sanity-method", "Saliency (gradient)")
        d.page.locator("#sanity-run").click()
        d.wait_text("sanity-verdict", "PASSES|FAILS|undecided", timeout=180_000)
        for title in ("Guided backpropagation", "Input × gradient"):
            d.page.locator("#trust-methods").get_by_label(title).uncheck()
        d.page.locator("#trust-run").click()
        d.wait_text("trust-summary", "Saliency", timeout=180_000)
        d.check("the trust tab's three runs")
        # A new image given while the trust tab is shown clears every panel of both tabs (each panel that
        # follows an analysis once could spin forever here: see Page.follow).
        d.upload(ASSETS / "espresso.jpg")
        d.wait_text("trust-summary", "^$")
        assert d.picture("sanity-strip") == "" and d.picture("contrast-diff") == ""
        d.tab("Occlusion by hand")
        d.wait_text("occ-info", "No squares")
        d.click_picture("occ-view", 0.6, 0.6)
        d.wait_text("occ-info", "1 square hidden")
        d.page.locator("#occ-clear").click()
        d.wait_text("occ-info", "No squares")
        d.check("a new image after the runs")
        assert not watch.console_errors, watch.console_errors
        assert watch.hosts() <= {"127.0.0.1"}, watch.hosts()

    with_page(server.url, walk)
