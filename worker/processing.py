"""One batch of raw input records in, encoded results and dead letters out. No Kafka.

Two stages, both run off the event loop: :meth:`BatchProcessor.prepare` decodes and
validates the records and prepares the model's input (tokenizing, padding), and
:meth:`BatchProcessor.finish` runs the model and encodes the results. Where the model
leaves CPU to spare, the worker prepares the next batch while the model runs the current one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog

from schemas import DeadLetter, DeadLetterSource, ErrorInfo, ModelInfo, Payload, Post
from worker.codec import Rejected, decode_post
from worker.model.api import ModelUnavailable, Prediction

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class InboundRecord:
    """One message as read from the input topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class OutboundMessage:
    key: bytes | None
    value: bytes


@dataclass
class BatchOutcome:
    results: list[OutboundMessage] = field(default_factory=list)
    dead_letters: list[OutboundMessage] = field(default_factory=list)
    dead_letter_kinds: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    model_seconds: float = 0.0


Predict = Callable[[Any], list[Prediction]]
"""Predictions for a prepared model input (by default, the list of texts itself)."""
Prepare = Callable[[Sequence[str]], Any]


@dataclass
class PreparedBatch:
    """A batch between the two stages: decoded, rejected where invalid, input prepared."""

    outcome: BatchOutcome
    valid: list[tuple[InboundRecord, Post]]
    model_input: Any = None
    prepare_error: BaseException | None = None


def dead_letter(record: InboundRecord, error: ErrorInfo) -> OutboundMessage:
    letter = DeadLetter(
        error=error,
        payload=Payload.from_bytes(record.value),
        source=DeadLetterSource(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=None if record.key is None else Payload.from_bytes(record.key),
        ),
    )
    return OutboundMessage(key=record.key, value=letter.model_dump_json().encode("utf-8"))


class BatchProcessor:
    """Decodes, classifies and encodes a batch; a model failure isolates the failing post."""

    def __init__(self, predict: Predict, model: ModelInfo, prepare: Prepare = list) -> None:
        """``prepare`` turns a batch's texts into the model's input and ``predict`` that input
        into predictions (with the default, ``predict`` gets the texts)."""
        self._predict = predict
        self._prepare = prepare
        self.model = model
        self._model_dict = model.model_dump()

    def process(self, records: Sequence[InboundRecord]) -> BatchOutcome:
        """Both stages in one call."""
        return self.finish(self.prepare(records))

    def prepare(self, records: Sequence[InboundRecord]) -> PreparedBatch:
        batch = PreparedBatch(outcome=BatchOutcome(), valid=[])
        for record in records:
            decoded = decode_post(record.value)
            if isinstance(decoded, Rejected):
                self._reject(batch.outcome, record, decoded.error)
            else:
                batch.valid.append((record, decoded))
        if batch.valid:
            try:
                batch.model_input = self._prepare([post.text for _, post in batch.valid])
            except Exception as exc:  # finish() finds the posts that fail on their own
                batch.prepare_error = exc
        return batch

    def finish(self, batch: PreparedBatch) -> BatchOutcome:
        outcome = batch.outcome
        if not batch.valid:
            return outcome
        started = time.perf_counter()
        predictions = self._predict_isolating_failures(batch)
        outcome.model_seconds = time.perf_counter() - started
        for (record, post), prediction in zip(batch.valid, predictions, strict=True):
            if prediction is not None:
                outcome.results.append(self._result(record, post, prediction))
                outcome.labels.append(prediction.label)
        return outcome

    def _predict_isolating_failures(self, batch: PreparedBatch) -> list[Prediction | None]:
        error = batch.prepare_error
        if error is None:
            try:
                return list(self._predict(batch.model_input))
            except ModelUnavailable:
                raise  # not this batch's fault: stop, and re-read it after a restart
            except Exception as exc:
                error = exc
        # The batch failed: find the posts that fail on their own.
        log.warning(
            "batch prediction failed; retrying post by post", error=repr(error), posts=len(batch.valid)
        )
        single: list[Prediction | None] = []
        for record, post in batch.valid:
            try:
                single.append(self._predict(self._prepare([post.text]))[0])
            except ModelUnavailable:
                raise
            except Exception as exc:
                self._reject(
                    batch.outcome,
                    record,
                    ErrorInfo(kind="processing_failed", message=f"model failed on this post: {exc!r}"),
                )
                single.append(None)
        return single

    @staticmethod
    def _reject(outcome: BatchOutcome, record: InboundRecord, error: ErrorInfo) -> None:
        outcome.dead_letters.append(dead_letter(record, error))
        outcome.dead_letter_kinds.append(error.kind)

    def _result(self, record: InboundRecord, post: Post, prediction: Prediction) -> OutboundMessage:
        # Built as a plain dict: this runs once per post, and every field is already of the
        # right type (the unit and integration tests validate the output against EmotionResult).
        result = {
            "id": post.id,
            "label": prediction.label,
            "score": prediction.score,
            "scores": prediction.scores,
            "model": self._model_dict,
            "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
            "processed_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        }
        return OutboundMessage(key=post.id.encode("utf-8"), value=json.dumps(result).encode("utf-8"))
