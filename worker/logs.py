"""Logging: one JSON object per line on stdout, for our code and for aiokafka/aiohttp/asyncio.

Every line carries an ISO-8601 UTC ``timestamp``, ``level``, ``event`` (a dotted event name),
``logger``, and the context fields bound for the work at hand. Standard-library records
(aiokafka, aiohttp, asyncio) pass through the same processors via structlog's
``ProcessorFormatter``, so they look the same and are redacted the same way.
``INVOICE_SYNC_LOGGING__FORMAT=console`` renders the same events for humans.

The code already avoids logging secrets; the processors here are defence in depth:

* :class:`RedactSecrets` drops the value of any key that names a credential (token, secret,
  password, authorization, api_key, cookie, credential, at any depth) and scrubs
  ``Bearer ...`` / ``Basic ...``, ``access_token=...``-style pairs, passwords in URLs and
  every secret value the process has registered with :func:`register_secret` from every
  string, rendered exception text and tracebacks included.
* Tracebacks are rendered without local variables: ``show_locals=False`` is set explicitly,
  not left to a library default (structlog's default is to show them), and the rendered
  frames are scrubbed like any other string.

Context fields (topic, partition, offset, order_id, event_type, attempt, status,
duration_ms...) ride in through ``structlog.contextvars.bound_contextvars`` so every line of
one event carries them.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import IO, Any, Final

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "RedactSecrets",
    "configure_logging",
    "forget_secrets",
    "get_logger",
    "register_secret",
    "reset_logging",
    "scrub",
]

REDACTED: Final = "[redacted]"

_SENSITIVE_KEY = re.compile(
    r"token|secret|password|passwd|authorization|api[_-]?key|cookie|credential", re.I
)
# Keys that name a credential but hold a fact about it (a number, a URL, a kind), never it.
_DESCRIPTIVE_SUFFIXES: Final = (
    "_generation",
    "_expires_in_s",
    "_expires_at",
    "_expiry_s",
    "_age_s",
    "_count",
    "_fetches",
    "_obtainable",
    "_type",
    "_url",
)
# Keys the pipeline itself owns; never treated as data.
_STRUCTURAL_KEYS: Final = frozenset({"event", "level", "logger", "timestamp"})

_AUTH_VALUE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]+", re.I)
# name=value in query strings and form bodies, "name": "value" in JSON text. A bare
# "password: ..." is left alone: it is how settings errors name the setting.
_SECRET_PAIR = re.compile(
    r"""(?P<name>(?:access_|refresh_|id_)?token|client_secret|password|passwd|api[_-]?key"""
    r"""|secret|assertion)(?P<sep>=|["']\s*:\s*["'])(?P<value>[^\s&"',;}]+)""",
    re.I,
)
# scheme://user:password@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]+@", re.I)
# Token shapes we know even before they are registered (the sandbox's and JWTs).
_TOKEN_SHAPES = re.compile(
    r"\bsbx_(?:at|rt)_[A-Za-z0-9_\-]+"
    r"|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
)

_MIN_SECRET_LEN: Final = 6  # shorter values would scrub ordinary words

# Guards _known and the rebuild of _known_pattern: tokens are registered from the event
# loop, but stdlib loggers may emit from aiokafka's or the default executor's threads.
# Readers take the compiled pattern without the lock (one reference read).
_known_lock = threading.Lock()
_known: set[str] = set()  # configured secrets: client secret, API key, passwords
# Issued tokens rotate: the newest few are kept (older ones have expired and are also caught
# by _TOKEN_SHAPES for the shapes we know), so the pattern does not grow for ever.
_rotating: collections.OrderedDict[str, None] = collections.OrderedDict()
_MAX_ROTATING: Final = 32
_known_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None, *, rotating: bool = False) -> None:
    """Remember a secret value so it is scrubbed from every future log line.

    ``rotating`` marks issued tokens: only the newest ``_MAX_ROTATING`` are kept. Values
    shorter than six characters are ignored: they would scrub ordinary words.
    """
    global _known_pattern
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _known_lock:
        if value in _known or value in _rotating:
            return
        if rotating:
            _rotating[value] = None
            while len(_rotating) > _MAX_ROTATING:
                _rotating.popitem(last=False)
        else:
            _known.add(value)
        # Longest first, so a secret that contains another is removed whole.
        ordered = sorted({*_known, *_rotating}, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def forget_secrets() -> None:
    """Clear the registry (for tests)."""
    global _known_pattern
    with _known_lock:
        _known.clear()
        _rotating.clear()
        _known_pattern = None


def scrub(text: str) -> str:
    """Remove credential-looking substrings and every registered secret from ``text``."""
    pattern = _known_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}@", text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def _names_credential(key: object) -> bool:
    name = str(key)
    if name in _STRUCTURAL_KEYS or not _SENSITIVE_KEY.search(name):
        return False
    return not name.lower().endswith(_DESCRIPTIVE_SUFFIXES)


class RedactSecrets:
    """structlog processor: drop credential-named keys and scrub every string value.

    Nested mappings and sequences are walked (and copied, so the caller's objects are never
    changed). Values of other types are rendered with ``repr`` and scrubbed, since the JSON
    renderer would print that ``repr`` anyway.
    """

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return self._clean_mapping(event_dict)

    def _clean_mapping(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        return {
            key: REDACTED if _names_credential(key) else self._clean(value)
            for key, value in data.items()
        }

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return self._clean_mapping(value)
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return scrub(bytes(value).decode("utf-8", "replace"))
        return scrub(repr(value))


def _shared_processors() -> list[Processor]:
    """Steps for structlog and stdlib records alike, before the formatter's tail."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _tail(fmt: str) -> list[Processor]:
    """Exception rendering, then redaction, then the renderer (chosen once, here)."""
    if fmt == "console":
        return [
            # Plain text traceback (the stdlib's formatter never shows locals) into the
            # ``exception`` key, scrubbed, then printed by the console renderer as is.
            structlog.processors.ExceptionRenderer(),
            RedactSecrets(),
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    if fmt == "json":
        transformer = structlog.tracebacks.ExceptionDictTransformer(
            show_locals=False, use_rich=False
        )
        return [
            structlog.processors.ExceptionRenderer(transformer),
            RedactSecrets(),
            structlog.processors.JSONRenderer(),
        ]
    raise ValueError(f"unknown log format {fmt!r} (json or console)")


_handler: logging.Handler | None = None  # the handler configure_logging installed


def configure_logging(
    *,
    level: str = "INFO",
    fmt: str = "json",
    stream: IO[str] | None = None,
    quiet_libraries: Iterable[str] = ("aiokafka", "aiohttp.access"),
) -> None:
    """Route structlog and the standard library through one redacting pipeline.

    Called once by the CLI; tests call it again with another level, format or stream, and
    :func:`reset_logging` afterwards.

    Raises:
        ValueError: for a format other than ``json`` or ``console``.
    """
    global _handler
    # No output field uses the caller's file, thread or process: skip the per-record lookups.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    tail = _tail(fmt)
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
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
    _handler = handler
    # Library chatter stays at WARNING unless we debug (their DEBUG goes through redaction too).
    for name in quiet_libraries:
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")


def reset_logging() -> None:
    """Undo :func:`configure_logging`: remove its handler and restore structlog's defaults."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    structlog.reset_defaults()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named for its module."""
    return structlog.stdlib.get_logger(name)
