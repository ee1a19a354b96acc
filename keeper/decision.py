"""The keeper's one decision function: positions, prices and parameters in, verdicts and a plan out (pure core).

:func:`decide` is the only place where a position's breach probability, required collateral and action
are put together. The daemon (:meth:`keeper.runtime.service.KeeperService.decide`, hence the on-chain replay,
which runs real daemons), the fast replay (:class:`keeper.replay.policies.RiskSized`) and ``keeper risk``
all call it, so the same position and parameters get the same answer everywhere
(``tests/test_decision.py`` checks the three callers against each other).

It runs the risk engine (:func:`keeper.risk.policy.assess_positions`) on every position that has a
price, then the planner (:func:`keeper.planner.plan_actions`) on those without an open transaction, and
returns one :class:`keeper.domain.Decision` per position, each with its reason in the trader's words.

:func:`decide_accounts` is its twin for margin accounts (several assets per account: Aave v3): the account
risk of :mod:`keeper.risk.accounts`, then, for each endangered account in order of expected loss, the option
the protocol's exact rules (:class:`keeper.accounts.base.AccountRules`) say is cheapest among those that keep
the account solvent at the move it must survive, given what the payer's wallet holds and within the
per-transaction and per-day caps (:class:`keeper.planner.PlanLimits`). It returns one frozen
:class:`keeper.domain.AccountDecision` per account; the daemon (:mod:`keeper.runtime.accounts_service`) and
the tests call it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from keeper.accounts.base import WALLET_FUNDED, AccountRules, ActionOption, MarginAccount
from keeper.domain import AccountAction, AccountActionKind, AccountDecision, Decision, Plan, Position
from keeper.planner import BookState, PlanLimits, awaiting_decision, plan_actions
from keeper.risk.accounts import AccountMonteCarlo, AccountRisk, assess_accounts, refine_with_monte_carlo
from keeper.risk.gaps import SideGaps
from keeper.risk.policy import PositionRisk, RiskPolicy, assess_positions

__all__ = ["AccountBookDecision", "AccountBookState", "BookDecision", "decide", "decide_accounts"]

StressGaps = Mapping[int, float | SideGaps | tuple[float, float]]


@dataclass(frozen=True, slots=True)
class BookDecision:
    """The outcome of :func:`decide`: the risk verdicts (every priced position) and the plan, whose
    ``decisions`` hold one :class:`Decision` per verdict in position-key order."""

    risks: tuple[PositionRisk, ...]
    plan: Plan

    def decision(self, account: str, market_id: int) -> Decision | None:
        key = (account.lower(), market_id)
        return next((d for d in self.plan.decisions if d.key == key), None)


def decide(
    state: BookState,
    positions: Sequence[Position],
    *,
    sigmas_annual: Mapping[int, float],
    policy: RiskPolicy,
    limits: PlanLimits,
    check_interval_s: float,
    now_s: int,
    stress_gaps: StressGaps | None = None,
    busy: Mapping[tuple[str, int], str] | None = None,
) -> BookDecision:
    """Assess every position whose market has a price in ``state.prices``, plan for those not in ``busy``.

    ``busy`` maps a position key to the state of its open transaction: such a position is assessed and
    explained ("awaiting_tx:<state>") but gets no new action until that transaction is final.
    ``sigmas_annual`` and ``stress_gaps`` are per market id (missing: the policy's fallbacks).
    """
    busy = busy or {}
    priced = [p for p in positions if p.market_id in state.prices]
    prices = {mid: r.price_e8 for mid, r in state.prices.items()}
    risks = assess_positions(priced, state.markets, prices, sigmas_annual, policy, check_interval_s, now_s, stress_gaps)
    plannable = [r for r in risks if r.position.key not in busy]
    plan = plan_actions(state, plannable, limits)
    waiting = [awaiting_decision(r, state, limits, busy[r.position.key]) for r in risks if r.position.key in busy]
    if waiting:
        decisions = tuple(sorted((*plan.decisions, *waiting), key=lambda d: d.key))
        plan = Plan(actions=plan.actions, decisions=decisions)
    return BookDecision(risks=tuple(sorted(risks, key=lambda r: r.position.key)), plan=plan)


# ---- margin accounts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountBookState:
    """What the account decision knows besides the accounts: the payer's wallet (asset -> native units), the
    day's spending so far (USD e6), stale price sources (asset -> age of its latest round, seconds), accounts
    that are only watched (alerts, never transactions), accounts with an open transaction (-> its state),
    and asset symbols for the reasons."""

    wallet: Mapping[str, int] = field(default_factory=dict)
    spent_today_e6: int = 0
    stale_assets: Mapping[str, int] = field(default_factory=dict)
    watch_only: frozenset[str] = frozenset()
    busy: Mapping[str, str] = field(default_factory=dict)
    symbols: Mapping[str, str] = field(default_factory=dict)
    decimals: Mapping[str, int] = field(default_factory=dict)  # asset -> token decimals (amounts in words)


@dataclass(frozen=True, slots=True)
class AccountBookDecision:
    """The outcome of :func:`decide_accounts`: risks and decisions in account order, actions in execution
    order (endangered accounts by expected loss)."""

    risks: tuple[AccountRisk, ...]
    decisions: tuple[AccountDecision, ...]
    actions: tuple[AccountAction, ...]

    def decision(self, account: str) -> AccountDecision | None:
        return next((d for d in self.decisions if d.key == account.lower()), None)

    @property
    def onchain_actions(self) -> tuple[AccountAction, ...]:
        return tuple(a for a in self.actions if a.kind is not AccountActionKind.ALERT and not a.needs_approval)


def _usd(x: float) -> str:
    return f"${x:,.2f}"


def _price(e8: int) -> str:
    return f"${e8 / 1e8:,.2f}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


@functools.lru_cache(maxsize=64)
def _trigger_words(cmp: str, p_trigger: float, horizon_s: float) -> str:
    """The part of the risk words every account of a book shares (formatted once, not once per account)."""
    return f"{cmp} trigger {p_trigger:.0e} within {_minutes(horizon_s)}"


def _risk_words(r: AccountRisk, state: AccountBookState, p_trigger: float) -> str:
    name = state.symbols.get(r.dominant_asset, r.dominant_asset)
    cmp = ">" if r.breach_probability > p_trigger else "<="
    words = f"breach {r.breach_probability:.1e} {_trigger_words(cmp, p_trigger, r.horizon_s)}"
    if r.liquidation_price_e8:
        words += f" ({name} liquidation price {_price(r.liquidation_price_e8)}"
        if math.isfinite(r.log_distance):
            falls = r.gradient_usd.get(r.dominant_asset, 0.0) > 0  # collateral: liquidated by a fall
            move = -math.expm1(-r.log_distance) if falls else math.expm1(r.log_distance)
            words += f", {'a fall' if falls else 'a rise'} of {move:.1%})"
        else:
            words += ")"
    if r.method != "closed_form":
        words += f" [{r.method}]"
    if r.stress_breach and not r.liquidatable:
        gaps = ", ".join(
            f"{state.symbols.get(a, a)} {math.expm1(-g if r.gradient_usd.get(a, 0.0) > 0 else g):+.1%}"
            for a, g in sorted(r.stress_gaps.items())
        )
        words += f"; one oracle-round gap ({gaps}) would liquidate it" if gaps else "; inside its stress gap"
    return words


def _survive_words(r: AccountRisk, prices_e8: Mapping[str, int], state: AccountBookState) -> str:
    moves = []
    for a, p in sorted(r.survive_prices_e8.items()):
        if p != prices_e8.get(a):
            moves.append(f"{state.symbols.get(a, a)} {p / prices_e8[a] - 1:+.1%}")
    return ", ".join(moves) or "today's prices"


_FIGURE = re.compile(r"\$?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?%?")


@functools.lru_cache(maxsize=4096)
def _without_figures(words: str) -> str:
    """``words`` with every figure (amount, price, percentage) as ``#``: a cause that stays the same while the
    figures move ("supply USDC: needs #, over the cap of #")."""
    return _FIGURE.sub("#", words)


def _choose(options: Sequence[ActionOption]) -> ActionOption | None:
    """Cheapest among the options that reach the target; else the one that leaves the account safest at the
    move to survive (most risk removed within the caps), cheaper first on a tie."""
    full = [o for o in options if o.reaches_target]
    if full:
        return min(full, key=lambda o: (o.cost_e6, o.kind, o.asset))
    return max(options, key=lambda o: (o.health_after, -o.cost_e6, o.kind, o.asset), default=None)


WAD = 10**18  # the account rules' health figures: below it, liquidatable


def _release(
    r: AccountRisk,
    rules: AccountRules,
    state: AccountBookState,
    limits: PlanLimits,
    words: str,
    stale: tuple[str, ...],
    prices_e8: Mapping[str, int],
    policy: RiskPolicy,
) -> tuple[ActionOption, str] | str | None:
    """A release for a safe account: only below ``p_release`` (cost-aware: beyond the cost band's release level),
    with ``limits.allow_release``, fresh prices, no
    open transaction, not watch-only, only when it also survives a move stretched by the release headroom, at
    least ``limits.min_action_e6``, and only what still survives the move itself (``rules.release``: the
    protocol's withdraw rule and the owner's key). After it the account no longer survives the stretched move,
    so the next cycle holds; it still survives the move, so no top-up is due. Declined for an account below
    ``p_release``: why, for the hold's reason (releases not enabled, not the owner's key, nothing to release)."""
    key = r.account.lower()
    cost_aware = policy.cost_bands is not None
    if not r.has_debt:
        return None
    # cost-aware: the release band of the cost bands (the release lands at the restore level, at least the breach
    # target, whatever p_release says), as for positions; otherwise below p_release
    if not (r.band_distance >= r.release_distance if cost_aware else r.breach_probability < limits.p_release):
        return None
    if not limits.allow_release:
        return "no release: releases are not enabled (limits.allow_release = false)"
    if stale or key in state.busy or key in state.watch_only or limits.alert_only:
        return None
    refused = rules.release_refusal(r.account)
    if refused is not None:
        return f"no release: {refused}"
    # hysteresis, as the positions' bands: release only when the account also survives the move to survive
    # stretched by (1 + release_headroom) / (1 + stress_headroom) in log terms (cost-aware: by the release level
    # over the restore level the move is sized to), then down to the move itself
    stretch = (
        r.release_distance / r.restore_distance
        if cost_aware
        else (1.0 + policy.release_headroom) / (1.0 + policy.stress_headroom)
    )
    wider = {
        a: max(1, int(prices_e8[a] * math.exp(stretch * math.log(p / prices_e8[a]))))
        for a, p in r.survive_prices_e8.items()
        if prices_e8.get(a, 0) > 0 and p > 0
    }
    if rules.health_at(r.account, wider) < WAD:
        return None
    option = rules.release(r.account, r.survive_prices_e8, limits.max_per_tx_e6)
    if option is None or option.amount <= 0:
        return "no release: nothing the protocol's withdraw rule and the move to survive leave to take"
    if option.cost_e6 < limits.min_action_e6:
        return f"no release: {_usd(option.cost_e6 / 1e6)} is below the least action {_usd(limits.min_action_e6 / 1e6)}"
    name = state.symbols.get(option.asset, option.asset)
    dec = state.decimals.get(option.asset)
    units = f"{option.amount / 10**dec:,.6g}" if dec is not None else f"{option.amount} units of"
    verb = f" ({option.verb})" if option.verb and option.verb != "release" else ""
    text = (
        f"{words}, below release {limits.p_release:.0e}: release{verb} {units} {name} "
        f"({_usd(option.cost_e6 / 1e6)}) to the owner, still surviving {_survive_words(r, prices_e8, state)}"
    )
    return option, text


def decide_accounts(
    accounts: Sequence[MarginAccount],
    rules: AccountRules,
    state: AccountBookState,
    *,
    prices_e8: Mapping[str, int],
    sigmas_annual: Mapping[str, float],
    policy: RiskPolicy,
    limits: PlanLimits,
    check_interval_s: float,
    stress_gaps: Mapping[str, tuple[float, float]] | None = None,
    correlation: Mapping[tuple[str, str], float] | None = None,
    monte_carlo: AccountMonteCarlo | None = None,
) -> AccountBookDecision:
    """Assess every account, then decide for each one (pure, deterministic; see the module docstring).

    Bands: endangered (``trigger``) when the protocol says liquidatable, the breach probability is above
    ``limits.p_trigger``, a stress-gap move would liquidate, or a price source the account depends on is
    stale (a stale price is danger: the real price is unknown; supply and repay need no fresh price, so the
    action is still sent). Otherwise ``hold``. An endangered account gets the cheapest option that survives
    the move (:func:`_choose`), bounded by the wallet, ``limits.max_per_tx_e6`` and what is left of
    ``limits.max_per_day_e6``; an alert when none reaches the target (naming why: empty wallet, cap, frozen or
    paused reserve, isolation mode) or the account is watch-only; ``needs_approval`` above
    ``limits.manual_approval_above_e6``. ``monte_carlo``: the multi-factor accounts above ``p_release`` get
    the correlated fat-tailed Monte Carlo estimate instead of the screen's
    (:func:`keeper.risk.accounts.refine_with_monte_carlo`; pure: the generator is passed in).
    """
    risks = assess_accounts(
        accounts,
        prices_e8,
        sigmas_annual,
        policy,
        check_interval_s,
        stress_gaps=stress_gaps,
        correlation=correlation,
        liquidatable={a.account.lower(): rules.liquidatable(a.account) for a in accounts if a.legs},
    )
    by_acct = {a.account.lower(): a for a in accounts}
    if monte_carlo is not None:
        risks = refine_with_monte_carlo(
            risks,
            by_acct,
            prices_e8,
            sigmas_annual,
            policy,
            monte_carlo,
            correlation=correlation,
            p_floor=limits.p_release,
        )
    wallet = dict(state.wallet)
    day_left = max(0, limits.max_per_day_e6 - state.spent_today_e6)
    decisions: dict[str, AccountDecision] = {}
    actions: list[AccountAction] = []

    stale_by: dict[str, tuple[str, ...]] = {}

    def stale_of(r: AccountRisk) -> tuple[str, ...]:
        if not state.stale_assets:
            return ()
        key = r.account.lower()
        if key not in stale_by:
            held = {leg.price_key or leg.asset for leg in by_acct[key].legs}
            stale_by[key] = tuple(sorted(a for a in state.stale_assets if a in held))
        return stale_by[key]

    def endangered(r: AccountRisk) -> bool:
        return r.liquidatable or r.breach_probability > limits.p_trigger or r.stress_breach or bool(stale_of(r))

    def base(r: AccountRisk, band: str, action: str, reason: str, **kw: object) -> AccountDecision:
        return AccountDecision(
            protocol=r.protocol,
            account=r.account,
            band=band,
            action=action,
            reason=reason,
            breach_probability=r.breach_probability,
            method=r.method,
            dominant_asset=r.dominant_asset,
            liquidation_price_e8=r.liquidation_price_e8,
            log_distance=r.log_distance,
            margin_excess_usd=r.margin_excess_usd,
            debt_usd=r.debt_usd,
            horizon_s=r.horizon_s,
            health_wad=rules.health(r.account) if r.has_debt else 0,
            stale_assets=stale_of(r),
            **kw,  # type: ignore[arg-type]  # the AccountDecision fields, passed through
        )

    def alert(r: AccountRisk, text: str, urgent: bool, cause: tuple[str, ...]) -> AccountAction:
        return AccountAction(
            AccountActionKind.ALERT,
            r.account,
            reason=text,
            breach_probability=r.breach_probability,
            urgent=urgent,
            cause=cause,
        )

    def danger_of(r: AccountRisk, stale: tuple[str, ...]) -> tuple[str, ...]:
        """Why the account is endangered, without figures (the start of its alerts' ``cause``)."""
        return (
            *(("liquidatable",) if r.liquidatable else ()),
            *((f"stale price source: {', '.join(state.symbols.get(a, a) for a in stale)}",) if stale else ()),
            *(("breach above trigger",) if r.breach_probability > limits.p_trigger else ()),
            *(("a stress gap would liquidate",) if r.stress_breach else ()),
        )

    # endangered accounts by expected loss (probability x what a liquidation takes), ties by address
    keyed = [(r.account.lower(), r) for r in risks]  # (key, risk), each address lowered once
    danger = {k: endangered(r) for k, r in keyed}
    stake = {k: rules.value_at_stake_e6(r.account) if danger[k] else 0 for k, r in keyed}
    order = sorted(keyed, key=lambda kr: (-(kr[1].breach_probability * stake[kr[0]]), kr[0]))
    for key, r in order:
        words = _risk_words(r, state, limits.p_trigger)
        stale = stale_of(r)
        if stale:
            ages = ", ".join(f"{state.symbols.get(a, a)} {state.stale_assets[a] / 3600:.1f} h old" for a in stale)
            words = f"stale price source ({ages}) = danger; {words}"
        if r.liquidatable:
            words = f"LIQUIDATABLE now (health {rules.health(r.account) / 1e18:.4f}); {words}"
        if not danger[key]:
            released = _release(r, rules, state, limits, words, stale, prices_e8, policy)
            if not isinstance(released, tuple):
                held = f"{words}: hold" + (f" ({released})" if released else "")
                decisions[key] = base(r, "hold", "none", held if r.has_debt else "no debt: nothing to do")
                continue
            option, text = released
            actions.append(
                AccountAction(
                    AccountActionKind.RELEASE, r.account, option.asset, option.amount, option.cost_e6, text,
                    r.breach_probability,
                )
            )  # fmt: skip
            decisions[key] = base(
                r, "release", "release", text, asset=option.asset, amount=option.amount, cost_e6=option.cost_e6
            )
            continue
        if key in state.busy:
            decisions[key] = base(r, "awaiting_tx", f"awaiting_tx:{state.busy[key]}", f"{words}: a transaction is open")
            continue
        survive = _survive_words(r, prices_e8, state)
        urgent = r.liquidatable or r.breach_probability >= limits.urgent_probability
        if key in state.watch_only or limits.alert_only:
            why = "watch-only" if key in state.watch_only else "alert-only mode"
            text = f"{words}; must survive {survive}: {why}, alert only"
            actions.append(alert(r, text, urgent, (*danger_of(r, stale), why)))
            decisions[key] = base(r, "trigger", "alert", text)
            continue
        budget = min(limits.max_per_tx_e6, day_left)
        options, why_not = rules.options(r.account, r.survive_prices_e8, wallet, budget)
        chosen = _choose(options)
        causes = list(why_not) if chosen is None or not chosen.reaches_target else []
        if budget < limits.max_per_tx_e6:
            causes.append(f"day budget: {_usd(day_left / 1e6)} left of {_usd(limits.max_per_day_e6 / 1e6)}")
        if chosen is None:
            if causes:
                text = f"{words}; must survive {survive}: cannot act: " + "; ".join(causes)
                cause = (*danger_of(r, stale), "cannot act", *map(_without_figures, causes))
            else:  # endangered only by a stale source: the last known prices ask for nothing
                text = f"{words}: no supply or repay is needed at the last known prices; alert"
                cause = (*danger_of(r, stale), "nothing needed at the last known prices")
            actions.append(alert(r, text, urgent, cause))
            decisions[key] = base(r, "trigger", "alert", text, short_causes=tuple(causes), blocked=tuple(why_not))
            continue
        kind = AccountActionKind(chosen.kind)
        name = state.symbols.get(chosen.asset, chosen.asset)
        verb = chosen.verb or ("supply" if kind is AccountActionKind.ADD_COLLATERAL else "repay")
        dec = state.decimals.get(chosen.asset)
        units = f"{chosen.amount / 10**dec:,.6g}" if dec is not None else f"{chosen.amount} units of"
        what = f"{verb} {units} {name} ({_usd(chosen.cost_e6 / 1e6)})"
        goal = "to survive" if chosen.reaches_target else "toward surviving (short: " + "; ".join(causes) + ")"
        text = f"{words}: {what} {goal} {survive}"
        approval = limits.manual_approval_above_e6
        needs = approval is not None and chosen.cost_e6 > approval
        action = AccountAction(
            kind,
            r.account,
            chosen.asset,
            chosen.amount,
            chosen.cost_e6,
            text if not needs else f"manual approval needed: {text}",
            r.breach_probability,
            urgent,
            needs,
            (*danger_of(r, stale), f"manual approval: {kind.value} {name}") if needs else (),
        )
        actions.append(action)
        if not chosen.reaches_target:
            short = (*danger_of(r, stale), f"short: {kind.value} {name}", *map(_without_figures, causes))
            actions.append(alert(r, f"cannot reach the target: {text}", urgent, short))
        if not needs and chosen.kind in WALLET_FUNDED:
            wallet[chosen.asset] = wallet.get(chosen.asset, 0) - chosen.amount
            day_left -= chosen.cost_e6
        decisions[key] = base(
            r,
            "trigger",
            kind.value + ("(needs_approval)" if needs else ""),
            action.reason,
            asset=chosen.asset,
            amount=chosen.amount,
            cost_e6=chosen.cost_e6,
            short_causes=tuple(causes),
            blocked=tuple(why_not),
        )
    ordered = [decisions[k] for k in sorted(decisions)]  # by d.key: the keys they are filed under
    by_key = sorted(keyed, key=lambda kr: kr[0])
    return AccountBookDecision(tuple(r for _, r in by_key), tuple(ordered), tuple(actions))
