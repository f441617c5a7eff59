"""Sampling profile of the worker process with py-spy, summarised as hotspots.

py-spy attaches to the running worker by pid (``--nonblocking``: it never pauses the
process, so the profile shows the worker at speed) and writes collapsed stacks
(``--format raw``). :func:`summarise` folds them into shares per pipeline stage (a stack
belongs to the first stage whose pattern it matches), self and inclusive time per
function, and self time per package, which is what ``docs/benchmark.md`` quotes.
py-spy is a profiling-only tool and not a project dependency:
``.venv/bin/pip install py-spy``; without it the profile is skipped with a note.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["py_spy_path", "start_py_spy", "summarise"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")
#: Pipeline stages, matched against a whole stack in this order; the first match wins.
_STAGES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("ledger thread (aiosqlite, sqlite3)", r"_connection_worker_thread"),
        ("start-up (imports)", r"_find_and_load"),
        ("parse_event (pydantic, Decimal)", r"(^|;)parse_event \("),
        ("plan_document (mapping, money)", r"(^|;)plan_document \("),
        ("ledger calls (event-loop side)", r"(^|;)Ledger\.(claim|complete) \("),
        ("API calls (auth, aiohttp client, JSON)", r"(^|;)AccountingApi\.create_invoice \("),
        ("logging (structlog, stdlib, JSON)", r"structlog/|logging/__init__|worker/logs\.py"),
        ("metrics (prometheus_client)", r"prometheus_client"),
        ("pipeline bookkeeping", r"(^|;)Pipeline\._(dispatch|commit|release|check_idle)"),
        ("Kafka fetch (aiokafka)", r"aiokafka/"),
        ("epoll and loop wake-ups", r"EpollSelector\.select|_read_from_self|_write_to_self"),
    )
)
_PACKAGES = (
    "aiohttp", "aiokafka", "aiosqlite", "asyncio", "json", "logging", "multidict",
    "prometheus_client", "pydantic", "pydantic_core", "structlog", "sqlite3", "yarl",
    "selectors", "ssl", "decimal", "zoneinfo", "hashlib",
)  # fmt: skip


def py_spy_path() -> str | None:
    """The py-spy next to this interpreter, or on ``PATH``."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


async def start_py_spy(
    pid: int, out: Path, *, rate: int = 200, duration_s: int | None = None
) -> asyncio.subprocess.Process:
    """Sample ``pid`` until it exits (or ``duration_s``), writing collapsed stacks to ``out``.

    Raises:
        RuntimeError: py-spy is not installed.
    """
    exe = py_spy_path()
    if exe is None:
        raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
    args = ["record", "--pid", str(pid), "--nonblocking", "--format", "raw"]
    args += ["--rate", str(rate), "--output", str(out)]
    if duration_s is not None:
        args += ["--duration", str(duration_s)]
    return await asyncio.create_subprocess_exec(
        exe, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return match["func"], match["file"]


def _package(file: str) -> str:
    parts = file.replace("\\", "/").split("/")
    if "worker" in parts:
        i = parts.index("worker")
        return "worker/" + "/".join(parts[i + 1 :]) if i + 1 < len(parts) else "worker"
    for part in parts:
        name = part.removesuffix(".py")
        if name in _PACKAGES:
            return name
    if parts and parts[0] == "<frozen importlib._bootstrap>":
        return "import"
    return parts[-1] if parts else "?"


def summarise(path: Path, *, top: int = 12) -> dict[str, Any]:
    """Self time, inclusive time and per-package self time, as shares of active samples."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        stage = next((name for name, rx in _STAGES if rx.search(stack)), None)
        stages[stage or "other (task steps, socket callbacks, aiohttp responses)"] += count
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1]]  # drop the "process"/"thread" pseudo-frames
        if not frames:
            continue
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += count
        packages[_package(file)] += count
        for name in {f"{fn} ({fl})" for fn, fl in frames}:
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "by_stage_pct": share(stages) if total else [],
        "top_self_pct": share(self_time) if total else [],
        "top_inclusive_pct": share(inclusive) if total else [],
        "by_package_self_pct": share(packages) if total else [],
    }
