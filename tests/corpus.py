"""Where the shared, read-only test corpus lives: ``../shared/corpus`` beside the clone.

CI lays ``shared/`` next to the clone. On a machine without it, the tests that need it are
skipped with the reason shown, or fail under ``INVOICE_SYNC_TEST_STRICT=1`` (as in CI), like
every other real input the suite depends on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.plugins.postgres import missing_server

CORPUS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def corpus_file(*parts: str) -> Path:
    """The path of a corpus file; skips (or fails, strict) the test when it is absent."""
    path = CORPUS_DIR.joinpath(*parts)
    if not path.is_file():
        missing_server(f"shared corpus file {path} not found (../shared/corpus beside the clone)")
    return path


def money_vectors() -> list[dict[str, Any]]:
    """The money vectors, or [] when the corpus is absent (a separate test reports that)."""
    path = CORPUS_DIR / "money" / "vectors.json"
    if not path.is_file():
        return []
    vectors: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["vectors"]
    return vectors
