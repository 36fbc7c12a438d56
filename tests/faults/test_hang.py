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

from tests.integration.helpers import (
    collect,
    make_posts,
    produce_sync,
    restart_answers_everything,
)
from worker.cli.worker_process import WorkerProcess

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
    posts = make_posts(2000)
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
