"""The Cloudflare Queues REST client against the real emulator over loopback: pull/ack/send,
splitting, decoding, and retries under injected faults."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.faults import FaultPlan
from flowcraft_puller.emulator.server import EmulatorServer
from flowcraft_puller.queue.cloudflare import CloudflareQueue, RetryPolicy
from flowcraft_puller.queue.decoding import V8_ERROR
from flowcraft_puller.queue.errors import (
    QueueConfigError,
    QueueRateLimited,
    QueueRequestRejected,
    QueueUnavailable,
)
from flowcraft_puller.queue.protocol import OutgoingMessage, Retry

pytestmark = pytest.mark.anyio

TOKEN = "client-token"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(EmulatorConfig(port=0, token=TOKEN), runs_factory=None) as server:
        yield server


@pytest.fixture(autouse=True)
def no_faults(emulator: EmulatorServer) -> None:
    emulator.faults.replace(FaultPlan())


class Sleeps:
    """Records the client's retry waits instead of sleeping; ``then`` runs at each wait."""

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        self.waits: list[float] = []
        self.then = then

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.then is not None:
            self.then()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(
    emulator: EmulatorServer,
    queue_id: str,
    sleeps: Sleeps,
    *,
    token: str = TOKEN,
    attempts: int = 3,
) -> CloudflareQueue:
    return CloudflareQueue(
        account_id=emulator.account_id,
        queue_id=queue_id,
        api_token=token,
        base_url=emulator.api_url,
        retry=RetryPolicy(attempts=attempts, sleep=sleeps),
    )


@pytest.fixture
async def queue(emulator: EmulatorServer, sleeps: Sleeps) -> AsyncIterator[CloudflareQueue]:
    queue_id = emulator.broker.create_queue(f"c-{uuid.uuid4().hex[:12]}").id
    async with make_client(emulator, queue_id, sleeps) as client:
        yield client


def jobs(count: int, *, delay_ms: int = 0) -> list[OutgoingMessage]:
    return [
        OutgoingMessage({"runId": f"run-{i}", "blueprintId": "bp", "nodeId": "A"}, delay_ms)
        for i in range(count)
    ]


def fault(emulator: EmulatorServer, route: str, **settings: Any) -> None:
    emulator.faults.replace(FaultPlan.model_validate({"routes": {route: settings}}))


def clear_faults(emulator: EmulatorServer) -> Callable[[], None]:
    return lambda: emulator.faults.replace(FaultPlan())


# ---- pull, ack, send ------------------------------------------------------------------------


async def test_pull_decodes_json_jobs_and_reports_the_backlog(queue: CloudflareQueue) -> None:
    await queue.send_batch(jobs(3))
    result = await queue.pull(2, 30_000)
    assert [m.body["runId"] for m in result.messages] == ["run-0", "run-1"]
    assert result.backlog == 3
    message = result.messages[0]
    assert message.attempts == 1
    assert message.decode_error is None
    assert message.content_type == "json"
    assert message.size == len(orjson.dumps(message.body))


async def test_ack_and_retry_settle_pulled_messages(
    queue: CloudflareQueue, emulator: EmulatorServer
) -> None:
    await queue.send_batch(jobs(2))
    first, second = (await queue.pull(10, 30_000)).messages
    result = await queue.ack([first.lease_id], [Retry(second.lease_id, 0)])
    assert (result.acked, result.retried, result.warnings) == (1, 1, {})
    [again] = (await queue.pull(10, 30_000)).messages
    assert (again.id, again.attempts) == (second.id, 2)


async def test_acks_are_split_into_requests_of_at_most_100_entries(
    queue: CloudflareQueue,
) -> None:
    await queue.send_batch(jobs(250))
    leases = []
    for _ in range(3):
        leases += [m.lease_id for m in (await queue.pull(100, 30_000)).messages]
    result = await queue.ack(leases[:150], [Retry(lease, 5) for lease in leases[150:]])
    assert (result.acked, result.retried) == (150, 100)
    assert queue.calls["ack"] == 3


async def test_an_empty_ack_makes_no_request(queue: CloudflareQueue) -> None:
    result = await queue.ack([], [])
    assert (result.acked, result.retried) == (0, 0)
    assert queue.calls["ack"] == 0


async def test_send_batch_splits_at_100_messages(queue: CloudflareQueue) -> None:
    await queue.send_batch(jobs(250))
    assert queue.calls["batch"] == 3
    assert (await queue.pull(1, 30_000)).backlog == 250


async def test_send_batch_splits_at_256_kb(queue: CloudflareQueue) -> None:
    big = [OutgoingMessage({"pad": "x" * 100_000, "n": i}) for i in range(5)]
    await queue.send_batch(big)
    assert queue.calls["batch"] == 3
    assert (await queue.pull(1, 30_000)).backlog == 5


async def test_a_message_over_128_kb_is_refused_before_sending(queue: CloudflareQueue) -> None:
    with pytest.raises(QueueRequestRejected, match="exceeds the 128000 B limit") as raised:
        await queue.send_batch([OutgoingMessage({"pad": "x" * 128_000})])
    assert raised.value.code == 10204
    assert queue.calls["batch"] == 0


async def test_a_delay_over_12_hours_is_refused_before_sending(queue: CloudflareQueue) -> None:
    with pytest.raises(QueueRequestRejected, match="chain longer delays"):
        await queue.send_batch(jobs(1, delay_ms=43_200_001))
    assert queue.calls["batch"] == 0


async def test_millisecond_delays_round_up_to_whole_seconds(
    queue: CloudflareQueue, emulator: EmulatorServer
) -> None:
    await queue.send_batch(jobs(1, delay_ms=1_500))
    emulator.broker.advance_clock(1_600)
    assert (await queue.pull(1, 30_000)).messages == []
    emulator.broker.advance_clock(401)
    assert len((await queue.pull(1, 30_000)).messages) == 1


async def test_send_delivers_text_and_json_messages(queue: CloudflareQueue) -> None:
    await queue.send("plain words", content_type="text")
    await queue.send({"k": [1, 2]}, delay_seconds=0)
    messages = (await queue.pull(10, 30_000)).messages
    assert {(m.content_type, str(m.body)) for m in messages} == {
        ("text", "plain words"),
        ("json", "{'k': [1, 2]}"),
    }
    assert queue.calls["send"] == 2


async def test_a_text_message_must_be_a_string(queue: CloudflareQueue) -> None:
    with pytest.raises(QueueRequestRejected, match="must be a string"):
        await queue.send({"a": 1}, content_type="text")


async def test_messages_with_unusual_encodings_are_decoded_or_explained(
    queue: CloudflareQueue, emulator: EmulatorServer
) -> None:
    job = {"runId": "r", "blueprintId": "b", "nodeId": "n"}
    wire = [
        {"wire_body": orjson.dumps(job).decode(), "content_type": "json"},
        {"wire_body": base64.b64encode(orjson.dumps(job)).decode(), "content_type": "bytes"},
        {"wire_body": base64.b64encode(b"\xff\x0d\x6f").decode(), "content_type": "v8"},
        {"wire_body": "%%%", "content_type": "bytes"},
    ]
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        response = await http.post(
            f"/_emulator/queues/{queue.queue_id}/messages", json={"messages": wire}
        )
        assert response.status_code == 200
    messages = (await queue.pull(10, 30_000)).messages
    by_type = {(m.content_type, m.decode_error is None): m for m in messages}
    assert by_type[("json", True)].body == job
    assert by_type[("bytes", True)].body == job
    assert by_type[("v8", False)].decode_error == V8_ERROR
    assert "base64" in str(by_type[("bytes", False)].decode_error)


async def test_an_expired_lease_is_redelivered_in_real_time(queue: CloudflareQueue) -> None:
    await queue.send_batch(jobs(1))
    [first] = (await queue.pull(1, 50)).messages
    await anyio.sleep(0.1)
    [second] = (await queue.pull(1, 30_000)).messages
    assert (second.id, second.attempts) == (first.id, 2)


async def test_a_shared_http_client_is_left_open(emulator: EmulatorServer) -> None:
    queue_id = emulator.queue_id("flowcraft-jobs")
    async with httpx.AsyncClient() as shared:
        for _ in range(2):
            async with CloudflareQueue(
                account_id=emulator.account_id,
                queue_id=queue_id,
                api_token=TOKEN,
                base_url=emulator.api_url,
                client=shared,
            ) as queue:
                await queue.pull(1, 1_000)
        assert not shared.is_closed


# ---- configuration errors -------------------------------------------------------------------


