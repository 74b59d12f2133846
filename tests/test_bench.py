"""The benchmark harness (benchmarks/) and the app launcher (alexnet_viz/launcher.py).

No timing is asserted: the numbers depend on the machine and its neighbours. benchmarks/README.md has them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_viz.attribution import METHODS
from alexnet_viz.launcher import free_port, proc_status, stop, wait_until_serving
from benchmarks import burst, levers, main, page, rows
from benchmarks.timing import Stat

from .conftest import Server

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"


def test_help_lists_the_modes_and_every_lever(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--levers" in out and "--no-http" in out
    assert all(name in out for name in levers.LEVERS)


def test_rows_round_and_judge_targets() -> None:
    stat = Stat(wall=[0.1204, 0.1, 0.2], cpu=[0.2, 0.2, 0.4], flops=2 * 10**9)
    row = rows.make_row("full_view", "full default view", stat=stat, gflops_per_s=100.0)
    assert row["median"] == 120.0 and row["runs"] == 3 and row["pass"] is True and row["target_op"] == "<="
    assert row["floor_ms"] == 20.0 and row["x_floor"] == 6.02 and row["cores_used"] == 1.9
    slow = rows.make_row("speedup_full_view", "speedup", value=7.25, unit="x")
    assert slow["pass"] is False and slow["target_op"] == ">="
    assert rows.sig(0.000123456) == 0.000123 and rows.sig(1234.5) == 1234.0 and rows.sig(None) is None


def test_ratio_rows_divide_the_right_way_and_judge_the_http_targets() -> None:
    over = rows.ratio_row("http_ratio_integrated_gradients", "IG", 800.0, 1000.0)  # ours / plain = 0.8 > 0.7
    assert over["median"] == 0.8 and over["pass"] is False and over["target"] == 0.7
    under = rows.ratio_row("http_ratio_predict", "predict", 30.0, 40.0)
    assert under["median"] == 0.75 and under["pass"] is True
    speedup = rows.ratio_row("speedup_full_view", "view", 100.0, 4000.0, invert=True)  # theirs / ours
    assert speedup["median"] == 40.0 and speedup["pass"] is True
    assert rows.ratio_row("http_ratio_gradcam", "cam", None, 5.0)["pass"] is None


def test_breakdown_takes_the_parts_out_of_the_handler_time() -> None:
    parts = {"handlers_analyze": [0.100, 0.120, 0.110], "analysis.preprocess": [0.002] * 3,
             "analysis.forward": [0.020] * 3, "other_conv_grids": [0.030] * 3, "top5_chart": [0.010] * 3}
    got = {p["part"].split(" (")[0]: p for p in page.breakdown(parts, decode_ms=1.0, saliency_ms=50.0)}
    rest = got["rest of Handlers.analyze: drawing its panels, overlays, bookkeeping"]
    assert rest["ms"] == pytest.approx(110.0 - 1.0 - 2.0 - 20.0 - 50.0)
    total = 110.0 + 30.0 + 10.0
    assert got["grids of conv2-conv5"]["share"] == pytest.approx(round(30.0 / total, 2))


def test_levers_are_a_table_of_functions_and_a_group_gives_one_row_per_variant() -> None:
    assert tuple(levers.LEVERS) == levers.LEVER_GROUPS and all(callable(f) for f in levers.LEVERS.values())
    bench = levers.Bench(torch=None, page=None, analysis=None, runs=2, warmup=0, image=Path("x"), served=False)
    calls: list[str] = []
    got = bench.group("lever", {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "b")
    assert [(r["variant"], r["current"], r["runs"]) for r in got] == [("a", False, 2), ("b", True, 2)]
    assert sorted(calls) == ["a", "a", "b", "b"]
    assert levers.memory(bench) == []  # --no-cold-start: no lever launches the app


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed here")
def test_no_triton_site_hides_triton() -> None:
    probe = [sys.executable, "-m", "benchmarks.probe", "triton"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(levers.NO_TRITON), str(ROOT)])}
    done = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "No module named 'triton'" in done.stdout
    plain = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stdout + plain.stderr


def test_burst_verdicts() -> None:
    room = {"failed": 0, "wrong_top5": [], "top5_s": {"p95": 7.9}, "panels_s": {"p95": 20.5}}
    busy = {"predict_failed": 0, "predict_s": {"p95": 1.0}}
    got = {k: v["pass"] for k, v in burst.verdicts(room, busy).items()}
    assert got == {"refused": True, "top5_p95_s": True, "panels_p95_s": False, "predict_under_heavy_p95_s": True}
    refused = burst.verdicts({**room, "failed": 1}, {**busy, "predict_failed": 1})
    assert not refused["refused"]["pass"] and refused["predict_under_heavy_p95_s"]["measured"] is None


# --- the launcher -----------------------------------------------------------------------------------------------


def test_free_port_is_free_and_proc_status_reads_this_process() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if someone listens there
    status = proc_status(os.getpid())
    assert status["VmHWM"] >= status["VmRSS"] > 0
    assert proc_status(2**22 + 1) == {}  # no such process


def test_wait_until_serving_fails_fast_on_an_exit_and_times_out_on_silence() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    gone = subprocess.Popen([sys.executable, "--version"], stdout=subprocess.DEVNULL)
    gone.wait(30)
    with pytest.raises(RuntimeError, match="exited early"):
        wait_until_serving(url, gone, started=time.perf_counter())
    silent = subprocess.Popen([sys.executable, "-m", "benchmarks.probe", "spin"], cwd=ROOT)
    try:
        with pytest.raises(TimeoutError):
            wait_until_serving(url, silent, started=time.perf_counter(), timeout=0.5)
    finally:
        stop(silent, grace=5)
    assert silent.poll() is not None


@pytest.mark.slow
def test_quick_mode_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    # Passive OpenMP threads keep the smoke test quick on a shared machine (a busy neighbour makes spinning
    # threads several times slower); it changes the numbers, which this test does not look at.
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| step" in done.stdout and "full default view" in done.stdout and "targets met" in done.stdout

    data = json.loads(out.read_text(encoding="utf-8"))
    assert list(data)[:4] == ["schema", "settings", "machine", "rows"]
    assert data["schema"] == 1 and data["settings"]["mode"] == "quick" and data["settings"]["runs"] == 2
    machine = data["machine"]
    for key in ("cpu_model", "cores", "torch_threads", "date", "load_average_start", "load_average_end",
                "matmul_gflops"):
        assert machine[key] not in (None, ""), key
    assert machine["versions"]["torch"] and machine["matmul_gflops"] > 0

    by_key = {row["key"]: row for row in data["rows"]}
    expected = {"forward", "analyze", "full_view", "png_encode", "full_view_png", "layer_change", "channel_change",
                "opacity_change", "attribution_opacity_change", "integrated_gradients_50", *METHODS}
    assert expected <= set(by_key), expected - set(by_key)
    assert "cold_start" not in by_key and "levers" not in data and data["http"] == []  # quick: nothing served
    for key in expected:
        row = by_key[key]
        assert row["runs"] == 2 and len(row["samples"]) == 2 and row["median"] > 0, key
        assert row["min"] <= row["median"] <= row["max"], key
    for key in ("forward", "full_view", "saliency", "integrated_gradients_50", "occlusion"):
        assert by_key[key]["gflop"] > 0 and by_key[key]["floor_ms"] > 0 and by_key[key]["x_floor"] > 0, key
    for key in ("full_view", "layer_change", "saliency", "smoothgrad", "occlusion", "integrated_gradients_50"):
        assert isinstance(by_key[key]["pass"], bool) and by_key[key]["target"] > 0, key

    tutorial = {row["key"]: row for row in data["tutorial"]}
    assert {"tutorial_full_view", "tutorial_integrated_gradients"} <= set(tutorial)
    speedups = {row["key"]: row for row in data["speedups"]}
    assert speedups["speedup_full_view"]["median"] > 0 and isinstance(speedups["speedup_full_view"]["pass"], bool)
    parts = {part["part"]: part["ms"] for part in data["full_view_breakdown"]}
    assert any("forward" in p for p in parts) and any("saliency" in p for p in parts)
    assert all(ms is not None for ms in parts.values()), parts


def test_bench_from_an_installed_package_says_it_needs_the_checkout(tmp_path: Path, monkeypatch, capsys) -> None:
    """The package where pip puts it (no benchmarks/ or app.py beside it), run outside a checkout."""
    from alexnet_viz import cli

    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "alexnet_viz" / "cli.py"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == ("error: alexnet-viz bench needs the repository checkout (its benchmarks/ "
                                         "folder): run it inside a clone of the repository.")


def test_channel_shown_reads_the_slider_not_the_text() -> None:
    update = {"maximum": 191, "interactive": True, "value": 130, "__type__": "update"}  # as gradio_client returns it
    assert page.channel_shown(("grid.png", "**conv2** · showing channel 7", "view.png", update)) == 130
    assert page.channel_shown(("grid.png", "", None, 5)) == 5
    assert page.channel_shown(("grid.png", "", None, {"value": None})) is None


def test_the_http_rows_call_the_endpoints_as_a_client_does(server: Server) -> None:
    """The over-HTTP rows' calls (raw HTTP, not gradio_client's 50 ms polling): /predict answers this image's
    top-5 (as the engine computes it locally), /explain a picture that the tab then fetches."""
    from alexnet_viz.analysis import analyze
    from alexnet_viz.model import load_model
    from benchmarks.served import HTTP_STEPS

    tab = page.PageTab(server.url, timeout=120)
    try:
        cat = ROOT / "assets" / "cat.jpg"
        [label] = HTTP_STEPS["predict"][1](tab, cat)
        local = analyze(load_model("torchvision", "none", "cpu"), cat, capture=False)
        assert [c["label"] for c in label["confidences"]] == [p.label for p in local.top_k]
        assert all(abs(c["confidence"] - p.probability) < 1e-5 for c, p in zip(label["confidences"], local.top_k,
                                                                               strict=True))
        [picture] = HTTP_STEPS["gradcam"][1](tab, cat)
        assert picture["url"].startswith(server.url) and picture["path"].endswith(".png")
    finally:
        tab.close()


def test_gradio_clients_temp_folders_go_where_they_are_sent(tmp_path: Path) -> None:
    """gradio_client makes a folder in tempfile.gettempdir() per downloaded file and leaves it empty; inside
    client_temp_in they land in the given folder, and the temp folder before it comes back after."""
    import tempfile

    from gradio_client.utils import create_tmp_copy_of_file  # the same tempfile.gettempdir() call

    source = tmp_path / "a.txt"
    source.write_text("x")
    before = tempfile.gettempdir()
    with page.client_temp_in(tmp_path / "here"):
        (tmp_path / "here").mkdir()
        copy = Path(create_tmp_copy_of_file(str(source)))
    assert copy.parent.parent == (tmp_path / "here").resolve() and copy.read_text() == "x"
    assert tempfile.gettempdir() == before
