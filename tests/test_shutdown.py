"""Stopping the app: `kill -TERM` (how Hugging Face Spaces, systemd and docker stop it) and Ctrl-C (SIGINT) both
end it with every process it started (the image decoder's workers, multiprocessing's resource tracker)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ASSETS, launched_app

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process this user can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _processes()
    return {pid for pid in pids if pid in table and table[pid][1] not in "ZX"}  # a zombie has ended


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_signal_stops_the_app_and_every_process_it_started(tmp_path: Path, signum: int) -> None:
    """SIGKILL gives the app no chance to clean up: its workers notice they are orphaned and end themselves."""
    with launched_app(tmp_path) as app:
        proc = app.proc
        children = _descendants(proc.pid)
        assert len(children) >= 2, children  # the decoder's workers (and the resource tracker)
        os.kill(proc.pid, signum)
        deadline = time.monotonic() + 5
        while (_alive(children) or proc.poll() is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is not None, "the app still runs 5 s after the signal"
        assert not _alive(children), f"left behind: {sorted(_alive(children))}"
        log = (tmp_path / "app.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        if signum != signal.SIGKILL:
            assert proc.returncode in (0, 130), proc.returncode


def _hold_heartbeat(url: str, session: str, ended: threading.Event) -> None:
    """What every open tab does: keep Gradio's heartbeat stream open (until the server ends it)."""
    import httpx

    try:
        with httpx.stream("GET", f"{url}gradio_api/heartbeat/{session}", timeout=30) as answer:
            for _ in answer.iter_bytes():
                pass
    except httpx.HTTPError:
        pass
    ended.set()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "busy"), [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM-tab-open", "SIGINT-job-running"])  # each signal, each state, 2 launches
def test_open_tabs_and_running_jobs_do_not_hold_up_a_clean_stop(tmp_path: Path, signum: int, busy: bool) -> None:
    """A tab left open in a browser (and a job still running) ends with the server, which exits through its
    clean-up, not through the interrupt's backstop: the training tab's temp folder is removed. Before Gradio's
    page was closed (not only its HTTP server), one open tab held the exit for 3.1 s until the backstop ended
    the process with status 143 and left the folder behind."""
    from benchmarks import page

    with launched_app(tmp_path) as app:
        temp = app.folder / "tmp"  # the app's TMPDIR
        assert [p.name for p in temp.glob("alexnet-viz-train-*")], "the training tab's folder is where we look"
        ended = threading.Event()
        threading.Thread(target=_hold_heartbeat, args=(app.url, "tab-left-open", ended), daemon=True).start()
        if busy:  # occlusion: seconds of work, still running when the signal comes
            tab = page.PageTab(app.url, timeout=60)
            upload = tab.upload(ASSETS / "cat.jpg")
            threading.Thread(target=lambda: _quietly(tab.run, "explain", [upload, "occlusion", ""]),
                             daemon=True).start()
        time.sleep(1.0)
        assert not ended.is_set()
        started = time.monotonic()
        os.kill(app.proc.pid, signum)
        app.proc.wait(timeout=15)
        took = time.monotonic() - started
        assert ended.wait(5)
        assert app.proc.returncode in (0, 130), app.proc.returncode  # 128 + signum: the backstop ended it
        assert took < 3.0, took
        assert not list(temp.glob("alexnet-viz-train-*")), "the training tab's folder was left behind"
        if not busy:  # a request cut off mid-way gets uvicorn's cancellation logged, with its stack
            assert "Traceback" not in app.log_text(), app.log_text()[-3000:]


def _quietly(call: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(Exception):  # the server went away under it: expected
        call(*args)
