"""The command line facing bad input and bad options: one message naming what to fix, exit 2,
never a traceback (issue: hostile input, the smaller cases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emotion_stream.worker.cli.main import main


def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("EMOTION_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "command,name,value",
    [
        ("worker", "EMOTION_PROPAGATE_HEADERS", "x-tenant"),
        ("aggregate", "EMOTION_AGGREGATE_DIMENSIONS", "source,"),
    ],
)
def test_a_list_setting_that_is_not_json_names_its_variable(monkeypatch, capsys, command, name, value):
    _clean_env(monkeypatch)
    monkeypatch.setenv(name, value)
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert name in err and "JSON" in err and "Traceback" not in err


def test_a_misspelt_variable_stops_the_program_and_says_which_was_meant(monkeypatch, capsys):
    _clean_env(monkeypatch)
    monkeypatch.setenv("EMOTION_BACTH_SIZE", "32")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "EMOTION_BACTH_SIZE" in err and "EMOTION_BATCH_SIZE" in err


def test_variables_of_the_training_commands_and_the_tests_are_not_misspellings(monkeypatch):
    from emotion_stream.worker.cli.usage import unknown_variables

    _clean_env(monkeypatch)
    monkeypatch.setenv("EMOTION_TEST_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("EMOTION_DATA_DIR", "/data")
    assert unknown_variables() == []


def test_schemas_export_onto_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["schemas", "export", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err


def _produce(path: str, stdin: bytes | None = None, env: dict | None = None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    full.update(env or {}, EMOTION_BROKER="kafka://127.0.0.1:1")
    return subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", "produce", path],
        input=stdin,
        capture_output=True,
        env=full,
        timeout=60,
    )


def test_produce_refuses_a_file_that_is_not_utf8_naming_the_line(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b'{"id": "1", "text": "fine"}\n{"id": "2", "text": "caf\xe9"}\n')
    done = _produce(str(path))
    assert done.returncode == 2, done.stderr
    assert b"line 2" in done.stderr and b"UTF-8" in done.stderr and b"Traceback" not in done.stderr


def test_produce_refuses_non_utf8_on_stdin_instead_of_sending_surrogate_escapes():
    done = _produce("-", stdin=b"i feel \xff\xfe odd\n")
    assert done.returncode == 2, done.stderr
    assert b"line 1" in done.stderr and b"Traceback" not in done.stderr


def test_produce_sends_a_deeply_nested_or_huge_number_line_as_it_is(tmp_path):
    from emotion_stream.worker.broker.clients import line_to_message

    nested = "{" + '"a":[' * 5000 + "]" * 5000 + "}"
    key, value = line_to_message(nested)
    assert key is None and value == nested.encode()
    key, value = line_to_message('{"id": ' + "9" * 5000 + ', "text": "hi"}')
    assert key is None  # not a usable key; the worker dead-letters the post itself


def test_consume_prints_aggregates_as_aggregate_rows():
    record = {
        "schema_version": "1.0",
        "window_start": "2026-12-06T10:00:00Z",
        "window_end": "2026-12-06T10:01:00Z",
        "dimension": {},
        "counts": {"joy": 3, "sadness": 1, "love": 0, "anger": 0, "fear": 0, "surprise": 0},
        "mean_scores": {},
        "posts": 4,
        "dead_letters": 1,
        "closed": False,
        "updated_at": "2026-12-06T10:00:30Z",
    }
    from emotion_stream.worker.cli.commands import format_row

    row = format_row(json.dumps(record).encode())
    assert "2026-12-06T10:00:00Z" in row and "joy=3" in row and "?" not in row


@pytest.mark.parametrize("raw", [b"\xff", b"[" * 5000, b"9" * 5000, b'{"id": [1, 2]}', b"null", None])
def test_consume_prints_any_record_without_failing(raw):
    from emotion_stream.worker.cli.commands import format_row

    assert isinstance(format_row(raw), str)


def test_a_real_model_without_torch_says_exactly_what_to_install(monkeypatch):
    from emotion_stream.worker.cli import commands
    from emotion_stream.worker.cli.usage import UsageError

    monkeypatch.setattr(commands, "_installed", lambda name: name not in ("torch", "transformers"))
    with pytest.raises(UsageError) as caught:
        commands.check_model_packages("artifacts/model")
    message = str(caught.value)
    assert "torch, transformers" in message and "emotion-stream[model]" in message
    assert "keywords:" in message
    monkeypatch.setattr(commands, "_installed", lambda name: True)
    commands.check_model_packages("artifacts/model")  # everything there: no complaint
