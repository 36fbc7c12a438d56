"""What `/classify` accepts: bodies read by the hardened reader, within the documented limits."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emotion_stream.schemas.messages import MAX_TEXT_CHARS
from emotion_stream.worker.classify import ClassifyDesk, ClassifyRejected


def _desk(**options) -> ClassifyDesk:
    return ClassifyDesk(max_texts=options.pop("max_texts", 64), max_concurrent=2, **options)


def _status(desk: ClassifyDesk, body: bytes) -> tuple[int, str]:
    with pytest.raises(ClassifyRejected) as caught:
        desk.parse(body)
    return caught.value.status, str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"text": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
        b"[" * 100_000,
    ],
)
def test_deep_nesting_is_a_400_not_a_crash(body):
    status, message = _status(_desk(), body)
    assert status == 400 and "nested" in message


@pytest.mark.parametrize(
    "body",
    [b'{"text": "\\ud800"}', b'{"texts": ["fine", "\\udfff and more"]}', b'{"\\ud800": 1, "text": "a"}'],
)
def test_a_lone_surrogate_is_a_400_as_the_stream_dead_letters_it(body):
    status, message = _status(_desk(), body)
    assert status == 400 and "surrogate" in message


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"not json", "JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"text": 1' + b"0" * 10_000 + b"}", "digits"),
        (b'{"text": NaN}', "JSON"),
    ],
)
def test_unreadable_bodies_are_400_with_the_reason(body, reason):
    status, message = _status(_desk(), body)
    assert status == 400 and reason in message


@pytest.mark.parametrize("character", ["a", "é", "😀", "\x01", '"'])
def test_the_documented_limits_fit_in_a_body_however_the_client_escapes_them(character):
    desk = _desk()
    texts = [character * MAX_TEXT_CHARS] * 64
    for body in (json.dumps({"texts": texts}), json.dumps({"texts": texts}, ensure_ascii=False)):
        assert desk.parse(body.encode()) == texts


def test_a_body_over_the_cap_is_a_413_that_names_the_cap():
    desk = _desk(max_texts=2)
    status, message = _status(desk, b'{"texts": ["' + b"x" * desk.max_body_bytes + b'"]}')
    assert status == 413 and str(desk.max_body_bytes) in message


def test_429_and_503_say_when_to_retry():
    desk = _desk()
    desk.in_progress = desk.max_concurrent
    with pytest.raises(ClassifyRejected) as caught:
        asyncio.run(desk.classify(["hello"]))
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"

    desk = ClassifyDesk(max_texts=4, max_concurrent=2, timeout_s=0.01)
    with pytest.raises(ClassifyRejected) as caught:
        asyncio.run(desk.classify(["hello"]))
    assert caught.value.status == 503 and int(caught.value.headers["Retry-After"]) >= 1


@given(st.binary(max_size=2048))
def test_any_bytes_are_texts_or_a_4xx(body):
    desk = _desk(max_texts=4)
    try:
        texts = desk.parse(body)
    except ClassifyRejected as rejected:
        assert 400 <= rejected.status < 500
    else:
        assert texts and all(isinstance(t, str) and t.strip() for t in texts)
