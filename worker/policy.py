"""The error policy: what is dead-lettered, what is retried, and what stops the worker.

One table, one place; `docs/architecture.md` carries the same table for readers.

| what happens                                 | what the worker does                              | commit |
|----------------------------------------------|---------------------------------------------------|--------|
| input over `EMOTION_MAX_MESSAGE_BYTES`       | dead letter `too_large` (prefix, size, SHA-256)   | yes    |
| (value, key and headers together)            |                                                   |        |
| not UTF-8, not JSON, not a valid post        | dead letter `not_utf8`, `not_json`, `invalid_post` | yes    |
| JSON past the reader's limits (64 levels,    | dead letter `not_json` or `invalid_post`; a lone  | yes    |
| 128-digit integers, lone surrogates)         | surrogate is `not_utf8`                           |        |
| a record batch that decompresses past        | one dead letter `undecodable` for the batch,      | yes    |
| `EMOTION_MAX_INFLIGHT_BYTES`, or that cannot | naming its offsets; the consumer moves past it    |        |
| be decoded (unknown codec, corrupt data)     |                                                   |        |
| a post in another language, or with no       | labelled and marked `unreadable` (default); its   | yes    |
| words (`worker/reading.py`)                  | result routed to `EMOTION_UNREADABLE_TOPIC`, or a |        |
|                                              | dead letter `unreadable`, as EMOTION_UNREADABLE   |        |
|                                              | says                                              |        |
| trace headers not in the W3C format, a       | dropped from what answers the post (never an      | yes    |
| repeated one, a propagated header over 8 KiB | error: a bad header does not make a bad post)     |        |
| a dead letter that would exceed the bound    | payload cut to a prefix (size, SHA-256 kept)      | yes    |
| model fails a batch, the probe passes        | bisect; a post failing alone twice is dead        | yes    |
|                                              | lettered `processing_failed`, the rest answered   |        |
| model fails the probe too (OOM, bad model)   | retry after each of `MODEL_RETRY_DELAYS`, then    | no     |
|                                              | stop with exit 1 (`ModelFailing`)                 |        |
| the model process dies                       | stop with exit 1 (`ModelUnavailable`)             | no     |
| broker refuses an output as too large        | a minimal dead letter `too_large` in its place    | yes    |
| broker refuses anything else, or is silent   | stop with exit 1                                  | no     |
| no progress (model, event loop, consumer)    | `/health` 503, exit 1 after the grace period      | no     |

A batch is committed only once every result and dead letter of it has been acknowledged by
the broker; "no" leaves the batch uncommitted, to be read again after a restart.
"""

from __future__ import annotations

PROBE_TEXT = "i feel fine today"
"""A post any working model labels: when a batch fails and this fails too, the fault is the model's."""

MODEL_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Seconds to wait before each retry of a batch the model fails as a whole (the probe failing too)."""

DEAD_LETTER_MARGIN_BYTES = 4096
"""Room kept under the message bound for the record's key, headers and framing."""

PREFIX_BYTES = 4096
"""How much of a too-large message a dead letter keeps."""

KEY_BYTES = 4096
"""Longest key a dead letter is sent with; a longer one is dropped (it stays in ``source.key``, cut)."""
