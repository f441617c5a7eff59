"""The metric catalogue: naming rules, closed labels, and agreement with docs/observability.md."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from worker import metrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "observability.md"

#: Every label name a metric may have. Anything per-event (order ids), secret (tokens) or
#: unbounded (messages, error texts) is out; add a name here only with a closed value set.
ALLOWED_LABELS = frozenset(
    {
        "endpoint",
        "event_type",
        "grant",
        "kind",
        "method",
        "operation",
        "outcome",
        "partition",
        "platform",
        "reason",
        "status_class",
        "topic",
        "version",
    }
)
FORBIDDEN_LABELS = frozenset({"order_id", "token", "message", "error", "exception", "url"})

#: Words in a name that say it measures time; such a metric must be in seconds.
_TIME_WORDS = ("duration", "latency", "time", "timestamp", "expiry", "age", "elapsed", "delay")
_BYTE_WORDS = ("size", "bytes", "length")


@dataclass(frozen=True)
class Declared:
    attr: str
    name: str  # as exposed: counters with _total, infos with _info
    type: str
    labels: tuple[str, ...]
    help: str


def _declared() -> list[Declared]:
    out = []
    for attr, value in vars(metrics).items():
        if not isinstance(value, MetricWrapperBase):
            continue
        metric: Any = value  # prometheus_client keeps these attributes private and untyped
        kind: str = metric._type
        base: str = metric._name
        exposed = {"counter": f"{base}_total", "info": f"{base}_info"}.get(kind, base)
        labels = tuple(metric._labelnames)
        if kind == "info":  # an info's labels are the keys of its one sample
            labels += tuple(k for s in metric.collect()[0].samples for k in s.labels)
        out.append(Declared(attr, exposed, kind, labels, metric._documentation))
    return out


DECLARED = _declared()


@dataclass(frozen=True)
class Documented:
    name: str
    type: str
    unit: str
    labels: tuple[str, ...]
    meaning: str


def _documented() -> dict[str, Documented]:
    rows: dict[str, Documented] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`invoice_sync_"):
            continue
        name, kind, unit, labels, meaning = cells
        rows[name.strip("`")] = Documented(
            name.strip("`"), kind, unit, tuple(re.findall(r"`([a-z_]+)`", labels)), meaning
        )
    return rows


def _exposed_types() -> dict[str, str]:
    """``# TYPE`` lines of our metrics in the live exposition (``_created`` series aside)."""
    text = generate_latest(REGISTRY).decode()
    found = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (invoice_sync_\w+) (\w+)$", line)
        if m and not m.group(1).endswith("_created"):
            found[m.group(1)] = m.group(2)
    return found


def _ids(d: Declared) -> str:
    return d.attr


class TestNaming:
    def test_catalogue_is_not_empty(self) -> None:
        """The module declares the metrics this test walks over."""
        assert len(DECLARED) >= 15

    @pytest.mark.parametrize("metric", DECLARED, ids=_ids)
    def test_prefix(self, metric: Declared) -> None:
        """Every name starts with invoice_sync_."""
        assert metric.name.startswith("invoice_sync_")

    @pytest.mark.parametrize("metric", DECLARED, ids=_ids)
    def test_help_text_is_useful(self, metric: Declared) -> None:
        """Help texts are sentences: long enough to explain, short enough to read."""
        assert 20 <= len(metric.help) <= 300, metric.help

    @pytest.mark.parametrize("metric", DECLARED, ids=_ids)
    def test_time_and_size_in_base_units(self, metric: Declared) -> None:
        """A metric of time is in seconds, one of size in bytes."""
        stem = metric.name.removesuffix("_total")
        words = stem.split("_")
        if any(w in words for w in _TIME_WORDS):
            assert stem.endswith("_seconds"), metric.name
        if any(w in words for w in _BYTE_WORDS):
            assert stem.endswith("_bytes"), metric.name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb)(_|$)", stem), metric.name

    @pytest.mark.parametrize("metric", DECLARED, ids=_ids)
    def test_counters_end_in_total(self, metric: Declared) -> None:
        """Counters are exposed with _total and nothing else is."""
        assert metric.name.endswith("_total") == (metric.type == "counter")

    @pytest.mark.parametrize("metric", DECLARED, ids=_ids)
    def test_labels_are_closed_sets(self, metric: Declared) -> None:
        """Label names come from the allow-list; none carries ids, tokens or error text."""
        assert set(metric.labels) <= ALLOWED_LABELS, metric.labels
        assert not set(metric.labels) & FORBIDDEN_LABELS

    def test_all_exported(self) -> None:
        """Every metric object is in metrics.__all__."""
        assert {d.attr for d in DECLARED} <= set(metrics.__all__)


class TestDocumentation:
    def test_docs_list_exactly_the_exposed_metrics(self) -> None:
        """docs/observability.md lists the exposed invoice_sync_ names, no more, no fewer."""
        metrics.initialise_label_sets()
        exposed = set(_exposed_types())
        documented = set(_documented())
        assert exposed - documented == set(), "exposed but not documented"
        assert documented - exposed == set(), "documented but not exposed"

    def test_only_the_catalogue_registers_our_metrics(self) -> None:
        """No invoice_sync_ metric is declared outside worker/metrics.py."""
        assert set(_exposed_types()) == {d.name for d in DECLARED}

    @pytest.mark.parametrize("metric", DECLARED, ids=_ids)
    def test_docs_agree_on_type_and_labels(self, metric: Declared) -> None:
        """The documented type and labels are the declared ones."""
        row = _documented()[metric.name]
        assert row.type == metric.type
        assert set(row.labels) == set(metric.labels)
        assert row.meaning

    @pytest.mark.parametrize("metric", DECLARED, ids=_ids)
    def test_documented_unit_matches_name(self, metric: Declared) -> None:
        """A metric documented in seconds is named in seconds, and the other way round."""
        row = _documented()[metric.name]
        assert (row.unit == "seconds") == metric.name.removesuffix("_total").endswith("_seconds"), (
            row.unit,
            metric.name,
        )


class TestHelpers:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [(200, "2xx"), (201, "2xx"), (429, "4xx"), (503, "5xx"), (None, "error")],
    )
    def test_status_class(self, status: int | None, expected: str) -> None:
        """HTTP statuses fold into their class; no response is 'error'."""
        assert metrics.status_class(status) == expected

    def test_event_type_label_folds_unknown(self) -> None:
        """Unknown event types are counted as 'other', so the label set stays closed."""
        assert metrics.event_type_label("order.paid") == "order.paid"
        assert metrics.event_type_label("order.exploded") == "other"
