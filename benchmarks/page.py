"""The page's handlers as a visitor's clicks call them: the ONLY benchmark module that knows ``alexnet_viz.ui``.

Everything the harness times through the page goes through the small functions here (``full_view``,
``layer_change``, ``channel_change``, ``attribution_restyle``, ``encode_png``); when the UI's handlers change
shape, this file is the one to adapt. Nothing here reads the page's text: steps are timed directly.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.rows import sig

ARCH = "torchvision"
CMAP = "viridis"


@dataclass
class Page:
    """The model, the handlers and an image in Gradio's upload folder, as the running app has them."""

    loaded: Any  # alexnet_viz.model.LoadedModel
    handlers: Any  # alexnet_viz.ui.Handlers
    upload: dict[str, str]  # the FileData dict Gradio hands to Handlers.analyze (preprocess=False)
    image_path: Path


def setup_page(image: Path) -> Page:
    import gradio as gr

    from alexnet_viz.ui import Handlers, ModelPool

    folder = Path(gr.utils.get_upload_folder()) / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    upload = folder / image.name
    shutil.copyfile(image, upload)
    pool = ModelPool(ARCH, "none", "cpu")
    return Page(loaded=pool.default, handlers=Handlers(pool), upload={"path": str(upload)}, image_path=upload)


def _pictures(outputs: Mapping[str, Any]) -> list[Any]:
    """The PIL images among a handler's outputs ({component name: value}; a ``gr.update`` carries its picture as
    ``value``): what the page shows as pictures."""
    from PIL import Image

    values = [o.get("value") if isinstance(o, dict) else o for o in outputs.values()]
    return [v for v in values if isinstance(v, Image.Image)]


@dataclass
class View:
    """What one upload puts on the page: the visitor's session, analyze's pictures, and every picture shown."""

    session: Any  # alexnet_viz.ui.Session
    shown: list[Any]  # the pictures Handlers.analyze returns
    pictures: list[Any]  # shown + the other conv layers' grids + the top-5 chart


def full_view(page: Page, parts: dict[str, list[float]] | None = None) -> View:
    """The full default view: Handlers.analyze (decode, preprocess, one forward with capture, saliency, the
    conv1 filters, the current layer's (conv1) grid, the overlays, the strongest-channels strip) plus the
    grids of the other four conv layers and the top-5 chart. ``parts`` collects where the time went."""
    from alexnet_viz import render

    t0 = time.perf_counter()
    out = page.handlers.analyze(page.upload, ARCH, "cpu", "conv1", False, CMAP, *VIEW_DEFAULTS, None)
    t1 = time.perf_counter()
    session = out["session"]
    analysis = session.analysis
    shown = _pictures(out)
    pictures = list(shown)
    for name in page.loaded.conv_layers:
        if name != "conv1":  # conv1 is the current layer: analyze drew its grid
            pictures.append(render.feature_grid(analysis.activations[name], cmap=CMAP)[0])
    t2 = time.perf_counter()
    pictures.append(render.top_k_chart([p.label for p in analysis.top_k], [p.probability for p in analysis.top_k]))
    t3 = time.perf_counter()
    if parts is not None:
        for key, value in (("handlers_analyze", t1 - t0), ("other_conv_grids", t2 - t1), ("top5_chart", t3 - t2),
                           *((f"analysis.{k}", v) for k, v in analysis.timings.items())):
            parts.setdefault(key, []).append(value)
    return View(session=session, shown=shown, pictures=pictures)


def layer_change(page: Page, session: Any, layer: str) -> list[Any]:
    """A new layer in the dropdown (Handlers.show_layer); its pictures."""
    return _pictures(page.handlers.show_layer(session, layer, False, CMAP, OPACITY))


def channel_change(page: Page, session: Any, layer: str, channel: int, alpha: float) -> list[Any]:
    """A new channel or opacity on the slider (Handlers.show_channel) of ``layer``; its pictures."""
    return _pictures(page.handlers.show_channel(session.with_scene(layers=(layer,)), channel, alpha))


def attribution_restyle(page: Page, session: Any, method: str, alpha: float) -> Any:
    """A new opacity on the attribution (Handlers.restyle) of a method already computed and on screen."""
    return page.handlers.restyle(session.with_scene(methods=(method,)), alpha, "auto")["attr_image"]


