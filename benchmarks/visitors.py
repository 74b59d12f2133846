"""Load and soak the launched app over loopback, and check that no visitor ever gets another one's result.

    python benchmarks/load.py                        # 8 clients x 25 requests, a 300-request soak, 40 new visitors
    python benchmarks/load.py --clients 4 --requests 10 --soak 60 --churn 10      # a quick look
    python benchmarks/load.py --burst 100 --json benchmarks/results/load.json    # the room arrives (burst.py)

It starts ``python app.py --weights none --device cpu --port P`` (its own GRADIO_TEMP_DIR and TORCH_HOME in
a temporary folder, loopback only) and drives it with ``gradio_client``:

1. **load**: ``--clients`` threads at once, each its own ``Client`` (its own Gradio session) and its own
   image, each making ``--requests`` mixed requests: the page's ``/analyze`` (one forward pass, every panel)
   and ``/show_layer`` (a layer change, from that visitor's cached tensors in ``gr.State``), and the
   script API's ``/predict`` and ``/explain`` (fast methods, and one integrated gradients per client at
   the app's default 32 steps).
2. **soak**: ``--soak`` more requests of the same mix by the same visitors (steady state: does memory or
   the upload cache keep growing?).
3. **churn**: ``--churn`` new visitors, each one ``/analyze`` (what a lecture hall of students does): what
   each visitor's ``gr.State`` costs the server until it expires.

Every response is checked against a locally computed expectation for *that client's* image (the server's
seeded model is bit-for-bit the one ``load_model("torchvision", "none", "cpu")`` builds here): the top-5
of ``/predict`` and ``/analyze``, the strongest channel that ``/show_layer`` reports for the layer (from
the visitor's session state), and the ``/explain`` overlay, which must be nearer to this client's own
expected overlay than to any other client's. Any mismatch counts as a cross-visitor leak.

Reported: errors, leaks, latency percentiles (p50/p90/p99/max) per endpoint and phase, the server's
VmRSS/VmHWM (``/proc/<pid>/status``) after start, after each phase, and the upload cache's files and bytes.
Every request has a time limit (``--request-timeout``) and the whole run a deadline (``--max-seconds``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alexnet_viz.launcher import free_port, launched_app, proc_status
from benchmarks import page

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
FAST_METHODS = ["saliency", "gradcam", "guided_backprop", "input_x_gradient", "deeplift"]
CHECKED_METHODS = ["saliency", "gradcam"]  # deterministic and cheap: their overlays are compared locally
LAYERS = ["conv2", "conv5", "relu3", "pool1"]
T = TypeVar("T")


# --- the server -------------------------------------------------------------------------------------------------


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    return {key: kb / 1024 for key, kb in proc_status(pid).items()}


def cache(folder: Path) -> dict[str, float]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return {"files": len(files), "MB": sum(p.stat().st_size for p in files) / 1e6}


# --- what each client must get back ----------------------------------------------------------------------------


@dataclass
class Expected:
    image: Path
    top5: list[tuple[str, float]]
    strongest: dict[str, int]  # layer -> the channel /show_layer shows first (largest mean activation)
    overlays: dict[str, Any] = field(default_factory=dict)  # method -> (224, 224, 3) uint8 array
    top5_view: str = ""  # the top-5 as the page draws it (page.top5_view)


def make_images(n: int, folder: Path) -> list[Path]:
    """n distinct pictures: the bundled photos first, then generated ones (smooth colour fields)."""
    import numpy as np
    from PIL import Image

    photos = sorted(p for p in ASSETS.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    images = []
    for i in range(n):
        if i < len(photos):
            images.append(photos[i])
            continue
        rng = np.random.default_rng(1000 + i)
        y, x = np.mgrid[0:256, 0:320] / 64.0
        channels = [np.sin(x * rng.uniform(0.5, 3) + rng.uniform(0, 6)) * np.cos(y * rng.uniform(0.5, 3))
                    for _ in range(3)]
        array = ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)
        path = folder / f"generated-{i}.png"
        Image.fromarray(array).save(path)
        images.append(path)
    return images


def prepare(n: int, tmp: Path, expect: Callable[[list[Path]], T]) -> tuple[list[Path], T]:
    """n pictures in ``tmp`` and what each must give (``expect``), computed here; the client's downloads go to
    ``tmp/client``, not the server's folder."""
    os.environ["GRADIO_TEMP_DIR"] = str(tmp / "client")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = make_images(n, tmp)
        print(f"computing the expected results of {len(images)} images locally ...", flush=True)
        return images, expect(images)


