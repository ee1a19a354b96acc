"""Real Perpetual Protocol v2 (Curie 2.8.4) on anvil: the keeper's account numbers, liquidations and top-ups."""

from __future__ import annotations

import pytest
from eth_abi import decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keeper.accounts.perp_v2 import (
    PerpAccount,
    liquidation_cost,
    margin_at,
    min_deposit_e6,
    moved_marks,
    sqrt_after_notional,
)
from keeper.chain.abi import Function, event_topic
from keeper.chain.rpc import ExecutionReverted
from keeper.dev.perp_v2 import LIQUIDATOR, MAKER, MOVER, SeedLeg, SeedTrader
from keeper.errors import SimulationRevert
from keeper.protocols.perp_v2 import stale_markets
from keeper.tx.fees import FeePolicy
from keeper.tx.journal import Journal
from keeper.tx.manager import Lane, TransactionManager

pytestmark = pytest.mark.chain

E18 = 10**18
F_LIQUIDATE = Function("liquidate(address,address)")
POSITION_LIQUIDATED = event_topic("PositionLiquidated(address,address,uint256,uint256,uint256,address)")
WATCHED = (1, 4, 5)


def watched(perp, extra=()):
    return [perp.addresses[i] for i in (*WATCHED, *extra)]


def assert_keeper_equals_contract(snap):
    for t, st_ in snap.traders.items():
        if st_.has_orders:
            continue  # makers are not modelled (and cannot be liquidated: CH_CLWTISO)
        m = snap.margin(t)
        assert m.account_value_x18 == st_.contract_account_value_x18, t
        assert m.requirement_x18 == st_.contract_requirement_x18, t
        assert m.unrealized_pnl_x18 == st_.unrealized_pnl_x18, t


def liquidate_revert_reason(perp, trader: str, symbol: str) -> str | None:
    """The decoded reason a liquidator's ``liquidate`` would revert with (None: it would succeed)."""
    base = perp.ops.deployment.markets[symbol].base_token
    try:
        perp.client.call(
            perp.ops.deployment.clearing_house, F_LIQUIDATE.encode(trader, base), sender=perp.addresses[LIQUIDATOR]
        )
    except ExecutionReverted as exc:
        return str(perp.adapter.errors.decode(exc.data_bytes))
    return None


def make_manager(perp, tmp_path) -> tuple[TransactionManager, Journal]:
    journal = Journal(tmp_path / "journal.db")
    lane = Lane.from_key("urgent", perp.keys[2])
    return TransactionManager(
        perp.client, journal, [lane], FeePolicy(), confirmations=1, error_decoder=perp.adapter.errors
    ), journal


def fund_keeper(perp, manager, amount_e6: int) -> None:
    """Mint settlement tokens to the keeper's wallet and approve the vault through the manager."""
    perp.ops.mint(perp.addresses[2], amount_e6)
    intent = manager.submit(perp.adapter.approve_call_e6(amount_e6), "approve-vault", 0)
    assert manager.wait(intent.id, timeout_s=30).state == "confirmed"


def top_up(perp, manager, trader: str, amount_e6: int, stake_e6: int):
    call = perp.adapter.deposit_for_call(trader, amount_e6)
    intent = manager.submit(call, f"top-up:{trader.lower()}", stake_e6)
    return manager.wait(intent.id, timeout_s=30)


def test_seeded_accounts_match_the_contract_in_one_round_trip(perp):
    """Right after seeding, every taker's value and requirement equal the contract's, read in one round trip."""
    snap = perp.adapter.read(watched(perp, (MAKER,)))
    assert snap.round_trips == 1 and not snap.failed
    assert_keeper_equals_contract(snap)
    t1 = snap.traders[perp.addresses[1].lower()]
    assert len(t1.account.legs) == 2 and len(t1.base_tokens) == 2  # cross margin: one vault balance, two markets
    assert snap.traders[perp.addresses[MAKER].lower()].has_orders
    assert snap.params.mm_ratio_e6 == 62_500 and snap.params.liquidation_penalty_ratio_e6 == 25_000


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    deposit=st.integers(500, 5_000),
    legs=st.lists(
        st.tuples(st.sampled_from(["ETH", "BTC"]), st.booleans(), st.floats(0.5, 4.0)),
        min_size=1,
        max_size=2,
        unique_by=lambda x: x[0],
    ),
    eth_move=st.floats(0.94, 1.06),
    btc_move=st.floats(0.94, 1.06),
    wait_s=st.integers(0, 7_200),
)
def test_value_and_requirement_equal_the_contract_on_generated_states(perp, deposit, legs, eth_move, btc_move, wait_s):
    """Generated traders (several markets, long and short), index and market moves, time: numbers equal to the unit."""
    snapshot_id = perp.snapshot()
    try:
        perp.ops.open_trader(SeedTrader(6, float(deposit), tuple(SeedLeg(s, lg, deposit * k) for s, lg, k in legs)))
        perp.ops.set_prices({"ETH": 2_000.0 * eth_move, "BTC": 40_000.0 * btc_move})
        perp.ops.advance(wait_s)
        snap = perp.adapter.read(watched(perp, (6,)))
        assert not snap.failed
        assert_keeper_equals_contract(snap)
        for t, st_ in snap.traders.items():  # liquidatable iff value < requirement, as the contract decides
            if not st_.has_orders:
                assert snap.margin(t).liquidatable == (st_.contract_account_value_x18 < st_.contract_requirement_x18)
    finally:
        perp.revert(snapshot_id)


