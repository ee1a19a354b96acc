"""``keeper stress``: the SPAN/Deribit-style scenario grid over the configured book."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import typer
from rich.console import Console
from rich.table import Table

from keeper.commands._common import CONFIG_OPTION, ENV_FILE_OPTION, load
from keeper.protocols import registry
from keeper.risk.stress import run_stress, stress_grid
from keeper.runtime.config import KeeperConfig
from keeper.runtime.service import KeeperService


def account_stress(cfg: KeeperConfig, *, as_json: bool) -> None:
    """The grid for margin accounts (Aave v3): each asset, all collateral, all debt, +-5..20 %, exact HF."""
    from keeper.runtime.accounts_service import AccountKeeperService

    service = cast(AccountKeeperService, AccountKeeperService.from_config(cfg, execute=False, send_alerts=False))
    try:
        service.start()
        block, grids = service.stress()
    finally:
        service.close()
    data = {
        "block": block,
        "accounts": {
            user: [
                {
                    "scenario": row.scenario,
                    "margin_excess_usd": round(row.margin_excess_usd, 2),
                    "loss_usd": round(row.loss_usd, 2),
                    "health_factor": row.health / 1e18,
                    "liquidated": row.liquidated,
                }
                for row in rows
            ]
            for user, rows in grids.items()
        },
    }
    if as_json:
        print(json.dumps(data))
        return
    t = Table(title=f"stress at block {block} ({len(grids)} accounts with debt)")
    for col in ("account", "liquidated by", "worst loss (USD)", "worst scenario"):
        t.add_column(col, justify="right" if col == "worst loss (USD)" else "left")
    for user, rows in grids.items():
        worst = max(rows, key=lambda r: r.loss_usd)
        liq = ", ".join(r.scenario for r in rows if r.liquidated) or "-"
        t.add_row(user[:10] + "…", liq, f"{worst.loss_usd:,.2f}", worst.scenario)
    Console().print(t)


def register(app: typer.Typer) -> None:
    @app.command()
    def stress(
        config: Path = CONFIG_OPTION,
        env_file: Path = ENV_FILE_OPTION,
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Loss per account and positions liquidated under +-5..20 % moves, tails, and vol up/same/down."""
        cfg = load(config, env_file, log_level="warning")
        if registry.is_account_protocol(cfg.protocol.name):
            account_stress(cfg, as_json=as_json)
            return
        service = KeeperService.from_config(cfg, execute=False, send_alerts=False)
        try:
            service.adapter.load_markets()
            snap, _ = service.read()
        finally:
            service.close()
        positions = list(snap.positions.values())
        prices = {mid: r.price_e8 for mid, r in snap.prices.items()}
        report = run_stress(positions, snap.markets, prices, stress_grid())
        symbols = {mid: m.symbol for mid, m in snap.markets.items()}
        rows: list[dict[str, Any]] = [
            {
                "scenario": r.name,
                "loss_by_account": r.loss_by_account,
                "liquidated": [{"account": a, "market": symbols[m]} for a, m in r.liquidated],
            }
            for r in report.results
        ]
        if as_json:
            print(
                json.dumps(
                    {
                        "block": snap.block_number,
                        "scenarios": rows,
                        "worst_by_account": {
                            a: {"loss": v, "scenario": s} for a, (v, s) in report.worst_by_account.items()
                        },
                    }
                )
            )
            return
        t = Table(title=f"stress at block {snap.block_number} ({len(positions)} positions)")
        for col in ("scenario", "total loss (USD)", "liquidated"):
            t.add_column(col, justify="right" if col != "liquidated" else "left")
        for r in rows:
            liq = ", ".join(f"{x['account'][:8]}…/{x['market']}" for x in r["liquidated"]) or "-"
            t.add_row(r["scenario"], f"{sum(r['loss_by_account'].values()):,.2f}", liq)
        console = Console()
        console.print(t)
        for a, (v, s) in report.worst_by_account.items():
            console.print(f"worst for {a}: {v:,.2f} USD in {s}")
