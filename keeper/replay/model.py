"""Pure-Python model of the reference protocol's rules (``contracts/src/PerpEngine.sol``), integer-exact.

CORE module: standard library and ``keeper.domain`` only; no clock (every call takes ``now_s``), no I/O.
The arithmetic follows docs/design.md "Reference protocol rules" line by line, in the canonical units
(USD ``_e6``, prices ``_e8``, sizes ``_e18``, ratios ``_wad``):

* fee index of a market: ``index(now) = index_stored + feeRatePerSecondWad * (now - lastUpdate)``;
  ``pendingFee_e6 = entryNotional_e6 * (index(now) - index_pos) // 1e18``,
  ``entryNotional_e6 = size_e18 * entryPrice_e8 // 1e20``; settled into collateral (floored at 0) on every
  state change of the position.
* ``pnl_e6 = (±size_e18 * (price_e8 - entry_e8)) // 1e20`` (floor of the signed product, + long / − short)
* ``equity_e6 = collateral_e6 + pnl_e6 - pendingFee_e6``
* ``mm_e6 = size_e18 * price_e8 * maintenanceMarginWad // (1e20 * 1e18)``; liquidatable ⇔ ``equity < mm``
  and the price is fresh (``now - updatedAt <= heartbeat``).
* liquidation (and close): equity taken before the fee settles;
  ``penalty = min(max(equity, 0), notional * penaltyWad // 1e18)`` to the liquidator,
  ``returned = max(equity, 0) - penalty`` to the account; the position is deleted.
* open/increase: after the change ``equity * maxLeverageWad >= notional * 1e18``; increase re-averages the
  entry price by size.
* removeMargin / moveMargin: the source must pass the same max-leverage check after the removal.
* every action that needs a price reverts ``StalePrice`` on a stale round; ``addMargin`` never does.

A revert is raised as :class:`ModelRevert` with the contract's custom-error name and arguments, so the
replay can count it as the chain would. The collateral token itself (wallets, the counterparty pool) is
kept by the caller: the methods return the amounts that would move.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keeper.domain import (
    WAD,
    Market,
    Position,
    Side,
    liquidation_price_e8,
    maintenance_margin_e6,
    min_equity_e6,
    notional_e6,
    pending_fee_e6,
    pnl_e6,
)


class ModelRevert(Exception):
    """The call would revert on chain; ``error`` is the custom-error name, ``args_`` its arguments."""

    def __init__(self, error: str, *args: object) -> None:
        super().__init__(f"{error}({', '.join(map(str, args))})")
        self.error = error
        self.args_ = args


@dataclass(slots=True)
class MarketState:
    """Mutable on-chain state of one market (parameters in ``market``)."""

    market: Market
    fee_index_wad: int = 0
    fee_updated_s: int = 0
    price_e8: int = 0
    price_updated_s: int = 0
    round_id: int = 0
    long_oi_e18: int = 0
    short_oi_e18: int = 0

    def index_at(self, now_s: int) -> int:
        return self.fee_index_wad + self.market.fee_rate_per_s_wad * max(0, now_s - self.fee_updated_s)


@dataclass(slots=True)
class PositionState:
    """Mutable on-chain state of one position."""

    is_long: bool
    size_e18: int
    entry_price_e8: int
    collateral_e6: int
    fee_index_wad: int


@dataclass(frozen=True, slots=True)
class PositionView:
    """Mirror of the contract's ``PositionView`` (``getPosition``)."""

    exists: bool
    is_long: bool = False
    size: int = 0
    entry_price: int = 0
    collateral: int = 0
    pending_fee: int = 0
    equity: int = 0
    maintenance_margin: int = 0
    liquidation_price: int = 0
    mark_price: int = 0
    mark_updated_at: int = 0
    liquidatable: bool = False


def _pnl(p: PositionState, price_e8: int) -> int:
    return pnl_e6(p.is_long, p.size_e18, p.entry_price_e8, price_e8)


