"""Volatility from oracle price history: EWMA, GARCH(1,1) with Student-t innovations, floors and fallbacks.

Oracle rounds arrive at irregular times, so every log return is put on a common clock before it is used:

* EWMA (RiskMetrics, J.P. Morgan/Reuters *RiskMetrics Technical Document*, 1996, lambda = 0.94) runs on
  per-second variance samples :math:`r_i^2/\\Delta t_i`:
  :math:`v_i = \\lambda v_{i-1} + (1-\\lambda) r_i^2/\\Delta t_i`.
* GARCH(1,1) (Bollerslev 1986; Student-t innovations, Bollerslev 1987) runs on returns rescaled to the
  median interval :math:`\\bar{\\Delta}`, :math:`\\tilde r_i = r_i\\sqrt{\\bar\\Delta/\\Delta t_i}`:

  .. math::

      \\sigma^2_t = \\omega + \\alpha \\tilde r^2_{t-1} + \\beta \\sigma^2_{t-1},\\qquad
      \\tilde r_t = \\sigma_t \\varepsilon_t,\\ \\varepsilon_t \\sim t_\\nu \\text{ (unit variance)}

  fitted by maximum likelihood (SLSQP, :math:`\\alpha+\\beta<1`), with the ``arch`` package's backcast
  (exponentially weighted mean of the first 75 squared returns, weights :math:`0.94^i`) as the initial
  variance so both give the same likelihood. The h-step forecast is
  :math:`E\\sigma^2_{t+k} = \\bar\\sigma^2 + (\\alpha+\\beta)^{k-1}(\\sigma^2_{t+1} - \\bar\\sigma^2)`, summed over the
  horizon.

:func:`estimate_volatility` combines them with an implied-volatility floor and a conservative fallback,
and says which model produced the number and why a fallback was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.signal import lfilter
from scipy.special import gammaln

from keeper.domain import SECONDS_PER_YEAR

RISKMETRICS_LAMBDA = 0.94
MIN_RETURNS_EWMA = 30
MIN_RETURNS_GARCH = 250


@dataclass(frozen=True, slots=True)
class VolEstimate:
    """An annualised volatility and where it came from.

    ``model`` is ``"ewma"``, ``"garch"`` or ``"fallback"``; ``fallback_reason`` is empty unless the
    requested model could not be used; ``floored`` is true when the implied-vol floor set the value.
    """

    sigma_annual: float
    model: str
    fallback_reason: str = ""
    n_returns: int = 0
    floored: bool = False
    raw_sigma_annual: float = float("nan")


@dataclass(frozen=True, slots=True)
class GarchFit:
    """GARCH(1,1)-t parameters in the units of the returns fitted (one observation per step).

    ``next_variance`` is the one-step-ahead conditional variance after the last observation.
    """

    omega: float
    alpha: float
    beta: float
    nu: float
    loglik: float
    next_variance: float
    n_obs: int
    converged: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def persistence(self) -> float:
        return self.alpha + self.beta

    @property
    def unconditional_variance(self) -> float:
        return self.omega / (1.0 - self.persistence) if self.persistence < 1.0 else math.inf


def log_returns(times_s: ArrayLike, prices: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Log returns and their elapsed seconds from price rounds; rounds that do not advance time are dropped."""
    t = np.asarray(times_s, dtype=float)
    p = np.asarray(prices, dtype=float)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError("times_s and prices must be 1-d arrays of the same length")
    if np.any(~np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("prices must be finite and positive")
    keep = np.concatenate(([True], np.diff(t) > 0))
    t, p = t[keep], p[keep]
    return np.diff(np.log(p)), np.diff(t)


def ewma_variance_per_s(returns: ArrayLike, dt_s: ArrayLike, lam: float = RISKMETRICS_LAMBDA) -> float:
    """Last EWMA variance per second, :math:`v_i = \\lambda v_{i-1} + (1-\\lambda) r_i^2/\\Delta t_i`.

    Seeded with the mean of the first (up to 30) per-second samples. Vectorised with ``lfilter``.
    """
    if not 0.0 < lam < 1.0:
        raise ValueError("lam must be strictly between 0 and 1")
    x = np.asarray(returns, dtype=float) ** 2 / np.asarray(dt_s, dtype=float)
    if x.size == 0:
        raise ValueError("no returns")
    v0 = float(np.mean(x[: min(30, x.size)]))
    y, _ = lfilter([1.0 - lam], [1.0, -lam], x, zi=[lam * v0])
    return float(y[-1])


def _backcast(resids: NDArray[np.float64]) -> float:
    """arch's variance backcast: sum of 0.94^i-weighted squared residuals over the first min(75, n)."""
    tau = min(75, resids.size)
    w = 0.94 ** np.arange(tau)
    w /= w.sum()
    return float(np.sum(resids[:tau] ** 2 * w))


def garch_variance_path(
    resids: NDArray[np.float64], omega: float, alpha: float, beta: float, backcast: float
) -> NDArray[np.float64]:
    """Conditional variances sigma2[0..n-1] (sigma2[0] uses the backcast for both lags), via ``lfilter``."""
    lagged = np.empty_like(resids)
    lagged[0] = backcast
    lagged[1:] = resids[:-1] ** 2
    x = omega + alpha * lagged
    y, _ = lfilter([1.0], [1.0, -beta], x, zi=[beta * backcast])
    return y


def garch_variance_path_loop(
    resids: NDArray[np.float64], omega: float, alpha: float, beta: float, backcast: float
) -> NDArray[np.float64]:
    """Plain-loop oracle of :func:`garch_variance_path` (kept for the tests)."""
    out = np.empty_like(resids)
    prev_e2, prev_s2 = backcast, backcast
    for i, e in enumerate(resids):
        out[i] = omega + alpha * prev_e2 + beta * prev_s2
        prev_e2, prev_s2 = e * e, out[i]
    return out


def _t_loglik(resids: NDArray[np.float64], sigma2: NDArray[np.float64], nu: float) -> float:
    """Standardised Student-t log likelihood (unit-variance innovations), as in ``arch.univariate.StudentsT``."""
    return float(
        np.sum(
            gammaln((nu + 1) / 2)
            - gammaln(nu / 2)
            - 0.5 * np.log(np.pi * (nu - 2))
            - 0.5 * np.log(sigma2)
            - (nu + 1) / 2 * np.log1p(resids**2 / (sigma2 * (nu - 2)))
        )
    )


def fit_garch_t(returns: ArrayLike) -> GarchFit:
    """Maximum-likelihood GARCH(1,1) with standardised Student-t innovations, zero mean.

    The returns are scaled to unit variance for the optimiser and the fit scaled back (omega by s^2).
    Raises ``ValueError`` with fewer than 10 returns.
    """
    r = np.asarray(returns, dtype=float)
    if r.size < 10:
        raise ValueError("GARCH needs at least 10 returns")
    scale = float(np.sqrt(np.mean(r**2)))
    if not scale > 0:
        raise ValueError("returns are all zero")
    e = r / scale
    bc = _backcast(e)

    def negll(theta: NDArray[np.float64]) -> float:
        omega, alpha, beta, nu = theta
        s2 = garch_variance_path(e, omega, alpha, beta, bc)
        if np.any(s2 <= 0) or not np.all(np.isfinite(s2)):
            return 1e12
        return -_t_loglik(e, s2, nu)

    best = None
    for a0, b0 in ((0.08, 0.90), (0.05, 0.80), (0.15, 0.60)):
        x0 = np.array([1.0 - a0 - b0, a0, b0, 8.0])
        res = minimize(
            negll,
            x0,
            method="SLSQP",
            bounds=[(1e-8, 10.0), (0.0, 1.0), (0.0, 1.0), (2.05, 500.0)],
            constraints=[{"type": "ineq", "fun": lambda th: 0.99999 - th[1] - th[2]}],
            options={"maxiter": 500, "ftol": 1e-10},
        )
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    omega, alpha, beta, nu = (float(v) for v in best.x)
    s2 = garch_variance_path(e, omega, alpha, beta, bc)
    next_var = omega + alpha * e[-1] ** 2 + beta * s2[-1]
    # log likelihood of the unscaled returns: each term gains -ln(scale)
    loglik = -float(best.fun) - r.size * math.log(scale)
    return GarchFit(
        omega=omega * scale**2,
        alpha=alpha,
        beta=beta,
        nu=nu,
        loglik=loglik,
        next_variance=float(next_var) * scale**2,
        n_obs=int(r.size),
        converged=bool(best.success),
    )


def garch_forecast(fit: GarchFit, steps: int) -> NDArray[np.float64]:
    """Conditional variance forecasts for steps 1..``steps`` ahead (closed-form recursion).

    :math:`E\\sigma^2_{t+k} = \\omega \\sum_{j<k-1}(\\alpha+\\beta)^j + (\\alpha+\\beta)^{k-1}\\sigma^2_{t+1}`.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    k = np.arange(steps)
    ab = fit.persistence
    geo = k.astype(float) if ab == 1.0 else (1.0 - ab**k) / (1.0 - ab)
    return fit.omega * geo + ab**k * fit.next_variance


def estimate_volatility(
    times_s: ArrayLike,
    prices: ArrayLike,
    *,
    model: str = "ewma",
    horizon_s: float = 3600.0,
    lam: float = RISKMETRICS_LAMBDA,
    floor_annual: float = 0.0,
    fallback_annual: float = 1.5,
    min_returns: int | None = None,
) -> VolEstimate:
    """Annualised volatility for the next ``horizon_s`` from oracle rounds (times in seconds, prices).

    ``model="ewma"`` or ``"garch"`` (Student-t GARCH(1,1), variance forecast summed over the horizon in
    steps of the median interval). Too little history (fewer than ``min_returns``: 30 EWMA, 250 GARCH)
    returns ``fallback_annual`` with ``model="fallback"``; a GARCH fit that fails or is not stationary falls
    back to EWMA. The result is never below ``floor_annual`` (an implied-volatility floor).
    """
    if model not in ("ewma", "garch"):
        raise ValueError("model must be 'ewma' or 'garch'")
    need = min_returns if min_returns is not None else (MIN_RETURNS_GARCH if model == "garch" else MIN_RETURNS_EWMA)
    r, dt = log_returns(times_s, prices)

    def finish(sigma: float, used: str, reason: str) -> VolEstimate:
        floored = floor_annual > sigma
        return VolEstimate(
            sigma_annual=max(sigma, floor_annual),
            model=used,
            fallback_reason=reason,
            n_returns=int(r.size),
            floored=floored,
            raw_sigma_annual=sigma,
        )

    if r.size < need:
        return finish(fallback_annual, "fallback", f"only {r.size} returns, {model} needs {need}")
    ewma = math.sqrt(ewma_variance_per_s(r, dt, lam) * SECONDS_PER_YEAR)
    if model == "ewma":
        return finish(ewma, "ewma", "")
    base = float(np.median(dt))
    try:
        fit = fit_garch_t(r * np.sqrt(base / dt))
    except (ValueError, FloatingPointError) as exc:
        return finish(ewma, "ewma", f"garch fit failed: {exc}")
    if not fit.converged or fit.persistence >= 0.9999:
        return finish(ewma, "ewma", f"garch fit unusable (converged={fit.converged}, alpha+beta={fit.persistence:.4f})")
    steps = max(1, math.ceil(horizon_s / base))
    var_h = float(np.sum(garch_forecast(fit, steps)))
    return finish(math.sqrt(var_h / (steps * base) * SECONDS_PER_YEAR), "garch", "")
