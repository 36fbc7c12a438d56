"""Choosing the base model: presets, local directories, and the offline fallback to minilm-l6."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emotion_stream.training.base_models import FALLBACK_PRESET, BaseModelError, resolve_base_model
from tests.tiny_model import offline_vocab_dir


def test_preset_and_local_directory(tiny_model: Path) -> None:
    preset = resolve_base_model("minilm-l6")
    assert preset.origin == "preset" and Path(preset.source) == offline_vocab_dir()
    local = resolve_base_model(str(tiny_model))
    assert (local.origin, local.name, local.source) == ("local", tiny_model.name, str(tiny_model.resolve()))


def test_paths_that_are_not_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match=re.escape("has no config.json")):
        resolve_base_model(str(tmp_path))
    with pytest.raises(BaseModelError, match=re.escape("no directory ./missing/model")):
        resolve_base_model("./missing/model")


def test_unreachable_hub_falls_back_to_minilm_with_a_warning(
    hub_offline: None, capsys: pytest.CaptureFixture
) -> None:
    base = resolve_base_model("emotion-stream-tests/unreachable-base")
    assert base.origin == "fallback" and base.name == FALLBACK_PRESET
    assert Path(base.source) == offline_vocab_dir()
    assert base.requested == "emotion-stream-tests/unreachable-base"
    assert "offline mode is on" in base.note and "fell back to the offline preset minilm-l6" in base.note
    assert "WARNING: emotion-stream-tests/unreachable-base could not be loaded" in capsys.readouterr().err


def test_no_fallback_fails_with_advice(hub_offline: None) -> None:
    with pytest.raises(BaseModelError, match="Pass --base-model minilm-l6 or a local directory"):
        resolve_base_model("emotion-stream-tests/unreachable-base", allow_fallback=False)
