"""A uniform model soup: one model whose weights are the average of several fine-tuned ones.

Runs fine-tuned from the same base model (same seed, different schedules or weighting)
end close together in weight space; their average is a single model of the same size
and cost per post that usually generalises better than any of them (Wortsman et al.,
2022, "Model soups"). Averaging undoes the ingredients' calibration, so the soup is calibrated
again (``training.calibration``), then measured on validation and exported like a trained model.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from emotion_stream.schemas.model_directory import IDENTITY_FILE
from emotion_stream.training.calibration import calibrate_model
from emotion_stream.training.data import load_emotion_data
from emotion_stream.training.errors import TrainingError
from emotion_stream.training.export import export_model
from emotion_stream.training.head import DEFAULT_REFIT, HeadRefit
from emotion_stream.training.metrics import full_report
from emotion_stream.training.predict import load_emotion_model, predict_proba


class SoupError(TrainingError):
    """The models cannot be averaged; the message says why."""


def _ingredient(directory: Path) -> dict:
    """What the card and the record say about one model that went into the soup."""

    def read(name: str) -> dict:
        path = directory / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    record, identity, metrics = read("training_config.json"), read(IDENTITY_FILE), read("metrics.json")
    validation = metrics.get("validation", {})
    return {
        "directory": str(directory),
        "version": identity.get("version"),
        "record": record,
        "validation": {k: validation.get(k) for k in ("accuracy", "f1_weighted", "f1_macro")},
    }


def average_state_dicts(models: Sequence[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the models' parameters and buffers (all must match in shape)."""
    states = [m.state_dict() for m in models]
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise SoupError(
                f"model {i + 1} has a different architecture from model 1: only models "
                "fine-tuned from the same base model can be averaged"
            )
    averaged = {}
    for key in keys:
        first = states[0][key]
        if first.is_floating_point():
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(dim=0).to(first.dtype)
        else:  # integer buffers (position ids) are the same in every model
            averaged[key] = first
    return averaged


def soup(
    model_dirs: Sequence[Path],
    output_dir: Path,
    data_dir: Path | None,
    command_line: Sequence[str],
    *,
    calibrate: bool = True,
    refit: HeadRefit | None = DEFAULT_REFIT,
) -> dict:
    """Average ``model_dirs`` into ``output_dir``, calibrate it (unless ``calibrate`` is false:
    averaging undoes the ingredients' calibration), measure it on the validation split; return
    its metrics."""
    if len(model_dirs) < 2:
        raise SoupError("a soup needs at least two model directories")
    ingredients = [_ingredient(Path(d)) for d in model_dirs]
    bases = {(i["record"].get("base_model") or {}).get("source") for i in ingredients}
    if len(bases) > 1:
        raise SoupError(
            f"the models were fine-tuned from different base models ({', '.join(map(str, bases))}): "
            "average only runs of the same base"
        )
    loaded = [load_emotion_model(Path(d)) for d in model_dirs]
    tokenizer, model, columns = loaded[0]
    if any(c != columns for _, _, c in loaded[1:]):
        raise SoupError(
            "the models order their emotion labels differently: export them with `emotion-stream train`"
        )
    model.load_state_dict(average_state_dicts([m for _, m, _ in loaded]))
    model.eval()
    data = load_emotion_data(data_dir)
    validation = data.split("validation")
    calibration = None
    if calibrate:
        train = data.split("train")
        calibration, probs = calibrate_model(
            model,
            tokenizer,
            columns,
            (train.texts, train.labels),
            (validation.texts, validation.labels),
            refit=refit,
            log=lambda message: print(f"[soup] calibration: {message}", file=sys.stderr, flush=True),
        )
    else:
        probs = predict_proba(model, tokenizer, columns, validation.texts)
    metrics = {
        "eval_split": "validation",
        "validation": full_report(validation.labels, probs),
        "soup": [
            {"directory": i["directory"], "version": i["version"], "validation": i["validation"]}
            for i in ingredients
        ],
    }
    if calibration is not None:
        metrics["calibration"] = calibration
    record = dict(ingredients[0]["record"] or {})
    if not record:
        raise SoupError(
            f"{model_dirs[0]} has no training_config.json: soup models written by `emotion-stream train`"
        )
    record.update(
        soup_of=[
            {
                "directory": i["directory"],
                "version": i["version"],
                "hyperparameters": i["record"].get("hyperparameters"),
                "command_line": i["record"].get("command_line"),
            }
            for i in ingredients
        ],
        command_line=list(command_line),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    identity = export_model(output_dir, model, tokenizer, record=record, metrics=metrics)
    report = metrics["validation"]
    print(
        f"[soup] {identity['name']} {identity['version']} written to {output_dir}: validation accuracy "
        f"{report['accuracy']:.4f}, weighted F1 {report['f1_weighted']:.4f}, macro F1 "
        f"{report['f1_macro']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    return metrics
