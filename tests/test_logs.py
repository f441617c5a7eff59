"""Logging: the redaction processor on its own, and the whole pipeline end to end."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog
from structlog.contextvars import bound_contextvars

from worker import logs
from worker.logs import (
    REDACTED,
    RedactSecrets,
    configure_logging,
    event_context,
    forget_secrets,
    get_logger,
    register_secret,
    reset_logging,
    scrub,
)

SECRET = "s3cr3t-client-value-9f2c"
TOKEN = "opaque-access-token-77aa"


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _redact(event_dict: dict[str, Any]) -> dict[str, Any]:
    return dict(RedactSecrets()(None, "info", event_dict))


class TestScrub:
    def test_registered_secret_is_removed(self) -> None:
        """A registered value disappears wherever it occurs in a string."""
        register_secret(SECRET)
        assert scrub(f"login with {SECRET} failed") == f"login with {REDACTED} failed"

    def test_short_values_are_not_registered(self) -> None:
        """Values under six characters would scrub ordinary words, so they are ignored."""
        register_secret("abc")
        register_secret(None)
        assert scrub("abc abcdef") == "abc abcdef"

    def test_longest_secret_wins(self) -> None:
        """A secret containing another registered one is removed whole."""
        register_secret("abcdef")
        register_secret("abcdefghijkl")
        assert scrub("x abcdefghijkl y") == f"x {REDACTED} y"

    def test_forget_clears_registry(self) -> None:
        """forget_secrets empties the registry."""
        register_secret(SECRET)
        forget_secrets()
        assert scrub(SECRET) == SECRET

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Authorization: Bearer abc.def-123", f"Authorization: Bearer {REDACTED}"),
            ("basic ZGVtbzpzZWNyZXQ=", f"basic {REDACTED}"),
            (
                "grant_type=client_credentials&client_secret=xyz123&scope=a",
                f"grant_type=client_credentials&client_secret={REDACTED}&scope=a",
            ),
            (
                '{"access_token": "abc123", "expires_in": 3600}',
                f'{{"access_token": "{REDACTED}", "expires_in": 3600}}',
            ),
            ("GET /cb?refresh_token=rt-1&x=1", f"GET /cb?refresh_token={REDACTED}&x=1"),
            ("postgresql://app:pw-123@db:5432/x", f"postgresql://app:{REDACTED}@db:5432/x"),
            ("token sbx_at_abcDEF123 issued", f"token {REDACTED} issued"),
            ("jwt eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl end", f"jwt {REDACTED} end"),
        ],
    )
    def test_credential_shapes_are_scrubbed(self, text: str, expected: str) -> None:
        """Bearer/Basic values, secret pairs, URL passwords and token shapes are scrubbed."""
        assert scrub(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "client_\u017fecret=abcdef123456",  # long s: re.I matches it as "s"
            "api_\u212aey=abcdef123456",  # Kelvin sign for "k"
            "pa\u017f\u017fword=abcdef123456",
            "Authorization: Bearer abcdef123456 for \u0623\u062d\u0645\u062f",  # Arabic name
            "access_token=abcdef123456",
        ],
    )
    def test_pre_checks_never_skip_what_a_pattern_matches(self, text: str) -> None:
        """The substring shortcuts answer the same as running every pattern, look-alikes too."""
        expected = logs._AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        expected = logs._SECRET_PAIR.sub(
            lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", expected
        )
        expected = logs._TOKEN_SHAPES.sub(REDACTED, expected)
        assert scrub(text) == expected
        assert "abcdef123456" not in expected

    def test_setting_names_in_errors_stay_readable(self) -> None:
        """A settings error that names a password setting keeps its message."""
        text = "INVOICE_SYNC_LEDGER__PASSWORD: Field required"
        assert scrub(text) == text


class TestRedactSecrets:
    @pytest.mark.parametrize(
        "key",
        [
            "token",
            "access_token",
            "client_secret",
            "password",
            "Authorization",
            "api_key",
            "api-key",
            "Cookie",
            "set_cookie",
            "credentials",
        ],
    )
    def test_credential_keys_are_dropped(self, key: str) -> None:
        """A key that names a credential loses its value, whatever the value is."""
        assert _redact({"event": "x", key: "harmless-looking"})[key] == REDACTED

    def test_nested_keys_are_redacted_at_any_depth(self) -> None:
        """Credential keys inside nested dicts and lists are redacted too."""
        out = _redact(
            {
                "event": "http.request",
                "request": {"headers": {"Authorization": "Basic abc", "Accept": "json"}},
                "attempts": [{"body": {"client_secret": "zzz", "scope": "a b"}}],
            }
        )
        assert out["request"] == {"headers": {"Authorization": REDACTED, "Accept": "json"}}
        assert out["attempts"] == [{"body": {"client_secret": REDACTED, "scope": "a b"}}]

    def test_descriptive_keys_stay_readable(self) -> None:
        """Fields that describe a token without holding it keep their values."""
        out = _redact(
            {
                "event": "token.fetched",
                "token_generation": 3,
                "token_expires_in_s": 3600,
                "token_url": "https://auth.example/token",
                "token_type": "Bearer",
            }
        )
        assert out["token_generation"] == 3
        assert out["token_expires_in_s"] == 3600
        assert out["token_url"] == "https://auth.example/token"
        assert out["event"] == "token.fetched"

    def test_registered_secret_is_scrubbed_from_any_value(self) -> None:
        """A registered secret is scrubbed from strings, bytes and object reprs."""
        register_secret(TOKEN)
        out = _redact(
            {
                "event": f"got {TOKEN}",
                "body": TOKEN.encode(),
                "error": ValueError(TOKEN),
                "items": (f"a {TOKEN}", 1, None),
            }
        )
        assert TOKEN not in json.dumps(out)
        assert out["items"] == [f"a {REDACTED}", 1, None]

    def test_input_is_not_mutated(self) -> None:
        """The caller's nested objects are left untouched."""
        nested = {"password": "p4ss-word"}
        _redact({"event": "x", "cfg": nested})
        assert nested == {"password": "p4ss-word"}

    def test_plain_values_pass_through(self) -> None:
        """Numbers, booleans and None are not touched."""
        ed = {"event": "e", "partition": 2, "ok": True, "ratio": 0.5, "x": None}
        assert _redact(dict(ed)) == ed

    def test_flat_line_scrubs_each_string_like_the_slow_path(self) -> None:
        """A line of scalars is checked in one pass; what it finds is scrubbed per value."""
        register_secret(TOKEN)
        out = _redact({"event": "e", "a": "ok", "b": f"x {TOKEN} y", "n": 3, "secret": "s3cr3t"})
        assert out == {"event": "e", "a": "ok", "b": f"x {REDACTED} y", "n": 3, "secret": REDACTED}

    def test_one_pass_answers_clean_scalar_lines_only(self) -> None:
        """The one-pass path answers a clean line of scalars; anything else goes value by value."""
        register_secret(TOKEN)
        clean = {"event": "e", "a": "ok", "n": 3, "x": None}
        assert RedactSecrets._clean_flat(clean) == clean
        assert RedactSecrets._clean_flat({"event": "e", "b": f"x {TOKEN}"}) is None
        assert RedactSecrets._clean_flat({"event": "e", "cfg": {"a": "b"}}) is None

    def test_match_straddling_two_values_redacts_neither(self) -> None:
        """Joined, "Bearer" + newline + the next value look like a header; apart they are not."""
        ed = {"event": "e", "hint": "send it as Bearer", "next": "abcdef123"}
        assert _redact(dict(ed)) == ed


