"""What every benchmark shares: the machine it ran on, in one line, and its common options."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from emotion_stream.schemas.model_directory import DEFAULT_MODEL_DIR


def setting(text: str) -> tuple[str, str]:
    """An argparse type for ``--env NAME=VALUE``: the pair, or a usage error that says the form."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: give a worker setting as NAME=VALUE")
    return name, value


def settings_variant(text: str) -> dict[str, str]:
    """An argparse type for ``NAME=VALUE[,NAME=VALUE]``: the pairs (none for an empty text),
    each read as :func:`setting` reads one."""
    return dict(setting(pair) for pair in text.split(",") if pair)


def add_data_and_model(parser: argparse.ArgumentParser) -> None:
    """``--data`` (the emotion splits) and ``--model`` (a trained model directory)."""
    parser.add_argument(
        "--data",
        default=os.environ.get("EMOTION_DATA_DIR", "../shared/data/emotion"),
        help="directory with validation.txt (default: EMOTION_DATA_DIR, else ../shared/data/emotion)",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL_DIR),
        help=f"trained model directory, if any (default {DEFAULT_MODEL_DIR})",
    )


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
        f"{os.cpu_count()} cores, {model_name}; flags: "
        f"{' '.join(f for f in wanted if f in flags) or 'none of note'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def save_report(name: str, report: dict, started: float, print_table) -> None:
    """Time the run, write ``report`` to the bench cache as ``NAME.json`` and print its table."""
    import json
    import time

    report["seconds"] = time.monotonic() - started
    path = Path("artifacts/bench") / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\n{report['seconds']:.0f} s; results in {path}")
