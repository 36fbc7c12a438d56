"""The subcommands' wiring: cheap to build, and problems end with a clear message and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import run_cli


def test_building_the_parser_imports_no_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from worker.cli.main import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in ('torch', 'transformers', 'optuna', 'datasets', 'sklearn', 'faust') if m in "
        "sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--train-limit", "0"], "--train-limit: 0 must be 1 or more"),
        (["train", "--dev-fraction", "2"], "--dev-fraction: 2 must be between 0 and 1"),
        (["tune", "--class-weights", "maybe"], "invalid choice: 'maybe'"),
    ],
)
def test_bad_options_stop_before_any_work(argv: list, expected: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        run_cli(*argv)
    assert caught.value.code == 2
    assert expected in capsys.readouterr().err


def test_fixable_problems_exit_2_with_advice(
    tmp_path: Path, emotion_data: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_cli("train", "--data", tmp_path / "nowhere", "--output", tmp_path / "m") == 2
    assert "emotion-stream train: data directory" in capsys.readouterr().err
    params = tmp_path / "p.json"
    params.write_text('{"lr": 0.1}')
    assert run_cli("train", "--data", emotion_data, "--params", params, "--output", tmp_path / "m") == 2
    assert "unknown hyperparameter; known: learning_rate" in capsys.readouterr().err
    assert run_cli("tune", "--data", emotion_data, "--lr-range", "5e-5", "1e-5") == 2
    assert "--lr-range needs 0 < LOW <= HIGH" in capsys.readouterr().err
    assert run_cli("evaluate", "--model", tmp_path, "--data", emotion_data) == 2
    assert "is not a model directory (no config.json): train one" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_bad_environment_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, emotion_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("EMOTION_HUB_TIMEOUT", "soon")
    assert run_cli("train", "--data", emotion_data, "--output", tmp_path / "m") == 2
    assert "EMOTION_HUB_TIMEOUT" in capsys.readouterr().err
