"""Configuration: one pydantic-settings model, read once in ``cli`` and passed down.

Every setting is an environment variable ``INVOICE_SYNC_<GROUP>__<NAME>`` (for example
``INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS``). Defaults run against the embedded demo (the
Tansu broker and the sandbox API on loopback), so a real deployment overrides the hosts and
the credentials and nothing else.

Secrets are ``SecretStr``. Each can also come from a file, so a mounted Kubernetes Secret
works without putting the value in the environment:

* ``INVOICE_SYNC_OAUTH__CLIENT_SECRET_FILE=/run/secrets/client-secret`` reads that one file;
* ``INVOICE_SYNC_SECRETS_DIR=/run/secrets/invoice-sync`` reads every file in that folder
  whose name is a setting, e.g. ``oauth__client_secret`` (case-insensitive).

This module is the only place that reads ``os.environ``. :func:`load_settings` turns a
pydantic ``ValidationError`` into a :class:`~worker.errors.SettingsError` whose message names
each setting and the broken rule, and never the value given.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiokafka.conn import get_ip_port_afi
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as PydanticSettingsError

from worker.errors import SettingsError
from worker.logs import REDACTED, names_credential
from worker.mapping import reference_template_problem

__all__ = [
    "ENV_PREFIX",
    "ApiSettings",
    "HttpServerSettings",
    "KafkaSettings",
    "LedgerSettings",
    "LoggingSettings",
    "MappingSettings",
    "OAuthSettings",
    "PipelineSettings",
    "PlatformSettings",
    "Settings",
    "env_var_names",
    "grant_param_problem",
    "load_settings",
    "masked_dump",
    "unknown_env_vars",
    "url_security_problem",
]

ENV_PREFIX = "INVOICE_SYNC_"
_DELIM = "__"

#: The demo client that ``invoice-sync sandbox`` creates when given none. It is a public,
#: documented development credential of the embedded sandbox, not a secret of any real system.
DEMO_CLIENT_ID = "demo-store"
DEMO_CLIENT_SECRET = "demo-secret-change-me"

#: Least privilege for the worker: what it reads and writes, nothing more.
DEFAULT_SCOPES = (
    "invoices.read",
    "invoices.write",
    "customers.read",
    "customers.write",
    "products.read",
    "products.write",
    "credit_notes.write",
)
#: Token request parameters the grant sets itself; ``oauth.extra_params`` may not set them.
_RESERVED_TOKEN_PARAMS = frozenset(
    {"grant_type", "scope", "client_id", "client_secret", "refresh_token", "assertion"}
)


#: Kafka's own rule for topic names (kafka.common.internals.Topic); brokers refuse others.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TOPIC_RULE = "1 to 249 ASCII letters, digits, '.', '_' or '-', and not '.' or '..'"


def _is_topic_name(name: str) -> bool:
    return _TOPIC_NAME.fullmatch(name) is not None and name not in {".", ".."}


#: What a topic's records are (``worker.platforms.FORMATS`` plus "auto"; a test keeps both equal).
SourceFormat = Literal["v1", "salla", "zid", "shopify", "auto"]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_secret_file_pointers(cls, data: Any) -> Any:
        # INVOICE_SYNC_<GROUP>__<SECRET>_FILE also reaches the plain env source; the secret
        # files source has already read it, so it is not an unknown setting here.
        if isinstance(data, dict):
            secret_files = {f"{n}_file" for n, f in cls.model_fields.items() if _is_secret(f)}
            secret_files -= set(cls.model_fields)  # a real field keeps it (refresh_token_file)
            data = {k: v for k, v in data.items() if k.lower() not in secret_files}
        return data


class KafkaSettings(_Group):
    """Where events come from and where dead letters go. Works for any Kafka cluster."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    client_id: str = Field("invoice-sync", description="Client id sent to the brokers.")
    group_id: str = Field("invoice-sync", description="Consumer group; replicas share it.")
    topics: list[str] = Field(
        ["orders"], description='Source topics, a JSON list such as ["orders"].'
    )
    dlq_topic: str | None = Field(
        None, description="Dead-letter topic; default is `<source topic>.dlq`."
    )
    dlq_max_request_size: int = Field(
        52_428_800,
        ge=1024,
        description=(
            "Largest dead letter the DLQ producer sends, in bytes before compression; one"
            " larger, or refused by the broker as too large, is written without its value."
        ),
    )
    dlq_compression_type: Literal["none", "gzip"] = Field(
        "none",
        description="Compression of dead letters; gzip lets a large value fit the broker's limit.",
    )
    dlq_replay_group_id: str | None = Field(
        None,
        description=(
            "Consumer group that remembers what `dlq replay` has sent; default"
            " `<group_id>-dlq-replay` (`--reason R` appends `.R`)."
        ),
    )
    topic_formats: dict[str, SourceFormat] = Field(
        default_factory=dict,
        description=(
            "Source format per topic (v1, salla, zid, shopify, auto); default auto: the"
            " platforms.format_header header, else the platform's own headers, else v1."
        ),
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How to reach the brokers."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers' certs.")
    ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client key for mutual TLS.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new group starts reading."
    )
    session_timeout_ms: int = Field(10_000, ge=1000, description="Group session timeout.")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="Group heartbeat interval.")
    max_poll_interval_ms: int = Field(
        600_000, ge=10_000, description="Longest gap between polls before the group evicts us."
    )
    fetch_max_records: int = Field(500, ge=1, description="Records taken per poll at most.")
    fetch_max_wait_ms: int = Field(
        50,
        ge=0,
        le=5000,
        description="Longest a fetch waits for new records; bounds the latency of a quiet topic.",
    )
    max_partition_fetch_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Bytes fetched per partition at most (bounds prefetched records in memory).",
    )
    fetch_max_bytes: int = Field(
        52_428_800,
        ge=1024,
        description="Bytes per fetch response at most, all partitions together.",
    )
    enable_idempotence: bool = Field(
        False, description="Idempotent DLQ producer (turn on for real Kafka; Tansu lacks it)."
    )
    request_timeout_ms: int = Field(30_000, ge=1000, description="Broker request timeout.")

    @model_validator(mode="after")
    def _sasl_needs_mechanism(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError("sasl_mechanism is required when security_protocol is SASL_*")
        if self.sasl_mechanism is not None and (
            not self.sasl_username or self.sasl_password is None
        ):
            raise ValueError("sasl_username and sasl_password are required with sasl_mechanism")
        return self

    @field_validator("topics")
    @classmethod
    def _at_least_one_topic(cls, value: list[str]) -> list[str]:
        if not value or any(not t.strip() for t in value):
            raise ValueError("at least one non-empty topic name is required")
        for number, topic in enumerate(value, start=1):
            if not _is_topic_name(topic):
                raise ValueError(f"entry {number} is not a legal Kafka topic name ({_TOPIC_RULE})")
        return value

    @field_validator("dlq_topic")
    @classmethod
    def _legal_dlq_topic(cls, value: str | None) -> str | None:
        if value is not None and not _is_topic_name(value):
            raise ValueError(f"not a legal Kafka topic name ({_TOPIC_RULE})")
        return value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        # Checked here, not when the TLS context is built at start-up, where a missing file
        # is a bare FileNotFoundError that names neither the setting nor the file.
        if value is not None:
            try:
                with value.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"cannot read {value} ({exc.strerror})") from None
        return value

    @model_validator(mode="after")
    def _default_dlq_names_legal(self) -> KafkaSettings:
        # `<topic>.dlq` adds four characters: a 246-249 character topic has no legal default.
        if self.dlq_topic is None:
            for number, topic in enumerate(self.topics, start=1):
                if not _is_topic_name(f"{topic}.dlq"):
                    raise ValueError(
                        f"topics entry {number} is too long for its default dead-letter topic"
                        " <topic>.dlq (a topic name has at most 249 characters); set "
                        f"{ENV_PREFIX}KAFKA__DLQ_TOPIC"
                    )
        return self

    @model_validator(mode="after")
    def _tls_files_usable(self) -> KafkaSettings:
        # A readable file that holds no usable certificate or key would fail only when the
        # client connects, as a bare ssl.SSLError (exit 1, no setting named): said here.
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return self
        context = ssl.create_default_context()
        if self.ssl_cafile is not None:
            try:
                context.load_verify_locations(cafile=str(self.ssl_cafile))
            except ssl.SSLError as exc:
                raise ValueError(
                    f"ssl_cafile {self.ssl_cafile} holds no usable CA certificate "
                    f"({exc.reason or 'not PEM'})"
                ) from None
        if self.ssl_certfile is not None:
            keyfile = str(self.ssl_keyfile) if self.ssl_keyfile is not None else None
            try:
                # The password callback answers at once: an encrypted key (no setting takes
                # its passphrase) must fail here, not wait for a passphrase on a terminal.
                context.load_cert_chain(str(self.ssl_certfile), keyfile, password=lambda: b"")
            except ssl.SSLError as exc:
                raise ValueError(
                    f"ssl_certfile {self.ssl_certfile} and its key do not make a usable client "
                    f"certificate ({exc.reason or 'not PEM'}; an encrypted key is not supported)"
                ) from None
        return self

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        # Read as aiokafka reads it (host, host:port, [v6]:port; port 9092 when omitted), but
        # an empty host or a port outside 1-65535, which aiokafka takes and fails on only at
        # start-up as a KafkaConnectionError naming no setting, is refused here.
        entries = [entry.strip() for entry in value.split(",")]
        for number, entry in enumerate(entries, start=1):
            try:
                host, port, _ = get_ip_port_afi(entry)
            except ValueError:
                host, port = "", 0
            if not host or not 0 < port <= 65535:
                raise ValueError(f"entry {number} is not host[:port] with a port from 1 to 65535")
        return ",".join(entries)

    @model_validator(mode="after")
    def _dlq_not_a_source(self) -> KafkaSettings:
        # A dead letter written to a topic the worker reads would be read, fail the same way
        # and be dead-lettered again: one bad record would loop forever.
        for number, topic in enumerate(self.topics, start=1):
            dlq = self.dlq_for(topic)
            if dlq not in self.topics:
                continue
            if self.dlq_topic:
                raise ValueError(
                    f"dlq_topic {dlq} is also a source topic: dead letters would be read back "
                    "and dead-lettered again without end"
                )
            raise ValueError(
                f"topics entry {self.topics.index(dlq) + 1} ({dlq}) is the default dead-letter "
                f"topic of entry {number}: dead letters would be read back and dead-lettered "
                f"again without end (name another with {ENV_PREFIX}KAFKA__DLQ_TOPIC)"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        # A heartbeat slower than the session timeout gets the member evicted between beats.
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms}); Kafka advises a third of it"
            )
        return self

    def dlq_for(self, topic: str) -> str:
        """The dead-letter topic for records read from ``topic``."""
        return self.dlq_topic or f"{topic}.dlq"

    def dlq_replay_group(self, reason: str | None = None) -> str:
        """The consumer group whose offsets mark the dead letters replayed (per reason filter)."""
        group = self.dlq_replay_group_id or f"{self.group_id}-dlq-replay"
        return group if reason is None else f"{group}.{reason}"


