"""Properties of the windowing over arbitrary input (issue 24): any time, any order, any JSON.

Whatever arrives, no exception escapes, every input is accounted for exactly once (counted,
too late, out of range or skipped), what was counted is what the published windows add up to,
and the windows' clock never runs ahead of the wall clock.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emotion_stream.schemas.aggregates import EmotionAggregate
from emotion_stream.schemas.labels import LABELS
from emotion_stream.worker.aggregates.windows import Windows

# At least 150 examples: the calendar's edges and garbage are a small share of the draws. A
# longer profile (HYPOTHESIS_PROFILE) searches longer.
SETTINGS = settings(
    max_examples=max(150, settings().max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_ish = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# Offsets from the wall clock at the time of the test: around now (most of the traffic),
# within and beyond the skew, and anywhere in the calendar.
near_now = st.floats(min_value=-7200, max_value=7200, allow_nan=False)
anywhere = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
).flatmap(
    lambda d: st.sampled_from(
        [timezone.utc, timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))]
    ).map(lambda tz: d.replace(tzinfo=tz))
)
times = st.one_of(
    near_now.map(lambda offset: ("offset", offset)),
    anywhere.map(lambda moment: ("text", _iso(moment))),
    st.sampled_from(
        ["9999-12-31T23:59:30Z", "2999-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "not a time", "", "Z" * 70]
    ).map(lambda text: ("text", text)),
    json_ish.map(lambda value: ("text", value)),
)
record_times = st.one_of(
    st.none(),
    near_now.map(lambda offset: ("offset", offset)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda value: ("raw", value)),
    st.integers(min_value=-(2**63), max_value=2**63).map(lambda value: ("raw", value)),
)
labels = st.one_of(st.sampled_from(LABELS), json_ish)
scores = st.one_of(st.dictionaries(st.sampled_from(LABELS), json_ish, max_size=len(LABELS)), json_ish)
dimensions = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"source": st.one_of(st.sampled_from(["app", "web"]), json_ish), "lang": json_ish}
    ),
    json_ish,
)
results = st.fixed_dictionaries(
    {"label": labels},
    optional={"scores": scores, "posted_at": times, "processed_at": times, "dimensions": dimensions},
)
dead_letters = st.fixed_dictionaries({}, optional={"failed_at": times, "error": json_ish})
inputs = st.lists(
    st.tuples(
        st.sampled_from(["result", "dead_letter", "other"]), results, dead_letters, json_ish, record_times
    ),
    max_size=40,
)


def _resolve(value, now: float):
    """A drawn time as the input carries it (an offset becomes an ISO time near ``now``)."""
    if isinstance(value, tuple) and value[0] == "offset":
        return _iso(datetime.fromtimestamp(now + value[1], timezone.utc))
    return value[1] if isinstance(value, tuple) else value


def _materialize(drawn, now: float) -> tuple[str, object, object]:
    kind, result, letter, other, record_time = drawn
    if kind == "result":
        message = {
            k: (_resolve(v, now) if k in ("posted_at", "processed_at") else v) for k, v in result.items()
        }
    elif kind == "dead_letter":
        message = {k: (_resolve(v, now) if k == "failed_at" else v) for k, v in letter.items()}
    else:
        message = other
    at = None
    if record_time is not None:
        at = now + record_time[1] if record_time[0] == "offset" else record_time[1]
    return kind, message, at


@SETTINGS
@given(
    inputs=inputs, publish_every=st.integers(min_value=1, max_value=10), size_s=st.sampled_from([7.0, 60.0])
)
def test_any_input_in_any_order_is_accounted_for_and_never_bends_the_clock(inputs, publish_every, size_s):
    skew_s = 300.0
    windows = Windows(size_s, 10.0, 3600.0, ("source", "lang"), max_future_s=skew_s, max_past_s=86400.0)
    now = time.time()
    published: dict[str, dict] = {}
    results_in = letters_in = others = 0
    for i, drawn in enumerate(inputs):
        kind, message, at = _materialize(drawn, now)
        if kind == "result" or kind == "other":
            windows.add_result(message, record_time=at)
            results_in += kind == "result"
            others += kind == "other"
        else:
            windows.add_dead_letter(message, record_time=at)
            letters_in += 1
        assert windows.newest <= time.time() + skew_s
        if i % publish_every == 0:
            published.update(windows.due())
    published.update(windows.due())

    counted = windows.results_counted + windows.dead_letters_counted
    assert counted + windows.too_late + windows.out_of_range + windows.invalid == len(inputs)
    assert windows.retimed <= counted
    totals = [r for r in published.values() if r["dimension"] == {}]
    # Every window ever published holds its latest record in ``published``: what was counted
    # adds up there, windows since forgotten included.
    assert sum(r["posts"] for r in totals) == windows.results_counted
    assert sum(r["dead_letters"] for r in totals) == windows.dead_letters_counted
    for name in ("source", "lang"):
        assert (
            sum(r["posts"] for r in published.values() if name in r["dimension"]) <= windows.results_counted
        )
    for record in published.values():
        EmotionAggregate.model_validate(record)
        json.loads(json.dumps(record, allow_nan=False))  # publishable: no NaN or infinity
        assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in record["mean_scores"].values())
        start = datetime.fromisoformat(record["window_start"].replace("Z", "+00:00")).timestamp()
        assert now - 86400.0 - size_s <= start <= time.time() + skew_s


@SETTINGS
@given(
    records=st.lists(
        st.one_of(
            json_ish,
            st.fixed_dictionaries(
                {},
                optional={
                    "window_start": times,
                    "window_end": times,
                    "dimension": st.one_of(st.just({}), json_ish),
                    "counts": st.one_of(st.dictionaries(st.sampled_from(LABELS), json_ish), json_ish),
                    "mean_scores": st.one_of(st.dictionaries(st.sampled_from(LABELS), json_ish), json_ish),
                    "posts": json_ish,
                    "dead_letters": json_ish,
                    "closed": json_ish,
                },
            ),
        ),
        max_size=20,
    )
)
def test_any_recovered_record_is_restored_or_refused_and_never_bends_the_clock(records):
    windows = Windows(60.0, 10.0, 3600.0, ("source",), max_future_s=300.0, max_past_s=86400.0)
    now = time.time()
    outcomes = [
        windows.restore({k: _resolve(v, now) for k, v in r.items()} if isinstance(r, dict) else r)
        for r in records
    ]
    assert set(outcomes) <= {"restored", "expired", "out_of_range", "invalid"}
    assert windows.newest <= time.time() + 300.0
    for _, record in windows.due():
        EmotionAggregate.model_validate(record)
        json.dumps(record, allow_nan=False)


raw_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    json_ish.map(lambda value: json.dumps(value).encode()),  # NaN and Infinity included: not JSON
    results.map(lambda value: json.dumps({k: v[1] if isinstance(v, tuple) else v for k, v in value.items()})),
    st.just(b"[" * 100 + b"]" * 100),  # nested deeper than the reader's limit
    st.just(b'{"label": "joy", "n": ' + b"9" * 200 + b"}"),  # an integer too long to read
    st.just(b'{"label": "joy", "posted_at": "\\ud800"}'),  # a lone surrogate
)


@SETTINGS
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from(["out", "dlq"]),
            raw_values,
            st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70), st.floats()),
        ),
        max_size=30,
    )
)
def test_any_bytes_on_the_aggregators_topics_are_read_counted_or_skipped_never_raised(records):
    from emotion_stream.worker.aggregates.service import Aggregator
    from emotion_stream.worker.settings import AggregatorSettings

    aggregator = Aggregator(AggregatorSettings(output_topic="out", dlq_topic="dlq", _env_file=None))
    for topic, value, timestamp_ms in records:
        aggregator.count(topic, value.encode() if isinstance(value, str) else value, timestamp_ms)
    w = aggregator.windows
    accounted = (
        w.results_counted
        + w.dead_letters_counted
        + w.too_late
        + w.out_of_range
        + w.invalid
        + sum(aggregator.skipped.values())
    )
    assert sum(aggregator.read.values()) == len(records) == accounted
    assert set(aggregator.skipped) <= {"not_json", "not_utf8", "too_large", "invalid_post"}
    assert w.newest <= time.time() + aggregator.settings.aggregate_max_skew_s
