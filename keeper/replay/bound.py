"""A lower bound on idle collateral for ANY keeper, even one that knows every future price.

Pure core (numpy only). The crash replays compare a keeper's time-weighted idle collateral and transaction
count with fixed-ratio baselines. This module answers a different question: with at most ``B`` transactions,
how little idle collateral can *any* liquidation-free policy hold on this book and price path — a
clairvoyant one included? If that floor is above a target, no policy can meet the target, and tuning cannot
change it.

**One position.** Collateral ``c`` (net of accrued fees) changes only when a transaction lands and is
constant between. Round ``j`` (price :math:`P_j`) liquidates unless
:math:`c_j + \\mathrm{pnl}_j \\ge \\mathrm{MM}_j`, so :math:`c_j \\ge n_j = \\max(0, \\mathrm{MM}_j - \\mathrm{pnl}_j)`;
its idle collateral is :math:`\\max(0, c_j - \\mathrm{MM}_j)` for :math:`\\Delta t_j` seconds (the replay's
metric, :mod:`keeper.replay.metrics`; the fee cancels out of both sides). A policy with ``s`` levels splits
the rounds into ``s`` segments; on a segment ``[i, j)`` the cheapest safe level is :math:`\\max n_{i..j-1}`,
and its idle is at least

.. math::

    I(i, j) = \\max\\Big(0,\\ \\max_{i \\le m < j} n_m \\cdot \\sum_{m=i}^{j-1} \\Delta t_m
              - \\sum_{m=i}^{j-1} \\mathrm{MM}_m \\Delta t_m\\Big)

(:math:`\\sum \\max(0, x) \\ge \\max(0, \\sum x)`). For a price :math:`\\lambda` per change, the dynamic
programme :math:`F_j = \\min_{i<j} F_i + I(i, j) + \\lambda` (optimal segmentation, Bellman 1961, "On the
approximation of curves by line segments") gives :math:`L(\\lambda) = \\min (\\text{idle} + \\lambda \\cdot
\\text{changes})` exactly, in :math:`O(n^2)`. The first level is free (the opening collateral may be
anything), which only lowers the bound.

**Budget.** Weak duality: a policy with at most ``x`` changes has idle :math:`\\ge L(\\lambda) - \\lambda x` for
every :math:`\\lambda \\ge 0`; :func:`budget_bound` takes the best :math:`\\lambda` of a grid (any grid gives a
valid bound; a finer one a tighter bound).

**Moves.** ``moveMargin`` shifts collateral between an account's two positions in one transaction, so it
changes two positions' levels at once. Two bounds together cover it. Per position: ``a`` top-ups and
releases and ``m`` moves change levels at most ``a + 2m`` times. Per account: the account's total collateral
:math:`C = \\sum c` changes only with top-ups and releases (``a``), must cover :math:`\\sum n`, and its idle is at
least :math:`\\max(0, C - \\sum \\mathrm{MM})`. With ``a + m <= B``:

.. math::

    \\text{idle} \\ge \\min_{0 \\le a \\le B} \\max\\big(f_{pos}(2B - a),\\ f_{acct}(a)\\big)

with :math:`f` the per-level budget bounds summed over positions (accounts). Reducing a position's size is
not covered: the bound is for keepers that keep the trader's positions (as the replay's policies do).

**Keepers with a trigger.** The clairvoyant keeper holds no cushion: it tops up exactly what the next round
will take. Every keeper that cannot see the next round has a trigger instead: after each of its decisions,
every position is at least ``b`` of its notional above the maintenance margin *at the price it decided on*
(``fixed:X:Y[:Z]`` has ``b = (X - 1) m`` with ``m`` the maintenance rate, 3.5 % for ``X = 8``; the risk policy
``b >= (1 - exp(-stress_floor)) (1 - m)``, 2.9 %). ``buffer = b`` adds that constraint (the level in effect at round
``j`` covers round ``j - 1``'s price with the cushion); the bound then holds for every keeper with a trigger
of at least ``b``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from keeper.domain import Side
from keeper.replay.book import Book
from keeper.replay.fast import Timeline, price_columns
from keeper.replay.metrics import TARGET_IDLE_REDUCTION, PolicyResult, best_fixed_baseline


@dataclass(frozen=True, slots=True)
class Frontier:
    """``L(lambda)`` and the number of changes of its optimum, for each ``lambda`` (USD * s per change)."""

    lams: tuple[float, ...]
    costs: tuple[float, ...]  # min(idle integral + lambda * changes), USD * s
    changes: tuple[int, ...]

    def bound(self, budget: float) -> float:
        """max over lambda of L(lambda) - lambda * budget: the least idle integral with <= budget changes."""
        return max(max(0.0, c - lam * budget) for lam, c in zip(self.lams, self.costs, strict=True))

    def __add__(self, other: Frontier) -> Frontier:
        if self.lams != other.lams:
            raise ValueError("frontiers must share the lambda grid")
        return Frontier(
            self.lams,
            tuple(a + b for a, b in zip(self.costs, other.costs, strict=True)),
            tuple(a + b for a, b in zip(self.changes, other.changes, strict=True)),
        )

    def scaled(self, k: int) -> Frontier:
        """k identical copies (k positions with the same need path)."""
        return Frontier(self.lams, tuple(k * c for c in self.costs), tuple(k * n for n in self.changes))


def segment_frontier(need: ArrayLike, mm: ArrayLike, dt: ArrayLike, lams: Sequence[float]) -> Frontier:
    """Exact ``L(lambda)`` of one level path (see the module doc): least idle integral + lambda * changes.

    ``need[j]`` the least collateral that survives round ``j``, ``mm[j]`` its maintenance margin, ``dt[j]`` the
    seconds round ``j`` lasts. Changes = segments - 1 (the first level is free).
    """
    n_ = np.asarray(need, dtype=float)
    mm_ = np.asarray(mm, dtype=float)
    dt_ = np.asarray(dt, dtype=float)
    if not (n_.shape == mm_.shape == dt_.shape) or n_.ndim != 1 or n_.size == 0:
        raise ValueError("need, mm and dt must be 1-d arrays of the same non-zero length")
    if np.any(dt_ < 0):
        raise ValueError("dt must be >= 0")
    T = np.concatenate([[0.0], np.cumsum(dt_)])
    S = np.concatenate([[0.0], np.cumsum(mm_ * dt_)])
    lam = np.asarray(lams, dtype=float)[:, None]  # every lambda in one pass: the segment costs are shared
    F = np.empty((lam.shape[0], n_.size + 1))
    segs = np.zeros(F.shape, dtype=np.int64)
    F[:, 0] = 0.0
    rows = np.arange(lam.shape[0])
    for j in range(1, n_.size + 1):
        level = np.maximum.accumulate(n_[j - 1 :: -1])[::-1]  # level[i] = max need[i:j]
        cost = np.maximum(0.0, level * (T[j] - T[:j]) - (S[j] - S[:j]))
        total = F[:, :j] + cost + lam
        i = np.argmin(total, axis=1)
        F[:, j] = total[rows, i]
        segs[:, j] = segs[rows, i] + 1
    costs = (F[:, -1] - lam[:, 0]).tolist()
    changes = (segs[:, -1] - 1).tolist()
    return Frontier(tuple(float(x) for x in lams), tuple(costs), tuple(changes))


def combined_bound(pos: Frontier, acct: Frontier, budget: int) -> tuple[float, int]:
    """min over a in [0, budget] of max(pos.bound(2 budget - a), acct.bound(a)), and the minimising a."""
    best, best_a = np.inf, 0
    for a in range(budget + 1):
        v = max(pos.bound(2 * budget - a), acct.bound(a))
        if v < best:
            best, best_a = v, a
    return float(best), best_a


def survival_need(
    side_sign: int, size: float, entry: float, prices: NDArray[np.float64], mm_rate: float, buffer: float = 0.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(need, mm) per round for one position, MM = mm_rate * size * price.

    need[j] = max(0, MM_j - pnl_j): survive round j. With ``buffer`` b > 0 also
    need[j] >= MM_{j-1} + b * notional_{j-1} - pnl_{j-1}: the level in effect at round j was decided on
    round j-1's price and left the position at least b of the notional above maintenance there.
    """
    pnl = side_sign * size * (prices - entry)
    mm = mm_rate * size * prices
    need = np.maximum(0.0, mm - pnl)
    if buffer > 0:
        seen = np.maximum(0.0, mm + buffer * size * prices - pnl)
        need[1:] = np.maximum(need[1:], seen[:-1])
    return need, mm


