"""Feature visualisation: the acceptance numbers of issue #13 on seeded models, with oracles.

The expensive optimisations run once per module (fixtures) and are shared by the asserts.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_viz import featvis as fv
from alexnet_viz.activations import capture
from alexnet_viz.images import load_image
from alexnet_viz.model import load_model

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PHOTOS = sorted(p for p in ASSETS.iterdir() if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a machine whose 2 cores are shared with other jobs, torch's OpenMP threads
    wait on each other (measured: 680 ms a step with 2 threads at load 8, 50 ms with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded():
    return load_model("torchvision", "none", "cpu")


@pytest.fixture(scope="module")
def natural(loaded) -> torch.Tensor:  # (B, 3, 224, 224): the bundled photos, preprocessed as the app does
    return torch.cat([loaded.preprocess(load_image(p)) for p in PHOTOS])


CONV5_UNITS = sorted(np.random.default_rng(13).choice(256, size=5, replace=False).tolist())  # 5 at random


@pytest.fixture(scope="module")
def conv5_pictures(loaded):
    """The 5 conv5 channels, optimised with the default recipe in one batch."""
    return fv.visualize_units(loaded, "conv5", CONV5_UNITS, lock=None)


def _torchvision_state_dict(folder: Path, seed: int) -> Path:
    """A real torchvision AlexNet state dict (``features.0.weight`` ...), saved as users save theirs.

    torchvision's own initialisation (PyTorch's defaults: uniform weights, non-zero biases), not this
    package's (Kaiming normal, zero biases): another family of weights, not just another seed."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = torchvision.models.alexnet().state_dict()
    assert "features.0.weight" in state and "classifier.6.bias" in state
    path = folder / f"torchvision-alexnet-seed{seed}.pt"
    torch.save(state, path)
    return path


def _visualize_through_the_cli(weights: Path, out: Path) -> tuple[dict, list[fv.Visualization]]:
    """`alexnet-viz visualize --layer conv5 --units ... --weights FILE --json`, as a user runs it: the
    JSON it prints and its pictures as written to disk (PNG)."""
    import contextlib
    import io
    import json

    from alexnet_viz.cli import main

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("ALEXNET_VIZ_CACHE", str(out / "cache"))
        code = main(["visualize", "--layer", "conv5", "--units", ",".join(map(str, CONV5_UNITS)),
                     "--weights", str(weights), "--arch", "torchvision", "--device", "cpu",
                     "--out", str(out / "pictures"), "--json"])
    assert code == 0
    payload = json.loads(printed.getvalue())
    pictures = []
    for record in payload["units"]:
        with Image.open(record["image"]) as im:
            image = im.convert("RGB")
        pictures.append(fv.Visualization(
            image=image, arch=record["arch"], layer=record["layer"], unit=record["unit"],
            objective=record["objective"], settings=fv.Settings(**record["settings"]), value=record["value"],
            history=(), seconds=record["seconds"]))
    return payload, pictures


@pytest.fixture(scope="module",
                params=["seeded untrained", pytest.param("torchvision state dict", marks=pytest.mark.slow)])
def conv5_scores(request, tmp_path_factory):
    """The acceptance numbers of the 5 conv5 pictures, for each kind of weights the acceptance names:
    the seeded untrained model, and any torchvision AlexNet state dict passed with ``--weights`` (one
    made here, through the CLI)."""
    if request.param == "seeded untrained":
        model, pictures = request.getfixturevalue("loaded"), request.getfixturevalue("conv5_pictures")
    else:
        folder = tmp_path_factory.mktemp("weights")
        path = _torchvision_state_dict(folder, seed=7)
        payload, pictures = _visualize_through_the_cli(path, folder)
        model = load_model("torchvision", path, "cpu")  # the same file, loaded apart from the CLI
        # The pictures are of these weights: the CLI's fingerprint is theirs, not the seeded model's.
        seeded = request.getfixturevalue("loaded")
        assert {u["weights"] for u in payload["units"]} == {fv.weights_fingerprint(model.module)[:16]}
        assert payload["units"][0]["weights"] != fv.weights_fingerprint(seeded.module)[:16]
        assert [v.unit for v in pictures] == CONV5_UNITS and all(v.image.size == (224, 224) for v in pictures)
    photos = torch.cat([model.preprocess(load_image(p)) for p in PHOTOS])
    scores = [fv.assess(model, vis, photos) for vis in pictures]
    print(f"\nconv5 ({request.param}) units {CONV5_UNITS}:",
          *(f"{k} {[round(s[k], 3) for s in scores]}"
            for k in ("ratio", "rank_quantile", "hf_share", "scale_retention")),
          f"median ratio {float(np.median([s['ratio'] for s in scores])):.2f}", sep="\n  ")
    return scores


