"""Dashboard, alert rules and runbook: static checks, promtool, and a real Prometheus.

The live test runs ``invoice-sync run`` as a child process on the fixture broker and the
sandbox, lets a real Prometheus scrape it while it works through a small stream, and then
runs every PromQL expression of the dashboard and of the alert rules through the HTTP API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.plugins.kafka import TopicFactory
from tests.plugins.prometheus import PrometheusClient, PrometheusFactory
from worker import metrics
from worker.broker import free_port, publish_records
from worker.demo_data import generate_demo_events
from worker.errors import DLQ_REASONS
from worker.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

#: What the issue asks the alerts to cover, one alert each.
EXPECTED_ALERTS = {
    "InvoiceSyncConsumerLagGrowing",
    "InvoiceSyncDeadLetters",
    "InvoiceSyncTokenFetchFailing",
    "InvoiceSyncNoCommit",
    "InvoiceSyncApiErrorRatioHigh",
    "InvoiceSyncNotReady",
    "InvoiceSyncConfigurationFault",
}
#: What the issue asks the dashboard to show, as the metrics that carry it.
DASHBOARD_METRICS = {
    "invoice_sync_events_consumed_total",  # throughput
    "invoice_sync_documents_created_total",
    "invoice_sync_dead_letters_total",  # DLQ rate by reason
    "invoice_sync_api_request_duration_seconds_bucket",  # p50/p95/p99
    "invoice_sync_api_requests_total",  # error ratio
    "invoice_sync_token_fetches_total",  # fetches and failures
    "invoice_sync_token_expiry_seconds",
    "invoice_sync_consumer_lag_messages",  # per partition
    "invoice_sync_events_in_flight",
    "invoice_sync_partitions_paused",
    "invoice_sync_ready",
}
#: Grafana's variables, as the test substitutes them.
GRAFANA_VARS = {"$__rate_interval": "2m", "$__range": "10m", "$__interval": "15s", "$job": ".+"}
_SEVERITIES = {"info", "warning", "critical"}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p.get("type") != "row"]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p.get("targets", [])]


def _grafana(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:invoice_sync_\w+|process_\w+)", expr))


def _catalogue_series() -> set[str]:
    """Every series name the worker exposes, whether or not a label child exists yet."""
    names = set()
    for family in REGISTRY.collect():
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
        elif family.type == "info":
            names.add(f"{family.name}_info")
        else:
            names.add(family.name)
    return names


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _runbook_anchors() -> set[str]:
    return {
        _slug(m.group(1))
        for m in re.finditer(r"^#{1,6}\s+(.+)$", RUNBOOK.read_text(encoding="utf-8"), re.M)
    }


class TestAlertRules:
    def test_the_issue_s_alerts_exist(self) -> None:
        """Each situation the issue names has exactly one alert."""
        names = [r["alert"] for r in _rules()]
        assert sorted(names) == sorted(EXPECTED_ALERTS)

    @pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
    def test_annotations(self, rule: dict[str, Any]) -> None:
        """Every alert has a severity, a summary, a description and a runbook link."""
        ann = rule["annotations"]
        assert rule["labels"]["severity"] in _SEVERITIES
        assert ann["severity"] == rule["labels"]["severity"]
        assert ann["summary"].strip()
        assert len(ann["description"]) > 40
        assert ann["runbook_url"].startswith("docs/runbook.md#")

    @pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
    def test_runbook_anchor_exists(self, rule: dict[str, Any]) -> None:
        """The runbook_url anchor names a heading of docs/runbook.md."""
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in _runbook_anchors()
        assert anchor == rule["alert"].lower()

    @pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
    def test_rules_use_catalogue_metrics(self, rule: dict[str, Any]) -> None:
        """Rules only name metrics the worker exposes, so a rename cannot orphan them."""
        metrics.initialise_label_sets()
        assert _metric_names(rule["expr"]) <= _catalogue_series()


class TestRunbook:
    def test_every_dead_letter_reason_is_explained(self) -> None:
        """The reason table lists every code a dead letter can carry."""
        text = RUNBOOK.read_text(encoding="utf-8")
        listed = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
        assert listed == set(DLQ_REASONS)

    def test_internal_links_resolve(self) -> None:
        """Every #anchor the runbook links to is one of its headings."""
        text = RUNBOOK.read_text(encoding="utf-8")
        links = set(re.findall(r"\]\(#([\w\-]+)\)", text))
        assert links
        assert links <= _runbook_anchors()