def test_control_run_liquidated_with_the_predicted_size_and_penalty(perp):
    """ETH and BTC fall 6 %: the two-market trader is liquidatable; liquidate takes the size and penalty predicted."""
    trader = perp.addresses[1]
    perp.ops.set_prices({"ETH": 1_880.0, "BTC": 37_600.0})
    snap = perp.adapter.read([trader])
    st_ = snap.traders[trader.lower()]
    assert snap.margin(trader).liquidatable and st_.contract_account_value_x18 < st_.contract_requirement_x18
    eth = perp.ops.deployment.markets["ETH"].base_token
    predicted = liquidation_cost(st_.account, eth, snap.marks_x18, snap.params)
    assert predicted.size_e18 != 0
    receipt = perp.ops.liquidate(perp.keys[LIQUIDATOR], trader, "ETH")
    logs = [lg for lg in receipt["logs"] if lg["topics"][0].to_0x_hex() == POSITION_LIQUIDATED]
    assert len(logs) == 1
    notional, size, penalty = decode(["uint256", "uint256", "uint256"], bytes(logs[0]["data"])[:96])
    # the liquidation block is one second later: the mark (TWAP-based) may have moved by a hair
    assert size == abs(predicted.size_e18)
    assert abs(penalty - predicted.penalty_x18) <= predicted.penalty_x18 * 1e-4
    assert abs(notional - abs(predicted.notional_x18)) <= abs(predicted.notional_x18) * 1e-4


def test_maker_with_open_orders_cannot_be_liquidated(perp):
    """liquidate on an account with open maker orders reverts CH_CLWTISO, decoded into words."""
    reason = liquidate_revert_reason(perp, perp.addresses[MAKER], "ETH")
    assert reason is not None and reason.startswith("CH_CLWTISO (cannot liquidate while the trader still has open")


