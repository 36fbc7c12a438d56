"""The message mix of ``python -m bench.faults fuzz``: valid posts and hostile messages, drawn
by a seeded random generator (and seeded Hypothesis draws), each tagged with what the worker
should make of it.

A message's ``expect`` is ``result`` (a valid post: exactly one result), ``dead letter`` (the
worker must refuse it) or ``either`` (generated data whose fate the bench does not predict; it
only has to be answered one way or the other).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone

RESULT, LETTER, EITHER = "result", "dead letter", "either"
CODECS = ("gzip", "snappy", "lz4", "zstd")
HUGE_INT = b"9" * 5000  # past Python's 4,300-digit conversion limit
DEPTH = 5000
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Message:
    kind: str
    producer: str  # "plain", a codec, or "bomb" (a gzip producer of its own)
    key: bytes | None
    value: bytes | None
    expect: str
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    post_id: str | None = None  # the id of a post that must get a result


# Relative weights of the kinds drawn at each tick. Half the traffic is valid posts, so the
# hostile messages always sit between posts that must keep flowing; the heavy kinds (1.2 MB
# values and headers) are rare enough that the broker's memory is not what the run measures.
WEIGHTS: dict[str, float] = {
    "valid": 50,
    **{f"valid, {codec}": 3 for codec in CODECS},
    "int id": 1,
    "int text": 1,
    "int metadata": 1,
    "int message": 1,
    "nesting 5000 (metadata)": 1,
    "nesting 5000 (message)": 1,
    "lone surrogate": 1,
    "not UTF-8": 1,
    "tombstone": 1,
    "oversized value": 0.5,
    "oversized header": 0.5,
    "bad traceparent": 2,
    "created_at 2999": 1,
    "created_at 9999": 1,
    "created_at 0001": 1,
    "created_at garbage": 1,
    "hypothesis post": 4,
    "hypothesis JSON": 4,
    "hypothesis bytes": 4,
}


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _draw(strategy, n: int, seed: int) -> list:
    """``n`` values of ``strategy``, the same ones for the same seed (a seeded, shrink-free run
    of Hypothesis's engine, not ``.example()``, whose draws cannot be seeded)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    out: list = []

    @with_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value) -> None:
        out.append(value)

    collect()
    return out


def _strategies():
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**60), max_value=10**60)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=60),
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=40,
    )
    posts = st.fixed_dictionaries(
        {"id": st.one_of(st.text(min_size=1, max_size=300), st.integers()), "text": st.text(max_size=120)},
        optional={
            "created_at": st.one_of(
                st.text(max_size=30),
                st.integers(),
                st.datetimes().map(lambda d: d.isoformat()),
                st.just("9999-12-31T23:59:59Z"),
            ),
            "lang": st.text(max_size=40),
            "source": st.text(max_size=20),
            "author": st.text(max_size=20),
            "metadata": json_values,
        },
    )
    raw = st.one_of(
        st.binary(max_size=400),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.integers(min_value=1, max_value=8000).map(lambda n: b"[" * n + b"]" * n),
    )
    return posts, json_values, raw


