"""Perp v2 account arithmetic in the pure core (keeper/accounts/perp_v2.py), checked against closed forms."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.accounts.perp_v2 import (
    Q96,
    PerpAccount,
    PerpLeg,
    PerpParams,
    PoolDepth,
    format_settlement_e6,
    liquidatable_size_e18,
    margin_at,
    min_deposit_e6,
    moved_marks,
    mul_div_signed,
    notional_to_move_x18,
    price_impact,
    sqrt_after_notional,
)

PARAMS = PerpParams(mm_ratio_e6=62_500, im_ratio_e6=100_000, liquidation_penalty_ratio_e6=25_000)
ETH, BTC = "0x" + "11" * 20, "0x" + "22" * 20
E18 = 10**18


def account(balance_e6: int, *legs: PerpLeg) -> PerpAccount:
    return PerpAccount("0xt", balance_e6, 0, 0, tuple(legs))


def test_signed_mul_div_truncates_toward_zero_and_settlement_format_floors():
    """PerpMath.mulDiv rounds the magnitude down (-10, not -11); formatSettlementToken rounds toward -inf."""
    assert mul_div_signed(-7, 3, 2) == -10 and mul_div_signed(7, -3, 2) == -10 and mul_div_signed(7, 3, 2) == 10
    assert format_settlement_e6(-1) == -1 and format_settlement_e6(10**12 - 1) == 0
    assert format_settlement_e6(-(10**12)) == -1


def test_account_value_and_requirement_by_hand():
    """1,000 USDC, long 4.5 ETH bought for 9,000 vUSD, mark 1,830: value 1000 + 8235 - 9000; requirement 6.25 %."""
    acct = account(1_000 * 10**6, PerpLeg(ETH, 45 * E18 // 10, -9_000 * E18, 0))
    m = margin_at(acct, {ETH: 1_830 * E18}, PARAMS)
    assert m.account_value_x18 == 235 * E18
    assert m.requirement_x18 == 8_235 * E18 * 62_500 // 10**6
    assert m.liquidatable is True and m.excess_x18 == 235 * E18 - m.requirement_x18


def test_cross_margin_nets_legs_and_funding_is_a_debit():
    """A BTC short's gain offsets an ETH long's loss in one account value; pending funding reduces it."""
    legs = (PerpLeg(ETH, 2 * E18, -4_000 * E18, 3 * E18), PerpLeg(BTC, -E18 // 10, 4_000 * E18, -E18))
    m = margin_at(account(500 * 10**6, *legs), {ETH: 1_900 * E18, BTC: 38_000 * E18}, PARAMS)
    # ETH: 3800 - 4000 = -200; BTC: -3800 + 4000 = +200; funding -3 + 1
    assert m.account_value_x18 == 500 * E18 - 2 * E18
    assert m.requirement_x18 == (3_800 + 3_800) * E18 * 62_500 // 10**6


@settings(max_examples=300, deadline=None)
@given(
    balance=st.integers(0, 10**10),
    size=st.integers(-(10**20), 10**20).filter(lambda s: abs(s) > 10),
    entry=st.integers(1_000, 4_000),
    mark=st.integers(500 * E18, 5_000 * E18),
    target=st.integers(0, 1_000 * E18),
)
def test_min_deposit_is_the_smallest_that_restores_the_target(balance, size, entry, mark, target):
    """After min_deposit_e6 the excess is >= target; one unit less and it is not (or the deposit is 0)."""
    acct = account(balance, PerpLeg(ETH, size, -size * entry, 0))
    d = min_deposit_e6(acct, {ETH: mark}, PARAMS, target)
    after = margin_at(account(balance + d, *acct.legs), {ETH: mark}, PARAMS)
    assert after.excess_x18 >= target
    if d > 0:
        assert margin_at(account(balance + d - 1, *acct.legs), {ETH: mark}, PARAMS).excess_x18 < target


def test_liquidatable_size_whole_below_half_requirement_partial_above():
    """Below half the requirement the whole leg goes; between half and all of it, half the total value's worth."""
    legs = (PerpLeg(ETH, 4 * E18, -8_000 * E18, 0), PerpLeg(BTC, E18 // 10, -4_000 * E18, 0))
    marks = {ETH: 2_000 * E18, BTC: 40_000 * E18}  # values 8,000 + 4,000; requirement 750
    healthy = account(800 * 10**6, *legs)
    assert liquidatable_size_e18(healthy, ETH, marks, PARAMS) == 0
    partial = account(500 * 10**6, *legs)  # 375 <= 500 < 750
    assert liquidatable_size_e18(partial, ETH, marks, PARAMS) == 4 * E18 * 750_000 // 10**6  # 12000/(2*8000)
    assert liquidatable_size_e18(partial, BTC, marks, PARAMS) == E18 // 10  # ratio capped at 100 %
    assert liquidatable_size_e18(account(300 * 10**6, *legs), ETH, marks, PARAMS) == 4 * E18


def test_moved_marks_scale_only_named_bases():
    """moved_marks multiplies the named marks and keeps the others."""
    assert moved_marks({ETH: 2_000 * E18, BTC: 40_000 * E18}, {ETH: 0.9}) == {ETH: 1_800 * E18, BTC: 40_000 * E18}


@settings(max_examples=200, deadline=None)
@given(price=st.floats(100, 100_000), liquidity=st.integers(10**18, 10**26), move=st.floats(-0.3, 0.3))
def test_depth_inverse_round_trips(price, liquidity, move):
    """notional_to_move then sqrt_after_notional lands on the requested move (to 1e-6 of the price)."""
    sqrt = int((price**0.5) * Q96)
    depth = PoolDepth(sqrt, liquidity, 1_000)
    notional = notional_to_move_x18(depth, move)
    if notional == 0:
        return
    got = price_impact(depth, notional, buy=move > 0)
    assert abs(got - move) < 1e-6 * (1 + abs(move))


def test_thin_pool_moves_more_than_a_deep_one():
    """The same 100,000 vUSD sell pushes a pool with a tenth of the liquidity about ten times as far."""
    sqrt = int(2_000**0.5 * Q96)
    deep, thin = PoolDepth(sqrt, 10**24, 1_000), PoolDepth(sqrt, 10**23, 1_000)
    d, t = price_impact(deep, 100_000 * E18, buy=False), price_impact(thin, 100_000 * E18, buy=False)
    assert d < 0 and t < 0 and 9 < t / d < 11
    assert sqrt_after_notional(deep, 0, buy=True) == sqrt
