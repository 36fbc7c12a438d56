import json

import pytest

from emotion_stream.schemas import LABELS, DeadLetter, EmotionResult, ModelInfo
from emotion_stream.worker.codec import InboundRecord
from emotion_stream.worker.model.api import Prediction
from emotion_stream.worker.processing import BatchProcessor

MODEL = ModelInfo(name="m", version="1")


def _prediction(text):
    label = LABELS[len(text) % len(LABELS)]
    scores = {name: (0.5 if name == label else 0.1) for name in LABELS}
    return Prediction(label=label, score=0.5, scores=scores)


def fake_predict(texts):
    if any("poison" in t for t in texts):
        raise RuntimeError("cannot handle poison")
    return [_prediction(t) for t in texts]


def record(offset, value, key=None):
    return InboundRecord("posts", 0, offset, key, value)


def test_valid_posts_become_results_in_order_and_bad_ones_dead_letters():
    records = [
        record(0, b'{"id": "a", "text": "first"}', b"a"),
        record(1, b"nope"),
        record(2, b'{"id": "b", "text": "second post"}', b"b"),
    ]
    outcome = BatchProcessor(fake_predict, MODEL).process(records)
    results = [EmotionResult.model_validate_json(m.value) for m in outcome.results]
    assert [r.id for r in results] == ["a", "b"]
    assert [m.key for m in outcome.results] == [b"a", b"b"]
    assert results[1].source.offset == 2 and results[1].model == MODEL
    assert results[0].label.value == _prediction("first").label
    letters = [DeadLetter.model_validate_json(m.value) for m in outcome.dead_letters]
    assert len(letters) == 1 and letters[0].error.kind == "not_json" and letters[0].source.offset == 1
    assert outcome.dead_letter_kinds == ["not_json"]


def test_a_post_that_breaks_the_model_is_dead_lettered_alone():
    records = [
        record(i, json.dumps({"id": str(i), "text": t}).encode())
        for i, t in enumerate(["ok", "poison pill", "fine"])
    ]
    outcome = BatchProcessor(fake_predict, MODEL).process(records)
    assert [json.loads(m.value)["id"] for m in outcome.results] == ["0", "2"]
    letter = DeadLetter.model_validate_json(outcome.dead_letters[0].value)
    assert letter.error.kind == "processing_failed" and "poison" in letter.error.message
    assert letter.payload.to_bytes() == records[1].value


def test_a_batch_of_only_bad_messages_never_calls_the_model():
    calls = []
    outcome = BatchProcessor(lambda t: calls.append(t) or [], MODEL).process([record(0, b"\xff")])
    assert calls == [] and len(outcome.dead_letters) == 1 and outcome.results == []


def test_the_two_stages_give_what_one_call_gives_and_prepare_needs_no_model():
    records = [record(i, json.dumps({"id": f"p{i}", "text": f"post {'x' * i}"}).encode()) for i in range(5)]
    records.append(record(5, b"{}"))
    prepared_texts = []

    def prepare(texts):
        prepared_texts.append(list(texts))
        return [t.upper() for t in texts]

    processor = BatchProcessor(
        lambda inputs: [_prediction(t.lower()) for t in inputs], MODEL, prepare=prepare
    )
    batch = processor.prepare(records)
    assert prepared_texts == [[f"post {'x' * i}" for i in range(5)]]
    assert batch.outcome.dead_letter_kinds == ["invalid_post"] and not batch.outcome.results
    outcome = processor.finish(batch)
    whole = BatchProcessor(fake_predict, MODEL).process(records)
    assert [json.loads(m.value)["label"] for m in outcome.results] == [
        json.loads(m.value)["label"] for m in whole.results
    ]
    assert outcome.dead_letter_kinds == whole.dead_letter_kinds


def test_a_post_the_preparation_fails_on_is_dead_lettered_and_the_rest_classified():
    def prepare(texts):
        if any("\x00" in t for t in texts):
            raise ValueError("tokenizer refused a NUL")
        return list(texts)

    records = [
        record(0, b'{"id": "a", "text": "fine"}'),
        record(1, b'{"id": "b", "text": "bad\\u0000post"}'),
        record(2, b'{"id": "c", "text": "also fine"}'),
    ]
    outcome = BatchProcessor(fake_predict, MODEL, prepare=prepare).process(records)
    assert [json.loads(m.value)["id"] for m in outcome.results] == ["a", "c"]
    letters = [DeadLetter.model_validate_json(m.value) for m in outcome.dead_letters]
    assert [(x.source.offset, x.error.kind) for x in letters] == [(1, "processing_failed")]
    assert "NUL" in letters[0].error.message


