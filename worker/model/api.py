"""What the rest of the worker knows of the model: no torch here.

The worker's own process (the Faust app, the batch processor, the CLI) talks to the model
only through these names: a :class:`ModelRunner` (the model in this process or in a process
of its own), the :class:`ModelOptions` it was loaded with, the :class:`Prediction` it gives
per text and the two ways it fails. Importing this module never imports torch, so a worker
whose model runs in a separate process never loads torch itself.
"""

from __future__ import annotations

import os
import tempfile
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from emotion_stream.schemas import ModelInfo
from emotion_stream.schemas.model_directory import looks_like_directory

KEYWORDS_PREFIX = "keywords:"
"""An ``EMOTION_MODEL`` value with this prefix names the keyword stand-in (:mod:`worker.model.keywords`)."""


@dataclass(frozen=True)
class ModelSource:
    """What an ``EMOTION_MODEL`` value names, decided once (:func:`model_source`) for the
    worker, the demo and the loader: the keyword stand-in, a local model directory (which
    may not exist yet) or a hub id."""

    value: str
    kind: Literal["keywords", "directory", "hub"]

    @property
    def directory(self) -> Path | None:
        """The local directory, when the value names one."""
        return Path(self.value) if self.kind == "directory" else None

    @property
    def missing(self) -> bool:
        """A local directory that is not there (the demo trains one; the worker says how)."""
        return self.kind == "directory" and not Path(self.value).exists()


def model_source(value: str) -> ModelSource:
    """The one reading of an ``EMOTION_MODEL`` value: ``keywords:...`` is the stand-in; an
    existing path, the default directory, or a value that starts with ``.``, ``/`` or ``~``,
    ends with ``/`` or has more than one ``/`` is a directory; anything else (``name``,
    ``org/name``) is a hub id."""
    if value.startswith(KEYWORDS_PREFIX):
        return ModelSource(value, "keywords")
    return ModelSource(value, "directory" if looks_like_directory(value) else "hub")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do."""


class ModelUnavailable(RuntimeError):
    """The model runner itself is gone (its process died), not a post it failed on: the
    batch must not be retried post by post or dead-lettered, but re-read after a restart."""


class ModelFailing(RuntimeError):
    """The model runs but fails on posts it should handle (a known-good probe fails too: out
    of memory, a broken model file), and went on failing through its retries: the batch is
    not the posts' fault, so it is neither dead-lettered nor committed, and the worker stops."""


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]


def to_predictions(rows: Sequence[Sequence[float]], columns: Sequence[str]) -> list[Prediction]:
    """One prediction per row of probabilities, ``columns`` naming the emotion of each."""
    out = []
    for row in rows:
        scores = {columns[i]: float(p) for i, p in enumerate(row)}
        best = max(range(len(row)), key=row.__getitem__)
        out.append(Prediction(label=columns[best], score=float(row[best]), scores=scores))
    return out


NumericMode = Literal["auto", "fp32", "bf16", "int8"]
"""How the model computes: ``auto`` (mixed precision on CUDA; on the CPU the fastest mode
verified for the model), ``fp32``, ``bf16`` or ``int8`` (CPU only). The one declaration, used by
the settings, the loader, the verification and the command line."""

NUMERIC_MODES: tuple[str, ...] = tuple(mode for mode in typing.get_args(NumericMode) if mode != "auto")
"""The concrete modes, ``auto`` aside."""


@dataclass(frozen=True)
class ModelOptions:
    """How to load and run a model: what crosses to the model process, typed.

    The worker builds it from its settings (``WorkerSettings.model_options``); the tests and
    the benchmarks build it directly.
    """

    device: str = "auto"
    """``auto`` (CUDA when there is one), ``cpu`` or ``cuda``."""
    numeric: NumericMode = "auto"
    """See :data:`NumericMode`."""
    max_length: int = 128
    """Token limit per post; longer posts are truncated."""
    batch_size: int = 32
    """Most posts per padded forward pass (a window is cut into planned sub-batches of at most this)."""
    torch_threads: int | None = None
    """CPU threads for torch; None leaves torch's choice."""
    cpu_passes: int | None = None
    """Forward passes run at once on the CPU, sharing the threads; None: one per thread, at most 4."""
    packing: bool = True
    """Run small CPU windows with their posts laid end to end instead of padded."""
    prepack: bool = True
    """In fp32 on the CPU, lay the linear layers' weights out once at load."""
    trace: bool = True
    """In int8 on the CPU, run padded passes through a traced, frozen graph of the model (checked
    against the model itself at load; the model is used where the check fails)."""
    call_cost_tokens: float | None = None
    """A forward pass's fixed cost in tokens of work, for the planner; None measures it at load."""
    revision: str | None = None
    """A hub model's commit, tag or branch to load (None: the latest); not for local directories."""
    int8_fp32_layers: tuple[str, ...] | None = None
    """Under int8, the linear layers kept out of int8 (None: those the model directory's
    verification records; see :mod:`worker.model.verify`)."""
    int8_kept_in: Literal["fp32", "bf16"] | None = None
    """The precision of those layers (None: what the verification recorded, bf16 only where this
    CPU runs bf16, else fp32)."""
    graph_cache_dir: str | None = None
    """Where the model process keeps the model's serving graph, and serves it from (see
    :mod:`worker.model.graph`); None: it loads the model directory through transformers."""


def default_graph_cache_dir() -> Path:
    """Where serving graphs are kept unless configured (see :mod:`worker.model.graph`): in the
    system's temporary directory (an emptyDir in the Kubernetes deployment, so a pod builds its
    graph once per start), one directory per user, since only its owner may write it."""
    user = getattr(os, "getuid", lambda: None)()
    return Path(tempfile.gettempdir()) / ("emotion-stream-graphs" + (f"-{user}" if user is not None else ""))


def graph_cache_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold serving graphs, or None: it must be a directory (or one
    that can be made) that only this user can write, since a graph is code the model process
    runs."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} is not a directory"
    if directory.is_dir():
        status = directory.stat()
        if status.st_uid != getattr(os, "getuid", lambda: status.st_uid)() or status.st_mode & 0o022:
            return f"{directory} is writable by other users"
        return None if os.access(directory, os.W_OK) else f"{directory} is not writable"
    parent = next((p for p in directory.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        return f"{directory} cannot be made here"
    return None


@runtime_checkable
class ModelRunner(Protocol):
    """Texts in, predictions out, in two halves so that a batch can be prepared ahead.

    :meth:`prepare` takes the CPU half (tokenizing, padding; in the model process, sending
    the texts) and returns a handle that :meth:`predict_prepared` turns into predictions, in
    the texts' order. A post the model cannot handle raises from either half; a runner that
    is gone raises :class:`ModelUnavailable`.
    """

    info: ModelInfo
    """Name and version, stamped on every result."""

    @property
    def columns(self) -> list[str]:
        """The emotion of each column of the model's probabilities."""

    @property
    def leaves_cpu_to_spare(self) -> bool:
        """Whether other CPU work (preparing the next batch) can run beside the model without slowing it."""

    def prepare(self, texts: Sequence[str]) -> Any: ...

    def predict_prepared(self, prepared: Any) -> list[Prediction]: ...

    def predict(self, texts: Sequence[str]) -> list[Prediction]: ...

    def close(self) -> None:
        """Release the model (its threads or its process)."""
