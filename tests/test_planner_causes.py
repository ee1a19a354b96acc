"""Why a position stays short (issue 10, finding 7): the planner names the cause in the "cannot be saved" alert
and in the decision's ``short_causes``, and raises no such alert for a shortfall against the stress gap alone."""

from __future__ import annotations

from dataclasses import replace

from test_planner import ALICE, USD, limits, pos, risk, state

from keeper.domain import ActionKind
from keeper.planner import plan_actions


def _short_alerts(plan):
    return [a for a in plan.actions if a.kind is ActionKind.ALERT and "cannot be saved" in a.reason]


def _causes(plan):
    return plan.decisions[0].short_causes


class TestShortCauses:
    def test_empty_wallet_is_named(self):
        """An endangered position with an empty wallet: the alert says "wallet empty"."""
        plan = plan_actions(state(wallets={ALICE.lower(): 0}), [risk(pos(collateral_usd=300), 0.05, 900)], limits())
        (alert,) = _short_alerts(plan)
        assert "wallet empty" in alert.reason and "wallet empty" in _causes(plan)

    def test_per_transaction_cap_is_named(self):
        """A need above max_per_tx with a full wallet: the cause is the per-transaction cap, not the wallet."""
        plan = plan_actions(state(100_000), [risk(pos(collateral_usd=300), 0.05, 9_300)], limits())
        (alert,) = _short_alerts(plan)
        assert "per-transaction cap $5,000.00" in alert.reason
        assert not any(c.startswith("wallet") for c in _causes(plan))

    def test_day_budget_is_named(self):
        """With $19,900 of $20,000 spent today the cause names the $100 left of the day budget."""
        plan = plan_actions(state(100_000, spent_usd=19_900), [risk(pos(collateral_usd=300), 0.05, 1_300)], limits())
        (alert,) = _short_alerts(plan)
        assert "day budget: $100.00 left of $20,000.00" in alert.reason

    def test_stale_oracle_is_named(self):
        """On a stale price with an empty wallet the causes include the stale oracle (no move, no reduction)."""
        plan = plan_actions(state(wallets={ALICE.lower(): 0}, stale={0}), [risk(pos(), 0.05, 900)], limits())
        (alert,) = _short_alerts(plan)
        assert "stale oracle" in alert.reason

    def test_approval_threshold_is_named(self):
        """A top-up above the manual-approval threshold that still leaves a gap names the approval threshold."""
        plan = plan_actions(
            state(100_000), [risk(pos(collateral_usd=300), 0.05, 9_300)], limits(manual_approval_above_e6=1_000 * USD)
        )
        (alert,) = _short_alerts(plan)
        assert "manual approval threshold" in alert.reason

    def test_stress_only_shortfall_raises_no_alert(self):
        """Breach probability 8.7e-10 but inside the stress gap, wallet empty: no "cannot be saved" alert, and the
        decision still records why the stress buffer is not funded."""
        r = replace(risk(pos(collateral_usd=300), 8.7e-10, 900), stress_breach=True, top_up_e6=600 * USD)
        plan = plan_actions(state(wallets={ALICE.lower(): 0}), [r], limits())
        assert _short_alerts(plan) == [] and not [a for a in plan.actions if a.kind is ActionKind.ALERT]
        assert "wallet empty" in _causes(plan)
