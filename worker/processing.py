"""One batch of raw input records in, encoded results and dead letters out, with failures isolated.
No Kafka; the wire formats are :mod:`worker.codec`'s.

Two stages, both run off the event loop: :meth:`BatchProcessor.prepare` bounds, decodes and
validates the records and prepares the model's input (tokenizing, padding), and
:meth:`BatchProcessor.finish` runs the model and encodes the results. Where the model
leaves CPU to spare, the worker prepares the next batch while the model runs the current one.

A batch the model fails on is handled as :mod:`worker.policy` says: a known-good probe tells
the model's fault (retried, then :class:`~worker.model.api.ModelFailing`) from the posts'
(the batch is bisected until the posts that fail alone, twice, are found and dead-lettered).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from emotion_stream.schemas import ErrorInfo, ModelInfo, Post
from emotion_stream.worker import policy
from emotion_stream.worker.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    TRACING_HEADERS,
    InboundRecord,
    Limits,
    OutboundMessage,
    Rejected,
    dead_letter,
    decode_post,
    encode_result,
    headers_size,
    undecodable_reason,
)
from emotion_stream.worker.model.api import ModelFailing, ModelUnavailable, Prediction
from emotion_stream.worker.reading import NO_LANGUAGE_CHECK, Reading, ReadingPolicy, set_apart_as

log = structlog.get_logger(__name__)


@dataclass
class BatchOutcome:
    results: list[OutboundMessage] = field(default_factory=list)
    dead_letters: list[OutboundMessage] = field(default_factory=list)
    dead_letter_kinds: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    set_apart: list[str] = field(default_factory=list)
    """What each result counted apart from the six emotions was: unsure, other_language, no_text."""
    model_seconds: float = 0.0
    refused_results: int = 0
    """Results the broker refused as too large, answered by a dead letter instead."""
    answers: list[Prediction | None] = field(default_factory=list)
    """Predictions for the batch's requested texts (``/classify``), in order; None where the
    model failed on that text alone."""


Predict = Callable[[Any], list[Prediction]]
"""Predictions for a prepared model input (by default, the list of texts itself)."""
Prepare = Callable[[Sequence[str]], Any]


@dataclass
class PreparedBatch:
    """A batch between the two stages: decoded, rejected where invalid, input prepared."""

    outcome: BatchOutcome
    valid: list[tuple[InboundRecord, Post]]
    readings: list[Reading] = field(default_factory=list)
    """What the reader found in each valid post, in the same order."""
    model_input: Any = None
    prepare_error: BaseException | None = None
    requested: list[str] = field(default_factory=list)
    """Texts asked for outside the stream (``/classify``): they ride in the same model call,
    after the posts, and are answered, not published."""

    @property
    def texts(self) -> list[str]:
        return [post.text for _, post in self.valid] + self.requested


class BatchProcessor:
    """Bounds, decodes, classifies and encodes a batch; a model failure is isolated as
    :mod:`worker.policy` says."""

    def __init__(
        self,
        predict: Predict,
        model: ModelInfo,
        prepare: Prepare = list,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        propagate_headers: Sequence[str] = (),
        model_retry_delays: Sequence[float] = policy.MODEL_RETRY_DELAYS,
        sleep: Callable[[float], None] = time.sleep,
        reading: ReadingPolicy = NO_LANGUAGE_CHECK,
    ) -> None:
        """``prepare`` turns a batch's texts into the model's input and ``predict`` that input
        into predictions (with the default, ``predict`` gets the texts)."""
        self._predict = predict
        self._prepare = prepare
        self.model = model
        self.max_message_bytes = max_message_bytes
        self._limits = Limits(max_bytes=max_message_bytes)
        self._propagate = frozenset(h.lower() for h in (*TRACING_HEADERS, *propagate_headers))
        self._retry_delays = tuple(model_retry_delays)
        self.reading = reading
        self._sleep = sleep

    def process(self, records: Sequence[InboundRecord]) -> BatchOutcome:
        """Both stages in one call."""
        return self.finish(self.prepare(records))

    def prepare(self, records: Sequence[InboundRecord], requested: Sequence[str] = ()) -> PreparedBatch:
        """Decode and bound ``records``, and prepare the model's input for their texts followed by
        the ``requested`` ones."""
        batch = PreparedBatch(outcome=BatchOutcome(), valid=[], requested=list(requested))
        decoded: list[tuple[InboundRecord, Post | ErrorInfo]] = [(r, self._decode(r)) for r in records]
        # The language check runs over the batch's posts at once (one call into its model).
        readings = iter(self.reading.reader.read_many([p.text for _, p in decoded if isinstance(p, Post)]))
        for record, post in decoded:  # dead letters in the order of their records
            if not isinstance(post, Post):
                self._reject(batch.outcome, record, post)
                continue
            reading = next(readings)
            if self.reading.skips(reading):
                self._reject(batch.outcome, record, _unreadable_error(reading))
                continue
            batch.valid.append((record, post))
            batch.readings.append(reading)
        if batch.valid or batch.requested:
            try:
                batch.model_input = self._prepare(batch.texts)
            except Exception as exc:  # finish() finds the posts that fail on their own
                batch.prepare_error = exc
        return batch

    def _decode(self, record: InboundRecord) -> Post | ErrorInfo:
        """The post in ``record``, or why it cannot be read."""
        reason = undecodable_reason(record.headers)
        if reason is not None:
            return ErrorInfo(kind="undecodable", message=reason)
        sizes = (len(record.value or b""), len(record.key or b""), headers_size(record.headers))
        if sum(sizes) > self.max_message_bytes:
            limit = self.max_message_bytes
            return ErrorInfo(
                kind="too_large",
                message=f"message of {sum(sizes)} bytes ({sizes[0]} of value, {sizes[1]} of key, "
                f"{sizes[2]} of headers) is over the limit of {limit} (EMOTION_MAX_MESSAGE_BYTES)",
            )
        decoded = decode_post(record.value, self._limits)
        return decoded.error if isinstance(decoded, Rejected) else decoded

    def finish(self, batch: PreparedBatch) -> BatchOutcome:
        outcome = batch.outcome
        if not batch.valid and not batch.requested:
            return outcome
        started = time.perf_counter()
        predictions = self._predict_isolating_failures(batch)
        outcome.model_seconds = time.perf_counter() - started
        outcome.answers = predictions[len(batch.valid) :]
        for (record, post), reading, prediction in zip(
            batch.valid, batch.readings, predictions[: len(batch.valid)], strict=True
        ):
            if prediction is not None:
                confident = prediction.score >= self.reading.min_confidence
                outcome.results.append(self._result(record, post, prediction, reading, confident))
                outcome.labels.append(prediction.label)
                apart = set_apart_as(reading.unreadable, confident)
                if apart is not None:
                    outcome.set_apart.append(apart)
        return outcome

    def _run(self, texts: Sequence[str]) -> list[Prediction]:
        return list(self._predict(self._prepare(texts)))

    def _model_works(self) -> bool:
        """Whether the model labels the known-good probe post (a dead model process still raises)."""
        try:
            self._run([policy.PROBE_TEXT])
        except ModelUnavailable:
            raise
        except Exception:
            return False
        return True

    def _predict_isolating_failures(self, batch: PreparedBatch) -> list[Prediction | None]:
        texts = batch.texts
        error = batch.prepare_error
        if error is None:
            try:
                return list(self._predict(batch.model_input))
            except ModelUnavailable:
                raise  # not this batch's fault: stop, and re-read it after a restart
            except Exception as exc:
                error = exc
        for attempt, delay in enumerate(self._retry_delays, start=1):
            if self._model_works():
                break
            log.warning(
                "the model fails on a known-good post too; retrying the batch",
                error=repr(error),
                attempt=attempt,
                of=len(self._retry_delays),
                delay_s=delay,
            )
            self._sleep(delay)
            try:
                return self._run(texts)
            except ModelUnavailable:
                raise
            except Exception as exc:
                error = exc
        else:
            if not self._model_works():
                raise ModelFailing(
                    f"the model fails on every post, a known-good probe included, after "
                    f"{len(self._retry_delays)} retries: {error!r}"
                ) from error
        # The model works: the batch holds posts it fails on. Find them by halves.
        log.warning("batch prediction failed; bisecting it", error=repr(error), posts=len(texts))
        predictions: list[Prediction | None] = [None] * len(texts)
        failures: dict[int, BaseException] = {}
        self._bisect(texts, list(range(len(texts))), predictions, failures, failed=error)
        for i, exc in sorted(failures.items()):
            if i >= len(batch.valid):
                continue  # a requested text: its answer says it failed
            message = f"the model failed on this post alone, twice: {exc!r}"
            self._reject(
                batch.outcome, batch.valid[i][0], ErrorInfo(kind="processing_failed", message=message)
            )
        return predictions

    def _bisect(
        self,
        texts: Sequence[str],
        indices: list[int],
        predictions: list[Prediction | None],
        failures: dict[int, BaseException],
        failed: BaseException | None = None,
    ) -> None:
        """Predict ``indices`` together (unless they just ``failed`` together); if that fails,
        each half apart, down to single posts, which get one more try alone. About 2 log2(n)
        passes for one bad post among n."""
        if failed is None:
            try:
                got = self._run([texts[i] for i in indices])
            except ModelUnavailable:
                raise
            except Exception as exc:
                failed = exc
            else:
                for i, prediction in zip(indices, got, strict=True):
                    predictions[i] = prediction
                return
        if len(indices) > 1:
            middle = len(indices) // 2
            self._bisect(texts, indices[:middle], predictions, failures)
            self._bisect(texts, indices[middle:], predictions, failures)
            return
        try:
            predictions[indices[0]] = self._run([texts[indices[0]]])[0]
        except ModelUnavailable:
            raise
        except Exception as again:
            if not self._model_works():  # the model broke meanwhile: not this post's fault
                raise ModelFailing(
                    f"the model stopped working while isolating a failed batch: {again!r}"
                ) from failed
            failures[indices[0]] = again

    def _reject(self, outcome: BatchOutcome, record: InboundRecord, error: ErrorInfo) -> None:
        outcome.dead_letters.append(
            dead_letter(record, error, self.max_message_bytes, propagate=self._propagate)
        )
        outcome.dead_letter_kinds.append(error.kind)

    def _result(
        self, record: InboundRecord, post: Post, prediction: Prediction, reading: Reading, confident: bool
    ) -> OutboundMessage:
        return encode_result(
            record,
            post,
            prediction,
            self.model,
            self._propagate,
            reading=reading,
            confident=confident,
            topic=self.reading.topic_for(reading),
        )


def _unreadable_error(reading: Reading) -> ErrorInfo:
    if reading.unreadable == "no_text":
        message = "no_text: no words left once links, mentions, hashtags, emoji and numbers are removed"
    else:
        message = (
            f"other_language: the text reads as {reading.language!r} (probability {reading.language_score}), "
            "not a language the model reads (EMOTION_LANGUAGES)"
        )
    return ErrorInfo(kind="unreadable", message=message)
