"""The Cloudflare Queues REST client: pull, ack/retry and send over one long-lived httpx client.

Endpoints, bodies, envelopes, limits and error codes follow
``../shared/reference/cloudflare-apis.md`` §1. Pull and ack are safe to repeat (a repeated pull
only leaves the first batch leased until its visibility timeout; acks are idempotent and stale
acks are accepted), so they are retried on 5xx, 429 and connection failures. Sends are repeated
only when the first attempt is known not to have been applied (429, or no connection).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote

import anyio
import httpx
import orjson
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from flowcraft_puller.api_client import (
    ApiClient,
    RequestObserver,
    jittered_backoff,
    retry_after_seconds,
)
from flowcraft_puller.queue.decoding import content_type_of, decode_body
from flowcraft_puller.queue.errors import (
    QueueConfigError,
    QueueRateLimited,
    QueueRequestRejected,
    QueueUnavailable,
)
from flowcraft_puller.queue.protocol import (
    AckResult,
    OutgoingMessage,
    PullResult,
    QueueMessage,
    Retry,
)

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL: Final = "https://api.cloudflare.com/client/v4"
DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=16, max_keepalive_connections=16, keepalive_expiry=30.0
)

MAX_ACK_ENTRIES: Final = 100
"""Acks plus retries per request: no cap is documented, 100 is what peers use (§1.3)."""
MAX_BATCH_MESSAGES: Final = 100
MAX_BATCH_BYTES: Final = 256_000
MAX_MESSAGE_BYTES: Final = 128_000
MESSAGE_OVERHEAD_BYTES: Final = 100
"""Cloudflare counts ~100 B of internal metadata into the 128 KB (1 KB = 1000 B) (§1.6)."""
MAX_DELAY_SECONDS: Final = 43_200
"""12 h: the stricter of the documented send/retry delay limits (§1.6)."""

GATEWAY_LIMIT_CODE: Final = 971
CONFIG_ERRORS: Final = {10104: "QueueNotFound", 10107: "QueueIDMalformed", 7003: "No route"}
AUTH_CODES: Final = frozenset({6003, 9106, 10000, 10001, 10106})

Endpoint = Literal["pull", "ack", "send", "batch"]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls are retried. Waits longer than ``max_retry_after`` are not slept through in a
    call: they surface as :class:`QueueRateLimited` so the caller can pause its loops."""

    attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    gateway_limit_wait: float = 300.0
    """Error 971 blocks the account for 5 minutes (§1.6); wait at least this long."""
    sleep: Sleep = field(default=anyio.sleep)


