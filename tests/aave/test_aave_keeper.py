"""End to end on real Aave v3: a crash liquidates the unprotected account; the keeper's top-up saves it."""

from __future__ import annotations

import pytest
from aavechain import KEEPER_KEY, LIQUIDATOR_KEY
from web3.exceptions import ContractLogicError

from keeper.accounts.aave_v3 import (
    WAD,
    after_top_up,
    cheapest_top_up,
    health_factor,
    liquidation_outcome,
    min_repay,
    min_supply,
    no_top_up_reasons,
    supply_blocker,
)
from keeper.dev.aave_v3 import SeedAccount
from keeper.dev.reference import ANVIL_KEYS
from keeper.errors import SimulationRevert

pytestmark = pytest.mark.chain

TRADER = ANVIL_KEYS[3]
LEVERED_ETH = SeedAccount((("WETH", 10.0),), (("USDC", 22_000.0),))  # HF 1.125 at $3,000
CRASH_E8 = 2_600 * 10**8  # HF 0.975 without action
TARGET = WAD * 102 // 100
STAKE_E6 = 10_000 * 10**6


def _setup(aave, account: SeedAccount = LEVERED_ETH) -> str:
    aave.open_account(TRADER, account)
    return aave.address(TRADER)


def _plan(aave, user: str, wallet: dict[str, int], crash: tuple[str, int] = ("WETH", CRASH_E8)):
    """Read the account and plan the cheapest top-up that survives the crash price."""
    adapter = aave.adapter()
    snap = adapter.read_accounts([user])
    market = snap.market.at(snap.market.timestamp_s + 30).with_price(aave.token(crash[0]), crash[1])
    held = {aave.token(s): amount for s, amount in wallet.items()}
    return adapter, snap, market, cheapest_top_up(snap.accounts[user], market, TARGET, held)


def _send(aave, adapter, tmp_path, top_up, user: str) -> None:
    """Approve and send the top-up from the keeper's wallet through the TransactionManager (signed EIP-1559)."""
    manager = aave.manager(adapter.client, tmp_path / "journal.sqlite")
    symbol = aave.symbol_of[top_up.asset]
    aave.mint(symbol, aave.address(KEEPER_KEY), top_up.amount)
    for key, call in (
        ("approve", adapter.approve_call(top_up.asset, top_up.amount)),
        (
            top_up.kind,
            (adapter.supply_call if top_up.kind == "supply" else adapter.repay_call)(top_up.asset, top_up.amount, user),
        ),
    ):
        intent = manager.submit(call, f"{key}:{user}", STAKE_E6)
        assert manager.wait(intent.id, timeout_s=30).state == "confirmed"


def _liquidation_reverts_45(aave, user: str, collateral: str = "WETH", debt: str = "USDC") -> None:
    with pytest.raises(ContractLogicError, match="45"):
        aave.liquidate(LIQUIDATOR_KEY, collateral, debt, user, 1_000 * 10 ** aave.deployment.decimals[debt])


