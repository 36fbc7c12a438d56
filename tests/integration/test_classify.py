"""`POST /classify` on a running worker: the stream's model, limits, token, and answers in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from emotion_stream.schemas.labels import LABELS
from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import collect, produce_sync

pytestmark = pytest.mark.integration

TOKEN = "classify-token-for-the-test"
TEXTS = [
    "i feel so glad and lucky today",
    "i am terrified of what comes next",
    "i feel lonely and unwanted",
    "this makes me furious",
    "i am amazed by the news",
    "i adore my little garden",
]


def _post(port: int, body: object, token: str | None = TOKEN) -> tuple[int, dict]:
    status, answer, _ = _post_full(port, body, token)
    return status, answer


def _post_full(port: int, body: object, token: str | None = TOKEN) -> tuple[int, dict, dict]:
    """Status, JSON body (every answer is JSON, errors too) and headers of a POST /classify."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/classify", data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


@pytest.fixture
def classify_worker(broker, worker_env, tmp_path):
    env = {
        **os.environ,
        **worker_env,
        "EMOTION_CLASSIFY": "true",
        "EMOTION_CLASSIFY_TOKEN": TOKEN,
        "EMOTION_CLASSIFY_MAX_TEXTS": "8",
        "EMOTION_CLASSIFY_MAX_CONCURRENT": "2",
        "EMOTION_BATCH_WAIT_MS": "300",
    }
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(timeout=90)
        yield worker
    finally:
        worker.stop()


def test_classify_answers_each_text_in_order_with_the_label_the_stream_gives(broker, topics, classify_worker):
    port = classify_worker.web_port
    status, body = _post(port, {"texts": TEXTS})
    assert status == 200, body
    answers = body["results"]
    assert len(answers) == len(TEXTS)
    for answer in answers:
        assert answer["label"] in LABELS and set(answer["scores"]) == set(LABELS)
        assert answer["score"] == pytest.approx(max(answer["scores"].values()))
        assert answer["schema_version"] and answer["model"]["version"]
        assert "source" not in answer  # no Kafka fields
    status, single = _post(port, {"text": TEXTS[2]})
    assert status == 200 and single["results"][0]["label"] == answers[2]["label"]

    # The same texts through the stream: the same model gives the same labels.
    posts = [
        (f"c-{i}".encode(), json.dumps({"id": f"c-{i}", "text": t}).encode()) for i, t in enumerate(TEXTS)
    ]
    produce_sync(broker, topics.input, posts)
    seen = collect(broker, [topics.output], lambda s: len(s[topics.output]) >= len(TEXTS), timeout=90)
    streamed = {json.loads(r.value)["id"]: json.loads(r.value) for r in seen[topics.output]}
    for i, answer in enumerate(answers):
        assert streamed[f"c-{i}"]["label"] == answer["label"]
        assert streamed[f"c-{i}"]["score"] == pytest.approx(answer["score"], abs=1e-4)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert f"emotion_classify_texts_total {float(len(TEXTS) + 1)}" in metrics


def test_classify_refuses_what_it_must_with_a_clear_status(classify_worker):
    port = classify_worker.web_port
    assert _post(port, {"text": "hello"}, token=None)[0] == 401
    assert _post(port, {"text": "hello"}, token="wrong")[0] == 401
    status, body = _post(port, {"texts": ["i feel fine"] * 9})
    assert status == 413 and "EMOTION_CLASSIFY_MAX_TEXTS" in body["error"]
    assert _post(port, {"texts": ["fine", "   "]})[0] == 422
    assert _post(port, {"texts": ["x" * 5001]})[0] == 422
    assert _post(port, b"not json")[0] == 400
    assert _post(port, {"text": "a", "texts": ["b"]})[0] == 400

    # Two requests in progress at most: the rest of a burst is answered 429 at once, with
    # when to retry.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _post_full(port, {"texts": [f"i feel glad {i}"] * 8}), range(8)))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1
    assert set(statuses) <= {200, 429}
    for status, body, headers in answers:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1 and "EMOTION_CLASSIFY_MAX_CONCURRENT" in body["error"]
    assert _post(port, {"text": "still answering"})[0] == 200


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_bodies_the_reader_refuses_are_json_4xx_counted_and_logged_without_a_traceback(classify_worker):
    port = classify_worker.web_port
    nested = b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for _ in range(3):
        status, body = _post(port, nested)
        assert status == 400 and "nested" in body["error"]
    status, body = _post(port, b'{"text": "\\ud800"}')
    assert status == 400 and "surrogate" in body["error"]
    # Over the cap (8 texts here): a JSON 413 naming the cap, whether the body is read or not.
    status, body, headers = _post_full(port, b'{"texts": ["' + b"x" * (3 << 20) + b'"]}')
    assert (
        status == 413 and "bytes" in body["error"] and headers["Content-Type"].startswith("application/json")
    )
    assert 'emotion_classify_requests_total{status="400"} 4.0' in _metrics(port)
    assert 'emotion_classify_requests_total{status="413"} 1.0' in _metrics(port)
    log = classify_worker.log_path.read_text()
    assert "Traceback" not in log and "RecursionError" not in log


def test_classify_on_an_open_address_without_a_token_stops_the_worker_at_start(worker_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    env.update({**worker_env, "EMOTION_CLASSIFY": "true", "EMOTION_WEB_HOST": "0.0.0.0"})
    result = subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "EMOTION_CLASSIFY_TOKEN" in result.stderr, result.stderr
