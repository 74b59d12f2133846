"""`alexnet-viz`: analyse images to disk, print architecture tables, manage weights, serve the app."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .architectures import ARCHITECTURES

__all__ = ["main"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, choices=list(ARCHITECTURES),
                   help="architecture (default: the one a trained checkpoint's model.json names, else torchvision, "
                        "the only one with ImageNet weights)")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (default; from torch's hub cache, downloaded when online), 'none' "
                        "(seeded, untrained) or a .safetensors/.pt/.pth file")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the model (default: from weights)")
    p.add_argument("--labels", default=None, help="text file with one class name per line")


def _load(args: argparse.Namespace):
    from .model import load_model

    loaded = load_model(args.arch, args.weights, args.device, num_classes=args.num_classes, labels=args.labels,
                        fallback=True)
    if loaded.weights.warning:
        print(f"WARNING: {loaded.weights.warning}", file=sys.stderr)
    return loaded


def _unique_dir(out: Path, stem: str, used: set[str]) -> Path:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return out / name


def _write_analysis(loaded: Any, image_path: Path, folder: Path, methods: Sequence[str], target: str | None,
                    top_k: int, progress: bool) -> dict[str, Any]:
    from . import render
    from .analysis import analyze, explain
    from .attribution import METHODS, tqdm_progress

    analysis = analyze(loaded, image_path, top_k=top_k)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def save(image: Any, name: str) -> None:
        image.save(folder / name)
        files.append(name)

    save(analysis.view, "input.png")
    save(render.top_k_chart([p.label for p in analysis.top_k], [p.probability for p in analysis.top_k]),
         "top_k.png")
    save(render.filter_grid(loaded.conv1.weight), "filters_conv1.png")
    for layer, act in analysis.activations.items():
        grid = render.vector_strip(act) if act.ndim == 1 else render.feature_grid(act)[0]
        save(grid, f"features_{layer}.png")
    attributions = {}
    for method in methods:
        bar = tqdm_progress(f"{image_path.name}: {method}") if progress and METHODS[method].slow else None
        attr = explain(loaded, analysis, method, target=target, progress=bar)
        save(render.attribution_overlay(analysis.view, attr.heatmap, signed=attr.signed), f"attribution_{method}.png")
        attributions[method] = {"target": attr.target, "label": loaded.categories[attr.target],
                                "seconds": round(attr.seconds, 4), "options": dict(attr.options),
                                **({"convergence_delta": attr.convergence_delta}
                                   if attr.convergence_delta is not None else {})}
    result = {
        "image": str(image_path),
        **analysis.to_dict(),
        "settings": {"arch": loaded.arch, "device": str(loaded.device), "methods": list(methods),
                     "target": target, "top_k": top_k},
        "weights": {"source": loaded.weights.source, "description": loaded.weights.description,
                    "trained": loaded.weights.trained, "warning": loaded.weights.warning},
        "attributions": attributions,
        "files": files,
    }
    (folder / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _cmd_analyze(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .attribution import METHODS
    from .images import ImageError

    methods: list[str] = []
    for m in args.method or []:
        methods.extend(METHODS if m == "all" else [m])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)} or all", file=sys.stderr)
        return 2
    loaded = _load(args)
    out = Path(args.out)
    used: set[str] = set()
    results, failed = [], 0
    show = not args.json and sys.stderr.isatty()
    for image in tqdm(args.images, desc="images", unit="image", disable=not show or len(args.images) < 2):
        path = Path(image)
        folder = _unique_dir(out, path.stem, used)
        try:
            results.append(_write_analysis(loaded, path, folder, list(dict.fromkeys(methods)), args.target,
                                           args.top_k, show))
        except (ImageError, ValueError, RuntimeError) as e:  # one line per bad image; the batch goes on
            failed += 1
            print(f"error: {path}: {e}", file=sys.stderr)
            results.append({"image": str(path), "error": str(e)})
            continue
        if not args.json:
            top = results[-1]["top_k"][0]
            print(f"{path}: {top['label']} ({top['probability']:.1%}) -> {folder}")
    if args.json:
        print(json.dumps(results if len(results) != 1 else results[0], indent=2))
    return 1 if failed else 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from .summary import format_table, summarize

    try:
        summary = summarize(args.arch, num_classes=args.num_classes or 1000, input_size=args.input_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_table(summary))
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from .weights import WeightsError, fetch_imagenet, weights_status

    if args.action == "fetch":
        try:
            path = fetch_imagenet(progress=True)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"ImageNet weights ready at {path}")
        return 0
    print(weights_status().describe())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .ui import serve

    serve(arch=args.arch, weights=args.weights, device=args.device, num_classes=args.num_classes,
          labels=args.labels, host=args.host, port=args.port, share=args.share)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import DataError, TrainConfig, train

    config = TrainConfig(arch=args.arch, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, optimizer=args.optimizer, augment=not args.no_augment, seed=args.seed,
                         device=args.device, resume=args.resume, input_size=args.input_size,
                         num_classes=args.num_classes, val_fraction=args.val_fraction)
    try:
        result = train(config, progress=sys.stderr.isatty())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"test accuracy {result.test_accuracy:.2%} after {len(result.history)} epochs in {result.seconds:.0f} s; "
          f"weights in {result.out / 'model.safetensors'}")
    return 0


def _bench(argv: list[str]) -> int:
    """``alexnet-viz bench``: the harness lives in a repository checkout (``benchmarks/``, beside its recorded
    results), the one this package runs from or the current folder; an installed package alone has none."""
    import importlib

    roots = (Path(__file__).resolve().parents[1], Path.cwd())
    root = next((r for r in roots if (r / "benchmarks" / "main.py").is_file() and (r / "app.py").is_file()), None)
    if root is None:
        print("error: alexnet-viz bench needs the repository checkout (its benchmarks/ folder): run it inside a "
              "clone of the repository.", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    return int(importlib.import_module("benchmarks.main").main(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-viz", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="analyse images: predictions, filters, feature maps, attributions")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder; one sub-folder per image")
    _add_model_args(p)
    p.add_argument("--method", action="append", metavar="M",
                   help="attribution method (repeatable) or 'all'; default: none")
    p.add_argument("--target", default=None, help="class index or name to explain (default: the top-1)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print result.json to stdout")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("summary", help="per-layer table: shapes, parameters, MACs and their shares")
    p.add_argument("--arch", default="torchvision", choices=list(ARCHITECTURES))
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--input-size", type=int, default=None, help="input side (default: the architecture's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("serve", help="start the web app (the same as `python app.py`)")
    _add_model_args(p)
    # Hugging Face Spaces set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; a laptop gets loopback only.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to serve a lecture hall's network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("train", help="train a seed AlexNet on an image folder, cifar10 or fashion-mnist")
    p.add_argument("--arch", default="cifar", choices=list(ARCHITECTURES))
    p.add_argument("--data", required=True, help="an image folder (one sub-folder per class), cifar10 or "
                                                "fashion-mnist (Debian's dataset-fashion-mnist package)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, model.json, curves.png")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--no-augment", action="store_true", help="no random crops and flips")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(func=_cmd_train)

    # `alexnet-viz bench ...` hands every argument to the checkout's benchmarks.main (see _bench); listed for --help.
    sub.add_parser("bench", help="run the benchmark (needs the repository checkout; same flags as "
                                 "benchmarks/bench.py)", add_help=False)

    p = sub.add_parser("weights", help="fetch the ImageNet weights ahead of time, or say what is cached")
    p.add_argument("action", choices=["fetch", "status"])
    p.set_defaults(func=_cmd_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .images import ImageError
    from .model import DeviceError
    from .weights import WeightsError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the harness parses its own flags (argparse's REMAINDER would drop --help)
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (WeightsError, DeviceError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
