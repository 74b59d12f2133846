"""The Gradio app: the only code that imports gradio, split by job.

- :mod:`.state`: the shared models (:class:`ModelPool`) and each visitor's :class:`Session`
- :mod:`.handlers`: everything the page does, as plain functions returning ``{component name: value}``
- :mod:`.files`: the pictures the page sends as PNG files, and the Download zip's path
- :mod:`.layout`: the components and the events (``build_demo``)
- :mod:`.server`: limits, queue, launch settings (``serve``, ``launch``)

What each panel draws, and the files a download holds, come from :mod:`alexnet_viz.export`, shared with the CLI.
"""

from __future__ import annotations

import os

# Offline-first: no analytics, no hub calls. Set before gradio (and huggingface_hub) are imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .files import PNG_LEVEL, as_png_files, cache_png
from .handlers import Handlers, _Bounded, _current_event, friendly, option_specs, upload_path
from .layout import build_demo
from .server import (
    ASSETS,
    CACHE_MAX_AGE_S,
    CACHE_SWEEP_S,
    CONCURRENCY,
    DECODER,
    MAX_FILE_SIZE,
    QUEUE_SIZE,
    SESSION_TTL_S,
    SLOW_LIMIT_S,
    launch,
    serve,
    trim_freed_memory,
)
from .state import ModelPool, Session

_upload_path = upload_path  # the name the security tests use

__all__ = [
    "ASSETS",
    "CACHE_MAX_AGE_S",
    "CACHE_SWEEP_S",
    "CONCURRENCY",
    "DECODER",
    "MAX_FILE_SIZE",
    "PNG_LEVEL",
    "QUEUE_SIZE",
    "SESSION_TTL_S",
    "SLOW_LIMIT_S",
    "Handlers",
    "ModelPool",
    "Session",
    "_Bounded",
    "_current_event",
    "as_png_files",
    "build_demo",
    "cache_png",
    "friendly",
    "launch",
    "option_specs",
    "serve",
    "trim_freed_memory",
    "upload_path",
]
