"""Processes the benchmark drives, and how it reads them without disturbing them.

* :class:`SandboxProcess`: ``python -m bench.sandbox_server`` (the real sandbox app plus
  creation timestamps), one fresh process per measurement so every run starts from an
  empty ledger and its own token counters.
* :class:`WorkerProcess`: ``.venv/bin/invoice-sync run`` configured only through
  ``INVOICE_SYNC_*`` variables, exactly as deployed. Being its own process, its peak RSS
  (``VmHWM``) and CPU time (``utime + stime``) in ``/proc/<pid>`` are the worker's alone.
* :func:`publish`: a fresh topic with its partitions, filled before the worker starts.

Progress is read from the sandbox (the system of record), never from the worker's own
counters, so a worker that miscounts cannot flatter itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.events import BenchEvent
from worker.broker import free_port

__all__ = [
    "ROOT",
    "Progress",
    "SandboxProcess",
    "WorkerProcess",
    "create_topic",
    "publish",
    "read_metric",
    "worker_env",
]

ROOT = Path(__file__).resolve().parent.parent
_BANNER = "sandbox listening on "
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Progress:
    """``GET /_bench/progress``: what the sandbox has created so far."""

    invoices: int
    first: float | None
    last: float | None
    token_requests: int
    auth_failures: int


class SandboxProcess:
    """The timed sandbox in its own process; an async context manager."""

    def __init__(self, options: Sequence[str] = ()) -> None:
        self._options = list(options)
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> SandboxProcess:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sandbox_server", "--port", "0", *self._options,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), _START_TIMEOUT_S)
        text = line.decode().strip()
        if not text.startswith(_BANNER):
            await self.__aexit__()
            raise RuntimeError(f"sandbox did not start: {text!r}")
        self.url = text.removeprefix(_BANNER)
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _get(self, path: str) -> Any:
        assert self._http is not None
        async with self._http.get(self.url + path) as response:
            response.raise_for_status()
            return await response.json()

    async def progress(self) -> Progress:
        """The cheap poll: counts and the first/last creation times."""
        doc = await self._get("/_bench/progress")
        return Progress(**doc)

    async def created(self) -> dict[str, Any]:
        """References with creation times, token request times, and the sandbox stats."""
        doc: dict[str, Any] = await self._get("/_bench/created")
        return doc

    async def wait_for(self, count: int, *, timeout_s: float, every_s: float = 0.05) -> Progress:
        """Poll until ``count`` invoices exist.

        Raises:
            TimeoutError: no new invoice for ``timeout_s``.
        """
        seen, idle = -1, 0.0
        while True:
            progress = await self.progress()
            if progress.invoices >= count:
                return progress
            if progress.invoices != seen:
                seen, idle = progress.invoices, 0.0
            idle += every_s
            if idle > timeout_s:
                raise TimeoutError(f"stuck at {progress.invoices}/{count} invoices")
            await asyncio.sleep(every_s)


def worker_env(
    *,
    bootstrap: str,
    topic: str,
    api_url: str,
    ledger_path: Path,
    metrics_port: int,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The worker's environment: the caller's, minus any ``INVOICE_SYNC_*``, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("INVOICE_SYNC_")}
    env.update(
        {
            "INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "INVOICE_SYNC_KAFKA__TOPICS": f'["{topic}"]',
            "INVOICE_SYNC_KAFKA__GROUP_ID": f"bench-{topic}",
            "INVOICE_SYNC_API__BASE_URL": api_url,
            "INVOICE_SYNC_OAUTH__TOKEN_URL": f"{api_url}/oauth/token",
            "INVOICE_SYNC_LEDGER__URL": f"sqlite:///{ledger_path}",
            "INVOICE_SYNC_HTTP__HOST": "127.0.0.1",
            "INVOICE_SYNC_HTTP__PORT": str(metrics_port),
            **(extra or {}),
        }
    )
    return env


class WorkerProcess:
    """``invoice-sync run`` as a child process, with ``/proc`` readings of its resources."""

    def __init__(self, env: Mapping[str, str], *, log_path: Path) -> None:
        self._env = dict(env)
        self._log_path = log_path
        self.metrics_url = f"http://127.0.0.1:{env['INVOICE_SYNC_HTTP__PORT']}/metrics"
        self._proc: asyncio.subprocess.Process | None = None

    @classmethod
    def configured(
        cls,
        *,
        bootstrap: str,
        topic: str,
        api_url: str,
        workdir: Path,
        extra: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """A worker for ``topic`` with a fresh ledger and metrics port in ``workdir``."""
        env = worker_env(
            bootstrap=bootstrap, topic=topic, api_url=api_url,
            ledger_path=workdir / f"ledger-{topic}.db", metrics_port=free_port(), extra=extra,
        )  # fmt: skip
        return cls(env, log_path=workdir / f"worker-{topic}.log")

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> None:
        exe = Path(sys.executable).parent / "invoice-sync"
        with open(self._log_path, "wb") as log:  # noqa: ASYNC230 - opened once, before the run
            self._proc = await asyncio.create_subprocess_exec(
                str(exe), "run", env=self._env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (fields 14 and 15 of ``/proc/<pid>/stat``)."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()  # the name may contain spaces
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def _status_mb(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc status")

    def peak_rss_mb(self) -> float:
        """``VmHWM``: the high-water mark of resident memory, in MiB."""
        return self._status_mb("VmHWM")

    def rss_mb(self) -> float:
        """``VmRSS``: resident memory now, in MiB."""
        return self._status_mb("VmRSS")

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(self.metrics_url) as response:
            return await response.text()

    async def wait(self, timeout_s: float) -> int:
        """Wait for the worker to exit by itself; SIGTERM (then SIGKILL) after ``timeout_s``."""
        proc = self._proc
        assert proc is not None
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            return await self.stop()

    async def stop(self) -> int:
        """SIGTERM, a grace period, then SIGKILL; returns the exit code."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return proc.returncode or 0

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def read_metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def create_topic(bootstrap: str, topic: str, *, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1), NewTopic(f"{topic}.dlq", 1, 1)])
    finally:
        await admin.close()


async def publish(
    bootstrap: str, topic: str, events: Sequence[BenchEvent], *, partitions: int
) -> None:
    """Create ``topic`` and fill it; returns once every record is acknowledged."""
    await create_topic(bootstrap, topic, partitions=partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, event.value, key=event.key)
        await producer.flush()
    finally:
        await producer.stop()
