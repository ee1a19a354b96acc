"""Cost-aware bands for margin accounts (pure): the restore and release levels of a one-factor Aave account are
``cost_aware_bands``' closed form for its own numbers, monotone in the price of gas and the capital rate, and the
trigger does not move with gas."""

from __future__ import annotations

import dataclasses
import math

import pytest
from aave_market import PRICES, SIGMAS, SYMBOLS
from aave_market import account as _aave_account
from aave_market import market as _market
from scipy.special import ndtri

from keeper.accounts.aave_v3 import AaveAccount, AaveRules, margin_account
from keeper.decision import AccountBookState, decide_accounts
from keeper.domain import SECONDS_PER_YEAR, AccountActionKind
from keeper.planner import PlanLimits
from keeper.risk.accounts import assess_account, assess_accounts
from keeper.risk.policy import CostBands, RiskPolicy

BASE = RiskPolicy(stress_window_s=0.0)  # the constant stress gap (0.12): known numbers
LIMITS = PlanLimits.from_policy(BASE, max_per_tx_e6=10**12, max_per_day_e6=10**13)
INTERVAL_S = 60.0


def _policy(gas_usd: float, rate: float = 0.05) -> RiskPolicy:
    return dataclasses.replace(BASE, cost_bands=CostBands(gas_usd_per_tx=gas_usd, capital_rate_annual=rate))


def _closed_form(gas_usd: float, rate: float, notional: float, sigma: float) -> tuple[float, float, float]:
    """(trigger, restore, release) of the one-factor account written out: the breach constraint's trigger
    max(kappa z(p_trigger) sigma_h, d_s) (no interest: d_cost = 0), the floor max(kappa z(p_target) sigma_h,
    trigger), u* = (3 K sigma^2 / (4 r N))^(1/3), w = sqrt(3 K sigma^2 / (r N u))."""
    sig_h = sigma * math.sqrt(BASE.horizon_s(INTERVAL_S) / SECONDS_PER_YEAR)
    a = max(BASE.kappa * ndtri(1 - BASE.p_trigger / 2) * sig_h, BASE.stress_gap)
    floor = max(BASE.kappa * ndtri(1 - BASE.p_target / 2) * sig_h, a)
    u = max((3 * gas_usd * sigma**2 / (4 * rate * notional)) ** (1 / 3), floor - a)
    w = math.sqrt(3 * gas_usd * sigma**2 / (rate * notional * u))
    return a, min(a + u, 1.0), min(a + u + w, 1.0)


LEVERED = _aave_account("0xa", 10.0, 22_000.0)  # HF 1.125: inside the 12 % stress gap, endangered
NOTIONAL = 10 * 3_000 * 0.825  # dM/dln S of WETH: its collateral value at the liquidation threshold


def _decide(account: AaveAccount, policy: RiskPolicy, wallet: dict[str, int], *, release: bool = False):
    market = _market()
    rules = AaveRules({"0xa": account}, market, SYMBOLS, releasable=frozenset({"0xa"} if release else ()))
    return decide_accounts(
        [margin_account(account, market)],
        rules,
        AccountBookState(wallet=wallet, symbols=SYMBOLS),
        prices_e8=PRICES,
        sigmas_annual=SIGMAS,
        policy=policy,
        limits=dataclasses.replace(LIMITS, allow_release=release),
        check_interval_s=INTERVAL_S,
    )


