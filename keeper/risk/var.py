"""Value at Risk and Expected Shortfall of losses over a horizon: parametric, historical and Monte Carlo.

Losses are positive numbers (USD). At level :math:`a` (e.g. 0.99), McNeil, Frey and Embrechts,
*Quantitative Risk Management* (2015), 2.2.3:

* normal: :math:`\\mathrm{VaR} = \\mu + \\sigma z_a`, :math:`\\mathrm{ES} = \\mu + \\sigma\\varphi(z_a)/(1-a)`
* Student-t with scale :math:`s`, :math:`\\nu` d.o.f.: :math:`\\mathrm{VaR} = \\mu + s t_a`,
  :math:`\\mathrm{ES} = \\mu + s \\frac{f_\\nu(t_a)}{1-a}\\frac{\\nu + t_a^2}{\\nu - 1}`
* historical / Monte Carlo: the empirical (optionally weighted) quantile of the loss sample and the mean
  of the losses at or beyond it.

Perp positions: the loss over the horizon of a position of signed size :math:`q` at price :math:`S` for a
log return :math:`r` is :math:`-q S (e^r - 1)`; :func:`position_var_es` uses the delta-normal or delta-t
approximation (:math:`-qSr`), :func:`portfolio_var_es` the same with a covariance matrix, and
:func:`losses_from_returns` the exact revaluation for historical and simulated returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class VarEs:
    """VaR and ES (positive = loss, USD or the unit of the inputs) at ``level``; ``method`` names the model."""

    var: float
    es: float
    level: float
    method: str


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError("level must be strictly between 0 and 1")


def var_es_normal(mu: float, sigma: float, level: float = 0.99) -> VarEs:
    """Normal loss N(mu, sigma^2): VaR = mu + sigma z_a, ES = mu + sigma phi(z_a)/(1-a)."""
    _check_level(level)
    z = stats.norm.ppf(level)
    return VarEs(float(mu + sigma * z), float(mu + sigma * stats.norm.pdf(z) / (1 - level)), level, "normal")


def var_es_student_t(mu: float, scale: float, nu: float, level: float = 0.99) -> VarEs:
    """Student-t loss mu + scale T_nu: VaR = mu + s t_a, ES = mu + s f(t_a)/(1-a) (nu + t_a^2)/(nu-1)."""
    _check_level(level)
    if not nu > 1:
        raise ValueError("nu must be > 1 for a finite expected shortfall")
    t = stats.t.ppf(level, nu)
    es = mu + scale * stats.t.pdf(t, nu) / (1 - level) * (nu + t * t) / (nu - 1)
    return VarEs(float(mu + scale * t), float(es), level, "student_t")


def var_es_empirical(
    losses: ArrayLike, level: float = 0.99, weights: ArrayLike | None = None, method: str = "historical"
) -> VarEs:
    """Empirical VaR (the smallest loss L with P(loss <= L) >= a) and ES (mean loss at or beyond VaR).

    ``weights`` (importance-sampling likelihood ratios) are normalised to sum to one. ES uses the
    Acerbi-Tasche tail mean: the probability mass beyond VaR plus the share of the VaR atom needed to
    make the tail exactly 1 - a.
    """
    _check_level(level)
    x = np.asarray(losses, dtype=float)
    if x.size == 0:
        raise ValueError("no losses")
    w = np.full(x.size, 1.0 / x.size) if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
    order = np.argsort(x)
    x, w = x[order], w[order]
    cdf = np.cumsum(w)
    k = int(np.searchsorted(cdf, level - 1e-12, side="left"))
    k = min(k, x.size - 1)
    var = float(x[k])
    tail = 1.0 - level
    beyond = float(np.sum(w[k + 1 :] * x[k + 1 :]))
    mass_beyond = float(np.sum(w[k + 1 :]))
    es = (beyond + (tail - mass_beyond) * var) / tail if tail > 0 else var
    return VarEs(var, max(es, var), level, method)


def losses_from_returns(signed_size: ArrayLike, price: ArrayLike, log_returns: ArrayLike) -> FloatArray:
    """Exact revaluation loss :math:`-\\sum_i q_i S_i (e^{r_i} - 1)`; ``log_returns`` shape (n, n_assets) or (n,)."""
    q = np.atleast_1d(np.asarray(signed_size, dtype=float))
    s = np.atleast_1d(np.asarray(price, dtype=float))
    r = np.asarray(log_returns, dtype=float)
    if r.ndim == 1:
        r = r[:, None]
    return -np.expm1(r) @ (q * s)


def position_var_es(
    signed_size: float,
    price: float,
    sigma_annual: float,
    horizon_s: float,
    level: float = 0.99,
    *,
    nu: float | None = None,
    drift_annual: float = 0.0,
) -> VarEs:
    """Parametric VaR/ES of one perp position over the horizon (delta approximation, loss = -q S r).

    ``nu`` given: Student-t with the same standard deviation (scale = sd sqrt((nu-2)/nu)); else normal.
    """
    from keeper.domain import SECONDS_PER_YEAR

    t = horizon_s / SECONDS_PER_YEAR
    exposure = abs(signed_size) * price
    sd = exposure * sigma_annual * math.sqrt(t)
    mu = -math.copysign(1.0, signed_size) * exposure * drift_annual * t
    if nu is None:
        return var_es_normal(mu, sd, level)
    return var_es_student_t(mu, sd * math.sqrt((nu - 2) / nu), nu, level)


def portfolio_var_es(
    exposures_usd: ArrayLike,
    sigma_annual: ArrayLike,
    corr: ArrayLike | None,
    horizon_s: float,
    level: float = 0.99,
    *,
    nu: float | None = None,
) -> VarEs:
    """Delta-normal (or delta-t) portfolio VaR/ES: loss sd :math:`\\sqrt{(e\\sigma)^T R (e\\sigma)}\\sqrt h`.

    ``exposures_usd``: signed USD delta per asset (q S); ``corr`` the correlation matrix (identity if None).
    """
    from keeper.domain import SECONDS_PER_YEAR

    es_ = np.asarray(exposures_usd, dtype=float) * np.asarray(sigma_annual, dtype=float)
    r = np.eye(es_.size) if corr is None else np.asarray(corr, dtype=float)
    sd = math.sqrt(max(float(es_ @ r @ es_), 0.0) * horizon_s / SECONDS_PER_YEAR)
    if nu is None:
        return var_es_normal(0.0, sd, level)
    return var_es_student_t(0.0, sd * math.sqrt((nu - 2) / nu), nu, level)
