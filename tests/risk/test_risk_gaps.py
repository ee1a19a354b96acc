"""Adaptive stress gap (keeper.risk.gaps) and its use by the buffer policy (bands, release size)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.domain import SECONDS_PER_YEAR, WAD, Market, Position, Side
from keeper.replay.prices import Bars, long_tail_before
from keeper.risk import gaps
from keeper.risk import policy as pol
from keeper.risk.tails import LongTail

ETH = Market(0, "ETH", 5 * 10**15, 50 * WAD, 10**16, int(0.10 * WAD / SECONDS_PER_YEAR), 3600)
KW = {
    "horizon_s": 60.0,
    "window_s": 3600.0,
    "factor": 2.0,
    "floor": 0.03,
    "cap": 0.5,
    "fallback": 0.12,
    "min_rounds": 30,
}


def series(log_moves, dt=60.0, p0=3000.0):
    """Rounds every ``dt`` seconds whose log-returns are ``log_moves``."""
    x = np.concatenate(([0.0], np.cumsum(log_moves)))
    return np.arange(x.size) * dt, p0 * np.exp(x)


def test_largest_move_times_factor_closed_form():
    """60 moves of 0.5 % and one of -2.5 %: d_s = 2 x 2.5 % = 5 % (one-round spans: h = dt)."""
    t, p = series([0.005] * 30 + [-0.025] + [0.005] * 29)
    est = gaps.estimate_stress_gap(t, p, **KW)
    assert est.fallback_reason is None and est.span_rounds == 1
    assert est.raw_gap == pytest.approx(0.025, rel=1e-12)
    assert est.stress_gap == pytest.approx(0.05, rel=1e-12)


def test_floor_cap_and_fallback():
    """Calm history gives the floor; a huge move is capped; too few rounds give the fallback with a reason."""
    t, p = series([0.001] * 60)
    assert gaps.estimate_stress_gap(t, p, **KW).stress_gap == 0.03
    t, p = series([0.001] * 40 + [-0.4] + [0.001] * 19)
    assert gaps.estimate_stress_gap(t, p, **KW).stress_gap == 0.5
    t, p = series([0.001] * 10)
    est = gaps.estimate_stress_gap(t, p, **KW)
    assert est.stress_gap == 0.12 and "10 moves" in est.fallback_reason


def test_window_forgets_old_moves_and_ignores_the_future():
    """A 10 % move older than the window no longer counts; rounds after now_s are never used."""
    t, p = series([-0.10] + [0.002] * 100)  # the big move at t=60, window 3600 s ends at t=6060
    assert gaps.estimate_stress_gap(t, p, **KW).raw_gap == pytest.approx(0.002, rel=1e-9)
    t2, p2 = series([0.002] * 100 + [-0.10])
    cut = float(t2[-2])
    assert gaps.estimate_stress_gap(t2, p2, now_s=cut, **KW).raw_gap == pytest.approx(0.002, rel=1e-9)


def test_span_rounds_covers_moves_over_the_horizon():
    """With h = 3 round intervals, three -2 % rounds in a row count as one 6 % move."""
    t, p = series([0.001] * 40 + [-0.02] * 3 + [0.001] * 20)
    est = gaps.estimate_stress_gap(t, p, **{**KW, "horizon_s": 180.0})
    assert est.span_rounds == 3 and est.raw_gap == pytest.approx(0.06, rel=1e-9)
    assert gaps.span_rounds(87.0, 75.0) == 1 and gaps.span_rounds(300.0, 60.0) == 5
    assert gaps.span_rounds(10.0, float("nan")) == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-0.2, 0.2), min_size=31, max_size=80), st.integers(1, 5))
def test_max_span_move_matches_brute_force(moves, n):
    """max_span_move equals the brute-force max over i < j <= i + n of |x_j - x_i|."""
    x = np.concatenate(([0.0], np.cumsum(moves)))
    brute = max(abs(x[j] - x[i]) for i in range(x.size) for j in range(i + 1, min(x.size, i + n + 1)))
    assert gaps.max_span_move(x, n) == pytest.approx(brute, abs=1e-12)


def test_policy_estimator_switch():
    """stress_window_s = 0 returns the constant stress_gap; otherwise the policy's parameters are used."""
    t, p = series([0.01] * 60)
    assert pol.RiskPolicy(stress_window_s=0).estimate_stress_gap(t, p, 60.0).stress_gap == 0.12
    est = pol.RiskPolicy(stress_window_s=3600).estimate_stress_gap(t, p, 60.0)
    assert est.raw_gap == pytest.approx(0.01, rel=1e-9) and est.stress_gap == 0.03  # floor 3 % > 2 x 1 %


