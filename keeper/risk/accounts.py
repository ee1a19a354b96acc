"""Risk of a margin account: the probability that its margin excess reaches 0 within the horizon (pure core).

A :class:`~keeper.accounts.base.MarginAccount` holds legs in several assets. Its margin excess (base currency,
USD) is linear in every price,

.. math:: M(S) = K + \\sum_c q_c S_c w_c - \\sum_d q_d S_d w_d,
    \\qquad g_a = \\frac{\\partial M}{\\partial \\ln S_a} = \\sum_{c \\in a} q_c S_c w_c - \\sum_{d \\in a} q_d S_d w_d

(``K`` cash at face value; Aave's debt weights are 1, a perpetual short's is 1 + the maintenance ratio, its
long's collateral weight 1 - that ratio: :mod:`keeper.accounts.perp_v2`)

so over a short horizon :math:`M` moves like an arithmetic Brownian motion with
:math:`\\sigma_M^2 = (g\\sigma)^T C (g\\sigma)` (``C`` the assets' correlation matrix).

* **One dominant factor** (one asset carries at least ``dominance`` of :math:`\\sigma_M^2`, e.g. WETH
  collateral against a USDC debt): the account is a one-asset barrier problem. Its liquidation price
  :math:`S^*_a = S_a (1 - M/g_a)` (below the price for a collateral asset, above it for a debt asset), the
  log-distance :math:`d = |\\ln(S^*_a/S_a)|` and the same fat-tailed first-passage probability the reference
  protocol's positions get, :math:`2\\Phi(-(d - d_{cost})/(\\kappa\\sigma_h))`
  (:func:`keeper.risk.policy.kappa_scaled_breach_probability`: reflection principle, Shreve, *Stochastic Calculus for
  Finance II*, 3.7, with the Monte Carlo calibrated fat-tail multiplier :math:`\\kappa`).
* **Several factors** (e.g. WETH and WBTC collateral against a WETH debt): the cross-margin screen
  :math:`2\\Phi(-(M - c)/(\\kappa\\sigma_M\\sqrt h))` (within ~7 % of correlated GBM Monte Carlo), refined by
  the correlated, fat-tailed Monte Carlo of :mod:`keeper.risk.montecarlo` (:func:`account_breach_mc`: one path
  set per asset shared by every account, :math:`M` evaluated on the grid) when the caller passes paths.
* **Interest accrual** is the drift: debt grows at its variable borrow rate and collateral at its supply
  rate, :math:`\\dot M = \\sum_c v_c w_c r_c - \\sum_d v_d r_d` per year; over the horizon it costs
  :math:`c = \\max(0, -\\dot M h)` of margin (``d_cost = c / |g_a|`` in log-distance for one factor), like the
  reference protocol's borrow-fee drift.
* **Stress gap per asset**: the largest adverse single-round move of each asset's oracle
  (:mod:`keeper.risk.gaps`); a collateral asset's adverse move is down, a debt asset's up.

**The move to survive** (what a top-up must make safe). For one factor: the price at the policy's target
distance :math:`d_{target} = \\max(\\kappa\\Phi^{-1}(1 - p_{target}/2)\\sigma_h, d_s(1 + \\text{headroom})) +
d_{cost}`, exactly the reference protocol's target. For several factors: the most likely adverse move of the
size that probability allows, the design point of first-order reliability analysis (Hasofer and Lind, "Exact
and invariant second-moment code format", J. Eng. Mech. 100(1), 1974): log moves
:math:`x_a = -k\\sqrt h\\,\\sigma_a (C g\\sigma)_a / \\sigma_M` with :math:`k = \\kappa\\Phi^{-1}(1-p_{target}/2)`,
and every material factor moved at least its stress gap with headroom. The protocol's exact rule (Aave's
integer health factor) then finds the least supply or repay that keeps the account solvent at those prices.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from keeper.accounts.base import BPS, LegKind, MarginAccount
from keeper.domain import SECONDS_PER_YEAR
from keeper.risk.barrier import gaussian_distance
from keeper.risk.montecarlo import PathModel, PathSet, hit_probability, nearest_correlation, simulate_paths
from keeper.risk.policy import (
    RiskPolicy,
    cost_aware_bands,
    kappa_scaled_breach_probability,
    sigma_horizon,
    suggested_check_interval,
)
from keeper.risk.var import VarEs, var_es_normal, var_es_student_t

__all__ = [
    "DEFAULT_DOMINANCE",
    "DEFAULT_STRESS_MOVES",
    "MATERIAL_SHARE",
    "AccountMonteCarlo",
    "AccountRisk",
    "AccountStress",
    "account_bands",
    "account_breach_mc",
    "account_stress_grid",
    "account_var_es",
    "assess_account",
    "assess_accounts",
    "breach_vega",
    "correlation_from_histories",
    "exposures",
    "refine_with_monte_carlo",
]

DEFAULT_DOMINANCE = 0.95
"""Share of the margin's variance one asset must carry for the one-factor closed form to be used."""
MATERIAL_SHARE = 0.10
"""An asset whose |g sigma| is at least this fraction of the largest one is a material factor: its stress gap
is part of the move to survive (a stablecoin debt against ETH collateral is not)."""


