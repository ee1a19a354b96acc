"""``keeper replay`` on a book holding Aave v3 accounts (``[[aave_accounts]]``) or Perp v2 accounts
(``[[perp_accounts]]``): the fast account replay (:mod:`keeper.replay.accounts_fast`,
:mod:`keeper.replay.perp_accounts`), its table, ``summary.json`` and ``report.md``."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from keeper.commands._replay_inputs import load_series, long_tails
from keeper.errors import InputError


def book_account_protocol(path: Path) -> str | None:
    """``"aave-v3"`` / ``"perp-v2"`` when the book file declares ``[[aave_accounts]]`` / ``[[perp_accounts]]``
    (then ``keeper replay`` runs the account replay), ``None`` for a book of reference positions."""
    from keeper.errors import ConfigError
    from keeper.replay.aave_book import has_aave_accounts, read_book_toml
    from keeper.replay.perp_book import has_perp_accounts

    data = read_book_toml(path)[0]
    aave, perp = has_aave_accounts(data), has_perp_accounts(data)
    if aave and perp:
        raise ConfigError(
            f"{path}: a book holds one protocol's accounts ([[aave_accounts]] or [[perp_accounts]]); split it",
            field="book",
        )
    return "aave-v3" if aave else "perp-v2" if perp else None


def run_account_replay(
    *,
    book: Path,
    files: dict[str, Path],
    policy: list[str],
    out: Path | None,
    fast: bool,
    warmup_h: float,
    delay: int,
    order: str,
    max_gap_s: float | None,
    cost_model: object,
    native: str,
    no_plots: bool = False,
    long_history: list[str] | None = None,
    tail_probability: float | None = None,
    window: tuple[int | None, int | None] = (None, None),
) -> None:
    from keeper.replay.aave_book import load_aave_book
    from keeper.replay.aave_report import account_costs, account_table, labels, write_account_report
    from keeper.replay.accounts_fast import (
        DEFAULT_ACCOUNT_POLICIES,
        AccountsConfig,
        AccountsRisk,
        parse_account_policy,
        run_accounts_fast,
    )
    from keeper.replay.cost import CostModel
    from keeper.replay.perp_accounts import DEFAULT_PERP_POLICIES, parse_perp_policy, run_perp_fast
    from keeper.replay.perp_book import load_perp_book

    perp = book_account_protocol(book) == "perp-v2"
    if not fast:
        check = "tests/perp/test_perp_replay_chain.py" if perp else "tests/aave/test_aave_replay_chain.py"
        raise InputError(
            f"a book with {'Perp v2' if perp else 'Aave'} accounts replays with --fast only (the model is checked "
            f"against the real contracts by {check})"
        )
    assert isinstance(cost_model, CostModel)
    bk: Any = load_perp_book(book) if perp else load_aave_book(book)
    console = Console(stderr=True)
    series = load_series(files, max_gap_s=max_gap_s, window=window, console=console)
    parse = parse_perp_policy if perp else parse_account_policy
    specs = policy or list(DEFAULT_PERP_POLICIES if perp else DEFAULT_ACCOUNT_POLICIES)
    presets = dict(cost_model.gas_price_gwei)
    rate = cost_model.capital_rate_annual
    pols = [parse(s, gas_presets_gwei=presets, capital_rate_annual=rate, native_symbol=native) for s in specs]
    if tail_probability is not None:
        for pol in pols:
            if isinstance(pol, AccountsRisk):
                pol.risk_policy = dataclasses.replace(pol.risk_policy, stress_tail_probability=tail_probability)
    names = [p.name for p in pols]
    if len(set(names)) != len(names):
        raise InputError(f"a policy is given twice: {', '.join(names)}")
    config = AccountsConfig(
        order=order,
        warmup_s=int(warmup_h * 3600),
        inclusion_delay_rounds=delay,
        record=not no_plots,
        long_tails=long_tails(long_history or [], series, order, max_gap_s),
    )
    with console.status(f"replaying the {'Perp v2' if perp else 'Aave'} accounts"):
        result = run_perp_fast(bk, series, pols, config) if perp else run_accounts_fast(bk, series, pols, config)
    command = "keeper replay " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else ""
    costs = account_costs(result, cost_model, native)
    lab = labels(result)
    table = Table(title=f"replay, {lab.title} accounts (USD)")
    cols = ["policy", "liq", "liq, wallet left", "penalty", *lab.actions, "paid in", "txs", "gas", "avg idle"]
    cols.append(lab.health)
    cols += [f"cost {p}" for p, _ in cost_model.gas_price_gwei]
    for col in cols:
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in result.results.items():
        ex = result.extra[name]
        table.add_row(
            name,
            str(r.liquidations),
            str(r.liquidations_wallet_left),
            f"{r.liquidation_penalty_e6 / 1e6:,.0f}",
            *(str(ex[a]) for a in lab.actions),
            f"{r.collateral_added_e6 / 1e6:,.0f}",
            str(r.transactions),
            f"{r.gas_used:,}",
            f"{r.avg_idle_e6 / 1e6:,.0f}",
            "-" if ex[lab.min_key] is None else f"{ex[lab.min_key]:.3f}",
            *(f"{c.total_usd:,.0f}" for c in costs[name].values()),
        )
    Console(width=max(160, Console().width)).print(table)
    if out is not None:
        paths = write_account_report(
            result, out, command=command, cost_model=cost_model, native=native, plots=not no_plots
        )
        Console().print(f"wrote {paths['summary']} and {paths['report']}")
    elif not table.row_count:
        Console().print(account_table(result, cost_model, native))