class Mix:
    """Draws the next message of the mix; ``seed`` fixes the sequence of kinds and contents (the
    valid posts' ``created_at`` is the wall clock at the draw)."""

    def __init__(self, prefix: str, max_message_bytes: int, *, seed: int = 1, pool: int = 200) -> None:
        from emotion_stream.worker.model.keywords import DEFAULT_TABLE

        self.prefix = prefix
        self.max_message_bytes = max_message_bytes
        self.random = random.Random(seed)
        self.words = [w for words in DEFAULT_TABLE.values() for w in words] + ["ok", "fine", "meh"]
        self.kinds = list(WEIGHTS)
        self.weights = [WEIGHTS[k] for k in self.kinds]
        self.n = 0
        posts, json_values, raw = _strategies()
        self.pools = {
            "hypothesis post": [json.dumps(p).encode() for p in _draw(posts, pool, seed)],
            "hypothesis JSON": [json.dumps(v).encode() for v in _draw(json_values, pool, seed + 1)],
            "hypothesis bytes": _draw(raw, pool, seed + 2),
        }

    def _id(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n:07d}"

    def _text(self) -> str:
        return f"i feel {self.random.choice(self.words)} about post {self.n}"

    def _post(self, kind: str, expect: str = RESULT, producer: str = "plain", **fields) -> Message:
        post_id = self._id()
        body = {"id": post_id, "text": self._text(), **fields}
        if self.random.random() < 0.5:
            body["source"] = self.random.choice(["app", "web", "api"])
        if self.random.random() < 0.3:
            body["lang"] = self.random.choice(["en", "en-GB", "fr"])
        return Message(
            kind,
            producer,
            post_id.encode(),
            json.dumps(body).encode(),
            expect,
            post_id=post_id if expect == RESULT else None,
        )

    def bomb(self, megabytes: int) -> Message:
        """A post of ``megabytes`` of one byte: a few hundred kB once gzipped."""
        post_id = self._id()
        value = b'{"id": "' + post_id.encode() + b'", "text": "' + b"a" * (megabytes << 20) + b'"}'
        return Message(f"gzip bomb ({megabytes} MB)", "bomb", post_id.encode(), value, LETTER)

    def next(self) -> Message:
        kind = self.random.choices(self.kinds, self.weights)[0]
        if kind == "valid":
            return self._post(kind, created_at=_iso_now())
        if kind.startswith("valid, "):
            codec = kind.split(", ")[1]
            return self._post(kind, producer=codec, created_at=_iso_now())
        if kind.startswith("created_at "):
            given = kind.split(" ", 1)[1]
            if given == "garbage":
                garbage = ["yesterday", "2024-13-45T25:61:00Z", "", "9" * 40, "0000-00-00", "NaN"]
                return self._post(
                    kind, EITHER, created_at=self.random.choice([*garbage, 10**30, -1, 1.5e308])
                )
            return self._post(
                kind, created_at=f"{given}-01-01T00:00:00Z" if given != "9999" else "9999-12-31T23:59:59Z"
            )
        if kind == "bad traceparent":
            message = self._post(kind, created_at=_iso_now())
            message.headers = self.random.choice(
                [
                    [("traceparent", b"\xff\xfe garbage")],
                    [
                        ("traceparent", TRACEPARENT),
                        ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
                    ],
                    [("TraceParent", b"00-zz-zz-zz"), ("tracestate", b"x" * 10_000)],
                    [("traceparent", b"")] * 3 + [("tracestate", b"\x00\x01")],
                    [("traceparent", TRACEPARENT), ("tracestate", b"k=v"), ("tracestate", b"k=w")],
                ]
            )
            return message
        post_id = self._id()
        key = post_id.encode()
        quoted = json.dumps(post_id).encode()
        if kind == "int id":
            value = b'{"id": ' + HUGE_INT + b', "text": "hi"}'
        elif kind == "int text":
            value = b'{"id": ' + quoted + b', "text": ' + HUGE_INT + b"}"
        elif kind == "int metadata":
            value = b'{"id": ' + quoted + b', "text": "hi", "metadata": {"n": ' + HUGE_INT + b"}}"
        elif kind == "int message":
            value = HUGE_INT
        elif kind == "nesting 5000 (metadata)":
            nest = b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH
            value = b'{"id": ' + quoted + b', "text": "hi", "metadata": ' + nest + b"}"
        elif kind == "nesting 5000 (message)":
            value = b"[" * DEPTH + b"]" * DEPTH
        elif kind == "lone surrogate":
            value = b'{"id": ' + quoted + b', "text": "a \\ud800 b", "source": "\\udfff"}'
        elif kind == "not UTF-8":
            value = b'{"id": ' + quoted + b', "text": "caf\xe9 \xff\xfe"}'
        elif kind == "tombstone":
            value = None
        elif kind == "oversized value":
            pad = "x" * (self.max_message_bytes + 1000)
            value = json.dumps({"id": post_id, "text": "i feel glad", "metadata": {"pad": pad}}).encode()
        elif kind == "oversized header":
            value = json.dumps({"id": post_id, "text": "i feel calm"}).encode()
            return Message(kind, "plain", key, value, LETTER, [("tracestate", b"k=" + b"v" * 1_200_000)])
        else:  # the Hypothesis pools
            value = self.random.choice(self.pools[kind])
            return Message(kind, "plain", key if self.random.random() < 0.5 else None, value, EITHER)
        return Message(kind, "plain", key, value, LETTER)
