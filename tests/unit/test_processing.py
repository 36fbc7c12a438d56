import json

from schemas import LABELS, DeadLetter, EmotionResult, ModelInfo
from worker.model.api import Prediction
from worker.processing import BatchProcessor, InboundRecord

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
