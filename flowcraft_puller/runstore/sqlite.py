"""The SQLite-persisted run store of the local emulator.

Runs are kept in memory as :class:`RunState` objects (the state machine of every store) and on
disk as one row per run holding its snapshot. A call changes the cached run, then writes the
snapshot, the outbox rows the change produced and the status record in one transaction. Once
that transaction committed, the rows are sent to the job queue and deleted; rows whose send
failed stay and are re-sent by the sweeper, which also expires coordination keys and status
records and deletes finished runs after the retention period.

:meth:`SqliteRunStore.run_grouped` (the emulator's ``/v1/batch``) runs calls in one
transaction, each in a savepoint of its own, writes each changed run's snapshot once at the end
and sends the outbox rows once it committed: one commit, one snapshot per run and one send per
batch instead of a commit, a snapshot and a send per call.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import orjson
import structlog

from flowcraft_puller.queue.protocol import JobSender, OutgoingMessage
from flowcraft_puller.runstore.memory import MemoryRunStore
from flowcraft_puller.runstore.protocol import (
    AttemptsRequest,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    CommitResponse,
    FailRequest,
    HookResponse,
    OpsRequest,
    OpsResponse,
    ReconcileResponse,
    ResumeRequest,
    ResumeResponse,
    RunList,
    RunStatus,
    RunSummary,
    StartRequest,
    StartResponse,
    StatusResponse,
)
from flowcraft_puller.runstore.snapshot import SnapshotEncoder, restore
from flowcraft_puller.runstore.state import OutboxJob, RunState

log = structlog.get_logger(__name__)

T = TypeVar("T")

RETENTION_SECONDS: Final = 604_800
STATUS_TTL_SECONDS: Final = 86_400
SEND_BATCH_MESSAGES: Final = 100
SEND_BATCH_BYTES: Final = 256 * 1024
RESEND_ROWS: Final = 1_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    snapshot BLOB NOT NULL,
    finished_at_ms INTEGER,
    next_expiry_ms INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_finish ON runs (finished_at_ms)
    WHERE finished_at_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_by_expiry ON runs (next_expiry_ms)
    WHERE next_expiry_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    body BLOB NOT NULL,
    delay_ms INTEGER NOT NULL,
    written_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_run ON outbox (run_id);
CREATE TABLE IF NOT EXISTS status_records (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    last_updated INTEGER NOT NULL,
    blueprint_id TEXT,
    record BLOB NOT NULL,
    expires_at_s INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS status_records_by_status ON status_records (status, run_id);
"""


@dataclass(frozen=True, slots=True)
class _OutboxRow:
    id: int
    body: bytes
    delay_ms: int
    written_at_ms: int

    def message(self, now_ms: int) -> OutgoingMessage:
        """The queue message, its delay shortened by the time the row has waited."""
        remaining = self.written_at_ms + self.delay_ms - now_ms
        return OutgoingMessage(orjson.loads(self.body), max(0, remaining))


@dataclass(slots=True)
class _Group:
    """A :meth:`SqliteRunStore.run_grouped` transaction: the outbox rows its calls wrote (sent
    once it committed) and the runs they changed (their snapshots are written at its end)."""

    rows: list[_OutboxRow] = field(default_factory=list)
    changed: dict[str, RunState] = field(default_factory=dict)
    spoiled: bool = False
    """A call failed on a run an earlier call of the group changed. Its last written snapshot
    predates that change, so the call cannot be undone alone: the group must roll back."""


async def _outcome(call: Callable[[], Awaitable[T]]) -> T | Exception:
    try:
        return await call()
    except Exception as exc:
        return exc


async def _one_by_one(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T | Exception]:
    return [await _outcome(call) for call in calls]


