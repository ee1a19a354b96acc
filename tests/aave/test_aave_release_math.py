"""The release arithmetic (pure, no chain): ``AaveRules.release`` against the contract mirror.

On the generated books of test_aave_fast (several reserves, decimals 6-18, e-mode, interest, LT-0 and LTV-0
reserves): the withdraw the rules offer passes the Pool's rules (``withdraw_blocker``, the exact health factor
after :func:`after_withdraw` at least 1 at today's prices) and survives the stress prices, one unit more fails
one of them (unless the amount is the whole balance or the USD cap), and its health figure is the mirror's.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from test_aave_fast import books

from keeper.accounts import aave_v3 as av
from keeper.accounts.aave_v3 import WAD, AaveAccount, AaveRules, Market, UserReserve, after_withdraw, health_factor


def _passes(account: AaveAccount, today: Market, stressed: Market, asset: str, amount: int) -> bool:
    """The Pool accepts ``withdraw(asset, amount)`` (its health-factor check) and the account survives the
    stress prices after it: the mirror's answer."""
    return all(health_factor(after_withdraw(account, m, asset, amount), m) >= WAD for m in (today, stressed))


@settings(max_examples=300, deadline=None)
@given(book=books(), move=st.floats(0.5, 1.0), cap_e6=st.sampled_from((10**18, 10**9, 10**6)))
def test_release_is_the_boundary_of_the_pools_rule_and_the_survival(book, move, cap_e6):
    market, account = book
    survive = {a: max(1, int(p * move)) for a, p in list(market.prices_e8.items())[:2]}
    stressed = replace(market, prices_e8={**market.prices_e8, **survive})
    assert AaveRules({"0xa": account}, market).release("0xa", survive, cap_e6) is None  # not the owner's key
    rules = AaveRules({"0xa": account}, market, releasable=frozenset({"0xa"}))
    opt = rules.release("0xa", survive, cap_e6)
    if opt is None:
        return
    assert opt.kind == "release" and opt.amount > 0 and opt.cost_e6 <= cap_e6
    assert av.withdraw_blocker(account, market, opt.asset) is None
    assert _passes(account, market, stressed, opt.asset, opt.amount)
    after = after_withdraw(account, stressed, opt.asset, opt.amount)
    assert opt.health_after == health_factor(after, stressed)
    ur = account.reserve(opt.asset)
    assert ur is not None and ur.using_as_collateral
    balance = ur.collateral_balance(market.reserves[opt.asset], market.timestamp_s)
    unit = 10 ** market.reserves[opt.asset].config.decimals
    capped = opt.amount == cap_e6 * 100 * unit // av.asset_price(account, market, opt.asset)  # the cap in units
    if opt.amount < balance and not capped:
        assert not _passes(account, market, stressed, opt.asset, opt.amount + 1)


def _market(ltv_weth: int = 8_000, ltv_wbtc: int = 7_300) -> Market:
    cfg = {"WETH": (ltv_weth, 8_250, 18), "WBTC": (ltv_wbtc, 7_800, 8), "USDC": (7_700, 8_000, 6)}
    reserves = {
        a: av.ReserveState(
            a, av.decode_reserve_configuration(ltv | lt << 16 | d << 48 | 1 << 56), av.RAY, 0, av.RAY, 0, 0, i
        )
        for i, (a, (ltv, lt, d)) in enumerate(cfg.items())
    }
    return Market(reserves, {"WETH": 3_000 * 10**8, "WBTC": 60_000 * 10**8, "USDC": 10**8}, {}, 0)


ACCOUNT = AaveAccount(
    "0xa",
    0,
    (
        UserReserve("WETH", 10 * 10**18, 0, 0, True, False),
        UserReserve("WBTC", 5 * 10**7, 0, 0, True, False),
        UserReserve("USDC", 0, 30_000 * 10**6, 0, False, True),
    ),
)


