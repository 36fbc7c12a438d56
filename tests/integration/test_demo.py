"""`emotion-stream demo`, the main job, run as a newcomer runs it (with the tiny model)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_labels_every_sample_post_and_dead_letters_the_malformed_ones(tiny_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    env.update(EMOTION_MODEL=str(tiny_model), EMOTION_TORCH_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", "demo", "--timeout", "120"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "worker ready: model tiny-emotion" in out
    summary = next(line for line in out.splitlines() if "posts labelled" in line)
    labelled, dead = summary.split(" posts labelled, ")[0], summary.split(", ")[1].split(" dead letters")[0]
    done, sent = labelled.split("/")
    assert done == sent and int(sent) > 10
    assert dead.split("/")[0] == dead.split("/")[1] and int(dead.split("/")[1]) >= 3
    assert "DEAD LETTER  not_utf8" in out and "worker exit code 0" in out
    assert (tmp_path / "artifacts" / "demo" / "worker.log").is_file()
    # It ends with the sample's emotion mix, counted by the aggregator, and the page's address.
    mix_at = out.index("emotion mix of the sample (the aggregates topic):")
    mix = {
        line.split()[0]: int(line.split()[1])
        for line in out[mix_at:].splitlines()[1:]
        if line.startswith("  ")
    }
    assert sum(mix.values()) == int(sent)
    assert "live page: http://127.0.0.1:" in out and "dashboard: http://127.0.0.1:" in out