def expectations(images: list[Path]) -> list[Expected]:
    import numpy as np

    from alexnet_viz import render
    from alexnet_viz.analysis import analyze, explain
    from alexnet_viz.model import load_model

    loaded = load_model("torchvision", "none", "cpu")  # what `--weights none` gives the server
    out = []
    for path in images:
        result = analyze(loaded, path)
        strongest = {layer: int(result.activations[layer].mean(dim=(1, 2)).argmax()) for layer in LAYERS}
        expected = Expected(path, [(p.label, p.probability) for p in result.top_k], strongest,
                            top5_view=page.top5_view(result))
        for method in CHECKED_METHODS:
            attr = explain(loaded, result, method)
            overlay = render.attribution_overlay(result.view, attr.heatmap, alpha=0.6, signed=attr.signed)
            expected.overlays[method] = np.asarray(overlay.convert("RGB"), dtype=np.int16)
        out.append(expected)
    tops = [tuple(label for label, _ in e.top5) for e in out]
    if len(set(tops)) != len(tops):
        raise SystemExit("two clients' images have the same top-5: leaks could not be told apart")
    # how well each check can tell two clients apart (a leak between two indistinguishable ones goes unseen)
    pairs = list(itertools.combinations(range(len(out)), 2))
    layers = sum(any(out[a].strongest[k] != out[b].strongest[k] for k in LAYERS) for a, b in pairs)
    overlays = sum(all(float(np.abs(out[a].overlays[m] - out[b].overlays[m]).mean()) > 2.0 for m in CHECKED_METHODS)
                   for a, b in pairs)
    print(f"client pairs told apart: top-5 {len(pairs)}/{len(pairs)}, show_layer {layers}/{len(pairs)}, "
          f"explain overlays {overlays}/{len(pairs)}", flush=True)
    return out


# --- the clients --------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    pid: int | None = None  # the server's: its VmRSS is sampled every `every` requests
    every: int = 25
    rss: list[tuple[int, float]] = field(default_factory=list)  # (requests so far, VmRSS MB)

    def add(self, endpoint: str, seconds: float, error: str | None = None, leak: str | None = None) -> None:
        with self.lock:
            self.requests += 1
            if self.pid is not None and self.requests % self.every == 0:
                self.rss.append((self.requests, round(memory(self.pid)["VmRSS"], 1)))
            self.latencies[endpoint].append(seconds)
            if error:
                self.errors.append(f"{endpoint}: {error}")
            if leak:
                self.leaks.append(f"{endpoint}: {leak}")


def _same_top5(got: dict[str, Any], expected: list[tuple[str, float]]) -> bool:
    pairs = [(c["label"], c["confidence"]) for c in got["confidences"]]
    return ([label for label, _ in pairs] == [label for label, _ in expected]
            and all(abs(p - q) <= 1e-5 for (_, p), (_, q) in zip(pairs, expected, strict=True)))


