"""`alexnet-viz visualize`, `index` and `neighbours`: feature visualisation, dataset examples and
nearest neighbours from the command line (the engine is in featvis.py and gallery.py)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["register"]


def _bar(desc: str, enabled: bool) -> tuple[Callable[[float, str], None] | None, Callable[[], None]]:
    """A tqdm bar driven by (fraction, message) callbacks, and its closer; (None, no-op) when disabled."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, unit="‰", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = round(1000 * fraction)
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return update, bar.close


def _atlas(images: list[Any], columns: int) -> Any:
    from PIL import Image

    side = images[0].size[0]
    rows = math.ceil(len(images) / columns)
    gap = max(1, side // 32)
    sheet = Image.new("RGB", (columns * side + (columns - 1) * gap, rows * side + (rows - 1) * gap), (255, 255, 255))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * (side + gap), (i // columns) * (side + gap)))
    return sheet


def _cmd_visualize(args: argparse.Namespace) -> int:
    from . import featvis as fv
    from .cli import _load

    try:
        settings = fv.Settings(steps=args.steps, seed=args.seed, class_loss=args.class_loss)
        loaded = _load(args)
        if args.untrained_twin:
            loaded = fv.untrained_twin(loaded)
        layer = fv.resolve_target(loaded, args.layer, args.objective)
        if args.units is not None:
            units = fv.parse_units(args.units)
        elif args.unit is not None:
            units = [loaded.class_index(args.unit) if args.objective == "class" else int(args.unit)]
        else:
            raise fv.FeatVisError("Give --unit U or --units 0-15.")
        cache = None if args.no_cache else fv.DiskCache()
        progress, close = _bar(f"{layer} {args.units or units[0]}", not args.json and sys.stderr.isatty())
        try:
            results = fv.visualize_units(loaded, layer, units, objective=args.objective, settings=settings,
                                         cache=cache, progress=progress, lock=None)
        finally:
            close()
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for vis in results:
        path = out / f"{vis.layer}-{vis.unit}.png"
        vis.image.save(path)
        records.append(vis.to_dict(str(path)))
        if not args.json:
            note = " (cached)" if vis.cached else ""
            print(f"{path}: {vis.objective} {vis.layer}[{vis.unit}] = {vis.value:.4g} after {vis.settings.steps} "
                  f"steps, {vis.seconds:.2f} s{note}")
    if len(results) > 1:
        atlas = out / f"{layer}-atlas.png"
        _atlas([v.image for v in results], columns=math.ceil(math.sqrt(len(results)))).save(atlas)
        if not args.json:
            print(f"atlas: {atlas}")
        payload: Any = {"atlas": str(atlas), "layer": layer, "units": records}
    else:
        payload = records[0]
    if args.json:
        print(json.dumps(payload, indent=2))
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from .cli import _load
    from .gallery import build_index

    try:
        loaded = _load(args)
        progress, close = _bar("index", not args.json and sys.stderr.isatty())
        try:
            weights = "none" if loaded.weights.source == "none" else str(args.weights)
            index = build_index(loaded, args.folder, weights=weights, batch=args.batch, progress=progress,
                                lock=None)
        finally:
            close()
        path = index.save(args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {"index": str(path), "images": len(index.paths), "skipped": list(index.skipped), "arch": index.arch,
               "layers": index.layers, "fingerprint": index.fingerprint[:16]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name in index.skipped:
            print(f"skipped (not a readable image): {name}", file=sys.stderr)
        print(f"{len(index.paths)} images indexed -> {path}")
    return 0


def _cmd_neighbours(args: argparse.Namespace) -> int:
    from .gallery import GalleryIndex, neighbours
    from .model import load_model

    try:
        index = GalleryIndex.load(args.index)
        loaded = load_model(index.arch, args.weights or index.weights, args.device, fallback=False)
        result = neighbours(index, loaded, args.image, k=args.k, lock=None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    for space, found in (("fc7", result.fc7), ("pixels", result.pixels)):
        print(f"nearest in {space} space:")
        for n in found:
            print(f"  {n.distance:10.4f}  {n.path}")
    return 0


def register(sub: Any, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the three subcommands to ``alexnet-viz``'s subparsers."""
    from .featvis import CLASS_LOSSES, OBJECTIVES

    p = sub.add_parser("visualize", help="feature visualisation: the picture a unit, channel or class wants")
    p.add_argument("--layer", default=None, help="conv1-conv5 or fc6-fc8 (default for --objective class: fc8)")
    p.add_argument("--unit", default=None, help="channel / unit index (a class name or index for 'class')")
    p.add_argument("--units", default=None, help="several units for an atlas: 0-15 or 3,7,9")
    p.add_argument("--objective", default="channel", choices=list(OBJECTIVES),
                   help="channel: mean before its ReLU; neuron: the map's centre; class: log-softmax of a class")
    p.add_argument("--class-loss", default="logsoftmax", choices=list(CLASS_LOSSES))
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--untrained-twin", action="store_true",
                   help="visualise the same unit of a seeded untrained copy (the control picture)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    p.add_argument("--out", required=True, help="output folder: <layer>-<unit>.png (and <layer>-atlas.png)")
    p.add_argument("--json", action="store_true")
    add_model_args(p)
    p.set_defaults(func=_cmd_visualize)

    p = sub.add_parser("index", help="run a folder of images once: top-9 images per channel, fc7 vectors")
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="index file (.npz)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--json", action="store_true")
    add_model_args(p)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("neighbours", help="the gallery images nearest an image in fc7 and in pixel space")
    p.add_argument("image")
    p.add_argument("--index", required=True, help="an index file from `alexnet-viz index`")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--weights", default=None, help="weights (default: those the index was built with)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_neighbours)
