"""How the page is served: limits for a public 2-core Space, the queue, launch settings and start-up.

Every number a visitor can feel or exhaust is here: upload size, queue length, how many events run at
once, how long a slow attribution may run, how long a visitor's results are kept, how often the upload
cache is swept.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ..images import IsolatedDecoder
from ..serving_limits import upload_limit_kwargs

__all__ = [
    "ASSETS",
    "CACHE_MAX_AGE_S",
    "CACHE_SWEEP_S",
    "CONCURRENCY",
    "DECODER",
    "MAX_FILE_SIZE",
    "QUEUE_SIZE",
    "RESULTS_BUDGET",
    "SESSION_TTL_S",
    "SLOW_LIMIT_S",
    "STATE_CAPACITY",
    "launch",
    "serve",
    "trim_freed_memory",
]

log = logging.getLogger("alexnet_viz")

ASSETS = Path(__file__).resolve().parents[2] / "assets"
MAX_FILE_SIZE = "20mb"  # the intake refuses more than 25 MB anyway; Gradio answers 413 above this
QUEUE_SIZE = 128  # waiting requests at most: a lecture hall of 100 uploading within 20 s all queue (LOAD.md)
CONCURRENCY = 2  # events running at once: a free Space has 2 cores
# Stopping (Ctrl-C, SIGTERM): connections still open once the page is closed get this long to end before
# uvicorn cancels them. Its default waits for them forever, Gradio's server.close() gives up after 5 s, and the
# interrupt's backstop (SHUTDOWN_BACKSTOP_S) used to end the process first, so that one open tab skipped every
# exit clean-up (the decoder's workers, the training tab's temp folder).
GRACEFUL_S = 1  # seconds (uvicorn takes whole ones)
SHUTDOWN_BACKSTOP_S = 8.0  # past GRACEFUL_S and Gradio's own 5 s wait: only an interrupt that got lost
SLOW_CONCURRENCY = 1  # slow attributions (integrated gradients, occlusion, ...) at once, in their own group
DECODER = IsolatedDecoder()  # worker processes for the server's uploads: a crash or a stall costs one request
# Events that only move values around (no model): queued like every event (api_open=False leaves no route
# outside the queue) but in a group without a limit, so they never wait behind the model's work.
INSTANT: dict[str, Any] = {"concurrency_id": "instant", "concurrency_limit": None}
SESSION_TTL_S = 2 * 3600  # forget a visitor's results after two hours
# Memory per visitor, by design rather than by expiry (measured: benchmarks, tests/test_room.py):
# - their analyses and attribution maps live in one cache of RESULTS_BUDGET bytes, least recently used out
#   first; an evicted visitor's next picture computes them again (one forward pass, ~0.1 s). An AlexNet
#   analysis (19 layers) is ~4.9 MB and a map ~0.8 MB, so the ~35 most recent visitors keep theirs at hand;
# - their tab's state: Gradio's copy of the page's settings (~0.2 MB, the 1,000 classes of the target list
#   included) and our Session (the 224 px picture and the settings, ~0.15 MB): ~0.8 MB of RSS in all. Past
#   STATE_CAPACITY tabs Gradio forgets the least recently used (its next click asks for an image again).
# Idle ~1.03 GB + cache ~0.27 GB + 800 x 0.8 MB stays under 2.0 GB however many visitors come.
RESULTS_BUDGET = 200 * 1024 * 1024
STATE_CAPACITY = 800
CACHE_SWEEP_S, CACHE_MAX_AGE_S = 1800, 3600  # every 30 min, delete uploads and pictures sent over an hour ago
# Computing time one request may spend in the slow attribution methods before it is stopped (between two
# batches). Gradio cannot stop a running sync handler: neither /cancel nor a closed tab ends its thread,
# which keeps the model lock; the sliders' extremes take minutes on 2 cores (occlusion with stride 4 and
# batch 1: 11 minutes, measured), so without this one visitor could hold the app that long.
SLOW_LIMIT_S = 60.0
SYSTEM_SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial",
               "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
TRIM_EVERY_S = 1.0  # how often the server looks at its size (trim_freed_memory)
TRIM_SLACK_MB = 32.0  # a trim once the process holds this much more than after the last trim
TRIM_AT_LEAST_S = 30.0  # and, when it holds more at all, at least this often


def trim_freed_memory(every_s: float = TRIM_EVERY_S, *, slack_mb: float = TRIM_SLACK_MB,
                      at_least_s: float = TRIM_AT_LEAST_S) -> threading.Thread | None:
    """From a daemon thread, have glibc hand the pages its heap arenas hold free back to the system
    (``malloc_trim(0)``) whenever the process has grown by ``slack_mb`` since the last trim (looked at every
    ``every_s`` seconds), and at least every ``at_least_s`` seconds while it has grown at all; None where there
    is no such call (not glibc).

    glibc keeps what a worker thread frees in that thread's arena (and raises its mmap threshold each time a
    large block is freed, so that activations and attribution batches soon come from the arenas): a server
    with a few worker threads then sits near 1.9 GB after 8 visitors at once instead of 1.2 GB. Trimming gives
    those pages back. Trimming on a clock (once a second) did that too, but the request after each trim paid
    for fresh pages again (/explain saliency and Grad-CAM 1.01-1.02x a plain Gradio app over HTTP); a visitor
    who keeps asking reuses the same freed pages, which do not make the process grow, so trimming on growth
    leaves those requests alone. A fixed 128 KiB mmap threshold, before that, made some requests pay ~50 ms
    (1.31x): benchmarks/LOAD.md."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, AttributeError, ValueError):
        return None

    def rss_mb() -> float:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * page_mb

    def loop() -> None:
        base, last = rss_mb(), time.monotonic()
        while True:
            time.sleep(every_s)
            now, rss = time.monotonic(), rss_mb()
            base = min(base, rss)  # memory handed back by other means (munmap) lowers the mark
            if rss - base >= slack_mb or (rss > base and now - last >= at_least_s):
                trim(0)
                base, last = rss_mb(), now

    thread = threading.Thread(target=loop, name="malloc-trim", daemon=True)
    thread.start()
    return thread


