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

from keeper.domain import (
    FEE_HEADROOM_S,
    Action,
    ActionKind,
    Decision,
    Market,
    Plan,
    Position,
    PriceRound,
    notional_e6,
)
from keeper.risk.policy import PositionRisk, RiskPolicy, is_endangered

__all__ = [
    "FEE_HEADROOM_S",
    "BookState",
    "Budget",
    "PlanLimits",
    "awaiting_decision",
    "band_of",
    "fee_headroom_e6",
    "initial_margin_collateral_e6",
    "plan_actions",
]


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
    p_target: float = 1e-4  # only named in the decisions' reasons ("top up $452 to reach 1e-04")
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
        if not 0.0 <= self.p_target <= 1.0:
            raise ValueError("need 0 <= p_target <= 1")
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
            p_target=policy.p_target,
            **kw,  # type: ignore[arg-type]
        )


def initial_margin_collateral_e6(position: Position, market: Market, price_e8: int) -> int:
    """Least collateral that passes the protocol's max-leverage check after a removal
    (:meth:`keeper.domain.Position.min_collateral_e6`)."""
    return position.min_collateral_e6(market, price_e8)


def fee_headroom_e6(position: Position, market: Market) -> int:
    """A day of borrow fee on the entry notional, rounded up (:func:`keeper.domain.fee_headroom_e6`): kept
    back when collateral is taken out of a position, because fees keep accruing between the read and the
    transaction landing (a removal of exactly the settled collateral would revert)."""
    return position.fee_headroom_e6(market)


def _usd(amount_e6: int) -> str:
    return f"${amount_e6 / 1e6:,.2f}"


def _usd_short(amount_e6: int) -> str:
    """Dollars as a trader says them: whole dollars from $100 up, cents below."""
    usd = amount_e6 / 1e6
    return f"${usd:,.0f}" if abs(usd) >= 100 else f"${usd:,.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.3g} h"


@dataclass(slots=True)
class Budget:
    """What one planning run may still spend: the explicit value the ladder's steps draw from.

    ``wallet_left_e6`` per payer, ``day_left_e6`` of the day's top-up budget, ``movable_left_e6`` per
    position (collateral a healthy source can give, see :func:`movable_e6`). Each step takes from it and
    never below zero.
    """

    wallet_left_e6: dict[str, int]
    day_left_e6: int
    movable_left_e6: dict[tuple[str, int], int]

    def top_up_room_e6(self, payer: str, max_per_tx_e6: int) -> int:
        return min(self.wallet_left_e6.get(payer, 0), max_per_tx_e6, self.day_left_e6)

    def spend_top_up(self, payer: str, amount_e6: int) -> None:
        self.wallet_left_e6[payer] -= amount_e6
        self.day_left_e6 -= amount_e6

    def take_movable(self, key: tuple[str, int], amount_e6: int) -> None:
        self.movable_left_e6[key] -= amount_e6


def need_e6(r: PositionRisk) -> int:
    """Collateral an endangered position needs to reach its target."""
    return max(r.top_up_e6, r.required_collateral_e6 - r.position.collateral_e6, 0)


def movable_e6(r: PositionRisk, state: BookState, limits: PlanLimits) -> int:
    """Collateral a healthy, fresh-price position can give without leaving the hold band.

    The pending fee settles out of the collateral before the removal: a winner whose profit covers the
    initial margin (floor 0) can still give only what is left after it, or the removal reverts; a day of
    fees (rounded up) stays behind.
    """
    if is_endangered(r, limits.p_trigger) or r.position.market_id in state.stale_markets:
        return 0
    market = state.markets[r.position.market_id]
    floor_e6 = max(
        r.required_collateral_e6,
        r.position.min_collateral_e6(market, r.price_e8),
        r.position.pending_fee_e6,
    )
    return max(0, r.position.collateral_e6 - floor_e6 - r.position.fee_headroom_e6(market))


