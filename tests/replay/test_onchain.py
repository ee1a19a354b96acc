"""The on-chain replay on a real window (FTX crash, 5-minute bars, a few hours around the largest bar) on anvil:
no keeper loses positions, the real keeper (KeeperService per account) loses none, and the fast model reaches the
same liquidations, actions and amounts (to the e6 unit) as the chain; measured gas backs the fast constants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keeper.domain import ActionKind
from keeper.replay.book import parse_book
from keeper.replay.fast import GAS_PER_ACTION, GAS_REVERT, VOL_WINDOW_ROUNDS, ReplayConfig, run_fast
from keeper.replay.onchain import account_key, run_onchain, write_onchain_report
from keeper.replay.policies import parse_policy

POLICIES = ("none", "risk", "fixed:3:6:12")
# 3 accounts x (ETH, BTC): the longs the crash kills without a keeper, and a short that the rebound squeezes
BOOK = {
    "wallet": {"per_account_usd": 100_000.0},
    "positions": [
        {"symbol": "ETH", "side": "long", "leverages": [20, 50]},
        {"symbol": "BTC", "side": "long", "leverages": [20, 50]},
        {"symbol": "ETH", "side": "short", "leverages": [20]},
        {"symbol": "BTC", "side": "short", "leverages": [20]},
    ],
}
CFG = ReplayConfig(warmup_s=2 * 3600)


def _window(ftx_bars):
    """2 h warm-up + 2.5 h replay around the largest ETH bar of the file (2022-11-08 19:30 UTC, range 6.5 %)."""
    eth = ftx_bars[0]
    i = int(np.argmax((eth.high - eth.low) / eth.open))
    t = int(eth.t_s[i])
    return [b.slice_time(t - 3 * 3600, t + 90 * 60) for b in ftx_bars]


@pytest.fixture(scope="module")
def replays(ftx_bars):
    """The same window, book and policies through the fast model and through anvil."""
    book = parse_book(BOOK, "test")
    series = _window(ftx_bars)
    fast = run_fast(book, series, [parse_policy(p) for p in POLICIES], CFG)
    chain, stats = run_onchain(book, series, [parse_policy(p) for p in POLICIES], CFG)
    return fast, chain, stats


def _actions(res):
    """(round, kind, account, market, amount) of every executed action and liquidation, in a canonical order."""
    keep = {"top_up", "release", "move_margin", "reduce_size", "liquidation"}
    return sorted((e.round_index, e.kind, e.account, e.market_id, e.amount_e6) for e in res.events if e.kind in keep)


@pytest.mark.chain
def test_no_keeper_loses_positions(replays):
    """Without a keeper the crash liquidates positions on chain (the Liquidated events of the liquidator bot)."""
    _, chain, _ = replays
    r = chain.results["none"]
    assert r.liquidations >= 2
    assert r.top_ups == 0 and r.gas_used == 0
    assert any(lbl.startswith("long-50x:ETH") for lbl in r.liquidated)


@pytest.mark.chain
def test_keeper_saves_every_funded_position(replays):
    """The real keeper (KeeperService.cycle per account, real signed transactions) has no liquidation while
    every wallet could fund it, and it did act (top-ups mined on chain)."""
    _, chain, _ = replays
    r = chain.results["risk"]
    assert r.wallet_min_e6 > 0
    assert r.liquidations == 0, r.liquidated
    assert r.top_ups > 0 and r.collateral_added_e6 > 0
    assert r.min_margin_ratio > 1.0


@pytest.mark.chain
@pytest.mark.parametrize("policy", POLICIES)
def test_fast_model_matches_the_chain(replays, policy):
    """Same liquidations (position, round), same actions (kind, position, round) and equal amounts to the e6
    unit; equal closest approach, idle collateral integral and wallets (exact: same integers, same order)."""
    fast, chain, _ = replays
    f, c = fast.results[policy], chain.results[policy]
    assert _actions(f) == _actions(c)
    assert f.liquidated == c.liquidated
    assert f.liquidation_penalty_e6 == c.liquidation_penalty_e6
    assert (f.top_ups, f.collateral_added_e6, f.releases, f.collateral_released_e6) == (
        c.top_ups,
        c.collateral_added_e6,
        c.releases,
        c.collateral_released_e6,
    )
    assert f.idle_time_integral == c.idle_time_integral
    assert f.idle_equity_time_integral == c.idle_equity_time_integral
    assert f.peak_idle_e6 == c.peak_idle_e6
    assert f.min_margin_ratio == c.min_margin_ratio
    assert (f.wallet_min_e6, f.wallet_end_e6, f.final_equity_e6) == (
        c.wallet_min_e6,
        c.wallet_end_e6,
        c.final_equity_e6,
    )
    np.testing.assert_array_equal(f.ratio, c.ratio)
    np.testing.assert_array_equal(f.idle_e6, c.idle_e6)


@pytest.mark.chain
def test_gas_constants_come_from_receipts(replays):
    """Every fast-mode gas constant of a kind the replay mined lies within the receipts' range (measured on chain)."""
    _, chain, stats = replays
    g = stats.gas_summary()
    assert {"top_up", "liquidation"} <= set(g)
    for kind in (ActionKind.TOP_UP, ActionKind.RELEASE):
        if kind.value in g:
            assert g[kind.value]["min"] <= GAS_PER_ACTION[kind] <= g[kind.value]["max"], (kind, g[kind.value])
    if "revert" in g:
        assert g["revert"]["min"] <= GAS_REVERT <= g["revert"]["max"]
    r = chain.results["fixed:3:6:12"]
    kinds = [k for k in g if k != "liquidation"]
    lo, hi = min(g[k]["min"] for k in kinds), max(g[k]["max"] for k in kinds)
    assert r.transactions > 0 and lo * r.transactions <= r.gas_used <= hi * r.transactions


@pytest.mark.chain
def test_summary_and_report(replays, tmp_path):
    """summary.json keeps the fast mode's format (policies -> the issue's keys) and adds the on-chain figures."""
    _, chain, stats = replays
    paths = write_onchain_report(chain, stats, tmp_path, plots=False)
    s = json.loads(paths["summary"].read_text())
    assert s["mode"] == "onchain"
    assert set(s["policies"]) == set(POLICIES)
    for p in s["policies"].values():
        for k in ("liquidations", "top_ups", "collateral_added", "gas_used", "avg_idle_collateral"):
            assert k in p
    assert s["onchain"]["gas_measured"]["top_up"]["n"] > 0
    assert all(v > 0 for v in s["onchain"]["rounds_per_s"].values())
    assert "On chain" in paths["report"].read_text()


def test_constants_match_the_daemon():
    """The fast model's volatility window is the daemon's cache window; account keys are deterministic."""
    from keeper.runtime.volatility_cache import VolatilityCache

    assert VolatilityCache().window == VOL_WINDOW_ROUNDS
    assert account_key("long-20x") == account_key("LONG-20x") != account_key("long-50x")
