"""Long-history tails: the generalised Pareto quantile against distributions whose quantiles are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from keeper.risk.tails import MIN_EXCEEDANCES, LongTail, TailFit, adverse_moves, fit_tail, tail_gap


class TestKnownTails:
    def test_exponential_moves_have_shape_zero_and_the_exact_quantile(self):
        """Exp(rate 100) moves: xi ~ 0 and q_p = ln(1/p)/100 within 5 % at p = 1e-4 (200k draws)."""
        rng = np.random.default_rng(1)
        fit = fit_tail(rng.exponential(0.01, 200_000))
        assert fit is not None and abs(fit.shape) < 0.05
        assert fit.quantile(1e-4) == pytest.approx(math.log(1e4) / 100, rel=0.05)

    def test_student_t_tail_is_heavy_with_shape_one_over_nu(self):
        """Student-t(3) moves: xi ~ 1/3, and the 1e-4 quantile matches scipy's within 10 % (400k draws)."""
        rng = np.random.default_rng(2)
        x = 0.01 * rng.standard_t(3, 400_000)
        fit = fit_tail(np.maximum(x, 0.0))
        assert fit is not None and fit.shape == pytest.approx(1 / 3, abs=0.08)
        assert fit.quantile(1e-4) == pytest.approx(0.01 * stats.t.ppf(1 - 1e-4, 3), rel=0.10)

    def test_out_of_sample_exceedance_rate(self):
        """Fitted on one sample of t(3) moves, the 1e-3 quantile is exceeded ~1e-3 of the time in a fresh one."""
        rng = np.random.default_rng(3)
        fit = fit_tail(np.abs(rng.standard_t(3, 300_000)))
        q = fit.quantile(1e-3)
        fresh = np.abs(rng.standard_t(3, 1_000_000))
        rate = float(np.mean(fresh > q))
        assert 0.7e-3 < rate < 1.4e-3  # binomial sd at 1e6 draws is 3e-5; the fit's own error dominates

    def test_exceedance_probability_inverts_quantile(self):
        """exceedance_probability(quantile(p)) = p for p in the tail."""
        fit = TailFit(threshold=0.02, shape=0.25, scale=0.01, n_moves=10_000, n_exceedances=500, largest_move=0.2)
        for p in (1e-2, 1e-3, 1e-5):
            assert fit.exceedance_probability(fit.quantile(p)) == pytest.approx(p, rel=1e-9)


class TestInputs:
    def test_adverse_moves_per_side(self):
        """A fall is adverse for a long, a rise for a short; spans measure over n rounds."""
        lp = np.log([100.0, 90.0, 99.0, 110.0])
        assert adverse_moves(lp, "long") == pytest.approx([math.log(100 / 90), 0.0, 0.0])
        assert adverse_moves(lp, "short") == pytest.approx([0.0, math.log(99 / 90), math.log(110 / 99)])
        assert adverse_moves(lp, "short", 2) == pytest.approx([0.0, math.log(110 / 90)])

    def test_too_little_history_gives_none(self):
        """Fewer tail moves than MIN_EXCEEDANCES: no fit (the caller falls back), never a guess."""
        assert fit_tail(np.ones(MIN_EXCEEDANCES * 10)) is None
        assert tail_gap(np.log(np.linspace(100, 50, 100)), "long", 1e-3) is None

    @pytest.mark.parametrize("bad", [0.0, 1.0, -1e-3, float("nan")])
    def test_bad_probability_is_refused(self, bad):
        """p must be strictly between 0 and 1."""
        fit = TailFit(0.02, 0.2, 0.01, 1000, 50, 0.1)
        with pytest.raises(ValueError, match="probability"):
            fit.quantile(bad)

    def test_quantile_grows_as_p_shrinks(self):
        """Rarer moves are larger: q is decreasing in p, and at or above the threshold."""
        rng = np.random.default_rng(4)
        fit = fit_tail(np.abs(rng.standard_t(4, 50_000)))
        qs = [fit.quantile(p) for p in (1e-2, 1e-3, 1e-4, 1e-5)]
        assert qs == sorted(qs) and qs[0] >= fit.threshold


def _walk(n: int, seed: int, nu: float = 3.0, step_s: float = 3600.0, scale: float = 0.01):
    """A Student-t(nu) log-price random walk with one round every ``step_s``: (times, prices)."""
    rng = np.random.default_rng(seed)
    log_p = np.cumsum(scale * rng.standard_t(nu, n))
    return np.arange(n) * step_s, 3_000.0 * np.exp(log_p)


