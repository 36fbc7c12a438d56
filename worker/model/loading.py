"""Loading a model for serving: the directory or hub id, its labels, the device and the numeric mode.

Safetensors only, no remote code. Every failure is a :class:`ModelLoadError` whose message
says what to set or do; the model's name and version come from the model-directory contract
(:mod:`schemas.model_directory`), the same one training exports with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emotion_stream.schemas import LABELS, ModelInfo
from emotion_stream.schemas.model_directory import model_info, read_identity
from emotion_stream.worker.model.api import NUMERIC_MODES, ModelLoadError, NumericMode, model_source


@dataclass
class LoadedModel:
    tokenizer: Any
    model: torch.nn.Module
    columns: list[str]
    """The emotion of each output column."""
    info: ModelInfo
    numeric_modes: dict | None = None
    """What the model directory records of its numeric modes (see :mod:`worker.model.verify`)."""


def load_pretrained(source: str, revision: str | None = None) -> LoadedModel:
    """The tokenizer and classifier in ``source`` (a directory or hub id, at ``revision`` if
    given: a commit, tag or branch of a hub model), on the CPU, in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar in a service log is noise
    where = model_source(source)
    if where.missing:
        raise ModelLoadError(
            f"no model directory at {source}: train one with `emotion-stream train --output {source}`, "
            "or set EMOTION_MODEL to a model directory or a hub id"
        )
    directory = where.directory
    if directory is not None and not (directory / "config.json").is_file():
        raise ModelLoadError(f"{source} has no config.json: it is not a Hugging Face model directory")
    if directory is not None and revision is not None:
        raise ModelLoadError(
            f"EMOTION_MODEL_REVISION={revision} pins a hub model, but {source} is a local directory: unset it"
        )
    pinned = {"revision": revision} if revision is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **pinned)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, use_safetensors=True, trust_remote_code=False, **pinned
        )
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {source!r}: {exc}. Set EMOTION_MODEL to a model directory "
            "(train one with `emotion-stream train`) or to a hub id reachable from here."
        ) from exc
    columns = label_columns(model.config)
    numeric_modes = None
    if directory is not None:
        info = model_info(directory)
        numeric_modes = (read_identity(directory) or {}).get("numeric_modes")
    else:
        info = ModelInfo(
            name=source, version=str(getattr(model.config, "_commit_hash", None) or revision or "hub")
        )
    return LoadedModel(tokenizer, model.eval(), columns, info, numeric_modes)


def label_columns(config: Any) -> list[str]:
    """The emotion name of each output column, checked against the label set."""
    id2label = {int(k): str(v).lower() for k, v in (config.id2label or {}).items()}
    names = [id2label.get(i, "") for i in range(config.num_labels)]
    if sorted(names) != sorted(LABELS):
        raise ModelLoadError(
            f"the model's labels {names} are not the six emotions {list(LABELS)}: "
            "serve a model fine-tuned for emotion-stream (its config.json needs id2label)"
        )
    return names


def select_device(requested: str) -> torch.device:
    """Map ``auto|cpu|cuda`` to a torch device, refusing ``cuda`` when there is none."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("EMOTION_DEVICE=cuda but no CUDA device is visible: use auto or cpu")
    if requested not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {requested!r}: use auto, cpu or cuda")
    return torch.device(requested)


MAX_ACCURACY_DROP = 0.002
"""A faster mode is verified for a model when its validation accuracy is at most this far below
fp32's ..."""
MIN_AGREEMENT = 0.99
"""... and it gives the same label as fp32 on at least this share of the validation posts."""


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def cpu_runs(mode: str, flags: set[str] | None = None) -> bool:
    """Whether this CPU runs ``mode`` well: bf16 needs AVX512-BF16 or AMX; fp32 and int8 run anywhere."""
    if mode != "bf16":
        return True
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def choose_numeric(verification: dict | None, flags: set[str] | None = None) -> tuple[str, str]:
    """The CPU mode ``auto`` runs for a model, and why: the fastest mode the model's directory
    records as verified (within MAX_ACCURACY_DROP of fp32's accuracy, MIN_AGREEMENT label
    agreement) that this CPU runs well; fp32 when nothing is recorded."""
    modes = (verification or {}).get("modes") or {}
    if not modes:
        return (
            "fp32",
            "no verified numeric modes recorded in the model directory (emotion-stream verify-modes)",
        )
    candidates = {
        mode: figures
        for mode, figures in modes.items()
        if mode in NUMERIC_MODES and (mode == "fp32" or figures.get("verified")) and cpu_runs(mode, flags)
    }
    if not candidates:
        return "fp32", "no faster mode was verified for this model"
    best = max(candidates, key=lambda m: (candidates[m].get("posts_per_s") or 0.0, m == "fp32"))
    figures = candidates[best]
    if best == "fp32":
        return "fp32", "no verified mode was faster than fp32 here"
    return best, (
        f"verified for this model: accuracy {figures['accuracy']:.4f} "
        f"(fp32 {modes['fp32']['accuracy']:.4f}), "
        f"label agreement {figures['agreement']:.4f}, {figures['speedup']:.2f}x fp32's posts/s when measured"
    )


