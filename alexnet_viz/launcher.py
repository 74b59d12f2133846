"""Start the app in a child process on 127.0.0.1, wait until it serves, stop it.

The one place that tests, benchmarks and scripts launch a server from::

    with launched_app(tmp, ["--weights", "none", "--device", "cpu"]) as app:
        app.url, app.proc, app.startup_s, app.log   # http://127.0.0.1:PORT/, the Popen, seconds to /config 200

The child gets its own ``GRADIO_TEMP_DIR`` (``tmp/uploads``), ``TORCH_HOME`` (``tmp/torch``) and ``TMPDIR``
(``tmp/tmp``: what a child ended by SIGKILL cannot remove stays out of /tmp), no
analytics, no Hugging Face Hub, and writes its output to ``tmp/app.log`` (its tail goes to stderr if the start
fails). ``CHROMIUM`` and ``CHROMIUM_ARGS`` are the headless browser that the tests and the screenshots drive
(Debian's chromium through Playwright, offline). ``join_queue`` and ``until_completed`` call a page's event on
Gradio's queue over raw HTTP, as the page itself does (gradio_client refuses the events a page keeps private).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the repository checkout, when the package runs from one
APP = ROOT / "app.py"
HOST = "127.0.0.1"
UNTRAINED_CPU = ("--weights", "none", "--device", "cpu")  # seeded, untrained: needs no download
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process in kB, from ``/proc/<pid>/status`` ({} where there is none)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], *, started: float, timeout: float = 120.0) -> float:
    """Poll Gradio's ``/config`` until it answers 200; seconds since ``started`` (a ``time.perf_counter()``).

    Raises ``RuntimeError`` if the process exits first, ``TimeoutError`` after ``timeout`` seconds."""
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:  # noqa: S310 (loopback, http)
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} was not serving after {timeout} s")


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM (Gradio closes its server and workers), then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Launched:
    """A running app: where it answers, its process, how long it took to serve, where its output goes."""

    url: str
    proc: subprocess.Popen[bytes]
    startup_s: float
    log: Path
    folder: Path  # its GRADIO_TEMP_DIR is folder / "uploads"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def app_command(flags: Sequence[str]) -> list[str]:
    """``python app.py FLAGS`` from the checkout; an installed package without one runs the same through the CLI."""
    if APP.is_file():
        return [sys.executable, str(APP), *flags]
    return [sys.executable, "-m", "alexnet_viz.cli", "serve", *flags]


@contextlib.contextmanager
def launched_app(folder: Path, flags: Sequence[str] = UNTRAINED_CPU, *, port: int | None = None,
                 command: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                 timeout: float = 120.0) -> Iterator[Launched]:
    """Start ``python app.py FLAGS --host 127.0.0.1 --port PORT`` (or ``COMMAND --host ... --port ...``, e.g.
    another Gradio app that takes those two flags), wait until ``/config`` answers, yield it, stop it.

    ``folder`` holds the child's upload folder, torch cache, temp folder and ``app.log``; ``env`` adds to its
    environment; ``port`` defaults to a free one. If the start or the ``with`` body fails, the log's last 3,000
    characters go to stderr."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    child_env = {**os.environ, "GRADIO_TEMP_DIR": str(folder / "uploads"), "TORCH_HOME": str(folder / "torch"),
                 "TMPDIR": str(folder / "tmp"), "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                 "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
    port = port or free_port()
    url = f"http://{HOST}:{port}/"
    argv = [*(command if command is not None else app_command(flags)), "--host", HOST, "--port", str(port)]
    log = folder / "app.log"
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            startup = wait_until_serving(url, proc, started=started, timeout=timeout)
            yield Launched(url=url, proc=proc, startup_s=startup, log=log, folder=folder)
        except Exception:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            stop(proc)


def join_queue(http: Any, url: str, fn_index: int, data: list[Any], session: str) -> Any:
    """POST an event to Gradio's queue for the tab ``session`` (``http``: an httpx client); the response."""
    return http.post(f"{url.rstrip('/')}/gradio_api/queue/join",
                     json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None})


def until_completed(http: Any, url: str, session: str, event_id: str, timeout: float = 120) -> dict[str, Any]:
    """Read the tab's event stream until ``event_id`` completes; its last message (``success`` says how it
    ended)."""
    deadline = time.monotonic() + timeout
    with http.stream("GET", f"{url.rstrip('/')}/gradio_api/queue/data", params={"session_hash": session},
                     timeout=timeout) as stream:
        for line in stream.iter_lines():
            if time.monotonic() > deadline:
                break
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("event_id") == event_id and msg.get("msg") == "process_completed":
                return dict(msg)
    raise AssertionError(f"event {event_id} did not complete in {timeout} s")
