"""The subcommands' wiring: cheap to build, and problems end with a clear message and exit code 2."""

from __future__ import annotations

import ast
import subprocess
import sys
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest

from emotion_stream.worker.cli import training
from tests.training.conftest import run_cli

SHARED = (
    "--data",
    "--base-model",
    "--no-fallback",
    "--seed",
    "--max-length",
    "--max-steps",
    "--train-limit",
    "--dev-fraction",
    "--no-progress",
    "--no-verify-modes",
    "--no-calibrate",
    "--no-head-refit",
)
RUNS = {
    "train": ["train"],
    "tune": ["tune"],
    "distill": ["distill", "--teacher", "teacher", "--output", "student"],
}
EXPORTS = {
    "train": ["train"],
    "distill": RUNS["distill"],
    "soup": ["soup", "a", "b", "--output", "soup"],
    "calibrate": ["calibrate", "model"],
}


def test_building_the_parser_imports_no_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from emotion_stream.worker.cli.main import build_parser\n"
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


def _parse(*argv: str) -> dict:
    from emotion_stream.worker.cli.main import build_parser

    return vars(build_parser().parse_args(argv))


def test_each_shared_option_is_declared_once() -> None:
    tree = ast.parse(Path(training.__file__).read_text(encoding="utf-8"))
    declared = Counter(
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "add_argument"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    )
    assert {flag: declared[flag] for flag in SHARED} == dict.fromkeys(SHARED, 1)


@pytest.mark.parametrize("command", RUNS)
def test_train_tune_and_distill_read_their_run_options_alike(command: str) -> None:
    given = ["--data", "d", "--seed", "7", "--max-steps", "3", "--train-limit", "5", "--no-progress"]
    parsed, defaults = _parse(*RUNS[command], *given), _parse(*RUNS[command])
    names = ("data", "seed", "max_steps", "train_limit", "no_progress")
    assert [parsed[n] for n in names] == [Path("d"), 7, 3, 5, True]
    assert [defaults[n] for n in names] == [None, 42, None, None, False]
    with pytest.raises(SystemExit):
        _parse(*RUNS[command], "--train-limit", "0")


@pytest.mark.parametrize("command", EXPORTS)
def test_every_command_that_exports_can_skip_the_steps_after_it(command: str) -> None:
    parsed = _parse(*EXPORTS[command], "--no-verify-modes", "--no-head-refit")
    defaults = _parse(*EXPORTS[command])
    assert parsed["no_verify_modes"] and parsed["no_head_refit"]
    assert not defaults["no_verify_modes"] and not defaults["no_head_refit"]
    assert parsed["run"].__name__ == f"run_{command}"


def test_the_step_after_export_measures_the_modes_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    measured = []
    monkeypatch.setattr(training, "verify_modes", lambda model, data: measured.append((model, data)))
    training.after_export(Namespace(no_verify_modes=True), tmp_path / "m", None)
    training.after_export(Namespace(no_verify_modes=False), tmp_path / "m", tmp_path / "d")
    assert measured == [(tmp_path / "m", tmp_path / "d")]
