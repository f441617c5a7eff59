"""A database of its own on the machine's PostgreSQL server for each test run.

Server from ``INVOICE_SYNC_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth on this machine). Under ``INVOICE_SYNC_TEST_STRICT=1`` (as in ``.ci/run``) a missing
server fails the run; otherwise the tests that need it are skipped with the reason shown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def strict() -> bool:
    """True when a missing real server must fail the run instead of skipping."""
    return os.environ.get("INVOICE_SYNC_TEST_STRICT") == "1"


def missing_server(what: str) -> None:
    """Fail (strict mode) or skip with a reason that names the missing server."""
    if strict():
        pytest.fail(f"{what} (INVOICE_SYNC_TEST_STRICT=1 makes this an error)", pytrace=False)
    pytest.skip(f"{what}; set INVOICE_SYNC_TEST_STRICT=1 to make this an error")


async def _admin_async(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin(dsn: str, sql: str) -> None:
    # A thread with a private loop: the fixture may be requested from inside a running loop,
    # and asyncio.run() in this thread would reset the loop under pytest-asyncio's feet.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _admin_async(dsn, sql)).result()


@pytest.fixture(scope="session")
def pg_server_dsn() -> str:
    return os.environ.get("INVOICE_SYNC_TEST_PG_DSN", DEFAULT_DSN)


@pytest.fixture(scope="session")
def postgres_url(pg_server_dsn: str) -> Iterator[str]:
    """URL of a fresh database for this test session; dropped at the end."""
    name = f"invoice_sync_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(pg_server_dsn, f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        missing_server(f"PostgreSQL at {pg_server_dsn} is not reachable ({type(exc).__name__})")
    parts = urlsplit(pg_server_dsn)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        yield url
    finally:
        _admin(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
