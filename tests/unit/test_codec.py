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


def test_a_result_is_built_as_the_schemas_own_constructor_builds_it():
    """encode_result skips model_construct's pass over the fields: what it builds is the same
    model, field for field, and serializes the same; a value missing is refused."""
    from emotion_stream.schemas.messages import ResultSource
    from emotion_stream.worker.codec import _constructed

    values = {"topic": "posts", "partition": 3, "offset": 42}
    fast, slow = _constructed(ResultSource, dict(values)), ResultSource.model_construct(**values)
    assert fast == slow and fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    with pytest.raises(ValueError, match="a value for each of its 3 fields"):
        _constructed(ResultSource, {"topic": "posts", "partition": 3})