@dataclass(frozen=True, slots=True)
class BookBound:
    """The book's frontiers (USD * s) and the replay's duration (s): divide a bound by it for a time average."""

    positions: Frontier
    accounts: Frontier
    duration_s: float

    def avg_idle_no_moves(self, budget: int) -> float:
        """Least average idle (USD) with at most ``budget`` top-ups and releases (no moves)."""
        return self.positions.bound(budget) / self.duration_s

    def avg_idle(self, budget: int) -> float:
        """Least average idle (USD) with at most ``budget`` transactions of any kind (moves included)."""
        return combined_bound(self.positions, self.accounts, budget)[0] / self.duration_s

    def avg_idle_unlimited(self) -> float:
        """Least average idle (USD) with any number of transactions of any kind: every position covers exactly
        its own need at every round (however the collateral got there, moves included)."""
        if 0.0 not in self.positions.lams:
            raise ValueError("the lambda grid has no 0: the unlimited floor was not computed")
        return self.positions.costs[self.positions.lams.index(0.0)] / self.duration_s


DEFAULT_LAMS_USD = (0.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0)
"""lambda grid, in USD of average idle per change (scaled by the duration); 0 gives the floor with no limit
on transactions (:meth:`BookBound.avg_idle_unlimited`)."""


def book_bound(
    book: Book, timeline: Timeline, lams_usd: Sequence[float] = DEFAULT_LAMS_USD, buffer: float = 0.0
) -> BookBound:
    """Frontiers of a replay's book on its timeline (positions opened at the opening round's prices, as the
    replay opens them); positions (accounts) with the same need path are computed once.

    ``buffer`` (fraction of the notional, default 0): the least cushion above maintenance each decision
    leaves at the price it was taken on (0: the clairvoyant keeper; see the module doc)."""
    rounds = timeline.rounds
    dt = timeline.dt_next().astype(float)
    duration = float(dt.sum())
    lams = tuple(x * duration for x in lams_usd)
    cols = price_columns(book, rounds)
    paths: dict[tuple, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    by_account: dict[str, list[tuple]] = {}
    for p in book.positions:
        key = (p.symbol, p.side.value, p.notional_e6)
        if key not in paths:
            px = cols[p.symbol]
            size = p.notional_e6 / 1e6 / px[0]
            sign = 1 if p.side == Side.LONG else -1
            paths[key] = survival_need(sign, size, px[0], px, book.market(p.symbol).maintenance_margin_ratio, buffer)
        by_account.setdefault(p.account, []).append(key)
    cache: dict[tuple, Frontier] = {}

    def frontier(keys: tuple) -> Frontier:
        if keys not in cache:
            need = np.sum([paths[k][0] for k in keys], axis=0)
            mm = np.sum([paths[k][1] for k in keys], axis=0)
            cache[keys] = segment_frontier(need, mm, dt, lams)
        return cache[keys]

    def total(groups: Counter) -> Frontier:
        parts = [frontier(keys).scaled(k) for keys, k in groups.items()]
        out = parts[0]
        for f in parts[1:]:
            out = out + f
        return out

    pos = total(Counter((k,) for v in by_account.values() for k in v))
    acct = total(Counter(tuple(sorted(v)) for v in by_account.values()))
    return BookBound(pos, acct, duration)


def idle_floors(bound: BookBound, results: Mapping[str, PolicyResult]) -> dict[str, float]:
    """Per liquidation-free policy, the least average idle (USD) any keeper could hold with no more transactions
    than it sent; ``"target"``: the same for the best fixed baseline's transactions (the issue's budget)."""
    floors = {name: bound.avg_idle(r.transactions) for name, r in results.items() if r.liquidations == 0}
    base = best_fixed_baseline(dict(results))
    if base is not None:
        floors["target"] = bound.avg_idle(results[base].transactions)
    return floors


def target_reach(floors: Mapping[str, float], results: Mapping[str, PolicyResult]) -> tuple[float, float, bool] | None:
    """(idle floor at the best baseline's budget, the idle the target allows, out of reach: floor > that) — or
    None when :func:`idle_floors` was not run or no baseline avoided every liquidation. A floor below the
    target does not make it reachable (the floor is what a clairvoyant keeper could do); above, nothing can."""
    base = best_fixed_baseline(dict(results))
    if "target" not in floors or base is None:
        return None
    goal = (1 - TARGET_IDLE_REDUCTION) * results[base].avg_idle_e6 / 1e6
    return floors["target"], goal, floors["target"] > goal


def reach_verdict(out_of_reach: bool) -> str:
    """The words the table, report and CLI use for :func:`target_reach`'s last field."""
    return "out of reach of any keeper" if out_of_reach else "not ruled out by the floor"
