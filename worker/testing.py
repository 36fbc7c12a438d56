"""emotion-stream for other teams' integration tests: a pytest plugin and a container class.

Installed with the package, the plugin gives every test suite the ``emotion_worker`` fixture:
a factory that starts `emotion-stream worker` as a child process against the Kafka bootstrap
address you give (your testcontainers Kafka, or any broker), waits until it is ready, and
stops it cleanly when the test ends. By default it serves the keyword stand-in model
(``EMOTION_MODEL=keywords:``, see :mod:`worker.model.keywords`): no weights, no torch,
deterministic labels, so your assertions can be exact. For users with Docker,
:class:`worker.containers.EmotionStreamContainer` runs the image the same way.

    def test_my_pipeline_gets_emotions(emotion_worker, kafka_bootstrap):
        worker = emotion_worker(kafka_bootstrap, input_topic="posts", output_topic="post-emotions")
        ...  # produce posts, consume results: "i am so happy" is labelled joy
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emotion_stream.worker.cli.worker_process import WorkerProcess


@dataclass
class RunningWorker:
    """A worker started by ``emotion_worker``: its settings, its web port and its log."""

    process: WorkerProcess
    settings: dict[str, str]
    log_path: Path
    ready: dict = field(default_factory=dict)

    @property
    def web_port(self) -> int:
        return self.process.web_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def classify(self, *texts: str) -> list[dict]:
        """Label ``texts`` through the worker's ``POST /classify`` (started with it enabled)."""
        request = urllib.request.Request(
            f"{self.url}/classify", data=json.dumps({"texts": list(texts)}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["results"]

    def stop(self) -> int:
        """SIGTERM: the worker finishes its batch, commits and exits; returns its exit code."""
        return self.process.stop()


def start_worker(
    bootstrap: str,
    *,
    log_dir: Path,
    input_topic: str = "posts",
    output_topic: str = "post-emotions",
    dlq_topic: str = "posts-dlq",
    group_id: str | None = None,
    model: str = "keywords:",
    backend: str | None = None,
    ready_timeout: float = 90.0,
    **settings: str,
) -> RunningWorker:
    """Start a worker on ``bootstrap`` (``host:port``; several separated by ``;``) and wait until
    it is ready. ``backend``: ``kafka`` (default, or EMOTION_BROKER_BACKEND) or ``embedded``.
    ``settings``: any other worker setting, by field name (``batch_size="16"``) or
    variable name (``EMOTION_SECURITY_PROTOCOL="SASL_SSL"``)."""
    group_id = group_id or f"emotion-test-{uuid.uuid4().hex[:8]}"
    env = {
        "EMOTION_BROKER": ";".join(f"kafka://{b.split('://')[-1]}" for b in bootstrap.split(";")),
        "EMOTION_BROKER_BACKEND": backend or os.environ.get("EMOTION_BROKER_BACKEND", "kafka"),
        "EMOTION_MODEL": model,
        "EMOTION_INPUT_TOPIC": input_topic,
        "EMOTION_OUTPUT_TOPIC": output_topic,
        "EMOTION_DLQ_TOPIC": dlq_topic,
        "EMOTION_GROUP_ID": group_id,
        "EMOTION_LOG_FORMAT": "console",
    }
    for name, value in settings.items():
        env[name if name.startswith("EMOTION_") else f"EMOTION_{name.upper()}"] = str(value)
    log_path = Path(log_dir) / f"emotion-worker-{group_id}.log"
    process = WorkerProcess({**os.environ, **env}, log_path=log_path).start()
    try:
        ready = process.wait_ready(timeout=ready_timeout)
    except (RuntimeError, TimeoutError) as exc:
        process.stop()
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"the emotion-stream worker did not become ready: {exc}\n{tail}") from None
    return RunningWorker(process, env, log_path, ready)


@pytest.fixture
def emotion_worker(tmp_path: Path) -> Iterator[Callable[..., RunningWorker]]:
    """A factory: ``emotion_worker(bootstrap, **options)`` starts a worker (see
    :func:`start_worker`); every worker it started is stopped when the test ends."""
    started: list[RunningWorker] = []

    def start(bootstrap: str, **options) -> RunningWorker:
        worker = start_worker(bootstrap, log_dir=tmp_path, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
