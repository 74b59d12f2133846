"""One description per attribution method: a toy method registered in METHODS alone appears in the CLI's
``--method`` choices and in the API (``attribute``, ``explain``), with its options checked, and nothing else
edited. (The page's method list is built from the same table: tests/test_ui.py registers TOY the same way.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from alexnet_viz.attribution import METHODS, Call, Maps, MethodSpec, OptionError, OptionSpec, attribute
from alexnet_viz.registry import Registry

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _scaled_input(c: Call) -> Maps:
    raw = c.x[0] * float(c.opts["gain"])  # (3, H, W): the input, scaled; a map anyone can check by hand
    return Maps(raw, raw.sum(dim=0))


TOY = MethodSpec(
    "toy", "Toy (scaled input)", "The input itself, scaled, as a map: a method that explains nothing.",
    signed=True, slow=False, runner=_scaled_input, phrase="the toy map",
    options=(OptionSpec("gain", 2.0, 0.5, 4.0, 0.5, "Gain", "What the input is multiplied by."),),
)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[MethodSpec]:
    """TOY in METHODS for one test (monkeypatch removes it after, also on failure)."""
    monkeypatch.setitem(METHODS, TOY.name, TOY)
    yield TOY


def test_the_toy_method_is_offered_by_the_cli_only_once_registered(toy: MethodSpec, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from alexnet_viz.cli import build_parser, main

    args = build_parser().parse_args(["analyze", "x.png", "--out", "o", "--method", "toy"])
    assert args.method == ["toy"]
    image = ASSETS / "cat.jpg"
    code = main(["analyze", str(image), "--arch", "cifar", "--weights", "none", "--device", "cpu", "--method", "toy",
                 "--out", str(tmp_path / "out"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["attributions"]["toy"]["options"] == {"gain": 2.0}
    assert (tmp_path / "out" / image.stem / "attribution_toy.png").is_file()
    del METHODS["toy"]
    with pytest.raises(SystemExit):  # argparse: invalid choice
        build_parser().parse_args(["analyze", "x.png", "--out", "o", "--method", "toy"])


def test_the_toy_method_runs_through_the_api(toy: MethodSpec) -> None:
    from alexnet_viz.analysis import analyze, explain
    from alexnet_viz.model import load_model

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    attr = attribute(net, x, "toy", target=1, gain=3.0)
    assert torch.allclose(attr.heatmap, 3 * x[0].sum(dim=0)) and attr.signed and attr.method == "toy"
    with pytest.raises(OptionError, match=r"Gain must be between 0\.5 and 4\.0"):
        attribute(net, x, "toy", target=1, gain=9)
    loaded = load_model("cifar", "none", "cpu")
    result = analyze(loaded, ASSETS / "cat.jpg")
    via_explain = explain(loaded, result, "toy")
    assert torch.allclose(via_explain.heatmap, 2 * result.input[0].sum(dim=0))


def test_the_registry_keeps_names_unique_and_equal_to_keys() -> None:
    table: Registry[MethodSpec] = Registry("attribution method", (TOY,))
    with pytest.raises(ValueError, match="already an attribution method called 'toy'"):
        table.register(TOY)
    with pytest.raises(ValueError, match="under its own name"):
        table["other"] = TOY
    del table["toy"]
    with table.added(TOY):
        assert list(table) == ["toy"]
    assert list(table) == [] and "toy" not in METHODS
