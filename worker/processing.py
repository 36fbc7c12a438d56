"""One batch of raw input records in, encoded results and dead letters out. No Kafka.

Two stages, both run off the event loop: :meth:`BatchProcessor.prepare` bounds, decodes and
validates the records and prepares the model's input (tokenizing, padding), and
:meth:`BatchProcessor.finish` runs the model and encodes the results. Where the model
leaves CPU to spare, the worker prepares the next batch while the model runs the current one.

A batch the model fails on is handled as :mod:`worker.policy` says: a known-good probe tells
the model's fault (retried, then :class:`~worker.model.api.ModelFailing`) from the posts'
(the batch is bisected until the posts that fail alone, twice, are found and dead-lettered).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog

from emotion_stream.schemas import (
    SCHEMA_VERSION,
    DeadLetter,
    DeadLetterSource,
    ErrorInfo,
    ModelInfo,
    Payload,
    Post,
)
from emotion_stream.worker import policy
from emotion_stream.worker.codec import (
    Limits,
    Rejected,
    decode_post,
    headers_size,
    passed_on_headers,
    undecodable_reason,
)
from emotion_stream.worker.model.api import ModelFailing, ModelUnavailable, Prediction

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class InboundRecord:
    """One message as read from the input topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None
    """The record's Kafka timestamp, if it has one."""


@dataclass(frozen=True)
class OutboundMessage:
    key: bytes | None
    value: bytes
    source: InboundRecord | None = None
    """The input message it answers (so a refused send can be answered by a minimal dead letter)."""
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class BatchOutcome:
    results: list[OutboundMessage] = field(default_factory=list)
    dead_letters: list[OutboundMessage] = field(default_factory=list)
    dead_letter_kinds: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
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
    model_input: Any = None
    prepare_error: BaseException | None = None
    requested: list[str] = field(default_factory=list)
    """Texts asked for outside the stream (``/classify``): they ride in the same model call,
    after the posts, and are answered, not published."""

    @property
    def texts(self) -> list[str]:
        return [post.text for _, post in self.valid] + self.requested


DEFAULT_MAX_MESSAGE_BYTES = 1 << 20

TRACING_HEADERS = ("traceparent", "tracestate")
"""W3C trace context: always copied from a post to what answers it."""

_OWN_HEADERS = (("content-type", b"application/json"), ("schema-version", SCHEMA_VERSION.encode()))


def output_headers(record: InboundRecord, propagate: frozenset[str] = frozenset(TRACING_HEADERS)) -> tuple:
    """The headers of what answers ``record``: the content type, the schema version, and the
    record's own headers named in ``propagate`` (case-insensitive, as HTTP headers are) that
    pass :func:`worker.codec.passed_on_headers`."""
    return _OWN_HEADERS + passed_on_headers(record.headers, propagate)


def dead_letter(
    record: InboundRecord,
    error: ErrorInfo,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    minimal: bool = False,
    propagate: frozenset[str] = frozenset(TRACING_HEADERS),
) -> OutboundMessage:
    """The dead letter of ``record``, at most ``max_bytes`` long: whole when it fits, else with a
    prefix of the payload (its size and SHA-256 kept); ``minimal`` keeps no payload bytes at all."""
    budget = max_bytes - policy.DEAD_LETTER_MARGIN_BYTES
    key = record.key if record.key is None or len(record.key) <= policy.KEY_BYTES else None

    def build(limit: int | None) -> bytes:
        letter = DeadLetter(
            error=error,
            payload=Payload.from_bytes(record.value, limit),
            source=DeadLetterSource(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=None if record.key is None else Payload.from_bytes(record.key, policy.KEY_BYTES),
            ),
        )
        return letter.model_dump_json().encode("utf-8")

    value = build(0 if minimal else None)
    if len(value) > budget:
        value = build(policy.PREFIX_BYTES)
    return OutboundMessage(key=key, value=value, source=record, headers=output_headers(record, propagate))


def refused_as_too_large(message: OutboundMessage, what: str, max_bytes: int) -> OutboundMessage:
    """The minimal dead letter sent in place of a result or dead letter the broker refused as too large."""
    assert message.source is not None
    error = ErrorInfo(
        kind="too_large",
        message=f"the broker refused the {what} for this message as too large ({len(message.value)} "
        f"bytes of value, {len(message.key or b'')} of key, {headers_size(message.headers)} of headers; "
        f"SHA-256 {hashlib.sha256(message.value).hexdigest()[:16]}...); raise the topic's max.message.bytes "
        "or lower EMOTION_MAX_MESSAGE_BYTES",
    )
    # Only the worker's own headers: whatever else made the original too large stays behind.
    return dataclasses.replace(
        dead_letter(message.source, error, max_bytes, minimal=True), headers=_OWN_HEADERS
    )


