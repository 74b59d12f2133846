"""Shared fixtures: offline settings, a seeded untrained model pool, and a launched app for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# The app is launched, waited for and stopped by the package's launcher, as the benchmarks and scripts do.
from alexnet_viz.launcher import CHROMIUM as CHROMIUM  # re-exported for the tests
from alexnet_viz.launcher import free_port as free_port
from alexnet_viz.launcher import launched_app

# Never reach the network from a test; keep Gradio's uploads in a folder of the test run's own.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"


@pytest.fixture(scope="session", autouse=True)
def gradio_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Gradio's uploads, and gradio_client's temp folders (one left empty in the temp folder per file it
    downloads: ``benchmarks.page.client_temp_in``), in this run's own folders rather than /tmp."""
    from benchmarks.page import client_temp_in

    path = tmp_path_factory.mktemp("gradio")
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    with client_temp_in(tmp_path_factory.mktemp("tmp")):
        yield path


@pytest.fixture(scope="session", autouse=True)
def decoder_workers_stopped() -> Iterator[None]:
    """The handlers' upload decoder starts worker processes on first use; stop them before the interpreter
    tears down (as the server does), or the executor's exit hook prints an AttributeError after the run."""
    yield
    from alexnet_viz.ui import DECODER

    DECODER.close()


def upload(source: Path | str, image: object = None, *, folder: str = "test") -> str:
    """Put a file where Gradio keeps uploads, as a browser's upload would: a copy of `source` (a path, or the
    name of a file in assets/), or, given `image` (a PIL image), that image saved under the name `source`."""
    import gradio as gr

    target = Path(gr.utils.get_upload_folder()) / folder / Path(source).name
    target.parent.mkdir(parents=True, exist_ok=True)
    if image is None:
        shutil.copy(Path(source) if Path(source).is_absolute() else ASSETS / source, target)
    else:
        image.save(target)  # type: ignore[attr-defined]
    return str(target)


@pytest.fixture(scope="module")
def pool():  # a seeded untrained torchvision AlexNet on the CPU, as `--weights none` serves
    from alexnet_viz.ui import ModelPool

    return ModelPool("torchvision", "none", "cpu")


@pytest.fixture(scope="module")
def h(pool):  # the page's handlers on that pool
    from alexnet_viz.ui import Handlers

    return Handlers(pool)


class Server:
    def __init__(self, url: str, log: Path, startup_s: float, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.log, self.startup_s, self.proc = url, log, startup_s, proc


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python app.py --weights none --port P`, exactly as a user starts it (no cached ImageNet weights in its
    own TORCH_HOME: the untrained banner shows; its uploads in its own folder, its output in `log`)."""
    tmp = tmp_path_factory.mktemp("server")
    with launched_app(tmp) as app:
        yield Server(app.url, app.log, app.startup_s, app.proc)


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Skip a browser test where Debian's chromium is absent; in CI (where .ci/run installs it) fail instead."""
    from alexnet_viz.browser import chromium

    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing in CI")
        pytest.skip("Debian's chromium is not installed")
