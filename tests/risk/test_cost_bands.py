"""The cost-aware bands (keeper.risk.policy.cost_aware_bands): the closed form against a numeric minimum, a
Monte Carlo of the band policy, and the direction of the trade-off between gas and capital."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keeper.risk.policy import CostBands, RiskPolicy, assess_arrays, band_cost_per_year, cost_aware_bands

SIGMA = 0.8  # ETH volatility, per sqrt(year)
NOTIONAL = 30_000.0
L1 = CostBands(gas_usd_per_tx=78_200 * 20e-9 * 3_000, capital_rate_annual=0.08)  # ~$4.69 a transaction
L2 = CostBands(gas_usd_per_tx=78_200 * 0.05e-9 * 3_000, capital_rate_annual=0.08)


def test_the_closed_form_is_the_minimum_of_the_cost_per_year():
    """On a grid of (restore, release) the cost per year is least at the closed form's bands (w = 2u)."""
    a = 0.05
    restore, release = (float(x[0]) for x in cost_aware_bands([a], [a], [NOTIONAL], [SIGMA], L1))
    best = band_cost_per_year(a, restore, release, SIGMA, NOTIONAL, L1)
    grid = np.linspace(0.005, 0.6, 240)
    costs = [band_cost_per_year(a, a + u, a + u + w, SIGMA, NOTIONAL, L1) for u in grid for w in grid]
    assert best <= min(costs) + 1e-9
    assert release - restore == pytest.approx(2 * (restore - a), rel=1e-12)
    u_star = (3 * L1.gas_usd_per_tx * SIGMA**2 / (4 * 0.08 * NOTIONAL)) ** (1 / 3)
    assert restore - a == pytest.approx(u_star, rel=1e-12)


def test_a_monte_carlo_of_the_band_policy_costs_what_the_formula_says():
    """Simulated Brownian log distance, topped up at a and released at b back to x: gas per year plus the
    capital rate on the time-average distance equals g(u, w) within 5 % (2 years, 1,000 paths, 1-hour steps
    with the exit corrected by the Brownian bridge)."""
    a, x, b = 0.05, 0.12, 0.26
    rng = np.random.default_rng(7)
    n_paths, dt = 1_000, 1 / (365 * 24)
    steps = int(2 / dt)
    pos = np.full(n_paths, x)
    area = np.zeros(n_paths)
    txs = np.zeros(n_paths)
    sd = SIGMA * math.sqrt(dt)
    for _ in range(steps):
        new = pos + rng.normal(0.0, sd, n_paths)
        # a path may cross a barrier inside the step even if both ends are inside (bridge crossing probability)
        u = rng.random(n_paths)
        p_low = np.exp(-2 * np.maximum(pos - a, 0) * np.maximum(new - a, 0) / sd**2)
        p_high = np.exp(-2 * np.maximum(b - pos, 0) * np.maximum(b - new, 0) / sd**2)
        hit = (new <= a) | (new >= b) | (u < p_low) | (u < p_high)
        area += np.where(hit, (pos + x) / 2, (pos + new) / 2) * dt
        txs += hit
        pos = np.where(hit, x, new)
    years = steps * dt
    simulated = float(np.mean(txs * L1.gas_usd_per_tx / years + 0.08 * NOTIONAL * area / years))
    assert simulated == pytest.approx(band_cost_per_year(a, x, b, SIGMA, NOTIONAL, L1), rel=0.05)


def test_dear_gas_widens_the_bands_and_dear_capital_tightens_them():
    a, floor = np.array([0.05]), np.array([0.06])
    l1_restore, l1_release = cost_aware_bands(a, floor, [NOTIONAL], [SIGMA], L1)
    l2_restore, l2_release = cost_aware_bands(a, floor, [NOTIONAL], [SIGMA], L2)
    assert l1_restore[0] > l2_restore[0] >= floor[0] and l1_release[0] - l1_restore[0] > l2_release[0] - l2_restore[0]
    dear_capital = CostBands(L1.gas_usd_per_tx, 0.8)
    dc_restore, dc_release = cost_aware_bands(a, floor, [NOTIONAL], [SIGMA], dear_capital)
    assert dc_restore[0] < l1_restore[0] and dc_release[0] - dc_restore[0] < l1_release[0] - l1_restore[0]
    # the breach-probability target is a floor: a free transaction never restores below it
    free = CostBands(0.0, 0.08)
    r0, b0 = cost_aware_bands(a, floor, [NOTIONAL], [SIGMA], free)
    assert r0[0] == pytest.approx(floor[0]) and b0[0] == pytest.approx(floor[0])
    # free capital: the bands stop at the cap instead of growing without bound
    r_inf, b_inf = cost_aware_bands(a, floor, [NOTIONAL], [SIGMA], CostBands(L1.gas_usd_per_tx, 0.0))
    assert r_inf[0] == b_inf[0] == 1.0


def test_the_policy_restores_to_the_cost_aware_level_and_keeps_the_trigger():
    """assess_arrays with cost bands: the same trigger decision, the required distance a + u*, release beyond b."""
    common = {
        "is_long": [True], "size": [10.0], "entry": [3_000.0], "pending_fee": [0.0], "price": [3_000.0],
        "maintenance": [0.005], "fee_rate_annual": [0.0], "sigma_annual": [0.8], "check_interval_s": 60.0,
        "stress_gap": [0.05],
    }  # fmt: skip
    plain = RiskPolicy()
    costed = RiskPolicy(cost_bands=L1)
    for collateral in (2_000.0, 6_000.0, 12_000.0):
        p0 = assess_arrays(collateral=[collateral], policy=plain, **common)
        p1 = assess_arrays(collateral=[collateral], policy=costed, **common)
        assert (p0.top_up[0] > 0) == (p1.top_up[0] > 0), collateral  # the risk constraint decides the trigger
        assert p1.required_distance[0] > p0.required_distance[0]  # dear gas: restore higher
    # 15 % from liquidation: inside the fixed rule's release band (4 x the 5 % gap), beyond the cheap-gas one
    tight = assess_arrays(collateral=[4_300.0], policy=RiskPolicy(cost_bands=L2), **common)
    assert tight.log_distance[0] == pytest.approx(0.15, abs=0.005)
    assert tight.excess[0] > 0  # cheap gas: the same position has collateral to release
    assert assess_arrays(collateral=[4_300.0], policy=plain, **common).excess[0] == 0
