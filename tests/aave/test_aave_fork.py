"""A second anvil forking the first: the adapter reads the same accounts and a supply on behalf lands on the fork."""

from __future__ import annotations

import pytest
from aavechain import KEEPER_KEY, AaveChain

from keeper.accounts.aave_v3 import WAD, account_data, cheapest_top_up
from keeper.chain.anvil import Anvil
from keeper.dev.aave_v3 import SeedAccount
from keeper.dev.reference import ANVIL_KEYS
from keeper.protocols.aave_v3 import AaveErrorDecoder
from keeper.tx.journal import Journal
from keeper.tx.manager import Lane, TransactionManager

pytestmark = pytest.mark.chain

TRADER = ANVIL_KEYS[3]


def test_keeper_protects_the_position_on_a_fork(aave: AaveChain, tmp_path):
    """On a fork the keeper's numbers equal the fork's getUserAccountData, and its WETH supply on behalf
    raises the HF on the fork while the origin chain is unchanged."""
    aave.open_account(TRADER, SeedAccount((("WETH", 10.0),), (("USDC", 22_000.0),)))
    user = aave.address(TRADER)
    aave.mint("WETH", aave.address(KEEPER_KEY), 10**20)  # the keeper's wallet, on the origin before the fork
    origin_before = aave.account_data(user)
    fork = Anvil.start(fork_url=aave.anvil.url, fork_block_number=aave.w3.eth.block_number)
    try:
        client = aave.client(fork.url)
        adapter = aave.adapter(client)
        snap = adapter.read_accounts([user])
        assert snap.onchain[user].as_tuple() == origin_before
        assert account_data(snap.accounts[user], snap.market).as_tuple() == snap.onchain[user].as_tuple()
        market = snap.market.with_price(aave.token("WETH"), 2_600 * 10**8).at(snap.market.timestamp_s + 30)
        top_up = cheapest_top_up(snap.accounts[user], market, WAD * 102 // 100, {aave.token("WETH"): 10**20})
        assert top_up is not None and top_up.kind == "supply"
        manager = TransactionManager(
            client,
            Journal(tmp_path / "fork.sqlite"),
            [Lane.from_key("urgent", KEEPER_KEY)],
            confirmations=1,
            error_decoder=AaveErrorDecoder(),
        )
        for key, call in (
            ("approve", adapter.approve_call(top_up.asset, top_up.amount)),
            ("supply", adapter.supply_call(top_up.asset, top_up.amount, user)),
        ):
            assert manager.wait(manager.submit(call, key, 10_000 * 10**6).id, timeout_s=30).state == "confirmed"
        after = adapter.read_accounts([user])
        assert after.onchain[user].total_collateral_base > origin_before[0]
        assert after.onchain[user].health_factor_wad > origin_before[5]
        assert aave.account_data(user) == origin_before  # the origin chain did not see the fork's transaction
    finally:
        fork.stop()
