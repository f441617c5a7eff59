"""The worker as a real subprocess: ``python -m worker.cli run`` with an env of settings.

``worker_factory(env, name=...)`` starts one worker process with ``INVOICE_SYNC_*`` variables
(nothing from the test's own environment with that prefix leaks in), its JSON logs (stdout
and stderr) in a file of its own, and ``INVOICE_SYNC_HTTP__PORT`` set to a free port so the
test can poll ``/readyz`` and scrape ``/metrics``. Teardown SIGKILLs and reaps every process
still running, so a failing test never leaves a worker behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from worker.broker import free_port

__all__ = ["WorkerFactory", "WorkerProcess"]

_PREFIX = "INVOICE_SYNC_"


class WorkerProcess:
    """One running (or finished) worker process and the ways to look at it from outside."""

    def __init__(
        self,
        *,
        name: str,
        proc: subprocess.Popen[bytes],
        port: int,
        log_path: Path,
        http: aiohttp.ClientSession,
    ) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self._http = http

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.name} pid={self.proc.pid} rc={self.proc.returncode}>"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap: no drain, no commit, no goodbye to the group."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after ``timeout_s``."""
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            return None

    async def terminate(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful drain and leave); the exit code, or None if it hung (then killed)."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        code = await self.wait(timeout_s)
        if code is None:
            self.kill()
        return code

    async def get(self, path: str) -> tuple[int, str] | None:
        """``GET`` on the health port; None when nothing answers (not up, or gone)."""
        try:
            async with self._http.get(
                f"http://127.0.0.1:{self.port}{path}", timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def readyz(self) -> int | None:
        answer = await self.get("/readyz")
        return None if answer is None else answer[0]

    async def metrics(self) -> str:
        answer = await self.get("/metrics")
        assert answer is not None, f"{self.name}: /metrics did not answer"
        assert answer[0] == 200, f"{self.name}: /metrics answered {answer[0]}"
        return answer[1]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line (other lines, e.g. a crash's traceback, are skipped)."""
        out = []
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event") == event]

    async def wait_logged(
        self, event: str, timeout_s: float, *, nonempty: str | None = None
    ) -> None:
        """Wait until a log line with ``event`` appears (and a non-empty ``nonempty`` field).

        Raises:
            AssertionError: the process exited, or ``timeout_s`` passed, first.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(nonempty is None or e.get(nonempty) for e in self.logged(event)):
                return
            assert self.running, f"{self.name} exited with {self.proc.returncode}: {self.tail()}"
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name}: no {event!r} log line in {timeout_s} s: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class WorkerFactory:
    """Starts worker processes; :meth:`close` kills whatever still runs."""

    def __init__(self, *, workdir: Path, http: aiohttp.ClientSession) -> None:
        self._workdir = workdir
        self._http = http
        self.processes: list[WorkerProcess] = []

    def __call__(self, env: Mapping[str, str], *, name: str | None = None) -> WorkerProcess:
        name = name or f"worker-{len(self.processes) + 1}"
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_PREFIX)}
        full_env.update(env)
        full_env["INVOICE_SYNC_HTTP__HOST"] = "127.0.0.1"
        full_env["INVOICE_SYNC_HTTP__PORT"] = str(port)
        full_env["PYTHONUNBUFFERED"] = "1"  # a SIGKILL must not eat the last log lines
        log_path = self._workdir / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run"],
                env=full_env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(name=name, proc=proc, port=port, log_path=log_path, http=self._http)
        self.processes.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.processes:
            worker.kill()


@pytest.fixture
async def worker_factory(tmp_path: Path) -> AsyncIterator[WorkerFactory]:
    """``worker_factory(env, name=...)`` starts a worker subprocess; all are killed at teardown."""
    workdir = tmp_path / "workers"
    workdir.mkdir()
    async with aiohttp.ClientSession() as http:
        factory = WorkerFactory(workdir=workdir, http=http)
        try:
            yield factory
        finally:
            factory.close()
