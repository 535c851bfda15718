"""Decode the ``body`` of a pulled message according to ``metadata["CF-Content-Type"]``.

Cloudflare sends ``json`` and ``bytes`` bodies base64-encoded and ``text`` as is; a plain JSON
string tagged ``json`` has also been seen in production, and ``v8`` (structured clone) cannot be
decoded outside Workers (``../shared/reference/cloudflare-apis.md`` §1.5). Job bodies are JSON
objects, so the rules lean towards recovering JSON:

- ``json``: base64 → JSON; failing that, the string itself parsed as JSON. A body that already
  arrives as a non-string JSON value is taken as is.
- ``bytes``: base64 → the bytes, parsed as JSON when they are UTF-8 JSON, else delivered as
  ``bytes`` (the consumer decides; a job consumer rejects them as a malformed job).
- ``text``: the string, parsed as JSON when it holds a JSON object or array, else the string.
- ``v8`` and unknown types: no body, a ``decode_error`` saying why.

Decoding never raises: every failure is reported in :attr:`DecodedBody.error`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final

import orjson

DEFAULT_CONTENT_TYPE: Final = "json"
"""The content type assumed when the metadata has none: Cloudflare's default for Worker sends
with a compatibility date after 2024-03-18 (cloudflare-apis.md §1.5)."""

V8_ERROR: Final = (
    "v8 content cannot be decoded outside Workers; send job messages with content type json"
)


@dataclass(frozen=True, slots=True)
class DecodedBody:
    """A decoded body: ``value`` when it could be decoded, else ``error``; ``size`` in bytes."""

    value: Any = None
    error: str | None = None
    size: int = 0


def content_type_of(metadata: Any) -> str:
    """The ``CF-Content-Type`` of a pulled message's metadata, ``json`` when absent."""
    if isinstance(metadata, dict):
        content_type = metadata.get("CF-Content-Type")
        if isinstance(content_type, str) and content_type:
            return content_type
    return DEFAULT_CONTENT_TYPE


def decode_body(body: Any, content_type: str) -> DecodedBody:
    """Decode a pulled message body of the given content type (see the module rules)."""
    if content_type == "json":
        return _decode_json(body)
    if content_type == "bytes":
        return _decode_bytes(body)
    if content_type == "text":
        return _decode_text(body)
    if content_type == "v8":
        return DecodedBody(error=V8_ERROR, size=_wire_size(body))
    return DecodedBody(
        error=f"unknown content type {content_type!r}; expected json, text or bytes",
        size=_wire_size(body),
    )


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _wire_size(body: Any) -> int:
    return _utf8_size(body) if isinstance(body, str) else 0


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_json(data: bytes | str) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(data)
    except orjson.JSONDecodeError:
        return False, None


def _decode_json(body: Any) -> DecodedBody:
    if body is None:
        return DecodedBody(error="json message has no body")
    if not isinstance(body, str):
        return DecodedBody(value=body, size=len(orjson.dumps(body)))
    raw = _base64(body)
    if raw is not None:
        ok, value = _parse_json(raw)
        if ok:
            return DecodedBody(value=value, size=len(raw))
    ok, value = _parse_json(body)
    if ok:
        return DecodedBody(value=value, size=_utf8_size(body))
    return DecodedBody(
        error="json body is neither base64-encoded JSON nor plain JSON", size=_wire_size(body)
    )


def _decode_bytes(body: Any) -> DecodedBody:
    if not isinstance(body, str):
        return DecodedBody(error="bytes body is not a base64 string")
    raw = _base64(body)
    if raw is None:
        return DecodedBody(error="bytes body is not valid base64", size=_wire_size(body))
    ok, value = _parse_json(raw)
    return DecodedBody(value=value if ok else raw, size=len(raw))


def _decode_text(body: Any) -> DecodedBody:
    if not isinstance(body, str):
        return DecodedBody(error="text body is not a string")
    size = _utf8_size(body)
    if body.lstrip()[:1] in ("{", "["):
        ok, value = _parse_json(body)
        if ok:
            return DecodedBody(value=value, size=size)
    return DecodedBody(value=body, size=size)