def _chunks(rows: list[_OutboxRow]) -> Iterator[list[_OutboxRow]]:
    """Rows in ``send_batch`` calls of at most 100 messages and 256 KB (Cloudflare's limits)."""
    chunk: list[_OutboxRow] = []
    size = 0
    for row in rows:
        if chunk and (len(chunk) == SEND_BATCH_MESSAGES or size + len(row.body) > SEND_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += len(row.body)
    if chunk:
        yield chunk


class SqliteRunStore(MemoryRunStore):
    """Runs persisted in SQLite (``path``; in memory when None); released jobs go to ``sender``."""

    def __init__(
        self,
        path: Path | None,
        sender: JobSender,
        *,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        status_interval_s: float = 10.0,
        retention_s: float = RETENTION_SECONDS,
        status_ttl_s: int = STATUS_TTL_SECONDS,
        wire_copies: bool = True,
    ) -> None:
        super().__init__(
            sender,
            clock_ms=clock_ms,
            status_interval_s=status_interval_s,
            wire_copies=wire_copies,
        )
        self._sender = sender
        self._retention_ms = int(retention_s * 1000)
        self._status_ttl_s = status_ttl_s
        self._sending: set[int] = set()
        self._encoder = SnapshotEncoder()
        self._group: _Group | None = None
        """The open :meth:`run_grouped` transaction, if any."""
        # Built by one thread, then used only by the event loop's thread (never both at once).
        self._db = sqlite3.connect(
            ":memory:" if path is None else path, isolation_level=None, check_same_thread=False
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        for run_id, data in self._db.execute("SELECT run_id, snapshot FROM runs"):
            self.runs[run_id] = restore(orjson.loads(data))

    def close(self) -> None:
        self._db.close()

    # ---- persistence -------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A transaction, or a savepoint within the open :meth:`run_grouped` one."""
        if self._group is not None:
            self._db.execute("SAVEPOINT call")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK TO call")
                self._db.execute("RELEASE call")
                raise
            self._db.execute("RELEASE call")
            return
        self._db.execute("BEGIN")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def run_grouped(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T | Exception]:
        """Each call's answer or exception, in order: the calls share one transaction (each
        still atomic on its own) and their outbox rows are sent once it committed. When a call
        fails on a run an earlier call changed, the group stops there, is rolled back, and the
        calls run again one after another, each committing on its own; so they do when the
        transaction cannot begin. If it cannot commit, the runs it touched are reloaded and the
        error raised."""
        try:
            self._db.execute("BEGIN")
        except sqlite3.Error:
            return await _one_by_one(calls)
        group = self._group = _Group()
        outcomes: list[T | Exception] = []
        try:
            for call in calls:
                outcomes.append(await _outcome(call))
                if group.spoiled:
                    break
        except BaseException:
            self._roll_back(group)
            raise
        finally:
            self._group = None
            self._sending.difference_update(row.id for row in group.rows)
        if group.spoiled:
            self._roll_back(group)
            return await _one_by_one(calls)
        try:
            for run in group.changed.values():
                self._write_snapshot(run)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._roll_back(group)
            raise
        if group.rows:
            await self._deliver(group.rows)
        return outcomes

    def _roll_back(self, group: _Group) -> None:
        """Undo a group: its transaction, its changes to the cached runs, and the memo of
        status records it wrote (so the next change writes them again)."""
        with suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        for run_id in group.changed:
            self._reload(run_id)
            self._status_written.pop(run_id, None)

    def _write_snapshot(self, run: RunState) -> None:
        self._db.execute(
            "INSERT INTO runs (run_id, snapshot, finished_at_ms, next_expiry_ms)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
            " snapshot = excluded.snapshot, finished_at_ms = excluded.finished_at_ms,"
            " next_expiry_ms = excluded.next_expiry_ms",
            (run.run_id, self._encoder.encode(run), run.finished_at_ms, run.next_expiry_ms()),
        )

    def _persist(
        self, run: RunState, jobs: list[OutboxJob], record: dict[str, Any] | None, now: int
    ) -> list[_OutboxRow]:
        """Write the run's snapshot (at the end of an open group), its new outbox rows and its
        status record atomically."""
        group = self._group
        if group is not None:
            group.changed[run.run_id] = run
            if not jobs and record is None:
                return []
        rows = []
        with self._transaction() as db:
            if group is None:
                self._write_snapshot(run)
            for job in jobs:
                body = orjson.dumps(job.body)
                cursor = db.execute(
                    "INSERT INTO outbox (run_id, body, delay_ms, written_at_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (run.run_id, body, job.delay_ms, now),
                )
                assert cursor.lastrowid is not None
                rows.append(_OutboxRow(cursor.lastrowid, body, job.delay_ms, now))
            if record is not None:
                db.execute(
                    "INSERT INTO status_records"
                    " (run_id, status, last_updated, blueprint_id, record, expires_at_s)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
                    " status = excluded.status, last_updated = excluded.last_updated,"
                    " blueprint_id = excluded.blueprint_id, record = excluded.record,"
                    " expires_at_s = excluded.expires_at_s",
                    (
                        run.run_id,
                        record["status"],
                        record["lastUpdated"],
                        record["blueprintId"],
                        orjson.dumps(record),
                        record["lastUpdated"] + self._status_ttl_s,
                    ),
                )
        return rows

    def _reload(self, run_id: str) -> None:
        """Replace the cached run by its last committed snapshot (or forget it)."""
        row = self._db.execute("SELECT snapshot FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            self.runs.pop(run_id, None)
        else:
            self.runs[run_id] = restore(orjson.loads(row[0]))

    async def _atomic(self, run_id: str, call: Awaitable[T]) -> T:
        """Run a call; if it fails, undo whatever it changed in the cached run."""
        try:
            return await call
        except Exception:
            group = self._group
            if group is not None and run_id in group.changed:
                group.spoiled = True
            else:
                self._reload(run_id)
            raise

    async def _after(self, run: RunState) -> None:
        """Commit the call's changes with its outbox rows, then send those rows."""
        now = self._now()
        jobs = run.take_outbox()
        record = run.status_record(now) if self._status_due(run, now) else None
        rows = self._persist(run, jobs, record, now)
        if record is not None:
            self._status_written_at(run, now)
        if self._group is not None:
            self._group.rows.extend(rows)
            self._sending.update(row.id for row in rows)
        elif rows:
            await self._deliver(rows)

    async def _deliver(self, rows: list[_OutboxRow]) -> int:
        """Send outbox rows and delete the ones sent; a failed send leaves rows for the sweeper."""
        ids = [row.id for row in rows]
        self._sending.update(ids)
        sent = 0
        try:
            for chunk in _chunks(rows):
                now = self._now()
                await self._sender.send_batch([row.message(now) for row in chunk])
                with self._transaction() as db:
                    db.executemany("DELETE FROM outbox WHERE id = ?", [(row.id,) for row in chunk])
                sent += len(chunk)
        except Exception as exc:
            log.warning(
                "job queue refused the outbox; the sweeper will re-send it",
                unsent=len(rows) - sent,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._sending.difference_update(ids)
        return sent

    # ---- protocol calls that change a run -------------------------------------------------

    async def start(self, run_id: str, request: StartRequest) -> StartResponse:
        return await self._atomic(run_id, super().start(run_id, request))

    async def claim(self, run_id: str, request: ClaimRequest) -> ClaimResponse:
        return await self._atomic(run_id, super().claim(run_id, request))

    async def commit(self, run_id: str, request: CommitRequest) -> CommitResponse:
        return await self._atomic(run_id, super().commit(run_id, request))

    async def attempts(self, run_id: str, request: AttemptsRequest) -> StatusResponse:
        return await self._atomic(run_id, super().attempts(run_id, request))

    async def fail(self, run_id: str, request: FailRequest) -> StatusResponse:
        return await self._atomic(run_id, super().fail(run_id, request))

    async def resume(self, run_id: str, request: ResumeRequest) -> ResumeResponse:
        return await self._atomic(run_id, super().resume(run_id, request))

    async def cancel(self, run_id: str, request: CancelRequest) -> StatusResponse:
        return await self._atomic(run_id, super().cancel(run_id, request))

    async def reconcile(self, run_id: str) -> ReconcileResponse:
        return await self._atomic(run_id, super().reconcile(run_id))

    async def ops(self, run_id: str, request: OpsRequest) -> OpsResponse:
        return await self._atomic(run_id, super().ops(run_id, request))

    async def hook(self, run_id: str, node_id: str, token: str, body: Any) -> HookResponse:
        return await self._atomic(run_id, super().hook(run_id, node_id, token, body))

    # ---- status records -------------------------------------------------------------------

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        stale_seconds: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunList:
        now_s = self._now() / 1000
        where = ["expires_at_s > :now"]
        if cursor is not None:
            where.append("run_id > :cursor")
        if status is not None:
            where.append("status = :status")
        if stale_seconds is not None:
            where.append("last_updated <= :now - :stale")
        # Conditions are left out rather than written "(:x IS NULL OR …)", which keeps SQLite
        # from using status_records_by_status for a listing by status.
        rows = self._db.execute(
            "SELECT run_id, status, last_updated, blueprint_id FROM status_records"
            f" WHERE {' AND '.join(where)} ORDER BY run_id LIMIT :limit",
            {
                "now": now_s,
                "cursor": cursor,
                "status": status,
                "stale": stale_seconds,
                "limit": limit,
            },
        ).fetchall()
        runs = [
            RunSummary(run_id=run_id, status=state, last_updated=updated, blueprint_id=blueprint)
            for run_id, state, updated, blueprint in rows
        ]
        next_cursor = runs[-1].run_id if len(runs) == limit else None
        return RunList(runs=runs, cursor=next_cursor)

    def status_record(self, run_id: str) -> dict[str, Any] | None:
        """The run's status record as the Worker writes it to KV, unless it expired."""
        row = self._db.execute(
            "SELECT record FROM status_records WHERE run_id = ? AND expires_at_s > ?",
            (run_id, self._now() / 1000),
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    # ---- sweeping ---------------------------------------------------------------------------

    async def resend_outbox(self) -> int:
        """Send outbox rows left by failed sends; returns how many were sent."""
        rows = [
            _OutboxRow(*row)
            for row in self._db.execute(
                "SELECT id, body, delay_ms, written_at_ms FROM outbox ORDER BY id LIMIT ?",
                (RESEND_ROWS,),
            )
            if row[0] not in self._sending
        ]
        return await self._deliver(rows) if rows else 0

    def expire_keys(self) -> int:
        """Drop coordination keys whose TTL passed; returns how many runs changed."""
        now = self._now()
        ids = [
            run_id
            for (run_id,) in self._db.execute(
                "SELECT run_id FROM runs WHERE next_expiry_ms <= ?", (now,)
            )
        ]
        for run_id in ids:
            run = self.runs[run_id]
            run.sweep_coordination(now)
            self._persist(run, [], None, now)
        return len(ids)

    def expire_status_records(self) -> int:
        """Delete status records older than their TTL; returns how many."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM status_records WHERE expires_at_s <= ?",
                (math.floor(self._now() / 1000),),
            )
        return cursor.rowcount

    def delete_finished(self) -> int:
        """Delete runs that finished more than the retention period ago; returns how many."""
        cutoff = self._now() - self._retention_ms
        ids = [
            run_id
            for (run_id,) in self._db.execute(
                "SELECT run_id FROM runs WHERE finished_at_ms <= ?", (cutoff,)
            )
        ]
        with self._transaction() as db:
            db.executemany("DELETE FROM runs WHERE run_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM outbox WHERE run_id = ?", [(i,) for i in ids])
        for run_id in ids:
            self.runs.pop(run_id, None)
            self._status_written.pop(run_id, None)
            self._encoder.forget(run_id)
        return len(ids)

    async def sweep(self) -> None:
        """One pass of every sweeper: outbox re-send, key and status expiry, retention."""
        await self.resend_outbox()
        self.expire_keys()
        self.expire_status_records()
        self.delete_finished()

    async def run_sweepers(self, interval_s: float = 1.0) -> None:
        """Sweep every ``interval_s`` seconds until cancelled; a failing pass is logged."""
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("run store sweep failed; retrying at the next interval")
            await anyio.sleep(interval_s)
