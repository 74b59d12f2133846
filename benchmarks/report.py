"""Printing a run: the header line of the machine, the rows' table, the breakdown, the levers' table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.rows import fmt, results_table, table, targets_met


def report(result: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """The CPU run."""
    mach = result["machine"]
    print(f"\n# alexnet-viz benchmark ({settings['mode']}: median of {settings['runs']} runs after "
          f"{settings['warmup']} warm-up)\n")
    print(f"{mach['date']} · {mach['cpu_model']} · {mach['cores']} cores · torch {mach['versions']['torch']} · "
          f"{mach['torch_threads']} threads · fp32 matmul {mach['matmul_gflops']} GFLOP/s · load average "
          f"{' '.join(map(str, mach['load_average_start']))} -> {' '.join(map(str, mach['load_average_end']))}"
          f" · other processes used {mach.get('cpu_share_of_others', 0):.0%} of the CPU\n")
    print(results_table([*result["rows"], *result["tutorial"], *result["speedups"], *result.get("http", [])]))
    print("\n## Where the full default view's time goes (medians)\n")
    print(table(["part", "ms", "share"], [[b["part"], fmt(b.get("ms")), f"{b['share']:.0%}" if b.get("share") else ""]
                                        for b in result["full_view_breakdown"]]))
    met, judged = targets_met([*result["rows"], *result["speedups"], *result.get("http", [])])
    print(f"\n{met} of {judged} targets met.")


def report_engine(result: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """The GPU run."""
    mach, gpu = result["machine"], result["machine"]["gpu"]
    print(f"\n# alexnet-viz benchmark on {settings['device']} ({settings['mode']}: median of {settings['runs']} runs "
          f"after {settings['warmup']} warm-up)\n")
    print(f"{mach['date']} · {gpu['name']} · driver {gpu['driver']} · CUDA {gpu['cuda_runtime']} · cuDNN "
          f"{gpu['cudnn']} · torch {mach['versions']['torch']} · TF32 convolutions {gpu['tf32_convolutions']} · "
          f"fp32 matmul {mach['matmul_gflops']} GFLOP/s · host {mach['cpu_model']}, {mach['cores']} cores\n")
    print(results_table([*result["rows"], *result["tutorial"], *result["speedups"]]))
    print("\nNot measured on the GPU:\n")
    reasons: dict[str, list[str]] = {}
    for skip in result["skipped"]:
        reasons.setdefault(skip["reason"], []).append(skip["key"])
    for reason, keys in reasons.items():
        print(f"- {', '.join(keys)}: {reason}")
    met, judged = targets_met([*result["rows"], *result["speedups"]])
    print(f"\n{met} of {judged} targets met (the targets are the CPU's).")


def _lever_line(lv: Mapping[str, Any], current: Mapping[str, float]) -> list[str]:
    star = " *" if lv.get("current") else ""
    if "median_ms" in lv:
        extra = f"{lv['bytes']:,} B" if "bytes" in lv else ""
        if "heatmap_rel_error" in lv:
            extra = f"heatmap rel. error {lv['heatmap_rel_error']}"
        base = current.get(lv["lever"])
        ratio = f"{lv['median_ms'] / base:.2f}" if base and lv["median_ms"] is not None else ""
        others = f"{lv['others_cpu']:.0%}" if lv.get("others_cpu") is not None else ""
        return [lv["lever"], lv["variant"] + star, fmt(lv["median_ms"], "ms"), ratio, fmt(lv.get("cores_used")),
                others, extra]
    if "peak_rss_mb" in lv:
        return [lv["lever"], lv["variant"] + star, f"{lv['peak_rss_mb']} MB peak", "", "", "",
                f"idle {lv.get('idle_rss_mb')} MB, after requests {lv.get('rss_mb')} MB"]
    text = (f"eager {lv.get('eager_ms')} ms, compiled {lv.get('compiled_ms')} ms, compile {lv.get('compile_s')} s, "
            f"break-even {lv.get('break_even_forwards')} forwards") if "eager_ms" in lv else lv.get("error", "")
    return [lv["lever"], lv["variant"], text, "", "", "", ""]


def levers_table(levers: Sequence[Mapping[str, Any]]) -> str:
    current = {lv["lever"]: lv["median_ms"] for lv in levers if lv.get("current") and lv.get("median_ms")}
    return table(["lever", "variant (* = current)", "median", "x current", "cores", "others", "notes"],
                 [_lever_line(lv, current) for lv in levers])
