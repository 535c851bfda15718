"""The emulator's queue broker: Cloudflare Queues semantics for the pull consumer API.

Queues hold messages with leases (visibility timeouts), delivery attempts, retry and send
delays, ``max_retries`` then a dead-letter queue, and a per-queue throughput limit. Facts and
their sources are in ``../shared/reference/cloudflare-apis.md`` §1 (cited as "§n").

The hot path is O(batch): ready messages sit in a heap by visibility time, leases in a heap by
expiry (entries are invalidated lazily by a per-message version), and with a ``state_path``
every broker call is written to SQLite in one transaction, so a restart keeps messages, leases
and attempts. All methods are synchronous and run on the event loop, hence atomic.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import re
import secrets
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from flowcraft_puller.queue.errors import (
    QueueConfigError,
    QueueRateLimited,
    QueueRequestRejected,
)
from flowcraft_puller.queue.protocol import OutgoingMessage

MAX_MESSAGE_BYTES: Final = 128_000
"""128 KB with 1 KB = 1000 B, including ~100 B of internal metadata (§1.6 limits.mdx)."""
MESSAGE_OVERHEAD_BYTES: Final = 100
MAX_BATCH_MESSAGES: Final = 100
MAX_BATCH_BYTES: Final = 256_000
"""sendBatch: 100 messages or 256 KB (§1.3, §1.6; error codes 10206 / 10205)."""
MAX_DELAY_MS: Final = 43_200_000
"""Send and retry delays: 12 h in limits.mdx and batching-retries.mdx, 24 h on the live page
(§1.6); the emulator enforces the stricter 12 h."""
MAX_VISIBILITY_TIMEOUT_MS: Final = 43_200_000
"""12 h (§1.3, §1.6)."""
MAX_PULL_BATCH: Final = 100
DEFAULT_PULL_BATCH: Final = 5
"""Pull ``batch_size`` default 5, max 100 (§1.3)."""
DEFAULT_THROUGHPUT_LIMIT: Final = 5_000
"""Messages per second per queue, producing and pull+ack (§1.6)."""

QUEUE_NAME_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
"""Lowercase letters, digits and dashes, at most 63 characters. Cloudflare's exact rule is not
in the reference; this is the stricter reading of wrangler's naming advice."""
_QUEUE_ID_CHARACTERS: Final = re.compile(r"^[A-Za-z0-9]+$")
_CONFIGURED_QUEUE_NAMESPACE: Final = uuid.UUID("6f1c3d1e-6a47-4d0c-9d9e-51a0f0c0ffee")


# ---- values ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ConsumerSettings:
    """The http_pull consumer settings of a queue (§1.3 "consumer settings", §1.8)."""

    max_retries: int = 3
    dead_letter_queue: str | None = None
    visibility_timeout_ms: int = 30_000
    retry_delay_seconds: int = 0


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to enqueue. ``body`` holds the payload bytes (JSON text for ``json``); with
    ``wire`` it is the exact string a pull returns (admin injection of odd encodings)."""

    body: bytes
    content_type: str = "json"
    delay_ms: int = 0
    wire: bool = False


@dataclass(frozen=True, slots=True)
class RetryRequest:
    lease_id: str
    delay_ms: int | None = None
    """``None``: the consumer's ``retry_delay``."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed out by a pull."""

    id: str
    body: bytes
    content_type: str
    source: str
    wire: bool
    timestamp_ms: int
    attempts: int
    lease_id: str


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """``metadata.metrics`` of pull and send results (newer API spec, best effort, §1.4)."""

    backlog_count: int
    backlog_bytes: int
    oldest_message_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class PulledBatch:
    deliveries: list[Delivery]
    metrics: QueueMetrics


@dataclass(frozen=True, slots=True)
class AckOutcome:
    acked: int
    retried: int
    warnings: dict[str, str]


