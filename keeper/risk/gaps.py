"""Adaptive stress gap: the largest adverse oracle move to survive, estimated from recent oracle rounds.

Pure core (numpy only; no clock, no I/O). The buffer policy (:mod:`keeper.risk.policy`) keeps every
position at least ``d_stress`` (log-distance) from its liquidation price, because a single oracle round can
move the price further than any volatility-sized buffer allows for (fat tails, not volatility,
decide the buffer). A constant ``d_stress`` sized for the worst crash bar (12 %) is a fixed ratio in disguise:
it holds the crash-day buffer on calm days too. This module sizes it from the market's own recent
behaviour instead, without look-ahead (only rounds at or before the decision):

.. math::

    g_n(t) = \\max_{\\substack{t - W \\le t_i < t_j \\le t \\\\ j - i \\le n}} |\\ln P_j - \\ln P_i|, \\qquad
    d_{stress}(t) = \\mathrm{clip}(c\\, g_n(t),\\ d_{floor},\\ d_{cap})

* ``W`` (``window_s``): lookback. Crash volatility clusters on a scale of hours (the three crash windows
  of the shared data: every large round move follows other large moves within a few hours), so a window of
  a few hours raises the gap as a crash starts and lets it fall back within the same day.
* ``n``: oracle rounds that can arrive before the next chance to act lands, ``max(1, round(h / dt))``
  with ``h`` the policy horizon (check interval + inclusion latency + oracle lag) and ``dt`` the median
  round interval of the window: the buffer must survive the move over every span of up to ``n`` rounds.
* ``c`` (``factor``): the next move can exceed the largest one seen (the window is a finite sample of a
  fat-tailed distribution); ``c = 2`` keeps the out-of-sample rate at which the next round's move exceeds
  ``max(c g, floor)`` below ``p_trigger = 1e-3`` per round on the hourly ETH and BTC history 2017-2024
  (crash windows excluded) for windows of 96 rounds or more (a 6 h window of a 5-minute feed holds 288);
  see the README (risk section) for the table.
* ``d_floor`` (``floor``): a calm window says little about the next news shock; never thinner than this.
* ``d_cap``: an upper bound so one bad print cannot ask for more than the cap.

Per side: a long is liquidated by a fall and a short by a rise, so the estimate also carries
``stress_gap_down`` (the same formula over falls only, :math:`\\max (\\ln P_i - \\ln P_j)`) and
``stress_gap_up`` (rises only); the symmetric ``stress_gap`` is the larger of the two. The policy sizes a
long's trigger and target from the down gap and a short's from the up gap, and releases only beyond the
release band of the symmetric gap (:mod:`keeper.risk.policy`).

Too little history (fewer than ``min_rounds`` moves in the window) gives ``fallback`` (the policy's constant
``stress_gap``) and says so: a keeper that just started knows nothing about the market's recent gaps and
must assume the worst it is configured for. A history shorter than the window but with ``min_rounds``
moves is used as it is (a shorter window, still no look-ahead).

**Tails from long history** (``long_tail``, :class:`keeper.risk.tails.LongTail`): a window of a few hours of an
hourly feed holds a handful of moves, and a calm window says nothing of the next crash bar. With a long-history
tail of the asset (a generalised Pareto fit to years of its moves at its round interval), each side's gap is the
worse of the recent-rounds estimate and the tail's move over the horizon exceeded with probability
``tail_probability`` (the policy's ``p_trigger``), floored and capped the same way; and when recent rounds are
too few, the fallback is that tail, not the constant. The March 2020 BTC fall replayed from hourly rounds
(-24.7 % in one round, after years in which hourly falls of 16-24 % had already happened) is the case it is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from keeper.risk.tails import GapCost, LongTail

MAX_SPAN_ROUNDS = 64
"""Upper bound on ``n`` (spans longer than this are covered by the volatility term of the policy)."""


@dataclass(frozen=True, slots=True)
class GapEstimate:
    """The stress gap to use (log-distance) and how it was obtained."""

    stress_gap: float
    raw_gap: float  # g_n: the largest |log move| over spans of up to n rounds in the window (nan on fallback)
    span_rounds: int  # n
    rounds_used: int  # price rounds inside the window
    fallback_reason: str | None = None
    stress_gap_down: float | None = None  # d_s for longs: from the largest FALL only (None: = stress_gap)
    stress_gap_up: float | None = None  # d_s for shorts: from the largest RISE only (None: = stress_gap)
    tail_gap: float | None = None  # the long-history tail's (larger side's) gap, floored and capped, when one was given

    @property
    def side_gaps(self) -> SideGaps:
        """The per-side gaps (down for longs, up for shorts) to hand to ``assess_positions``."""
        down = self.stress_gap if self.stress_gap_down is None else self.stress_gap_down
        up = self.stress_gap if self.stress_gap_up is None else self.stress_gap_up
        return SideGaps(down, up)


class SideGaps(NamedTuple):
    """Stress gaps per side (log-distances): a long is liquidated by a fall, a short by a rise.

    ``max(down, up)`` is the symmetric gap (the largest |move|)."""

    down: float
    up: float

    @property
    def both(self) -> float:
        return max(self.down, self.up)


def span_rounds(horizon_s: float, median_dt_s: float) -> int:
    """n = max(1, round(h / dt)) capped at :data:`MAX_SPAN_ROUNDS` (1 when dt is unknown)."""
    if not (median_dt_s > 0 and math.isfinite(median_dt_s)) or not horizon_s > 0:
        return 1
    return int(min(MAX_SPAN_ROUNDS, max(1, round(horizon_s / median_dt_s))))


def max_span_move(log_prices: ArrayLike, n: int) -> float:
    """max over i < j <= i + n of |x_j - x_i| (0 for fewer than two points)."""
    x = np.asarray(log_prices, dtype=float)
    best = 0.0
    for m in range(1, min(n, x.size - 1) + 1):
        best = max(best, float(np.max(np.abs(x[m:] - x[:-m]))))
    return best


def max_span_moves(log_prices: ArrayLike, n: int) -> tuple[float, float]:
    """(largest fall, largest rise) over i < j <= i + n: max of x_i - x_j and of x_j - x_i, each >= 0."""
    x = np.asarray(log_prices, dtype=float)
    down = up = 0.0
    for m in range(1, min(n, x.size - 1) + 1):
        d = x[m:] - x[:-m]
        up = max(up, float(np.max(d)))
        down = max(down, float(-np.min(d)))
    return down, up


def estimate_stress_gap(
    times_s: ArrayLike,
    prices: ArrayLike,
    *,
    now_s: float | None = None,
    horizon_s: float,
    window_s: float,
    factor: float,
    floor: float,
    cap: float,
    fallback: float,
    min_rounds: int = 30,
    long_tail: LongTail | None = None,
    tail_probability: float = 1e-3,
    tail_cost: GapCost | None = None,
) -> GapEstimate:
    """d_stress = clip(factor * g_n, floor, cap) from the oracle rounds ``(times_s, prices)`` (see module doc),
    per side the worse of that and the long-history tail when ``long_tail`` is given: read at
    ``tail_probability`` per decision, or with ``tail_cost``, when the history measures the feed's own rounds,
    at the cost-optimal return level (:meth:`keeper.risk.tails.LongTail.cost_optimal_gaps`: a yearly rate of
    gaps through the buffer, priced).

    ``now_s`` (default: the last round's time) closes the window ``[now_s - window_s, now_s]``; rounds after
    ``now_s`` are ignored (no look-ahead). Rounds must be in time order; non-positive prices are dropped.
    Too little history returns the long-history tail when given, else ``max(fallback, floor)`` capped, with the
    reason.
    """
    if not (window_s > 0 and factor > 0 and 0 <= floor <= cap < 1 and 0 <= fallback < 1):
        raise ValueError("need window_s > 0, factor > 0, 0 <= floor <= cap < 1, 0 <= fallback < 1")
    if not 0 < tail_probability < 1:
        raise ValueError("tail_probability must be strictly between 0 and 1")
    t = np.asarray(times_s, dtype=float)
    p = np.asarray(prices, dtype=float)
    if t.shape != p.shape:
        raise ValueError("times_s and prices must have the same length")
    ok = np.isfinite(p) & (p > 0) & np.isfinite(t)
    t, p = t[ok], p[ok]
    if now_s is not None:
        keep = t <= now_s
        t, p = t[keep], p[keep]

    def bound(x: float) -> float:
        return float(min(max(x, floor), cap))

    tail = None
    if long_tail is not None:
        feed_dt = float(np.median(np.diff(t))) if t.size >= 2 else None
        if tail_cost is not None and long_tail.measures(feed_dt):
            tail_down, tail_up = long_tail.cost_optimal_gaps(horizon_s, feed_dt, *tail_cost)
        else:  # a feed faster than the history's rounds: the history only bounds its moves (LongTail.measures)
            tail_down, tail_up = long_tail.side_gaps(tail_probability, horizon_s, feed_dt)
        tail = (bound(tail_down), bound(tail_up))

    def short_history(reason: str, rounds: int) -> GapEstimate:
        if tail is None:
            fb = bound(fallback)
            return GapEstimate(fb, math.nan, 1, rounds, reason)
        source = f" ({long_tail.source})" if long_tail is not None and long_tail.source else ""
        return GapEstimate(
            max(tail), math.nan, 1, rounds, f"{reason}: long-history tail{source}", tail[0], tail[1], max(tail)
        )

    if t.size == 0:
        return short_history("no oracle history", 0)
    end = float(t[-1]) if now_s is None else float(now_s)
    start = end - window_s
    # the first round kept is the last one at or before the window's start (its move into the window counts)
    first = max(0, int(np.searchsorted(t, start, side="right")) - 1)
    t, p = t[first:], p[first:]
    if t.size - 1 < min_rounds:
        return short_history(f"{t.size - 1} moves in the window < {min_rounds}", int(t.size))
    n = span_rounds(horizon_s, float(np.median(np.diff(t))))
    down, up = max_span_moves(np.log(p), n)
    g = max(down, up)  # = max_span_move: the largest |move|
    gap_down, gap_up = bound(factor * down), bound(factor * up)
    if tail is not None:
        gap_down, gap_up = max(gap_down, tail[0]), max(gap_up, tail[1])
    return GapEstimate(
        max(gap_down, gap_up),
        g,
        n,
        int(t.size),
        None,
        gap_down,
        gap_up,
        None if tail is None else max(tail),
    )
