"""The Aave account replay (fast): the book, the pool model's state changes, the replay and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keeper.accounts.aave_v3 import WAD, account_data, liquidation_outcome
from keeper.accounts.costs import AAVE_REPAY_GAS
from keeper.errors import ConfigError
from keeper.replay.aave_book import load_aave_book, parse_aave_book
from keeper.replay.aave_model import AavePool, AaveRevert, ReserveParams, rate_ray
from keeper.replay.accounts_fast import (
    AccountsConfig,
    AccountsRisk,
    HealthTarget,
    NoKeeperAccounts,
    parse_account_policy,
    run_accounts_fast,
)
from keeper.replay.prices import load_bars

DATA = Path(__file__).resolve().parents[1] / "data"
T0 = 1_700_000_000
WETH = ReserveParams("WETH", 18, 8000, 8250, 10500, 1000, rate_ray(0.02), 0)
USDC = ReserveParams("USDC", 6, 7700, 8000, 10450, 1000, 0, rate_ray(0.06))


def _pool() -> AavePool:
    pool = AavePool.with_reserves([WETH, USDC], T0)
    pool.set_price("WETH", 2_000 * 10**8)
    pool.set_price("USDC", 10**8)
    pool.supply("u", "WETH", 10 * 10**18, T0)
    pool.borrow("u", "USDC", 15_000 * 10**6, T0)
    return pool


def test_pool_interest_repay_and_liquidation_follow_the_contract_rules():
    pool = _pool()
    d0 = pool.account_data("u", T0)
    assert d0.total_collateral_base == 20_000 * 10**8 and d0.total_debt_base == 15_000 * 10**8
    later = T0 + 30 * 86_400
    debt_later = pool.balances("u", later)["USDC"][1]
    assert 15_000 * 10**6 < debt_later < 15_000 * 10**6 * 1.006  # 6 %/yr for 30 days, compounded
    paid = pool.repay("u", "USDC", 1_000 * 10**6, later)
    assert paid == 1_000 * 10**6
    assert pool.reserves["USDC"].last_update_s == later
    with pytest.raises(AaveRevert, match="45"):
        pool.liquidate("u", "WETH", "USDC", later)
    pool.set_price("WETH", 1_700 * 10**8)
    acct, market = pool.account("u"), pool.market(later + 60)
    hf = account_data(acct, market).health_factor_wad
    assert hf < WAD
    expected = liquidation_outcome(acct, market, "WETH", "USDC")
    res = pool.liquidate("u", "WETH", "USDC", later + 60)
    assert res.outcome == expected and res.health_before_wad == hf
    assert res.outcome.close_factor_bps == 5_000
    assert res.penalty_base > 0 and res.seized_base > res.repaid_base
    assert pool.account_data("u", later + 60).health_factor_wad > hf


def test_book_parses_health_factors_and_refuses_bad_values():
    book = load_aave_book()
    assert book.symbols == ["BTC", "ETH"] and book.wallet_asset == "USDC"
    assert "weth-hf1.1" in {a.name for a in book.accounts}
    with pytest.raises(ConfigError, match="ltv"):
        reserve = {"price": "ETH", "decimals": 18, "ltv": 0.9, "liquidation_threshold": 0.8, "liquidation_bonus": 0.05}
        account = {"collateral": {"X": 1.0}, "health_factor": 1.2, "debt_asset": "X"}
        parse_aave_book({"aave": {"reserves": {"X": reserve}}, "aave_accounts": [account]})
    with pytest.raises(ConfigError, match="debt"):
        parse_aave_book({"aave": {"reserves": {"USDC": {"price_usd": 1.0, "decimals": 6, "ltv": 0.7,
                         "liquidation_threshold": 0.8, "liquidation_bonus": 0.05}}},
                         "aave_accounts": [{"collateral": {"USDC": 1.0}}]})  # fmt: skip


def test_replay_on_real_bars_liquidates_without_a_keeper_and_not_with_it(crash_bars):
    """The 14 h FTX crash window, 6 h of warm-up (the whole 48 h window with the default day of warm-up gives the
    same outcome at 2.5 times the cost): liquidations without a keeper, none with one."""
    book = load_aave_book()
    pols = [AccountsRisk(), HealthTarget(1.1, 1.25), NoKeeperAccounts()]
    res = run_accounts_fast(book, crash_bars, pols, AccountsConfig(warmup_s=6 * 3600, trace=True))
    none, risk, fixed = res.results["none"], res.results["risk"], res.results["fixed:1.1:1.25"]
    assert none.liquidations > 0 and none.liquidation_penalty_e6 > 0 and none.transactions == 0
    assert risk.liquidations == 0 and risk.transactions > 0
    assert risk.gas_used == AAVE_REPAY_GAS * res.extra["risk"]["repays"]
    assert fixed.liquidations == 0
    assert res.extra["risk"]["min_health_factor"] >= 1.0
    # the trace: an HF per account per round; a liquidation only below 1
    for row in res.trace["none"]:
        for name, *_ in row["liquidations"]:
            assert row["hf_before"][name] < WAD
    assert parse_account_policy("fixed:1.2:1.4").name == "fixed:1.2:1.4"
    # without a keeper the wallets are never spent: every liquidation had its wallet left; with $5 wallets (below
    # the least action) the same liquidations had none
    assert none.liquidations_wallet_left == none.liquidations
    poor = dataclasses.replace(book, accounts=tuple(dataclasses.replace(a, wallet_usd=5.0) for a in book.accounts))
    r = run_accounts_fast(poor, crash_bars, [NoKeeperAccounts()], AccountsConfig(warmup_s=6 * 3600)).results["none"]
    assert r.liquidations == none.liquidations and r.liquidations_wallet_left == 0


@pytest.mark.parametrize("spec", ["risk", "risk:cost:l1", "risk:cost:l2"])
def test_the_screen_shortcut_changes_no_decision(tmp_path, spec):
    """Holding the accounts the screen finds safe below p_release without calling decide_accounts gives the same
    actions as deciding every account (12 h around the FTX fall of 2022-11-08), under the fixed bands and under
    the cost-aware bands of both gas presets."""
    lo, hi = 1_667_908_800, 1_667_952_000
    series = []
    for sym, name in (("ETH", "ftx_2022-11-07T12_ETHUSDT_5m.csv"), ("BTC", "ftx_2022-11-07T12_BTCUSDT_5m.csv")):
        lines = (DATA / name).read_text().splitlines()
        cut = tmp_path / name
        cut.write_text("\n".join([lines[0], *(ln for ln in lines[1:] if lo <= int(ln.split(",")[1]) < hi)]) + "\n")
        series.append(load_bars(cut, sym))
    book = load_aave_book()
    config = AccountsConfig(warmup_s=3 * 3600, trace=True, record=False)
    policy = parse_account_policy(spec)
    assert isinstance(policy, AccountsRisk) and policy.screen
    fast = run_accounts_fast(book, series, [policy], config)
    full = run_accounts_fast(book, series, [dataclasses.replace(policy, screen=False)], config)
    assert [r["actions"] for r in fast.trace[spec]] == [r["actions"] for r in full.trace[spec]]
    assert sum(len(r["actions"]) for r in fast.trace[spec]) > 0
