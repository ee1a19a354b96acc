"""Watch-only discovery: every account named by the Pool's events is found, including the liquidated one."""

from __future__ import annotations

import pytest
from aavechain import LIQUIDATOR_KEY, LP_KEY, AaveChain

from keeper.dev.aave_v3 import SeedAccount
from keeper.dev.reference import ANVIL_KEYS
from keeper.tx.journal import Journal

pytestmark = pytest.mark.chain


def test_accounts_discovered_from_pool_events(aave: AaveChain, tmp_path):
    """Supply, Borrow and LiquidationCall events name the LP, two traders and the liquidated user, once each."""
    traders = ANVIL_KEYS[3], ANVIL_KEYS[4]
    aave.open_account(traders[0], SeedAccount((("WETH", 10.0),), (("USDC", 22_000.0),)))
    aave.open_account(traders[1], SeedAccount((("WBTC", 1.0),), (("DAI", 20_000.0),)))
    adapter = aave.adapter(journal=Journal(tmp_path / "j.sqlite"), start_block=aave.deployment.start_block)
    found = adapter.discover_accounts()
    expected = {aave.address(k).lower() for k in (LP_KEY, *traders)}
    assert found == expected
    aave.set_price("WETH", 2_600 * 10**8)
    aave.liquidate(LIQUIDATOR_KEY, "WETH", "USDC", aave.address(traders[0]), 1_000 * 10**6)
    assert adapter.discover_accounts() == expected  # the liquidated user is known; the liquidator has no position
    snap = adapter.read_accounts(sorted(found))
    assert set(snap.accounts) == {a for a in snap.onchain} and len(snap.accounts) == 3


def test_lean_read_gives_the_same_accounts(aave: AaveChain):
    """Without the contract's getUserAccountData the snapshot holds the same accounts and market state."""
    aave.open_account(ANVIL_KEYS[3], SeedAccount((("WETH", 2.0), ("DAI", 1_000.0)), (("USDC", 3_000.0),)))
    users = [aave.address(ANVIL_KEYS[3]), aave.address(LP_KEY)]
    adapter = aave.adapter()
    full = adapter.read_accounts(users, block=aave.w3.eth.block_number)
    lean = adapter.read_accounts(users, block=full.block_number, cross_check=False)
    assert lean.accounts == full.accounts and lean.market == full.market and lean.onchain == {}
