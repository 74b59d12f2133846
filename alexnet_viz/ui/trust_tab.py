"""Two tabs: "Can you trust this map?" (deletion/insertion curves beside baselines, the cascading-randomisation
sanity check, "why A and not B") and "Occlusion by hand" (click to hide squares; the top-5 after each click).

The engine does the work (:mod:`alexnet_viz.trust`, :mod:`alexnet_viz.occlude`, ``analysis.explain`` with a
:class:`~alexnet_viz.targets.Contrast`); :class:`TrustHandlers` turns it into ``{name: value}`` for the page
and is tested without a browser. Results belong to one image: each tab keeps the key of the analysis its
panels show (``trust_owner``, ``occ_state``) and clears them when the visitor's image or model changes, also
when a slow result arrives after the image was replaced.
"""

from __future__ import annotations

import hashlib
import html
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image, ImageDraw

from .. import export, render, trust
from ..analysis import Analysis, analyze, explain
from ..attribution import METHODS, Attribution
from ..occlude import FILLS, PATCH_SIZE, OcclusionResult, Patch, Patches, occlude
from ..targets import Contrast
from . import handlers as H
from .state import ModelPool, Session

if TYPE_CHECKING:
    from ..model import LoadedModel
    from .layout import Page

__all__ = ["MAX_PATCHES", "TrustHandlers", "add_occlusion_tab", "add_trust_tab", "analysis_key"]

Progress = Callable[[float, str], None]

TEXT_PX = 22  # text in the plots: readable from the back of a lecture hall
STRIP_SIDE, STRIP_PER_ROW = 300, 5  # sanity strip: 9 maps in rows of 5, each 300 px
MAX_PATCHES = 64  # patches on one view; each click is still one forward pass
BOLD = "<b style='color:inherit'>"  # bold in a coloured banner keeps the banner's white
PATCH_COLOUR = (250, 204, 21)  # outline of a patch on the view (yellow: visible on photos and on grey)
DEFAULT_FAITHFULNESS = ("saliency", "input_x_gradient", "guided_backprop", "gradcam")

CAPTIONS = {
    "trust": "A colourful map is not yet an explanation. Two tests: does hiding the pixels a map calls important "
             "really change the network's answer (faithfulness), and does the map change when the network forgets "
             "what it learnt (sanity check)?",
    "faithfulness": "**Deletion**: the pixels a map ranks highest are replaced by the mean colour first; a faithful "
                    "map makes the class score collapse early, so a **lower** area under the curve is better. "
                    "**Insertion**: they are put back into a blurred copy first; a **higher** area is better. "
                    "Three baselines that never look at the network are always shown: a map is only worth "
                    "something if it beats them.",
    "sanity": "Cascading randomisation (Adebayo et al. 2018): the layers are replaced by random ones from the top "
              "(fc8) down to conv1, and the map is computed again each time. A map that explains the network "
              "must change once the classifier is random; one that barely changes shows the image, not the "
              "network. The dotted line is how alike the maps of two unrelated photos are.",
    "contrast": "Why A and not B? For gradient methods and Grad-CAM the map can explain the difference of two class "
                "scores: the pixels that make the network prefer A over B (B defaults to the runner-up, the "
                "best class other than A).",
    "occlusion": "Click the picture to hide a square and watch the top-5 change: one forward pass a click. Hide "
                 "what you think matters; several squares add up; Undo and Clear take them back.",
}


def analysis_key(session: Session | None) -> str:
    """Which image (and model) a panel's result belongs to: the model and a digest of the input and scores."""
    if session is None:
        return ""
    a = session.analysis
    digest = hashlib.blake2b(a.input.numpy().tobytes(), digest_size=12)
    digest.update(a.logits.numpy().tobytes())
    return f"{session.arch}/{session.device}/{digest.hexdigest()}"


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    v = H._number(value, what, lo, hi)
    if v != int(v):
        raise H._refuse(f"The {what} must be a whole number of pixels.")
    return int(v)


def _pct(p: float) -> str:
    return H.probability(p)


# -------------------------------------------------------------------------------------------------------
# handlers