class ApiSettings(_Group):
    """The accounting API (Qoyod-shaped). The sandbox plays it in the demo and the tests."""

    base_url: str = Field("http://127.0.0.1:8081", description="API root, without /2.0.")
    auth_mode: Literal["oauth", "api_key"] = Field(
        "oauth", description="OAuth client credentials, or Qoyod's static API-KEY header."
    )
    api_key: SecretStr | None = Field(None, description="Static API key (secret; api_key mode).")
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP/TLS connect timeout.")
    timeout_s: float = Field(15.0, gt=0, description="Total timeout of one API request.")
    allow_insecure_http: bool = Field(
        False, description="Allow http:// to a non-loopback host (development only)."
    )
    inventory_id: int | None = Field(
        1, description="Inventory (warehouse) id on documents (Qoyod requires one)."
    )
    outage_after_failures: int = Field(
        3,
        ge=1,
        description="Transient failures in a row (5xx, 429, timeouts, resets) that, with no "
        "other answer for outage_after_s, pause consumption instead of spending retries.",
    )
    outage_after_s: float = Field(
        5.0, ge=0, description="See outage_after_failures: how long no request succeeded."
    )

    @model_validator(mode="after")
    def _key_when_api_key_mode(self) -> ApiSettings:
        if self.auth_mode == "api_key" and self.api_key is None:
            raise ValueError("api_key is required when auth_mode is api_key")
        _require_safe_url("base_url", self.base_url, allow_insecure=self.allow_insecure_http)
        return self


