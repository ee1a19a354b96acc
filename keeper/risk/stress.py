"""Stress scenarios: a SPAN/Deribit-style grid of price moves x volatility moves, and replayed history.

A :class:`Scenario` is a sequence of cumulative price moves (fractions of today's price), the same for every
market unless ``per_market`` overrides it, plus a volatility factor that reprices option positions. A grid
scenario is one step; a historical shock is the whole return sequence, and a position counts as liquidated
if the protocol rule (equity < maintenance of current notional, keeper.domain) holds at any step. The grid
follows CME SPAN / Deribit portfolio margin: moves of +-5 %, 10 %, 15 %, 20 % plus extreme tails, each with
volatility up / same / down (CME SPAN: scanning ranges of price and volatility).

Loss of a perp position = equity now - what the account keeps after the scenario: the equity at the last
step, or, when liquidated at step k, the equity at k minus the liquidation penalty (floored at 0: the
protocol returns only positive leftovers). Options lose :math:`n(V(S', \\sigma f) - V(S, \\sigma))` with
Black-Scholes values. Evaluated in float arithmetic, vectorised over steps and positions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from keeper.domain import Market, Position
from keeper.risk.greeks import OptionPosition, bs_greeks

DEFAULT_MOVES = (0.05, 0.10, 0.15, 0.20)
DEFAULT_TAILS = (0.35, 0.50)
DEFAULT_VOL_FACTORS = (1.5, 1.0, 0.7)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Cumulative price moves per step (``0.1`` = +10 % from today) and a volatility factor."""

    name: str
    moves: tuple[float, ...]
    vol_factor: float = 1.0
    per_market: Mapping[int, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seqs = [self.moves, *self.per_market.values()]
        if any(len(s) == 0 for s in seqs):
            raise ValueError(f"scenario {self.name}: empty move sequence")
        if any(m <= -1.0 for s in seqs for m in s):
            raise ValueError(f"scenario {self.name}: a move of -100 % or worse is not a price")
        if self.vol_factor <= 0:
            raise ValueError(f"scenario {self.name}: vol_factor must be > 0")


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One scenario's outcome: loss per account (USD, positive = loss) and liquidated (account, market) keys."""

    name: str
    loss_by_account: dict[str, float]
    liquidated: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class StressReport:
    """All scenario results plus each account's worst loss and the scenario that produced it."""

    results: tuple[ScenarioResult, ...]
    worst_by_account: dict[str, tuple[float, str]]

    def liquidated_in(self, name: str) -> tuple[tuple[str, int], ...]:
        for r in self.results:
            if r.name == name:
                return r.liquidated
        raise KeyError(name)


def stress_grid(
    moves: Sequence[float] = DEFAULT_MOVES,
    tails: Sequence[float] = DEFAULT_TAILS,
    vol_factors: Sequence[float] = DEFAULT_VOL_FACTORS,
) -> tuple[Scenario, ...]:
    """Grid scenarios: every +-move (and tail) crossed with every volatility factor."""
    out = []
    for m in (*moves, *tails):
        for sign in (-1.0, 1.0):
            for vf in vol_factors:
                mv = sign * m
                if mv <= -1.0:
                    continue
                out.append(Scenario(f"{mv:+.0%} vol x{vf:g}", (mv,), vf))
    return tuple(out)


def historical_scenario(name: str, prices_by_market: Mapping[int, ArrayLike], vol_factor: float = 1.0) -> Scenario:
    """Replay a historical window: cumulative moves ``p_k / p_0 - 1`` per market (first price = today).

    Markets not in ``prices_by_market`` stay flat. Sequences of different lengths are padded with their
    last value.
    """
    seqs = {mid: np.asarray(p, dtype=float) for mid, p in prices_by_market.items()}
    if not seqs:
        raise ValueError("historical scenario needs at least one price series")
    n = max(s.size for s in seqs.values())
    per = {}
    for mid, s in seqs.items():
        rel = s[1:] / s[0] - 1.0 if s.size > 1 else np.zeros(1)
        rel = np.concatenate((rel, np.full(max(0, n - 1 - rel.size), rel[-1])))
        per[mid] = tuple(float(x) for x in rel)
    return Scenario(name, (0.0,) * max(1, n - 1), vol_factor, per)


def run_stress(
    positions: Sequence[Position],
    markets: Mapping[int, Market],
    prices_e8: Mapping[int, int],
    scenarios: Iterable[Scenario],
    options: Sequence[OptionPosition] = (),
) -> StressReport:
    """Apply every scenario to the book: loss per account and which positions the protocol would liquidate.

    This is the function ``keeper stress`` calls; ``positions``/``markets``/``prices_e8`` are the domain
    types the adapters produce.
    """
    accounts = [p.account.lower() for p in positions]
    mids = np.array([p.market_id for p in positions], dtype=int)
    sign = np.array([p.side.sign for p in positions], dtype=float)
    q = np.array([p.size_e18 / 1e18 for p in positions])
    p0 = np.array([p.entry_price_e8 / 1e8 for p in positions])
    net_c = np.array([(p.collateral_e6 - p.pending_fee_e6) / 1e6 for p in positions])
    mm = np.array([markets[p.market_id].maintenance_margin_ratio for p in positions])
    pen = np.array([markets[p.market_id].liquidation_penalty_ratio for p in positions])
    s_now = np.array([prices_e8[p.market_id] / 1e8 for p in positions])
    eq_now = net_c + sign * q * (s_now - p0)

    results = []
    worst: dict[str, tuple[float, str]] = {}
    for sc in scenarios:
        n_steps = max(len(sc.moves), *(len(v) for v in sc.per_market.values())) if sc.per_market else len(sc.moves)

        def path(mid: int, sc: Scenario = sc, n_steps: int = n_steps) -> np.ndarray:
            seq = np.asarray(sc.per_market.get(mid, sc.moves), dtype=float)
            if seq.size < n_steps:
                seq = np.concatenate((seq, np.full(n_steps - seq.size, seq[-1])))
            return 1.0 + seq

        loss: dict[str, float] = defaultdict(float)
        liquidated: list[tuple[str, int]] = []
        if positions:
            factors = {mid: path(mid) for mid in np.unique(mids)}
            s = np.stack([factors[m] for m in mids], axis=1) * s_now  # (n_steps, n_pos)
            eq = net_c + sign * q * (s - p0)
            under = eq < mm * q * s
            hit = under.any(axis=0)
            first = np.argmax(under, axis=0)
            cols = np.arange(len(positions))
            eq_at_liq = eq[first, cols]
            penalty = np.minimum(np.maximum(eq_at_liq, 0.0), pen * q * s[first, cols])
            kept = np.where(hit, np.maximum(eq_at_liq - penalty, 0.0), eq[-1])
            pos_loss = eq_now - kept
            for i, acct in enumerate(accounts):
                loss[acct] += float(pos_loss[i])
                if hit[i]:
                    liquidated.append((acct, int(mids[i])))
        for o in options:
            s0 = prices_e8[o.market_id] / 1e8
            s1 = s0 * float(path(o.market_id)[-1])
            v0 = bs_greeks(s0, o.strike, o.expiry_years, o.sigma_annual, o.is_call, o.rate).price
            v1 = bs_greeks(s1, o.strike, o.expiry_years, o.sigma_annual * sc.vol_factor, o.is_call, o.rate).price
            loss[o.account.lower()] += float(o.quantity * (v0 - v1))
        res = ScenarioResult(sc.name, dict(loss), tuple(liquidated))
        results.append(res)
        for acct, lv in res.loss_by_account.items():
            if acct not in worst or lv > worst[acct][0]:
                worst[acct] = (lv, sc.name)
    return StressReport(tuple(results), worst)
