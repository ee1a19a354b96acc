"""EIP-1559 fees from ``eth_feeHistory``, capped by what the transaction protects.

Initial fees for a transaction with gas limit ``G``::

    base_next = last baseFeePerGas of eth_feeHistory (the pending block's base fee)
    tip       = clamp(percentile p of the recent blocks' rewards, min_tip, max_tip)
    max_fee   = min(base_multiplier * base_next + tip, cap)
    cap       = min(max_fee_per_gas_cap_wei,
                    min(max_tx_fee_wei, max(min_budget_wei, stake_fraction * value_at_stake in wei)) // G)

``value_at_stake`` is what the action protects, in USD e6 (e.g. the liquidation penalty a top-up avoids);
it is turned into wei with ``native_usd_e8`` (the gas token's USD price). A transaction whose cap does not
cover ``base_next + min_tip`` is refused with :class:`FeeCapExceeded`: paying more for gas than the action
saves is a loss, whatever happens to the position.

Replacement (same nonce): both fee fields rise by at least ``bump`` (12.5%; geth requires 10%, anvil 1 wei),
and to at least the current market level; never above the cap. If the cap leaves no room for a valid bump
the replacement is not sent (:meth:`FeePolicy.bumped` returns ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.errors import TransactionError

GWEI = 10**9
ETHER = 10**18


class FeeCapExceeded(TransactionError):
    """The fee the network asks for is above what this transaction may pay."""


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True, slots=True)
class MarketFees:
    """What the network asks right now."""

    base_fee_next_wei: int
    tip_wei: int


@dataclass(frozen=True, slots=True)
class FeePolicy:
    """Fee rules; every knob has a default explained in the README (chain section)."""

    native_usd_e8: int = 3_000 * 10**8  # gas token price used to value the fee against the stake
    stake_fraction: float = 0.25  # spend at most this share of the value at stake on gas
    min_budget_wei: int = ETHER // 1_000  # per-tx budget floor: approvals (nothing at stake) and small actions
    #                                       can still pay ordinary fees; a ceiling, not what is paid
    max_tx_fee_wei: int = ETHER // 20  # absolute cap on gas_limit * max_fee_per_gas (0.05 ETH)
    max_fee_per_gas_cap_wei: int = 1_000 * GWEI  # absolute cap on max_fee_per_gas
    base_multiplier: int = 2  # headroom for 6 consecutive full blocks (+12.5% each)
    min_tip_wei: int = GWEI // 10
    max_tip_wei: int = 50 * GWEI
    history_blocks: int = 10
    bump: float = 0.125

    def __post_init__(self) -> None:
        if self.native_usd_e8 <= 0:
            raise ValueError("native_usd_e8 must be positive")
        if not 0 < self.stake_fraction <= 1:
            raise ValueError("stake_fraction must be in (0, 1]")
        if self.bump < 0.10:
            raise ValueError("bump must be at least 0.10 (geth rejects smaller replacements)")
        if self.min_tip_wei > self.max_tip_wei:
            raise ValueError("min_tip_wei must not exceed max_tip_wei")
        if self.history_blocks < 1:
            raise ValueError("history_blocks must be at least 1")

    def market(self, client, percentile: float) -> MarketFees:
        """Read ``eth_feeHistory`` once: next base fee and the ``percentile`` tip, clamped."""
        return self.market_from_history(client.fee_history(self.history_blocks, "latest", [percentile]))

    def market_from_history(self, hist: dict) -> MarketFees:
        """Next base fee (last ``baseFeePerGas`` entry) and the median of the blocks' percentile tips."""
        base_next = int(hist["baseFeePerGas"][-1], 16)
        rewards = sorted(int(r[0], 16) for r in hist.get("reward") or [] if r)
        tip = rewards[len(rewards) // 2] if rewards else self.min_tip_wei
        return MarketFees(base_next, min(max(tip, self.min_tip_wei), self.max_tip_wei))

    def budget_wei(self, value_at_stake_e6: int) -> int:
        """Most this transaction may spend on gas: stake share, floored, never above the absolute cap."""
        stake_wei = int(value_at_stake_e6 * self.stake_fraction) * ETHER * 100 // self.native_usd_e8
        return min(self.max_tx_fee_wei, max(stake_wei, self.min_budget_wei))

    def cap_per_gas(self, gas_limit: int, value_at_stake_e6: int) -> int:
        if gas_limit <= 0:
            raise ValueError("gas_limit must be positive")
        return min(self.max_fee_per_gas_cap_wei, self.budget_wei(value_at_stake_e6) // gas_limit)

    def initial(self, market: MarketFees, cap_wei: int) -> Fees:
        """Fees for a first send; raises :class:`FeeCapExceeded` when the cap cannot buy inclusion."""
        floor = market.base_fee_next_wei + self.min_tip_wei
        if cap_wei < floor:
            raise FeeCapExceeded(
                f"next base fee {market.base_fee_next_wei} wei + min tip {self.min_tip_wei} "
                f"is above this transaction's cap {cap_wei} wei/gas"
            )
        max_fee = min(self.base_multiplier * market.base_fee_next_wei + market.tip_wei, cap_wei)
        return Fees(max_fee, min(market.tip_wei, max_fee - market.base_fee_next_wei))

    def bumped(self, previous: Fees, market: MarketFees, cap_wei: int) -> Fees | None:
        """Replacement fees: both fields >= previous * (1 + bump) and >= market; ``None`` if the cap forbids."""
        min_max = _ceil_mul(previous.max_fee_per_gas, self.bump)
        min_tip = _ceil_mul(previous.max_priority_fee_per_gas, self.bump)
        tip = max(min_tip, market.tip_wei)
        max_fee = max(min_max, self.base_multiplier * market.base_fee_next_wei + tip)
        max_fee = min(max_fee, cap_wei)
        if max_fee < min_max or max_fee < market.base_fee_next_wei:
            return None
        tip = min(tip, max_fee)
        if tip < min_tip:
            return None
        return Fees(max_fee, tip)


def _ceil_mul(value: int, bump: float) -> int:
    """``ceil(value * (1 + bump))`` in integers (bump given to 1e-6), at least ``value + 1``."""
    num = round(bump * 1_000_000)
    return max(value + 1, -(-value * (1_000_000 + num) // 1_000_000))
