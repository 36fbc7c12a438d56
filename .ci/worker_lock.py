"""Writes requirements-worker.lock: the pins of requirements.lock that the worker needs at run
time (the closure of the project's own dependencies, no extras: no training, test or embedded
broker packages), for the Docker image. Run by .ci/lock in the environment it just installed."""

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("model",)  # the image serves a real model
APART = {"torch", "triton"}  # installed by the image from the PyTorch index, with its own dependencies


def runtime_closure() -> set[str]:
    stack = [Requirement(r) for r in distribution("emotion-stream").requires or []]
    seen: set[str] = set()
    while stack:
        requirement = stack.pop()
        if requirement.marker and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in ("", *EXTRAS)
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue
        seen.add(name)
        stack.extend(Requirement(r) for r in dist.requires or [])
    return seen


def main() -> int:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pins[canonicalize_name(line.split("==")[0])] = line.strip()
    needed = sorted(n for n in runtime_closure() - APART if not n.startswith("nvidia-") and n in pins)
    header = (
        "# The worker's run-time pins, a subset of requirements.lock (no training, test or embedded-broker\n"
        "# packages): what the Docker image installs with pip install --no-deps. Regenerate: .ci/lock\n"
    )
    (ROOT / "requirements-worker.lock").write_text(header + "\n".join(pins[n] for n in needed) + "\n")
    print(f"requirements-worker.lock: {len(needed)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