def test_keeper_depositfor_before_the_pump_saves_the_short(perp, tmp_path):
    """BTC +9 %: without a top-up the BTC short is liquidatable; the keeper's depositFor sent first saves it."""
    trader = perp.addresses[5]
    pump = {"BTC": 40_000.0 * 1.09}
    control = perp.snapshot()
    perp.ops.set_prices(pump)
    assert liquidate_revert_reason(perp, trader, "BTC") is None  # control: liquidatable
    perp.revert(control)

    manager, journal = make_manager(perp, tmp_path)
    try:
        fund_keeper(perp, manager, 10_000 * 10**6)
        snap = perp.adapter.read([trader])
        acct = snap.traders[trader.lower()].account
        after = moved_marks(snap.marks_x18, {perp.ops.deployment.markets["BTC"].base_token: 1.09})
        assert margin_at(acct, after, snap.params).liquidatable  # the keeper foresees the breach
        need = margin_at(acct, after, snap.params).requirement_x18
        amount = min_deposit_e6(acct, after, snap.params, target_excess_x18=need // 5)
        assert amount > 0
        rec = top_up(perp, manager, trader, amount, stake_e6=500 * 10**6)
        assert rec.state == "confirmed"
        perp.ops.set_prices(pump)
        snap2 = perp.adapter.read([trader])
        assert snap2.traders[trader.lower()].account.vault_balance_e6 == acct.vault_balance_e6 + amount
        assert not snap2.margin(trader).liquidatable
        reason = liquidate_revert_reason(perp, trader, "BTC")
        assert reason is not None and reason.startswith("CH_EAV (enough account value")
    finally:
        journal.close()


def test_one_top_up_saves_both_markets_of_a_cross_margin_account(perp, tmp_path):
    """ETH and BTC -6 %: one depositFor sized on both legs keeps both markets of the trader unliquidatable."""
    trader = perp.addresses[1]
    crash = {"ETH": 1_880.0, "BTC": 37_600.0}
    manager, journal = make_manager(perp, tmp_path)
    try:
        fund_keeper(perp, manager, 10_000 * 10**6)
        snap = perp.adapter.read([trader])
        acct: PerpAccount = snap.traders[trader.lower()].account
        m = perp.ops.deployment.markets
        after = moved_marks(snap.marks_x18, {m["ETH"].base_token: 0.94, m["BTC"].base_token: 0.94})
        before = margin_at(acct, after, snap.params)
        assert before.liquidatable
        amount = min_deposit_e6(acct, after, snap.params, target_excess_x18=before.requirement_x18 // 5)
        assert top_up(perp, manager, trader, amount, stake_e6=300 * 10**6).state == "confirmed"
        perp.ops.set_prices(crash)
        assert_keeper_equals_contract(perp.adapter.read([trader]))
        for symbol in ("ETH", "BTC"):
            reason = liquidate_revert_reason(perp, trader, symbol)
            assert reason is not None and reason.startswith("CH_EAV"), symbol
        intents = journal.open_intents()
        assert intents == []  # both done, nothing left open
    finally:
        journal.close()


def test_top_up_from_an_empty_wallet_is_refused_before_signing(perp, tmp_path):
    """A keeper wallet without settlement tokens: the simulation reverts and nothing is signed."""
    manager, journal = make_manager(perp, tmp_path)
    try:
        with pytest.raises(SimulationRevert):
            manager.submit(perp.adapter.deposit_for_call(perp.addresses[1], 100 * 10**6), "top-up:empty", 10**8)
        assert perp.client.get_transaction_count(perp.addresses[2], "latest") == perp.client.get_transaction_count(
            perp.addresses[2], "pending"
        )
    finally:
        journal.close()


@pytest.mark.parametrize("buy", [True, False], ids=["buy", "sell"])
def test_depth_maths_equals_the_pools_move(perp, buy):
    """The pool's sqrtPrice after a 200,000 vUSD taker order equals the within-range maths (to 1e-9)."""
    snap = perp.adapter.read([])
    depth = snap.markets["ETH"].depth
    notional = 200_000 * E18
    predicted = sqrt_after_notional(depth, notional, buy=buy)
    perp.ops.open_position(perp.keys[MOVER], "ETH", buy, notional)
    actual = perp.ops.pools["ETH"].functions.slot0().call()[0]
    assert actual != depth.sqrt_price_x96
    assert abs(actual - predicted) <= predicted * 1e-9


def test_stale_index_is_reported(perp):
    """After 2,500 s without a round, both markets' index is older than the feed's 2,400 s timeout."""
    assert stale_markets(perp.adapter.read([]), 2_400) == []
    perp.ops.advance(2_500)
    assert sorted(stale_markets(perp.adapter.read([]), 2_400)) == ["BTC", "ETH"]


def test_deployment_record_round_trips_and_verifies(perp):
    """The deployment record survives JSON, verifies against its chain and refuses another chain id."""
    import dataclasses

    from keeper.dev.perp_v2 import PerpDeployment
    from keeper.errors import ChainMismatchError, InputError

    dep = perp.ops.deployment
    assert PerpDeployment.from_json(dep.to_json()) == dep
    dep.verify(perp.ops.w3)
    with pytest.raises(ChainMismatchError, match="chain id 1 "):
        dataclasses.replace(dep, chain_id=1).verify(perp.ops.w3)
    with pytest.raises(InputError, match="not a Perp v2 deployment: it lacks"):
        PerpDeployment.from_json('{"rpc_url": "x"}')


def test_a_market_push_drags_the_mark_below_the_index_and_the_mark_decides(perp):
    """The pool pushed 5 % down, index unchanged: 20 s later the mark has barely moved (median of TWAPs); after
    16 min it sits ~5 % below the index, and the contract values the account at the mark, as the keeper does."""
    perp.ops.move_market("ETH", 2_000.0 * 0.95)
    perp.ops.push_index("ETH", 2_000.0)
    perp.ops.advance(20)
    assert perp.adapter.read([]).markets["ETH"].premium > -0.01
    perp.ops.advance(940)  # past the 15 min premium TWAP window
    perp.ops.push_index("ETH", 2_000.0)
    snap = perp.adapter.read(watched(perp))
    eth = snap.markets["ETH"]
    assert eth.premium < -0.03  # the mark sits well below the index
    assert_keeper_equals_contract(snap)
    at_index = {**snap.marks_x18, eth.base_token: eth.index_price_x18}
    trader = perp.addresses[1].lower()  # long ETH: valued lower at the mark than at the index
    assert (
        margin_at(snap.traders[trader].account, at_index, snap.params).account_value_x18
        > snap.traders[trader].contract_account_value_x18
    )