# --- building blocks --------------------------------------------------------------------------------------


def test_cut_network_equals_the_full_models_layer_output(loaded, natural):
    x = natural[:2]
    with torch.no_grad(), capture(loaded.module, ["conv5", "fc7"]) as acts:
        loaded.module(x)
    for layer in ("conv5", "fc7"):
        with torch.no_grad():
            cut = fv.cut_network(loaded.module, layer)(x)
        torch.testing.assert_close(cut, acts[layer])
        assert list(fv.cut_network(loaded.module, layer).named_children())[-1][0] == layer


def test_targets_and_units_are_checked(loaded):
    assert fv.resolve_target(loaded, None, "class") == "fc8"
    for layer, objective in (("relu5", "channel"), ("nope", "channel"), ("conv5", "class"), ("conv5", "bogus")):
        with pytest.raises(fv.FeatVisError):
            fv.resolve_target(loaded, layer, objective)
    with pytest.raises(fv.FeatVisError, match="units 0-255"):
        next(fv.visualize_iter(loaded, "conv5", [256], lock=None))
    assert fv.parse_units("0-3,8,2") == [0, 1, 2, 3, 8]
    with pytest.raises(fv.FeatVisError):
        fv.parse_units("5-2")
    with pytest.raises(fv.FeatVisError):
        fv.Settings(steps=0)


def test_high_frequency_share_oracle():
    n = 64
    xx = np.mgrid[:n, :n][1]
    low = np.sin(2 * np.pi * 4 * xx / n)  # 0.0625 cycles/pixel
    high = np.sin(2 * np.pi * 24 * xx / n)  # 0.375 cycles/pixel
    assert fv.high_frequency_share(np.stack([low] * 3, -1)) == pytest.approx(0.0, abs=1e-9)
    assert fv.high_frequency_share(np.stack([high] * 3, -1)) == pytest.approx(1.0, abs=1e-9)
    both = np.stack([low + high] * 3, -1)  # equal amplitudes: half the power each
    assert fv.high_frequency_share(both) == pytest.approx(0.5, abs=1e-9)
    noise = np.random.default_rng(0).random((n, n, 3))  # white: power flat over the square of frequencies
    share_above = 1 - math.pi * 0.25**2  # the disc of radius 0.25 in the unit square of (fx, fy)
    assert fv.high_frequency_share(noise) == pytest.approx(share_above, abs=0.03)
    for path in PHOTOS:  # the bundled photos sit in natural photos' range (0.003-0.024)
        assert fv.high_frequency_share(load_image(path).resize((224, 224))) < 0.05


def test_weights_fingerprint_follows_in_place_changes():
    model = load_model("cifar", "none", "cpu", num_classes=3).module
    before = fv.weights_fingerprint(model)
    assert fv.weights_fingerprint(model) == before
    with torch.no_grad():
        model.fc8.bias[0] += 1
    assert fv.weights_fingerprint(model) != before


def test_weights_fingerprint_of_batchnorm_models_counts_their_statistics():
    """The bn architecture holds a 0-dim integer tensor (num_batches_tracked): it is hashed too."""
    model = load_model("bn", "none", "cpu").module
    before = fv.weights_fingerprint(model)
    with torch.no_grad():
        model.bn1.num_batches_tracked += 1
    assert fv.weights_fingerprint(model) != before


# --- the acceptance criteria on conv5: the seeded untrained torchvision AlexNet, and a state dict file ------


def test_conv5_pictures_excite_their_channel_far_above_natural_photos(conv5_scores):
    ratios = [s["ratio"] for s in conv5_scores]
    assert float(np.median(ratios)) >= 2.0
    assert min(ratios) >= 2.0


def test_conv5_pictures_are_selective_for_their_channel(conv5_scores):
    # Noise can win the ratio for many channels at once; the picture must rank its own in the top quarter.
    assert all(s["rank_quantile"] < 0.25 for s in conv5_scores), [s["rank_quantile"] for s in conv5_scores]


def test_conv5_pictures_are_not_high_frequency_noise(conv5_scores):
    assert all(s["hf_share"] <= 0.15 for s in conv5_scores), [s["hf_share"] for s in conv5_scores]


