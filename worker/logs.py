"""Logging: one JSON object per line on stdout, for our code and for aiokafka/aiohttp/asyncio.

The code already avoids logging secrets; the processors here are defence in depth:

* :class:`RedactSecrets` drops the value of any key that names a credential (token, secret,
  password, authorization, api_key, cookie, at any depth) and scrubs ``Bearer ...`` /
  ``Basic ...`` and every secret value the process has registered with
  :func:`register_secret` from every string, rendered exception text included.
* Tracebacks are rendered as plain text without local variables (``show_locals=False`` is set
  explicitly, not left to a library default), then scrubbed like any other string.

Context fields (topic, partition, offset, order_id, attempt...) ride in through
``structlog.contextvars.bound_contextvars`` so every line of one event carries them.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "RedactSecrets",
    "configure_logging",
    "forget_secrets",
    "get_logger",
    "register_secret",
]

REDACTED = "[redacted]"

_SENSITIVE_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|cookie|credential)", re.I
)
_AUTH_VALUE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]+", re.I)
# Token shapes we know even before they are registered (the sandbox's and JWTs).
_TOKEN_SHAPES = re.compile(r"\bsbx_(?:at|rt)_[A-Za-z0-9_\-]+|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")

# Guards _KNOWN: tokens are registered from the event loop, but stdlib loggers may emit from
# aiokafka's or the default executor's threads.
_KNOWN_LOCK = threading.Lock()
_KNOWN: set[str] = set()
_MIN_SECRET_LEN = 6  # shorter values would scrub ordinary words


def register_secret(value: str | None) -> None:
    """Remember a secret value so it is scrubbed from every future log line."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _KNOWN_LOCK:
            _KNOWN.add(value)


def forget_secrets() -> None:
    """Clear the registry (for tests)."""
    with _KNOWN_LOCK:
        _KNOWN.clear()


def scrub(text: str) -> str:
    """Remove credential-looking substrings and every registered secret from ``text``."""
    with _KNOWN_LOCK:
        known = sorted(_KNOWN, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


class RedactSecrets:
    """structlog processor: drop credential-named keys and scrub every string value."""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return self._clean_mapping(event_dict)  # type: ignore[return-value]

    def _clean_mapping(self, data: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(data):
            if key != "event" and _SENSITIVE_KEY.search(str(key)) and not _counts(key):
                data[key] = REDACTED
            else:
                data[key] = self._clean(data[key])
        return data

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value)
        if isinstance(value, dict):
            return self._clean_mapping(dict(value))
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return scrub(repr(value))


def _counts(key: str) -> bool:
    # Fields such as ``token_generation`` or ``token_expires_in_s`` describe a token without
    # carrying it; they are numbers and stay readable.
    return key.lower().endswith(("_generation", "_expires_in_s", "_count", "_fetches"))


def _exception_formatter() -> Processor:
    return structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    *, level: str = "INFO", fmt: str = "json", stream: Any = None,
    quiet_libraries: Iterable[str] = ("aiokafka", "aiohttp.access"),
) -> None:
    """Route structlog and the standard library through one redacting pipeline.

    Called once by the CLI; tests call it again with another level or stream.
    """
    renderer: Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        tail: list[Processor] = [RedactSecrets(), renderer]
    else:
        tail = [_exception_formatter(), RedactSecrets(), structlog.processors.JSONRenderer()]
    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter stays at WARNING unless we debug (their DEBUG goes through redaction too).
    for name in quiet_libraries:
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named for its module."""
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