def encode_png(pictures: Sequence[Any], compress_level: int | None = None, *, gradio: bool = False) -> int:
    """PNG-encode pictures as the app sends them (``ui.as_png_files``: level ``ui.PNG_LEVEL``, hashed, written
    once per content into the upload folder), or with Gradio's own encoder (``gradio=True``: what
    ``gr.Image(format="png")`` does to a returned PIL image, Pillow's default level 6), or bare at
    ``compress_level``; returns the bytes written."""
    if gradio:
        from gradio.processing_utils import encode_pil_to_bytes

        return sum(len(encode_pil_to_bytes(picture, "png")) for picture in pictures)
    if compress_level is None:
        import gradio as gr

        from alexnet_viz.ui import cache_png

        folder = Path(gr.utils.get_upload_folder())
        return sum(Path(cache_png(picture, folder, "bench")).stat().st_size for picture in pictures)
    total = 0
    for picture in pictures:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=compress_level)
        total += buffer.tell()
    return total


@contextlib.contextmanager
def client_temp_in(folder: Path | str) -> Iterator[None]:
    """Python's temp folder is ``folder`` while this runs. gradio_client's download (``Client._download_file``)
    makes a folder of its own in ``tempfile.gettempdir()`` for every file it fetches and leaves it there, empty,
    once the file has moved to its download folder: load runs had left thousands of them in /tmp."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def with_encoderinfo(pictures: Sequence[Any], **info: Any) -> list[Any]:
    """Copies of ``pictures`` that carry ``encoderinfo``: Pillow >= 11.2 lets it override save()'s defaults, so
    Gradio's encoder then writes e.g. compress_level=1 without a change to Gradio."""
    out = []
    for picture in pictures:
        copy = picture.copy()
        copy.encoderinfo = dict(info)
        out.append(copy)
    return out


def breakdown(parts: Mapping[str, list[float]], decode_ms: float | None,
              saliency_ms: float | None) -> list[dict[str, Any]]:
    """Where the full default view's time goes, medians in ms: the library's own timings of the analysis
    (preprocess, forward), the decode and saliency rows measured on their own, and the rest of the handler."""
    med = {k: statistics.median(v) * 1000 for k, v in parts.items() if v}
    handler = med.get("handlers_analyze")
    inside = [decode_ms, med.get("analysis.preprocess"), med.get("analysis.forward"), saliency_ms]
    rest = handler - sum(v for v in inside if v is not None) if handler is not None else None
    items = [
        ("decode (load_image; its own row)", decode_ms),
        ("preprocess (resize, crop, normalise)", med.get("analysis.preprocess")),
        ("forward with capture (hooks on every layer)", med.get("analysis.forward")),
        ("saliency (Captum, forward + backward; its own row)", saliency_ms),
        ("rest of Handlers.analyze: drawing its panels, overlays, bookkeeping", rest),
        ("grids of conv2-conv5", med.get("other_conv_grids")),
        ("top-5 chart", med.get("top5_chart")),
    ]
    total = sum(v for _, v in items if v is not None)
    return [{"part": name, "ms": sig(v), "share": sig(v / total, 2) if v is not None and total else None}
            for name, v in items]


# --- the app's HTTP API, as a script (gradio_client) calls it ---------------------------------------------------

OPACITY = 0.7  # the channel and filter maps' opacity slider
VIEW_DEFAULTS = (OPACITY, "saliency", 0.6, "auto")  # opacity, method, attribution opacity, its colour map
# /analyze after the image: model, device, layer, sort, colours, then the view's defaults
ANALYZE_ARGS = (ARCH, "cpu", "conv1", False, CMAP, *VIEW_DEFAULTS)
SHOW_LAYER_ARGS = (False, CMAP, OPACITY)  # /show_layer after the layer: sort, colours, opacity


def channel_shown(show_layer_outputs: Sequence[Any]) -> int | None:
    """The channel ``/show_layer`` put on the page: its channel slider's new value (no text is read)."""
    slider = show_layer_outputs[3]
    value = slider.get("value") if isinstance(slider, dict) else slider
    return None if value is None else int(value)


