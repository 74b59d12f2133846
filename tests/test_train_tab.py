"""The Train tab: start, follow, stop, one run at a time, the trained model in every tab, the
zip intake, off on a public Space; and the whole of it in Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_viz.ui import train_tab as T

from .conftest import ASSETS, upload
from .test_train import _stripes

ONE_SENTENCE = re.compile(r"^[A-Z][^\n]*[.;)]$")


def stripes_zip(path: Path, per_class: int = 30, *, seed: int = 0, top: str = "stripes") -> Path:
    """A zip of two class folders of stripes (horizontal, vertical) inside one folder ``top``, as zipping a
    folder makes it."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as z:
        for name, flag in (("horizontal", True), ("vertical", False)):
            for i in range(per_class):
                buffer = io.BytesIO()
                _stripes(flag, rng).save(buffer, "PNG")
                z.writestr(f"{top}/{name}/{i}.png" if top else f"{name}/{i}.png", buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def pool():
    from alexnet_viz.ui import ModelPool

    return ModelPool("cifar", "none", "cpu")


@pytest.fixture(scope="module")
def h(pool):
    from alexnet_viz.ui import Handlers

    return Handlers(pool)


@pytest.fixture(scope="module")
def t(h, tmp_path_factory: pytest.TempPathFactory) -> T.TrainHandlers:
    return T.TrainHandlers(h, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def zipped(tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload(stripes_zip(tmp_path_factory.mktemp("zip") / "stripes.zip"), folder="train")


@pytest.fixture(scope="module")
def finished(t: T.TrainHandlers, zipped: str) -> tuple[T.Run, list[dict[str, Any]]]:
    """A whole run: 3 epochs of the cifar net on 60 stripes, every update the page got."""
    updates = list(t.start("visitor", "zip", {"path": zipped}, "cifar", 3, {"path": upload("cat.jpg")}))
    assert t.last is not None
    return t.last, updates


def test_a_run_shows_its_progress_and_its_result(finished: tuple[T.Run, list[dict[str, Any]]]) -> None:
    run, updates = finished
    assert run.result is not None and not run.result.stopped and run.error is None
    assert updates[0]["train_status"].startswith("**Training** cifar on stripes")
    assert all(isinstance(u["train_curves"], Image.Image) for u in updates if "train_curves" in u)
    last = updates[-1]
    assert last["train_status"].startswith("**Finished: 36 optimizer steps**")  # 48 training images, batch 4
    assert f"test accuracy **{run.result.test_accuracy:.1%}**" in last["train_status"]
    assert isinstance(last["train_filters"], Image.Image)
    # The Architecture list gains the run, named after it; the top-5 on the visitor's image uses its classes.
    choices = last["arch"]["choices"]
    assert choices[-1] == (f"trained here: {run.name}", f"trained:{run.id}")
    assert [c[1] for c in choices[:-1]] == ["torchvision", "paper", "paper-2gpu", "bn", "cifar"]
    labels = re.findall(r"class='top5-label'>([^<]*)<", last["train_top5"])
    assert sorted(labels) == ["horizontal", "vertical"]


def test_the_curves_are_the_runs_own_log(finished: tuple[T.Run, list[dict[str, Any]]]) -> None:
    run, _ = finished
    assert run.result is not None
    history = run.result.card["history"]
    data = run.curves()
    assert data["step"] == list(range(1, 37))
    assert data["val_loss"] == [r["val_loss"] for r in history]
    assert data["val_accuracy"] == [r["val_accuracy"] for r in history]
    assert data["val_step"] == [12, 24, 36]
    # Each epoch's training loss in the card is the mean of its batches' losses, weighted by batch size.
    for epoch, row in enumerate(history):
        batch = run.steps[12 * epoch:12 * (epoch + 1)]
        mean = sum(loss * n for _, loss, _, n in batch) / sum(n for *_, n in batch)
        accuracy = sum(acc * n for _, _, acc, n in batch) / sum(n for *_, n in batch)
        assert mean == pytest.approx(row["train_loss"], abs=1e-5)
        assert accuracy == pytest.approx(row["train_accuracy"], abs=1e-5)
    picture = T.curves_picture(data)
    assert picture.size == (1200, 420)
    # conv1 as the page showed it last: the weights the run ended with, as its checkpoint holds them.
    from safetensors.torch import load_file

    assert run.conv1 is not None and run.conv1[0] == 36
    assert torch.equal(run.conv1[1], load_file(Path(run.config.out) / "model.safetensors")["conv1.weight"])


def test_the_trained_model_predicts_as_its_checkpoint(finished: tuple[T.Run, list[dict[str, Any]]], h: Any,
                                                     pool: Any) -> None:
    from alexnet_viz.model import load_model

    run, _ = finished
    name = f"trained:{run.id}"
    assert name in pool.trained and name in pool.names()
    path = upload("stripes.png", _stripes(True, np.random.default_rng(99)), folder="train")
    out = h.analyze({"path": path}, name, "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6, "auto", None)
    session = out["session"]
    assert session.arch == name  # every later panel asks the pool for this model, not for the plain cifar net
    assert session.model() is pool.get(name, "cpu")
    fresh = load_model(None, run.config.out + "/model.safetensors", "cpu")
    with torch.no_grad():
        probabilities = torch.softmax(fresh.module(fresh.transform(Image.open(path).convert("RGB"))[None]), 1)[0]
    got = session.analysis.probabilities.reshape(-1)
    assert torch.allclose(got, probabilities, atol=1e-5)
    assert [p.label for p in session.analysis.top_k] == [fresh.categories[i] for i in
                                                         probabilities.argsort(descending=True)[:2].tolist()]
    assert "horizontal" in out["top5"] and "vertical" in out["top5"]
    # The other panels of the page take it too.
    assert "32x32" in h.architecture(name)["arch_text"]
    acc = run.result.test_accuracy if run.result else -1.0
    assert f"trained here: stripes, 3 epochs, test acc {acc:.1%}" in h.switch_model(name, "cpu", None)["banner"]
    assert h.switch_model(name, "cpu", None)["target"]["choices"][1:] == [("horizontal (0)", "0"),
                                                                          ("vertical (1)", "1")]


def _follow_until(updates: Iterator[dict[str, Any]], t: T.TrainHandlers, steps: int) -> None:
    for _ in updates:
        run = t.last
        if run is not None and len(run.steps) >= steps:
            return
    raise AssertionError("the run ended before it made enough steps")


def test_stop_ends_the_run_within_a_few_steps_and_a_second_start_is_refused(t: T.TrainHandlers, zipped: str,
                                                                             pool: Any) -> None:
    updates = t.start("visitor", "zip", {"path": zipped}, "cifar", 100, None)  # 1,200 steps: a minute or more
    _follow_until(updates, t, 3)
    run = t.last
    assert run is not None and T.active_run() is run
    # Someone else can neither start a second run nor stop this one.
    with pytest.raises(T.TrainingRefused, match=r"^A training run is in progress on this server; wait until it "
                                                r"ends, then try again\.$"):
        next(t.start("other", "bundled", None, "cifar", 1, None))
    with pytest.raises(T.TrainingRefused, match="started by someone else"):
        t.stop("other")
    assert not run.stop.is_set()
    # The run takes no lock the page needs: another visitor's image is analysed meanwhile.
    out = t.h.analyze({"path": upload("cat.jpg")}, "cifar", "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6,
                      "auto", None)
    assert out["session"].arch == "cifar" and not run.done.is_set()
    asked_at = len(run.steps)
    assert t.stop("visitor") == {"train_status": "Stopping after this optimizer step ..."}
    final = list(updates)[-1]
    assert run.result is not None and run.result.stopped
    assert len(run.steps) <= asked_at + 2  # the step under way when Stop came, at most one more
    assert run.result.card["stopped"] is True and run.result.card["steps"] == run.steps[-1][0]
    # The epochs done, then the part of the one Stop cut short, validated (none if Stop came between two epochs).
    n = run.steps[-1][0]
    assert [r["epoch"] for r in run.result.history] == [*range(1, n // 12 + 1), *([round(n / 12, 3)] if n % 12 else [])]
    assert final["train_status"].startswith(f"**Stopped (by you) after {run.steps[-1][0]} optimizer steps**")
    assert f"trained:{run.id}" in pool.trained  # a stopped run's model is usable too
    assert T.active_run() is None
    with pytest.raises(T.TrainingRefused, match=r"^No training run is in progress\.$"):
        t.stop("visitor")


def test_a_closed_page_stops_its_run(t: T.TrainHandlers, zipped: str) -> None:
    updates = t.start("visitor", "zip", {"path": zipped}, "cifar", 100, None)
    _follow_until(updates, t, 2)
    run = t.last
    assert run is not None
    updates.close()  # what Gradio does to the event of a visitor who left
    assert run.done.wait(60) and run.result is not None and run.result.stopped
    assert run.stopped_by == "the page was closed" and T.active_run() is None


def test_a_run_stops_at_the_time_limit(h: Any, zipped: str, tmp_path: Path) -> None:
    t = T.TrainHandlers(h, tmp_path, time_limit_s=2.0)
    final = list(t.start("visitor", "zip", {"path": zipped}, "cifar", 100, None))[-1]
    run = t.last
    assert run is not None and run.result is not None and run.result.stopped
    assert final["train_status"].startswith("**Stopped (the 2 s time limit) after ")
    assert len(run.steps) < 1200


def test_the_pool_keeps_the_last_few_trained_models(finished: tuple[T.Run, list[dict[str, Any]]]) -> None:
    import gradio as gr

    from alexnet_viz.errors import UserError
    from alexnet_viz.ui import Handlers, ModelPool

    run, _ = finished
    weights = Path(run.config.out) / "model.safetensors"
    small = ModelPool("cifar", "none", "cpu", max_models=2, max_trained=2)
    assert small.add_trained("a", weights, "cpu") == ("trained:a", [])
    small.add_trained("b", weights, "cpu")
    name, forgotten = small.add_trained("c", weights, "cpu")
    assert (name, forgotten, small.trained) == ("trained:c", [weights], ["trained:b", "trained:c"])
    with pytest.raises(UserError, match="no longer kept"):
        small.get("trained:a", "cpu")
    h = Handlers(small)  # the page says the same sentence, for a switch and for the Architecture tab
    for event in (lambda: h.switch_model("trained:a", "cpu", None), lambda: h.architecture("trained:a")):
        with pytest.raises(gr.Error) as info:
            event()
        assert info.value.message == ("The model 'a' trained here is no longer kept (only the last few are); train "
                                      "it again or choose another architecture.")
    with pytest.raises(gr.Error, match="Unknown architecture"):
        h.architecture("resnet")
    small.get("torchvision", "cpu")  # evicts trained:b (max_models 2: the default and one more) ...
    assert small.get("trained:b", "cpu").categories == ("horizontal", "vertical")  # ... which loads again


def _zip(path: Path, entries: dict[str, bytes], *, links: tuple[str, ...] = ()) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, data)
    return str(path)


def _png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    _stripes(True, np.random.default_rng(seed)).save(buffer, "PNG")
    return buffer.getvalue()


BAD_ZIPS = {
    "not a zip": ({}, r"^That file is not a zip archive"),
    "parent path": ({"../evil/x.png": b"x", "a/1.png": b"x"}, r"^The zip holds a path that would leave its folder"),
    "absolute path": ({"/etc/x.png": b"x"}, r"^The zip holds a path that would leave its folder"),
    "link": ({"a/1.png": b"/etc/passwd", "b/1.png": b"x"}, r"^The zip holds a link \('a/1\.png'\)"),
    "bomb": ({"a/1.png": bytes(5_000_000), "b/1.png": b"x"}, r"^The entry 'a/1\.png' unpacks to 5,000,000 bytes "
                                                                r"from [\d,]+: the zip looks like a zip bomb"),
    "huge": ({"a/1.png": np.random.default_rng(0).bytes(26_000_000), "b/1.png": b"x"},
             r"^The entry 'a/1\.png' unpacks to 26,000,000 bytes, more than the 25 MB an image may be\.$"),
    "one class": ({"a/1.png": b"x", "a/2.png": b"x"}, r"^The zip has 1 class folder\(s\) with images; training "
                                                        r"needs at least two"),
    "no folders": ({"1.png": b"x", "2.png": b"x"}, r"^The zip has 0 class folder"),
    "too few": ({"a/1.png": "P0", "a/2.png": "P1", "b/1.png": "P2", "b/bad.png": b"not an image"},
                r"^The class 'b' has 1 readable image\(s\); give every class at least 2"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_a_bad_zip_is_one_sentence(case: str, h: Any, tmp_path: Path) -> None:
    entries, pattern = BAD_ZIPS[case]
    real = {name: (_png(int(data[1:])) if isinstance(data, str) else data) for name, data in entries.items()}
    if case == "not a zip":
        path = str(tmp_path / "x.zip")
        Path(path).write_bytes(b"PK\x03\x04 this is not really a zip")
    else:
        path = _zip(tmp_path / f"{case}.zip", real, links=("a/1.png",) if case == "link" else ())
    with pytest.raises(T.TrainingRefused, match=pattern) as info:
        T.extract_zip(path, tmp_path / "out", h.decode)
    assert ONE_SENTENCE.match(str(info.value)), str(info.value)
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "evil").exists()


def test_a_bad_zip_through_the_page_is_its_sentence_and_frees_the_slot(t: T.TrainHandlers, tmp_path: Path) -> None:
    import gradio as gr

    from alexnet_viz.ui.units_tab import _streamed

    page = SimpleNamespace(c={name: name for name in T.TrainHandlers.OUTPUTS})  # what _streamed reads
    bad = upload(_zip(tmp_path / "one.zip", {"a/1.png": _png()}), folder="train")
    stream = _streamed(page, lambda: t.start("visitor", "zip", {"path": bad}, "cifar", 1, None), "training")
    with pytest.raises(gr.Error) as info:
        next(stream())
    assert info.value.message.startswith("The zip has 1 class folder(s) with images; training needs at least two")
    assert T.active_run() is None and T._RUN_LOCK.acquire(blocking=False)  # the slot was given back
    T._RUN_LOCK.release()
    with pytest.raises(T.TrainingRefused, match=r"^Upload a zip of class folders first"):
        next(t.start("visitor", "zip", None, "cifar", 1, None))


def test_a_zip_of_class_folders_at_its_top_works_too(h: Any, tmp_path: Path) -> None:
    folder = T.extract_zip(stripes_zip(tmp_path / "flat.zip", 3, top=""), tmp_path / "out", h.decode)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
        f"{c}/{i:05d}.png" for c in ("horizontal", "vertical") for i in range(3)]


def test_the_bundled_photos_become_a_class_folder(tmp_path: Path) -> None:
    import json

    folder = T.bundled_folder(tmp_path, per_class=3, side=32)
    names = sorted(Path(e["file"]).stem for e in json.loads((ASSETS / "examples.json").read_text()))
    assert sorted(p.name for p in folder.iterdir()) == names
    assert all(len(list((folder / n).glob("*.png"))) == 3 for n in names)
    again = T.bundled_folder(tmp_path / "again", per_class=3, side=32)
    cat = np.asarray(Image.open(folder / "cat" / "001.png"))
    assert cat.shape == (32, 32, 3) and np.array_equal(cat, np.asarray(Image.open(again / "cat" / "001.png")))


def test_training_is_off_on_a_space_unless_allowed(monkeypatch: pytest.MonkeyPatch, h: Any, tmp_path: Path) -> None:
    from alexnet_viz.cli import build_parser
    from alexnet_viz.ui.layout import build_demo

    assert T.training_enabled(False, {}) and T.training_enabled(True, {"SPACE_ID": "u/app"})
    assert not T.training_enabled(False, {"SPACE_ID": "u/app"})
    assert build_parser().parse_args(["serve", "--allow-training"]).allow_training is True
    assert build_parser().parse_args(["serve"]).allow_training is False
    monkeypatch.setenv("SPACE_ID", "someone/alexnet-viz")
    monkeypatch.setattr(T, "_ALLOW", False)
    with pytest.raises(T.TrainingRefused, match="--allow-training"):
        next(T.TrainHandlers(h, tmp_path).start("visitor", "bundled", None, "cifar", 1, None))
    config = build_demo(h.pool).config
    texts = [c["props"].get("value") for c in config["components"] if c["props"].get("elem_id") == "train-off"]
    assert texts == [T.OFF_SENTENCE]
    assert not [c for c in config["components"] if str(c["props"].get("elem_id", "")).startswith("train-")
                and c["props"].get("elem_id") != "train-off"]
    T.allow_training(True)
    try:
        config = build_demo(h.pool).config
        assert any(c["props"].get("elem_id") == "train-start" for c in config["components"])
    finally:
        T.allow_training(False)


# ---- the tab in Chromium -----------------------------------------------------------------------------------


def _wait_new_picture(d: Any, elem_id: str, before: str, timeout: int = 60_000) -> str:
    """The picture's src once it differs from ``before`` (no wait for the page to be idle: the run goes on)."""
    d.page.wait_for_function(
        "([id, before]) => { const i = document.querySelector('#' + id + ' img');"
        " return i && i.src && i.src !== before && i.complete; }", arg=[elem_id, before], timeout=timeout)
    return d.picture(elem_id)


@pytest.mark.browser
@pytest.mark.slow
def test_train_tab_in_chromium(tmp_path: Path, browser_ready: None) -> None:
    from alexnet_viz.browser import Driver, Watch, with_page
    from alexnet_viz.launcher import UNTRAINED_CPU, launched_app

    archive = stripes_zip(tmp_path / "stripes.zip")
    probe = tmp_path / "probe.png"
    _stripes(False, np.random.default_rng(7)).resize((160, 160)).save(probe)

    def walk(d: Driver, watch: Watch) -> None:
        d.upload(probe)  # the visitor's image: the run's top-5 at the end is on it
        d.tab("Train")
        d.page.locator("#train-source").get_by_text("A zip of class folders").click()
        d.page.locator("#train-zip input[type=file]").set_input_files(str(archive))
        d.page.locator("#train-zip").get_by_text("stripes.zip").wait_for(timeout=30_000)
        d.set_slider("train-epochs", 30)  # 360 optimizer steps, so Stop has a run to stop
        d.page.locator("#train-start").click()
        # The curves are drawn again as the run goes (a new picture each time), and conv1 too.
        first = _wait_new_picture(d, "train-curves", "")
        second = _wait_new_picture(d, "train-curves", first)
        third = _wait_new_picture(d, "train-curves", second)
        assert len({first, second, third}) == 3
        filters = d.picture("train-filters")
        assert re.match(r"\s*Training cifar on stripes \S+: step \d+ of 360, ", d.text("train-status")), \
            d.text("train-status")
        d.page.wait_for_function(  # past step 150: the learning rate's peak (54) is behind, the stripes learnt
            "() => { const m = document.querySelector('#train-status').innerText.match(/step (\\d+) of/);"
            " return m && +m[1] >= 150; }", timeout=120_000)
        assert filters and d.picture("train-filters") not in ("", filters)  # conv1 redrawn as it learns
        d.check("the run going")
        d.page.locator("#train-stop").click()
        status = d.wait_text("train-status", r"^Stopped \(by you\) after \d+ optimizer steps", timeout=60_000)
        name = re.search(r"Choose trained here: (.+?) in the Architecture list", status)
        assert name, status
        assert sorted(d.page.locator("#train-top5 .top5-label").all_inner_texts()) == ["horizontal", "vertical"]
        d.page.evaluate("() => window.scrollTo(0, document.querySelector('#train-source').getBoundingClientRect().top"
                        " + window.scrollY - 150)")
        # The README's picture: ALEXNET_VIZ_SCREENSHOTS=docs writes it there.
        d.page.screenshot(path=str(Path(os.environ.get("ALEXNET_VIZ_SCREENSHOTS", tmp_path)) / "screenshot-train.png"))
        d.check("Stop")
        # The trained network, chosen in the Architecture list, answers with its own classes on a new upload.
        before = d.text("status")
        d.choose("arch", f"trained here: {name.group(1)}")
        d.wait_text("banner", r"trained here: stripes, 30 epochs")
        d.wait_text("status", r"ms in all", changed_from=before)
        assert sorted(d.page.locator("#top5 .top5-label").all_inner_texts()) == ["horizontal", "vertical"]
        d.upload(ASSETS / "cat.jpg")
        labels = d.page.locator("#top5 .top5-label").all_inner_texts()
        assert sorted(labels) == ["horizontal", "vertical"], labels
        d.tab("Architecture")
        d.wait_text("arch-text", r"at 32x32")
        d.check("the trained model on a new image")
        assert not watch.console_errors, watch.console_errors
        assert watch.hosts() <= {"127.0.0.1"}, watch.hosts()

    with launched_app(tmp_path / "app", UNTRAINED_CPU, env={"SPACE_ID": ""}) as app:
        with_page(app.url, walk)


def test_a_run_on_the_bundled_photos(h: Any, tmp_path: Path) -> None:
    """One epoch on the bundled photos: their classes, and the caveat that goes with them."""
    t = T.TrainHandlers(h, tmp_path)
    final = list(t.start("visitor", "bundled", None, "cifar", 1, None))[-1]
    run = t.last
    assert run is not None and run.result is not None
    names = sorted(Path(e["file"]).stem for e in json.loads((ASSETS / "examples.json").read_text()))
    assert list(run.result.card["classes"]) == names and run.result.card["train_size"] == 134  # 168 - 17 - 17
    assert run.result.card["dataset"] == "example photos"
    assert final["train_status"].startswith("**Finished: 11 optimizer steps**")  # batch 13
    assert "the network learns to tell these photos apart" in final["train_status"]
    # 11 steps are too few, and the advice is the page's (its Epochs slider), not the command line's flags.
    assert ("this run makes only 11 optimizer steps (1 epochs of 11); with so few it may learn nothing - set Epochs "
            "to 0 to have them chosen from the data, or give more epochs") in final["train_status"]
    assert "--epochs" not in final["train_status"]


def test_a_run_that_fails_says_so_and_keeps_nothing(h: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import alexnet_viz.train as engine

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise engine.DataError("3 images are too few to split into training, validation and test sets.")

    monkeypatch.setattr(T, "train", broken)
    t = T.TrainHandlers(h, tmp_path)
    final = list(t.start("visitor", "bundled", None, "cifar", 1, None))[-1]
    assert final["train_status"] == ("**The run failed:** 3 images are too few to split into training, validation "
                                     "and test sets.")
    assert "arch" not in final and T.active_run() is None
    assert [p.name for p in tmp_path.iterdir()] == ["bundled-24-64-0"]  # the run's folder is gone


def test_fashion_mnist_says_when_it_is_not_installed(h: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "FASHION_MNIST_DIR", tmp_path / "absent")
    assert T.source_choices()[2] == ("Fashion-MNIST (not installed: `apt install dataset-fashion-mnist`)",
                                     "fashion-mnist")
    with pytest.raises(T.TrainingRefused, match=r"^Fashion-MNIST is not installed on this server"):
        next(T.TrainHandlers(h, tmp_path).start("visitor", "fashion-mnist", None, "cifar", 1, None))
    folder = tmp_path / "present"
    folder.mkdir()
    for name in T.FASHION_MNIST_FILES:
        (folder / f"{name}.gz").write_bytes(b"")
    monkeypatch.setattr(T, "FASHION_MNIST_DIR", folder)
    assert T.source_choices()[2] == ("Fashion-MNIST", "fashion-mnist")
