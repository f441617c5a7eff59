"""Settings that point the worker at the test session's broker, sandbox and ledger."""

from __future__ import annotations

from typing import Any

from worker.settings import LedgerSettings, Settings


def endpoint_settings(
    bootstrap: str,
    topic: str,
    api: str,
    ledger: str,
    *,
    kafka: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
    **groups: Any,
) -> Settings:
    """Defaults, aimed at these endpoints, with quick group timing and an idle stop.

    ``kafka`` and ``pipeline`` add to those groups; other keyword arguments replace a group.
    """
    base = Settings()
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={
                    "bootstrap_servers": bootstrap,
                    "topics": [topic],
                    "group_id": f"g-{topic}",
                    "session_timeout_ms": 6000,
                    "heartbeat_interval_ms": 1000,
                    **(kafka or {}),
                }
            ),
            "api": base.api.model_copy(update={"base_url": api}),
            "oauth": base.oauth.model_copy(update={"token_url": f"{api}/oauth/token"}),
            "ledger": LedgerSettings(url=ledger),
            "http": base.http.model_copy(update={"port": 0, "host": "127.0.0.1"}),
            "pipeline": base.pipeline.model_copy(
                update={"stop_when_idle_s": 2.0, "commit_interval_s": 0.2, **(pipeline or {})}
            ),
            **groups,
        }
    )