class TestJsonPipeline:
    def test_structlog_record_has_every_field(self, json_logs: io.StringIO) -> None:
        """A structlog event is one JSON line with timestamp, level, logger and context."""
        log = get_logger("worker.pipeline")
        with bound_contextvars(
            topic="orders", partition=3, offset=1042, order_id="SO-1", event_type="order.paid"
        ):
            log.info("event.processed", attempt=2, status=201, duration_ms=12.5)
        (line,) = _lines(json_logs)
        assert line["event"] == "event.processed"
        assert line["level"] == "info"
        assert line["logger"] == "worker.pipeline"
        assert line["topic"] == "orders"
        assert line["partition"] == 3
        assert line["offset"] == 1042
        assert line["order_id"] == "SO-1"
        assert line["event_type"] == "order.paid"
        assert line["attempt"] == 2
        assert line["status"] == 201
        assert line["duration_ms"] == 12.5
        stamp = datetime.fromisoformat(str(line["timestamp"]))
        assert stamp.utcoffset() == timedelta(0)

    def test_stdlib_record_goes_through_same_processors(self, json_logs: io.StringIO) -> None:
        """A library's stdlib record comes out as JSON with the same fields and context."""
        with bound_contextvars(topic="orders", partition=0):
            logging.getLogger("aiokafka.consumer.fetcher").warning(
                "fetch failed for %s", "orders-0", extra={"node_id": 1}
            )
        (line,) = _lines(json_logs)
        assert line["event"] == "fetch failed for orders-0"
        assert line["level"] == "warning"
        assert line["logger"] == "aiokafka.consumer.fetcher"
        assert line["topic"] == "orders"
        assert line["node_id"] == 1
        assert str(line["timestamp"]).endswith("Z")

    def test_asyncio_records_are_json(self, json_logs: io.StringIO) -> None:
        """asyncio's logger is rendered by the same pipeline."""
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        (line,) = _lines(json_logs)
        assert line["logger"] == "asyncio"
        assert line["level"] == "error"

    def test_library_debug_is_quiet_at_info(self, json_logs: io.StringIO) -> None:
        """aiokafka's chatter below WARNING is dropped unless the level is DEBUG."""
        logging.getLogger("aiokafka.conn").info("connected")
        assert json_logs.getvalue() == ""

    def test_multiline_message_is_one_line(self, json_logs: io.StringIO) -> None:
        """Newlines in a message are escaped, so every record is exactly one line."""
        get_logger("worker.x").info("first\nsecond")
        assert len(json_logs.getvalue().splitlines()) == 1

    def test_registered_secret_scrubbed_from_traceback(self, json_logs: io.StringIO) -> None:
        """A secret in an exception message is scrubbed from the rendered traceback."""
        register_secret(SECRET)

        def fail() -> None:
            raise RuntimeError(f"token endpoint rejected {SECRET}")

        try:
            fail()
        except RuntimeError:
            get_logger("worker.auth").exception("token.fetch_failed")
        raw = json_logs.getvalue()
        assert SECRET not in raw
        (line,) = _lines(json_logs)
        (exc,) = line["exception"]
        assert exc["exc_type"] == "RuntimeError"
        assert exc["exc_value"] == f"token endpoint rejected {REDACTED}"
        assert exc["frames"]

    def test_traceback_never_renders_locals(self, json_logs: io.StringIO) -> None:
        """Local variables of the failing frames never reach the log, registered or not."""

        def fail() -> None:
            unregistered_local = "local-only-value-31337"
            raise KeyError(len(unregistered_local))

        try:
            fail()
        except KeyError:
            logging.getLogger("aiohttp.client").exception("request failed")
        raw = json_logs.getvalue()
        assert "local-only-value-31337" not in raw
        for frame in _lines(json_logs)[0]["exception"][0]["frames"]:
            assert not frame.get("locals")

    def test_stdlib_exception_text_is_scrubbed(self, json_logs: io.StringIO) -> None:
        """A library record with exc_info has its exception text scrubbed as well."""
        try:
            raise ConnectionError(f"Authorization: Bearer {TOKEN}")
        except ConnectionError:
            logging.getLogger("aiohttp.client").error("send failed", exc_info=True)
        assert TOKEN not in json_logs.getvalue()

    def test_nested_credential_keys_redacted_in_output(self, json_logs: io.StringIO) -> None:
        """Nested credential keys are redacted in the rendered line."""
        get_logger("worker.settings").info(
            "config.loaded", oauth={"client_id": "demo", "client_secret": SECRET}
        )
        (line,) = _lines(json_logs)
        assert line["oauth"] == {"client_id": "demo", "client_secret": REDACTED}


