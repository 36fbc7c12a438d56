"""Property-based tests of the worker's readers of outside bytes: whatever arrives, no exception
escapes, and every record is accounted for (a result or a dead letter, never both, never none).

Example counts follow the Hypothesis profile (tests/conftest.py); run them longer with
``HYPOTHESIS_PROFILE=long``.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from emotion_stream.schemas import LABELS, DeadLetter, EmotionResult, ModelInfo, Post
from emotion_stream.worker.codec import (
    InboundRecord,
    Limits,
    Rejected,
    Unreadable,
    decode_post,
    output_headers,
    passed_on_headers,
    read_json,
)
from emotion_stream.worker.model.api import Prediction
from emotion_stream.worker.processing import BatchProcessor

LIMITS = Limits(max_bytes=1 << 16, max_depth=16, max_int_digits=32)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)

posts = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=300), st.integers()), "text": st.text(max_size=80)},
    optional={
        "created_at": st.one_of(st.text(max_size=30), st.integers(), st.just("9999-12-31T23:59:59Z")),
        "lang": st.text(max_size=40),
        "source": st.text(max_size=20),
        "metadata": json_values,
    },
)

hostile_bytes = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=6000).map(lambda n: b"9" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    posts.map(lambda p: json.dumps(p).encode()),
)


@given(hostile_bytes)
def test_read_json_answers_a_value_or_unreadable_and_nothing_else(raw):
    try:
        read_json(raw, LIMITS)
    except Unreadable as exc:
        assert exc.kind in ("not_utf8", "not_json", "invalid_post", "too_large") and str(exc)


@given(st.one_of(hostile_bytes, st.none()))
def test_decode_post_gives_a_post_or_a_reason(raw):
    decoded = decode_post(raw, LIMITS)
    if isinstance(decoded, Rejected):
        assert decoded.error.message
    else:
        assert isinstance(decoded, Post) and decoded.text.strip()
        # What was accepted can be written back as UTF-8 JSON (no lone surrogates slipped in).
        decoded.model_dump_json().encode("utf-8")


def _predict(texts):
    return [Prediction(label=LABELS[0], score=0.5, scores=dict.fromkeys(LABELS, 1 / 6)) for _ in texts]


header_values = st.one_of(
    st.binary(max_size=80),
    st.just(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    st.just(b"k=v,a@b=c"),
    st.integers(min_value=500, max_value=20_000).map(lambda n: b"x" * n),
)
headers = st.lists(
    st.tuples(
        st.sampled_from(["traceparent", "tracestate", "TraceParent", "x-tenant", "other"]), header_values
    ),
    max_size=6,
)


@given(st.lists(st.tuples(st.one_of(hostile_bytes, st.none()), headers), max_size=12))
def test_every_record_of_a_batch_is_a_result_or_a_dead_letter(batch):
    processor = BatchProcessor(_predict, ModelInfo(name="m", version="1"), max_message_bytes=1 << 14)
    records = [InboundRecord("posts", 0, i, None, value, tuple(h)) for i, (value, h) in enumerate(batch)]
    outcome = processor.process(records)
    answered = [m.source.offset for m in outcome.results + outcome.dead_letters]
    assert sorted(answered) == list(range(len(records)))
    for message in outcome.results:
        EmotionResult.model_validate_json(message.value)
    for message in outcome.dead_letters:
        DeadLetter.model_validate_json(message.value)
    for message in outcome.results + outcome.dead_letters:
        names = [name.lower() for name, _ in message.headers]
        assert len(names) == len(set(names)), "a header name passed on twice"
        assert sum(len(v) for _, v in message.headers) <= 8192 + 600


@given(headers)
def test_passed_on_headers_keep_only_valid_trace_context(given_headers):
    kept = dict(
        (name.lower(), value)
        for name, value in passed_on_headers(
            given_headers, frozenset({"traceparent", "tracestate", "x-tenant"})
        )
    )
    if "tracestate" in kept:
        assert "traceparent" in kept and len(kept["tracestate"]) <= 512
    if "traceparent" in kept:
        assert len(kept["traceparent"]) == 55
    record = InboundRecord("posts", 0, 0, None, b"{}", tuple(given_headers))
    assert dict(output_headers(record))["content-type"] == b"application/json"
