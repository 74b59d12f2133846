"""How fast alexnet-viz is on this machine, against its targets, the tutorial way, a plain app and the floor.

    python benchmarks/bench.py             # everything, ~3-4 min on 2 cores; writes results/<device>.json
    python benchmarks/bench.py --levers    # the levers (threads, batch sizes, channels-last, ...) only
    python benchmarks/bench.py --quick     # 1 warm-up + 2 runs, nothing served, no levers: a smoke test
    python benchmarks/bench.py --device cuda   # the engine's rows on the GPU; writes results/cuda.json

Every row is the median of ``--runs`` timed runs after ``--warmup`` untimed ones (``benchmarks.timing``). Rows
go through the functions the app calls (the page's handlers, ``analysis.explain``), on the seeded untrained
torchvision AlexNet (speed does not depend on the weights' values). See benchmarks/README.md for what each
row measures. ``main(argv)`` is the entry point (``python benchmarks/bench.py``, ``alexnet-viz bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.levers import LEVER_GROUPS

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_IMAGE = ROOT / "assets" / "cat.jpg"
SCHEMA = 1
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "MPLBACKEND": "Agg"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alexnet-viz bench", description=(__doc__ or "").split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="1 warm-up + 2 runs; no cold start, no HTTP comparison, no levers (smoke test)")
    mode.add_argument("--levers", action="store_true", help="measure the levers only (updates the JSON's 'levers')")
    p.add_argument("--only", action="append", choices=LEVER_GROUPS, default=None, metavar="LEVER",
                   help=f"with --levers: measure only these (repeatable; one of {', '.join(LEVER_GROUPS)}); "
                        "the others' results in the JSON are kept")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default): every row; cuda: the engine's rows (forward, analyze, attributions) "
                        "on the GPU, synchronised, to results/cuda.json; the app's rows are skipped")
    p.add_argument("--runs", type=int, default=None, help="timed runs per step (default 5, cuda 10; quick: 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1, cuda 3)")
    p.add_argument("--cold-runs", type=int, default=5, help="timed cold starts (after one untimed)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold start and memory rows")
    p.add_argument("--no-http", action="store_true", help="skip ours vs the plain Gradio app over HTTP")
    p.add_argument("--settle", type=float, default=None,
                   help="before each step wait up to this many seconds while other processes use more than 15%% "
                        "of the CPU (default 10; quick: 0)")
    p.add_argument("--settle-budget", type=float, default=45.0, help="most seconds to wait in all (default 45)")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image to analyse (default assets/cat.jpg)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON to write (default benchmarks/results/<device>.json; --quick writes only with --out)")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    gpu = args.device != "cpu"
    args.runs = args.runs if args.runs is not None else (2 if args.quick else (10 if gpu else 5))
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu and not args.quick else 1)
    if gpu and args.levers:
        p.error("--levers measures the CPU only; drop --device")
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    args.image = args.image.resolve()
    args.settle = args.settle if args.settle is not None else (0.0 if args.quick else 10.0)
    return args


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


@contextlib.contextmanager
def _offline(tmp: str) -> Any:
    """Gradio's uploads (and its client's temp folders) in ``tmp``, no analytics, no Hub, matplotlib
    off-screen; the environment restored after."""
    from benchmarks.page import client_temp_in

    saved = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", *OFFLINE_ENV)}
    os.environ.update(GRADIO_TEMP_DIR=tmp, **OFFLINE_ENV)
    try:
        with client_temp_in(tmp):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def measure_levers(args: argparse.Namespace, torch: Any, log: Any, previous: dict[str, Any],
                   settings: dict[str, Any]) -> dict[str, Any]:
    """--levers: the JSON as before with its "levers" replaced (the groups not measured now kept, dated)."""
    from benchmarks.levers import run_levers
    from benchmarks.report import levers_table

    result = run_levers(args, torch, log)
    print("\n## Levers\n")
    print(levers_table(result["levers"]))
    kept = []
    if args.only and "levers" in previous:
        old = previous["levers"]
        kept = [{**lv, "measured_at": lv.get("measured_at", old.get("machine", {}).get("date"))}
                for lv in old.get("results", []) if lv.get("group") not in args.only]
    fresh = [{**lv, "measured_at": result["machine"]["date"]} for lv in result["levers"]]
    order = {g: i for i, g in enumerate(LEVER_GROUPS)}
    merged = sorted([*kept, *fresh], key=lambda lv: order.get(lv.get("group", ""), len(order)))
    data = {**{k: v for k, v in previous.items() if k != "levers"},
            "levers": {"settings": settings, "machine": result["machine"], "results": merged}}
    data.setdefault("schema", SCHEMA)
    return data


def measure_rows(args: argparse.Namespace, torch: Any, log: Any, previous: dict[str, Any],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """The default run on the CPU, or the engine's rows on a GPU; the JSON's "levers" kept."""
    from benchmarks.report import report, report_engine

    if args.device == "cpu":
        from benchmarks.cpu_run import run_default

        result = run_default(args, torch, log)
        report(result, settings)
    else:
        from benchmarks.gpu_run import run_engine

        result = run_engine(args, torch, args.device, log)
        report_engine(result, settings)
    data = {"schema": SCHEMA, "settings": settings, **result}
    if "levers" in previous:
        data["levers"] = previous["levers"]
    return data


def main(argv: list[str] | None = None) -> int:
    from benchmarks.timing import SETTLE

    args = parse(argv)
    SETTLE.per_step, SETTLE.budget, SETTLE.waited = args.settle, args.settle_budget, 0.0
    started = time.perf_counter()
    gc_was_frozen = gc.get_freeze_count()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    tmp = tempfile.mkdtemp(prefix="alexnet-viz-bench-")
    try:
        with _offline(tmp):
            import torch

            if args.device == "cuda" and not torch.cuda.is_available():
                parser().error("--device cuda: torch sees no CUDA GPU here")
            out_path = args.out or (None if args.quick else RESULTS_DIR / f"{args.device}.json")
            previous: dict[str, Any] = {}
            if out_path is not None and out_path.exists():
                with contextlib.suppress(OSError, ValueError):
                    previous = json.loads(out_path.read_text(encoding="utf-8"))
            settings = {"mode": "levers" if args.levers else ("quick" if args.quick else "default"),
                        "runs": args.runs, "warmup": args.warmup, "settle_s": args.settle,
                        "settle_budget_s": args.settle_budget, "image": _rel(args.image), "arch": "torchvision",
                        "weights": "none (seeded, untrained)", "device": args.device}
            measure = measure_levers if args.levers else measure_rows
            data = measure(args, torch, log, previous, settings)
            log(f"finished in {time.perf_counter() - started:.0f} s")
            if out_path is not None:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                print(f"\nwrote {_rel(out_path)}")
        return 0
    finally:
        if gc.get_freeze_count() and not gc_was_frozen:
            gc.unfreeze()
        shutil.rmtree(tmp, ignore_errors=True)
