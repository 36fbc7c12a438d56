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


def runtime_closure(
    extras: tuple[str, ...] = EXTRAS, roots: tuple[str, ...] = ("emotion-stream",)
) -> set[str]:
    """The canonical names of every distribution ``roots`` need at run time with ``extras``."""
    stack = [Requirement(f"{root}[{','.join(extras)}]") for root in roots]
    seen: set[str] = set()
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras)
        ):
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue
        wanted = tuple(sorted(requirement.extras))
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        for text in dist.requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ("", *wanted)):
                child.marker = None
                stack.append(child)
    return {name for name, _ in seen}


def pins(names: set[str]) -> list[str]:
    """The lines of requirements.lock that pin ``names`` (what is not in the lock is left out)."""
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            locked[canonicalize_name(line.split("==")[0])] = line.strip()
    return [locked[n] for n in sorted(names) if n in locked]


def main() -> int:
    needed = pins({n for n in runtime_closure() - APART if not n.startswith("nvidia-")})
    header = (
        "# The worker's run-time pins, a subset of requirements.lock (no training, test or embedded-broker\n"
        "# packages): what the Docker image installs with pip install --no-deps. Regenerate: .ci/lock\n"
    )
    (ROOT / "requirements-worker.lock").write_text(header + "\n".join(needed) + "\n")
    print(f"requirements-worker.lock: {len(needed)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
