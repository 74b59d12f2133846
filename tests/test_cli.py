"""The `alexnet-viz` command line: summary totals, analyze to disk, bad images in a batch, refused pickles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from alexnet_viz.attribution import METHODS
from alexnet_viz.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith(("{", "[")) else out


@pytest.mark.parametrize(
    ("arch", "extra", "total", "trainable"),
    [
        ("torchvision", [], 61_100_840, 61_100_840),
        ("paper", [], 62_378_344, 62_378_344),
        ("paper-2gpu", [], 60_965_224, 60_965_224),
        ("bn", ["--num-classes", "24"], 46_846_744, 46_846_040),
    ],
)
def test_summary_json_totals(capsys, arch: str, extra: list[str], total: int, trainable: int) -> None:
    code, data = run_json(capsys, "summary", "--arch", arch, "--json", *extra)
    assert code == 0 and isinstance(data, dict)
    assert data["trainable_params"] == trainable and data["total_params"] == total
    assert sum(layer["params"] for layer in data["layers"]) == trainable
    assert {"name", "type", "output_shape", "params", "macs"} <= set(data["layers"][0])
    if arch == "torchvision":
        assert data["macs"] == pytest.approx(0.714e9, rel=0.01)


def test_summary_table_and_bad_input_size(capsys) -> None:
    assert main(["summary", "--arch", "paper"]) == 0
    table = capsys.readouterr().out
    assert "conv1" in table and "fc8" in table and "62,378,344" in table
    assert main(["summary", "--arch", "paper", "--input-size", "100"]) == 2
    assert "227" in capsys.readouterr().err


def example_image() -> Path:
    return sorted(p for p in ASSETS.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[0]


def test_analyze_writes_every_png_and_result_json(tmp_path: Path, capsys) -> None:
    image = example_image()
    code, data = run_json(capsys, "analyze", str(image), "--weights", "none", "--method", "all", "--out",
                          str(tmp_path / "d"), "--json")
    assert code == 0 and isinstance(data, dict)
    folder = tmp_path / "d" / image.stem
    result = json.loads((folder / "result.json").read_text())
    assert result == data
    assert len(result["top_k"]) == 5 and {"index", "label", "probability"} == set(result["top_k"][0])
    assert result["weights"]["trained"] is False and "meaningless" in result["weights"]["warning"]
    assert result["settings"]["methods"] == list(METHODS)
    expected = ["input.png", "top_k.png", "filters_conv1.png"]
    expected += [f"features_conv{i}.png" for i in range(1, 6)]
    expected += [f"attribution_{m}.png" for m in METHODS]
    for name in expected:
        path = folder / name
        assert path.stat().st_size > 1000, name
        with Image.open(path) as im:
            assert im.width > 50 and im.height > 20
    assert set(result["attributions"]) == set(METHODS)


def test_a_bad_image_is_one_line_and_the_batch_goes_on(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    good = tmp_path / "good.png"
    Image.new("RGB", (120, 90), (200, 30, 30)).save(good)
    code = main(["analyze", str(bad), str(good), "--weights", "none", "--arch", "paper", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "notes.png" in errors[0] and "Traceback" not in captured.err
    assert (tmp_path / "o" / "good" / "result.json").is_file()
    assert not (tmp_path / "o" / "notes" / "result.json").exists()


def test_seeded_torchvision_file_matches_torchvisions_forward(tmp_path: Path, capsys) -> None:
    torch.manual_seed(2)
    theirs = torchvision.models.alexnet(weights=None).eval()
    weights = tmp_path / "file.pt"
    torch.save(theirs.state_dict(), weights)
    image = example_image()
    code, data = run_json(capsys, "analyze", str(image), "--weights", str(weights), "--out", str(tmp_path / "r"),
                          "--json")
    assert code == 0 and isinstance(data, dict)
    from alexnet_viz.images import load_image

    x = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()(load_image(image)).unsqueeze(0)
    with torch.no_grad():
        values, indices = torch.softmax(theirs(x)[0], 0).topk(5)
    assert [p["index"] for p in data["top_k"]] == indices.tolist()
    assert [p["probability"] for p in data["top_k"]] == pytest.approx(values.tolist(), abs=1e-5)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, evil)
    code = main(["analyze", str(example_image()), "--weights", str(evil), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_console_script_is_installed() -> None:
    exe = shutil.which("alexnet-viz") or str(Path(sys.executable).parent / "alexnet-viz")
    out = subprocess.run([exe, "weights", "status"], capture_output=True, text=True, timeout=120, check=True)
    assert "ImageNet weights" in out.stdout


def test_bench_subcommand_hands_its_flags_to_the_harness(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "alexnet-viz bench" in out and "--quick" in out
