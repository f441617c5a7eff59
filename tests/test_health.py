"""Liveness, readiness, the HTTP server and ``invoice-sync check``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from worker import metrics
from worker.health import HealthServer, HealthState, check_health
from worker.settings import HttpServerSettings, Settings


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> HealthState:
    """A started worker with one partition and a token: live and ready."""
    st = HealthState(stall_timeout_s=60, clock=clock)
    st.set_started(True)
    st.set_assignment(1, waiting=False)
    return st


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


class TestLiveness:
    def test_fresh_progress_is_alive(self, state: HealthState, clock: FakeClock) -> None:
        """Progress within the stall timeout keeps the worker alive."""
        state.set_lag(500)
        clock.advance(59)
        ok, reasons = state.liveness()
        assert ok
        assert reasons["status"] == "progressing"
        assert reasons["seconds_since_progress"] == 59

    def test_stuck_with_lag_is_dead_after_timeout(
        self, state: HealthState, clock: FakeClock
    ) -> None:
        """No progress for longer than stall_timeout_s while lag grows turns unhealthy."""
        state.set_lag(10)
        clock.advance(30)
        state.set_lag(200)
        clock.advance(31)
        ok, reasons = state.liveness()
        assert not ok
        assert reasons == {
            "status": "stalled",
            "seconds_since_progress": 61,
            "stall_timeout_s": 60,
            "idle": False,
            "lag": 200,
        }

    def test_progress_revives(self, state: HealthState, clock: FakeClock) -> None:
        """A stalled worker that makes progress is alive again."""
        state.set_lag(5)
        clock.advance(120)
        assert not state.liveness()[0]
        state.mark_progress()
        assert state.liveness()[0]

    def test_idle_without_lag_is_alive_forever(self, state: HealthState, clock: FakeClock) -> None:
        """Nothing to do is never a stall, however long it lasts."""
        state.set_lag(0)
        state.set_idle(True)
        clock.advance(10_000)
        ok, reasons = state.liveness()
        assert ok
        assert reasons["status"] == "idle"

    def test_idle_claim_with_lag_still_stalls(self, state: HealthState, clock: FakeClock) -> None:
        """An idle flag does not hide lag that is not being worked off."""
        state.set_idle(True)
        state.set_lag(3)
        clock.advance(61)
        assert not state.liveness()[0]

    def test_configuration_fault_never_kills(self, state: HealthState, clock: FakeClock) -> None:
        """A restart cannot fix credentials, so a config fault keeps liveness green."""
        state.set_lag(100)
        state.set_config_fault("auth_configuration")
        clock.advance(3600)
        ok, reasons = state.liveness()
        assert ok
        assert reasons["status"] == "paused_by_configuration_fault"

    @pytest.mark.parametrize("outage", ["api_outage", "ledger_unavailable"])
    def test_dependency_outage_never_kills_and_is_no_configuration_fault(
        self, state: HealthState, clock: FakeClock, outage: str
    ) -> None:
        """API or ledger down: paused, alive, not ready, and not the configuration alert."""
        state.set_started(True)
        state.set_lag(100)
        state.set_outage(outage)
        clock.advance(3600)
        ok, reasons = state.liveness()
        assert ok
        assert reasons["status"] == f"paused_by_{outage}"
        ready, why = state.readiness()
        assert not ready
        assert outage in why["problems"]  # type: ignore[operator]
        assert why["configuration_fault"] is None
        state.set_outage(None)
        assert outage not in state.readiness()[1]["problems"]  # type: ignore[operator]

    def test_hung_start_up_is_a_stall(self, clock: FakeClock) -> None:
        """The stall clock runs from construction, so a start-up that hangs is unhealthy."""
        st = HealthState(stall_timeout_s=10, clock=clock)
        clock.advance(11)
        assert not st.liveness()[0]

    def test_start_counts_as_progress(self, clock: FakeClock) -> None:
        """set_started(True) restarts the stall clock."""
        st = HealthState(stall_timeout_s=10, clock=clock)
        clock.advance(9)
        st.set_started(True)
        clock.advance(9)
        assert st.liveness()[0]

    def test_rejects_non_positive_timeout(self) -> None:
        """A zero stall timeout is a programming error."""
        with pytest.raises(ValueError, match="stall_timeout_s"):
            HealthState(stall_timeout_s=0)


class TestReadiness:
    def test_ready_when_all_conditions_hold(self, state: HealthState) -> None:
        """Started, assigned, token obtainable and no fault: ready, and the gauge says 1."""
        ok, reasons = state.readiness()
        assert ok
        assert reasons["problems"] == []
        assert reasons["partitions"] == 1
        assert _sample("invoice_sync_ready") == 1

    def test_not_started_is_not_ready(self, clock: FakeClock) -> None:
        """Before start-up finishes the worker is not ready."""
        st = HealthState(stall_timeout_s=60, clock=clock)
        ok, reasons = st.readiness()
        assert not ok
        assert reasons["problems"] == ["not_started"]
        assert _sample("invoice_sync_ready") == 0

    def test_waiting_for_assignment_is_ready(self, state: HealthState) -> None:
        """A worker waiting for its first assignment is still ready."""
        state.set_assignment(0, waiting=True)
        ok, reasons = state.readiness()
        assert ok
        assert reasons["waiting_for_assignment"] is True

    def test_no_partitions_is_not_ready(self, state: HealthState) -> None:
        """An assignment of zero partitions is not ready."""
        state.set_assignment(0, waiting=False)
        ok, reasons = state.readiness()
        assert not ok
        assert reasons["problems"] == ["no_partitions_assigned"]

    def test_token_unobtainable_is_not_ready(self, state: HealthState) -> None:
        """A token that cannot be had makes the worker not ready until one can."""
        state.set_token_obtainable(False)
        assert state.readiness()[1]["problems"] == ["token_unobtainable"]
        assert _sample("invoice_sync_ready") == 0
        state.set_token_obtainable(True)
        assert state.readiness()[0]
        assert _sample("invoice_sync_ready") == 1

    def test_configuration_fault_is_not_ready_and_published(self, state: HealthState) -> None:
        """A config fault shows as a reason and on invoice_sync_configuration_fault."""
        state.set_config_fault("insufficient_scope")
        ok, reasons = state.readiness()
        assert not ok
        assert reasons["configuration_fault"] == "insufficient_scope"
        assert reasons["problems"] == ["configuration_fault:insufficient_scope"]
        fault = "invoice_sync_configuration_fault"
        assert _sample(fault, reason="insufficient_scope") == 1
        assert _sample(fault, reason="auth_configuration") == 0
        state.set_config_fault(None)
        assert state.readiness()[0]
        assert _sample(fault, reason="insufficient_scope") == 0

    def test_stopping_is_not_ready(self, state: HealthState) -> None:
        """set_started(False) on shutdown takes the worker out of rotation."""
        state.set_started(False)
        assert state.readiness()[1]["problems"] == ["not_started"]

    def test_reasons_are_json(self, state: HealthState) -> None:
        """Both answers serialise to JSON as they are."""
        state.set_config_fault("auth_configuration")
        json.dumps(state.readiness()[1])
        json.dumps(state.liveness()[1])


@pytest.fixture
async def server(state: HealthState) -> AsyncIterator[HealthServer]:
    """A HealthServer on a free loopback port, stopped at teardown."""
    async with HealthServer(HttpServerSettings(host="127.0.0.1", port=0), state) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class TestHealthServer:
    async def test_binds_a_real_port(self, server: HealthServer) -> None:
        """Port 0 in the settings becomes the port actually bound."""
        assert server.port > 0

    async def test_healthz_200_with_reasons(
        self, server: HealthServer, http: aiohttp.ClientSession
    ) -> None:
        """/healthz answers 200 and the liveness reasons as JSON."""
        async with http.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert (await resp.json())["status"] == "progressing"

    async def test_healthz_503_when_stalled(
        self,
        server: HealthServer,
        state: HealthState,
        clock: FakeClock,
        http: aiohttp.ClientSession,
    ) -> None:
        """A stalled consumer makes /healthz answer 503 with the reason."""
        state.set_lag(42)
        clock.advance(61)
        async with http.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["status"] == "stalled"
        assert body["lag"] == 42

    async def test_readyz_flips_with_state(
        self, server: HealthServer, state: HealthState, http: aiohttp.ClientSession
    ) -> None:
        """/readyz answers 200 when ready and 503 with the problems when not."""
        url = f"http://127.0.0.1:{server.port}/readyz"
        async with http.get(url) as resp:
            assert resp.status == 200
        state.set_config_fault("auth_configuration")
        async with http.get(url) as resp:
            assert resp.status == 503
            assert (await resp.json())["problems"] == ["configuration_fault:auth_configuration"]

    async def test_metrics_exposition(
        self, server: HealthServer, http: aiohttp.ClientSession
    ) -> None:
        """/metrics serves the catalogue in the Prometheus text format with its content type."""
        async with http.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"invoice_sync_ready", "invoice_sync_events_consumed"} <= names

    async def test_metrics_openmetrics_negotiation(
        self, server: HealthServer, http: aiohttp.ClientSession
    ) -> None:
        """A scraper that asks for OpenMetrics gets it."""
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with http.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await resp.text()).rstrip().endswith("# EOF")

    async def test_dead_letter_series_exist_at_zero(self, server: HealthServer) -> None:
        """Start-up creates the DLQ series at 0 so the first dead letter can alert."""
        value = _sample("invoice_sync_dead_letters_total", reason="total_mismatch")
        assert value is not None

    async def test_second_start_raises(self, server: HealthServer) -> None:
        """A server starts once."""
        with pytest.raises(RuntimeError, match="once"):
            await server.start()

    async def test_stop_is_idempotent(self, state: HealthState) -> None:
        """Stopping twice is harmless."""
        srv = HealthServer(HttpServerSettings(host="127.0.0.1", port=0), state)
        await srv.start()
        await srv.close()
        await srv.close()


class TestCheckHealth:
    async def test_healthy_exits_zero(
        self, server: HealthServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A 200 from /healthz is exit code 0 and one line saying healthy."""
        settings = Settings(http=HttpServerSettings(port=server.port))
        assert await check_health(settings) == 0
        out = capsys.readouterr().out
        assert out.startswith("healthy: ")
        assert out.count("\n") == 1

    async def test_stalled_exits_one(
        self,
        server: HealthServer,
        state: HealthState,
        clock: FakeClock,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A 503 from /healthz is exit code 1 and names the status."""
        state.set_lag(1)
        clock.advance(61)
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert await check_health(Settings(), url=url) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"unhealthy: {url} answered HTTP 503 "), out

    async def test_unreachable_exits_one(
        self, state: HealthState, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Nobody listening is exit code 1, not a traceback."""
        srv = HealthServer(HttpServerSettings(host="127.0.0.1", port=0), state)
        await srv.start()
        port = srv.port
        await srv.close()
        assert await check_health(Settings(), url=f"http://127.0.0.1:{port}/healthz") == 1
        assert "unreachable" in capsys.readouterr().out


class TestMetricsCatalogueHooks:
    def test_initialise_keeps_existing_values(self) -> None:
        """initialise_label_sets never resets a counter that already counted."""
        metrics.DEAD_LETTERS.labels("unknown_sku").inc()
        before = _sample("invoice_sync_dead_letters_total", reason="unknown_sku")
        metrics.initialise_label_sets()
        assert _sample("invoice_sync_dead_letters_total", reason="unknown_sku") == before
