"""The model runner in its own process: same answers, clear errors, and a dead process stops the batch."""

import os
import re
import signal

import numpy
import pytest
import torch

from emotion_stream.worker.codec import InboundRecord
from emotion_stream.worker.model.api import ModelLoadError, ModelOptions, ModelUnavailable
from emotion_stream.worker.model.process import ModelProcess
from emotion_stream.worker.model.runner import EmotionClassifier
from emotion_stream.worker.processing import BatchProcessor

TEXTS = [
    "i feel wonderful",
    "a much longer post about how i have been feeling rather anxious and uneasy for most of the week now",
    "ok",
    "i am so angry about the delayed train this morning",
]
OPTIONS = dict(device="cpu", batch_size=2, torch_threads=1)


@pytest.fixture(scope="module")
def model_process(tiny_model):
    with ModelProcess(str(tiny_model), ModelOptions(**OPTIONS), log_level="WARNING") as process:
        yield process


def test_answers_match_the_model_in_this_process(model_process, tiny_model):
    here = EmotionClassifier(str(tiny_model), ModelOptions(**OPTIONS))
    assert model_process.info == here.info and model_process.columns == here.columns
    assert model_process.pid != os.getpid()
    there = torch.from_numpy(model_process.run(model_process.prepare(TEXTS)))
    torch.testing.assert_close(there, here.predict_proba(TEXTS), rtol=0, atol=1e-6)
    assert [p.label for p in model_process.predict(TEXTS)] == [p.label for p in here.predict(TEXTS)]


def test_an_int8_model_process_serves_the_saved_graph_with_the_full_loads_answers(tiny_model, tmp_path):
    int8 = dict(OPTIONS, numeric="int8", cpu_passes=1, call_cost_tokens=20.0)
    options = ModelOptions(**int8, graph_cache_dir=str(tmp_path))
    with ModelProcess(str(tiny_model), options, log_level="WARNING") as process:
        assert process.from_graph and len(list(tmp_path.iterdir())) == 1
        there = torch.from_numpy(process.run(process.prepare(TEXTS)))
    here = EmotionClassifier(str(tiny_model), ModelOptions(**int8))
    torch.testing.assert_close(there, here.predict_proba(TEXTS), rtol=0, atol=1e-6)


def test_batches_sent_ahead_come_back_to_their_own_tickets(model_process):
    singles = numpy.concatenate([model_process.run(model_process.prepare([t])) for t in TEXTS])
    # Three batches of different sizes in flight at once: an answer given to the wrong ticket
    # would not even have its shape.
    first, second, third = (
        model_process.prepare(TEXTS[:1]),
        model_process.prepare(TEXTS[1:3]),
        model_process.prepare(TEXTS),
    )
    numpy.testing.assert_allclose(model_process.run(first), singles[:1], rtol=0, atol=1e-6)
    numpy.testing.assert_allclose(model_process.run(second), singles[1:3], rtol=0, atol=1e-6)
    numpy.testing.assert_allclose(model_process.run(third), singles, rtol=0, atol=1e-6)


def test_a_batch_that_fails_in_the_model_process_fails_alone(model_process):
    with pytest.raises(RuntimeError, match="the model failed on this batch"):
        model_process.predict([None])  # not text: the tokenizer refuses it
    assert len(model_process.predict(TEXTS)) == len(TEXTS)  # and the process goes on serving


def test_a_model_that_cannot_load_says_so_from_the_other_process(tmp_path):
    with pytest.raises(ModelLoadError, match=re.escape("has no config.json")):
        ModelProcess(str(tmp_path), ModelOptions(**OPTIONS), log_level="WARNING")


def test_signals_to_the_process_group_do_not_stop_it_but_close_does(tiny_model):
    process = ModelProcess(str(tiny_model), ModelOptions(**OPTIONS), log_level="WARNING")
    try:
        os.kill(process.pid, signal.SIGTERM)  # what a graceful stop of the worker's group sends
        os.kill(process.pid, signal.SIGINT)  # Ctrl-C on a terminal
        assert len(process.predict(TEXTS)) == len(TEXTS)
    finally:
        process.close()
    assert process._process.exitcode == 0


def test_a_killed_model_process_stops_the_batch_instead_of_dead_lettering_it(tiny_model):
    process = ModelProcess(str(tiny_model), ModelOptions(**OPTIONS), log_level="WARNING")
    processor = BatchProcessor(process.predict_prepared, process.info, prepare=process.prepare)
    records = [
        InboundRecord("posts", 0, i, None, f'{{"id": "p{i}", "text": "{t}"}}'.encode())
        for i, t in enumerate(TEXTS)
    ]
    try:
        assert len(processor.process(records).results) == len(TEXTS)
        os.kill(process.pid, signal.SIGKILL)
        process._process.join(10)
        with pytest.raises(ModelUnavailable, match=r"killed by signal 9.*not committed"):
            processor.process(records)
    finally:
        process.close()


def test_the_loaded_model_is_kept_out_of_the_cycle_collectors_way(model_process):
    # torch, transformers and the model leave far more than this many objects for good;
    # frozen, a full collection no longer walks them in the middle of a batch.
    assert model_process.frozen_objects > 50_000


def test_a_retry_after_a_failed_batch_never_takes_the_answer_of_a_batch_sent_ahead(tiny_model):
    # The worker sends the next batch ahead while the current one is in the model; when the
    # current one fails and is retried in parts, the retries' answers must not swallow the
    # next batch's, or that batch would wait for ever.
    from concurrent.futures import ThreadPoolExecutor

    process = ModelProcess(str(tiny_model), ModelOptions(**OPTIONS), log_level="WARNING")
    waiter = ThreadPoolExecutor(1)
    try:
        failing = process.prepare([None])  # the tokenizer refuses it
        ahead = process.prepare(TEXTS)
        with pytest.raises(RuntimeError, match="the model failed on this batch"):
            process.run(failing)
        assert process.run(process.prepare(TEXTS[:1])).shape == (1, 6)  # a retry, after `ahead` was sent
        assert waiter.submit(process.run, ahead).result(timeout=30).shape == (len(TEXTS), 6)
    finally:
        os.kill(process.pid, signal.SIGKILL)  # also frees a waiter stuck on a lost answer
        process.close(timeout=5)
        waiter.shutdown(wait=False)
