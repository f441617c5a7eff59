"""The idempotency ledger: one row per document the worker owes, and the audit trail.

Kafka delivers at least once; the ledger makes it effectively exactly once. For every
document (store, kind, order id, sub id) the worker:

1. **claims** the row before calling the API. A fresh row means nobody ever tried, so the
   document is created straight away. A row left ``claimed`` by a crash (or by a replica that
   lost the partition mid-request) means a POST may have reached the API: the worker looks
   the document up by reference before creating anything;
2. sends the POST with an ``Idempotency-Key`` stored in the row, the same on every attempt
   and after every restart, so even a lost response cannot create a second document;
3. **completes** the row with the document id.

A row also records ``void`` for an order cancelled before it was invoiced, so a late paid
event does not invoice it, and ``dead_lettered`` with the reason when the event went to the
DLQ (a replay after a fix claims it again). Times, attempts and the last error make the table
the audit trail finance asks for.

The ledger also remembers which source records were dead-lettered (topic, partition, offset
and a digest of their bytes), so a record read again before its offset was committed is not
dead-lettered twice (see :class:`worker.dlq.DeadLetterWriter`).

Backends: SQLite (file; one replica) and PostgreSQL (several replicas), chosen by URL. The
schema is created at start; ``schema_version`` lets later releases migrate it.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from worker.errors import LedgerUnavailable
from worker.lifecycle import Lifecycle
from worker.logs import get_logger
from worker.metrics import LEDGER_LATENCY, labelled
from worker.settings import LedgerSettings

__all__ = [
    "Claim",
    "ClaimStatus",
    "Ledger",
    "LedgerEntry",
    "LedgerKey",
    "PostgresLedger",
    "SqliteLedger",
    "open_ledger",
]

SCHEMA_VERSION = 1

log = get_logger(__name__)

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ledger_meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS documents (
        store_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        order_id TEXT NOT NULL,
        sub_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        reference TEXT NOT NULL,
        event_id TEXT,
        document_id TEXT,
        payload TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        completed_at TEXT,
        PRIMARY KEY (store_id, kind, order_id, sub_id)
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        seen_at TEXT NOT NULL,
        PRIMARY KEY (source, delivery_id)
    )""",
    # Source records already dead-lettered, so a redelivery (after a restart or a rebalance,
    # when the letter's offset was not committed yet) does not write a second letter. The
    # digest of key and value tells a recreated topic's new record at an old offset apart.
    """CREATE TABLE IF NOT EXISTS dead_letters (
        topic TEXT NOT NULL,
        record_partition INTEGER NOT NULL,
        record_offset BIGINT NOT NULL,
        digest TEXT NOT NULL,
        reason TEXT NOT NULL,
        written_at TEXT NOT NULL,
        PRIMARY KEY (topic, record_partition, record_offset, digest)
    )""",
]


@dataclass(frozen=True, slots=True)
class LedgerKey:
    """Identity of one document the worker owes."""

    store_id: str
    kind: str  # "invoice" | "credit_note"
    order_id: str
    sub_id: str = ""  # refund id, or "cancel" (events.CANCELLATION_SUB_ID) for a cancellation

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.store_id, self.kind, self.order_id, self.sub_id)


class ClaimStatus(enum.Enum):
    NEW = "new"  # nobody tried before: create directly
    RESUME = "resume"  # an earlier attempt may have reached the API: look up first
    DONE = "done"  # the document exists: skip
    VOID = "void"  # the order was cancelled before it was invoiced: skip


@dataclass(frozen=True, slots=True)
class Claim:
    status: ClaimStatus
    document_id: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    key: LedgerKey
    state: str
    idempotency_key: str
    reference: str
    document_id: str | None
    payload: str | None
    attempts: int
    last_error: str | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _Timer:
    """Observe one ledger operation's latency."""

    __slots__ = ("_op", "_t0")

    def __init__(self, op: str) -> None:
        self._op = op
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        labelled(LEDGER_LATENCY, self._op).observe(time.perf_counter() - self._t0)


