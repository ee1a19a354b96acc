"""``risk:cost:PRESET`` in the account replay (Aave v3 and Perp v2 books): the daemon's cost-aware bands priced at
the protocol's measured gas, the preset's gas price and the replayed ETH price of the round."""

from __future__ import annotations

import dataclasses

import pytest

from keeper.accounts.aave_v3 import AaveRules
from keeper.accounts.costs import GAS_USED_MEASURED
from keeper.errors import InputError
from keeper.replay.aave_book import load_aave_book
from keeper.replay.aave_model import AavePool, ReserveParams, rate_ray
from keeper.replay.accounts_fast import (
    AccountObservation,
    AccountsConfig,
    AccountsRisk,
    parse_account_policy,
    run_accounts_fast,
)
from keeper.replay.cost import DEFAULT_GAS_PRESETS_GWEI
from keeper.replay.perp_accounts import parse_perp_policy, run_perp_fast
from keeper.replay.perp_book import load_perp_book
from keeper.risk.accounts import assess_accounts
from keeper.risk.policy import CostBands, RiskPolicy

SPECS = ("risk", "risk:cost:l1", "risk:cost:l2")


def _obs(eth_e8: int | None) -> AccountObservation:
    return AccountObservation(
        now_s=0, round_index=0, market=None, rules={}, wallets={}, wallet_asset="USDC", sigmas_annual={},
        stress_gaps={}, correlation={}, check_interval_s=60.0, spent_today_e6={}, decimals={}, prices_e8={},
        replayed_e8={} if eth_e8 is None else {"ETH": eth_e8, "BTC": 20_000 * 10**8},
    )  # fmt: skip


@pytest.mark.parametrize(("parse", "protocol"), [(parse_account_policy, "aave-v3"), (parse_perp_policy, "perp-v2")])
def test_cost_bands_price_one_action_at_the_daemons_measured_gas(parse, protocol):
    """One action costs the protocol's measured gas x the preset's gwei x the round's ETH price; the capital rate
    is the configured one; the fixed policy has no bands."""
    rate = 0.05
    for preset, gwei in DEFAULT_GAS_PRESETS_GWEI.items():
        pol = parse(f"risk:cost:{preset.upper()}", capital_rate_annual=rate)
        assert isinstance(pol, AccountsRisk) and pol.name == f"risk:cost:{preset}"
        bands = pol.policy_now(_obs(1_234 * 10**8)).cost_bands
        assert bands is not None and bands.capital_rate_annual == rate
        expected = GAS_USED_MEASURED[protocol] * gwei * 1e-9 * 1_234.0
        assert bands.gas_usd_per_tx == pytest.approx(expected, rel=1e-12)
        with pytest.raises(InputError, match="no replayed ETH"):
            pol.policy_now(_obs(None))
    plain = parse("risk")
    assert isinstance(plain, AccountsRisk) and plain.policy_now(_obs(1_234 * 10**8)).cost_bands is None


@pytest.mark.parametrize("parse", [parse_account_policy, parse_perp_policy])
def test_a_bad_preset_is_a_one_line_error_naming_the_known_presets(parse):
    with pytest.raises(InputError) as err:
        parse("risk:cost:l3")
    text = str(err.value)
    assert "\n" not in text and "'l3'" in text and "known: l1, l2" in text
    with pytest.raises(InputError, match=r"known: mainnet\)"):
        parse("risk:cost:l1", gas_presets_gwei={"mainnet": 30.0})


def test_the_shortcut_condition_under_cost_bands_with_releases_enabled():
    """An account the screen puts below p_release is skipped only when decide_accounts would hold it: with
    releases enabled it is decided when it is in the release band (cost-aware: beyond the release level, whatever
    p_release says; otherwise below p_release)."""
    weth = ReserveParams("WETH", 18, 8000, 8250, 10500, 1000, rate_ray(0.02), 0)
    usdc = ReserveParams("USDC", 6, 7700, 8000, 10450, 1000, 0, rate_ray(0.06))
    pool = AavePool.with_reserves([weth, usdc], 0)
    pool.set_price("WETH", 2_000 * 10**8)
    pool.set_price("USDC", 10**8)
    pool.supply("u", "WETH", 10 * 10**18, 0)
    pool.borrow("u", "USDC", 5_000 * 10**6, 0)
    rules = AaveRules({"u": pool.account("u")}, pool.market(0))
    cost = RiskPolicy(cost_bands=CostBands(gas_usd_per_tx=5.0, capital_rate_annual=0.08))
    sigmas = {"WETH": 0.8, "USDC": 0.05}
    (r,) = assess_accounts([rules.margin_account("u")], pool.prices_e8, sigmas, cost, 60.0)
    assert r.has_debt and not (r.liquidatable or r.stress_breach)
    calm = dataclasses.replace(r, breach_probability=0.0)
    inside = dataclasses.replace(calm, band_distance=0.3, release_distance=0.4)
    beyond = dataclasses.replace(calm, band_distance=0.5, release_distance=0.4)
    held = AccountsRisk()
    assert held.limits is not None and not held.limits.allow_release
    releasing = AccountsRisk(limits=dataclasses.replace(held.limits, allow_release=True))
    assert not held.may_act(beyond, cost)  # releases off: held whatever the band
    assert releasing.may_act(beyond, cost) and not releasing.may_act(inside, cost)
    plain = RiskPolicy()
    assert releasing.may_act(calm, plain) and not held.may_act(calm, plain)  # fixed bands: below p_release
    assert held.may_act(dataclasses.replace(calm, breach_probability=1e-3), cost)  # above p_release: decided


def _check_order(results, risk_liquidations: int) -> None:
    l1, l2 = results["risk:cost:l1"], results["risk:cost:l2"]
    assert l1.transactions <= l2.transactions
    assert l1.avg_idle_e6 >= l2.avg_idle_e6
    assert l1.liquidations <= risk_liquidations and l2.liquidations <= risk_liquidations


def test_aave_book_dear_gas_sends_fewer_transactions_and_holds_more_idle(crash_bars):
    """The 14 h FTX crash window, 6 h of warm-up, the default Aave book: at l1 gas (20 gwei) the bands are wider
    than at l2 (0.05 gwei): no more transactions, at least as much idle; neither is liquidated more than ``risk``."""
    pols = [parse_account_policy(s) for s in SPECS]
    res = run_accounts_fast(load_aave_book(), crash_bars, pols, AccountsConfig(warmup_s=6 * 3600, record=False))
    _check_order(res.results, res.results["risk"].liquidations)
    assert res.results["risk:cost:l1"].transactions < res.results["risk:cost:l2"].transactions


def test_perp_book_dear_gas_sends_fewer_transactions_and_holds_more_idle(crash_bars):
    """The same on the Perp v2 book (one Vault.depositFor per action)."""
    pols = [parse_perp_policy(s) for s in SPECS]
    res = run_perp_fast(load_perp_book(), crash_bars, pols, AccountsConfig(warmup_s=6 * 3600, record=False))
    _check_order(res.results, res.results["risk"].liquidations)
    assert res.results["risk:cost:l1"].transactions < res.results["risk:cost:l2"].transactions
