"""Monte Carlo where the closed form stops: correlated, fat-tailed, discretely stepped price paths.

One path set per *asset* is simulated and shared by every position on that asset (never one per position):
each position then only compares its barrier with the per-path running minimum (longs) or maximum
(shorts), sorted once per asset and searched with ``np.searchsorted``.

Model per asset :math:`a`, step :math:`\\Delta` (years), :math:`X = \\ln(S/S_0)`:

.. math::

    X_{k+1} = X_k + (\\mu - \\sigma^2/2 - \\lambda\\bar k)\\Delta + \\sigma\\sqrt\\Delta\\,(LZ_k)_a + J_k

with :math:`L` the Cholesky factor of the correlation matrix (repaired to the nearest positive definite
correlation matrix repaired by Higham's 2002 alternating projections when needed), :math:`Z` standard normal or
multivariate Student-t with unit variance (one chi-square mixing variable per path and step), and
:math:`J` compound-Poisson Merton jumps :math:`N(\\mu_J, \\sigma_J^2)` at intensity :math:`\\lambda`
(compensated, :math:`\\bar k = e^{\\mu_J+\\sigma_J^2/2}-1`).

Barrier crossing between grid points is exact for Brownian motion: the in-step minimum given the end points
is :math:`(x_i + x_{i+1} - \\sqrt{(x_{i+1}-x_i)^2 - 2\\sigma^2\\Delta\\ln U})/2` (and the maximum with ``+``),
Glasserman, *Monte Carlo Methods in Financial Engineering* (2004), 6.4. With
fat-tailed increments the same bridge is applied to the whole step (an approximation).

Variance reduction: scrambled Sobol points (``scipy.stats.qmc``) mapped to normals with Brownian-bridge
ordering of the time steps, and importance sampling by a constant shift :math:`\\theta` of the normal
draws with likelihood-ratio weights :math:`w = \\exp(-\\theta\\sum_k Z_k + n\\theta^2/2)`, evaluated at the
shifted draws. Standard errors are the i.i.d. formula :math:`\\sqrt{(\\overline{w^2 1} - p^2)/n}` (an
upper bound in practice for QMC).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtri
from scipy.stats import qmc

from keeper.domain import SECONDS_PER_YEAR

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PathModel:
    """Per-asset dynamics; arrays have shape ``(n_assets,)``.

    ``student_t_nu`` (> 2) makes increments multivariate Student-t with unit variance; ``jump_*`` add Merton
    jumps (intensity per year, log-jump mean and std). ``corr`` defaults to the identity.
    """

    sigma_annual: tuple[float, ...]
    drift_annual: tuple[float, ...] | None = None
    corr: tuple[tuple[float, ...], ...] | None = None
    student_t_nu: float | None = None
    jump_intensity_annual: float = 0.0
    jump_mean: float = 0.0
    jump_std: float = 0.0

    def __post_init__(self) -> None:
        if any(not s > 0 for s in self.sigma_annual):
            raise ValueError("sigma_annual must be > 0 for every asset")
        if self.student_t_nu is not None and not self.student_t_nu > 2:
            raise ValueError("student_t_nu must be > 2 (finite variance)")
        if self.jump_intensity_annual < 0 or self.jump_std < 0:
            raise ValueError("jump intensity and jump std must be >= 0")

    @property
    def n_assets(self) -> int:
        return len(self.sigma_annual)


@dataclass(frozen=True, slots=True)
class PathSet:
    """Simulated log-price paths X = ln(S/S0), one set per asset, shared by all positions.

    ``path_min``/``path_max``: ``(n_assets, n_paths)`` exact-bridge running extremes; ``terminal``: X at the
    horizon; ``paths``: ``(n_assets, n_paths, n_steps + 1)`` when kept; ``weights``: importance-sampling
    likelihood ratios ``(n_paths,)`` or ``None``.
    """

    path_min: FloatArray
    path_max: FloatArray
    terminal: FloatArray
    dt_years: float
    n_steps: int
    paths: FloatArray | None = None
    weights: FloatArray | None = None

    @property
    def n_paths(self) -> int:
        return self.terminal.shape[1]


def clip_correlation(corr: ArrayLike, eps: float = 1e-10) -> FloatArray:
    """A positive-definite correlation matrix by eigenvalue clipping at ``eps`` and rescaling to unit diagonal.

    Cheap and valid, but not the nearest one (:func:`nearest_correlation` is). The input (symmetrised) is
    returned unchanged when it is already positive definite.
    """
    c = np.asarray(corr, dtype=float)
    c = 0.5 * (c + c.T)
    w, v = np.linalg.eigh(c)
    if w.min() > eps:
        return c
    w = np.maximum(w, eps)
    fixed = (v * w) @ v.T
    d = np.sqrt(np.diag(fixed))
    fixed = fixed / np.outer(d, d)
    np.fill_diagonal(fixed, 1.0)
    return fixed


def nearest_correlation(corr: ArrayLike, *, tol: float = 1e-12, max_iter: int = 1000, eps: float = 1e-10) -> FloatArray:
    """The correlation matrix nearest to ``corr`` in the Frobenius norm (Higham 2002).

    N. J. Higham, "Computing the nearest correlation matrix - a problem from finance", IMA J. Numer. Anal.
    22(3), 2002, algorithm 3.3 with W = I: alternating projections onto the positive semidefinite cone
    (eigenvalues clipped at 0) and onto the unit-diagonal matrices, with Dykstra's correction on the cone
    step (without it the iteration converges to a matrix in the intersection, not the nearest one). Stops
    when an iteration moves the iterate by less than ``tol`` (relative, Frobenius) or after ``max_iter``.
    The nearest matrix is in general singular; the result is nudged to eigenvalues >= ``eps`` (then unit
    diagonal again, :func:`clip_correlation`) so it has a Cholesky factor. Input that is already a
    positive-definite correlation matrix is returned (symmetrised) unchanged.
    """
    a = np.asarray(corr, dtype=float)
    a = 0.5 * (a + a.T)
    if np.allclose(np.diag(a), 1.0) and np.linalg.eigvalsh(a).min() > eps:
        return a
    y = a.copy()
    correction = np.zeros_like(a)
    for _ in range(max_iter):
        r = y - correction
        w, v = np.linalg.eigh(r)
        x = (v * np.maximum(w, 0.0)) @ v.T  # projection onto the PSD cone
        x = 0.5 * (x + x.T)
        correction = x - r  # Dykstra's correction
        y_next = x.copy()
        np.fill_diagonal(y_next, 1.0)  # projection onto unit diagonal
        moved = np.linalg.norm(y_next - y) / max(float(np.linalg.norm(y)), 1.0)
        y = y_next
        if moved < tol:
            break
    return clip_correlation(y, eps)


def cholesky_factor(corr: ArrayLike | None, n_assets: int) -> FloatArray:
    """Cholesky factor of the (repaired) correlation matrix; identity when ``corr`` is None."""
    if corr is None:
        return np.eye(n_assets)
    c = np.asarray(corr, dtype=float)
    if c.shape != (n_assets, n_assets):
        raise ValueError(f"corr must be {n_assets}x{n_assets}")
    return np.asarray(np.linalg.cholesky(nearest_correlation(c)), dtype=np.float64)


def brownian_bridge_order(n_steps: int) -> list[tuple[int, int, int]]:
    """Construction order for a Brownian bridge on grid 0..n: (point, left, right) triples.

    The first triple is the end point (left = 0, right = -1 meaning "no right neighbour"); the others
    bisect intervals breadth-first, so the first (most important) Sobol dimensions drive the coarse shape.
    """
    order = [(n_steps, 0, -1)]
    queue = [(0, n_steps)]
    while queue:
        nxt = []
        for left, right in queue:
            if right - left < 2:
                continue
            mid = (left + right) // 2
            order.append((mid, left, right))
            nxt.extend([(left, mid), (mid, right)])
        queue = nxt
    return order


def bridge_increments(z: FloatArray) -> FloatArray:
    """Map normals ``z`` of shape ``(n_steps, ...)`` to unit-time Brownian increments by bridge ordering.

    Row k of ``z`` is used for the k-th point of :func:`brownian_bridge_order`; the returned increments
    are i.i.d. N(0, 1) when ``z`` is, only their dependence on the rows changes.
    """
    n = z.shape[0]
    w = np.zeros((n + 1,) + z.shape[1:])
    for k, (point, left, right) in enumerate(brownian_bridge_order(n)):
        if right < 0:
            w[point] = math.sqrt(point) * z[k]
        else:
            tl, tr, t = left, right, point
            mean = ((tr - t) * w[left] + (t - tl) * w[right]) / (tr - tl)
            w[point] = mean + math.sqrt((t - tl) * (tr - t) / (tr - tl)) * z[k]
    return np.diff(w, axis=0)


def importance_shift_for_barrier(
    log_barrier: float, sigma_annual: float, horizon_s: float, n_steps: int, drift_annual: float = 0.0
) -> float:
    """Per-step normal shift theta that makes the expected terminal log price equal the barrier."""
    t = horizon_s / SECONDS_PER_YEAR
    nu = drift_annual - 0.5 * sigma_annual**2
    return (log_barrier - nu * t) / (sigma_annual * math.sqrt(t) * math.sqrt(n_steps))


def _sobol_normals(n_steps: int, n_assets: int, n_paths: int, rng: np.random.Generator) -> FloatArray:
    m = max(1, math.ceil(math.log2(n_paths)))
    sampler = qmc.Sobol(d=n_steps * n_assets, scramble=True, seed=rng)
    u = sampler.random_base2(m)[:n_paths]
    u = np.clip(u, 1e-12, 1 - 1e-12)
    z = ndtri(u).T.reshape(n_steps, n_assets, n_paths)  # bridge order index major, asset minor
    return bridge_increments(z)


def simulate_paths(
    model: PathModel,
    horizon_s: float,
    n_steps: int,
    n_paths: int,
    rng: np.random.Generator,
    *,
    sobol: bool = False,
    importance_shift: ArrayLike | None = None,
    keep_paths: bool = False,
) -> PathSet:
    """Simulate one path set per asset over ``horizon_s`` in ``n_steps`` steps (loop over time only).

    ``importance_shift``: per-asset shift of the independent normal draws (see
    :func:`importance_shift_for_barrier`); the returned ``weights`` are the likelihood ratios.
    """
    if n_steps < 1 or n_paths < 2:
        raise ValueError("need n_steps >= 1 and n_paths >= 2")
    if not horizon_s > 0:
        raise ValueError("horizon_s must be > 0")
    n_a = model.n_assets
    dt = horizon_s / SECONDS_PER_YEAR / n_steps
    sig = np.asarray(model.sigma_annual, dtype=float)[:, None]
    mu = np.zeros(n_a) if model.drift_annual is None else np.asarray(model.drift_annual, dtype=float)
    lam = model.jump_intensity_annual
    kbar = math.exp(model.jump_mean + 0.5 * model.jump_std**2) - 1.0
    step_drift = ((mu - 0.5 * sig[:, 0] ** 2 - lam * kbar) * dt)[:, None]
    sd = sig * math.sqrt(dt)
    var_dt = sig**2 * dt
    chol = cholesky_factor(model.corr, n_a)
    z_all = _sobol_normals(n_steps, n_a, n_paths, rng) if sobol else None
    theta = None if importance_shift is None else np.asarray(importance_shift, dtype=float).reshape(n_a, 1)
    log_w = np.zeros(n_paths) if theta is not None else None
    nu_t = model.student_t_nu

    x = np.zeros((n_a, n_paths))
    xmin = np.zeros((n_a, n_paths))
    xmax = np.zeros((n_a, n_paths))
    paths = np.empty((n_a, n_paths, n_steps + 1)) if keep_paths else None
    if paths is not None:
        paths[:, :, 0] = 0.0
    for k in range(n_steps):
        z = z_all[k] if z_all is not None else rng.standard_normal((n_a, n_paths))
        if theta is not None:
            z = z + theta
            log_w += -(theta * z).sum(axis=0) + 0.5 * float((theta**2).sum())
        eps = chol @ z if n_a > 1 else z
        if nu_t is not None:
            mix = rng.chisquare(nu_t, n_paths) / (nu_t - 2.0)  # unit-variance multivariate t
            eps = eps / np.sqrt(mix)
        dx = step_drift + sd * eps
        if lam > 0:
            counts = rng.poisson(lam * dt, (n_a, n_paths))
            hit = counts > 0
            if hit.any():
                c = counts[hit]
                dx[hit] += model.jump_mean * c + model.jump_std * np.sqrt(c) * rng.standard_normal(c.size)
        x_new = x + dx
        spread = np.sqrt(dx * dx - 2.0 * var_dt * np.log(rng.random((n_a, n_paths))))
        np.minimum(xmin, 0.5 * (x + x_new - spread), out=xmin)
        np.maximum(xmax, 0.5 * (x + x_new + spread), out=xmax)
        x = x_new
        if paths is not None:
            paths[:, :, k + 1] = x
    weights = None if log_w is None else np.exp(log_w)
    return PathSet(xmin, xmax, x, dt, n_steps, paths, weights)


@dataclass(frozen=True, slots=True)
class MCEstimate:
    """Monte Carlo probabilities with their standard errors (arrays of the same shape)."""

    probability: FloatArray
    stderr: FloatArray
    n_paths: int


def _sorted_tail_sums(values: FloatArray, weights: FloatArray | None) -> tuple[FloatArray, FloatArray, FloatArray]:
    order = np.argsort(values)
    v = values[order]
    w = np.ones(v.size) if weights is None else weights[order]
    zero = np.zeros(1)
    return v, np.concatenate((zero, np.cumsum(w))), np.concatenate((zero, np.cumsum(w * w)))


def breach_probabilities(
    paths: PathSet, asset_index: ArrayLike, is_long: ArrayLike, log_barrier: ArrayLike
) -> MCEstimate:
    """Per-position breach probability from the shared path set.

    ``log_barrier`` = ln(liquidation price / current price) per position (negative for a safe long,
    positive for a safe short; ``-inf`` for a long that can never be liquidated). Each asset's minima and
    maxima are sorted once; every position is one ``searchsorted``.
    """
    idx = np.asarray(asset_index, dtype=int)
    longs = np.asarray(is_long, dtype=bool)
    b = np.asarray(log_barrier, dtype=float)
    idx, longs, b = np.broadcast_arrays(idx, longs, b)
    n = paths.n_paths
    s1 = np.zeros(b.shape)
    s2 = np.zeros(b.shape)
    for a in np.unique(idx):
        on_a = idx == a
        sel = on_a & longs
        if sel.any():
            v, c1, c2 = _sorted_tail_sums(paths.path_min[a], paths.weights)
            k = np.searchsorted(v, b[sel], side="right")  # paths with min <= b
            s1[sel], s2[sel] = c1[k], c2[k]
        sel = on_a & ~longs
        if sel.any():
            v, c1, c2 = _sorted_tail_sums(paths.path_max[a], paths.weights)
            k = np.searchsorted(v, b[sel], side="left")  # paths with max >= b are the ones from k on
            s1[sel], s2[sel] = c1[-1] - c1[k], c2[-1] - c2[k]
    p = s1 / n
    var = np.maximum(s2 / n - p * p, 0.0)
    return MCEstimate(np.clip(p, 0.0, 1.0), np.sqrt(var / n), n)


def breach_probabilities_loop(
    paths: PathSet, asset_index: Iterable[int], is_long: Iterable[bool], log_barrier: Iterable[float]
) -> FloatArray:
    """Plain-loop oracle of :func:`breach_probabilities` (one position at a time, no sorting)."""
    w = np.ones(paths.n_paths) if paths.weights is None else paths.weights
    out = []
    for a, lg, b in zip(asset_index, is_long, log_barrier, strict=True):
        hit = paths.path_min[a] <= b if lg else paths.path_max[a] >= b
        out.append(float(np.sum(w * hit) / paths.n_paths))
    return np.array(out)


def account_breach_probability(
    paths: PathSet,
    spot: ArrayLike,
    asset_index: ArrayLike,
    signed_size: ArrayLike,
    entry: ArrayLike,
    maintenance: ArrayLike,
    net_collateral_total: float,
) -> tuple[float, float]:
    """Cross-margin account: P(equity < total maintenance margin at some step) and its standard error.

    Equity :math:`= C' + \\sum_i q_i (S_i - P_{0,i})` (signed sizes), maintenance
    :math:`\\sum_i m_i |q_i| S_i`, checked on the simulation grid (discrete monitoring). Needs a path set
    simulated with ``keep_paths=True``; ``spot`` is per asset.
    """
    if paths.paths is None:
        raise ValueError("account_breach_probability needs simulate_paths(..., keep_paths=True)")
    s0 = np.asarray(spot, dtype=float)
    idx = np.asarray(asset_index, dtype=int)
    q = np.asarray(signed_size, dtype=float)
    p0 = np.asarray(entry, dtype=float)
    m = np.asarray(maintenance, dtype=float)
    n_a = paths.paths.shape[0]
    # per-asset aggregated exposures make the path cost independent of the number of positions
    coef = np.bincount(idx, weights=q - m * np.abs(q), minlength=n_a)  # margin excess per unit price
    const = net_collateral_total - float(np.sum(q * p0))
    prices = s0[:, None, None] * np.exp(paths.paths)
    excess = const + np.einsum("a,apt->pt", coef, prices)
    return hit_probability(paths, (excess < 0).any(axis=1))


def hit_probability(paths: PathSet, hit: NDArray[np.bool_]) -> tuple[float, float]:
    """Weighted share of the paths flagged in ``hit`` (importance weights when the set has them) and its
    standard error."""
    w = np.ones(paths.n_paths) if paths.weights is None else paths.weights
    n = paths.n_paths
    p = float(np.sum(w * hit) / n)
    var = max(float(np.sum((w * hit) ** 2) / n) - p * p, 0.0)
    return min(max(p, 0.0), 1.0), math.sqrt(var / n)


def account_breach_screen(
    margin_excess: float,
    gradient: ArrayLike,
    sigma_annual: ArrayLike,
    corr: ArrayLike | None,
    horizon_s: float,
    monitoring_dt_s: float | None = None,
) -> float:
    """Cross-margin screening probability :math:`2\\Phi(-M/(\\sigma_M\\sqrt h))` (reflection principle for the
    account's margin as a driftless Brownian motion).

    ``margin_excess`` M = equity - maintenance (USD); ``gradient`` :math:`g_i = (q_i - m_i|q_i|)S_i`
    aggregated per asset; :math:`\\sigma_M^2 = (g\\sigma)^T \\Sigma (g\\sigma)`. Within ~7% of correlated GBM MC.
    ``monitoring_dt_s``: BGK correction for a check every dt, M -> M + beta sigma_M sqrt(dt).
    """
    from scipy.special import ndtr

    if margin_excess <= 0:
        return 1.0
    gs = np.asarray(gradient, dtype=float) * np.asarray(sigma_annual, dtype=float)
    c = np.eye(gs.size) if corr is None else nearest_correlation(corr)
    sig_m = math.sqrt(max(float(gs @ c @ gs), 0.0))
    if sig_m == 0:
        return 0.0
    if monitoring_dt_s is not None:
        from keeper.risk.barrier import BGK_BETA

        margin_excess += BGK_BETA * sig_m * math.sqrt(monitoring_dt_s / SECONDS_PER_YEAR)
    return float(min(1.0, 2.0 * ndtr(-margin_excess / (sig_m * math.sqrt(horizon_s / SECONDS_PER_YEAR)))))
