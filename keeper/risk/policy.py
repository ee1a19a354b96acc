"""The buffer policy: how much collateral a position needs, and how often to look at it.

OWNER: risk engine. The dataclasses below are the interface the planner, daemon and replay consume
(see docs/design.md); ``assess_position`` is implemented by the risk engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.domain import Market, Position


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """Parameters of the risk-sized buffer; every field is configurable (README explains defaults)."""

    p_trigger: float = 1e-3
    p_target: float = 1e-4
    p_release: float = 1e-7
    kappa: float = 1.0
    stress_gap: float = 0.12
    inclusion_latency_s: float = 12.0
    oracle_lag_s: float = 0.0
    check_interval_min_s: float = 5.0
    check_interval_max_s: float = 300.0
    k_sigmas: float = 4.0
    min_action_e6: int = 10_000_000
    sigma_floor_annual: float = 0.0
    sigma_fallback_annual: float = 1.5


@dataclass(frozen=True, slots=True)
class PositionRisk:
    """The risk engine's verdict on one position at one price."""

    position: Position
    price_e8: int
    sigma_annual: float
    horizon_s: float
    liquidation_price_e8: int
    distance: float
    breach_probability: float
    required_collateral_e6: int
    release_collateral_e6: int
    top_up_e6: int
    excess_e6: int
    suggested_check_interval_s: float
    liquidatable: bool


def assess_position(
    position: Position,
    market: Market,
    price_e8: int,
    sigma_annual: float,
    policy: RiskPolicy,
    check_interval_s: float,
    now_s: int,
) -> PositionRisk:
    raise NotImplementedError("risk engine: implemented in the risk issue")
