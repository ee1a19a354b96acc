"""Perp v2 ("Curie") clearing-house state for the fast account replay: traders' vault balances and taker
positions, mark prices, and the state changes of ``Vault.depositFor``, ``ClearingHouse.openPosition`` (no price
impact) and ``ClearingHouse.liquidate`` (pure core: ints in, ints out).

The arithmetic is :mod:`keeper.accounts.perp_v2` (account value, maintenance requirement, liquidatable size,
penalty); this module keeps the state those functions read and applies what the contracts write
(``@perp/curie-contract`` 2.8.4):

* ``Vault.depositFor(trader, token, amount)``: the trader's settlement-token balance rises by ``amount``.
* ``openPosition`` by quote (a long pays exactly ``N`` vUSD, a short receives exactly ``N``,
  ``Exchange._swap``): Curie charges its fee ``f`` on the quote, so a long gets ``(N - N f) / mark`` base and a
  short sells ``N / (1 - f) / mark``; the open notional is ``-N`` (long) or ``+N`` (short), fee included.
  **Simplification**: the fill is at the mark price (no pool, no price impact).
* ``liquidate(trader, baseToken)`` (``ClearingHouse._liquidate``): reverts ``CH_EAV`` unless account value <
  requirement; the size is ``getLiquidatablePositionSize`` (:func:`~keeper.accounts.perp_v2.liquidation_cost`),
  closed at the mark: realised PnL = notional + openNotional x closedRatio (``Exchange._getPnlToBeRealized``,
  closedRatio in 1e18), the position and its open notional reduced (``AccountBalance.settleBalanceAndDeregister``),
  then the penalty ``|notional| x liquidationPenaltyRatio`` is taken from the owed realised PnL; with no position
  left and a negative account value the insurance fund covers the bad debt (``Vault.settleBadDebt``).

Mark = index: the replay's oracle price is the mark (``AccountBalance.getMarkPrice`` is a median of the pool's
TWAPs and index + premium; a replay has no pool). Funding is 0 (mark TWAP = index TWAP); no maker orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from keeper.accounts.perp_v2 import (
    ONE_E18,
    RATIO_ONE,
    SETTLEMENT_SCALE,
    PerpAccount,
    PerpLeg,
    PerpMargin,
    PerpParams,
    free_collateral_by_ratio_x18,
    leg_size_e18,
    liquidation_cost,
    margin_at,
    mul_div_signed,
)

__all__ = ["CURIE_PARAMS", "PerpExchange", "PerpLiquidation", "PerpRevert", "mark_of_price_e8"]

CURIE_PARAMS = PerpParams(mm_ratio_e6=62_500, im_ratio_e6=100_000, liquidation_penalty_ratio_e6=25_000)
"""ClearingHouseConfig's defaults (mmRatio 6.25 %, imRatio 10 %, penalty 2.5 %), what keeper.dev deploys."""
PRICE_E8_TO_X18 = 10**10


class PerpRevert(Exception):
    """An action Curie would refuse (the message names the contract's code)."""


def mark_of_price_e8(price_e8: int) -> int:
    """An oracle price (USD, 8 decimals) as an 18-decimal mark (mark = index in the replay)."""
    return int(price_e8) * PRICE_E8_TO_X18


@dataclass(frozen=True, slots=True)
class PerpLiquidation:
    """One ``liquidate(trader, baseToken)``: the size and notional closed at the mark, the penalty, and the
    account value before (18 decimals)."""

    base_token: str
    size_e18: int
    notional_x18: int
    penalty_x18: int
    account_value_before_x18: int
    bad_debt_e6: int = 0