async def test_an_unknown_queue_is_a_config_error_naming_queue_and_account(
    emulator: EmulatorServer, sleeps: Sleeps
) -> None:
    async with make_client(emulator, "ab" * 16, sleeps) as queue:
        with pytest.raises(QueueConfigError) as raised:
            await queue.pull(10, 30_000)
    error = raised.value
    assert (error.code, error.http_status) == (10104, 404)
    assert f"queue '{'ab' * 16}' does not exist in account '{emulator.account_id}'" in str(error)
    assert "wrangler queues info" in str(error)
    assert queue.calls["pull"] == 1
    assert sleeps.waits == []


async def test_a_queue_name_instead_of_an_id_is_a_config_error(
    emulator: EmulatorServer, sleeps: Sleeps
) -> None:
    async with make_client(emulator, "flowcraft-jobs", sleeps) as queue:
        with pytest.raises(QueueConfigError, match="not the queue name") as raised:
            await queue.ack(["lease"], [])
    assert raised.value.code == 10107
    assert emulator.account_id in str(raised.value)
    assert queue.calls["ack"] == 1


async def test_a_wrong_token_is_a_config_error(emulator: EmulatorServer, sleeps: Sleeps) -> None:
    queue_id = emulator.queue_id("flowcraft-jobs")
    async with make_client(emulator, queue_id, sleeps, token="wrong") as queue:
        with pytest.raises(QueueConfigError, match="Queues > Edit") as raised:
            await queue.pull(1, 1_000)
    assert (raised.value.code, raised.value.http_status) == (10000, 403)
    assert queue.calls["pull"] == 1


async def test_a_base_url_without_the_api_prefix_is_a_config_error(
    emulator: EmulatorServer, sleeps: Sleeps
) -> None:
    async with CloudflareQueue(
        account_id=emulator.account_id,
        queue_id=emulator.queue_id("flowcraft-jobs"),
        api_token=TOKEN,
        base_url=emulator.url,
        retry=RetryPolicy(attempts=3, sleep=sleeps),
    ) as queue:
        with pytest.raises(QueueConfigError, match="check account_id and the API base URL"):
            await queue.pull(1, 1_000)
    assert queue.calls["pull"] == 1


async def test_a_refused_request_is_not_retried(queue: CloudflareQueue, sleeps: Sleeps) -> None:
    with pytest.raises(QueueRequestRejected) as raised:
        await queue.pull(101, 30_000)
    assert raised.value.code == 10207
    assert queue.calls["pull"] == 1
    assert sleeps.waits == []


# ---- retries --------------------------------------------------------------------------------