def api_predict(client: Any, image: Path) -> Any:
    """``/predict``: image -> the top-5."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), api_name="/predict")


def api_explain(client: Any, image: Path, method: str) -> Any:
    """``/explain``: image, method -> the attribution overlay (the top-1 class, the method's defaults)."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), method, "", api_name="/explain")


def api_analyze(client: Any, image: Path) -> Any:
    """What an upload on the page runs: ``/analyze`` (the top-5, the status line) and then, as the page does
    once that succeeds, ``/panels`` (every picture, the default layer and colour map); the first's outputs."""
    from gradio_client import handle_file

    first = client.predict(handle_file(str(image)), *ANALYZE_ARGS, api_name="/analyze")
    client.predict(VIEW_DEFAULTS[1], api_name="/panels")
    return first


def api_upload(client: Any, image: Path, *, timeout: float) -> tuple[float, float, Any]:
    """An upload on the page: seconds until ``/analyze`` has given the top-5, seconds until ``/panels`` (which
    the page runs next) has given every picture, and ``/analyze``'s outputs (``[0]`` is the top-5)."""
    from gradio_client import handle_file

    t0 = time.perf_counter()
    result = client.submit(handle_file(str(image)), *ANALYZE_ARGS, api_name="/analyze").result(timeout=timeout)
    first = time.perf_counter() - t0
    client.submit(VIEW_DEFAULTS[1], api_name="/panels").result(timeout=max(0.1, timeout - first))
    return first, time.perf_counter() - t0, result


def top5_view(analysis: Any) -> str:
    """The top-5 exactly as the page draws it for ``analysis`` (compared whole with /analyze's first output:
    nothing is parsed)."""
    from alexnet_viz.ui.handlers import top5_html

    return top5_html(analysis)


def shows_top5(analyze_outputs: Sequence[Any], expected_view: str) -> bool:
    """Whether /analyze's outputs show the top-5 drawn by :func:`top5_view` (its first output is the top-5)."""
    return bool(analyze_outputs[0] == expected_view)


# --- the page's own events over raw HTTP ------------------------------------------------------------------------
# gradio_client refuses the events the page keeps private (its Explain with sliders, for one); the page itself
# calls them by index on Gradio's queue, and so does this visitor.

# the page's sliders where each method costs the most: the finest occlusion grid, IG without its early stop
MAX_SETTINGS: dict[str, dict[str, float]] = {
    "occlusion": {"window": 8, "stride": 4, "perturbations_per_eval": 64},
    "integrated_gradients": {"n_steps": 200, "internal_batch_size": 64, "tolerance": 0.0},
}


class PageTab:
    """One browser tab over raw HTTP: its own Gradio session, an upload, the page's events by index."""

    def __init__(self, url: str, *, timeout: float) -> None:
        import uuid

        import httpx

        self.url, self.timeout = url.rstrip("/"), timeout
        self.http = httpx.Client(timeout=timeout)
        self.session = uuid.uuid4().hex
        config = self.http.get(f"{self.url}/config").json()
        self.fn = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}

    def upload(self, image: Path) -> dict[str, Any]:
        with image.open("rb") as f:
            answer = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (image.name, f)})
        answer.raise_for_status()
        return {"path": answer.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": image.name}

    def run(self, api_name: str, data: list[Any]) -> dict[str, Any]:
        """Join the queue with the event ``api_name`` and wait for it; its last message (``success`` says how it
        ended). A refusal at the door (a full queue, a second slow job) raises."""
        from alexnet_viz.launcher import join_queue, until_completed

        answer = join_queue(self.http, self.url, self.fn[api_name], data, self.session)
        if answer.status_code != 200:
            raise RuntimeError(f"{api_name} refused: {answer.status_code} {answer.text[:200]}")
        return until_completed(self.http, self.url, self.session, answer.json()["event_id"], self.timeout)

    def api(self, api_name: str, data: list[Any]) -> list[Any]:
        """A public endpoint as a client calls it: the event, then every picture it answers with fetched (as
        gradio_client's download does); its outputs."""
        done = self.run(api_name, data)
        if not done.get("success"):
            raise RuntimeError(f"{api_name} failed: {str(done.get('output'))[:200]}")
        outputs: list[Any] = done["output"]["data"]
        for value in outputs:
            if isinstance(value, dict) and value.get("url"):
                self.http.get(value["url"]).raise_for_status()
        return outputs

    def analyze(self, image: Path) -> None:
        self.api("analyze", [self.upload(image), *ANALYZE_ARGS, None])

    def explain_at_max(self, method: str) -> dict[str, Any]:
        """The page's Explain (its private event) for ``method`` with every slider where it costs the most."""
        from alexnet_viz.ui.handlers import option_specs

        values = {name: o.default for name, o in option_specs().items()} | MAX_SETTINGS[method]
        return self.run("explain_event", [None, method, "", "conv5", 0.6, "auto", *values.values()])

    def close(self) -> None:
        self.http.close()
