"""What machine a measurement came from: CPU model, ISA path, threads, torch.

Shared by the benchmark harness and the demos' summary.json records, so every
committed number says where it was measured.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time

import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block (or, as a decorator, the function) on ``n`` intra-op threads, then restore the count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    """CPU model, cores, ISA path in use, threads, torch/python versions and the date."""
    import manifold_ext

    build = manifold_ext.build_info()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_isa": build.get("cpu_isa_in_use"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }
