"""The clairvoyant lower bound on idle collateral: the dynamic programme against brute force, and the bound
against real policies on real FTX windows (no liquidation-free policy may hold less than it): the 14 h crash window
in every run, the whole 48 h window in `make test` (marker `slow`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from keeper.replay.book import load_book
from keeper.replay.bound import Frontier, book_bound, combined_bound, segment_frontier
from keeper.replay.fast import ReplayConfig, plan_timeline, run_fast
from keeper.replay.policies import parse_policy

CFG = ReplayConfig(warmup_s=6 * 3600, record=False)


def brute_force(need, mm, dt, lam, relaxed=True):
    """min over every segmentation of idle + lam * changes; idle per segment relaxed (as the DP) or exact."""
    n = len(need)
    best = (np.inf, 0)
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        idle = 0.0
        for a, b in itertools.pairwise(bounds):
            level = max(need[a:b])
            if relaxed:
                idle += max(0.0, level * sum(dt[a:b]) - sum(m * d for m, d in zip(mm[a:b], dt[a:b], strict=True)))
            else:
                idle += sum(max(0.0, level - m) * d for m, d in zip(mm[a:b], dt[a:b], strict=True))
        changes = len(bounds) - 2
        best = min(best, (idle + lam * changes, changes))
    return best


def random_path(rng, n):
    need = rng.uniform(0, 10, n) * (rng.uniform(size=n) < 0.7)
    mm = rng.uniform(0.5, 2, n)
    dt = rng.integers(1, 5, n).astype(float)
    return need, mm, dt


@pytest.mark.parametrize("seed", range(12))
def test_dynamic_programme_is_exact(seed):
    """L(lambda) equals brute force over all 2^(n-1) segmentations (n = 9) for several lambdas."""
    rng = np.random.default_rng(seed)
    need, mm, dt = random_path(rng, 9)
    lams = (0.0, 1.0, 5.0, 20.0, 200.0)
    f = segment_frontier(need, mm, dt, lams)
    for lam, cost in zip(lams, f.costs, strict=True):
        assert cost == pytest.approx(brute_force(need, mm, dt, lam)[0], rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_budget_bound_is_below_the_true_optimum(seed):
    """For every budget x, the dual bound <= the exact least idle (per-round clamp) with <= x changes."""
    rng = np.random.default_rng(100 + seed)
    need, mm, dt = random_path(rng, 8)
    f = segment_frontier(need, mm, dt, (0.0, 0.5, 2.0, 8.0, 30.0, 100.0))
    n = len(need)
    exact = {}
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        idle = sum(max(0.0, max(need[a:b]) - mm[m]) * dt[m] for a, b in itertools.pairwise(bounds) for m in range(a, b))
        k = len(bounds) - 2
        exact[k] = min(exact.get(k, np.inf), idle)
    for x in range(n):
        least = min(v for k, v in exact.items() if k <= x)
        assert f.bound(x) <= least + 1e-9
    # with no change allowed the bound is tight when lambda is large enough: one level, the max need
    assert f.bound(0) == pytest.approx(max(0.0, max(need) * dt.sum() - float(np.dot(mm, dt))))


def test_moves_bound_is_weaker_and_never_negative():
    """Counting moves as free account-level shifts can only lower the bound; both are >= 0."""
    rng = np.random.default_rng(7)
    a, b = random_path(rng, 40), random_path(rng, 40)
    lams = (0.5, 2.0, 8.0, 30.0)
    dt = a[2]
    pa, pb = segment_frontier(a[0], a[1], dt, lams), segment_frontier(b[0], b[1], dt, lams)
    acct = segment_frontier(a[0] + b[0], a[1] + b[1], dt, lams)
    pos = pa + pb
    for budget in (0, 3, 10, 40):
        with_moves, used = combined_bound(pos, acct, budget)
        assert 0.0 <= with_moves <= pos.bound(budget) + 1e-9
        assert 0 <= used <= budget


def test_frontier_algebra():
    f = Frontier((1.0, 2.0), (10.0, 12.0), (3, 1))
    assert (f + f).costs == (20.0, 24.0) and f.scaled(3).changes == (9, 3)
    with pytest.raises(ValueError):
        f + Frontier((1.0,), (1.0,), (1,))
    with pytest.raises(ValueError):
        segment_frontier([1.0, 2.0], [1.0], [1.0, 1.0], (1.0,))


# The windows the bound meets the policies on: the bars fixture and the least fraction of a policy's idle the
# bound must reach there (it is not vacuous). Measured (risk, fixed:8:16:32, fixed:12:24:48): 0.45, 0.50, 0.41 of
# their idle on the whole 48 h window; 0.23, 0.43, 0.32 on the 14 h crash window. The 48 h replay and its bounds
# cost about 10 s (the risk policy decides 2,016 rounds, the bound's programme is quadratic in them): `make test`
# runs it, `make test-unit` deselects it (marker `slow`).
WINDOWS = {"crash-14h": ("crash_bars", 0.2), "ftx-48h": ("ftx_bars", 0.4)}


@pytest.fixture(scope="module", params=["crash-14h", pytest.param("ftx-48h", marks=pytest.mark.slow)])
def window_replay(request):
    """One fast replay of a real window for the policies the bound tests compare (run once per window):
    ``(book, timeline, result, least fraction)``."""
    bars_fixture, fraction = WINDOWS[request.param]
    bars = request.getfixturevalue(bars_fixture)
    book = load_book()
    res = run_fast(book, bars, [parse_policy(p) for p in ("risk", "fixed:8:16:32", "fixed:12:24:48")], CFG)
    return book, plan_timeline(book, bars, CFG), res, fraction


def test_no_real_policy_beats_the_bound(window_replay):
    """On a real FTX window every liquidation-free policy holds at least the bound's idle for its number of
    transactions (the bound is computed from prices alone; the policies run the replay model)."""
    book, tl, res, fraction = window_replay
    bb = book_bound(book, tl)
    checked = 0
    for r in res.results.values():
        if r.liquidations:
            continue
        checked += 1
        idle = r.avg_idle_e6 / 1e6
        assert bb.avg_idle(r.transactions) <= bb.avg_idle_no_moves(r.transactions) + 1e-6
        assert bb.avg_idle(r.transactions) <= idle, r.name
        # and the bound is not vacuous: it is a real fraction of what the policies hold
        assert bb.avg_idle(r.transactions) > fraction * idle, r.name
    assert checked >= 2


def test_trigger_buffer_bound_holds_for_policies_with_that_trigger(window_replay):
    """fixed:8:16:32 never leaves a position below ratio 8 (3.5 % of the notional above maintenance) after a
    decision, the risk policy never below its 3 % stress floor (2.9 % of the notional): each holds at least the bound of
    its class, which is higher than the clairvoyant bound."""
    book, tl, res, _ = window_replay
    clair = book_bound(book, tl)
    for name, b in (("fixed:8:16:32", 0.035), ("risk", 0.029)):
        r = res.results[name]
        assert r.liquidations == 0
        bb = book_bound(book, tl, buffer=b)
        assert clair.avg_idle(r.transactions) < bb.avg_idle(r.transactions) <= r.avg_idle_e6 / 1e6, name


def test_buffer_constraint_uses_the_decision_price():
    """need[j] covers round j, and round j-1 with the cushion (not round j with the cushion)."""
    from keeper.replay.bound import survival_need

    prices = np.array([100.0, 90.0, 95.0])
    need0, _mm = survival_need(1, 1.0, 100.0, prices, 0.005)
    need, _ = survival_need(1, 1.0, 100.0, prices, 0.005, buffer=0.02)
    assert need0.tolist() == pytest.approx([0.5, 10.45, 5.475])
    # round 1: max(survive 90 -> 10.45, cushion at 100 -> 0.5 + 2 = 2.5); round 2: cushion at 90 -> 10.45 + 1.8
    assert need.tolist() == pytest.approx([0.5, 10.45, 12.25])


def test_unlimited_floor_is_every_round_covering_its_loss():
    """With lambda = 0 the floor is each round's own level: sum over rounds of max(0, need - MM) dt (per
    position), and no budget can beat it."""
    rng = np.random.default_rng(11)
    need, mm, dt = random_path(rng, 30)
    f = segment_frontier(need, mm, dt, (0.0, 3.0))
    assert f.costs[0] == pytest.approx(float(np.sum(np.maximum(0.0, need - mm) * dt)))
    for budget in (0, 5, 29):
        assert f.bound(budget) >= f.costs[0] - 1e-9
