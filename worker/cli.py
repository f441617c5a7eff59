"""The ``invoice-sync`` command: ``run``, ``sandbox``, ``broker``, ``demo``, ``config``, ``dlq``,
``check``.

Settings are built here, once, and passed down; nothing else reads the environment. A
subcommand that cannot do its job says so on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence

from worker import __version__
from worker.errors import DLQ_REASONS, SettingsError
from worker.settings import Settings, load_settings, masked_dump

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"invoice-sync: {exc.message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _cmd_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    from worker.settings import unknown_env_vars

    for name in unknown_env_vars():
        print(f"invoice-sync: {name} is not a setting; ignored ({_UNKNOWN_HINT})", file=sys.stderr)
    print(json.dumps(masked_dump(settings), indent=2, sort_keys=True))
    return EXIT_OK


class _EarlySignals:
    """SIGTERM/SIGINT that arrive before the event loop exists, remembered for ``run_service``.

    Imports and settings take a fraction of a second; without this, a SIGTERM then would kill
    the process with the default action (exit 143). Installed first thing in ``run``; the
    loop's own handlers replace it, and ``run_service`` then stops at once. Only a signal
    during the interpreter's own start-up, before this module runs, still exits 143.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous = {sig: signal.signal(sig, self._remember) for sig in self._SIGNALS}

    def _remember(self, signum: int, frame: object) -> None:
        self.received = signal.Signals(signum)

    def __call__(self) -> signal.Signals | None:
        return self.received

    def restore(self) -> None:
        """Put back the handlers found (``main`` may run inside another program, or a test)."""
        for sig, handler in self._previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


def _cmd_run(args: argparse.Namespace) -> int:
    early = _EarlySignals()
    try:
        return _run(early)
    finally:
        early.restore()


def _run(early: _EarlySignals) -> int:
    settings = _settings_or_exit()
    from worker.logs import configure_logging
    from worker.service import event_loop_factory, run_service, tune_gc

    configure_logging(level=settings.logging.level, fmt=settings.logging.format)
    _warn_unknown_settings()
    try:
        factory = event_loop_factory(settings.pipeline.event_loop)
    except RuntimeError as exc:  # uvloop asked for and missing: a configuration error
        print(f"invoice-sync: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    tune_gc()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(run_service(settings, early_signal=early))
    except Exception as exc:
        from worker.logs import get_logger, scrub

        get_logger("worker.cli").error(
            "worker.failed", error_type=type(exc).__name__, message=scrub(str(exc))[:500]
        )
        return EXIT_FAILURE


_UNKNOWN_HINT = (
    "a group and a name are joined by two underscores: INVOICE_SYNC_PIPELINE__MAX_IN_FLIGHT"
)


def _warn_unknown_settings() -> None:
    """Log the ``INVOICE_SYNC_*`` variables no setting reads: usually a typo."""
    from worker.logs import get_logger
    from worker.settings import unknown_env_vars

    unknown = unknown_env_vars()
    if unknown:
        get_logger("worker.cli").warning(
            "settings.unknown_variables", names=unknown[:20], hint=_UNKNOWN_HINT
        )


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    from worker.health import check_health

    return asyncio.run(check_health(settings, url=args.url))


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    from worker.demo import run_demo

    return asyncio.run(run_demo(settings, workdir=args.workdir, verbose=args.verbose))


def _cmd_broker(args: argparse.Namespace) -> int:
    from worker.demo import run_broker

    return asyncio.run(
        run_broker(port=args.port, demo_events=args.demo_events, workdir=args.workdir)
    )


def _cmd_dlq(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    from worker.dlq import inspect_dlq, replay_dlq
    from worker.logs import configure_logging

    # The same scrubbed log pipeline as `run`, on stderr: stdout carries the letters (--json).
    configure_logging(level=settings.logging.level, fmt=settings.logging.format, stream=sys.stderr)

    if args.dlq_command == "inspect":
        return asyncio.run(inspect_dlq(settings, limit=args.limit, as_json=args.json))
    return asyncio.run(replay_dlq(settings, reason=args.reason, dry_run=args.dry_run))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invoice-sync",
        description="Sale-order events from Kafka become invoices and credit notes.",
    )
    parser.add_argument("--version", action="version", version=f"invoice-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the worker (configuration from INVOICE_SYNC_* env)")
    run.set_defaults(func=_cmd_run)

    cfg = sub.add_parser("config", help="print the effective configuration, secrets masked")
    cfg.set_defaults(func=_cmd_config)

    chk = sub.add_parser("check", help="exit 0 when the worker's /healthz says healthy")
    chk.add_argument("--url", default=None, help="health URL (default: from settings)")
    chk.set_defaults(func=_cmd_check)

    demo = sub.add_parser("demo", help="broker + sandbox + demo events + worker, then a summary")
    demo.add_argument("--workdir", default=".demo", help="where the demo keeps its ledger")
    demo.add_argument("--verbose", action="store_true", help="show the worker's log lines")
    demo.set_defaults(func=_cmd_demo)

    broker = sub.add_parser(
        "broker", help="the embedded Kafka-protocol broker (Tansu), for running the worker by hand"
    )
    broker.add_argument("--port", type=int, default=9092, help="loopback port (default 9092)")
    broker.add_argument(
        "--demo-events", action="store_true", help="create topic orders and publish the demo events"
    )
    broker.add_argument("--workdir", default=".broker", help="where the broker writes its log")
    broker.set_defaults(func=_cmd_broker)

    dlq = sub.add_parser("dlq", help="inspect or replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    ins = dlq_sub.add_parser("inspect", help="list dead letters with their reasons")
    ins.add_argument(
        "--limit", type=int, default=100, help="dead letters listed at most (default 100)"
    )
    ins.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    rep = dlq_sub.add_parser(
        "replay",
        help="re-publish dead letters not replayed before to their source topic (a consumer"
        " group, kafka.dlq_replay_group_id, remembers what was sent)",
    )
    # A closed list: an unknown code would match nothing yet start a consumer group of its own.
    rep.add_argument(
        "--reason",
        default=None,
        choices=sorted(DLQ_REASONS),
        metavar="REASON",
        help=f"only dead letters with this reason code: {', '.join(sorted(DLQ_REASONS))}",
    )
    rep.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    dlq.set_defaults(func=_cmd_dlq)

    from worker.sandbox.cli import add_parser as add_sandbox_parser

    add_sandbox_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from worker.logs import scrub

        print(
            f"invoice-sync {args.command}: failed: {type(exc).__name__}: {scrub(str(exc))[:500]}",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
