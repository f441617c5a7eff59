"""Pytest fixtures for the log pipeline.

``restore_logging`` puts the root logger and the library loggers back as pytest had them;
``json_logs`` is the JSON pipeline at INFO writing to a buffer (read it with
``json.loads`` per line). :func:`undotted_events` checks captured JSON lines against the
event-naming rule of docs/observability.md.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from worker.logs import configure_logging, reset_logging

DOTTED_EVENT = re.compile(r"^[a-z0-9_]+(?:\.[a-z0-9_]+)+$")
"""An event name: dotted lower_snake parts, such as ``api.request`` or ``dlq.value_omitted``."""


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and the library loggers back as pytest had them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libs = {n: logging.getLogger(n).level for n in ("aiokafka", "aiohttp.access", "asyncio")}
    yield
    reset_logging()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in libs.items():
        logging.getLogger(name).setLevel(lvl)


@pytest.fixture
def json_logs(restore_logging: None) -> io.StringIO:
    """The JSON pipeline writing to a buffer at INFO."""
    buf = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=buf)
    return buf


def undotted_events(text: str, *, logger: str = "worker") -> list[str]:
    """The events of JSON lines in ``text`` from ``logger`` or its children that are not
    dotted names. Other loggers (aiohttp, aiokafka, asyncio) carry their own messages as
    events and are skipped."""
    bad = []
    for line in text.splitlines():
        entry = json.loads(line)
        name = str(entry.get("logger", ""))
        if name != logger and not name.startswith(f"{logger}."):
            continue
        event = entry.get("event")
        if not isinstance(event, str) or not DOTTED_EVENT.match(event):
            bad.append(f"{name}: {event!r}")
    return bad
