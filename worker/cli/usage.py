"""Problems the user can fix, for every command: one error class, one way to report settings.

A command raises :class:`UsageError` (or the training module's ``TrainingError``) with a
message that says what to do; ``emotion-stream`` prints it as one block on stderr, prefixed
with the command, and exits with code 2. Settings that do not parse are reported here, the
same way for the worker's and the training module's settings: each bad variable by name.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

Settings = TypeVar("Settings", bound=BaseSettings)


class UsageError(Exception):
    """A bad option, setting or input; the message says what to do."""


def env_name(settings_class: type[BaseSettings], location: tuple) -> str:
    """The environment variable a settings field is read from."""
    prefix = settings_class.model_config.get("env_prefix", "")
    return (prefix + "_".join(str(part) for part in location)).upper() if location else "settings"


def load_settings(settings_class: type[Settings]) -> Settings:
    """``settings_class()`` read from the environment; a value that does not parse is a
    :class:`UsageError` naming each bad variable and why."""
    try:
        return settings_class()
    except ValidationError as exc:
        lines = [
            f"  {env_name(settings_class, tuple(e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
        raise UsageError(
            "invalid settings:\n" + "\n".join(lines) + "\nFix these environment variables and try again."
        ) from None


def model_missing_message(model: str) -> str:
    return (
        f"no model at {model}. Train one with\n"
        f"    emotion-stream train --data DIR --output {model}\n"
        "(DIR holds train.txt and validation.txt; without --data or EMOTION_DATA_DIR the hub dataset "
        "dair-ai/emotion is used; about 15 minutes on 2 CPU cores), or set EMOTION_MODEL to a model "
        "directory or a hub id such as bhadresh-savani/distilbert-base-uncased-emotion."
    )
