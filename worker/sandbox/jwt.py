"""HS256 JSON Web Tokens, by hand (RFC 7519 / RFC 7515 compact form).

The sandbox only needs to mint tokens that a test can decode, so this is the smallest
correct subset: one algorithm, a constant-time signature check, no ``alg`` negotiation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["decode_hs256", "encode_hs256"]

_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def encode_hs256(claims: Mapping[str, Any], secret: str) -> str:
    """Return ``header.payload.signature`` signed with HMAC-SHA256 over ``secret``."""
    signing_input = f"{_b64(_dump(_HEADER))}.{_b64(_dump(claims))}"
    sig = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def decode_hs256(token: str, secret: str) -> dict[str, Any]:
    """Verify the signature and return the claims; expiry is the caller's business.

    Raises:
        ValueError: the token is malformed, not HS256, or the signature does not match.
    """
    try:
        head, payload, sig = token.split(".")
        header = json.loads(_unb64(head))
        signature = _unb64(sig)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("malformed JWT") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise ValueError("unsupported JWT algorithm")
    expected = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise ValueError("bad JWT signature")
    claims = json.loads(_unb64(payload))
    if not isinstance(claims, dict):
        raise ValueError("JWT claims are not an object")
    return claims