class OAuthSettings(_Group):
    """Client-credentials grant against the API's token endpoint (RFC 6749 section 4.4)."""

    token_url: str = Field("http://127.0.0.1:8081/oauth/token", description="Token endpoint.")
    revoke_url: str | None = Field(None, description="RFC 7009 revocation endpoint.")
    client_id: str = Field(DEMO_CLIENT_ID, description="OAuth client id.")
    client_secret: SecretStr = Field(
        SecretStr(DEMO_CLIENT_SECRET), description="OAuth client secret (secret)."
    )
    auth_method: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic", description="How the client authenticates to the token endpoint."
    )
    scopes: list[str] = Field(
        list(DEFAULT_SCOPES), description="Scopes requested (least privilege)."
    )
    extra_params: dict[str, str] = Field(
        default_factory=dict, description='Extra token parameters, e.g. {"audience": "..."}.'
    )
    refresh_token: SecretStr | None = Field(
        None,
        description=(
            "Refresh token for linked-account flows (secret). One replica only: replicas would "
            "spend each other's rotated tokens; scaled deployments use client credentials."
        ),
    )
    refresh_token_file: str | None = Field(
        None,
        description=(
            "File the refresh token was read from (INVOICE_SYNC_OAUTH__REFRESH_TOKEN_FILE or the "
            "secrets dir); each rotated token is written back to it (atomic, mode 0600)."
        ),
    )
    skew_s: float = Field(60.0, ge=0, description="Renew this long before expiry (<= half life).")
    default_lifetime_s: float = Field(
        300.0, gt=0, description="Lifetime assumed when the server omits expires_in."
    )
    renew_on_status: list[int] = Field([401], description="API statuses that mean token expired.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Token endpoint connect timeout.")
    timeout_s: float = Field(10.0, gt=0, description="Token request total timeout.")
    max_attempts: int = Field(5, ge=1, description="Token fetch attempts per need.")
    backoff_base_s: float = Field(0.5, gt=0, description="First token retry backoff ceiling.")
    backoff_max_s: float = Field(30.0, gt=0, description="Largest token retry backoff.")
    retry_after_cap_s: float = Field(60.0, gt=0, description="Cap on a token Retry-After.")
    revoke_on_shutdown: bool = Field(False, description="Revoke the live token on shutdown.")
    allow_insecure_http: bool = Field(
        False, description="Allow http:// token URL on a non-loopback host (development only)."
    )

    @model_validator(mode="after")
    def _https_only(self) -> OAuthSettings:
        _require_safe_url("token_url", self.token_url, allow_insecure=self.allow_insecure_http)
        host = urlsplit(self.token_url).hostname or ""
        secret = self.client_secret.get_secret_value()
        if not secret.strip():
            # Empty through a _FILE is refused when the file is read; an empty variable is
            # refused here, not at the token endpoint as an invalid_client pause.
            raise ValueError("client_secret is empty")
        if secret == DEMO_CLIENT_SECRET and not _is_loopback(host):
            raise ValueError(
                "client_secret is the local sandbox's public demo secret, and token_url is not "
                "the local sandbox: set the real secret (the file oauth__client_secret in the "
                "secrets directory, or INVOICE_SYNC_OAUTH__CLIENT_SECRET or its _FILE)"
            )
        if self.revoke_url:
            _require_safe_url(
                "revoke_url", self.revoke_url, allow_insecure=self.allow_insecure_http
            )
        return self

    @model_validator(mode="after")
    def _backoff_in_order(self) -> OAuthSettings:
        _require_backoff_order(self.backoff_base_s, self.backoff_max_s)
        return self

    @field_validator("renew_on_status")
    @classmethod
    def _client_errors_only(cls, value: list[int]) -> list[int]:
        # Renewing on a success or a server error would fetch a token per answer.
        if any(not 400 <= status <= 499 for status in value):
            raise ValueError("every status must be a 4xx client error, such as 401")
        return value

    @field_validator("extra_params")
    @classmethod
    def _not_the_grants_own(cls, value: dict[str, str]) -> dict[str, str]:
        problem = grant_param_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class LedgerSettings(_Group):
    """The idempotency ledger and audit trail: SQLite (one replica) or PostgreSQL (several)."""

    url: str = Field(
        "sqlite:///invoice-sync-ledger.db",
        description="sqlite:///path or postgresql://user@host:port/db.",
    )
    password: SecretStr | None = Field(None, description="Database password (secret).")
    pool_size: int = Field(10, ge=1, description="PostgreSQL connection pool size.")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one ledger operation.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("must start with sqlite:/// or postgresql://")
        if _credential_in_url(value):
            raise ValueError("must not embed a password; set ledger.password instead")
        return value


