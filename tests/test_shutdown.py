"""Stopping the app: `kill -TERM` (how Hugging Face Spaces, systemd and docker stop it) and Ctrl-C (SIGINT) both
end it with every process it started (the image decoder's workers, multiprocessing's resource tracker)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from .conftest import launched_app

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
