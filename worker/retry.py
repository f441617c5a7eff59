"""The one retry policy: attempts, full-jitter backoff, the Retry-After cap, and when to stop.

Call sites raise classified errors (:mod:`worker.errors`); only this module decides how long to
wait and whether to try again. Full jitter (a uniform draw between 0 and the exponential
ceiling) spreads retries of many workers so they do not hit a recovering API in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from worker.errors import InvoiceSyncError, TransientError

__all__ = ["Backoff", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential ceilings with full jitter: attempt n waits U(0, min(cap, base * 2**(n-1)))."""

    base_s: float
    cap_s: float
    retry_after_cap_s: float
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

        A server's Retry-After is honoured as a floor, capped at ``retry_after_cap_s``.
        """
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, attempt - 1)))
        wait = self.rng.uniform(0, ceiling)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.retry_after_cap_s))
        return wait


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries of transient failures for one event: attempts and a time budget."""

    max_attempts: int
    max_elapsed_s: float
    backoff: Backoff

    def next_delay(
        self, error: InvoiceSyncError, *, attempt: int, elapsed_s: float
    ) -> float | None:
        """Seconds to wait before retrying after ``error``, or None to give up.

        Args:
            error: the failure of attempt number ``attempt`` (counting from 1).
            attempt: how many attempts were made so far.
            elapsed_s: time since the first attempt started.
        """
        if not error.retriable or attempt >= self.max_attempts:
            return None
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        delay = self.backoff.delay(attempt, retry_after=retry_after)
        if elapsed_s + delay > self.max_elapsed_s:
            return None
        return delay
