"""Loading a model for serving: the directory or hub id, its labels, the device and the numeric mode.

Safetensors only, no remote code. Every failure is a :class:`ModelLoadError` whose message
says what to set or do; the model's name and version come from the model-directory contract
(:mod:`schemas.model_directory`), the same one training exports with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from schemas import LABELS, ModelInfo
from schemas.model_directory import model_info
from worker.model.api import ModelLoadError


@dataclass
class LoadedModel:
    tokenizer: Any
    model: torch.nn.Module
    columns: list[str]
    """The emotion of each output column."""
    info: ModelInfo


def load_pretrained(source: str, revision: str | None = None) -> LoadedModel:
    """The tokenizer and classifier in ``source`` (a directory or hub id, at ``revision`` if
    given: a commit, tag or branch of a hub model), on the CPU, in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar in a service log is noise
    directory = Path(source) if Path(source).exists() else None
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
    if directory is not None:
        info = model_info(directory)
    else:
        info = ModelInfo(
            name=source, version=str(getattr(model.config, "_commit_hash", None) or revision or "hub")
        )
    return LoadedModel(tokenizer, model.eval(), columns, info)


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


def resolve_numeric(numeric: str, device: torch.device) -> str:
    """``auto`` made concrete: mixed precision where it is the norm (a GPU), fp32 on the CPU."""
    if numeric == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if numeric not in ("fp32", "bf16", "int8"):
        raise ModelLoadError(f"unknown numeric mode {numeric!r}: use auto, fp32, bf16 or int8")
    if numeric == "int8" and device.type == "cuda":
        raise ModelLoadError("EMOTION_NUMERIC=int8 is a CPU mode: use auto, fp32 or bf16 on CUDA")
    return numeric


def apply_numeric(
    model: torch.nn.Module, numeric: str, device: torch.device
) -> tuple[torch.nn.Module, torch.dtype | None]:
    """The model in numeric mode ``numeric`` (fp32, bf16 or int8; see :func:`resolve_numeric`),
    and the dtype its forward passes run under autocast, if any.

    On CUDA, bf16 runs the forward pass under autocast (bf16 where supported, else fp16;
    the default there) and fp32 runs it in full precision. On the CPU, bf16 autocast pays
    on AVX512-BF16/AMX hardware and int8 dynamic quantization of the linear layers on VNNI
    (on an AVX2-only CPU bf16 is several times slower than fp32); bench/ measures both speed
    and accuracy.
    """
    if device.type == "cuda":
        if numeric == "fp32":
            return model, None
        return model, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if numeric == "int8":
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8), None
    return model, torch.bfloat16 if numeric == "bf16" else None
