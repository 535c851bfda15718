"""The Cloudflare Queues pull API, as the emulator serves it: every documented shape, code and
limit, pinned over real HTTP.

Sources: "§n" is a section of ../shared/reference/cloudflare-apis.md; "error-codes" is the
Queues error code table it cites (CFD queues/reference/error-codes.mdx). "(stricter)" marks
undocumented behaviour where the emulator takes the stricter choice; "(choice)" marks an
undocumented detail (such as an HTTP status) the emulator had to pick.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest

from flowcraft_puller.emulator.app import EmulatorConfig, QueueSpec
from flowcraft_puller.emulator.server import EmulatorServer

pytestmark = pytest.mark.anyio

TOKEN = "contract-token_01"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACCOUNT = "0123456789abcdef0123456789abcdef"
MAX_REQUEST_BYTES = 1024 * 1024
JOB = {"runId": "run-1", "blueprintId": "bp", "nodeId": "A"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def config(**overrides: Any) -> EmulatorConfig:
    settings: dict[str, Any] = {
        "port": 0,
        "token": TOKEN,
        "account_id": ACCOUNT,
        "max_request_bytes": MAX_REQUEST_BYTES,
    }
    settings.update(overrides)
    return EmulatorConfig(**settings)


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(config(), runs_factory=None) as server:
        yield server


@pytest.fixture(scope="module")
async def client(emulator: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10.0) as http:
        yield http


async def create_queue(client: httpx.AsyncClient) -> str:
    name = f"q-{uuid.uuid4().hex[:12]}"
    response = await client.post(
        f"/client/v4/accounts/{ACCOUNT}/queues", json={"queue_name": name}, headers=AUTH
    )
    return str(ok(response)["queue_id"])


@pytest.fixture
async def queue(client: httpx.AsyncClient) -> str:
    return await create_queue(client)


def messages_path(queue_id: str, action: str = "") -> str:
    suffix = f"/{action}" if action else ""
    return f"/client/v4/accounts/{ACCOUNT}/queues/{queue_id}/messages{suffix}"


def ok(response: httpx.Response) -> Any:
    """The ``result`` of a successful v4 envelope (§1.4)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["errors"] == []
    assert body["messages"] == []
    assert "result" in body
    return body["result"]


