"""Where a measurement ran: CPU model, its vector extensions, thread count, library versions.

Latency numbers mean little without the machine; every report records this next to them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

#: CPU flags that change which int8 kernels run (u8*s8 pairs saturate in 16 bits without VNNI).
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd")


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), []
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), [f for f in FLAGS if f in flags]


def machine() -> dict[str, Any]:
    """The machine and threads this process measures on.

    Example:
        >>> machine()["threads"] >= 1
        True
    """
    cpu, flags = _cpuinfo()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count() or 1,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
