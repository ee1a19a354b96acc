"""Monte Carlo engine: shared paths vs a loop oracle, correlation repair, fat tails, Sobol, importance sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keeper.domain import SECONDS_PER_YEAR
from keeper.risk import barrier
from keeper.risk import montecarlo as mc

HOUR = 3600.0


class TestSharedPaths:
    def test_searchsorted_equals_loop_oracle(self):
        """Sorted per-asset extremes give exactly the per-position loop counts (weighted and unweighted)."""
        rng = np.random.default_rng(1)
        paths = mc.simulate_paths(mc.PathModel(sigma_annual=(0.8, 0.5, 1.2)), HOUR, 20, 2000, rng)
        n = 300
        idx, longs = rng.integers(0, 3, n), rng.random(n) < 0.5
        b = np.where(longs, -1, 1) * rng.uniform(0.0, 0.03, n)
        np.testing.assert_allclose(
            mc.breach_probabilities(paths, idx, longs, b).probability,
            mc.breach_probabilities_loop(paths, idx, longs, b),
            atol=1e-15,
        )
        w = mc.simulate_paths(
            mc.PathModel(sigma_annual=(0.8, 0.5, 1.2)), HOUR, 20, 2000, rng, importance_shift=[-0.2, 0, 0.1]
        )
        np.testing.assert_allclose(
            mc.breach_probabilities(w, idx, longs, b).probability,
            mc.breach_probabilities_loop(w, idx, longs, b),
            rtol=1e-10,
        )

    def test_correlation_of_increments(self):
        """Terminal log returns have the requested correlation within 0.02."""
        corr = ((1.0, 0.7), (0.7, 1.0))
        paths = mc.simulate_paths(
            mc.PathModel(sigma_annual=(0.8, 0.6), corr=corr), HOUR, 4, 50_000, np.random.default_rng(2)
        )
        assert np.corrcoef(paths.terminal)[0, 1] == pytest.approx(0.7, abs=0.02)

    def test_nearest_correlation_repairs_indefinite_matrix(self):
        """An inconsistent correlation matrix becomes positive definite with unit diagonal, close to the input."""
        bad = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
        assert np.linalg.eigvalsh(bad).min() < 0
        fixed = mc.nearest_correlation(bad)
        assert np.linalg.eigvalsh(fixed).min() > 0
        np.testing.assert_allclose(np.diag(fixed), 1.0)
        assert np.abs(fixed - bad).max() < 0.6
        np.linalg.cholesky(fixed)

    def test_nearest_correlation_is_highams_example(self):
        """Higham (2002)'s 3x3 example [[1,1,0],[1,1,1],[0,1,1]] gives off-diagonals 0.7607 and 0.1573: PSD,
        unit diagonal, and nearer to the input (Frobenius) than eigenvalue clipping."""
        a = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
        x = mc.nearest_correlation(a)
        expected = np.array([[1.0, 0.7607, 0.1573], [0.7607, 1.0, 0.7607], [0.1573, 0.7607, 1.0]])
        np.testing.assert_allclose(x, expected, atol=1e-4)
        np.testing.assert_allclose(np.diag(x), 1.0)
        assert np.linalg.eigvalsh(x).min() > 0
        clipped = mc.clip_correlation(a)
        assert np.linalg.norm(x - a) < np.linalg.norm(clipped - a) - 1e-3

    def test_nearest_correlation_keeps_a_valid_matrix(self):
        """A positive-definite correlation matrix comes back unchanged."""
        good = np.array([[1.0, 0.3], [0.3, 1.0]])
        np.testing.assert_array_equal(mc.nearest_correlation(good), good)

    def test_student_t_increments_keep_the_variance(self):
        """Student-t (nu = 4) increments have the GBM variance sigma^2 T within 3 %."""
        paths = mc.simulate_paths(
            mc.PathModel(sigma_annual=(0.8,), student_t_nu=4.0), HOUR, 10, 200_000, np.random.default_rng(3)
        )
        assert float(np.var(paths.terminal)) == pytest.approx(0.64 * HOUR / SECONDS_PER_YEAR, rel=0.03)

    def test_seeded_runs_are_reproducible(self):
        """The same seed gives identical paths."""
        a = mc.simulate_paths(mc.PathModel(sigma_annual=(0.8,)), HOUR, 5, 100, np.random.default_rng(42))
        b = mc.simulate_paths(mc.PathModel(sigma_annual=(0.8,)), HOUR, 5, 100, np.random.default_rng(42))
        np.testing.assert_array_equal(a.path_min, b.path_min)


class TestVarianceReduction:
    def test_sobol_beats_pseudo_random(self):
        """Scrambled Sobol with bridge ordering has a smaller RMSE than pseudo-random at equal path count."""
        b = math.log(2940.0 / 3000.0)
        exact = float(barrier.breach_probability(3000.0, 2940.0, 0.8, HOUR, is_long=True))

        def rmse(sobol):
            errs = []
            for seed in range(12):
                paths = mc.simulate_paths(
                    mc.PathModel(sigma_annual=(0.8,)), HOUR, 16, 4096, np.random.default_rng(seed), sobol=sobol
                )
                errs.append(mc.breach_probabilities(paths, [0], [True], [b]).probability[0] - exact)
            return math.sqrt(np.mean(np.square(errs)))

        assert rmse(True) < 0.7 * rmse(False)

    def test_bridge_increments_are_standard_normal(self):
        """Brownian-bridge ordering preserves i.i.d. N(0, 1) increments (variance within 2 %, no correlation)."""
        z = np.random.default_rng(4).standard_normal((16, 100_000))
        inc = mc.bridge_increments(z)
        np.testing.assert_allclose(inc.var(axis=1), 1.0, atol=0.02)
        assert abs(np.corrcoef(inc[3], inc[11])[0, 1]) < 0.02

    def test_importance_sampling_rare_event(self):
        """At p ~ 1e-4 importance sampling lands within 3 SE of the closed form with relative SE below 5 %."""
        b = -0.0332
        exact = float(barrier.breach_probability(1.0, math.exp(b), 0.8, HOUR, is_long=True))
        theta = mc.importance_shift_for_barrier(b, 0.8, HOUR, 50)
        paths = mc.simulate_paths(
            mc.PathModel(sigma_annual=(0.8,)), HOUR, 50, 20_000, np.random.default_rng(5), importance_shift=[theta]
        )
        est = mc.breach_probabilities(paths, [0], [True], [b])
        assert abs(est.probability[0] - exact) < 3 * est.stderr[0]
        assert est.stderr[0] / exact < 0.05


class TestCrossMargin:
    def test_account_breach_close_to_screening_formula(self):
        """A two-asset cross-margin account: grid-checked MC within 15 % of the BGK-corrected arithmetic-BM screen."""
        corr = ((1.0, 0.6), (0.6, 1.0))
        rng = np.random.default_rng(6)
        paths = mc.simulate_paths(
            mc.PathModel(sigma_annual=(0.8, 0.6), corr=corr), HOUR, 120, 40_000, rng, keep_paths=True
        )
        spot = np.array([3000.0, 60000.0])
        q = np.array([10.0, -0.3])
        m = np.array([0.005, 0.005])
        net_c = 600.0
        p_mc, se = mc.account_breach_probability(paths, spot, [0, 1], q, spot, m, net_c)
        excess = net_c - float(np.sum(m * np.abs(q) * spot))
        screen = mc.account_breach_screen(
            excess, (q - m * np.abs(q)) * spot, [0.8, 0.6], corr, HOUR, monitoring_dt_s=30.0
        )
        assert se > 0 and p_mc == pytest.approx(screen, rel=0.15)

    def test_single_position_account_matches_isolated_closed_form(self):
        """One long in a 'cross' account reproduces the isolated barrier probability (grid-monitored, BGK)."""
        paths = mc.simulate_paths(
            mc.PathModel(sigma_annual=(0.8,)), HOUR, 60, 40_000, np.random.default_rng(8), keep_paths=True
        )
        p, se = mc.account_breach_probability(paths, [3000.0], [0], [1.0], [3000.0], [0.005], 60.0)
        s_liq = float(barrier.liquidation_price(True, 1.0, 3000.0, 60.0, 0.005))
        bgk = float(barrier.breach_probability(3000.0, s_liq, 0.8, HOUR, is_long=True, monitoring_dt_s=60.0))
        assert abs(p - bgk) < 3 * se + 0.05 * bgk