@dataclass(slots=True)
class _Run:
    """One planning run: inputs, the budget, and what has been planned so far (private)."""

    state: BookState
    limits: PlanLimits
    budget: Budget
    by_owner: dict[str, list[PositionRisk]]
    actions: list[Action] = field(default_factory=list)
    summary: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    said: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # the decision's words per position
    topped_up: dict[tuple[str, int], int] = field(default_factory=dict)
    short: set[tuple[str, int]] = field(default_factory=set)
    causes: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # why a position stays short
    awaiting_approval: set[tuple[str, int]] = field(default_factory=set)

    def watched(self, r: PositionRisk) -> bool:
        return self.limits.alert_only or _addr(r.position.account) in self.state.watch_only

    def stale(self, r: PositionRisk) -> bool:
        return r.position.market_id in self.state.stale_markets

    def urgent(self, r: PositionRisk) -> bool:
        return r.liquidatable or r.breach_probability >= self.limits.urgent_probability

    def say(self, r: PositionRisk, words: str) -> None:
        self.said.setdefault(r.position.key, []).append(words)

    def emit(self, r: PositionRisk, kind: ActionKind, reason: str, **kw: object) -> None:
        """Plan one action on ``r``: as an alert for a watched position, held for approval above the
        threshold, or as is."""
        action = Action(kind=kind, account=r.position.account, market_id=r.position.market_id, reason=reason, **kw)  # type: ignore[arg-type]  # the Action fields, passed through
        urgent = kind is not ActionKind.RELEASE and self.urgent(r)
        value = (
            action.amount_e6 if kind is not ActionKind.REDUCE_SIZE else notional_e6(action.size_delta_e18, r.price_e8)
        )
        action = replace(action, urgent=urgent, breach_probability=r.breach_probability)
        key = r.position.key
        if self.watched(r):
            mode = "alert-only mode" if self.limits.alert_only else "watch-only account"
            self.actions.append(replace(action, kind=ActionKind.ALERT, reason=f"{mode}: would {kind.value}: {reason}"))
            self.summary[key].append(f"alert({kind.value})")
            self.say(r, f"would {kind.value.replace('_', ' ')} {_usd_short(value)} ({mode}, nothing sent)")
            return
        threshold = self.limits.manual_approval_above_e6
        if threshold is not None and value > threshold:
            self.awaiting_approval.add(key)
            self.actions.append(replace(action, needs_approval=True))
            self.actions.append(
                Action(
                    kind=ActionKind.ALERT,
                    account=action.account,
                    market_id=action.market_id,
                    amount_e6=action.amount_e6,
                    size_delta_e18=action.size_delta_e18,
                    from_market_id=action.from_market_id,
                    reason=(
                        f"manual approval needed: {kind.value} of {_usd(value)} is above the "
                        f"{_usd(threshold)} threshold ({reason})"
                    ),
                    breach_probability=r.breach_probability,
                    urgent=urgent,
                )
            )
            self.summary[key].append(f"{kind.value}(needs_approval)")
            self.say(
                r,
                f"{kind.value.replace('_', ' ')} {_usd_short(value)} awaits manual approval "
                f"(above {_usd_short(threshold)})",
            )
            return
        self.actions.append(action)
        self.summary[key].append(kind.value)
        if kind is ActionKind.TOP_UP:
            self.topped_up[key] = self.topped_up.get(key, 0) + action.amount_e6

    def alert(self, r: PositionRisk, reason: str, amount_e6: int = 0) -> None:
        self.actions.append(
            Action(
                kind=ActionKind.ALERT,
                account=r.position.account,
                market_id=r.position.market_id,
                amount_e6=amount_e6,
                reason=reason,
                breach_probability=r.breach_probability,
                urgent=self.urgent(r),
            )
        )
        self.summary[r.position.key].append("alert")


def _danger_words(r: PositionRisk, limits: PlanLimits) -> str:
    """Why an endangered position is endangered (the action reasons' prefix)."""
    if r.liquidatable or r.breach_probability > limits.p_trigger:
        return (
            f"breach probability {r.breach_probability:.2%} over {r.horizon_s:.0f}s is above the trigger "
            f"{limits.p_trigger:.2%}"
        )
    return (
        f"log distance to liquidation {r.log_distance:.4f} is inside the stress gap {r.stress_gap:.4f} (one "
        "oracle gap would liquidate)"
    )


# ---- the ladder, one step per function ----------------------------------------------------------------


