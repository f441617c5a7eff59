"""Settings: env and file sources, masking, validation messages, README in sync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from worker.errors import SettingsError
from worker.settings import load_settings, settings_table_markdown, unknown_env_vars

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_SYNC_")}
    for key in list(os.environ):
        if key.startswith("INVOICE_SYNC_"):
            monkeypatch.delenv(key)
    return env


class TestConfigCommand:
    def test_secret_from_env_is_masked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`invoice-sync config` prints a masked client secret, never the value."""
        env = _clean_env(monkeypatch) | {"INVOICE_SYNC_OAUTH__CLIENT_SECRET": "xyz-secret-value"}
        result = _cli("config", env=env)
        assert result.returncode == 0, result.stderr
        assert "xyz-secret-value" not in result.stdout + result.stderr
        assert json.loads(result.stdout)["oauth"]["client_secret"] == "**********"

    def test_short_secret_is_masked_too(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The issue's example, INVOICE_SYNC_OAUTH__CLIENT_SECRET=xyz, never shows xyz."""
        env = _clean_env(monkeypatch) | {"INVOICE_SYNC_OAUTH__CLIENT_SECRET": "xyz"}
        result = _cli("config", env=env)
        assert result.returncode == 0, result.stderr
        assert "xyz" not in result.stdout + result.stderr

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("INVOICE_SYNC_OAUTH__TOKEN_URL", "https://me:LEAKpw1@idp.example/token"),
            ("INVOICE_SYNC_OAUTH__TOKEN_URL", "https://idp.example/token?client_secret=LEAKqs1"),
            ("INVOICE_SYNC_OAUTH__REVOKE_URL", "https://idp.example/revoke?access_token=LEAKat1"),
            ("INVOICE_SYNC_API__BASE_URL", "https://me:LEAKpw2@api.example"),
            ("INVOICE_SYNC_LEDGER__URL", "postgresql://u@h/db?password=LEAKpw3"),
            ("INVOICE_SYNC_LEDGER__URL", "postgresql://u@h/db?sslpassword=LEAKpw4"),
            ("INVOICE_SYNC_OAUTH__EXTRA_PARAMS", '{"client_secret": "LEAKxp1"}'),
        ],
    )
    def test_credential_outside_a_secret_setting_is_refused_unprinted(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
    ) -> None:
        """A credential inside a URL or the grant's own parameter: exit 2, the value unprinted."""
        env = _clean_env(monkeypatch) | {
            "INVOICE_SYNC_OAUTH__CLIENT_SECRET": "real-secret",
            variable: value,
        }
        result = _cli("config", env=env)
        assert result.returncode == 2, result.stdout
        assert variable in result.stderr
        assert "LEAK" not in result.stdout + result.stderr

    def test_credential_named_extra_param_is_masked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A client assertion in extra_params prints as [redacted]; an audience stays readable."""
        params = '{"client_assertion": "eyJhbGciOi.LEAKjwt.sig", "audience": "https://api"}'
        env = _clean_env(monkeypatch) | {"INVOICE_SYNC_OAUTH__EXTRA_PARAMS": params}
        result = _cli("config", env=env)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)["oauth"]["extra_params"]
        assert shown == {"client_assertion": "[redacted]", "audience": "https://api"}
        assert "LEAK" not in result.stdout + result.stderr

    def test_invalid_config_names_setting_not_value(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad setting stops start-up naming the variable and rule, without the secret."""
        env = _clean_env(monkeypatch) | {
            "INVOICE_SYNC_OAUTH__CLIENT_SECRET": "s3cr3t-never-printed",
            "INVOICE_SYNC_OAUTH__TOKEN_URL": "http://auth.example.com/token",
            "INVOICE_SYNC_API__TIMEOUT_S": "not-a-number",
        }
        result = _cli("config", env=env)
        assert result.returncode == 2
        assert "INVOICE_SYNC_API__TIMEOUT_S" in result.stderr
        assert "https" in result.stderr
        assert "token_url" in result.stderr
        assert "s3cr3t-never-printed" not in result.stdout + result.stderr
        assert "not-a-number" not in result.stderr