def test_single_asset_closed_form_and_the_whole_balance():
    """10 WETH and 0.5 WBTC against $30,000: at today's prices WBTC's withdraw is worth most (HF >= 1 leaves
    24,750 + 46,800 (0.5 - y) >= 30,000, within the floored average LT's bp of the exact answer); no amount
    up to 20,000 units above the answer passes (WBTC's LT is below WETH's: the health factor saw-tooths). With
    little debt the whole balance goes and the collateral flag is cleared."""
    market = _market()
    rules = AaveRules({"0xa": ACCOUNT}, market, releasable=frozenset({"0xa"}))
    opt = rules.release("0xa", {}, 10**15)
    assert opt is not None and opt.asset == "WBTC"
    assert abs(opt.amount - (5 * 10**7 - 5_250 * 10**8 // 46_800)) <= 48_150 * 10**8 // 10**4 // 60_000  # 1 bp
    assert _passes(ACCOUNT, market, market, "WBTC", opt.amount)
    assert not any(_passes(ACCOUNT, market, market, "WBTC", x) for x in range(opt.amount + 1, opt.amount + 20_001))
    flat = replace(ACCOUNT, reserves=(*ACCOUNT.reserves[:2], UserReserve("USDC", 0, 10**6, 0, False, True)))
    whole = AaveRules({"0xa": flat}, market, releasable=frozenset({"0xa"})).release("0xa", {}, 10**15)
    # all 0.5 WBTC: worth the 10 WETH's $30,000, and it leaves the higher health factor (WETH's LT is higher)
    assert whole is not None and whole.asset == "WBTC" and whole.amount == 5 * 10**7
    gone = after_withdraw(flat, market, "WBTC", whole.amount).reserve("WBTC")
    assert gone is not None and not gone.using_as_collateral


def test_ltv_zero_collateral_allows_only_its_own_withdraw():
    """WBTC at LTV 0 (still LT 78 %): ``validateHFAndLtv`` refuses any WETH withdraw (57); WBTC can go."""
    market = _market(ltv_wbtc=0)
    why = av.withdraw_blocker(ACCOUNT, market, "WETH")
    assert why is not None and "LTV 0" in why and "57" in why
    assert av.withdraw_blocker(ACCOUNT, market, "WBTC") is None
    opt = AaveRules({"0xa": ACCOUNT}, market, releasable=frozenset({"0xa"})).release("0xa", {}, 10**15)
    assert opt is not None and opt.asset == "WBTC"
    assert av.account_data(after_withdraw(ACCOUNT, market, "WBTC", opt.amount), market).health_factor_wad >= WAD


def test_paused_blocks_frozen_does_not_and_the_cap_bounds_the_amount():
    market = _market()
    frozen = replace(market.reserves["WETH"], config=replace(market.reserves["WETH"].config, frozen=True))
    paused = replace(market.reserves["WETH"], config=replace(market.reserves["WETH"].config, paused=True))
    assert av.withdraw_blocker(ACCOUNT, replace(market, reserves={**market.reserves, "WETH": frozen}), "WETH") is None
    why = av.withdraw_blocker(ACCOUNT, replace(market, reserves={**market.reserves, "WETH": paused}), "WETH")
    assert why is not None and "29" in why
    rules = AaveRules({"0xa": ACCOUNT}, market, releasable=frozenset({"0xa"}))
    small = rules.release("0xa", {}, 1_000 * 10**6)
    assert small is not None and small.cost_e6 <= 1_000 * 10**6 and small.cost_e6 > 999 * 10**6


SAW = {"COLL": (8_000, 8_600, 2), "TOKEN": (4_000, 5_000, 0), "DEBT": (7_700, 8_000, 2)}
SAW_RESERVES = {
    a: av.ReserveState(
        a, av.decode_reserve_configuration(ltv | lt << 16 | d << 48 | 1 << 56), av.RAY, 0, av.RAY, 0, 0, i
    )
    for i, (a, (ltv, lt, d)) in enumerate(SAW.items())
}


def _saw(coll: int, tokens: int, debt: int, price: int) -> tuple[AaveAccount, Market]:
    """A whole-token asset (0 decimals, LT 50 %) beside a 2-decimal collateral at LT 86 %: withdrawing the token
    raises the floored average LT one bp at a time and the health factor saw-tooths."""
    market = Market(SAW_RESERVES, {"COLL": 10**8, "TOKEN": price, "DEBT": 10**8}, {}, 0)
    account = AaveAccount(
        "0xa",
        0,
        (
            UserReserve("COLL", coll * 100, 0, 0, True, False),
            UserReserve("TOKEN", tokens, 0, 0, True, False),
            UserReserve("DEBT", 0, debt, 0, False, True),
        ),
    )
    return account, market


@settings(max_examples=60, deadline=None)
@given(
    coll=st.integers(1, 4_000),
    tokens=st.integers(1, 30_000),
    debt=st.integers(100, 3_000_000),
    price=st.integers(10**5, 10**9),
    move=st.floats(0.6, 1.0),
)
def test_the_largest_withdraw_is_exact_where_the_health_factor_saw_tooths(coll, tokens, debt, price, move):
    """Every larger amount is tried at today's and at the stress prices (on the curves, which equal the mirror:
    the answer itself is checked on the mirror): none passes both, the answer does."""
    account, market = _saw(coll, tokens, debt, price)
    stressed = replace(market, prices_e8={**market.prices_e8, "TOKEN": max(1, int(price * move))})
    if not _passes(account, market, stressed, "TOKEN", 0):
        return
    curves = tuple(av._WithdrawCurve(account, av.MarketTerms(m, 0), "TOKEN") for m in (market, stressed))
    got = av._largest_withdraw(curves, tokens)
    assert _passes(account, market, stressed, "TOKEN", got)
    assert not any(all(c.hf(x) >= WAD for c in curves) for x in range(got + 1, tokens + 1))


def test_past_the_first_failure_a_larger_withdraw_passes_again():
    """1,064 COLL ($1, LT 86 %) and 13,065 TOKEN ($1.47988598, LT 50 %) against 8,497.64 DEBT: the health
    factor falls below 1 at
    2,816 tokens withdrawn and is back above it at 2,817 (the floored average LT rose a bp): 2,817 is the
    answer, a plain bisection would stop at 2,815."""
    account, market = _saw(1_064, 13_065, 849_764, 147_988_598)
    ok = [_passes(account, market, market, "TOKEN", x) for x in (2_815, 2_816, 2_817, 2_818)]
    assert ok == [True, False, True, False]
    curves = (av._WithdrawCurve(account, av.MarketTerms(market, 0), "TOKEN"),)
    assert av._largest_withdraw(curves, 13_065) == 2_817
