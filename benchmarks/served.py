"""Through a launched server: cold start, the app's peak memory, and ours against a plain app over HTTP.

Each server is ``alexnet_viz.launcher.launched_app`` on 127.0.0.1 with its own upload folder and torch cache.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alexnet_viz.launcher import launched_app, proc_status
from benchmarks import page
from benchmarks.rows import make_row, ratio_row, sig
from benchmarks.timing import Stat

BASELINE = (sys.executable, "-m", "benchmarks.baseline_app")
# The HTTP ratios compare two medians that differ by a few milliseconds; 5-run medians of them spread by +-3% on
# this machine, so these rows take at least this many runs.
HTTP_MIN_RUNS = 15

# Endpoint rows over HTTP: key -> (label, the call, given a tab and the image). Each call is what a client does:
# upload the file, join the queue, read the event stream to the result, fetch the picture. Not gradio_client:
# its result() looks for new messages every 50 ms (gradio_client/utils.py, get_pred_from_sse), which rounds
# each request up to a 50 ms step and hides any difference smaller than that (both apps' /explain saliency
# read 164-165 ms through it while the handlers took 41 and 57 ms).
def _explain(method: str) -> Callable[[page.PageTab, Path], Any]:
    return lambda tab, image: tab.api("explain", [tab.upload(image), method, ""])  # the top-1 class


HTTP_STEPS: dict[str, tuple[str, Callable[[page.PageTab, Path], Any]]] = {
    "predict": ("/predict (top-5)", lambda tab, image: tab.api("predict", [tab.upload(image)])),
    "saliency": ("/explain saliency", _explain("saliency")),
    "gradcam": ("/explain Grad-CAM", _explain("gradcam")),
    "integrated_gradients": ("/explain integrated gradients (at each app's defaults)",
                             _explain("integrated_gradients")),
}


def _mb(kb: int | None) -> float | None:
    return sig(kb * 1024 / 1e6) if kb else None


def _first_minute(url: str, image: Path) -> list[str]:
    """A visitor's first minute through gradio_client: predict, analyze, four attributions."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    done = []
    page.api_predict(client, image)
    done.append("/predict")
    page.api_analyze(client, image)
    done.append("/analyze")
    for method in ("saliency", "gradcam", "integrated_gradients", "smoothgrad"):
        page.api_explain(client, image, method)
        done.append(f"/explain {method}")
    return done


def cold_start(*, runs: int, warmup: int, image: Path, env: Mapping[str, str] | None = None,
               measure_memory: bool = True) -> tuple[Stat, dict[str, Any]]:
    """`python app.py --weights none --device cpu` to /config answering 200, ``runs`` times; after the last,
    a visitor's first minute of requests, then the app's peak RSS (VmHWM)."""
    stat, memory = Stat(load=os.getloadavg()[0]), dict[str, Any]()
    for i in range(warmup + runs):
        with tempfile.TemporaryDirectory(prefix="alexnet-viz-bench-") as tmp, \
                launched_app(Path(tmp), env=env) as app:
            if i >= warmup:
                stat.wall.append(app.startup_s)
            if measure_memory and i == warmup + runs - 1:
                memory["idle_rss_mb"] = _mb(proc_status(app.proc.pid).get("VmRSS"))
                try:
                    memory["requests"] = _first_minute(app.url, image)
                except Exception as e:  # gradio_client missing or a request failed: still report
                    memory["requests_error"] = f"{type(e).__name__}: {e}"[:300]
                status = proc_status(app.proc.pid)
                memory["peak_rss_mb"] = _mb(status.get("VmHWM"))
                memory["rss_mb"] = _mb(status.get("VmRSS"))
        gc.collect()
    return stat, memory


def over_http(*, runs: int, warmup: int, image: Path) -> list[dict[str, Any]]:
    """Ours (``app.py --weights none --device cpu``) and ``baseline_app`` side by side on 127.0.0.1: each
    endpoint ``warmup`` + ``max(runs, HTTP_MIN_RUNS)`` times, the two servers taking turns call by call (a
    change in the machine's load hits both alike), each side one tab over raw HTTP (``page.PageTab``); rows of
    each side's medians and of ours / plain."""
    runs = max(runs, HTTP_MIN_RUNS)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="alexnet-viz-bench-http-") as tmp, \
            launched_app(Path(tmp) / "ours") as ours, \
            launched_app(Path(tmp) / "plain", command=BASELINE) as plain:
        tabs = {"ours": page.PageTab(ours.url, timeout=120), "plain": page.PageTab(plain.url, timeout=120)}
        for key, (label, call) in HTTP_STEPS.items():
            stats = {side: Stat(load=os.getloadavg()[0]) for side in tabs}
            for i in range(warmup + runs):
                for side, tab in tabs.items():
                    t0 = time.perf_counter()
                    call(tab, image)
                    if i >= warmup:
                        stats[side].wall.append(time.perf_counter() - t0)
            medians = {side: statistics.median(s.wall) * 1000 for side, s in stats.items()}
            rows.append(make_row(f"http_ours_{key}", f"over HTTP, ours: {label}", stat=stats["ours"]))
            rows.append(make_row(f"http_plain_{key}", f"over HTTP, plain Gradio + Captum defaults: {label}",
                                 stat=stats["plain"]))
            rows.append(ratio_row(f"http_ratio_{key}", f"over HTTP, ours / plain: {label}", medians["ours"],
                                  medians["plain"], ours_ms=sig(medians["ours"]), plain_ms=sig(medians["plain"])))
        for tab in tabs.values():
            tab.close()
    return rows
