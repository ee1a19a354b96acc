"""Greeks: perp delta per asset, Black-Scholes / Black-76 option greeks, aggregated per account.

A perpetual has delta :math:`\\partial V/\\partial S = q` (signed size, base units) and no gamma or vega.
Black-Scholes-Merton with continuous dividend/carry yield :math:`q_d` (Hull, *Options, Futures and Other
Derivatives*, 10th ed., 15.8 and 19):

.. math::

    d_1 = \\frac{\\ln(S/K) + (r - q_d + \\sigma^2/2)T}{\\sigma\\sqrt T},\\quad d_2 = d_1 - \\sigma\\sqrt T,\\quad
    \\Delta_c = e^{-q_dT}\\Phi(d_1),\\ \\Delta_p = -e^{-q_dT}\\Phi(-d_1),\\quad
    \\Gamma = \\frac{e^{-q_dT}\\varphi(d_1)}{S\\sigma\\sqrt T},\\quad \\mathcal V = S e^{-q_dT}\\varphi(d_1)\\sqrt T.

Black-76 (options on a forward/future :math:`F`) is the case :math:`S = F`, :math:`q_d = r`. Vega is per
unit of volatility (1.0 = 100 vol points). All functions are vectorised.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

from keeper.domain import Position

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class OptionGreeks:
    """Price and greeks per unit of underlying (arrays broadcast from the inputs)."""

    price: FloatArray
    delta: FloatArray
    gamma: FloatArray
    vega: FloatArray


def _pdf(x: FloatArray) -> FloatArray:
    return np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)


def bs_greeks(
    spot: ArrayLike,
    strike: ArrayLike,
    t_years: ArrayLike,
    sigma: ArrayLike,
    is_call: ArrayLike,
    rate: ArrayLike = 0.0,
    carry_yield: ArrayLike = 0.0,
) -> OptionGreeks:
    """Black-Scholes-Merton price, delta, gamma and vega of European options (see module docstring)."""
    s, k, t, v, r, qd = (np.asarray(a, dtype=float) for a in (spot, strike, t_years, sigma, rate, carry_yield))
    call = np.asarray(is_call, dtype=bool)
    if np.any(t <= 0) or np.any(v <= 0) or np.any(s <= 0) or np.any(k <= 0):
        raise ValueError("spot, strike, time and sigma must be > 0")
    sq = v * np.sqrt(t)
    d1 = (np.log(s / k) + (r - qd + 0.5 * v * v) * t) / sq
    d2 = d1 - sq
    dq = np.exp(-qd * t)
    dr = np.exp(-r * t)
    price = np.where(call, s * dq * ndtr(d1) - k * dr * ndtr(d2), k * dr * ndtr(-d2) - s * dq * ndtr(-d1))
    delta = np.where(call, dq * ndtr(d1), -dq * ndtr(-d1))
    gamma = dq * _pdf(d1) / (s * sq)
    vega = s * dq * _pdf(d1) * np.sqrt(t)
    return OptionGreeks(price, delta, gamma, vega)


def black76_greeks(
    forward: ArrayLike,
    strike: ArrayLike,
    t_years: ArrayLike,
    sigma: ArrayLike,
    is_call: ArrayLike,
    rate: ArrayLike = 0.0,
) -> OptionGreeks:
    """Black-76 greeks with respect to the forward (BSM with S = F and carry yield = rate)."""
    return bs_greeks(forward, strike, t_years, sigma, is_call, rate, rate)


@dataclass(frozen=True, slots=True)
class OptionPosition:
    """An option position held by ``account`` on ``market_id``'s underlying (``quantity`` signed, base units)."""

    account: str
    market_id: int
    is_call: bool
    strike: float
    expiry_years: float
    quantity: float
    sigma_annual: float
    rate: float = 0.0


@dataclass(frozen=True, slots=True)
class AssetGreeks:
    """Aggregated greeks of one account on one asset: delta in base units and USD, gamma, vega (USD per vol)."""

    delta: float
    delta_usd: float
    gamma: float
    vega: float


def perp_delta_by_asset(positions: Iterable[Position]) -> dict[int, float]:
    """Signed perp delta per market (base units): sum of ``+size`` for longs and ``-size`` for shorts."""
    out: dict[int, float] = defaultdict(float)
    for p in positions:
        out[p.market_id] += p.side.sign * p.size_e18 / 1e18
    return dict(out)


def account_greeks(
    positions: Iterable[Position],
    prices_e8: Mapping[int, int],
    options: Iterable[OptionPosition] = (),
) -> dict[str, dict[int, AssetGreeks]]:
    """Greeks per account and asset: perps contribute delta only; options add BS delta, gamma and vega."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    for p in positions:
        acc[p.account.lower()][p.market_id][0] += p.side.sign * p.size_e18 / 1e18
    for o in options:
        g = bs_greeks(prices_e8[o.market_id] / 1e8, o.strike, o.expiry_years, o.sigma_annual, o.is_call, o.rate)
        cell = acc[o.account.lower()][o.market_id]
        cell[0] += o.quantity * float(g.delta)
        cell[1] += o.quantity * float(g.gamma)
        cell[2] += o.quantity * float(g.vega)
    return {
        account: {mid: AssetGreeks(d, d * prices_e8[mid] / 1e8, gm, vg) for mid, (d, gm, vg) in sorted(per.items())}
        for account, per in acc.items()
    }