class MappingSettings(_Group):
    """How an order becomes a document."""

    invoice_trigger: str = Field("order.paid", description="Event type that creates the invoice.")
    document_status: Literal["Approved", "Draft"] = Field("Approved", description="Status sent.")
    shipping_sku: str = Field("SHIPPING", description="Service product used for shipping lines.")
    due_days: int = Field(0, ge=0, description="Due date = issue date + this many days.")
    timezone: str = Field("Asia/Riyadh", description="Zone that gives the issue date.")
    currency: str = Field(
        "SAR",
        pattern=r"^[A-Z]{3}$",
        description=(
            "Currency the accounting system books (ISO 4217); documents carry no currency, so "
            "an order in another is dead-lettered as unmappable_order."
        ),
    )
    total_tolerance: str = Field(
        "0.05", description="Largest |computed - declared| total accepted (decimal string)."
    )
    create_missing_products: bool = Field(
        True, description="Create unknown SKUs; false dead-letters them as unknown_sku."
    )
    reference_template: str = Field(
        "{order_id}",
        description=(
            "Invoice reference: {order_id}, may add {store_id} (several stores in one"
            " accounting organisation need it); credit notes append -CN-{refund_id} or -CN-cancel."
        ),
    )

    @field_validator("reference_template")
    @classmethod
    def _usable_template(cls, value: str) -> str:
        problem = reference_template_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Asia/Riyadh") from None
        return value

    @field_validator("total_tolerance")
    @classmethod
    def _decimal_tolerance(cls, value: str) -> str:
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise ValueError("must be a decimal amount such as 0.05") from None
        if not amount.is_finite() or amount < 0:
            raise ValueError("must be a finite amount of zero or more")
        return value