def test_conv5_pictures_survive_a_smaller_scale(conv5_scores):
    assert all(s["scale_retention"] >= 0.5 for s in conv5_scores), [s["scale_retention"] for s in conv5_scores]


def test_plain_pixel_ascent_fails_the_frequency_check(loaded, conv5_pictures):
    """The check can fail: pixels at the input's size, no decorrelation, no transforms make noise."""
    plain = fv.Settings(steps=32, fourier=False, decorrelate=False, transforms=False, side=224)
    vis = fv.visualize(loaded, "conv5", conv5_pictures[0].unit, settings=plain, lock=None)
    assert fv.high_frequency_share(vis.image) > 0.15


# --- conv1 is linear before its ReLU --------------------------------------------------------------------
#
# A linear unit's best input in the box of valid pictures is the sign pattern of its filter (every pixel
# at 0 or 1 as the weight it meets is negative or positive): cosine sum|w| / (sqrt(n) |w|) with the
# filter, sqrt(2/pi) ~ 0.8 for white noise, ~0.7 for a Gabor; 1.0 would need a picture bounded in norm,
# not in [0, 1]. What the acceptance's ">= 0.6" needs besides: a picture that can hold the filter's
# detail. Measured on the seeded untrained model's white-noise filters (units 0-4, transforms off, the
# acceptance's cosine as _conv1_cosines computes it):
#   default recipe (Fourier, 128 px upsampled to 224)    0.39-0.43, median 0.41 (0.41 at 512 steps too)
#   plain pixels at 128 px, colour decorrelation          0.35-0.43, median 0.40
#   best possible 128-px picture (computed, see below)    0.42-0.45
#   Fourier recipe at 224 px                              0.73-0.75, median 0.74
#   plain pixels at 224 px, no decorrelation              0.77-0.81 (the sign pattern's own value)
# So the limit is the 128-pixel picture upsampled to 224 (Lucent's size), not the 1/f parameterisation.
# Trained conv1 filters are smooth (Gabors, colour blobs) and fit in 128 pixels. With the transforms on,
# the centre window's cosine is 0.04-0.15 for white noise and 0.01-0.11 for the Gabors below: the unit is
# shown its picture jittered by up to ~20 px, rotated and scaled, so its best picture is no longer the
# filter at one place.

CONV1_CENTRE = 55 // 2  # conv1's map is 55x55 at 224 (11x11, stride 4, padding 2)
CONV1_ROWS = slice(4 * CONV1_CENTRE - 2, 4 * CONV1_CENTRE - 2 + 11)  # the centre unit's 11x11 input window


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _patch01(vis: fv.Visualization) -> torch.Tensor:
    """The (3, 11, 11) window of the picture (values in [0, 1]) that conv1's centre unit sees."""
    x = torch.from_numpy(np.asarray(vis.image, dtype=np.float32) / 255).permute(2, 0, 1)
    return x[:, CONV1_ROWS, CONV1_ROWS]


def _conv1_cosines(loaded, pictures) -> tuple[list[float], list[float]]:
    """The acceptance's numbers: each picture's centre window, as the network sees it (normalised), against
    its unit's filter, and against another channel's: the one whose filter is least like this one's
    (Gabors of one orientation resemble each other, and so do their best inputs)."""
    w = loaded.conv1.weight
    cosines, others = [], []
    for vis in pictures:
        patch = fv._normalise(_patch01(vis)[None], loaded)[0]
        patch = patch - patch.mean()  # the filter's sum is ~0: a flat offset carries no response
        other = min((u for u in range(w.shape[0]) if u != vis.unit), key=lambda u: abs(_cos(w[u], w[vis.unit])))
        cosines.append(_cos(patch, w[vis.unit]))
        others.append(abs(_cos(patch, w[other])))
    return cosines, others


def test_conv1_pixel_ascent_gives_the_sign_pattern_of_its_filter(loaded):
    """The oracle: plain pixels at the input's size (no Fourier basis, no colour mixing, no transforms).
    The centre unit's gradient on a pixel is its weight over the channel's std, the same sign at every
    step, and Adam's step is lr times that sign: the window is 0.5 +- one amount, signed as the filter."""
    w = loaded.conv1.weight
    plain = fv.Settings(steps=8, fourier=False, decorrelate=False, transforms=False, side=224)
    pictures = fv.visualize_units(loaded, "conv1", [0, 1, 2, 3, 4], objective="neuron", settings=plain, lock=None)
    for vis in pictures:
        centred = _patch01(vis) - 0.5
        assert torch.equal(torch.sign(centred), torch.sign(w[vis.unit])), vis.unit
        assert _cos(centred, w[vis.unit]) == pytest.approx(_cos(torch.sign(w[vis.unit]), w[vis.unit]), abs=0.01)
    cosines, others = _conv1_cosines(loaded, pictures)
    print("conv1 pixel ascent cosines", [round(c, 3) for c in cosines], "others", [round(c, 3) for c in others])
    assert min(cosines) >= 0.6 and max(others) <= 0.2


