"""Volatility estimation: GARCH-t against simulated truth and the arch package, EWMA, irregular times, fallbacks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keeper.domain import SECONDS_PER_YEAR
from keeper.risk import volatility as vol


def simulate_garch_t(n: int, omega: float, alpha: float, beta: float, nu: float, seed: int) -> np.ndarray:
    """Plain-loop GARCH(1,1) with unit-variance Student-t innovations."""
    rng = np.random.default_rng(seed)
    s2 = omega / (1 - alpha - beta)
    out = np.empty(n)
    for i in range(n):
        out[i] = math.sqrt(s2) * rng.standard_t(nu) / math.sqrt(nu / (nu - 2))
        s2 = omega + alpha * out[i] ** 2 + beta * s2
    return out


@pytest.fixture(scope="module")
def garch_sample() -> np.ndarray:
    return simulate_garch_t(6000, 2e-6, 0.10, 0.85, 5.0, seed=3)


class TestGarch:
    def test_recovers_simulated_parameters(self, garch_sample):
        """MLE on 6,000 simulated returns recovers alpha, beta within 0.05 and nu within 1.5 (sampling error)."""
        fit = vol.fit_garch_t(garch_sample)
        assert fit.alpha == pytest.approx(0.10, abs=0.05)
        assert fit.beta == pytest.approx(0.85, abs=0.05)
        assert fit.nu == pytest.approx(5.0, abs=1.5)
        assert fit.unconditional_variance == pytest.approx(2e-6 / 0.05, rel=0.3)

    def test_matches_arch_package(self, garch_sample):
        """Parameters, log likelihood and forecasts agree with arch 8 (mean='Zero', dist='t') on the same data."""
        from arch import arch_model

        fit = vol.fit_garch_t(garch_sample)
        res = arch_model(garch_sample * 100, mean="Zero", vol="GARCH", dist="t", rescale=False).fit(disp="off")
        assert fit.alpha == pytest.approx(res.params["alpha[1]"], abs=2e-3)
        assert fit.beta == pytest.approx(res.params["beta[1]"], abs=2e-3)
        assert fit.nu == pytest.approx(res.params["nu"], rel=1e-2)
        # arch's likelihood is of the returns x100: each observation differs by ln(100)
        assert fit.loglik == pytest.approx(res.loglikelihood + garch_sample.size * math.log(100), abs=0.05)
        ours = vol.garch_forecast(fit, 10)
        theirs = res.forecast(horizon=10).variance.values[-1] / 1e4
        np.testing.assert_allclose(ours, theirs, rtol=5e-3)

    def test_forecast_matches_recursion(self):
        """The closed-form multi-step forecast equals iterating E s2_{k+1} = omega + (alpha+beta) E s2_k."""
        fit = vol.GarchFit(omega=1e-6, alpha=0.08, beta=0.9, nu=5.0, loglik=0.0, next_variance=4e-5, n_obs=100)
        s2, expected = 4e-5, []
        for _ in range(25):
            expected.append(s2)
            s2 = fit.omega + fit.persistence * s2
        np.testing.assert_allclose(vol.garch_forecast(fit, 25), expected, rtol=1e-12)

    def test_filter_equals_plain_loop(self, garch_sample):
        """The lfilter variance recursion equals the plain loop."""
        bc = float(np.mean(garch_sample[:75] ** 2))
        fast = vol.garch_variance_path(garch_sample, 1e-6, 0.1, 0.85, bc)
        slow = vol.garch_variance_path_loop(garch_sample, 1e-6, 0.1, 0.85, bc)
        np.testing.assert_allclose(fast, slow, rtol=1e-11)


class TestEwmaAndIrregularTimes:
    def test_ewma_equals_loop(self):
        """The vectorised EWMA equals v = lam v + (1 - lam) r^2/dt run in a loop."""
        rng = np.random.default_rng(5)
        r, dt = rng.standard_normal(200) * 1e-3, rng.uniform(5, 60, 200)
        v = float(np.mean(r[:30] ** 2 / dt[:30]))
        for ri, di in zip(r, dt, strict=True):
            v = 0.94 * v + 0.06 * ri * ri / di
        assert vol.ewma_variance_per_s(r, dt) == pytest.approx(v, rel=1e-12)

    @pytest.mark.parametrize("model", ["ewma", "garch"])
    def test_irregular_rounds_give_the_true_volatility(self, model):
        """GBM sampled at irregular times (5 s to 10 min apart) gives sigma = 0.8 within 10 %."""
        rng = np.random.default_rng(9)
        dt = rng.choice([5.0, 60.0, 600.0], size=5000, p=[0.5, 0.3, 0.2])
        t = np.concatenate(([0.0], np.cumsum(dt)))
        x = np.concatenate(([0.0], np.cumsum(0.8 * np.sqrt(dt / SECONDS_PER_YEAR) * rng.standard_normal(dt.size))))
        est = vol.estimate_volatility(t, 3000 * np.exp(x), model=model, lam=0.995)
        assert est.model == model and est.fallback_reason == ""
        assert est.sigma_annual == pytest.approx(0.8, rel=0.10)

    def test_too_little_history_falls_back_and_says_why(self):
        """Twenty rounds are too few: the fallback volatility is used and the reason names the count."""
        est = vol.estimate_volatility(
            np.arange(21) * 60.0, np.full(21, 3000.0) * np.exp(np.linspace(0, 0.01, 21)), fallback_annual=1.5
        )
        assert est.model == "fallback" and est.sigma_annual == 1.5
        assert "20 returns" in est.fallback_reason

    def test_implied_volatility_floor(self):
        """A floor above the estimate replaces it and is flagged."""
        rng = np.random.default_rng(1)
        p = 3000 * np.exp(np.cumsum(1e-4 * rng.standard_normal(500)))
        est = vol.estimate_volatility(np.arange(500) * 60.0, p, floor_annual=2.0)
        assert est.sigma_annual == 2.0 and est.floored and est.raw_sigma_annual < 2.0

    def test_duplicate_timestamps_are_dropped(self):
        """Rounds that do not advance time are ignored instead of dividing by zero."""
        r, dt = vol.log_returns([0, 10, 10, 20], [100.0, 101.0, 102.0, 103.0])
        assert dt.tolist() == [10.0, 10.0] and r.size == 2
