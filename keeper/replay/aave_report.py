"""Output of the account replays (Aave v3, Perp v2): the same ``summary.json`` / ``report.md`` shape as the
reference replay's (:mod:`keeper.replay.report`), with the account metrics: liquidations, penalties (Aave: the
liquidators' bonus; Perp: Curie's liquidation penalty), the keeper's actions (supplies and repays; deposits),
transactions, gas, idle collateral, closest approach as the least health, and the total cost of protection per
gas preset."""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

from keeper.accounts.costs import AAVE_REPAY_GAS, AAVE_SUPPLY_GAS, GAS_USED_MEASURED, PERP_DEPOSIT_FOR_GAS
from keeper.replay.accounts_fast import GAS_REVERT, AccountReplayResult
from keeper.replay.cost import CostBreakdown, CostModel
from keeper.replay.metrics import best_fixed_baseline
from keeper.replay.report import DEFAULT_NATIVE, policy_costs


@dataclass(frozen=True, slots=True)
class ProtocolLabels:
    """What differs between the protocols' reports: names, the action counters, gas, the health figure."""

    title: str
    actions: tuple[str, ...]  # keys of result.extra[policy] counting the keeper's actions
    gas: dict[str, int]
    min_key: str  # key of result.extra[policy]: the least health
    health: str  # its short name
    units: str
    notes: str


def _cost_note(protocol: str) -> str:
    return (
        "`risk:cost:PRESET`: `risk` with the cost-aware restore and release levels at that gas preset, one action "
        f"priced at the daemon's measured {GAS_USED_MEASURED[protocol]:,} gas x the replayed native token's price."
    )


def _labels() -> dict[str, ProtocolLabels]:
    return {
        "aave-v3": ProtocolLabels(
            "Aave v3",
            ("supplies", "repays"),
            {"supply": AAVE_SUPPLY_GAS, "repay": AAVE_REPAY_GAS},
            "min_health_factor",
            "min HF",
            "USD; gas in gas units; idle = max(0, collateral x average LT - debt) per account; "
            "min_margin_ratio = least health factor",
            "Penalty = the liquidators' bonus (collateral seized, the protocol's fee included, minus the debt "
            "repaid). Idle = sum over accounts of max(0, collateral x average LT - debt), time-weighted. min HF = "
            "the least health factor before the liquidator acted. `fixed:X:Y`: below HF X repay to HF Y. Gas per "
            f"action: supply {AAVE_SUPPLY_GAS:,}, repay {AAVE_REPAY_GAS:,} (the daemon's measured receipts). "
            + _cost_note("aave-v3"),
        ),
        "perp-v2": ProtocolLabels(
            "Perp v2",
            ("deposits",),
            {"deposit": PERP_DEPOSIT_FOR_GAS},
            "min_health",
            "min health",
            "USD; gas in gas units; idle = max(0, account value - maintenance requirement) per account; "
            "min_margin_ratio = least account value / requirement",
            "Penalty = Curie's liquidation penalty (2.5 % of the notional closed at the mark). Mark = index (no "
            "pool). Idle = sum over accounts of max(0, account value - maintenance requirement), time-weighted. "
            "min health = the least account value / requirement before the liquidator acted. `fixed:X:Y`: below "
            f"health X deposit to Y. Gas per Vault.depositFor {PERP_DEPOSIT_FOR_GAS:,} (the measured receipt). "
            + _cost_note("perp-v2"),
        ),
    }


def labels(result: AccountReplayResult) -> ProtocolLabels:
    return _labels()[result.book.protocol]


def _iso(t_s: int) -> str:
    return _dt.datetime.fromtimestamp(int(t_s), tz=_dt.UTC).strftime("%Y-%m-%d %H:%M")


def account_costs(
    result: AccountReplayResult, model: CostModel | None = None, native: str = DEFAULT_NATIVE
) -> dict[str, dict[str, CostBreakdown]]:
    """Per policy, per gas preset: the total cost of protection (the positions' :func:`policy_costs`)."""
    return policy_costs(result, model, native)


def account_summary(
    result: AccountReplayResult, command: str = "", cost_model: CostModel | None = None, native: str = DEFAULT_NATIVE
) -> dict:
    cost_model = cost_model or CostModel()
    costs = account_costs(result, cost_model, native)
    book = result.book
    lab = labels(result)
    return {
        "protocol": book.protocol,
        "window": {
            "start_utc": _iso(result.start_s),
            "end_utc": _iso(result.end_s),
            "start_s": result.start_s,
            "end_s": result.end_s,
            "rounds": int(result.t_s.size),
            "sources": result.sources,
        },
        "book": {
            "source": book.source,
            "accounts": len(book.accounts),
            "wallets_usd": sum(a.wallet_usd for a in book.accounts),
            "wallet_asset": book.wallet_asset,
        },
        "config": {
            "intrabar_order": result.config.order,
            "warmup_s": result.config.warmup_s,
            "inclusion_delay_rounds": result.config.inclusion_delay_rounds,
            "gas_per_action": lab.gas,
            "gas_revert": GAS_REVERT,
            "cost_model": {
                "capital_rate_annual": cost_model.capital_rate_annual,
                "gas_price_gwei": dict(cost_model.gas_price_gwei),
                "native_token": native,
            },
        },
        "units": lab.units,
        "command": command,
        "policies": {
            name: {
                **r.summary(),
                **result.extra.get(name, {}),
                "total_cost_usd": {preset: c.total_usd for preset, c in costs[name].items()},
                "cost_breakdown_usd": {preset: c.as_dict() for preset, c in costs[name].items()},
            }
            for name, r in result.results.items()
        },
        "best_fixed_baseline": best_fixed_baseline(result.results),
    }


