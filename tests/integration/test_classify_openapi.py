"""`/classify` fuzzed from its own OpenAPI description: no 5xx, every answer as described."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from emotion_stream.schemas.messages import MAX_TEXT_CHARS
from emotion_stream.worker.classify import ClassifyDesk
from emotion_stream.worker.cli.worker_process import WorkerProcess
from emotion_stream.worker.openapi import classify_openapi
from tests.conftest import Topics, worker_settings

pytestmark = pytest.mark.integration

TOKEN = "openapi-token-for-the-test"
MAX_TEXTS = 64  # the default: the documented limits

# The description the worker serves is built from its limits; the test's copy is checked
# against the served one below, so fuzzing from it fuzzes what clients read.
schema = schemathesis.openapi.from_dict(
    classify_openapi(MAX_TEXTS, MAX_TEXT_CHARS, ClassifyDesk(MAX_TEXTS, max_concurrent=1).max_body_bytes)
)


@pytest.fixture(scope="module")
def served(broker, tiny_model, tmp_path_factory):
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"posts-{suffix}", f"post-emotions-{suffix}", f"posts-dlq-{suffix}", f"emotion-{suffix}")
    env = {
        **os.environ,
        **worker_settings(broker, tiny_model, topics),
        "EMOTION_CLASSIFY": "true",
        "EMOTION_CLASSIFY_TOKEN": TOKEN,
        "EMOTION_BATCH_WAIT_MS": "50",
    }
    worker = WorkerProcess(env, log_path=tmp_path_factory.mktemp("openapi") / "worker.log").start()
    try:
        worker.wait_ready(timeout=90)
        yield worker
    finally:
        worker.stop()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_the_worker_serves_the_description_the_fuzzer_reads(served):
    port = served.web_port
    assert json.loads(_get(f"http://127.0.0.1:{port}/openapi.json")) == schema.raw_schema


def test_a_body_of_the_documented_limits_is_answered(served):
    # 64 texts of 5,000 characters, escaped as json.dumps writes them: several MiB, all allowed.
    texts = ["é" * (MAX_TEXT_CHARS - 2) + f"{i:02d}" for i in range(MAX_TEXTS)]
    body = json.dumps({"texts": texts}).encode()
    assert len(body) > 1 << 20
    request = urllib.request.Request(
        f"http://127.0.0.1:{served.web_port}/classify",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200 and len(json.loads(response.read())["results"]) == MAX_TEXTS


@schema.parametrize()
def test_classify_never_answers_5xx_and_answers_as_described(case, served):
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{served.web_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
        timeout=120,
    )
