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
seconds...) ride in through :func:`event_context` (or structlog's own
``bound_contextvars``, which is merged too) so every line of one event carries them.

The hot path is one INFO line per invoice, so the pipeline is built for it (measured in
docs/benchmark.md): our own loggers render straight to the stream (no stdlib ``LogRecord``
per line), levels below the configured one are no-ops, :func:`event_context` keeps the
context in one ``ContextVar`` instead of one per field, :func:`scrub` answers "nothing to
scrub" with one regular-expression search, and lines are serialised by orjson.
Standard-library records (aiokafka, aiohttp, asyncio) still go through ``logging`` and a
``ProcessorFormatter`` with the same redaction and renderer.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import logging
import re
import sys
import threading
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Final

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "RedactSecrets",
    "configure_logging",
    "event_context",
    "forget_secrets",
    "get_logger",
    "register_secret",
    "reset_logging",
    "scrub",
]

REDACTED: Final = "[redacted]"

_SENSITIVE_KEY = re.compile(
    r"token|secret|password|passwd|authorization|api[_-]?key|cookie|credential|assertion", re.I
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
# Words without which a pattern cannot match: a cheap substring test skips its regular
# expression, which is what most log strings need (measured: the pair pattern alone took
# 60 us on a 350-character line, the substring tests well under one).


def _may_hold_pair(low: str) -> bool:
    """Whether lowercased ``low`` has a word _SECRET_PAIR needs (unrolled: it runs a lot)."""
    return "token" in low or "secret" in low or "passw" in low or "key" in low or "assertion" in low


def register_secret(*values: str | None, rotating: bool = False) -> None:
    """Remember secret values so they are scrubbed from every future log line.

    ``rotating`` marks issued tokens: only the newest ``_MAX_ROTATING`` are kept. Values
    shorter than six characters are ignored: they would scrub ordinary words. The pattern is
    rebuilt once per call, so the shapes of one secret are best registered together.
    """
    global _known_pattern
    new = [v for v in values if v and len(v) >= _MIN_SECRET_LEN]
    with _known_lock:
        new = [v for v in new if v not in _known and v not in _rotating]
        if not new:
            return
        for value in new:
            if rotating:
                _rotating[value] = None
            else:
                _known.add(value)
        while len(_rotating) > _MAX_ROTATING:
            _rotating.popitem(last=False)
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
    # The substring pre-checks only skip work, so they may only answer for ASCII text: with
    # re.I a pattern also matches Unicode look-alikes ("ſ" for s, the Kelvin sign for k)
    # that str.lower() keeps as they are, and a pre-check would then skip a line its
    # pattern matches. Non-ASCII text runs every pattern.
    ascii_only = text.isascii()
    low = text.lower()
    if not ascii_only or "bearer" in low or "basic" in low:
        text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if not ascii_only or _may_hold_pair(low):
        text = _SECRET_PAIR.sub(lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}@", text)
    if not ascii_only or "sbx_" in low or "eyj" in low:
        text = _TOKEN_SHAPES.sub(REDACTED, text)
    return text


@functools.lru_cache(maxsize=4096)
def names_credential(key: object) -> bool:
    """Whether a field name names a credential (cached: the same few keys recur)."""
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
        flat = self._clean_flat(event_dict)
        return flat if flat is not None else self._clean_mapping(event_dict)

    @staticmethod
    def _clean_flat(data: Mapping[Any, Any]) -> dict[Any, Any] | None:
        """The usual line (scalar values only) with one scrub pass over all its strings.

        ``None`` when a value is not a scalar or the pass found anything, and the caller
        then cleans value by value. Why "unchanged" means every value is clean: the
        patterns anchor only with ``\b`` at a match's start, where the newline separator
        acts like a string's edge, so whatever matches inside one value matches in the
        joined text too; a match that straddles two values changes the text and sends the
        line down the slow path. Measured on the invoice line (17 fields): 36 -> 32 us.
        """
        texts = []
        for value in data.values():
            if isinstance(value, str):
                texts.append(value)
            elif not (value is None or isinstance(value, bool | int | float)):
                return None
        joined = "\n".join(texts)
        if scrub(joined) != joined:
            return None
        return {key: REDACTED if names_credential(key) else value for key, value in data.items()}

    def _clean_mapping(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        return {
            key: REDACTED if names_credential(key) else self._clean(value)
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


# --- context ----------------------------------------------------------------------------------

# The fields bound for the work at hand, as one immutable dict: binding is one ContextVar.set
# (structlog's bound_contextvars uses one variable per field and reads the whole context on
# every bind, which cost more than the rest of an INFO line).
_NO_FIELDS: Final[Mapping[str, Any]] = types.MappingProxyType({})
_event_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "invoice_sync_log_fields", default=_NO_FIELDS
)


@contextlib.contextmanager
def event_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (this task only).

    Nested blocks add to the outer fields and may override them; leaving a block restores
    what was bound before it. Tasks created inside the block start with its fields.
    """
    token = _event_fields.set({**_event_fields.get(), **fields})
    try:
        yield
    finally:
        _event_fields.reset(token)


def merge_event_context(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """structlog processor: add the :func:`event_context` fields (call-site keys win)."""
    fields = _event_fields.get()
    if fields:
        return {**fields, **event_dict}
    return event_dict


# --- pipelines ---------------------------------------------------------------------------------


def _shared_processors() -> list[Processor]:
    """Context, level and timestamp, for structlog and stdlib records alike."""
    return [
        structlog.contextvars.merge_contextvars,
        merge_event_context,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _foreign_processors() -> list[Processor]:
    """What a standard-library record needs first: its logger name, %-args and extras."""
    return [
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.stdlib.ExtraAdder(),
        *_shared_processors(),
    ]


def _json_dumps(obj: Any, **_: Any) -> str:
    # RedactSecrets has already turned every value into JSON types or a scrubbed repr;
    # ``default=repr`` only guards a type it does not know.
    return orjson.dumps(obj, default=repr).decode()


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
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
    raise ValueError(f"unknown log format {fmt!r} (json or console)")


class _Output:
    """Where log lines go: the configured stream, behind one lock for both writers."""

    def __init__(self) -> None:
        self.stream: IO[str] = sys.stdout
        # Library records are written by the stdlib handler, from other threads too; an
        # RLock because that handler takes it again inside (emit -> flush).
        self.lock = threading.RLock()


_output = _Output()


class _Sink:
    """The wrapped logger of one named structlog logger: one write per line.

    It holds no stream of its own (:func:`configure_logging` swaps ``_output.stream``), so a
    logger a module created at import time writes wherever the latest configuration says.
    ``name`` is what ``add_logger_name`` reports.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        with _output.lock:
            _output.stream.write(message + "\n")
            _output.stream.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


@functools.cache
def _sink(name: str = "") -> _Sink:
    return _Sink(name)


_handler: logging.Handler | None = None  # the handler configure_logging installed


class _LockedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stdlib handler, sharing our lines' lock so lines never interleave."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.lock = _output.lock  # type: ignore[assignment]

    def createLock(self) -> None:
        self.lock = _output.lock  # type: ignore[assignment]


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
    out = stream or sys.stdout
    _output.stream = out
    structlog.configure(
        processors=[structlog.stdlib.add_logger_name, *_shared_processors(), *tail],
        logger_factory=_sink,
        # Methods below the level are no-ops; not cached, so a new configuration (tests)
        # reaches loggers that modules created at import time.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_foreign_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = _LockedStreamHandler(out)
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
    _output.stream = sys.stdout
    structlog.reset_defaults()


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger named for its module (the name rides as the ``logger`` field)."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