class Visitor:
    """One browser tab's worth of requests: its own gradio_client session and its own image."""

    def __init__(self, url: str, index: int, expected: list[Expected], downloads: Path, timeout: float) -> None:
        from gradio_client import Client, handle_file

        self.index, self.all, self.mine = index, expected, expected[index]
        self.client = Client(url, verbose=False, download_files=str(downloads))
        self.file = handle_file(str(self.mine.image))
        self.timeout = timeout
        self.analysed = False
        self.methods = itertools.cycle(["integrated_gradients", *FAST_METHODS])
        self.layers = itertools.cycle(LAYERS)

    def call(self, tally: Tally, endpoint: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            result = self.client.submit(*args, api_name=f"/{endpoint}").result(timeout=self.timeout)
        except Exception as e:  # reported, counted; the run goes on
            tally.add(endpoint, time.perf_counter() - t0, error=f"{type(e).__name__}: {str(e)[:200]}")
            return None
        tally.add(endpoint, time.perf_counter() - t0)
        return result

    def leak(self, tally: Tally, endpoint: str, what: str) -> None:
        with tally.lock:
            tally.leaks.append(f"client {self.index} {endpoint}: {what}")

    def step(self, tally: Tally, n: int) -> None:
        kind = ["analyze", "show_layer", "predict", "explain", "show_layer", "predict"][n % 6]
        if kind == "show_layer" and not self.analysed:
            kind = "analyze"
        if kind == "analyze":
            out = self.call(tally, "analyze", self.file, *page.ANALYZE_ARGS)
            if out is not None:
                self.analysed = True
                if not page.shows_top5(out, self.mine.top5_view):
                    self.leak(tally, "analyze", "top-5 of another image")
                self.call(tally, "panels", page.VIEW_DEFAULTS[1])  # the pictures, as the page asks next
        elif kind == "show_layer":
            layer = next(self.layers)
            out = self.call(tally, "show_layer", layer, *page.SHOW_LAYER_ARGS)
            if out is not None and page.channel_shown(out) != self.mine.strongest[layer]:
                self.leak(tally, "show_layer", f"{layer}: channel {page.channel_shown(out)}, expected "
                                               f"{self.mine.strongest[layer]}")
        elif kind == "predict":
            out = self.call(tally, "predict", self.file)
            if out is not None and not _same_top5(out, self.mine.top5):
                self.leak(tally, "predict", "top-5 of another image")
        else:
            method = next(self.methods)
            out = self.call(tally, "explain", self.file, method, "")
            if out is not None:
                self.check_overlay(tally, method, out)

    def check_overlay(self, tally: Tally, method: str, path: str) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            got = np.asarray(im.convert("RGB"), dtype=np.int16)
        if got.shape != (224, 224, 3):
            self.leak(tally, "explain", f"{method}: shape {got.shape}")
            return
        if method not in CHECKED_METHODS:
            return
        distances = [float(np.abs(got - e.overlays[method]).mean()) for e in self.all]
        if int(np.argmin(distances)) != self.index or distances[self.index] > 1.0:
            self.leak(tally, "explain", f"{method}: nearest image {int(np.argmin(distances))}, "
                                        f"distance to own {distances[self.index]:.2f}")


def run_phase(visitors: list[Visitor], per_visitor: int, deadline: float, start: int = 0,
              pid: int | None = None) -> tuple[Tally, float]:
    """Each visitor in its own thread, `per_visitor` requests, all at once; stops issuing at the deadline."""
    tally = Tally(pid=pid)
    barrier = threading.Barrier(len(visitors))

    def work(v: Visitor) -> None:
        barrier.wait(timeout=60)
        for n in range(start, start + per_visitor):
            if time.monotonic() > deadline:
                tally.add("deadline", 0.0, error="the run's deadline passed; requests left undone")
                return
            v.step(tally, n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(v,), daemon=True) for v in visitors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 60))
    return tally, time.perf_counter() - t0


def churn(url: str, expected: list[Expected], n: int, downloads: Path, timeout: float, workers: int,
          deadline: float) -> tuple[Tally, float]:
    """n new visitors, `workers` at a time, each one /analyze: new sessions, each keeping its gr.State."""
    tally = Tally()
    todo = list(range(n))
    lock = threading.Lock()

    def work() -> None:
        while time.monotonic() < deadline:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            v = Visitor(url, i % len(expected), expected, downloads, timeout)
            v.step(tally, 0)  # analyze

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 60))
    return tally, time.perf_counter() - t0


def tracebacks(log: str) -> list[str]:
    """The server log's tracebacks, each up to its exception line (what a failed request left behind)."""
    found, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback"):
            current = [line]
        elif current is not None:
            current.append(line)
            if line and not line.startswith((" ", "\t")) and not line.startswith(("During handling", "The above")):
                found.append("\n".join(current[-12:]))
                current = None
    return found


# --- report -----------------------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]

    return {"n": len(ordered), "p50": pick(0.5), "p90": pick(0.9), "p95": pick(0.95), "p99": pick(0.99),
            "max": ordered[-1], "mean": statistics.fmean(ordered)}


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    return {
        "requests": tally.requests,
        "seconds": round(seconds, 1),
        "throughput_rps": round(tally.requests / seconds, 2) if seconds else None,
        "errors": len(tally.errors),
        "error_samples": tally.errors[:10],
        "leaks": len(tally.leaks),
        "leak_samples": tally.leaks[:10],
        "server_rss_MB_by_requests": tally.rss,
        "latency_s": {k: {m: round(v, 3) if isinstance(v, float) else v for m, v in percentiles(vals).items()}
                      for k, vals in sorted(tally.latencies.items()) if k != "deadline"},
    }