# ---- state ----------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Message:
    id: str
    seq: int
    body: bytes
    content_type: str
    source: str
    wire: bool
    timestamp_ms: int
    attempts: int
    visible_at_ms: int
    lease_until_ms: int | None = None
    version: int = 0


_HeapEntry = tuple[int, int, int, _Message]


@dataclass(eq=False, slots=True)
class BrokerQueue:
    """A queue and its messages. Read its fields; change it only through the broker."""

    id: str
    name: str
    created_ms: int
    settings: ConsumerSettings
    messages: dict[str, _Message] = field(default_factory=dict)
    ready: list[_HeapEntry] = field(default_factory=list)
    leases: list[_HeapEntry] = field(default_factory=list)
    by_age: list[tuple[int, int, _Message]] = field(default_factory=list)
    backlog_bytes: int = 0
    windows: dict[str, list[int]] = field(default_factory=dict)
    """Throughput windows by direction (``produce``, ``consume``): [start ms, messages]."""

    def holds(self, message: _Message) -> bool:
        return self.messages.get(message.id) is message


@dataclass(slots=True)
class _Changes:
    """Rows to write in the one transaction that ends a broker call, keyed by ``seq``."""

    queues: list[BrokerQueue] = field(default_factory=list)
    inserted: dict[int, tuple[str, _Message]] = field(default_factory=dict)
    updated: dict[int, _Message] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)

    def insert(self, queue: BrokerQueue, message: _Message) -> None:
        self.inserted[message.seq] = (queue.id, message)

    def update(self, message: _Message) -> None:
        if message.seq not in self.inserted:
            self.updated[message.seq] = message

    def delete(self, message: _Message) -> None:
        if self.inserted.pop(message.seq, None) is None:
            self.deleted.add(message.seq)
        self.updated.pop(message.seq, None)


# ---- lease ids ------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LeaseCodec:
    """Issues and opens lease ids.

    Cloudflare's lease ids are JWEs (§1.4); these have the same five-part compact shape and
    carry the queue id, message id and delivery number encrypted and authenticated under the
    broker's key, so an ack needs no lease table and a stale lease still names its message.
    """

    _HEADER: Final = _b64url(b'{"alg":"dir","enc":"A256CBC-HS512"}')
    _PAYLOAD_BYTES: Final = 36

    def __init__(self, key: bytes) -> None:
        if len(key) != 64:
            raise ValueError("the lease key must be 64 bytes")
        self._encryption_key = key[:32]
        self._mac_key = key[32:]

    def _stream(self, iv: bytes) -> int:
        digest = hashlib.blake2b(iv, key=self._encryption_key, digest_size=self._PAYLOAD_BYTES)
        return int.from_bytes(digest.digest())

    def _tag(self, iv: bytes, ciphertext: bytes) -> bytes:
        return hashlib.blake2b(iv + ciphertext, key=self._mac_key, digest_size=32).digest()

    def issue(self, queue_id: str, message_id: str, delivery: int) -> str:
        payload = bytes.fromhex(queue_id) + bytes.fromhex(message_id) + delivery.to_bytes(4)
        iv = secrets.token_bytes(16)
        ciphertext = (int.from_bytes(payload) ^ self._stream(iv)).to_bytes(self._PAYLOAD_BYTES)
        tag = self._tag(iv, ciphertext)
        return ".".join((self._HEADER, "", _b64url(iv), _b64url(ciphertext), _b64url(tag)))

    def open(self, lease_id: str) -> tuple[str, str, int] | None:
        """``(queue id, message id, delivery)``, or ``None`` for anything this key did not issue."""
        parts = lease_id.split(".")
        if len(parts) != 5 or parts[0] != self._HEADER or parts[1]:
            return None
        try:
            iv, ciphertext, tag = (_unb64url(p) for p in parts[2:])
        except (ValueError, UnicodeEncodeError):
            return None
        if len(ciphertext) != self._PAYLOAD_BYTES or not hmac.compare_digest(
            tag, self._tag(iv, ciphertext)
        ):
            return None
        payload = (int.from_bytes(ciphertext) ^ self._stream(iv)).to_bytes(self._PAYLOAD_BYTES)
        return payload[:16].hex(), payload[16:32].hex(), int.from_bytes(payload[32:])


