"""Oracle history per market, kept incrementally, and the volatility estimate the risk engine uses.

The shell side of :mod:`keeper.risk.volatility`: rounds are appended as the adapter reads new ones (only
new rounds are ever read), the window is bounded, and the estimate is recomputed only when a round was
added. The estimate itself is pure (``estimate_volatility``); this class only remembers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from keeper.domain import PriceRound
from keeper.risk.volatility import VolEstimate, estimate_volatility


@dataclass
class MarketHistory:
    rounds: deque[PriceRound]
    estimate: VolEstimate | None = None
    dirty: bool = True


@dataclass
class VolatilityCache:
    """Bounded oracle history per market id and its cached volatility estimate."""

    model: str = "ewma"
    window: int = 2_000
    sigma_floor_annual: float = 0.0
    sigma_fallback_annual: float = 1.5
    _markets: dict[int, MarketHistory] = field(default_factory=dict)

    def last_round_id(self, market_id: int) -> int | None:
        h = self._markets.get(market_id)
        return h.rounds[-1].round_id if h and h.rounds else None

    def add(self, market_id: int, rounds: Iterable[PriceRound]) -> int:
        """Append rounds newer than the last one kept; returns how many were added."""
        h = self._markets.setdefault(market_id, MarketHistory(deque(maxlen=self.window)))
        last = h.rounds[-1].round_id if h.rounds else -1
        added = 0
        for r in sorted(rounds, key=lambda r: r.round_id):
            if r.round_id > last:
                h.rounds.append(r)
                last = r.round_id
                added += 1
        if added:
            h.dirty = True
        return added

    def rounds(self, market_id: int) -> list[PriceRound]:
        """The kept oracle rounds of a market, oldest first."""
        h = self._markets.get(market_id)
        return list(h.rounds) if h else []

    def estimate(self, market_id: int) -> VolEstimate:
        h = self._markets.setdefault(market_id, MarketHistory(deque(maxlen=self.window)))
        if h.dirty or h.estimate is None:
            times = np.fromiter((r.updated_at_s for r in h.rounds), float, len(h.rounds))
            prices = np.fromiter((r.price_e8 for r in h.rounds), float, len(h.rounds)) / 1e8
            h.estimate = estimate_volatility(
                times,
                prices,
                model=self.model,
                floor_annual=self.sigma_floor_annual,
                fallback_annual=self.sigma_fallback_annual,
            )
            h.dirty = False
        return h.estimate

    def sigmas(self, market_ids: Iterable[int]) -> dict[int, VolEstimate]:
        return {m: self.estimate(m) for m in market_ids}