class TrustHandlers:
    """The two tabs' handlers, each returning ``{name: value}``; ``h`` gives the model and the limits."""

    def __init__(self, h: H.Handlers) -> None:
        self.h = h

    # --- keeping results with their image ------------------------------------------------------------

    TRUST_OUTPUTS = ("trust_curves", "trust_table", "trust_summary", "sanity_verdict", "sanity_strip",
                     "sanity_plot", "sanity_info", "contrast_alone", "contrast_diff", "contrast_info")

    def _cleared(self) -> dict[str, Any]:
        return {"trust_curves": None, "trust_table": [], "trust_summary": "", "sanity_verdict": "",
                "sanity_strip": None, "sanity_plot": None, "sanity_info": "", "contrast_alone": None,
                "contrast_diff": None, "contrast_info": ""}

    def trust_new_image(self, session: Session | None, owner: str) -> dict[str, Any]:
        """The visitor's session changed: a new image or model clears the panels and renews the class lists;
        any other change (a layer picked elsewhere) leaves them."""
        key = analysis_key(session)
        if key == owner:
            return {}
        out = {**self._cleared(), "trust_owner": key}
        loaded = self.h.model_for(session)
        analysis = session.analysis if session else None
        out["contrast_a"] = gr.update(choices=H.target_choices(loaded, analysis), value="")
        out["contrast_b"] = gr.update(choices=_b_choices(loaded, analysis), value="")
        return out

    def trust_guard(self, session: Session | None, owner: str) -> dict[str, Any]:
        """After a slow run: if the image changed meanwhile, the result is another image's: clear it."""
        return {} if analysis_key(session) == owner else {**self._cleared(), "trust_owner": analysis_key(session)}

    # --- faithfulness --------------------------------------------------------------------------------

    @H.friendly("measuring faithfulness")
    def faithfulness(self, session: Session | None, methods: Sequence[str] | None, *,
                     progress: Progress | None = None) -> dict[str, Any]:
        session = H._need(session)
        chosen = list(dict.fromkeys(m for m in methods or [] if isinstance(m, str) and m in METHODS))
        if not chosen:
            raise H._refuse("Tick at least one method to measure.")
        loaded = self.h.model_for(session, lane="slow")  # slow work: its own replica
        options = {m: {"layer": loaded.conv_layers[-1]} for m in chosen if METHODS[m].layer_based}
        bound = H._Bounded(progress, self.h.time_limit_s)
        bound(0.0, "Deletion and insertion: starting")
        report = trust.faithfulness(loaded, session.analysis, chosen, options=options, progress=bound,
                                      detailed=True)
        return {"trust_curves": trust.curve_plot(report, text_px=TEXT_PX, figsize=(18, 7.5)),
                "trust_table": faithfulness_rows(report), "trust_summary": faithfulness_summary(report),
                "trust_owner": analysis_key(session)}

    # --- sanity check --------------------------------------------------------------------------------

    @H.friendly("running the sanity check")
    def sanity(self, session: Session | None, method: str, *, stages: int | None = None,
               progress: Progress | None = None) -> dict[str, Any]:
        session = H._need(session)
        method = H._choice(method, "method", list(METHODS))
        loaded = self.h.model_for(session, lane="slow")  # slow work: its own replica
        bound = H._Bounded(progress, self.h.time_limit_s)
        bound(0.0, "Sanity check: starting")
        unrelated = _unrelated(loaded, session.analysis)
        options: dict[str, Any] = {"layer": loaded.conv_layers[-1]} if METHODS[method].layer_based else {}
        result = trust.sanity_check(loaded, session.analysis, method, unrelated=unrelated, stages=stages,
                                    progress=bound, detailed=True, **options)
        return {"sanity_verdict": sanity_verdict(result),
                "sanity_strip": trust.sanity_strip(result, side=STRIP_SIDE, text_px=TEXT_PX, per_row=STRIP_PER_ROW),
                "sanity_plot": trust.sanity_plot([result], text_px=TEXT_PX, figsize=(18, 7.5)),
                "sanity_info": sanity_info(loaded, result), "trust_owner": analysis_key(session)}

    # --- why A and not B -------------------------------------------------------------------------------

    @H.friendly("explaining A and not B")
    def contrast(self, session: Session | None, a: str, b: str, method: str, *,
                 progress: Progress | None = None) -> dict[str, Any]:
        session = H._need(session)
        method = H._choice(method, "method", list(METHODS))
        for text in (a, b):
            if len(str(text or "")) > 200:
                raise H._refuse(f"No class is called {H._echo(text)}.")
        loaded = self.h.model_for(session, lane="slow")  # slow work: its own replica
        analysis = session.analysis
        spec = METHODS[method]
        layer = loaded.conv_layers[-1] if spec.layer_based else None
        bound = H._Bounded(progress if spec.slow else None, self.h.time_limit_s)
        a_index = analysis.top1.index if not a else loaded.class_index(a)
        alone = explain(loaded, analysis, method, target=a_index, layer=layer, progress=bound)
        out: dict[str, Any] = {"contrast_alone": _map_picture(analysis, alone, f"{spec.title}: why "
                                                              f"{loaded.categories[a_index]}"),
                               "trust_owner": analysis_key(session)}
        if not spec.contrastive:
            out["contrast_diff"] = None
            out["contrast_info"] = (f"**{spec.contrast_note}** The map for A alone is shown on the left; pick "
                                    "saliency, input × gradient, integrated gradients or Grad-CAM to see a contrast.")
            return out
        diff = explain(loaded, analysis, method, target=Contrast(a_index, b or None), layer=layer, progress=bound)
        assert diff.contrast is not None  # noqa: S101 - a Contrast target always names class B
        name_a, name_b = loaded.categories[a_index], loaded.categories[diff.contrast]
        out["contrast_diff"] = _map_picture(analysis, diff, f"{spec.title}: why {name_a} and not {name_b}")
        p = analysis.probabilities
        colours = ("red: pixels that make the network prefer A over B; blue: pixels that speak for B"
                   if diff.signed else "bright: pixels that make the network prefer A over B")
        out["contrast_info"] = (
            f"A = **{name_a}** ({_pct(float(p[a_index]))}), B = **{name_b}** ({_pct(float(p[diff.contrast]))})"
            f"{' (the runner-up)' if not b else ''}. Left: {spec.in_words} of A's score alone. Right: of "
            f"score(A) − score(B), {colours}. Where the two maps differ is what tells A from B.")
        return out

    # --- occlusion by hand --------------------------------------------------------------------------------

    def occ_new_image(self, session: Session | None, state: Any) -> dict[str, Any]:
        """A new image or model: no patches, the plain view and its own top-5."""
        key = analysis_key(session)
        if isinstance(state, tuple) and state and state[0] == key:
            return {}
        if session is None:
            return {"occ_state": None, "occ_view": None, "occ_top5": "", "occ_info": ""}
        return self._occluded(session, Patches())

    @H.friendly("hiding that square")
    def occ_click(self, session: Session | None, state: Any, size: float, fill: str, x: float, y: float,
                  ) -> dict[str, Any]:
        """A click at (x, y) in pixels of the picture on screen: one more patch, one forward pass."""
        session = H._need(session)
        patches = self._patches(session, state)
        if len(patches) >= MAX_PATCHES:
            raise H._refuse(f"At most {MAX_PATCHES} squares at once: press Undo or Clear.")
        side = session.analysis.view.size[0]
        shown = export.DISPLAY_SIDE
        px = _int(round(H._number(x, "click position", 0, shown - 1) * side / shown), "click position", 0, side - 1)
        py = _int(round(H._number(y, "click position", 0, shown - 1) * side / shown), "click position", 0, side - 1)
        size_px = _int(size, "patch size", int(PATCH_SIZE.minimum), min(int(PATCH_SIZE.maximum), side))
        fill = H._choice(fill, "fill", list(FILLS))
        return self._occluded(session, patches.add(Patch(px, py, size_px, fill).check(side)))

    @H.friendly("taking the square back")
    def occ_undo(self, session: Session | None, state: Any) -> dict[str, Any]:
        session = H._need(session)
        return self._occluded(session, self._patches(session, state).undo())

    @H.friendly("clearing the squares")
    def occ_clear(self, session: Session | None, state: Any) -> dict[str, Any]:
        session = H._need(session)
        return self._occluded(session, Patches())

    @staticmethod
    def _patches(session: Session, state: Any) -> Patches:
        """The patches of this image (none if the state belongs to another image, or to none)."""
        if isinstance(state, tuple) and len(state) == 2 and state[0] == analysis_key(session) \
                and isinstance(state[1], Patches):
            return state[1]
        return Patches()

    def _occluded(self, session: Session, patches: Patches) -> dict[str, Any]:
        loaded = self.h.model_for(session)
        t0 = time.perf_counter()
        result = occlude(loaded, session.analysis, patches)
        seconds = time.perf_counter() - t0
        return {"occ_state": (analysis_key(session), patches),
                "occ_view": occlusion_picture(session.analysis, result),
                "occ_top5": occlusion_top5(session.analysis, result), "occ_info": occlusion_info(
                    session.analysis, result, seconds)}

    # --- the API ----------------------------------------------------------------------------------------

    @H.friendly("hiding part of the image")
    def occlude_api(self, image: Any, x: Any, y: Any, size: Any) -> dict[str, float]:
        """Image, patch centre (x, y) and side in pixels of the network's input view (the centre crop after
        resizing), filled with the dataset mean -> the top-5 like ``/predict``."""
        loaded = self.h.pool.default
        side = loaded.input_size
        px, py = _int(x, "x", 0, side - 1), _int(y, "y", 0, side - 1)
        size_px = _int(size, "size", int(PATCH_SIZE.minimum), min(int(PATCH_SIZE.maximum), side))
        analysis = analyze(loaded, self.h.decode(H.upload_path(image)), capture=False)
        return occlude(loaded, analysis, Patches().add(Patch(px, py, size_px).check(side))).label()


