"""The live page in headless Chromium, fed without a broker: the emotion mix counts only the posts
the model could read and was confident about; the unsure, other-language and no-text ones are
counted apart, and marked in the recent results."""

from __future__ import annotations

import json
import random
import time

import pytest

from emotion_stream.schemas.labels import LABELS
from tests.browser import HeadlessChromium, find_chromium
from tests.web.live_page import READY, WINDOW_S, aggregate, fed_state, result, serving

SEEN = """JSON.stringify({
  mix: Object.fromEntries([...document.querySelectorAll('#mix [data-label]')].map(e => [e.dataset.label,
    [Number(e.querySelector('.count').textContent), e.querySelector('.share').textContent]])),
  apart: Object.fromEntries([...document.querySelectorAll('#apart [data-kind]')].map(e =>
    [e.dataset.kind, [Number(e.querySelector('.count').dataset.value), e.textContent, e.title]])),
  note: document.getElementById('apart-note').textContent,
  posts: Number(document.getElementById('posts-hour').dataset.value),
  tags: Object.fromEntries([...document.querySelectorAll('#recent tbody tr')].map(r =>
    [r.dataset.id, (r.querySelector('.apart-tag') || {}).textContent || null])),
})"""

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)"
)


async def _seen(page: HeadlessChromium) -> dict:
    return json.loads(await page.evaluate(SEEN))


async def test_the_mix_leaves_out_the_posts_set_apart_and_three_counters_show_them(tmp_path):
    state, expected = fed_state()
    async with serving(state) as url, HeadlessChromium(1280, 820) as page:
        await page.goto(url)
        await page.wait_for(READY, timeout=30)
        seen = await _seen(page)
        screenshot = await page.screenshot(tmp_path / "dashboard.png")

        readable = sum(expected.mix.values())
        assert {label: count for label, (count, _) in seen["mix"].items()} == {
            label: expected.mix[label] for label in LABELS
        }
        assert {label: share for label, (_, share) in seen["mix"].items()} == {
            label: f"{round(expected.mix[label] / readable * 100)}%" for label in LABELS
        }
        assert {kind: count for kind, (count, _, _) in seen["apart"].items()} == dict(expected.apart)
        labels = {kind: (text, title) for kind, (_, text, title) in seen["apart"].items()}
        assert labels["unsure"] == (
            f"unsure {expected.apart['unsure']}",
            "unsure: top score under the confidence threshold",
        )
        assert labels["other_language"][0].startswith("other language ")
        assert labels["other_language"][1] == "other language: not a language the model reads"
        assert labels["no_text"][0].startswith("no text ") and "only links, mentions" in labels["no_text"][1]
        assert seen["note"].startswith("Set apart, not in the mix — ")
        assert all(title in seen["note"] for _, title in labels.values())
        assert seen["posts"] == expected.posts == readable + sum(expected.apart.values())
        assert len(seen["tags"]) == 20 and {i: t for i, t in seen["tags"].items() if t} == expected.tags

        # Live, without a reload: a window of posts all set apart, and a result without text.
        rng = random.Random(1)
        newest = max(state.windows)
        later = aggregate(time.time() // WINDOW_S * WINDOW_S + WINDOW_S, rng, closed=False)
        later.update(counts=dict.fromkeys(LABELS, 0), posts=0, unsure=2, other_language=3, no_text=4)
        state.on_record(state.settings.aggregates_topic, json.dumps(later).encode(), 1)
        ident, value = result(99, rng, ("no_text", True, None))
        state.on_record(state.settings.output_topic, value, int(time.time() * 1000))
        no_text = "document.querySelector('#apart [data-kind=no_text] .count').dataset.value"
        top = "document.querySelector('#recent tbody tr').dataset.id"
        await page.wait_for(f"{no_text} === '{expected.apart['no_text'] + 4}' && {top} === '{ident}'", 15)
        after = await _seen(page)
        assert newest < max(state.windows)
        assert after["mix"] == seen["mix"]
        assert after["apart"]["unsure"][0] == expected.apart["unsure"] + 2
        assert after["apart"]["other_language"][0] == expected.apart["other_language"] + 3
        assert after["posts"] == expected.posts + 9
        assert after["tags"][ident] == "no text"

    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    print(f"screenshot: {screenshot}")
