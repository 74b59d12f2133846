"""The benchmark harness (benchmarks/bench.py): its quick mode runs end to end and writes the JSON schema.

No timing is asserted: the numbers depend on the machine and its neighbours. benchmarks/README.md has them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from alexnet_viz.attribution import METHODS

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("alexnet_viz_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_main_is_importable_and_has_help(capsys) -> None:
    bench = load_bench()
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--levers" in out


def test_rows_round_and_judge_targets() -> None:
    bench = load_bench()
    stat = bench.Stat(wall=[0.1204, 0.1, 0.2], cpu=[0.2, 0.2, 0.4], flops=2 * 10**9)
    row = bench.make_row("full_view", "full default view", stat=stat, gflops_per_s=100.0)
    assert row["median"] == 120.0 and row["runs"] == 3 and row["pass"] is True and row["target_op"] == "<="
    assert row["floor_ms"] == 20.0 and row["x_floor"] == 6.02 and row["cores_used"] == 1.9
    slow = bench.make_row("speedup_full_view", "speedup", value=7.25, unit="x")
    assert slow["pass"] is False and slow["target_op"] == ">="
    assert bench._r(0.000123456) == 0.000123 and bench._r(1234.5) == 1234.0 and bench._r(None) is None


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

    rows = {row["key"]: row for row in data["rows"]}
    expected = {"forward", "analyze", "full_view", "png_encode", "full_view_png", "layer_change", "channel_change",
                "opacity_change", "attribution_opacity_change", "integrated_gradients_50", *METHODS}
    assert expected <= set(rows), expected - set(rows)
    assert "cold_start" not in rows and "levers" not in data  # quick mode skips them
    for key in expected:
        row = rows[key]
        assert row["runs"] == 2 and len(row["samples"]) == 2 and row["median"] > 0, key
        assert row["min"] <= row["median"] <= row["max"], key
    for key in ("forward", "full_view", "saliency", "integrated_gradients_50", "occlusion"):
        assert rows[key]["gflop"] > 0 and rows[key]["floor_ms"] > 0 and rows[key]["x_floor"] > 0, key
    for key in ("full_view", "layer_change", "saliency", "smoothgrad", "occlusion", "integrated_gradients_50"):
        assert isinstance(rows[key]["pass"], bool) and rows[key]["target"] > 0, key

    tutorial = {row["key"]: row for row in data["tutorial"]}
    assert {"tutorial_full_view", "tutorial_integrated_gradients"} <= set(tutorial)
    speedups = {row["key"]: row for row in data["speedups"]}
    assert speedups["speedup_full_view"]["median"] > 0 and isinstance(speedups["speedup_full_view"]["pass"], bool)
    parts = [part["part"] for part in data["full_view_breakdown"]]
    assert any("forward" in p for p in parts) and any("saliency" in p for p in parts)
