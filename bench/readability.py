"""What the worker does with posts it cannot read, and what the check costs end to end.

    python -m bench.readability --data ../shared/data/emotion --model artifacts/model [--bursts 3]

1. The project's own labelled set (``tests/data/languages.jsonl``: hand-written English posts,
   posts in other languages, posts with no words) through the worker's reader with its default
   settings: what each kind becomes (read, ``other_language``, ``no_text``); and the validation
   split's English posts: how many the check would wrongly set apart.
2. The detector's cost per post, single thread.
3. End to end through the embedded broker: the worker with the language check on and off, in
   alternating bursts (a fresh worker and broker each), the validation posts each time; the
   cost is one minus the median ratio of each "on" burst to the mean of the "off" bursts
   around it (the target: at most 5 %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

from bench.models import read_split
from bench.run import CACHE, _burst, _started
from bench.streaming import BenchStream

LABELLED = Path(__file__).resolve().parents[1] / "tests/data/languages.jsonl"


def default_reader():
    from emotion_stream.worker.language import detector
    from emotion_stream.worker.reading import Reader
    from emotion_stream.worker.settings import WorkerSettings

    return Reader(["en"], detector(), min_score=WorkerSettings.model_fields["language_min_score"].default)


def labelled_set() -> list[dict]:
    return [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]


def what_becomes_of_each_kind(reader) -> dict[str, dict[str, int]]:
    """For each kind of post in the labelled set (``en``, ``other``, ``none``), what the reader made of it."""
    table: dict[str, Counter] = {}
    for post in labelled_set():
        kind = "none" if post["lang"] == "none" else ("en" if post["lang"] == "en" else "other")
        table.setdefault(kind, Counter())[reader.read(post["text"]).unreadable or "read"] += 1
    return {kind: dict(counts) for kind, counts in sorted(table.items())}


def english_set_apart(reader, texts: list[str]) -> dict:
    flagged = [(t, r) for t in texts if (r := reader.read(t)).unreadable is not None]
    return {
        "posts": len(texts),
        "set apart": len(flagged),
        "share": round(len(flagged) / len(texts), 5),
        "examples": [(t, r.unreadable, r.language, r.language_score) for t, r in flagged[:10]],
    }


def cost_per_post_us(reader, texts: list[str]) -> float:
    reader.read(texts[0])  # load
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for text in texts:
            reader.read(text)
        runs.append((time.perf_counter() - started) / len(texts) * 1e6)
    return round(statistics.median(runs), 1)


def end_to_end(model: Path, texts: list[str], bursts: int) -> dict:
    def rate(check: bool, i: int) -> float:
        env = {"EMOTION_MODEL": str(model), "EMOTION_LANGUAGE_CHECK": str(check).lower()}
        with BenchStream(env, log=CACHE / "readability-worker.log") as stream:
            _started(stream, texts)
            return _burst(stream, texts, f"{'on' if check else 'off'}{i}")

    off, on = [rate(False, 0)], []
    for i in range(bursts):
        on.append(rate(True, i))
        off.append(rate(False, i + 1))
    ratios = [r / ((a + b) / 2) for r, a, b in zip(on, off, off[1:], strict=False)]
    return {
        "check off posts/s": [round(r, 1) for r in off],
        "check on posts/s": [round(r, 1) for r in on],
        "on / off (paired)": [round(r, 3) for r in ratios],
        "cost": round(1 - statistics.median(ratios), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.readability", description=__doc__)
    parser.add_argument("--data", default="../shared/data/emotion")
    parser.add_argument("--model", default="artifacts/model")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--no-stream", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    texts, _ = read_split(Path(args.data), "validation")
    reader = default_reader()
    report = {
        "labelled set": what_becomes_of_each_kind(reader),
        "validation (English) set apart": english_set_apart(reader, texts),
        "reader cost per post (us, one thread)": cost_per_post_us(reader, texts),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False), flush=True)
    if not args.no_stream:
        report["end to end"] = end_to_end(Path(args.model), texts, args.bursts)
        print(json.dumps(report["end to end"], indent=2), flush=True)
    (CACHE / "readability.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