def account_table(
    result: AccountReplayResult, cost_model: CostModel | None = None, native: str = DEFAULT_NATIVE
) -> str:
    """Markdown table, one row per policy."""
    costs = account_costs(result, cost_model, native)
    presets = list(next(iter(costs.values()))) if costs else []
    lab = labels(result)
    head = (
        "| policy | liquidations | liq, wallet left | penalty $ | "
        + "".join(f"{a} | " for a in lab.actions)
        + f"paid in $ | txs | gas | avg idle $ | peak idle $ | {lab.health} |"
        + "".join(f" cost {p} $ |" for p in presets)
        + "\n|---|"
        + "---:|" * (10 + len(lab.actions) + len(presets))
        + "\n"
    )
    rows = []
    for name, r in result.results.items():
        ex = result.extra.get(name, {})
        hf = "-" if math.isinf(r.min_margin_ratio) else f"{r.min_margin_ratio:.3f}"
        rows.append(
            f"| `{name}` | {r.liquidations} | {r.liquidations_wallet_left} | {r.liquidation_penalty_e6 / 1e6:,.0f} | "
            + "".join(f"{ex.get(a, 0)} | " for a in lab.actions)
            + f"{r.collateral_added_e6 / 1e6:,.0f} | {r.transactions} | {r.gas_used:,} | "
            f"{r.avg_idle_e6 / 1e6:,.0f} | {r.peak_idle_e6 / 1e6:,.0f} | {hf} |"
            + "".join(f" {c.total_usd:,.0f} |" for c in costs[name].values())
        )
    return head + "\n".join(rows) + "\n"


def write_account_plots(result: AccountReplayResult, out: Path) -> list[Path]:
    """``health_factor.png`` (per policy, the lowest health factor of the book at each recorded round, log scale)
    and ``idle.png`` (per policy, idle collateral); nothing when the series were not recorded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    paths: list[Path] = []
    recorded = {n: r for n, r in result.results.items() if r.ratio is not None and r.idle_e6 is not None}
    if not recorded:
        return paths
    for fname, title in (
        (
            "health_factor.png",
            "lowest health in the book, per policy (Aave: HF; Perp: value / requirement; 1 = liquidation)",
        ),
        ("idle.png", "idle collateral (above what the protocol liquidates at, all accounts), USD"),
    ):
        fig, ax = plt.subplots(figsize=(11, 5))
        for name, r in recorded.items():
            rows = result.t_s[:: r.record_every]
            dates = np.array([_dt.datetime.fromtimestamp(int(x), tz=_dt.UTC) for x in rows])
            if fname == "idle.png":
                assert r.idle_e6 is not None
                ax.plot(dates, r.idle_e6 / 1e6, lw=0.9, label=f"{name} (avg {r.avg_idle_e6 / 1e6:,.0f})")
                continue
            assert r.ratio is not None
            with np.errstate(all="ignore"):
                low = np.nanmin(np.where(np.isnan(r.ratio), np.inf, r.ratio), axis=1)
            low[~np.isfinite(low)] = np.nan
            ax.plot(dates, low, lw=0.9, label=name)
        if fname == "health_factor.png":
            ax.axhline(1.0, color="red", ls="--", lw=1, label="liquidation (1)")
            ax.set_yscale("log")
        ax.set_title(title)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        ax.legend(fontsize=7, ncol=3)
        ax.grid(alpha=0.3, which="both")
        fig.autofmt_xdate()
        p = out / fname
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def write_account_report(
    result: AccountReplayResult,
    out_dir: str | Path,
    command: str = "",
    cost_model: CostModel | None = None,
    native: str = DEFAULT_NATIVE,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``summary.json``, ``report.md`` and (``plots``) the PNG plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_account_plots(result, out) if plots else []
    summary = out / "summary.json"
    summary.write_text(
        json.dumps(account_summary(result, command, cost_model, native), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    lines = [
        f"# {labels(result).title} account replay {_iso(result.start_s)} .. {_iso(result.end_s)} UTC",
        "",
        (
            f"Prices: {', '.join(f'{s} `{src}`' for s, src in result.sources.items())}. Book: `{result.book.source}` "
            f"({len(result.book.accounts)} accounts, wallets ${sum(a.wallet_usd for a in result.book.accounts):,.0f} "
            f"of {result.book.wallet_asset}). {result.t_s.size} rounds (4 per bar, intra-bar order "
            f"`{result.config.order}`), warm-up {result.config.warmup_s / 3600:g} h, inclusion delay "
            f"{result.config.inclusion_delay_rounds} round(s)."
        ),
        "",
    ]
    if command:
        lines += ["```", command, "```", ""]
    lines += [
        account_table(result, cost_model, native),
        "",
        (
            f"Amounts in USD. {labels(result).notes} Cost = average idle x capital rate x duration + gas x preset "
            "gas price x the native token's price + penalties + bad debt (keeper/replay/cost.py)."
        ),
        "",
    ]
    for p in pngs:
        lines += [f"![{p.stem}]({p.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return {"summary": summary, "report": report, **{p.stem: p for p in pngs}}
