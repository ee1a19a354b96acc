"""The keeper's Aave arithmetic equals the real Pool's getUserAccountData to the wei (hypothesis accounts)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keeper.accounts.aave_v3 import WAD, account_data, health_factor, liquidation_price
from keeper.dev.reference import ANVIL_KEYS

pytestmark = pytest.mark.chain

TRADER = ANVIL_KEYS[3]
COLLATERALS = ("WETH", "WBTC", "USDC", "DAI")


@st.composite
def accounts(draw):
    emode = draw(st.booleans())
    coll = draw(st.lists(st.sampled_from(COLLATERALS), min_size=1, max_size=4, unique=True))
    supplies = {s: draw(st.integers(1_000, 400_000)) for s in coll}  # USD
    debt_pool = ("USDC", "DAI") if emode else ("USDC", "DAI", "WETH", "WBTC")
    debts = draw(st.lists(st.sampled_from(debt_pool), min_size=1, max_size=len(debt_pool), unique=True))
    weights = {d: draw(st.integers(1, 10)) for d in debts}
    use = draw(st.integers(30, 98))  # % of the available borrows taken
    days = draw(st.integers(0, 120))
    return emode, supplies, weights, use, days


def _open(aave, emode, supplies, weights, use) -> str:
    user = aave.address(TRADER)
    if emode:
        aave.set_emode(TRADER, 1)
    for symbol, usd in supplies.items():
        aave.supply(TRADER, symbol, usd * 10**8 * 10 ** aave.deployment.decimals[symbol] // aave.price_e8(symbol))
    available = aave.account_data(user)[2]
    total_w = sum(weights.values())
    for symbol, w in weights.items():
        base = available * use * w // (100 * total_w)
        amount = base * 10 ** aave.deployment.decimals[symbol] // aave.price_e8(symbol)
        if amount:
            aave.borrow(TRADER, symbol, amount)
    return user


def _at(aave, timestamp_s: int) -> None:
    aave.anvil.request("evm_setNextBlockTimestamp", [timestamp_s])


class TestAccountDataToTheWei:
    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=accounts())
    def test_account_data_projection_and_liquidation_price(self, aave_session, case):
        """All six getUserAccountData values match after accrual, the projection to a later block matches, and
        at the computed liquidation price P* the contract's HF is >= 1 while one unit beyond it (below for a
        collateral, above for a debt) it is < 1; when the keeper finds no P*, HF stays >= 1 at a price of 1e-8."""
        aave = aave_session
        emode, supplies, weights, use, days = case
        sid = aave.snapshot()
        try:
            user = _open(aave, emode, supplies, weights, use)
            aave.advance(days * 86_400)
            adapter = aave.adapter()
            snap = adapter.read_accounts([user])
            assert account_data(snap.accounts[user], snap.market).as_tuple() == snap.onchain[user].as_tuple()

            later = snap.market.timestamp_s + 7 * 86_400 + 13
            _at(aave, later)
            aave.anvil.request("evm_mine", [])
            snap2 = adapter.read_accounts([user])
            assert snap2.market.timestamp_s == later
            projected = account_data(snap.accounts[user], snap.market.at(later))
            assert projected.as_tuple() == snap2.onchain[user].as_tuple()

            asset = aave.token(next(iter(supplies)))
            check_at = later + 60
            p_star = liquidation_price(snap2.accounts[user], snap2.market.at(check_at), asset)
            symbol = aave.symbol_of[asset]
            # None: no price of this asset alone liquidates (the other collateral covers the debt)
            checks: tuple[tuple[int, bool], ...] = ((1, False),)
            if p_star is not None:  # collateral-like: liquidatable just below P*; debt-like: just above
                below = health_factor(snap2.accounts[user], snap2.market.at(check_at).with_price(asset, p_star - 1))
                checks = ((p_star, False), (p_star - 1 if below < WAD else p_star + 1, True))
            for price, liquidatable in checks:
                inner = aave.snapshot()
                _at(aave, check_at)
                aave.set_price(symbol, price)
                s = adapter.read_accounts([user])
                assert s.market.timestamp_s == check_at
                assert (s.onchain[user].health_factor_wad < WAD) is liquidatable, (price, s.onchain[user])
                aave.revert(inner)
        finally:
            aave.revert(sid)
