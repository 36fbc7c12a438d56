"""The live page loads nothing from elsewhere, and its vendored chart library is the pinned one."""

import hashlib
import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "worker" / "dashboard" / "static"


def test_the_page_and_its_scripts_load_nothing_from_another_origin():
    for path in STATIC.glob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path.name
            assert not re.search(r"""(fetch|EventSource|url)\(\s*["'](https?:)?//""", text), path.name
            assert "@import" not in text, path.name


def test_the_vendored_chart_library_matches_its_pinned_digests():
    vendor = STATIC / "vendor"
    sums = [line.split() for line in (vendor / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert {name.lstrip("*") for _, name in sums} == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for digest, name in sums:
        assert hashlib.sha256((vendor / name.lstrip("*")).read_bytes()).hexdigest() == digest, name
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    assert "static/vendor/uPlot.iife.min.js" in page and "static/vendor/uPlot.min.css" in page
