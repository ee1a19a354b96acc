"""Domain types of the keeper: markets, oracle prices, positions and the actions taken on them.

Pure core: plain frozen dataclasses, integers in canonical fixed-point units (see docs/design.md):

* USD amounts (collateral, fees, equity, margin): ``_e6`` (1e-6 USD, the collateral token's units)
* prices: ``_e8`` (Chainlink-style answers)
* position sizes: ``_e18`` (1e-18 of the base asset)
* on-chain ratios: ``_wad`` (1e-18)

Protocol adapters convert their native units to these; the risk code converts to floats.

This module is also the one home of the protocol's integer arithmetic (the rules of
``contracts/src/PerpEngine.sol``, docs/design.md "Reference protocol rules"): :func:`notional_e6`,
:func:`pnl_e6`, :func:`maintenance_margin_e6`, :func:`pending_fee_e6`, :func:`liquidation_price_e8`,
:func:`min_equity_e6` (the max-leverage rule) and :func:`fee_headroom_e6`. The replay's protocol model,
the risk code and the planner call these; rounding follows the contract (floors), and every quantity the
keeper keeps back for safety (initial margin, fee headroom) is rounded up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

WAD = 10**18
NOTIONAL_DIVISOR = 10**20  # size_e18 * price_e8 // 10**20 -> USD e6
SECONDS_PER_YEAR = 365 * 24 * 3600


class Side(enum.Enum):
    """Direction of a perpetual position."""

    LONG = "long"
    SHORT = "short"

    @property
    def sign(self) -> int:
        return 1 if self is Side.LONG else -1


FEE_HEADROOM_S = 86_400
"""A day of borrow fee is kept back whenever collateral leaves a position (fees accrue until it lands)."""


def notional_e6(size_e18: int, price_e8: int) -> int:
    """USD value (e6) of ``size_e18`` base units at ``price_e8``, floored."""
    return size_e18 * price_e8 // NOTIONAL_DIVISOR


def pnl_e6(is_long: bool, size_e18: int, entry_price_e8: int, price_e8: int) -> int:
    """Unrealised PnL ``(±size * (price - entry)) // 1e20``: floor of the signed product (never over-credits)."""
    sign = 1 if is_long else -1
    return (sign * size_e18 * (price_e8 - entry_price_e8)) // NOTIONAL_DIVISOR


def maintenance_margin_e6(size_e18: int, price_e8: int, maintenance_margin_wad: int) -> int:
    """``size * price * mmWad // (1e20 * 1e18)``: maintenance margin of the current notional, floored."""
    return size_e18 * price_e8 * maintenance_margin_wad // (NOTIONAL_DIVISOR * WAD)


def pending_fee_e6(size_e18: int, entry_price_e8: int, index_now_wad: int, index_position_wad: int) -> int:
    """Borrow fee accrued since the position's last settlement: ``entryNotional * (index - index_pos) // 1e18``."""
    return notional_e6(size_e18, entry_price_e8) * (index_now_wad - index_position_wad) // WAD


def liquidation_price_e8(
    is_long: bool, size_e18: int, entry_price_e8: int, net_collateral_e6: int, maintenance_margin_wad: int
) -> int:
    """``floor((P0*q -/+ (C-F)*1e20) * 1e18 / (q * (1e18 -/+ m)))`` (long/short), 0 when the numerator <= 0.

    Exactly ``(P0 - (C-F)/q)/(1-m)`` (long) and ``(P0 + (C-F)/q)/(1+m)`` (short) in rationals, floored,
    as ``PerpEngine._liquidationPrice``; ``net_collateral_e6`` is collateral minus the pending fee.
    """
    base = entry_price_e8 * size_e18
    num = base - net_collateral_e6 * NOTIONAL_DIVISOR if is_long else base + net_collateral_e6 * NOTIONAL_DIVISOR
    if num <= 0 or size_e18 <= 0:
        return 0
    m = maintenance_margin_wad
    return num * WAD // (size_e18 * (WAD - m if is_long else WAD + m))


