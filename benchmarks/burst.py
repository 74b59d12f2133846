"""The room arrives (``python benchmarks/load.py --burst N``): N visitors, each with a photo of their own,
upload within ``--window`` seconds; then ``--heavy`` visitors run the slow attributions while another one
keeps asking ``/predict``.

Targets (issue #11, for N=100 on the 2-core machine): none refused, p95 upload-to-top-5 <= 8 s, p95
upload-to-all-panels <= 20 s, and while the heavy visitors run, the other visitor's ``/predict`` p95 <= 3 s.
Every visitor's top-5 is checked against the one computed here for its own photo. Loopback only; every
request has ``--request-timeout`` and the run ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alexnet_viz.launcher import launched_app
from benchmarks import page
from benchmarks.visitors import memory, percentiles, prepare

TARGETS = {  # name -> (limit, what)
    "refused": (0, "visitors refused or failed"),
    "top5_p95_s": (8.0, "p95 upload to top-5 (s)"),
    "panels_p95_s": (20.0, "p95 upload to all panels (s)"),
    "predict_under_heavy_p95_s": (3.0, "p95 /predict while the heavy visitors run (s)"),
}
HEAVY_METHODS = ("occlusion", "integrated_gradients")  # the page's Explain, at page.MAX_SETTINGS


def expected_top5(images: list[Path]) -> list[str]:
    """Each image's top-5 as the page draws it (page.top5_view), computed here."""
    from alexnet_viz.analysis import analyze
    from alexnet_viz.model import load_model

    loaded = load_model("torchvision", "none", "cpu")  # what `--weights none` gives the server
    return [page.top5_view(analyze(loaded, path)) for path in images]


def _threads(work: Callable[[int], None], n: int, deadline: float) -> None:
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))


def arrivals(url: str, images: list[Path], top5: list[str], *, window: float, timeout: float,
             deadline: float, folder: Path) -> dict[str, Any]:
    """Each visitor opens the page (a Client), waits for its moment in the window, uploads, watches the panels."""
    from gradio_client import Client

    rng = random.Random(0)  # noqa: S311 (arrival times, not secrets)
    moments = sorted(rng.uniform(0, window) for _ in images)
    clients = [Client(url, verbose=False, download_files=str(folder / f"v{i}")) for i in range(len(images))]
    first: list[float] = []
    panels: list[float] = []
    failed: list[str] = []
    wrong: list[int] = []
    lock = threading.Lock()
    start = time.monotonic() + 1.0

    def visit(i: int) -> None:
        time.sleep(max(0.0, start + moments[i] - time.monotonic()))
        if time.monotonic() > deadline:
            with lock:
                failed.append(f"visitor {i}: the run's deadline passed before its upload")
            return
        try:
            t_first, t_done, out = page.api_upload(clients[i], images[i], timeout=timeout)
        except Exception as e:  # a refusal (queue full), a time-out or a server error: counted, reported
            with lock:
                failed.append(f"visitor {i}: {type(e).__name__}: {str(e)[:200]}")
            return
        with lock:
            first.append(t_first)
            panels.append(t_done)
            if not page.shows_top5(out, top5[i]):
                wrong.append(i)

    t0 = time.perf_counter()
    _threads(visit, len(images), deadline)
    return {"visitors": len(images), "window_s": window, "seconds": round(time.perf_counter() - t0, 1),
            "served": len(panels), "failed": len(failed), "failed_samples": failed[:10], "wrong_top5": wrong[:10],
            "top5_s": _rounded(percentiles(first)) if first else None,
            "panels_s": _rounded(percentiles(panels)) if panels else None}


