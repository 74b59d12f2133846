"""Shared fixtures: offline settings, a seeded untrained model pool, and a launched app for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Never reach the network from a test; keep Gradio's uploads in a folder of the test run's own.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session", autouse=True)
def gradio_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gradio")
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> float:
    """Poll Gradio's config route until it answers 200; fail at once if the server died."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} was not serving after {timeout} s")


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
    """`python app.py --weights none --port P`, exactly as a user starts it."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("server")
    log = tmp / "server.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "uploads"), "PYTHONUNBUFFERED": "1",
           "TORCH_HOME": str(tmp / "torch")}  # no cached ImageNet weights: the untrained banner shows
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--weights", "none", "--device", "cpu",
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            startup = wait_until_serving(url, proc)
            yield Server(url, log, startup, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