# -------------------------------------------------------------------------------------------------------
# words and pictures


def faithfulness_rows(report: trust.FaithfulnessReport) -> list[list[str]]:
    """The ranking table: one row per map, best deletion first, with both AUCs and what each map is."""
    rows = []
    for rank, (name, _) in enumerate(report.ranking("deletion"), 1):
        r = report.results[name]
        kind = "method" if r.kind == "method" else "baseline (ignores the network)"
        rows.append([str(rank), r.title, kind, f"{r.auc('deletion'):.3f}", f"{r.auc('insertion'):.3f}"])
    return rows


FAITHFULNESS_HEADERS = ["rank", "map", "kind", "deletion AUC (lower is better)", "insertion AUC (higher is better)"]


def faithfulness_summary(report: trust.FaithfulnessReport) -> str:
    """Which methods beat every baseline on each curve, in words."""
    methods = [n for n, r in report.results.items() if r.kind == "method"]
    baselines = [n for n, r in report.results.items() if r.kind == "baseline"]
    best_del = min(report.auc(b, "deletion") for b in baselines)
    best_ins = max(report.auc(b, "insertion") for b in baselines)
    lines = [f"For **{html.escape(report.label)}** (the top-1 class); the score is the class's logit, scaled so "
             "the original image is 1 and the fully changed one 0."]
    for m in methods:
        title = report.results[m].title
        d, i = report.auc(m, "deletion"), report.auc(m, "insertion")
        verdicts = []
        verdicts.append("beats every baseline on deletion" if d < best_del else "does **not** beat the best "
                        f"baseline on deletion ({d:.3f} vs {best_del:.3f})")
        verdicts.append("beats every baseline on insertion" if i > best_ins else "does **not** beat the best "
                        f"baseline on insertion ({i:.3f} vs {best_ins:.3f})")
        lines.append(f"- **{title}** {verdicts[0]}, and {verdicts[1]}.")
    if not report.trained:
        lines.append("\nThese weights are untrained, so no map can be faithful to anything learnt: expect the "
                     "methods near the random baseline.")
    return "\n".join(lines)


