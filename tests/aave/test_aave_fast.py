"""The book-wide fast path of the Aave arithmetic equals the contract mirror (pure, no chain).

``account_data_fast`` / ``margin_account_fast`` (each reserve's constants computed once per read) against
:func:`account_data` / :func:`margin_account`, and the closed-form ``min_supply`` / ``min_repay`` against the
bracketed search on ``after_top_up`` + ``account_data`` they replaced (kept here as the oracle), on generated
markets: several reserves, decimals 6-18, e-mode with and without a price source, interest accrued, stable
debt, LT-0 and LTV-0 reserves, supplies of an asset whose LT is below the account's average (where the
floored average LT makes the health factor saw-toothed: the closed form finds the first crossing, checked
against every smaller amount on whole-token examples).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.accounts import aave_v3 as av
from keeper.accounts.aave_v3 import (
    RAY,
    WAD,
    AaveAccount,
    AaveRules,
    EModeCategory,
    Market,
    MarketTerms,
    ReserveState,
    UserReserve,
    account_data,
    account_data_fast,
    after_top_up,
    decode_reserve_configuration,
    health_factor,
    margin_account,
    margin_account_fast,
)

ASSETS = ("WETH", "WBTC", "USDC", "DAI", "LINK")


def _old_min_supply(account: AaveAccount, market: Market, asset: str, target: int) -> int | None:
    """min_supply as it was: the bracketed search on after_top_up + account_data (the oracle)."""
    if av.supply_blocker(account, market, asset) is not None:
        return None

    def hf(a: int) -> int:
        return health_factor(after_top_up(account, market, asset, add_collateral=a, enable_collateral=True), market)

    d = account_data(account, market)
    cfg = market.reserves[asset].config
    lt = av._lt_of(account, market, asset)
    price = av.asset_price(account, market, asset)
    need_base = d.total_debt_base * target // WAD
    hi = max(1, (need_base * 10_000 // max(lt, 1) + 1) * 10**cfg.decimals // price + 1)
    for _ in range(64):
        if hf(hi) >= target:
            break
        hi *= 2
    have = d.total_collateral_base * d.current_liquidation_threshold_bps // 10_000
    guess = max(1, (need_base - have) * 10_000 // max(lt, 1) * 10**cfg.decimals // price)
    return av._min_amount(hf, target, hi, guess)


def _old_min_repay(account: AaveAccount, market: Market, asset: str, target: int) -> int | None:
    if av.repay_blocker(account, market, asset) is not None:
        return None
    ur = account.reserve(asset)
    assert ur is not None
    debt = av.ray_mul(ur.scaled_variable_debt, market.reserves[asset].normalized_debt(market.timestamp_s))
    d = account_data(account, market)
    price = av.asset_price(account, market, asset)
    allowed = av.percent_mul(d.total_collateral_base, d.current_liquidation_threshold_bps) * WAD // target
    unit = 10 ** market.reserves[asset].config.decimals
    guess = (d.total_debt_base - allowed) * unit // price if price > 0 else None
    return av._min_amount(
        lambda r: health_factor(after_top_up(account, market, asset, repay=r), market), target, debt, guess
    )


@st.composite
def books(draw):
    """A market of 2-5 reserves (one e-mode category over the stablecoins) and one account on it."""
    n = draw(st.integers(2, 5))
    now = draw(st.integers(0, 200 * 86_400))
    reserves, prices = {}, {}
    for rid, asset in enumerate(ASSETS[:n]):
        decimals = draw(st.sampled_from((6, 8, 18)))
        lt = draw(st.sampled_from((0, 5_000, 7_800, 8_000, 8_250, 8_600)))
        ltv = 0 if lt == 0 else draw(st.sampled_from((0, lt - 500)))
        bitmap = ltv | lt << 16 | 10_500 << 32 | decimals << 48 | 1 << 56 | 1 << 58
        if asset in ("USDC", "DAI"):
            bitmap |= 1 << 168  # e-mode category 1
        reserves[asset] = ReserveState(
            asset,
            decode_reserve_configuration(bitmap),
            draw(st.integers(RAY, 13 * RAY // 10)),
            draw(st.integers(0, RAY // 5)),
            draw(st.integers(RAY, 15 * RAY // 10)),
            draw(st.integers(0, RAY // 3)),
            draw(st.integers(0, now)),
            rid,
        )
        prices[asset] = draw(st.integers(10**6, 10**13))
    source = draw(st.sampled_from(("", "SRC")))
    if source:
        prices["SRC"] = draw(st.integers(9 * 10**7, 11 * 10**7))
    emodes = {1: EModeCategory(1, 9_300, 9_500, 10_100, source)}
    users = []
    for asset in ASSETS[:n]:
        coll, borrow = draw(st.booleans()), draw(st.booleans())
        if not (coll or borrow or draw(st.booleans())):
            continue
        unit = 10 ** reserves[asset].config.decimals
        users.append(
            UserReserve(
                asset,
                draw(st.integers(0, 10**6)) * unit // 100 if coll else 0,
                draw(st.integers(1, 10**6)) * unit // 200 if borrow else 0,
                draw(st.sampled_from((0, 0, unit * 7))) if borrow else 0,
                coll,
                borrow,
            )
        )
    account = AaveAccount("0xa", draw(st.sampled_from((0, 0, 1))), tuple(users))
    return Market(reserves, prices, emodes, now), account


@settings(max_examples=300, deadline=None)
@given(book=books())
def test_fast_account_data_and_view_equal_the_contract_mirror(book):
    market, account = book
    terms = MarketTerms(market, account.emode_category)
    assert account_data_fast(account, terms) == account_data(account, market)
    assert margin_account_fast(account, terms, 7) == margin_account(account, market, 7)
    rules = AaveRules({"0xa": account}, market)
    assert rules.health("0xa") == health_factor(account, market)
    assert rules.margin_account("0xa", 7) == margin_account(account, market, 7)
    # the view first: its pass keeps the health factor the decision asks next (the same integers)
    viewed = AaveRules({"0xa": account}, market)
    assert viewed.margin_account("0xa", 7) == margin_account(account, market, 7)
    assert viewed._hf == {"0xa": health_factor(account, market)}
    assert viewed.health("0xa") == health_factor(account, market)


@settings(max_examples=300, deadline=None)
@given(book=books(), x=st.integers(0, 10**24), target=st.integers(WAD // 2, 3 * WAD))
def test_curves_equal_after_top_up_and_closed_forms_equal_the_search(book, x, target):
    market, account = book
    terms = MarketTerms(market, account.emode_category)
    for ur in account.reserves:
        asset = ur.asset
        if av.supply_blocker(account, market, asset) is None:
            curve = av._SupplyCurve(account, terms, asset)
            for amount in (0, 1, x, x // 10**9):
                up = after_top_up(account, market, asset, add_collateral=amount, enable_collateral=True)
                assert curve.hf(amount) == health_factor(up, market)
            got = av.min_supply(account, market, asset, target)
            old = _old_min_supply(account, market, asset, target)
            if curve.t.lt * curve.c0 >= curve.l0:  # the HF only rises with the supply: one answer
                assert got == old
            else:  # saw-toothed: the search stops at a crossing, the closed form at the first one
                assert (got is None) == (old is None)
                if got is not None and old is not None:
                    assert got <= old and curve.hf(got) >= target and (got == 0 or curve.hf(got - 1) < target)
        if av.repay_blocker(account, market, asset) is None:
            curve_r = av._RepayCurve(account, terms, asset)
            for amount in (0, 1, x, x // 10**9, curve_r.variable, curve_r.variable - 1):
                assert curve_r.hf(amount) == health_factor(after_top_up(account, market, asset, repay=amount), market)
            assert av.min_repay(account, market, asset, target) == _old_min_repay(account, market, asset, target)


@settings(max_examples=60, deadline=None)
@given(
    weth=st.integers(1, 40),
    debt=st.integers(10, 2_000),
    price=st.integers(10**7, 10**9),
    target=st.integers(WAD, 2 * WAD),
)
def test_supply_below_the_average_lt_is_the_first_crossing(weth, debt, price, target):
    """A whole-token asset (0 decimals, LT 50 %) supplied to an account of a 2-decimal collateral at LT 86 %:
    the floored average LT falls by one bp at a time and the HF saw-tooths. Every amount below the answer is
    tried: none reaches the target, the answer does."""
    cfg = {"COLL": (8_000, 8_600, 2), "TOKEN": (4_000, 5_000, 0), "DEBT": (7_700, 8_000, 2)}
    reserves = {
        a: ReserveState(a, decode_reserve_configuration(ltv | lt << 16 | d << 48 | 1 << 56), RAY, 0, RAY, 0, 0, i)
        for i, (a, (ltv, lt, d)) in enumerate(cfg.items())
    }
    market = Market(reserves, {"COLL": 10**8, "TOKEN": price, "DEBT": 10**8}, {}, 0)
    account = AaveAccount(
        "0xa",
        0,
        (UserReserve("COLL", weth * 100, 0, 0, True, False), UserReserve("DEBT", 0, debt * 100, 0, False, True)),
    )
    got = av.min_supply(account, market, "TOKEN", target)
    curve = av._SupplyCurve(account, MarketTerms(market, 0), "TOKEN")
    assert got is not None and got < 10**5
    assert curve.hf(got) >= target and all(curve.hf(x) < target for x in range(got))


def test_supply_below_the_average_lt():
    """USDC (LT 80 %) supplied to a WETH account (LT 82.5 %): the average LT falls as USDC is added; the answer
    is minimal at the exact HF and no more than the bracketed search's."""
    cfg = {"WETH": (8000, 8250, 18), "USDC": (7700, 8000, 6)}
    reserves = {
        a: ReserveState(a, decode_reserve_configuration(ltv | lt << 16 | d << 48 | 1 << 56), RAY, 0, RAY, 0, 0, i)
        for i, (a, (ltv, lt, d)) in enumerate(cfg.items())
    }
    market = Market(reserves, {"WETH": 3_000 * 10**8, "USDC": 10**8}, {}, 0)
    account = AaveAccount(
        "0xa",
        0,
        (UserReserve("WETH", 10 * 10**18, 0, 0, True, False), UserReserve("USDC", 0, 26_000 * 10**6, 0, False, True)),
    )
    got = av.min_supply(account, market, "USDC", WAD)
    old = _old_min_supply(account, market, "USDC", WAD)
    assert got is not None and old is not None and got <= old
    up = after_top_up(account, market, "USDC", add_collateral=got, enable_collateral=True)
    down = after_top_up(account, market, "USDC", add_collateral=got - 1, enable_collateral=True)
    assert health_factor(up, market) >= WAD > health_factor(down, market)


