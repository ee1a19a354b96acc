"""Perpetual Protocol v2 ("Curie") cross-margin accounts: the contract's own integer arithmetic (pure core).

Sources: perp-curie-contract v2.8.4 — ``Vault._getSettlementTokenBalanceAndUnrealizedPnl`` /
``_getAccountValueAndTotalCollateralValue``, ``ClearingHouse.getAccountValue``,
``AccountBalance.getPnlAndPendingFee`` / ``getTotalPositionValue`` / ``getMarginRequirementForLiquidation`` /
``getLiquidatablePositionSize``, ``ClearingHouse._liquidate``, ``lib/PerpMath.sol``,
``lib/SettlementTokenMath.sol``; Uniswap v3 core ``SqrtPriceMath`` (Uniswap v3 whitepaper, section 6.2.3).

Units: USD amounts are in 1e-18 USD (``_x18``, the protocol's internal precision) unless they end in
``_e6`` (the 6-decimal settlement token); prices ``_x18`` are vUSD per base unit times 1e18 (the mark price
``AccountBalance.getMarkPrice`` returns); sizes ``_e18`` are 1e-18 base units; ratios ``_e6`` are parts per
million (Curie's ``uint24`` ratios: mmRatio 62,500 = 6.25 %).

For a trader with taker positions only (no open maker orders; such an account cannot be liquidated anyway,
``CH_CLWTISO``)::

    value_i          = mulDiv(size_i, mark_i, 1e18)                  (signed, magnitude floored)
    unrealizedPnl    = sum(value_i) + sum(takerOpenNotional_i)
    accountValueX18  = vaultBalance_e6 * 1e12 + pendingFee - sum(pendingFunding_i) + owedRealizedPnl + unrealizedPnl
    accountValue     = floor(accountValueX18 / 1e12) * 1e12          (ClearingHouse.getAccountValue, 18 dec)
    requirement      = floor(sum(|value_i|) * mmRatio / 1e6)
    liquidatable    <=> accountValue < requirement

Pending funding is frozen at the block it was read (it accrues with time: a drift, not a price function).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ONE_E18 = 10**18
RATIO_ONE = 10**6
SETTLEMENT_SCALE = 10**12  # 18 - 6 decimals
DUST_E18 = 10  # AccountBalance._DUST: |size| below it counts as no position
MIN_PARTIAL_LIQUIDATE_VALUE_X18 = 100 * ONE_E18  # AccountBalance._MIN_PARTIAL_LIQUIDATE_POSITION_VALUE
Q96 = 2**96


@dataclass(frozen=True, slots=True)
class PerpLeg:
    """One market of an account: the base token, taker size and open notional, pending funding."""

    base_token: str
    size_e18: int  # takerPositionSize (signed: + long, - short)
    open_notional_x18: int  # takerOpenNotional (signed vUSD: - for a long)
    pending_funding_x18: int = 0  # Exchange.getPendingFundingPayment (positive: the trader pays)


@dataclass(frozen=True, slots=True)
class PerpAccount:
    """A trader's cross-margin account: one vault balance backs every leg."""

    trader: str
    vault_balance_e6: int  # Vault.getBalance (settlement token, signed)
    owed_realized_pnl_x18: int
    pending_fee_x18: int  # maker fees; 0 for a taker
    legs: tuple[PerpLeg, ...]


@dataclass(frozen=True, slots=True)
class PerpParams:
    """ClearingHouseConfig ratios (parts per million)."""

    mm_ratio_e6: int
    im_ratio_e6: int
    liquidation_penalty_ratio_e6: int


@dataclass(frozen=True, slots=True)
class PerpMargin:
    """The account at one mark-price vector, as the contracts compute it."""

    account_value_x18: int  # ClearingHouse.getAccountValue
    account_value_e6: int  # Vault.getAccountValue
    requirement_x18: int  # AccountBalance.getMarginRequirementForLiquidation
    unrealized_pnl_x18: int
    total_abs_position_value_x18: int

    @property
    def excess_x18(self) -> int:
        """Margin excess M(S) = account value - maintenance requirement (liquidatable iff < 0)."""
        return self.account_value_x18 - self.requirement_x18

    @property
    def liquidatable(self) -> bool:
        return self.account_value_x18 < self.requirement_x18


def mul_div_signed(a: int, b: int, denominator: int) -> int:
    """PerpMath.mulDiv(int256, int256, uint256): |a*b|/d floored, then the sign (truncation toward zero)."""
    q = abs(a) * abs(b) // denominator
    return -q if (a < 0) != (b < 0) and a != 0 and b != 0 else q


