"""A protocol-neutral margin account: legs in native units, prices keyed by asset (pure core).

A protocol adapter builds one :class:`MarginAccount` per account it watches; its liquidation rule
(e.g. Aave's health factor, keeper/accounts/aave_v3.py) stays exact in the protocol's own module. The margin
excess here is the first-order view the risk code uses:

.. math:: M(S) = \\sum_{c} q_c S_c w_c - \\sum_{d} q_d S_d

in the base currency (USD, 8 decimals), with :math:`w_c` the collateral's liquidation weight (Aave: the
liquidation threshold in bps) and :math:`q` amounts in whole tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

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
    weight_bps: int = BPS  # collateral: liquidation weight; debt: 10000
    price_key: str = ""  # asset whose price applies (Aave e-mode price source); "" = ``asset``

    def value_e8(self, prices_e8: Mapping[str, int]) -> int:
        """Value in the base currency (8 decimals), floored like the protocols do."""
        return self.amount * prices_e8[self.price_key or self.asset] // 10**self.decimals


@dataclass(frozen=True, slots=True)
class MarginAccount:
    """An account of one protocol: its legs and the block they were read at."""

    protocol: str
    account: str
    legs: tuple[Leg, ...]
    block_number: int = 0

    @property
    def assets(self) -> frozenset[str]:
        return frozenset(leg.price_key or leg.asset for leg in self.legs)

    def margin_excess_e8(self, prices_e8: Mapping[str, int]) -> int:
        """M(S): weighted collateral minus debt, base currency with 8 decimals (negative: liquidatable)."""
        total = 0
        for leg in self.legs:
            v = leg.value_e8(prices_e8)
            total += v * leg.weight_bps // BPS if leg.kind is LegKind.COLLATERAL else -v
        return total