def min_equity_e6(notional: int, max_leverage_wad: int) -> int:
    """Least equity that passes the max-leverage rule ``equity * maxLeverageWad >= notional * 1e18`` (ceil)."""
    return -(-notional * WAD // max_leverage_wad)


def fee_headroom_e6(size_e18: int, entry_price_e8: int, fee_rate_per_s_wad: int, seconds: int = FEE_HEADROOM_S) -> int:
    """Borrow fee over ``seconds`` on the entry notional, rounded UP (it is kept back, so more is safer)."""
    return -(-notional_e6(size_e18, entry_price_e8) * fee_rate_per_s_wad * seconds // WAD)


@dataclass(frozen=True, slots=True)
class Market:
    """A perpetual market's risk parameters, as the protocol enforces them."""

    market_id: int
    symbol: str
    maintenance_margin_wad: int
    max_leverage_wad: int
    liquidation_penalty_wad: int
    fee_rate_per_s_wad: int
    heartbeat_s: int
    feed: str = ""

    @property
    def maintenance_margin_ratio(self) -> float:
        return self.maintenance_margin_wad / WAD

    @property
    def max_leverage(self) -> float:
        return self.max_leverage_wad / WAD

    @property
    def liquidation_penalty_ratio(self) -> float:
        return self.liquidation_penalty_wad / WAD

    @property
    def fee_rate_annual(self) -> float:
        """Borrow fee as a fraction of entry notional per year."""
        return self.fee_rate_per_s_wad * SECONDS_PER_YEAR / WAD


@dataclass(frozen=True, slots=True)
class PriceRound:
    """One oracle round (Chainlink ``latestRoundData`` / ``getRoundData``)."""

    round_id: int
    price_e8: int
    updated_at_s: int

    def age_s(self, now_s: int) -> int:
        return max(0, now_s - self.updated_at_s)

    def is_stale(self, now_s: int, heartbeat_s: int) -> bool:
        """True when the round is older than the feed's heartbeat (the protocol then refuses it)."""
        return now_s - self.updated_at_s > heartbeat_s


@dataclass(frozen=True, slots=True)
class Position:
    """An isolated-margin perpetual position of ``account`` on ``market_id``.

    ``pending_fee_e6`` is the borrow fee accrued since the last settlement, as of the read.
    """

    account: str
    market_id: int
    side: Side
    size_e18: int
    entry_price_e8: int
    collateral_e6: int
    pending_fee_e6: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.account.lower(), self.market_id)

    @property
    def is_long(self) -> bool:
        return self.side is Side.LONG

    def pnl_e6(self, price_e8: int) -> int:
        """Unrealised PnL, floored (the protocol never over-credits)."""
        return pnl_e6(self.is_long, self.size_e18, self.entry_price_e8, price_e8)

    def equity_e6(self, price_e8: int) -> int:
        return self.collateral_e6 + self.pnl_e6(price_e8) - self.pending_fee_e6

    def maintenance_margin_e6(self, market: Market, price_e8: int) -> int:
        return maintenance_margin_e6(self.size_e18, price_e8, market.maintenance_margin_wad)

    def is_liquidatable(self, market: Market, price_e8: int) -> bool:
        return self.equity_e6(price_e8) < self.maintenance_margin_e6(market, price_e8)

    def liquidation_price(self, market: Market, collateral_e6: int | None = None) -> float:
        """Mark price (USD, float) at which equity equals maintenance margin.

        Long ``(P0 - (C - F)/q) / (1 - m)``, short ``(P0 + (C - F)/q) / (1 + m)``, with maintenance
        ``m`` of current notional (dYdX / Hyperliquid style). ``0.0`` for a long that can never reach it.
        """
        c = (self.collateral_e6 if collateral_e6 is None else collateral_e6) - self.pending_fee_e6
        q = self.size_e18 / 1e18
        p0 = self.entry_price_e8 / 1e8
        m = market.maintenance_margin_ratio
        per_unit = (c / 1e6) / q
        if self.side is Side.LONG:
            return max(0.0, (p0 - per_unit) / (1.0 - m))
        return (p0 + per_unit) / (1.0 + m)

    def liquidation_price_e8(self, market: Market) -> int:
        """The contract's integer liquidation price (``getPosition().liquidationPrice``), 0 if none."""
        return liquidation_price_e8(
            self.is_long,
            self.size_e18,
            self.entry_price_e8,
            self.collateral_e6 - self.pending_fee_e6,
            market.maintenance_margin_wad,
        )

    def min_collateral_e6(self, market: Market, price_e8: int) -> int:
        """Least collateral that passes the protocol's max-leverage check after a removal.

        The engine requires ``equity * maxLeverage >= notional`` with ``equity = C + pnl - fee``, so
        ``C >= ceil(notional * 1e18 / maxLeverageWad) - pnl + fee`` (docs/design.md, removeMargin/moveMargin).
        """
        floor_equity = min_equity_e6(notional_e6(self.size_e18, price_e8), market.max_leverage_wad)
        return max(0, floor_equity - self.pnl_e6(price_e8) + self.pending_fee_e6)

    def fee_headroom_e6(self, market: Market) -> int:
        """A day of borrow fee on the entry notional, rounded up: kept back when collateral leaves."""
        return fee_headroom_e6(self.size_e18, self.entry_price_e8, market.fee_rate_per_s_wad)


# ---- actions -------------------------------------------------------------------------------------


class ActionKind(enum.Enum):
    TOP_UP = "top_up"  # wallet -> position (addMargin)
    MOVE_MARGIN = "move_margin"  # safe position -> endangered position of the same owner
    RELEASE = "release"  # position -> owner's wallet (removeMargin), opt-in
    REDUCE_SIZE = "reduce_size"  # last resort, opt-in
    ALERT = "alert"  # nothing sent on chain


@dataclass(frozen=True, slots=True)
class Action:
    """One thing the keeper decides to do, with the reason in the trader's words.

    ``amount_e6`` is collateral moved (top-up, move, release); ``size_delta_e18`` is the size removed
    by a reduction. ``from_market_id`` is the source of a move. ``needs_approval`` marks an action above
    the manual-approval threshold: it is alerted, not sent.
    """

    kind: ActionKind
    account: str
    market_id: int
    amount_e6: int = 0
    size_delta_e18: int = 0
    from_market_id: int | None = None
    reason: str = ""
    breach_probability: float = 0.0
    urgent: bool = False
    needs_approval: bool = False

    @property
    def idempotency_key(self) -> str:
        src = "" if self.from_market_id is None else f":{self.from_market_id}"
        return f"{self.kind.value}:{self.account.lower()}:{self.market_id}{src}:{self.amount_e6}:{self.size_delta_e18}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The keeper's decision on one position: the risk inputs, the band, what it does and why.

    ``band`` is ``trigger`` (endangered), ``hold`` or ``release``; ``action`` the actions taken joined by
    ``+`` (``none`` for nothing, ``awaiting_tx:<state>`` when a transaction is still open); ``reason`` says
    it in the trader's words, never empty ("breach 3.1e-03 > trigger 1e-03 within 14 min: top up $452 to
    reach 1e-04"). ``top_up_e6`` is what this cycle's top-ups put in (0 when none); ``need_e6`` what
    reaching the target takes. ``log_distance`` is ``ln(price / liquidation price)`` signed so that safe is
    positive (``inf`` when the position cannot be liquidated).
    """

    account: str
    market_id: int
    symbol: str
    side: str
    size_e18: int
    collateral_e6: int
    price_e8: int
    price_stale: bool
    sigma_annual: float
    horizon_s: float
    breach_probability: float
    log_distance: float
    liquidation_price_e8: int
    required_collateral_e6: int
    need_e6: int
    top_up_e6: int
    excess_e6: int
    liquidatable: bool
    band: str
    action: str
    reason: str
    short_causes: tuple[str, ...] = ()  # why the target is not reached this cycle (empty: it is, or no need)

    @property
    def key(self) -> tuple[str, int]:
        return (self.account.lower(), self.market_id)


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's output: actions in execution order plus one :class:`Decision` per position."""

    actions: tuple[Action, ...] = ()
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def onchain_actions(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is not ActionKind.ALERT and not a.needs_approval)


# ---- margin accounts (several assets per account: Aave v3 and the like) ---------------------------------


class AccountActionKind(enum.Enum):
    """Protocol-neutral actions on a margin account (the adapter maps them to its calls)."""

    ADD_COLLATERAL = "add_collateral"  # wallet -> account collateral (Aave: supply on behalf)
    REPAY_DEBT = "repay_debt"  # wallet -> account debt (Aave: repay on behalf, variable rate)
    REDUCE_EXPOSURE = "reduce_exposure"  # owner's key only: close part of a position (Perp v2: trade it back)
    RELEASE = "release"  # owner's key only: margin back to the owner's wallet (Perp v2: Vault.withdraw)
    ALERT = "alert"  # nothing sent on chain


@dataclass(frozen=True, slots=True)
class AccountAction:
    """One thing the keeper does for a margin account: ``amount`` of ``asset`` in its native units.

    ``cost_e6`` is its value in USD (e6) at the price it was decided on; ``needs_approval`` marks an action
    above the manual-approval threshold (alerted, not sent). ``cause``: what an alert (or an action that needs
    approval) is about, in words without the figures that change from cycle to cycle (why the account is
    endangered, why nothing or too little can be done): the same ``cause`` a cycle later is no news.
    """

    kind: AccountActionKind
    account: str
    asset: str = ""
    amount: int = 0
    cost_e6: int = 0
    reason: str = ""
    breach_probability: float = 0.0
    urgent: bool = False
    needs_approval: bool = False
    cause: tuple[str, ...] = ()

    @property
    def idempotency_key(self) -> str:
        return f"{self.kind.value}:{self.account.lower()}:{self.asset.lower()}:{self.amount}"


@dataclass(frozen=True, slots=True)
class AccountDecision:
    """The keeper's decision on one margin account: the risk inputs, the band, what it does and why.

    ``band`` is ``trigger`` (endangered), ``hold`` or ``awaiting_tx``; ``action`` e.g. ``repay_debt``,
    ``add_collateral``, ``alert`` or ``none``; ``reason`` in the trader's words, never empty. ``health_wad`` is
    the protocol's own figure (Aave: the health factor, 1e18 = 1.0; 0 when the protocol has none).
    ``stale_assets`` are assets whose price source's latest round is older than its heartbeat (danger);
    ``blocked`` says why an action was not possible (frozen or paused reserve, isolation mode, empty wallet).
    """

    protocol: str
    account: str
    band: str
    action: str
    reason: str
    breach_probability: float
    method: str
    dominant_asset: str
    liquidation_price_e8: int
    log_distance: float
    margin_excess_usd: float
    debt_usd: float
    horizon_s: float
    health_wad: int = 0
    asset: str = ""
    amount: int = 0
    cost_e6: int = 0
    stale_assets: tuple[str, ...] = ()
    short_causes: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.account.lower()
