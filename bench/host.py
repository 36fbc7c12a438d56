"""The machine a benchmark ran on, in one line."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    flags = set()
    model_name = platform.processor()
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    import torch

    return (
        f"{os.cpu_count()} cores, {model_name}; flags: {' '.join(f for f in wanted if f in flags) or 'none of note'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
