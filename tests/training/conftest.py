"""Fixtures for the training tests: a small synthetic emotion data set, the CLI, an offline hub.

The tiny random base model is the session fixture ``tiny_model`` from ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Ten train and four validation posts per emotion; each emotion has its own words so even
# a tiny model trained for a few steps has something to find.
WORDS = {
    "sadness": ["miserable", "lonely", "heartbroken", "gloomy", "hopeless", "crying", "grieving"],
    "joy": ["happy", "delighted", "cheerful", "thrilled", "glad", "joyful", "excited"],
    "love": ["adore", "cherish", "affectionate", "romantic", "tender", "devoted", "caring"],
    "anger": ["furious", "annoyed", "outraged", "irritated", "resentful", "bitter", "enraged"],
    "fear": ["scared", "terrified", "anxious", "nervous", "frightened", "worried", "panicky"],
    "surprise": ["amazed", "astonished", "shocked", "stunned", "startled", "speechless", "curious"],
}
OPENINGS = [
    "i feel so",
    "today i am",
    "honestly feeling",
    "i woke up",
    "right now i am",
    "i keep feeling",
    "still so",
    "why am i so",
    "i am just",
    "feeling very",
]


def synthetic_lines(per_label: int, offset: int = 0) -> list[str]:
    lines = []
    for i in range(per_label):
        for label, words in WORDS.items():
            word = words[(i + offset) % len(words)]
            lines.append(f"{OPENINGS[(i + offset) % len(OPENINGS)]} {word}; really {word};{label}")
    return lines


def write_emotion_data(directory: Path) -> Path:
    """train.txt (60 lines) and validation.txt (24 lines), `text;label`, text containing ';'."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.txt").write_text("\n".join(synthetic_lines(10)) + "\n", encoding="utf-8")
    (directory / "validation.txt").write_text(
        "\n".join(synthetic_lines(4, offset=3)) + "\n", encoding="utf-8"
    )
    return directory


@pytest.fixture(scope="session")
def emotion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_emotion_data(tmp_path_factory.mktemp("emotion-data"))


def run_cli(*argv: str) -> int:
    """Run a subcommand in this process exactly as `emotion-stream` does; returns its exit code."""
    from emotion_stream.worker.cli.main import main

    return main([str(a) for a in argv])


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hugging Face hub treated as unreachable, whatever this machine's network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
