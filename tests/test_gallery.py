"""Gallery index and nearest neighbours against brute force; receptive fields against autograd."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alexnet_viz import gallery as g
from alexnet_viz.activations import capture
from alexnet_viz.images import load_image
from alexnet_viz.model import load_model

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def loaded():
    return load_model("torchvision", "none", "cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """12 images (more than 9, in 3 batches of 5): the bundled photos, flipped copies, seeded noise; one
    unreadable file, which the index skips."""
    root = tmp_path_factory.mktemp("gallery")
    photos = sorted(p for p in ASSETS.iterdir() if p.suffix in (".jpg", ".png"))[:5]
    (root / "sub").mkdir()
    for p in photos:
        im = load_image(p).resize((160, 120))
        im.save(root / f"{p.stem}.png")
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "sub" / f"{p.stem}_flip.jpg")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)).save(root / f"noise{i}.bmp")
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def index(loaded, folder):
    seen = []
    built = g.build_index(loaded, folder, weights="none", batch=5, lock=None,
                          progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen)
    return built


def _brute(loaded, paths):
    """Every image alone through the full model, with the app's own hooks: the oracle."""
    maxima, fc7, thumbs = {c: [] for c in loaded.conv_layers}, [], []
    for p in paths:
        x = loaded.preprocess(load_image(p))
        with torch.no_grad(), capture(loaded.module, [*loaded.conv_layers, "relu7"]) as acts:
            loaded.module(x)
        for c in loaded.conv_layers:
            a = acts[c][0]  # (C, h, w)
            maxima[c].append(a.flatten(1).max(1))
        fc7.append(acts["relu7"][0].numpy())
        view = (x[0] * torch.tensor(loaded.std).view(3, 1, 1) + torch.tensor(loaded.mean).view(3, 1, 1)).clamp(0, 1)
        thumbs.append(torch.nn.functional.adaptive_avg_pool2d(view, 32).flatten().numpy())
    return ({c: (torch.stack([v.values for v in m]).numpy(), torch.stack([v.indices for v in m]).numpy())
             for c, m in maxima.items()}, np.stack(fc7), np.stack(thumbs))


@pytest.fixture(scope="module")
def brute(loaded, index):
    return _brute(loaded, [index.path(i) for i in range(len(index.paths))])


def test_index_lists_readable_images_and_skips_the_rest(index, folder):
    assert len(index.paths) == 12 and index.skipped == ("broken.jpg",)
    assert all(index.path(i).is_file() for i in range(12))
    assert index.fc7.shape == (12, 4096) and index.pixels.shape == (12, 3 * 32 * 32)


def test_top9_equals_brute_force(loaded, index, brute):
    maxima, _, _ = brute
    for layer in loaded.conv_layers:
        values, flat_pos = maxima[layer]  # (N, C)
        with torch.no_grad(), capture(loaded.module, [layer]) as acts:
            loaded.module(torch.zeros(1, 3, 224, 224))
        w = acts[layer].shape[-1]
        for c in range(values.shape[1]):
            order = sorted(range(values.shape[0]), key=lambda i, c=c: (-values[i, c], i))[:9]
            assert index.top_image[layer][c].tolist() == order, (layer, c)
            np.testing.assert_allclose(index.top_value[layer][c], values[order, c], rtol=1e-5, atol=1e-5)
            pos = index.top_pos[layer][c]
            assert (pos[:, 0] * w + pos[:, 1]).tolist() == flat_pos[order, c].tolist()
        assert len(set(index.top_image[layer][0].tolist())) == 9  # at most one hit per image


def test_neighbours_equal_brute_force(loaded, index, brute):
    _, fc7, thumbs = brute
    query = ASSETS / "cat.jpg"
    result = g.neighbours(index, loaded, query, k=6, lock=None)
    oracle = _brute(loaded, [query])
    for got, bank, q in ((result.fc7, fc7, oracle[1][0]), (result.pixels, thumbs, oracle[2][0])):
        d = np.linalg.norm(bank.astype(np.float64) - q.astype(np.float64), axis=1)
        order = sorted(range(len(d)), key=lambda i: (d[i], i))[:6]
        assert [n.image for n in got] == order
        np.testing.assert_allclose([n.distance for n in got], d[order], rtol=1e-4, atol=1e-4)
    payload = result.to_dict()
    assert set(payload) == {"fc7", "pixels"} and set(payload["fc7"][0]) == {"path", "distance"}


def test_nearest_breaks_ties_by_row():
    bank = np.array([[1.0, 0], [0, 1.0], [0, 0], [1.0, 0]])
    assert g.nearest(bank, np.array([0.0, 0]), 4) == [(2, 0.0), (0, 1.0), (1, 1.0), (3, 1.0)]