class TestDashboard:
    def test_panels_have_unique_ids_and_queries(self) -> None:
        """Panel ids are unique and every panel queries something."""
        panels = _dashboard()["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        for panel in _panels():
            assert panel["targets"], panel["title"]

    def test_queries_follow_the_variables(self) -> None:
        """Every query filters on $job and uses the templated data source."""
        for panel in _panels():
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                assert 'job=~"$job"' in target["expr"], target["expr"]

    def test_covers_what_the_issue_asks(self) -> None:
        """Throughput, documents, DLQ, API, token, lag, in-flight, paused and readiness."""
        used = set().union(*(_metric_names(e) for e in _dashboard_exprs()))
        assert used >= DASHBOARD_METRICS

    def test_uses_catalogue_metrics_only(self) -> None:
        """The dashboard names only metrics the worker exposes."""
        metrics.initialise_label_sets()
        used = set().union(*(_metric_names(e) for e in _dashboard_exprs()))
        assert used <= _catalogue_series()


class TestPromtool:
    def test_rules_file_is_valid(self, promtool_bin: str) -> None:
        """promtool check rules accepts alerts.yaml."""
        proc = subprocess.run(
            [promtool_bin, "check", "rules", str(ALERTS)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_alert_unit_tests_pass(self, promtool_bin: str) -> None:
        """The promtool unit tests show every alert firing and staying quiet."""
        proc = subprocess.run(
            [promtool_bin, "test", "rules", str(ALERT_TESTS)],
            capture_output=True,
            text=True,
            cwd=MONITORING,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_unit_tests_cover_every_alert(self) -> None:
        """alerts.test.yaml has a firing case for every alert."""
        doc = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
        firing = {
            case["alertname"]
            for test in doc["tests"]
            for case in test["alert_rule_test"]
            if case.get("exp_alerts")
        }
        quiet = {
            case["alertname"]
            for test in doc["tests"]
            for case in test["alert_rule_test"]
            if not case.get("exp_alerts")
        }
        assert firing == EXPECTED_ALERTS
        assert quiet == EXPECTED_ALERTS


# --- a real worker scraped by a real Prometheus -------------------------------------------


class WorkerProcess:
    """``invoice-sync run`` as a child process; SIGTERM on ``stop()``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run"],
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def worker_process_factory(tmp_path: Path) -> Iterator[Any]:
    """Start ``invoice-sync run`` children; each gets SIGTERM at teardown."""
    workers: list[WorkerProcess] = []

    def start(*, bootstrap: str, topic: str, api: str, port: int, ledger: Path) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_SYNC_")}
        env.update(
            {
                "INVOICE_SYNC_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "INVOICE_SYNC_KAFKA__TOPICS": json.dumps([topic]),
                "INVOICE_SYNC_KAFKA__GROUP_ID": f"g-{topic}",
                "INVOICE_SYNC_KAFKA__SESSION_TIMEOUT_MS": "6000",
                "INVOICE_SYNC_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
                "INVOICE_SYNC_API__BASE_URL": api,
                "INVOICE_SYNC_OAUTH__TOKEN_URL": f"{api}/oauth/token",
                "INVOICE_SYNC_LEDGER__URL": f"sqlite:///{ledger}",
                "INVOICE_SYNC_HTTP__HOST": "127.0.0.1",
                "INVOICE_SYNC_HTTP__PORT": str(port),
                "INVOICE_SYNC_PIPELINE__COMMIT_INTERVAL_S": "0.2",
            }
        )
        worker = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


#: Dashboard queries that are empty while nothing of their kind happens (they filter on
#: ``> 0`` of a failure counter); they still have to parse and evaluate.
_EMPTY_WITHOUT_FAULTS = ("invoice_sync_retries_total", 'outcome!="success"')
#: Alerts that fire in this scenario: the stream has broken events, so dead letters.
_FIRING_HERE = {"InvoiceSyncDeadLetters"}
#: Series that exist only once something of their kind happened.
_ABSENT_WITHOUT_FAULTS = {"invoice_sync_retries_total"}


@pytest.fixture
async def scraped_worker(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    sandbox: Sandbox,
    worker_process_factory: Any,
    prometheus_factory: PrometheusFactory,
    tmp_path: Path,
) -> tuple[PrometheusClient, int]:
    """A worker that processed a small stream while Prometheus scraped it every second."""
    topic = await topic_factory("mon", partitions=2)
    port = free_port()
    worker = worker_process_factory(
        bootstrap=kafka_bootstrap,
        topic=topic,
        api=sandbox.url,
        port=port,
        ledger=tmp_path / "ledger.db",
    )
    prom = await prometheus_factory(targets=[f"127.0.0.1:{port}"], rule_files=[ALERTS])
    # Scraped and ready before any event, so every counter's increase happens in view.
    try:
        await prom.wait_for('invoice_sync_ready{job="invoice-sync"} == 1', what="worker ready")
        records = generate_demo_events(orders=12, broken_each=1, platforms=False)
        await publish_records(kafka_bootstrap, topic, records)
        await prom.wait_for(
            f"sum(invoice_sync_events_consumed_total) >= {len(records)}",
            what=f"{len(records)} events consumed",
        )
        await prom.wait_for(
            "sum(invoice_sync_consumer_lag_messages) == 0", what="lag worked off and committed"
        )
        # Two more scrapes after the last change, so rates span it.
        await prom.wait_for(
            "count_over_time(invoice_sync_ready[1m]) >= 3"
            " and changes(invoice_sync_events_in_flight[3s]) == 0",
            what="a quiet scrape after processing",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- worker log ---\n{worker.tail()}") from None
    return prom, len(records)


@pytest.mark.prometheus
class TestLivePrometheus:
    async def test_dashboard_queries_return_data(
        self, scraped_worker: tuple[PrometheusClient, int]
    ) -> None:
        """Every dashboard query evaluates, returns data (failure panels aside) and adds up."""
        prom, count = scraped_worker
        empty = []
        for expr in _dashboard_exprs():
            result = await prom.query(_grafana(expr))
            if not result and not any(k in expr for k in _EMPTY_WITHOUT_FAULTS):
                empty.append(expr)
        assert empty == [], "queries without data"
        (consumed,) = await prom.query("sum(invoice_sync_events_consumed_total)")
        assert float(consumed["value"][1]) == count
        assert await prom.query("sum(invoice_sync_documents_created_total) > 0")
        dlq = await prom.query("sum by (reason) (invoice_sync_dead_letters_total) > 0")
        assert dlq
        assert {r["metric"]["reason"] for r in dlq} <= set(DLQ_REASONS)

    async def test_alert_rules_evaluate_on_real_data(
        self, scraped_worker: tuple[PrometheusClient, int]
    ) -> None:
        """Each rule evaluates cleanly on scraped data; only the dead-letter alert fires."""
        prom, _ = scraped_worker
        for rule in _rules():
            result = await prom.query(rule["expr"])
            assert bool(result) == (rule["alert"] in _FIRING_HERE), rule["alert"]
            for name in _metric_names(rule["expr"]) - _ABSENT_WITHOUT_FAULTS:
                assert await prom.query(f"count({name})"), f"{rule['alert']}: {name} not scraped"
        data = await prom.api("rules")
        rules = {r["name"]: r for g in data["groups"] for r in g["rules"]}
        assert set(rules) == EXPECTED_ALERTS
        for name, rule in rules.items():
            assert rule["health"] in {"ok", "unknown"}, (name, rule.get("lastError"))
        await prom.wait_for(
            'ALERTS{alertname="InvoiceSyncDeadLetters", alertstate="firing"}',
            what="the dead-letter alert firing",
        )
