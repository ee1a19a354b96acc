"""Closed-form first-passage (barrier) probabilities of GBM, vectorised over many positions.

Model: :math:`dS = \\mu S\\,dt + \\sigma S\\,dW`, :math:`\\nu = \\mu - \\sigma^2/2`. For a long with a lower
barrier :math:`B < S_0`, :math:`b = \\ln(B/S_0) < 0`:

.. math::

    P(\\min_{t\\le T} S_t \\le B) = \\Phi\\Big(\\frac{b - \\nu T}{\\sigma\\sqrt T}\\Big)
        + e^{2\\nu b/\\sigma^2}\\,\\Phi\\Big(\\frac{b + \\nu T}{\\sigma\\sqrt T}\\Big)

and for a short with an upper barrier :math:`H > S_0`, :math:`h = \\ln(H/S_0)`, the same formula applied to
:math:`-\\ln S` (:math:`b \\to -h`, :math:`\\nu \\to -\\nu`). Fees accruing linearly move the barrier towards
the price at relative rate :math:`c`; that is the same as :math:`\\nu \\to \\nu - c` for a long and
:math:`\\nu \\to \\nu + c` for a short. Discrete monitoring every :math:`\\Delta t`: Broadie, Glasserman and
Kou, "A continuity correction for discrete barrier options", Math. Finance 7(4), 1997 — shift the barrier
away from the spot by :math:`e^{\\pm\\beta\\sigma\\sqrt{\\Delta t}}`, :math:`\\beta = -\\zeta(1/2)/\\sqrt{2\\pi}`.
Shreve, *Stochastic Calculus for
Finance II*, 7.2 (running minimum of drifted Brownian motion).

All public functions accept scalars or numpy arrays (broadcast together) and return float arrays. Times
are seconds and volatilities annualised (year = 365 days) at the boundary, years inside.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import log_ndtr, ndtri

from keeper.domain import SECONDS_PER_YEAR

BGK_BETA = 0.5825971579390106
"""-zeta(1/2)/sqrt(2 pi): the Broadie-Glasserman-Kou continuity-correction constant."""

FloatArray = NDArray[np.float64]


def _side_sign(is_long: ArrayLike) -> FloatArray:
    return np.where(np.asarray(is_long, dtype=bool), 1.0, -1.0)


def first_passage_probability(b: ArrayLike, nu: ArrayLike, sigma: ArrayLike, t: ArrayLike) -> FloatArray:
    """P(min over [0, t] of X <= b) for X = nu s + sigma W_s, X_0 = 0 (lower barrier, years).

    :math:`\\Phi((b-\\nu t)/(\\sigma\\sqrt t)) + \\exp(2\\nu b/\\sigma^2)\\Phi((b+\\nu t)/(\\sigma\\sqrt t))`,
    evaluated in log space so large drifts neither overflow nor give NaN. ``b >= 0`` gives 1.
    """
    b, nu, sigma, t = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (b, nu, sigma, t)))
    out = np.ones(b.shape, dtype=float)
    live = (b < 0) & (t > 0)
    out[(b < 0) & ~(t > 0)] = 0.0
    if np.any(live):
        bl, nl, sl, tl = b[live], nu[live], sigma[live], t[live]
        sd = sl * np.sqrt(tl)
        term1 = log_ndtr((bl - nl * tl) / sd)
        term2 = 2.0 * nl * bl / (sl * sl) + log_ndtr((bl + nl * tl) / sd)
        out[live] = np.exp(np.logaddexp(term1, term2))
    return np.clip(out, 0.0, 1.0)


def bgk_shift(sigma_annual: ArrayLike, monitoring_dt_s: ArrayLike) -> FloatArray:
    """Log-distance by which BGK moves a discretely monitored barrier away from spot: beta sigma sqrt(dt)."""
    dt = np.asarray(monitoring_dt_s, dtype=float) / SECONDS_PER_YEAR
    return BGK_BETA * np.asarray(sigma_annual, dtype=float) * np.sqrt(dt)


def breach_probability(
    spot: ArrayLike,
    barrier: ArrayLike,
    sigma_annual: ArrayLike,
    horizon_s: ArrayLike,
    *,
    is_long: ArrayLike,
    drift_annual: ArrayLike = 0.0,
    fee_drift_annual: ArrayLike = 0.0,
    monitoring_dt_s: ArrayLike | None = None,
) -> FloatArray:
    """Probability that the price touches the liquidation ``barrier`` within ``horizon_s``.

    Long positions breach at a lower barrier, shorts at an upper one. ``fee_drift_annual`` is the
    relative speed (per year, fraction of price) at which accruing fees move the barrier towards the price.
    ``monitoring_dt_s`` applies the BGK correction for a barrier checked only every ``dt``; ``None`` means
    continuous monitoring. A barrier of 0 (a long that can never be liquidated) gives probability 0; a
    barrier already crossed gives 1.
    """
    sign = _side_sign(is_long)
    spot = np.asarray(spot, dtype=float)
    barrier = np.asarray(barrier, dtype=float)
    sigma = np.asarray(sigma_annual, dtype=float)
    t = np.asarray(horizon_s, dtype=float) / SECONDS_PER_YEAR
    nu = np.asarray(drift_annual, dtype=float) - 0.5 * sigma * sigma - sign * np.asarray(fee_drift_annual, dtype=float)
    with np.errstate(divide="ignore"):
        log_b = np.log(np.where(barrier > 0, barrier, 1.0) / spot)
    # reflected coordinates: the breach is always "X falls to b_" with b_ <= 0 while safe
    b_ = sign * log_b
    if monitoring_dt_s is not None:
        b_ = b_ - bgk_shift(sigma, monitoring_dt_s)
    p = first_passage_probability(b_, sign * nu, sigma, t)
    never = (barrier <= 0) & (sign > 0)
    return np.where(never, 0.0, p)


def distance_for_probability(
    p: ArrayLike,
    sigma_annual: ArrayLike,
    horizon_s: ArrayLike,
    *,
    is_long: ArrayLike = True,
    drift_annual: ArrayLike = 0.0,
    fee_drift_annual: ArrayLike = 0.0,
    iterations: int = 200,
) -> FloatArray:
    """Log-distance d >= 0 from spot to barrier at which the breach probability within the horizon is ``p``.

    Zero net drift has the closed form :math:`d = \\sigma\\sqrt T\\,\\Phi^{-1}(1 - p/2)`; otherwise the
    monotone probability is inverted by vectorised bisection (relative accuracy ~1e-12).
    """
    sign = _side_sign(is_long)
    p = np.asarray(p, dtype=float)
    sigma = np.asarray(sigma_annual, dtype=float)
    t = np.asarray(horizon_s, dtype=float) / SECONDS_PER_YEAR
    nu = np.asarray(drift_annual, dtype=float) - 0.5 * sigma * sigma - sign * np.asarray(fee_drift_annual, dtype=float)
    p, sigma, t, nu = np.broadcast_arrays(p, sigma, t, sign * nu)
    sd = sigma * np.sqrt(t)
    lo = np.zeros(p.shape)
    hi = np.abs(nu) * t + sd * (np.sqrt(2.0 * np.maximum(-np.log(np.clip(p, 1e-300, 1.0)), 1.0)) + 10.0)
    hi = np.maximum(hi, 1e-12)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        too_risky = first_passage_probability(-mid, nu, sigma, t) > p
        lo = np.where(too_risky, mid, lo)
        hi = np.where(too_risky, hi, mid)
        if np.all(hi - lo <= 1e-13 * np.maximum(hi, 1e-12)):
            break
    d = 0.5 * (lo + hi)
    return np.where(p >= 1.0, 0.0, d)


def gaussian_distance(p: ArrayLike, sigma_h: ArrayLike) -> FloatArray:
    """Zero-drift required log-distance :math:`\\Phi^{-1}(1-p/2)\\,\\sigma_h` (reflection principle)."""
    p_arr = np.clip(np.asarray(p, dtype=float), 1e-300, 1.0)
    return ndtri(1.0 - p_arr / 2.0) * np.asarray(sigma_h, dtype=float)


# ---- liquidation price <-> collateral (keeper.domain formulas, floats, vectorised) -------------------


def liquidation_price(
    is_long: ArrayLike, size: ArrayLike, entry: ArrayLike, net_collateral: ArrayLike, maintenance: ArrayLike
) -> FloatArray:
    """Long :math:`(P_0 - C'/q)/(1-m)` (floored at 0), short :math:`(P_0 + C'/q)/(1+m)`, with C' = C - F.

    Same rule as :meth:`keeper.domain.Position.liquidation_price`, in floats and vectorised.
    """
    sign = _side_sign(is_long)
    size = np.asarray(size, dtype=float)
    per_unit = np.asarray(net_collateral, dtype=float) / size
    raw = (np.asarray(entry, dtype=float) - sign * per_unit) / (1.0 - sign * np.asarray(maintenance, dtype=float))
    return np.maximum(raw, 0.0)


def collateral_for_liquidation_price(
    is_long: ArrayLike, size: ArrayLike, entry: ArrayLike, liq_price: ArrayLike, maintenance: ArrayLike
) -> FloatArray:
    """Net collateral C - F that puts the liquidation price at ``liq_price`` (inverse of the above).

    Long :math:`q(P_0 - S_{liq}(1-m))`, short :math:`q(S_{liq}(1+m) - P_0)`.
    """
    sign = _side_sign(is_long)
    s_liq = np.asarray(liq_price, dtype=float)
    m = np.asarray(maintenance, dtype=float)
    return sign * np.asarray(size, dtype=float) * (np.asarray(entry, dtype=float) - s_liq * (1.0 - sign * m))


def fee_drift(
    is_long: ArrayLike, entry: ArrayLike, price: ArrayLike, fee_rate_annual: ArrayLike, maintenance: ArrayLike
) -> FloatArray:
    """Relative speed (per year, fraction of the current price) at which fees move the barrier.

    Fees accrue at ``rate * q * P0`` USD/yr; the barrier moves by that over ``q (1 -+ m)``; divided by the
    price (not the barrier: the two differ by the distance, a few percent of a small number).
    """
    sign = _side_sign(is_long)
    return (
        np.asarray(fee_rate_annual, dtype=float)
        * np.asarray(entry, dtype=float)
        / ((1.0 - sign * np.asarray(maintenance, dtype=float)) * np.asarray(price, dtype=float))
    )


def collateral_for_probability(
    p: ArrayLike,
    *,
    is_long: ArrayLike,
    size: ArrayLike,
    entry: ArrayLike,
    price: ArrayLike,
    maintenance: ArrayLike,
    sigma_annual: ArrayLike,
    horizon_s: ArrayLike,
    pending_fee: ArrayLike = 0.0,
    drift_annual: ArrayLike = 0.0,
    fee_rate_annual: ArrayLike = 0.0,
) -> FloatArray:
    """Collateral C (USD, float) at which the GBM breach probability within ``horizon_s`` equals ``p``.

    Inverts :func:`breach_probability` for the distance, maps it to the liquidation price
    (long :math:`S e^{-d}`, short :math:`S e^{d}`) and that to collateral with the domain formula, plus the
    pending fee F. The result can be negative (the position would be safe with no collateral at all).
    """
    sign = _side_sign(is_long)
    c = fee_drift(is_long, entry, price, fee_rate_annual, maintenance)
    d = distance_for_probability(
        p, sigma_annual, horizon_s, is_long=is_long, drift_annual=drift_annual, fee_drift_annual=c
    )
    s_liq = np.asarray(price, dtype=float) * np.exp(-sign * d)
    return collateral_for_liquidation_price(is_long, size, entry, s_liq, maintenance) + np.asarray(
        pending_fee, dtype=float
    )
