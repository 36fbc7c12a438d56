"""The serving graph: a model's int8 passes saved once as TorchScript, then served without
``transformers``.

Loading a model directory through ``transformers`` costs the model process about 105 MiB of
imported modules and the model's fp32 copy beside its int8 one, for as long as it serves, though
it runs nothing but the traced graphs (see :meth:`EmotionClassifier._trace`). So the model
process asks for the model's serving graph first (:func:`worker.model.serving.load_classifier`):
the traced, frozen graph of both passes (padded and packed), the tokenizer as ``tokenizers``
reads it, and what the load decided (labels, numeric mode, kept layers), in a cache directory.
Where the cache has none for this model, torch and these options, a child process loads the
model the full way, traces it, saves the graph and exits, its memory with it; the model process
then loads the graph (docs/architecture.md has the measurements).

A graph is only made where the full load would run traced graphs (int8 on the CPU, both passes
traced and checked against the model); anything else, and any graph that does not load, is
served the full way, and the log says why. The cache key covers the model directory's files
(names, sizes, modification times), the options that shape the graph, the torch version and
this format: a changed model or upgrade makes a new graph, never serves a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emotion_stream.schemas import ModelInfo
from emotion_stream.worker.model.api import ModelOptions
from emotion_stream.worker.model.loading import cpu_runs

GRAPH_FORMAT = 1
"""Bumped whenever what a graph directory holds, or how the runner calls its graphs, changes."""

_RECORD = "graph.json"
_GRAPH, _TOKENIZER = "graph.pt", "tokenizer.json"


def graph_key(directory: Path, options: ModelOptions) -> str:
    """What a graph depends on, hashed: the model directory's files, the options that shape the
    load, whether this CPU runs bf16 (the kept layers' precision), torch and this format."""
    files = sorted(
        (entry.name, status.st_size, status.st_mtime_ns)
        for entry in directory.iterdir()
        if entry.is_file() and (status := entry.stat())
    )
    shaping = {
        "numeric": options.numeric,
        "max_length": options.max_length,
        "packing": options.packing,
        "int8_fp32_layers": options.int8_fp32_layers,
        "int8_kept_in": options.int8_kept_in,
    }
    identity = {
        "format": GRAPH_FORMAT,
        "torch": torch.__version__,
        "bf16": cpu_runs("bf16"),
        "directory": str(directory.resolve()),
        "files": files,
        "options": shaping,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class SavedGraph:
    """A serving graph as loaded: the graphs, the tokenizer and what the full load decided."""

    graph: torch.jit.ScriptModule
    """The padded pass (``forward``) and, if ``packs``, the packed one (``packed``)."""
    packs: bool
    encode: Callable[[list[str]], list[list[int]]]
    """Token ids of each text, truncated to the token limit, unpadded."""
    info: ModelInfo
    columns: list[str]
    pad_id: int
    attention: str | None
    numeric: str
    numeric_reason: str
    fp32_layers: tuple[str, ...]
    kept_in: str


def read_record(directory: Path) -> dict | None:
    try:
        return json.loads((directory / _RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def graph_tokenizer(
    path: Path, max_length: int, side: str = "right"
) -> Callable[[list[str]], list[list[int]]]:
    """The tokenizer saved at ``path`` (a ``tokenizer.json``), as the worker calls a model's
    tokenizer through ``transformers``: special tokens added, truncated to ``max_length``
    tokens on ``side`` (the model's truncation side), unpadded; the token ids of each text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, direction=side)

    def encode(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch(texts)]

    return encode


def read_graph(directory: Path, max_length: int) -> SavedGraph:
    """Load the serving graph in ``directory`` (see :func:`save_graph`)."""
    record = read_record(directory)
    if not record or not record.get("served"):
        raise ValueError(f"{directory} holds no serving graph")
    encode = graph_tokenizer(directory / _TOKENIZER, max_length, record.get("truncation_side", "right"))
    return SavedGraph(
        graph=torch.jit.load(str(directory / _GRAPH)),
        packs=bool(record["packs"]),
        encode=encode,
        info=ModelInfo(**record["info"]),
        columns=list(record["columns"]),
        pad_id=int(record["pad_id"]),
        attention=record.get("attention"),
        numeric=record["numeric"],
        numeric_reason=f"{record['numeric_reason']} (as the serving graph was saved)",
        fp32_layers=tuple(record["fp32_layers"]),
        kept_in=record["kept_in"],
    )


def save_graph(classifier: Any, target: Path) -> str | None:
    """Save the serving graph of ``classifier`` (an :class:`EmotionClassifier` loaded the full
    way) in ``target``; None if saved, else why it has none
    (the record saying so is saved instead, so the next start does not try again)."""
    why = None
    if classifier.device.type != "cpu" or not classifier.traced:
        why = f"{classifier.numeric} on {classifier.device.type} runs no traced graph"
    elif classifier.packing and not classifier._traced_packs:
        why = "the packed passes did not trace"
    elif getattr(classifier.tokenizer, "backend_tokenizer", None) is None:
        why = "the model's tokenizer is not a fast (tokenizers) one"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        record = {"format": GRAPH_FORMAT, "served": why is None, "reason": why}
        if why is None:
            torch.jit.save(classifier._traced, str(staging / _GRAPH))
            classifier.tokenizer.backend_tokenizer.save(str(staging / _TOKENIZER))
            record |= {
                "info": classifier.info.model_dump(),
                "columns": classifier.columns,
                "pad_id": classifier._pad_id,
                "packs": classifier._traced_packs,
                "truncation_side": getattr(classifier.tokenizer, "truncation_side", "right"),
                "attention": classifier._attention,
                "numeric": classifier.numeric,
                "numeric_reason": classifier.numeric_reason,
                "fp32_layers": list(classifier.fp32_layers),
                "kept_in": classifier.kept_in,
            }
        (staging / _RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        try:
            os.rename(staging, target)  # whole or not at all; a sibling worker may have won
        except OSError:
            if read_record(target) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return why
