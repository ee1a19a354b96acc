"""Alerts that say why (issue 10, finding 7), against a real anvil: a send that fails for want of gas is a critical
alert and not counted as sent; the signer's native balance is a metric with an alert before gas runs out; a fresh
devchain whose positions need nothing raises no "cannot be saved" alert."""

from __future__ import annotations

import json
import os

import pytest
from structlog.testing import capture_logs

from keeper.dev.reference import ANVIL_KEYS, DEFAULT_BOOK
from keeper.runtime.config import load_config
from keeper.runtime.service import TOP_UP_GAS_LIMIT_DEFAULT, KeeperService

pytestmark = pytest.mark.chain

GWEI = 10**9


@pytest.fixture
def service_for(write_config):
    """``service_for(chain, tmp_path, **overrides) -> KeeperService``: the daemon's service, executing, signing as
    the trader, alerts not sent."""

    def make(chain, tmp_path, **overrides: str) -> KeeperService:
        cfg = load_config(
            write_config(chain, tmp_path, **overrides),
            env={**os.environ, "KEEPER_PRIVATE_KEY": chain.trader_key},
            dotenv_path=None,
        )
        return KeeperService.from_config(cfg, execute=True, send_alerts=False)

    return make


def max_fee_now(chain) -> int:
    """What a send must be funded for per gas: 2 x the latest base fee + the configured 1.5 gwei tip."""
    return 2 * chain.w3.eth.get_block("latest")["baseFeePerGas"] + 1_500_000_000


class TestAlertsSayWhy:
    def test_send_without_gas_is_a_critical_alert_and_not_sent(
        self, chain, tmp_path, margin_events, open_book, service_for
    ):
        """Native balance 0: the top-up fails at the node; the cycle reports it as failed (not sent), raises a
        critical send_failed alert and a critical gas alert, and the native-balance gauge reads 0."""
        open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        service = service_for(chain, tmp_path)
        try:
            service.start()
            chain.push_price("ETH", 2_500 * 10**8)
            chain.anvil.request("anvil_setBalance", [chain.trader, "0x0"])
            with capture_logs() as logs:
                report = service.cycle(execute=True)
        finally:
            service.close()
        assert [s["state"] for s in report.sent if s["action"] == "top_up"] == ["error"]
        alerts = {e["key"]: e for e in logs if e["event"] == "alert"}
        who = chain.trader.lower()
        assert alerts[f"{who}:0:send_failed"]["severity"] == "critical"
        assert "could not be sent" in alerts[f"{who}:0:send_failed"]["text"]
        assert alerts[f"gas:{who}"]["severity"] == "critical" and alerts[f"gas:{who}"]["field_top_ups_left"] == 0
        finished = next(e for e in logs if e["event"] == "cycle_finished")
        assert finished["sent"] == 0 and finished["failed"] == 1
        assert service.metrics.value("keeper_native_balance_eth", {"account": who}) == 0.0
        assert margin_events(chain, "MarginAdded") == []

    def test_low_gas_warns_before_it_runs_out(self, chain, tmp_path, open_book, service_for):
        """With gas for exactly 3 top-ups (threshold 5) the keeper warns with the count; with 5 it stays quiet."""
        open_book(chain, reserve_e6=1_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        service = service_for(chain, tmp_path)
        who = chain.trader.lower()
        try:
            service.start()
            per_top_up = TOP_UP_GAS_LIMIT_DEFAULT * max_fee_now(chain)
            chain.anvil.request("anvil_setBalance", [chain.trader, hex(3 * per_top_up + per_top_up // 2)])
            with capture_logs() as logs:
                service.cycle(execute=True)
            gas = [e for e in logs if e["event"] == "alert" and e["key"] == f"gas:{who}"]
            assert len(gas) == 1 and gas[0]["severity"] == "warning" and gas[0]["field_top_ups_left"] == 3
            assert service.metrics.value("keeper_gas_top_ups_left", {"account": who}) == 3.0
            assert service.metrics.value("keeper_native_balance_eth", {"account": who}) == pytest.approx(
                3.5 * per_top_up / 1e18
            )
            chain.anvil.request(
                "anvil_setBalance", [chain.trader, hex(6 * max_fee_now(chain) * TOP_UP_GAS_LIMIT_DEFAULT)]
            )
            with capture_logs() as logs:
                service.cycle(execute=True)
            assert not [e for e in logs if e["event"] == "alert" and e["key"] == f"gas:{who}"]
        finally:
            service.close()

    def test_fresh_devchain_with_unfunded_wallet_raises_no_cannot_be_saved(
        self, chain, tmp_path, keeper, margin_events, write_config
    ):
        """The devchain's default book watched by the operator key (no collateral tokens): positions with breach
        probability ~1e-9 get no "cannot be saved" alert from `keeper check --execute`."""
        chain.seed_book(ANVIL_KEYS[1], DEFAULT_BOOK, reserve_e6=50_000 * 10**6)
        trader = chain.sender(ANVIL_KEYS[1])
        operator = chain.sender(ANVIL_KEYS[2]).address
        trader.wait(trader.transact(chain.engine.functions.setOperator(operator, True)))
        cfg = write_config(chain, tmp_path)
        proc = keeper("check", "--config", str(cfg), "--execute", "--json", env={"KEEPER_PRIVATE_KEY": ANVIL_KEYS[2]})
        assert proc.returncode == 0, proc.stderr
        assert max(p["breach_probability"] for p in json.loads(proc.stdout)["positions"]) < 1e-6
        assert "cannot be saved" not in proc.stdout + proc.stderr
        assert margin_events(chain, "MarginAdded") == []
