"""``make demo``: the main job end to end on embedded defaults.

Starts the embedded broker (Tansu) and the sandbox API, publishes the shipped demo events
(:mod:`worker.demo_data`: individuals and businesses, Arabic and English names, discounts,
shipping, zero-rated exports, cancellations, refunds and a few broken records), runs the real
worker until the topic is drained, and prints a summary whose figures come from the sandbox's
own stats and from the dead-letter topic, never from the worker's counters. Exit 0 only when
no reference was created twice, every broken record is in the DLQ with its expected reason,
and the document counts match what the input calls for.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from worker.broker import TansuBroker, publish_records
from worker.demo_data import DemoRecord, generate_demo_events
from worker.dlq import DeadLetter, read_dead_letters
from worker.logs import configure_logging
from worker.metrics import EVENTS_CONSUMED
from worker.sandbox import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SandboxConfig, run_sandbox
from worker.service import run_service
from worker.settings import LedgerSettings, Settings

__all__ = ["run_broker", "run_demo"]

_TOPIC = "orders"
_PARTITIONS = 6
_TIMEOUT_S = 600.0


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _say(text: str) -> None:
    print(text, flush=True)


def _demo_settings(base: Settings, *, bootstrap: str, api_url: str, workdir: Path) -> Settings:
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={
                    "bootstrap_servers": bootstrap,
                    "topics": [_TOPIC],
                    "group_id": "invoice-sync-demo",
                }
            ),
            # The demo's own sandbox knows only its demo client, whatever the shell says.
            "oauth": base.oauth.model_copy(
                update={
                    "token_url": f"{api_url}/oauth/token",
                    "client_id": DEMO_CLIENT_ID,
                    "client_secret": SecretStr(DEMO_CLIENT_SECRET),
                    "auth_method": "client_secret_basic",
                }
            ),
            "api": base.api.model_copy(update={"base_url": api_url, "auth_mode": "oauth"}),
            "ledger": LedgerSettings(url=f"sqlite:///{workdir / 'ledger.db'}"),
            "http": base.http.model_copy(update={"port": 0, "host": "127.0.0.1"}),
            "pipeline": base.pipeline.model_copy(update={"stop_when_idle_s": 3.0}),
        }
    )


async def _publish(bootstrap: str, records: list[DemoRecord]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(_TOPIC, _PARTITIONS, 1), NewTopic(f"{_TOPIC}.dlq", 1, 1)]
        )
    finally:
        await admin.close()
    await publish_records(bootstrap, _TOPIC, records)


async def run_broker(*, port: int, demo_events: bool, workdir: str) -> int:
    """Serve the embedded broker on ``port`` until SIGINT/SIGTERM (``invoice-sync broker``).

    With ``demo_events`` it first creates the demo's topics and publishes its events, so
    ``invoice-sync sandbox`` and ``invoice-sync run`` in two more shells, on their defaults,
    sync them. Prints one line, ``broker listening on HOST:PORT ...``, once it is ready.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    work = Path(workdir)
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    with TansuBroker(port=port, log_path=work / "tansu.log") as broker:
        note = ""
        if demo_events:
            records = generate_demo_events()
            await _publish(broker.bootstrap, records)
            note = f" (topic {_TOPIC}: {len(records)} demo events)"
        _say(f"broker listening on {broker.bootstrap}{note}")
        await stop.wait()
    return 0


def _consumed() -> int:
    return int(
        sum(
            sample.value
            for metric in EVENTS_CONSUMED.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
    )


async def run_demo(settings: Settings, *, workdir: str, verbose: bool) -> int:
    """Run the demo and return the exit code (0 only when everything adds up)."""
    configure_logging(level="INFO" if verbose else "ERROR", fmt=settings.logging.format)
    work = Path(workdir)
    await asyncio.to_thread(_fresh_dir, work)
    records = generate_demo_events()
    wanted = Counter(r.expected.split(":")[0] for r in records)
    broken = [r for r in records if r.expected.startswith("dlq:")]
    _say(f"demo: starting the embedded broker and the sandbox; {len(records)} events to sync")
    with TansuBroker(log_path=work / "tansu.log") as broker:
        async with run_sandbox(SandboxConfig()) as sandbox:
            await _publish(broker.bootstrap, records)
            demo = _demo_settings(
                settings, bootstrap=broker.bootstrap, api_url=sandbox.url, workdir=work
            )
            start = time.monotonic()
            before = _consumed()
            worker = asyncio.create_task(run_service(demo))
            try:
                while not worker.done():
                    await asyncio.wait({worker}, timeout=1.0)
                    if time.monotonic() - start > _TIMEOUT_S:
                        _say("demo: timed out waiting for the worker")
                        worker.cancel()
                    stats = sandbox.stats()
                    done = _consumed() - before
                    if not done and not stats["invoices"]:
                        _say("  progress: the worker is starting (joining the consumer group)")
                    elif done >= len(records):
                        _say(
                            f"  progress: all {done} events done, {stats['invoices']} invoices, "
                            f"{stats['credit_notes']} credit notes; the worker stops once idle"
                        )
                    else:
                        _say(
                            f"  progress: {done}/{len(records)} events done, "
                            f"{stats['invoices']} invoices, {stats['credit_notes']} credit notes"
                        )
                exit_code = await worker
            finally:
                if not worker.done():
                    worker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker
            stats = sandbox.stats()
            letters = await read_dead_letters(demo)
    return _summarise(records, broken, wanted, stats, letters, exit_code, time.monotonic() - start)


def _summarise(
    records: list[DemoRecord],
    broken: list[DemoRecord],
    wanted: Counter[str],
    stats: dict[str, Any],
    letters: list[DeadLetter],
    exit_code: int,
    elapsed: float,
) -> int:
    invoices, credit_notes = int(stats["invoices"]), int(stats["credit_notes"])
    duplicates = int(stats["duplicate_references"])
    got = Counter((d.key, d.value, d.reason) for d in letters)
    missing = [r for r in broken if got[(r.key, r.value, r.expected.split(":", 1)[1])] < 1]
    unexpected = len(letters) - (len(broken) - len(missing))
    reasons = Counter(d.reason for d in letters)
    _say("")
    _say(f"worker exited with {exit_code} after {elapsed:.1f}s")
    _say(
        f"expected: {wanted['invoice']} invoices, {wanted['credit_note']} credit notes, "
        f"{wanted['dlq']} dead letters ({wanted['skip']} events that make no document: types"
        " the worker skips, and a redelivered webhook)"
    )
    _say("dead letters by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    problems = []
    if duplicates:
        problems.append(f"{duplicates} references created twice")
    if missing:
        problems.append(f"{len(missing)} broken events missing from the DLQ")
    if unexpected:
        problems.append(f"{unexpected} unexpected dead letters")
    if invoices != wanted["invoice"] or credit_notes != wanted["credit_note"]:
        problems.append("document counts differ from the input")
    for p in problems:
        _say(f"PROBLEM: {p}")
    _say(
        f"demo: {len(records)} events, {invoices} invoices, {credit_notes} credit notes, "
        f"{len(letters)} dead-lettered, {duplicates} duplicates"
    )
    ok = not problems and exit_code == 0
    if not ok:
        print("demo: FAILED", file=sys.stderr)
    return 0 if ok else 1