class TestConsolePipeline:
    def test_console_format_is_for_humans_and_scrubbed(self, restore_logging: None) -> None:
        """Console output names the event and still scrubs secrets from tracebacks."""
        buf = io.StringIO()
        configure_logging(fmt="console", stream=buf)
        register_secret(SECRET)
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            get_logger("worker.x").exception("thing.failed", topic="orders")
        out = buf.getvalue()
        assert "thing.failed" in out
        assert "topic=orders" in out
        assert "Traceback" in out
        assert SECRET not in out
        assert not out.lstrip().startswith("{")

    def test_unknown_format_is_refused(self, restore_logging: None) -> None:
        """A format other than json or console is a ValueError, not silent JSON."""
        with pytest.raises(ValueError, match="xml"):
            configure_logging(fmt="xml")


class TestReset:
    def test_reset_removes_handler(self, restore_logging: None) -> None:
        """reset_logging removes the handler configure_logging installed."""
        buf = io.StringIO()
        configure_logging(stream=buf)
        reset_logging()
        assert structlog.is_configured() is False
        logging.getLogger("asyncio").error("after reset")
        assert buf.getvalue() == ""


class TestSecretRegistry:
    def test_rotating_tokens_are_bounded_but_configured_secrets_stay(self) -> None:
        """Old issued tokens fall out of the registry; the client secret never does."""
        logs.forget_secrets()
        try:
            logs.register_secret("client-secret-value")
            tokens = [f"tok-{i:04d}-abcdef" for i in range(100)]
            for t in tokens:
                logs.register_secret(t, rotating=True)
            assert logs.scrub("client-secret-value") == logs.REDACTED
            assert logs.scrub(tokens[-1]) == logs.REDACTED
            assert logs.scrub(tokens[0]) == tokens[0]  # expired long ago; shapes catch real ones
        finally:
            logs.forget_secrets()


