import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from emotion_stream.worker.broker.clients import line_to_message
from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.settings import WorkerSettings


def test_defaults(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("EMOTION_"):
            monkeypatch.delenv(name)
    s = WorkerSettings()
    assert (s.input_topic, s.output_topic, s.dlq_topic) == ("posts", "post-emotions", "posts-dlq")
    assert s.web_host == "127.0.0.1" and s.log_format == "json" and s.device == "auto"


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("EMOTION_BROKER", "kafka://a:1;kafka://b:2")
    monkeypatch.setenv("EMOTION_BATCH_SIZE", "256")
    monkeypatch.setenv("EMOTION_LOG_LEVEL", "debug")
    s = WorkerSettings()
    assert s.bootstrap_servers == ["a:1", "b:2"] and s.batch_size == 256 and s.log_level == "DEBUG"


@pytest.mark.parametrize(
    "name,value",
    [
        ("EMOTION_BROKER", "http://x:1"),
        ("EMOTION_BROKER", "kafka://nohost"),
        ("EMOTION_BATCH_SIZE", "0"),
        ("EMOTION_DEVICE", "tpu"),
        ("EMOTION_OUTPUT_TOPIC", "posts"),
        ("EMOTION_WEB_PORT", "70000"),
        ("EMOTION_CPU_PASSES", "0"),
    ],
)
def test_bad_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_embedded_profile_shortens_group_timeouts_and_never_asks_for_idempotence():
    embedded, kafka = profile_for("embedded"), profile_for("kafka")
    assert embedded.faust["broker_session_timeout"] < 10
    assert embedded.producer["enable_idempotence"] is False
    assert embedded.consumer["fetch_max_wait_ms"] <= 50  # it holds fetches for the full wait
    assert embedded.faust["processing_guarantee"] == kafka.faust["processing_guarantee"] == "at_least_once"
    with pytest.raises(ValueError, match="unknown broker backend"):
        profile_for("pulsar")


def test_produce_lines():
    key, value = line_to_message('{"id": "x", "text": "hi"}\n')
    assert key == b"x" and json.loads(value) == {"id": "x", "text": "hi"}
    key, value = line_to_message("just some text\n")
    assert json.loads(value)["text"] == "just some text" and json.loads(value)["id"] == key.decode()
    key, value = line_to_message("{broken")
    assert key is None and value == b"{broken"


def test_cli_reports_a_missing_model_with_what_to_do(tmp_path):
    env = {**__import__("os").environ, "EMOTION_MODEL": str(tmp_path / "absent")}
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "emotion-stream train" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_schemas_export(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", "schemas", "export", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert (tmp_path / "post.schema.json").is_file()