# ---- persistence ----------------------------------------------------------------------------

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cfq_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cfq_queues (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    dead_letter_queue TEXT,
    visibility_timeout_ms INTEGER NOT NULL,
    retry_delay_seconds INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cfq_messages (
    seq INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    wire INTEGER NOT NULL,
    source TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    lease_until_ms INTEGER
);
"""


class _Store:
    """The broker's SQLite tables (prefixed ``cfq_``; the file may be shared with the run store).

    Messages are keyed by their ascending ``seq``: pulls take the oldest messages and acks
    delete them, so each transaction touches a few adjacent pages rather than one page per
    row, as random message ids as keys would.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def lease_key(self) -> bytes:
        row = self._db.execute("SELECT value FROM cfq_meta WHERE key = 'lease_key'").fetchone()
        if row is not None:
            return bytes(row[0])
        key = secrets.token_bytes(64)
        self._db.execute("INSERT INTO cfq_meta (key, value) VALUES ('lease_key', ?)", (key,))
        return key

    def load(self) -> tuple[list[BrokerQueue], list[tuple[str, _Message]]]:
        queues = [
            BrokerQueue(
                id=row[0],
                name=row[1],
                created_ms=row[2],
                settings=ConsumerSettings(
                    max_retries=row[3],
                    dead_letter_queue=row[4],
                    visibility_timeout_ms=row[5],
                    retry_delay_seconds=row[6],
                ),
            )
            for row in self._db.execute("SELECT * FROM cfq_queues")
        ]
        messages = [
            (
                row[1],
                _Message(
                    id=row[2],
                    seq=row[0],
                    body=bytes(row[3]),
                    content_type=row[4],
                    wire=bool(row[5]),
                    source=row[6],
                    timestamp_ms=row[7],
                    attempts=row[8],
                    visible_at_ms=row[9],
                    lease_until_ms=row[10],
                ),
            )
            for row in self._db.execute("SELECT * FROM cfq_messages ORDER BY seq")
        ]
        return queues, messages

    def apply(self, changes: _Changes) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO cfq_queues VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        q.id,
                        q.name,
                        q.created_ms,
                        q.settings.max_retries,
                        q.settings.dead_letter_queue,
                        q.settings.visibility_timeout_ms,
                        q.settings.retry_delay_seconds,
                    )
                    for q in changes.queues
                ],
            )
            db.executemany(
                "DELETE FROM cfq_messages WHERE seq = ?", [(seq,) for seq in changes.deleted]
            )
            db.executemany(
                "INSERT OR REPLACE INTO cfq_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.seq,
                        queue_id,
                        m.id,
                        m.body,
                        m.content_type,
                        int(m.wire),
                        m.source,
                        m.timestamp_ms,
                        m.attempts,
                        m.visible_at_ms,
                        m.lease_until_ms,
                    )
                    for queue_id, m in changes.inserted.values()
                ],
            )
            db.executemany(
                "UPDATE cfq_messages SET attempts = ?, visible_at_ms = ?, lease_until_ms = ? "
                "WHERE seq = ?",
                [
                    (m.attempts, m.visible_at_ms, m.lease_until_ms, m.seq)
                    for m in changes.updated.values()
                ],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


# ---- limits ---------------------------------------------------------------------------------


def message_size(message: NewMessage) -> int:
    """The size counted against the 128 KB message and 256 KB batch limits."""
    return len(message.body) + MESSAGE_OVERHEAD_BYTES


def check_message(message: NewMessage, pointer: str = "") -> None:
    """Raise the error Cloudflare gives for a message that is too large or delayed too long."""
    size = message_size(message)
    if size > MAX_MESSAGE_BYTES:
        raise QueueRequestRejected(
            f"Message size out of bounds: {size} B including {MESSAGE_OVERHEAD_BYTES} B of "
            f"metadata exceeds {MAX_MESSAGE_BYTES} B",
            code=10204,
            http_status=400,
            pointer=f"{pointer}/body",
        )
    if not 0 <= message.delay_ms <= MAX_DELAY_MS:
        raise QueueRequestRejected(
            f"Invalid message metadata: delay_seconds must be within 0 and "
            f"{MAX_DELAY_MS // 1000} seconds",
            code=10203,
            http_status=400,
            pointer=f"{pointer}/delay_seconds",
        )


def check_batch_count(count: int) -> None:
    """Raise 10206 BatchCountOutOfBounds for a send batch of more than 100 messages."""
    if count > MAX_BATCH_MESSAGES:
        raise QueueRequestRejected(
            f"Batch count out of bounds: {count} messages; at most {MAX_BATCH_MESSAGES}",
            code=10206,
            http_status=400,
            pointer="/messages",
        )


def check_batch(messages: Sequence[NewMessage]) -> None:
    """Raise the error Cloudflare gives for a send batch over 100 messages or 256 KB."""
    check_batch_count(len(messages))
    for index, message in enumerate(messages):
        check_message(message, f"/messages/{index}")
    total = sum(message_size(m) for m in messages)
    if total > MAX_BATCH_BYTES:
        raise QueueRequestRejected(
            f"Batch size out of bounds: {total} B exceeds {MAX_BATCH_BYTES} B",
            code=10205,
            http_status=400,
            pointer="/messages",
        )


def configured_queue_id(name: str) -> str:
    """The stable id of a queue created from configuration (API-created queues get random ids)."""
    return uuid.uuid5(_CONFIGURED_QUEUE_NAMESPACE, name).hex


# ---- the broker -----------------------------------------------------------------------------


class QueueBroker:
    """All queues of one emulator."""

    def __init__(
        self,
        *,
        state_path: Path | None = None,
        throughput_limit: int = DEFAULT_THROUGHPUT_LIMIT,
        defaults: ConsumerSettings | None = None,
    ) -> None:
        self.throughput_limit = throughput_limit
        self.defaults = defaults or ConsumerSettings()
        self.stats: Counter[str] = Counter()
        self.clock_offset_ms = 0
        self._by_id: dict[str, BrokerQueue] = {}
        self._by_name: dict[str, BrokerQueue] = {}
        self._seq = 0
        self._store = _Store(state_path) if state_path is not None else None
        if self._store is None:
            self._leases = LeaseCodec(secrets.token_bytes(64))
        else:
            self._leases = LeaseCodec(self._store.lease_key())
            self._load(self._store)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def now_ms(self) -> int:
        """Wall-clock milliseconds plus the clock offset tests may add."""
        return int(time.time() * 1000) + self.clock_offset_ms

    def advance_clock(self, ms: int) -> int:
        """Move the broker's clock forward (tests: expire leases and delays without waiting)."""
        self.clock_offset_ms += max(0, ms)
        return self.now_ms()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _commit(self, changes: _Changes) -> None:
        if self._store is not None and (
            changes.queues or changes.inserted or changes.updated or changes.deleted
        ):
            self._store.apply(changes)

    def _load(self, store: _Store) -> None:
        queues, messages = store.load()
        for queue in queues:
            self._register(queue)
        for queue_id, message in messages:
            owner = self._by_id.get(queue_id)
            if owner is None:
                continue
            self._seq = max(self._seq, message.seq)
            self._hold(owner, message)

    # ---- queues ---------------------------------------------------------------------------

    def _register(self, queue: BrokerQueue) -> None:
        self._by_id[queue.id] = queue
        self._by_name[queue.name] = queue

    def _new_queue(self, name: str, queue_id: str, changes: _Changes) -> BrokerQueue:
        settings = ConsumerSettings(
            max_retries=self.defaults.max_retries,
            visibility_timeout_ms=self.defaults.visibility_timeout_ms,
            retry_delay_seconds=self.defaults.retry_delay_seconds,
        )
        queue = BrokerQueue(id=queue_id, name=name, created_ms=self.now_ms(), settings=settings)
        self._register(queue)
        changes.queues.append(queue)
        return queue

    def configure_queue(self, name: str, settings: ConsumerSettings) -> BrokerQueue:
        """Create a queue from configuration, or update the settings of the one by that name."""
        changes = _Changes()
        queue = self._by_name.get(name) or self._new_queue(name, configured_queue_id(name), changes)
        queue.settings = settings
        if queue not in changes.queues:
            changes.queues.append(queue)
        self._commit(changes)
        return queue

    def create_queue(self, name: str) -> BrokerQueue:
        """Cloudflare's create-queue call: a new queue with a random 32-hex id."""
        if not QUEUE_NAME_PATTERN.match(name):
            raise QueueRequestRejected(
                f"Invalid queue name {name!r}: use 1-63 lowercase letters, digits and dashes, "
                "starting and ending with a letter or digit",
                code=10207,
                http_status=400,
                pointer="/queue_name",
            )
        if name in self._by_name:
            raise QueueRequestRejected(
                f"A queue named {name!r} already exists: queue name already taken",
                code=11009,
                http_status=409,
                pointer="/queue_name",
            )
        changes = _Changes()
        queue = self._new_queue(name, uuid.uuid4().hex, changes)
        self._commit(changes)
        return queue

    def queues(self) -> list[BrokerQueue]:
        return list(self._by_id.values())

    def queue_id(self, name: str) -> str:
        queue = self._by_name.get(name)
        if queue is None:
            raise QueueConfigError(f"the emulator has no queue named {name!r}", code=10104)
        return queue.id

    def resolve(self, queue_id: str) -> BrokerQueue:
        """The queue with this id, or Cloudflare's 10107 (malformed id) / 10104 (no such queue)."""
        queue = self._by_id.get(queue_id)
        if queue is not None:
            return queue
        if not _QUEUE_ID_CHARACTERS.match(queue_id):
            raise QueueConfigError(
                "The queue ID in the request URL is not a valid queue identifier",
                code=10107,
                http_status=400,
            )
        raise QueueConfigError("Queue does not exist", code=10104, http_status=404)

    def find(self, ref: str) -> BrokerQueue:
        """A queue by id or by name (admin routes)."""
        queue = self._by_id.get(ref) or self._by_name.get(ref)
        if queue is None:
            raise QueueConfigError(f"no queue with id or name {ref!r}", code=10104, http_status=404)
        return queue

    # ---- message state --------------------------------------------------------------------

    def _hold(self, queue: BrokerQueue, message: _Message) -> None:
        queue.messages[message.id] = message
        queue.backlog_bytes += len(message.body)
        heapq.heappush(queue.by_age, (message.timestamp_ms, message.seq, message))
        if message.lease_until_ms is None:
            heapq.heappush(queue.ready, (message.visible_at_ms, message.seq, 0, message))
        else:
            heapq.heappush(queue.leases, (message.lease_until_ms, message.seq, 0, message))

    def _remove(self, queue: BrokerQueue, message: _Message, changes: _Changes) -> None:
        del queue.messages[message.id]
        queue.backlog_bytes -= len(message.body)
        message.version += 1
        changes.delete(message)

    def _make_ready(
        self, queue: BrokerQueue, message: _Message, visible_at_ms: int, changes: _Changes
    ) -> None:
        message.lease_until_ms = None
        message.visible_at_ms = visible_at_ms
        message.version += 1
        heapq.heappush(queue.ready, (visible_at_ms, message.seq, message.version, message))
        changes.update(message)

    def _dead_letter(
        self, queue: BrokerQueue, message: _Message, now_ms: int, changes: _Changes
    ) -> None:
        """Past ``max_retries``: to the DLQ if one is configured (created if missing), else
        dropped (§1.7; dead-letter-queues.mdx)."""
        self._remove(queue, message, changes)
        target_name = queue.settings.dead_letter_queue
        if target_name is None:
            self.stats["dropped"] += 1
            return
        target = self._by_name.get(target_name) or self._new_queue(
            target_name, configured_queue_id(target_name), changes
        )
        copy = _Message(
            id=message.id,
            seq=self._next_seq(),
            body=message.body,
            content_type=message.content_type,
            source=message.source,
            wire=message.wire,
            timestamp_ms=message.timestamp_ms,
            attempts=0,
            visible_at_ms=now_ms,
        )
        self._hold(target, copy)
        changes.insert(target, copy)
        self.stats["dead_lettered"] += 1

    def _lapse(self, queue: BrokerQueue, message: _Message, at_ms: int, changes: _Changes) -> None:
        """A lease ran out: that delivery counted as an attempt (§1.7: each delivery increments
        ``attempts``; that an expiry counts is implied there, and the stricter reading)."""
        self.stats["expired"] += 1
        if message.attempts >= max(1, queue.settings.max_retries):
            self._dead_letter(queue, message, at_ms, changes)
        else:
            self._make_ready(queue, message, at_ms, changes)

    def _expire_due(self, queue: BrokerQueue, now_ms: int, changes: _Changes) -> None:
        leases = queue.leases
        while leases and leases[0][0] <= now_ms:
            until, _, version, message = heapq.heappop(leases)
            if message.version == version and queue.holds(message):
                self._lapse(queue, message, until, changes)

    def _admit(self, queue: BrokerQueue, direction: str, now_ms: int) -> list[int]:
        """The per-queue throughput limit, 5,000 msg/s for producing and for pull+ack (§1.6):
        once a one-second window has seen ``limit`` messages in a direction, calls in that
        direction are refused with 429 / 10250 until the window ends. A message pulled and
        then acked counts once ("pull and acknowledge up to 5,000 messages / second"), at
        the pull: acks and retries are neither counted nor refused, so a consumer can always
        settle what it holds. Returns the window to add to."""
        window = queue.windows.setdefault(direction, [now_ms, 0])
        if now_ms - window[0] >= 1000:
            window[0], window[1] = now_ms, 0
        if window[1] >= self.throughput_limit:
            self.stats["throttled"] += 1
            raise QueueRateLimited(
                "Queue is overloaded: more than "
                f"{self.throughput_limit} messages per second on queue {queue.name!r}",
                code=10250,
                http_status=429,
            )
        return window

    def metrics(self, queue: BrokerQueue) -> QueueMetrics:
        by_age = queue.by_age
        while by_age and not queue.holds(by_age[0][2]):
            heapq.heappop(by_age)
        return QueueMetrics(
            backlog_count=len(queue.messages),
            backlog_bytes=queue.backlog_bytes,
            oldest_message_timestamp_ms=by_age[0][0] if by_age else 0,
        )

    # ---- the API --------------------------------------------------------------------------

    def send(self, queue_id: str, messages: Sequence[NewMessage], *, source: str) -> QueueMetrics:
        """Enqueue messages (each checked against the size and delay limits) atomically."""
        queue = self.resolve(queue_id)
        for index, new in enumerate(messages):
            check_message(new, f"/messages/{index}" if len(messages) > 1 else "")
        now = self.now_ms()
        changes = _Changes()
        self._expire_due(queue, now, changes)
        window = self._admit(queue, "produce", now)
        for new in messages:
            stored = _Message(
                id=uuid.uuid4().hex,
                seq=self._next_seq(),
                body=new.body,
                content_type=new.content_type,
                source=source,
                wire=new.wire,
                timestamp_ms=now,
                attempts=0,
                visible_at_ms=now + new.delay_ms,
            )
            self._hold(queue, stored)
            changes.insert(queue, stored)
        window[1] += len(messages)
        self.stats["sent"] += len(messages)
        self._commit(changes)
        return self.metrics(queue)

    def pull(
        self, queue_id: str, batch_size: int, visibility_timeout_ms: int | None
    ) -> PulledBatch:
        """Lease up to ``batch_size`` visible messages, oldest first; ``attempts`` counts
        deliveries (§1.4, §1.7)."""
        queue = self.resolve(queue_id)
        now = self.now_ms()
        changes = _Changes()
        self._expire_due(queue, now, changes)
        window = self._admit(queue, "consume", now)
        timeout = visibility_timeout_ms or queue.settings.visibility_timeout_ms
        ready = queue.ready
        deliveries: list[Delivery] = []
        while ready and len(deliveries) < batch_size:
            visible_at, _, version, message = ready[0]
            valid = (
                message.version == version
                and message.lease_until_ms is None
                and queue.holds(message)
            )
            if valid and visible_at > now:
                break
            heapq.heappop(ready)
            if not valid:
                continue
            message.attempts += 1
            message.lease_until_ms = now + timeout
            message.version += 1
            heapq.heappush(
                queue.leases, (message.lease_until_ms, message.seq, message.version, message)
            )
            changes.update(message)
            deliveries.append(
                Delivery(
                    id=message.id,
                    body=message.body,
                    content_type=message.content_type,
                    source=message.source,
                    wire=message.wire,
                    timestamp_ms=message.timestamp_ms,
                    attempts=message.attempts,
                    lease_id=self._leases.issue(queue.id, message.id, message.attempts),
                )
            )
        window[1] += len(deliveries)
        self.stats["delivered"] += len(deliveries)
        self._commit(changes)
        return PulledBatch(deliveries=deliveries, metrics=self.metrics(queue))

    def _leased_message_id(
        self, queue: BrokerQueue, lease_id: str, warnings: dict[str, str]
    ) -> str | None:
        opened = self._leases.open(lease_id)
        if opened is None or opened[0] != queue.id:
            warnings[lease_id] = "lease id is not valid for this queue; ignored"
            return None
        return opened[1]

    def ack(
        self, queue_id: str, acks: Sequence[str], retries: Sequence[RetryRequest]
    ) -> AckOutcome:
        """Acknowledge and retry by lease id.

        A stale lease is accepted (§1.7, pull-consumers.mdx §4) and acts on its message even
        if that message was redelivered meanwhile: an ack deletes it, a retry puts it back
        (or dead-letters it) and voids the newer lease. That is the stricter of the readings
        and the one the docs warn about ("a slow consumer can ack a message another consumer
        is still working on"). Acks of messages already gone are counted and change nothing.
        Lease ids this broker never issued for this queue are ignored with a warning.
        """
        queue = self.resolve(queue_id)
        now = self.now_ms()
        changes = _Changes()
        self._expire_due(queue, now, changes)
        warnings: dict[str, str] = {}
        acked = retried = 0
        for lease_id in acks:
            message_id = self._leased_message_id(queue, lease_id, warnings)
            if message_id is None:
                continue
            acked += 1
            message = queue.messages.get(message_id)
            if message is not None:
                self._remove(queue, message, changes)
                self.stats["acked"] += 1
        for retry in retries:
            message_id = self._leased_message_id(queue, retry.lease_id, warnings)
            if message_id is None:
                continue
            retried += 1
            message = queue.messages.get(message_id)
            if message is None:
                continue
            self.stats["retried"] += 1
            if message.attempts >= max(1, queue.settings.max_retries):
                self._dead_letter(queue, message, now, changes)
                continue
            delay_ms = retry.delay_ms
            if delay_ms is None:
                delay_ms = queue.settings.retry_delay_seconds * 1000
            self._make_ready(queue, message, now + delay_ms, changes)
        self._commit(changes)
        return AckOutcome(acked=acked, retried=retried, warnings=warnings)

    def expire_leases(self, queue_id: str | None = None) -> int:
        """A lease expiry storm: every current lease (of one queue, or all) runs out now."""
        if queue_id is None:
            targets = list(self._by_id.values())
        else:
            found = self._by_id.get(queue_id)
            targets = [found] if found is not None else []
        now = self.now_ms()
        changes = _Changes()
        expired = 0
        for queue in targets:
            for message in [m for m in queue.messages.values() if m.lease_until_ms is not None]:
                self._lapse(queue, message, now, changes)
                expired += 1
        self._commit(changes)
        return expired

    def settle(self) -> None:
        """Process due lease expiries in every queue (admin views show settled state)."""
        now = self.now_ms()
        changes = _Changes()
        for queue in list(self._by_id.values()):
            self._expire_due(queue, now, changes)
        self._commit(changes)

    def describe(self, queue: BrokerQueue, *, limit: int = 100) -> dict[str, Any]:
        """Counts and the first ``limit`` messages of a queue, for the admin routes."""
        now = self.now_ms()
        leased = sum(1 for m in queue.messages.values() if m.lease_until_ms is not None)
        delayed = sum(
            1 for m in queue.messages.values() if m.lease_until_ms is None and m.visible_at_ms > now
        )
        dlq = queue.settings.dead_letter_queue
        dlq_queue = self._by_name.get(dlq) if dlq is not None else None
        return {
            "id": queue.id,
            "name": queue.name,
            "depth": len(queue.messages),
            "ready": len(queue.messages) - leased - delayed,
            "leased": leased,
            "delayed": delayed,
            "backlog_bytes": queue.backlog_bytes,
            "dead_letter_queue": dlq,
            "dead_lettered": len(dlq_queue.messages) if dlq_queue is not None else 0,
            "settings": {
                "max_retries": queue.settings.max_retries,
                "visibility_timeout_ms": queue.settings.visibility_timeout_ms,
                "retry_delay_seconds": queue.settings.retry_delay_seconds,
            },
            "messages": [
                {
                    "id": m.id,
                    "content_type": m.content_type,
                    "source": m.source,
                    "timestamp_ms": m.timestamp_ms,
                    "attempts": m.attempts,
                    "visible_at_ms": m.visible_at_ms,
                    "lease_until_ms": m.lease_until_ms,
                    "size": len(m.body),
                    "body": _admin_body(m),
                }
                for m in itertools.islice(queue.messages.values(), limit)
            ],
        }

    def sender(self, queue_name: str) -> BrokerSender:
        """A ``JobSender`` into the named queue, as a Worker's producer binding would be."""
        return BrokerSender(self, queue_name)


def _admin_body(message: _Message) -> Any:
    if message.content_type == "json" and not message.wire:
        try:
            return orjson.loads(message.body)
        except orjson.JSONDecodeError:
            pass
    if message.content_type == "text" or message.wire:
        return message.body.decode("utf-8", "replace")
    return base64.b64encode(message.body).decode()


class BrokerSender:
    """Sends JSON jobs into a broker queue with millisecond delays (the run service's outbox).

    Any number of messages goes in one atomic call; each is held to Cloudflare's 128 KB and
    12 h delay limits (:class:`QueueRequestRejected`), and the queue's throughput limit
    applies (:class:`QueueRateLimited`).
    """

    def __init__(self, broker: QueueBroker, queue_name: str) -> None:
        self._broker = broker
        self.queue_name = queue_name

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if not messages:
            return
        queue_id = self._broker.queue_id(self.queue_name)
        encoded = []
        for message in messages:
            try:
                body = orjson.dumps(message.body)
            except orjson.JSONEncodeError as exc:
                raise QueueRequestRejected(f"message body is not JSON: {exc}") from exc
            encoded.append(NewMessage(body=body, delay_ms=max(0, message.delay_ms)))
        self._broker.send(queue_id, encoded, source="worker")