def sanity_verdict(result: trust.SanityResult) -> str:
    title = html.escape(METHODS[result.method].title)
    if result.fails is True:
        return (f"<div class='banner-warn'>✗ {BOLD}{title} FAILS the sanity check</b>: with the "
                f"classifier random (down to {result.classifier_stage}) its map hardly changes, so it "
                "shows the image more than what the network learnt.</div>")
    if result.fails is False:
        return (f"<div class='banner-ok'>✓ {BOLD}{title} PASSES the sanity check</b>: once the "
                f"classifier is random (down to {result.classifier_stage}) its map is no more like the original "
                "than a map of an unrelated photo.</div>")
    return (f"<div class='banner-warn'>? {BOLD}{title}: undecided</b>: the check did not reach "
            f"{result.classifier_stage}, or a map was all zeros, or there was no unrelated photo to compare "
            "with.</div>")


def sanity_info(loaded: LoadedModel, result: trust.SanityResult) -> str:
    rows = ["| stage | rank correlation | SSIM |", "|---|---|---|"]

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    for s in result.stages:
        name = "original" if s.name == "original" else f"randomised down to {s.name}"
        rows.append(f"| {name}{' (all zero)' if s.zero else ''} | {f(s.similarity['spearman'])} | "
                    f"{f(s.similarity['ssim'])} |")
    rows.append(f"| *unrelated photo (floor)* | {f(result.floor.get('spearman'))} | {f(result.floor.get('ssim'))} |")
    return (f"Maps of **{html.escape(loaded.categories[result.target])}**, {result.seconds:.1f} s. "
            "A method fails when, with the classifier random, its rank correlation with the original is still "
            "nearer to 1 than to the unrelated floor.\n\n" + "\n".join(rows))


