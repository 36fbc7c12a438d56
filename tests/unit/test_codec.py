import pytest

from emotion_stream.schemas import Post
from emotion_stream.worker.codec import Rejected, decode_post


def test_valid_post_decodes():
    post = decode_post(b'{"id": "1", "text": "i feel calm", "extra": true}')
    assert isinstance(post, Post) and post.text == "i feel calm"


@pytest.mark.parametrize(
    "raw,kind,fragment",
    [
        (None, "invalid_post", "tombstone"),
        (b"\xff\xfe", "not_utf8", "not UTF-8"),
        (b"{not json", "not_json", "not JSON"),
        (b"[1, 2]", "invalid_post", "JSON object"),
        (b'"just a string"', "invalid_post", "JSON object"),
        (b'{"id": "1"}', "invalid_post", "text: Field required"),
        (b'{"id": "1", "text": ""}', "invalid_post", "text: must not be blank"),
        (b"[" * 100000 + b"]" * 100000, "not_json", "JSON"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(raw, kind, fragment):
    outcome = decode_post(raw)
    assert isinstance(outcome, Rejected)
    assert outcome.error.kind == kind
    assert fragment in outcome.error.message
