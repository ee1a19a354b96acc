"""Tails from long history: a generalised Pareto fit to per-round adverse moves, read at a target probability.

Pure core (numpy and scipy; no clock, no I/O). The adaptive stress gap (:mod:`keeper.risk.gaps`) sizes the
buffer from the last few hours of oracle rounds. A feed whose rounds are far apart (an hourly feed, say) holds
too few moves in that window to say anything about its tail, and a calm window says little about the next
crash bar. Years of the same feed at the same round interval do: extreme value theory gives the size of the
one-round move that is exceeded with a given probability, from the largest moves ever seen.

Peaks over threshold (Pickands 1975; Balkema and de Haan 1974; McNeil, Frey and Embrechts, *Quantitative Risk
Management*, 2015, section 5.2): for adverse per-round log moves :math:`x_1..x_N` (falls for a long, rises for
a short) and a high threshold :math:`u` (the ``1 - threshold_fraction`` empirical quantile), the excesses
:math:`x - u` over :math:`u` are approximately generalised Pareto with shape :math:`\\xi` and scale
:math:`\\beta`, fitted by maximum likelihood. The move exceeded with probability :math:`p` per round is

.. math::

    q_p = u + \\frac{\\beta}{\\xi}\\left[\\left(\\frac{N}{N_u}\\, p\\right)^{-\\xi} - 1\\right]
    \\quad (\\xi \\ne 0), \\qquad q_p = u - \\beta \\ln\\left(\\frac{N}{N_u} p\\right) \\quad (\\xi = 0),

with :math:`N_u` the number of exceedances. Over a span of ``n`` rounds the adverse move is bounded by the
one-round quantile at :math:`p / n` (a union bound over the rounds of the span, conservative) when moves are
measured per round; :func:`tail_gap` measures moves over spans directly instead, when asked.

Validation out of sample: ``scripts/validate_tails.py`` fits on the years before a cut-off and counts how
often later rounds exceed the quantile (docs/risk-model.md has the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_THRESHOLD_FRACTION = 0.05
"""Share of the largest moves treated as the tail (the threshold ``u`` is their smallest)."""
MIN_EXCEEDANCES = 30
"""Fewer tail moves than this give no fit: the estimate would be noise."""


@dataclass(frozen=True, slots=True)
class TailFit:
    """A generalised Pareto fit to the excesses of adverse log moves over a threshold."""

    threshold: float  # u (log move)
    shape: float  # xi (> 0: heavy tail, power law; 0: exponential; < 0: bounded)
    scale: float  # beta > 0
    n_moves: int  # N
    n_exceedances: int  # N_u
    largest_move: float  # the largest adverse move in the sample

    def quantile(self, p: float) -> float:
        """The adverse log move exceeded with probability ``p`` per observation (``q_p`` above)."""
        if not 0.0 < p < 1.0:
            raise ValueError(f"p must be a probability strictly between 0 and 1, got {p}")
        ratio = self.n_moves / self.n_exceedances * p
        if ratio >= 1.0:  # p is not in the tail: the threshold is the best the fit can say
            return self.threshold
        if abs(self.shape) < 1e-9:
            return self.threshold - self.scale * math.log(ratio)
        return self.threshold + self.scale / self.shape * (ratio ** (-self.shape) - 1.0)

    def rate_per_year(self, move: float, observations_per_year: float) -> float:
        """How often per year the adverse log move exceeds ``move`` (``move >= threshold``) with
        ``observations_per_year`` observations a year:
        :math:`R\\,\\zeta\\,(1 + \\xi(x - u)/\\beta)^{-1/\\xi}`, :math:`\\zeta = N_u/N` (0 past the end point of a
        bounded tail)."""
        z = 1.0 + self.shape * (move - self.threshold) / self.scale
        if z <= 0.0:
            return 0.0
        tail = self.n_exceedances / self.n_moves
        if abs(self.shape) < 1e-9:
            return observations_per_year * tail * math.exp(-(move - self.threshold) / self.scale)
        return observations_per_year * tail * z ** (-1.0 / self.shape)

    def cost_optimal_move(self, observations_per_year: float, capital_rate_annual: float, penalty: float) -> float:
        """The buffer (adverse log move to survive) that minimises the yearly cost of holding it plus the
        expected cost of the moves that gap through it; see :meth:`LongTail.cost_optimal_gaps` for the model.

        Solves :math:`\\nu(x)\\,(\\pi + s(x)) / s(x) = r` for :math:`x \\ge u`, with :math:`\\nu` the yearly
        rate of moves beyond :math:`x` (:meth:`rate_per_year`) and :math:`s(x) = \\beta + \\xi (x - u)` the
        scale of the excess over :math:`x`; the left side falls as :math:`x` grows, so bisection finds the one
        root. Returns the threshold when even it is cheaper to cross than to hold, and ``math.inf`` when
        capital is free (``capital_rate_annual = 0``: no buffer is too wide)."""
        if not capital_rate_annual > 0.0:
            return math.inf
        if penalty < 0.0:
            raise ValueError(f"penalty must be >= 0, got {penalty}")

        def excess(x: float) -> float:
            s = self.scale + self.shape * (x - self.threshold)
            if s <= 0.0:  # past a bounded tail's end point: nothing crosses
                return -capital_rate_annual
            return self.rate_per_year(x, observations_per_year) * (penalty + s) / s - capital_rate_annual

        lo = self.threshold
        if excess(lo) <= 0.0:
            return lo
        hi = lo + self.scale
        while excess(hi) > 0.0 and hi < 100.0:  # doubles until the root is bracketed (a log move of 100: never)
            hi = lo + 2.0 * (hi - lo)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if excess(mid) > 0.0:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-10:
                break
        return hi

    def exceedance_probability(self, move: float) -> float:
        """Per-observation probability that the adverse log move exceeds ``move`` (for ``move >= threshold``)."""
        if move < self.threshold:
            raise ValueError(f"move {move} is below the fitted threshold {self.threshold}: outside the tail")
        from scipy import stats  # imported when a fit is used (scipy.stats costs ~0.3 s of start-up)

        tail = self.n_exceedances / self.n_moves
        return float(tail * stats.genpareto.sf(move - self.threshold, self.shape, loc=0.0, scale=self.scale))


def adverse_moves(log_prices: ArrayLike, side: str, span_rounds: int = 1) -> np.ndarray:
    """Adverse log moves over every span of ``span_rounds`` consecutive rounds (falls for ``long``, rises for
    ``short``), as positive numbers; moves in the other direction count as 0 (they are not adverse)."""
    x = np.asarray(log_prices, dtype=np.float64)
    if side not in ("long", "short"):
        raise ValueError(f"side must be 'long' or 'short', got {side!r}")
    if span_rounds < 1:
        raise ValueError(f"span_rounds must be >= 1, got {span_rounds}")
    if x.size <= span_rounds:
        return np.empty(0)
    d = x[span_rounds:] - x[:-span_rounds]
    return np.maximum(-d if side == "long" else d, 0.0)


def fit_tail(moves: ArrayLike, threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION) -> TailFit | None:
    """Maximum-likelihood generalised Pareto fit to the largest ``threshold_fraction`` of ``moves``.

    Returns ``None`` when there are fewer than :data:`MIN_EXCEEDANCES` tail moves (too little history)."""
    m = np.asarray(moves, dtype=np.float64)
    m = m[np.isfinite(m)]
    if not 0.0 < threshold_fraction < 0.5:
        raise ValueError(f"threshold_fraction must be in (0, 0.5), got {threshold_fraction}")
    n_tail = int(m.size * threshold_fraction)
    if n_tail < MIN_EXCEEDANCES:
        return None
    srt = np.sort(m)
    u = float(srt[-n_tail - 1])
    excess = srt[-n_tail:] - u
    excess = excess[excess > 0]
    if excess.size < MIN_EXCEEDANCES:
        return None
    from scipy import stats

    shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    return TailFit(
        threshold=u,
        shape=float(shape),
        scale=float(scale),
        n_moves=int(m.size),
        n_exceedances=int(excess.size),
        largest_move=float(srt[-1]),
    )


def tail_gap(
    log_prices: ArrayLike,
    side: str,
    p: float,
    span_rounds: int = 1,
    threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
) -> tuple[float, TailFit] | None:
    """The adverse log move over ``span_rounds`` rounds exceeded with probability ``p`` per decision, from the
    long history ``log_prices`` at the feed's own round interval; ``None`` with too little history.

    Moves are measured over spans of ``span_rounds`` directly (overlapping spans: the fit's point estimate is
    unbiased, its effective sample smaller than its count)."""
    fit = fit_tail(adverse_moves(log_prices, side, span_rounds), threshold_fraction)
    if fit is None:
        return None
    return fit.quantile(p), fit


class GapCost(NamedTuple):
    """What a buffer costs and what a gap through it costs, per unit of notional: the inputs of
    :meth:`LongTail.cost_optimal_gaps` (a yearly capital rate, the liquidation penalty as a fraction)."""

    capital_rate_annual: float
    penalty: float


DEFAULT_SPANS = (1, 2, 4, 8, 16)
"""Spans (in rounds of the history) fitted by :meth:`LongTail.fit`."""


@dataclass(frozen=True, slots=True)
class LongTail:
    """One asset's tail from years of its price history at its own round interval, per side and span.

    ``down[i] = (span, fit)``: the fit to falls over ``span`` consecutive rounds (what liquidates a long);
    ``up``: rises (a short). Built once from the history (:meth:`fit`), read at every decision
    (:meth:`side_gaps`). The stress gap takes the worse of this and the recent-rounds estimate
    (:func:`keeper.risk.gaps.estimate_stress_gap`), and falls back to it when recent rounds are too few.
    """

    round_interval_s: float
    down: tuple[tuple[int, TailFit], ...]
    up: tuple[tuple[int, TailFit], ...]
    source: str = ""

    @classmethod
    def fit(
        cls,
        times_s: ArrayLike,
        prices: ArrayLike,
        *,
        spans: tuple[int, ...] = DEFAULT_SPANS,
        threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
        source: str = "",
    ) -> LongTail | None:
        """Fit falls and rises over each span of ``spans`` rounds; ``None`` when the history is too short for
        even the one-round fit. Times in seconds, in order; the round interval is their median spacing."""
        t = np.asarray(times_s, dtype=np.float64)
        p = np.asarray(prices, dtype=np.float64)
        if t.shape != p.shape:
            raise ValueError("times_s and prices must have the same length")
        ok = np.isfinite(p) & (p > 0) & np.isfinite(t)
        t, p = t[ok], p[ok]
        if t.size < 3:
            return None
        interval = float(np.median(np.diff(t)))
        if not interval > 0:
            raise ValueError("times_s must increase")
        x = np.log(p)
        sides: dict[str, list[tuple[int, TailFit]]] = {"long": [], "short": []}
        for span in sorted(set(spans)):
            for side, fits in sides.items():
                f = fit_tail(adverse_moves(x, side, span), threshold_fraction)
                if f is not None:
                    fits.append((span, f))
        if not sides["long"] or not sides["short"] or sides["long"][0][0] != 1 or sides["short"][0][0] != 1:
            return None
        return cls(interval, tuple(sides["long"]), tuple(sides["short"]), source)

    def span_rounds(self, horizon_s: float) -> int:
        """Rounds of this history that a move over ``horizon_s`` spans (at least 1: a feed whose rounds come
        faster than the history's is given the history's one-round tail, which can only overstate it)."""
        return max(1, math.ceil(horizon_s / self.round_interval_s - 1e-9))

    def side_gaps(self, p: float, horizon_s: float, feed_interval_s: float | None = None) -> tuple[float, float]:
        """(fall, rise) log moves over ``horizon_s`` exceeded with probability ``p``.

        A horizon of one history round or more reads the fit of the shortest fitted span covering it (the
        longest fitted one when none does). A shorter horizon ``t = max(horizon_s, feed_interval_s)`` (an oracle
        moves one round at a time, so no move shorter than its interval is seen) reads the one-round fit at
        ``p * interval / t``: for subexponential (fat-tailed) moves the tail of a sum of ``m`` independent pieces
        is ``m`` times the tail of one, P(S_m > x) ~ m P(X > x) (Embrechts, Klueppelberg and Mikosch,
        *Modelling Extremal Events*, 1997, section 1.3), so a move over ``t`` exceeds ``x`` about ``t / interval``
        times as often as a move over a whole history round does."""
        t = max(horizon_s, feed_interval_s or 0.0)
        if t < self.round_interval_s:
            q = min(0.5, p * self.round_interval_s / max(t, 1e-9))
            return self.down[0][1].quantile(q), self.up[0][1].quantile(q)
        n = self.span_rounds(horizon_s)

        def pick(fits: tuple[tuple[int, TailFit], ...]) -> TailFit:
            return next((f for span, f in fits if span >= n), fits[-1][1])

        return pick(self.down).quantile(p), pick(self.up).quantile(p)

    def measures(self, feed_interval_s: float | None) -> bool:
        """Whether this history's rounds are the feed's own: the feed's rounds are at least as far apart (1 %
        tolerance), so every move the keeper cannot react to is a move the history counted."""
        return feed_interval_s is not None and feed_interval_s >= 0.99 * self.round_interval_s

    def cost_optimal_gaps(
        self,
        horizon_s: float,
        feed_interval_s: float | None,
        capital_rate_annual: float,
        penalty: float,
    ) -> tuple[float, float]:
        """(fall, rise) log moves to survive that minimise the yearly cost of protection, from this tail.

        The risk is a yearly rate of gaps through the buffer, priced, not a probability per decision. Holding
        a position ``x`` (log distance) from its liquidation price ties up about ``N x`` of collateral (``N``
        the notional; first order in ``x``), which costs :math:`r N x` a year at the capital
        rate ``r``. A move that gaps through ``x`` before the keeper can act loses the liquidation penalty
        :math:`\\pi N` and the overshoot beyond the liquidation price (bad debt; the keeper's own cost model
        counts both, docs/replay.md); for generalised Pareto excesses the overshoot's mean is
        :math:`s(x)/(1 - \\xi)` with :math:`s(x) = \\beta + \\xi(x - u)` (McNeil, Frey and Embrechts 2015, 5.2.2,
        the mean excess function). With :math:`\\nu(x)` the yearly rate of such moves (:meth:`TailFit.rate_per_year`)
        the yearly cost is :math:`N\\,[r x + \\nu(x)(\\pi + s(x)/(1-\\xi))]`; as :math:`\\nu'(x) = -\\nu(x)/s(x)` its
        derivative vanishes where

        .. math:: \\nu(x^*) = r\\,\\frac{s(x^*)}{\\pi + s(x^*)},

        the return level of the critical fractile of a newsvendor (Arrow, Harris and Marschak, "Optimal
        inventory policy", Econometrica 19(3), 1951): buy buffer until a marginal unit saves in expected loss
        what it costs in capital. It depends on neither ``N`` nor the leverage, and at an 8 %/yr capital rate it
        is a move seen about once in 14 years of the asset's history (tails with ``xi`` near 0.25).

        Moves are counted per observation of the history: a horizon of up to one history round reads the
        one-round fit, one observation per round; a longer one the worst of the fits of every span up to the
        shortest covering it, one observation per span. For a feed faster than the history's rounds
        (``feed_interval_s``) that is only an upper bound on the rate (the single-jump argument of
        :meth:`side_gaps`: a move over ``t`` crosses ``x`` about ``t / interval`` times as often as one over a
        round, at ``interval / t`` times as many decisions), and a keeper that decides inside a history round
        reacts within a crash that unfolds over tens of minutes: :meth:`measures` says whether the history
        measures the feed's own rounds, and :func:`keeper.risk.gaps.estimate_stress_gap` prices the tail only
        then. Returns
        ``math.inf`` at a zero capital rate (the caller caps the gap)."""
        t = max(horizon_s, feed_interval_s or 0.0)
        n = 1 if t < self.round_interval_s else self.span_rounds(horizon_s)
        per_year = 365 * 24 * 3600 / self.round_interval_s

        def worst(fits: tuple[tuple[int, TailFit], ...]) -> float:
            # every span up to the first covering n: a shorter move inside the horizon must be survived too
            # (the fits of different spans extrapolate with different shapes, so the longest is not always the
            # widest)
            cover = next((i for i, (span, _) in enumerate(fits) if span >= n), len(fits) - 1)
            return max(
                f.cost_optimal_move(per_year / span, capital_rate_annual, penalty) for span, f in fits[: cover + 1]
            )

        return worst(self.down), worst(self.up)
