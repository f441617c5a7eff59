"""Pytest fixtures for the log pipeline.

``restore_logging`` puts the root logger and the library loggers back as pytest had them;
``json_logs`` is the JSON pipeline at INFO writing to a buffer (read it with
``json.loads`` per line).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from worker.logs import configure_logging, reset_logging


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