def test_conv1_white_noise_filters_with_the_default_recipe(loaded):
    """The recipe itself (Fourier basis, colour decorrelation, Adam, 128 steps) on the untrained network's
    white-noise filters, transforms off. conv1's picture is at the input's 224 px by default
    (``param_side``), so it can hold their detail (at 128 px it could not: the next test)."""
    assert fv.param_side(224, first_layer=True) == 224 and fv.param_side(224) == 128
    settings = fv.Settings(transforms=False)
    pictures = fv.visualize_units(loaded, "conv1", [0, 1, 2, 3, 4], objective="neuron", settings=settings,
                                  lock=None)
    cosines, others = _conv1_cosines(loaded, pictures)
    print("conv1 white noise, 224 px: cosines", [round(c, 3) for c in cosines],
          f"median {float(np.median(cosines)):.3f}", "others", [round(c, 3) for c in others])
    assert float(np.median(cosines)) >= 0.6
    assert min(cosines) >= 0.45
    assert max(others) <= 0.2


def test_conv1_recipe_at_128_pixels_reaches_the_best_128_pixel_picture_of_a_white_noise_filter(loaded):
    """At Lucent's 128 px (upsampled bilinearly to 224) the recipe cannot reach 0.6 on white-noise filters,
    and no method could: the best 128-pixel picture, computed here by hand, scores 0.42-0.45. The recipe
    gets 94-97% of that picture's gain over grey (measured; 90% asserted), and its cosine to within 0.05
    of that picture's (measured: 0.02-0.04 below it)."""
    w, b = loaded.conv1.weight, loaded.conv1.bias
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (loaded.mean, loaded.std))
    # The 224 rows the centre unit sees, as bilinear (align_corners) mixtures of the 128 picture's rows.
    up = torch.nn.functional.interpolate(torch.eye(128)[:, None], size=224, mode="linear", align_corners=True)
    rows = up[:, 0, CONV1_ROWS].T  # (11, 128)
    pictures = fv.visualize_units(loaded, "conv1", [0, 1, 2, 3, 4], objective="neuron",
                                  settings=fv.Settings(transforms=False, side=128), lock=None)
    cosines, _ = _conv1_cosines(loaded, pictures)
    best_cosines, gains = [], []
    for vis, cosine in zip(pictures, cosines, strict=True):
        gradient = torch.einsum("ia,cij,jb->cab", rows, w[vis.unit] / std, rows)  # on the 128 picture
        best = (gradient > 0).float()  # a linear function's maximum over the box [0, 1]
        window = torch.einsum("ia,cab,jb->cij", rows, best, rows)
        response = float(b[vis.unit] + (w[vis.unit] * (window - mean) / std).sum())
        grey = float(b[vis.unit] + (w[vis.unit] * (0.5 - mean) / std).sum())  # where the optimisation starts
        gains.append((vis.value - grey) / (response - grey))
        assert 0.9 <= gains[-1] <= 1 + 1e-5, (vis.value, grey, response)
        normalised = (window - mean) / std
        best_cosines.append(_cos(normalised - normalised.mean(), w[vis.unit]))
        assert cosine == pytest.approx(best_cosines[-1], abs=0.05)
    print("conv1 white noise, 128 px: cosines", [round(c, 3) for c in cosines], "best 128-px picture",
          [round(c, 3) for c in best_cosines], "share of its gain", [round(g, 3) for g in gains])
    assert max(best_cosines) < 0.5


