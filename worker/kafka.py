"""Kafka client options from settings: the same code reaches Tansu, Apache Kafka or a managed
cluster (SASL_SSL with SCRAM, TLS with a private CA); only configuration differs."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from worker.settings import KafkaSettings

__all__ = ["consumer_options", "producer_options", "security_options"]


def security_options(kafka: KafkaSettings) -> dict[str, Any]:
    """``security_protocol``, TLS context and SASL credentials for aiokafka."""
    opts: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
            certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
            keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
        )
        opts["ssl_context"] = context
    if kafka.sasl_mechanism is not None:
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        opts["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return opts


def consumer_options(kafka: KafkaSettings, *, group: bool = True) -> dict[str, Any]:
    """Options for an ``AIOKafkaConsumer``: manual commits, parsing left to our code."""
    opts: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "request_timeout_ms": kafka.request_timeout_ms,
        # aiokafka's default (500 ms) is added to the latency of every event on a quiet topic.
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
        "max_partition_fetch_bytes": kafka.max_partition_fetch_bytes,
        "fetch_max_bytes": kafka.fetch_max_bytes,
        # No value/key deserializer: a poison record must reach our code as bytes.
        **security_options(kafka),
    }
    if group:
        opts.update(
            group_id=kafka.group_id,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
            max_poll_records=kafka.fetch_max_records,
        )
    return opts


def producer_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Options for the dead-letter producer: acknowledged by all in-sync replicas."""
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-dlq",
        "acks": "all",
        "enable_idempotence": kafka.enable_idempotence,
        "request_timeout_ms": kafka.request_timeout_ms,
        # aiokafka's default (1 MiB) is below records the consumer can fetch; a dead letter
        # must fit whatever was read (worker.dlq writes it without its value when not).
        "max_request_size": kafka.dlq_max_request_size,
        "compression_type": None if kafka.dlq_compression_type == "none" else "gzip",
        **security_options(kafka),
    }
