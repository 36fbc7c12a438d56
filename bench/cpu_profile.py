"""Where the CPU goes end to end: CPU seconds per 1,000 posts, process by process.

    python -m bench.cpu_profile --data ../shared/data/emotion --model artifacts/model [--bursts 2]

A fresh embedded broker and worker (default settings, EMOTION_NUMERIC=auto), warmed up, then
bursts of the validation posts. Around each burst it reads the CPU time (user + system, from
/proc) of the worker's own process, its model process, the broker and the load generator (the
producer and the result reader), and prints each one's CPU seconds per 1,000 posts beside the
burst's posts/s. The model alone (the model runner in this process, the same posts, the same
threads) gives what the model needs per 1,000 posts when nothing else runs: on 2 cores, the
stream reaches the model's own rate only when the rest fits beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import time
from pathlib import Path

from bench.host import setting
from bench.models import read_split
from bench.run import CACHE, _burst, _started
from bench.streaming import BenchStream

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included, its children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        path = task / "children"
        if path.is_file():
            found += [int(c) for c in path.read_text().split()]
    return found


def processes(stream: BenchStream) -> dict[str, list[int]]:
    worker = stream.worker.process.pid
    mine = children(os.getpid())
    return {
        "worker": [worker],
        "model process": children(worker),
        "broker": [stream.broker.pid],
        "load generator": [p for p in mine if p not in (worker, stream.broker.pid)],
    }


def sample(groups: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for name, pids in groups.items():
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += cpu_seconds(pid)
        out[name] = total
    return out


def model_alone_cpu(model: Path, texts: list[str]) -> dict:
    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier

    classifier = EmotionClassifier(str(model), ModelOptions(device="cpu", numeric="auto"))
    try:
        classifier.predict(texts[:256])
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for start in range(0, len(texts), 128):
            classifier.predict(texts[start : start + 128])
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        classifier.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    per_thousand = round(cpu / len(texts) * 1000, 3)
    return {"posts/s": round(len(texts) / seconds, 1), "cpu s per 1000 posts": per_thousand}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_profile", description=__doc__)
    parser.add_argument("--data", default="../shared/data/emotion")
    parser.add_argument("--model", default="artifacts/model")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument(
        "--env", nargs="*", type=setting, default=[], help="extra worker settings, NAME=VALUE"
    )
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    texts, _ = read_split(Path(args.data), "validation")
    report: dict = {"model alone": model_alone_cpu(Path(args.model), texts), "bursts": []}
    env = {"EMOTION_MODEL": args.model, **dict(args.env)}
    with BenchStream(env, log=CACHE / "cpu-profile-worker.log") as stream:
        _started(stream, texts)
        groups = processes(stream)
        for i in range(args.bursts):
            before = sample(groups)
            started = time.perf_counter()
            rate = _burst(stream, texts, f"p{i}")
            wall = time.perf_counter() - started
            after = sample(groups)
            per_thousand = {k: round((after[k] - before[k]) / len(texts) * 1000, 3) for k in groups}
            report["bursts"].append(
                {
                    "posts/s": round(rate, 1),
                    "cpu s per 1000 posts": per_thousand,
                    "total cpu s per 1000 posts": round(sum(per_thousand.values()), 3),
                    "cpu busy share of 2 cores": round(
                        sum(after[k] - before[k] for k in groups) / wall / 2, 3
                    ),
                }
            )
    print(json.dumps(report, indent=2))
    (CACHE / "cpu_profile.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
