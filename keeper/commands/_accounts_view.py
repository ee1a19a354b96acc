"""What ``keeper check`` / ``keeper status`` show for margin accounts (Aave v3, Perp v2): one row per account,
with its markets (exposure per asset, and what each price is where it is not the oracle's: Perp's mark)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rich.table import Table

from keeper.commands.risk import cost_per_year_by_gas_price, fmt_costs
from keeper.risk.accounts import AccountRisk, assess_accounts
from keeper.risk.policy import CostBands
from keeper.runtime.accounts_service import AccountCycleReport, AccountKeeperService


def add_account_cost_estimates(
    out: dict[str, Any], report: AccountCycleReport, service: AccountKeeperService
) -> dict[str, float]:
    """Each account row's ``cost_usd_per_year``: what protecting the account is expected to cost a year at the
    replay's gas presets and at the chain's gas price now (``chain``), one action at the protocol's gas
    (``service.top_up_gas_used``: measured, then the last mined one's) and ``risk.capital_rate_annual`` on the
    idle margin: the positions' model (:func:`keeper.commands.risk.cost_per_year_by_gas_price`) with the
    account's own numbers, the cost bands of :func:`keeper.risk.accounts.account_bands` at each price on its
    dominant factor (or the screen's equivalent exposure). 0 for an account without debt (nothing to protect),
    -1 where the bands are undefined. Returns the gas prices (gwei) by name; sets ``out["gas_prices_gwei"]``."""
    from keeper.replay.cost import DEFAULT_GAS_PRESETS_GWEI

    gas_prices_gwei = dict(DEFAULT_GAS_PRESETS_GWEI)
    gas_price_wei = service.gas_price_wei()
    if gas_price_wei is not None:
        gas_prices_gwei["chain"] = gas_price_wei / 1e9
    out["gas_prices_gwei"] = gas_prices_gwei
    outcome, book = report.outcome, report.book
    risks = {r.account.lower(): r for r in outcome.risks} if outcome is not None else {}
    views = {a.account.lower(): a for a in book.accounts} if book is not None else {}
    interval_s = report.decision_interval_s or service.check_interval_s
    priced = {k: r for k, r in risks.items() if k in views and r.has_debt}
    at_bands: dict[CostBands, dict[str, AccountRisk]] = {}  # the whole book assessed once per gas price

    def book_at(bands: CostBands) -> dict[str, AccountRisk]:
        if bands not in at_bands and book is not None:
            assessed = assess_accounts(
                [views[k] for k in priced],
                book.prices_e8,
                report.asset_sigmas,
                dataclasses.replace(service.policy, cost_bands=bands),
                interval_s,
                stress_gaps=report.stress_gaps,
                correlation=report.correlation,
                liquidatable={k: r.liquidatable for k, r in priced.items()},
            )
            at_bands[bands] = {r.account.lower(): r for r in assessed}
        return at_bands[bands]

    for row in out["accounts"]:
        key = row["account"].lower()
        risk = priced.get(key)
        if risk is None:
            row["cost_usd_per_year"] = dict.fromkeys(gas_prices_gwei, 0.0)
            continue
        if not (math.isfinite(risk.band_sigma_annual) and risk.band_notional_usd > 0):
            row["cost_usd_per_year"] = dict.fromkeys(gas_prices_gwei, -1.0)
            continue

        def bands_at(bands: CostBands, key: str = key) -> tuple[float, float, float, dict[str, float]]:
            r = book_at(bands)[key]
            return r.trigger_distance, r.restore_distance, r.release_distance, {}

        costs = cost_per_year_by_gas_price(
            bands_at,
            gas_per_tx=service.top_up_gas_used,
            sigma_annual=risk.band_sigma_annual,
            notional_usd=risk.band_notional_usd,
            native_usd=service.native_usd_e8() / 1e8,
            capital_rate=service.config.risk.capital_rate_annual,
            gas_prices_gwei=gas_prices_gwei,
        )
        row["cost_usd_per_year"] = {name: c["usd_per_year"] for name, c in costs.items()}
    return gas_prices_gwei


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
    rows = out["accounts"]
    with_costs = bool(rows) and "cost_usd_per_year" in rows[0]
    cost_col = "protection $/yr " + " / ".join(rows[0]["cost_usd_per_year"]) if with_costs else ""
    cols = ["account", "HF", "debt", "dominant", "liq. price", "breach p", "method", "action", "reason"]
    for col in cols + ([cost_col] if with_costs else []):
        t.add_column(col, justify="right" if col in ("HF", "debt", "liq. price", "breach p", cost_col) else "left")
    for r in rows:
        costs = [fmt_costs(r["cost_usd_per_year"])] if with_costs else []
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
            *costs,
        )
    return t