def format_settlement_e6(amount_x18: int) -> int:
    """SettlementTokenMath.formatSettlementToken(int256, 6): 18 to 6 decimals, rounded toward -infinity."""
    return amount_x18 // SETTLEMENT_SCALE


def leg_size_e18(leg: PerpLeg) -> int:
    """Position size after the dust rule (AccountBalance.getTotalPositionSize for a taker)."""
    return 0 if abs(leg.size_e18) < DUST_E18 else leg.size_e18


def position_value_x18(size_e18: int, mark_x18: int) -> int:
    """AccountBalance._getPositionValue: size x mark / 1e18, signed, magnitude floored."""
    return 0 if size_e18 == 0 else mul_div_signed(size_e18, mark_x18, ONE_E18)


def margin_at(account: PerpAccount, marks_x18: Mapping[str, int], params: PerpParams) -> PerpMargin:
    """Account value and maintenance requirement at the mark prices ``marks_x18`` (keyed by base token)."""
    values = [position_value_x18(leg_size_e18(leg), marks_x18[leg.base_token]) for leg in account.legs]
    unrealized = sum(values) + sum(leg.open_notional_x18 for leg in account.legs)
    funding = sum(leg.pending_funding_x18 for leg in account.legs)
    value_x18 = (
        account.vault_balance_e6 * SETTLEMENT_SCALE
        + account.pending_fee_x18
        - funding
        + account.owed_realized_pnl_x18
        + unrealized
    )
    value_e6 = format_settlement_e6(value_x18)
    total_abs = sum(abs(v) for v in values)
    return PerpMargin(
        account_value_x18=value_e6 * SETTLEMENT_SCALE,
        account_value_e6=value_e6,
        requirement_x18=total_abs * params.mm_ratio_e6 // RATIO_ONE,
        unrealized_pnl_x18=unrealized,
        total_abs_position_value_x18=total_abs,
    )


def moved_marks(marks_x18: Mapping[str, int], factors: Mapping[str, float]) -> dict[str, int]:
    """Mark prices after relative moves (``factors[base] = new/old``; bases not named keep their mark)."""
    return {b: int(m * factors[b]) if b in factors else m for b, m in marks_x18.items()}