@dataclass(slots=True)
class PerpExchange:
    """Marks, fee ratios and traders of one Curie deployment (mutable; see the module docstring)."""

    params: PerpParams = CURIE_PARAMS
    fee_ratio_e6: dict[str, int] = field(default_factory=dict)  # base token -> MarketRegistry feeRatio
    marks_x18: dict[str, int] = field(default_factory=dict)
    accounts: dict[str, PerpAccount] = field(default_factory=dict)

    # ---- reads ----------------------------------------------------------------------------------
    def account(self, trader: str) -> PerpAccount:
        return self.accounts.get(trader) or PerpAccount(trader, 0, 0, 0, ())

    def margin(self, trader: str) -> PerpMargin:
        """``getAccountValue`` and ``getMarginRequirementForLiquidation`` at the current marks."""
        return margin_at(self.account(trader), self.marks_x18, self.params)

    # ---- oracle -----------------------------------------------------------------------------------
    def set_price(self, base_token: str, price_e8: int) -> None:
        if price_e8 <= 0:
            raise PerpRevert(f"price of {base_token} must be > 0")
        self.marks_x18[base_token] = mark_of_price_e8(price_e8)

    # ---- writes -------------------------------------------------------------------------------------
    def deposit(self, trader: str, amount_e6: int) -> None:
        """``Vault.depositFor(trader, settlementToken, amount_e6)``."""
        if amount_e6 <= 0:
            raise PerpRevert("deposit: amount must be > 0 (V_ZA)")
        acct = self.account(trader)
        self.accounts[trader] = replace(acct, vault_balance_e6=acct.vault_balance_e6 + amount_e6)

    def open_position(self, trader: str, base_token: str, is_long: bool, notional_x18: int) -> PerpLeg:
        """``openPosition`` of ``notional_x18`` vUSD exact quote at the mark (see the module docstring); one
        position per market, opened once (the book's accounts)."""
        if notional_x18 <= 0:
            raise PerpRevert("openPosition: amount must be > 0")
        mark = self.marks_x18[base_token]
        fee = self.fee_ratio_e6.get(base_token, 0)
        if is_long:
            size = (notional_x18 - notional_x18 * fee // RATIO_ONE) * ONE_E18 // mark
            leg = PerpLeg(base_token, size, -notional_x18)
        else:
            gross = notional_x18 * RATIO_ONE // (RATIO_ONE - fee)
            leg = PerpLeg(base_token, -(gross * ONE_E18 // mark), notional_x18)
        acct = self.account(trader)
        if any(lg.base_token == base_token for lg in acct.legs):
            raise PerpRevert(f"openPosition: {trader} already holds {base_token} (the model opens each once)")
        self.accounts[trader] = replace(acct, legs=(*acct.legs, leg))
        return leg

    def liquidate(self, trader: str, base_token: str) -> PerpLiquidation:
        """``ClearingHouse.liquidate(trader, baseToken)``: the largest size Curie allows, at the mark."""
        acct = self.account(trader)
        m = margin_at(acct, self.marks_x18, self.params)
        if not m.liquidatable:
            raise PerpRevert("liquidate: enough account value (CH_EAV)")
        leg = next((lg for lg in acct.legs if lg.base_token == base_token), None)
        if leg is None or leg_size_e18(leg) == 0:
            raise PerpRevert("liquidate: position size is zero (CH_PSZ)")
        cost = liquidation_cost(acct, base_token, self.marks_x18, self.params)
        closed_ratio = abs(cost.size_e18) * ONE_E18 // abs(leg.size_e18)
        reduced_open = mul_div_signed(leg.open_notional_x18, closed_ratio, ONE_E18)
        realised = cost.notional_x18 + reduced_open
        size = leg.size_e18 - cost.size_e18
        open_notional = leg.open_notional_x18 + cost.notional_x18 - realised
        legs = tuple(
            lg if lg is not leg else replace(lg, size_e18=size, open_notional_x18=open_notional) for lg in acct.legs
        )
        legs = tuple(lg for lg in legs if lg.size_e18 != 0 or lg.open_notional_x18 != 0)
        after = replace(acct, owed_realized_pnl_x18=acct.owed_realized_pnl_x18 + realised - cost.penalty_x18, legs=legs)
        bad = 0
        if not legs:  # Vault.settleBadDebt: no position left, a negative value is the insurance fund's
            value_e6 = margin_at(after, self.marks_x18, self.params).account_value_e6
            if value_e6 < 0:
                bad = -value_e6
                after = replace(after, vault_balance_e6=after.vault_balance_e6 + bad)
        self.accounts[trader] = after
        return PerpLiquidation(base_token, cost.size_e18, cost.notional_x18, cost.penalty_x18, m.account_value_x18, bad)

    def liquidation_order(self, trader: str) -> list[str]:
        """The liquidator's choice: the account's positions by value at the mark, largest first (ties by name)."""
        acct = self.account(trader)
        sized = [
            (abs(leg_size_e18(lg)) * self.marks_x18[lg.base_token] // ONE_E18, lg.base_token)
            for lg in acct.legs
            if leg_size_e18(lg)
        ]
        return [b for _, b in sorted(sized, key=lambda x: (-x[0], x[1]))]

    def free_collateral_by_im_x18(self, trader: str) -> int:
        """``Vault._getFreeCollateralByRatio(trader, imRatio)``: a trade leaving it negative reverts ``CH_NEFCI``."""
        return free_collateral_by_ratio_x18(self.account(trader), self.marks_x18, self.params.im_ratio_e6)

    def equity_e6(self, trader: str) -> int:
        """The account value in the settlement token's units (``Vault.getAccountValue``)."""
        return self.margin(trader).account_value_e6


def settlement_units_of_usd(usd: float) -> int:
    """USD to the 6-decimal settlement token (1 USDC = 1 USD in the replay)."""
    return round(usd * 10**6)


def usd_x18(usd: float) -> int:
    return round(usd * 10**6) * SETTLEMENT_SCALE