def heavy_and_predict(url: str, image: Path, *, heavy: int, predicts: int, timeout: float, deadline: float,
                      folder: Path) -> dict[str, Any]:
    """``heavy`` visitors, each in a tab of their own, analyse ``image`` and then press the page's Explain over and
    over, alternating occlusion and integrated gradients with every slider where it costs the most
    (``page.MAX_SETTINGS``); meanwhile one more visitor asks ``/predict`` ``predicts`` times, 0.5 s apart. The
    heavy ones stop when it is done (or at the deadline). A heavy visitor's Explain refused because their own
    previous one still runs (one slow job per visitor) is counted apart: it is the server's rule, not a failure."""
    from gradio_client import Client

    stop = threading.Event()
    heavy_done: list[float] = []
    heavy_failed: list[str] = []
    refused = [0]
    stopped: list[float] = []  # stopped at the server's time limit (SLOW_LIMIT_S), as it should be
    lock = threading.Lock()

    def slow(i: int) -> None:
        tab = page.PageTab(url, timeout=timeout)
        try:
            tab.analyze(image)
            n = i
            while not stop.is_set() and time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    done = tab.explain_at_max(HEAVY_METHODS[n % len(HEAVY_METHODS)])
                except Exception as e:
                    with lock:
                        if "still running" in str(e):  # fairness.BUSY
                            refused[0] += 1
                        else:
                            heavy_failed.append(f"{type(e).__name__}: {str(e)[:200]}")
                    time.sleep(0.5)
                else:
                    with lock:
                        if done.get("success"):
                            heavy_done.append(time.perf_counter() - t0)
                        elif "was stopped" in str(done.get("output")):  # the server's time limit per request
                            stopped.append(time.perf_counter() - t0)
                        else:
                            heavy_failed.append(str(done.get("output"))[:200])
                n += 1
        except Exception as e:
            with lock:
                heavy_failed.append(f"{type(e).__name__}: {str(e)[:200]}")
        finally:
            tab.close()

    workers = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(heavy)]
    for w in workers:
        w.start()
    time.sleep(5.0)  # let the slow requests fill the queue first
    client = Client(url, verbose=False, download_files=str(folder / "p"))
    latencies: list[float] = []
    failed: list[str] = []
    for _ in range(predicts):
        if time.monotonic() > deadline:
            failed.append("the run's deadline passed")
            break
        t0 = time.perf_counter()
        try:
            page.api_predict(client, image)
            latencies.append(time.perf_counter() - t0)
        except Exception as e:
            failed.append(f"{type(e).__name__}: {str(e)[:200]}")
        time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join(max(1.0, min(timeout, deadline - time.monotonic())))
    return {"heavy_visitors": heavy, "heavy_methods": list(HEAVY_METHODS),
            "heavy_settings": {m: page.MAX_SETTINGS[m] for m in HEAVY_METHODS},
            "heavy_requests": len(heavy_done), "heavy_refused_own_job_running": refused[0],
            "heavy_stopped_at_time_limit": len(stopped),
            "heavy_failed": len(heavy_failed), "heavy_failed_samples": heavy_failed[:5],
            "heavy_s": _rounded(percentiles(heavy_done)) if heavy_done else None,
            "predicts": len(latencies), "predict_failed": len(failed), "predict_failed_samples": failed[:5],
            "predict_s": _rounded(percentiles(latencies)) if latencies else None}


def _rounded(p: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()}


def p95(values: dict[str, Any] | None) -> float | None:
    return None if values is None else values.get("p95")


def verdicts(room: dict[str, Any], busy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    measured = {"refused": room["failed"] + len(room["wrong_top5"]), "top5_p95_s": p95(room["top5_s"]),
                "panels_p95_s": p95(room["panels_s"]), "predict_under_heavy_p95_s": p95(busy["predict_s"])}
    if busy["predict_failed"]:
        measured["predict_under_heavy_p95_s"] = None  # a failed /predict is a miss, whatever the others took
    return {name: {"target": limit, "what": what, "measured": measured[name],
                   "pass": measured[name] is not None and measured[name] <= limit}
            for name, (limit, what) in TARGETS.items()}


def run_burst(args: argparse.Namespace) -> int:
    started, load_start = time.monotonic(), [round(v, 2) for v in os.getloadavg()]
    deadline = started + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="alexnet-viz-burst-") as tmp_name, page.client_temp_in(tmp_name):
        tmp = Path(tmp_name)
        images, top5 = prepare(args.burst, tmp, expected_top5)
        with launched_app(tmp, port=args.port or None, timeout=180) as app:
            print(f"server up at {app.url} (pid {app.proc.pid}); {args.burst} visitors upload within "
                  f"{args.window:g} s", flush=True)
            room = arrivals(app.url, images, top5, window=args.window, timeout=args.request_timeout,
                            deadline=deadline, folder=tmp / "dl")
            after_room = memory(app.proc.pid)
            print(json.dumps(room), flush=True)
            busy = heavy_and_predict(app.url, images[0], heavy=args.heavy, predicts=20, timeout=args.request_timeout,
                                     deadline=deadline, folder=tmp / "dl")
            print(json.dumps(busy), flush=True)
            report: dict[str, Any] = {
                "command": f"python benchmarks/load.py --burst {args.burst} --window {args.window:g} "
                           f"--heavy {args.heavy}",
                "cpus": os.cpu_count(), "load_average_start": load_start,
                "load_average_end": [round(v, 2) for v in os.getloadavg()],
                "room": room, "busy": busy,
                "memory_MB": {"after_room": after_room, "after_busy": memory(app.proc.pid)},
                "server_alive_at_end": app.proc.poll() is None,
                "tracebacks_in_log": app.log_text().count("Traceback"),
            }
    report["targets"] = verdicts(room, busy)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    print(f"\nburst of {args.burst} visitors, {args.heavy} heavy ({report['total_seconds']} s in all):")
    for v in report["targets"].values():
        print(f"- {v['what']}: {v['measured']} (target <= {v['target']}): {'pass' if v['pass'] else 'MISS'}")
    if args.json:
        data: dict[str, Any] = {}
        if args.json.exists():
            data = json.loads(args.json.read_text(encoding="utf-8"))
        data[f"burst_{args.burst}"] = report
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0 if all(v["pass"] for v in report["targets"].values()) else 1