class PipelineSettings(_Group):
    """Concurrency, retries and shutdown of the main job."""

    max_in_flight: int = Field(
        64, ge=1, description="API requests in flight at most (twice as many events run)."
    )
    max_buffered: int = Field(1000, ge=1, description="Events held in memory before pausing.")
    max_attempts: int = Field(8, ge=1, description="Attempts per event for transient failures.")
    max_retry_s: float = Field(300.0, gt=0, description="Time budget per event for retries.")
    backoff_base_s: float = Field(0.5, gt=0, description="First backoff ceiling (full jitter).")
    backoff_max_s: float = Field(30.0, gt=0, description="Largest backoff ceiling.")
    retry_after_cap_s: float = Field(60.0, gt=0, description="Cap on a server's Retry-After.")
    config_fault_backoff_max_s: float = Field(
        300.0, gt=0, description="Slowest retry while paused by a configuration fault."
    )
    commit_interval_s: float = Field(1.0, gt=0, description="How often finished offsets commit.")
    shutdown_timeout_s: float = Field(25.0, gt=0, description="Drain budget on SIGTERM.")
    rebalance_timeout_s: float = Field(10.0, gt=0, description="Drain budget on revocation.")
    lookup_cache_size: int = Field(10_000, ge=0, description="Customer/product ids cached.")
    lookup_cache_ttl_s: float = Field(3600.0, ge=0, description="Lookup cache entry lifetime.")
    stop_when_idle_s: float | None = Field(
        None,
        gt=0,
        description="Exit after this long with no lag and nothing in flight (demo, bench).",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="Event loop of `run`: uvloop (less CPU per invoice), asyncio, or auto "
        "(uvloop where installed).",
    )

    @model_validator(mode="after")
    def _backoff_in_order(self) -> PipelineSettings:
        _require_backoff_order(self.backoff_base_s, self.backoff_max_s)
        if self.config_fault_backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"config_fault_backoff_max_s ({self.config_fault_backoff_max_s}) must not be "
                f"below backoff_base_s ({self.backoff_base_s})"
            )
        return self


def _require_backoff_order(base_s: float, max_s: float) -> None:
    """A first backoff above the largest would be clipped silently to the largest."""
    if base_s > max_s:
        raise ValueError(f"backoff_base_s ({base_s}) must not be above backoff_max_s ({max_s})")


class HttpServerSettings(_Group):
    """The health and metrics endpoint."""

    host: str = Field("0.0.0.0", description="Listen address of /metrics, /healthz, /readyz.")
    port: int = Field(9100, ge=0, le=65535, description="Listen port (0 = pick a free one).")
    stall_timeout_s: float = Field(
        120.0, gt=0, description="No progress while lag grows this long = unhealthy."
    )