class TestSecretFiles:
    def test_file_variable_is_used(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """INVOICE_SYNC_OAUTH__CLIENT_SECRET_FILE supplies the secret's value."""
        _clean_env(monkeypatch)
        path = tmp_path / "client-secret"
        path.write_text("from-a-mounted-file\n")
        monkeypatch.setenv("INVOICE_SYNC_OAUTH__CLIENT_SECRET_FILE", str(path))
        settings = load_settings()
        assert settings.oauth.client_secret.get_secret_value() == "from-a-mounted-file"

    def test_secrets_dir_is_used(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A file named like the setting in INVOICE_SYNC_SECRETS_DIR supplies the secret."""
        _clean_env(monkeypatch)
        (tmp_path / "ledger__password").write_text("db-pass")
        monkeypatch.setenv("INVOICE_SYNC_SECRETS_DIR", str(tmp_path))
        assert load_settings().ledger.password is not None
        assert load_settings().ledger.password.get_secret_value() == "db-pass"  # type: ignore[union-attr]

    def test_missing_file_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A _FILE pointing nowhere names the variable."""
        _clean_env(monkeypatch)
        monkeypatch.setenv("INVOICE_SYNC_OAUTH__CLIENT_SECRET_FILE", "/nonexistent/secret")
        with pytest.raises(SettingsError, match="INVOICE_SYNC_OAUTH__CLIENT_SECRET_FILE"):
            load_settings()


class TestRules:
    def test_kafka_sasl_needs_mechanism_and_credentials(self) -> None:
        """SASL_SSL without a mechanism is refused with the rule named."""
        with pytest.raises(SettingsError, match="sasl_mechanism"):
            load_settings(kafka={"security_protocol": "SASL_SSL"})

    def test_real_cluster_settings_accepted(self, tmp_path: Path) -> None:
        """SASL_SSL + SCRAM-SHA-512 + CA file is a valid Kafka configuration."""
        cafile = tmp_path / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(cafile))
        s = load_settings(
            kafka={
                "bootstrap_servers": "b1:9096",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "u",
                "sasl_password": "p",
                "ssl_cafile": str(cafile),
            }
        )
        assert s.kafka.sasl_mechanism == "SCRAM-SHA-512"
        assert "p" not in repr(s.kafka.sasl_password)

    def test_retry_budget_must_fit_poll_interval(self) -> None:
        """A retry budget longer than max_poll_interval_ms refuses to start, saying why."""
        with pytest.raises(SettingsError, match="max_poll_interval_ms"):
            load_settings(pipeline={"max_retry_s": 900}, kafka={"max_poll_interval_ms": 600000})

    def test_ledger_url_must_not_embed_password(self) -> None:
        """A password inside the ledger URL is refused (it belongs in ledger.password)."""
        with pytest.raises(SettingsError, match="INVOICE_SYNC_LEDGER__URL") as info:
            load_settings(ledger={"url": "postgresql://u:hunter22@db/x"})
        assert "hunter22" not in str(info.value)


class TestReadme:
    def test_configuration_table_matches_settings(self) -> None:
        """README's configuration table is exactly the one generated from the settings."""
        readme = (ROOT / "README.md").read_text()
        start = readme.index("<!-- settings-table:start -->\n") + len(
            "<!-- settings-table:start -->\n"
        )
        end = readme.index("\n<!-- settings-table:end -->")
        assert readme[start:end] == settings_table_markdown()


class TestClearErrors:
    def test_plain_value_for_a_list_setting_says_json(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """INVOICE_SYNC_KAFKA__TOPICS=orders gives one clear line, not a traceback."""
        env = _clean_env(monkeypatch) | {"INVOICE_SYNC_KAFKA__TOPICS": "orders"}
        result = _cli("config", env=env)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "INVOICE_SYNC_KAFKA__TOPICS='[\"orders\"]'" in result.stderr

    def test_group_rule_names_the_variable(self) -> None:
        """A rule checked on a whole group still names the variable it is about."""
        with pytest.raises(SettingsError, match="INVOICE_SYNC_OAUTH__TOKEN_URL: token_url"):
            load_settings(oauth={"token_url": "http://auth.example.com/token"})

    def test_demo_secret_refused_for_a_real_token_endpoint(self) -> None:
        """The sandbox's public demo secret is never sent to a non-loopback token URL."""
        with pytest.raises(
            SettingsError, match="INVOICE_SYNC_OAUTH__CLIENT_SECRET: client_secret is the local"
        ):
            load_settings(oauth={"token_url": "https://auth.example.com/token"})
        ok = load_settings(
            oauth={"token_url": "https://auth.example.com/token", "client_secret": "real-one"}
        )
        assert ok.oauth.token_url.startswith("https://")

    def test_mapping_values_checked_at_load(self) -> None:
        """An unknown time zone, a non-ISO currency or a non-decimal tolerance stop start-up."""
        with pytest.raises(SettingsError, match="INVOICE_SYNC_MAPPING__TIMEZONE"):
            load_settings(mapping={"timezone": "Mars/Base"})
        for currency in ("sar", "SARR", "S1R"):
            with pytest.raises(SettingsError, match="INVOICE_SYNC_MAPPING__CURRENCY"):
                load_settings(mapping={"currency": currency})
        assert load_settings(mapping={"currency": "KWD"}).mapping.currency == "KWD"
        with pytest.raises(SettingsError, match="INVOICE_SYNC_MAPPING__TOTAL_TOLERANCE"):
            load_settings(mapping={"total_tolerance": "abc"})

    def test_empty_secret_file_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An empty mounted secret is an error, not an empty password."""
        _clean_env(monkeypatch)
        path = tmp_path / "empty"
        path.write_text("\n")
        monkeypatch.setenv("INVOICE_SYNC_OAUTH__CLIENT_SECRET_FILE", str(path))
        with pytest.raises(SettingsError, match="is empty"):
            load_settings()

    def test_log_level_any_case(self) -> None:
        """INVOICE_SYNC_LOGGING__LEVEL=info works like INFO."""
        assert load_settings(logging={"level": "info"}).logging.level == "INFO"

    @pytest.mark.parametrize(
        "topics", [["no such topic!"], ["."], [".."], ["t" * 250], ["orders", "bestellungen-ü"]]
    )
    def test_illegal_topic_name_is_refused(self, topics: list[str]) -> None:
        """A name Kafka never allows stops start-up naming the variable and the entry."""
        with pytest.raises(SettingsError) as info:
            load_settings(kafka={"topics": topics})
        assert info.value.message == (
            f"invalid configuration: INVOICE_SYNC_KAFKA__TOPICS: entry {len(topics)} is not a"
            " legal Kafka topic name (1 to 249 ASCII letters, digits, '.', '_' or '-', and not"
            " '.' or '..')"
        )

    def test_legal_topic_names_are_accepted(self) -> None:
        """Letters, digits, '.', '_' and '-' up to 249 characters are all fine."""
        topics = ["orders", "shop.orders_v1-eu", "..x", "t" * 249]
        kafka = {"topics": topics, "dlq_topic": "orders.dlq"}
        assert load_settings(kafka=kafka).kafka.topics == topics

    def test_topic_too_long_for_its_default_dlq_needs_one_named(self) -> None:
        """`<topic>.dlq` must be a legal name too: 245 characters fit, 246 need a DLQ topic."""
        assert load_settings(kafka={"topics": ["t" * 245]}).kafka.dlq_for("t" * 245) == (
            "t" * 245 + ".dlq"
        )
        with pytest.raises(SettingsError) as caught:
            load_settings(kafka={"topics": ["orders", "t" * 246]})
        assert (
            "INVOICE_SYNC_KAFKA__TOPICS: topics entry 2 is too long for its default dead-letter"
            " topic <topic>.dlq" in str(caught.value)
        )
        assert "set INVOICE_SYNC_KAFKA__DLQ_TOPIC" in str(caught.value)
        named = load_settings(kafka={"topics": ["t" * 246], "dlq_topic": "orders.dlq"})
        assert named.kafka.dlq_for("t" * 246) == "orders.dlq"

    def test_dead_letter_topic_that_is_a_source_is_refused(self) -> None:
        """A DLQ the worker also reads would dead-letter one bad record forever."""
        with pytest.raises(SettingsError) as named:
            load_settings(kafka={"topics": ["loop"], "dlq_topic": "loop"})
        assert "INVOICE_SYNC_KAFKA__DLQ_TOPIC: dlq_topic loop is also a source topic" in str(
            named.value
        )
        with pytest.raises(SettingsError) as default:
            load_settings(kafka={"topics": ["orders", "orders.dlq"]})
        assert (
            "INVOICE_SYNC_KAFKA__TOPICS: topics entry 2 (orders.dlq) is the default dead-letter"
            " topic of entry 1" in str(default.value)
        )
        # Reading a dead-letter topic is fine when its letters go elsewhere.
        ok = load_settings(kafka={"topics": ["orders", "orders.dlq"], "dlq_topic": "all.dlq"})
        assert ok.kafka.dlq_for("orders.dlq") == "all.dlq"

    @pytest.mark.parametrize("servers", ["", "host:99999", "a:9092,:9092", "h:x", ":9092"])
    def test_bootstrap_servers_must_be_host_port(self, servers: str) -> None:
        """aiokafka would take these and fail at start-up without naming the setting."""
        with pytest.raises(
            SettingsError,
            match=r"INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS: entry .* is not host\[:port\]",
        ):
            load_settings(kafka={"bootstrap_servers": servers})

    @pytest.mark.parametrize("servers", ["kafka", "[::1]", "::1", "[::1]:9093", "b1:9092,b2"])
    def test_bootstrap_servers_as_aiokafka_reads_them(self, servers: str) -> None:
        """A host without a port (9092, as aiokafka defaults) and IPv6 forms are accepted."""
        assert load_settings(kafka={"bootstrap_servers": servers}).kafka.bootstrap_servers

    def test_bootstrap_servers_list_is_trimmed(self) -> None:
        settings = load_settings(kafka={"bootstrap_servers": " b1:9092 , [::1]:9093"})
        assert settings.kafka.bootstrap_servers == "b1:9092,[::1]:9093"

    def test_heartbeat_must_be_below_session_timeout(self) -> None:
        with pytest.raises(SettingsError, match="HEARTBEAT_INTERVAL_MS: heartbeat_interval_ms"):
            load_settings(kafka={"heartbeat_interval_ms": 20_000})

    def test_empty_client_secret_is_refused(self) -> None:
        """An empty variable is refused as an empty secret file is, not at the token endpoint."""
        with pytest.raises(SettingsError, match="OAUTH__CLIENT_SECRET: client_secret is empty"):
            load_settings(oauth={"client_secret": ""})

    @pytest.mark.parametrize("group", ["oauth", "pipeline"])
    def test_backoff_base_above_max_is_refused(self, group: str) -> None:
        with pytest.raises(
            SettingsError, match=rf"{group.upper()}__BACKOFF_BASE_S: backoff_base_s .* above"
        ):
            load_settings(**{group: {"backoff_base_s": 100, "backoff_max_s": 1}})

    def test_fault_backoff_below_base_is_refused(self) -> None:
        with pytest.raises(SettingsError, match="CONFIG_FAULT_BACKOFF_MAX_S: config_fault"):
            load_settings(pipeline={"config_fault_backoff_max_s": 0.1})

    def test_renew_on_status_takes_client_errors_only(self) -> None:
        with pytest.raises(SettingsError, match="OAUTH__RENEW_ON_STATUS: every status"):
            load_settings(oauth={"renew_on_status": [401, 200]})
        assert load_settings(oauth={"renew_on_status": [401, 403]}).oauth.renew_on_status == [
            401,
            403,
        ]

    def test_outage_must_be_recognised_before_retries_run_out(self) -> None:
        """One event alone must reach the outage threshold within its own attempts."""
        with pytest.raises(SettingsError, match="OUTAGE_AFTER_FAILURES \\(8\\) must be below"):
            load_settings(api={"outage_after_failures": 8}, pipeline={"max_attempts": 8})
        assert load_settings(api={"outage_after_failures": 7}).api.outage_after_failures == 7

    def test_stop_when_idle_must_be_positive(self) -> None:
        with pytest.raises(SettingsError, match="PIPELINE__STOP_WHEN_IDLE_S"):
            load_settings(pipeline={"stop_when_idle_s": -5})

    def test_illegal_dlq_topic_is_refused(self) -> None:
        """The dead-letter topic follows the same rule."""
        with pytest.raises(SettingsError, match="INVOICE_SYNC_KAFKA__DLQ_TOPIC: not a legal"):
            load_settings(kafka={"dlq_topic": "dead letters"})

    def test_run_with_illegal_topic_is_one_line_exit_2(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`run` refuses the name before connecting: one stderr line, exit 2, no broker spam."""
        env = _clean_env(monkeypatch) | {"INVOICE_SYNC_KAFKA__TOPICS": '["no such topic!"]'}
        result = _cli("run", env=env)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            "invoice-sync: invalid configuration: INVOICE_SYNC_KAFKA__TOPICS: entry 1 is not a"
            " legal Kafka topic name (1 to 249 ASCII letters, digits, '.', '_' or '-', and not"
            " '.' or '..')"
        ]

    def test_run_with_missing_ca_file_names_variable_and_file(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SSL with a CA file that is not there: one line naming both, exit 2, no traceback."""
        env = _clean_env(monkeypatch) | {
            "INVOICE_SYNC_KAFKA__SECURITY_PROTOCOL": "SSL",
            "INVOICE_SYNC_KAFKA__SSL_CAFILE": "/nonexistent.pem",
        }
        result = _cli("run", env=env)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "invoice-sync: invalid configuration: INVOICE_SYNC_KAFKA__SSL_CAFILE: cannot read"
            " /nonexistent.pem (No such file or directory)"
        ]

    @pytest.mark.parametrize("name", ["ssl_certfile", "ssl_keyfile"])
    def test_unreadable_tls_file_is_refused(self, tmp_path: Path, name: str) -> None:
        """A client certificate or key path that is not a readable file is refused by name."""
        with pytest.raises(SettingsError) as info:
            load_settings(kafka={"security_protocol": "SSL", name: str(tmp_path)})
        assert info.value.message == (
            f"invalid configuration: INVOICE_SYNC_KAFKA__{name.upper()}: cannot read"
            f" {tmp_path} (Is a directory)"
        )

    def test_tls_files_that_hold_no_certificate_are_refused_by_name(self, tmp_path: Path) -> None:
        """Readable files that are not a CA, or a certificate and key that do not match."""
        ca = trustme.CA()
        good_ca, junk = tmp_path / "ca.pem", tmp_path / "junk.pem"
        ca.cert_pem.write_to_path(str(good_ca))
        junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        with pytest.raises(SettingsError) as info:
            load_settings(kafka={"security_protocol": "SSL", "ssl_cafile": str(junk)})
        assert info.value.message.startswith(
            f"invalid configuration: INVOICE_SYNC_KAFKA__SSL_CAFILE: ssl_cafile {junk} holds"
            " no usable CA certificate ("
        )
        client = ca.issue_cert("worker@example.com")
        cert, key, other_key = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "o.pem"
        client.cert_chain_pems[0].write_to_path(str(cert))
        client.private_key_pem.write_to_path(str(key))
        ca.issue_cert("someone-else").private_key_pem.write_to_path(str(other_key))
        tls = {"security_protocol": "SSL", "ssl_cafile": str(good_ca), "ssl_certfile": str(cert)}
        assert load_settings(kafka=tls | {"ssl_keyfile": str(key)}).kafka.ssl_keyfile == key
        with pytest.raises(SettingsError) as info:
            load_settings(kafka=tls | {"ssl_keyfile": str(other_key)})
        assert info.value.message.startswith(
            f"invalid configuration: INVOICE_SYNC_KAFKA__SSL_CERTFILE: ssl_certfile {cert} and"
            " its key do not make a usable client certificate ("
        )
        # The same files are not opened as TLS material when the protocol uses no TLS.
        plain = load_settings(kafka={"ssl_cafile": str(junk)})
        assert plain.kafka.ssl_cafile == junk


class TestKafkaOptions:
    def test_fetch_bounds_reach_the_consumer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Memory-bounding fetch sizes and the fetch wait are passed to aiokafka as set."""
        from worker.kafka import consumer_options

        monkeypatch.setenv("INVOICE_SYNC_KAFKA__MAX_PARTITION_FETCH_BYTES", "262144")
        monkeypatch.setenv("INVOICE_SYNC_KAFKA__FETCH_MAX_BYTES", "4194304")
        monkeypatch.setenv("INVOICE_SYNC_KAFKA__FETCH_MAX_WAIT_MS", "20")
        opts = consumer_options(load_settings().kafka)
        assert opts["max_partition_fetch_bytes"] == 262144
        assert opts["fetch_max_bytes"] == 4194304
        assert opts["fetch_max_wait_ms"] == 20


class TestUnknownVariables:
    def test_single_underscore_typo_is_reported(self) -> None:
        """A group joined with one underscore is named; real settings and other tools' are not."""
        env = {
            "INVOICE_SYNC_PIPELINE_MAX_IN_FLIGHT": "128",  # the typo: one underscore
            "INVOICE_SYNC_PIPELINE__MAX_IN_FLIGHT": "64",
            "INVOICE_SYNC_KAFKA": '{"topics": ["orders"]}',  # a whole group as JSON
            "INVOICE_SYNC_OAUTH__CLIENT_SECRET_FILE": "/run/secrets/x",
            "INVOICE_SYNC_SECRETS_DIR": "/run/secrets",
            "INVOICE_SYNC_FOO": "1",
            "PATH": "/usr/bin",
        }
        assert unknown_env_vars(env) == ["INVOICE_SYNC_FOO", "INVOICE_SYNC_PIPELINE_MAX_IN_FLIGHT"]

    def test_unknown_name_inside_a_group_still_fails(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Inside a group the model refuses a misspelt name (not merely a warning)."""
        _clean_env(monkeypatch)
        monkeypatch.setenv("INVOICE_SYNC_PIPELINE__MAX_INFLIGHT", "3")
        with pytest.raises(SettingsError, match="INVOICE_SYNC_PIPELINE__MAX_INFLIGHT"):
            load_settings()

    def test_config_command_warns_without_the_value(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`invoice-sync config` names the ignored variable and the fix, never its value."""
        env = _clean_env(monkeypatch) | {"INVOICE_SYNC_PIPELINE_MAX_IN_FLIGHT": "977"}
        result = _cli("config", env=env)
        assert result.returncode == 0, result.stderr
        assert "INVOICE_SYNC_PIPELINE_MAX_IN_FLIGHT is not a setting" in result.stderr
        assert "INVOICE_SYNC_PIPELINE__MAX_IN_FLIGHT" in result.stderr
        assert "977" not in result.stderr
        assert json.loads(result.stdout)["pipeline"]["max_in_flight"] == 64


class TestTopicFormats:
    def test_unknown_format_is_refused_at_load(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`config` and start-up refuse a format no decoder has, naming the topic, not the value."""
        _clean_env(monkeypatch)
        monkeypatch.setenv("INVOICE_SYNC_KAFKA__TOPIC_FORMATS", '{"orders": "hunter2"}')
        with pytest.raises(SettingsError) as info:
            load_settings()
        assert "INVOICE_SYNC_KAFKA__TOPIC_FORMATS[orders]" in info.value.message
        assert "hunter2" not in info.value.message

    def test_settings_formats_are_the_decoders_formats(self) -> None:
        """The settings' list of formats and the decoders' cannot drift apart."""
        from typing import get_args

        from worker.platforms import FORMATS
        from worker.settings import SourceFormat

        assert set(get_args(SourceFormat)) == {*FORMATS, "auto"}


class TestMalformedJson:
    @pytest.mark.parametrize(
        "name", ["INVOICE_SYNC_KAFKA__TOPICS", "INVOICE_SYNC_OAUTH__SCOPES", "INVOICE_SYNC_KAFKA"]
    )
    def test_names_the_variable_not_only_the_group(
        self, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """A list/map variable that is not JSON is named itself; its value is not shown."""
        _clean_env(monkeypatch)
        monkeypatch.setenv("INVOICE_SYNC_KAFKA__AUTO_OFFSET_RESET", "latest")  # plain, not JSON
        monkeypatch.setenv(name, "[sekrit-not-json")
        with pytest.raises(SettingsError) as info:
            load_settings()
        assert info.value.message.startswith(f"invalid configuration: {name} holds a malformed")
        assert "AUTO_OFFSET_RESET" not in info.value.message
        assert "sekrit" not in info.value.message
