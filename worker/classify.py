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
import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from emotion_stream.schemas.messages import MAX_TEXT_CHARS, SCHEMA_VERSION
from emotion_stream.worker.codec import DEFAULT_LIMITS, Limits, Unreadable, read_json
from emotion_stream.worker.model.api import Prediction

ESCAPED_CHAR_BYTES = 12
"""Most bytes one character of a text can take in a JSON body: an astral character written as
an escaped surrogate pair (``\\ud83d\\ude00``), as ``json.dumps`` writes it by default."""

RETRY_AFTER_S = 1
"""What a 429 tells the client to wait: requests in progress finish within a batch or two."""


class ClassifyRejected(Exception):
    """A request the desk will not take; ``status`` is the HTTP status to answer, ``headers``
    the response headers that go with it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


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
        """The largest body within the documented limits (``max_texts`` texts of ``max_chars``
        characters), however the client escapes them."""
        return self.max_texts * (ESCAPED_CHAR_BYTES * self.max_chars + 16) + 1024

    def too_large(self, size: int | None = None) -> ClassifyRejected:
        over = f"of {size} bytes " if size is not None else ""
        return ClassifyRejected(
            413,
            f"the body {over}is over {self.max_body_bytes} bytes (at most {self.max_texts} texts of "
            f"{self.max_chars} characters)",
        )

    async def read_body(self, request: Any) -> bytes:
        """The body of an aiohttp request, read up to :attr:`max_body_bytes` (a larger one is a
        413, told before it is read when its length is declared). The web server's own cap
        (1 MiB, answered in plain text) is below the documented limits, so the body is read
        from the stream here instead."""
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise self.too_large(declared)
        chunks, size = [], 0
        while chunk := await request.content.read(1 << 16):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self.too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(self, body: bytes) -> list[str]:
        """The texts of a request body, ``{"text": ...}`` or ``{"texts": [...]}``, read by the
        codec's hardened reader: deep nesting, huge numbers, lone surrogates and bytes that are
        not UTF-8 are a 400 (the stream dead-letters the same), never an exception of its own."""
        if len(body) > self.max_body_bytes:
            raise self.too_large(len(body))
        limits = Limits(max_bytes=self.max_body_bytes, max_depth=DEFAULT_LIMITS.max_depth)
        try:
            request = read_json(body, limits, what="the body")
        except Unreadable as exc:
            if exc.kind == "too_large":
                raise self.too_large(len(body)) from None
            raise ClassifyRejected(
                400, f'{exc}; send JSON: {{"text": "..."}} or {{"texts": ["..."]}}'
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
                {"Retry-After": str(RETRY_AFTER_S)},
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
                    503,
                    f"no answer within {self.timeout_s:.0f} s: the worker is overloaded",
                    {"Retry-After": str(max(1, math.ceil(self.timeout_s)))},
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
