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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from keeper.accounts.base import (
    ADD_COLLATERAL,
    BPS,
    REDUCE_EXPOSURE,
    RELEASE,
    ActionOption,
    Leg,
    LegKind,
    MarginAccount,
)

ONE_E18 = 10**18
RATIO_ONE = 10**6
SETTLEMENT_SCALE = 10**12  # 18 - 6 decimals
DUST_E18 = 10  # AccountBalance._DUST: |size| below it counts as no position
MIN_PARTIAL_LIQUIDATE_VALUE_X18 = 100 * ONE_E18  # AccountBalance._MIN_PARTIAL_LIQUIDATE_POSITION_VALUE
Q96 = 2**96
WAD = 10**18


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


def free_collateral_by_ratio_x18(account: PerpAccount, marks_x18: Mapping[str, int], ratio_e6: int) -> int:
    """``Vault._getFreeCollateralByRatio`` for a settlement-token-only taker (18 decimals, signed):
    min(collateral, account value) - total debt value x ``ratio_e6``, with collateral = vault balance + owed
    realised PnL + pending fee - pending funding (unrealised profit is not withdrawable) and total debt value
    (``AccountBalance.getTotalDebtValue``) = the shorts' |size| x mark plus the net quote owed. ClearingHouse
    refuses a trade after which this is negative at imRatio (``CH_NEFCI``)."""
    unrealized = sum(
        position_value_x18(leg_size_e18(leg), marks_x18[leg.base_token]) + leg.open_notional_x18 for leg in account.legs
    )
    collateral = (
        account.vault_balance_e6 * SETTLEMENT_SCALE
        + account.pending_fee_x18
        - sum(leg.pending_funding_x18 for leg in account.legs)
        + account.owed_realized_pnl_x18
    )
    base_debt = sum(
        abs(position_value_x18(leg_size_e18(leg), marks_x18[leg.base_token]))
        for leg in account.legs
        if leg.size_e18 < 0
    )
    quote_debt = max(0, -sum(leg.open_notional_x18 for leg in account.legs))
    return min(collateral, collateral + unrealized) - (base_debt + quote_debt) * ratio_e6 // RATIO_ONE


def free_collateral_e6(account: PerpAccount, marks_x18: Mapping[str, int], params: PerpParams) -> int:
    """What ``Vault.withdraw`` lets a settlement-token-only taker take: :func:`free_collateral_by_ratio_x18`
    at imRatio, floored to the token's units, never below 0."""
    return max(0, format_settlement_e6(free_collateral_by_ratio_x18(account, marks_x18, params.im_ratio_e6)))


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


def premium_gaps(depth: PoolDepth, push_notional_x18: int, max_spread_ratio_e6: int) -> tuple[float, float]:
    """(down, up) log moves of the mark a market sell / buy of ``push_notional_x18`` vUSD can cause.

    The mark follows the pool (keeper.protocols.perp_v2 explains the median of TWAPs), so the premium can gap
    by what the order moves the pool within its current range (:func:`price_impact`; a thin pool moves more),
    but never past the market's price band: Curie reverts a swap that ends more than ``max_spread_ratio_e6``
    from the index (``EX_OPB``). An order larger than the range holds is priced at the band.
    """
    band = math.log(1.0 + max_spread_ratio_e6 / RATIO_ONE) if max_spread_ratio_e6 > 0 else math.inf
    if push_notional_x18 <= 0:
        return 0.0, 0.0
    try:
        down = -math.log1p(price_impact(depth, push_notional_x18, buy=False))
    except ValueError:  # the sell takes out the whole range (or the pool is empty)
        down = band
    try:
        up = math.log1p(price_impact(depth, push_notional_x18, buy=True))
    except ValueError:
        up = band
    return min(down, band), min(up, band)


# ---- reducing a position (the owner's key only) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reduction:
    """Closing ``size_e18`` (signed like the position) of one market now: the account after it, the quote
    the trade is expected to exchange and what it loses against the mark (fee and price impact, >= 0)."""

    account: PerpAccount
    base_token: str
    size_e18: int
    quote_x18: int  # received when closing a long, paid when closing a short (fee included)
    cost_x18: int


