"""``async with`` for the parts that start once and close idempotently.

Ledger, token provider, API client and health server all follow one contract: ``start()``
opens (a second start raises), ``close()`` releases and may be called twice. This mixin gives
each of them the async context manager so ``service`` can compose them in one
``AsyncExitStack``.
"""

from __future__ import annotations

from typing import Self

__all__ = ["Lifecycle"]


class Lifecycle:
    """Mixin: ``async with x`` calls ``x.start()`` and then ``x.close()``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
