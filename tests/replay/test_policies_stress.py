"""The replay's risk policy feeds the adaptive stress gap from the oracle rounds it has seen (no look-ahead)."""

from __future__ import annotations

import math

import pytest

from keeper.domain import SECONDS_PER_YEAR, WAD, Market, PriceRound
from keeper.replay.policies import Observation, RiskSized
from keeper.risk.policy import RiskPolicy

ETH = Market(0, "ETH", 5 * 10**15, 50 * WAD, 10**16, int(0.10 * WAD / SECONDS_PER_YEAR), 3600)


def _obs(k: int, price: float) -> Observation:
    return Observation(
        now_s=1_000_000 + 60 * k,
        round_index=k,
        positions=(),
        markets={0: ETH},
        prices={0: PriceRound(k + 1, int(price * 1e8), 1_000_000 + 60 * k)},
        wallet_e6={},
        sigma_annual={0: 0.5},
        check_interval_s=60.0,
    )


def test_gap_follows_the_rounds_seen_and_falls_back_before_enough_history():
    """Fallback 12 % until 30 moves are seen, then 2 x the largest move (floor 3 %); a -4 % round lifts it to 8 %."""
    pol = RiskSized(risk_policy=RiskPolicy(stress_window_s=3600.0))
    price = 3000.0
    seen = []
    for k in range(60):
        price *= math.exp(-0.04 if k == 45 else 0.001)
        seen.append(pol._stress_gaps(_obs(k, price))[0])
    assert seen[29] == (0.12, 0.12)  # 29 moves: not enough history (both sides fall back)
    assert seen[30] == (0.03, 0.03) and seen[44] == (0.03, 0.03)  # calm: the floor
    # the -4 % round is a fall: the longs' (down) gap rises to 8 %, the shorts' (up) gap stays at the floor
    assert seen[45].down == pytest.approx(0.08, rel=1e-6) and seen[59].down == pytest.approx(0.08, rel=1e-6)
    assert seen[45].up == 0.03 and seen[59].both == pytest.approx(0.08, rel=1e-6)


def test_window_drops_old_rounds():
    """After a window of calm rounds the -4 % move no longer counts and the gap returns to the floor."""
    pol = RiskSized(risk_policy=RiskPolicy(stress_window_s=1800.0))
    price = 3000.0
    for k in range(100):
        price *= math.exp(-0.04 if k == 35 else 0.001)
        gap = pol._stress_gaps(_obs(k, price))[0].both
        if k == 40:
            assert gap == pytest.approx(0.08, rel=1e-6)
    assert gap == 0.03
    assert len(pol._history[0][0]) <= 1800 / 60 + 2


def test_warm_up_rounds_fed_through_observe_round_skip_the_fallback():
    """40 calm rounds fed with observe_round before the first decision: the first gap is the floor, not 12 %."""
    pol = RiskSized(risk_policy=RiskPolicy(stress_window_s=3600.0))
    price = 3000.0
    for k in range(-40, 0):
        price *= math.exp(0.001)
        pol.observe_round(0, 1_000_000 + 60 * k, int(price * 1e8))
    assert pol._stress_gaps(_obs(0, price * math.exp(0.001)))[0] == (0.03, 0.03)