def after_reduce(account: PerpAccount, base_token: str, fraction_e6: int, depth: PoolDepth, mark_x18: int) -> Reduction:
    """The account after closing ``fraction_e6`` (parts per million) of its position in ``base_token`` by a
    taker trade against the pool now.

    The trade fills around the pool price, on average half the way to where it pushes it (within the current
    range: :func:`price_impact`), and pays Curie's fee on the quote. Curie then realises
    ``quote - fraction x |openNotional|`` into the owed realised PnL and keeps the rest of the position with
    its open notional scaled down (``AccountBalance.modifyTakerBalance`` and
    ``Exchange._getRealizedPnl``, proportional for a reduction)."""
    leg = next((lg for lg in account.legs if lg.base_token == base_token), None)
    if leg is None or leg_size_e18(leg) == 0:
        raise ValueError(f"the account has no position in {base_token}")
    f = max(0, min(RATIO_ONE, fraction_e6))
    close = mul_div_signed(leg.size_e18, f, RATIO_ONE)
    pool = depth.price_x18
    gross = abs(close) * pool // ONE_E18
    long = leg.size_e18 > 0
    impact = price_impact(depth, max(gross, 1), buy=not long) if gross else 0.0
    avg = pool * (1.0 + impact / 2.0)
    fee = depth.exchange_fee_ratio_e6
    if long:  # sell base: receive quote less the fee
        quote = int(abs(close) * avg / ONE_E18 * (RATIO_ONE - fee) / RATIO_ONE)
        cost = abs(close) * mark_x18 // ONE_E18 - quote
        realised = quote + mul_div_signed(leg.open_notional_x18, f, RATIO_ONE)
    else:  # buy base back: pay quote plus the fee
        quote = int(abs(close) * avg / ONE_E18 * (RATIO_ONE + fee) / RATIO_ONE)
        cost = quote - abs(close) * mark_x18 // ONE_E18
        realised = mul_div_signed(leg.open_notional_x18, f, RATIO_ONE) - quote
    legs = tuple(
        lg
        if lg is not leg
        else PerpLeg(
            lg.base_token,
            lg.size_e18 - close,
            lg.open_notional_x18 - mul_div_signed(lg.open_notional_x18, f, RATIO_ONE),
            lg.pending_funding_x18,
        )
        for lg in account.legs
    )
    after = replace(account, owed_realized_pnl_x18=account.owed_realized_pnl_x18 + realised, legs=legs)
    return Reduction(after, base_token, close, quote, max(0, cost))


def min_reduction(
    account: PerpAccount,
    base_token: str,
    depth: PoolDepth,
    marks_now_x18: Mapping[str, int],
    survive_marks_x18: Mapping[str, int],
    params: PerpParams,
) -> Reduction | None:
    """The smallest reduction of ``base_token``'s position (to 1 ppm, by bisection: margin at the survive
    marks rises with the fraction closed) after which the account is not liquidatable at
    ``survive_marks_x18``; ``None`` when even closing it all does not do it."""

    def ok(f: int) -> bool:
        r = after_reduce(account, base_token, f, depth, marks_now_x18[base_token])
        return not margin_at(r.account, survive_marks_x18, params).liquidatable

    try:
        if not ok(RATIO_ONE):
            return None
    except ValueError:  # the pool's range cannot take the whole trade
        return None
    lo, hi = 0, RATIO_ONE
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return after_reduce(account, base_token, hi, depth, marks_now_x18[base_token])


# ---- the protocol-neutral view and rules (keeper.accounts.base) ------------------------------------------

PRICE_E8_SCALE = 10**10  # an 18-decimal mark to the base currency's 8 decimals
MAX_HEALTH = 2**256 - 1  # no position: nothing can be liquidated (the figure Aave gives a debt-free account)
DAYS_PER_YEAR = 365.0


def cash_x18(account: PerpAccount) -> int:
    """The part of the account value that does not move with the marks: vault balance, pending fee, owed
    realised PnL, open notionals, minus pending funding (18 decimals)."""
    return (
        account.vault_balance_e6 * SETTLEMENT_SCALE
        + account.pending_fee_x18
        - sum(leg.pending_funding_x18 for leg in account.legs)
        + account.owed_realized_pnl_x18
        + sum(leg.open_notional_x18 for leg in account.legs)
    )


def funding_drift_usd_per_year(account: PerpAccount, premiums_x18: Mapping[str, int]) -> float:
    """What funding does to the margin per year if today's premium (mark - index TWAP, per base) persists.

    Curie's funding payment of a position is ``size x (mark TWAP - index TWAP) x dt / 1 day``, paid by longs
    when the premium is positive (``Exchange._getFundingGrowthGlobalAndTwaps``): the margin drifts by minus
    that, 365 times a year."""
    per_day = sum(leg_size_e18(leg) / ONE_E18 * premiums_x18.get(leg.base_token, 0) / ONE_E18 for leg in account.legs)
    return -per_day * DAYS_PER_YEAR