def test_a_model_that_fails_on_every_post_stops_the_batch_instead_of_dead_lettering_it():
    # Out of memory, a broken model file: not the posts' fault. Dead-lettering them would
    # commit their offsets and lose valid posts from the output topic.
    from emotion_stream.worker.model.api import ModelFailing

    def broken(texts):
        raise RuntimeError("CUDA out of memory")

    records = [record(i, json.dumps({"id": str(i), "text": f"post {i}"}).encode()) for i in range(4)]
    processor = BatchProcessor(broken, MODEL, model_retry_delays=(0.0, 0.0))
    with pytest.raises(ModelFailing, match="CUDA out of memory"):
        processor.process(records)


def _posts(texts):
    return [record(i, json.dumps({"id": str(i), "text": t}).encode()) for i, t in enumerate(texts)]


def test_a_failing_batch_is_bisected_not_retried_post_by_post():
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return fake_predict(texts)

    texts = [f"post number {i}" for i in range(64)]
    texts[37] = "poison here"
    outcome = BatchProcessor(counting, MODEL).process(_posts(texts))
    assert len(outcome.results) == 63 and outcome.dead_letter_kinds == ["processing_failed"]
    # The batch, the probe, two halves per level down to one post (6 levels), the post once
    # more alone and the probe again before it is dead-lettered: about 2 log2(n), not n.
    assert sorted(calls, reverse=True) == [64, 32, 32, 16, 16, 8, 8, 4, 4, 2, 2, 1, 1, 1, 1, 1]


def test_a_post_that_fails_only_once_alone_gets_its_result():
    failed = []

    def flaky(texts):
        if "flaky" in " ".join(texts) and len(failed) < 2:
            failed.append(texts)
            raise RuntimeError("transient")
        return [_prediction(t) for t in texts]

    outcome = BatchProcessor(flaky, MODEL).process(_posts(["ok", "flaky one", "fine"]))
    assert len(outcome.results) == 3 and outcome.dead_letters == []


def test_a_model_that_recovers_within_its_retries_answers_the_whole_batch():
    state = {"failures": 0}
    slept = []

    def recovering(texts):
        if state["failures"] < 3:  # the batch, the probe, then the probe once more
            state["failures"] += 1
            raise RuntimeError("out of memory")
        return [_prediction(t) for t in texts]

    processor = BatchProcessor(recovering, MODEL, model_retry_delays=(0.5, 1.0, 2.0), sleep=slept.append)
    outcome = processor.process(_posts(["a", "b", "c"]))
    assert len(outcome.results) == 3 and outcome.dead_letters == []
    assert slept == [0.5]


def test_a_model_that_breaks_while_a_batch_is_bisected_stops_it():
    from emotion_stream.worker.model.api import ModelFailing

    calls = []

    def breaking(texts):
        calls.append(texts)
        if len(calls) > 3 or "poison" in " ".join(texts):
            raise RuntimeError("device lost")
        return [_prediction(t) for t in texts]

    with pytest.raises(ModelFailing, match="stopped working"):
        BatchProcessor(breaking, MODEL, model_retry_delays=()).process(_posts(["poison", "fine"]))


def test_an_input_over_the_bound_is_dead_lettered_with_a_prefix_its_size_and_digest():
    import hashlib

    big = json.dumps({"id": "big", "text": "word " * 50_000}).encode()
    outcome = BatchProcessor(fake_predict, MODEL, max_message_bytes=100_000).process(
        [record(0, big, b"big"), record(1, b'{"id": "ok", "text": "fine"}')]
    )
    assert len(outcome.results) == 1 and outcome.dead_letter_kinds == ["too_large"]
    letter = DeadLetter.model_validate_json(outcome.dead_letters[0].value)
    assert letter.payload.truncated and letter.payload.size == len(big)
    assert letter.payload.sha256 == hashlib.sha256(big).hexdigest() and big.startswith(
        letter.payload.to_bytes()
    )
    assert len(outcome.dead_letters[0].value) < 100_000 and outcome.dead_letters[0].key == b"big"


def test_a_dead_letter_that_would_pass_the_bound_carries_a_prefix_of_its_payload():
    binary = b"\xff" * 90_000  # under the bound, but as base64 in a dead letter over it
    outcome = BatchProcessor(fake_predict, MODEL, max_message_bytes=100_000).process([record(0, binary)])
    letter = DeadLetter.model_validate_json(outcome.dead_letters[0].value)
    assert letter.error.kind == "not_utf8" and letter.payload.truncated and letter.payload.size == 90_000
    assert len(outcome.dead_letters[0].value) < 100_000


def test_optional_fields_are_bounded_too():
    metadata = {"blob": "x" * 70_000}
    post = json.dumps({"id": "m", "text": "fine", "metadata": metadata, "author": "a" * 300}).encode()
    outcome = BatchProcessor(fake_predict, MODEL).process([record(0, post)])
    letter = DeadLetter.model_validate_json(outcome.dead_letters[0].value)
    assert letter.error.kind == "invalid_post"
    assert (
        "metadata: must be at most 65536 bytes" in letter.error.message and "author" in letter.error.message
    )