def _old_stake(account: AaveAccount, market: Market) -> int:
    """AaveRules.value_at_stake_e6 as it was: liquidation_outcome per (collateral, debt) pair."""
    best = 0
    for c in [r.asset for r in account.reserves if r.using_as_collateral]:
        for d in [r.asset for r in account.reserves if r.borrowing]:
            out = av.liquidation_outcome(account, market, c, d)
            unit_c = 10 ** market.reserves[c].config.decimals
            seized = (out.collateral_to_liquidator + out.protocol_fee_collateral) * av.asset_price(account, market, c)
            repaid = out.debt_covered * av.asset_price(account, market, d)
            best = max(best, (seized // unit_c - repaid // 10 ** market.reserves[d].config.decimals) // 100)
    return best


@settings(max_examples=200, deadline=None)
@given(book=books(), move=st.floats(0.5, 1.5), budget=st.integers(0, 10**12))
def test_rules_stake_moved_health_and_options_equal_the_contract_mirror(book, move, budget):
    market, account = book
    rules = AaveRules({"0xa": account}, market)
    assert rules.value_at_stake_e6("0xa") == _old_stake(account, market)
    moved = {a: max(1, int(p * move)) for a, p in list(market.prices_e8.items())[:2]}
    stressed = Market(market.reserves, {**market.prices_e8, **moved}, market.emode_categories, market.timestamp_s)
    assert rules.health_at("0xa", moved) == health_factor(account, stressed)
    wallet = {ur.asset: 10**30 for ur in account.reserves}
    options, _ = rules.options("0xa", moved, wallet, budget)
    for o in options:
        supply = o.kind == "add_collateral"
        after = after_top_up(
            account,
            stressed,
            o.asset,
            add_collateral=o.amount if supply else 0,
            repay=0 if supply else o.amount,
            enable_collateral=supply,
        )
        assert o.health_after == health_factor(after, stressed)
