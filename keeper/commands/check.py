"""``keeper check`` (one cycle, prints the plan) and ``keeper status`` (the book, one row per position)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, cast

import typer
from rich.console import Console
from rich.table import Table

from keeper.cli import EXIT_INTERRUPTED
from keeper.commands._accounts_view import account_check_output, accounts_table, add_account_cost_estimates
from keeper.commands._common import CONFIG_OPTION, ENV_FILE_OPTION, load, service_class
from keeper.commands.risk import cost_estimate, fmt_costs
from keeper.redact import mask_data
from keeper.runtime.accounts_service import AccountCycleReport, AccountKeeperService
from keeper.runtime.config import SECRET_FIELDS
from keeper.runtime.service import CycleReport, KeeperService


def _fmt_p(p: float) -> str:
    return "1" if p >= 1 else f"{p:.2e}"


def position_rows(report: CycleReport, service: KeeperService) -> list[dict]:
    by_key = {d.key: d for d in report.plan.decisions}
    rows = []
    for r in report.risks:
        p = r.position
        market = service.adapter.known_markets()[p.market_id]
        d = by_key[p.key]
        rows.append(
            {
                "account": p.account,
                "market": market.symbol,
                "market_id": p.market_id,
                "side": p.side.value,
                "size": p.size_e18 / 1e18,
                "collateral": p.collateral_e6 / 1e6,
                "price": r.price_e8 / 1e8,
                "liquidation_price": r.liquidation_price_e8 / 1e8,
                "log_distance": r.log_distance,
                "sigma_annual": r.sigma_annual,
                "breach_probability": r.breach_probability,
                "buffer_target": r.required_collateral_e6 / 1e6,
                "suggested_action": d.action,
                "band": d.band,
                "reason": d.reason,
                "liquidatable": r.liquidatable,
            }
        )
    return rows


def add_cost_estimates(rows: list[dict], report: CycleReport, service: KeeperService) -> dict[str, float]:
    """Each row's ``cost_usd_per_year``: what protecting the position is expected to cost a year at the replay's
    gas presets and at the chain's own gas price now (``chain``), with ``risk.capital_rate_annual`` on idle
    collateral (:func:`keeper.commands.risk.cost_estimate`, the calculator's estimate). Returns the gas prices
    (gwei) by name."""
    from keeper.replay.cost import DEFAULT_GAS_PRESETS_GWEI

    gas_prices_gwei = dict(DEFAULT_GAS_PRESETS_GWEI)
    gas_price_wei = service.gas_price_wei()
    if gas_price_wei is not None:
        gas_prices_gwei["chain"] = gas_price_wei / 1e9
    native_usd = service.native_usd_e8() / 1e8
    markets = service.adapter.known_markets()
    for row, r in zip(rows, report.risks, strict=True):
        p, market = r.position, markets[r.position.market_id]
        costs = cost_estimate(
            policy=service.policy,
            is_long=p.is_long,
            size=p.size_e18 / 1e18,
            entry=p.entry_price_e8 / 1e8,
            collateral=p.collateral_e6 / 1e6,
            price=r.price_e8 / 1e8,
            maintenance=market.maintenance_margin_ratio,
            fee_rate=market.fee_rate_annual,
            sigma=r.sigma_annual,
            horizon_s=r.horizon_s,
            stress_gap=r.stress_gap,
            native_usd=native_usd,
            capital_rate=service.config.risk.capital_rate_annual,
            gas_prices_gwei=gas_prices_gwei,
        )
        row["cost_usd_per_year"] = {name: c["usd_per_year"] for name, c in costs.items()}
    return gas_prices_gwei


def status_table(rows: list[dict]) -> Table:
    t = Table(title="positions")
    cols = ["account", "market", "side", "size", "collateral", "liq. price", "ln(P/liq)", "sigma", "breach p"]
    cols += ["buffer target", "action"]
    with_costs = bool(rows) and "cost_usd_per_year" in rows[0]
    if with_costs:
        cols.append("protection $/yr " + " / ".join(rows[0]["cost_usd_per_year"]))
    for col in cols:
        t.add_column(col, justify="left" if col in ("account", "action") else "right")
    for r in rows:
        costs = [fmt_costs(r["cost_usd_per_year"])] if with_costs else []
        t.add_row(
            r["account"][:10] + "…",
            r["market"],
            r["side"],
            f"{r['size']:.4f}",
            f"{r['collateral']:,.2f}",
            f"{r['liquidation_price']:,.2f}",
            f"{r['log_distance']:.4f}",
            f"{r['sigma_annual']:.0%}",
            _fmt_p(r["breach_probability"]),
            f"{r['buffer_target']:,.2f}",
            r["suggested_action"],
            *costs,
        )
    return t


def plan_table(report: CycleReport) -> Table:
    t = Table(title=f"plan at block {report.block_number}")
    for col in ("action", "account", "market", "amount (USD)", "urgent", "approval", "reason"):
        t.add_column(col)
    for a in report.plan.actions:
        src = f"{a.from_market_id}→" if a.from_market_id is not None else ""
        t.add_row(
            a.kind.value,
            a.account[:10] + "…",
            f"{src}{a.market_id}",
            f"{a.amount_e6 / 1e6:,.2f}",
            "yes" if a.urgent else "",
            "needed" if a.needs_approval else "",
            a.reason,
        )
    return t


def masked_json(data: Any) -> str:
    """``data`` as one JSON line with secrets masked (hash fields keep their 32-byte hex: they are public)."""
    return json.dumps(mask_data(data, secret_names=SECRET_FIELDS), default=str)


def one_cycle(
    config: Path | None, env_file: Path | None, *, execute: bool, on_service: Any = None
) -> tuple[KeeperService, CycleReport]:
    cfg = load(config, env_file, log_level="warning")
    service = service_class(cfg.protocol.name).from_config(cfg, execute=execute, send_alerts=execute)
    if on_service is not None:
        on_service(service)
    service.start()
    report = service.cycle(execute=execute)
    if execute and service.txm is not None:
        for sent in report.sent:
            if "intent" in sent:
                rec = service.txm.wait(sent["intent"], timeout_s=120)
                # a send still pending keeps the hash it was broadcast with (rec.tx_hash is set once mined)
                sent.update(state=rec.state, tx_hash=rec.tx_hash or sent.get("tx_hash"), block=rec.block_number)
    return service, report


def journaled_since(service: KeeperService, since_s: float) -> list[dict]:
    """Every intent this process journaled since ``since_s``: state, nonce, and each signed attempt's hash."""
    out = []
    for rec in service.journal.intents_since(since_s):
        attempts = service.journal.attempts(rec.id)
        out.append(
            {
                "intent": rec.id,
                "key": rec.idempotency_key,
                "lane": rec.lane,
                "state": rec.state,
                "pending": rec.is_open,
                "nonce": rec.nonce,
                "tx_hash": rec.tx_hash or (attempts[-1].tx_hash if attempts else None),
                "attempts": [
                    {
                        "kind": a.kind,
                        "nonce": a.nonce,
                        "tx_hash": a.tx_hash,
                        "broadcast": a.sent_at is not None,
                        "error": a.error,
                    }
                    for a in attempts
                ],
            }
        )
    return out


def report_interrupt(service: KeeperService | None, since_s: float, *, as_json: bool) -> None:
    """After Ctrl-C: print what was sent and what is still pending (from the journal, the record of every send)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the report finish; the process exits right after
    intents = [] if service is None else journaled_since(service, since_s)
    pending = [i for i in intents if i["pending"]]
    if as_json:
        print(masked_json({"interrupted": True, "executed": True, "sent": intents, "pending": pending}))
        return
    console = Console(stderr=True)
    console.print(f"interrupted: {len(intents)} transaction intent(s) journaled, {len(pending)} still pending")
    for i in intents:
        hashes = (
            ", ".join(
                f"{a['tx_hash']} (nonce {a['nonce']}{'' if a['broadcast'] else ', not broadcast'})"
                for a in i["attempts"]
            )
            or "not signed"
        )
        console.print(
            f"  intent {i['intent']} {i['key']} [{i['lane']}]: {i['state']}"
            f"{' (pending)' if i['pending'] else ''}; {hashes}",
            soft_wrap=True,
            highlight=False,
        )
    if pending:
        console.print("pending transactions may still be mined: the next keeper run reconciles them from the journal")


def register(app: typer.Typer) -> None:
    @app.command()
    def check(
        config: Path = CONFIG_OPTION,
        env_file: Path = ENV_FILE_OPTION,
        execute: bool = typer.Option(False, "--execute", help="Send the planned transactions (default: dry run)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Run one cycle and print the plan; nothing is sent without --execute."""
        opened: list[KeeperService] = []
        since_s = 0.0

        def remember(service: KeeperService) -> None:
            nonlocal since_s
            opened.append(service)
            since_s = service.journal.clock()

        try:
            service, report = one_cycle(config, env_file, execute=execute, on_service=remember)
        except KeyboardInterrupt:
            if execute:
                report_interrupt(opened[0] if opened else None, since_s, as_json=as_json)
            if opened:
                opened[0].close()
            raise typer.Exit(EXIT_INTERRUPTED) from None
        try:
            if isinstance(report, AccountCycleReport):
                out = account_check_output(report, executed=execute)
                add_account_cost_estimates(out, report, cast(AccountKeeperService, service))
                if as_json:
                    print(masked_json(out))
                    return
                Console().print(accounts_table(out))
                if report.outcome is not None and report.outcome.onchain_actions and not execute:
                    Console().print("dry run: nothing was sent (use --execute to send)")
                return
            rows = position_rows(report, service)
            out = {
                "block": report.block_number,
                "executed": execute,
                "positions": rows,
                "actions": [
                    {
                        "kind": a.kind.value,
                        "account": a.account,
                        "market_id": a.market_id,
                        "from_market_id": a.from_market_id,
                        "amount_e6": a.amount_e6,
                        "size_delta_e18": a.size_delta_e18,
                        "urgent": a.urgent,
                        "needs_approval": a.needs_approval,
                        "reason": a.reason,
                    }
                    for a in report.plan.actions
                ],
                "sent": report.sent,
                "not_sent": report.skipped,
                "wallet_e6": report.wallet_e6,
                "next_check_s": report.next_interval_s,
            }
            if as_json:
                print(masked_json(out))
                return
            console = Console()
            console.print(status_table(rows))
            console.print(plan_table(report) if report.plan.actions else "plan: nothing to do")
            for s in report.sent:
                console.print(
                    f"sent {s['action']} {s['amount_e6'] / 1e6:,.2f} USD: {s.get('state')} {s.get('tx_hash')}"
                    f" (nonce {s.get('nonce')})"
                )
            if report.plan.onchain_actions and not execute:
                console.print("dry run: nothing was sent (use --execute to send)")
        finally:
            service.close()

    @app.command()
    def status(
        config: Path = CONFIG_OPTION,
        env_file: Path = ENV_FILE_OPTION,
        as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
    ) -> None:
        """Table of watched positions: liquidation price, distance, sigma, breach probability, buffer target."""
        service, report = one_cycle(config, env_file, execute=False)
        try:
            if isinstance(report, AccountCycleReport):
                out = account_check_output(report, executed=False)
                add_account_cost_estimates(out, report, cast(AccountKeeperService, service))
                if as_json:
                    print(masked_json(out))
                else:
                    Console().print(accounts_table(out))
                return
            rows = position_rows(report, service)
            gas_prices_gwei = add_cost_estimates(rows, report, service)
            if as_json:
                print(
                    masked_json({"block": report.block_number, "gas_prices_gwei": gas_prices_gwei, "positions": rows})
                )
            else:
                Console().print(status_table(rows))
        finally:
            service.close()
