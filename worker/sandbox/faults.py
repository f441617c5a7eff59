"""Fault injection: what can go wrong, and the seeded dice that decide when it does.

:class:`Faults` is the whole fault set (a pydantic model, so ``POST /_sandbox/faults``
validates the same shape the Python API builds). :class:`FaultEngine` turns it into one
:class:`Decision` per request. Decisions are made at the edge of the server, before
authentication, except per-client overrides which need the authenticated client id.

All randomness comes from one ``random.Random(seed)`` per fault set, so a test that sets
``seed`` sees the same sequence every run; a rate of ``0.0`` never draws and ``1.0``
always fires.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from random import Random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "INJECTABLE_STATUSES",
    "NO_FAULT",
    "ClientOverride",
    "Decision",
    "FaultEngine",
    "FaultRule",
    "Faults",
    "Target",
]

Target = Literal["resources", "token"]
"""``token`` covers ``/oauth/*``; ``resources`` covers ``/2.0/*``."""

INJECTABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class FaultRule(BaseModel):
    """Probabilistic faults for one target.

    ``latency_ms`` is a fixed time from the request's arrival to its answer: the request
    is handled on arrival (a client that gives up sooner may find it committed, as with a
    real API) and the answer held back for the rest; ``latency_tail_ms`` adds an
    exponentially distributed extra delay with that mean (so the mean delay is the sum,
    with a long tail). Injected statuses and resets are answered after the same delay.
    ``error_rates`` maps a status (429, 500, 502, 503, 504) to the probability of answering
    it instead of handling the request; 429 carries
    ``Retry-After: retry_after``. ``reset_rate`` closes the connection with no response.
    ``slow_success_rate`` handles (and commits) the request, then holds the response back
    for ``slow_success_delay`` seconds - longer than a sane client timeout.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Target = "resources"
    latency_ms: float = Field(default=0.0, ge=0)
    latency_tail_ms: float = Field(default=0.0, ge=0)
    error_rates: dict[int, float] = Field(default_factory=dict)
    retry_after: int = Field(default=1, ge=0)
    reset_rate: float = Field(default=0.0, ge=0, le=1)
    slow_success_rate: float = Field(default=0.0, ge=0, le=1)
    slow_success_delay: float = Field(default=5.0, ge=0)

    @field_validator("error_rates")
    @classmethod
    def _check_rates(cls, rates: dict[int, float]) -> dict[int, float]:
        for status, rate in rates.items():
            if status not in INJECTABLE_STATUSES:
                raise ValueError(f"status {status} is not one of {sorted(INJECTABLE_STATUSES)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate for {status} must be within [0, 1]")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("error rates must add up to at most 1")
        return rates


class ClientOverride(BaseModel):
    """Make the next ``count`` resource responses for ``client_id`` answer ``status``.

    Applied after authentication (the client id comes from the token), so a 401 override
    is how a test makes a perfectly valid token look rejected.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str
    status: int = Field(ge=400, le=599)
    count: int = Field(default=1, ge=1)
    retry_after: int = Field(default=1, ge=0)


class Faults(BaseModel):
    """The complete fault set; the default injects nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[FaultRule, ...] = ()
    token_outage: bool = False
    token_outage_status: int = Field(default=503, ge=500, le=599)
    client_overrides: tuple[ClientOverride, ...] = ()
    seed: int | None = None

    @model_validator(mode="after")
    def _one_override_per_client(self) -> Faults:
        ids = [o.client_id for o in self.client_overrides]
        if len(ids) != len(set(ids)):
            raise ValueError("at most one override per client")
        return self


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do to one request: wait, drop, answer an error, or delay the answer."""

    delay: float = 0.0
    reset: bool = False
    status: int | None = None
    retry_after: int | None = None
    outage: bool = False
    slow_delay: float = 0.0


NO_FAULT = Decision()


class FaultEngine:
    """Holds the current :class:`Faults` and rolls the dice for each request.

    Not thread-safe, and need not be: the sandbox runs on one event loop and
    :meth:`decide` never awaits.
    """

    def __init__(self, faults: Faults) -> None:
        self.injected: Counter[str] = Counter()
        self.delays_ms: deque[float] = deque(maxlen=1000)
        self.set(faults)

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> None:
        """Replace the fault set, reseed the dice and restart override counts."""
        self._faults = faults
        self._rng = Random(faults.seed)
        self._rules: dict[str, tuple[FaultRule, ...]] = {
            target: tuple(r for r in faults.rules if r.target == target)
            for target in ("resources", "token")
        }
        self._overrides: dict[str, list[int]] = {
            o.client_id: [o.status, o.count, o.retry_after] for o in faults.client_overrides
        }

    def reset_counters(self) -> None:
        self.injected.clear()
        self.delays_ms.clear()

    def decide(self, target: Target) -> Decision:
        """Roll every rule for ``target``; the first error or reset wins, delays add up."""
        if target == "token" and self._faults.token_outage:
            self.injected["token_outage"] += 1
            return Decision(status=self._faults.token_outage_status, outage=True)
        rules = self._rules[target]
        if not rules:
            return NO_FAULT
        rng = self._rng
        delay = 0.0
        reset = False
        status: int | None = None
        retry_after: int | None = None
        slow = 0.0
        for rule in rules:
            delay += rule.latency_ms
            if rule.latency_tail_ms > 0:
                delay += rng.expovariate(1.0 / rule.latency_tail_ms)
            if reset or status is not None:
                continue
            if rule.reset_rate > 0 and rng.random() < rule.reset_rate:
                reset = True
                continue
            if rule.error_rates:
                roll = rng.random()
                edge = 0.0
                for code in sorted(rule.error_rates):
                    edge += rule.error_rates[code]
                    if roll < edge:
                        status = code
                        retry_after = rule.retry_after if code == 429 else None
                        break
                if status is not None:
                    continue
            if rule.slow_success_rate > 0 and rng.random() < rule.slow_success_rate:
                slow = max(slow, rule.slow_success_delay)
        if delay > 0:
            self.injected["latency"] += 1
            self.delays_ms.append(round(delay, 3))
        if reset:
            self.injected["reset"] += 1
        elif status is not None:
            self.injected[f"status_{status}"] += 1
        elif slow > 0:
            self.injected["slow_success"] += 1
        return Decision(
            delay=delay / 1000.0,
            reset=reset,
            status=status,
            retry_after=retry_after,
            slow_delay=slow if not reset and status is None else 0.0,
        )

    def take_override(self, client_id: str) -> tuple[int, int] | None:
        """Consume one forced response for ``client_id``: ``(status, retry_after)``."""
        entry = self._overrides.get(client_id)
        if entry is None:
            return None
        status, remaining, retry_after = entry
        if remaining <= 1:
            del self._overrides[client_id]
        else:
            entry[1] = remaining - 1
        self.injected[f"override_{status}"] += 1
        return status, retry_after

    def remaining_overrides(self) -> dict[str, int]:
        return {client: entry[1] for client, entry in self._overrides.items()}
