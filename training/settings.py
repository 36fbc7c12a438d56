"""The training module's settings: the one place that reads ``EMOTION_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainingSettings(BaseSettings):
    """Defaults a command-line option can override. Each field is read from ``EMOTION_<NAME>``."""

    # The worker's settings share the prefix, so variables meant for it must be ignored here.
    model_config = SettingsConfigDict(env_prefix="EMOTION_", extra="ignore", protected_namespaces=())

    data_dir: Path | None = Field(
        default=None,
        description="Directory with train/validation files; unset means the hub dataset dair-ai/emotion.",
    )
    hub_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds to wait for the model hub before falling back to the offline base model.",
    )


def resolve_data_dir(explicit: Path | None) -> Path | None:
    """The data directory to use: the option when given, else EMOTION_DATA_DIR, else None (hub)."""
    return explicit if explicit is not None else TrainingSettings().data_dir
