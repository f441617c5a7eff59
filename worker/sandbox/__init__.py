"""A sandbox of the Qoyod-shaped accounting API, over real HTTP, for tests, demo and bench.

It plays an OAuth 2.0 authorization server (client credentials, refresh rotation,
revocation, optional HS256 JWTs) and the ``/2.0`` accounting resources with Decimal
totals, idempotency keys and reference uniqueness, and it can misbehave on demand
(latency, error statuses, resets, slow successes, token outages). Never expose it
publicly: ``/_sandbox/*`` has no authentication.

    async with run_sandbox(SandboxConfig()) as sbx:
        ...  # talk to sbx.url
"""

from worker.sandbox.config import (
    ALL_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    ClientSpec,
    SandboxConfig,
    TokenFormat,
)
from worker.sandbox.faults import ClientOverride, FaultRule, Faults
from worker.sandbox.jwt import decode_hs256
from worker.sandbox.server import Sandbox, run_sandbox
from worker.sandbox.state import SandboxState

__all__ = [
    "ALL_SCOPES",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "ClientOverride",
    "ClientSpec",
    "FaultRule",
    "Faults",
    "Sandbox",
    "SandboxConfig",
    "SandboxState",
    "TokenFormat",
    "decode_hs256",
    "run_sandbox",
]
