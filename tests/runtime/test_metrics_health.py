"""Tests of keeper/runtime/metrics.py and keeper/runtime/health.py with real HTTP requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from keeper.runtime.health import HealthServer, HealthState
from keeper.runtime.metrics import KeeperMetrics

ACCOUNT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


class FakeClock:
    """A settable clock (seconds) so ages are exact and nothing depends on wall time."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


class TestMetrics:
    def test_own_registry_and_values(self):
        """Two KeeperMetrics do not share state; recorded values read back exactly."""
        a, b = KeeperMetrics(), KeeperMetrics()
        a.observe_position(ACCOUNT, "ETH", breach_probability=2e-3, log_distance=0.04, collateral_e6=1_234_500_000)
        a.count_action("top_up", "confirmed")
        a.count_action("top_up", "confirmed")
        a.add_gas(60_000, 3 * 10**15)
        a.observe_cycle(0.2, 1_700_000_000)
        labels = {"account": ACCOUNT.lower(), "market": "ETH"}
        assert a.value("keeper_position_breach_probability", labels) == 2e-3
        assert a.value("keeper_position_collateral_usd", labels) == 1234.5
        assert a.value("keeper_actions_total", {"kind": "top_up", "outcome": "confirmed"}) == 2
        assert a.value("keeper_gas_used_total") == 60_000 and a.value("keeper_gas_spent_eth_total") == 0.003
        assert a.value("keeper_cycle_duration_seconds_count") == 1
        assert a.value("keeper_last_cycle_timestamp_seconds") == 1_700_000_000
        assert b.value("keeper_actions_total", {"kind": "top_up", "outcome": "confirmed"}) is None

    def test_forget_closed_positions(self):
        """Series of positions that disappeared are removed; live ones stay."""
        m = KeeperMetrics()
        m.observe_position(ACCOUNT, "ETH", breach_probability=0.1, log_distance=0.01, collateral_e6=1)
        m.observe_position(ACCOUNT, "BTC", breach_probability=0.1, log_distance=0.01, collateral_e6=1)
        m.forget_positions_except({(ACCOUNT, "BTC")})
        assert m.value("keeper_position_distance_to_liquidation", {"account": ACCOUNT.lower(), "market": "ETH"}) is None
        assert m.value("keeper_position_distance_to_liquidation", {"account": ACCOUNT.lower(), "market": "BTC"}) == 0.01


class TestHealthState:
    def test_starting_then_stale_without_cycle(self):
        """Before the first cycle health is 'starting' (200) until max_cycle_age_s has passed, then 503."""
        clock = FakeClock()
        s = HealthState(max_cycle_age_s=60, max_head_age_s=30, clock=clock)
        assert s.snapshot()[0] == 200 and s.snapshot()[1]["status"] == "starting"
        clock.t += 61
        code, body = s.snapshot()
        assert code == 503 and body["status"] == "stale" and "no cycle" in body["reasons"][0]

    def test_head_age_threshold(self):
        """An old head makes health 503 even with a fresh cycle; ages are exact under the fake clock."""
        clock = FakeClock()
        s = HealthState(max_cycle_age_s=60, max_head_age_s=30, clock=clock)
        s.mark_head(100, block_timestamp_s=clock.t - 31)
        s.mark_cycle()
        code, body = s.snapshot()
        assert code == 503 and body["head_age_s"] == 31 and body["last_cycle_age_s"] == 0 and body["head_block"] == 100

    def test_halted_is_503_whatever_the_ages(self):
        """After mark_halted a fresh cycle and head still answer 503 "halted" with the reason first."""
        clock = FakeClock()
        s = HealthState(max_cycle_age_s=60, max_head_age_s=30, clock=clock)
        s.mark_head(100, block_timestamp_s=clock.t)
        s.mark_cycle()
        assert s.snapshot()[0] == 200
        s.mark_halted("no RPC endpoint left that serves the configured chain")
        s.mark_cycle()
        code, body = s.snapshot()
        assert code == 503 and body["status"] == "halted"
        assert body["reasons"] == ["halted: no RPC endpoint left that serves the configured chain"]


class TestMetricsNative:
    def test_native_balance_and_top_ups_left_gauges(self):
        """set_native publishes the balance in ETH and the top-ups it pays, per signer (lower-cased)."""
        m = KeeperMetrics()
        m.set_native("0xAbC", 25 * 10**16, 7)
        assert m.value("keeper_native_balance_eth", {"account": "0xabc"}) == 0.25
        assert m.value("keeper_gas_top_ups_left", {"account": "0xabc"}) == 7.0
        assert "keeper_native_balance_eth{" in m.render().decode()


class TestHealthServer:
    def test_healthz_and_metrics_over_http(self):
        """GET /healthz returns JSON 200 then 503 as the cycle ages; GET /metrics returns Prometheus text."""
        clock = FakeClock()
        state = HealthState(max_cycle_age_s=60, max_head_age_s=30, clock=clock)
        metrics = KeeperMetrics()
        metrics.set_head_lag(2.5)
        with HealthServer(state, metrics, "127.0.0.1", 0) as server:
            assert server.port > 0
            state.mark_cycle()
            state.mark_head(7)
            code, ctype, body = get(server.url + "/healthz")
            assert code == 200 and ctype == "application/json"
            data = json.loads(body)
            assert data["status"] == "ok" and data["last_cycle_age_s"] == 0 and data["head_age_s"] == 0
            clock.t += 61
            code, _, body = get(server.url + "/healthz")
            assert code == 503 and json.loads(body)["status"] == "stale"
            code, ctype, body = get(server.url + "/metrics")
            assert code == 200 and ctype.startswith("text/plain")
            assert b"keeper_head_lag_seconds 2.5" in body
            assert get(server.url + "/nope")[0] == 404

    def test_stop_releases_port(self):
        """After stop() the port no longer accepts connections."""
        server = HealthServer(HealthState(), KeeperMetrics(), "127.0.0.1", 0).start()
        url = server.url + "/healthz"
        server.stop()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, timeout=2)