@dataclass(frozen=True, slots=True)
class AccountRisk:
    """The risk engine's verdict on one margin account at one set of prices.

    ``method``: ``closed_form`` (one dominant factor), ``screen`` (several factors, Gaussian screen with
    kappa), ``monte_carlo`` (several factors, correlated fat-tailed paths), ``no_debt`` (nothing to
    liquidate). ``liquidation_price_e8`` is the dominant asset's one-factor liquidation price (0 when it has
    none); ``log_distance`` its log-distance from the price (``inf`` when none). ``survive_prices_e8`` is
    the move a protective action must survive (the design point); ``stress_prices_e8`` the stress-gap move
    alone (the account is inside its stress gap when ``M`` is negative there). ``vega``: :func:`breach_vega`.
    """

    protocol: str
    account: str
    margin_excess_usd: float
    collateral_weighted_usd: float
    debt_usd: float
    gradient_usd: Mapping[str, float]  # dM/dln S per asset (USD)
    breach_probability: float
    method: str
    dominant_asset: str
    dominant_share: float
    liquidation_price_e8: int
    log_distance: float
    sigma_margin_usd: float  # sigma_M, per sqrt(year)
    drift_usd_per_year: float
    horizon_s: float
    survive_prices_e8: Mapping[str, int]
    stress_prices_e8: Mapping[str, int]
    stress_gaps: Mapping[str, float]  # the adverse-side gap used per material asset
    stress_breach: bool
    liquidatable: bool
    suggested_check_interval_s: float
    stderr: float = 0.0  # Monte Carlo standard error (0 for the closed forms)
    vega: float = 0.0  # d breach_probability / d sigma, every asset's annual volatility shifted alike (breach_vega)
    # the bands in the account's own unit (account_bands): one factor, the log distance to liquidation; the screen,
    # the margin excess over the exposure of the equivalent single factor (M / s); nan without debt
    band_distance: float = math.nan  # where the account is now
    trigger_distance: float = math.nan  # inside it a top-up is due (with the breach probability and stress rules)
    restore_distance: float = math.nan  # what a top-up restores to (the move to survive is sized to it)
    release_distance: float = math.nan  # beyond it the excess is released, down to the restore level
    band_notional_usd: float = 0.0  # the exposure the bands are priced on (|g| of the dominant factor; s)
    band_sigma_annual: float = 0.0  # that exposure's volatility (the dominant asset's; sigma_M / s)

    @property
    def has_debt(self) -> bool:
        return self.debt_usd > 0


def exposures(account: MarginAccount, prices_e8: Mapping[str, int]) -> tuple[float, float, dict[str, float], float]:
    """(weighted collateral, weighted debt, gradient dM/dln S per asset, drift dM/dt per year), USD floats.

    Cash counts as collateral when positive and as debt when negative (a perpetual long's open notional is
    owed), so ``collateral - debt`` is M."""
    cash = account.cash_e8 / 1e8
    coll, debt = max(cash, 0.0), max(-cash, 0.0)
    drift = account.drift_usd_per_year
    grad: dict[str, float] = {}
    collateral = LegKind.COLLATERAL
    for leg in account.legs:
        key = leg.price_key or leg.asset
        vw = leg.amount * prices_e8[key] // 10**leg.decimals / 1e8 * leg.weight_bps / BPS  # Leg.value_e8
        if leg.kind is collateral:
            coll += vw
            grad[key] = grad.get(key, 0.0) + vw
            drift += vw * leg.rate_annual
        else:
            debt += vw
            grad[key] = grad.get(key, 0.0) - vw
            drift -= vw * leg.rate_annual
    return coll, debt, grad, drift


def _corr(assets: Sequence[str], correlation: Mapping[tuple[str, str], float] | None) -> NDArray[np.float64]:
    n = len(assets)
    c = np.eye(n)
    if correlation:
        for i, a in enumerate(assets):
            for j, b in enumerate(assets):
                if i != j:
                    rho = correlation.get((a, b), correlation.get((b, a)))
                    if rho is not None:
                        c[i, j] = rho
        c = nearest_correlation(c)
    return c


def _move(prices_e8: Mapping[str, int], log_moves: Mapping[str, float]) -> dict[str, int]:
    out = dict(prices_e8)
    for a, x in log_moves.items():
        out[a] = max(1, int(prices_e8[a] * math.exp(x)))
    return out


def _excess_at(account: MarginAccount, prices_e8: Mapping[str, int]) -> float:
    return account.margin_excess_e8(prices_e8) / 1e8


_Vec = NDArray[np.float64]
_Grad = dict[str, float]