def margin_view(
    account: PerpAccount,
    params: PerpParams,
    premiums_x18: Mapping[str, int] | None = None,
    block_number: int = 0,
    protocol: str = "perp-v2",
) -> MarginAccount:
    """The account as the risk engine sees it: M(S) = cash + sum over longs of size x S x (1 - mm) - sum over
    shorts of |size| x S x (1 + mm), which is account value - requirement (:func:`margin_at`) up to the
    contracts' floor roundings (an mmRatio that is not a whole number of bps is rounded to one here; the
    decision itself uses the exact rule, :class:`PerpRules`). Longs are collateral legs, shorts debt legs,
    both priced at their base token's mark; funding at today's premium is the drift."""
    mm_bps = round(params.mm_ratio_e6 * BPS / RATIO_ONE)
    legs = []
    for leg in account.legs:
        size = leg_size_e18(leg)
        if size == 0:
            continue
        long = size > 0
        legs.append(
            Leg(
                leg.base_token,
                LegKind.COLLATERAL if long else LegKind.DEBT,
                abs(size),
                18,
                BPS - mm_bps if long else BPS + mm_bps,
            )
        )
    return MarginAccount(
        protocol,
        account.trader,
        tuple(legs),
        block_number,
        cash_e8=cash_x18(account) // PRICE_E8_SCALE,
        drift_usd_per_year=funding_drift_usd_per_year(account, premiums_x18 or {}),
    )


