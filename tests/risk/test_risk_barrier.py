"""Closed-form barrier probabilities: reference values, numerical integration, Monte Carlo, inversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from keeper.domain import SECONDS_PER_YEAR, Market, Position, Side
from keeper.risk import barrier
from keeper.risk.montecarlo import PathModel, breach_probabilities, simulate_paths

HOUR = 3600.0


class TestReferenceValues:
    @pytest.mark.parametrize(
        ("spot", "level", "sigma", "mu", "horizon_s", "is_long", "expected"),
        [
            # reference values of the first-passage formula, computed independently of this code
            (3000.0, 2940.0, 0.8, 0.0, HOUR, True, 1.82826e-2),
            (60000.0, 54000.0, 0.6, 0.5, 7 * 86400.0, True, 1.86177e-1),
            (100.0, 120.0, 0.3, 0.05, SECONDS_PER_YEAR, False, 0.548864),
        ],
    )
    def test_guide_values_to_five_significant_digits(self, spot, level, sigma, mu, horizon_s, is_long, expected):
        """The closed form reproduces the reference values to 5 significant digits."""
        p = float(barrier.breach_probability(spot, level, sigma, horizon_s, is_long=is_long, drift_annual=mu))
        assert p == pytest.approx(expected, rel=5e-6)

    def test_vectorised_equals_scalar_calls(self):
        """An array call gives the same numbers as one call per position."""
        spots = np.array([3000.0, 60000.0, 100.0])
        levels = np.array([2940.0, 54000.0, 120.0])
        longs = np.array([True, True, False])
        vec = barrier.breach_probability(spots, levels, 0.7, HOUR, is_long=longs, drift_annual=0.1)
        one = [
            float(barrier.breach_probability(s, b, 0.7, HOUR, is_long=lg, drift_annual=0.1))
            for s, b, lg in zip(spots, levels, longs, strict=True)
        ]
        np.testing.assert_allclose(vec, one, rtol=1e-14)


def first_passage_density(t: float, b: float, nu: float, sigma: float) -> float:
    """Inverse-Gaussian density of the first time nu s + sigma W hits b < 0 (Shreve II, 7.2.8)."""
    return abs(b) / (sigma * math.sqrt(2 * math.pi * t**3)) * math.exp(-((b - nu * t) ** 2) / (2 * sigma**2 * t))


class TestIndependentChecks:
    @pytest.mark.parametrize(("b", "mu", "fee"), [(-0.02, 0.0, 0.0), (-0.05, 0.9, 0.0), (-0.03, -1.5, 0.4)])
    def test_matches_numerical_integration_of_first_passage_density(self, b, mu, fee):
        """Integrating the first-passage density over [0, T] gives the closed form within 1e-8 absolute."""
        sigma, t = 0.8, 6 * HOUR / SECONDS_PER_YEAR
        nu = mu - 0.5 * sigma**2 - fee
        num, _ = integrate.quad(first_passage_density, 0.0, t, args=(b, nu, sigma), epsabs=1e-13, limit=200)
        cf = float(
            barrier.breach_probability(
                1.0, math.exp(b), sigma, 6 * HOUR, is_long=True, drift_annual=mu, fee_drift_annual=fee
            )
        )
        assert cf == pytest.approx(num, abs=1e-8)

    def test_matches_bridge_monte_carlo_within_three_standard_errors(self):
        """Exact-bridge Monte Carlo (50 steps) agrees with the closed form within 3 SE for both sides."""
        rng = np.random.default_rng(7)
        paths = simulate_paths(PathModel(sigma_annual=(0.8,), drift_annual=(0.4,)), HOUR, 50, 100_000, rng)
        levels = np.array([2940.0, 3070.0])
        longs = np.array([True, False])
        est = breach_probabilities(paths, [0, 0], longs, np.log(levels / 3000.0))
        cf = barrier.breach_probability(3000.0, levels, 0.8, HOUR, is_long=longs, drift_annual=0.4)
        assert np.all(np.abs(est.probability - cf) < 3 * est.stderr)

    def test_bgk_matches_discretely_monitored_monte_carlo_within_five_percent(self):
        """BGK-corrected closed form is within 5 % of MC that checks the barrier only once a minute."""
        rng = np.random.default_rng(11)
        n_steps, n_paths, sigma = 60, 400_000, 0.8
        dt = HOUR / SECONDS_PER_YEAR / n_steps
        x = np.zeros(n_paths)
        low = np.zeros(n_paths)
        for _ in range(n_steps):
            x += -0.5 * sigma**2 * dt + sigma * math.sqrt(dt) * rng.standard_normal(n_paths)
            np.minimum(low, x, out=low)
        mc = float(np.mean(low <= math.log(2940.0 / 3000.0)))  # MC relative SE ~1.3 %
        bgk = float(
            barrier.breach_probability(3000.0, 2940.0, sigma, HOUR, is_long=True, monitoring_dt_s=HOUR / n_steps)
        )
        cont = float(barrier.breach_probability(3000.0, 2940.0, sigma, HOUR, is_long=True))
        assert bgk == pytest.approx(mc, rel=0.05)
        assert cont > 1.1 * mc  # the correction matters: continuous monitoring overstates by >10 %


class TestInversion:
    @pytest.mark.parametrize("is_long", [True, False])
    @pytest.mark.parametrize(("mu", "fee_rate"), [(0.0, 0.0), (0.8, 0.1), (-0.8, 0.3)])
    def test_collateral_round_trips_to_target_probability(self, is_long, mu, fee_rate):
        """The collateral found for p = 1e-4 puts the domain liquidation price where the closed form gives 1e-4."""
        kw = {
            "is_long": is_long,
            "size": 2.0,
            "entry": 2900.0,
            "price": 3000.0,
            "maintenance": 0.005,
            "sigma_annual": 0.8,
            "horizon_s": HOUR,
            "pending_fee": 3.0,
            "drift_annual": mu,
            "fee_rate_annual": fee_rate,
        }
        c = float(barrier.collateral_for_probability(1e-4, **kw))
        pos = Position(
            "0xa", 0, Side.LONG if is_long else Side.SHORT, 2 * 10**18, 2900 * 10**8, round(c * 1e6), 3_000_000
        )
        market = Market(0, "ETH", 5 * 10**15, 50 * 10**18, 10**16, 0, 3600)
        s_liq = pos.liquidation_price(market)
        c_drift = float(barrier.fee_drift(is_long, 2900.0, 3000.0, fee_rate, 0.005))
        p = float(
            barrier.breach_probability(
                3000.0, s_liq, 0.8, HOUR, is_long=is_long, drift_annual=mu, fee_drift_annual=c_drift
            )
        )
        assert p == pytest.approx(1e-4, rel=1e-3)  # 1e-6 USD rounding of the collateral

    def test_zero_drift_inversion_is_the_reflection_formula(self):
        """Without drift the bisection equals Phi^-1(1 - p/2) sigma sqrt(T) (nu = 0 via mu = sigma^2/2)."""
        d = barrier.distance_for_probability([1e-3, 1e-4, 1e-7], 0.8, HOUR, drift_annual=0.32)
        np.testing.assert_allclose(
            d, barrier.gaussian_distance([1e-3, 1e-4, 1e-7], 0.8 * math.sqrt(HOUR / SECONDS_PER_YEAR)), rtol=1e-9
        )


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        d=st.floats(1e-4, 0.5),
        sigma=st.floats(0.05, 3.0),
        h=st.floats(1.0, 30 * 86400.0),
        mu=st.floats(-3.0, 3.0),
        is_long=st.booleans(),
    )
    def test_probability_in_unit_interval_and_monotone(self, d, sigma, h, mu, is_long):
        """Probabilities lie in [0, 1], fall with distance and rise with volatility and horizon."""
        sign = 1 if is_long else -1

        def p(dd=d, ss=sigma, hh=h):
            return float(
                barrier.breach_probability(1.0, math.exp(-sign * dd), ss, hh, is_long=is_long, drift_annual=mu)
            )

        base = p()
        assert 0.0 <= base <= 1.0 and not math.isnan(base)
        assert p(dd=d * 1.1) <= base + 1e-12
        assert p(hh=h * 1.5) >= base - 1e-12
        if mu == 0.0:
            assert p(ss=sigma * 1.2) >= base - 1e-12

    @settings(max_examples=200, deadline=None)
    @given(c=st.floats(0.0, 5000.0), extra=st.floats(0.0, 1000.0), is_long=st.booleans(), price=st.floats(2000, 4000))
    def test_more_collateral_never_raises_breach_probability(self, c, extra, is_long, price):
        """Adding collateral moves the liquidation price away, so the probability never rises."""

        def p(coll):
            s_liq = barrier.liquidation_price(is_long, 1.0, 3000.0, coll, 0.005)
            return float(barrier.breach_probability(price, s_liq, 0.8, HOUR, is_long=is_long, drift_annual=0.2))

        assert p(c + extra) <= p(c) + 1e-12