def _pos(collateral_usd, side=Side.LONG):
    return Position("0xA", 0, side, 10**18, 3000 * 10**8, int(collateral_usd * 1e6), 0)


@pytest.mark.parametrize("side", [Side.LONG, Side.SHORT])
def test_adaptive_gap_sets_trigger_target_and_release_bands(side):
    """With d_s = 5 %: act inside 5 %, restore to 10 %, release only beyond 20 % and then down to 10 %."""
    policy = pol.RiskPolicy(release_min_fraction=0.0)

    def assess(c):
        return pol.assess_position(_pos(c, side), ETH, 3000 * 10**8, 0.3, policy, 60.0, 0, stress_gap=0.05)

    r = assess(150.0)
    assert r.stress_gap == 0.05 and r.required_distance == pytest.approx(0.10, abs=1e-5)
    topped = assess(_collateral(r, 0.049) / 1e6)
    assert topped.stress_breach and topped.top_up_e6 > 0
    after = assess((topped.position.collateral_e6 + topped.top_up_e6) / 1e6)
    assert after.log_distance == pytest.approx(0.10, abs=1e-4) and after.top_up_e6 == 0 and after.excess_e6 == 0
    hold = assess(_collateral(r, 0.19) / 1e6)
    assert hold.top_up_e6 == 0 and hold.excess_e6 == 0  # between target and release level
    far = assess(_collateral(r, 0.21) / 1e6)
    assert far.excess_e6 > 0
    released = assess((far.position.collateral_e6 - far.excess_e6) / 1e6)
    assert released.log_distance == pytest.approx(0.10, abs=1e-4)


def _collateral(r, d):
    """Collateral (e6) that puts r's position at log-distance d (fees 0, current price 3000)."""
    m = 0.005
    if r.position.side is Side.LONG:
        return (3000.0 - 3000.0 * math.exp(-d) * (1 - m)) * 1e6
    return (3000.0 * math.exp(d) * (1 + m) - 3000.0) * 1e6


def test_release_needs_a_minimum_fraction_of_notional():
    """An excess below release_min_fraction x notional is not offered; above it, it is."""
    policy = pol.RiskPolicy(release_headroom=1.0, release_min_fraction=0.05)  # release level = target; min $150

    def assess(c):
        return pol.assess_position(_pos(c), ETH, 3000 * 10**8, 0.3, policy, 60.0, 0, stress_gap=0.03)

    base = assess(100.0)
    small = assess(base.release_collateral_e6 / 1e6 + 1.0)
    assert 0 < small.position.collateral_e6 - small.required_collateral_e6 < 150e6 and small.excess_e6 == 0
    big = assess(base.required_collateral_e6 / 1e6 + 400.0)
    assert big.excess_e6 == pytest.approx(big.position.collateral_e6 - big.required_collateral_e6, abs=2)


def test_batch_uses_per_market_gaps():
    """assess_positions applies each market's stress gap and defaults a missing market to stress_gap."""
    btc = dataclasses.replace(ETH, market_id=1, symbol="BTC")
    p0, p1 = _pos(300.0), dataclasses.replace(_pos(300.0), market_id=1)
    rs = pol.assess_positions(
        [p0, p1],
        {0: ETH, 1: btc},
        {0: 3000 * 10**8, 1: 3000 * 10**8},
        {0: 0.3, 1: 0.3},
        pol.RiskPolicy(),
        60.0,
        0,
        {0: 0.04},
    )
    assert rs[0].stress_gap == 0.04 and rs[1].stress_gap == 0.12
    assert rs[0].required_distance == pytest.approx(0.08, abs=1e-5) and rs[1].required_distance == pytest.approx(
        0.24, abs=1e-5
    )


def test_per_side_gaps_take_falls_for_longs_and_rises_for_shorts():
    """A -2.5 % round among +0.5 % rounds: down gap 5 %, up gap 2 x 0.5 % -> floor 3 %; symmetric = the larger."""
    t, p = series([0.005] * 30 + [-0.025] + [0.005] * 29)
    est = gaps.estimate_stress_gap(t, p, **KW)
    assert est.stress_gap_down == pytest.approx(0.05, rel=1e-12) and est.stress_gap_up == 0.03
    assert est.side_gaps == (est.stress_gap_down, 0.03) and est.side_gaps.both == est.stress_gap
    t, p = series([0.001] * 10)  # fallback: both sides get the fallback
    assert gaps.estimate_stress_gap(t, p, **KW).side_gaps == (0.12, 0.12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-0.2, 0.2), min_size=31, max_size=80), st.integers(1, 5))
