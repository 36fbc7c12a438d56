"""What a training run is told: hyperparameters (tunable, storable as JSON) and run options.

Precedence, lowest first: the defaults here, a ``--params`` JSON file (as written by
``emotion-stream tune``), then flags given explicitly on the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emotion_stream.schemas.model_directory import DEFAULT_MODEL_DIR
from emotion_stream.training.base_models import DEFAULT_BASE_MODEL
from emotion_stream.training.errors import TrainingError

DEFAULT_OUTPUT_DIR = DEFAULT_MODEL_DIR
DEFAULT_TUNE_STORAGE = "sqlite:///artifacts/tune/optuna.db"
DEFAULT_PARAMS_FILE = Path("artifacts/tune/best_params.json")

# The command-line flag of each hyperparameter, so an error names what the user typed.
FLAGS = {
    "learning_rate": "--lr",
    "batch_size": "--batch-size",
    "epochs": "--epochs",
    "weight_decay": "--weight-decay",
    "warmup_ratio": "--warmup-ratio",
    "label_smoothing": "--label-smoothing",
    "class_weights": "--class-weights",
    "patience": "--patience",
    "class_weight_power": "--class-weight-power",
}


class ConfigError(TrainingError, ValueError):
    """A bad option or parameter file; the message says which and what is accepted."""


class Hyperparameters(BaseModel):
    """The knobs that change the model; the keys of a ``--params`` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(default=2e-5, gt=0, lt=1)
    batch_size: int = Field(default=16, ge=1, le=4096)
    epochs: int = Field(default=3, ge=1, le=100)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Share of steps spent warming up the learning rate."
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    class_weights: bool = Field(default=False, description="Weight the loss by inverse class frequency.")
    class_weight_power: float = Field(
        default=1.0,
        ge=0,
        le=2,
        description="Exponent on the inverse frequency: 1 balances the classes fully, 0.5 halfway (in log "
        "terms).",
    )
    patience: int = Field(
        default=2, ge=0, description="Evaluations without improvement before stopping; 0 never stops early."
    )


DEMO_RECIPE = Hyperparameters(
    learning_rate=1e-4,
    batch_size=32,
    epochs=3,
    warmup_ratio=0.1,
    label_smoothing=0.1,
    class_weights=True,
    class_weight_power=0.5,
)
"""What the demo trains when no model exists: the recipe of the released model (docs/training.md,
6 epochs) cut to 3 epochs, about 13 minutes on 2 CPU cores. The reference projects' lr 2e-5
suits DistilBERT; the small offline base needs a larger step to converge in a few epochs."""


@dataclass
class RunOptions:
    """What train and tune share: the data, the base model and how much of the data to use."""

    data_dir: Path | None = None
    base_model: str = DEFAULT_BASE_MODEL
    allow_fallback: bool = True
    hub_timeout: float = 5.0
    seed: int = 42
    max_length: int = 128
    max_steps: int | None = None
    train_limit: int | None = None
    dev_fraction: float | None = None
    progress: bool = True
    command_line: list[str] = field(default_factory=list)


@dataclass
class TrainOptions(RunOptions):
    """A training run: the above, plus where the model goes and the parameter file it used."""

    output_dir: Path = DEFAULT_OUTPUT_DIR
    params_file: Path | None = None
    calibrate: bool = True
    """Fit a temperature on the validation split and fold it into the head before export."""
    refit_head: bool = True
    """Before the temperature, re-fit the head on the training split's features with mixup."""


def load_params_file(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--params {path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f'--params {path}: expected a JSON object of hyperparameters such as {{"learning_rate": 3e-5}}'
        )
    return raw


def resolve_hyperparameters(params_file: Path | None, overrides: dict[str, Any]) -> Hyperparameters:
    """Defaults, then the file, then the overrides that are not None."""
    from_file = load_params_file(params_file) if params_file else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Hyperparameters.model_validate({**from_file, **given})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = str(err["loc"][0]) if err["loc"] else "?"
            origin = FLAGS.get(key, key) if key in given else f"{key!r} in {params_file}"
            if err["type"] == "extra_forbidden":
                problems.append(
                    f"{origin}: unknown hyperparameter; known: {', '.join(Hyperparameters.model_fields)}"
                )
            else:
                problems.append(f"{origin}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None


DISTILL_RECIPE = Hyperparameters(
    learning_rate=1e-4,
    batch_size=32,
    epochs=3,
    warmup_ratio=0.1,
    label_smoothing=0.0,  # the teacher's soft labels already spread the probability mass
    class_weights=True,
    class_weight_power=0.5,
)
"""The student's recipe: the demo recipe's step size, schedule and class weighting, no label
smoothing."""


@dataclass
class DistillOptions(TrainOptions):
    """A distillation run: ``base_model`` is the teacher's model directory."""

    layers: int = 3
    alpha: float = 0.7
    """Weight of the soft-label (teacher) loss; the gold labels get the rest."""
    kd_temperature: float = 2.0
