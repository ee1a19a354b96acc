"""Total cost of protection: idle capital, gas, liquidation penalties and bad debt in one USD number.

What a trader pays for a keeper policy over a replayed window (pure: plain numbers in, plain numbers out):

.. math::

    C = \\bar I \\, r \\, \\frac{T}{\\text{year}} \\;+\\; \\sum_i g_i \\, p_{gas} \\, S_{native}(t_i)
        \\;+\\; \\text{penalties} \\;+\\; \\text{bad debt}

* :math:`\\bar I` — time-weighted average idle collateral (``PolicyResult.avg_idle_e6``: collateral net of fees
  above maintenance, the capital the trader has committed beyond what the protocol needs), :math:`r` the
  annual rate that capital would earn elsewhere (``capital_rate_annual``, default 8 %/yr), :math:`T` the
  replayed duration after warm-up;
* :math:`g_i` the gas of each keeper transaction (reverted ones too) at the moment it landed, :math:`p_{gas}`
  a preset gas price (``l1`` = 20 gwei, an Ethereum mainnet level; ``l2`` = 0.05 gwei, a rollup level), and
  :math:`S_{native}(t_i)` the native token's USD price at that moment (the replayed ETH price by default);
* liquidation penalties paid by the trader, and bad debt (negative equity at liquidation, a loss beyond the
  collateral).

The presets are the two regimes that decide a keeper's bands: when gas is dear, wide and rare top-ups win;
when capital is dear, tight and frequent ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from keeper.errors import InputError

SECONDS_PER_YEAR = 365 * 86_400
GWEI = 1e-9
DEFAULT_CAPITAL_RATE_ANNUAL = 0.08
DEFAULT_GAS_PRESETS_GWEI: Mapping[str, float] = {"l1": 20.0, "l2": 0.05}


def gas_preset_gwei(spec: str, preset: str, presets_gwei: Mapping[str, float] | None) -> float:
    """The gas price (gwei) of ``preset`` (any case) among ``presets_gwei``, for the policy ``spec`` that names it
    (``risk:cost:PRESET``); a one-line error naming the known presets otherwise."""
    presets = {k.lower(): v for k, v in (presets_gwei or {}).items()}
    if preset.lower() not in presets:
        raise InputError(f"bad policy {spec!r}: unknown gas preset {preset!r} (known: {', '.join(presets) or 'none'})")
    return presets[preset.lower()]


@dataclass(frozen=True, slots=True)
class CostModel:
    """The prices that turn a replay's metrics into USD: a capital rate and named gas-price presets."""

    capital_rate_annual: float = DEFAULT_CAPITAL_RATE_ANNUAL
    gas_price_gwei: tuple[tuple[str, float], ...] = tuple(DEFAULT_GAS_PRESETS_GWEI.items())

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capital_rate_annual) and 0.0 <= self.capital_rate_annual < 10.0):
            raise ValueError(f"capital_rate_annual must be a yearly rate in [0, 10), got {self.capital_rate_annual}")
        if not self.gas_price_gwei:
            raise ValueError("at least one gas-price preset is required (e.g. l1=20)")
        names = [n for n, _ in self.gas_price_gwei]
        if len(set(names)) != len(names):
            raise ValueError(f"gas-price preset names must be unique: {names}")
        for name, gwei in self.gas_price_gwei:
            if not name or not (math.isfinite(gwei) and gwei >= 0.0):
                raise ValueError(f"gas-price preset {name!r}: the price must be a number of gwei >= 0, got {gwei}")

    @classmethod
    def parse(cls, capital_rate_annual: float, presets: Sequence[str]) -> CostModel:
        """From ``NAME=GWEI`` strings (empty: the default ``l1``/``l2`` presets)."""
        parsed: list[tuple[str, float]] = []
        for item in presets:
            name, sep, value = item.partition("=")
            try:
                gwei = float(value)
            except ValueError:
                gwei = math.nan
            if not sep or not name.strip() or math.isnan(gwei):
                raise ValueError(f"gas preset {item!r}: expected NAME=GWEI, e.g. l1=20")
            parsed.append((name.strip(), gwei))
        return cls(capital_rate_annual, tuple(parsed) if parsed else tuple(DEFAULT_GAS_PRESETS_GWEI.items()))


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """One policy's cost under one gas preset, in USD."""

    idle_capital_usd: float
    gas_usd: float
    penalties_usd: float
    bad_debt_usd: float

    @property
    def total_usd(self) -> float:
        return self.idle_capital_usd + self.gas_usd + self.penalties_usd + self.bad_debt_usd

    def as_dict(self) -> dict[str, float]:
        return {
            "idle_capital": self.idle_capital_usd,
            "gas": self.gas_usd,
            "penalties": self.penalties_usd,
            "bad_debt": self.bad_debt_usd,
            "total": self.total_usd,
        }


def native_price_at(t_s: np.ndarray, price_usd: np.ndarray, when_s: Sequence[int]) -> np.ndarray:
    """The native token's latest known USD price at each of ``when_s`` (the first price before the series starts)."""
    if t_s.size == 0 or t_s.size != price_usd.size:
        raise ValueError("the native price series must be non-empty and as long as its clock")
    idx = np.searchsorted(t_s, np.asarray(when_s, dtype=np.int64), side="right") - 1
    return price_usd[np.clip(idx, 0, t_s.size - 1)]


def gas_native_usd_units(gas_log: Sequence[tuple[int, int]], t_s: np.ndarray, price_usd: np.ndarray) -> float:
    """``sum_i gas_i x S_native(t_i)``: gas weighted by the native price when it was spent (USD per gas price unit)."""
    if not gas_log:
        return 0.0
    when = [t for t, _ in gas_log]
    gas = np.array([g for _, g in gas_log], dtype=np.float64)
    return float(np.dot(gas, native_price_at(t_s, price_usd, when)))


def cost_of_protection(
    *,
    avg_idle_usd: float,
    duration_s: float,
    gas_log: Sequence[tuple[int, int]],
    penalties_usd: float,
    bad_debt_usd: float,
    native_t_s: np.ndarray,
    native_price_usd: np.ndarray,
    model: CostModel,
) -> dict[str, CostBreakdown]:
    """Per gas preset, the total cost of protection over the window (see the module docstring)."""
    idle = avg_idle_usd * model.capital_rate_annual * duration_s / SECONDS_PER_YEAR
    weighted_gas = gas_native_usd_units(gas_log, native_t_s, native_price_usd)
    return {
        name: CostBreakdown(idle, weighted_gas * gwei * GWEI, penalties_usd, bad_debt_usd)
        for name, gwei in model.gas_price_gwei
    }
