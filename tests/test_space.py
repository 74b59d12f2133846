"""The files a Hugging Face Space reads: README front matter, requirements.txt, .gitattributes."""

from __future__ import annotations

import re
import subprocess

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from .conftest import ROOT

BINARY = re.compile(r"\.(png|jpe?g|gif|webp|safetensors|pt|pth|npz|zip)$", re.I)


def front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    block = text[4:text.index("\n---\n", 4)]
    return dict(line.split(": ", 1) for line in block.splitlines())


def test_front_matter_is_what_the_hub_accepts() -> None:
    meta = front_matter()
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    assert 0 < len(meta["short_description"]) <= 60  # the Hub's limit
    assert meta["license"] == "mit" and meta["title"]
    gradio = next(Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                  ["dependencies"] if d.startswith("gradio"))
    assert Version(meta["sdk_version"]) in gradio.specifier  # the Space runs a Gradio the app supports


def test_requirements_give_a_cpu_space_the_cpu_wheels_and_the_same_dependencies() -> None:
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    options = [line for line in lines if line.startswith("-")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    space = {Requirement(line).name: str(Requirement(line).specifier) for line in lines if not line.startswith("-")}
    project = {Requirement(d).name: str(Requirement(d).specifier)
               for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert space == project  # pip install -e . (laptops, GPUs) and the Space get the same ranges


def test_every_binary_file_goes_to_lfs() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    binaries = [path for path in tracked.splitlines() if BINARY.search(path)]
    assert binaries  # the photos and the screenshots
    attrs = subprocess.run(["git", "check-attr", "filter", "--", *binaries], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    assert all(line.endswith(": filter: lfs") for line in attrs.splitlines()), attrs
