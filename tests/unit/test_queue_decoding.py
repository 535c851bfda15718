"""Body decoding by ``CF-Content-Type`` (cloudflare-apis.md §1.5): never raises."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from flowcraft_puller.queue.cloudflare import pulled_message
from flowcraft_puller.queue.decoding import V8_ERROR, content_type_of, decode_body

JOB = {"runId": "run-1", "blueprintId": "bp", "nodeId": "A"}
JOB_TEXT = orjson.dumps(JOB).decode()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def test_json_bodies_arrive_base64_and_decode_to_json() -> None:
    decoded = decode_body(b64(JOB_TEXT), "json")
    assert decoded.value == JOB
    assert decoded.error is None
    assert decoded.size == len(JOB_TEXT)


def test_json_bodies_sent_as_a_plain_json_string_are_accepted() -> None:
    # The "plain JSON string observed in production" (§1.5 caveat).
    decoded = decode_body(JOB_TEXT, "json")
    assert decoded.value == JOB
    assert decoded.error is None


@pytest.mark.parametrize("value", [1234, True, None, "text", [1, 2], 1.5])
def test_plain_json_scalars_that_look_like_base64_still_decode(value: Any) -> None:
    assert decode_body(orjson.dumps(value).decode(), "json").value == value


def test_a_json_body_that_already_is_a_json_value_is_taken_as_is() -> None:
    assert decode_body(JOB, "json").value == JOB


def test_a_json_body_that_is_neither_base64_nor_json_is_an_error() -> None:
    decoded = decode_body("{not json", "json")
    assert decoded.value is None
    assert decoded.error == "json body is neither base64-encoded JSON nor plain JSON"


def test_a_json_message_without_body_is_an_error() -> None:
    assert decode_body(None, "json").error == "json message has no body"


def test_bytes_bodies_holding_json_decode_to_json() -> None:
    assert decode_body(b64(JOB_TEXT), "bytes").value == JOB


def test_bytes_bodies_that_are_not_json_are_delivered_as_bytes() -> None:
    decoded = decode_body(b64(b"\x00\xffbinary"), "bytes")
    assert decoded.value == b"\x00\xffbinary"
    assert decoded.error is None
    assert decoded.size == 8


@pytest.mark.parametrize("body", ["not base64!", "abc", 42])
def test_bytes_bodies_that_are_not_base64_are_errors(body: Any) -> None:
    decoded = decode_body(body, "bytes")
    assert decoded.value is None
    assert decoded.error is not None
    assert "base64" in decoded.error


def test_text_bodies_holding_a_json_object_decode_to_it() -> None:
    assert decode_body(f"  {JOB_TEXT}", "text").value == JOB


@pytest.mark.parametrize("text", ["hello", "123", "true", '"quoted"', "{broken"])
def test_other_text_bodies_stay_text(text: str) -> None:
    decoded = decode_body(text, "text")
    assert decoded.value == text
    assert decoded.error is None


def test_a_text_body_that_is_not_a_string_is_an_error() -> None:
    assert decode_body({"a": 1}, "text").error == "text body is not a string"


def test_v8_bodies_are_rejected_with_a_clear_message() -> None:
    decoded = decode_body(b64(b"\xff\x0fo"), "v8")
    assert decoded.value is None
    assert decoded.error == V8_ERROR
    assert "send job messages with content type json" in V8_ERROR


def test_unknown_content_types_are_errors() -> None:
    decoded = decode_body("x", "xml")
    assert decoded.error == "unknown content type 'xml'; expected json, text or bytes"


@pytest.mark.parametrize("body", ["\ud800", '"\\ud800"', "\ud800{}"])
@pytest.mark.parametrize("content_type", ["json", "bytes", "text", "v8"])
def test_decoding_never_raises_on_lone_surrogates(body: str, content_type: str) -> None:
    decode_body(body, content_type)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"CF-Content-Type": "text", "CF-sourceMessageSource": "dash"}, "text"),
        ({}, "json"),
        (None, "json"),
        ({"CF-Content-Type": ""}, "json"),
        ({"CF-Content-Type": 5}, "json"),
    ],
)
def test_the_content_type_comes_from_the_metadata_with_json_as_default(
    metadata: Any, expected: str
) -> None:
    assert content_type_of(metadata) == expected


def test_a_pulled_entry_becomes_a_queue_message() -> None:
    raw = {
        "id": "m1",
        "body": b64(JOB_TEXT),
        "timestamp_ms": 1_700_000_000_000,
        "attempts": 2,
        "lease_id": "lease",
        "metadata": {"CF-sourceMessageSource": "dash", "CF-Content-Type": "json"},
    }
    message = pulled_message(raw)
    assert message is not None
    assert (message.id, message.lease_id, message.attempts) == ("m1", "lease", 2)
    assert message.timestamp_ms == 1_700_000_000_000
    assert message.body == JOB
    assert message.content_type == "json"
    assert message.decode_error is None


def test_a_pulled_v8_entry_carries_the_decode_error() -> None:
    raw = {"id": "m", "lease_id": "l", "body": "AAAA", "metadata": {"CF-Content-Type": "v8"}}
    message = pulled_message(raw)
    assert message is not None
    assert message.decode_error == V8_ERROR
    assert message.content_type == "v8"


@pytest.mark.parametrize(
    "raw", [None, "x", {"id": "m"}, {"lease_id": "l"}, {"id": "m", "lease_id": ""}]
)
def test_pulled_entries_without_id_or_lease_are_skipped(raw: Any) -> None:
    assert pulled_message(raw) is None