async def test_retry_after_is_honoured_on_429(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    await queue.send_batch(jobs(1))
    fault(emulator, "pull", error_429_rate=1.0, retry_after_seconds=7, rate_limit_code=10250)
    sleeps.then = clear_faults(emulator)
    result = await queue.pull(10, 30_000)
    assert len(result.messages) == 1
    assert sleeps.waits == [7.0]
    assert queue.calls["pull"] == 2


async def test_429s_that_persist_surface_as_rate_limited(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    fault(emulator, "ack", error_429_rate=1.0, retry_after_seconds=2, rate_limit_code=10250)
    with pytest.raises(QueueRateLimited) as raised:
        await queue.ack(["lease"], [])
    assert (raised.value.code, raised.value.retry_after) == (10250, 2.0)
    assert sleeps.waits == [2.0, 2.0]
    assert queue.calls["ack"] == 3


async def test_the_gateway_limit_971_surfaces_at_once_with_a_wait_of_minutes(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    fault(emulator, "pull", error_429_rate=1.0, retry_after_seconds=30, rate_limit_code=971)
    with pytest.raises(QueueRateLimited, match="wait 300 s") as raised:
        await queue.pull(10, 30_000)
    assert (raised.value.code, raised.value.retry_after) == (971, 300.0)
    assert queue.calls["pull"] == 1
    assert sleeps.waits == []


async def test_a_long_retry_after_surfaces_instead_of_being_slept_through(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    fault(emulator, "pull", error_429_rate=1.0, retry_after_seconds=120, rate_limit_code=10250)
    with pytest.raises(QueueRateLimited) as raised:
        await queue.pull(10, 30_000)
    assert raised.value.retry_after == 120.0
    assert queue.calls["pull"] == 1


@pytest.mark.parametrize("failure", ["error_500_rate", "error_503_rate", "reset_rate"])
async def test_server_errors_and_resets_are_retried_with_backoff(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps, failure: str
) -> None:
    fault(emulator, "pull", **{failure: 1.0})
    with pytest.raises(QueueUnavailable):
        await queue.pull(10, 30_000)
    assert queue.calls["pull"] == 3
    assert len(sleeps.waits) == 2
    assert all(0 < wait <= 8.0 for wait in sleeps.waits)
    sleeps.then = None
    emulator.faults.replace(FaultPlan())
    assert (await queue.pull(10, 30_000)).messages == []


async def test_a_lost_pull_response_leaves_the_batch_leased_until_it_expires(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    await queue.send_batch(jobs(2))
    fault(emulator, "pull", drop_response_rate=1.0)
    sleeps.then = clear_faults(emulator)
    assert (await queue.pull(10, 5_000)).messages == []
    emulator.broker.advance_clock(5_001)
    redelivered = (await queue.pull(10, 5_000)).messages
    assert [m.attempts for m in redelivered] == [2, 2]


async def test_a_lost_ack_response_is_retried_and_accepted(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    await queue.send_batch(jobs(1))
    [message] = (await queue.pull(1, 30_000)).messages
    fault(emulator, "ack", drop_response_rate=1.0)
    sleeps.then = clear_faults(emulator)
    assert (await queue.ack([message.lease_id], [])).acked == 1
    assert queue.calls["ack"] == 2
    assert (await queue.pull(1, 30_000)).backlog == 0


async def test_a_send_whose_response_was_lost_is_not_repeated(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    fault(emulator, "batch", drop_response_rate=1.0)
    with pytest.raises(QueueUnavailable) as raised:
        await queue.send_batch(jobs(1))
    assert raised.value.maybe_applied
    assert queue.calls["batch"] == 1
    emulator.faults.replace(FaultPlan())
    assert (await queue.pull(10, 30_000)).backlog == 1


async def test_a_rate_limited_send_is_repeated(
    emulator: EmulatorServer, queue: CloudflareQueue, sleeps: Sleeps
) -> None:
    fault(emulator, "send", error_429_rate=1.0, retry_after_seconds=1, rate_limit_code=10250)
    sleeps.then = clear_faults(emulator)
    await queue.send({"a": 1})
    assert queue.calls["send"] == 2
    assert (await queue.pull(10, 30_000)).backlog == 1


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_send_that_could_not_connect_is_repeated(sleeps: Sleeps) -> None:
    async with CloudflareQueue(
        account_id="0" * 32,
        queue_id="1" * 32,
        api_token=TOKEN,
        base_url=f"http://127.0.0.1:{closed_port()}/client/v4",
        retry=RetryPolicy(attempts=3, sleep=sleeps),
    ) as queue:
        with pytest.raises(QueueUnavailable, match="could not connect") as raised:
            await queue.send_batch(jobs(1))
    assert not raised.value.maybe_applied
    assert queue.calls["batch"] == 3


# ---- the emulator as a process and across restarts ------------------------------------------


async def test_messages_and_leases_survive_an_emulator_restart(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    config = EmulatorConfig(port=0, state_path=tmp_path / "state.sqlite")
    async with EmulatorServer(config, runs_factory=None) as first:
        queue_id = first.queue_id("flowcraft-jobs")
        async with make_client(first, queue_id, sleeps) as queue:
            await queue.send_batch(jobs(3))
            [leased] = (await queue.pull(1, 60_000)).messages
            [retried] = (await queue.pull(1, 60_000)).messages
            await queue.ack([], [Retry(retried.lease_id, 0)])
    async with EmulatorServer(config, runs_factory=None) as second:
        assert second.queue_id("flowcraft-jobs") == queue_id
        async with make_client(second, queue_id, sleeps) as queue:
            result = await queue.pull(10, 60_000)
            assert result.backlog == 3
            assert sorted(m.attempts for m in result.messages) == [1, 2]
            assert leased.id not in {m.id for m in result.messages}
            assert (await queue.ack([leased.lease_id], [])).acked == 1
            assert (await queue.pull(10, 60_000)).backlog == 2


def test_python_m_emulator_serves_until_terminated(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "flowcraft_puller.emulator", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        listening = orjson.loads(process.stdout.readline())
        assert listening["event"] == "emulator listening"
        path = (
            f"{listening['url']}/client/v4/accounts/{listening['account_id']}/queues/"
            f"{listening['queues']['flowcraft-jobs']}/messages/pull"
        )
        response = httpx.post(path, json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.json()["success"] is True
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert process.returncode in (0, -signal.SIGTERM)