class TestCrash:
    def test_control_run_is_liquidated_and_seizure_is_as_computed(self, aave):
        """Without the keeper the crash makes liquidationCall succeed, seizing exactly the collateral computed."""
        user = _setup(aave)
        aave.set_price("WETH", CRASH_E8)
        snap = aave.adapter().read_accounts([user])
        assert snap.onchain[user].health_factor_wad < WAD
        cover = 5_000 * 10**6
        expected = liquidation_outcome(snap.accounts[user], snap.market, aave.token("WETH"), aave.token("USDC"), cover)
        liquidator = aave.address(LIQUIDATOR_KEY)
        before = aave.erc20["WETH"].functions.balanceOf(liquidator).call()
        assert aave.liquidate(LIQUIDATOR_KEY, "WETH", "USDC", user, cover)["status"] == 1
        got = aave.erc20["WETH"].functions.balanceOf(liquidator).call() - before
        # 5,000 USDC at $2,600/ETH with a 5 % bonus, 10 % of the bonus to the treasury
        assert expected.close_factor_bps == 5_000 and expected.debt_covered == cover
        assert got == expected.collateral_to_liquidator

    def test_debt_only_wallet_repays_and_survives(self, aave, tmp_path):
        """A keeper holding only USDC repays on behalf; after the crash liquidationCall reverts 45."""
        user = _setup(aave)
        adapter, _snap, _market, top_up = _plan(aave, user, {"USDC": 10**12})
        assert top_up is not None and top_up.kind == "repay" and top_up.asset == aave.token("USDC")
        _send(aave, adapter, tmp_path, top_up, user)
        aave.set_price("WETH", CRASH_E8)
        assert aave.account_data(user)[5] >= TARGET
        _liquidation_reverts_45(aave, user)

    def test_collateral_only_wallet_supplies_and_survives(self, aave, tmp_path):
        """A keeper holding only WETH supplies on behalf; the trader's HF holds above the target after the crash."""
        user = _setup(aave)
        adapter, _snap, _market, top_up = _plan(aave, user, {"WETH": 10**24})
        assert top_up is not None and top_up.kind == "supply" and top_up.asset == aave.token("WETH")
        _send(aave, adapter, tmp_path, top_up, user)
        aave.set_price("WETH", CRASH_E8)
        assert aave.account_data(user)[5] >= TARGET
        _liquidation_reverts_45(aave, user)

    def test_both_in_wallet_picks_the_cheaper(self, aave, tmp_path):
        """With USDC and WETH in the wallet the repay (cheaper per unit of HF while HF > LT) is chosen."""
        user = _setup(aave)
        adapter, snap, market, top_up = _plan(aave, user, {"USDC": 10**12, "WETH": 10**24})
        acc = snap.accounts[user]
        supply_units = min_supply(acc, market, aave.token("WETH"), TARGET)
        repay_units = min_repay(acc, market, aave.token("USDC"), TARGET)
        assert supply_units and repay_units
        supply_usd = supply_units * CRASH_E8 // 10**18
        repay_usd = repay_units * 10**8 // 10**6
        assert top_up is not None and top_up.kind == "repay" and top_up.cost_base == repay_usd < supply_usd
        _send(aave, adapter, tmp_path, top_up, user)
        aave.set_price("WETH", CRASH_E8)
        _liquidation_reverts_45(aave, user)

    def test_minimum_amounts_are_minimal(self, aave, tmp_path):
        """The computed repay reaches the target HF on chain and one unit less would not (exact integer minimum)."""
        user = _setup(aave)
        adapter, snap, market, top_up = _plan(aave, user, {"USDC": 10**12})
        assert top_up is not None
        acc = snap.accounts[user]
        less = after_top_up(acc, market, top_up.asset, repay=top_up.amount - 1)
        assert health_factor(less, market) < TARGET
        aave.anvil.request("evm_setNextBlockTimestamp", [market.timestamp_s - 28])
        _send(aave, adapter, tmp_path, top_up, user)
        aave.anvil.request("evm_setNextBlockTimestamp", [market.timestamp_s])
        aave.set_price("WETH", CRASH_E8)
        assert aave.account_data(user)[5] >= TARGET

    def test_empty_or_short_wallet_alerts_with_the_cause(self, aave):
        """No top-up from an empty wallet (cause: holds nothing) or a too small one (cause: needs X, holds Y)."""
        user = _setup(aave)
        _, snap, market, top_up = _plan(aave, user, {})
        assert top_up is None
        assert no_top_up_reasons(snap.accounts[user], market, TARGET, {}) == [
            "the keeper's wallet holds none of the pool's assets"
        ]
        _, snap, market, top_up = _plan(aave, user, {"USDC": 10**6})
        assert top_up is None
        reasons = no_top_up_reasons(snap.accounts[user], market, TARGET, {aave.token("USDC"): 10**6})
        assert any("repay" in r and "needs" in r and "holds 1000000" in r for r in reasons)


