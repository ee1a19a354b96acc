"""What ``keeper check`` / ``keeper status`` show for margin accounts (Aave v3, Perp v2): one row per account,
with its markets (exposure per asset, and what each price is where it is not the oracle's: Perp's mark)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from keeper.runtime.accounts_service import AccountCycleReport


def account_check_output(report: AccountCycleReport, *, executed: bool) -> dict[str, Any]:
    """The JSON of one account cycle: decisions (with the risk inputs), actions, what was sent."""
    outcome = report.outcome
    decisions = outcome.decisions if outcome is not None else ()
    risks = {r.account.lower(): r for r in outcome.risks} if outcome is not None else {}
    name = report.symbols.get
    rows = []
    for d in decisions:
        r = risks.get(d.key)
        rows.append(
            {
                "account": d.account,
                "health_factor": d.health_wad / 1e18 if d.health_wad else None,
                "debt_usd": round(d.debt_usd, 2),
                "margin_excess_usd": round(d.margin_excess_usd, 2),
                "dominant_asset": name(d.dominant_asset, d.dominant_asset),
                "liquidation_price": d.liquidation_price_e8 / 1e8,
                "log_distance": d.log_distance,
                "breach_probability": d.breach_probability,
                "vega": r.vega if r is not None else 0.0,  # d breach_probability / d sigma, per account
                "method": d.method,
                "stale_assets": [name(a, a) for a in d.stale_assets],
                "band": d.band,
                "action": d.action,
                "asset": name(d.asset, d.asset),
                "amount": d.amount,
                "cost_usd": d.cost_e6 / 1e6,
                "reason": d.reason,
                "liquidatable": bool(r.liquidatable) if r is not None else False,
                "markets": {
                    name(a, a): {"exposure_usd": round(g, 2), **report.price_basis.get(a, {})}
                    for a, g in (r.gradient_usd.items() if r is not None else ())
                },
            }
        )
    actions = [
        {
            "kind": a.kind.value,
            "account": a.account,
            "asset": name(a.asset, a.asset),
            "amount": a.amount,
            "cost_usd": a.cost_e6 / 1e6,
            "urgent": a.urgent,
            "needs_approval": a.needs_approval,
            "reason": a.reason,
        }
        for a in (outcome.actions if outcome is not None else ())
    ]
    return {
        "block": report.block_number,
        "executed": executed,
        "accounts": rows,
        "actions": actions,
        "sent": report.sent,
        "not_sent": report.skipped,
        "wallet": {name(a, a): str(q) for a, q in report.wallet.items()},
        "stale_sources": {name(a, a): age for a, age in report.stale.items()},
        "next_check_s": report.next_interval_s,
    }


def accounts_table(out: dict[str, Any]) -> Table:
    t = Table(title=f"accounts at block {out['block']}")
    for col in ("account", "HF", "debt", "dominant", "liq. price", "breach p", "method", "action", "reason"):
        t.add_column(col, justify="right" if col in ("HF", "debt", "liq. price", "breach p") else "left")
    for r in out["accounts"]:
        t.add_row(
            r["account"][:10] + "…",
            f"{r['health_factor']:.4f}" if r["health_factor"] is not None else "-",
            f"{r['debt_usd']:,.2f}",
            r["dominant_asset"][:10],
            f"{r['liquidation_price']:,.2f}",
            "1" if r["breach_probability"] >= 1 else f"{r['breach_probability']:.2e}",
            r["method"],
            r["action"],
            r["reason"],
        )
    return t