def _gabors(count: int, seed: int) -> torch.Tensor:
    """Grey 11x11 Gabor filters of random orientation, wavelength and phase: what trained conv1 units of
    AlexNet look like (paper, Figure 3), unlike an untrained network's white-noise filters, whose
    finest detail a 128-pixel picture upsampled to 224 cannot hold."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(11.0) - 5, torch.arange(11.0) - 5, indexing="ij")
    filters = []
    for _ in range(count):
        theta, wavelength, phase = (float(v) for v in torch.rand(3, generator=g) * torch.tensor([math.pi, 6, 6.3]))
        u = xx * math.cos(theta) + yy * math.sin(theta)
        gabor = torch.exp(-(xx**2 + yy**2) / (2 * 2.5**2)) * torch.cos(2 * math.pi * u / (4 + wavelength) + phase)
        filters.append(gabor.expand(3, 11, 11))
    w = torch.stack(filters)
    return 0.3 * w / w.flatten(1).norm(dim=1)[:, None, None, None]


def test_conv1_centre_neuron_picture_is_its_filter():
    """The default recipe (conv1: 224 px), transforms off, on Gabor filters written into conv1 (trained-like)."""
    loaded = load_model("torchvision", "none", "cpu")
    with torch.no_grad():
        loaded.conv1.weight.copy_(_gabors(64, seed=1))
    pictures = fv.visualize_units(loaded, "conv1", [0, 1, 2, 3], objective="neuron",
                                  settings=fv.Settings(transforms=False), lock=None)
    cosines, others = _conv1_cosines(loaded, pictures)
    print("conv1 Gabor cosines", [round(c, 2) for c in cosines], "others", [round(c, 2) for c in others])
    assert float(np.median(cosines)) >= 0.6  # the ceiling, a saturated sign pattern, is ~0.7
    assert min(cosines) >= 0.45
    assert max(others) <= 0.2


# --- the class objective on a small model trained here ---------------------------------------------------


def _toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of 32x32 pictures: red, green, blue or grey stripes of random phase, with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    colours = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [0.6, 0.6, 0.6]])
    xx = torch.arange(32.0)
    phase = torch.rand(n, generator=g) * 6.3
    stripes = 0.5 + 0.5 * torch.sin(xx[None, :] * 0.8 + phase[:, None])  # (n, 32)
    images = colours[labels][:, :, None, None] * stripes[:, None, None, :].expand(n, 1, 32, 32)
    images = (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return images, labels


@pytest.fixture(scope="module")
def toy_models():
    trained = load_model("cifar", "none", "cpu", num_classes=4)
    module = trained.module
    mean = torch.tensor(trained.mean).view(1, 3, 1, 1)
    std = torch.tensor(trained.std).view(1, 3, 1, 1)
    images, labels = _toy_data(512, seed=0)
    module.requires_grad_(True).train()
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _epoch in range(3):
            for i in range(0, 512, 64):
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(module((images[i:i + 64] - mean) / std), labels[i:i + 64])
                loss.backward()
                optimiser.step()
    module.requires_grad_(False).eval()
    test_x, test_y = _toy_data(128, seed=1)
    with torch.no_grad():
        accuracy = float((module((test_x - mean) / std).argmax(1) == test_y).float().mean())
    return trained, fv.untrained_twin(trained), accuracy


def test_class_pictures_convince_a_trained_model_and_not_an_untrained_one(toy_models):
    trained, untrained, accuracy = toy_models
    assert accuracy >= 0.9, accuracy
    classes = [0, 1, 2, 3]
    probs = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        pictures = fv.visualize_units(model, None, classes, objective="class", lock=None)
        assert all(p.image.size == (32, 32) for p in pictures)  # optimised at the model's own size
        batch = torch.stack([model.transform(p.image) for p in pictures])
        with torch.no_grad():
            probs[name] = torch.softmax(model.module(batch), dim=1)[torch.arange(4), torch.tensor(classes)]
    print("class softmax", {k: [round(float(v), 3) for v in p] for k, p in probs.items()})
    assert int((probs["trained"] >= 0.9).sum()) >= 3
    assert float(probs["untrained"].max()) < 0.35  # 4 classes: uniform is 0.25


def test_margin_and_logit_objectives_run(toy_models):
    trained, _, _ = toy_models
    for loss in ("margin", "logit"):
        vis = fv.visualize(trained, None, 1, objective="class", settings=fv.Settings(steps=8, class_loss=loss),
                           lock=None)
        assert vis.history[-1] > vis.history[0]


# --- live frames, batching and the disk cache -----------------------------------------------------------------


def test_frames_progress_and_cache(tmp_path):
    loaded = load_model("cifar", "none", "cpu", num_classes=4)
    cache = fv.DiskCache(tmp_path)
    seen: list[tuple[float, str]] = []
    settings = fv.Settings(steps=12)
    frames = list(fv.visualize_iter(loaded, "conv3", [5, 9], settings=settings, every=4, cache=cache,
                                    lock=None, progress=lambda f, m: seen.append((f, m))))
    assert [f.step for f in frames] == [4, 8, 12] and frames[-1].done and not frames[0].done
    assert all(len(f.images) == 2 for f in frames)
    assert [f for f, _ in seen] == [pytest.approx(s / 12) for s in range(1, 13)]
    first = frames[-1].results
    assert first is not None and not any(v.cached for v in first)
    assert len(list(tmp_path.glob("*.png"))) == 2 and not list(tmp_path.glob(".*"))

    again = list(fv.visualize_iter(loaded, "conv3", [9, 5], settings=settings, cache=cache, lock=None))
    assert len(again) == 1 and again[0].results is not None and all(v.cached for v in again[0].results)
    assert np.array_equal(np.asarray(again[0].results[1].image), np.asarray(first[0].image))

    # Another seed, or other weights, is another picture.
    other = fv.visualize(loaded, "conv3", 5, settings=replace(settings, seed=1), cache=cache, lock=None)
    assert not other.cached
    with torch.no_grad():
        loaded.module.conv1.bias += 0.1
    assert not fv.visualize(loaded, "conv3", 5, settings=settings, cache=cache, lock=None).cached


def test_a_units_picture_does_not_depend_on_its_batch():
    loaded = load_model("cifar", "none", "cpu", num_classes=4)
    settings = fv.Settings(steps=10)
    alone = fv.visualize(loaded, "conv4", 7, settings=settings, lock=None)
    batch = fv.visualize_units(loaded, "conv4", [3, 7, 11], settings=settings, lock=None)
    a, b = np.asarray(alone.image, dtype=int), np.asarray(batch[1].image, dtype=int)
    assert np.abs(a - b).max() <= 1  # float rounding of a batched convolution, at most one grey level


def test_untrained_twin_is_another_network_with_the_same_interface(loaded):
    twin = fv.untrained_twin(loaded)
    assert twin.arch == loaded.arch and twin.input_size == loaded.input_size and not twin.weights.trained
    assert not torch.equal(twin.conv1.weight, loaded.conv1.weight)  # loaded is seed 0 itself: twin is seed 1
    assert isinstance(fv.visualize(twin, "conv2", 0, settings=fv.Settings(steps=2), lock=None).image, Image.Image)


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_visualize_writes_the_picture_and_its_json(tmp_path, capsys, monkeypatch):
    import json

    from alexnet_viz.cli import main

    monkeypatch.setenv("ALEXNET_VIZ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["visualize", "--layer", "conv2", "--unit", "4", "--steps", "3", "--weights", "none",
                 "--arch", "torchvision", "--seed", "2", "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {"image", "layer", "unit", "steps", "seconds"} <= set(payload)
    assert (payload["layer"], payload["unit"], payload["steps"]) == ("conv2", 4, 3)
    assert payload["image"] == str(out / "conv2-4.png") and Image.open(payload["image"]).size == (224, 224)
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 1

    assert main(["visualize", "--layer", "conv3", "--units", "0-3", "--steps", "2", "--weights", "none",
                 "--out", str(out), "--json", "--no-cache"]) == 0
    atlas = json.loads(capsys.readouterr().out)
    assert [u["unit"] for u in atlas["units"]] == [0, 1, 2, 3] and Path(atlas["atlas"]).is_file()
    assert all((out / f"conv3-{u}.png").is_file() for u in range(4))

    assert main(["visualize", "--objective", "class", "--unit", "tabby", "--steps", "2", "--weights", "none",
                 "--out", str(out), "--json", "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["unit"] == 281  # "tabby, tabby cat" in ImageNet's list

    assert main(["visualize", "--layer", "relu2", "--unit", "0", "--weights", "none", "--out", str(out)]) == 2
    assert "conv1, conv2" in capsys.readouterr().err


def test_the_shared_models_lock_is_taken_per_step_and_released():
    import threading

    loaded = load_model("cifar", "none", "cpu", num_classes=4)
    MODEL_LOCK = loaded.lock
    held: list[bool] = []
    frames = fv.visualize_iter(loaded, "conv2", 0, settings=fv.Settings(steps=4), every=1,
                               progress=lambda f, m: held.append(MODEL_LOCK.locked()))
    first = next(frames)  # between steps the lock is free: another visitor's request can run
    assert not MODEL_LOCK.locked() and first.step == 1
    blocked = threading.Event()

    def other_request() -> None:
        with MODEL_LOCK:
            blocked.set()

    t = threading.Thread(target=other_request)
    t.start()
    t.join(5)
    assert blocked.is_set()
    assert list(frames)[-1].done and not MODEL_LOCK.locked() and held == [False] * 4
