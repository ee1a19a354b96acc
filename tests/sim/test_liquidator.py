"""The liquidator bot liquidates exactly the liquidatable positions, by sweep or on every block."""

from __future__ import annotations

import pytest

from keeper.domain import NOTIONAL_DIVISOR
from keeper.sim.liquidator import LiquidatorBot

pytestmark = pytest.mark.chain

ETH_SIZE_E18 = 20 * 10**18  # 20 ETH at 3000 = $60,000 notional
COLLATERAL_E6 = 3_000 * 10**6  # 20x


def _open_pair(chain) -> tuple[str, str]:
    """Two ETH longs of the same size, the second with $1 more collateral (its liquidation price ~$0.05 lower)."""
    a, b = chain.keys[4], chain.keys[5]
    for key, extra in ((a, 0), (b, 10**6)):
        address = chain.addresses[chain.keys.index(key)]
        chain.mint(address, COLLATERAL_E6 + extra)
        chain.approve_engine(key)
        chain.open_position(key, "ETH", True, ETH_SIZE_E18, COLLATERAL_E6 + extra)
    return chain.addresses[4], chain.addresses[5]


def _liq_price_e8(chain, account: str) -> int:
    return chain.position(account, "ETH")[8]


class TestSweep:
    def test_liquidates_just_past_boundary_spares_just_safe(self, chain):
        """At a price 1e-5 USD below A's liquidation price, A is liquidated and B ($1 more collateral) is not."""
        a, b = _open_pair(chain)
        bot = LiquidatorBot(chain.anvil.url, chain.deployment, chain.keys[3], accounts=[a, b])
        assert bot.sweep() == []  # nothing is liquidatable at the entry price
        liq_a, liq_b = _liq_price_e8(chain, a), _liq_price_e8(chain, b)
        assert liq_a - liq_b > 4_000_000  # $1 / (20 ETH * (1 - 0.5 %)) ~ $0.0503 between them
        chain.push_price("ETH", liq_a - 1_000)
        assert chain.position(a, "ETH")[11] and not chain.position(b, "ETH")[11]
        made = bot.sweep()
        assert [(x.account, x.market_id) for x in made] == [(a, 0)]
        assert not chain.position(a, "ETH")[0]
        assert chain.position(b, "ETH")[0]
        liq = made[0]
        notional_e6 = ETH_SIZE_E18 * liq.price_e8 // NOTIONAL_DIVISOR
        # equity is just below maintenance (0.5 % of notional) < the 1 % penalty cap: the liquidator takes it all
        assert 0 < liq.penalty_e6 <= notional_e6 * 5 // 1000
        assert liq.returned_e6 == 0
        assert bot.count == 1 and bot.penalty_e6 == liq.penalty_e6 and bot.gas_used == liq.gas_used > 0
        assert chain.usd.functions.balanceOf(chain.addresses[3]).call() == liq.penalty_e6
        assert bot.sweep() == []  # nothing left to take

    def test_discovers_positions_from_events(self, chain):
        """Without an account list the bot finds both positions from PositionOpened and liquidates the one due."""
        a, b = _open_pair(chain)
        bot = LiquidatorBot(chain.anvil.url, chain.deployment, chain.keys[3])
        assert bot.discover() == 2
        assert {(x, 0) for x in (a, b)} <= bot.watched
        chain.push_price("ETH", _liq_price_e8(chain, a) - 1_000)
        assert [x.account for x in bot.sweep()] == [a]

    def test_stale_price_is_not_liquidated(self, chain):
        """Past the heartbeat the protocol refuses to liquidate, and the bot does not try (no reverted tx)."""
        a, b = _open_pair(chain)
        bot = LiquidatorBot(chain.anvil.url, chain.deployment, chain.keys[3], accounts=[a, b])
        chain.push_price("ETH", _liq_price_e8(chain, a) - 10**8)
        chain.anvil.request("evm_increaseTime", [3601])
        chain.anvil.request("evm_mine")
        assert bot.sweep() == [] and bot.failed == 0
        assert chain.position(a, "ETH")[0]


def test_background_thread_liquidates_on_new_block(chain, wait_for):
    """Started as a thread, the bot liquidates a position made liquidatable by a price push it did not see coming."""
    a, b = _open_pair(chain)
    bot = LiquidatorBot(chain.anvil.url, chain.deployment, chain.keys[3], accounts=[a, b], poll_interval_s=0.02)
    with bot:
        chain.push_price("ETH", _liq_price_e8(chain, b) - 10**8)  # both past the boundary
        wait_for(lambda: bot.count >= 2, 20, "two liquidations by the bot's thread")
    assert sorted(x.account for x in bot.liquidations) == sorted([a, b])
    assert bot.errors == 0