def test_max_span_moves_matches_brute_force(moves, n):
    """(largest fall, largest rise) over spans of up to n rounds, by brute force; their max is max_span_move."""
    x = np.concatenate(([0.0], np.cumsum(moves)))
    pairs = [(i, j) for i in range(x.size) for j in range(i + 1, min(x.size, i + n + 1))]
    down, up = gaps.max_span_moves(x, n)
    assert down == pytest.approx(max(0.0, max(x[i] - x[j] for i, j in pairs)), abs=1e-12)
    assert up == pytest.approx(max(0.0, max(x[j] - x[i] for i, j in pairs)), abs=1e-12)
    assert max(down, up) == pytest.approx(gaps.max_span_move(x, n), abs=1e-12)


@pytest.mark.parametrize("side", [Side.LONG, Side.SHORT])
def test_per_side_gaps_set_trigger_and_target_release_uses_the_larger(side):
    """Gaps (down 6 %, up 3 %): a long is sized on 6 %, a short on 3 %; both release only beyond 4 x 6 %."""
    policy = pol.RiskPolicy(release_min_fraction=0.0)
    own, other = (0.06, 0.03) if side is Side.LONG else (0.03, 0.06)

    default_gaps = gaps.SideGaps(0.06, 0.03)

    def assess(c, gaps_=default_gaps, p=policy):
        return pol.assess_positions([_pos(c, side)], {0: ETH}, {0: 3000 * 10**8}, {0: 0.3}, p, 60.0, 0, {0: gaps_})[0]

    r = assess(150.0)
    assert r.stress_gap == own and r.required_distance == pytest.approx(2 * own, abs=1e-5)
    assert assess(_collateral(r, own - 0.001) / 1e6).top_up_e6 > 0
    assert assess(_collateral(r, own + 0.001) / 1e6).top_up_e6 == 0
    # beyond the own side's release band (4 x own) but inside the symmetric one (4 x 6 %): hold
    if own < other:
        assert assess(_collateral(r, 4 * own + 0.01) / 1e6).excess_e6 == 0
    far = assess(_collateral(r, 0.25) / 1e6)
    assert far.excess_e6 > 0
    released = assess((far.position.collateral_e6 - far.excess_e6) / 1e6)
    assert released.log_distance == pytest.approx(2 * own, abs=1e-4)  # down to the own side's target
    # a float is both sides (backward compatible); stress_per_side=False collapses the pair to the larger gap
    assert assess(150.0, 0.06).stress_gap == 0.06
    assert assess(150.0, p=dataclasses.replace(policy, stress_per_side=False)).stress_gap == 0.06


# ---- long-history tails (issue: tails from long history as well as recent rounds) ----------------------------


def _long_tail(seed: int = 11, scale: float = 0.01) -> LongTail:
    rng = np.random.default_rng(seed)
    prices = 3_000.0 * np.exp(np.cumsum(scale * rng.standard_t(3, 40_000)))
    tail = LongTail.fit(np.arange(prices.size) * 60.0, prices, spans=(1,))
    assert tail is not None
    return tail


def test_too_few_recent_rounds_fall_back_to_the_long_history_tail_not_the_constant():
    """Five rounds are too few for the recent estimate: the gap is the tail's move at the probability asked for
    (per side), floored and capped, and the reason says so."""
    tail = _long_tail()
    t = np.arange(6) * 60.0
    est = gaps.estimate_stress_gap(t, 3_000.0 + t, long_tail=tail, tail_probability=1e-4, **KW)
    fall, rise = tail.side_gaps(1e-4, KW["horizon_s"], 60.0)
    assert est.side_gaps == pytest.approx((max(fall, KW["floor"]), max(rise, KW["floor"])))
    assert est.stress_gap != KW["fallback"] and "long-history tail" in (est.fallback_reason or "")
    assert gaps.estimate_stress_gap(t, 3_000.0 + t, **KW).stress_gap == KW["fallback"]  # without: the constant


