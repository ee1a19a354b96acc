"""The buffer policy: how much collateral a position needs, and how often to look at it.

``RiskPolicy`` (the knobs), ``PositionRisk`` (the verdict) and ``assess_positions`` are what the planner,
the daemon and the replay consume.

Over the horizon :math:`h` = check interval + inclusion latency + oracle lag, with
:math:`\\sigma_h = \\sigma\\sqrt{h/\\text{year}}`, the log-distance to liquidation that keeps the breach
probability at :math:`p` is

.. math::

    d_{req}(p) = \\max\\big(\\kappa\\,\\Phi^{-1}(1 - p/2)\\,\\sigma_h,\\ d_{stress}\\big) + d_{cost}

(reflection principle for driftless Brownian motion, :math:`P(\\min \\le -d) = 2\\Phi(-d/\\sigma_h)`; Shreve,
*Stochastic Calculus for Finance II*, 3.7), with :math:`\\kappa` a fat-tail multiplier calibrated by Monte Carlo
(:func:`calibrate_kappa`,
``scripts/calibrate_kappa.py``), :math:`d_{stress}` the largest single-round price gap to survive (adaptive:
:mod:`keeper.risk.gaps` estimates it per market from recent oracle rounds; the constant ``stress_gap`` is
the fallback) and
:math:`d_{cost}` the fees accruing over :math:`h` (as a fraction of price). The reported breach
probability is the inverse of the volatility branch, :math:`2\\Phi(-(d - d_{cost})/(\\kappa\\sigma_h))`.

Hysteresis, with the stress term scaled consistently in every band: a top-up is due when that probability
exceeds ``p_trigger`` or the distance is inside :math:`d_{stress}`, and restores
:math:`\\max(d_{vol}(p_{target}), d_{stress}(1 + \\text{stress\\_headroom})) + d_{cost}`; excess above that
level is offered only when the probability is below ``p_release``, the distance beyond
:math:`d_{stress}(1 + \\text{release\\_headroom})` and the excess at least ``release_min_fraction`` of the
notional, so a position between the bands is left alone. The
suggested check interval is :math:`\\mathrm{clip}((d/(\\kappa k \\sigma))^2 - L, \\Delta_{min}, \\Delta_{max})`
(:math:`\\sigma` per root-second, :math:`L` = latency + oracle lag): the next look comes before the price
can plausibly travel :math:`k` fat-tailed standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri

from keeper.domain import SECONDS_PER_YEAR, Market, Position, Side
from keeper.risk.barrier import fee_drift, gaussian_distance, liquidation_price
from keeper.risk.gaps import GapEstimate, SideGaps, estimate_stress_gap
from keeper.risk.tails import GapCost, LongTail

DEFAULT_KAPPA = 1.60
"""Fat-tail multiplier: the larger of the two Monte Carlo calibrations at p = 1e-4 (p_target) of
``scripts/calibrate_kappa.py`` (Student-t increments with nu fitted by GARCH-t to ETH hourly returns
2017-2024, and Merton jumps 0.2/h with 1.2 % log-jump std, both at the same variance as the Gaussian,
sigma = 0.8, one hour in one-minute steps, 1,000,000 paths): t(nu=3.43) 1.40, Merton 1.58 -> 1.60 (rounded
up to 0.05). See the README (risk section)."""


@dataclass(frozen=True, slots=True)
class CostBands:
    """What one protective transaction costs (``gas_usd_per_tx``: gas x gas price x the native token's price)
    and what idle collateral would earn elsewhere (``capital_rate_annual``): the inputs of the cost-aware
    restore and release levels (:func:`cost_aware_bands`)."""

    gas_usd_per_tx: float
    capital_rate_annual: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gas_usd_per_tx) and self.gas_usd_per_tx >= 0.0):
            raise ValueError(f"gas_usd_per_tx must be >= 0, got {self.gas_usd_per_tx}")
        if not (math.isfinite(self.capital_rate_annual) and 0.0 <= self.capital_rate_annual < 10.0):
            raise ValueError(f"capital_rate_annual must be a yearly rate in [0, 10), got {self.capital_rate_annual}")


MAX_COST_BAND = 1.0
"""The cost-aware restore and release distances never go past this log distance (a free capital rate would
otherwise ask for an infinite buffer)."""


def cost_aware_bands(
    trigger_distance: ArrayLike,
    min_restore_distance: ArrayLike,
    notional_usd: ArrayLike,
    sigma_annual: ArrayLike,
    bands: CostBands,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""Restore and release log distances that minimise the long-run cost of protection per year.

    The position's log distance to liquidation :math:`X` is modelled as a driftless Brownian motion with
    variance :math:`\sigma^2` per year (the volatility itself: the cost is an expectation, not a tail). The
    keeper tops up to :math:`x` when :math:`X` falls to the trigger :math:`a` (fixed by the
    breach-probability constraint) and releases down to :math:`x` when it rises to :math:`b`: an (s, S)-type
    band policy, optimal for impulse control of Brownian motion with a fixed cost per intervention
    (Harrison, Sellke and Taylor, "Impulse control of Brownian motion", Math. Oper. Res. 8(3), 1983).
    Each cycle costs one transaction, :math:`K`, and the idle capital :math:`c X` per year while it lasts
    (:math:`c = r N`: the capital rate on the notional, idle collateral being about :math:`N X` above
    maintenance). From :math:`x`, the exit time of :math:`(a, b)` has :math:`E\tau = (x-a)(b-x)/\sigma^2`
    and :math:`E\int_0^\tau X\,dt = (x-a)(b-x)(a+b+x)/(3\sigma^2)` (Green's function of the interval;
    Karlin and Taylor, *A Second Course in Stochastic Processes*, 15.3), so by renewal the cost per year is

    .. math:: g(u, w) = \frac{K\sigma^2}{u w} + c\,\Big(a + \frac{2u + w}{3}\Big),
        \qquad u = x - a,\ w = b - x,

    minimised at :math:`w = 2u`, :math:`u^* = (3K\sigma^2 / (4c))^{1/3}` (the cube-root law of band
    policies under fixed costs; Constantinides, "Capital market equilibrium with transaction costs",
    J. Polit. Econ. 94(4), 1986). The restore level may not fall below the breach-probability target
    (``min_restore_distance``): then :math:`u` is that floor and :math:`w = \sqrt{3K\sigma^2/(c u)}`.
    Dear gas (large :math:`K`) gives wide, rare, large top-ups; dear capital (large :math:`c`) tight,
    frequent ones. Returns ``(restore, release)`` distances, elementwise, at most :data:`MAX_COST_BAND`.
    """
    a = np.asarray(trigger_distance, dtype=float)
    floor = np.maximum(np.asarray(min_restore_distance, dtype=float) - a, 0.0)
    c = bands.capital_rate_annual * np.abs(np.asarray(notional_usd, dtype=float))
    k_var = bands.gas_usd_per_tx * np.asarray(sigma_annual, dtype=float) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        u_star = np.where(c > 0, np.cbrt(3.0 * k_var / (4.0 * np.where(c > 0, c, 1.0))), MAX_COST_BAND)
        u = np.maximum(u_star, floor)
        w = np.where(
            (c > 0) & (u > 0), np.sqrt(3.0 * k_var / (np.where(c > 0, c, 1.0) * np.where(u > 0, u, 1.0))), MAX_COST_BAND
        )
    restore = np.minimum(a + u, MAX_COST_BAND)
    release = np.minimum(restore + w, MAX_COST_BAND)
    return restore, np.maximum(release, restore)


def band_cost_per_year(
    trigger: float, restore: float, release: float, sigma_annual: float, notional_usd: float, bands: CostBands
) -> float:
    """:math:`g` of :func:`cost_aware_bands` at given bands (USD per year): gas per transaction over the mean
    cycle time plus the capital rate on the mean idle distance (tests and reports)."""
    u, w = restore - trigger, release - restore
    if u <= 0 or w <= 0:
        return math.inf
    var = sigma_annual**2
    c = bands.capital_rate_annual * abs(notional_usd)
    return bands.gas_usd_per_tx * var / (u * w) + c * (trigger + (2 * u + w) / 3.0)


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """Parameters of the risk-sized buffer; every field is configurable (README explains defaults)."""

    p_trigger: float = 1e-3
    p_target: float = 1e-4
    p_release: float = 1e-7
    kappa: float = DEFAULT_KAPPA
    stress_gap: float = 0.12
    stress_headroom: float = 1.0
    release_headroom: float = 3.0
    release_min_fraction: float = 0.02
    stress_window_s: float = 6 * 3600.0
    stress_factor: float = 2.0
    stress_floor: float = 0.03
    stress_cap: float = 0.5
    stress_min_rounds: int = 30
    stress_per_side: bool = True
    # per-decision probability at which a long-history tail is read (None: p_trigger); see keeper/risk/gaps.py
    stress_tail_probability: float | None = None
    inclusion_latency_s: float = 12.0
    oracle_lag_s: float = 0.0
    check_interval_min_s: float = 5.0
    check_interval_max_s: float = 300.0
    k_sigmas: float = 4.0
    min_action_e6: int = 10_000_000
    sigma_floor_annual: float = 0.0
    sigma_fallback_annual: float = 1.5
    # the cost-aware restore and release levels (cost_aware_bands); None: the fixed headroom rules above
    cost_bands: CostBands | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.p_release <= self.p_target <= self.p_trigger < 1.0:
            raise ValueError("need 0 < p_release <= p_target <= p_trigger < 1")
        if not self.kappa > 0 or not self.k_sigmas > 0:
            raise ValueError("kappa and k_sigmas must be > 0")
        if not 0.0 <= self.stress_gap < 1.0:
            raise ValueError("stress_gap must be in [0, 1)")
        if not 0.0 <= self.stress_headroom <= self.release_headroom <= 10.0:
            raise ValueError("need 0 <= stress_headroom <= release_headroom <= 10")
        if not 0.0 <= self.release_min_fraction < 1.0:
            raise ValueError("release_min_fraction must be in [0, 1)")
        if self.stress_window_s < 0 or not self.stress_factor > 0 or self.stress_min_rounds < 1:
            raise ValueError("need stress_window_s >= 0, stress_factor > 0, stress_min_rounds >= 1")
        if not 0.0 <= self.stress_floor <= self.stress_cap < 1.0:
            raise ValueError("need 0 <= stress_floor <= stress_cap < 1")
        if self.stress_tail_probability is not None and not 0.0 < self.stress_tail_probability < 1.0:
            raise ValueError("stress_tail_probability must be strictly between 0 and 1")
        if self.inclusion_latency_s < 0 or self.oracle_lag_s < 0:
            raise ValueError("latencies must be >= 0")
        if not 0 < self.check_interval_min_s <= self.check_interval_max_s:
            raise ValueError("need 0 < check_interval_min_s <= check_interval_max_s")
        if self.min_action_e6 < 0 or self.sigma_floor_annual < 0 or not self.sigma_fallback_annual > 0:
            raise ValueError("min_action_e6 and sigma_floor_annual must be >= 0, sigma_fallback_annual > 0")

    @property
    def latency_s(self) -> float:
        """L: inclusion latency plus oracle lag (seconds)."""
        return self.inclusion_latency_s + self.oracle_lag_s

    def horizon_s(self, check_interval_s: float) -> float:
        """h = check interval + inclusion latency + oracle lag."""
        return check_interval_s + self.latency_s

    def estimate_stress_gap(
        self,
        times_s: ArrayLike,
        prices: ArrayLike,
        check_interval_s: float,
        now_s: float | None = None,
        long_tail: LongTail | None = None,
        penalty: float = 0.0,
    ) -> GapEstimate:
        """This policy's stress gap for one market from its oracle rounds (:mod:`keeper.risk.gaps`), with the
        market's long-history tail as a lower bound and as the fallback when given: read at
        ``stress_tail_probability`` (default ``p_trigger``) per decision, or, when the policy is cost-aware
        (``cost_bands``), at the return level that minimises the cost of holding the buffer plus the expected
        cost of a gap through it (:meth:`keeper.risk.tails.LongTail.cost_optimal_gaps`; ``penalty``: the
        market's liquidation penalty as a fraction of notional).

        ``stress_window_s = 0`` switches the estimator off: the constant ``stress_gap`` is used.
        """
        if self.stress_window_s <= 0:
            return GapEstimate(self.stress_gap, math.nan, 1, 0, "adaptive stress gap off (stress_window_s = 0)")
        return estimate_stress_gap(
            times_s,
            prices,
            now_s=now_s,
            horizon_s=self.horizon_s(check_interval_s),
            window_s=self.stress_window_s,
            factor=self.stress_factor,
            floor=self.stress_floor,
            cap=self.stress_cap,
            fallback=self.stress_gap,
            min_rounds=self.stress_min_rounds,
            long_tail=long_tail,
            tail_probability=self.stress_tail_probability or self.p_trigger,
            tail_cost=None if self.cost_bands is None else GapCost(self.cost_bands.capital_rate_annual, penalty),
        )

    def effective_sigma(self, sigma_annual: ArrayLike) -> NDArray[np.float64]:
        """Volatility used: the fallback when missing/non-positive/NaN, never below the floor."""
        s = np.asarray(sigma_annual, dtype=float)
        s = np.where(np.isfinite(s) & (s > 0), s, self.sigma_fallback_annual)
        return np.maximum(s, self.sigma_floor_annual)


@dataclass(frozen=True, slots=True)
class PositionRisk:
    """The risk engine's verdict on one position at one price."""

    position: Position
    price_e8: int
    sigma_annual: float
    horizon_s: float
    liquidation_price_e8: int
    log_distance: float  # ln(price / liquidation price), signed so that safe > 0; inf when never liquidated
    breach_probability: float
    required_collateral_e6: int
    release_collateral_e6: int
    top_up_e6: int
    excess_e6: int
    suggested_check_interval_s: float
    liquidatable: bool
    required_distance: float = 0.0  # d_req(p_target), log-distance
    stress_bound: bool = False  # the stress gap, not volatility, sets d_req(p_target)
    stress_breach: bool = False  # a single-round gap of stress_gap would liquidate: act even if p is small
    stress_gap: float = 0.0  # the stress gap d_s used (log-distance; adaptive or the constant)


def is_endangered(risk: PositionRisk, p_trigger: float) -> bool:
    """The one definition of "endangered": liquidatable, breach probability above ``p_trigger``, or inside
    the stress gap (one oracle gap of ``stress_gap`` would liquidate). The planner tops these up, the
    decision calls them the ``trigger`` band, the daemon keeps a stuck protective transaction for them."""
    return risk.liquidatable or risk.breach_probability > p_trigger or risk.stress_breach


# ---- formulas (vectorised) ------------------------------------------------------------------------


def sigma_horizon(sigma_annual: ArrayLike, horizon_s: ArrayLike) -> NDArray[np.float64]:
    """sigma_h = sigma sqrt(h / year)."""
    return np.asarray(sigma_annual, dtype=float) * np.sqrt(np.asarray(horizon_s, dtype=float) / SECONDS_PER_YEAR)


def required_distance(
    p: ArrayLike, sigma_h: ArrayLike, kappa: float, d_stress: ArrayLike, d_cost: ArrayLike = 0.0
) -> NDArray[np.float64]:
    """d_req(p) = max(kappa Phi^-1(1 - p/2) sigma_h, d_stress) + d_cost."""
    return np.maximum(kappa * gaussian_distance(p, sigma_h), d_stress) + np.asarray(d_cost, dtype=float)


def kappa_scaled_breach_probability(
    distance: ArrayLike, sigma_h: ArrayLike, kappa: float, d_cost: ArrayLike = 0.0
) -> NDArray[np.float64]:
    """2 Phi(-(d - d_cost)/(kappa sigma_h)), clipped to [0, 1]; 1 at or past the liquidation price.

    A Gaussian first-passage probability (reflection principle, driftless) with sigma scaled by ``kappa``:
    not a fat-tailed distribution, but ``kappa`` is calibrated (:func:`calibrate_kappa`) so that the distance
    it asks for at ``p_target`` matches fat-tailed paths of the same variance.
    """
    x = (np.asarray(distance, dtype=float) - np.asarray(d_cost, dtype=float)) / (
        kappa * np.asarray(sigma_h, dtype=float)
    )
    with np.errstate(invalid="ignore"):
        p = 2.0 * ndtr(-x)
    return np.clip(np.where(np.isnan(p), 1.0, p), 0.0, 1.0)


def suggested_check_interval(distance: ArrayLike, sigma_annual: ArrayLike, policy: RiskPolicy) -> NDArray[np.float64]:
    """clip((d/(kappa k sigma_s))^2 - L, min, max) with sigma_s the volatility per root-second."""
    d = np.asarray(distance, dtype=float)
    sig_s = np.asarray(sigma_annual, dtype=float) / math.sqrt(SECONDS_PER_YEAR)
    with np.errstate(invalid="ignore", over="ignore"):
        raw = (np.maximum(d, 0.0) / (policy.kappa * policy.k_sigmas * sig_s)) ** 2 - policy.latency_s
    raw = np.where(np.isnan(raw), policy.check_interval_max_s, raw)
    return np.clip(raw, policy.check_interval_min_s, policy.check_interval_max_s)


@dataclass(frozen=True, slots=True)
class RiskArrays:
    """Vectorised result of :func:`assess_arrays` (USD as floats; one entry per position)."""

    sigma_annual: NDArray[np.float64]
    horizon_s: float
    liquidation_price: NDArray[np.float64]
    log_distance: NDArray[np.float64]
    breach_probability: NDArray[np.float64]
    required_collateral: NDArray[np.float64]
    release_collateral: NDArray[np.float64]
    top_up: NDArray[np.float64]
    excess: NDArray[np.float64]
    check_interval_s: NDArray[np.float64]
    liquidatable: NDArray[np.bool_]
    required_distance: NDArray[np.float64]
    stress_bound: NDArray[np.bool_]
    stress_breach: NDArray[np.bool_]
    stress_gap: NDArray[np.float64]
    release_distance: NDArray[np.float64] | None = None  # beyond it the excess is released (down to the target)
    trigger_distance: NDArray[np.float64] | None = None  # inside it (or above p_trigger) a top-up is due


def _collateral_at_distance(
    is_long: NDArray[np.bool_],
    size: NDArray[np.float64],
    entry: NDArray[np.float64],
    price: NDArray[np.float64],
    maintenance: NDArray[np.float64],
    pending_fee: NDArray[np.float64],
    d: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Collateral that puts the liquidation price at log distance ``d`` from ``price`` (elementwise)."""
    sign = np.where(is_long, 1.0, -1.0)
    s_liq = price * np.exp(-sign * d)
    return sign * size * (entry - s_liq * (1.0 - sign * maintenance)) + pending_fee


def assess_arrays(
    *,
    is_long: ArrayLike,
    size: ArrayLike,
    entry: ArrayLike,
    collateral: ArrayLike,
    pending_fee: ArrayLike,
    price: ArrayLike,
    maintenance: ArrayLike,
    fee_rate_annual: ArrayLike,
    sigma_annual: ArrayLike,
    policy: RiskPolicy,
    check_interval_s: float,
    stress_gap: ArrayLike | None = None,
    release_stress_gap: ArrayLike | None = None,
) -> RiskArrays:
    """Closed-form policy for many positions at once (floats: base units, USD, USD per unit).

    The vectorised kernel behind :func:`assess_positions`; ``liquidatable`` here is the float version of
    the protocol rule (equity < maintenance); :func:`assess_positions` replaces it with the exact integer rule.
    ``stress_gap`` (per position, log-distance; default ``policy.stress_gap``) is the stress gap ``d_s``
    to survive, e.g. from :meth:`RiskPolicy.estimate_stress_gap`; it sets the trigger and the target.
    ``release_stress_gap`` (per position; default ``stress_gap``) sets the release band only: with per-side
    gaps it is the symmetric gap, so a position is released only when it is beyond the release band of
    both sides' gaps (a side's gap that is small only because the window's large moves went the other way
    does not release collateral the next reversal would ask back).
    """
    if not check_interval_s > 0:
        raise ValueError("check_interval_s must be > 0")
    is_long = np.asarray(is_long, dtype=bool)
    size, entry, coll, fee, price, mm, rate = (
        np.asarray(a, dtype=float) for a in (size, entry, collateral, pending_fee, price, maintenance, fee_rate_annual)
    )
    sign = np.where(is_long, 1.0, -1.0)
    sigma = policy.effective_sigma(sigma_annual) * np.ones_like(price)
    h = policy.horizon_s(check_interval_s)
    sig_h = sigma_horizon(sigma, h)
    s_liq = liquidation_price(is_long, size, entry, coll - fee, mm)
    with np.errstate(divide="ignore"):
        distance = np.where(
            s_liq > 0, sign * np.log(np.where(s_liq > 0, price / np.where(s_liq > 0, s_liq, 1.0), 1.0)), np.inf
        )
    d_cost = fee_drift(is_long, entry, price, rate, mm) * h / SECONDS_PER_YEAR
    p = kappa_scaled_breach_probability(distance, sig_h, policy.kappa, d_cost)
    d_s = policy.stress_gap if stress_gap is None else np.asarray(stress_gap, dtype=float)
    d_s = np.broadcast_to(np.asarray(d_s, dtype=float), price.shape)
    d_vol_target = policy.kappa * gaussian_distance(policy.p_target, sig_h)
    # Bands in distance, the stress term scaled consistently in all three (see the module docstring):
    # act inside d_s (one gap of d_s would liquidate) or above p_trigger; restore to d_s * (1 + headroom);
    # release only beyond d_s * (1 + release_headroom) and below p_release, down to the target again.
    d_stress_target = d_s * (1.0 + policy.stress_headroom)
    d_target = np.maximum(d_vol_target, d_stress_target) + d_cost
    d_s_rel = (
        d_s
        if release_stress_gap is None
        else np.maximum(d_s, np.broadcast_to(np.asarray(release_stress_gap, dtype=float), price.shape))
    )
    d_release = required_distance(
        policy.p_release, sig_h, policy.kappa, d_s_rel * (1.0 + policy.release_headroom), d_cost
    )
    releasable = p < policy.p_release
    if policy.cost_bands is not None:
        # the trigger stays the risk constraint; restore and release minimise the cost of protection
        d_trigger = np.maximum(policy.kappa * gaussian_distance(policy.p_trigger, sig_h), d_s) + d_cost
        # the cost is an expectation: it uses the volatility itself; kappa (a tail multiplier) stays in the
        # trigger and the target, which are tail constraints
        # the floor of the restore level is the breach target and the trigger itself: the stress headroom of the
        # fixed rule exists to keep a top-up from triggering again at once, which the cost band u* now decides
        floor = np.maximum(d_vol_target + d_cost, d_trigger)
        d_target, d_release = cost_aware_bands(d_trigger, floor, size * price, sigma, policy.cost_bands)
        releasable = np.ones_like(p, dtype=bool)  # above b the release lands at x >= the target: safe
    req = np.maximum(_collateral_at_distance(is_long, size, entry, price, mm, fee, d_target), 0.0)
    rel = np.maximum(_collateral_at_distance(is_long, size, entry, price, mm, fee, d_release), 0.0)
    min_action = policy.min_action_e6 / 1e6
    stress_breach = distance < d_s + d_cost
    top_up = np.where((p > policy.p_trigger) | stress_breach, np.maximum(req - coll, min_action), 0.0)
    # a release is worth a transaction only when it is a real slice of the position (release_min_fraction)
    min_release = np.maximum(min_action, policy.release_min_fraction * size * price)
    excess_raw = np.where(releasable & (coll > rel), coll - req, 0.0)
    excess = np.where(excess_raw >= min_release, excess_raw, 0.0)
    equity = coll - fee + sign * size * (price - entry)
    return RiskArrays(
        sigma_annual=sigma,
        horizon_s=h,
        liquidation_price=s_liq,
        log_distance=distance,
        breach_probability=p,
        required_collateral=req,
        release_collateral=rel,
        top_up=top_up,
        excess=excess,
        check_interval_s=suggested_check_interval(distance, sigma, policy),
        liquidatable=equity < mm * size * price,
        required_distance=d_target,
        stress_bound=d_stress_target > d_vol_target,
        stress_gap=d_s,
        stress_breach=stress_breach,
        release_distance=np.broadcast_to(d_release, price.shape).astype(float),
        trigger_distance=np.broadcast_to(
            np.maximum(policy.kappa * gaussian_distance(policy.p_trigger, sig_h), d_s) + d_cost, price.shape
        ).astype(float),
    )


def _side_pair(gap: float | SideGaps | tuple[float, float], per_side: bool) -> tuple[float, float]:
    """A stress-gap entry -> (down, up); a float is both sides; ``per_side`` off collapses to the max."""
    if isinstance(gap, tuple):
        down, up = float(gap[0]), float(gap[1])
    else:
        down = up = float(gap)
    return (down, up) if per_side else (max(down, up), max(down, up))


def _ceil_e6(x: NDArray[np.float64]) -> list[int]:
    """USD floats -> e6 ints rounded up (more collateral, never less); non-finite -> 0."""
    y = np.where(np.isfinite(x), np.ceil(x * 1e6 - 1e-6), 0.0)
    return y.astype(np.int64).tolist()


def assess_positions(
    positions: Sequence[Position],
    markets: Mapping[int, Market],
    prices_e8: Mapping[int, int],
    sigmas_annual: Mapping[int, float],
    policy: RiskPolicy,
    check_interval_s: float,
    now_s: int,
    stress_gaps: Mapping[int, float | SideGaps | tuple[float, float]] | None = None,
) -> list[PositionRisk]:
    """:func:`assess_position` for a whole book in one vectorised pass (prices and sigmas per market id).

    A market missing from ``sigmas_annual`` uses ``policy.sigma_fallback_annual``; one missing from
    ``stress_gaps`` (per market id, from :meth:`RiskPolicy.estimate_stress_gap`) uses ``policy.stress_gap``.
    A value is either one gap for both sides (a float) or a :class:`~keeper.risk.gaps.SideGaps` /
    ``(down, up)`` pair (``GapEstimate.side_gaps``): with ``policy.stress_per_side`` a long's trigger and
    target use ``down`` and a short's ``up``, and the release band uses ``max(down, up)`` for both;
    without it every band uses ``max(down, up)``.
    Amounts are rounded up
    to whole e6 units (more collateral, never less); ``liquidatable`` is the protocol's exact integer rule
    (evaluated in integers whenever the float verdict is within rounding distance of the boundary).
    ``now_s`` is accepted for the interface: pending fees are taken as of the read.
    """
    del now_s  # fees are as of the read; kept so callers need not change when accrual is modelled
    if not positions:
        return []
    n = len(positions)
    mids = np.fromiter((p.market_id for p in positions), np.int64, n)
    uniq = np.unique(mids)
    if any(prices_e8[int(m)] <= 0 for m in uniq):
        raise ValueError("prices must be > 0")
    pos_in_uniq = np.searchsorted(uniq, mids)

    def per_market(values: list[float]) -> NDArray[np.float64]:
        return np.asarray(values, dtype=float)[pos_in_uniq]

    px_e8 = per_market([prices_e8[int(m)] for m in uniq])
    gd = [_side_pair((stress_gaps or {}).get(int(m), policy.stress_gap), policy.stress_per_side) for m in uniq]
    price = px_e8 / 1e8
    maintenance = per_market([markets[int(m)].maintenance_margin_ratio for m in uniq])
    is_long = np.fromiter((p.side is Side.LONG for p in positions), bool, n)
    size = np.fromiter((p.size_e18 for p in positions), float, n) / 1e18
    entry = np.fromiter((p.entry_price_e8 for p in positions), float, n) / 1e8
    collateral = np.fromiter((p.collateral_e6 for p in positions), float, n) / 1e6
    pending_fee = np.fromiter((p.pending_fee_e6 for p in positions), float, n) / 1e6
    arr = assess_arrays(
        is_long=is_long,
        size=size,
        entry=entry,
        collateral=collateral,
        pending_fee=pending_fee,
        price=price,
        maintenance=maintenance,
        fee_rate_annual=per_market([markets[int(m)].fee_rate_annual for m in uniq]),
        sigma_annual=per_market([sigmas_annual.get(int(m), math.nan) for m in uniq]),
        policy=policy,
        check_interval_s=check_interval_s,
        stress_gap=np.where(is_long, per_market([g[0] for g in gd]), per_market([g[1] for g in gd])),
        release_stress_gap=per_market([max(g) for g in gd]),
    )
    # the exact integer rule wherever the float verdict is within rounding distance of the boundary
    notional = size * price
    gap = collateral - pending_fee + np.where(is_long, 1.0, -1.0) * size * (price - entry) - maintenance * notional
    liq = arr.liquidatable.copy()
    for i in np.flatnonzero(np.abs(gap) <= 1e-9 * notional + 0.01).tolist():
        p = positions[i]
        liq[i] = p.is_liquidatable(markets[p.market_id], prices_e8[p.market_id])
    p_breach = np.where(liq, 1.0, arr.breach_probability).tolist()
    liq_e8 = [p.liquidation_price_e8(markets[p.market_id]) for p in positions]  # the contract's integer view
    req = _ceil_e6(arr.required_collateral)
    rel = _ceil_e6(arr.release_collateral)
    top = _ceil_e6(np.where(liq | (arr.top_up > 0), arr.top_up, 0.0))
    exc = np.where(liq, 0, np.floor(arr.excess * 1e6)).astype(np.int64).tolist()
    interval = np.where(liq, policy.check_interval_min_s, arr.check_interval_s).tolist()
    sig = arr.sigma_annual.tolist()
    dist = arr.log_distance.tolist()
    d_req = arr.required_distance.tolist()
    stress = np.broadcast_to(arr.stress_bound, (n,)).tolist()
    breach = np.broadcast_to(arr.stress_breach, (n,)).tolist()
    liq_l = liq.tolist()
    gaps = arr.stress_gap.tolist()
    px_l = px_e8.astype(np.int64).tolist()
    h = arr.horizon_s
    return [
        PositionRisk(
            positions[i],
            px_l[i],
            sig[i],
            h,
            liq_e8[i],
            dist[i],
            p_breach[i],
            req[i],
            rel[i],
            top[i],
            exc[i],
            interval[i],
            liq_l[i],
            d_req[i],
            stress[i],
            breach[i],
            gaps[i],
        )
        for i in range(n)
    ]


def assess_position(
    position: Position,
    market: Market,
    price_e8: int,
    sigma_annual: float,
    policy: RiskPolicy,
    check_interval_s: float,
    now_s: int,
    stress_gap: float | None = None,
) -> PositionRisk:
    """Closed-form risk of one position: breach probability over h, collateral to restore ``p_target``,
    top-up when above ``p_trigger``, excess when below ``p_release``, next check interval.

    See the module docstring for the formulas. A liquidatable position reports probability 1 and the top-up
    that would restore ``p_target`` (``addMargin`` needs no fresh price).
    """
    return assess_positions(
        [position],
        {market.market_id: market},
        {position.market_id: price_e8},
        {position.market_id: sigma_annual},
        policy,
        check_interval_s,
        now_s,
        None if stress_gap is None else {position.market_id: stress_gap},
    )[0]


# ---- kappa calibration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KappaCalibration:
    """kappa = d_fat / d_gauss at probability ``p`` (both log-distances), from ``n_paths`` paths."""

    kappa: float
    p: float
    d_fat: float
    d_gauss: float
    n_paths: int
    model: str


def calibrate_kappa(
    p: float,
    sigma_annual: float,
    horizon_s: float,
    rng: np.random.Generator,
    *,
    n_paths: int = 200_000,
    n_steps: int = 60,
    student_t_nu: float | None = None,
    jump_intensity_annual: float = 0.0,
    jump_std: float = 0.0,
) -> KappaCalibration:
    """Fat-tail multiplier by Monte Carlo: the distance d_fat with P(breach) = p under a fat-tailed model
    of the same variance, over the Gaussian :math:`\\Phi^{-1}(1-p/2)\\sigma_h`.

    Paths (exact-bridge extremes, :mod:`keeper.risk.montecarlo`) have zero log drift; Student-t increments
    with ``student_t_nu`` and/or Merton jumps (zero-mean log jumps of std ``jump_std``) whose variance is
    taken out of the diffusion so the total variance stays sigma^2. Both tails are pooled (the lower tail of
    the minimum and the upper tail of the maximum): d_fat is the level the pooled excursions exceed with
    probability ``p``, the one-sided breach probability the Gaussian formula describes.
    """
    from keeper.risk.montecarlo import PathModel, simulate_paths

    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    jump_var = jump_intensity_annual * jump_std**2
    diff_var = sigma_annual**2 - jump_var
    if diff_var <= 0:
        raise ValueError("jump variance exceeds the total variance sigma^2")
    model = PathModel(
        sigma_annual=(math.sqrt(diff_var),),
        drift_annual=(0.5 * diff_var,),  # zero log drift: the Gaussian reference is driftless
        student_t_nu=student_t_nu,
        jump_intensity_annual=jump_intensity_annual,
        jump_std=jump_std,
    )
    paths = simulate_paths(model, horizon_s, n_steps, n_paths, rng)
    excursion = np.concatenate((-paths.path_min[0], paths.path_max[0]))
    d_fat = float(np.quantile(excursion, 1.0 - p))
    d_gauss = float(ndtri(1.0 - p / 2.0) * sigma_annual * math.sqrt(horizon_s / SECONDS_PER_YEAR))
    name = (
        "+".join(
            x
            for x in (
                f"t{student_t_nu:g}" if student_t_nu else "",
                f"jumps{jump_intensity_annual:g}/y" if jump_intensity_annual else "",
            )
            if x
        )
        or "gaussian"
    )
    return KappaCalibration(d_fat / d_gauss, p, d_fat, d_gauss, n_paths, name)
