"""``emotion-stream distill``: a cheaper student taught by a fine-tuned teacher.

The student is the teacher with its top encoder layers dropped (it keeps the embeddings, the
lowest ``layers`` layers and the head, so it starts from the teacher's own task features),
then trained on the teacher's soft labels and the gold labels: the loss is
``alpha * KL(student || teacher at temperature tau) * tau**2 + (1 - alpha) * cross-entropy``.
The teacher's probabilities over the training posts are computed once, before training.
The student is then calibrated, measured and exported like any trained model, with the
distillation recorded in its training record and model card.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import Trainer

from emotion_stream.training.config import DISTILL_RECIPE, DistillOptions, Hyperparameters
from emotion_stream.training.errors import TrainingError
from emotion_stream.training.export import export_model
from emotion_stream.training.prepare import prepare_run
from emotion_stream.training.trainer import build_trainer


def _layer_stack(model) -> tuple[torch.nn.ModuleList, str]:
    """The encoder's list of layers and the config field that counts them."""
    for field in ("num_hidden_layers", "n_layers"):
        count = getattr(model.config, field, None)
        if count is None:
            continue
        stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
        if stacks:
            return stacks[0], field
    raise TrainingError(f"cannot find the encoder layers of {type(model).__name__} to drop the top ones")


def drop_top_layers(model, keep: int):
    """``model`` with only its lowest ``keep`` encoder layers (in place; returned for chaining)."""
    stack, field = _layer_stack(model)
    if not 1 <= keep < len(stack):
        raise TrainingError(
            f"--layers must be between 1 and {len(stack) - 1} for a teacher of {len(stack)} layers"
        )
    del stack[keep:]
    setattr(model.config, field, keep)
    return model


class DistillationTrainer(Trainer):
    """The student's loss: the teacher's soft labels (``alpha``, at temperature ``tau``) and the
    gold labels, the latter weighted per class when ``class_weights`` is given."""

    def __init__(self, *args, alpha: float, tau: float, class_weights: torch.Tensor | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alpha, self.tau, self.class_weights = alpha, tau, class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        teacher = inputs.pop("teacher_logits", None)
        outputs = model(**inputs)
        logits = outputs.logits.float()
        weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        loss = F.cross_entropy(logits, labels, weight=weights)
        if teacher is not None:  # training batches; evaluation has the gold labels only
            soft = F.kl_div(
                F.log_softmax(logits / self.tau, dim=-1),
                F.log_softmax(teacher.float().to(logits.device) / self.tau, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            loss = self.alpha * soft * self.tau**2 + (1 - self.alpha) * loss
        return (loss, outputs) if return_outputs else loss


def teacher_log_probs(teacher_dir: Path, texts, max_length: int) -> np.ndarray:
    """The teacher's log-probabilities (its logits up to a per-post constant) for ``texts``."""
    from emotion_stream.training.predict import load_emotion_model, predict_proba

    tokenizer, teacher, columns = load_emotion_model(teacher_dir)
    teacher.to("cuda" if torch.cuda.is_available() else "cpu")
    probs = predict_proba(teacher, tokenizer, columns, texts, max_length=max_length)
    return np.log(np.clip(probs, 1e-9, 1.0)).astype(np.float32)


def distill(options: DistillOptions, hp: Hyperparameters = DISTILL_RECIPE):
    """Train the student and export it; returns the training result (see :func:`training.train.train`)."""
    from transformers import AutoModelForSequenceClassification

    from emotion_stream.training.train import TrainResult, finish_training, training_record

    transformers.set_seed(options.seed)
    teacher_dir = Path(options.base_model)
    if not (teacher_dir / "config.json").is_file():
        raise TrainingError(
            f"--teacher {teacher_dir} is not a model directory: train one with `emotion-stream train`"
        )
    run = prepare_run(options)
    output = Path(options.output_dir)
    checkpoints = output / "checkpoints"
    started = time.monotonic()
    print(
        f"[distill] teacher {teacher_dir}: labelling {len(run.train_split)} training posts", file=sys.stderr
    )
    soft = teacher_log_probs(teacher_dir, run.train_split.texts, options.max_length)
    train_dataset = run.train_dataset.add_column("teacher_logits", soft.tolist())
    student = drop_top_layers(
        AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True), options.layers
    )
    parameters = sum(p.numel() for p in student.parameters()) / 1e6
    print(
        f"[distill] student: {options.layers} layers, {parameters:.1f}M parameters; "
        f"alpha {options.alpha}, temperature {options.kd_temperature}",
        file=sys.stderr,
        flush=True,
    )
    try:
        trainer = build_trainer(
            run,
            options,
            hp,
            checkpoints,
            model=student,
            train_dataset=train_dataset,
            keep_columns=True,  # teacher_logits, for the loss
            trainer_class=DistillationTrainer,
            alpha=options.alpha,
            tau=options.kd_temperature,
        )
        trainer.train()
        metrics = finish_training(trainer, run, options, started)
        record = training_record(options, hp, run)
        record["distillation"] = {
            "teacher": str(teacher_dir.resolve()),
            "teacher_identity": _identity(teacher_dir),
            "layers": options.layers,
            "alpha": options.alpha,
            "kd_temperature": options.kd_temperature,
        }
        name = f"{_identity(teacher_dir).get('name', teacher_dir.name)}-{options.layers}l-student"
        identity = export_model(
            output, trainer.model, run.tokenizer, record=record, metrics=metrics, name=name
        )
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
    report = metrics[run.eval_name]
    print(
        f"[distill] {identity['name']} {identity['version']} written to {output}: {run.eval_name} accuracy "
        f"{report['accuracy']:.4f}, macro F1 {report['f1_macro']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    return TrainResult(output, identity, metrics, run.base)


def _identity(directory: Path) -> dict:
    from emotion_stream.schemas.model_directory import read_identity

    return read_identity(directory) or {}


DEFAULT_STUDENT_LAYERS = 3
"""Encoder layers of the default model: the demo recipe's model distilled to its lowest three
(the quality and speed of each student tried: docs/training.md)."""


def distill_default(
    teacher_dir: Path, output_dir: Path, data_dir: Path | None = None, *, progress: bool = True
):
    """Distill the default model (:data:`DEFAULT_STUDENT_LAYERS` layers) from ``teacher_dir`` into
    ``output_dir`` with the distillation recipe (for the demo, after :func:`train.train_default`)."""
    from emotion_stream.training.settings import resolve_data_dir

    options = DistillOptions(
        base_model=str(teacher_dir),
        allow_fallback=False,
        output_dir=Path(output_dir),
        data_dir=resolve_data_dir(data_dir),
        layers=DEFAULT_STUDENT_LAYERS,
        progress=progress,
        command_line=["distill_default"],
    )
    print(
        f"[distill] the default model: the teacher's lowest {DEFAULT_STUDENT_LAYERS} layers, "
        "taught by it; the time left is printed as it goes",
        file=sys.stderr,
        flush=True,
    )
    return distill(options, DISTILL_RECIPE)