@pytest.mark.parametrize("gas_usd", [0.0125, 0.5, 5.0])
def test_one_factor_restore_is_the_closed_form_and_the_supply_reaches_it(gas_usd):
    """restore/release = cost_aware_bands' closed form for the account's numbers (|g| of WETH, WETH's sigma);
    the decision's supply puts the liquidation price at the restore distance (the least WETH that does)."""
    view = margin_account(LEVERED, _market())
    risk = assess_account(view, PRICES, SIGMAS, _policy(gas_usd), INTERVAL_S)
    assert risk.method == "closed_form" and risk.band_notional_usd == pytest.approx(NOTIONAL, rel=1e-12)
    a, x, b = _closed_form(gas_usd, 0.05, NOTIONAL, 0.8)
    assert (risk.trigger_distance, risk.restore_distance, risk.release_distance) == pytest.approx((a, x, b), rel=1e-12)
    assert risk.survive_prices_e8["WETH"] == int(PRICES["WETH"] * math.exp(-x))
    # the vectorised pass gives the same bands
    (fast,) = assess_accounts([view], PRICES, SIGMAS, _policy(gas_usd), INTERVAL_S)
    assert fast.restore_distance == pytest.approx(x, rel=1e-12) and fast.release_distance == pytest.approx(b, rel=1e-12)

    out = _decide(LEVERED, _policy(gas_usd), {"WETH": 1_000 * 10**18})
    (action,) = out.onchain_actions
    assert action.kind is AccountActionKind.ADD_COLLATERAL and action.asset == "WETH"

    def distance_after(wei: int) -> float:
        after = _aave_account("0xa", 10.0 + wei / 1e18, 22_000.0)
        return assess_account(margin_account(after, _market()), PRICES, SIGMAS, BASE, INTERVAL_S).log_distance

    # the survive price is an integer e8 price: 1e-8 relative of rounding in the distance
    assert distance_after(action.amount) >= x - 1e-8
    assert distance_after(action.amount - action.amount // 10**6) < x  # one part in a million less falls short


def test_dearer_gas_widens_the_bands_and_dearer_capital_tightens_them_the_trigger_stays():
    gas = [0.0125, 0.1, 1.0, 5.0, 40.0]
    view = margin_account(LEVERED, _market())
    risks = [assess_account(view, PRICES, SIGMAS, _policy(k), INTERVAL_S) for k in gas]
    restores = [r.restore_distance for r in risks]
    releases = [r.release_distance for r in risks]
    assert restores == sorted(restores) and len(set(restores)) == len(restores), restores
    assert releases == sorted(releases) and len(set(releases)) == len(releases), releases
    assert len({r.trigger_distance for r in risks}) == 1 and len({r.breach_probability for r in risks}) == 1
    assert all(r.restore_distance >= r.trigger_distance for r in risks)
    # the decision: the same trigger verdict at every gas price, a larger supply where gas is dear
    amounts = []
    for k in gas:
        out = _decide(LEVERED, _policy(k), {"WETH": 1_000 * 10**18})
        d = out.decision("0xa")
        assert d is not None and d.band == "trigger"
        amounts.append(d.amount)
    assert amounts == sorted(amounts) and amounts[0] < amounts[-1], amounts

    rates = [0.02, 0.05, 0.2, 0.5]
    by_rate = [assess_account(view, PRICES, SIGMAS, _policy(5.0, r), INTERVAL_S) for r in rates]
    tighter = [r.restore_distance for r in by_rate]
    assert tighter == sorted(tighter, reverse=True) and len(set(tighter)) == len(tighter), tighter
    assert [r.release_distance for r in by_rate] == sorted((r.release_distance for r in by_rate), reverse=True)


def test_restore_is_never_below_the_breach_target():
    """Free gas would restore just past the trigger: the floor is the breach target (and the trigger)."""
    view = margin_account(LEVERED, _market())
    risk = assess_account(view, PRICES, SIGMAS, _policy(0.0), INTERVAL_S)
    a, _, _ = _closed_form(1e-30, 0.05, NOTIONAL, 0.8)
    sig_h = 0.8 * math.sqrt(BASE.horizon_s(INTERVAL_S) / SECONDS_PER_YEAR)
    target = BASE.kappa * ndtri(1 - BASE.p_target / 2) * sig_h
    assert risk.restore_distance == pytest.approx(max(a, target), rel=1e-12)


def test_screen_account_restores_the_margin_the_band_asks_for():
    """WETH and WBTC against USDC (several factors): the move to survive is sized so that the margin it takes is
    the restore level x s (s = sigma_M over the variance-share-weighted volatility), at least the screen's breach
    target; dearer gas restores more."""
    market = _market()
    view = margin_account(_aave_account("0xa", 5.0, 40_000.0, wbtc=0.4), market)
    corr = {("WETH", "WBTC"): 0.5}
    risks = [
        assess_accounts([view], PRICES, SIGMAS, _policy(k), INTERVAL_S, correlation=corr)[0] for k in (0.0125, 5.0)
    ]
    for r in risks:
        assert r.method == "screen"
        g = r.gradient_usd
        names = sorted(g)
        gs = {a: g[a] * SIGMAS[a] for a in names}
        rho = {("WBTC", "WETH"): 0.5, ("WETH", "WBTC"): 0.5}
        cg = {a: sum(gs[b] * (1.0 if a == b else rho.get((a, b), 0.0)) for b in names) for a in names}
        var_m = sum(gs[a] * cg[a] for a in names)
        shares = {a: abs(gs[a] * cg[a]) / var_m for a in names}
        sigma_bar = sum(shares[a] * SIGMAS[a] for a in names) / sum(shares.values())
        s = math.sqrt(var_m) / sigma_bar
        assert r.sigma_margin_usd == pytest.approx(math.sqrt(var_m), rel=1e-12)
        assert r.band_notional_usd == pytest.approx(s, rel=1e-12)
        loss = -sum(g[a] * (p / PRICES[a] - 1) for a, p in r.survive_prices_e8.items())
        assert loss == pytest.approx(r.restore_distance * s, rel=1e-6)  # integer e8 survive prices
        target = BASE.kappa * ndtri(1 - BASE.p_target / 2) * r.sigma_margin_usd
        assert r.restore_distance * s >= target * math.sqrt(BASE.horizon_s(INTERVAL_S) / SECONDS_PER_YEAR)
        # the loop oracle agrees
        want = assess_account(view, PRICES, SIGMAS, _policy(5.0), INTERVAL_S, correlation=corr)
        assert risks[1].restore_distance == pytest.approx(want.restore_distance, rel=1e-9)
    assert risks[1].restore_distance > risks[0].restore_distance


def test_cost_aware_release_lands_at_the_restore_level():
    """A very safe account (10 WETH, 1,000 USDC) beyond the cost band's release level: the owner's release leaves
    it at the restore distance, not further."""
    safe = _aave_account("0xa", 10.0, 1_000.0)
    policy = _policy(5.0)
    out = _decide(safe, policy, {}, release=True)
    d = out.decision("0xa")
    assert d is not None and d.band == "release" and d.asset == "WETH", d.reason if d else None
    restore = out.risks[0].restore_distance
    after = _aave_account("0xa", 10.0 - d.amount / 1e18, 1_000.0)
    dist = assess_account(margin_account(after, _market()), PRICES, SIGMAS, BASE, INTERVAL_S).log_distance
    assert restore - 1e-8 <= dist <= restore + 1e-6