def test_calm_recent_rounds_are_floored_by_the_tail_and_a_crash_window_exceeds_it():
    """A calm hour (0.01 % moves) gets the tail's gap; an hour with a 15 % fall keeps its own larger gap."""
    tail = _long_tail()
    t = np.arange(61) * 60.0
    calm = gaps.estimate_stress_gap(t, 3_000.0 * (1 + 1e-4 * np.sin(t)), long_tail=tail, **KW)
    fall = tail.side_gaps(1e-3, KW["horizon_s"], 60.0)[0]
    assert calm.fallback_reason is None and calm.side_gaps.down == pytest.approx(max(fall, KW["floor"]))
    assert (
        calm.tail_gap is not None
        and calm.side_gaps.down > gaps.estimate_stress_gap(t, 3_000.0 + 0 * t, **KW).stress_gap
    )
    crash = np.full(t.size, 3_000.0)
    crash[30:] = 2_550.0
    hit = gaps.estimate_stress_gap(t, crash, long_tail=tail, **KW)
    assert hit.side_gaps.down == pytest.approx(min(2 * math.log(3_000 / 2_550), KW["cap"]))
    assert hit.side_gaps.down > calm.side_gaps.down


def test_a_cost_aware_policy_reads_the_tail_at_its_cost_optimal_return_level():
    """With cost bands the long-history tail is read at the return level priced by the capital rate and the
    market's penalty (LongTail.cost_optimal_gaps), not at p_trigger per decision; without, at p_trigger. A
    dearer capital rate asks for a thinner buffer."""
    tail = _long_tail(scale=0.0005)  # thin enough that the gaps stay under the cap
    t = np.arange(61) * 60.0
    calm = 3_000.0 * (1 + 1e-4 * np.sin(t))
    plain = pol.RiskPolicy(stress_window_s=3600.0)
    priced = dataclasses.replace(plain, cost_bands=pol.CostBands(gas_usd_per_tx=1.0, capital_rate_annual=0.08))
    horizon = plain.horizon_s(60.0)
    at_p = plain.estimate_stress_gap(t, calm, 60.0, long_tail=tail, penalty=0.01)
    assert at_p.side_gaps.down == pytest.approx(
        max(tail.side_gaps(plain.p_trigger, horizon, 60.0)[0], plain.stress_floor)
    )
    cost = priced.estimate_stress_gap(t, calm, 60.0, long_tail=tail, penalty=0.01)
    fall, rise = tail.cost_optimal_gaps(horizon, 60.0, 0.08, 0.01)
    cap = plain.stress_cap
    assert cost.side_gaps == pytest.approx((min(fall, cap), min(rise, cap)))
    assert cost.side_gaps.down > at_p.side_gaps.down
    dear = dataclasses.replace(priced, cost_bands=pol.CostBands(gas_usd_per_tx=1.0, capital_rate_annual=0.5))
    assert dear.estimate_stress_gap(t, calm, 60.0, long_tail=tail, penalty=0.01).side_gaps.down < cost.side_gaps.down


def test_a_feed_faster_than_the_history_keeps_the_per_decision_reading_even_when_cost_aware():
    """An hourly history does not measure a 1-minute feed's rounds (LongTail.measures): the cost-aware policy
    reads its tail at p_trigger per decision, as the plain policy does."""
    rng = np.random.default_rng(12)
    prices = 3_000.0 * np.exp(np.cumsum(0.002 * rng.standard_t(3, 40_000)))
    hourly = LongTail.fit(np.arange(prices.size) * 3600.0, prices, spans=(1,))
    assert hourly is not None
    t = np.arange(61) * 60.0
    calm = 3_000.0 * (1 + 1e-4 * np.sin(t))
    plain = pol.RiskPolicy(stress_window_s=3600.0)
    priced = dataclasses.replace(plain, cost_bands=pol.CostBands(gas_usd_per_tx=1.0, capital_rate_annual=0.08))
    same = [p.estimate_stress_gap(t, calm, 60.0, long_tail=hourly, penalty=0.01).side_gaps for p in (plain, priced)]
    assert same[0] == same[1]
    assert same[0].down == pytest.approx(max(hourly.side_gaps(1e-3, plain.horizon_s(60.0), 60.0)[0], 0.03))


def test_the_replay_fits_the_tail_only_on_bars_before_the_window(tmp_path):
    """No look-ahead: a crash after the window's start does not change the tail the replay fits."""
    rng = np.random.default_rng(12)
    n = 5_000
    t0 = 1_600_000_000
    close = 3_000.0 * np.exp(np.cumsum(0.01 * rng.standard_t(3, n)))
    start = t0 + 4_000 * 3600

    def bars(c: np.ndarray) -> Bars:
        t = t0 + np.arange(c.size) * 3600
        return Bars("ETH", "synthetic", t, c, c * 1.001, c * 0.999, c, 3600)

    later_crash = close.copy()
    later_crash[4_500:] *= 0.3
    a, b = long_tail_before(bars(close), start), long_tail_before(bars(later_crash), start)
    assert a is not None and a == b
