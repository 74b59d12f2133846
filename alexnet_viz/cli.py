"""`alexnet-viz`: analyse images to disk, print architecture tables, manage weights, serve the app."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
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
                   help="'imagenet' (default; torchvision architecture only, from torch's hub cache, downloaded "
                        "when online), 'none' (seeded, untrained) or a .safetensors/.pt/.pth file")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the model (default: from weights)")
    p.add_argument("--labels", default=None, help="text file with one class name per line")


def _method_choices() -> list[str]:
    """``--method``'s choices, read from the attribution table when the parser is built (so a method
    registered before that is offered), and ``all``."""
    from .attribution import METHODS

    return [*METHODS, "all"]


def _load(args: argparse.Namespace):
    from .model import load_model

    loaded = load_model(args.arch, args.weights, args.device, num_classes=args.num_classes, labels=args.labels,
                        fallback=True)
    if loaded.weights.warning:
        print(f"WARNING: {loaded.weights.warning}", file=sys.stderr)
    return loaded


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]; argparse turns the complaint into a usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value

    return parse


def _float_in(low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number above `low` (and below `high`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= low or (high is not None and value >= high):
            bound = f"between {low:g} and {high:g}" if high is not None else f"above {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    return parse


def _not_a_readable_file(path: str) -> str | None:
    """Why `path` cannot be read as an input file, found without opening it (opening a FIFO blocks), or None."""
    try:
        info = os.stat(path)
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    return None


def _not_a_writable_folder(out: Path) -> str | None:
    """Create `out` if need be; why nothing can be written into it, or None."""
    import tempfile

    if out.exists() and not out.is_dir():
        return "is a file, not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".alexnet-viz-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot be written to ({e.strerror or e})"
    return None


def _folder_name(image: Path) -> str:
    """A folder name for an image's results that cannot leave the output folder: letters, digits, '_', '-' and
    '.', never starting with '.' (so never '..' or hidden), at most 100 characters."""
    name = re.sub(r"[^\w.-]+", "_", image.stem).lstrip(".")[:100]
    return name or "image"


def _unique_dir(out: Path, stem: str, used: set[str]) -> Path:
    """``out/stem``, or ``out/stem-2``, ... when an earlier image of this batch took it (compared case-blind, as
    macOS and Windows file systems do) or a file of that name is in the way."""
    name, n = stem, 1
    while name.casefold() in used or ((out / name).exists() and not (out / name).is_dir()):
        n += 1
        name = f"{stem}-{n}"
    used.add(name.casefold())
    return out / name


RUNNER_UP = "runner-up"  # --contrast's default class B: the best class other than A


def _write_analysis(loaded: Any, image_path: Path, folder: Path, scene: Any, target: str | None, top_k: int,
                    progress: bool, *, raw: bool = False, contrast: str | None = None) -> dict[str, Any]:
    """The page's pictures for one image, drawn by :mod:`alexnet_viz.export` exactly as its Download zip holds
    them, into ``folder`` with ``result.json``.

    ``contrast`` (a class, or ``"runner-up"``): every map explains ``score[target] - score[contrast]`` ("why A
    and not B"; A defaults to the top-1). ``raw``: also ``attribution_<method>.npy``, each map as float32
    (H, W) at the network's input size, exactly the heatmap the picture draws (signed where the method is)."""
    import numpy as np

    from . import export
    from .analysis import analyze, explain
    from .attribution import METHODS, tqdm_progress
    from .targets import Contrast

    analysis = analyze(loaded, image_path, top_k=top_k)
    explained: Any = target
    if contrast is not None:
        explained = Contrast(target if target not in (None, "") else analysis.top1.index,
                             None if contrast == RUNNER_UP else contrast)
    attributions = {}
    for method in dict.fromkeys([*scene.methods, *scene.compare]):
        bar = tqdm_progress(f"{image_path.name}: {method}") if progress and METHODS[method].slow else None
        layer = loaded.conv_layers[-1] if METHODS[method].layer_based else None
        attributions[method] = explain(loaded, analysis, method, target=explained, layer=layer, progress=bar)
    pictures = export.pictures(loaded, analysis, attributions, scene)
    meta = export.result_json(loaded, analysis, attributions, scene, files=pictures, image=str(image_path))
    maps = {f"attribution_{m}.npy": a.heatmap.numpy().astype(np.float32, copy=False)
            for m, a in attributions.items()} if raw else {}
    if maps:
        meta["files"] = sorted([*meta["files"], *maps])
    if contrast is not None:  # result.json says which class B each map was explained against
        for m, a in attributions.items():
            if m in meta["attributions"] and a.contrast is not None:
                meta["attributions"][m]["contrast"] = {"index": a.contrast, "label": loaded.categories[a.contrast]}
    export.write_folder(folder, pictures, meta)
    for name, values in maps.items():
        np.save(folder / name, values)
    return meta


def _scene(args: argparse.Namespace, loaded: Any, methods: Sequence[str]) -> Any:
    """The page's settings from the flags: the same names, the same meaning."""
    from .export import Scene

    layers = args.layer or loaded.layer_names
    unknown = [layer for layer in layers if layer not in loaded.layer_names]
    if unknown:
        raise ValueError(f"This model has no layer {unknown[0]!r}; it has {', '.join(loaded.layer_names)}.")
    return Scene(layers=tuple(dict.fromkeys(layers)), sort=args.sort, cmap=args.cmap, channel=args.channel,
                 filter=args.filter, methods=tuple(methods), compare=tuple(dict.fromkeys(args.compare or [])))


def _cmd_analyze(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .attribution import METHODS
    from .images import ImageError
    from .render import format_probability

    methods: list[str] = []
    for m in args.method or []:
        methods.extend(METHODS if m == "all" else [m])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)} or all", file=sys.stderr)
        return 2
    unknown = [m for m in args.compare or [] if m not in METHODS]
    if unknown:
        print(f"error: unknown method {unknown[0]!r} for --compare; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    problem = _not_a_writable_folder(out)
    if problem:  # every image would fail the same way: say it once, before loading a model
        print(f"error: --out {out} {problem}", file=sys.stderr)
        return 1
    loaded = _load(args)
    try:
        scene = _scene(args, loaded, list(dict.fromkeys(methods)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.contrast is not None:  # a method that cannot show A minus B would fail on every image: say it once
        blind = [m for m in dict.fromkeys([*scene.methods, *scene.compare]) if not METHODS[m].contrastive]
        if blind:
            print(f"error: --contrast: {METHODS[blind[0]].contrast_note}", file=sys.stderr)
            return 2
    used: set[str] = set()
    results, failed = [], 0
    show = not args.json and sys.stderr.isatty()
    for image in tqdm(args.images, desc="images", unit="image", disable=not show or len(args.images) < 2):
        path = Path(image)
        folder = _unique_dir(out, _folder_name(path), used)
        try:
            results.append(_write_analysis(loaded, path, folder, scene, args.target, args.top_k, show,
                                           raw=args.raw, contrast=args.contrast))
        except (ImageError, ValueError, RuntimeError, OSError) as e:  # one line per bad image; the batch goes on
            failed += 1
            message = f"cannot write {folder} ({e.strerror or e})" if isinstance(e, OSError) else str(e)
            print(f"error: {path}: {message}", file=sys.stderr)
            results.append({"image": str(path), "error": message})
            continue
        if not args.json:
            top = results[-1]["top_k"][0]
            print(f"{path}: {top['label']} ({format_probability(top['probability'])}) -> {folder}")
    if args.json:
        print(json.dumps(results if len(results) != 1 else results[0], indent=2))
    return 1 if failed else 0


def _cmd_trust(args: argparse.Namespace) -> int:
    from .trust import run_cli

    return run_cli(args, lambda: _load(args))


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
    import gc

    from .ui import serve
    from .ui.train_tab import allow_training
    from .ui.units_tab import use_gallery

    allow_training(args.allow_training)
    use_gallery(args.gallery)  # read now: a bad file stops the start with its sentence (main() prints it)
    try:
        serve(arch=args.arch, weights=args.weights, device=args.device, num_classes=args.num_classes,
              labels=args.labels, host=args.host, port=args.port, share=args.share, presenter=args.presenter)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the server was up: serve() has stopped its workers
        return 130
    finally:
        # The server has stopped. The interpreter's last garbage collection would walk every object torch and
        # Gradio made (4 s measured on 2 busy cores) while a supervisor waits: nothing left needs collecting.
        gc.freeze()
    return 0


def train_config(args: argparse.Namespace):
    """The TrainConfig that `alexnet-viz train`'s parsed flags ask for (a flag left out: None, chosen from the data)."""
    from .train import TrainConfig

    return TrainConfig(arch=args.arch, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, optimizer=args.optimizer, augment=not args.no_augment, seed=args.seed,
                       device=args.device, resume=args.resume, input_size=args.input_size,
                       num_classes=args.num_classes, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                       init=args.init, freeze=args.freeze, snapshots=args.snapshots)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import DataError, train

    try:
        result = train(train_config(args), progress=sys.stderr.isatty())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"test accuracy {result.test_accuracy:.2%} after {len(result.history)} epochs in {result.seconds:.0f} s; "
          f"weights in {result.out / 'model.safetensors'}")
    return 0


def _cmd_filters_gif(args: argparse.Namespace) -> int:
    from .train import filters_animation

    path = filters_animation(args.run, args.out, frames_dir=args.frames, duration_ms=args.duration)
    print(path)
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
    p.add_argument("--method", action="append", metavar="M", choices=_method_choices(),
                   help=f"attribution method (repeatable) or 'all'; one of {', '.join(_method_choices())}; "
                        "default: none")
    p.add_argument("--target", default=None, help="class index or name to explain (default: the top-1)")
    p.add_argument("--contrast", default=None, metavar="B",
                   help="explain why --target and not class B (index, name or 'runner-up': the best class "
                        "other than the target): every map shows score[target] - score[B]")
    p.add_argument("--raw", action="store_true",
                   help="also write each attribution's map as attribution_<method>.npy (float32, the network's "
                        "input height x width, signed where the method is)")
    p.add_argument("--top-k", type=_int_in(1), default=5)
    p.add_argument("--layer", action="append", metavar="L",
                   help="feature maps of this layer (repeatable; default: every layer)")
    p.add_argument("--channel", type=_int_in(0), default=None,
                   help="channel of the first --layer drawn over the image (default: its strongest)")
    p.add_argument("--filter", type=_int_in(0), default=None, help="conv1 filter drawn over the image (default: the "
                                                             "strongest)")
    p.add_argument("--sort", action="store_true", help="order channels by mean activation")
    p.add_argument("--cmap", default="viridis", help="colour map of the feature maps")
    p.add_argument("--compare", action="append", metavar="M", choices=_method_choices(),
                   help="methods side by side in compare.png (repeatable)")
    p.add_argument("--json", action="store_true", help="print result.json to stdout")
    p.set_defaults(func=_cmd_analyze, parser=p)

    p = sub.add_parser("trust", help="can the maps be trusted? deletion/insertion AUCs beside baselines, and "
                                     "the cascading-randomisation sanity check")
    p.add_argument("image", help="image file")
    _add_model_args(p)
    p.add_argument("--method", action="append", metavar="M",
                   help="attribution method (repeatable) or 'all'; default: saliency, input_x_gradient, "
                        "guided_backprop, gradcam")
    p.add_argument("--target", default=None, help="class index or name to explain (default: the top-1)")
    p.add_argument("--unrelated", default=None,
                   help="a second image for the sanity check's floor (default: a bundled photo)")
    p.add_argument("--stages", type=int, default=None,
                   help="randomise only the top N layers (default: all, fc8 down to conv1)")
    p.add_argument("--no-sanity", action="store_true", help="only the deletion/insertion curves")
    p.add_argument("--out", default=None, help="folder for curves.png, sanity.png, the strips and trust.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_trust)

    p = sub.add_parser("summary", help="per-layer table: shapes, parameters, MACs and their shares")
    p.add_argument("--arch", default="torchvision", choices=list(ARCHITECTURES))
    p.add_argument("--num-classes", type=_int_in(1), default=None)
    p.add_argument("--input-size", type=_int_in(1), default=None, help="input side (default: the architecture's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("serve", help="start the web app (the same as `python app.py`)")
    _add_model_args(p)
    # Hugging Face Spaces set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; a laptop gets loopback only.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to serve a lecture hall's network)")
    p.add_argument("--port", type=_int_in(1, 65535), default=os.environ.get("GRADIO_SERVER_PORT", "7860"))
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--presenter", action="store_true",
                   help="start in presenter mode: large text and a compact header for a projector (a toggle on the "
                        "page too)")
    p.add_argument("--gallery", default=None, metavar="FILE",
                   help="gallery index for the Units tab's dataset examples and neighbours (made by `alexnet-viz "
                        "index FOLDER`; default: the bundled example photos)")
    p.add_argument("--allow-training", action="store_true",
                   help="offer the Train tab on a public Hugging Face Space too (SPACE_ID set); it is always on "
                        "elsewhere. One run at a time for the whole server, stopped after 10 minutes")
    p.set_defaults(func=_cmd_serve, parser=p)

    p = sub.add_parser("train", help="train a seed AlexNet on an image folder, cifar10 or fashion-mnist")
    p.add_argument("--arch", default="cifar", choices=list(ARCHITECTURES))
    p.add_argument("--data", required=True, help="an image folder (one sub-folder per class), cifar10 or "
                                                "fashion-mnist (Debian's dataset-fashion-mnist package)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, model.json, curves.png")
    p.add_argument("--epochs", type=_int_in(1), default=None,
                   help="default: enough for at least 200 optimizer steps (at least 3)")
    p.add_argument("--batch-size", type=_int_in(1), default=None,
                   help="default: a tenth of the training images, between 4 and 128")
    p.add_argument("--lr", type=_float_in(0.0), default=None,
                   help="peak learning rate of the one-cycle schedule (default: SGD 0.05 at batch 128, scaled by "
                        "sqrt(batch/128); Adam 1e-3; a fifth of that from trained weights)")
    p.add_argument("--optimizer", choices=["auto", "sgd", "adam"], default="auto",
                   help="default: adam below 10,000 training images, sgd (momentum 0.9) above")
    p.add_argument("--init", default="auto", metavar="imagenet|none|FILE",
                   help="start weights: 'imagenet' (torchvision architecture; downloaded when online), 'none' "
                        "(seeded) or a weights file; the last layer is always new, sized for the data's classes "
                        "(default: imagenet for --arch torchvision when the weights are cached, else none)")
    p.add_argument("--freeze", choices=["auto", "features", "none"], default="auto",
                   help="'features': the layers before the fully connected ones stay fixed (default when "
                        "starting from trained weights); 'none': every layer learns")
    p.add_argument("--snapshots", type=_int_in(0), default=0, metavar="K",
                   help="save conv1 every K optimizer steps (OUT/snapshots.safetensors) and draw OUT/filters.gif")
    p.add_argument("--no-augment", action="store_true", help="no random crops and flips")
    p.add_argument("--val-fraction", type=_float_in(0.0, 0.5), default=0.1)
    p.add_argument("--test-fraction", type=_float_in(0.0, 0.5), default=0.1,
                   help="image folders only; the datasets bring their own test split")
    p.add_argument("--input-size", type=_int_in(1), default=None)
    p.add_argument("--num-classes", type=_int_in(2), default=None)
    p.add_argument("--seed", type=_int_in(0), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("filters-gif", help="conv1's filters over training as an animated GIF, from a run that "
                                           "`train --snapshots K` wrote")
    p.add_argument("run", help="the run folder (or its snapshots.safetensors)")
    p.add_argument("--out", default=None, help="GIF to write (default: RUN/filters.gif)")
    p.add_argument("--frames", default=None, metavar="DIR", help="also write each frame as a PNG into DIR")
    p.add_argument("--duration", type=_int_in(20), default=250, help="milliseconds a frame")
    p.set_defaults(func=_cmd_filters_gif)

    # `alexnet-viz bench ...` hands every argument to the checkout's benchmarks.main (see _bench); listed for --help.
    sub.add_parser("bench", help="run the benchmark (needs the repository checkout; same flags as "
                                 "benchmarks/bench.py)", add_help=False)

    p = sub.add_parser("weights", help="fetch the ImageNet weights ahead of time, or say what is cached")
    p.add_argument("action", choices=["fetch", "status"])
    p.set_defaults(func=_cmd_weights)

    from .cli_units import register as register_units  # visualize, index, neighbours (issue #13)

    register_units(sub, _add_model_args)
    return parser


def _option_problems(args: argparse.Namespace) -> list[str]:
    """What argparse's types cannot check for the model options that analyze and serve share."""
    problems = []
    if getattr(args, "num_classes", None) is not None and args.num_classes < 1:
        problems.append(f"argument --num-classes: must be at least 1, not {args.num_classes}")
    if getattr(args, "labels", None) is not None:
        problem = _not_a_readable_file(args.labels)
        if problem:
            problems.append(f"argument --labels: {args.labels} {problem}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the harness parses its own flags (argparse's REMAINDER would drop --help)
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    for problem in _option_problems(args):
        args.parser.error(problem)  # usage and one error line, exit status 2, as argparse's own checks
    try:
        return int(args.func(args))
    except UserError as e:  # weights, device, image, options, data: one sentence
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