def _step_top_up(run: _Run, r: PositionRisk, need: int, remaining: int) -> int:
    """1. top up from the payer's wallet, bounded by the wallet, the per-tx cap and the day budget; a watched
    position is alerted in full. Returns what is still missing."""
    if remaining <= 0:
        return remaining
    limits = run.limits
    why = _danger_words(r, limits)
    if run.watched(r):
        amount = min(max(remaining, limits.min_action_e6), limits.max_per_tx_e6)
        run.emit(r, ActionKind.TOP_UP, amount_e6=amount, reason=f"{why}; {_usd(need)} needed")
        return 0  # alerted in full; nothing else to plan for a watched position
    payer = run.state.payer_of(r.position.account)
    want = max(remaining, limits.min_action_e6)
    amount = min(want, run.budget.top_up_room_e6(payer, limits.max_per_tx_e6))
    causes = run.causes.setdefault(r.position.key, [])
    wallet_now = run.budget.wallet_left_e6.get(payer, 0)
    if wallet_now < want:
        causes.append("wallet empty" if wallet_now == 0 else f"wallet holds only {_usd(wallet_now)}")
    if limits.max_per_tx_e6 < want:
        causes.append(f"per-transaction cap {_usd(limits.max_per_tx_e6)}")
    if run.budget.day_left_e6 < want:
        causes.append(f"day budget: {_usd(run.budget.day_left_e6)} left of {_usd(limits.max_per_day_e6)}")
    if amount >= limits.min_action_e6 and amount > 0:
        run.budget.spend_top_up(payer, amount)
        run.emit(
            r,
            ActionKind.TOP_UP,
            amount_e6=amount,
            reason=f"{why}: top up {_usd(amount)} of {_usd(need)} needed to reach the target",
        )
        return max(0, remaining - amount)
    return remaining


def _step_move_margin(run: _Run, r: PositionRisk, remaining: int) -> int:
    """2. move margin from safe positions of the same owner (fresh prices only), largest source first."""
    if remaining <= 0 or run.stale(r):
        return remaining
    pos, limits, movable = r.position, run.limits, run.budget.movable_left_e6
    sources = [
        s for s in run.by_owner[_addr(pos.account)] if s.position.key != pos.key and movable.get(s.position.key, 0) > 0
    ]
    sources.sort(key=lambda s: (-movable[s.position.key], s.position.key))
    for s in sources:
        if remaining <= 0:
            break
        amount = min(max(remaining, limits.min_action_e6), movable[s.position.key], limits.max_per_tx_e6)
        if amount < limits.min_action_e6 or amount <= 0:
            continue
        run.budget.take_movable(s.position.key, amount)
        remaining = max(0, remaining - amount)
        run.summary[s.position.key].append(f"move_source(to {pos.market_id})")
        run.say(s, f"gives {_usd_short(amount)} to market {pos.market_id}")
        run.emit(
            r,
            ActionKind.MOVE_MARGIN,
            from_market_id=s.position.market_id,
            amount_e6=amount,
            reason=(
                f"wallet short: move {_usd(amount)} from market {s.position.market_id} "
                f"(breach probability {s.breach_probability:.2e}, keeps its target buffer) to "
                f"market {pos.market_id} (breach probability {r.breach_probability:.2%})"
            ),
        )
    return remaining


