"""Writing a trained model as the directory the worker serves.

Contents: weights (safetensors) with ``id2label`` set to the emotion names, the tokenizer,
``training_config.json`` (how it was made), ``metrics.json``, the identity file (the name and
version the worker stamps on each result; its name, contents and version scheme are defined
by :mod:`schemas.model_directory`), the model card and the confusion matrix.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from emotion_stream.schemas import ID2LABEL, LABEL2ID
from emotion_stream.schemas.model_directory import WEIGHTS_GLOB, model_name, new_version, write_identity
from emotion_stream.training.calibration import save_reliability_diagram
from emotion_stream.training.card import model_card
from emotion_stream.training.data import DATASET_LANGUAGES
from emotion_stream.training.plots import save_confusion_matrix


def export_model(
    directory: Path, model, tokenizer, *, record: dict, metrics: dict, name: str | None = None
) -> dict:
    """Save everything into ``directory``; return the model's identity (name, version, ...).
    ``name``: the model's name (default: from its base model)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The worker and pipeline() read class names from the config: make them the emotions.
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = dict(LABEL2ID)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    for weights in directory.glob(WEIGHTS_GLOB):
        # Saved owner-only; a container whose worker runs as another user could not read them.
        weights.chmod(0o644)
    created = datetime.now(timezone.utc)
    identity = {
        "name": name or model_name(record["base_model"]["name"]),
        "version": new_version(directory, created),
        "base_model": record["base_model"]["requested"]
        if record["base_model"]["origin"] != "fallback"
        else record["base_model"]["name"],
        "base_model_requested": record["base_model"]["requested"],
        "created_at": created.isoformat(timespec="seconds"),
        "languages": list(DATASET_LANGUAGES),
    }
    write_identity(directory, identity)
    _write_json(directory / "training_config.json", record)
    _write_json(directory / "metrics.json", metrics)
    report = metrics[metrics["eval_split"]]
    save_confusion_matrix(
        report["confusion_matrix"],
        directory / "confusion_matrix.png",
        title=f"{identity['name']} on {metrics['eval_split']}",
    )
    calibration = metrics.get("calibration")
    if calibration:
        save_reliability_diagram(
            calibration["reliability_after"],
            calibration["after"]["ece"],
            directory / "reliability.png",
            title=f"{identity['name']} on {calibration['fitted_on']}, calibrated",
        )
    (directory / "README.md").write_text(model_card(identity, record, metrics), encoding="utf-8")
    return identity


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
