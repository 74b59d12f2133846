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
    weights = result["model"]["weights"]
    assert weights["trained"] is False and "meaningless" in weights["warning"]
    assert result["settings"]["methods"] == list(METHODS)
    expected = ["input.png", "top_k.png", "filters_conv1.png", "filter_map.png", "strongest_channels.png"]
    expected += [f"features_{layer}.png" for layer in result["layers"]]  # every layer, conv and fc
    expected += [f"channel_conv{i}.png" for i in range(1, 6)]
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


# --- files that are not files, names that would escape, outputs that cannot be written, bad options ------------


def _in_thread(argv: list[str], seconds: float = 120) -> int:
    """main(argv) in a thread, so that a call that hangs (a FIFO opened for reading) fails the test instead."""
    import threading

    outcome: list[int | BaseException] = []

    def run() -> None:
        try:
            outcome.append(main(argv))
        except BaseException as e:  # SystemExit from argparse, too: re-raised in the test's thread
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"alexnet-viz {' '.join(argv[:2])} ... still runs after {seconds:.0f} s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def test_fifos_are_refused_without_blocking_and_names_stay_inside_out(tmp_path: Path, capsys) -> None:
    import os

    src = tmp_path / "src"
    src.mkdir()
    fifo = src / "pipe.png"
    os.mkfifo(fifo)
    names = ["...png", "a.png", "a.jpg", "A.png", "a-2.png", "x y;$(z).png"]
    for i, name in enumerate(names):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(src / name, format="PNG")
    escaping = src / "sub" / ".." / "a.png"  # a path through "..": its name is still a.png
    (src / "sub").mkdir()
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    code = _in_thread(["analyze", str(fifo), *(str(src / n) for n in names), str(escaping), "--weights", "none",
                       "--arch", "paper", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pipe.png" in errors[0] and "not a regular file" in errors[0], captured.err
    assert set(tmp_path.iterdir()) == before | {out}  # nothing written beside --out
    folders = sorted(p.name for p in out.iterdir())
    assert folders == sorted(["image", "a", "a-2", "A-3", "a-2-2", "x_y_z_", "a-4"]), folders  # a-3 is A-3
    assert all((out / f / "result.json").is_file() for f in folders)
    inputs = {json.loads((out / f / "result.json").read_text())["image"] for f in folders}
    assert inputs == {str(src / n) for n in names} | {str(escaping)}  # each image has its own folder


def test_a_fifo_for_labels_is_an_option_error(tmp_path: Path, capsys) -> None:
    import os

    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as exit_info:
        _in_thread(["analyze", str(example_image()), "--weights", "none", "--labels", str(fifo), "--out",
                    str(tmp_path / "o")], seconds=30)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --labels:" in err and "not a regular file" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_out_that_cannot_be_written_is_one_error_line(tmp_path: Path, capsys, where: str) -> None:
    out = tmp_path / "taken.txt" if where == "file" else Path("/proc/alexnet-viz-out")
    if where == "file":
        out.write_text("a file, not a folder")
    code = main(["analyze", str(example_image()), "--weights", "none", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith("error: --out ") and captured.err.count("\n") == 1, captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze", "x.png", "--out", "o", "--num-classes", "0"], "argument --num-classes: must be at least 1"),
        (["analyze", "x.png", "--out", "o", "--num-classes", "-5"], "argument --num-classes: must be at least 1"),
        (["analyze", "x.png", "--out", "o", "--top-k", "0"], "argument --top-k: must be at least 1, not 0"),
        (["analyze", "x.png", "--out", "o", "--top-k", "two"], "argument --top-k: 'two' is not a whole number"),
        (["summary", "--num-classes", "0"], "argument --num-classes: must be at least 1"),
        (["summary", "--input-size", "-3"], "argument --input-size: must be at least 1"),
        (["serve", "--port", "70000"], "argument --port: must be between 1 and 65535"),
        (["serve", "--num-classes", "0"], "argument --num-classes: must be at least 1"),
        (["train", "--data", "d", "--out", "o", "--epochs", "0"], "argument --epochs: must be at least 1"),
        (["train", "--data", "d", "--out", "o", "--lr", "-1"], "argument --lr: must be above 0"),
        (["train", "--data", "d", "--out", "o", "--lr", "nan"], "argument --lr: must be above 0"),
        (["train", "--data", "d", "--out", "o", "--val-fraction", "2"], "argument --val-fraction: must be between"),
        (["train", "--data", "d", "--out", "o", "--num-classes", "1"], "argument --num-classes: must be at least 2"),
        (["train", "--data", "d", "--out", "o", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    ],
)
def test_bad_options_are_usage_errors(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"alexnet-viz {argv[0]}: error: {message}" in err and "Traceback" not in err, err


def test_train_input_size_too_small_is_one_error_line(tmp_path: Path, capsys) -> None:
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--input-size", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