def _map_picture(analysis: Analysis, attr: Attribution, title: str) -> Image.Image:
    """The map over the image with its colour bar (as the Saliency tab draws it), titled above."""
    return render.label(export.attribution_picture(analysis, attr), title, size=TEXT_PX)


def _b_choices(loaded: LoadedModel, analysis: Analysis | None) -> list[tuple[str, str]]:
    return [("Runner-up: the best class other than A (default)", ""), *H.target_choices(loaded, analysis)[1:]]


def _unrelated(loaded: LoadedModel, analysis: Analysis) -> Analysis | None:
    """A bundled photo unlike the visitor's, for the sanity check's floor (None if there is none)."""
    path = trust._bundled_photo(analysis)
    return None if path is None else analyze(loaded, path, capture=False)


def occlusion_picture(original: Analysis, result: OcclusionResult, *, side: int = export.DISPLAY_SIDE) -> Image.Image:
    """The occluded view the network saw, enlarged to ``side``, each patch outlined.

    Drawn from the original view's enlargement with each patch pasted in order (the mean colour, or the
    blurred pixels cut from the occluded view): un-normalising the whole occluded input would cost a click
    about a third of its forward pass."""
    view = original.view
    n = view.size[0]
    scale = side / n
    picture = view.resize((side, side), Image.Resampling.BICUBIC)
    mean = tuple(int(m * 255 + 0.5) for m in result.mean)  # what zero of the normalised input looks like
    boxes = []
    for p in result.patches:
        top, bottom, left, right = p.bounds(n)
        box = (round(left * scale), round(top * scale), round(right * scale), round(bottom * scale))
        if p.fill == "mean":
            picture.paste(mean, box)
        else:  # the blurred pixels the network saw there (result.view is made once, on first use)
            cut = result.view.crop((left, top, right, bottom))
            picture.paste(cut.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BICUBIC), box[:2])
        boxes.append(box)
    draw = ImageDraw.Draw(picture)
    width = max(2, round(side / 200))
    for left, top, right, bottom in boxes:
        draw.rectangle([left, top, right - 1, bottom - 1], outline=PATCH_COLOUR, width=width)
    return picture


def occlusion_top5(original: Analysis, result: OcclusionResult) -> str:
    """The top-5 of the occluded view as bars, each with the class's probability before the patches."""
    rows = []
    top = max(result.top_k[0].probability, 1e-12)
    for rank, p in enumerate(result.top_k, 1):
        width = max(1.0, 100 * p.probability / top)
        before = float(original.probabilities[p.index])
        rows.append(f"<div class='top5-row'><span class='top5-rank'>{rank}</span>"
                    f"<span class='top5-label'>{html.escape(p.label)}</span>"
                    f"<span class='top5-bar'><span style='width:{width:.1f}%'></span></span>"
                    f"<span class='top5-p'>{_pct(p.probability)}<br><small>was {_pct(before)}</small></span></div>")
    return f"<div class='top5' id='occ-top5-rows'>{''.join(rows)}</div>"


def occlusion_info(original: Analysis, result: OcclusionResult, seconds: float) -> str:
    first = original.top1
    now = float(result.probabilities[first.index])
    n = len(result.patches)
    if not n:
        return "No squares yet: the top-5 of the whole image. Click the picture to hide a square."
    squares = "1 square" if n == 1 else f"{n} squares"
    return (f"{squares} hidden · the original top-1 **{html.escape(first.label)}**: {_pct(first.probability)} → "
            f"**{_pct(now)}** · one forward pass, {seconds * 1000:.0f} ms")


