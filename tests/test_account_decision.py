"""Margin accounts in the core: account risk (closed form, screen, Monte Carlo) and the account decision."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from aave_market import PRICES, SIGMAS, SYMBOLS
from aave_market import account as _account
from aave_market import market as _market
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.accounts.aave_v3 import (
    WAD,
    AaveRules,
    health_factor,
    margin_account,
)
from keeper.decision import AccountBookState, decide_accounts
from keeper.domain import AccountActionKind
from keeper.planner import PlanLimits
from keeper.risk.accounts import account_breach_mc, assess_account
from keeper.risk.montecarlo import PathModel, simulate_paths
from keeper.risk.policy import RiskPolicy, kappa_scaled_breach_probability, sigma_horizon

POLICY = RiskPolicy(stress_window_s=0.0)
LIMITS = PlanLimits.from_policy(POLICY, max_per_tx_e6=50_000 * 10**6, max_per_day_e6=200_000 * 10**6)


def _decide(accounts, market, wallet, limits=LIMITS, **state_kw):
    rules = AaveRules({a.user.lower(): a for a in accounts}, market, SYMBOLS)
    views = [margin_account(a, market) for a in accounts]
    return decide_accounts(
        views,
        rules,
        AccountBookState(wallet=wallet, symbols=SYMBOLS, **state_kw),
        prices_e8=market.prices_e8,
        sigmas_annual=SIGMAS,
        policy=POLICY,
        limits=limits,
        check_interval_s=60.0,
    )


class TestAccountRisk:
    def test_one_factor_liquidation_price_is_the_aave_formula(self):
        """10 WETH against 12,692.307692 USDC at LT 82.5 %: liquidation price $1,538.46 (D 1e4 / (LT q))."""
        market = _market()
        view = margin_account(_account("t", 10.0, 12_692.307692), market)
        r = assess_account(view, PRICES, SIGMAS, POLICY, 60.0)
        assert r.method == "closed_form" and r.dominant_asset == "WETH"
        # the single-collateral closed form P* = D 1e4 10^dec / (LT q) (Aave's own figures); 1e-8 relative
        assert r.liquidation_price_e8 == pytest.approx(153_846_153_840, rel=1e-8)

    def test_one_factor_probability_is_the_fat_tail_barrier(self):
        """The closed form equals 2 Phi(-d/(kappa sigma_h)) at the account's own log-distance to liquidation."""
        market = _market()
        view = margin_account(_account("t", 10.0, 22_000.0), market)
        r = assess_account(view, PRICES, SIGMAS, POLICY, 60.0)
        d = math.log(3_000 / (22_000 / (10 * 0.825)))
        expected = float(kappa_scaled_breach_probability(d, sigma_horizon(0.8, POLICY.horizon_s(60.0)), POLICY.kappa))
        assert r.log_distance == pytest.approx(d, rel=1e-9)
        assert r.breach_probability == pytest.approx(expected, rel=1e-9)

    @settings(max_examples=40, deadline=None)
    @given(weth=st.floats(5.0, 30.0), extra=st.floats(0.01, 10.0), debt=st.floats(5_000.0, 30_000.0))
    def test_more_collateral_never_raises_the_breach_probability(self, weth, extra, debt):
        """Adding WETH collateral never raises the account's breach probability."""
        market = _market()
        before = assess_account(margin_account(_account("t", weth, debt), market), PRICES, SIGMAS, POLICY, 60.0)
        after = assess_account(margin_account(_account("t", weth + extra, debt), market), PRICES, SIGMAS, POLICY, 60.0)
        assert after.breach_probability <= before.breach_probability + 1e-15

    def test_interest_accrual_is_a_drift_that_raises_the_probability(self):
        """A 300 %/yr borrow rate (debt grows) makes the same account riskier over the horizon."""
        calm = assess_account(margin_account(_account("t"), _market()), PRICES, SIGMAS, POLICY, 300.0)
        market = _market(borrow_rate=3.0)
        accruing = assess_account(margin_account(_account("t"), market), PRICES, SIGMAS, POLICY, 300.0)
        assert accruing.drift_usd_per_year == pytest.approx(-22_000 * 3.0)
        assert accruing.breach_probability > calm.breach_probability

    def test_two_factors_use_the_screen_and_monte_carlo_agrees(self):
        """WETH + WBTC collateral: screen (kappa 1) within 25 % of correlated Gaussian Monte Carlo at p ~ 1e-2."""
        policy = RiskPolicy(kappa=1.0, stress_window_s=0.0, check_interval_max_s=3600.0)
        market = _market()
        view = margin_account(_account("t", 5.0, 35_150.0, wbtc=0.5), market)
        corr = {("WETH", "WBTC"): 0.7}
        r = assess_account(view, PRICES, SIGMAS, policy, 3600.0, correlation=corr)
        assert r.method == "screen" and 1e-3 < r.breach_probability < 0.2
        model = PathModel(sigma_annual=(0.8, 0.6), corr=((1.0, 0.7), (0.7, 1.0)))
        paths = simulate_paths(model, r.horizon_s, 240, 40_000, np.random.default_rng(3), keep_paths=True)
        p_mc, se = account_breach_mc(paths, ["WETH", "WBTC"], view, PRICES)
        # screen: continuous monitoring of a linearised M; MC: 240 grid checks of the exact linear M
        assert p_mc == pytest.approx(r.breach_probability, rel=0.25), (p_mc, se, r.breach_probability)

    @settings(max_examples=25, deadline=None)
    @given(
        weth=st.floats(0.5, 20.0),
        wbtc=st.floats(0.01, 1.0),
        debt=st.floats(1_000.0, 60_000.0),
        seed=st.integers(0, 2**32 - 1),
    )
    def test_monte_carlo_by_step_layout_equals_the_per_path_layout(self, weth, wbtc, debt, seed):
        """The account Monte Carlo reduces "breached at some step" across the (steps, paths) layout; it must give
        bit for bit the estimate of the plain ``(paths, steps)`` formula ``M_0 + sum_a g_a expm1(X_a)`` (three
        correlated fat-tailed assets, so the sum over assets has an order that matters)."""
        from keeper.risk.accounts import exposures
        from keeper.risk.montecarlo import hit_probability

        view = margin_account(_account("t", weth, debt, wbtc=wbtc), _market())
        assets = ["USDC", "WBTC", "WETH"]
        corr = ((1.0, 0.1, 0.05), (0.1, 1.0, 0.7), (0.05, 0.7, 1.0))
        model = PathModel(sigma_annual=(0.05, 1.8, 2.4), corr=corr, student_t_nu=4.0)
        paths = simulate_paths(model, 3600.0, 16, 4096, np.random.default_rng(seed), keep_paths=True)
        coll, debt_usd, grad, _ = exposures(view, PRICES)
        g = np.asarray([grad.get(a, 0.0) for a in assets])
        assert paths.paths is not None
        cost = debt_usd * 1e-3
        excess = (coll - debt_usd) + np.einsum("a,apt->pt", g, np.expm1(paths.paths))
        expected = hit_probability(paths, (excess < cost).any(axis=1))
        assert account_breach_mc(paths, assets, view, PRICES, cost) == expected

    def test_survive_move_is_down_for_collateral_and_past_the_stress_gap(self):
        """The move to survive takes WETH down by at least twice its 12 % stress gap and leaves USDC alone."""
        view = margin_account(_account("t"), _market())
        r = assess_account(view, PRICES, SIGMAS, POLICY, 60.0)
        assert r.survive_prices_e8["USDC"] == PRICES["USDC"]
        assert r.survive_prices_e8["WETH"] <= PRICES["WETH"] * math.exp(-0.24) + 1

    def test_var_es_of_the_margin_is_the_student_t_formula(self):
        """With no drift the 99 % VaR and ES are the standard Student-t(4) figures times the scale."""
        # standard t, nu = 4, a = 0.99: VaR t_a = 3.746947, ES 5.220584 (McNeil, Frey, Embrechts, QRM 2.2.4); 1e-6
        from keeper.risk.accounts import account_var_es

        r = assess_account(margin_account(_account("t"), _market()), PRICES, SIGMAS, POLICY, 60.0)
        tail = account_var_es(r)
        scale = r.sigma_margin_usd * math.sqrt(r.horizon_s / (365 * 86400)) * math.sqrt(0.5)
        assert tail.var == pytest.approx(3.746947 * scale, rel=1e-6)
        assert tail.es == pytest.approx(5.220584 * scale, rel=1e-6)

    def test_decision_refines_multi_factor_accounts_by_monte_carlo(self):
        """A WETH + WBTC account is re-estimated on correlated t(4) paths: reproducible for a seed, and within
        4 standard errors of an independent run with four times the paths."""
        from keeper.risk.accounts import AccountMonteCarlo

        market = _market()
        acct = _account("0xa", 5.0, 35_600.0, wbtc=0.5)
        rules = AaveRules({"0xa": acct}, market, SYMBOLS)
        views = [margin_account(acct, market)]

        def run(seed: int, n_paths: int):
            return decide_accounts(
                views, rules, AccountBookState(symbols=SYMBOLS), prices_e8=PRICES, sigmas_annual=SIGMAS,
                policy=POLICY, limits=LIMITS, check_interval_s=300.0, correlation={("WETH", "WBTC"): 0.7},
                monte_carlo=AccountMonteCarlo(np.random.default_rng(seed), n_paths=n_paths),
            ).risks[0]  # fmt: skip

        a, b, big = run(1, 16_384), run(1, 16_384), run(2, 65_536)
        assert a.method == "monte_carlo" and a.breach_probability == b.breach_probability
        assert abs(a.breach_probability - big.breach_probability) <= 4 * math.hypot(a.stderr, big.stderr)

    @settings(max_examples=25, deadline=None)
    @given(
        books=st.lists(
            st.tuples(st.floats(0.5, 40.0), st.floats(0.0, 2.0), st.floats(1.01, 4.0), st.booleans()),
            min_size=1,
            max_size=12,
        ),
        rho=st.floats(-0.5, 0.95),
    )
    def test_vectorised_assessment_equals_the_plain_loop(self, books, rho):
        """assess_accounts (one matrix pass) gives what assess_account gives account by account."""
        from keeper.risk.accounts import assess_accounts

        market = _market()
        views = []
        for k, (weth, wbtc, hf, _with_gaps) in enumerate(books):
            coll = weth * 3000 * 0.825 + wbtc * 60000 * 0.78
            views.append(margin_account(_account(f"0x{k:040x}", weth, coll / hf, wbtc=wbtc), market))
        gaps = {"WETH": (0.05, 0.07), "WBTC": (0.04, 0.09)} if books[0][3] else None
        corr = {("WETH", "WBTC"): rho}
        fast = assess_accounts(views, PRICES, SIGMAS, POLICY, 120.0, stress_gaps=gaps, correlation=corr)
        for view, got in zip(views, fast, strict=True):
            want = assess_account(view, PRICES, SIGMAS, POLICY, 120.0, stress_gaps=gaps, correlation=corr)
            assert (got.method, got.dominant_asset, got.stress_breach, got.liquidatable) == (
                want.method, want.dominant_asset, want.stress_breach, want.liquidatable
            )  # fmt: skip
            # floats from a matrix product vs per-account sums: 1e-9 relative; integer prices within 1 unit
            assert got.breach_probability == pytest.approx(want.breach_probability, rel=1e-9, abs=1e-300)
            assert abs(got.liquidation_price_e8 - want.liquidation_price_e8) <= 1
            assert got.suggested_check_interval_s == pytest.approx(want.suggested_check_interval_s, rel=1e-9)
            for a, price in want.survive_prices_e8.items():
                assert abs(got.survive_prices_e8[a] - price) <= 1


