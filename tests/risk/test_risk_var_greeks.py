"""VaR/ES reference values and historical quantiles; Black-Scholes/Black-76 greeks against QuantLib."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keeper.domain import Position, Side
from keeper.risk import greeks, var


class TestVarEs:
    def test_student_t_reference_values(self):
        """Standard t, nu = 4, a = 0.99: VaR 3.746947, ES 5.220584 (closed forms of McNeil, Frey, Embrechts, QRM
        2015, 2.2.3), to 1e-6."""
        r = var.var_es_student_t(0.0, 1.0, 4.0, 0.99)
        assert r.var == pytest.approx(3.746947, abs=1e-6)
        assert r.es == pytest.approx(5.220584, abs=1e-6)

    def test_normal_reference_values(self):
        """Standard normal at 99 %: VaR 2.326348, ES 2.665214 (QRM table 2.1), to 1e-6."""
        r = var.var_es_normal(0.0, 1.0, 0.99)
        assert r.var == pytest.approx(2.326348, abs=1e-6)
        assert r.es == pytest.approx(2.665214, abs=1e-6)

    def test_historical_on_known_sample(self):
        """Losses 1..100 at 95 %: VaR is the 95th smallest (95), ES the mean of the worst 5 (98)."""
        r = var.var_es_empirical(np.arange(1, 101)[::-1], 0.95)
        assert (r.var, r.es) == (95.0, pytest.approx(98.0))

    def test_monte_carlo_sample_converges_to_parametric(self):
        """Empirical VaR/ES of 1e6 normal draws is within 1 % of the parametric normal values."""
        s = np.random.default_rng(0).standard_normal(1_000_000)
        mcr, ref = var.var_es_empirical(s, 0.99, method="mc"), var.var_es_normal(0.0, 1.0, 0.99)
        assert mcr.var == pytest.approx(ref.var, rel=0.01) and mcr.es == pytest.approx(ref.es, rel=0.01)

    def test_weighted_sample_equals_replicated_sample(self):
        """Integer weights give the same VaR/ES as repeating the samples."""
        x = np.array([1.0, 5.0, 2.0, 9.0, 4.0])
        w = np.array([3, 1, 2, 1, 3])
        a = var.var_es_empirical(x, 0.8, weights=w)
        b = var.var_es_empirical(np.repeat(x, w), 0.8)
        assert (a.var, a.es) == (pytest.approx(b.var), pytest.approx(b.es))

    def test_position_and_portfolio_delta_normal(self):
        """A one-asset portfolio equals the position VaR; opposite positions on perfectly correlated assets net out."""
        pos = var.position_var_es(2.0, 3000.0, 0.8, 3600.0)
        port = var.portfolio_var_es([6000.0], [0.8], None, 3600.0)
        assert port.var == pytest.approx(pos.var) and pos.var == pytest.approx(
            6000 * 0.8 * math.sqrt(3600 / 31_536_000) * 2.326348, rel=1e-6
        )
        hedged = var.portfolio_var_es([6000.0, -6000.0], [0.8, 0.8], [[1, 1], [1, 1]], 3600.0)
        assert hedged.var == pytest.approx(0.0, abs=1e-9)

    def test_losses_from_returns_exact_revaluation(self):
        """A long of 2 at 100 losing 10 % in log terms loses 200 (1 - e^-0.1)."""
        assert var.losses_from_returns([2.0], [100.0], [-0.1])[0] == pytest.approx(200 * (1 - math.exp(-0.1)))


def quantlib_greeks(spot, strike, t, sigma, is_call, rate, div):
    """Analytic European greeks from QuantLib 1.44 (independent implementation)."""
    import QuantLib as ql

    today = ql.Date(1, 1, 2026)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    maturity = today + round(t * 365)
    t_exact = dc.yearFraction(today, maturity)
    process = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(spot)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, div, dc)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, rate, dc)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sigma, dc)),
    )
    opt = ql.VanillaOption(
        ql.PlainVanillaPayoff(ql.Option.Call if is_call else ql.Option.Put, strike), ql.EuropeanExercise(maturity)
    )
    opt.setPricingEngine(ql.AnalyticEuropeanEngine(process))
    return t_exact, opt.NPV(), opt.delta(), opt.gamma(), opt.vega()


class TestGreeks:
    @pytest.mark.parametrize(
        ("spot", "strike", "days", "sigma", "is_call", "rate", "div"),
        [
            (3000.0, 3200.0, 30, 0.8, True, 0.05, 0.0),
            (3000.0, 2500.0, 7, 0.6, False, 0.03, 0.01),
            (60000.0, 60000.0, 90, 0.5, True, 0.0, 0.02),
        ],
    )
    def test_black_scholes_matches_quantlib(self, spot, strike, days, sigma, is_call, rate, div):
        """Price, delta, gamma and vega equal QuantLib's analytic engine to 1e-8 relative."""
        t, npv, d, g, v = quantlib_greeks(spot, strike, days / 365, sigma, is_call, rate, div)
        ours = greeks.bs_greeks(spot, strike, t, sigma, is_call, rate, div)
        for a, b in ((ours.price, npv), (ours.delta, d), (ours.gamma, g), (ours.vega, v)):
            assert float(a) == pytest.approx(b, rel=1e-8)

    def test_black76_is_bsm_with_carry_equal_rate(self):
        """Black-76 delta equals e^{-rT} N(d1) on the forward (Hull 18.8)."""
        from scipy.stats import norm

        f, k, t, s, r = 3000.0, 3100.0, 0.25, 0.7, 0.04
        d1 = (math.log(f / k) + 0.5 * s * s * t) / (s * math.sqrt(t))
        g = greeks.black76_greeks(f, k, t, s, True, r)
        assert float(g.delta) == pytest.approx(math.exp(-r * t) * norm.cdf(d1), rel=1e-12)

    def test_account_aggregation(self):
        """Perp deltas add per account and asset; an option adds its BS delta times quantity."""
        ps = [
            Position("0xA", 0, Side.LONG, 2 * 10**18, 3000 * 10**8, 1),
            Position("0xa", 1, Side.SHORT, 10**17, 60000 * 10**8, 1),
            Position("0xB", 0, Side.SHORT, 10**18, 3000 * 10**8, 1),
        ]
        opt = greeks.OptionPosition("0xA", 0, True, 3000.0, 0.1, -1.0, 0.8)
        res = greeks.account_greeks(ps, {0: 3000 * 10**8, 1: 60000 * 10**8}, [opt])
        call_delta = float(greeks.bs_greeks(3000.0, 3000.0, 0.1, 0.8, True).delta)
        assert res["0xa"][0].delta == pytest.approx(2.0 - call_delta)
        assert res["0xa"][0].gamma < 0 and res["0xa"][1].delta_usd == pytest.approx(-6000.0)
        assert greeks.perp_delta_by_asset(ps) == {0: pytest.approx(1.0), 1: pytest.approx(-0.1)}
