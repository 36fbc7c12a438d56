"""The model directory: the one thing the training module writes and the worker reads.

A Hugging Face sequence-classification directory (safetensors weights, tokenizer,
``config.json`` whose ``id2label`` names the six emotions), plus an identity file that says
which model it is. This module owns its default location, the identity file's name and
contents, and how a model's name and version are made, so that a result stamped by the
worker and the model card written by training always name the same version.

Knows nothing of torch or Kafka: it reads and hashes files.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

from emotion_stream.schemas.messages import ModelInfo

DEFAULT_MODEL_DIR = Path("artifacts/model")
"""Where training writes a model and the worker looks for one, unless told otherwise."""

IDENTITY_FILE = "emotion_model.json"
"""The identity file: ``name`` and ``version`` (stamped on every result), and how it was made."""

WEIGHTS_GLOB = "*.safetensors"
"""The weight files; a model saved in shards has several, and all of them make its version."""


def model_name(base_model: str) -> str:
    """The name of a model fine-tuned from ``base_model`` (a preset or hub name)."""
    return f"emotion-{base_model}"


def weights_digest(directory: Path) -> str:
    """SHA-256 over every weight file, in name order: two different models never share it."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob(WEIGHTS_GLOB)):
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def new_version(directory: Path, created: datetime) -> str:
    """The version of a model exported into ``directory`` at ``created`` (UTC): when, and which weights."""
    return f"{created:%Y%m%dT%H%M%SZ}-{weights_digest(directory)[:8]}"


def read_identity(directory: Path) -> dict | None:
    """The identity file's contents, or None when the directory has none."""
    path = Path(directory) / IDENTITY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_identity(directory: Path, identity: dict) -> None:
    (Path(directory) / IDENTITY_FILE).write_text(
        json.dumps(identity, indent=2, default=str) + "\n", encoding="utf-8"
    )


def model_info(directory: Path) -> ModelInfo:
    """The name and version a model directory's results carry.

    From the identity file when training wrote one; otherwise the directory's name and a
    digest of all its weights (the same digest an export would have put in its version).
    """
    directory = Path(directory)
    identity = read_identity(directory)
    if identity is not None:
        return ModelInfo(
            name=str(identity.get("name", directory.name)), version=str(identity.get("version", "unknown"))
        )
    return ModelInfo(name=directory.resolve().name, version=weights_digest(directory)[:12])


def looks_like_directory(model: str) -> bool:
    """Whether ``model`` names a directory (existing or not) rather than a hub id (``name``, ``org/name``)."""
    path = Path(model)
    return (
        path.exists()
        or path == DEFAULT_MODEL_DIR
        or model.startswith((".", "/", "~"))
        or model.count("/") > 1
        or model.endswith("/")
    )


DEFAULT_LANGUAGES = ("en",)
"""The languages a model reads when its identity file records none (a hub model, or one
exported before they were recorded): English, the training data's language."""

DEFAULT_CONFIDENCE_THRESHOLD = 0.5
"""The confidence threshold when the identity file records none (calibration records one)."""


def model_languages(identity: dict | None) -> tuple[str, ...]:
    """The ISO 639-1 codes of the languages a model reads, as its identity file records them."""
    recorded = (identity or {}).get("languages")
    if isinstance(recorded, list) and recorded and all(isinstance(code, str) for code in recorded):
        return tuple(code.lower() for code in recorded)
    return DEFAULT_LANGUAGES


def model_confidence_threshold(identity: dict | None) -> float:
    """The top score below which a model's label counts as unsure, as calibration recorded it."""
    recorded = (identity or {}).get("confidence_threshold")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and 0 <= recorded <= 1:
        return float(recorded)
    return DEFAULT_CONFIDENCE_THRESHOLD
