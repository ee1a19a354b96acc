"""The gas token's USD price comes from the chain (keeper/runtime/native_price.py), not a constant: the fee
policy the transaction manager caps fees with follows the protocol's ETH price, a configured feed, or a fixed
configured price; a feed address with no contract is a configuration error at start."""

from __future__ import annotations

import os

import pytest
from structlog.testing import capture_logs

from keeper.dev.reference import ANVIL_KEYS
from keeper.errors import ConfigError
from keeper.runtime.config import load_config
from keeper.runtime.service import KeeperService

pytestmark = pytest.mark.chain

TRADER = 1


def _service(chain, tmp_path, write_config, fees: str = "") -> KeeperService:
    path = write_config(chain, tmp_path)
    path.write_text(path.read_text() + f"\n[fees]\n{fees}\n")
    cfg = load_config(path, env={**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER]}, dotenv_path=None)
    return KeeperService.from_config(cfg, execute=True, send_alerts=False)


def test_the_fee_policy_follows_the_protocols_eth_price_then_a_feed_then_a_fixed_price(
    chain, tmp_path, write_config, open_book
):
    open_book(chain, reserve_e6=10_000 * 10**6)
    chain.push_price("ETH", 4_000 * 10**8)
    service = _service(chain, tmp_path / "protocol", write_config)
    try:
        service.start()
        assert service.txm is not None and service.txm.fees.native_usd_e8 == 3_000 * 10**8  # the default, before
        service.cycle(execute=False)
        assert service.txm.fees.native_usd_e8 == 4_000 * 10**8  # the ETH market's price, this cycle
        assert service.native_price.source == "protocol price of ETH"
    finally:
        service.close()
    feed = chain.deployment.feeds["BTC"]  # any Chainlink-compatible feed: here BTC's, to tell it apart
    service = _service(chain, tmp_path / "feed", write_config, f'native_price_feed = "{feed}"')
    try:
        service.start()
        service.cycle(execute=False)
        btc = chain.feeds["BTC"].functions.latestRoundData().call()[1]
        assert service.txm is not None and service.txm.fees.native_usd_e8 == btc == 60_000 * 10**8
    finally:
        service.close()
    service = _service(chain, tmp_path / "fixed", write_config, "native_usd = 2500")
    try:
        service.start()
        service.cycle(execute=False)
        assert service.txm is not None and service.txm.fees.native_usd_e8 == 2_500 * 10**8
    finally:
        service.close()


def test_a_feed_without_a_contract_stops_the_start(chain, tmp_path, write_config):
    service = _service(
        chain, tmp_path, write_config, 'native_price_feed = "0x000000000000000000000000000000000000dEaD"'
    )
    try:
        with pytest.raises(ConfigError, match="native_price_feed 0x000000000000000000000000000000000000dEaD holds no"):
            service.start()
    finally:
        service.close()


def test_cost_aware_bands_top_up_more_when_gas_is_dear_and_less_when_it_is_cheap(
    chain, tmp_path, write_config, open_book
):
    """ETH long pushed inside its buffer: the default bands, then risk.cost_aware with anvil's real (tiny) gas
    price -> a smaller top-up (the restore floor is the breach target), and with the gas token priced at
    $10M -> a larger one (wide, rare top-ups)."""
    open_book(chain, reserve_e6=40_000 * 10**6)
    chain.push_price("ETH", 2_880 * 10**8)

    def top_up(name: str, extra: str, fees: str = "") -> int:
        path = write_config(chain, tmp_path / name, risk=extra)
        path.write_text(path.read_text() + f"\n[fees]\n{fees}\n")
        cfg = load_config(path, env={**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER]}, dotenv_path=None)
        service = KeeperService.from_config(cfg, execute=False, send_alerts=False)
        try:
            snap, wallet = service.read()
            sigmas, gaps = service.estimate(snap)
            plan = service.decide(snap, sigmas, gaps, wallet_e6=wallet, busy={}).plan
            (action,) = [a for a in plan.onchain_actions if a.kind.value == "top_up"]
            return action.amount_e6
        finally:
            service.close()

    plain = top_up("plain", "")
    cheap = top_up("cheap", "cost_aware = true")
    dear = top_up("dear", "cost_aware = true", "native_usd = 10000000")
    assert cheap < plain < dear, (cheap, plain, dear)


def test_a_cost_aware_check_that_sends_nothing_prices_each_cycle_at_that_cycles_gas(
    chain, tmp_path, write_config, open_book
):
    """A keeper checking without sending (``keeper check``, watch-only) reads no block after sending: each cycle's
    bands are still priced at the gas price of that cycle (its ``cost_bands`` line), not the first one it read."""
    open_book(chain, reserve_e6=40_000 * 10**6)
    path = write_config(chain, tmp_path, risk="cost_aware = true")
    cfg = load_config(path, env={**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER]}, dotenv_path=None)
    service = KeeperService.from_config(cfg, execute=False, send_alerts=False)
    base_fee_before = chain.w3.eth.get_block("latest")["baseFeePerGas"]
    try:
        priced = []
        for base_fee_wei in (10**9, 100 * 10**9):  # 1 gwei, then 100 gwei
            chain.anvil.request("anvil_setNextBlockBaseFeePerGas", [hex(base_fee_wei)])
            chain.anvil.request("evm_mine", [])
            with capture_logs() as logs:
                service.cycle(execute=False)
            (line,) = [e for e in logs if e["event"] == "cost_bands"]  # the price moved by more than 10 %
            # the next (empty) block's base fee is within 1/8 below the latest's; the tip comes on top
            tip_wei = cfg.fees.priority_fee_wei
            assert base_fee_wei * 7 // 8 + tip_wei <= line["gas_price_gwei"] * 1e9 <= base_fee_wei + tip_wei
            priced.append((line["gas_price_gwei"], line["gas_usd_per_tx"]))
        (gwei_0, usd_0), (gwei_1, usd_1) = priced
        assert gwei_1 > 30 * gwei_0  # the second cycle's price, not the first one's
        assert usd_1 / usd_0 == pytest.approx(gwei_1 / gwei_0, rel=1e-3)  # the same top-up's gas, priced at it
    finally:
        service.close()
        chain.anvil.request("anvil_setNextBlockBaseFeePerGas", [hex(base_fee_before)])
