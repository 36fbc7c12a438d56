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


def test_each_program_loads_only_its_own_section(monkeypatch):
    """A value only the worker reads cannot stop the aggregator or the page, and the reverse."""
    from emotion_stream.worker.settings import AggregatorSettings, DashboardSettings

    monkeypatch.setenv("EMOTION_NUMERIC", "float7")  # the worker's setting, bad
    monkeypatch.setenv("EMOTION_AGGREGATE_WINDOW_S", "-5")  # the aggregator's and the page's, bad
    monkeypatch.setenv("EMOTION_DASHBOARD_PORT", "0")  # the page's, bad
    with pytest.raises(ValidationError, match="numeric"):
        WorkerSettings()
    with pytest.raises(ValidationError, match="aggregate_window_s"):
        AggregatorSettings()
    with pytest.raises(ValidationError) as page:
        DashboardSettings()
    assert {e["loc"][0] for e in page.value.errors()} == {"aggregate_window_s", "dashboard_port"}
    monkeypatch.setenv("EMOTION_AGGREGATE_WINDOW_S", "30")
    assert AggregatorSettings().aggregate_window_s == 30.0
    assert "model" not in AggregatorSettings.model_fields and "model" not in DashboardSettings.model_fields
    assert "dashboard_port" not in AggregatorSettings.model_fields
    assert "aggregate_port" not in WorkerSettings.model_fields


def test_every_section_shares_the_connection_and_its_checks(monkeypatch):
    from emotion_stream.worker.settings import AggregatorSettings, DashboardSettings

    monkeypatch.setenv("EMOTION_SECURITY_PROTOCOL", "SASL_SSL")  # without a mechanism or a user
    for section in (WorkerSettings, AggregatorSettings, DashboardSettings):
        with pytest.raises(ValidationError, match="EMOTION_SASL_MECHANISM"):
            section()


def test_durations_in_milliseconds_are_read_in_seconds():
    s = WorkerSettings(batch_wait_ms=250, commit_interval_ms=40)
    assert (s.batch_wait_s, s.commit_interval_s) == (0.25, 0.04)


@pytest.mark.parametrize(
    "value,kind",
    [
        ("keywords:", "keywords"),
        ("keywords:table.json", "keywords"),
        ("artifacts/model", "directory"),
        ("./mine", "directory"),
        ("/srv/models/emotion", "directory"),
        ("~/model", "directory"),
        ("runs/a/", "directory"),
        ("a/b/c", "directory"),
        ("bhadresh-savani/distilbert-base-uncased-emotion", "hub"),
        ("distilbert-base-uncased", "hub"),
    ],
)
def test_one_reading_of_the_model_setting(value, kind):
    from emotion_stream.worker.model.api import model_source

    assert model_source(value).kind == kind
    assert WorkerSettings(model=value).model_source == model_source(value)


def test_an_existing_directory_is_a_directory_and_a_missing_one_says_so(tmp_path, monkeypatch):
    from emotion_stream.worker.model.api import model_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel").mkdir()
    assert model_source("mymodel").kind == "directory" and not model_source("mymodel").missing
    assert model_source("./gone").missing and model_source("./gone").directory is not None
    assert not model_source("org/name").missing and model_source("org/name").directory is None


def test_a_missing_model_directory_is_not_looked_up_on_the_hub(tmp_path):
    pytest.importorskip("transformers")
    from emotion_stream.worker.model.api import ModelLoadError
    from emotion_stream.worker.model.loading import load_pretrained

    with pytest.raises(ModelLoadError, match=r"no model directory at .*emotion-stream train"):
        load_pretrained(str(tmp_path / "not-there"))


def test_the_model_process_serves_graphs_from_the_temporary_directory_unless_told_otherwise(
    monkeypatch, tmp_path
):
    import os
    import tempfile
    from pathlib import Path

    for name in ("EMOTION_SERVING_GRAPH", "EMOTION_GRAPH_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    default = WorkerSettings().model_options().graph_cache_dir
    assert default == str(Path(tempfile.gettempdir()) / f"emotion-stream-graphs-{os.getuid()}")
    monkeypatch.setenv("EMOTION_GRAPH_CACHE_DIR", str(tmp_path))
    assert WorkerSettings().model_options().graph_cache_dir == str(tmp_path)
    monkeypatch.setenv("EMOTION_SERVING_GRAPH", "false")
    assert WorkerSettings().model_options().graph_cache_dir is None


def test_a_graph_cache_directory_that_cannot_be_ours_stops_the_worker_saying_what_to_set(
    monkeypatch, tmp_path
):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    for value, problem in ((a_file, "is not a directory"), (shared, "is writable by other users")):
        monkeypatch.setenv("EMOTION_GRAPH_CACHE_DIR", str(value))
        with pytest.raises(ValidationError, match=problem):
            WorkerSettings()
    monkeypatch.setenv("EMOTION_GRAPH_CACHE_DIR", str(tmp_path / "not" / "yet"))
    assert WorkerSettings().graph_cache_dir == tmp_path / "not" / "yet"  # made when first used