def table(name: str, s: dict[str, Any]) -> str:
    rows = [f"**{name}**: {s['requests']} requests in {s['seconds']} s ({s['throughput_rps']} req/s), "
            f"{s['errors']} errors, {s['leaks']} cross-visitor leaks", "",
            "| endpoint | n | p50 s | p90 s | p99 s | max s |", "|---|---:|---:|---:|---:|---:|"]
    for endpoint, p in s["latency_s"].items():
        rows.append(f"| {endpoint} | {p['n']} | {p['p50']:.2f} | {p['p90']:.2f} | {p['p99']:.2f} | {p['max']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent visitors in the load phase")
    parser.add_argument("--requests", type=int, default=25, help="requests per visitor in the load phase")
    parser.add_argument("--soak", type=int, default=300, help="requests in the soak phase (same visitors)")
    parser.add_argument("--churn", type=int, default=40, help="new visitors, one /analyze each")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--max-seconds", type=float, default=540.0, help="stop issuing requests after this")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--burst", type=int, default=0, metavar="N",
                        help="instead: N visitors, each with its own photo, upload within --window seconds; then "
                             "--heavy visitors run slow attributions while another one predicts (see burst.py)")
    parser.add_argument("--window", type=float, default=20.0, help="with --burst: the seconds the uploads spread over")
    parser.add_argument("--heavy", type=int, default=10, help="with --burst: visitors running slow attributions")
    args = parser.parse_args(argv)
    if args.burst:
        from benchmarks.burst import run_burst

        return run_burst(args)
    started = time.monotonic()
    deadline = started + args.max_seconds

    with tempfile.TemporaryDirectory(prefix="alexnet-viz-load-") as tmp_name, page.client_temp_in(tmp_name):
        tmp = Path(tmp_name)
        _, expected = prepare(args.clients, tmp, expectations)
        port = args.port or free_port()
        with launched_app(tmp, port=port, timeout=180) as app:
            url, proc = app.url, app.proc
            uploads = tmp / "uploads"
            report: dict[str, Any] = {
                "command": "python benchmarks/load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "server": {"cmd": f"python app.py --weights none --device cpu --port {port}"},
                "memory_MB": {"after_start": memory(proc.pid)},
                "cache": {"after_start": cache(uploads)},
            }
            print(f"server up at {url} (pid {proc.pid}), RSS {report['memory_MB']['after_start']}", flush=True)
            downloads = tmp / "downloads"
            visitors = [Visitor(url, i, expected, downloads, args.request_timeout) for i in range(args.clients)]

            load, seconds = run_phase(visitors, args.requests, deadline, pid=proc.pid)
            report["load"] = summary(load, seconds)
            report["memory_MB"]["after_load"] = memory(proc.pid)
            report["cache"]["after_load"] = cache(uploads)
            print(table("load", report["load"]), flush=True)

            per = max(1, args.soak // len(visitors))
            soak, seconds = run_phase(visitors, per, deadline, start=args.requests, pid=proc.pid)
            report["soak"] = summary(soak, seconds)
            report["memory_MB"]["after_soak"] = memory(proc.pid)
            report["cache"]["after_soak"] = cache(uploads)
            print(table("soak", report["soak"]), flush=True)
            print("server VmRSS (MB) every 25 soak requests:", " ".join(f"{v:.0f}" for _, v in soak.rss), flush=True)

            if args.churn:
                churned, seconds = churn(url, expected, args.churn, downloads, args.request_timeout,
                                         min(args.clients, 4), deadline)
                report["churn"] = summary(churned, seconds)
                report["memory_MB"]["after_churn"] = memory(proc.pid)
                report["cache"]["after_churn"] = cache(uploads)
                print(table(f"churn ({args.churn} new visitors)", report["churn"]), flush=True)
            alive = proc.poll() is None
            log = (tmp / "app.log").read_text(errors="replace")
        report["server"]["alive_at_end"] = alive
        report["server"]["tracebacks_in_log"] = log.count("Traceback")
        report["server"]["traceback_samples"] = tracebacks(log)[:3]
        shutil.rmtree(tmp / "downloads", ignore_errors=True)

    m, c = report["memory_MB"], report["cache"]
    report["soak_rss_growth_MB"] = round(m["after_soak"]["VmRSS"] - m["after_load"]["VmRSS"], 1)
    if "after_churn" in m:
        report["churn_rss_per_visitor_MB"] = round(
            (m["after_churn"]["VmRSS"] - m["after_soak"]["VmRSS"]) / max(1, args.churn), 2)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    print("\nmemory (MB):", json.dumps(m))
    print("upload cache:", json.dumps(c))
    print(f"soak RSS growth: {report['soak_rss_growth_MB']} MB; per new visitor: "
          f"{report.get('churn_rss_per_visitor_MB')} MB; server alive: {alive}; "
          f"tracebacks in its log: {report['server']['tracebacks_in_log']}; total {report['total_seconds']} s")
    for sample in report["server"]["traceback_samples"]:
        print("\nfrom the server's log:\n" + sample)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = any(report[p]["errors"] or report[p]["leaks"] for p in ("load", "soak", "churn") if p in report)
    return 1 if failed or not alive else 0