def refused(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """The first error of a failed v4 envelope: ``errors[{code, message}]`` (§1.4)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["messages"] == []
    assert body["result"] is None
    error: dict[str, Any] = body["errors"][0]
    assert error["code"] == code, body
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


async def send(client: httpx.AsyncClient, queue_id: str, body: Any = None, **fields: Any) -> None:
    payload = {"body": JOB if body is None else body, **fields}
    ok(await client.post(messages_path(queue_id), json=payload, headers=AUTH))


async def pull(client: httpx.AsyncClient, queue_id: str, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = ok(
        await client.post(messages_path(queue_id, "pull"), json=params, headers=AUTH)
    )
    return result


async def ack(
    client: httpx.AsyncClient,
    queue_id: str,
    acks: Sequence[str] = (),
    retries: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    payload = {"acks": [{"lease_id": lease} for lease in acks], "retries": list(retries)}
    result: dict[str, Any] = ok(
        await client.post(messages_path(queue_id, "ack"), json=payload, headers=AUTH)
    )
    return result


async def advance_clock(client: httpx.AsyncClient, ms: int) -> None:
    response = await client.post("/_emulator/clock", json={"advance_ms": ms})
    assert response.status_code == 200


def decoded(message: dict[str, Any]) -> Any:
    return orjson.loads(base64.b64decode(message["body"]))


# ---- queues ---------------------------------------------------------------------------------


async def test_create_queue_returns_a_32_hex_queue_id(client: httpx.AsyncClient) -> None:
    # The path needs the 32-hex queue id, not the name (§1.1); create-queue answers with
    # result.queue_id (issue 4; PYSDK queue type).
    response = await client.post(
        f"/client/v4/accounts/{ACCOUNT}/queues", json={"queue_name": "orders-1"}, headers=AUTH
    )
    result = ok(response)
    assert re.fullmatch(r"[0-9a-f]{32}", result["queue_id"])
    assert result["queue_name"] == "orders-1"
    listed = ok(await client.get(f"/client/v4/accounts/{ACCOUNT}/queues", headers=AUTH))
    assert {"queue_id": result["queue_id"], "queue_name": "orders-1"}.items() <= next(
        q for q in listed if q["queue_name"] == "orders-1"
    ).items()


async def test_creating_a_queue_twice_is_refused(client: httpx.AsyncClient) -> None:
    path = f"/client/v4/accounts/{ACCOUNT}/queues"
    ok(await client.post(path, json={"queue_name": "twice"}, headers=AUTH))
    # 11009 "already taken" as seen in the wild (Trailgenic/workers#59); 409 (choice).
    refused(await client.post(path, json={"queue_name": "twice"}, headers=AUTH), 409, 11009)


@pytest.mark.parametrize("name", ["", "UPPER", "-dash", "dash-", "a" * 64, "under_score"])
async def test_invalid_queue_names_are_refused(client: httpx.AsyncClient, name: str) -> None:
    # Lowercase letters, digits and dashes, at most 63 (stricter); schema errors are 10207.
    path = f"/client/v4/accounts/{ACCOUNT}/queues"
    refused(await client.post(path, json={"queue_name": name}, headers=AUTH), 400, 10207)


async def test_configured_queues_exist_from_start(emulator: EmulatorServer) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", emulator.queue_id("flowcraft-jobs"))
    assert re.fullmatch(r"[0-9a-f]{32}", emulator.queue_id("flowcraft-jobs-dlq"))


# ---- send and pull shapes -------------------------------------------------------------------


async def test_send_answers_with_the_v4_envelope(client: httpx.AsyncClient, queue: str) -> None:
    # Minimal {"body": {...}} returns success (§1.3); 5.9.0 result {metadata: {metrics}} (§1.4).
    result = ok(await client.post(messages_path(queue), json={"body": JOB}, headers=AUTH))
    assert set(result["metadata"]["metrics"]) == {
        "backlog_count",
        "backlog_bytes",
        "oldest_message_timestamp_ms",
    }
    assert result["metadata"]["metrics"]["backlog_count"] == 1


async def test_pulled_messages_have_the_documented_fields(
    client: httpx.AsyncClient, queue: str
) -> None:
    await send(client, queue)
    result = await pull(client, queue, batch_size=10, visibility_timeout_ms=60_000)
    # result: {message_backlog_count, messages: [{id, body, timestamp_ms, attempts, lease_id,
    # metadata}]} (§1.4).
    assert result["message_backlog_count"] == 1
    [message] = result["messages"]
    assert set(message) == {"id", "body", "timestamp_ms", "attempts", "lease_id", "metadata"}
    assert isinstance(message["id"], str)
    assert message["id"]
    assert isinstance(message["timestamp_ms"], int)
    assert message["timestamp_ms"] > 1_600_000_000_000
    assert message["attempts"] == 1
    # metadata {"CF-sourceMessageSource", "CF-Content-Type"} (§1.4); json arrives base64 (§1.5).
    assert set(message["metadata"]) == {"CF-sourceMessageSource", "CF-Content-Type"}
    assert message["metadata"]["CF-Content-Type"] == "json"
    assert decoded(message) == JOB
    # The newer spec's best-effort metrics (§1.4).
    assert result["metadata"]["metrics"]["backlog_count"] == 1


async def test_lease_ids_are_opaque_jwe_shaped_tokens(
    client: httpx.AsyncClient, queue: str
) -> None:
    await send(client, queue)
    await send(client, queue)
    leases = [m["lease_id"] for m in (await pull(client, queue))["messages"]]
    # lease_id is a JWE whose header decodes to {"alg":"dir","enc":"A256CBC-HS512"} (§1.4).
    for lease in leases:
        parts = lease.split(".")
        assert len(parts) == 5
        header = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        assert orjson.loads(header) == {"alg": "dir", "enc": "A256CBC-HS512"}
        assert len(lease) > 100
    assert len(set(leases)) == 2


async def test_text_messages_arrive_as_plain_text(client: httpx.AsyncClient, queue: str) -> None:
    # content_type "text" (§1.3); text arrives as plain UTF-8 (§1.5).
    await send(client, queue, body="héllo", content_type="text")
    [message] = (await pull(client, queue))["messages"]
    assert message["body"] == "héllo"
    assert message["metadata"]["CF-Content-Type"] == "text"


async def test_a_json_string_body_is_base64_of_its_json(
    client: httpx.AsyncClient, queue: str
) -> None:
    # body may be a string or an object for json (§1.3); json bodies arrive base64 (§1.5).
    await send(client, queue, body="just a string", content_type="json")
    [message] = (await pull(client, queue))["messages"]
    assert decoded(message) == "just a string"


async def test_batch_send_delivers_every_message(client: httpx.AsyncClient, queue: str) -> None:
    # {"messages": [{"body", "content_type", "delay_seconds"}], "delay_seconds"} (§1.3).
    payload = {"messages": [{"body": {"n": i}} for i in range(3)] + [{"body": "t"}]}
    result = ok(await client.post(messages_path(queue, "batch"), json=payload, headers=AUTH))
    assert result["metadata"]["metrics"]["backlog_count"] == 4
    pulled = (await pull(client, queue, batch_size=10))["messages"]
    assert sorted(orjson.dumps(decoded(m)) for m in pulled) == sorted(
        orjson.dumps(v) for v in [{"n": 0}, {"n": 1}, {"n": 2}, "t"]
    )


async def test_pull_defaults_to_batches_of_five(client: httpx.AsyncClient, queue: str) -> None:
    # {} uses the defaults: batch_size 5 (§1.3).
    for _ in range(7):
        await send(client, queue)
    result = await pull(client, queue)
    assert len(result["messages"]) == 5
    assert result["message_backlog_count"] == 7


async def test_pulling_an_empty_queue_answers_at_once_with_nothing(
    client: httpx.AsyncClient, queue: str
) -> None:
    # Short polling: an empty list if nothing is ready (§1.1).
    result = await pull(client, queue, batch_size=100)
    assert result["messages"] == []
    assert result["message_backlog_count"] == 0


async def test_concurrent_pullers_get_distinct_messages(
    client: httpx.AsyncClient, queue: str
) -> None:
    # Concurrent pullers each get a distinct batch (§1.7).
    for i in range(6):
        await send(client, queue, body={"n": i})
    first = (await pull(client, queue, batch_size=3))["messages"]
    second = (await pull(client, queue, batch_size=10))["messages"]
    assert len(first) == 3
    assert len(second) == 3
    assert {m["id"] for m in first}.isdisjoint({m["id"] for m in second})
    assert (await pull(client, queue))["messages"] == []


@pytest.mark.parametrize("batch_size", [1, 100])
async def test_batch_size_bounds_are_accepted(
    client: httpx.AsyncClient, queue: str, batch_size: int
) -> None:
    # batch_size max 100 (§1.3, §1.6); 1 is the least meaningful size.
    await pull(client, queue, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [0, 101, -1, "5", 5.5, True, None])
async def test_batch_size_outside_1_to_100_is_refused(
    client: httpx.AsyncClient, queue: str, batch_size: Any
) -> None:
    # Max 100 (§1.3); 0 and wrong types refused (stricter) as schema errors, 10207
    # (error-codes).
    response = await client.post(
        messages_path(queue, "pull"), json={"batch_size": batch_size}, headers=AUTH
    )
    error = refused(response, 400, 10207)
    assert error["source"]["pointer"] == "/batch_size"


async def test_visibility_timeout_may_be_12_hours(client: httpx.AsyncClient, queue: str) -> None:
    # Visibility timeout max 12 h = 43,200,000 ms (§1.3).
    await pull(client, queue, visibility_timeout_ms=43_200_000)


@pytest.mark.parametrize("timeout", [43_200_001, 0, -5, "1000"])
async def test_visibility_timeout_beyond_12_hours_is_refused(
    client: httpx.AsyncClient, queue: str, timeout: Any
) -> None:
    # Max 12 h (§1.3); no minimum is documented, 0 is refused (stricter).
    response = await client.post(
        messages_path(queue, "pull"), json={"visibility_timeout_ms": timeout}, headers=AUTH
    )
    refused(response, 400, 10207)


async def test_the_misnamed_visibility_timeout_field_is_refused(
    client: httpx.AsyncClient, queue: str
) -> None:
    # The docs' curl examples send "visibility_timeout", the schema says
    # "visibility_timeout_ms" (§1.3). Unknown fields are refused (stricter) so the misnomer
    # cannot pass silently.
    response = await client.post(
        messages_path(queue, "pull"), json={"visibility_timeout": 10_000}, headers=AUTH
    )
    error = refused(response, 400, 10207)
    assert error["source"]["pointer"] == "/visibility_timeout"


# ---- ack, retry, leases ---------------------------------------------------------------------


async def test_ack_counts_are_camel_case(client: httpx.AsyncClient, queue: str) -> None:
    for _ in range(3):
        await send(client, queue)
    leases = [m["lease_id"] for m in (await pull(client, queue))["messages"]]
    result = await ack(client, queue, acks=leases[:2], retries=[{"lease_id": leases[2]}])
    # {"ackCount", "retryCount", "warnings"}: camelCase counts; warnings a map (§1.4).
    assert result == {"ackCount": 2, "retryCount": 1, "warnings": {}}


async def test_acked_messages_are_deleted(client: httpx.AsyncClient, queue: str) -> None:
    await send(client, queue)
    await send(client, queue)
    leases = [m["lease_id"] for m in (await pull(client, queue))["messages"]]
    await ack(client, queue, acks=leases)
    # message_backlog_count: unacked messages in queue (§1.4).
    result = await pull(client, queue)
    assert result["messages"] == []
    assert result["message_backlog_count"] == 0


async def test_an_empty_ack_is_accepted(client: httpx.AsyncClient, queue: str) -> None:
    # Both arrays optional, retries: [] allowed (§1.3).
    result = ok(await client.post(messages_path(queue, "ack"), json={}, headers=AUTH))
    assert result == {"ackCount": 0, "retryCount": 0, "warnings": {}}


async def test_an_expired_lease_redelivers_with_attempts_incremented(
    client: httpx.AsyncClient, queue: str
) -> None:
    await send(client, queue)
    [first] = (await pull(client, queue, visibility_timeout_ms=1_000))["messages"]
    assert (await pull(client, queue))["messages"] == []
    await advance_clock(client, 1_001)
    # Un-acked messages go back when the timeout passes; each delivery increments attempts
    # (§1.7).
    [second] = (await pull(client, queue))["messages"]
    assert second["id"] == first["id"]
    assert second["attempts"] == 2
    assert second["lease_id"] != first["lease_id"]


async def test_the_default_visibility_timeout_is_30_seconds(
    client: httpx.AsyncClient, queue: str
) -> None:
    # Visibility timeout default 30 s (§1.3).
    await send(client, queue)
    await pull(client, queue)
    await advance_clock(client, 29_000)
    assert (await pull(client, queue))["messages"] == []
    await advance_clock(client, 1_001)
    assert len((await pull(client, queue))["messages"]) == 1


async def test_a_retry_puts_the_message_back_at_once(client: httpx.AsyncClient, queue: str) -> None:
    await send(client, queue)
    [first] = (await pull(client, queue, visibility_timeout_ms=600_000))["messages"]
    await ack(client, queue, retries=[{"lease_id": first["lease_id"]}])
    # Explicit retry puts the message back at once instead of waiting for the timeout (§1.7).
    [second] = (await pull(client, queue))["messages"]
    assert second["id"] == first["id"]
    assert second["attempts"] == 2


async def test_a_retry_delay_holds_the_message_back(client: httpx.AsyncClient, queue: str) -> None:
    await send(client, queue)
    [first] = (await pull(client, queue))["messages"]
    await ack(client, queue, retries=[{"lease_id": first["lease_id"], "delay_seconds": 60}])
    # ... or after delay_seconds (§1.7).
    assert (await pull(client, queue))["messages"] == []
    await advance_clock(client, 59_000)
    assert (await pull(client, queue))["messages"] == []
    await advance_clock(client, 1_001)
    [second] = (await pull(client, queue))["messages"]
    assert second["attempts"] == 2


async def test_a_send_delay_holds_the_message_back(client: httpx.AsyncClient, queue: str) -> None:
    # "delay_seconds": seconds to wait before delivering (§1.3, SDK push params).
    await send(client, queue, delay_seconds=30)
    result = await pull(client, queue)
    assert result["messages"] == []
    # A delayed message is still an unacked message in the queue (§1.4).
    assert result["message_backlog_count"] == 1
    await advance_clock(client, 30_001)
    assert len((await pull(client, queue))["messages"]) == 1


async def test_a_batch_delay_applies_to_messages_without_their_own(
    client: httpx.AsyncClient, queue: str
) -> None:
    # "delay_seconds": seconds for the whole batch (§1.3).
    payload = {
        "messages": [{"body": "late"}, {"body": "now", "delay_seconds": 0}],
        "delay_seconds": 20,
    }
    ok(await client.post(messages_path(queue, "batch"), json=payload, headers=AUTH))
    [now] = (await pull(client, queue))["messages"]
    assert decoded(now) == "now"
    await advance_clock(client, 20_001)
    [late] = (await pull(client, queue))["messages"]
    assert decoded(late) == "late"


async def test_a_stale_ack_is_accepted_and_deletes_the_redelivered_message(
    client: httpx.AsyncClient, queue: str
) -> None:
    await send(client, queue)
    [first] = (await pull(client, queue, visibility_timeout_ms=1_000))["messages"]
    await advance_clock(client, 1_001)
    [second] = (await pull(client, queue, visibility_timeout_ms=60_000))["messages"]
    # Acking an expired lease is accepted, and the other consumer's ack also succeeds
    # (§1.7). What the stale ack does to the redelivered message is undocumented; it deletes
    # it ("a slow consumer can ack a message another consumer is still working on") (stricter).
    assert (await ack(client, queue, acks=[first["lease_id"]]))["ackCount"] == 1
    assert (await pull(client, queue))["message_backlog_count"] == 0
    assert await ack(client, queue, acks=[second["lease_id"]]) == {
        "ackCount": 1,
        "retryCount": 0,
        "warnings": {},
    }


async def test_acking_twice_is_accepted(client: httpx.AsyncClient, queue: str) -> None:
    # Stale acks are accepted (§1.7), so repeating an ack is harmless.
    await send(client, queue)
    [message] = (await pull(client, queue))["messages"]
    await ack(client, queue, acks=[message["lease_id"]])
    assert (await ack(client, queue, acks=[message["lease_id"]]))["ackCount"] == 1


async def test_unknown_lease_ids_get_a_warning_not_an_error(
    client: httpx.AsyncClient, queue: str, emulator: EmulatorServer
) -> None:
    other = emulator.queue_id("flowcraft-jobs-dlq")
    await send(client, other)
    [foreign] = (await pull(client, other))["messages"]
    # warnings: "map of lease IDs to warning messages" (§1.4); a lease the queue never issued
    # is ignored with a warning so the rest of the batch still counts (choice).
    result = await ack(client, queue, acks=["garbage", foreign["lease_id"]])
    assert result["ackCount"] == 0
    assert set(result["warnings"]) == {"garbage", foreign["lease_id"]}
    await ack(client, other, acks=[foreign["lease_id"]])


async def test_a_lease_id_both_acked_and_retried_is_refused(
    client: httpx.AsyncClient, queue: str
) -> None:
    await send(client, queue)
    [message] = (await pull(client, queue))["messages"]
    lease = message["lease_id"]
    payload = {"acks": [{"lease_id": lease}], "retries": [{"lease_id": lease}]}
    # Undocumented; refused rather than guessing which wins (stricter).
    response = await client.post(messages_path(queue, "ack"), json=payload, headers=AUTH)
    refused(response, 400, 10207)


async def test_more_than_100_acks_and_retries_per_request_are_refused(
    client: httpx.AsyncClient, queue: str
) -> None:
    # No cap is documented; >100 is untested (§1.3), so the emulator refuses it (stricter).
    payload = {
        "acks": [{"lease_id": f"a{i}"} for i in range(60)],
        "retries": [{"lease_id": f"r{i}"} for i in range(41)],
    }
    response = await client.post(messages_path(queue, "ack"), json=payload, headers=AUTH)
    refused(response, 400, 10207)


async def test_a_retry_delay_over_12_hours_is_refused(
    client: httpx.AsyncClient, queue: str
) -> None:
    # Message delay max 12 h (§1.6, stricter of 12 h / 24 h); invalid delay is 10203
    # MessageMetadataInvalid (error-codes).
    payload = {"retries": [{"lease_id": "x", "delay_seconds": 43_201}]}
    response = await client.post(messages_path(queue, "ack"), json=payload, headers=AUTH)
    refused(response, 400, 10203)


async def test_the_backlog_counts_ready_leased_and_delayed_messages(
    client: httpx.AsyncClient, queue: str
) -> None:
    # message_backlog_count: unacked messages in queue (§1.4).
    await send(client, queue)
    await send(client, queue)
    await send(client, queue, delay_seconds=600)
    assert (await pull(client, queue, batch_size=1))["message_backlog_count"] == 3


# ---- limits ---------------------------------------------------------------------------------


def text_of_size(message_bytes: int) -> str:
    """A text body making a message of exactly ``message_bytes`` with Cloudflare's ~100 B of
    metadata counted in (§1.6)."""
    return "x" * (message_bytes - 100)


async def test_a_message_of_128_kb_is_accepted(client: httpx.AsyncClient, queue: str) -> None:
    # Max message size 128 KB, 1 KB = 1000 B, including ~100 B internal metadata (§1.6).
    body = text_of_size(128_000)
    ok(
        await client.post(
            messages_path(queue), json={"body": body, "content_type": "text"}, headers=AUTH
        )
    )


async def test_a_message_over_128_kb_is_refused(client: httpx.AsyncClient, queue: str) -> None:
    # 10204 MessageSizeOutOfBounds (error-codes; §1.6).
    body = text_of_size(128_001)
    response = await client.post(
        messages_path(queue), json={"body": body, "content_type": "text"}, headers=AUTH
    )
    refused(response, 400, 10204)


async def test_a_batch_of_100_messages_is_accepted(client: httpx.AsyncClient, queue: str) -> None:
    # Per-send batch: 100 messages (§1.3, §1.6).
    payload = {"messages": [{"body": i} for i in range(100)]}
    ok(await client.post(messages_path(queue, "batch"), json=payload, headers=AUTH))


async def test_a_batch_of_101_messages_is_refused(client: httpx.AsyncClient, queue: str) -> None:
    # 10206 BatchCountOutOfBounds (§1.3; error-codes).
    payload = {"messages": [{"body": i} for i in range(101)]}
    response = await client.post(messages_path(queue, "batch"), json=payload, headers=AUTH)
    refused(response, 400, 10206)
    assert (await pull(client, queue))["message_backlog_count"] == 0


async def test_a_batch_over_256_kb_is_refused(client: httpx.AsyncClient, queue: str) -> None:
    # 256 KB per batch: 10205 BatchSizeOutOfBounds (§1.3; error-codes).
    exactly = [{"body": text_of_size(128_000), "content_type": "text"}] * 2
    ok(await client.post(messages_path(queue, "batch"), json={"messages": exactly}, headers=AUTH))
    over = [*exactly, {"body": "x", "content_type": "text"}]
    response = await client.post(
        messages_path(queue, "batch"), json={"messages": over}, headers=AUTH
    )
    refused(response, 400, 10205)


async def test_a_send_delay_over_12_hours_is_refused(client: httpx.AsyncClient, queue: str) -> None:
    # 12 h (§1.6, the stricter of 12 h / 24 h); 10203 MessageMetadataInvalid (error-codes).
    ok(
        await client.post(
            messages_path(queue), json={"body": 1, "delay_seconds": 43_200}, headers=AUTH
        )
    )
    response = await client.post(
        messages_path(queue), json={"body": 1, "delay_seconds": 43_201}, headers=AUTH
    )
    refused(response, 400, 10203)


async def test_a_batch_delay_over_12_hours_is_refused(
    client: httpx.AsyncClient, queue: str
) -> None:
    # 10202 BatchDelayInvalid (error-codes), with the 12 h maximum (§1.6, stricter).
    payload = {"messages": [{"body": 1}], "delay_seconds": 43_201}
    response = await client.post(messages_path(queue, "batch"), json=payload, headers=AUTH)
    refused(response, 400, 10202)


@pytest.mark.parametrize("content_type", ["bytes", "v8", "xml"])
async def test_rest_sends_accept_only_json_and_text(
    client: httpx.AsyncClient, queue: str, content_type: str
) -> None:
    # Only text and json are modelled for REST (§1.3); invalid content type is 10203
    # (error-codes).
    response = await client.post(
        messages_path(queue), json={"body": "x", "content_type": content_type}, headers=AUTH
    )
    refused(response, 400, 10203)


async def test_a_text_message_needs_a_string_body(client: httpx.AsyncClient, queue: str) -> None:
    # Text messages have a string body (§1.3, SDK MqQueueMessageText); schema mismatch is
    # 10207 (error-codes).
    response = await client.post(
        messages_path(queue), json={"body": {"a": 1}, "content_type": "text"}, headers=AUTH
    )
    refused(response, 400, 10207)


async def test_the_throughput_limit_answers_429_with_10250() -> None:
    # 5,000 msg/s per queue for producing and for pull+ack (§1.6); overload is 429 with
    # 10250 QueueOverloaded (§1.6; error-codes). The limit is lowered to trip it.
    async with (
        EmulatorServer(config(throughput_limit=10), runs_factory=None) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        queue = server.queue_id("flowcraft-jobs")
        batch = {"messages": [{"body": i} for i in range(10)]}
        ok(await http.post(messages_path(queue, "batch"), json=batch, headers=AUTH))
        refused(await http.post(messages_path(queue), json={"body": 1}, headers=AUTH), 429, 10250)
        pulled = (await pull(http, queue, batch_size=10))["messages"]
        assert len(pulled) == 10
        response = await http.post(messages_path(queue, "pull"), json={}, headers=AUTH)
        refused(response, 429, 10250)
        # A message pulled and acked counts once, at the pull ("pull and acknowledge up to
        # 5,000 messages / second", §1.9); acks are never refused (choice).
        assert (await ack(http, queue, acks=[m["lease_id"] for m in pulled]))["ackCount"] == 10
        await advance_clock(http, 1_000)
        ok(await http.post(messages_path(queue), json={"body": 1}, headers=AUTH))


# ---- max_retries and the dead-letter queue --------------------------------------------------


def dlq_config(*, with_dlq: bool = True) -> EmulatorConfig:
    return config(
        queues=[
            QueueSpec(
                name="jobs", dead_letter_queue="jobs-dlq" if with_dlq else None, max_retries=2
            ),
            QueueSpec(name="jobs-dlq"),
        ],
        job_queue="jobs",
    )


async def test_messages_past_max_retries_go_to_the_dead_letter_queue() -> None:
    # When attempts reaches max_retries the message is not redelivered; it is written to the
    # DLQ if one is configured (§1.7).
    async with (
        EmulatorServer(dlq_config(), runs_factory=None) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        jobs, dlq = server.queue_id("jobs"), server.queue_id("jobs-dlq")
        await send(http, jobs, body={"job": 1})
        for attempt in (1, 2):
            [message] = (await pull(http, jobs))["messages"]
            assert message["attempts"] == attempt
            await ack(http, jobs, retries=[{"lease_id": message["lease_id"]}])
        remaining = await pull(http, jobs)
        assert remaining["messages"] == []
        assert remaining["message_backlog_count"] == 0
        [dead] = (await pull(http, dlq))["messages"]
        assert decoded(dead) == {"job": 1}
        assert dead["attempts"] == 1


async def test_lease_expiries_count_towards_max_retries() -> None:
    # Each delivery increments attempts; an expiry is a redelivery (§1.7: implied, stricter).
    async with (
        EmulatorServer(dlq_config(), runs_factory=None) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        jobs, dlq = server.queue_id("jobs"), server.queue_id("jobs-dlq")
        await send(http, jobs)
        for _ in range(2):
            assert len((await pull(http, jobs, visibility_timeout_ms=1_000))["messages"]) == 1
            await advance_clock(http, 1_001)
        assert (await pull(http, jobs))["messages"] == []
        assert len((await pull(http, dlq))["messages"]) == 1


async def test_messages_past_max_retries_without_a_dlq_are_deleted() -> None:
    # ... or deleted when no DLQ is configured (§1.7).
    async with (
        EmulatorServer(dlq_config(with_dlq=False), runs_factory=None) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        jobs = server.queue_id("jobs")
        await send(http, jobs)
        for _ in range(2):
            [message] = (await pull(http, jobs))["messages"]
            await ack(http, jobs, retries=[{"lease_id": message["lease_id"]}])
        assert (await pull(http, jobs))["message_backlog_count"] == 0
        assert (await pull(http, server.queue_id("jobs-dlq")))["messages"] == []


# ---- errors: queue, account, auth, routes -----------------------------------------------------


ROUTES = [("pull", {}), ("ack", {}), ("", {"body": 1}), ("batch", {"messages": []})]


@pytest.mark.parametrize(("action", "payload"), ROUTES)
async def test_an_unknown_queue_is_10104(
    client: httpx.AsyncClient, action: str, payload: dict[str, Any]
) -> None:
    # 10104 QueueNotFound (error-codes); HTTP 404 (choice).
    response = await client.post(messages_path("0" * 32, action), json=payload, headers=AUTH)
    error = refused(response, 404, 10104)
    assert error["message"] == "Queue does not exist"


@pytest.mark.parametrize(("action", "payload"), ROUTES)
async def test_a_malformed_queue_id_is_10107(
    client: httpx.AsyncClient, action: str, payload: dict[str, Any]
) -> None:
    # 10107 QueueIDMalformed: queue_id must be alphanumeric (error-codes), e.g. a queue name
    # with dashes used by mistake (§1.1).
    response = await client.post(
        messages_path("flowcraft-jobs", action), json=payload, headers=AUTH
    )
    refused(response, 400, 10107)


async def test_a_malformed_account_id_has_no_route(client: httpx.AsyncClient, queue: str) -> None:
    # Cloudflare answers 7003 "Could not route to ..., perhaps your object identifier is
    # invalid?" for malformed ids; account ids are 32 hex (stricter).
    response = await client.post(
        f"/client/v4/accounts/my-account/queues/{queue}/messages/pull", json={}, headers=AUTH
    )
    error = refused(response, 404, 7003)
    assert "perhaps your object identifier is invalid" in error["message"]


@pytest.mark.parametrize(("action", "payload"), ROUTES)
async def test_any_well_formed_account_id_is_accepted(
    client: httpx.AsyncClient, queue: str, action: str, payload: dict[str, Any]
) -> None:
    # The emulator accepts any account id (issue 4).
    path = f"/client/v4/accounts/{'f' * 32}/queues/{queue}/messages"
    ok(await client.post(f"{path}/{action}" if action else path, json=payload, headers=AUTH))


AUTH_ROUTES = [
    ("POST", "pull"),
    ("POST", "ack"),
    ("POST", ""),
    ("POST", "batch"),
    ("POST", "create"),
    ("GET", "list"),
]


def auth_path(queue: str, action: str) -> str:
    if action in ("create", "list"):
        return f"/client/v4/accounts/{ACCOUNT}/queues"
    return messages_path(queue, action)


@pytest.mark.parametrize(("method", "action"), AUTH_ROUTES)
async def test_a_missing_token_is_refused(
    client: httpx.AsyncClient, queue: str, method: str, action: str
) -> None:
    # No credentials: 400 / 9106 (observed, cloudflare/cloudflare-python#2678).
    response = await client.request(method, auth_path(queue, action), json={})
    refused(response, 400, 9106)


@pytest.mark.parametrize(("method", "action"), AUTH_ROUTES)
async def test_a_wrong_token_is_403_authentication_error(
    client: httpx.AsyncClient, queue: str, method: str, action: str
) -> None:
    # Wrong token -> HTTP 403 (§1.2); code 10000 "Authentication error" (as observed).
    response = await client.request(
        method, auth_path(queue, action), json={}, headers={"Authorization": "Bearer nope"}
    )
    error = refused(response, 403, 10000)
    assert error["message"] == "Authentication error"


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer two words", "Bearer bad!token", TOKEN]
)
async def test_a_malformed_authorization_header_is_6003(
    client: httpx.AsyncClient, queue: str, header: str
) -> None:
    # 400 / 6003 "Invalid request headers" with 6111 in error_chain (observed,
    # jeessy2/ddns-go#916).
    response = await client.post(
        messages_path(queue, "pull"), json={}, headers={"Authorization": header}
    )
    error = refused(response, 400, 6003)
    assert error["error_chain"][0]["code"] == 6111


async def test_legacy_key_credentials_are_refused(client: httpx.AsyncClient, queue: str) -> None:
    # The SDK also supports X-Auth-Email + X-Auth-Key (§1.2); the emulator knows no global
    # keys, so they fail like a wrong token.
    response = await client.post(
        messages_path(queue, "pull"),
        json={},
        headers={"X-Auth-Email": "a@b.c", "X-Auth-Key": "k"},
    )
    refused(response, 403, 10000)


async def test_unknown_routes_and_methods_are_refused_in_the_envelope(
    client: httpx.AsyncClient, queue: str
) -> None:
    # "No route for the URI", code 7003, is the error-codes page's own example.
    refused(await client.post(messages_path(queue, "peekaboo"), json={}, headers=AUTH), 404, 7003)
    # A wrong method's code is undocumented; 7001 (choice).
    refused(await client.get(messages_path(queue, "pull"), headers=AUTH), 405, 7001)


# ---- bad input never yields a 500 -------------------------------------------------------------


async def test_invalid_json_is_10208_on_every_route(client: httpx.AsyncClient, queue: str) -> None:
    # 10208 JSONRequestBodyMalformed: the body is not valid JSON (error-codes).
    for action in ("pull", "ack", "", "batch", "create"):
        for content in (b"", b"{", b"{'a': 1}", b"\xff\xfe", b"[1,]", b"NaN", b'{"a":1}x'):
            response = await client.post(auth_path(queue, action), content=content, headers=AUTH)
            refused(response, 400, 10208)


NOT_OBJECTS = [[], "x", 1, None, True, [{"body": 1}]]
WRONG_TYPES: dict[str, list[Any]] = {
    "pull": [{"batch_size": []}, {"batch_size": 1.0}, {"extra": 1}],
    "ack": [
        {"acks": "lease"},
        {"acks": [1]},
        {"acks": [{"lease_id": 1}]},
        {"acks": [{"lease_id": ""}]},
        {"acks": [{}]},
        {"retries": [{"lease_id": "x", "delay_seconds": "5"}]},
        {"retries": [{"lease_id": "x", "delay_seconds": True}]},
        {"acks": [{"lease_id": "x", "extra": 1}]},
    ],
    "": [{}, {"body": 1, "content_type": 5}, {"body": 1, "delay_seconds": "1"}, {"bodyy": 1}],
    "batch": [
        {},
        {"messages": {}},
        {"messages": [1]},
        {"messages": [{}]},
        {"messages": [{"body": 1}], "delay_seconds": []},
    ],
    "create": [{}, {"queue_name": 5}, {"queue_name": None}, {"name": "q"}],
}


async def test_schema_mismatches_are_10207_on_every_route(
    client: httpx.AsyncClient, queue: str
) -> None:
    # 10207 JSONRequestBodyInvalid: the JSON does not match the schema (error-codes).
    for action, bodies in WRONG_TYPES.items():
        for body in [*NOT_OBJECTS, *bodies]:
            response = await client.post(
                auth_path(queue, action), content=orjson.dumps(body), headers=AUTH
            )
            error = refused(response, 400, 10207)
            assert error["source"]["pointer"].startswith("/"), (action, body)


@pytest.mark.parametrize("action", ["pull", "ack", "", "batch", "create"])
async def test_huge_bodies_are_refused_before_parsing(
    client: httpx.AsyncClient, queue: str, action: str
) -> None:
    # The emulator's request cap (choice): 413 before parsing, in the envelope, with the size
    # code where one fits (10204 message, 10205 batch) and 10207 elsewhere.
    content = b'{"body": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    response = await client.post(auth_path(queue, action), content=content, headers=AUTH)
    code = {"": 10204, "batch": 10205}.get(action, 10207)
    refused(response, 413, code)


async def test_garbage_never_yields_a_server_error(client: httpx.AsyncClient, queue: str) -> None:
    garbage: list[bytes] = [
        b"\x00" * 64,
        b'{"batch_size": 100000000000000000000000000000}',
        b'{"visibility_timeout_ms": 1e400}',
        orjson.dumps({"acks": [{"lease_id": "a." * 2000}]}),
        orjson.dumps({"acks": [{"lease_id": "...."}], "retries": [{"lease_id": "\u2603"}]}),
        orjson.dumps({"retries": [{"lease_id": "x", "delay_seconds": -1}]}),
        orjson.dumps({"body": {"deep": [[[[[[[[[[{}]]]]]]]]]]}}),
        orjson.dumps({"messages": [{"body": "x", "content_type": "text", "delay_seconds": 1e300}]}),
        orjson.dumps({"queue_name": "\u2603"}),
        b'{"body": "\\ud800"}',
        b"[" * 10_000 + b"]" * 10_000,
    ]
    for action in ("pull", "ack", "", "batch", "create"):
        for content in garbage:
            response = await client.post(auth_path(queue, action), content=content, headers=AUTH)
            assert response.status_code < 500, (action, content[:60], response.text)
            body = response.json()
            assert isinstance(body["success"], bool)
            if not body["success"]:
                assert isinstance(body["errors"][0]["code"], int)
