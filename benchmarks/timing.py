"""Timing: medians of timed runs after warm-ups, FLOPs of one run, and the machine's fp32 matmul rate.

Every timed run is ``time.perf_counter`` around one call, after ``gc.collect()`` (cheap: the harness calls
``gc.freeze()`` after its setup). The first warm-up of a step that does arithmetic runs under
``torch.utils.flop_counter.FlopCounterMode``; a step's floor is its FLOPs over the matmul rate.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from benchmarks.machine import BusyMeter


@dataclass
class Stat:
    """Timed runs of one step: wall and process-CPU seconds per run, FLOPs of one run."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    flops: int | None = None
    load: float = 0.0  # 1-minute load average when the step started
    others: float | None = None  # share of the machine's CPU that other processes used during the timed runs
    waited: float = 0.0  # seconds spent waiting for the machine to settle before the step

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cores_used(self) -> float:
        """Process CPU time over wall time: ~threads when the cores were ours, less when shared."""
        return sum(self.cpu) / max(sum(self.wall), 1e-12)

    def time(self, fn: Callable[[], Any]) -> None:
        """One timed run of ``fn``, appended."""
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        self.wall.append(t1 - t0)
        self.cpu.append(c1 - c0)


@dataclass
class Settle:
    """Before a step, wait (at most ``per_step`` s, ``budget`` s in all) while other processes keep more than
    ``threshold`` of the machine's CPU busy. On a shared 2-core machine one busy neighbour makes torch's
    2-thread OpenMP regions several times slower; waiting keeps such bursts out of the medians, and every
    row still records the share the neighbours used while it ran ("others")."""

    per_step: float = 0.0
    budget: float = 0.0
    threshold: float = 0.15
    waited: float = 0.0

    def __call__(self) -> float:
        t0 = time.perf_counter()
        while self.per_step > 0 and self.waited < self.budget:
            meter = BusyMeter()
            time.sleep(0.5)
            others = meter.others()
            self.waited += 0.5
            if others is None or others < self.threshold or time.perf_counter() - t0 >= self.per_step:
                break
        return time.perf_counter() - t0


SETTLE = Settle()  # main() sets it from --settle / --settle-budget


def measure(fn: Callable[[], Any], *, runs: int, warmup: int, count_flops: bool = False) -> Stat:
    """Median-ready timings of ``fn``; the first warm-up counts FLOPs when asked (it is not timed)."""
    gc.collect()
    waited = SETTLE()
    stat = Stat(load=os.getloadavg()[0], waited=waited)
    for i in range(max(warmup, 1 if count_flops else 0)):
        if i == 0 and count_flops:
            stat.flops = count_flops_of(fn)
        else:
            fn()
    busy = BusyMeter()
    for _ in range(runs):
        stat.time(fn)
    stat.others = busy.others()
    return stat


def interleaved(variants: Mapping[str, Callable[[], Any]], *, runs: int, warmup: int) -> dict[str, Stat]:
    """Time several variants round-robin (the order rotates each round), so that a change in the machine's
    load while they run hits them all alike instead of whichever happened to run then."""
    waited = SETTLE()
    stats = {name: Stat(load=os.getloadavg()[0], waited=waited) for name in variants}
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names = list(variants)
    busy = BusyMeter()
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:
            stats[name].time(variants[name])
    others = busy.others()
    for stat in stats.values():
        stat.others = others
    return stats


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: totals only, no module hooks. The tracker's hooks
    break Captum ("A leaf node was passed to _will_engine_execute_node ... autograd.grad()")."""

    parents: ClassVar[set[str]] = {"Global"}

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``, forward and backward, by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(torch: Any, *, n: int = 2048, runs: int = 10, device: Any = None) -> tuple[float, dict[str, Any]]:
    """The machine's fp32 matmul rate (GFLOP/s, median of ``runs`` n x n ``torch.mm``) and what to record of it.

    On a GPU each product ends in ``torch.cuda.synchronize``; TF32 stays as torch has it (off for matmul)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    on_gpu = device is not None and torch.device(device).type == "cuda"

    def product() -> None:
        torch.mm(a, b)
        if on_gpu:
            torch.cuda.synchronize(device)

    stat = measure(product, runs=runs, warmup=3 if on_gpu else 2)
    flops = 2 * n**3
    record: dict[str, Any] = {"n": n, "median_ms": stat.median * 1000, "runs": len(stat.wall),
                              "best_gflops": flops / min(stat.wall) / 1e9}
    if on_gpu:
        record["dtype"] = "float32 (TF32 off)"
    return flops / stat.median / 1e9, record
