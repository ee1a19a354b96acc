"""The keeper's one decision function: positions, prices and parameters in, verdicts and a plan out (pure core).

:func:`decide` is the only place where a position's breach probability, required collateral and action
are put together. The daemon (:meth:`keeper.runtime.service.KeeperService.decide`, hence the on-chain replay,
which runs real daemons), the fast replay (:class:`keeper.replay.policies.RiskSized`) and ``keeper risk``
all call it, so the same position and parameters get the same answer everywhere
(``tests/test_decision.py`` checks the three callers against each other).

It runs the risk engine (:func:`keeper.risk.policy.assess_positions`) on every position that has a
price, then the planner (:func:`keeper.planner.plan_actions`) on those without an open transaction, and
returns one :class:`keeper.domain.Decision` per position, each with its reason in the trader's words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from keeper.domain import Decision, Plan, Position
from keeper.planner import BookState, PlanLimits, awaiting_decision, plan_actions
from keeper.risk.gaps import SideGaps
from keeper.risk.policy import PositionRisk, RiskPolicy, assess_positions

__all__ = ["BookDecision", "decide"]

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