# -------------------------------------------------------------------------------------------------------
# the tabs


def add_trust_tab(page: Page, h: H.Handlers, pool: ModelPool) -> None:
    """The "Can you trust this map?" tab: faithfulness, the sanity check and "why A and not B"."""
    from .layout import SLOW_GROUP, picture
    from .server import SLOW_CONCURRENCY

    t = TrustHandlers(h)
    c, on = page.c, page.on
    loaded = pool.default
    method_choices = [(s.title, s.name) for s in METHODS.values()]
    slow = {"concurrency_id": SLOW_GROUP, "concurrency_limit": SLOW_CONCURRENCY, "api_visibility": "private"}
    with gr.Tab("Can you trust this map?", id="trust"):
        c["trust_owner"] = gr.State("")
        gr.Markdown(CAPTIONS["trust"], elem_classes="caption")
        gr.Markdown("### 1. Faithfulness: deletion and insertion")
        gr.Markdown(CAPTIONS["faithfulness"], elem_classes="caption")
        with gr.Row():
            c["trust_methods"] = gr.CheckboxGroup(method_choices, value=list(DEFAULT_FAITHFULNESS), label="Methods",
                                                  elem_id="trust-methods")
            c["trust_run"] = gr.Button("Measure", variant="primary", elem_id="trust-run", scale=0)
        c["trust_curves"] = picture("Deletion and insertion curves", show_label=False, elem_id="trust-curves")
        c["trust_table"] = gr.Dataframe([], headers=FAITHFULNESS_HEADERS, interactive=False, wrap=True,
                                        label="Ranking (best deletion first)", elem_id="trust-table")
        c["trust_summary"] = gr.Markdown(elem_id="trust-summary")

        gr.Markdown("### 2. Sanity check: does the map depend on what the network learnt?")
        gr.Markdown(CAPTIONS["sanity"], elem_classes="caption")
        with gr.Row():
            c["sanity_method"] = gr.Dropdown(method_choices, value="guided_backprop", label="Method",
                                             elem_id="sanity-method")
            c["sanity_run"] = gr.Button("Run the sanity check", variant="primary", elem_id="sanity-run", scale=0)
        c["sanity_verdict"] = gr.HTML(elem_id="sanity-verdict")
        gr.Markdown("The map at each stage, each scaled to its own maximum; below, how alike each is to the "
                    "original.", elem_classes="caption")
        c["sanity_strip"] = picture("Sanity check: the map at each stage", show_label=False, elem_id="sanity-strip")
        c["sanity_plot"] = picture("Sanity check: similarity to the original map", show_label=False,
                                   elem_id="sanity-plot")
        c["sanity_info"] = gr.Markdown(elem_id="sanity-info")

        gr.Markdown("### 3. Why A and not B?")
        gr.Markdown(CAPTIONS["contrast"], elem_classes="caption")
        with gr.Row():
            c["contrast_a"] = gr.Dropdown(H.target_choices(loaded, None), value="", filterable=True,
                                          label="Class A (type to search)", elem_id="contrast-a")
            c["contrast_b"] = gr.Dropdown(_b_choices(loaded, None), value="", filterable=True,
                                          label="Class B (type to search)", elem_id="contrast-b")
            c["contrast_method"] = gr.Dropdown(method_choices, value="gradcam", label="Method",
                                               elem_id="contrast-method")
            c["contrast_run"] = gr.Button("Explain A and not B", variant="primary", elem_id="contrast-run", scale=0)
        c["contrast_info"] = gr.Markdown(elem_id="contrast-info")
        with gr.Row(equal_height=False):
            c["contrast_alone"] = picture("A alone", show_label=False, elem_id="contrast-alone")
            c["contrast_diff"] = picture("A minus B", show_label=False, elem_id="contrast-diff")

    outputs = [*TrustHandlers.TRUST_OUTPUTS, "trust_owner"]
    page.follow(t.trust_new_image, ["session", "trust_owner"], [*outputs, "contrast_a", "contrast_b"])
    guard = page.event(t.trust_guard, outputs)

    def faithfulness_event(session: Any, methods: list[str],
                           progress: gr.Progress = gr.Progress()) -> dict[str, Any]:  # noqa: B008
        return t.faithfulness(session, methods, progress=H.progress_adapter(progress))

    def sanity_event(session: Any, method: str, progress: gr.Progress = gr.Progress()) -> dict[str, Any]:  # noqa: B008
        return t.sanity(session, method, progress=H.progress_adapter(progress))

    def contrast_event(session: Any, a: str, b: str, method: str,
                       progress: gr.Progress = gr.Progress()) -> dict[str, Any]:  # noqa: B008
        return t.contrast(session, a, b, method, progress=H.progress_adapter(progress))

    for trigger, fn, inputs, shown in (
            ("trust_run", faithfulness_event, ["session", "trust_methods"],
             ["trust_curves", "trust_table", "trust_summary"]),
            ("sanity_run", sanity_event, ["session", "sanity_method"],
             ["sanity_verdict", "sanity_strip", "sanity_plot", "sanity_info"]),
            ("contrast_run", contrast_event, ["session", "contrast_a", "contrast_b", "contrast_method"],
             ["contrast_alone", "contrast_diff", "contrast_info"])):
        on([c[trigger].click], fn, inputs, [*shown, "trust_owner"], show_progress_on=[c[shown[0]]], **slow).then(
            guard, [c["session"], c["trust_owner"]], [c[n] for n in outputs], api_visibility="private")