def message_size(body: bytes) -> int:
    """The size Cloudflare counts against the message and batch limits."""
    return len(body) + MESSAGE_OVERHEAD_BYTES


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class CloudflareQueue(ApiClient):
    """One queue of the Cloudflare Queues pull API (implements ``Queue`` and ``JobSender``).

    ``calls`` counts HTTP requests per endpoint, retries included, so that benchmarks can
    report REST calls per message. A shared ``client`` is used as is and not closed.
    """

    def __init__(
        self,
        *,
        account_id: str,
        queue_id: str,
        api_token: str,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        observer: RequestObserver | None = None,
    ) -> None:
        if not account_id or not queue_id:
            raise QueueConfigError("account_id and queue_id are required for Cloudflare Queues")
        self.account_id = account_id
        self.queue_id = queue_id
        self.retry = retry or RetryPolicy()
        self.calls: Counter[str] = Counter()
        self._observer = observer
        super().__init__(client, timeout, limits)
        self._headers = {
            "Authorization": f"Bearer {api_token}",
            "Content-Type": "application/json",
        }
        base = (
            f"{base_url.rstrip('/')}/accounts/{quote(account_id, safe='')}"
            f"/queues/{quote(queue_id, safe='')}/messages"
        )
        self._urls: dict[Endpoint, str] = {
            "pull": f"{base}/pull",
            "ack": f"{base}/ack",
            "send": base,
            "batch": f"{base}/batch",
        }
        self._backoff = jittered_backoff(self.retry.initial_backoff, self.retry.max_backoff)

    # ---- Queue ----------------------------------------------------------------------------

    async def pull(self, batch_size: int, visibility_timeout_ms: int) -> PullResult:
        """Lease up to ``batch_size`` (1..100) messages for ``visibility_timeout_ms``."""
        payload = {"batch_size": batch_size, "visibility_timeout_ms": visibility_timeout_ms}
        result = await self._call("pull", payload)
        if not isinstance(result, dict) or not isinstance(result.get("messages"), list):
            raise QueueUnavailable(f"{self._where('pull')}: the answer has no result.messages")
        messages = [m for m in map(self._message, result["messages"]) if m is not None]
        backlog = result.get("message_backlog_count")
        return PullResult(messages=messages, backlog=backlog if isinstance(backlog, int) else None)

    async def ack(self, acks: list[str], retries: list[Retry]) -> AckResult:
        """Ack and retry leased messages, at most 100 entries per request."""
        entries: list[tuple[str, dict[str, Any]]] = [("acks", {"lease_id": a}) for a in acks]
        entries += [
            ("retries", {"lease_id": r.lease_id, "delay_seconds": r.delay_seconds}) for r in retries
        ]
        acked = retried = 0
        warnings: dict[str, str] = {}
        for chunk in _chunks(entries, MAX_ACK_ENTRIES):
            payload: dict[str, list[dict[str, Any]]] = {"acks": [], "retries": []}
            for kind, entry in chunk:
                payload[kind].append(entry)
            result = await self._call("ack", payload)
            if not isinstance(result, dict):
                raise QueueUnavailable(f"{self._where('ack')}: the answer has no result")
            acked += _count(result.get("ackCount"))
            retried += _count(result.get("retryCount"))
            warnings.update(_warnings(result.get("warnings")))
        return AckResult(acked=acked, retried=retried, warnings=warnings)

    def _message(self, raw: Any) -> QueueMessage | None:
        message = pulled_message(raw)
        if message is None:
            log.error(
                "pulled an entry without id or lease_id; it will expire and be redelivered",
                queue_id=self.queue_id,
            )
        return message

    # ---- sending --------------------------------------------------------------------------

    async def send(
        self, body: Any, *, content_type: Literal["json", "text"] = "json", delay_seconds: int = 0
    ) -> None:
        """Send one message. A ``text`` body must be a string."""
        entry = self._outgoing(body, content_type, delay_seconds)
        await self._call("send", entry[0])

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        """Send JSON messages, split into requests of at most 100 messages and 256 KB."""
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        for message in messages:
            entry, size = self._outgoing(
                message.body, "json", math.ceil(max(0, message.delay_ms) / 1000)
            )
            if batch and (len(batch) == MAX_BATCH_MESSAGES or batch_bytes + size > MAX_BATCH_BYTES):
                await self._call("batch", {"messages": batch})
                batch, batch_bytes = [], 0
            batch.append(entry)
            batch_bytes += size
        if batch:
            await self._call("batch", {"messages": batch})

    def _outgoing(
        self, body: Any, content_type: str, delay_seconds: int
    ) -> tuple[dict[str, Any], int]:
        if content_type == "text":
            if not isinstance(body, str):
                raise QueueRequestRejected("a text message body must be a string")
            encoded = body.encode()
        else:
            try:
                encoded = orjson.dumps(body)
            except orjson.JSONEncodeError as exc:
                raise QueueRequestRejected(f"message body is not JSON: {exc}") from exc
        size = message_size(encoded)
        if size > MAX_MESSAGE_BYTES:
            raise QueueRequestRejected(
                f"message of {size} bytes (with {MESSAGE_OVERHEAD_BYTES} B of metadata) exceeds "
                f"the {MAX_MESSAGE_BYTES} B limit of {self._where('send')}",
                code=10204,
            )
        if not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise QueueRequestRejected(
                f"delay of {delay_seconds} s is outside 0..{MAX_DELAY_SECONDS} s; chain longer "
                "delays",
                code=10203,
            )
        entry: dict[str, Any] = {"body": body, "content_type": content_type}
        if delay_seconds:
            entry["delay_seconds"] = delay_seconds
        return entry, size

    # ---- HTTP -----------------------------------------------------------------------------

    def _where(self, endpoint: Endpoint) -> str:
        return f"{endpoint} on queue {self.queue_id!r} in account {self.account_id!r}"

    async def _call(self, endpoint: Endpoint, payload: dict[str, Any]) -> Any:
        content = orjson.dumps(payload)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=self._wait,
            retry=retry_if_exception(
                self._idempotent_retry if endpoint in ("pull", "ack") else self._send_retry
            ),
            sleep=self.retry.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        return await retrying(self._post, endpoint, content)

    def _long_wait(self, exc: QueueRateLimited) -> bool:
        return exc.code == GATEWAY_LIMIT_CODE or (
            exc.retry_after is not None and exc.retry_after > self.retry.max_retry_after
        )

    def _idempotent_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, QueueRateLimited):
            return not self._long_wait(exc)
        return isinstance(exc, QueueUnavailable)

    def _send_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, QueueRateLimited):
            return not self._long_wait(exc)
        return isinstance(exc, QueueUnavailable) and not exc.maybe_applied

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, QueueRateLimited) and exc.retry_after is not None:
            return exc.retry_after
        return self._backoff(state)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "queue API call failed; retrying",
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            error=str(exc),
        )

    async def _post(self, endpoint: Endpoint, content: bytes) -> Any:
        self.calls[endpoint] += 1
        started = time.monotonic()
        status: int | None = None
        try:
            response = await self._client.post(
                self._urls[endpoint], content=content, headers=self._headers
            )
            status = response.status_code
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise QueueUnavailable(
                f"{self._where(endpoint)}: could not connect ({type(exc).__name__}: {exc})",
                maybe_applied=False,
            ) from exc
        except httpx.TransportError as exc:
            raise QueueUnavailable(
                f"{self._where(endpoint)}: no answer ({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            if self._observer is not None:
                self._observer(endpoint, status, time.monotonic() - started)
        return self._result(endpoint, response)

    def _result(self, endpoint: Endpoint, response: httpx.Response) -> Any:
        status = response.status_code
        try:
            envelope = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            envelope = None
        if not isinstance(envelope, dict):
            envelope = {}
        if 200 <= status < 300 and envelope.get("success") is True:
            return envelope.get("result")
        code, message = _first_error(envelope)
        described = f"HTTP {status}" + (f", error {code}: {message}" if code is not None else "")
        if status == 429:
            raise self._rate_limited(
                endpoint, code, described, retry_after_seconds(response.headers)
            )
        if status >= 500 or status == 408 or (code is None and status < 400):
            raise QueueUnavailable(
                f"{self._where(endpoint)} failed ({described})", code=code, http_status=status
            )
        if code is None:
            raise QueueConfigError(
                f"{self._where(endpoint)}: HTTP {status} without a Cloudflare error envelope; "
                "check the API base URL",
                http_status=status,
            )
        if code in CONFIG_ERRORS or code in AUTH_CODES or status in (401, 403):
            raise QueueConfigError(
                self._config_message(endpoint, code, described), code=code, http_status=status
            )
        raise QueueRequestRejected(
            f"Cloudflare refused {self._where(endpoint)} ({described})",
            code=code,
            http_status=status,
        )

    def _rate_limited(
        self, endpoint: Endpoint, code: int | None, described: str, retry_after: float | None
    ) -> QueueRateLimited:
        if code == GATEWAY_LIMIT_CODE:
            wait = max(retry_after or 0.0, self.retry.gateway_limit_wait)
            return QueueRateLimited(
                f"{self._where(endpoint)}: the account hit Cloudflare's API rate limit "
                f"({described}); wait {wait:.0f} s before calling again",
                retry_after=wait,
                code=code,
            )
        return QueueRateLimited(
            f"{self._where(endpoint)} was rate limited ({described})",
            retry_after=retry_after,
            code=code,
        )

    def _config_message(self, endpoint: Endpoint, code: int, described: str) -> str:
        queue, account = self.queue_id, self.account_id
        if code == 10104:
            return (
                f"queue {queue!r} does not exist in account {account!r} ({described}). Set "
                "queue_id to the queue's id, which `wrangler queues info <name>` prints."
            )
        if code == 10107:
            return (
                f"queue id {queue!r} (account {account!r}) is malformed ({described}); use the "
                "32-character id from `wrangler queues info <name>`, not the queue name."
            )
        if code == 7003:
            return (
                f"Cloudflare has no route for {self._where(endpoint)} ({described}); check "
                "account_id and the API base URL."
            )
        return (
            f"Cloudflare refused the API token for {self._where(endpoint)} ({described}). The "
            "token needs the Account > Queues > Edit permission on this account."
        )


def _first_error(envelope: dict[str, Any]) -> tuple[int | None, str]:
    errors = envelope.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        message = errors[0].get("message")
        return (code if isinstance(code, int) else None), str(message or "")
    return None, ""


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _warnings(value: Any) -> dict[str, str]:
    """``warnings`` is a map of lease id → message (SDK 5.9.0) or a list (4.3.1) (§1.4)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): str(v) for i, v in enumerate(value)}
    return {}


def pulled_message(raw: Any) -> QueueMessage | None:
    """A :class:`QueueMessage` from one entry of ``result.messages``; ``None`` without a lease."""
    if not isinstance(raw, dict):
        return None
    message_id, lease_id = raw.get("id"), raw.get("lease_id")
    if not isinstance(message_id, str) or not isinstance(lease_id, str) or not lease_id:
        return None
    content_type = content_type_of(raw.get("metadata"))
    decoded = decode_body(raw.get("body"), content_type)
    attempts, timestamp_ms = raw.get("attempts"), raw.get("timestamp_ms")
    return QueueMessage(
        id=message_id,
        lease_id=lease_id,
        attempts=attempts if isinstance(attempts, int) else 1,
        timestamp_ms=int(timestamp_ms) if isinstance(timestamp_ms, int | float) else 0,
        body=decoded.value,
        decode_error=decoded.error,
        content_type=content_type,
        size=decoded.size,
    )