class TestStressGrid:
    def test_grid_marks_liquidation_where_the_exact_health_factor_is_below_one(self):
        """10 WETH against 22,000 USDC (liq. $2,666.67, -11.1 %): WETH -15 % and -20 % liquidate, -10 % does
        not; USDC +15 % (debt +15 %) liquidates too; every row's flag is the exact HF < 1."""
        from keeper.risk.accounts import account_stress_grid

        market = _market()
        acct = _account("0xa")
        rules = AaveRules({"0xa": acct}, market, SYMBOLS)
        rows = account_stress_grid(
            margin_account(acct, market),
            PRICES,
            health_at=lambda p: rules.health_at("0xa", p),
            liquidated_at=lambda p: rules.health_at("0xa", p) < WAD,
        )
        by = {r.scenario: r for r in rows}
        assert by["WETH -15%"].liquidated and by["WETH -20%"].liquidated and not by["WETH -10%"].liquidated
        assert by["USDC +15%"].liquidated and not by["USDC +10%"].liquidated
        assert all(r.liquidated == (r.health < WAD) for r in rows)
        assert by["WETH -10%"].loss_usd == pytest.approx(30_000 * 0.825 * 0.10, rel=1e-9)


class TestExactMinimum:
    @settings(max_examples=30, deadline=None)
    @given(weth=st.floats(1.0, 50.0), hf=st.floats(0.5, 1.3), target=st.floats(1.0, 1.6), wbtc=st.floats(0.0, 1.0))
    def test_guess_gives_the_same_integer_as_plain_bisection(self, weth, hf, target, wbtc):
        """min_supply / min_repay with the closed-form start equal the plain bisection's answer, and are minimal."""
        from keeper.accounts import aave_v3 as av

        market = _market()
        coll = weth * 3000 * 0.825 + wbtc * 60000 * 0.78
        acct = _account("0xa", weth, coll / hf, wbtc=wbtc)
        t = int(target * 1e18)
        for asset, kind in (("USDC", "repay"), ("WETH", "supply")):
            if kind == "repay":
                got = av.min_repay(acct, market, asset, t)

                def hf_of(x, asset=asset):
                    return av.health_factor(av.after_top_up(acct, market, asset, repay=x), market)

                ur = acct.reserve(asset)
                hi = ur.scaled_variable_debt if ur else 0
            else:
                got = av.min_supply(acct, market, asset, t)

                def hf_of(x, asset=asset):
                    up = av.after_top_up(acct, market, asset, add_collateral=x, enable_collateral=True)
                    return av.health_factor(up, market)

                hi = 10**30
            plain = av._min_amount(hf_of, t, hi)
            assert got == plain
            if got:
                assert hf_of(got) >= t > hf_of(got - 1)