class TestReserveStates:
    @pytest.mark.parametrize("state, code", [("frozen", "28"), ("paused", "29")])
    def test_frozen_or_paused_reserve_is_not_supplied_to(self, aave, tmp_path, state, code):
        """A frozen/paused collateral reserve is not chosen (the reason names the state) and the pool agrees."""
        user = _setup(aave)
        (aave.set_frozen if state == "frozen" else aave.set_paused)("WETH", True)
        adapter, snap, market, top_up = _plan(aave, user, {"WETH": 10**24})
        assert top_up is None
        reason = supply_blocker(snap.accounts[user], market, aave.token("WETH"))
        assert reason is not None and state in reason and code in reason
        assert any(
            state in r for r in no_top_up_reasons(snap.accounts[user], market, TARGET, {aave.token("WETH"): 10**24})
        )
        manager = aave.manager(adapter.client, tmp_path / "journal.sqlite")
        aave.mint("WETH", aave.address(KEEPER_KEY), 10**18)
        manager.wait(manager.submit(adapter.approve_call(aave.token("WETH"), 10**18), "approve", STAKE_E6).id)
        with pytest.raises(SimulationRevert, match=f"{code} RESERVE_(FROZEN|PAUSED)"):
            manager.submit(adapter.supply_call(aave.token("WETH"), 10**18, user), "supply", STAKE_E6)


class TestEModeAndIsolation:
    def test_emode_account_uses_category_threshold_and_is_saved(self, aave, tmp_path):
        """An e-mode stablecoin account (LT 95 %) endangered by DAI at $1.07 is saved by a DAI repay."""
        user = _setup(aave, SeedAccount((("USDC", 100_000.0),), (("DAI", 90_000.0),), emode=1))
        assert aave.account_data(user)[3] == 9500
        crash = ("DAI", 107 * 10**6)
        adapter, _snap, _market, top_up = _plan(aave, user, {"DAI": 10**24}, crash)
        assert top_up is not None and top_up.kind == "repay"
        _send(aave, adapter, tmp_path, top_up, user)
        aave.set_price(*crash)
        assert aave.account_data(user)[5] >= TARGET
        _liquidation_reverts_45(aave, user, "USDC", "DAI")

    def test_isolated_account_gets_no_new_collateral_asset(self, aave, tmp_path):
        """In isolation mode a USDC supply on behalf adds no collateral (keeper and pool agree); LINK does."""
        user = _setup(aave, SeedAccount((("LINK", 5_000.0),), (("USDC", 30_000.0),)))
        crash = ("LINK", 85 * 10**7)  # $8.50: HF 0.963
        adapter, snap, market, top_up = _plan(aave, user, {"USDC": 0, "LINK": 10**24}, crash)
        reason = supply_blocker(snap.accounts[user], market, aave.token("USDC"))
        assert reason is not None and "isolation" in reason
        before = aave.account_data(user)
        aave.mint("USDC", aave.address(KEEPER_KEY), 10**9)
        manager = aave.manager(adapter.client, tmp_path / "j.sqlite")
        for key, call in (
            ("a", adapter.approve_call(aave.token("USDC"), 10**9)),
            ("s", adapter.supply_call(aave.token("USDC"), 10**9, user)),
        ):
            assert manager.wait(manager.submit(call, key, STAKE_E6).id).state == "confirmed"
        assert aave.account_data(user)[0] == before[0]  # 1,000 USDC landed as aTokens, not as collateral
        assert top_up is not None and top_up.kind == "supply" and top_up.asset == aave.token("LINK")
        _send(aave, adapter, tmp_path, top_up, user)
        aave.set_price(*crash)
        assert aave.account_data(user)[5] >= TARGET
        _liquidation_reverts_45(aave, user, "LINK", "USDC")