def _step_reduce_or_alert(run: _Run, r: PositionRisk, need: int, remaining: int) -> None:
    """3.-4. last resort: reduce size by the unfunded fraction of the target (opt-in), and alert the shortfall."""
    if remaining <= 0:
        return
    pos, limits = r.position, run.limits
    causes = run.causes.setdefault(pos.key, [])
    stale = run.stale(r)
    causes.append(
        "stale oracle: no move or size reduction on a stale price"
        if stale
        else "no other position of the owner has margin to spare"
    )
    if not stale and not limits.allow_reduce:
        causes.append("size reduction not allowed (limits.allow_reduce)")
    if pos.key in run.awaiting_approval:
        causes.append("manual approval threshold: planned actions wait for approval")
    funded = need - remaining
    equity_now = pos.equity_e6(r.price_e8)
    equity_target = r.required_collateral_e6 + pos.pnl_e6(r.price_e8) - pos.pending_fee_e6
    reduced = False
    if limits.allow_reduce and not run.stale(r) and equity_now + funded > 0 and equity_target > 0:
        delta = min(pos.size_e18, -(-pos.size_e18 * remaining // equity_target))
        if notional_e6(delta, r.price_e8) >= limits.min_action_e6 and delta > 0:
            reduced = True
            run.emit(
                r,
                ActionKind.REDUCE_SIZE,
                size_delta_e18=delta,
                reason=(
                    f"collateral short by {_usd(remaining)} after top-ups and moves: reduce size by "
                    f"{delta / pos.size_e18:.1%} ({_usd(notional_e6(delta, r.price_e8))} notional) "
                    "so the remaining collateral meets the target"
                ),
            )
    outcome = (
        "size reduction planned" if reduced else ("cannot be saved by the keeper this cycle: " + ", ".join(causes))
    )
    # a shortfall only against the stress gap (breach probability at or below the trigger, not liquidatable)
    # is recorded in the decision but raises no alert: nothing is about to happen
    if r.liquidatable or r.breach_probability > limits.p_trigger or reduced:
        run.alert(
            r,
            (
                f"position short of its target buffer by {_usd(remaining)} (breach probability "
                f"{r.breach_probability:.2%}, liquidation price {r.liquidation_price_e8 / 1e8:,.2f}): funded "
                f"{_usd(funded)} of {_usd(need)}; {outcome}"
            ),
            amount_e6=remaining,
        )
    if r.liquidatable or r.breach_probability > limits.p_trigger or reduced:
        run.say(r, f"{_usd_short(remaining)} of {_usd_short(need)} unfunded, {outcome}")
    else:
        run.say(
            r,
            f"{_usd_short(remaining)} of {_usd_short(need)} short of the stress-gap target "
            f"({', '.join(causes)}); breach probability below the trigger: no alert",
        )
    run.short.add(pos.key)


def _step_release(run: _Run, r: PositionRisk) -> None:
    """Opt-in release of excess: only below p_release, only down to the p_target level, never while the
    owner has a position short of its target (the excess is kept where it can be moved)."""
    pos, limits = r.position, run.limits
    if run.watched(r) or run.stale(r) or r.breach_probability >= limits.p_release or r.excess_e6 <= 0:
        return
    if any(o.position.key in run.short for o in run.by_owner[_addr(pos.account)]):
        run.say(r, "excess kept: another position of the owner is short of its target")
        return
    amount = min(r.excess_e6, run.budget.movable_left_e6[pos.key], limits.max_per_tx_e6)
    if amount < limits.min_action_e6 or amount <= 0:
        return
    run.budget.take_movable(pos.key, amount)
    run.emit(
        r,
        ActionKind.RELEASE,
        amount_e6=amount,
        reason=(
            f"breach probability {r.breach_probability:.1e} is below the release band "
            f"{limits.p_release:.0e}: return {_usd(amount)} to the owner, keeping the target buffer"
        ),
    )
    run.say(r, f"release {_usd_short(amount)} to the owner, keeping the target buffer")


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

    wallets: dict[str, int] = {}
    for r in ordered:
        payer = state.payer_of(r.position.account)
        wallets.setdefault(payer, state.wallet_of(payer))
    budget = Budget(
        wallet_left_e6=wallets,
        day_left_e6=max(0, limits.max_per_day_e6 - state.spent_today_e6),
        movable_left_e6={r.position.key: movable_e6(r, state, limits) for r in ordered},
    )
    by_owner: dict[str, list[PositionRisk]] = {}
    for r in ordered:
        by_owner.setdefault(_addr(r.position.account), []).append(r)
    run = _Run(state, limits, budget, by_owner, summary={r.position.key: [] for r in ordered})

    # endangered positions, highest expected loss first (breach probability x notional)
    targets = sorted(
        (r for r in ordered if is_endangered(r, limits.p_trigger)),
        key=lambda r: (-(r.breach_probability * notional_e6(r.position.size_e18, r.price_e8)), r.position.key),
    )
    for r in targets:
        if run.stale(r):
            run.alert(
                r, f"oracle price of market {r.position.market_id} is stale: treated as danger, no release or move"
            )
        need = need_e6(r)
        remaining = _step_top_up(run, r, need, need)
        remaining = _step_move_margin(run, r, remaining)
        _step_reduce_or_alert(run, r, need, remaining)

    # stale-price positions that are not endangered: still alert, never release
    for r in ordered:
        if run.stale(r) and not is_endangered(r, limits.p_trigger):
            run.alert(r, f"oracle price of market {r.position.market_id} is stale: no release or move until it updates")

    if limits.allow_release:
        for r in ordered:
            _step_release(run, r)

    decisions = tuple(_decision(run, r) for r in ordered)
    return Plan(actions=tuple(run.actions), decisions=decisions)


def band_of(r: PositionRisk, p_trigger: float, p_release: float) -> str:
    """``trigger`` (endangered), ``release`` (below the release band) or ``hold``."""
    if is_endangered(r, p_trigger):
        return "trigger"
    return "release" if r.breach_probability < p_release else "hold"


def _condition_words(r: PositionRisk, band: str, market: Market, limits: PlanLimits) -> str:
    """The first half of a decision's reason: where the position stands, in the trader's words."""
    p = r.breach_probability
    if r.liquidatable:
        return (
            f"liquidatable now (equity {_usd_short(r.position.equity_e6(r.price_e8))} < maintenance "
            f"{_usd_short(r.position.maintenance_margin_e6(market, r.price_e8))})"
        )
    within = f"within {_duration(r.horizon_s)}"
    if band == "trigger" and p > limits.p_trigger:
        return f"breach {p:.1e} > trigger {limits.p_trigger:.0e} {within}"
    if band == "trigger":
        return (
            f"log distance {r.log_distance:.3f} to liquidation is inside the stress gap {r.stress_gap:.3f} "
            f"(one oracle gap would liquidate; breach {p:.1e} {within})"
        )
    if band == "release":
        return f"breach {p:.1e} < release {limits.p_release:.0e} {within}"
    return f"breach {p:.1e} <= trigger {limits.p_trigger:.0e} {within}"


def _target_words(r: PositionRisk, limits: PlanLimits) -> str:
    if r.stress_bound:
        return f"a log distance of {r.required_distance:.3f} (the stress gap {r.stress_gap:.3f} with headroom)"
    return f"{limits.p_target:.0e}"


def _decision(run: _Run, r: PositionRisk) -> Decision:
    pos, limits = r.position, run.limits
    market = run.state.markets[pos.market_id]
    band = band_of(r, limits.p_trigger, limits.p_release)
    key = pos.key
    need = need_e6(r) if band == "trigger" else 0
    topped = run.topped_up.get(key, 0)
    words = list(run.said.get(key, []))
    stale = run.stale(r)
    if topped:
        words.insert(0, f"top up {_usd_short(topped)} to reach {_target_words(r, limits)}")
    moved_in = sum(
        a.amount_e6
        for a in run.actions
        if a.kind is ActionKind.MOVE_MARGIN and not a.needs_approval and (a.account.lower(), a.market_id) == key
    )
    if moved_in:
        words.insert(1 if topped else 0, f"move {_usd_short(moved_in)} in from the owner's safer positions")
    if stale:
        words.insert(0, "oracle price stale (no release or move until it updates)")
    if not words or (stale and len(words) == 1):
        if band == "release" and not limits.allow_release:
            words.append("hold (release is off)")
        elif band == "release" and r.excess_e6 <= 0:
            words.append("hold (no excess worth a release)")
        else:
            words.append("hold")
    return Decision(
        account=pos.account,
        market_id=pos.market_id,
        symbol=market.symbol,
        side=pos.side.value,
        size_e18=pos.size_e18,
        collateral_e6=pos.collateral_e6,
        price_e8=r.price_e8,
        price_stale=stale,
        sigma_annual=r.sigma_annual,
        horizon_s=r.horizon_s,
        breach_probability=r.breach_probability,
        log_distance=r.log_distance,
        liquidation_price_e8=r.liquidation_price_e8,
        required_collateral_e6=r.required_collateral_e6,
        need_e6=need,
        top_up_e6=topped,
        excess_e6=r.excess_e6,
        liquidatable=r.liquidatable,
        band=band,
        action="+".join(run.summary[key]) if run.summary[key] else "none",
        reason=f"{_condition_words(r, band, market, limits)}: {'; '.join(words)}",
        short_causes=tuple(run.causes.get(key, ())) if key in run.short else (),
    )


def awaiting_decision(r: PositionRisk, state: BookState, limits: PlanLimits, tx_state: str) -> Decision:
    """The decision on a position whose previous transaction is still open: nothing new until it is final."""
    key = r.position.key
    run = _Run(
        state,
        limits,
        Budget({}, 0, {}),
        {},
        summary={key: [f"awaiting_tx:{tx_state}"]},
        said={key: [f"a transaction is still open ({tx_state}): no new action until it is final"]},
    )
    return _decision(run, r)
