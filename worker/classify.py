"""`POST /classify`: texts labelled on request, in the stream's next batch, by the same model.

A request's texts wait at the :class:`ClassifyDesk` until the worker's next batch takes them
(they ride in the same model call as that batch's posts); when no batch comes within the
batch wait, because the input topic is quiet, the worker runs them on their own, through the
same model thread. There is never a second copy of the model. Limits: texts per request,
characters per text, requests in progress (429 beyond), and an optional bearer token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from schemas.messages import MAX_TEXT_CHARS, SCHEMA_VERSION
from worker.model.api import Prediction


class ClassifyRejected(Exception):
    """A request the desk will not take; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future


class ClassifyDesk:
    def __init__(
        self,
        max_texts: int,
        max_concurrent: int,
        token: str | None = None,
        max_chars: int = MAX_TEXT_CHARS,
        timeout_s: float = 60.0,
    ) -> None:
        self.max_texts, self.max_concurrent, self.max_chars = max_texts, max_concurrent, max_chars
        self.timeout_s = timeout_s
        self._token = token
        self._pending: deque[_Request] = deque()
        self._wake: asyncio.Event | None = None
        self.in_progress = 0
        self.served = 0

    # -- the HTTP side -------------------------------------------------------------------------

    def check_token(self, authorization: str | None) -> None:
        if self._token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not hmac.compare_digest(given.encode(), self._token.encode()):
            raise ClassifyRejected(401, "send the token as `Authorization: Bearer <EMOTION_CLASSIFY_TOKEN>`")

    @property
    def max_body_bytes(self) -> int:
        return self.max_texts * (4 * self.max_chars + 16) + 1024

    def parse(self, body: bytes) -> list[str]:
        """The texts of a request body, ``{"text": ...}`` or ``{"texts": [...]}``."""
        if len(body) > self.max_body_bytes:
            raise ClassifyRejected(413, f"the body is over {self.max_body_bytes} bytes")
        try:
            request = json.loads(body)
        except ValueError:
            raise ClassifyRejected(
                400, 'the body must be JSON: {"text": "..."} or {"texts": ["..."]}'
            ) from None
        if not isinstance(request, dict) or ("text" in request) == ("texts" in request):
            raise ClassifyRejected(400, 'send exactly one of {"text": "..."} and {"texts": ["..."]}')
        texts = [request["text"]] if "text" in request else request["texts"]
        if not isinstance(texts, list) or not texts:
            raise ClassifyRejected(400, '"texts" must be a non-empty list of strings')
        if len(texts) > self.max_texts:
            raise ClassifyRejected(
                413,
                f"{len(texts)} texts in one request; at most {self.max_texts} (EMOTION_CLASSIFY_MAX_TEXTS)",
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ClassifyRejected(422, f"text {i} must be a non-blank string")
            if len(text) > self.max_chars:
                raise ClassifyRejected(422, f"text {i} has {len(text)} characters; at most {self.max_chars}")
        return texts

    async def classify(self, texts: list[str]) -> list[Prediction | None]:
        """Queue ``texts`` for the next batch and wait for their predictions."""
        if self.in_progress >= self.max_concurrent:
            raise ClassifyRejected(
                429,
                f"{self.in_progress} requests in progress (EMOTION_CLASSIFY_MAX_CONCURRENT); retry shortly",
            )
        self.in_progress += 1
        try:
            future = asyncio.get_running_loop().create_future()
            self._pending.append(_Request(texts, future))
            self._wakeup().set()
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
            except asyncio.TimeoutError:
                raise ClassifyRejected(
                    503, f"no answer within {self.timeout_s:.0f} s: the worker is overloaded"
                ) from None
        finally:
            self.in_progress -= 1

    @staticmethod
    def answer_body(predictions: list[Prediction | None], model: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        results = []
        for prediction in predictions:
            if prediction is None:
                results.append(
                    {"error": {"kind": "processing_failed", "message": "the model failed on this text"}}
                )
            else:
                results.append(
                    {
                        "schema_version": SCHEMA_VERSION,
                        "label": prediction.label,
                        "score": prediction.score,
                        "scores": prediction.scores,
                        "model": model,
                        "processed_at": now,
                    }
                )
        return {"results": results}

    # -- the batch side ------------------------------------------------------------------------

    def _wakeup(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    async def wait_for_work(self) -> None:
        await self._wakeup().wait()
        self._wakeup().clear()

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    def take(self, max_texts: int) -> list[_Request]:
        """Whole requests, oldest first, up to ``max_texts`` texts (always at least one request)."""
        taken: list[_Request] = []
        count = 0
        while self._pending and (not taken or count + len(self._pending[0].texts) <= max_texts):
            request = self._pending.popleft()
            if request.future.done():  # its client gave up
                continue
            taken.append(request)
            count += len(request.texts)
        return taken

    @staticmethod
    def texts_of(requests: list[_Request]) -> list[str]:
        return [text for request in requests for text in request.texts]

    def answer(self, requests: list[_Request], predictions: list[Prediction | None]) -> None:
        start = 0
        for request in requests:
            end = start + len(request.texts)
            if not request.future.done():
                request.future.set_result(predictions[start:end])
            start = end
        self.served += len(requests)

    @staticmethod
    def fail(requests: list[_Request], error: BaseException) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(
                    ClassifyRejected(503, f"the model could not label the texts: {error!r}")
                )
