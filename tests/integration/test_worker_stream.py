"""The worker against a real broker: results, dead letters, crash recovery, graceful stop."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import time
import urllib.error
import urllib.request

import pytest

from emotion_stream.schemas import LABELS, DeadLetter, EmotionResult
from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import MALFORMED, collect, make_posts, produce_sync, result_ids

pytestmark = pytest.mark.integration


def _get(worker, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}", timeout=5) as resp:
        return resp.read().decode()


def _health(worker):
    return json.loads(_get(worker, "/health"))


def _metrics(worker):
    values = {}
    for line in _get(worker, "/metrics").splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_valid_posts_get_results_and_malformed_ones_dead_letters(broker, topics, worker_env, tmp_path):
    posts = make_posts(120)
    mixed = [(k, v) for k, v in posts] + [(k, v) for k, v, _ in MALFORMED]
    random.Random(7).shuffle(mixed)
    produce_sync(broker, topics.input, mixed)

    worker = WorkerProcess(
        {**worker_env, "EMOTION_BATCH_SIZE": "16"}, log_path=tmp_path / "worker.log"
    ).start()
    try:
        worker.wait_ready(timeout=90)
        seen = collect(
            broker,
            [topics.output, topics.dlq],
            lambda s: len(s[topics.output]) >= len(posts) and len(s[topics.dlq]) >= len(MALFORMED),
            timeout=90,
        )
        time.sleep(6)  # a lag measurement and a few commits after the last batch
        metrics = _metrics(worker)
        assert _health(worker) == {"status": "ok"}
        for faust_page in ("/router", "/table", "/stats", "/graph"):  # not this worker's API
            with pytest.raises(urllib.error.HTTPError) as refused:
                _get(worker, faust_page)
            assert refused.value.code == 404
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()

    assert metrics["emotion_posts_in_total"] == len(mixed)
    assert metrics["emotion_results_out_total"] == len(posts)
    assert sum(v for k, v in metrics.items() if k.startswith("emotion_dead_letters_total{")) == len(MALFORMED)
    assert metrics['emotion_dead_letters_total{kind="not_utf8"}'] == 1
    assert metrics["emotion_end_to_end_seconds_count"] == len(mixed)  # one observation per acknowledged post
    assert metrics["emotion_commit_seconds_count"] > 0 and metrics["emotion_commit_failures_total"] == 0
    assert metrics["emotion_posts_in_flight"] == 0 and metrics["emotion_bytes_in_flight"] == 0
    assert metrics["emotion_send_errors_total"] == 0 and metrics["emotion_rebalances_total"] >= 1
    lags = [v for k, v in metrics.items() if k.startswith("emotion_consumer_lag{")]
    assert lags and all(lag == 0 for lag in lags)  # everything read: nothing left behind any partition
    # The model process's own figures (the tiny model runs in a process of its own here).
    assert metrics["emotion_model_process_resident_memory_bytes"] > 20e6
    assert metrics["emotion_model_process_cpu_seconds"] > 0
    log_text = (tmp_path / "worker.log").read_text()
    assert "worker started" in log_text and "partitions assigned" in log_text
    assert "i feel" not in log_text  # post text never reaches the logs at info level

    ids = result_ids(seen[topics.output])
    assert sorted(ids) == sorted(k.decode() for k, _ in posts)  # every valid id exactly once
    for record in seen[topics.output]:
        result = EmotionResult.model_validate_json(record.value)
        assert record.key == result.id.encode()
        assert result.label.value in LABELS
        assert abs(sum(result.scores.values()) - 1.0) < 1e-4
        assert result.score == max(result.scores.values())
        assert result.source.topic == topics.input
        assert result.model.name == "tiny-emotion"

    letters = [DeadLetter.model_validate_json(r.value) for r in seen[topics.dlq]]
    assert len(letters) == len(MALFORMED)
    by_payload = {letter.payload.to_bytes(): letter for letter in letters}
    for key, value, kind in MALFORMED:
        letter = by_payload[value]
        assert letter.error.kind == kind
        assert letter.error.message
        assert letter.source.topic == topics.input
        assert (letter.source.key.to_bytes() if letter.source.key else None) == key
    binary = by_payload[b"\xff\xfe\x00garbage"]
    assert binary.payload.encoding == "base64"
    assert base64.b64decode(binary.payload.data) == b"\xff\xfe\x00garbage"


def _interrupt_then_resume(broker, topics, worker_env, tmp_path, posts, done_before, interrupt):
    """A worker on ``posts`` until ``done_before`` results are out, then ``interrupt(worker)``;
    then a second worker in the same group until every post has a result. Returns the ids
    out before the interruption, the ids out in the end, and the dead letters."""
    valid_ids = {k.decode() for k, _ in posts}
    produce_sync(broker, topics.input, posts)
    env = {**worker_env, "EMOTION_BATCH_SIZE": "8", "EMOTION_BATCH_WAIT_MS": "5"}

    first = WorkerProcess(env, log_path=tmp_path / "first.log").start()
    try:
        first.wait_ready(timeout=90)
        before = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= done_before, timeout=90)
        interrupt(first)
    finally:
        first.kill()
    done_before_interrupt = set(result_ids(before[topics.output]))
    assert done_before <= len(done_before_interrupt) < len(valid_ids), "the interruption must land mid-stream"

    second = WorkerProcess(env, log_path=tmp_path / "second.log").start()
    try:
        second.wait_ready(timeout=90)
        after = collect(
            broker, [topics.output], lambda s: set(result_ids(s[topics.output])) >= valid_ids, timeout=180
        )
        letters = collect(broker, [topics.dlq], lambda s: False, timeout=2)[topics.dlq]
    finally:
        assert second.stop() == 0
    return done_before_interrupt, set(result_ids(after[topics.output])), letters


def test_worker_killed_mid_stream_loses_nothing(broker, topics, worker_env, tmp_path):
    posts = make_posts(2000)
    _, done, _ = _interrupt_then_resume(
        broker,
        topics,
        worker_env,
        tmp_path,
        posts,
        200,
        lambda worker: worker.kill(),  # SIGKILL: no flush, no commit
    )
    assert done == {k.decode() for k, _ in posts}


def test_a_dead_model_process_stops_the_worker_and_loses_nothing(broker, topics, worker_env, tmp_path):
    exit_codes = []

    def kill_model_process(worker):
        started = re.search(r"model process started.*pid=(\d+)", (tmp_path / "first.log").read_text())
        os.kill(int(started.group(1)), signal.SIGKILL)
        exit_codes.append(worker.process.wait(timeout=60))

    posts = make_posts(1200)
    _, done, letters = _interrupt_then_resume(
        broker, topics, worker_env, tmp_path, posts, 100, kill_model_process
    )
    first_log = (tmp_path / "first.log").read_text()
    assert exit_codes[0] != 0, "a worker without its model must stop, not carry on"
    assert "killed by signal 9" in first_log and "not committed" in first_log
    assert done == {k.decode() for k, _ in posts}
    assert letters == []  # the batch in the model when it died was re-read, not dead-lettered


def test_the_model_can_run_in_the_worker_process(broker, topics, worker_env, tmp_path):
    posts = make_posts(50)
    produce_sync(broker, topics.input, posts)
    worker = WorkerProcess(
        {**worker_env, "EMOTION_MODEL_PROCESS": "false"}, log_path=tmp_path / "worker.log"
    ).start()
    try:
        worker.wait_ready(timeout=90)
        seen = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= len(posts), timeout=90)
    finally:
        assert worker.stop() == 0
    assert sorted(result_ids(seen[topics.output])) == sorted(k.decode() for k, _ in posts)
    assert "model process started" not in (tmp_path / "worker.log").read_text()


def test_graceful_stop_commits_what_it_processed(broker, topics, worker_env, tmp_path):
    posts = make_posts(200)
    produce_sync(broker, topics.input, posts)

    first = WorkerProcess(worker_env, log_path=tmp_path / "first.log").start()
    try:
        first.wait_ready(timeout=90)
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= len(posts), timeout=90)
    finally:
        assert first.stop() == 0  # SIGTERM: finish, flush, commit

    # A new worker in the same group starts from the committed offsets: nothing to redo.
    second = WorkerProcess(worker_env, log_path=tmp_path / "second.log").start()
    try:
        second.wait_ready(timeout=90)
        time.sleep(3)
        seen = collect(broker, [topics.output], lambda s: False, timeout=5)
    finally:
        assert second.stop() == 0
    assert sorted(result_ids(seen[topics.output])) == sorted(k.decode() for k, _ in posts)
    second_log = (tmp_path / "second.log").read_text()
    assert "posts_in=0" in second_log
    for log in (tmp_path / "first.log", tmp_path / "second.log"):
        assert "Traceback" not in log.read_text() and "Crashed" not in log.read_text()


def test_worker_refuses_bad_settings_with_a_clear_message(worker_env, tmp_path):
    import subprocess
    import sys

    env = {**worker_env, "EMOTION_BATCH_SIZE": "0", "EMOTION_DEVICE": "tpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", "worker"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "EMOTION_BATCH_SIZE" in proc.stderr and "EMOTION_DEVICE" in proc.stderr
    assert "Traceback" not in proc.stderr


def _produce_at(broker, topic, messages, timestamp_ms):
    """Send ``messages`` with a record timestamp of our choosing (as a producer's clock would set it)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from emotion_stream.worker.broker.profiles import profile_for

    async def run():
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap,
            **profile_for(broker.backend).producer,
            **broker.client_options,
        )
        await producer.start()
        try:
            for key, value in messages:
                await (await producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms))
        finally:
            await producer.stop()

    asyncio.run(run())


