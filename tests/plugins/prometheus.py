"""A real Prometheus (and promtool) for the monitoring tests.

``prometheus_factory`` starts ``prometheus`` on a free loopback port with its own temporary
storage, a 1 s scrape and evaluation interval, the given scrape targets and rule files, and
stops it at teardown. The returned :class:`PrometheusServer` queries the HTTP API
asynchronously, so a target served by the test's own event loop keeps answering scrapes.

The binaries come from Debian's ``prometheus`` package (``.ci/install-prometheus.sh``). When
they are missing the tests skip with the reason, or fail under ``INVOICE_SYNC_TEST_STRICT=1``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.plugins.postgres import missing_server
from worker.broker import free_port

__all__ = ["PrometheusFactory", "PrometheusServer", "QueryError"]

_START_TIMEOUT_S = 30.0


class QueryError(AssertionError):
    """The Prometheus HTTP API answered something other than ``status: success``."""


class PrometheusServer:
    """One ``prometheus`` process on ``127.0.0.1:port``; ``stop()`` ends it."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        interval: str = "1s",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": "invoice-sync",
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        # JSON is YAML, and needs no YAML library here.
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Wait until ``/-/ready`` answers 200; raise with the log tail if it never does."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log()}")
            try:
                async with session.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"prometheus not ready in {_START_TIMEOUT_S}s: {self.log()}")

    def log(self) -> str:
        """The tail of the server's log, for failure messages."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class PrometheusClient:
    """The parts of the HTTP API the tests use, over one aiohttp session."""

    def __init__(self, server: PrometheusServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self._session = session

    async def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; return ``data`` or raise :class:`QueryError`."""
        async with self._session.get(f"{self.server.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json(content_type=None)
        if body.get("status") != "success":
            raise QueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (raises for scalars or errors)."""
        data = await self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise QueryError(f"{expr}: expected a vector, got {data['resultType']}")
        return list(data["result"])

    async def wait_for(
        self, expr: str, *, timeout_s: float = 60.0, what: str | None = None
    ) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a non-empty vector (a condition, not a timer)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = await self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or expr} never held in {timeout_s}s")
            await asyncio.sleep(0.25)


PrometheusFactory = Callable[..., Awaitable[PrometheusClient]]


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the ``prometheus`` binary (skip or, strictly, fail when it is missing)."""
    path = shutil.which("prometheus")
    if path is None:
        missing_server("prometheus binary not found (run .ci/install-prometheus.sh)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    """Path of ``promtool`` (skip or, strictly, fail when it is missing)."""
    path = shutil.which("promtool")
    if path is None:
        missing_server("promtool not found (run .ci/install-prometheus.sh)")
    assert path is not None
    return path


@pytest.fixture
async def prometheus_factory(
    prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PrometheusFactory]:
    """``await prometheus_factory(targets=[...], rule_files=[...])`` starts a Prometheus."""
    servers: list[PrometheusServer] = []
    async with aiohttp.ClientSession() as session:

        async def start(
            *, targets: Sequence[str], rule_files: Sequence[Path] = ()
        ) -> PrometheusClient:
            server = PrometheusServer(
                prometheus_bin,
                tmp_path_factory.mktemp("prometheus"),
                targets=targets,
                rule_files=rule_files,
            )
            servers.append(server)
            await server.wait_ready(session)
            return PrometheusClient(server, session)

        try:
            yield start
        finally:
            for server in servers:
                server.stop()