class LoggingSettings(_Group):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["json", "console"] = Field("json", description="json for machines.")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class PlatformSettings(_Group):
    """Platform webhook payloads (Salla, Zid, Shopify) read from Kafka; docs/platforms/."""

    format_header: str = Field(
        "x-event-source",
        description="Record header naming the format (v1, salla, zid, shopify) on mixed topics.",
    )
    default_country_code: str = Field(
        "SA", pattern=r"^[A-Z]{2}$", description="Buyer country when the payload has no ISO code."
    )
    untaxed_category: Literal["Z", "E", "O"] = Field(
        "O", description="ZATCA category of untaxed (0 %) lines and shipping."
    )
    untaxed_exemption_code: str = Field(
        "VATEX-SA-OOS",
        pattern=r"^VATEX-SA-[A-Z0-9-]{2,10}$",
        description="VATEX code sent with untaxed_category.",
    )
    salla_paid_statuses: list[str] = Field(
        ["in_progress", "completed", "delivering", "delivered", "shipped"],
        description="Salla order status slugs that mean paid (invoice).",
    )
    salla_vat_number_fields: list[str] = Field(
        ["customer.vat_number", "customer.tax_number"],
        description="Where a Salla buyer VAT number is read (paths in data); none = individual.",
    )
    salla_building_number_fields: list[str] = Field(
        ["shipping.address.building_number", "customer.address.building_number"],
        description="Where a Salla national-address building number is read (paths in data).",
    )
    salla_webhook_secret: SecretStr | None = Field(
        None, description="Verify X-Salla-Signature with this secret (secret; unset = off)."
    )
    zid_paid_statuses: list[str] = Field(
        ["paid", "delivered"],
        description="Zid payment_status or order_status.code values that mean paid.",
    )
    zid_vat_number_fields: list[str] = Field(
        ["customer.vat_number", "customer.tax_number"],
        description="Where a Zid buyer VAT number is read (paths in the order).",
    )
    zid_building_number_fields: list[str] = Field(
        ["shipping.address.building_number"],
        description="Where a Zid national-address building number is read (paths in the order).",
    )
    shopify_paid_statuses: list[str] = Field(
        ["paid"],
        description="Shopify financial_status values that mean paid (orders/paid always does).",
    )
    shopify_vat_number_fields: list[str] = Field(
        ["note_attributes[vat_number]"],
        description="Where a Shopify buyer VAT number is read (paths in the order).",
    )
    shopify_building_number_fields: list[str] = Field(
        ["note_attributes[building_number]"],
        description="Where a Shopify national-address building number is read.",
    )
    shopify_webhook_secret: SecretStr | None = Field(
        None, description="Verify X-Shopify-Hmac-Sha256 with this secret (secret; unset = off)."
    )


class Settings(BaseSettings):
    """Everything the worker needs, grouped as the environment variables are."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_DELIM,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        case_sensitive=False,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    http: HttpServerSettings = Field(default_factory=HttpServerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    platforms: PlatformSettings = Field(default_factory=PlatformSettings)

    @model_validator(mode="after")
    def _outage_recognised_within_retries(self) -> Settings:
        # One event alone (a quiet topic) must be able to tell an outage before its own
        # attempts run out, or the first orders after the API goes down are dead-lettered.
        if self.api.outage_after_failures >= self.pipeline.max_attempts:
            raise ValueError(
                f"{ENV_PREFIX}API__OUTAGE_AFTER_FAILURES ({self.api.outage_after_failures}) "
                f"must be below {ENV_PREFIX}PIPELINE__MAX_ATTEMPTS ({self.pipeline.max_attempts})"
            )
        return self

    @model_validator(mode="after")
    def _retry_budget_fits_poll_interval(self) -> Settings:
        # Retries run beside the poll loop, but a partition whose head event is still retrying
        # holds its commit back; the group must not evict us meanwhile.
        worst = self.pipeline.max_retry_s + self.api.timeout_s
        if worst * 1000 >= self.kafka.max_poll_interval_ms:
            raise ValueError(
                "pipeline.max_retry_s + api.timeout_s must be below kafka.max_poll_interval_ms "
                f"({worst:.0f} s >= {self.kafka.max_poll_interval_ms / 1000:.0f} s)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Order = precedence: explicit arguments, then plain env vars, then secret files.
        return (init_settings, env_settings, _SecretFilesSource(settings_cls))


def url_security_problem(name: str, url: str, *, allow_insecure: bool) -> str | None:
    """Why ``url`` may not carry credentials, or None when it may.

    ``https://`` always passes; ``http://`` only to a loopback host or with
    ``allow_insecure``. Settings validation and the auth constructors share this rule.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return f"{name} must be an absolute http(s) URL"
    if parts.scheme == "https" or allow_insecure or _is_loopback(parts.hostname):
        return None
    return (
        f"{name} must use https:// (http is allowed only for loopback hosts or with "
        "allow_insecure_http=true)"
    )


