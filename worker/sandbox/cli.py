"""The ``sandbox`` subcommand: ``invoice-sync sandbox`` and ``python -m worker.sandbox``.

With no ``--client`` it serves the documented demo client ``demo-store`` /
``demo-secret-change-me`` with every scope. It prints exactly one line,
``sandbox listening on http://HOST:PORT``, once the port is bound, and never prints a
token or a secret. SIGINT and SIGTERM stop it with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from worker.sandbox.config import (
    ALL_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    ClientSpec,
    SandboxConfig,
)
from worker.sandbox.faults import FaultRule, Faults
from worker.sandbox.server import freeze_stored, run_sandbox

#: The module docstring as ``--help`` shows it (reST literals read badly on a terminal).
_HELP = (__doc__ or "").replace("``", "")

__all__ = ["add_arguments", "add_parser", "config_from_args", "main", "run"]


def _client(text: str) -> tuple[str, str, frozenset[str]]:
    client_id, sep, rest = text.partition(":")
    secret, sep2, scopes = rest.rpartition(":")
    if not (sep and sep2 and client_id and secret):
        raise argparse.ArgumentTypeError("expected ID:SECRET:SCOPE[,SCOPE...]")
    granted = ALL_SCOPES if scopes in ("*", "all") else frozenset(scopes.split(","))
    unknown = granted - ALL_SCOPES
    if unknown or not granted:
        raise argparse.ArgumentTypeError(f"unknown scopes: {','.join(sorted(unknown))}")
    return client_id, secret, granted


def _error_rate(text: str) -> tuple[int, float]:
    status, _, rate = text.partition("=")
    try:
        return int(status), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError("expected STATUS=RATE, e.g. 503=0.1") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every sandbox option to ``parser`` (shared by the subcommand and ``-m``)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; keep it local)")
    add("--port", type=int, default=8081, help="port, 0 picks a free one (default 8081)")
    add(
        "--client",
        type=_client,
        action="append",
        default=[],
        metavar="ID:SECRET:SCOPE[,SCOPE...]",
        help=f"an OAuth client (repeatable; '*' = all scopes). Default: {DEMO_CLIENT_ID} "
        "with the documented demo secret and every scope",
    )
    add("--token-lifetime", type=float, default=3600.0, help="access token seconds")
    add("--token-format", choices=("opaque", "jwt"), default="opaque")
    add("--refresh-tokens", action="store_true", help="clients also get rotating refresh tokens")
    add("--seed", type=int, default=None, help="seed for the fault dice")
    add(
        "--fault-target",
        choices=("resources", "token"),
        default="resources",
        help="what the latency/error/reset/slow options below apply to",
    )
    add("--latency-ms", type=float, default=0.0, help="fixed time from each request to its answer")
    add("--latency-tail-ms", type=float, default=0.0, help="mean of an extra exponential delay")
    add(
        "--error-rate",
        type=_error_rate,
        action="append",
        default=[],
        metavar="STATUS=RATE",
        help="answer STATUS (429, 500, 502, 503, 504) with probability RATE (repeatable)",
    )
    add("--retry-after", type=int, default=1, help="Retry-After seconds on injected 429s")
    add("--reset-rate", type=float, default=0.0, help="probability of closing the connection")
    add("--slow-success-rate", type=float, default=0.0, help="probability of a slow success")
    add("--slow-success-delay", type=float, default=5.0, help="seconds a slow success waits")
    add("--token-outage", action="store_true", help="token endpoint answers 503 with HTML")


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Turn parsed options into a :class:`SandboxConfig`."""
    specs = args.client or [(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, ALL_SCOPES)]
    clients = [
        ClientSpec(cid, secret, scopes, args.refresh_tokens) for cid, secret, scopes in specs
    ]
    rule = FaultRule(
        target=args.fault_target,
        latency_ms=args.latency_ms,
        latency_tail_ms=args.latency_tail_ms,
        error_rates=dict(args.error_rate),
        retry_after=args.retry_after,
        reset_rate=args.reset_rate,
        slow_success_rate=args.slow_success_rate,
        slow_success_delay=args.slow_success_delay,
    )
    active = any((args.latency_ms, args.latency_tail_ms, args.error_rate, args.reset_rate)) or bool(
        args.slow_success_rate
    )
    faults = Faults(rules=(rule,) if active else (), token_outage=args.token_outage, seed=args.seed)
    return SandboxConfig(
        clients=clients,
        token_lifetime=args.token_lifetime,
        token_format=args.token_format,
        faults=faults,
    )


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_sandbox(config, host=host, port=port) as sbx:
        print(f"sandbox listening on {sbx.url}", flush=True)
        # This process is the sandbox: its store may be kept out of full collections.
        freezer = asyncio.create_task(freeze_stored(sbx.state))
        try:
            await stop.wait()
        finally:
            freezer.cancel()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; the exit code is 0 on a clean stop, 2 on bad options."""
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'options'}: "
            + str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors(include_url=False)
        ]
        print(f"sandbox: invalid options: {'; '.join(problems)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"sandbox: invalid options: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(config, args.host, args.port))
    return 0


def add_parser(subparsers: Any) -> None:
    """Register the ``sandbox`` subcommand on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run the sandbox accounting API (tests/demo only; never expose publicly)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.sandbox", description=_HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
