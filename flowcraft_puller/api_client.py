"""What the daemon's two HTTP clients share — the Cloudflare Queues client and the Worker (run
store) client: an httpx client owned or shared, ``Retry-After`` parsing, jittered back-off."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import httpx
from tenacity import wait_exponential_jitter

RequestObserver = Callable[[str, int | None, float], None]
"""Called as ``observer(endpoint, http_status_or_None, seconds)`` after every HTTP request."""


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), ``None`` when absent."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def jittered_backoff(initial: float, maximum: float) -> wait_exponential_jitter:
    """Exponential back-off from ``initial`` up to ``maximum`` seconds, with up to ``initial``
    of jitter, so that many daemons retrying at once spread out."""
    return wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)


class ApiClient:
    """A client of one HTTP API. A shared ``client`` is used as is and left open; without one,
    it makes its own and closes it with :meth:`aclose` (or ``async with``)."""

    def __init__(
        self, client: httpx.AsyncClient | None, timeout: httpx.Timeout, limits: httpx.Limits
    ) -> None:
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, limits=limits)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