class TestEventContext:
    def test_fields_ride_on_lines_and_nest(self, json_logs: io.StringIO) -> None:
        """Inner blocks add and override fields; leaving a block restores the outer ones."""
        log = get_logger("worker.pipeline")
        with event_context(topic="orders", partition=1, order_id="SO-1"):
            with event_context(order_id="SO-2", event_id="e-2"):
                log.info("inner")
            log.info("outer")
        log.info("none")
        inner, outer, none = _lines(json_logs)
        assert (inner["topic"], inner["order_id"], inner["event_id"]) == ("orders", "SO-2", "e-2")
        assert (outer["order_id"], "event_id" in outer) == ("SO-1", False)
        assert "topic" not in none
        assert "order_id" not in none

    def test_call_site_keys_win(self, json_logs: io.StringIO) -> None:
        """A field passed at the call overrides the bound one of the same name."""
        with event_context(attempt=1):
            get_logger("worker.x").info("retry", attempt=2)
        assert _lines(json_logs)[0]["attempt"] == 2

    async def test_tasks_see_their_own_context(self, json_logs: io.StringIO) -> None:
        """Fields bound in one task do not leak into another running at the same time."""
        log = get_logger("worker.x")
        gate = asyncio.Event()

        async def one(order: str) -> None:
            with event_context(order_id=order):
                await gate.wait()
                log.info("step")

        tasks = [asyncio.create_task(one(o)) for o in ("A", "B")]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        assert sorted(line["order_id"] for line in _lines(json_logs)) == ["A", "B"]

    def test_below_level_is_not_rendered(self, json_logs: io.StringIO) -> None:
        """DEBUG lines cost nothing and print nothing at INFO."""
        get_logger("worker.x").debug("chatty", token="never-rendered")
        assert json_logs.getvalue() == ""

    def test_logger_made_before_reconfiguration_follows_it(self, restore_logging: None) -> None:
        """A module-level logger writes to the stream of the latest configuration."""
        log = get_logger("worker.early")
        first, second = io.StringIO(), io.StringIO()
        configure_logging(stream=first)
        log.info("one")
        configure_logging(stream=second, level="DEBUG")
        log.debug("two")
        assert [json.loads(x)["event"] for x in first.getvalue().splitlines()] == ["one"]
        assert [json.loads(x)["event"] for x in second.getvalue().splitlines()] == ["two"]


class TestUnknownSettingsWarning:
    def test_run_logs_one_warning_naming_the_variables(
        self, json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """What `invoice-sync run` logs at start for a misspelt variable: names, no value."""
        from worker.cli import _warn_unknown_settings

        monkeypatch.setenv("INVOICE_SYNC_LOGGING_LEVEL", "value-never-logged")
        _warn_unknown_settings()
        (line,) = [x for x in _lines(json_logs) if x["event"] == "settings.unknown_variables"]
        assert line["level"] == "warning"
        assert "INVOICE_SYNC_LOGGING_LEVEL" in line["names"]
        assert "value-never-logged" not in json_logs.getvalue()
