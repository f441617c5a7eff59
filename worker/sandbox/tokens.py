"""Issued tokens: one registry that is the single source of truth for validity.

Even JWT access tokens are looked up here rather than verified, for two reasons: the
auth check on the hot path stays one dict lookup, and revocation (RFC 7009, and the
``revoke-all`` fault) works for JWTs too. ``issued`` keeps every value ever handed out so
tests can scan logs for leaks; :meth:`TokenRegistry.clear` never empties it.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from worker.sandbox.jwt import encode_hs256

__all__ = ["ACCESS_PREFIX", "REFRESH_PREFIX", "IssuedTokens", "TokenRecord", "TokenRegistry"]

ACCESS_PREFIX = "sbx_at_"
REFRESH_PREFIX = "sbx_rt_"


@dataclass(slots=True)
class TokenRecord:
    """One issued token. ``grant_id`` ties a refresh token to the access tokens it minted."""

    kind: Literal["access", "refresh"]
    client_id: str
    scopes: frozenset[str]
    expires_at: float | None
    grant_id: int
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    scopes: frozenset[str]
    refresh_token: str | None = None


class TokenRegistry:
    """Mints, looks up and revokes tokens. Times are ``clock()`` (monotonic) seconds."""

    def __init__(
        self,
        *,
        lifetime: float,
        token_format: Literal["opaque", "jwt"],
        jwt_secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lifetime = lifetime
        self._format = token_format
        self._jwt_secret = jwt_secret
        self._clock = clock
        self._next_grant = 0
        self.records: dict[str, TokenRecord] = {}
        self.issued: list[str] = []

    def issue(
        self,
        client_id: str,
        scopes: frozenset[str],
        *,
        refresh: bool,
        grant_id: int | None = None,
    ) -> IssuedTokens:
        """Mint an access token (and a refresh token when ``refresh``) for one grant."""
        if grant_id is None:
            self._next_grant += 1
            grant_id = self._next_grant
        now = self._clock()
        access = self._mint_access(client_id, scopes)
        self.records[access] = TokenRecord(
            "access", client_id, scopes, now + self._lifetime, grant_id
        )
        self.issued.append(access)
        refresh_value: str | None = None
        if refresh:
            refresh_value = REFRESH_PREFIX + secrets.token_urlsafe(32)
            self.records[refresh_value] = TokenRecord("refresh", client_id, scopes, None, grant_id)
            self.issued.append(refresh_value)
        return IssuedTokens(access, math.ceil(self._lifetime), scopes, refresh_value)

    def _mint_access(self, client_id: str, scopes: frozenset[str]) -> str:
        if self._format == "opaque":
            return ACCESS_PREFIX + secrets.token_urlsafe(32)
        issued_at = int(time.time())
        claims = {
            "iss": "invoice-sync-sandbox",
            "sub": client_id,
            "client_id": client_id,
            "scope": " ".join(sorted(scopes)),
            "iat": issued_at,
            "exp": issued_at + math.ceil(self._lifetime),
            "jti": secrets.token_urlsafe(16),
        }
        return encode_hs256(claims, self._jwt_secret)

    def access(self, value: str) -> tuple[TokenRecord | None, str]:
        """Return ``(record, "")`` for a live access token, else ``(None, why)``."""
        record = self.records.get(value)
        if record is None or record.kind != "access":
            return None, "unknown token"
        if record.revoked:
            return None, "token revoked"
        if record.expires_at is not None and self._clock() >= record.expires_at:
            return None, "token expired"
        return record, ""

    def spend_refresh(self, value: str, client_id: str) -> TokenRecord | None:
        """Invalidate a live refresh token of ``client_id`` and return it, else ``None``.

        A spent or revoked refresh token presented again revokes its whole grant, as the
        OAuth security BCP (RFC 9700) advises for refresh token reuse: either it leaked and
        someone else rotated it first, or a client lost an answer; the server cannot tell
        which, so neither copy may go on.
        """
        record = self.records.get(value)
        if record is None or record.kind != "refresh" or record.client_id != client_id:
            return None
        if record.revoked:
            self._revoke_grant(record.grant_id)
            return None
        record.revoked = True
        return record

    def _revoke_grant(self, grant_id: int) -> None:
        for other in self.records.values():
            if other.grant_id == grant_id:
                other.revoked = True

    def revoke(self, value: str, client_id: str) -> bool:
        """RFC 7009: revoke a token the client owns; a refresh token takes its grant along."""
        record = self.records.get(value)
        if record is None or record.client_id != client_id or record.revoked:
            return False
        record.revoked = True
        if record.kind == "refresh":
            self._revoke_grant(record.grant_id)
        return True

    def revoke_all(self) -> int:
        """Revoke every live token (access and refresh); return how many."""
        now = self._clock()
        count = 0
        for record in self.records.values():
            live = record.expires_at is None or now < record.expires_at
            if not record.revoked and live:
                record.revoked = True
                count += 1
        return count

    def clear(self) -> None:
        """Forget every token (they stop working) but keep ``issued`` for leak scans."""
        self.records.clear()
