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

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

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

    def exceedance_probability(self, move: float) -> float:
        """Per-observation probability that the adverse log move exceeds ``move`` (for ``move >= threshold``)."""
        if move < self.threshold:
            raise ValueError(f"move {move} is below the fitted threshold {self.threshold}: outside the tail")
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