def grant_param_problem(params: Mapping[str, str]) -> str | None:
    """Why ``oauth.extra_params`` cannot be sent, or None: it sets a parameter of the grant."""
    clash = _RESERVED_TOKEN_PARAMS & set(params)
    if not clash:
        return None
    return f"must not set {', '.join(sorted(clash))}; those parameters are set by the grant"


def _require_safe_url(name: str, url: str, *, allow_insecure: bool) -> None:
    problem = url_security_problem(name, url, allow_insecure=allow_insecure)
    if problem:
        raise ValueError(problem)
    carried = _credential_in_url(url)
    if carried:
        raise ValueError(f"{name} must not carry a credential ({carried}); use its own setting")


def _credential_in_url(url: str) -> str | None:
    """What credential ``url`` carries, described by name only (never its value), or None.

    A URL is printed by ``invoice-sync config`` and may reach logs and error messages, where
    only settings typed as secrets are masked.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        return "a password in its user part"
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if names_credential(key):
            return f"the query parameter {key}"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _groups() -> list[tuple[str, type[BaseModel]]]:
    """(name, model) of every settings group."""
    groups = []
    for group_name, group_field in Settings.model_fields.items():
        model = group_field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"settings group {group_name} is not a model")
        groups.append((group_name, model))
    return groups


def _secret_paths() -> dict[str, tuple[str, str]]:
    """Env-style name (lower case) of every secret setting -> (group, field)."""
    out: dict[str, tuple[str, str]] = {}
    for group_name, model in _groups():
        for field_name, field in model.model_fields.items():
            if _is_secret(field):
                out[f"{group_name}{_DELIM}{field_name}"] = (group_name, field_name)
    return out


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in repr(field.annotation)


class _SecretFilesSource(PydanticBaseSettingsSource):
    """Secrets from ``INVOICE_SYNC_<GROUP>__<NAME>_FILE`` paths and ``INVOICE_SYNC_SECRETS_DIR``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole nested dict

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        secrets = _secret_paths()
        found: dict[str, dict[str, str]] = {}
        secrets_dir = env.get(f"{ENV_PREFIX}SECRETS_DIR")
        if secrets_dir:
            folder = Path(secrets_dir)
            if not folder.is_dir():
                raise SettingsError(f"{ENV_PREFIX}SECRETS_DIR: {folder} is not a directory")
            for path in folder.iterdir():
                key = path.name.lower().removeprefix(ENV_PREFIX.lower())
                if key in secrets and path.is_file():
                    group, name = secrets[key]
                    found.setdefault(group, {})[name] = _read_secret(path, key)
                    _note_secret_path(found[group], group, name, path)
        for key, (group, name) in secrets.items():
            var = f"{ENV_PREFIX}{key.upper()}_FILE"
            if var in env:
                found.setdefault(group, {})[name] = _read_secret(Path(env[var]), var)
                _note_secret_path(found[group], group, name, Path(env[var]))
        return found


def _note_secret_path(values: dict[str, str], group: str, name: str, path: Path) -> None:
    """Fill ``<name>_file`` when the group has such a field: where a secret that the worker
    rotates (the refresh token) is written back."""
    model = dict(_groups())[group]
    if f"{name}_file" in model.model_fields:
        values[f"{name}_file"] = str(path)


def _read_secret(path: Path, setting: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{setting}: cannot read secret file {path} ({exc.strerror})") from None
    if not value:
        raise SettingsError(f"{setting}: secret file {path} is empty")
    return value


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment (and secret files), or explain what is wrong.

    Raises:
        SettingsError: naming each invalid setting as its environment variable and the rule
            it breaks, never the value that was given.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors(include_input=False, include_url=False)]
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
    except (json.JSONDecodeError, PydanticSettingsError) as exc:
        group = re.search(r'field "(\w+)"', str(exc))
        where = _malformed_json_vars(group.group(1)) if group else "a setting"
        raise SettingsError(
            f"invalid configuration: {where} holds a malformed JSON value; lists and maps are "
            f"JSON, e.g. {ENV_PREFIX}KAFKA__TOPICS='[\"orders\"]'"
        ) from None