def test_index_round_trips_through_its_file(index, tmp_path):
    path = index.save(tmp_path / "gallery")
    assert path.suffix == ".npz"
    again = g.GalleryIndex.load(path)
    assert again.paths == index.paths and again.fingerprint == index.fingerprint and again.root == index.root
    np.testing.assert_array_equal(again.fc7, index.fc7)
    for layer in index.layers:
        np.testing.assert_array_equal(again.top_image[layer], index.top_image[layer])
        np.testing.assert_array_equal(again.top_pos[layer], index.top_pos[layer])
    assert again.top("conv5", 3) == index.top("conv5", 3)


def test_load_refuses_what_is_not_an_index(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(g.GalleryError):
        g.GalleryIndex.load(tmp_path / "other.npz")
    objects = tmp_path / "pickled.npz"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(g.GalleryError):
        g.GalleryIndex.load(objects)
    with pytest.raises(g.GalleryError):
        g.GalleryIndex.load(tmp_path / "missing.npz")


def test_neighbours_refuse_other_weights(index):
    other = load_model("torchvision", "none", "cpu")
    with torch.no_grad():
        other.module.fc7.bias += 1
    with pytest.raises(g.GalleryError, match="other weights"):
        g.neighbours(index, other, ASSETS / "cat.jpg", lock=None)


def test_crops_are_the_receptive_field(loaded, index):
    crops = g.top_crops(index, loaded, "conv2", 5)
    assert len(crops) == 9
    assert all(crop.size == (51, 51) for crop, _ in crops)
    crop, hit = crops[0]
    view = g._view(loaded, hit.path)
    top, left, bottom, right = g.receptive_field(loaded.module, "conv2").box(hit.y, hit.x, 224)
    inside = np.asarray(view.crop((left, top, right, bottom)))
    pasted = np.asarray(crop)[top - hit.box[0]: bottom - hit.box[0], left - hit.box[1]: right - hit.box[1]]
    np.testing.assert_array_equal(pasted, inside)


# --- receptive fields ---------------------------------------------------------------------------------------------


def test_receptive_field_sizes_of_torchvision_alexnet(loaded):
    sizes = {n: g.receptive_field(loaded.module, n).size for n in ("conv1", "conv2", "conv3", "conv4", "conv5",
                                                                   "pool5")}
    assert sizes == {"conv1": 11, "conv2": 51, "conv3": 99, "conv4": 131, "conv5": 163, "pool5": 195}
    with pytest.raises(g.GalleryError):
        g.receptive_field(loaded.module, "fc6")


@pytest.mark.parametrize("arch", ["torchvision", "paper", "cifar"])
def test_receptive_field_equals_the_gradients_support(arch):
    """Oracle: the input pixels a unit's gradient reaches, in a copy whose max pools are average pools
    (same window; a max pool's gradient reaches one pixel only) and whose weights are positive."""
    model = copy.deepcopy(load_model(arch, "none", "cpu").module)
    for name, m in model.named_children():
        if isinstance(m, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
        if isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.copy_(m.weight.abs() + 0.01)
                m.bias.fill_(0.1)  # every ReLU passes
    size = {"torchvision": 224, "paper": 227, "cifar": 32}[arch]
    for layer in ("conv1", "pool1", "conv3", "conv5"):
        net = nn.Sequential(*list(model.children())[: [n for n, _ in model.named_children()].index(layer) + 1])
        rf = g.receptive_field(model, layer)
        x = torch.ones(1, 3, size, size, requires_grad=True)
        out = net(x)
        h = out.shape[-1]
        for y, xx in ((0, 0), (h // 2, h // 3), (h - 1, h - 1)):
            (grad,) = torch.autograd.grad(out[0, 0, y, xx], x, retain_graph=True)
            rows = grad[0].abs().sum(0).sum(1).nonzero().flatten()
            cols = grad[0].abs().sum(0).sum(0).nonzero().flatten()
            top, left, bottom, right = rf.box(y, xx, size)
            assert (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1) == (top, bottom, left, right), \
                (arch, layer, y, xx)


def test_cli_index_and_neighbours(folder, tmp_path, capsys, loaded, index):
    import json

    from alexnet_viz.cli import main

    path = tmp_path / "gallery.npz"
    assert main(["index", str(folder), "--out", str(path), "--weights", "none", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 12 and summary["skipped"] == ["broken.jpg"] and path.is_file()
    assert main(["neighbours", str(ASSETS / "cat.jpg"), "--index", str(path), "--k", "4", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    expected = g.neighbours(index, loaded, ASSETS / "cat.jpg", k=4, lock=None).to_dict()
    assert [n["path"] for n in payload["fc7"]] == [n["path"] for n in expected["fc7"]]
    assert [n["path"] for n in payload["pixels"]] == [n["path"] for n in expected["pixels"]]
    assert main(["neighbours", str(ASSETS / "cat.jpg"), "--index", str(tmp_path / "nope.npz")]) == 2


def test_assets_index_is_built_once_and_kept(loaded, folder, tmp_path):
    first = g.assets_index(loaded, folder=folder, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = g.assets_index(loaded, folder=folder, cache_dir=tmp_path)
    assert again.paths == first.paths and again is not first
    np.testing.assert_array_equal(again.fc7, first.fc7)