def serve(*, arch: str | None = None, weights: str = "imagenet", device: str = "auto",
          num_classes: int | None = None, labels: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          share: bool = False, presenter: bool = False, block: bool = True) -> gr.Blocks:
    """Load the model, build the page and serve it (``block=False`` returns once it serves: for tests)."""
    from .layout import build_demo
    from .state import ModelPool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trim_freed_memory()
    if block and threading.current_thread() is threading.main_thread():
        # `kill -TERM` (how Spaces, systemd and docker stop a server) ends the process at once by default,
        # leaving its decoder workers behind; handled as Ctrl-C is, Gradio closes the server and we go on below.
        # Python drops an exception raised where it cannot propagate (an import lock's callback, a __del__):
        # should this one land there, the timer ends the process anyway (its workers follow it by themselves).
        def interrupt(signum: int, _frame: object) -> None:
            backstop = threading.Timer(SHUTDOWN_BACKSTOP_S, os._exit, args=(128 + signum,))
            backstop.daemon = True
            backstop.start()
            raise KeyboardInterrupt

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, interrupt)
    DECODER.start()
    try:
        pool = ModelPool(arch, weights, device, num_classes=num_classes, labels=labels)
        if pool.default.weights.warning:
            log.warning(pool.default.weights.warning)
        demo = build_demo(pool, presenter=presenter)
        try:
            return launch(demo, host=host, port=port, share=share, block=block)
        except KeyboardInterrupt:  # before launch() got to wait for one: its server may be up already
            demo.close()
            raise
    finally:
        if block:  # served until interrupted (or failed to start): stop the workers before the interpreter ends
            DECODER.close()


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           queue_size: int = QUEUE_SIZE, concurrency: int = CONCURRENCY) -> gr.Blocks:
    """Queue and serve a page from ``build_demo`` with the public app's settings (tests use smaller queues)."""
    from .fairness import one_slow_job_per_visitor
    from .layout import CSS, SLOW_GROUP

    # api_open=False: no route runs a queued event outside the queue (POST /gradio_api/run/<name> would bypass
    # its size and concurrency limits); gradio_client goes through the queue and still works. Every event of
    # the page is queued (layout.py), so no event runs outside it at all.
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency, api_open=False)
    one_slow_job_per_visitor(demo._queue, {SLOW_GROUP})  # a second slow request of one tab is refused at once
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=gr.themes.Default(font=SYSTEM_SANS, font_mono=SYSTEM_MONO),  # no web fonts from a CDN
        css=CSS,
        show_error=False,  # our gr.Error sentences still show; tracebacks never do
        max_file_size=MAX_FILE_SIZE,
        enable_monitoring=False,  # /monitoring would otherwise answer anyone
        ssr_mode=False,  # no Node server: HF Spaces turn SSR on by default
        allowed_paths=[str(ASSETS)],
        footer_links=["gradio"],
        run_history=False,  # no runs page, no "connect a bucket" endpoint on a public app
        app_kwargs=upload_limit_kwargs(),  # one file per upload request (Gradio takes up to 1000)
        prevent_thread_lock=True,  # blocked below, once the server's shutdown is set
        state_session_capacity=STATE_CAPACITY,
        quiet=not block,
    )
    server = getattr(demo, "server", None)  # set by launch(): uvicorn's Server
    if server is not None:  # uvicorn reads it when it shuts down
        server.config.timeout_graceful_shutdown = GRACEFUL_S
    if block:
        _serve_until_interrupted(demo)
    return demo


def _serve_until_interrupted(demo: gr.Blocks) -> None:
    """Wait for Ctrl-C or SIGTERM, then close the page the way ``demo.close()`` does.

    Not ``demo.block_thread()``: on an interrupt it only stops the HTTP server, which then waits for every
    visitor's heartbeat stream (one per open tab; forever by uvicorn's default). ``close()`` also ends the queue
    and those streams, so that open tabs do not hold the exit up; a request still running when it comes is cut
    off after ``GRACEFUL_S`` (uvicorn logs that, with the request's stack).
    """
    try:
        while demo.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        log.info("stopping: closing the server")
        demo.close(verbose=False)