class Ledger(Lifecycle, abc.ABC):
    """Common behaviour; backends implement the five primitive statements."""

    _started = False
    _closed = False

    async def start(self) -> None:
        """Open the connection(s) and create or migrate the schema.

        Raises:
            RuntimeError: when started twice.
        """
        if self._started:
            raise RuntimeError("ledger already started")
        self._started = True
        await self._open()
        for statement in _SCHEMA:
            await self._execute(statement)
        await self._execute(
            "INSERT INTO ledger_meta (name, value) VALUES ({0}, {1}) ON CONFLICT DO NOTHING",
            "schema_version",
            str(SCHEMA_VERSION),
        )

    async def close(self) -> None:
        """Close; safe to call more than once."""
        if self._started and not self._closed:
            self._closed = True
            await self._close()

    async def claim(
        self, key: LedgerKey, *, idempotency_key: str, reference: str, event_id: str
    ) -> Claim:
        """Claim ``key`` before calling the API; see the module docstring for the statuses."""
        now = _now()
        with _Timer("claim"):
            inserted = await self._insert(
                "INSERT INTO documents (store_id, kind, order_id, sub_id, state, idempotency_key,"
                " reference, event_id, attempts, created_at, updated_at)"
                " VALUES ({0}, {1}, {2}, {3}, 'claimed', {4}, {5}, {6}, 1, {7}, {7})"
                " ON CONFLICT DO NOTHING",
                *key.as_tuple(),
                idempotency_key,
                reference,
                event_id,
                now,
            )
            if inserted:
                return Claim(ClaimStatus.NEW, None, 1)
            row = await self._fetchrow(
                "SELECT state, document_id, attempts FROM documents"
                " WHERE store_id={0} AND kind={1} AND order_id={2} AND sub_id={3}",
                *key.as_tuple(),
            )
            assert row is not None
            state, document_id, attempts = row[0], row[1], int(row[2])
            if state == "done":
                return Claim(ClaimStatus.DONE, document_id, attempts)
            if state == "void":
                return Claim(ClaimStatus.VOID, None, attempts)
            await self._execute(
                "UPDATE documents SET state='claimed', attempts=attempts+1, event_id={4},"
                " updated_at={5} WHERE store_id={0} AND kind={1} AND order_id={2} AND sub_id={3}",
                *key.as_tuple(),
                event_id,
                now,
            )
            return Claim(ClaimStatus.RESUME, None, attempts + 1)

    async def complete(self, key: LedgerKey, *, document_id: str, payload: str | None) -> None:
        """Record the created (or found) document; the row becomes ``done``."""
        now = _now()
        with _Timer("complete"):
            await self._execute(
                "UPDATE documents SET state='done', document_id={4}, payload={5}, last_error=NULL,"
                " updated_at={6}, completed_at={6}"
                " WHERE store_id={0} AND kind={1} AND order_id={2} AND sub_id={3}",
                *key.as_tuple(),
                document_id,
                payload,
                now,
            )

    async def record_error(self, key: LedgerKey, *, reason: str, dead_lettered: bool) -> None:
        """Remember the last error; ``dead_lettered`` marks the row as sent to the DLQ."""
        state_sql = "'dead_lettered'" if dead_lettered else "state"
        with _Timer("fail"):
            await self._execute(
                f"UPDATE documents SET state={state_sql}, last_error={{4}}, updated_at={{5}}"
                " WHERE store_id={0} AND kind={1} AND order_id={2} AND sub_id={3}"
                " AND state <> 'done'",
                *key.as_tuple(),
                reason,
                _now(),
            )

    async def void(self, key: LedgerKey, *, event_id: str) -> bool:
        """Mark an invoice that was never created as void (order cancelled first).

        Returns False when a row already exists (the invoice was created or attempted).
        """
        now = _now()
        with _Timer("claim"):
            return await self._insert(
                "INSERT INTO documents (store_id, kind, order_id, sub_id, state, idempotency_key,"
                " reference, event_id, attempts, created_at, updated_at)"
                " VALUES ({0}, {1}, {2}, {3}, 'void', '', '', {4}, 0, {5}, {5})"
                " ON CONFLICT DO NOTHING",
                *key.as_tuple(),
                event_id,
                now,
            )

    async def get(self, key: LedgerKey) -> LedgerEntry | None:
        """The row for ``key``, or None."""
        with _Timer("lookup"):
            row = await self._fetchrow(
                "SELECT state, idempotency_key, reference, document_id, payload, attempts,"
                " last_error FROM documents"
                " WHERE store_id={0} AND kind={1} AND order_id={2} AND sub_id={3}",
                *key.as_tuple(),
            )
        if row is None:
            return None
        return LedgerEntry(
            key=key,
            state=row[0],
            idempotency_key=row[1],
            reference=row[2],
            document_id=row[3],
            payload=row[4],
            attempts=int(row[5]),
            last_error=row[6],
        )

    async def refund_payloads(
        self, store_id: str, order_id: str, *, with_cancellation: bool = False
    ) -> list[str]:
        """Bodies of the refund credit notes already created for an order.

        A cancellation subtracts them; a refund checks itself against them and, with
        ``with_cancellation``, against the cancellation's credit note too.
        """
        with _Timer("lookup"):
            rows = await self._fetchall(
                "SELECT payload FROM documents WHERE store_id={0} AND kind='credit_note'"
                " AND order_id={1} AND (sub_id <> 'cancel' OR {2}) AND state='done'"
                " AND payload IS NOT NULL ORDER BY created_at",
                store_id,
                order_id,
                with_cancellation,
            )
        return [str(r[0]) for r in rows]

    async def delivery_seen(self, source: str, delivery_id: str) -> bool:
        """True when this platform delivery id was processed before."""
        with _Timer("lookup"):
            row = await self._fetchrow(
                "SELECT 1 FROM deliveries WHERE source={0} AND delivery_id={1}",
                source,
                delivery_id,
            )
        return row is not None

    async def record_delivery(self, source: str, delivery_id: str) -> None:
        """Remember a processed platform delivery id (after its work finished)."""
        with _Timer("complete"):
            await self._execute(
                "INSERT INTO deliveries (source, delivery_id, seen_at) VALUES ({0}, {1}, {2})"
                " ON CONFLICT DO NOTHING",
                source,
                delivery_id,
                _now(),
            )

    async def dead_letter_written(
        self, topic: str, partition: int, offset: int, digest: str
    ) -> bool:
        """True when this source record (with these bytes) was dead-lettered before."""
        with _Timer("lookup"):
            row = await self._fetchrow(
                "SELECT 1 FROM dead_letters WHERE topic={0} AND record_partition={1}"
                " AND record_offset={2} AND digest={3}",
                topic,
                partition,
                offset,
                digest,
            )
        return row is not None

    async def record_dead_letter(
        self, topic: str, partition: int, offset: int, digest: str, *, reason: str
    ) -> None:
        """Remember that this source record's dead letter was written (acknowledged)."""
        with _Timer("complete"):
            await self._execute(
                "INSERT INTO dead_letters (topic, record_partition, record_offset, digest, reason,"
                " written_at) VALUES ({0}, {1}, {2}, {3}, {4}, {5}) ON CONFLICT DO NOTHING",
                topic,
                partition,
                offset,
                digest,
                reason,
                _now(),
            )

    async def count_by_state(self) -> dict[str, int]:
        """Rows per state (for the demo summary and tests)."""
        rows = await self._fetchall("SELECT state, COUNT(*) FROM documents GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}

    # --- backend primitives; SQL uses {0}, {1}... placeholders ----------------------------

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def _execute(self, sql: str, *args: Any) -> None: ...

    @abc.abstractmethod
    async def _insert(self, sql: str, *args: Any) -> bool:
        """Run an INSERT ... ON CONFLICT DO NOTHING; True when a row was inserted."""

    @abc.abstractmethod
    async def _fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None: ...

    @abc.abstractmethod
    async def _fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


class SqliteLedger(Ledger):
    """One file, WAL journal, group commit on the event loop's thread, checkpoints off it.

    Every statement from every in-flight event joins the current batch; the batch runs as one
    transaction with one commit. It runs right on the event loop's thread: in WAL mode with
    ``synchronous=NORMAL`` a commit appends to the WAL without waiting for the disk, so a
    batch of a few dozen statements takes well under a millisecond, less than the hand-off to
    a thread and back cost (measured in docs/benchmark.md). Two things could make the loop
    wait, and both run on the ledger's thread instead:

    * a write lock held by another process: the loop never waits for it (busy timeout 0);
      a batch that finds the file locked runs on the thread, which waits up to
      ``timeout_s`` and then fails its statements with :class:`LedgerUnavailable`;
    * checkpoints (copying the WAL into the database, with an fsync): automatic checkpoints
      are off on the loop's connection; the thread checkpoints through its own connection
      about once a second while there are writes. ``RESTART`` mode, because a passive
      checkpoint racing a steady stream of commits never sees the WAL fully copied, so the
      WAL would never start over and would grow for ever. While it runs, batches find the
      file locked and wait for it on the thread, as above.

    A statement that fails gets its own exception; the rest of its batch still commits. For a
    single replica (and the demo); several replicas need :class:`PostgresLedger`.
    """

    def __init__(self, path: str, *, timeout_s: float = 10.0) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._db: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ledger-sqlite"
        )
        self._sql_cache: dict[str, str] = {}
        # Statements waiting for the next batch; only the event loop's thread touches it.
        self._pending: list[_Statement] = []
        self._flushing: asyncio.Task[None] | None = None
        self._checkpointing: asyncio.Future[Any] | None = None
        self._last_checkpoint = 0.0

    def __repr__(self) -> str:
        return f"SqliteLedger(path={self._path!r})"

    def _sql(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            # {n} may repeat (e.g. {7} twice), so use numbered ?NNN parameters.
            cached = sql.format(*[f"?{i + 1}" for i in range(10)])
            self._sql_cache[sql] = cached
        return cached

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection | None]:
        if self._path not in (":memory:", ""):
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN ... COMMIT around each batch).
        # timeout=0: a locked file fails at once on the loop; the thread sets its own wait.
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a process crash (SIGKILL);
        # only an OS crash could lose the last few, and the API's Idempotency-Key covers that.
        conn.execute("PRAGMA synchronous=NORMAL")
        if self._path in (":memory:", ""):
            return conn, None  # nothing to checkpoint, and no second connection sees it
        conn.execute("PRAGMA wal_autocheckpoint=0")
        checkpointer = sqlite3.connect(
            self._path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
        )
        return conn, checkpointer

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._db, self._checkpointer = await loop.run_in_executor(self._thread, self._connect)

    async def _close(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        db, self._db = self._db, None
        checkpointer, self._checkpointer = self._checkpointer, None
        loop = asyncio.get_running_loop()
        for conn in (checkpointer, db):
            if conn is not None:
                # The last connection to close checkpoints the rest of the WAL.
                await loop.run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)

    async def _enqueue(self, kind: str, sql: str, args: tuple[Any, ...]) -> Any:
        if self._db is None:
            raise RuntimeError("ledger not started")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Statement(kind, self._sql(sql), args, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                # Let every statement issued in this loop iteration join the batch.
                await asyncio.sleep(0)
                batch, self._pending = self._pending, []
                try:
                    results = self._run_batch(batch, wait=False)
                except _Locked:
                    try:
                        results = await loop.run_in_executor(
                            self._thread, functools.partial(self._run_batch, batch, wait=True)
                        )
                    except Exception as exc:
                        results = [exc] * len(batch)
                except Exception as exc:
                    results = [exc] * len(batch)
                for statement, result in zip(batch, results, strict=True):
                    if statement.future.done():
                        continue  # its caller was cancelled
                    if isinstance(result, Exception):
                        statement.future.set_exception(result)
                    else:
                        statement.future.set_result(result)
                self._maybe_checkpoint(loop)
        finally:
            self._flushing = None

    def _run_batch(self, batch: list[_Statement], *, wait: bool) -> list[Any]:
        """Run ``batch`` in one transaction; ``wait`` for a lock only off the loop.

        Raises:
            _Locked: the file is locked and ``wait`` is false (nothing ran).
        """
        db = self._db
        assert db is not None
        if wait:
            db.execute(f"PRAGMA busy_timeout={int(self._timeout_s * 1000)}")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not wait and _is_locked(exc):
                raise _Locked from None
            raise
        finally:
            if wait:
                db.execute("PRAGMA busy_timeout=0")
        results: list[Any] = []
        try:
            for st in batch:
                try:
                    cursor = db.execute(st.sql, st.args)
                    if st.kind == "insert":
                        results.append(cursor.rowcount == 1)
                    elif st.kind == "fetchrow":
                        row = cursor.fetchone()
                        results.append(tuple(row) if row is not None else None)
                    elif st.kind == "fetchall":
                        results.append([tuple(r) for r in cursor.fetchall()])
                    else:
                        results.append(None)
                except sqlite3.Error as exc:
                    results.append(exc)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    def _maybe_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        """Copy the WAL into the database on the thread, at most about once a second."""
        if self._checkpointer is None or self._checkpointing is not None:
            return
        now = time.monotonic()
        if now - self._last_checkpoint < _CHECKPOINT_EVERY_S:
            return
        self._last_checkpoint = now
        future = loop.run_in_executor(self._thread, self._checkpoint)
        self._checkpointing = future
        future.add_done_callback(self._checkpoint_done)

    def _checkpoint(self) -> None:
        checkpointer = self._checkpointer
        if checkpointer is not None:
            # RESTART: copies every frame and makes the next commit reuse the WAL from its start.
            checkpointer.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def _checkpoint_done(self, future: asyncio.Future[Any]) -> None:
        self._checkpointing = None
        if not future.cancelled() and future.exception() is not None:
            # Not an event's failure: the next one tries again (the WAL only grows meanwhile).
            log.warning("ledger.checkpoint_failed", error=type(future.exception()).__name__)

    async def _execute(self, sql: str, *args: Any) -> None:
        await self._submit("execute", sql, args)

    async def _insert(self, sql: str, *args: Any) -> bool:
        return bool(await self._submit("insert", sql, args))

    async def _fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = await self._submit("fetchrow", sql, args)
        return row

    async def _fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self._submit("fetchall", sql, args)
        return rows

    async def _submit(self, kind: str, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            return await self._enqueue(kind, sql, args)
        except sqlite3.OperationalError as exc:
            # Locked by another process past the busy timeout, disk full, I/O error: the
            # pipeline pauses and retries without spending the event's attempts.
            raise LedgerUnavailable(f"sqlite ledger: {exc}") from None


_CHECKPOINT_EVERY_S = 1.0


class _Locked(Exception):
    """The SQLite file is locked by another connection (the batch has not run)."""


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


@dataclass(slots=True)
class _Statement:
    """One statement waiting for the next SQLite batch."""

    kind: str  # execute | insert | fetchrow | fetchall
    sql: str
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


class PostgresLedger(Ledger):
    """A connection pool on PostgreSQL; several replicas share it safely."""

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        pool_size: int = 10,
        timeout_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._password = password
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._sql_cache: dict[str, str] = {}

    def __repr__(self) -> str:
        parts = urlsplit(self._dsn)
        return f"PostgresLedger(host={parts.hostname!r}, db={parts.path.lstrip('/')!r})"

    def _sql(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = sql.format(*[f"${i + 1}" for i in range(10)])
            self._sql_cache[sql] = cached
        return cached

    async def _open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn.replace("postgres://", "postgresql://", 1),
            password=self._password,
            min_size=1,
            max_size=self._pool_size,
            command_timeout=self._timeout_s,
            timeout=self._timeout_s,
        )

    async def _close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("ledger not started")
        return self._pool

    async def _execute(self, sql: str, *args: Any) -> None:
        async with _postgres_errors():
            await self._p.execute(self._sql(sql), *args)

    async def _insert(self, sql: str, *args: Any) -> bool:
        async with _postgres_errors():
            status = await self._p.execute(self._sql(sql), *args)
        return str(status).endswith(" 1")

    async def _fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        async with _postgres_errors():
            row = await self._p.fetchrow(self._sql(sql), *args)
        return tuple(row) if row is not None else None

    async def _fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with _postgres_errors():
            rows = await self._p.fetch(self._sql(sql), *args)
        return [tuple(r) for r in rows]


@contextlib.asynccontextmanager
async def _postgres_errors() -> AsyncIterator[None]:
    """Connection loss, timeouts and server-side outages become LedgerUnavailable."""
    try:
        yield
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
    ) as exc:
        raise LedgerUnavailable(f"postgres ledger: {type(exc).__name__}") from None


def open_ledger(settings: LedgerSettings) -> Ledger:
    """The backend named by ``settings.url`` (not started yet)."""
    parts = urlsplit(settings.url)
    if parts.scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path
        path = settings.url.split("sqlite:///", 1)[1] if "sqlite:///" in settings.url else ""
        return SqliteLedger(path or ":memory:", timeout_s=settings.timeout_s)
    password = settings.password.get_secret_value() if settings.password else None
    return PostgresLedger(
        settings.url,
        password=password,
        pool_size=settings.pool_size,
        timeout_s=settings.timeout_s,
    )