@dataclass(slots=True)
class PerpModel:
    """The protocol's state and rules. ``markets`` maps market id -> :class:`MarketState`."""

    markets: dict[int, MarketState] = field(default_factory=dict)
    positions: dict[tuple[str, int], PositionState] = field(default_factory=dict)

    @classmethod
    def with_markets(cls, markets: list[Market] | tuple[Market, ...], now_s: int) -> PerpModel:
        """A fresh protocol with ``markets`` created at ``now_s`` (fee index 0, no price yet)."""
        return cls(markets={m.market_id: MarketState(market=m, fee_updated_s=now_s) for m in markets})

    def copy(self) -> PerpModel:
        """Deep copy of the state (markets are small; positions copied field by field)."""
        ms = {
            k: MarketState(
                v.market,
                v.fee_index_wad,
                v.fee_updated_s,
                v.price_e8,
                v.price_updated_s,
                v.round_id,
                v.long_oi_e18,
                v.short_oi_e18,
            )
            for k, v in self.markets.items()
        }
        ps = {
            k: PositionState(v.is_long, v.size_e18, v.entry_price_e8, v.collateral_e6, v.fee_index_wad)
            for k, v in self.positions.items()
        }
        return PerpModel(ms, ps)

    # ---- helpers --------------------------------------------------------------------------------
    def _market(self, market_id: int) -> MarketState:
        ms = self.markets.get(market_id)
        if ms is None:
            raise ModelRevert("UnknownMarket", market_id)
        return ms

    def _pos(self, account: str, market_id: int) -> PositionState:
        p = self.positions.get((account.lower(), market_id))
        if p is None:
            raise ModelRevert("NoPosition", account, market_id)
        return p

    def _fresh_price(self, ms: MarketState, now_s: int) -> int:
        if ms.price_e8 <= 0:
            raise ModelRevert("InvalidPrice", ms.price_e8)
        if now_s > ms.price_updated_s and now_s - ms.price_updated_s > ms.market.heartbeat_s:
            raise ModelRevert("StalePrice", ms.market.market_id, ms.price_updated_s, ms.market.heartbeat_s)
        return ms.price_e8

    def _touch_market(self, ms: MarketState, now_s: int) -> None:
        ms.fee_index_wad = ms.index_at(now_s)
        ms.fee_updated_s = max(ms.fee_updated_s, now_s)

    @staticmethod
    def _pending_fee(p: PositionState, index_now: int) -> int:
        return pending_fee_e6(p.size_e18, p.entry_price_e8, index_now, p.fee_index_wad)

    def _settle(self, p: PositionState, ms: MarketState, now_s: int) -> int:
        """Settle the pending fee into collateral (floored at 0); returns the fee actually taken."""
        self._touch_market(ms, now_s)
        fee = self._pending_fee(p, ms.fee_index_wad)
        taken = min(fee, p.collateral_e6)
        p.collateral_e6 -= taken
        p.fee_index_wad = ms.fee_index_wad
        return taken

    def _exit_equity(self, p: PositionState, ms: MarketState, price_e8: int, now_s: int) -> int:
        """Close/liquidate: ``collateral + pnl - pendingFee`` taken BEFORE the fee is settled (the fee is not
        floored at the collateral here), then the fee is settled (``PerpEngine._settleFeeForExit``)."""
        self._touch_market(ms, now_s)
        equity = p.collateral_e6 + _pnl(p, price_e8) - self._pending_fee(p, ms.fee_index_wad)
        self._settle(p, ms, now_s)
        return equity

    @staticmethod
    def _check_leverage(p: PositionState, price_e8: int, market: Market) -> None:
        notional = notional_e6(p.size_e18, price_e8)
        equity = p.collateral_e6 + _pnl(p, price_e8)
        if equity < min_equity_e6(notional, market.max_leverage_wad):
            raise ModelRevert("LeverageTooHigh", notional, equity, market.max_leverage_wad)

    # ---- oracle ---------------------------------------------------------------------------------
    def push_price(self, market_id: int, price_e8: int, now_s: int) -> None:
        """The market's feed records a new round at ``now_s`` (``PriceFeed.pushPrice``)."""
        if price_e8 <= 0:
            raise ModelRevert("InvalidPrice", price_e8)
        ms = self._market(market_id)
        ms.price_e8 = price_e8
        ms.price_updated_s = now_s
        ms.round_id += 1

    # ---- views ----------------------------------------------------------------------------------
    def view(self, account: str, market_id: int, now_s: int) -> PositionView:
        """``getPosition``: pending fee, equity, maintenance, liquidation price, liquidatable (fresh price only)."""
        ms = self._market(market_id)
        p = self.positions.get((account.lower(), market_id))
        if p is None:
            return PositionView(exists=False)
        price = ms.price_e8
        fee = self._pending_fee(p, ms.index_at(now_s))
        equity = p.collateral_e6 + _pnl(p, price) - fee
        mm = maintenance_margin_e6(p.size_e18, price, ms.market.maintenance_margin_wad)
        fresh = price > 0 and not (now_s > ms.price_updated_s and now_s - ms.price_updated_s > ms.market.heartbeat_s)
        return PositionView(
            exists=True,
            is_long=p.is_long,
            size=p.size_e18,
            entry_price=p.entry_price_e8,
            collateral=p.collateral_e6,
            pending_fee=fee,
            equity=equity,
            maintenance_margin=mm,
            liquidation_price=self.liquidation_price_e8(p, fee, ms.market),
            mark_price=price,
            mark_updated_at=ms.price_updated_s,
            liquidatable=fresh and equity < mm,
        )

    @staticmethod
    def liquidation_price_e8(p: PositionState, fee_e6: int, market: Market) -> int:
        """``floor((P0*q -/+ (C-F)*1e20) * 1e18 / (q * (1e18 -/+ m)))`` (long/short), 0 when the numerator <= 0.

        Exactly ``(P0 - (C-F)/q)/(1-m)`` (long) and ``(P0 + (C-F)/q)/(1+m)`` (short) in rationals, floored,
        as ``PerpEngine._liquidationPrice``.
        """
        return liquidation_price_e8(
            p.is_long, p.size_e18, p.entry_price_e8, p.collateral_e6 - fee_e6, market.maintenance_margin_wad
        )

    def position(self, account: str, market_id: int, now_s: int) -> Position | None:
        """The position as the keeper's domain type (pending fee as of ``now_s``), or None."""
        p = self.positions.get((account.lower(), market_id))
        if p is None:
            return None
        ms = self.markets[market_id]
        return Position(
            account=account.lower(),
            market_id=market_id,
            side=Side.LONG if p.is_long else Side.SHORT,
            size_e18=p.size_e18,
            entry_price_e8=p.entry_price_e8,
            collateral_e6=p.collateral_e6,
            pending_fee_e6=self._pending_fee(p, ms.index_at(now_s)),
        )

    def is_liquidatable(self, account: str, market_id: int, now_s: int) -> bool:
        v = self.view(account, market_id, now_s)
        return v.exists and v.liquidatable

    # ---- state changes --------------------------------------------------------------------------
    def open_position(
        self, account: str, market_id: int, is_long: bool, size_e18: int, collateral_e6: int, now_s: int
    ) -> None:
        """``openPosition``: new position, or increase of an existing one on the same side (entry re-averaged)."""
        ms = self._market(market_id)
        if size_e18 <= 0:
            raise ModelRevert("InvalidAmount")
        price = self._fresh_price(ms, now_s)
        key = (account.lower(), market_id)
        p = self.positions.get(key)
        self._touch_market(ms, now_s)
        if p is None:
            p = PositionState(is_long, size_e18, price, collateral_e6, ms.fee_index_wad)
            self._check_leverage(p, price, ms.market)
            self.positions[key] = p
        else:
            if p.is_long != is_long:
                raise ModelRevert("SideMismatch")
            self._settle(p, ms, now_s)
            new_size = p.size_e18 + size_e18
            entry = (p.size_e18 * p.entry_price_e8 + size_e18 * price) // new_size
            q = PositionState(is_long, new_size, entry, p.collateral_e6 + collateral_e6, p.fee_index_wad)
            self._check_leverage(q, price, ms.market)
            self.positions[key] = q
        if is_long:
            ms.long_oi_e18 += size_e18
        else:
            ms.short_oi_e18 += size_e18

    def add_margin(self, account: str, market_id: int, amount_e6: int, now_s: int) -> None:
        """``addMargin``: needs no price (a top-up is always possible); settles the fee first."""
        ms = self._market(market_id)
        if amount_e6 <= 0:
            raise ModelRevert("InvalidAmount")
        p = self._pos(account, market_id)
        self._settle(p, ms, now_s)
        p.collateral_e6 += amount_e6

    def remove_margin(self, account: str, market_id: int, amount_e6: int, now_s: int) -> int:
        """``removeMargin``: pays ``amount_e6`` to the owner; the position must pass max leverage after it."""
        ms = self._market(market_id)
        if amount_e6 <= 0:
            raise ModelRevert("InvalidAmount")
        p = self._pos(account, market_id)
        price = self._fresh_price(ms, now_s)
        self._settle(p, ms, now_s)
        if amount_e6 > p.collateral_e6:
            raise ModelRevert("InvalidAmount")
        p.collateral_e6 -= amount_e6
        try:
            self._check_leverage(p, price, ms.market)
        except ModelRevert:
            p.collateral_e6 += amount_e6
            raise
        return amount_e6

    def move_margin(self, account: str, from_market_id: int, to_market_id: int, amount_e6: int, now_s: int) -> None:
        """``moveMargin``: remove from one position (max-leverage check) and add to another of the same account."""
        if from_market_id == to_market_id:
            raise ModelRevert("InvalidAmount")
        self._pos(account, to_market_id)
        self.remove_margin(account, from_market_id, amount_e6, now_s)
        self.add_margin(account, to_market_id, amount_e6, now_s)

    def decrease_position(self, account: str, market_id: int, size_delta_e18: int, now_s: int) -> int:
        """``decreasePosition``: realised pnl of the removed size stays in collateral (floored at 0); returns it."""
        ms = self._market(market_id)
        p = self._pos(account, market_id)
        if size_delta_e18 <= 0 or size_delta_e18 >= p.size_e18:
            raise ModelRevert("InvalidAmount")
        price = self._fresh_price(ms, now_s)
        self._settle(p, ms, now_s)
        realized = pnl_e6(p.is_long, size_delta_e18, p.entry_price_e8, price)
        p.collateral_e6 = max(0, p.collateral_e6 + realized)
        p.size_e18 -= size_delta_e18
        if p.is_long:
            ms.long_oi_e18 -= size_delta_e18
        else:
            ms.short_oi_e18 -= size_delta_e18
        return realized

    def close_position(self, account: str, market_id: int, now_s: int) -> int:
        """``closePosition``: pays ``max(equity, 0)`` to the owner and deletes the position; returns the payout."""
        ms = self._market(market_id)
        p = self._pos(account, market_id)
        price = self._fresh_price(ms, now_s)
        equity = self._exit_equity(p, ms, price, now_s)
        payout = max(0, equity)
        self._delete(account, market_id, p, ms)
        return payout

    def liquidate(self, account: str, market_id: int, now_s: int) -> tuple[int, int]:
        """``liquidate``: returns ``(penalty_to_liquidator, returned_to_account)``; reverts ``NotLiquidatable``."""
        ms = self._market(market_id)
        p = self._pos(account, market_id)
        price = self._fresh_price(ms, now_s)
        equity = self._exit_equity(p, ms, price, now_s)
        mm = maintenance_margin_e6(p.size_e18, price, ms.market.maintenance_margin_wad)
        if equity >= mm:
            raise ModelRevert("NotLiquidatable", account, market_id, equity, mm)
        notional = notional_e6(p.size_e18, price)
        pos_equity = max(equity, 0)
        penalty = min(pos_equity, notional * ms.market.liquidation_penalty_wad // WAD)
        self._delete(account, market_id, p, ms)
        return penalty, pos_equity - penalty

    def _delete(self, account: str, market_id: int, p: PositionState, ms: MarketState) -> None:
        if p.is_long:
            ms.long_oi_e18 -= p.size_e18
        else:
            ms.short_oi_e18 -= p.size_e18
        del self.positions[(account.lower(), market_id)]
