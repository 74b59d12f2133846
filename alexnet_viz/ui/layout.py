"""The page: components by name, and the events that connect them to :class:`.handlers.Handlers`.

Handlers return ``{name: value}``; :func:`_event` turns that into ``{component: value}`` (what Gradio takes
from a function whose outputs are listed) and the pictures into PNG files (:mod:`.files`). Every event has
an ``api_name`` or is private; slow attributions run in a concurrency group of their own, so a visitor's
layer change or a new upload never waits behind another visitor's integrated gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import gradio as gr

from .. import export
from ..architectures import ARCHITECTURES
from ..attribution import METHODS
from ..model import available_devices
from . import handlers as H
from . import train_tab, trust_tab, units_tab
from .files import as_png_files
from .server import CACHE_MAX_AGE_S, CACHE_SWEEP_S, CONCURRENCY, INSTANT, SESSION_TTL_S, SLOW_CONCURRENCY
from .state import ModelPool

__all__ = ["CSS", "TABS", "Page", "build_demo", "picture"]

SLOW_GROUP = "slow-attributions"  # concurrency_id of the events that can take seconds to minutes
PANELS_GROUP = "panels"  # concurrency_id of drawing a new image's pictures (after its top-5)
PICTURES = ("filters", "filter_map", "grid", "channel_view", "strongest", "attr_image")


def _visitor(request: gr.Request | None) -> str | None:
    """The visitor's Gradio session (None when a handler is called without a request, as in tests)."""
    return getattr(request, "session_hash", None)

# Font sizes: 16 px body text on a laptop; presenter mode (a class on <body>, set by --presenter or the
# toggle) gives 24 px body text and 20 px labels, readable from the back of a lecture hall.
CSS = """
:root, .gradio-container {--text-md: 16px; --text-sm: 14px; --text-lg: 18px; --block-label-text-size: 14px;
  --block-info-text-size: 14px; --block-title-text-size: 16px; --input-text-size: 16px;
  --button-large-text-size: 17px; --section-header-text-size: 16px}
.gradio-container {font-size: var(--text-md)}
.gradio-container .prose, .gradio-container .md {font-size: var(--text-md)}
body.presenter, body.presenter .gradio-container {--text-md: 24px; --text-sm: 20px; --text-lg: 28px;
  --text-xl: 30px; --block-label-text-size: 20px; --block-info-text-size: 20px; --block-title-text-size: 22px;
  --input-text-size: 22px; --button-large-text-size: 24px; --button-small-text-size: 20px;
  --section-header-text-size: 22px; --checkbox-label-text-size: 20px}
body.presenter .gradio-container {max-width: 100% !important}
body.presenter #image {max-height: 240px}
body.presenter .caption {display: none}
.banner-warn {background: #b91c1c; color: white; padding: 10px 14px; border-radius: 8px; font-size: 1.05em}
.banner-warn code {color: white; background: #7f1d1d}
.banner-ok {background: #166534; color: white; padding: 8px 14px; border-radius: 8px}
.caption {opacity: .85}
.top5 {display: flex; flex-direction: column; gap: .35em; font-size: var(--text-md)}
.top5-row {display: grid; grid-template-columns: 1.6em minmax(8em, 2fr) 3fr 5.5em; align-items: center; gap: .5em}
.top5-rank {opacity: .6; text-align: right}
.top5-label {font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap}
.top5-bar {height: .9em; background: #e5e7eb; border-radius: 4px; overflow: hidden}
.top5-bar span {display: block; height: 100%; background: #1f77b4}
.top5-p {text-align: right; font-variant-numeric: tabular-nums}
#arch-table {max-height: none}
/* Pictures at their own size (640 px overlays, 720+ px grids: drawn large enough), never cropped or boxed;
   stretching the frame with CSS would break Gradio's click coordinates (tile and filter picks). */
.picture img {max-height: none !important; height: auto !important}
.picture .image-container, .picture .image-frame {height: auto !important; max-height: none !important}
/* A picture's label sits above it, not over its first tiles' numbers (nor a grid's first row). */
.picture:has([data-testid=block-label]) .image-container {padding-top: calc(var(--block-label-text-size) * 1.25 + 12px)}
/* Example thumbnails short enough that their titles show inside the gallery at every width (square 250 px
   thumbnails at 1920 px hid them below its 200 px). */
#examples .thumbnail-item {aspect-ratio: auto !important; height: 180px !important}
#examples .grid-wrap {height: auto !important; max-height: none !important}
"""

