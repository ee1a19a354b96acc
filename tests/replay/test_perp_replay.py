"""The Perp v2 account replay (fast): the Curie model against keeper.accounts.perp_v2's rules, the book, the
replay on real bars."""

from __future__ import annotations

import dataclasses

import pytest

from keeper.accounts.perp_v2 import (
    ONE_E18,
    PerpAccount,
    PerpLeg,
    PerpRules,
    free_collateral_e6,
    liquidation_cost,
    margin_at,
    min_deposit_e6,
)
from keeper.errors import ConfigError
from keeper.replay.accounts_fast import AccountObservation, AccountsConfig, AccountsRisk, NoKeeperAccounts
from keeper.replay.perp_accounts import MarginTarget, parse_perp_policy, run_perp_fast
from keeper.replay.perp_book import load_perp_book, parse_perp_book
from keeper.replay.perp_model import CURIE_PARAMS, PerpExchange, PerpRevert

E6 = 10**6


def _exchange() -> PerpExchange:
    ex = PerpExchange(CURIE_PARAMS, {"vETH": 1000, "vBTC": 1000})
    ex.set_price("vETH", 2_000 * 10**8)
    ex.set_price("vBTC", 40_000 * 10**8)
    return ex


def test_open_and_margin_follow_curie_and_the_keepers_rules():
    ex = _exchange()
    ex.deposit("t", 1_000 * E6)
    leg = ex.open_position("t", "vETH", True, 9_000 * ONE_E18)
    # a long pays exactly 9,000 vUSD, fee 0.1 % included in the open notional, filled at the mark
    assert leg.open_notional_x18 == -9_000 * ONE_E18 and leg.size_e18 == 8_991 * ONE_E18 // 2_000
    short = ex.open_position("t", "vBTC", False, 4_000 * ONE_E18)
    assert short.open_notional_x18 == 4_000 * ONE_E18
    assert short.size_e18 == -(4_000 * ONE_E18 * E6 // 999_000 * ONE_E18 // (40_000 * ONE_E18))
    acct = ex.account("t")
    assert ex.margin("t") == margin_at(acct, ex.marks_x18, CURIE_PARAMS)  # one home for the formula
    m = ex.margin("t")
    assert abs(m.account_value_e6 - (1_000 * E6 - 9 * E6 - 4_004_004)) <= 1  # both fees (short: 4,000 / 0.999 x 0.1 %)
    assert ex.free_collateral_by_im_x18("t") // 10**12 == free_collateral_e6(acct, ex.marks_x18, CURIE_PARAMS)
    with pytest.raises(PerpRevert, match="CH_EAV"):
        ex.liquidate("t", "vETH")


def test_the_guides_verified_numbers():
    """GUIDE section 7: 1,000 USDC, long 4.489574 vETH for 9,000 vUSD, mark 1,829.914: value 215.53, requirement
    513.47, liquidatable; 600 USDC deposited for it before: value 815.53, not liquidatable."""
    ex = PerpExchange(CURIE_PARAMS)
    ex.accounts["t"] = PerpAccount("t", 1_000 * E6, 0, 0, (PerpLeg("vETH", 4_489_574 * 10**12, -9_000 * ONE_E18),))
    ex.marks_x18["vETH"] = 1_829_914 * 10**15
    m = ex.margin("t")
    assert abs(m.account_value_x18 / ONE_E18 - 215.53) < 0.01 and abs(m.requirement_x18 / ONE_E18 - 513.47) < 0.01
    assert m.liquidatable
    ex.deposit("t", 600 * E6)
    assert not ex.margin("t").liquidatable and abs(ex.margin("t").account_value_x18 / ONE_E18 - 815.53) < 0.01
    with pytest.raises(PerpRevert):
        ex.deposit("t", 0)


def test_liquidation_closes_at_the_mark_and_takes_the_penalty():
    ex = _exchange()
    ex.deposit("t", 1_000 * E6)
    ex.open_position("t", "vETH", True, 9_000 * ONE_E18)
    ex.set_price("vETH", 1_880 * 10**8)  # value above half the requirement: a partial liquidation
    acct, m = ex.account("t"), ex.margin("t")
    assert m.liquidatable and m.account_value_x18 >= m.requirement_x18 // 2
    want = liquidation_cost(acct, "vETH", ex.marks_x18, CURIE_PARAMS)
    liq = ex.liquidate("t", "vETH")
    assert (liq.size_e18, liq.notional_x18, liq.penalty_x18) == (want.size_e18, want.notional_x18, want.penalty_x18)
    assert 0 < liq.size_e18 < acct.legs[0].size_e18
    after = ex.margin("t")
    # closing at the mark realises exactly the unrealised PnL: the account value drops by the penalty only
    assert abs(after.account_value_x18 - (m.account_value_x18 - liq.penalty_x18)) <= 10**12
    ex.set_price("vETH", 1_700 * 10**8)  # below zero: all of it, the insurance fund takes the bad debt
    liq2 = ex.liquidate("t", "vETH")
    assert not ex.account("t").legs and liq2.bad_debt_e6 > 0 and ex.equity_e6("t") == 0
    assert ex.margin("t").requirement_x18 == 0


def test_margin_target_deposits_what_min_deposit_says():
    ex = _exchange()
    ex.deposit("t", 1_000 * E6)
    ex.open_position("t", "vETH", True, 9_000 * ONE_E18)
    ex.set_price("vETH", 1_950 * 10**8)
    rules = PerpRules({"t": ex.account("t")}, dict(ex.marks_x18), CURIE_PARAMS, "USDC")
    obs = AccountObservation(
        0, 0, None, {"t": rules}, {"t": 10_000 * E6}, "USDC", {}, {}, {}, 60.0, {}, {"USDC": 6}, rules.prices_e8
    )
    (a,) = MarginTarget(1.5, 2.0).decide(obs)
    m = ex.margin("t")
    assert a.amount == min_deposit_e6(ex.account("t"), ex.marks_x18, CURIE_PARAMS, m.requirement_x18)
    ex.deposit("t", a.amount)
    assert ex.margin("t").account_value_x18 >= 2 * ex.margin("t").requirement_x18


def test_book_parses_and_refuses_bad_values():
    book = load_perp_book()
    assert book.symbols == ["BTC", "ETH"] and "eth-long-9x" in {a.name for a in book.accounts}
    spread = next(a for a in book.accounts if a.name == "spread-6x")
    assert dict(spread.positions_usd) == {"vBTC": 30_000.0, "vETH": -30_000.0}
    market = {"markets": {"vETH": {"price": "ETH"}}}
    for raw, match in (
        ({"perp": market, "perp_accounts": [{"collateral_usd": 1e3, "positions": {"vXYZ": 1.0}, "leverage": 2}]},
         "vXYZ"),
        ({"perp": market, "perp_accounts": [{"collateral_usd": 1e3, "positions": {"vETH": 1.0}}]}, "leverage"),
        ({"perp": market, "perp_accounts": [{"collateral_usd": 1e3, "positions_usd": {"vETH": 0}}]}, "non-zero"),
        ({"perp": {"markets": {"vETH": {}}}, "perp_accounts": [{"collateral_usd": 1e3}]}, "price"),
        ({"perp": {**market, "mm_ratio": 0.2}, "perp_accounts": []}, "im_ratio"),
        ({"perp": market, "perp_accounts": [{"collateral_usd": 1e3, "positions_usd": {"vETH": 1}, "x": 1}]},
         "unknown"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            parse_perp_book(raw)


def test_over_the_initial_margin_is_refused(crash_bars):
    raw = {"perp": {"markets": {"vETH": {"price": "ETH"}}},
           "perp_accounts": [{"collateral_usd": 1e3, "positions": {"vETH": 1.0}, "leverage": 10.5}]}  # fmt: skip
    with pytest.raises(ConfigError, match="CH_NEFCI"):
        run_perp_fast(parse_perp_book(raw), crash_bars, [NoKeeperAccounts()], AccountsConfig(warmup_s=6 * 3600))


def test_replay_on_real_bars_liquidates_without_a_keeper_and_not_with_it(crash_bars):
    book = load_perp_book()
    pols = [AccountsRisk(), parse_perp_policy("fixed:1.5:2"), NoKeeperAccounts()]
    res = run_perp_fast(book, crash_bars, pols, AccountsConfig(warmup_s=6 * 3600, trace=True))
    none, risk, fixed = res.results["none"], res.results["risk"], res.results["fixed:1.5:2"]
    assert none.liquidations > 0 and none.liquidation_penalty_e6 > 0 and none.transactions == 0
    assert risk.liquidations == 0 and risk.transactions == res.extra["risk"]["deposits"] > 0
    assert fixed.liquidations == 0 and res.extra["risk"]["min_health"] >= 1.0
    for row in res.trace["none"]:  # a liquidation only when the account value is below the requirement
        for name, *_ in row["liquidations"]:
            value, req = row["before"][name]
            assert value < req
    assert none.liquidations_wallet_left == none.liquidations  # no keeper: the wallets are never spent
    poor = dataclasses.replace(book, accounts=tuple(dataclasses.replace(a, wallet_usd=5.0) for a in book.accounts))
    r = run_perp_fast(poor, crash_bars, [NoKeeperAccounts()], AccountsConfig(warmup_s=6 * 3600)).results["none"]
    assert r.liquidations == none.liquidations and r.liquidations_wallet_left == 0  # $5: below the least action
    with pytest.raises(Exception, match="fixed:X:Y"):
        parse_perp_policy("fixed:2")
