"""Publishing a batch: its results and dead letters sent, and every one acknowledged by the broker.

Straight to the app's producer (Faust's ``Topic.send`` wraps every message in futures and
sensor calls that cost more than the send itself). Whatever the broker refuses as too large
(client-side, before it is sent, or by the broker) is replaced by a minimal dead letter, as
:mod:`worker.policy` says: one message never blocks its partition. Anything else that fails,
and a send not acknowledged within the send timeout, fails the batch, which then stays
uncommitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from emotion_stream.worker.codec import OutboundMessage, refused_as_too_large
from emotion_stream.worker.processing import BatchOutcome

log = structlog.get_logger(__name__)

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)

Send = Callable[..., Awaitable[Awaitable[Any]]]
"""Faust's ``Producer.send``: enqueue, and return the future of the broker's acknowledgement."""


class SendFailed(RuntimeError):
    """The broker did not take a batch's outputs; the batch must not be committed."""


def _causes(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__  # Faust wraps the client's error in its own


def _too_large(exc: BaseException) -> bool:
    return any(isinstance(e, _TOO_LARGE) for e in _causes(exc))


def _retriable(exc: BaseException) -> bool:
    """A refusal the broker expects to lift (a leader moving after a restart or a partition)."""
    return any(getattr(e, "retriable", False) for e in _causes(exc))


class Publisher:
    """Sends a batch's outputs to the output and dead-letter topics and waits for the broker."""

    def __init__(
        self, send: Send, output_topic: str, dlq_topic: str, max_message_bytes: int, timeout_s: float
    ) -> None:
        self._send = send
        self.output_topic, self.dlq_topic = output_topic, dlq_topic
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self.send_errors = 0
        """Sends the broker refused or never acknowledged (too-large ones included)."""

    async def publish(self, outcome: BatchOutcome) -> None:
        """Send everything in ``outcome``; return once the broker has acknowledged all of it.

        A refused-as-too-large output is answered by a minimal dead letter (and counted in
        ``outcome.dead_letter_kinds``); any other failure raises :class:`SendFailed`.
        """
        sent = [
            (m, "result", await self._enqueue(m.topic or self.output_topic, m), m.topic or self.output_topic)
            for m in outcome.results
        ]
        sent += [
            (m, "dead letter", await self._enqueue(self.dlq_topic, m), self.dlq_topic)
            for m in outcome.dead_letters
        ]
        try:
            done = await asyncio.wait_for(self._settled(sent), self.timeout_s)
        except asyncio.TimeoutError:
            self.send_errors += 1
            raise SendFailed(
                f"the broker did not acknowledge the batch's {len(sent)} outputs within "
                f"{self.timeout_s:.0f}s "
                "(EMOTION_SEND_TIMEOUT_S); the batch was not committed"
            ) from None
        for (_, what, _, _), kind in zip(sent, done, strict=True):
            if kind is not None:
                outcome.dead_letter_kinds.append(kind)
                outcome.refused_results += what == "result"

    async def _enqueue(self, topic: str, message: OutboundMessage) -> Awaitable[Any] | BaseException:
        try:
            return await self._send(
                topic, message.key, message.value, None, None, list(message.headers) or None
            )
        except Exception as exc:  # refused before it was sent (too large for the client)
            return exc

    async def _settled(self, sent: list) -> list[str | None]:
        """Every output's outcome (see :meth:`_acked`). The broker's futures are waited for as
        they are, not wrapped in a task each (a batch sends hundreds); only an output refused,
        or an acknowledgement that is no future, goes through :meth:`_acked`, all at once."""
        futures = [ack for _, _, ack, _ in sent if asyncio.isfuture(ack)]
        if futures:
            await asyncio.wait(futures)
        kinds: list[str | None] = [None] * len(sent)
        rest = [
            i
            for i, (_, _, ack, _) in enumerate(sent)
            if not asyncio.isfuture(ack) or ack.cancelled() or ack.exception() is not None
        ]
        if rest:
            for i, kind in zip(
                rest, await asyncio.gather(*(self._acked(*sent[i]) for i in rest)), strict=True
            ):
                kinds[i] = kind
        return kinds

    async def _acked(
        self, message: OutboundMessage, what: str, ack: Awaitable[Any] | BaseException, topic: str
    ) -> str | None:
        """Wait for one output's acknowledgement; a retriable refusal is sent again (within the
        send timeout, which bounds the whole batch), a too-large one is replaced. Returns the
        kind of the dead letter sent in its place, if any."""
        delay = 0.1
        while True:
            try:
                if isinstance(ack, BaseException):
                    raise ack
                await ack
                return None
            except Exception as exc:
                self.send_errors += 1
                if _retriable(exc) and not _too_large(exc):
                    log.warning(f"the broker refused a {what} for now; sending it again", error=repr(exc))
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
                    ack = await self._enqueue(topic, message)
                    continue
                if not (_too_large(exc) and message.source is not None):
                    raise SendFailed(
                        f"the broker refused a {what}: {exc!r}; the batch was not committed"
                    ) from exc
                error = exc
                break
        log.warning(
            f"the broker refused a {what} as too large; a minimal dead letter goes in its place",
            topic=message.source.topic,
            partition=message.source.partition,
            offset=message.source.offset,
            size=len(message.value),
            error=repr(error),
        )
        replacement = refused_as_too_large(message, what, self.max_message_bytes)
        try:
            await (
                await self._send(
                    self.dlq_topic,
                    replacement.key,
                    replacement.value,
                    None,
                    None,
                    list(replacement.headers) or None,
                )
            )
        except Exception as exc:
            raise SendFailed(f"the broker refused even the minimal dead letter: {exc!r}") from exc
        return "too_large"
