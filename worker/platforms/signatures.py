"""Webhook signatures, checked when the producer forwards the raw body and the header.

* Shopify: ``X-Shopify-Hmac-Sha256`` is the base64 HMAC-SHA256 of the raw body, keyed with
  the app's client secret (or the store's webhook signing secret).
* Salla (security strategy "Signature", Salla's default for apps; header
  ``X-Salla-Security-Strategy: Signature``): ``X-Salla-Signature`` is the hex HMAC-SHA256 of
  the raw body, keyed with the app's webhook secret. A ``sha256=`` prefix and upper-case hex
  are accepted. The "Token" strategy (a static token in ``Authorization``) is not supported.

Comparison is constant time (:func:`hmac.compare_digest`). A failure raises
:class:`~worker.errors.BadSignature` whose message never contains the secret or the digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

from worker.errors import BadSignature

__all__ = ["SIGNATURE_HEADERS", "sign", "verify_signature"]

#: The header carrying each platform's signature (lower case, as records are read).
SIGNATURE_HEADERS: Final[Mapping[str, str]] = {
    "shopify": "x-shopify-hmac-sha256",
    "salla": "x-salla-signature",
}


def _digest(body: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest()


def sign(platform: str, body: bytes, secret: bytes) -> str:
    """The signature header value ``platform`` would send for ``body`` (tests, the demo).

    Raises:
        ValueError: the platform has no signature scheme here.
    """
    digest = _digest(body, secret)
    if platform == "shopify":
        return base64.b64encode(digest).decode("ascii")
    if platform == "salla":
        return digest.hex()
    raise ValueError(f"no signature scheme for {platform}")


def _decode(platform: str, value: str) -> bytes | None:
    value = value.strip()
    try:
        if platform == "shopify":
            return base64.b64decode(value, validate=True)
        return bytes.fromhex(value.removeprefix("sha256="))
    except (ValueError, binascii.Error):
        return None


def verify_signature(
    platform: str, body: bytes, headers: Mapping[str, str], *, secret: bytes
) -> None:
    """Check ``body`` against the platform's signature header.

    Raises:
        BadSignature: the header is missing, malformed or does not match.
    """
    header = SIGNATURE_HEADERS[platform]
    value = headers.get(header)
    if not value:
        raise BadSignature(f"{header}: missing", platform=platform)
    given = _decode(platform, value)
    expected = _digest(body, secret)
    # compare_digest: constant time in the content (a length difference is no secret).
    if given is None or not hmac.compare_digest(given, expected):
        raise BadSignature(f"{header}: does not match the body", platform=platform)
