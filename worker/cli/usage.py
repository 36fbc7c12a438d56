"""Problems the user can fix, for every command: one error class, one way to report settings.

A command raises :class:`UsageError` (or the training module's ``TrainingError``) with a
message that says what to do; ``emotion-stream`` prints it as one block on stderr, prefixed
with the command, and exits with code 2. Settings that do not parse are reported here, the
same way for the worker's and the training module's settings: each bad variable by name.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

Settings = TypeVar("Settings", bound=BaseSettings)


class UsageError(Exception):
    """A bad option, setting or input; the message says what to do."""


def env_name(settings_class: type[BaseSettings], location: tuple) -> str:
    """The environment variable a settings field is read from."""
    prefix = settings_class.model_config.get("env_prefix", "")
    return (prefix + "_".join(str(part) for part in location)).upper() if location else "settings"


OTHER_VARIABLES = frozenset(
    {
        "EMOTION_TEST_BOOTSTRAP",  # the integration tests' broker
        "EMOTION_TEST_BROKER_BACKEND",
        "EMOTION_PARTITIONS",  # read by Compose, not by a program
        "EMOTION_RESULTS_CLEANUP_POLICY",
    }
)
"""``EMOTION_*`` variables that are not settings of a program but are read by the tests or Compose."""


def known_variables() -> frozenset[str]:
    """Every ``EMOTION_*`` variable some part of the project reads."""
    from emotion_stream.worker.settings import AggregatorSettings, DashboardSettings, WorkerSettings

    classes: list[type[BaseSettings]] = [WorkerSettings, AggregatorSettings, DashboardSettings]
    try:
        from emotion_stream.training.settings import TrainingSettings
    except ImportError:  # the worker's image ships without the training module
        pass
    else:
        classes.append(TrainingSettings)
    names = {env_name(cls, (field,)) for cls in classes for field in cls.model_fields}
    return frozenset(names | OTHER_VARIABLES)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``EMOTION_*`` variables no part of the project reads, each with the known one it most
    likely misspells (None when none is close)."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    unknown = sorted(name for name in environ if name.upper().startswith("EMOTION_") and name not in known)
    return [
        (name, next(iter(difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)), None))
        for name in unknown
    ]


def _check_variable_names() -> None:
    """A misspelt setting would be ignored without a word and its default used: refuse it, and
    name the setting it most likely meant. A variable close to none is only reported."""
    unknown = unknown_variables()
    typos = [f"  {name}: not a setting; did you mean {meant}?" for name, meant in unknown if meant]
    if typos:
        raise UsageError(
            "unknown settings:\n" + "\n".join(typos) + "\nFix these environment variables and try again."
        )
    for name, _ in unknown:
        print(
            f"emotion-stream: {name} is not a setting of any emotion-stream program; ignored", file=sys.stderr
        )


def load_settings(settings_class: type[Settings]) -> Settings:
    """``settings_class()`` read from the environment; a value that does not parse, or a
    misspelt variable, is a :class:`UsageError` naming each bad variable and why."""
    _check_variable_names()
    try:
        return settings_class()
    except SettingsError as exc:  # a list or mapping setting whose value is not JSON
        found = re.search(r'field "([^"]+)"', str(exc))
        name = env_name(settings_class, (found[1],)) if found else "a setting"
        raise UsageError(
            f"invalid settings:\n  {name}: not valid JSON (a list is written like "
            '["source", "lang"]; mind the shell\'s quoting)\nFix this environment variable and try again.'
        ) from None
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
