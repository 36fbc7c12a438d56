"""The broker goes away mid-stream: a short outage is ridden out, a long one ends the worker cleanly."""

import time
import urllib.error
import urllib.request

import pytest

from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.conftest import worker_settings
from tests.integration.helpers import (
    collect,
    make_posts,
    produce_sync,
    restart_answers_everything,
    result_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _ready_status(worker) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/ready", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _env(broker, topics, tiny_model, **extra) -> dict:
    return {**worker_settings(broker, tiny_model, topics), **extra}


def test_a_30_second_outage_is_ridden_out_with_nothing_lost(cuttable_broker, topics, tiny_model, tmp_path):
    broker, proxy = cuttable_broker
    before, after = make_posts(300, "before"), make_posts(300, "after")
    produce_sync(broker, topics.input, before)
    env = _env(broker, topics, tiny_model, EMOTION_SEND_TIMEOUT_S="90", EMOTION_COMMIT_TIMEOUT_S="90")
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(timeout=90)
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 100, timeout=60)
        proxy.cut()
        statuses = []
        cut_until = time.monotonic() + 30
        while time.monotonic() < cut_until:
            statuses.append(_ready_status(worker))
            time.sleep(1)
        proxy.restore()
        produce_sync(broker, topics.input, after)
        wanted = {k.decode() for k, _ in before + after}
        seen = collect(
            broker, [topics.output], lambda s: wanted <= set(result_ids(s[topics.output])), timeout=120
        )
        assert worker.process.poll() is None, "the worker did not ride the outage out"
    finally:
        code = worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert wanted - set(result_ids(seen[topics.output])) == set(), log[-3000:]
    assert statuses.count(503) >= 20, statuses  # not ready while the broker was away
    assert code == 0, log[-3000:]


def test_an_outage_longer_than_the_send_timeout_ends_the_worker_and_a_restart_answers_everything(
    cuttable_broker, topics, tiny_model, tmp_path
):
    broker, proxy = cuttable_broker
    posts = make_posts(2000)
    produce_sync(broker, topics.input, posts)
    env = _env(
        broker,
        topics,
        tiny_model,
        EMOTION_BATCH_SIZE="8",
        EMOTION_SEND_TIMEOUT_S="5",
        EMOTION_COMMIT_TIMEOUT_S="5",
        EMOTION_UNHEALTHY_GRACE_S="2",
    )
    worker = WorkerProcess(env, log_path=tmp_path / "first.log").start()
    try:
        worker.wait_ready(timeout=90)
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 50, timeout=60)
        proxy.cut()
        worker.process.wait(timeout=60)
    finally:
        proxy.restore()
        worker.stop()
    first_log = (tmp_path / "first.log").read_text()
    assert worker.process.returncode == 1, first_log[-3000:]
    assert "stopping so the batch is re-read on restart" in first_log
    assert "EMOTION_SEND_TIMEOUT_S" in first_log or "EMOTION_COMMIT_TIMEOUT_S" in first_log, first_log[-3000:]

    restart_answers_everything(broker, topics, env, tmp_path / "second.log", posts)


def test_a_10_second_cut_with_the_default_timeouts_does_not_restart_the_worker(
    cuttable_broker, topics, tiny_model, tmp_path
):
    broker, proxy = cuttable_broker
    # Enough posts, in small batches, that the cut catches sends in flight.
    before, after = make_posts(1200, "before"), make_posts(100, "after")
    produce_sync(broker, topics.input, before)
    env = _env(broker, topics, tiny_model, EMOTION_BATCH_SIZE="8")
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(timeout=90)
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 100, timeout=60)
        proxy.cut()
        time.sleep(10)
        proxy.restore()
        produce_sync(broker, topics.input, after)
        wanted = {k.decode() for k, _ in before + after}
        seen = collect(
            broker, [topics.output], lambda s: wanted <= set(result_ids(s[topics.output])), timeout=120
        )
        assert worker.process.poll() is None, "a 10 s cut restarted the worker"
    finally:
        code = worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert wanted - set(result_ids(seen[topics.output])) == set(), log[-3000:]
    assert code == 0, log[-3000:]
