"""A model that stops answering: the worker says so on /health, then exits for its supervisor."""

import contextlib
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request

import pytest

from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import (
    collect,
    make_posts,
    produce_sync,
    restart_answers_everything,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _health(worker) -> tuple[int, dict] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/health", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return None


def test_a_hung_model_makes_the_worker_unhealthy_then_exit_and_a_restart_answers_everything(
    broker, topics, worker_env, tmp_path
):
    posts = make_posts(1200)
    produce_sync(broker, topics.input, posts)
    env = {
        **worker_env,
        "EMOTION_BATCH_SIZE": "8",
        "EMOTION_MODEL_TIMEOUT_S": "3",
        "EMOTION_UNHEALTHY_GRACE_S": "4",
    }
    worker = WorkerProcess(env, log_path=tmp_path / "first.log").start()
    model_pid = None
    try:
        worker.wait_ready(timeout=90)
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 50, timeout=60)
        model_pid = int(
            re.search(r"model process started.*pid=(\d+)", (tmp_path / "first.log").read_text())[1]
        )
        os.kill(model_pid, signal.SIGSTOP)  # alive, silent: the batch in it never comes back
        seen_unhealthy = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and worker.process.poll() is None:
            answer = _health(worker)
            if answer and answer[0] == 503:
                seen_unhealthy = answer[1]
            time.sleep(0.5)
        code = worker.process.wait(timeout=30)
    finally:
        if model_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(model_pid, signal.SIGKILL)
        worker.kill()
    log = (tmp_path / "first.log").read_text()
    assert seen_unhealthy and "in the model" in seen_unhealthy["problems"][0], log[-2000:]
    assert code == 1 and "no progress for the grace period" in log

    restart_answers_everything(broker, topics, env, tmp_path / "second.log", posts)


MEMBER = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

class Named(RoundRobinPartitionAssignor):
    name = sys.argv[4]

async def main():
    consumer = AIOKafkaConsumer(
        sys.argv[2], bootstrap_servers=sys.argv[1], group_id=sys.argv[3],
        partition_assignment_strategy=[Named], session_timeout_ms=12000,
        heartbeat_interval_ms=1000, max_poll_interval_ms=12000,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    print("assigned", flush=True)
    while True:
        await consumer.getmany(timeout_ms=500)

asyncio.run(main())
"""


def _member(broker, topics, protocol: str):
    """A consumer of the input topic in the worker's group, with the assignment protocol
    named ``protocol`` and a 12 s session, once it holds the partitions."""
    import subprocess
    import sys

    from tests.integration.helpers import create_topic

    create_topic(broker.bootstrap, topics.input, 1)
    member = subprocess.Popen(
        [sys.executable, "-c", MEMBER, broker.bootstrap, topics.input, topics.group, protocol],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert member.stdout.readline().strip() == "assigned"
    return member


def _health_until(worker, log_path, stop_when: str, seconds: float) -> list[tuple[int, dict]]:
    """/health every half second until ``stop_when`` appears in the log, the worker exits or
    ``seconds`` pass: the answers."""
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and worker.process.poll() is None:
        answer = _health(worker)
        if answer is not None:
            answers.append(answer)
        if stop_when in log_path.read_text():
            break
        time.sleep(0.5)
    return answers


def test_a_group_the_worker_cannot_join_makes_it_unhealthy_then_exit_saying_why(
    broker, topics, worker_env, tmp_path
):
    # Another application's consumer holds the worker's group with another assignment
    # protocol: the broker refuses the worker's join, and the Kafka client keeps that error
    # for a poll the worker never makes without partitions. Without a bound it would wait
    # for ever, healthy and idle.
    other = _member(broker, topics, "roundrobin")
    try:
        log_path = tmp_path / "worker.log"
        worker = WorkerProcess({**worker_env, "EMOTION_UNHEALTHY_GRACE_S": "3"}, log_path=log_path).start()
        try:
            answers = _health_until(worker, log_path, "no progress for the grace period", 90)
            code = worker.process.wait(timeout=30)
        finally:
            worker.kill()
    finally:
        other.kill()
        other.wait()
    log = log_path.read_text()
    unhealthy = [body for status, body in answers if status == 503]
    assert unhealthy, log[-2000:]
    problem = unhealthy[-1]["problems"][0]
    assert f"has not joined group {topics.group}" in problem and "InconsistentGroupProtocolError" in problem
    assert "different partition assignment protocol" in problem and "EMOTION_GROUP_ID" in problem
    assert code == 1 and "no progress for the grace period" in log


def test_a_slow_first_group_join_is_not_reported_as_a_stalled_event_loop(
    broker, topics, worker_env, tmp_path
):
    # A member of the group dies without leaving (as a SIGKILLed worker does): its successor's
    # first join waits for the broker to give up on it, 12 s here. The successor's event loop
    # runs all along, so /health must say so, and the worker must not stop itself over it.
    dead = _member(broker, topics, "faust")  # the worker's own protocol: a join, slow, not refused
    dead.kill()
    dead.wait()
    produce_sync(broker, topics.input, make_posts(20))
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess({**worker_env, "EMOTION_UNHEALTHY_GRACE_S": "1"}, log_path=log_path).start()
    started = time.monotonic()
    try:
        answers = _health_until(worker, log_path, "partitions assigned", 90)
        joined_after = time.monotonic() - started
        seen = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 20, timeout=60)
    finally:
        worker.stop()
    log = log_path.read_text()
    assert "partitions assigned" in log and len(seen[topics.output]) == 20, log[-2000:]
    assert joined_after > 8, f"joined after {joined_after:.0f}s: too soon to show anything"
    assert [a for a in answers if a[0] != 200] == []
    assert "event loop has not run" not in log and "no progress for the grace period" not in log
