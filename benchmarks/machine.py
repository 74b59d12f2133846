"""Facts about the machine a run measured: CPU, memory, versions, GPU, and how busy other processes kept it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class BusyMeter:
    """The share of all cores that other processes kept busy since this was made (from /proc/stat)."""

    def __init__(self) -> None:
        self.jiffies, self.own = _cpu_jiffies(), _own_cpu_seconds()

    def others(self) -> float | None:
        now = _cpu_jiffies()
        if not self.jiffies or not now or now[1] <= self.jiffies[1]:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy, capacity = (now[0] - self.jiffies[0]) / hz, (now[1] - self.jiffies[1]) / hz
        return min(max((busy - (_own_cpu_seconds() - self.own)) / capacity, 0.0), 1.0)


class LoadMeter:
    """How busy the machine was with work that is not ours while we ran (other agents, other jobs)."""

    def __init__(self) -> None:
        self.start_load = os.getloadavg()
        self.jiffies = _cpu_jiffies()
        self.own = _own_cpu_seconds()
        self.wall = time.perf_counter()

    def summary(self) -> dict[str, Any]:
        end = os.getloadavg()
        out: dict[str, Any] = {
            "load_average_start": [round(v, 2) for v in self.start_load],
            "load_average_end": [round(v, 2) for v in end],
        }
        now = _cpu_jiffies()
        if self.jiffies and now:
            hz = os.sysconf("SC_CLK_TCK")
            busy_all = (now[0] - self.jiffies[0]) / hz
            capacity = (now[1] - self.jiffies[1]) / hz  # cpu-seconds available (all cores)
            ours = _own_cpu_seconds() - self.own
            out["cpu_busy_share"] = round(busy_all / max(capacity, 1e-9), 3)
            out["cpu_share_of_others"] = round(max(busy_all - ours, 0.0) / max(capacity, 1e-9), 3)
        out["wall_s"] = round(time.perf_counter() - self.wall, 1)
        return out


def machine_info(torch: Any) -> dict[str, Any]:
    import captum
    import numpy
    import PIL
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "captum": captum.__version__, "numpy": numpy.__version__,
                "pillow": PIL.__version__}
    with contextlib.suppress(ImportError):
        import gradio

        versions["gradio"] = gradio.__version__
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
        kb = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        mem_gb = round(int(kb.split()[1]) / 1024**2, 1)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "MALLOC_ARENA_MAX")
                if k in os.environ},
        "versions": versions,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _nvidia_driver() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi or /proc/driver/nvidia/version."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    with contextlib.suppress(OSError):
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found.group(1)
    return None


def gpu_info(torch: Any, device: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_gb": round(props.total_memory / 1024**3, 1),
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "driver": _nvidia_driver(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_convolutions": bool(torch.backends.cudnn.allow_tf32),  # torch's default: True
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),  # torch's default: False
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
