"""The configuration reference, generated from the settings' own field descriptions.

`emotion-stream settings` prints it; the README's configuration table is this output, and a
test fails when the two differ, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from emotion_stream.worker.cli.usage import env_name
from emotion_stream.worker.settings import (
    AggregatorSettings,
    ConnectionSettings,
    DashboardSettings,
    WorkerSettings,
)

SECTIONS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("Settings every program reads (the broker, the topics, limits, health and logs)", ConnectionSettings),
    ("Settings of the worker (`emotion-stream worker`; `demo` runs one)", WorkerSettings),
    ("Settings of the aggregator (`emotion-stream aggregate`)", AggregatorSettings),
    ("Settings of the live page (`emotion-stream dashboard`)", DashboardSettings),
)
try:
    from emotion_stream.training.settings import TrainingSettings

    SECTIONS += (
        ("Settings of the training (`emotion-stream train`, `tune`, `soup`, `evaluate`)", TrainingSettings),
    )
except ImportError:  # the worker's image ships without the training module
    pass


def _default(field: FieldInfo) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _choices(annotation: Any) -> list[str]:
    """The allowed values of a ``Literal`` field (also inside ``Optional``), else none."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return _choices(arg)
    return []


def _meaning(field: FieldInfo) -> str:
    text = " ".join((field.description or "").split())
    choices = _choices(field.annotation)
    if choices:
        text += " One of " + ", ".join(f"`{c}`" for c in choices) + "."
    return text.replace("|", "\\|")


def settings_table(settings_class: type[BaseSettings], skip: frozenset[str] = frozenset()) -> str:
    """A Markdown table of the fields of ``settings_class`` not in ``skip``: variable, default,
    meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings_class.model_fields.items():
        if name in skip:
            continue
        lines.append(f"| `{env_name(settings_class, (name,))}` | {_default(field)} | {_meaning(field)} |")
    return "\n".join(lines) + "\n"


def settings_reference() -> str:
    """Every section's settings, one table each; a setting appears once, in the first section
    that reads it (the worker's, aggregator's and page's sections add to every program's)."""
    parts, shown = [], frozenset[str]()
    for title, cls in SECTIONS:
        parts.append(f"{title}:\n\n{settings_table(cls, shown)}")
        shown |= frozenset(cls.model_fields)
    return "\n".join(parts)
