"""Typed errors of the Cloudflare Queues API, shared by the REST client and the emulator.

``code`` is Cloudflare's numeric error code (``errors[].code`` of the v4 envelope) and
``http_status`` the HTTP status that carries it; both are ``None`` for failures that never got
an answer (a connection reset, a timeout).
"""

from __future__ import annotations


class QueueError(Exception):
    """A Queues API call failed."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        pointer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.pointer = pointer
        """JSON pointer to the offending request field (``errors[].source.pointer``)."""


class QueueConfigError(QueueError):
    """The queue, account or token is wrong (10104, 10107, authentication errors).

    Retrying cannot help; the message names the queue id and the account to fix.
    """


class QueueRequestRejected(QueueError):
    """The request itself was refused (schema, size or delay limits): a caller bug, not retried."""


class QueueRateLimited(QueueError):
    """Too many requests. ``retry_after`` is how long to wait, in seconds, when it is known.

    Error 971 (the account API limit of 1,200 requests per 5 minutes) blocks the account for
    minutes; callers must pause their pull loops for ``retry_after`` rather than retry at once.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: int | None = None,
        http_status: int | None = 429,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.retry_after = retry_after


class QueueUnavailable(QueueError):
    """The API failed (5xx, connection reset, timeout, unreadable answer) after retries.

    ``maybe_applied`` is ``False`` only when the request is known never to have reached the
    server (the connection could not be opened), so a non-idempotent send may be repeated.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        maybe_applied: bool = True,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.maybe_applied = maybe_applied