def test_the_batch_wait_counts_from_when_a_post_was_produced(broker, topics, worker_env, tmp_path):
    # A 30 s wait: a fresh post waits that long for company, one produced a minute ago has
    # waited long enough already and is released as soon as it arrives.
    worker = WorkerProcess(
        {**worker_env, "EMOTION_BATCH_WAIT_MS": "30000"}, log_path=tmp_path / "worker.log"
    ).start()
    try:
        worker.wait_ready(timeout=90)
        old, fresh = make_posts(2, prefix="aged")
        _produce_at(broker, topics.input, [old], int((time.time() - 60) * 1000))
        seen = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 1, timeout=20)
        assert result_ids(seen[topics.output]) == [old[0].decode()]
        _produce_at(broker, topics.input, [fresh], int(time.time() * 1000))
        seen = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 2, timeout=8)
        assert result_ids(seen[topics.output]) == [old[0].decode()]  # the fresh one is still waiting
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()


def test_sigterm_mid_stream_publishes_nothing_after_its_final_commit(broker, topics, worker_env, tmp_path):
    posts = make_posts(10_000)
    produce_sync(broker, topics.input, posts)
    env = {**worker_env, "EMOTION_MODEL": "keywords:"}

    first = WorkerProcess(env, log_path=tmp_path / "first.log").start()
    try:
        first.wait_ready(timeout=90)
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 1_500, timeout=90)
    finally:
        assert first.stop() == 0  # SIGTERM mid-stream: finish what is in flight, commit, exit

    second = WorkerProcess(env, log_path=tmp_path / "second.log").start()
    try:
        second.wait_ready(timeout=90)
        seen = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= len(posts), timeout=180)
        time.sleep(3)
        seen = collect(broker, [topics.output], lambda s: False, timeout=5)
    finally:
        assert second.stop() == 0
    ids = result_ids(seen[topics.output])
    assert set(ids) == {k.decode() for k, _ in posts}
    assert len(ids) - len(set(ids)) == 0, f"{len(ids) - len(set(ids))} posts were labelled twice"
