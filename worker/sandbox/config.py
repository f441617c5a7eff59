"""Static configuration of the sandbox: clients, scopes, token settings.

Everything here is decided before the server starts; runtime knobs (faults) live in
:mod:`worker.sandbox.faults` so a test can swap them without restarting. Secrets are kept
out of reprs so a failing assertion never prints one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from worker.sandbox.faults import Faults

__all__ = [
    "ALL_SCOPES",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "ClientSpec",
    "SandboxConfig",
    "TokenFormat",
]

ALL_SCOPES: frozenset[str] = frozenset(
    {
        "invoices.read",
        "invoices.write",
        "customers.read",
        "customers.write",
        "products.read",
        "products.write",
        "credit_notes.write",
    }
)
"""Every scope the sandbox knows; a client may be granted any subset."""

DEMO_CLIENT_ID = "demo-store"
DEMO_CLIENT_SECRET = "demo-secret-change-me"

TokenFormat = Literal["opaque", "jwt"]


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One OAuth client the token endpoint accepts.

    ``refresh_tokens`` makes the client-credentials grant also hand out a refresh token,
    so clients can exercise rotation against the ``refresh_token`` grant.
    """

    client_id: str
    client_secret: str = field(repr=False)
    scopes: frozenset[str] = ALL_SCOPES
    refresh_tokens: bool = False

    def __post_init__(self) -> None:
        unknown = self.scopes - ALL_SCOPES
        if unknown:
            raise ValueError(f"unknown scopes for client {self.client_id!r}: {sorted(unknown)}")


def _demo_clients() -> list[ClientSpec]:
    return [ClientSpec(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, ALL_SCOPES)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    """Everything :func:`worker.sandbox.run_sandbox` needs; defaults give the demo client.

    ``token_lifetime`` is in seconds and may be fractional (tests use 1 s).
    ``api_keys`` maps a static ``API-KEY`` header value to the scopes it grants.
    ``idempotency_ttl`` is how long an ``Idempotency-Key`` is remembered (24 h).
    """

    clients: list[ClientSpec] = field(default_factory=_demo_clients)
    token_lifetime: float = 3600.0
    token_format: TokenFormat = "opaque"
    jwt_secret: str = field(default="sandbox-jwt-secret-change-me", repr=False)
    faults: Faults = field(default_factory=Faults)
    api_keys: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    idempotency_ttl: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        if self.token_format not in ("opaque", "jwt"):
            raise ValueError(f"token_format must be 'opaque' or 'jwt', not {self.token_format!r}")
        ids = [c.client_id for c in self.clients]
        if len(ids) != len(set(ids)):
            raise ValueError("client ids must be unique")