@dataclass(frozen=True, slots=True)
class _BookLegs:
    """Every leg of a book in one flat list, in account then leg order: the owner's index, the price key and the
    leg's integers (object arrays: amounts times prices overflow 64 bits)."""

    owner: NDArray[np.intp]
    keys: list[str]
    amounts: NDArray[np.object_]
    units: NDArray[np.object_]  # 10^decimals
    weights: NDArray[np.object_]  # bps
    is_debt: NDArray[np.bool_]
    rates: NDArray[np.float64]
    cash_e8: list[int]
    drifts: list[float]  # MarginAccount.drift_usd_per_year

    @classmethod
    def of(cls, accounts: Sequence[MarginAccount]) -> _BookLegs:
        flat = [leg for a in accounts for leg in a.legs]
        decimals = np.array([leg.decimals for leg in flat], dtype=np.intp)
        powers = np.array([10**d for d in range(int(decimals.max(initial=0)) + 1)], dtype=object)
        debt = LegKind.DEBT
        return cls(
            np.repeat(np.arange(len(accounts)), [len(a.legs) for a in accounts]),
            [leg.price_key or leg.asset for leg in flat],
            np.array([leg.amount for leg in flat], dtype=object),
            powers[decimals],
            np.array([leg.weight_bps for leg in flat], dtype=object),
            np.array([leg.kind is debt for leg in flat], dtype=bool),
            np.array([leg.rate_annual for leg in flat], dtype=float),
            [a.cash_e8 for a in accounts],
            [a.drift_usd_per_year for a in accounts],
        )

    def exposures(self, prices_e8: Mapping[str, int]) -> tuple[_Vec, _Vec, list[_Grad], _Vec, _Vec, list[str]]:
        """:func:`exposures` of every account at once: the same floats (each leg's value floored in integers,
        then the same float operations, summed per account in leg order by the unbuffered ``ufunc.at``), and
        the gradients as a matrix over the book's sorted price keys (0.0 where an account has no leg)."""
        n = len(self.cash_e8)
        value = self.amounts * np.array([prices_e8[k] for k in self.keys], dtype=object)
        vw = (value // self.units).astype(float) / 1e8 * self.weights.astype(float) / BPS
        cash = [c / 1e8 for c in self.cash_e8]
        coll = np.array([max(c, 0.0) for c in cash], dtype=float)
        debt = np.array([max(-c, 0.0) for c in cash], dtype=float)
        drift = np.array(self.drifts, dtype=float)
        credit = ~self.is_debt
        np.add.at(coll, self.owner[credit], vw[credit])
        np.add.at(debt, self.owner[self.is_debt], vw[self.is_debt])
        signed = np.where(self.is_debt, -vw, vw)
        np.add.at(drift, self.owner, signed * self.rates)  # drift += vw rate (collateral), -= vw rate (debt)
        names = sorted(set(self.keys))
        col = {k: j for j, k in enumerate(names)}
        kcol = np.array([col[k] for k in self.keys], dtype=np.intp)
        grad = np.zeros((n, len(names)))
        np.add.at(grad, (self.owner, kcol), signed)
        return coll, debt, self._gradients(grad, kcol, names), drift, grad, names

    def _gradients(self, grad: NDArray[np.float64], kcol: NDArray[np.intp], names: list[str]) -> list[dict[str, float]]:
        """Per account, its gradient as :func:`exposures` builds it: keys in the order of its legs. Accounts
        whose legs name the same keys in the same order (a book has a handful of such shapes) are done at once."""
        n = len(self.cash_e8)
        widths = np.bincount(self.owner, minlength=n)
        width = int(widths.max(initial=0))
        starts = np.cumsum(widths) - widths
        shape = np.full((n, width + 1), -1, dtype=np.intp)
        shape[:, width] = widths  # accounts without legs: an empty shape
        shape[self.owner, np.arange(len(kcol)) - starts[self.owner]] = kcol
        base = len(names) + 2
        if base ** (width + 1) < 2**62:  # each shape as one integer (digits: key column + 1, then the width)
            codes = (shape + 1) @ (base ** np.arange(width + 1, dtype=np.int64))
            first, which = np.unique(codes, return_index=True, return_inverse=True)[1:]
            kinds = shape[first]
        else:
            kinds, which = np.unique(shape, axis=0, return_inverse=True)
        which = which.reshape(-1)
        out: list[dict[str, float]] = [{}] * n
        for s, row in enumerate(kinds.tolist()):
            cols = list(dict.fromkeys(c for c in row[:width] if c >= 0))
            keys = [names[c] for c in cols]
            members = np.flatnonzero(which == s)
            for i, values in zip(members.tolist(), grad[np.ix_(members, cols)].tolist(), strict=True):
                out[i] = dict(zip(keys, values, strict=True))
        return out

    def margins_e8(self, leg_prices_e8: Sequence[int]) -> list[int]:
        """:meth:`MarginAccount.margin_excess_e8` of every account, each leg at its own price (exact integers)."""
        value = self.amounts * np.array(leg_prices_e8, dtype=object) // self.units * self.weights // BPS
        total = np.array(self.cash_e8, dtype=object)
        np.add.at(total, self.owner, np.where(self.is_debt, -value, value))
        return list(total.tolist())


def breach_vega(x: ArrayLike, dln_sigma: ArrayLike) -> NDArray[np.float64]:
    r"""Vega of the breach probability :math:`p = 2\Phi(-x)`, :math:`x = (d - d_{cost})/(\kappa\sigma_h)`:

    .. math:: \frac{\partial p}{\partial \sigma} = 2\varphi(x)\,x\,\frac{\partial \ln \sigma_{eff}}{\partial \sigma}

    per unit of annual volatility (1.0 = 100 vol points, :mod:`keeper.risk.greeks`' convention) for a parallel
    shift of every asset's annual volatility. ``dln_sigma``: one factor, :math:`1/\sigma_a` of the dominant
    asset; the screen, :math:`\partial \ln \sigma_M/\partial \sigma = g^T C (g\sigma) / \sigma_M^2`
    (:math:`\sigma_M^2 = (g\sigma)^T C (g\sigma)`). 0 where :math:`p` is clipped to 1 (:math:`x \le 0`: at or
    past the liquidation price) and where :math:`x` is infinite (no liquidation price)."""
    xa = np.asarray(x, dtype=float)
    ok = np.isfinite(xa) & (xa > 0)
    xs = np.where(ok, xa, 0.0)
    out = 2.0 * np.exp(-0.5 * xs * xs) / math.sqrt(2.0 * math.pi) * xs * np.asarray(dln_sigma, dtype=float)
    return np.where(ok, out, 0.0)


def account_bands(
    policy: RiskPolicy,
    trigger: ArrayLike,
    floor: ArrayLike,
    fixed_restore: ArrayLike,
    notional_usd: ArrayLike,
    sigma_annual: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""An account's restore and release levels, in the account's own unit (elementwise).

    Without ``policy.cost_bands``: the fixed rule, restore at ``fixed_restore`` (the move to survive) and release
    beyond it stretched by :math:`(1 + \text{release\_headroom})/(1 + \text{stress\_headroom})`. With them: the
    (s, S) band of :func:`keeper.risk.policy.cost_aware_bands` between ``trigger`` and a restore level of at
    least ``floor``, priced on ``notional_usd`` at ``sigma_annual``.

    The argument is the positions' one, on the quantity that is a Brownian motion for the account. One factor:
    the log distance to liquidation :math:`d` moves like the dominant asset's log price (volatility
    :math:`\sigma_a`), and the margin held above the trigger is about :math:`|g_a| d` (:math:`g_a` the
    factor's exposure, the notional). Several factors: the margin excess :math:`M` is an arithmetic Brownian
    motion of volatility :math:`\sigma_M`; measured in units of :math:`s = \sigma_M / \bar\sigma` (the exposure
    of the single factor with the same variance at :math:`\bar\sigma`, the assets' volatilities weighted by
    their shares :math:`|g_a\sigma_a (C g\sigma)_a| / \sigma_M^2` of the variance), :math:`X = M/s` has
    volatility :math:`\bar\sigma` and idle margin :math:`s X`, so the cost per year is the same
    :math:`g(u, w)` with notional :math:`s`; for one asset :math:`s = |g_a|` and :math:`X \approx d`.
    The optimum :math:`u^*` does not depend on the unit (only the :data:`~keeper.risk.policy.MAX_COST_BAND`
    cap does)."""
    fixed = np.asarray(fixed_restore, dtype=float)
    if policy.cost_bands is None:
        stretch = (1.0 + policy.release_headroom) / (1.0 + policy.stress_headroom)
        return fixed, fixed * stretch
    return cost_aware_bands(trigger, floor, notional_usd, sigma_annual, policy.cost_bands)


def _scale_to_loss(
    grad: NDArray[np.float64], moves: NDArray[np.float64], loss: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Per row, the factor ``c`` with ``-sum(grad * expm1(c * moves)) = loss`` (the margin a scaled move takes;
    ``M`` is linear in the prices), by Newton's method from the linear guess (the loss is convex in ``c``)."""
    lin = -(grad * moves).sum(axis=1)
    c = np.where(lin > 0, loss / np.where(lin > 0, lin, 1.0), 1.0)
    for _ in range(8):
        f = -(grad * np.expm1(c[:, None] * moves)).sum(axis=1) - loss
        df = -(grad * moves * np.exp(c[:, None] * moves)).sum(axis=1)
        c = np.where(df > 0, c - f / np.where(df > 0, df, 1.0), c)
    return c


def assess_account(
    account: MarginAccount,
    prices_e8: Mapping[str, int],
    sigmas_annual: Mapping[str, float],
    policy: RiskPolicy,
    check_interval_s: float,
    *,
    stress_gaps: Mapping[str, tuple[float, float]] | None = None,
    correlation: Mapping[tuple[str, str], float] | None = None,
    dominance: float = DEFAULT_DOMINANCE,
    liquidatable: bool | None = None,
) -> AccountRisk:
    """The verdict on one account (see the module docstring for the formulas).

    ``sigmas_annual`` per asset (missing: the policy's fallback); ``stress_gaps`` per asset as (down, up)
    log moves (missing: ``policy.stress_gap`` both ways); ``correlation`` per asset pair (missing: 0).
    ``liquidatable`` is the protocol's exact verdict when the caller has it (Aave: HF < 1 in integers);
    otherwise ``M < 0``.
    """
    if not check_interval_s > 0:
        raise ValueError("check_interval_s must be > 0")
    if not 0.5 < dominance <= 1.0:
        raise ValueError("dominance must be in (0.5, 1]")
    coll, debt, grad, drift = exposures(account, prices_e8)
    m = coll - debt
    h = policy.horizon_s(check_interval_s)
    h_years = h / SECONDS_PER_YEAR
    liq = (m < 0) if liquidatable is None else liquidatable
    gaps = stress_gaps or {}
    assets = sorted(a for a, g in grad.items() if g != 0.0)
    if debt <= 0 or not assets:
        return AccountRisk(
            account.protocol, account.account, m, coll, debt, grad, 0.0, "no_debt", "", 0.0, 0, math.inf, 0.0,
            drift, h, dict(prices_e8), dict(prices_e8), {}, False, False, policy.check_interval_max_s,
        )  # fmt: skip
    sig = np.asarray([float(policy.effective_sigma(sigmas_annual.get(a, math.nan))) for a in assets])
    g = np.asarray([grad[a] for a in assets])
    corr = _corr(assets, correlation)
    gs = g * sig
    cg = corr @ gs
    var_m = float(gs @ cg)
    sigma_m = math.sqrt(max(var_m, 0.0))
    contrib = gs * cg / var_m if var_m > 0 else np.zeros(len(assets))
    top = int(np.argmax(np.abs(gs)))
    dom, share = assets[top], float(contrib[top])
    cost = max(0.0, -drift * h_years)  # margin the interest eats over the horizon (USD)

    # adverse direction per asset: down for a net collateral asset, up for a net debt asset
    def adverse_gap(i: int) -> float:
        down, up = gaps.get(assets[i], (policy.stress_gap, policy.stress_gap))
        return float(down if g[i] > 0 else up)

    material = [i for i in range(len(assets)) if abs(gs[i]) >= MATERIAL_SHARE * abs(gs[top])]
    used_gaps = {assets[i]: adverse_gap(i) for i in material}
    stress_prices = _move(prices_e8, {assets[i]: -math.copysign(adverse_gap(i), g[i]) for i in material})
    k_target = policy.kappa * float(gaussian_distance(policy.p_target, 1.0))
    k_trigger = policy.kappa * float(gaussian_distance(policy.p_trigger, 1.0))

    g_dom = float(g[top])
    liq_price_e8 = 0
    distance = math.inf
    if share >= dominance:
        method = "closed_form"
        sig_h = float(sigma_horizon(sig[top], h))
        ratio = 1.0 - m / g_dom
        if ratio > 0:
            liq_price_e8 = int(prices_e8[dom] * ratio)
            distance = abs(math.log(ratio)) if m > 0 else 0.0
        d_cost = cost / abs(g_dom)
        p = 1.0 if liq or m <= 0 else float(kappa_scaled_breach_probability(distance, sig_h, policy.kappa, d_cost))
        vega = 0.0 if liq or m <= 0 else float(breach_vega((distance - d_cost) / (policy.kappa * sig_h), 1 / sig[top]))
        d_vol = k_target * sig_h
        d_target = max(d_vol, adverse_gap(top) * (1.0 + policy.stress_headroom)) + d_cost
        # the bands as the positions': trigger from the breach constraint, restore at least the breach target
        trigger = max(k_trigger * sig_h, adverse_gap(top)) + d_cost
        floor = max(d_vol + d_cost, trigger)
        notional, band_sigma = abs(g_dom), float(sig[top])
        restore, release = (float(x) for x in account_bands(policy, trigger, floor, d_target, notional, band_sigma))
        band_now = distance
        survive = {dom: -math.copysign(restore, g_dom)}
        interval = float(suggested_check_interval(distance, sig[top], policy))
    else:
        method = "screen"
        vega = 0.0
        if m <= 0 or liq:
            p = 1.0
        elif sigma_m == 0:
            p = 0.0
        else:
            p = float(kappa_scaled_breach_probability(m, sigma_m * math.sqrt(h_years), policy.kappa, cost))
            x = (m - cost) / (policy.kappa * sigma_m * math.sqrt(h_years))
            vega = float(breach_vega(x, float(g @ cg) / var_m))
        ratio = 1.0 - m / g_dom
        if ratio > 0:
            liq_price_e8 = int(prices_e8[dom] * ratio)
            distance = abs(math.log(ratio)) if m > 0 else 0.0
        design = -k_target * math.sqrt(h_years) * sig * cg / sigma_m if sigma_m > 0 else np.zeros(len(assets))
        survive = {}
        for i in material:
            floor = adverse_gap(i) * (1.0 + policy.stress_headroom)
            survive[assets[i]] = -math.copysign(max(abs(float(design[i])), floor), g[i])
        # the bands on M / s (account_bands): margin lost at the stress and at the design move (M is linear in
        # the prices: the loss of log moves x is -sum g expm1(x))
        weights = np.abs(contrib)
        sigma_w = float(weights @ sig / weights.sum()) if weights.sum() > 0 else 0.0
        notional = sigma_m / sigma_w if sigma_w > 0 else 0.0
        sq_h = math.sqrt(h_years)
        stress_loss = -sum(g[i] * math.expm1(-math.copysign(adverse_gap(i), g[i])) for i in material)
        fixed_loss = -sum(g[i] * math.expm1(x) for i, x in ((assets.index(a), x) for a, x in survive.items()))
        trigger_m = max(k_trigger * sigma_m * sq_h, stress_loss) + cost
        floor_m = max(k_target * sigma_m * sq_h + cost, trigger_m)
        if notional > 0 and fixed_loss > 0:
            band_sigma = sigma_m / notional
            restore, release = (
                float(x)
                for x in account_bands(
                    policy, trigger_m / notional, floor_m / notional, fixed_loss / notional, notional, band_sigma
                )
            )
            trigger, band_now = trigger_m / notional, m / notional
            if policy.cost_bands is not None:  # the move to survive sized to the cost band's restore level
                names = list(survive)
                g_row = np.asarray([[g[assets.index(a)] for a in names]])
                x_row = np.asarray([[survive[a] for a in names]])
                scale = float(_scale_to_loss(g_row, x_row, np.asarray([restore * notional]))[0])
                survive = {a: x * scale for a, x in survive.items()}
        else:
            band_sigma = trigger = band_now = restore = release = math.nan
        # the next look comes before M can travel k fat-tailed sigmas (the same rule as for one factor, on M)
        interval = (
            float(suggested_check_interval(max(m, 0.0), sigma_m, policy))
            if sigma_m > 0
            else policy.check_interval_max_s
        )
    survive_prices = _move(prices_e8, survive)
    stress_breach = _excess_at(account, stress_prices) - cost < 0
    if liq:
        interval = policy.check_interval_min_s
    return AccountRisk(
        account.protocol,
        account.account,
        m,
        coll,
        debt,
        grad,
        p,
        method,
        dom,
        share,
        liq_price_e8,
        distance,
        sigma_m,
        drift,
        h,
        survive_prices,
        stress_prices,
        used_gaps,
        stress_breach,
        liq,
        interval,
        vega=vega,
        band_distance=band_now,
        trigger_distance=trigger,
        restore_distance=restore,
        release_distance=release,
        band_notional_usd=notional,
        band_sigma_annual=band_sigma,
    )


def assess_accounts(
    accounts: Sequence[MarginAccount],
    prices_e8: Mapping[str, int],
    sigmas_annual: Mapping[str, float],
    policy: RiskPolicy,
    check_interval_s: float,
    *,
    stress_gaps: Mapping[str, tuple[float, float]] | None = None,
    correlation: Mapping[tuple[str, str], float] | None = None,
    liquidatable: Mapping[str, bool] | None = None,
    dominance: float = DEFAULT_DOMINANCE,
) -> list[AccountRisk]:
    """:func:`assess_account` for every account, in the given order, vectorised over the accounts.

    The gradients form one ``(accounts, assets)`` matrix; variance shares, probabilities, liquidation prices,
    check intervals and the moves to survive are array operations, and only the exact margin at the stress
    prices and the result objects are per account. :func:`assess_account` is its plain-loop oracle (the tests
    compare the two on random books).
    """
    if not check_interval_s > 0:
        raise ValueError("check_interval_s must be > 0")
    if not 0.5 < dominance <= 1.0:
        raise ValueError("dominance must be in (0.5, 1]")
    n = len(accounts)
    if n == 0:
        return []
    liq_in = liquidatable or {}
    gaps = stress_gaps or {}
    legs = _BookLegs.of(accounts)
    coll, debt, grads, drift, book_grad, names = legs.exposures(prices_e8)  # exposures() of every account
    held = (book_grad != 0.0).any(axis=0).tolist()  # NaN counts, as in assess_account
    assets = [k for k, used in zip(names, held, strict=True) if used]
    h = policy.horizon_s(check_interval_s)
    h_years = h / SECONDS_PER_YEAR
    m = coll - debt
    given = [liq_in.get(a.account.lower()) for a in accounts]
    liq = np.array([bool(m[i] < 0) if g is None else bool(g) for i, g in enumerate(given)])
    if not assets:
        return [assess_account(a, prices_e8, sigmas_annual, policy, check_interval_s) for a in accounts]
    grad = book_grad[:, held]  # exact zeros where an account has no leg (never -0.0: sums start at 0.0)
    has = (debt > 0) & (np.abs(grad).sum(axis=1) > 0)
    sig = np.asarray([float(policy.effective_sigma(sigmas_annual.get(a, math.nan))) for a in assets])
    corr = _corr(assets, correlation)
    gs = grad * sig
    cg = gs @ corr
    var_m = (gs * cg).sum(axis=1)
    sigma_m = np.sqrt(np.maximum(var_m, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        contrib = np.where(var_m[:, None] > 0, gs * cg / var_m[:, None], 0.0)
    rows = np.arange(n)
    top = np.argmax(np.abs(gs), axis=1)
    share = contrib[rows, top]
    g_top = np.where(has, grad[rows, top], 1.0)
    cost = np.maximum(0.0, -drift * h_years)
    down = np.asarray([gaps.get(a, (policy.stress_gap, policy.stress_gap))[0] for a in assets], dtype=float)
    up = np.asarray([gaps.get(a, (policy.stress_gap, policy.stress_gap))[1] for a in assets], dtype=float)
    adverse = np.where(grad > 0, down, up)  # collateral falls, debt rises
    material = (grad != 0) & (np.abs(gs) >= MATERIAL_SHARE * np.abs(gs[rows, top])[:, None])
    k_target = policy.kappa * float(gaussian_distance(policy.p_target, 1.0))
    one = share >= dominance
    ratio = 1.0 - m / g_top
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(ratio > 0, np.where(m > 0, np.abs(np.log(np.where(ratio > 0, ratio, 1.0))), 0.0), np.inf)
    sig_top = sig[top]
    sig_h_top = np.asarray(sigma_horizon(sig_top, h))
    d_cost_one = cost / np.abs(g_top)
    p_one = kappa_scaled_breach_probability(distance, sig_h_top, policy.kappa, d_cost_one)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_screen = np.where(
            sigma_m > 0,
            kappa_scaled_breach_probability(
                m, np.where(sigma_m > 0, sigma_m, 1.0) * math.sqrt(h_years), policy.kappa, cost
            ),
            0.0,
        )
    p = np.where(liq | (m <= 0), 1.0, np.where(one, p_one, p_screen))
    with np.errstate(divide="ignore", invalid="ignore"):
        x_one = (distance - d_cost_one) / (policy.kappa * sig_h_top)
        sig_h_m = np.where(sigma_m > 0, sigma_m, 1.0) * math.sqrt(h_years)
        x_screen = np.where(sigma_m > 0, (m - cost) / (policy.kappa * sig_h_m), np.inf)
        dln_screen = np.where(var_m > 0, (grad * cg).sum(axis=1) / np.where(var_m > 0, var_m, 1.0), 0.0)
    vega_all = np.where(one, breach_vega(x_one, 1.0 / sig_top), breach_vega(x_screen, dln_screen))
    vega = np.where(liq | (m <= 0), 0.0, vega_all)
    interval_one = suggested_check_interval(distance, sig_top, policy)
    interval_screen = np.where(
        sigma_m > 0,
        suggested_check_interval(np.maximum(m, 0.0), np.where(sigma_m > 0, sigma_m, 1.0), policy),
        policy.check_interval_max_s,
    )
    interval = np.where(liq, policy.check_interval_min_s, np.where(one, interval_one, interval_screen))
    adverse_top = adverse[rows, top]
    d_target_one = np.maximum(k_target * sig_h_top, adverse_top * (1.0 + policy.stress_headroom)) + d_cost_one
    with np.errstate(divide="ignore", invalid="ignore"):
        design = np.where(sigma_m[:, None] > 0, -k_target * math.sqrt(h_years) * sig * cg / sigma_m[:, None], 0.0)
    survive_screen = np.where(
        material, -np.copysign(np.maximum(np.abs(design), adverse * (1.0 + policy.stress_headroom)), grad), 0.0
    )
    stress_x = np.where(material, -np.copysign(adverse, grad), 0.0)
    # the bands (account_bands): one factor in log distance, the screen in M / s (M linear in the prices)
    k_trigger = policy.kappa * float(gaussian_distance(policy.p_trigger, 1.0))
    trig_one = np.maximum(k_trigger * sig_h_top, adverse_top) + d_cost_one
    floor_one = np.maximum(k_target * sig_h_top + d_cost_one, trig_one)
    restore_one, release_one = account_bands(policy, trig_one, floor_one, d_target_one, np.abs(g_top), sig_top)
    weights = np.abs(contrib)
    w_sum = weights.sum(axis=1)
    sigma_w = np.where(w_sum > 0, (weights * sig).sum(axis=1) / np.where(w_sum > 0, w_sum, 1.0), 0.0)
    s_equiv = np.where(sigma_w > 0, sigma_m / np.where(sigma_w > 0, sigma_w, 1.0), 0.0)
    stress_loss = -(grad * np.expm1(stress_x)).sum(axis=1)
    fixed_loss = -(grad * np.expm1(survive_screen)).sum(axis=1)
    sq_h = math.sqrt(h_years)
    trig_m = np.maximum(k_trigger * sigma_m * sq_h, stress_loss) + cost
    floor_m = np.maximum(k_target * sigma_m * sq_h + cost, trig_m)
    ok = (s_equiv > 0) & (fixed_loss > 0)
    s_ok, loss_ok = np.where(ok, s_equiv, 1.0), np.where(ok, fixed_loss, 1.0)
    restore_s, release_s = account_bands(policy, trig_m / s_ok, floor_m / s_ok, loss_ok / s_ok, s_ok, sigma_m / s_ok)
    if policy.cost_bands is not None:  # the move to survive sized to the cost band's restore level
        scale = _scale_to_loss(grad, survive_screen, np.where(ok, restore_s * s_ok, fixed_loss))
        survive_screen = survive_screen * np.where(ok, scale, 1.0)[:, None]
    nan = np.where(ok, 1.0, math.nan)
    bands_l = [
        np.where(one, x1, xs).tolist()
        for x1, xs in (
            (distance, m / s_ok * nan),
            (trig_one, trig_m / s_ok * nan),
            (restore_one, restore_s * nan),
            (release_one, release_s * nan),
            (np.abs(g_top), np.where(ok, s_equiv, 0.0)),
            (sig_top, np.where(ok, sigma_m / s_ok, math.nan)),
        )
    ]
    mat_rows = [[j for j, flag in enumerate(row) if flag] for row in material.tolist()]
    # per account from here: plain Python numbers (a numpy scalar costs ~10x a float to read)
    stress_l, survive_l, adverse_l = stress_x.tolist(), survive_screen.tolist(), adverse.tolist()
    top_l, one_l, has_l, liq_l = top.tolist(), one.tolist(), has.tolist(), liq.tolist()
    m_l, coll_l, debt_l, drift_l, cost_l = m.tolist(), coll.tolist(), debt.tolist(), drift.tolist(), cost.tolist()
    p_l, share_l, ratio_l, distance_l = p.tolist(), share.tolist(), ratio.tolist(), distance.tolist()
    sigma_l, interval_l, restore_l, g_top_l, vega_l = (
        sigma_m.tolist(),
        interval.tolist(),
        restore_one.tolist(),
        g_top.tolist(),
        vega.tolist(),
    )
    # the stress move depends only on the assets' gaps and the side each is held on: a book has a handful of
    # them, each price vector made once and shared (read-only) by the accounts that have it
    stress_moves: dict[tuple[float, ...], dict[str, int]] = {}
    stress_of: list[Mapping[str, int]] = []
    for i in range(n):
        row_stress, mat = stress_l[i], mat_rows[i]
        pattern = (*row_stress, *mat)
        found = stress_moves.get(pattern)
        if found is None:
            found = stress_moves[pattern] = _move(prices_e8, {assets[j]: row_stress[j] for j in mat})
        stress_of.append(found if has_l[i] else prices_e8)
    # the exact margin of every account at its stress prices (_excess_at), all legs at once
    stress_m_e8 = legs.margins_e8([stress_of[o][k] for o, k in zip(legs.owner.tolist(), legs.keys, strict=True)])
    out: list[AccountRisk] = []
    for i, a in enumerate(accounts):
        if not has_l[i]:
            out.append(assess_account(a, prices_e8, sigmas_annual, policy, check_interval_s, liquidatable=given[i]))
            continue
        dom = assets[top_l[i]]
        mat = mat_rows[i]
        stress_prices = stress_of[i]
        if one_l[i]:
            survive = {dom: -math.copysign(restore_l[i], g_top_l[i])}
        else:
            row_survive = survive_l[i]
            survive = {assets[j]: row_survive[j] for j in mat}
        row_adverse = adverse_l[i]
        out.append(
            AccountRisk(
                a.protocol,
                a.account,
                m_l[i],
                coll_l[i],
                debt_l[i],
                grads[i],
                p_l[i],
                "closed_form" if one_l[i] else "screen",
                dom,
                share_l[i],
                int(prices_e8[dom] * ratio_l[i]) if ratio_l[i] > 0 else 0,
                distance_l[i],
                sigma_l[i],
                drift_l[i],
                h,
                survive_prices_e8=_move(prices_e8, survive),
                stress_prices_e8=stress_prices,
                stress_gaps={assets[j]: row_adverse[j] for j in mat},
                stress_breach=stress_m_e8[i] / 1e8 - cost_l[i] < 0,  # _excess_at(a, stress_prices) - cost < 0
                liquidatable=liq_l[i],
                suggested_check_interval_s=interval_l[i],
                vega=vega_l[i],
                band_distance=bands_l[0][i],
                trigger_distance=bands_l[1][i],
                restore_distance=bands_l[2][i],
                release_distance=bands_l[3][i],
                band_notional_usd=bands_l[4][i],
                band_sigma_annual=bands_l[5][i],
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class AccountMonteCarlo:
    """How :func:`refine_with_monte_carlo` simulates: one correlated path set for every asset of the accounts it
    refines, multivariate Student-t increments (``student_t_nu``) of the assets' variance, ``n_steps`` checks
    over the horizon, at most ``max_accounts`` accounts (the riskiest by the screen). An estimate whose
    relative standard error is above ``max_rel_stderr`` (too few paths hit) keeps the screen's figure."""

    rng: np.random.Generator
    n_paths: int = 16_384
    n_steps: int = 16
    student_t_nu: float | None = 4.0
    max_accounts: int = 200
    max_rel_stderr: float = 0.3

    def __post_init__(self) -> None:
        if self.n_paths < 2 or self.n_steps < 1 or self.max_accounts < 0:
            raise ValueError("need n_paths >= 2, n_steps >= 1, max_accounts >= 0")
        if not 0 < self.max_rel_stderr <= 1:
            raise ValueError("max_rel_stderr must be in (0, 1]")


def refine_with_monte_carlo(
    risks: Sequence[AccountRisk],
    accounts: Mapping[str, MarginAccount],
    prices_e8: Mapping[str, int],
    sigmas_annual: Mapping[str, float],
    policy: RiskPolicy,
    mc: AccountMonteCarlo,
    *,
    correlation: Mapping[tuple[str, str], float] | None = None,
    p_floor: float = 0.0,
) -> list[AccountRisk]:
    """The risks with the multi-factor (``screen``) accounts above ``p_floor`` re-estimated on shared
    correlated fat-tailed paths (:func:`account_breach_mc`): ``method = "monte_carlo"`` and ``stderr`` set.
    The paths' volatility is ``kappa`` times each asset's (as the screen's is): what the simulation adds is the
    exact margin along the paths (no linearisation), discrete checks and Student-t steps.
    Deterministic for a given ``mc.rng`` state; one-factor, liquidatable and debt-free accounts are unchanged."""
    chosen = [
        i
        for i, r in sorted(enumerate(risks), key=lambda x: -x[1].breach_probability)
        if r.method == "screen" and not r.liquidatable and r.breach_probability > p_floor
    ][: mc.max_accounts]
    if not chosen:
        return list(risks)
    assets = sorted({a for i in chosen for a, g in risks[i].gradient_usd.items() if g != 0.0})
    # volatility scaled by the policy's fat-tail multiplier kappa, as in every closed form of the policy, so that
    # p_trigger / p_target mean the same whichever method estimated an account
    sig = tuple(policy.kappa * float(policy.effective_sigma(sigmas_annual.get(a, math.nan))) for a in assets)
    corr = _corr(assets, correlation)
    model = PathModel(
        sigma_annual=sig, corr=tuple(tuple(float(x) for x in row) for row in corr), student_t_nu=mc.student_t_nu
    )
    horizon = risks[chosen[0]].horizon_s
    paths = simulate_paths(model, horizon, mc.n_steps, mc.n_paths, mc.rng, keep_paths=True)
    assert paths.paths is not None  # keep_paths=True
    growth = _growth_by_step(paths.paths)  # price relatives - 1 on every step and path, shared by the accounts
    out = list(risks)
    for i in chosen:
        r = risks[i]
        cost = max(0.0, -r.drift_usd_per_year * horizon / SECONDS_PER_YEAR)
        p, se = _breach_on(paths, growth, assets, accounts[r.account.lower()], prices_e8, cost)
        if p > 0 and se / p <= mc.max_rel_stderr:
            out[i] = replace(r, breach_probability=p, method="monte_carlo", stderr=se)
    return out


DEFAULT_STRESS_MOVES = (-0.20, -0.15, -0.10, -0.05, 0.05, 0.10, 0.15, 0.20)
"""Relative price moves of the stress grid (SPAN / Deribit portfolio margin style, +-5 to 20 %)."""


@dataclass(frozen=True, slots=True)
class AccountStress:
    """One scenario of an account's stress grid: the price moves, the margin after them and the loss."""

    scenario: str
    moves: Mapping[str, float]  # asset -> relative move
    margin_excess_usd: float
    loss_usd: float  # margin lost (positive = loss)
    liquidated: bool
    health: int = 0  # the protocol's figure after the moves (Aave: HF in wad), when the caller has the rule


def account_stress_grid(
    account: MarginAccount,
    prices_e8: Mapping[str, int],
    *,
    moves: Sequence[float] = DEFAULT_STRESS_MOVES,
    health_at: Callable[[Mapping[str, int]], int] | None = None,
    liquidated_at: Callable[[Mapping[str, int]], bool] | None = None,
    names: Mapping[str, str] | None = None,
) -> list[AccountStress]:
    """The account's margin under each move of every asset it holds alone, of all its collateral assets
    together and of all its debt assets together (a crash of what it holds, a squeeze of what it owes).

    ``health_at`` / ``liquidated_at`` are the protocol's exact rule at a price vector (Aave: the integer health
    factor, HF < 1); without them the linear margin decides (``M < 0``)."""
    names = names or {}
    base = _excess_at(account, prices_e8)
    colls = sorted({leg.price_key or leg.asset for leg in account.legs if leg.kind is LegKind.COLLATERAL})
    debts = sorted({leg.price_key or leg.asset for leg in account.legs if leg.kind is LegKind.DEBT})
    groups: list[tuple[str, list[str]]] = [(names.get(a, a), [a]) for a in sorted({*colls, *debts})]
    if len(colls) > 1:
        groups.append(("collateral", colls))
    if len(debts) > 1:
        groups.append(("debt", debts))
    out = []
    for label, assets in groups:
        for mv in moves:
            moved = dict(prices_e8)
            for a in assets:
                moved[a] = max(1, int(prices_e8[a] * (1.0 + mv)))
            m = _excess_at(account, moved)
            liq = liquidated_at(moved) if liquidated_at is not None else m < 0
            out.append(
                AccountStress(
                    f"{label} {mv:+.0%}",
                    dict.fromkeys(assets, mv),
                    m,
                    base - m,
                    liq,
                    health_at(moved) if health_at is not None else 0,
                )
            )
    return out


def account_var_es(risk: AccountRisk, level: float = 0.99, student_t_nu: float | None = 4.0) -> VarEs:
    """VaR and ES of the account's margin loss over its horizon (USD, positive = loss).

    First order in the log moves, the loss is :math:`L = -\\Delta M` with mean :math:`-\\dot M h` (interest)
    and standard deviation :math:`\\sigma_M\\sqrt h`; with ``student_t_nu`` the loss is Student-t of that
    variance (scale :math:`\\sigma\\sqrt{(\nu-2)/\nu}`), else normal (McNeil, Frey and Embrechts,
    *Quantitative Risk Management*, 2.2).
    """
    h_years = risk.horizon_s / SECONDS_PER_YEAR
    mu = -risk.drift_usd_per_year * h_years
    sd = risk.sigma_margin_usd * math.sqrt(h_years)
    if student_t_nu is None or sd == 0:
        return var_es_normal(mu, sd, level)
    scale = sd * math.sqrt((student_t_nu - 2.0) / student_t_nu)
    if not 0.0 < level < 1.0 or not student_t_nu > 1:
        return var_es_student_t(mu, scale, student_t_nu, level)  # raises, with its message
    # var_es_student_t's formula with the quantile and density of the standard t cached (one scipy call per
    # (nu, level), not one per account)
    t, density = _student_t_point(float(student_t_nu), float(level))
    es = mu + scale * density / (1 - level) * (student_t_nu + t * t) / (student_t_nu - 1)
    return VarEs(float(mu + scale * t), float(es), level, "student_t")


@functools.lru_cache(maxsize=32)
def _student_t_point(nu: float, level: float) -> tuple[float, float]:
    """The standard Student-t's ``level`` quantile and its density there."""
    t = stats.t.ppf(level, nu)
    return float(t), float(stats.t.pdf(t, nu))


def account_breach_mc(
    paths: PathSet,
    path_assets: Sequence[str],
    account: MarginAccount,
    prices_e8: Mapping[str, int],
    cost_usd: float = 0.0,
) -> tuple[float, float]:
    """P(M(S_t) < cost at some grid step) on a shared path set, and its standard error.

    ``paths`` from :func:`keeper.risk.montecarlo.simulate_paths` with ``keep_paths=True`` over
    ``path_assets`` (log moves from today's prices). M is linear in the prices, so per path and step it is
    ``M_0 + sum_a g_a (exp(X_a) - 1)`` with ``g_a`` the account's gradient: the cost is one contraction over
    the assets, whatever the number of legs. Discrete monitoring (the grid); assets not in ``path_assets``
    keep their price.
    """
    if paths.paths is None:
        raise ValueError("account_breach_mc needs simulate_paths(..., keep_paths=True)")
    return _breach_on(paths, _growth_by_step(paths.paths), path_assets, account, prices_e8, cost_usd)


def _growth_by_step(log_paths: NDArray[np.float64]) -> NDArray[np.float64]:
    """``expm1`` of the ``(assets, paths, steps)`` log moves, laid out ``(assets, steps, paths)``: the same
    numbers, but "breached at some step" is then a reduction across rows (one pass over contiguous paths)
    instead of along rows of a few steps each (2.2x faster for two assets); the estimates are bit for bit those of
    the ``(paths, steps)`` layout (``tests/test_account_decision.py``)."""
    return np.ascontiguousarray(np.expm1(log_paths).transpose(0, 2, 1))


def _breach_on(
    paths: PathSet,
    growth: NDArray[np.float64],
    path_assets: Sequence[str],
    account: MarginAccount,
    prices_e8: Mapping[str, int],
    cost_usd: float,
) -> tuple[float, float]:
    """:func:`account_breach_mc` with ``growth = _growth_by_step(paths.paths)`` computed once for every account."""
    coll, debt, grad, _ = exposures(account, prices_e8)
    m0 = coll - debt
    g = np.asarray([grad.get(a, 0.0) for a in path_assets])
    excess = m0 + np.einsum("a,atp->tp", g, growth)
    return hit_probability(paths, (excess < cost_usd).any(axis=0))


def correlation_from_histories(
    histories: Mapping[str, tuple[Sequence[int], Sequence[int]]], *, min_points: int = 30
) -> dict[tuple[str, str], float]:
    """Pairwise correlation of log returns from oracle rounds (times_s, prices) per asset.

    The rounds of two feeds do not share timestamps: both are sampled (last round at or before) on the
    union of their update times inside the overlap, and the returns of that common grid are correlated.
    Pairs with fewer than ``min_points`` common returns are left out (the caller's default applies).
    """
    out: dict[tuple[str, str], float] = {}
    names = sorted(histories)
    for i, a in enumerate(names):
        ta, pa = (np.asarray(x, dtype=float) for x in histories[a])
        for b in names[i + 1 :]:
            tb, pb = (np.asarray(x, dtype=float) for x in histories[b])
            if ta.size < 2 or tb.size < 2:
                continue
            lo, hi = max(ta[0], tb[0]), min(ta[-1], tb[-1])
            grid = np.union1d(ta[(ta >= lo) & (ta <= hi)], tb[(tb >= lo) & (tb <= hi)])
            if grid.size <= min_points:
                continue
            sa = np.log(pa[np.searchsorted(ta, grid, side="right") - 1])
            sb = np.log(pb[np.searchsorted(tb, grid, side="right") - 1])
            ra, rb = np.diff(sa), np.diff(sb)
            if ra.std() == 0 or rb.std() == 0:
                continue
            rho = float(np.corrcoef(ra, rb)[0, 1])
            out[(a, b)] = out[(b, a)] = rho
    return out