DIMENSIONS = ("source", "lang")
"""The post fields a result carries as ``dimensions``: the aggregates' breakdowns."""


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _posted_at(post: Post, record: InboundRecord) -> str | None:
    if post.created_at is not None:
        created = post.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        return _iso(created.astimezone(timezone.utc))
    if record.timestamp_ms is not None and record.timestamp_ms > 0:
        return _iso(datetime.fromtimestamp(record.timestamp_ms / 1000, timezone.utc))
    return None


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
    ) -> None:
        """``prepare`` turns a batch's texts into the model's input and ``predict`` that input
        into predictions (with the default, ``predict`` gets the texts)."""
        self._predict = predict
        self._prepare = prepare
        self.model = model
        self._model_dict = model.model_dump()
        self.max_message_bytes = max_message_bytes
        self._limits = Limits(max_bytes=max_message_bytes)
        self._propagate = frozenset(h.lower() for h in (*TRACING_HEADERS, *propagate_headers))
        self._retry_delays = tuple(model_retry_delays)
        self._sleep = sleep

    def process(self, records: Sequence[InboundRecord]) -> BatchOutcome:
        """Both stages in one call."""
        return self.finish(self.prepare(records))

    def prepare(self, records: Sequence[InboundRecord], requested: Sequence[str] = ()) -> PreparedBatch:
        """Decode and bound ``records``, and prepare the model's input for their texts followed by
        the ``requested`` ones."""
        batch = PreparedBatch(outcome=BatchOutcome(), valid=[], requested=list(requested))
        for record in records:
            reason = undecodable_reason(record.headers)
            if reason is not None:
                self._reject(batch.outcome, record, ErrorInfo(kind="undecodable", message=reason))
                continue
            sizes = (len(record.value or b""), len(record.key or b""), headers_size(record.headers))
            if sum(sizes) > self.max_message_bytes:
                limit = self.max_message_bytes
                message = (
                    f"message of {sum(sizes)} bytes ({sizes[0]} of value, {sizes[1]} of key, {sizes[2]} "
                    f"of headers) is over the limit of {limit} (EMOTION_MAX_MESSAGE_BYTES)"
                )
                self._reject(batch.outcome, record, ErrorInfo(kind="too_large", message=message))
                continue
            decoded = decode_post(record.value, self._limits)
            if isinstance(decoded, Rejected):
                self._reject(batch.outcome, record, decoded.error)
            else:
                batch.valid.append((record, decoded))
        if batch.valid or batch.requested:
            try:
                batch.model_input = self._prepare(batch.texts)
            except Exception as exc:  # finish() finds the posts that fail on their own
                batch.prepare_error = exc
        return batch

    def finish(self, batch: PreparedBatch) -> BatchOutcome:
        outcome = batch.outcome
        if not batch.valid and not batch.requested:
            return outcome
        started = time.perf_counter()
        predictions = self._predict_isolating_failures(batch)
        outcome.model_seconds = time.perf_counter() - started
        outcome.answers = predictions[len(batch.valid) :]
        for (record, post), prediction in zip(batch.valid, predictions[: len(batch.valid)], strict=True):
            if prediction is not None:
                outcome.results.append(self._result(record, post, prediction))
                outcome.labels.append(prediction.label)
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

    def _result(self, record: InboundRecord, post: Post, prediction: Prediction) -> OutboundMessage:
        # Built as a plain dict: this runs once per post, and every field is already of the
        # right type (the unit and integration tests validate the output against EmotionResult).
        result = {
            "schema_version": SCHEMA_VERSION,
            "id": post.id,
            "label": prediction.label,
            "score": prediction.score,
            "scores": prediction.scores,
            "model": self._model_dict,
            "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
            "processed_at": _iso(datetime.now(timezone.utc)),
            "posted_at": _posted_at(post, record),
            "dimensions": {name: value for name in DIMENSIONS if (value := getattr(post, name))},
        }
        return OutboundMessage(
            key=post.id.encode("utf-8"),
            value=json.dumps(result).encode("utf-8"),
            source=record,
            headers=output_headers(record, self._propagate),
        )