@dataclass(frozen=True, slots=True)
class PerpRules:
    """Curie's exact rules over one read, for :func:`keeper.decision.decide_accounts` (accounts keyed by
    lower-case trader, marks by base token). Prices the decision passes are e8 marks; a moved e8 price moves
    the 18-decimal mark by the same ratio, so the rule stays exact at this read's marks."""

    accounts: Mapping[str, PerpAccount]
    marks_x18: Mapping[str, int]
    params: PerpParams
    settlement_token: str
    premiums_x18: Mapping[str, int] = field(default_factory=dict)
    protocol: str = "perp-v2"
    depths: Mapping[str, PoolDepth] = field(default_factory=dict)  # base token -> its pool now
    reducible: frozenset[str] = frozenset()  # accounts the keeper holds the key of, with reduction enabled
    releasable: frozenset[str] = frozenset()  # the same, with release enabled

    @property
    def prices_e8(self) -> dict[str, int]:
        return {b: m // PRICE_E8_SCALE for b, m in self.marks_x18.items()}

    def _acct(self, account: str) -> PerpAccount:
        found = self.accounts.get(account.lower())
        if found is None:
            raise KeyError(f"account {account} was not read")
        return found

    def marks_at(self, prices_e8: Mapping[str, int]) -> dict[str, int]:
        """The 18-decimal marks at e8 prices (bases not named keep this read's mark)."""
        now = self.prices_e8
        out = dict(self.marks_x18)
        for base, p in prices_e8.items():
            if base in out and now.get(base, 0) > 0 and p != now[base]:
                out[base] = self.marks_x18[base] * p // now[base]
        return out

    def _health(self, acct: PerpAccount, marks_x18: Mapping[str, int]) -> int:
        m = margin_at(acct, marks_x18, self.params)
        if m.requirement_x18 == 0:
            return MAX_HEALTH
        return max(0, m.account_value_x18) * WAD // m.requirement_x18

    def health(self, account: str) -> int:
        """Account value over the maintenance requirement, wad (below 1e18 exactly when liquidatable)."""
        return self._health(self._acct(account), self.marks_x18)

    def health_at(self, account: str, prices_e8: Mapping[str, int]) -> int:
        return self._health(self._acct(account), self.marks_at(prices_e8))

    def liquidatable(self, account: str) -> bool:
        """``ClearingHouse.liquidate``'s check: getAccountValue < getMarginRequirementForLiquidation."""
        return margin_at(self._acct(account), self.marks_x18, self.params).liquidatable

    def margin_account(self, account: str, block_number: int = 0) -> MarginAccount:
        return margin_view(self._acct(account), self.params, self.premiums_x18, block_number, self.protocol)

    def options(
        self, account: str, survive_prices_e8: Mapping[str, int], wallet: Mapping[str, int], budget_e6: int
    ) -> tuple[list[ActionOption], list[str]]:
        """The least ``Vault.depositFor`` of the settlement token that keeps the account unliquidatable at the
        survive prices (one deposit backs every market of the account), or what the wallet and the budget
        allow. When that deposit cannot reach the target and the keeper holds the owner's key with reductions
        enabled (``reducible``), also the least reduction of each position that does (its cost: fee and price
        impact on the pool's depth)."""
        acct = self._acct(account)
        marks = self.marks_at(survive_prices_e8)
        options, why = self._deposit(acct, marks, wallet, budget_e6)
        if any(o.reaches_target for o in options) or account.lower() not in self.reducible:
            return options, why
        if not options and not why:  # nothing needed at these prices
            return options, why
        for leg in acct.legs:
            depth = self.depths.get(leg.base_token)
            if depth is None or leg_size_e18(leg) == 0:
                continue
            r = min_reduction(acct, leg.base_token, depth, self.marks_x18, marks, self.params)
            if r is None:
                why.append(f"reduce {leg.base_token}: even closing the whole position does not survive the move")
                continue
            options.append(
                ActionOption(
                    REDUCE_EXPOSURE,
                    leg.base_token,
                    abs(r.size_e18),
                    r.cost_x18 // SETTLEMENT_SCALE,
                    True,
                    self._health(r.account, marks),
                    "reduce",
                )
            )
        return options, why

    def _deposit(
        self, acct: PerpAccount, marks: Mapping[str, int], wallet: Mapping[str, int], budget_e6: int
    ) -> tuple[list[ActionOption], list[str]]:
        token = next((a for a in wallet if a.lower() == self.settlement_token.lower()), self.settlement_token)
        held = wallet.get(token, 0)
        need = min_deposit_e6(acct, marks, self.params)
        if need == 0:
            return [], []
        if held <= 0:
            return [], ["the keeper's wallet holds no settlement token for Vault.depositFor"]
        cap = min(held, budget_e6)
        reaches = need <= cap
        amount = need if reaches else cap
        why = []
        if not reaches:
            why.append(
                f"depositFor needs ${need / 1e6:,.2f}, the wallet holds ${held / 1e6:,.2f}"
                if need > held
                else f"depositFor needs ${need / 1e6:,.2f}, over the cap of ${budget_e6 / 1e6:,.2f}"
            )
        if amount <= 0:
            return [], why
        after = replace(acct, vault_balance_e6=acct.vault_balance_e6 + amount)
        option = ActionOption(ADD_COLLATERAL, token, amount, amount, reaches, self._health(after, marks), "deposit")
        return [option], why

    def release_refusal(self, account: str) -> str | None:
        """Why the keeper may not withdraw from ``account`` at all (``Vault.withdraw`` pays the sender: only the
        trader's own key), None when it holds that key with releases enabled (``releasable``)."""
        if account.lower() not in self.releasable:
            return "the keeper does not hold the owner's key (Vault.withdraw is the trader's own transaction)"
        return None

    def release(self, account: str, survive_prices_e8: Mapping[str, int], max_e6: int) -> ActionOption | None:
        """The largest ``Vault.withdraw`` of the settlement token (owner's key, ``releasable``) after which the
        account is still unliquidatable at the survive prices and within :func:`free_collateral_e6` (Curie's
        own withdraw rule at today's marks); at most ``max_e6``."""
        if self.release_refusal(account) is not None:
            return None
        acct = self._acct(account)
        marks = self.marks_at(survive_prices_e8)
        at_survive = margin_at(acct, marks, self.params)
        keep_e6 = -(-at_survive.requirement_x18 // SETTLEMENT_SCALE)  # value must stay >= the requirement
        amount = min(at_survive.account_value_e6 - keep_e6, free_collateral_e6(acct, self.marks_x18, self.params))
        amount = min(amount, max_e6, acct.vault_balance_e6)
        if amount <= 0:
            return None
        after = replace(acct, vault_balance_e6=acct.vault_balance_e6 - amount)
        return ActionOption(RELEASE, self.settlement_token, amount, amount, True, self._health(after, marks), "release")

    def value_at_stake_e6(self, account: str) -> int:
        """The liquidation penalty on every position of the account at today's marks (USD e6): a liquidator
        takes whole positions once the account value is below half the requirement, which a crash reaches."""
        m = margin_at(self._acct(account), self.marks_x18, self.params)
        penalty_x18 = m.total_abs_position_value_x18 * self.params.liquidation_penalty_ratio_e6 // RATIO_ONE
        return penalty_x18 // SETTLEMENT_SCALE