class TestAccountDecision:
    def test_debt_only_wallet_repays_enough_to_survive(self):
        """A wallet of USDC repays; after the repay the exact HF at the move to survive is >= 1."""
        market = _market()
        acct = _account("0xa")
        out = _decide([acct], market, {"USDC": 10**12})
        (action,) = out.onchain_actions
        assert action.kind is AccountActionKind.REPAY_DEBT and action.asset == "USDC"
        d = out.decision("0xa")
        assert d is not None and d.band == "trigger" and "repay" in d.reason
        risk = out.risks[0]
        from keeper.accounts.aave_v3 import after_top_up

        stressed = market.with_price("WETH", risk.survive_prices_e8["WETH"])
        assert health_factor(after_top_up(acct, stressed, "USDC", repay=action.amount), stressed) >= WAD
        assert health_factor(after_top_up(acct, stressed, "USDC", repay=action.amount - 1), stressed) < WAD

    def test_collateral_only_wallet_supplies(self):
        """A wallet of WETH supplies WETH on behalf."""
        out = _decide([_account("0xa")], _market(), {"WETH": 10**24})
        (action,) = out.onchain_actions
        assert action.kind is AccountActionKind.ADD_COLLATERAL and action.asset == "WETH"

    def test_both_in_wallet_picks_the_cheaper(self):
        """With both, the repay is chosen and it costs less than the supply that would also survive."""
        market = _market()
        both = _decide([_account("0xa")], market, {"WETH": 10**24, "USDC": 10**12})
        supply = _decide([_account("0xa")], market, {"WETH": 10**24})
        (chosen,) = both.onchain_actions
        assert chosen.kind is AccountActionKind.REPAY_DEBT
        assert chosen.cost_e6 < supply.onchain_actions[0].cost_e6

    def test_empty_wallet_alerts_with_the_cause(self):
        """Nothing to pay with: one alert that says the wallet holds none of the pool's assets."""
        out = _decide([_account("0xa")], _market(), {})
        assert not out.onchain_actions
        (alert,) = out.actions
        assert alert.kind is AccountActionKind.ALERT and "holds none of the pool's assets" in alert.reason

    def test_frozen_collateral_reserve_is_not_supplied_and_the_alert_says_why(self):
        """WETH frozen and only WETH in the wallet: no supply; the alert names the frozen reserve (code 28)."""
        out = _decide([_account("0xa")], _market(frozen=frozenset({"WETH"})), {"WETH": 10**24})
        assert not out.onchain_actions
        assert "frozen" in out.actions[0].reason and "28" in out.actions[0].reason

    def test_stale_price_source_is_danger(self):
        """A safe account whose WETH source is stale is in the trigger band, with the staleness in the reason."""
        out = _decide([_account("0xa", 10.0, 5_000.0)], _market(), {"USDC": 10**12}, stale_assets={"WETH": 7_200})
        d = out.decision("0xa")
        assert d is not None and d.band == "trigger" and "stale" in d.reason and d.stale_assets == ("WETH",)
        safe = _decide([_account("0xa", 10.0, 5_000.0)], _market(), {"USDC": 10**12}).decision("0xa")
        assert safe is not None and safe.band == "hold"

    def test_per_transaction_cap_sends_what_it_can_and_alerts(self):
        """Under a $500 cap the repay is $500 (not the full need) and an alert says the cap is short."""
        limits = PlanLimits.from_policy(POLICY, max_per_tx_e6=500 * 10**6, max_per_day_e6=1_000 * 10**6)
        rules = AaveRules({"0xa": _account("0xa")}, _market(), SYMBOLS)
        out = decide_accounts(
            [margin_account(_account("0xa"), _market())],
            rules,
            AccountBookState(wallet={"USDC": 10**12}, symbols=SYMBOLS),
            prices_e8=PRICES,
            sigmas_annual=SIGMAS,
            policy=POLICY,
            limits=limits,
            check_interval_s=60.0,
        )
        (action,) = out.onchain_actions
        assert action.cost_e6 <= 500 * 10**6 and action.amount == 500 * 10**6
        assert any(a.kind is AccountActionKind.ALERT and "cap" in a.reason for a in out.actions)

    def test_watch_only_account_is_alerted_not_acted_on(self):
        """A watch-only endangered account gets an alert and no transaction."""
        out = _decide([_account("0xa")], _market(), {"USDC": 10**12}, watch_only=frozenset({"0xa"}))
        assert not out.onchain_actions and "watch-only" in out.actions[0].reason

    def test_safe_account_holds(self):
        """A conservatively levered account is left alone with the reason saying so."""
        out = _decide([_account("0xa", 10.0, 3_000.0)], _market(), {"USDC": 10**12})
        d = out.decision("0xa")
        assert d is not None and d.band == "hold" and d.action == "none" and "hold" in d.reason

    def test_wallet_is_shared_in_order_of_expected_loss(self):
        """Two endangered accounts and USDC for one: the bigger expected loss is served first."""
        small, big = _account("0xs", 1.0, 2_200.0), _account("0xb", 100.0, 220_000.0)
        one = _decide([big], _market(), {"USDC": 10**12}).onchain_actions[0]
        out = _decide([small, big], _market(), {"USDC": one.amount})
        assert [a.account for a in out.onchain_actions] == ["0xb"]

    def test_an_alert_cause_names_why_without_the_figures(self):
        """An alert's ``cause`` (the alert sink's state) stays the same when only figures move (a 0.5 % lower
        price: other amounts and probabilities in the reason) and changes with the cause: a $500 cap that the
        need exceeds ("short", "over the cap"), the wallet emptied ("cannot act", "holds none"), a stale source,
        watch-only; the reasons are the same words as before, cause aside."""
        capped = PlanLimits.from_policy(POLICY, max_per_tx_e6=500 * 10**6, max_per_day_e6=1_000 * 10**6)
        book = [_account(f"0x{i:02x}", 10.0 - i / 10, 22_000.0) for i in range(6)]

        def alerts(market, wallet, **state_kw):
            out = _decide(book, market, wallet, capped, **state_kw)
            return {a.account: a for a in out.actions if a.kind is AccountActionKind.ALERT}

        lower = _market().with_price("WETH", PRICES["WETH"] * 995 // 1000)
        empty_now, empty_lower = alerts(_market(), {}), alerts(lower, {})
        assert empty_now.keys() == empty_lower.keys() == {a.user for a in book}
        for acct, a in empty_now.items():
            assert a.cause == empty_lower[acct].cause and a.reason != empty_lower[acct].reason
            assert a.cause[-2:] == ("cannot act", "the keeper's wallet holds none of the pool's assets"), a.cause
        short = alerts(_market(), {"USDC": 10**12})
        assert short.keys() == {a.user for a in book}
        for a in short.values():
            assert "repay USDC: needs #, over the cap of #" in a.cause
            assert not any(c.isdigit() for c in "".join(a.cause))
        # the $1,000 day: two $500 repays short of the target, then the day budget is spent for the other four
        kinds = sorted(a.cause[1] for a in short.values())
        assert kinds == ["cannot act"] * 4 + ["short: repay_debt USDC"] * 2, kinds
        assert all(a.cause[-1] == "day budget: # left of #" for a in short.values() if a.cause[1] == "cannot act")
        stale = alerts(_market(), {}, stale_assets={"WETH": 7_200})
        assert all(a.cause[0] == "stale price source: WETH" for a in stale.values())
        watched = alerts(_market(), {"USDC": 10**12}, watch_only=frozenset(a.user for a in book))
        assert all(a.cause[-1] == "watch-only" for a in watched.values())


class TestAaveRelease:
    """A very safe Aave account (10 WETH, 1,000 USDC): a release only with ``allow_release`` and the owner's key;
    a hold below ``p_release`` says why there was none."""

    def _one(self, *, allow: bool, owner: bool):
        account, market = _account("0xa", 10.0, 1_000.0), _market()
        rules = AaveRules({"0xa": account}, market, SYMBOLS, releasable=frozenset({"0xa"} if owner else ()))
        limits = dataclasses.replace(LIMITS, allow_release=allow)
        out = decide_accounts(
            [margin_account(account, market)],
            rules,
            AccountBookState(wallet={}, symbols=SYMBOLS, decimals={"WETH": 18, "USDC": 6}),
            prices_e8=PRICES,
            sigmas_annual=SIGMAS,
            policy=POLICY,
            limits=limits,
            check_interval_s=60.0,
        )
        d = out.decision("0xa")
        assert d is not None
        return d, out

    def test_released_with_the_key_and_the_switch(self):
        d, out = self._one(allow=True, owner=True)
        assert d.band == "release" and d.asset == "WETH" and "release (withdraw)" in d.reason
        (action,) = out.onchain_actions
        assert action.kind is AccountActionKind.RELEASE and action.amount == d.amount > 0

    @pytest.mark.parametrize(
        "allow, owner, why",
        [(False, True, "releases are not enabled"), (True, False, "the keeper does not hold the owner's key")],
    )
    def test_a_hold_says_why_there_was_no_release(self, allow, owner, why):
        d, out = self._one(allow=allow, owner=owner)
        assert d.band == "hold" and f"no release: {why}" in d.reason and not out.onchain_actions
