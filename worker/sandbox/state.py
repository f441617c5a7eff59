"""The sandbox's whole in-process state: one object, so tests and ``reset`` find it all.

:class:`SandboxState` composes the token registry, the fault engine and the ledger, and
keeps the counters that ``GET /_sandbox/stats`` reports. Nothing in here prints or
returns a token value except :meth:`SandboxState.issued_secrets`, which exists for tests
that scan logs for leaks.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from worker.sandbox.config import ClientSpec, SandboxConfig
from worker.sandbox.faults import FaultEngine
from worker.sandbox.ledger import CreditNote, Invoice, Ledger
from worker.sandbox.tokens import TokenRegistry

__all__ = ["STATE_KEY", "Replay", "SandboxState"]


@dataclass(frozen=True, slots=True)
class Replay:
    """A stored response for an ``Idempotency-Key``."""

    fingerprint: bytes
    status: int
    body: bytes
    stored_at: float


class SandboxState:
    """Tokens, faults, ledger, idempotency cache and counters of one sandbox server."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.clients: dict[str, ClientSpec] = {c.client_id: c for c in config.clients}
        self.api_keys = dict(config.api_keys)
        self.tokens = TokenRegistry(
            lifetime=config.token_lifetime,
            token_format=config.token_format,
            jwt_secret=config.jwt_secret,
        )
        self.faults = FaultEngine(config.faults)
        self._init_data()

    def _init_data(self) -> None:
        self.ledger = Ledger()
        # (principal, key) -> first response; pruned lazily after config.idempotency_ttl.
        self.idempotency: dict[tuple[str, str], Replay] = {}
        self.token_requests: Counter[str] = Counter()
        self.token_errors: Counter[str] = Counter()
        self.token_request_times: list[float] = []
        self.requests_by_status: Counter[int] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.resource_requests = 0
        self.revocations = 0
        self.idempotent_replays = 0
        self.idempotency_conflicts = 0

    # -- conveniences for tests -----------------------------------------------------------

    @property
    def invoices(self) -> dict[int, Invoice]:
        return self.ledger.invoices

    @property
    def credit_notes(self) -> dict[int, CreditNote]:
        return self.ledger.credit_notes

    def issued_secrets(self) -> list[str]:
        """Every token ever issued, plus client secrets, API keys and the JWT secret."""
        values = list(self.tokens.issued)
        values += [c.client_secret for c in self.clients.values()]
        values += list(self.api_keys)
        values.append(self.config.jwt_secret)
        return values

    # -- idempotency ----------------------------------------------------------------------

    def replay(self, principal: str, key: str, fingerprint: bytes) -> Replay | None:
        """Return the stored response for ``key``; a different fingerprint gives status 0."""
        entry = self.idempotency.get((principal, key))
        if entry is None:
            return None
        if time.monotonic() - entry.stored_at > self.config.idempotency_ttl:
            del self.idempotency[(principal, key)]
            return None
        if entry.fingerprint != fingerprint:
            self.idempotency_conflicts += 1
            return Replay(fingerprint, 0, b"", entry.stored_at)
        self.idempotent_replays += 1
        return entry

    def remember(
        self, principal: str, key: str, fingerprint: bytes, status: int, body: bytes
    ) -> None:
        now = time.monotonic()
        if len(self.idempotency) > 100_000:
            ttl = self.config.idempotency_ttl
            self.idempotency = {
                k: v for k, v in self.idempotency.items() if now - v.stored_at <= ttl
            }
        self.idempotency[(principal, key)] = Replay(fingerprint, status, body, now)

    @staticmethod
    def fingerprint(method: str, path: str, body: bytes) -> bytes:
        return hashlib.sha256(f"{method} {path}\n".encode() + body).digest()

    # -- inspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The JSON document of ``GET /_sandbox/stats`` (no token values in it)."""
        ledger = self.ledger
        return {
            "token_requests": dict(self.token_requests),
            "token_errors": dict(self.token_errors),
            "token_request_times": list(self.token_request_times),
            "tokens_issued": len(self.tokens.issued),
            "revocations": self.revocations,
            "resource_requests": self.resource_requests,
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
            "auth_failures": dict(self.auth_failures),
            "customers": len(ledger.contacts),
            "products": len(ledger.products),
            "invoices": len(ledger.invoices),
            "credit_notes": len(ledger.credit_notes),
            "references": list(ledger.references),
            "reference_counts": dict(ledger.reference_counts),
            "duplicate_references": ledger.duplicate_references,
            "idempotent_replays": self.idempotent_replays,
            "idempotency_conflicts": self.idempotency_conflicts,
            "faults_injected": dict(self.faults.injected),
            "injected_delays_ms": list(self.faults.delays_ms),
        }

    def reset(self, *, tokens: bool = False) -> None:
        """Clear data, idempotency cache and counters; with ``tokens`` also drop tokens.

        Faults stay as they are (set them explicitly), and the leak-scan list of issued
        values is kept either way.
        """
        self._init_data()
        self.faults.reset_counters()
        if tokens:
            self.tokens.clear()


STATE_KEY = web.AppKey("sandbox_state", SandboxState)
