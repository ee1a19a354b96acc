"""A protocol-neutral margin account: legs in native units, prices keyed by asset (pure core).

A protocol adapter builds one :class:`MarginAccount` per account it watches; its liquidation rule
(e.g. Aave's health factor, keeper/accounts/aave_v3.py) stays exact in the protocol's own module. The margin
excess here is the first-order view the risk code uses:

.. math:: M(S) = K + \\sum_{c} q_c S_c w_c - \\sum_{d} q_d S_d w_d

in the base currency (USD, 8 decimals), with :math:`w_c` the collateral's liquidation weight (Aave: the
liquidation threshold in bps), :math:`w_d` the debt's (1 for Aave; a perpetual short's requirement makes it
1 + the maintenance ratio), :math:`q` amounts in whole tokens and :math:`K` cash at face value (a perpetual
account's vault balance plus its open notional and realised PnL; 0 for Aave). Each leg also carries the rate
at which its amount accrues, and the account a drift not tied to a leg (a perpetual's funding), the risk
code's drift (:mod:`keeper.risk.accounts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

BPS = 10_000


class LegKind(Enum):
    COLLATERAL = "collateral"
    DEBT = "debt"


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg: ``amount`` of ``asset`` in its native units (``decimals``), priced by ``price_key``."""

    asset: str
    kind: LegKind
    amount: int
    decimals: int
    weight_bps: int = BPS  # collateral: liquidation weight; debt: what a unit of it counts for (Aave 10000)
    price_key: str = ""  # asset whose price applies (Aave e-mode price source); "" = ``asset``
    rate_annual: float = 0.0  # interest accruing on the leg per year (collateral: supply rate; debt: borrow rate)

    def value_e8(self, prices_e8: Mapping[str, int]) -> int:
        """Value in the base currency (8 decimals), floored like the protocols do."""
        return self.amount * prices_e8[self.price_key or self.asset] // 10**self.decimals


@dataclass(frozen=True, slots=True)
class MarginAccount:
    """An account of one protocol: its legs, its cash and the block they were read at.

    ``cash_e8`` is margin at face value (USD, 8 decimals; negative: owed), ``drift_usd_per_year`` the rate at
    which the margin changes with time apart from the legs' own rates (a perpetual's funding at the current
    premium; negative: the account pays)."""

    protocol: str
    account: str
    legs: tuple[Leg, ...]
    block_number: int = 0
    cash_e8: int = 0
    drift_usd_per_year: float = 0.0

    @property
    def assets(self) -> frozenset[str]:
        return frozenset(leg.price_key or leg.asset for leg in self.legs)

    def margin_excess_e8(self, prices_e8: Mapping[str, int]) -> int:
        """M(S): cash plus weighted collateral minus weighted debt, base currency with 8 decimals (negative:
        liquidatable)."""
        total = self.cash_e8
        for leg in self.legs:
            v = leg.value_e8(prices_e8) * leg.weight_bps // BPS
            total += v if leg.kind is LegKind.COLLATERAL else -v
        return total


ADD_COLLATERAL = "add_collateral"
REPAY_DEBT = "repay_debt"
REDUCE_EXPOSURE = "reduce_exposure"
RELEASE = "release"
WALLET_FUNDED = frozenset({ADD_COLLATERAL, REPAY_DEBT})
"""Option kinds paid from the keeper's wallet (and counted against the day's budget); a reduction is not."""


@dataclass(frozen=True, slots=True)
class ActionOption:
    """One way to protect an account: add ``amount`` of ``asset`` as collateral, repay that much debt, or (with
    the owner's key) close ``amount`` of the position in ``asset``.

    ``cost_e6`` is the amount's value in USD (e6) at today's price (for a reduction: what closing loses to fees
    and price impact); ``reaches_target`` whether it keeps the
    account solvent at the prices it must survive; ``health_after`` the protocol's figure at those prices
    after the action (higher is safer; Aave: the health factor in wad), the score options are ranked by when
    none reaches the target.
    """

    kind: str  # ADD_COLLATERAL | REPAY_DEBT | REDUCE_EXPOSURE
    asset: str
    amount: int
    cost_e6: int
    reaches_target: bool
    health_after: int
    verb: str = ""  # how the trader calls it (Perp v2: "deposit"); "" = supply / repay by kind


class AccountRules(Protocol):
    """A protocol's exact rules for its accounts, as the decision needs them (pure; Aave: ``AaveRules``)."""

    @property
    def protocol(self) -> str: ...

    def health(self, account: str) -> int:
        """The protocol's own safety figure for ``account`` now, in wad, below 1e18 exactly when liquidatable
        (Aave: the health factor; Perp v2: account value over the maintenance requirement)."""
        ...

    def liquidatable(self, account: str) -> bool:
        """The protocol's exact liquidation rule, now."""
        ...

    def health_at(self, account: str, prices_e8: Mapping[str, int]) -> int:
        """The same figure at other prices (asset -> e8; assets not named keep this read's price)."""
        ...

    def margin_account(self, account: str, block_number: int = 0) -> MarginAccount:
        """The protocol-neutral view of ``account`` the risk engine assesses."""
        ...

    def options(
        self, account: str, survive_prices_e8: Mapping[str, int], wallet: Mapping[str, int], budget_e6: int
    ) -> tuple[list[ActionOption], list[str]]:
        """Per asset of ``wallet`` (asset -> units held) and per kind: the least action that keeps ``account``
        solvent at ``survive_prices_e8``, or the most the wallet and ``budget_e6`` allow when that is short
        (``reaches_target`` False). Also one line per impossible option saying why (frozen reserve, ...)."""
        ...

    def release_refusal(self, account: str) -> str | None:
        """Why the keeper may never release from ``account`` (it does not hold the owner's key, or releases are
        not enabled for it), for the decision's reason; None when :meth:`release` may answer."""
        ...

    def release(self, account: str, survive_prices_e8: Mapping[str, int], max_e6: int) -> ActionOption | None:
        """The most margin (at most ``max_e6`` USD) the owner may take back from ``account`` so that it still
        survives ``survive_prices_e8`` and passes the protocol's own withdraw rule, or ``None`` when the keeper
        may not release it (:meth:`release_refusal`) or there is nothing to release."""
        ...

    def value_at_stake_e6(self, account: str) -> int:
        """What a liquidation would take from the owner now (USD e6): the liquidator's bonus on the closable
        debt; the fee cap of a protective transaction is tied to it."""
        ...