# The download starts in the browser once the zip exists: one click gives the zip of what is on screen.
DOWNLOAD_JS = """(f) => {
  if (!f || !f.url) return;
  const a = document.createElement('a'); a.href = f.url; a.download = f.orig_name || 'alexnet-viz-results.zip';
  document.body.appendChild(a); a.click(); a.remove();
}"""
PRESENTER_JS = "(on) => { document.body.classList.toggle('presenter', !!on); }"


class Page:
    """The page's components by name, and events wired to handlers that return ``{name: value}``.

    A tab module (``TABS`` below) gets the page, the handlers and the model pool, adds its components to
    ``page.c`` inside its own ``gr.Tab`` and connects them with ``page.on``; it reads the visitor's session
    as ``"session"`` and the image as ``"image"``, like every other tab. A panel that follows every new
    analysis registers its handler with ``page.follow``.
    """

    def __init__(self) -> None:
        self.c: dict[str, Any] = {}
        self.followers: list[tuple[Callable[..., Any], tuple[str, ...], tuple[str, ...]]] = []

    def follow(self, fn: Callable[..., Any], inputs: Sequence[str], outputs: Sequence[str]) -> None:
        """Run ``fn`` after every analysis that succeeds (a new image, example or model), as a step of its own.

        Each follower hangs off the analysis with ``.success``, never off a component's ``change``: Gradio's
        page (6.x) answers an ``always_last`` trigger that came while its event ran by dispatching the whole
        *trigger* again, which restarts every listener of that trigger, so several ``always_last`` listeners on
        one trigger (four once followed the status line) can restart one another for good, their panels
        spinning forever. A ``.success`` step is dispatched by itself, so a repeat restarts that step alone.
        ``tests/test_ui.py`` checks that no trigger with an ``always_last`` listener has a second listener.
        """
        self.followers.append((fn, tuple(inputs), tuple(outputs)))

    def after_analysis(self, analysis: Any) -> None:
        """Hang every follower off ``analysis`` (one event that writes the session)."""
        for fn, inputs, outputs in self.followers:
            analysis.success(self.event(fn, outputs), [self.c[n] for n in inputs], [self.c[n] for n in outputs],
                             api_visibility="private", trigger_mode="always_last")

    def event(self, fn: Callable[..., Any], outputs: Sequence[str]) -> Callable[..., Any]:
        """``fn`` returns {name: value}; Gradio gets {component: value}, pictures as PNG files. An empty dict
        (nothing to update) becomes a skip for every output: Gradio reads ``{}`` as one missing value."""
        c = self.c

        @wraps(fn)
        def keyed(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            if not isinstance(out, dict):
                return out
            if not out:
                return gr.skip() if len(outputs) == 1 else tuple(gr.skip() for _ in outputs)
            return {c[name]: value for name, value in out.items()}

        return as_png_files(keyed)

    def on(self, triggers: Any, fn: Callable[..., Any], inputs: Sequence[str], outputs: Sequence[str],
           **kwargs: Any) -> Any:
        return gr.on(triggers, self.event(fn, outputs), [self.c[n] for n in inputs], [self.c[n] for n in outputs],
                     **kwargs)


def _keyed_to(component: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``'s one result as ``{component: result}`` (what :func:`as_png_files` turns into a PNG file)."""

    @wraps(fn)
    def keyed(*args: Any, **kwargs: Any) -> Any:
        return {component: fn(*args, **kwargs)}

    return keyed


# Tabs added by modules of their own, after Architecture: each a function (page, handlers, pool) -> None that
# opens its gr.Tab and wires its events.
TABS: tuple[Callable[[Page, H.Handlers, ModelPool], None], ...] = (
    units_tab.add_units_tab, units_tab.add_inside_tab,
    trust_tab.add_trust_tab, trust_tab.add_occlusion_tab, train_tab.add_train_tab,
)


def picture(label: str, value: Any = None, **kwargs: Any) -> gr.Image:
    """An output picture: PNG (lossless maps), download and fullscreen buttons, no share-to-hub button."""
    return gr.Image(value, label=label, format="png", interactive=False, buttons=["download", "fullscreen"],
                    elem_classes=["picture"], **kwargs)


def build_demo(pool: ModelPool, *, presenter: bool = False) -> gr.Blocks:
    """The whole page; ``presenter`` starts it in presenter mode (large text, compact header)."""
    h = H.Handlers(pool)
    options = H.option_specs()  # the methods registered now, each with its sliders
    option_names = list(options)
    loaded = pool.default
    arch0, device0 = pool.default_key
    examples = H.examples()
    page = Page()
    c, on = page.c, page.on  # every component by the name the handlers use; events from {name: value} handlers
    _event = page.event

    with gr.Blocks(title="alexnet-viz", delete_cache=(CACHE_SWEEP_S, CACHE_MAX_AGE_S), analytics_enabled=False) as demo:
        c["session"] = gr.State(None, time_to_live=SESSION_TTL_S)

        # ---- header: the image, the top-5, the banner: compact, so a tab's main picture fits the first screen
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=280):
                c["image"] = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                                      height=240, elem_id="image")
            with gr.Column(scale=5, min_width=420):
                with gr.Row():
                    gr.Markdown("## alexnet-viz: what AlexNet computes for your image", elem_id="title")
                    c["presenter"] = gr.Checkbox(presenter, label="Presenter mode (large text)",
                                                 elem_id="presenter", scale=0, min_width=220)
                c["banner"] = gr.HTML(H.banner(loaded), elem_id="banner")
                c["top5"] = gr.HTML(H.top5_html(None), elem_id="top5")
                c["status"] = gr.Markdown("", elem_id="status")
                c["example_caption"] = gr.Markdown("", elem_id="example-caption")

        with gr.Accordion("Examples and model", open=not presenter, elem_id="setup") as setup:
            c["examples"] = gr.Gallery([(e.path, e.title) for e in examples], label="Examples (click one)",
                                       columns=len(examples) or 1, rows=1, height=200, allow_preview=False,
                                       object_fit="cover", elem_id="examples", buttons=[], interactive=False)
            with gr.Row():
                c["arch"] = gr.Dropdown(list(ARCHITECTURES), value=arch0, label="Architecture", elem_id="arch")
                c["device"] = gr.Dropdown(available_devices(), value=device0, label="Device", elem_id="device")

        with gr.Tabs():
            with gr.Tab("Filters", id="filters"):
                c["filters_caption"] = gr.Markdown(H.filters_caption(loaded), elem_classes="caption",
                                                   elem_id="filters-caption")
                with gr.Row(equal_height=False):
                    c["filters"] = picture("conv1 filters (click one)", export.filters_picture(loaded),
                                            elem_id="filters-grid", scale=1)
                    with gr.Column(scale=1):
                        c["filter_map"] = picture("This filter's feature map on the image", elem_id="filter-map")
                        c["filter_info"] = gr.Markdown(elem_id="filter-info")
                with gr.Accordion("Compare with an untrained copy (seed 0)", open=False) as untrained_box:
                    c["untrained_note"] = gr.Markdown(H.untrained_note(loaded), elem_classes="caption")
                    c["untrained"] = picture("untrained conv1 filters", elem_id="untrained-filters")
                c["untrained_box"] = untrained_box
            with gr.Tab("Feature maps", id="features"):
                c["layer_caption"] = gr.Markdown(H.CAPTIONS["features"], elem_classes="caption")
                with gr.Row():
                    c["layer"] = gr.Dropdown(loaded.layer_names, value="conv1", label="Layer", elem_id="layer")
                    c["sort"] = gr.Checkbox(False, label="Sort channels by mean activation", elem_id="sort")
                    c["cmap"] = gr.Dropdown(H.COLORMAPS, value="viridis", label="Colour map", elem_id="cmap")
                c["layer_info"] = gr.Markdown(elem_id="layer-info")
                with gr.Row(equal_height=False):
                    c["grid"] = picture(H.GRID_LABELS["conv"], scale=3, elem_id="layer-grid")
                    with gr.Column(scale=2):
                        c["channel"] = gr.Slider(0, 63, value=0, step=1, label="Channel", elem_id="channel")
                        c["opacity"] = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="Opacity", elem_id="opacity")
                        c["channel_view"] = picture("Channel over the image", elem_id="channel-view")
                        c["channel_info"] = gr.Markdown(elem_id="channel-info")
                gr.Markdown(H.CAPTIONS["strongest"], elem_classes="caption")
                c["strongest"] = picture("Strongest channels per conv layer", elem_id="strongest")
            with gr.Tab("Saliency", id="saliency"):
                gr.Markdown(H.CAPTIONS["saliency"], elem_classes="caption")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=320):
                        c["method"] = gr.Dropdown([(s.title, s.name) for s in METHODS.values()], value="saliency",
                                                  label="Method", elem_id="method")
                        c["method_caption"] = gr.Markdown(METHODS["saliency"].caption, elem_classes="caption")
                        c["target"] = gr.Dropdown(H.target_choices(loaded, None), value="",
                                                  label="Class to explain (type to search all classes)",
                                                  filterable=True, elem_id="target")
                        c["cam_layer"] = gr.Dropdown(loaded.conv_layers, value=loaded.conv_layers[-1],
                                                     label="Grad-CAM layer", visible=False, elem_id="cam-layer")
                        for name, o in options.items():
                            c[f"opt_{name}"] = gr.Slider(o.minimum, o.maximum, value=o.default, step=o.step,
                                                         label=o.label, info=o.help, visible=False,
                                                         elem_id=f"opt-{name}")
                        with gr.Row():
                            c["attr_alpha"] = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Opacity",
                                                        elem_id="attr-alpha")
                            c["attr_cmap"] = gr.Dropdown(["auto", *H.COLORMAPS], value="auto", label="Colour map",
                                                         elem_id="attr-cmap")
                        c["run"] = gr.Button("Explain", variant="primary", elem_id="explain")
                    with gr.Column(scale=3):
                        c["attr_image"] = picture("Attribution", elem_id="attribution")
                        c["attr_info"] = gr.Markdown(elem_id="attribution-info")
                gr.Markdown(H.CAPTIONS["compare"], elem_classes="caption")
                with gr.Row():
                    c["compare_methods"] = gr.CheckboxGroup(
                        [(s.title, s.name) for s in METHODS.values()],
                        value=["saliency", "guided_backprop", "gradcam", "integrated_gradients"], label="Methods",
                        elem_id="compare-methods")
                    c["compare_run"] = gr.Button("Compare", elem_id="compare", scale=0)
                c["compare_image"] = picture("Side by side", elem_id="compare-image", show_label=False)
            with gr.Tab("Architecture", id="architecture"):
                gr.Markdown(H.CAPTIONS["architecture"], elem_classes="caption")
                arch0_view = h.architecture(arch0)
                c["arch_text"] = gr.Markdown(arch0_view["arch_text"], elem_id="arch-text")
                # The table on the page's full width (beside the chart, its last columns scrolled out of sight at
                # 1280x720 and in presenter mode), every row shown; the chart below it.
                c["arch_table"] = gr.Dataframe(
                    arch0_view["arch_table"], headers=["layer", "type", "config", "output", "params", "% params",
                                                       "MACs", "% MACs"],
                    interactive=False, wrap=True, max_height=4000, elem_id="arch-table")
                c["arch_chart"] = picture("Share of parameters vs compute", arch0_view["arch_chart"],
                                          show_label=False, elem_id="arch-chart")
            for add_tab in TABS:
                add_tab(page, h, pool)
            with gr.Tab("Download", id="download"):
                gr.Markdown("Everything on screen now as one zip: every picture and a `result.json` with the "
                            "predictions and every setting needed to draw them again.")
                c["download"] = gr.Button("Download results (zip)", elem_id="download-zip", variant="primary")
                c["zip"] = gr.File(label="Last download", interactive=False, elem_id="zip-file")

        # API-only endpoints for scripts (gradio_client): invisible components, documented in README.
        with gr.Row(visible=False):
            api_image = gr.Image(type="filepath")
            api_method = gr.Textbox()
            api_target = gr.Textbox()
            api_label = gr.Label(num_top_classes=5)
            api_overlay = gr.Image(format="png", label="Overlay")
            api_predict = gr.Button()
            api_explain = gr.Button()

        # ---- events ---- (the API endpoints first, so that they get their names before any handler does)
        # Every event is queued (no route runs one outside the queue: tests/test_room.py); those that only move
        # a value or a visibility are in a group without a limit, so they never wait behind an analysis.
        instant = INSTANT
        api_predict.click(h.predict_api, [api_image], [api_label], api_name="predict", preprocess=False)
        api_explain.click(as_png_files(_keyed_to(api_overlay, h.explain_api)), [api_image, api_method, api_target],
                          [api_overlay], api_name="explain", preprocess=False, concurrency_id=SLOW_GROUP,
                          concurrency_limit=SLOW_CONCURRENCY)

        view_inputs = ["layer", "sort", "cmap", "opacity", "method", "attr_alpha", "attr_cmap", "session"]
        first_outputs = ["session", "top5", "banner", "status", "example_caption", "layer", "cam_layer", "target",
                         "compare_image", "examples"]
        panel_outputs = ["session", "status", "method", "filters", "filter_map", "filter_info", "filters_caption",
                         "grid", "layer_info", "layer_caption", "channel", "opacity", "channel_view", "channel_info",
                         "strongest", "attr_image", "attr_info"]
        layer_outputs = ["session", "grid", "layer_info", "layer_caption", "channel", "opacity", "channel_view",
                         "channel_info"]
        filter_outputs = ["session", "filters", "filter_map", "filter_info", "filters_caption"]

        def first_look(image: Any, arch: str, device: str, *view: Any,
                       request: gr.Request | None = None) -> dict[str, Any]:
            return h.first_look(image, arch, device, *view, visitor=_visitor(request))

        def panels(session: Any, method: str, request: gr.Request | None = None) -> dict[str, Any]:
            return h.panels(session, method, visitor=_visitor(request))

        def then_panels(analysis: Any, **kwargs: Any) -> None:
            """After a new analysis: the followers of every tab, and the pictures in a group of their own, so
            that the next visitors' top-5 never waits behind this visitor's pictures."""
            page.after_analysis(analysis)
            analysis.success(_event(panels, panel_outputs), [c["session"], c["method"]],
                             [c[n] for n in panel_outputs], concurrency_id=PANELS_GROUP,
                             concurrency_limit=CONCURRENCY, trigger_mode="always_last",
                             show_progress_on=[c[n] for n in PICTURES], **kwargs)

        # A new image: the top-5 first, then the pictures. We decode uploads ourselves (preprocess=False) so that
        # our intake, not Gradio, owns every error message. Progress (and, on a refused file, Gradio's "Error"
        # badge) on the predictions only; the sentence itself is the toast.
        # Not the image's `change`: Gradio 6.31 fires it twice, with the same file, when an upload replaces an
        # image (tests/test_page_walk.py counts the events), so every new picture was analysed and drawn twice.
        # `upload` fires once for a file, a webcam photo and a paste; an example click sets the image itself
        # (no event of the image's) and runs the same handler after it.
        look_inputs = ["image", "arch", "device", *view_inputs]

        def look_after(step: Any, **kwargs: Any) -> None:
            """Once ``step`` has succeeded (it set the image or the model): the first look, then the panels."""
            then_panels(step.success(_event(first_look, first_outputs), [c[n] for n in look_inputs],
                                     [c[n] for n in first_outputs], api_visibility="private", preprocess=False,
                                     show_progress_on=[c["top5"]], **kwargs), api_visibility="private")

        uploaded = on([c["image"].upload], first_look, look_inputs, first_outputs, api_name="analyze",
                      preprocess=False, trigger_mode="always_last", show_progress_on=[c["top5"]])
        then_panels(uploaded, api_name="panels", api_visibility="undocumented")
        # A refused file leaves the box empty (Gradio would keep showing it, as a broken picture), ready for the
        # next try; the page keeps the last image that was analysed.
        uploaded.failure(lambda: None, None, [c["image"]], api_visibility="private", **instant)
        picked = on([c["examples"].select], h.pick_example, [], ["image", "example_caption"],
                    api_visibility="private", **instant)
        look_after(picked, trigger_mode="always_last")
        on([c["layer"].input, c["sort"].input, c["cmap"].input], h.show_layer,
           ["session", "layer", "sort", "cmap", "opacity"], [*layer_outputs, "strongest"], api_name="show_layer")
        on([c["channel"].release, c["opacity"].release], h.show_channel, ["session", "channel", "opacity"],
           [*layer_outputs, *filter_outputs[1:]], api_name="show_channel")
        # A click's progress (and any refusal's "Error" badge) on the picture it draws, never on the one clicked:
        # Gradio hides a component's picture under that badge.
        on([c["grid"].select], h.pick_tile, ["session"], layer_outputs, api_visibility="private",
           show_progress_on=[c["channel_view"]])
        on([c["filters"].select], h.pick_filter, ["session", "arch", "device"], filter_outputs,
           api_visibility="private", show_progress_on=[c["filter_map"]])

        option_inputs = [f"opt_{n}" for n in option_names]

        def explain_event(session: Any, method: str, target: str, cam_layer: str, alpha: float, cmap: str,
                          *values: float, progress: gr.Progress = gr.Progress()) -> dict[str, Any]:  # noqa: B008
            return h.explain(session, method, target, cam_layer, alpha, cmap, dict(zip(option_names, values,
                                                                                      strict=True)),
                             progress=H.progress_adapter(progress))

        def compare_event(session: Any, methods: list[str], target: str, cam_layer: str, alpha: float,
                          *values: float, progress: gr.Progress = gr.Progress()) -> dict[str, Any]:  # noqa: B008
            return h.compare(session, methods, target, cam_layer, alpha, dict(zip(option_names, values, strict=True)),
                             progress=H.progress_adapter(progress))

        def option_visibility(method: str) -> dict[str, Any]:
            spec = METHODS.get(method)
            used = {o.name for o in spec.options} if spec else set()
            return {"cam_layer": gr.update(visible=bool(spec and spec.layer_based)),
                    **{f"opt_{n}": gr.update(visible=n in used) for n in option_names},
                    "method_caption": spec.caption if spec else ""}

        on([c["method"].change], option_visibility, ["method"], ["cam_layer", *option_inputs, "method_caption"],
           api_visibility="private", **instant)
        on([c["run"].click], explain_event, ["session", "method", "target", "cam_layer", "attr_alpha", "attr_cmap",
                                             *option_inputs], ["attr_image", "attr_info", "session"],
           api_visibility="private", concurrency_id=SLOW_GROUP, concurrency_limit=SLOW_CONCURRENCY)
        on([c["attr_alpha"].release, c["attr_cmap"].input], h.restyle, ["session", "attr_alpha", "attr_cmap"],
           ["attr_image", "attr_info", "session"], api_visibility="private")
        on([c["compare_run"].click], compare_event, ["session", "compare_methods", "target", "cam_layer",
                                                     "attr_alpha", *option_inputs], ["compare_image", "session"],
           api_visibility="private", concurrency_id=SLOW_GROUP, concurrency_limit=SLOW_CONCURRENCY)
        # A switch that fails (the model does not load) keeps the visitor's model: the dropdowns go back to it
        # and nothing is re-analysed.
        switched = on([c["arch"].input, c["device"].input], h.switch_model, ["arch", "device", "session"],
                      ["banner", "target", "filters", "filters_caption", "untrained_box", "untrained",
                       "untrained_note"], api_visibility="private")
        arch_outputs = ["arch_table", "arch_chart", "arch_text"]
        look_after(switched.success(_event(h.architecture, arch_outputs), [c["arch"]], [c[n] for n in arch_outputs],
                                    api_visibility="private"))
        switched.failure(_event(h.current_model, ["arch", "device"]), [c["session"]], [c["arch"], c["device"]],
                         api_visibility="private", **instant)
        untrained_box.expand(_event(h.untrained_filters, ["untrained", "untrained_note"]), [c["session"]],
                             [c["untrained"], c["untrained_note"]], api_visibility="private")
        on([c["download"].click], h.download, ["session"], ["zip"], api_visibility="private").success(
            None, [c["zip"]], None, js=DOWNLOAD_JS)
        c["presenter"].change(None, [c["presenter"]], None, js=PRESENTER_JS)
        c["presenter"].input(lambda on: gr.update(open=not on), [c["presenter"]], [setup], api_visibility="private",
                             **instant)
        demo.load(None, [c["presenter"]], None, js=PRESENTER_JS)
    return demo