def test_outputs_carry_the_schema_version_and_their_posts_tracing_headers():
    from emotion_stream.schemas import SCHEMA_VERSION

    trace = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    headers = (trace, ("x-request-id", b"r-1"), ("x-private", b"no"))
    records = [
        InboundRecord("posts", 0, 0, b"a", b'{"id": "a", "text": "fine"}', headers),
        InboundRecord("posts", 0, 1, b"b", b"not json", (trace,)),
    ]
    outcome = BatchProcessor(fake_predict, MODEL, propagate_headers=["X-Request-Id"]).process(records)
    result, letter = outcome.results[0], outcome.dead_letters[0]
    assert json.loads(result.value)["schema_version"] == SCHEMA_VERSION
    assert json.loads(letter.value)["schema_version"] == SCHEMA_VERSION
    assert dict(result.headers) == {
        "content-type": b"application/json",
        "schema-version": SCHEMA_VERSION.encode(),
        "traceparent": trace[1],
        "x-request-id": b"r-1",
    }
    assert dict(letter.headers)["traceparent"] == trace[1] and "x-private" not in dict(letter.headers)


def test_consumers_of_today_read_tomorrows_messages():
    future = {
        "schema_version": "1.1",
        "id": "a",
        "label": "joy",
        "score": 0.9,
        "scores": {n: 1 / 6 for n in LABELS},
        "model": {"name": "m", "version": "1", "added_later": True},
        "source": {"topic": "posts", "partition": 0, "offset": 1},
        "processed_at": "2026-11-29T00:00:00Z",
        "a_field_added_later": [1, 2],
    }
    assert EmotionResult.model_validate(future).id == "a"


def test_requested_texts_ride_in_the_same_model_call_after_the_posts_and_are_answered_not_published():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        return fake_predict(texts)

    records = [record(0, b'{"id": "a", "text": "first"}'), record(1, b"nope")]
    processor = BatchProcessor(predict, MODEL)
    outcome = processor.finish(processor.prepare(records, ["asked one", "asked two!"]))
    assert calls == [["first", "asked one", "asked two!"]]
    assert [json.loads(m.value)["id"] for m in outcome.results] == ["a"]
    assert outcome.answers == [_prediction("asked one"), _prediction("asked two!")]
    assert len(outcome.dead_letters) == 1  # only the bad post


def test_a_requested_text_that_breaks_the_model_gets_no_answer_and_no_dead_letter():
    records = [record(0, b'{"id": "a", "text": "first"}')]
    processor = BatchProcessor(fake_predict, MODEL, model_retry_delays=())
    outcome = processor.finish(processor.prepare(records, ["poison text", "fine"]))
    assert [json.loads(m.value)["id"] for m in outcome.results] == ["a"]
    assert outcome.answers == [None, _prediction("fine")] and outcome.dead_letters == []
    quiet = processor.finish(processor.prepare([], ["only asked"]))
    assert quiet.answers == [_prediction("only asked")] and quiet.results == []


def test_results_carry_the_post_time_and_its_dimensions():
    posted = record(
        0,
        b'{"id": "a", "text": "x", "source": "app", "lang": "en", "created_at": "2026-01-01T10:00:00+01:00"}',
    )
    stamped = InboundRecord("posts", 0, 1, None, b'{"id": "b", "text": "y"}', timestamp_s=1767261600.0)
    outcome = BatchProcessor(fake_predict, MODEL).process([posted, stamped])
    first, second = (json.loads(m.value) for m in outcome.results)
    assert first["posted_at"] == "2026-01-01T09:00:00Z" and first["dimensions"] == {
        "source": "app",
        "lang": "en",
    }
    assert second["posted_at"] == "2026-01-01T10:00:00Z" and second["dimensions"] == {}


def test_a_result_writes_exactly_the_schemas_fields():
    """A field added to EmotionResult and forgotten by the encoder fails here (the model fills
    defaults and ignores extras, so validating the output alone would not tell)."""
    outcome = BatchProcessor(fake_predict, MODEL).process(
        [
            InboundRecord(
                "posts", 0, 0, b"a", b'{"id": "a", "text": "x", "lang": "en"}', (), 1_700_000_000.0
            ),
            InboundRecord("posts", 0, 1, b"b", b'{"id": "b", "text": "y"}'),
        ]
    )
    for message in outcome.results:
        written = json.loads(message.value)
        assert set(written) == set(EmotionResult.model_fields)
        assert EmotionResult.model_validate(written).model_dump(mode="json") == written
    first = json.loads(outcome.results[0].value)
    assert first["posted_at"] == "2023-11-14T22:13:20Z" and first["dimensions"] == {"lang": "en"}
    assert first["processed_at"].endswith("Z")