def _malformed_json_vars(group: str) -> str:
    """The variables of ``group`` whose value is not JSON, among those that must be JSON.

    pydantic-settings names only the group when a list or map value is not JSON; the
    message should name the variable. Falls back to ``INVOICE_SYNC_<GROUP>__*``.
    """
    env = {k.upper(): v for k, v in os.environ.items()}
    prefix = f"{ENV_PREFIX}{group.upper()}"
    candidates = [prefix] if prefix in env else []  # the whole group as one JSON object
    for name, field in env_var_names().items():
        if name.startswith(prefix + _DELIM) and name in env and _is_json_field(field):
            candidates.append(name)
    bad = []
    for name in candidates:
        try:
            json.loads(env[name])
        except ValueError:
            bad.append(name)
    return " and ".join(bad) if bad else f"{prefix}{_DELIM}*"


def _is_json_field(field: FieldInfo) -> bool:
    """Whether pydantic-settings reads this field's variable as JSON (lists, maps, sets)."""
    annotation = field.annotation
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    return any(
        get_origin(a) in (list, dict, tuple, set, frozenset) or a in (list, dict, tuple, set)
        for a in (options or (annotation,))
    )


def _describe(err: Any) -> str:
    """``VARIABLE: rule`` for one validation error, naming the field a model rule is about."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    message = str(err["msg"]).removeprefix("Value error, ")
    if len(loc) == 1 and loc[0] in Settings.model_fields:
        # A rule of a whole group names its field first ("token_url must use https://").
        model = Settings.model_fields[loc[0]].annotation
        first = message.split(" ", 1)[0]
        if isinstance(model, type) and issubclass(model, BaseModel) and first in model.model_fields:
            loc.append(first)
    # Past group and field, the rest is a key or an index inside a JSON value: topic_formats
    # {"orders": ...} is INVOICE_SYNC_KAFKA__TOPIC_FORMATS[orders], not a variable of its own.
    var = ENV_PREFIX + _DELIM.join(loc[:2]).upper() if loc else "settings"
    var += "".join(f"[{part}]" for part in loc[2:])
    return f"{var}: {message}"


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """``INVOICE_SYNC_*`` variables outside every group, which no setting reads (sorted).

    An unknown name inside a group (``INVOICE_SYNC_PIPELINE__MAX_INFLIGHT``) is refused by
    the group's model already. These are the rest, most often a group joined to its name
    with one underscore instead of two (``INVOICE_SYNC_PIPELINE_MAX_IN_FLIGHT``), which the
    settings would otherwise ignore without a word. Callers warn; start-up goes on, since
    other tools may share the prefix. Only names are returned, never values.
    """
    env = os.environ if environ is None else environ
    groups = {name.upper() for name, _ in _groups()}
    unknown = []
    for raw in env:
        name = raw.upper()
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}SECRETS_DIR":
            continue
        rest = name.removeprefix(ENV_PREFIX)
        if rest in groups or (rest.split(_DELIM, 1)[0] in groups and _DELIM in rest):
            continue  # a whole group as JSON, or a name the group's model checks
        unknown.append(raw)
    return sorted(unknown)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as JSON-ready data, every secret shown as ``**********``.

    Besides the fields typed as secrets, an extra token parameter whose name names a
    credential (``client_assertion``, say) is shown as ``[redacted]``: it travels to the token
    endpoint like the client secret. URLs cannot carry credentials (refused at load).
    """
    data = settings.model_dump(mode="json")
    extra = data["oauth"]["extra_params"]
    data["oauth"]["extra_params"] = {
        key: REDACTED if names_credential(key) else value for key, value in extra.items()
    }
    return data


def env_var_names() -> dict[str, FieldInfo]:
    """Every environment variable the settings model reads, with its field (for the docs)."""
    names: dict[str, FieldInfo] = {}
    for group_name, model in _groups():
        for field_name, field in model.model_fields.items():
            names[f"{ENV_PREFIX}{group_name.upper()}{_DELIM}{field_name.upper()}"] = field
    return names


def settings_table_markdown() -> str:
    """The README's configuration table, generated so a test can keep the two in sync."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    defaults = Settings.model_construct()
    for var, field in env_var_names().items():
        group, name = var.removeprefix(ENV_PREFIX).lower().split(_DELIM)
        value = getattr(getattr(defaults, group), name)
        if isinstance(value, SecretStr):
            shown = "(secret)"
        elif value is None:
            shown = ""
        else:
            shown = json.dumps(value) if isinstance(value, list | dict) else str(value)
        rows.append(f"| `{var}` | `{shown}` | {field.description or ''} |".replace("``", ""))
    return "\n".join(rows)
