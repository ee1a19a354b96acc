"""Perp v2 account arithmetic in the pure core (keeper/accounts/perp_v2.py), checked against closed forms."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.accounts.base import LegKind
from keeper.accounts.perp_v2 import (
    Q96,
    PerpAccount,
    PerpLeg,
    PerpParams,
    PerpRules,
    PoolDepth,
    after_reduce,
    format_settlement_e6,
    free_collateral_e6,
    funding_drift_usd_per_year,
    liquidatable_size_e18,
    margin_at,
    margin_view,
    min_deposit_e6,
    min_reduction,
    moved_marks,
    mul_div_signed,
    notional_to_move_x18,
    premium_gaps,
    price_impact,
    sqrt_after_notional,
)
from keeper.decision import AccountBookState, decide_accounts
from keeper.domain import AccountActionKind
from keeper.planner import PlanLimits
from keeper.risk.policy import RiskPolicy

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


# ---- the protocol-neutral view and rules the daemon decides with -----------------------------------------

USDC = "0x" + "33" * 20
MARKS = {ETH: 2_000 * E18, BTC: 40_000 * E18}


def rules_for(*accounts: PerpAccount, premiums=None) -> PerpRules:
    return PerpRules({a.trader: a for a in accounts}, MARKS, PARAMS, USDC, premiums or {})


@settings(max_examples=300, deadline=None)
@given(
    balance=st.integers(0, 10**10),
    eth=st.integers(-(10**20), 10**20),
    btc=st.integers(-(10**19), 10**19),
    eth_move=st.floats(0.5, 1.5),
    btc_move=st.floats(0.5, 1.5),
)
def test_linear_view_equals_account_value_minus_requirement(balance, eth, btc, eth_move, btc_move):
    """M(S) of the risk engine's view = the contract's account value - requirement, to 2e-6 USD
    (the floors of the 18-to-8-decimal conversion), at any mark vector."""
    legs = (PerpLeg(ETH, eth, -eth * 2_000, 0), PerpLeg(BTC, btc, -btc * 40_000, 0))
    acct = account(balance, *legs)
    marks = moved_marks(MARKS, {ETH: eth_move, BTC: btc_move})
    view = margin_view(acct, PARAMS)
    prices_e8 = {b: m // 10**10 for b, m in marks.items()}
    exact = margin_at(acct, marks, PARAMS)
    got = view.margin_excess_e8(prices_e8) / 1e8
    want = exact.excess_x18 / 1e18
    notional = exact.total_abs_position_value_x18 / 1e18
    assert abs(got - want) <= 2e-6 + 1e-12 * notional  # value floored to 1e-6 USD by the contract, legs to 1e-8


def test_long_is_collateral_short_is_debt_weighted_by_the_maintenance_ratio():
    view = margin_view(
        account(1_000 * 10**6, PerpLeg(ETH, E18, -2_000 * E18), PerpLeg(BTC, -E18 // 10, 4_000 * E18)), PARAMS
    )
    by_asset = {leg.asset: leg for leg in view.legs}
    assert by_asset[ETH].kind is LegKind.COLLATERAL and by_asset[ETH].weight_bps == 10_000 - 625
    assert by_asset[BTC].kind is LegKind.DEBT and by_asset[BTC].weight_bps == 10_000 + 625
    assert view.cash_e8 == (1_000 - 2_000 + 4_000) * 10**8


def test_funding_drift_charges_longs_when_the_mark_is_above_the_index():
    """Premium +$10 on ETH, 2 ETH long: the trader pays 2 x 10 per day, 7,300 a year."""
    acct = account(1_000 * 10**6, PerpLeg(ETH, 2 * E18, -4_000 * E18))
    assert funding_drift_usd_per_year(acct, {ETH: 10 * E18}) == -2 * 10 * 365
    short = account(1_000 * 10**6, PerpLeg(ETH, -2 * E18, 4_000 * E18))
    assert funding_drift_usd_per_year(short, {ETH: 10 * E18}) == 2 * 10 * 365


def test_health_is_value_over_requirement_and_below_one_exactly_when_liquidatable():
    acct = account(300 * 10**6, PerpLeg(ETH, 3 * E18, -6_000 * E18))
    rules = rules_for(acct)
    m = margin_at(acct, MARKS, PARAMS)
    assert rules.health(acct.trader) == m.account_value_x18 * 10**18 // m.requirement_x18
    for price in range(1_850, 2_000, 5):
        at = {ETH: price * 10**8}
        liq = margin_at(acct, rules.marks_at(at), PARAMS).liquidatable
        assert (rules.health_at(acct.trader, at) < 10**18) == liq, price
    assert (
        rules_for(
            account(
                5,
            )
        ).health("0xt")
        == 2**256 - 1
    )  # no position: nothing to liquidate


def test_one_deposit_option_survives_the_move_and_is_the_least():
    acct = account(300 * 10**6, PerpLeg(ETH, 3 * E18, -6_000 * E18), PerpLeg(BTC, E18 // 10, -4_000 * E18))
    rules = rules_for(acct)
    survive = {ETH: 1_700 * 10**8, BTC: 36_000 * 10**8}
    options, why = rules.options(acct.trader, survive, {USDC: 10**12}, 10**12)
    assert why == [] and len(options) == 1
    opt = options[0]
    marks = rules.marks_at(survive)
    assert opt.reaches_target and opt.asset == USDC and opt.cost_e6 == opt.amount
    funded = PerpAccount(acct.trader, acct.vault_balance_e6 + opt.amount, 0, 0, acct.legs)
    short = PerpAccount(acct.trader, acct.vault_balance_e6 + opt.amount - 1, 0, 0, acct.legs)
    assert not margin_at(funded, marks, PARAMS).liquidatable and margin_at(short, marks, PARAMS).liquidatable
    # a wallet too small sends what it holds and says why
    options, why = rules.options(acct.trader, survive, {USDC: opt.amount // 2}, 10**12)
    assert options[0].amount == opt.amount // 2 and not options[0].reaches_target and "wallet holds" in why[0]
    assert rules.options(acct.trader, survive, {}, 10**12)[0] == []


def test_value_at_stake_is_the_penalty_on_every_position():
    acct = account(300 * 10**6, PerpLeg(ETH, 3 * E18, -6_000 * E18), PerpLeg(BTC, -E18 // 10, 4_000 * E18))
    assert rules_for(acct).value_at_stake_e6(acct.trader) == (6_000 + 4_000) * 25_000  # 2.5 % of $10,000, e6


def test_premium_gap_is_wider_in_a_thin_pool_and_stops_at_the_price_band():
    sqrt = int(2_000**0.5 * Q96)
    deep, thin = PoolDepth(sqrt, 10**24, 1_000), PoolDepth(sqrt, 10**23, 1_000)
    d_down, d_up = premium_gaps(deep, 100_000 * E18, 100_000)
    t_down, t_up = premium_gaps(thin, 100_000 * E18, 100_000)
    assert 0 < d_down < t_down and 0 < d_up < t_up
    assert abs(d_down + math.log1p(price_impact(deep, 100_000 * E18, buy=False))) < 1e-12
    band = math.log(1.1)
    assert premium_gaps(thin, 10**9 * E18, 100_000) == (band, band)  # EX_OPB caps what a push can do
    assert premium_gaps(deep, 0, 100_000) == (0.0, 0.0)


def test_decision_deposits_for_a_cross_margin_account_in_danger():
    """A 10x long in both markets, no round history (the 12 % fallback gap): one depositFor that survives."""
    acct = account(1_000 * 10**6, PerpLeg(ETH, 3 * E18, -6_000 * E18), PerpLeg(BTC, E18 // 10, -4_000 * E18))
    rules = rules_for(acct)
    view = rules.margin_account(acct.trader)
    state = AccountBookState(wallet={USDC: 10**12}, symbols={ETH: "ETH", BTC: "BTC", USDC: "USDC"}, decimals={USDC: 6})
    out = decide_accounts(
        [view], rules, state,
        prices_e8=rules.prices_e8, sigmas_annual={ETH: 0.8, BTC: 0.6}, policy=RiskPolicy(),
        limits=PlanLimits(10**11, 10**12), check_interval_s=60.0, correlation={(ETH, BTC): 0.8},
    )  # fmt: skip
    d = out.decision(acct.trader)
    assert d is not None and d.band == "trigger" and d.asset == USDC and d.amount > 0
    (action,) = out.onchain_actions
    assert action.kind is AccountActionKind.ADD_COLLATERAL and f"deposit {d.amount / 1e6:,.6g} USDC" in action.reason
    risk = out.risks[0]
    marks = rules.marks_at(risk.survive_prices_e8)
    funded = PerpAccount(acct.trader, acct.vault_balance_e6 + d.amount, 0, 0, acct.legs)
    assert not margin_at(funded, marks, PARAMS).liquidatable


def _pool(price: float, liquidity: int = 10**24) -> PoolDepth:
    return PoolDepth(int(price**0.5 * Q96), liquidity, 1_000)


def test_closing_a_long_realises_the_fill_less_the_fee_and_scales_the_open_notional():
    """Closing 40 % of a 3 ETH long bought for $6,000 at a $2,000 pool: quote ~ 1.2 x 2000 x (1 - 0.1 %) less
    half the impact; realised = quote - 40 % of the open notional; the rest keeps 60 % of it."""
    acct = account(300 * 10**6, PerpLeg(ETH, 3 * E18, -6_000 * E18))
    pool = _pool(2_000.0)
    r = after_reduce(acct, ETH, 400_000, pool, 2_000 * E18)
    impact = price_impact(pool, int(1.2 * 2_000 * E18), buy=False)
    expected = 1.2 * 2_000 * (1 + impact / 2) * 0.999
    assert abs(r.quote_x18 / E18 - expected) < 1e-6 and r.size_e18 == 12 * E18 // 10
    (leg,) = r.account.legs
    assert leg.size_e18 == 18 * E18 // 10 and leg.open_notional_x18 == -3_600 * E18
    assert r.account.owed_realized_pnl_x18 == r.quote_x18 - 2_400 * E18
    assert r.cost_x18 == 2_400 * E18 - r.quote_x18 > 0  # the fee and the impact, against the mark


def test_least_reduction_survives_and_one_ppm_less_does_not():
    acct = account(800 * 10**6, PerpLeg(ETH, 3 * E18, -6_000 * E18), PerpLeg(BTC, E18 // 10, -4_000 * E18))
    survive = {ETH: 1_800 * E18, BTC: 36_000 * E18}
    r = min_reduction(acct, ETH, _pool(2_000.0), MARKS, survive, PARAMS)
    assert r is not None and not margin_at(r.account, survive, PARAMS).liquidatable
    fraction = r.size_e18 * 10**6 // (3 * E18)
    less = after_reduce(acct, ETH, fraction - 1, _pool(2_000.0), MARKS[ETH])
    assert margin_at(less.account, survive, PARAMS).liquidatable
    thin = min_reduction(acct, ETH, _pool(2_000.0, 10**22), MARKS, survive, PARAMS)  # a hundredth of the depth
    assert thin is not None and thin.size_e18 > r.size_e18 and thin.cost_x18 > 5 * r.cost_x18  # costs more
    assert min_reduction(acct, ETH, _pool(2_000.0, 3 * 10**21), MARKS, survive, PARAMS) is None  # too thin


def test_reduction_is_offered_only_with_the_owners_key_and_when_the_deposit_falls_short():
    acct = account(300 * 10**6, PerpLeg(ETH, 3 * E18, -6_000 * E18))
    survive = {ETH: 1_750 * 10**8}
    depths = {ETH: _pool(2_000.0)}
    plain = PerpRules({acct.trader: acct}, MARKS, PARAMS, USDC, depths=depths)
    owned = PerpRules({acct.trader: acct}, MARKS, PARAMS, USDC, depths=depths, reducible=frozenset({acct.trader}))
    assert plain.options(acct.trader, survive, {}, 10**12)[0] == []  # no wallet, no key: nothing to do
    options, _ = owned.options(acct.trader, survive, {}, 10**12)
    assert [o.kind for o in options] == ["reduce_exposure"] and options[0].reaches_target
    funded, _ = owned.options(acct.trader, survive, {USDC: 10**12}, 10**12)
    assert [o.kind for o in funded] == ["add_collateral"]  # a deposit that reaches the target comes first


def test_free_collateral_is_curies_withdraw_rule():
    """min(collateral, value) - debt value x imRatio: a long's owed quote and a short's base value are debt."""
    acct = account(1_000 * 10**6, PerpLeg(ETH, 2 * E18, -4_000 * E18), PerpLeg(BTC, -E18 // 10, 4_000 * E18))
    marks = {ETH: 2_100 * E18, BTC: 40_000 * E18}  # ETH long +$200 (unrealised: not withdrawable)
    debt = 4_000 - 4_000 + 4_000  # net quote owed 0 (the short's +4,000 offsets), base debt 0.1 x 40,000
    assert free_collateral_e6(acct, marks, PARAMS) == (1_000 - debt * 0.1) * 10**6
    loss = {ETH: 1_900 * E18, BTC: 40_000 * E18}  # unrealised -$200 lowers it
    assert free_collateral_e6(acct, loss, PARAMS) == (1_000 - 200 - debt * 0.1) * 10**6


def test_release_only_with_the_owners_key_and_what_still_survives():
    acct = account(5_000 * 10**6, PerpLeg(ETH, E18, -2_000 * E18))  # 0.4x: far from liquidation
    survive = {ETH: 1_500 * 10**8}
    plain = PerpRules({acct.trader: acct}, MARKS, PARAMS, USDC)
    owned = PerpRules({acct.trader: acct}, MARKS, PARAMS, USDC, releasable=frozenset({acct.trader}))
    assert plain.release(acct.trader, survive, 10**12) is None
    opt = owned.release(acct.trader, survive, 10**12)
    assert opt is not None and opt.kind == "release" and opt.asset == USDC
    marks = owned.marks_at(survive)
    after = PerpAccount(acct.trader, acct.vault_balance_e6 - opt.amount, 0, 0, acct.legs)
    m = margin_at(after, marks, PARAMS)
    assert not m.liquidatable and m.account_value_x18 - m.requirement_x18 < 10**12  # to the last unit
    assert opt.amount <= free_collateral_e6(acct, MARKS, PARAMS)
    assert owned.release(acct.trader, survive, 1_000 * 10**6).amount == 1_000 * 10**6  # the per-tx cap
