"""The whole path on the tiny model: train (with a --params file) -> export -> reload -> evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from emotion_stream.schemas import LABELS
from tests.training.conftest import run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, emotion_data: Path) -> Path:
    work = tmp_path_factory.mktemp("trained")
    params = work / "best_params.json"
    params.write_text(
        json.dumps({"learning_rate": 3e-3, "batch_size": 4, "epochs": 3, "class_weights": True})
    )
    output = work / "model"
    code = run_cli(
        "train",
        "--data",
        emotion_data,
        "--base-model",
        tiny_model,
        "--output",
        output,
        "--params",
        params,
        "--batch-size",
        8,
        "--seed",
        7,
        "--no-progress",
    )
    assert code == 0
    return output


def test_output_directory_holds_the_model_and_its_record(
    trained: Path, emotion_data: Path, tiny_model: Path
) -> None:
    files = {p.name for p in trained.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "training_config.json",
        "metrics.json",
        "emotion_model.json",
        "README.md",
        "confusion_matrix.png",
    } <= files
    assert not (trained / "checkpoints").exists() and not any(n.startswith("checkpoint") for n in files)
    config = json.loads((trained / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(6)] == list(LABELS)
    assert config["label2id"] == {name: i for i, name in enumerate(LABELS)}
    assert (trained / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_params_file_is_honoured_and_flags_override_it(
    trained: Path, emotion_data: Path, tiny_model: Path
) -> None:
    record = json.loads((trained / "training_config.json").read_text())
    hp = record["hyperparameters"]
    assert hp["learning_rate"] == 3e-3 and hp["epochs"] == 3 and hp["class_weights"] is True  # from the file
    assert hp["batch_size"] == 8  # --batch-size beat the file's 4
    assert record["seed"] == 7 and record["options"]["params_file"].endswith("best_params.json")
    assert record["base_model"]["origin"] == "local" and record["base_model"]["source"] == str(
        tiny_model.resolve()
    )
    assert record["data"]["source"] == str(emotion_data.resolve())
    assert record["data"]["train_examples"] == 60 and record["data"]["eval_split"] == "validation"
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 3 * 8  # 60 posts in batches of 8: 8 steps per epoch


def test_identity_and_model_card(trained: Path, tiny_model: Path) -> None:
    identity = json.loads((trained / "emotion_model.json").read_text())
    assert identity["name"] == f"emotion-{tiny_model.name}"
    assert identity["base_model"] == str(tiny_model) and identity["version"] and identity["created_at"]
    card = (trained / "README.md").read_text()
    for heading in (
        "## Intended use",
        "## Out-of-scope use",
        "## Limitations and bias",
        "## Data",
        "## Training",
        "## Metrics (validation split)",
    ):
        assert heading in card
    assert "| surprise |" in card and "- class_weights: `True`" in card


def test_a_model_exported_in_shards_has_one_version_on_its_card_and_in_the_results(
    trained: Path, tmp_path: Path
) -> None:
    import functools

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from emotion_stream.schemas.model_directory import IDENTITY_FILE
    from emotion_stream.training.export import export_model
    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier

    model = AutoModelForSequenceClassification.from_pretrained(trained)
    model.save_pretrained = functools.partial(model.save_pretrained, max_shard_size="200KB")
    sharded = tmp_path / "sharded"
    record = json.loads((trained / "training_config.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    identity = export_model(
        sharded, model, AutoTokenizer.from_pretrained(trained), record=record, metrics=metrics
    )
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert identity["version"] in (sharded / "README.md").read_text()

    def served_version() -> str:
        return EmotionClassifier(str(sharded), ModelOptions(device="cpu", call_cost_tokens=8)).info.version

    assert served_version() == identity["version"]
    # Without the identity file the worker falls back to a digest of the weights: all of the
    # shards, as the export's version was made of.
    (sharded / IDENTITY_FILE).unlink()
    assert served_version()[:8] == identity["version"].rsplit("-", 1)[1]


def test_pipeline_loads_the_directory_and_returns_emotion_names(trained: Path) -> None:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(trained), device="cpu")
    results = classify(["i feel so happy today", "i am terrified of the dark"])
    assert len(results) == 2 and all(r["label"] in LABELS and 0 < r["score"] <= 1 for r in results)


def test_evaluate_writes_metrics_errors_and_the_baseline_comparison(
    trained: Path, emotion_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval"
    assert (
        run_cli(
            "evaluate",
            "--model",
            trained,
            "--split",
            "validation",
            "--data",
            emotion_data,
            "--output",
            out,
            "--errors",
            5,
        )
        == 0
    )
    result = json.loads((out / "evaluation.json").read_text())
    model = result["metrics"]
    assert model["examples"] == 24 and set(model["per_class"]) == set(LABELS)
    for key in ("accuracy", "f1_weighted", "f1_macro", "roc_auc_weighted", "roc_auc_macro", "log_loss"):
        assert isinstance(model[key], float)
    # The exported model scores on validation exactly what training measured before export.
    trained_metrics = json.loads((trained / "metrics.json").read_text())["validation"]
    assert model["accuracy"] == pytest.approx(trained_metrics["accuracy"])
    assert model["log_loss"] == pytest.approx(trained_metrics["log_loss"], rel=1e-4)
    assert result["baseline"]["name"] == "tfidf-logreg" and result["baseline"]["metrics"]["examples"] == 24
    assert result["model_identity"]["name"].startswith("emotion-")
    with (out / "errors.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == min(5, round(24 * (1 - model["accuracy"])))
    assert all(r["true"] != r["predicted"] and r["predicted"] in LABELS for r in rows)
    assert [float(r["confidence"]) for r in rows] == sorted(
        (float(r["confidence"]) for r in rows), reverse=True
    )
    assert (out / "confusion_matrix.png").is_file()
    printed = capsys.readouterr().out
    assert "| accuracy |" in printed and "tfidf-logreg" in printed and "| surprise |" in printed


def test_default_base_unreachable_falls_back_to_minilm_and_records_it(
    hub_offline: None, emotion_data: Path, tmp_path: Path
) -> None:
    output = tmp_path / "fallback-model"
    code = run_cli(
        "train",
        "--data",
        emotion_data,
        "--base-model",
        "emotion-stream-tests/unreachable-base",
        "--output",
        output,
        "--max-steps",
        1,
        "--train-limit",
        12,
        "--batch-size",
        4,
        "--no-progress",
        "--no-verify-modes",  # what is tested is the fallback; modes are measured elsewhere
    )
    assert code == 0
    base = json.loads((output / "training_config.json").read_text())["base_model"]
    assert base["requested"] == "emotion-stream-tests/unreachable-base"
    assert base["origin"] == "fallback" and base["name"] == "minilm-l6"
    assert json.loads((output / "emotion_model.json").read_text())["name"] == "emotion-minilm-l6"
    assert "replaced by `minilm-l6`" in (output / "README.md").read_text()
    assert json.loads((output / "config.json").read_text())["hidden_size"] == 384  # really MiniLM-L6


def test_dev_fraction_selects_on_a_dev_split_and_still_reports_validation(
    emotion_data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    output = tmp_path / "dev-model"
    assert (
        run_cli(
            "train",
            "--data",
            emotion_data,
            "--base-model",
            tiny_model,
            "--output",
            output,
            "--dev-fraction",
            "0.2",
            "--max-steps",
            1,
            "--no-progress",
        )
        == 0
    )
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["eval_split"] == "dev"
    assert metrics["dev"]["examples"] == 12 and metrics["validation"]["examples"] == 24
    data = json.loads((output / "training_config.json").read_text())["data"]
    assert data["train_examples"] == 48 and data["eval_split"] == "dev"
    assert "## Metrics (dev split)" in (output / "README.md").read_text()
    assert oct((output / "model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_train_default_reads_the_data_dir_from_the_environment(
    emotion_data: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emotion_stream.training.config import Hyperparameters
    from emotion_stream.training.train import train_default

    monkeypatch.setenv("EMOTION_DATA_DIR", str(emotion_data))
    result = train_default(
        tmp_path / "demo-model",
        progress=False,
        base_model=str(tiny_model),
        hyperparameters=Hyperparameters(epochs=1, batch_size=32),
    )
    assert (
        result.output_dir == tmp_path / "demo-model"
        and result.identity["name"] == f"emotion-{tiny_model.name}"
    )
    record = json.loads((result.output_dir / "training_config.json").read_text())
    assert record["data"]["source"] == str(emotion_data.resolve()) and record["command_line"] == [
        "train_default"
    ]
    assert result.metrics["training"]["steps"] == 2
