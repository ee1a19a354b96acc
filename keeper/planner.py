"""The planner: from positions, prices and risk verdicts to a plan of actions (pure core).

``plan_actions(state, risks, limits) -> Plan`` is deterministic (the same inputs in any order give the
same plan), reads no clock and performs no I/O. The shell (``keeper.runtime``) builds the
:class:`BookState` from chain reads, runs the risk engine for :class:`~keeper.risk.policy.PositionRisk`
and hands the plan to the transaction layer.

Bands (from the risk engine, :class:`~keeper.risk.policy.RiskPolicy`)::

    breach_probability > p_trigger           endangered: raise collateral to the p_target level
    p_release <= breach_probability <= p_trigger   hold: no action (hysteresis band against churn)
    breach_probability < p_release           excess: release down to the p_target level (opt-in)

Escalation ladder for one endangered position, in order:

1. **top-up** (``addMargin``) from the payer's wallet (the wallet the keeper controls for that owner),
   bounded by the wallet, the per-transaction cap and what is left of the day budget;
2. **move margin** (``moveMargin``) from safe positions of the same owner, never taking a source
   below ``max(required_collateral_e6, initial margin at max leverage)``;
3. **reduce size** (opt-in, ``allow_reduce``) by the fraction of the target that could not be funded;
4. an **alert** whenever the planned collateral falls short of the target (the position cannot be
   saved by collateral alone), and for every stale-price position.

When funds are short, endangered positions are served in order of expected loss
``breach_probability × notional_e6`` (value at risk = the notional a liquidation force-closes; the
penalty is proportional to it), ties broken by (account, market id).

Units follow docs/design.md: ``_e6`` USD, ``_e8`` prices, ``_e18`` sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from keeper.domain import Action, ActionKind, Market, Plan, Position, PriceRound, notional_e6
from keeper.risk.policy import PositionRisk, RiskPolicy

__all__ = ["BookState", "PlanLimits", "initial_margin_collateral_e6", "plan_actions"]


def _addr(account: str) -> str:
    return account.lower()


@dataclass(frozen=True, slots=True)
class BookState:
    """What the planner knows about the book besides the risk verdicts.

    ``wallet_e6`` maps a payer address to its collateral-token balance (e6); ``payers`` maps an account
    to the address that pays its top-ups (default: the account itself, i.e. the keeper signs as the
    owner). ``stale_markets`` are markets whose latest oracle round is older than its heartbeat
    (compute it with :meth:`from_reads`). ``watch_only`` accounts get alerts, never transactions.
    ``spent_today_e6`` is what top-ups already spent in the current UTC day (the planner has no clock).
    """

    markets: Mapping[int, Market] = field(default_factory=dict)
    wallet_e6: Mapping[str, int] = field(default_factory=dict)
    payers: Mapping[str, str] = field(default_factory=dict)
    prices: Mapping[int, PriceRound] = field(default_factory=dict)
    stale_markets: frozenset[int] = frozenset()
    watch_only: frozenset[str] = frozenset()
    spent_today_e6: int = 0

    def __post_init__(self) -> None:
        if self.spent_today_e6 < 0:
            raise ValueError("spent_today_e6 must be >= 0")
        for who, bal in self.wallet_e6.items():
            if bal < 0:
                raise ValueError(f"wallet_e6[{who}] must be >= 0, got {bal}")

    @classmethod
    def from_reads(
        cls,
        *,
        markets: Iterable[Market],
        prices: Mapping[int, PriceRound],
        wallet_e6: Mapping[str, int],
        now_s: int,
        spent_today_e6: int = 0,
        payers: Mapping[str, str] | None = None,
        watch_only: Iterable[str] = (),
    ) -> BookState:
        """Build a state from chain reads; a market is stale when ``now_s - updated_at > heartbeat``
        (the protocol's own ``StalePrice`` rule) or when it has no price at all."""
        by_id = {m.market_id: m for m in markets}
        stale = frozenset(
            mid for mid, m in by_id.items() if mid not in prices or prices[mid].is_stale(now_s, m.heartbeat_s)
        )
        return cls(
            markets=by_id,
            wallet_e6={_addr(k): v for k, v in wallet_e6.items()},
            payers={_addr(k): _addr(v) for k, v in (payers or {}).items()},
            prices=dict(prices),
            stale_markets=stale,
            watch_only=frozenset(_addr(a) for a in watch_only),
            spent_today_e6=spent_today_e6,
        )

    def payer_of(self, account: str) -> str:
        a = _addr(account)
        return _addr(self.payers.get(a, self.payers.get(account, a)))

    def wallet_of(self, payer: str) -> int:
        p = _addr(payer)
        for k, v in self.wallet_e6.items():
            if _addr(k) == p:
                return v
        return 0


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """Caps and switches of the planner (configuration converts the user's USD values to e6).

    ``max_per_tx_e6`` bounds the amount of every collateral action (top-up, move, release);
    ``max_per_day_e6`` bounds wallet spending (top-ups) per day together with ``state.spent_today_e6``.
    ``manual_approval_above_e6``: actions above it are marked ``needs_approval`` and alerted, not sent
    (``None`` = never). ``urgent_probability``: protective actions on positions at or above it (or
    liquidatable) are marked ``urgent``.
    """

    max_per_tx_e6: int
    max_per_day_e6: int
    min_action_e6: int = 10_000_000
    p_trigger: float = 1e-3
    p_release: float = 1e-7
    manual_approval_above_e6: int | None = None
    allow_release: bool = False
    allow_reduce: bool = False
    alert_only: bool = False
    urgent_probability: float = 1e-2

    def __post_init__(self) -> None:
        if self.max_per_tx_e6 <= 0:
            raise ValueError("max_per_tx_e6 must be > 0")
        if self.max_per_day_e6 <= 0:
            raise ValueError("max_per_day_e6 must be > 0")
        if self.min_action_e6 < 0:
            raise ValueError("min_action_e6 must be >= 0")
        if not 0.0 <= self.p_release < self.p_trigger <= 1.0:
            raise ValueError("need 0 <= p_release < p_trigger <= 1")
        if self.manual_approval_above_e6 is not None and self.manual_approval_above_e6 < 0:
            raise ValueError("manual_approval_above_e6 must be >= 0 or None")

    @classmethod
    def from_policy(cls, policy: RiskPolicy, *, max_per_tx_e6: int, max_per_day_e6: int, **kw: object) -> PlanLimits:
        """Limits whose bands and minimum action size come from the risk policy."""
        return cls(
            max_per_tx_e6=max_per_tx_e6,
            max_per_day_e6=max_per_day_e6,
            min_action_e6=policy.min_action_e6,
            p_trigger=policy.p_trigger,
            p_release=policy.p_release,
            **kw,  # type: ignore[arg-type]
        )


def initial_margin_collateral_e6(position: Position, market: Market, price_e8: int) -> int:
    """Least collateral that passes the protocol's max-leverage check after a removal.

    The engine requires ``equity * maxLeverage >= notional`` with ``equity = C + pnl - fee``, so
    ``C >= ceil(notional * 1e18 / maxLeverageWad) - pnl + fee`` (docs/design.md, removeMargin/moveMargin).
    """
    notional = notional_e6(position.size_e18, price_e8)
    min_equity = -(-notional * 10**18 // market.max_leverage_wad)
    return max(0, min_equity - position.pnl_e6(price_e8) + position.pending_fee_e6)


FEE_HEADROOM_S = 86_400


def fee_headroom_e6(position: Position, market: Market) -> int:
    """A day of borrow fee on the entry notional: kept back when collateral is taken out of a position,
    because fees keep accruing between the read and the transaction landing (a removal of exactly the
    settled collateral would revert)."""
    entry = notional_e6(position.size_e18, position.entry_price_e8)
    return -(-entry * market.fee_rate_per_s_wad * FEE_HEADROOM_S // 10**18)


def _usd(amount_e6: int) -> str:
    return f"${amount_e6 / 1e6:,.2f}"


@dataclass(slots=True)
class _Book:
    """Mutable bookkeeping of one planning run (private)."""

    wallet_left: dict[str, int]
    day_left: int
    movable_left: dict[tuple[str, int], int]


def plan_actions(state: BookState, risks: Sequence[PositionRisk], limits: PlanLimits) -> Plan:
    """Plan top-ups, margin moves, releases, reductions and alerts for one cycle (see module docstring).

    Guarantees (property-tested in tests/test_planner.py): the top-ups of each payer sum to at most its
    wallet; every collateral amount is at most ``max_per_tx_e6``; top-ups sum to at most
    ``max_per_day_e6 - spent_today_e6``; no source of a move or release goes below
    ``max(required_collateral_e6, initial margin)``; positions between the bands get no action; the
    output does not depend on the order of ``risks``.
    """
    ordered = sorted(risks, key=lambda r: r.position.key)
    seen: set[tuple[str, int]] = set()
    for r in ordered:
        if r.position.key in seen:
            raise ValueError(f"duplicate position {r.position.key}")
        seen.add(r.position.key)
        if r.position.market_id not in state.markets:
            raise ValueError(f"no market {r.position.market_id} in state for position {r.position.key}")

    def is_watch(r: PositionRisk) -> bool:
        return limits.alert_only or _addr(r.position.account) in state.watch_only

    def is_stale(r: PositionRisk) -> bool:
        return r.position.market_id in state.stale_markets

    def endangered(r: PositionRisk) -> bool:
        return r.liquidatable or r.breach_probability > limits.p_trigger or r.stress_breach

    def need_e6(r: PositionRisk) -> int:
        return max(r.top_up_e6, r.required_collateral_e6 - r.position.collateral_e6, 0)

    def movable_e6(r: PositionRisk) -> int:
        """Collateral a healthy, fresh-price position can give without leaving the hold band."""
        if endangered(r) or is_stale(r):
            return 0
        market = state.markets[r.position.market_id]
        # the pending fee settles out of the collateral before the removal: a winner whose profit covers the
        # initial margin (floor 0) can still give only what is left after it, or the removal reverts
        floor_e6 = max(
            r.required_collateral_e6,
            initial_margin_collateral_e6(r.position, market, r.price_e8),
            r.position.pending_fee_e6,
        )
        return max(0, r.position.collateral_e6 - floor_e6 - fee_headroom_e6(r.position, market))

    wallets: dict[str, int] = {}
    for r in ordered:
        payer = state.payer_of(r.position.account)
        wallets.setdefault(payer, state.wallet_of(payer))
    book = _Book(
        wallet_left=wallets,
        day_left=max(0, limits.max_per_day_e6 - state.spent_today_e6),
        movable_left={r.position.key: movable_e6(r) for r in ordered},
    )

    targets = [r for r in ordered if endangered(r)]
    targets.sort(
        key=lambda r: (
            -(r.breach_probability * notional_e6(r.position.size_e18, r.price_e8)),
            r.position.key,
        )
    )
    by_owner: dict[str, list[PositionRisk]] = {}
    for r in ordered:
        by_owner.setdefault(_addr(r.position.account), []).append(r)

    actions: list[Action] = []
    summary: dict[tuple[str, int], list[str]] = {r.position.key: [] for r in ordered}
    notes: dict[tuple[str, int], str] = {}

    def act(kind: ActionKind, r: PositionRisk, reason: str, **kw: object) -> Action:
        return Action(kind=kind, account=r.position.account, market_id=r.position.market_id, reason=reason, **kw)  # type: ignore[arg-type]

    def emit(r: PositionRisk, kind: ActionKind, reason: str, **kw: object) -> None:
        action = act(kind, r, reason, **kw)
        urgent = action.kind is not ActionKind.RELEASE and (
            r.liquidatable or r.breach_probability >= limits.urgent_probability
        )
        size_value = notional_e6(action.size_delta_e18, r.price_e8)
        value = action.amount_e6 if action.kind is not ActionKind.REDUCE_SIZE else size_value
        approval = limits.manual_approval_above_e6 is not None and value > limits.manual_approval_above_e6
        action = replace(action, urgent=urgent, breach_probability=r.breach_probability)
        if is_watch(r):
            mode = "alert-only mode" if limits.alert_only else "watch-only account"
            kind = action.kind.value
            action = replace(action, kind=ActionKind.ALERT, reason=f"{mode}: would {kind}: {action.reason}")
            actions.append(action)
            summary[r.position.key].append(f"alert({kind})")
            return
        if approval:
            action = replace(action, needs_approval=True)
            actions.append(action)
            actions.append(
                Action(
                    kind=ActionKind.ALERT,
                    account=r.position.account,
                    market_id=r.position.market_id,
                    amount_e6=action.amount_e6,
                    size_delta_e18=action.size_delta_e18,
                    from_market_id=action.from_market_id,
                    reason=(
                        f"manual approval needed: {action.kind.value} of {_usd(value)} is above the "
                        f"{_usd(limits.manual_approval_above_e6 or 0)} threshold ({action.reason})"
                    ),
                    breach_probability=r.breach_probability,
                    urgent=urgent,
                )
            )
            summary[r.position.key].append(f"{action.kind.value}(needs_approval)")
            return
        actions.append(action)
        summary[r.position.key].append(action.kind.value)

    def alert(r: PositionRisk, reason: str, amount_e6: int = 0) -> None:
        actions.append(
            Action(
                kind=ActionKind.ALERT,
                account=r.position.account,
                market_id=r.position.market_id,
                amount_e6=amount_e6,
                reason=reason,
                breach_probability=r.breach_probability,
                urgent=r.liquidatable or r.breach_probability >= limits.urgent_probability,
            )
        )
        summary[r.position.key].append("alert")

    # ---- 1. endangered positions, highest expected loss first ------------------------------------
    for r in targets:
        pos = r.position
        stale = is_stale(r)
        need = need_e6(r)
        remaining = need
        pct = f"{r.breach_probability:.2%}"
        why = (
            f"breach probability {pct} over {r.horizon_s:.0f}s is above the trigger {limits.p_trigger:.2%}"
            if r.liquidatable or r.breach_probability > limits.p_trigger
            else f"distance to liquidation {r.distance:.2%} is inside the stress gap (one oracle gap would liquidate)"
        )
        if stale:
            alert(r, f"oracle price of market {pos.market_id} is stale: treated as danger, no release or move")
        # 1a. top-up from the payer's wallet
        payer = state.payer_of(pos.account)
        if remaining > 0 and not is_watch(r):
            want = max(remaining, limits.min_action_e6)
            amount = min(want, book.wallet_left.get(payer, 0), limits.max_per_tx_e6, book.day_left)
            if amount >= limits.min_action_e6 and amount > 0:
                book.wallet_left[payer] -= amount
                book.day_left -= amount
                remaining = max(0, remaining - amount)
                emit(
                    r,
                    ActionKind.TOP_UP,
                    amount_e6=amount,
                    reason=f"{why}: top up {_usd(amount)} of {_usd(need)} needed to reach the target",
                )
        elif remaining > 0:
            emit(
                r,
                ActionKind.TOP_UP,
                amount_e6=min(max(remaining, limits.min_action_e6), limits.max_per_tx_e6),
                reason=f"{why}; {_usd(need)} needed",
            )
            remaining = 0  # alerted in full; nothing else to plan for a watched position
        # 1b. move margin from safe positions of the same owner (fresh prices only)
        if remaining > 0 and not stale:
            sources = [
                s
                for s in by_owner[_addr(pos.account)]
                if s.position.key != pos.key and book.movable_left.get(s.position.key, 0) > 0
            ]
            sources.sort(key=lambda s: (-book.movable_left[s.position.key], s.position.key))
            for s in sources:
                if remaining <= 0:
                    break
                avail = book.movable_left[s.position.key]
                amount = min(max(remaining, limits.min_action_e6), avail, limits.max_per_tx_e6)
                if amount < limits.min_action_e6 or amount <= 0:
                    continue
                book.movable_left[s.position.key] -= amount
                remaining = max(0, remaining - amount)
                summary[s.position.key].append(f"move_source(to {pos.market_id})")
                emit(
                    r,
                    ActionKind.MOVE_MARGIN,
                    from_market_id=s.position.market_id,
                    amount_e6=amount,
                    reason=(
                        f"wallet short: move {_usd(amount)} from market {s.position.market_id} "
                        f"(breach probability {s.breach_probability:.2e}, keeps its target buffer) to "
                        f"market {pos.market_id} (breach probability {pct})"
                    ),
                )
        # 1c. last resort: reduce size by the unfunded fraction of the target
        if remaining > 0:
            funded = need - remaining
            equity_now = pos.equity_e6(r.price_e8)
            equity_target = r.required_collateral_e6 + pos.pnl_e6(r.price_e8) - pos.pending_fee_e6
            reduced = False
            if limits.allow_reduce and not stale and equity_now + funded > 0 and equity_target > 0:
                delta = min(pos.size_e18, -(-pos.size_e18 * remaining // equity_target))
                if notional_e6(delta, r.price_e8) >= limits.min_action_e6 and delta > 0:
                    reduced = True
                    emit(
                        r,
                        ActionKind.REDUCE_SIZE,
                        size_delta_e18=delta,
                        reason=(
                            f"collateral short by {_usd(remaining)} after top-ups and moves: reduce size by "
                            f"{delta / pos.size_e18:.1%} ({_usd(notional_e6(delta, r.price_e8))} notional) "
                            "so the remaining collateral meets the target"
                        ),
                    )
            why = "size reduction planned" if reduced else "cannot be saved by the keeper this cycle"
            alert(
                r,
                (
                    f"position short of its target buffer by {_usd(remaining)} (breach probability {pct}, "
                    f"liquidation price {r.liquidation_price_e8 / 1e8:,.2f}): funded {_usd(funded)} of "
                    f"{_usd(need)}; {why}"
                ),
                amount_e6=remaining,
            )
            notes[pos.key] = "short"

    # ---- 2. stale-price positions that are not endangered: still alert, never release --------------
    for r in ordered:
        if is_stale(r) and not endangered(r):
            alert(r, f"oracle price of market {r.position.market_id} is stale: no release or move until it updates")

    # ---- 3. opt-in release of excess (only below p_release, only down to the p_target level) --------
    if limits.allow_release:
        for r in ordered:
            pos = r.position
            if is_watch(r) or is_stale(r) or r.breach_probability >= limits.p_release or r.excess_e6 <= 0:
                continue
            if any(notes.get(o.position.key) == "short" for o in by_owner[_addr(pos.account)]):
                continue  # the owner has a position short of target: keep the excess where it can be moved
            amount = min(r.excess_e6, book.movable_left[pos.key], limits.max_per_tx_e6)
            if amount < limits.min_action_e6 or amount <= 0:
                continue
            book.movable_left[pos.key] -= amount
            emit(
                r,
                ActionKind.RELEASE,
                amount_e6=amount,
                reason=(
                    f"breach probability {r.breach_probability:.1e} is below the release band "
                    f"{limits.p_release:.0e}: return {_usd(amount)} to the owner, keeping the target buffer"
                ),
            )

    decisions = tuple(_decision(r, state, limits, summary[r.position.key], need_e6(r)) for r in ordered)
    return Plan(actions=tuple(actions), decisions=decisions)


def _decision(r: PositionRisk, state: BookState, limits: PlanLimits, done: list[str], need: int) -> dict:
    pos = r.position
    if r.liquidatable or r.breach_probability > limits.p_trigger or r.stress_breach:
        band = "trigger"
    elif r.breach_probability < limits.p_release:
        band = "release"
    else:
        band = "hold"
    market = state.markets[pos.market_id]
    return {
        "account": pos.account,
        "market_id": pos.market_id,
        "symbol": market.symbol,
        "side": pos.side.value,
        "size_e18": pos.size_e18,
        "collateral_e6": pos.collateral_e6,
        "price_e8": r.price_e8,
        "price_stale": pos.market_id in state.stale_markets,
        "sigma_annual": r.sigma_annual,
        "horizon_s": r.horizon_s,
        "breach_probability": r.breach_probability,
        "distance": r.distance,
        "liquidation_price_e8": r.liquidation_price_e8,
        "required_collateral_e6": r.required_collateral_e6,
        "need_e6": need if band == "trigger" else 0,
        "excess_e6": r.excess_e6,
        "liquidatable": r.liquidatable,
        "band": band,
        "action": "+".join(done) if done else "none",
    }