def min_deposit_e6(
    account: PerpAccount, marks_x18: Mapping[str, int], params: PerpParams, target_excess_x18: int = 0
) -> int:
    """Smallest ``Vault.depositFor`` (settlement units) after which M(S) >= ``target_excess_x18`` at ``marks``.

    A deposit of d raises accountValueX18 by exactly d * 1e12, so the floored account value rises by d units:
    d = max(0, ceil((requirement + target) / 1e12) - floor(accountValueX18 / 1e12)). With target 0 the account
    is no longer liquidatable (value >= requirement); one deposit serves every market of the account.
    """
    m = margin_at(account, marks_x18, params)
    needed_e6 = -(-(m.requirement_x18 + target_excess_x18) // SETTLEMENT_SCALE)
    return max(0, needed_e6 - m.account_value_e6)


def liquidatable_size_e18(
    account: PerpAccount, base_token: str, marks_x18: Mapping[str, int], params: PerpParams
) -> int:
    """AccountBalance.getLiquidatablePositionSize(trader, base, accountValue): 0 unless liquidatable; the whole
    position below half the requirement or under $100 of value; else at most half the account's total
    position value's worth of this market."""
    m = margin_at(account, marks_x18, params)
    leg = next((lg for lg in account.legs if lg.base_token == base_token), None)
    size = leg_size_e18(leg) if leg else 0
    if m.account_value_x18 >= m.requirement_x18 or size == 0:
        return 0
    value_abs = abs(position_value_x18(size, marks_x18[base_token]))
    if value_abs <= MIN_PARTIAL_LIQUIDATE_VALUE_X18:
        return size
    ratio = RATIO_ONE
    if m.account_value_x18 >= _div_trunc(m.requirement_x18, 2):
        ratio = min(RATIO_ONE, m.total_abs_position_value_x18 * RATIO_ONE // (2 * value_abs))
    return mul_div_signed(size, ratio, RATIO_ONE)


def _div_trunc(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


@dataclass(frozen=True, slots=True)
class LiquidationCost:
    """What one ``ClearingHouse.liquidate(trader, base)`` takes: size, notional at the mark and the penalty."""

    base_token: str
    size_e18: int
    notional_x18: int
    penalty_x18: int  # the trader pays it; half to the liquidator and half to the insurance fund (all to
    # the liquidator when the account value is negative)


def liquidation_cost(
    account: PerpAccount, base_token: str, marks_x18: Mapping[str, int], params: PerpParams
) -> LiquidationCost:
    """ClearingHouse._liquidate's numbers for liquidating ``base_token`` first, at ``marks_x18``."""
    size = liquidatable_size_e18(account, base_token, marks_x18, params)
    notional = mul_div_signed(size, marks_x18[base_token], ONE_E18)
    return LiquidationCost(base_token, size, notional, abs(notional) * params.liquidation_penalty_ratio_e6 // RATIO_ONE)


def penalty_at_stake_x18(account: PerpAccount, marks_x18: Mapping[str, int], params: PerpParams) -> int:
    """The liquidation penalty the account would pay if every leg were liquidated at ``marks_x18``.

    Each leg's penalty is computed on the state before any liquidation (a liquidator takes the legs one
    by one and the account value changes in between), so this is the figure for the fee cap and the
    planner's priority, exact for the first liquidation and an estimate for the following ones.
    """
    return sum(liquidation_cost(account, leg.base_token, marks_x18, params).penalty_x18 for leg in account.legs)


# ---- order-book depth: Uniswap v3 within one liquidity range ------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolDepth:
    """A Curie market's pool around its current price: sqrtPriceX96 (base = token0), active liquidity, fees."""

    sqrt_price_x96: int
    liquidity: int
    exchange_fee_ratio_e6: int  # MarketRegistry feeRatio (what Curie charges the taker)

    @property
    def price_x18(self) -> int:
        """Pool price (vUSD per base) in 18 decimals: sqrtPriceX96^2 / 2^96 * 1e18 / 2^96 (PerpMath)."""
        price_x96 = self.sqrt_price_x96 * self.sqrt_price_x96 // Q96
        return price_x96 * ONE_E18 // Q96


def sqrt_after_notional(depth: PoolDepth, notional_x18: int, *, buy: bool) -> int:
    """sqrtPriceX96 after a taker order of ``notional_x18`` vUSD, within the current liquidity range.

    A buy (long, exact quote input) puts ``notional x (1 - feeRatio)`` on the curve (Curie scales the pool's
    own fee out, SwapMath.calcScaledAmountForSwaps): sqrt' = sqrt + floor(dy * 2^96 / L)
    (SqrtPriceMath.getNextSqrtPriceFromAmount1RoundingDown, add). A sell (short, exact quote output) takes
    ``notional / (1 - feeRatio)`` out: sqrt' = sqrt - ceil(dy * 2^96 / L). If the move leaves the current
    range the real move is larger (liquidity beyond the range is less): this is then a lower bound.
    """
    if depth.liquidity <= 0:
        raise ValueError("pool has no active liquidity: any order moves the price without bound")
    fee_keep = RATIO_ONE - depth.exchange_fee_ratio_e6
    if buy:
        dy = notional_x18 * fee_keep // RATIO_ONE
        return depth.sqrt_price_x96 + dy * Q96 // depth.liquidity
    dy = -(-notional_x18 * RATIO_ONE // fee_keep)
    delta = -(-dy * Q96 // depth.liquidity)
    if delta >= depth.sqrt_price_x96:
        raise ValueError("sell exceeds the quote available in the current range")
    return depth.sqrt_price_x96 - delta


def price_impact(depth: PoolDepth, notional_x18: int, *, buy: bool) -> float:
    """Relative move of the pool price (new / old - 1) a taker order of ``notional_x18`` vUSD causes."""
    ratio = sqrt_after_notional(depth, notional_x18, buy=buy) / depth.sqrt_price_x96
    return ratio * ratio - 1.0


def notional_to_move_x18(depth: PoolDepth, move: float) -> int:
    """vUSD notional a taker must trade to move the pool price by ``move`` (e.g. -0.05: a 5 % push down),
    inverse of :func:`sqrt_after_notional` within the current range (the premium-gap risk of a thin pool)."""
    if move <= -1.0:
        raise ValueError("a price cannot fall by 100 % or more")
    target = int(depth.sqrt_price_x96 * (1.0 + move) ** 0.5)
    dy = abs(target - depth.sqrt_price_x96) * depth.liquidity // Q96
    fee_keep = RATIO_ONE - depth.exchange_fee_ratio_e6
    return dy * RATIO_ONE // fee_keep if move > 0 else dy * fee_keep // RATIO_ONE