def resolve_numeric(
    numeric: NumericMode, device: torch.device, verification: dict | None = None
) -> tuple[str, str]:
    """``numeric`` made concrete, and why: ``auto`` is mixed precision on a GPU and, on the CPU,
    the fastest mode verified for this model (:func:`choose_numeric`)."""
    if numeric == "auto":
        if device.type == "cuda":
            return "bf16", "auto on CUDA: mixed precision"
        mode, reason = choose_numeric(verification)
        return mode, f"auto: {reason}"
    if numeric not in NUMERIC_MODES:
        raise ModelLoadError(
            f"unknown numeric mode {numeric!r}: "
            f"use auto, {', '.join(NUMERIC_MODES[:-1])} or {NUMERIC_MODES[-1]}"
        )
    if numeric == "int8" and device.type == "cuda":
        raise ModelLoadError("EMOTION_NUMERIC=int8 is a CPU mode: use auto, fp32 or bf16 on CUDA")
    return numeric, "EMOTION_NUMERIC"


def recorded_fp32_layers(verification: dict | None) -> tuple[str, ...]:
    """The linear layers a model's verification keeps in fp32 under int8 (the ones that moved
    labels when quantized; see :mod:`worker.model.verify`); none when nothing is recorded."""
    figures = ((verification or {}).get("modes") or {}).get("int8") or {}
    layers = figures.get("fp32_layers") or ()
    return tuple(str(name) for name in layers if isinstance(name, str))


def recorded_kept_in(verification: dict | None, flags: set[str] | None = None) -> tuple[str, str]:
    """The precision int8's kept layers run in, and why: bf16 where the verification measured
    them in bf16 and this CPU runs bf16, else fp32 (closer to fp32's labels than what was
    verified)."""
    figures = ((verification or {}).get("modes") or {}).get("int8") or {}
    if figures.get("kept_in") != "bf16":
        return "fp32", "as verified"
    if cpu_runs("bf16", flags):
        return "bf16", "as verified"
    return "fp32", "verified in bf16, which this CPU does not run well: fp32, closer to fp32's labels"


def apply_numeric(
    model: torch.nn.Module,
    numeric: str,
    device: torch.device,
    fp32_layers: Sequence[str] = (),
    kept_in: str = "fp32",
) -> tuple[torch.nn.Module, torch.dtype | None]:
    """The model in numeric mode ``numeric`` (fp32, bf16 or int8; see :func:`resolve_numeric`),
    and the dtype its forward passes run under autocast, if any.

    On CUDA, bf16 runs the forward pass under autocast (bf16 where supported, else fp16;
    the default there) and fp32 runs it in full precision. On the CPU, bf16 autocast pays
    on AVX512-BF16/AMX hardware and int8 dynamic quantization of the linear layers on VNNI
    (on an AVX2-only CPU bf16 is several times slower than fp32); bench/ measures both speed
    and accuracy. int8 weights are scaled per output channel, not per tensor: as fast, and
    closer to fp32's labels (docs/training.md); the linear layers named in ``fp32_layers`` stay
    out of int8 (those whose quantization moves labels, found when the mode is verified), in
    fp32 or, with ``kept_in="bf16"``, in bf16.
    """
    if device.type == "cuda":
        if numeric == "fp32":
            return model, None
        return model, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if numeric == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        kept = set(fp32_layers)
        unknown = kept - {name for name, _ in model.named_modules()}
        if unknown:
            raise ModelLoadError(
                f"the int8 record names layers this model does not have ({', '.join(sorted(unknown))}): "
                "run `emotion-stream verify-modes` on the model directory again"
            )
        spec = {
            name: per_channel_dynamic_qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name not in kept
        }
        model = quantize_dynamic(model, spec, dtype=torch.qint8)
        if kept_in == "bf16":
            from emotion_stream.worker.model.prepack import Bf16Linear

            for name in sorted(kept):
                layer = model.get_submodule(name)
                if type(layer) is torch.nn.Linear:
                    model.set_submodule(name, Bf16Linear(layer))
        return model, None
    return model, torch.bfloat16 if numeric == "bf16" else None