def add_occlusion_tab(page: Page, h: H.Handlers, pool: ModelPool) -> None:
    """The "Occlusion by hand" tab, and the ``/occlude`` API."""
    from .layout import picture

    t = TrustHandlers(h)
    c, on = page.c, page.on
    with gr.Tab("Occlusion by hand", id="occlusion"):
        c["occ_state"] = gr.State(None)
        gr.Markdown(CAPTIONS["occlusion"], elem_classes="caption")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                gr.Markdown("**What the network sees** (click to hide a square)")
                c["occ_view"] = picture("Occluded view", show_label=False, elem_id="occ-view")
            with gr.Column(scale=2, min_width=360):
                with gr.Row():
                    c["occ_size"] = gr.Slider(PATCH_SIZE.minimum, PATCH_SIZE.maximum, value=PATCH_SIZE.default,
                                              step=PATCH_SIZE.step, label=PATCH_SIZE.label, info=PATCH_SIZE.help,
                                              elem_id="occ-size")
                c["occ_fill"] = gr.Radio([(title, name) for name, title in FILLS.items()], value="mean",
                                         label="Fill", elem_id="occ-fill")
                with gr.Row():
                    c["occ_undo"] = gr.Button("Undo", elem_id="occ-undo")
                    c["occ_clear"] = gr.Button("Clear", elem_id="occ-clear")
                c["occ_top5"] = gr.HTML(elem_id="occ-top5")
                c["occ_info"] = gr.Markdown(elem_id="occ-info")
        # The API for scripts: image, patch centre and side -> the top-5, as /predict answers.
        with gr.Row(visible=False):
            api_image = gr.Image(type="filepath")
            api_x, api_y, api_size = gr.Number(), gr.Number(), gr.Number(value=int(PATCH_SIZE.default))
            api_label = gr.Label(num_top_classes=5)
            api_button = gr.Button()
    api_button.click(t.occlude_api, [api_image, api_x, api_y, api_size], [api_label], api_name="occlude",
                     preprocess=False)

    outputs = ["occ_state", "occ_view", "occ_top5", "occ_info"]

    def click(session: Any, state: Any, size: float, fill: str, evt: gr.SelectData) -> dict[str, Any]:
        index = evt.index if isinstance(evt.index, list | tuple) and len(evt.index) == 2 else (None, None)
        return t.occ_click(session, state, size, fill, *index)

    # Fast events in the default group: one forward pass each, never behind another visitor's slow work.
    page.follow(t.occ_new_image, ["session", "occ_state"], outputs)
    on([c["occ_view"].select], click, ["session", "occ_state", "occ_size", "occ_fill"], outputs,
       api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    on([c["occ_undo"].click], t.occ_undo, ["session", "occ_state"], outputs, api_visibility="private")
    on([c["occ_clear"].click], t.occ_clear, ["session", "occ_state"], outputs, api_visibility="private")