class TestLongTail:
    def test_one_round_quantile_matches_the_generating_distribution(self):
        """Fitted on 300k t(3) rounds, the one-round fall and rise exceeded with p = 1e-4 match scipy's t quantile
        within 12 % (a horizon shorter than nothing else: one round of the history)."""
        t, p = _walk(300_000, 3)
        tail = LongTail.fit(t, p, spans=(1,))
        assert tail is not None and tail.round_interval_s == 3600.0
        fall, rise = tail.side_gaps(1e-4, horizon_s=3600.0)
        exact = 0.01 * stats.t.ppf(1 - 1e-4, 3)
        assert fall == pytest.approx(exact, rel=0.12) and rise == pytest.approx(exact, rel=0.12)

    def test_longer_horizons_read_longer_spans_and_grow(self):
        """A 3-hour horizon reads the 4-round span's fit: its quantile is larger than one round's."""
        tail = LongTail.fit(*_walk(50_000, 4), spans=(1, 4))
        assert tail is not None and tail.span_rounds(3 * 3600.0) == 3
        one, four = tail.side_gaps(1e-3, 3600.0)[0], tail.side_gaps(1e-3, 3 * 3600.0)[0]
        assert four > one * 1.2

    def test_a_faster_feed_reads_the_one_round_fit_at_a_scaled_probability(self):
        """A 5-minute feed and a 5-minute horizon against hourly history: the one-round fit at 12 p (the
        subexponential tail of a sum of 12 pieces), which is smaller than the hourly quantile at p."""
        tail = LongTail.fit(*_walk(50_000, 5), spans=(1,))
        assert tail is not None
        fast = tail.side_gaps(1e-4, horizon_s=300.0, feed_interval_s=300.0)
        assert fast == pytest.approx((tail.down[0][1].quantile(12e-4), tail.up[0][1].quantile(12e-4)), rel=1e-12)
        assert fast[0] < tail.side_gaps(1e-4, horizon_s=3600.0)[0]

    def test_too_short_a_history_gives_none(self):
        assert LongTail.fit(*_walk(200, 6)) is None


class TestCostOptimalGap:
    """The buffer that minimises capital cost + expected cost of gaps through it (LongTail.cost_optimal_gaps)."""

    FIT = TailFit(threshold=0.012, shape=0.23, scale=0.009, n_moves=90_000, n_exceedances=4_500, largest_move=0.17)
    PER_YEAR = 365 * 24 * 4.0  # one observation every 15 minutes

    def yearly_cost(self, x: np.ndarray, rate: float, penalty: float) -> np.ndarray:
        """r x + nu(x) (penalty + mean overshoot), the overshoot's mean from scipy's generalised Pareto (an
        independent computation of the mean excess beyond x: E[X - x | X > x] for the fitted excesses)."""
        f = self.FIT
        dist = stats.genpareto(f.shape, loc=f.threshold, scale=f.scale)
        out = []
        for xi in x:
            tail = f.n_exceedances / f.n_moves * float(dist.sf(xi))
            overshoot = float(dist.expect(lambda v, xi=xi: v - xi, lb=xi, conditional=True))
            out.append(rate * xi + self.PER_YEAR * tail * (penalty + overshoot))
        return np.array(out)

    def test_rate_per_year_is_the_observations_times_the_exceedance_probability(self):
        for x in (0.02, 0.1, 0.3):
            expect = self.PER_YEAR * self.FIT.exceedance_probability(x)
            assert self.FIT.rate_per_year(x, self.PER_YEAR) == pytest.approx(expect, rel=1e-9)

    @pytest.mark.parametrize(("rate", "penalty"), [(0.08, 0.01), (0.30, 0.01), (0.08, 0.05)])
    def test_the_root_is_the_minimum_of_the_yearly_cost_on_a_grid(self, rate, penalty):
        """Brute force over a grid of buffers (scipy's GPD for the rate and the mean overshoot): the argmin is
        within one grid step (0.002) of the first-order condition's root."""
        x_star = self.FIT.cost_optimal_move(self.PER_YEAR, rate, penalty)
        grid = np.arange(0.05, 0.8, 0.002)
        best = float(grid[int(np.argmin(self.yearly_cost(grid, rate, penalty)))])
        assert x_star == pytest.approx(best, abs=0.0021)

    def test_dearer_capital_buys_less_buffer_and_a_dearer_penalty_more(self):
        x = self.FIT.cost_optimal_move
        assert x(self.PER_YEAR, 0.30, 0.01) < x(self.PER_YEAR, 0.08, 0.01) < x(self.PER_YEAR, 0.08, 0.05)
        assert x(self.PER_YEAR, 0.0, 0.01) == math.inf
        # so cheap to cross (capital at 1000 %/yr) that the tail's threshold is the most the fit says
        assert x(self.PER_YEAR, 9.99e3, 0.0) == self.FIT.threshold

    def test_a_feed_faster_than_the_history_gets_the_one_round_rate_bound(self):
        """A 1-minute and a 5-minute feed (both faster than the hourly history) get the same gap, the one-round
        fit's at one observation per history round (the single-jump bound on their yearly rate); neither is a
        feed the history measures, an hourly one is."""
        tail = LongTail.fit(*_walk(100_000, 7), spans=(1, 2, 4))
        assert tail is not None
        one = tail.cost_optimal_gaps(72.0, 60.0, 0.08, 0.01)
        five = tail.cost_optimal_gaps(312.0, 300.0, 0.08, 0.01)
        assert one == five
        assert one[0] == tail.down[0][1].cost_optimal_move(365 * 24.0, 0.08, 0.01)
        assert not tail.measures(300.0) and not tail.measures(None) and tail.measures(3600.0)

    def test_a_longer_horizon_never_gets_a_thinner_buffer(self):
        """Spans' fits extrapolate with different shapes; the gap over a horizon is the worst of every span in it."""
        tail = LongTail.fit(*_walk(100_000, 8), spans=(1, 2, 4, 8))
        assert tail is not None
        gaps = [tail.cost_optimal_gaps(h * 3600.0, 3600.0, 0.08, 0.01) for h in (1, 2, 4, 8)]
        assert [g[0] for g in gaps] == sorted(g[0] for g in gaps)
        assert [g[1] for g in gaps] == sorted(g[1] for g in gaps)
