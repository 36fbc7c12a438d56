"""The test kit as another team meets it: the wheel installed (not editable) into a fresh virtual
environment without torch, beside a project with packages of its own called `worker`, `schemas`
and `training`, whose pytest run uses the `emotion_worker` fixture against this suite's broker."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

THEIR_TEST = """
import asyncio
import json
import os

import schemas
import training
import worker
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def test_our_own_packages_are_still_ours():
    assert (worker.OWNER, schemas.OWNER, training.OWNER) == ("us", "us", "us")


async def _round_trip(bootstrap, posts):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for post in posts:
            await producer.send_and_wait("their-posts", json.dumps(post).encode(), key=post["id"].encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer("their-emotions", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    labels = {}
    try:
        while len(labels) < len(posts):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    result = json.loads(record.value)
                    labels[result["id"]] = result["label"]
    finally:
        await consumer.stop()
    return labels


def test_the_fixture_labels_our_posts(emotion_worker):
    bootstrap = os.environ["THEIR_BOOTSTRAP"]
    running = emotion_worker(bootstrap, input_topic="their-posts", output_topic="their-emotions",
                             dlq_topic="their-dlq", backend=os.environ["THEIR_BACKEND"])
    posts = [{"id": "a", "text": "I am so happy"}, {"id": "b", "text": "scared of the dark"}]
    labels = asyncio.run(asyncio.wait_for(_round_trip(bootstrap, posts), timeout=60))
    assert labels == {"a": "joy", "b": "fear"}
    assert running.stop() == 0
"""


def _closure_pins() -> list[str]:
    """The locked versions of what the base install and pytest need (no extras: no torch)."""
    script = next((ROOT / ".ci").glob("worker_lock.*"))  # the lock script CI runs
    spec = importlib.util.spec_from_file_location("worker_lock", script)
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    return lock.pins(lock.runtime_closure(extras=(), roots=("emotion-stream", "pytest")))


def _run(command: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_wheel_installs_beside_a_project_with_its_own_worker_and_its_pytest_uses_the_fixture(
    broker, tmp_path
):
    # Built from a copy of what the distribution is made of: the build leaves nothing in the checkout.
    source = tmp_path / "source"
    for name in ("worker", "training", "schemas"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        source,
    )
    (wheel,) = wheels.glob("emotion_stream-*.whl")

    venv = tmp_path / "their-venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    requirements = tmp_path / "pins.txt"
    requirements.write_text("\n".join(_closure_pins()) + "\n")
    _run([*pip, "-r", str(requirements)], tmp_path, timeout=600)
    _run([*pip, str(wheel)], tmp_path)
    installed = _run(
        [
            python,
            "-c",
            "import importlib.util as u; print([n for n in ('torch', 'transformers') if u.find_spec(n)])",
        ],
        tmp_path,
    )
    assert installed.strip() == "[]", "the test kit pulled in torch or transformers"

    project = tmp_path / "their-project"
    for name in ("worker", "schemas", "training"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text('OWNER = "us"\n')
    (project / "tests").mkdir()
    (project / "tests" / "test_theirs").with_suffix(".py").write_text(textwrap.dedent(THEIR_TEST))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOTION_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        THEIR_BOOTSTRAP=broker.bootstrap,
        THEIR_BACKEND=broker.backend,
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project, env=env)
    assert "2 passed" in out, out
    assert sorted(p.name for p in project.iterdir()) == ["schemas", "tests", "training", "worker"], (
        "the fixture left files in the project it ran in"
    )
