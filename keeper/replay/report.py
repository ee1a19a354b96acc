"""Replay output: ``summary.json``, a Markdown report with the comparison table, and matplotlib PNG plots.

Plots (Agg backend, no display needed):

* ``price_<SYM>.png`` — the price, each position's liquidation price under the highlighted policy (``risk``
  when replayed, else the first), top-up markers (^) and liquidation markers (x);
* ``margin_ratio.png`` — per policy, the lowest margin ratio (equity / maintenance) over the book at each
  round (log scale; 1 = liquidation);
* ``idle.png`` — per policy, idle collateral (collateral net of fees above maintenance, summed over live positions).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Protocol

import numpy as np

from keeper.replay.bound import reach_verdict, target_reach
from keeper.replay.cost import CostBreakdown, CostModel, cost_of_protection
from keeper.replay.fast import GAS_PER_ACTION, GAS_REVERT, ReplayResult
from keeper.replay.metrics import (
    PLOT_POINTS,
    TARGET_IDLE_REDUCTION,
    PolicyResult,
    best_fixed_baseline,
    check_target,
    plot_stride,
)

MAX_PLOT_POINTS = PLOT_POINTS


def _iso(t_s: int) -> str:
    return _dt.datetime.fromtimestamp(int(t_s), tz=_dt.UTC).strftime("%Y-%m-%d %H:%M")


DEFAULT_NATIVE = "ETH"


class Replayed(Protocol):
    """What the total cost needs from a replay (the positions' :class:`ReplayResult` or the Aave accounts')."""

    t_s: np.ndarray
    prices: dict[str, np.ndarray]
    results: dict[str, PolicyResult]


def policy_costs(
    result: Replayed, model: CostModel | None = None, native: str = DEFAULT_NATIVE
) -> dict[str, dict[str, CostBreakdown]]:
    """Per policy, per gas preset: the total cost of protection (:mod:`keeper.replay.cost`).

    Gas is priced at the replayed ``native`` token's price when each transaction landed."""
    if native not in result.prices:
        raise ValueError(
            f"native token {native!r} is not one of the replayed markets ({', '.join(result.prices)}): "
            "pass --native SYMBOL with the symbol whose price pays for gas"
        )
    model = model or CostModel()
    return {
        name: cost_of_protection(
            avg_idle_usd=r.avg_idle_e6 / 1e6,
            duration_s=r.duration_s,
            gas_log=r.gas_log,
            penalties_usd=r.liquidation_penalty_e6 / 1e6,
            bad_debt_usd=r.bad_debt_e6 / 1e6,
            native_t_s=result.t_s,
            native_price_usd=result.prices[native],
            model=model,
        )
        for name, r in result.results.items()
    }


def summary_dict(
    result: ReplayResult, command: str = "", cost_model: CostModel | None = None, native: str = DEFAULT_NATIVE
) -> dict:
    """The JSON summary: window, book, config, ``policies`` -> metrics (USD) with ``total_cost_usd`` per gas
    preset, target check."""
    cost_model = cost_model or CostModel()
    costs = policy_costs(result, cost_model, native)
    tc = check_target(result.results) if "risk" in result.results else None
    reach = target_reach(result.floors, result.results)
    return {
        "window": {
            "start_utc": _iso(result.start_s),
            "end_utc": _iso(result.end_s),
            "start_s": result.start_s,
            "end_s": result.end_s,
            "rounds": int(result.t_s.size),
            "sources": result.sources,
        },
        "book": {
            "source": result.book.source,
            "positions": len(result.book.positions),
            "wallets_usd": sum(result.book.wallets_e6.values()) / 1e6,
        },
        "config": {
            "intrabar_order": result.config.order,
            "warmup_s": result.config.warmup_s,
            "inclusion_delay_rounds": result.config.inclusion_delay_rounds,
            "gas_per_action": {k.value: v for k, v in GAS_PER_ACTION.items()},
            "gas_revert": GAS_REVERT,
            "cost_model": {
                "capital_rate_annual": cost_model.capital_rate_annual,
                "gas_price_gwei": dict(cost_model.gas_price_gwei),
                "native_token": native,
            },
        },
        "units": "USD (collateral token units); gas in gas units",
        "command": command,
        "policies": {
            name: {
                **r.summary(),
                "total_cost_usd": {preset: c.total_usd for preset, c in costs[name].items()},
                "cost_breakdown_usd": {preset: c.as_dict() for preset, c in costs[name].items()},
                **({"idle_floor": result.floors[name]} if name in result.floors else {}),
            }
            for name, r in result.results.items()
        },
        "best_fixed_baseline": best_fixed_baseline(result.results),
        "target": None
        if tc is None
        else {
            "policy": tc.policy,
            "baseline": tc.baseline,
            "idle_reduction": None if tc.idle_reduction is None or math.isnan(tc.idle_reduction) else tc.idle_reduction,
            "required_idle_reduction": TARGET_IDLE_REDUCTION,
            "met": tc.met,
            "reason": tc.reason,
            **({} if reach is None else {"idle_floor_at_budget": reach[0], "out_of_reach": reach[2]}),
        },
    }


def comparison_table(result: ReplayResult, cost_model: CostModel | None = None, native: str = DEFAULT_NATIVE) -> str:
    """Markdown table, one row per policy (with the total cost of protection per gas preset)."""
    floors = bool(result.floors)
    costs = policy_costs(result, cost_model, native)
    presets = list(next(iter(costs.values()))) if costs else []
    cost_head = "".join(f" cost {p} $ |" for p in presets)
    head = (
        "| policy | liquidations | liq, wallet left | penalty $ | top-ups | added $ | releases | released $ | txs | "
        "gas | avg idle $ | peak idle $ | avg idle equity $ | min ratio |"
        + cost_head
        + (" idle floor $ |" if floors else "")
        + "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + "---:|" * len(presets)
        + ("---:|" if floors else "")
        + "\n"
    )
    rows = []
    for name, r in result.results.items():
        mr = "-" if math.isinf(r.min_margin_ratio) else f"{r.min_margin_ratio:.2f}"
        floor = f" {result.floors[name]:,.0f} |" if name in result.floors else (" - |" if floors else "")
        rows.append(
            f"| `{name}` | {r.liquidations} | {r.liquidations_wallet_left} | {r.liquidation_penalty_e6 / 1e6:,.0f} | "
            f"{r.top_ups} | "
            f"{r.collateral_added_e6 / 1e6:,.0f} | {r.releases} | {r.collateral_released_e6 / 1e6:,.0f} | "
            f"{r.transactions} | {r.gas_used:,} | {r.avg_idle_e6 / 1e6:,.0f} | {r.peak_idle_e6 / 1e6:,.0f} | "
            f"{r.avg_idle_equity_e6 / 1e6:,.0f} | {mr} |"
            + "".join(f" {c.total_usd:,.0f} |" for c in costs[name].values())
            + floor
        )
    return head + "\n".join(rows) + "\n"


def _every(n: int) -> int:
    return plot_stride(n)


def _rows(t: np.ndarray, r: PolicyResult) -> tuple[slice, np.ndarray]:
    """The recorded rows of ``r`` a plot draws, and their dates (a long replay records only those rows)."""
    rec_t = t[:: r.record_every]
    step = _every(rec_t.size)
    return slice(None, None, step), np.array([_dt.datetime.fromtimestamp(int(x), tz=_dt.UTC) for x in rec_t[::step]])


def write_plots(result: ReplayResult, out: Path) -> list[Path]:
    """Write the PNG plots into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    t = result.t_s
    step = _every(t.size)
    dates = np.array([_dt.datetime.fromtimestamp(int(x), tz=_dt.UTC) for x in t[::step]])
    highlight = "risk" if "risk" in result.results else next(iter(result.results))
    hres = result.results[highlight]
    for sym, price in result.prices.items():
        fig, ax = plt.subplots(figsize=(11, 5.5))
        ax.plot(dates, price[::step], color="black", lw=1.2, label=f"{sym} price")
        mid = result.book.markets[sym].market_id
        cols = [j for j, p in enumerate(result.book.positions) if p.symbol == sym]
        cmap = plt.get_cmap("tab20")
        if hres.liq_price is not None:
            rows, rdates = _rows(t, hres)
            for c, j in enumerate(cols):
                lp = hres.liq_price[rows, j].astype(float)
                lp[lp <= 0] = np.nan
                ax.plot(rdates, lp, lw=0.8, color=cmap(c % 20), label=result.labels[j].split(":", 1)[0])
        tu = [e for e in hres.events if e.kind == "top_up" and e.market_id == mid]
        lq = [e for e in hres.events if e.kind == "liquidation" and e.market_id == mid]
        if tu:
            idx = np.searchsorted(t, [e.t_s for e in tu])
            ax.scatter(
                mdates.date2num([_dt.datetime.fromtimestamp(e.t_s, tz=_dt.UTC) for e in tu]),
                price[idx],
                marker="^",
                color="tab:green",
                s=18,
                zorder=5,
                label="top-up",
            )
        if lq:
            ax.scatter(
                mdates.date2num([_dt.datetime.fromtimestamp(e.t_s, tz=_dt.UTC) for e in lq]),
                [e.price_e8 / 1e8 for e in lq],
                marker="x",
                color="tab:red",
                s=40,
                zorder=6,
                label="liquidation",
            )
        lo, hi = float(np.nanmin(price)), float(np.nanmax(price))
        ax.set_ylim(lo * 0.85, hi * 1.15)
        ax.set_title(f"{sym}: price and liquidation prices under policy '{highlight}'")
        ax.set_ylabel("USD")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        ax.legend(fontsize=7, ncol=4, loc="upper right")
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        p = out / f"price_{sym}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)

    fig, ax = plt.subplots(figsize=(11, 5))
    for name, r in result.results.items():
        if r.ratio is None:
            continue
        rows, rdates = _rows(t, r)
        with np.errstate(all="ignore"):
            mins = np.nanmin(np.where(np.isnan(r.ratio), np.inf, r.ratio), axis=1)
        mins[~np.isfinite(mins)] = np.nan
        ax.plot(rdates, np.clip(mins[rows], 0.05, None), lw=0.9, label=name)
    ax.axhline(1.0, color="red", ls="--", lw=1, label="liquidation (ratio 1)")
    ax.set_yscale("log")
    ax.set_title("lowest margin ratio (equity / maintenance) in the book, per policy")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3, which="both")
    fig.autofmt_xdate()
    p = out / "margin_ratio.png"
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(11, 5))
    for name, r in result.results.items():
        if r.idle_e6 is not None:
            rows, rdates = _rows(t, r)
            ax.plot(rdates, r.idle_e6[rows] / 1e6, lw=0.9, label=f"{name} (avg {r.avg_idle_e6 / 1e6:,.0f})")
    ax.set_title("idle collateral (collateral above maintenance, all live positions), USD")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    p = out / "idle.png"
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(p)
    return paths


def markdown_report(
    result: ReplayResult,
    plots: list[Path],
    command: str = "",
    cost_model: CostModel | None = None,
    native: str = DEFAULT_NATIVE,
) -> str:
    """The report text (comparison table, target verdict, definitions, plots)."""
    lines = [
        f"# Replay {_iso(result.start_s)} .. {_iso(result.end_s)} UTC",
        "",
        (
            f"Prices: {', '.join(f'{s} `{src}`' for s, src in result.sources.items())}. Book: `{result.book.source}` "
            f"({len(result.book.positions)} positions, wallets ${sum(result.book.wallets_e6.values()) / 1e6:,.0f}). "
            f"{result.t_s.size} rounds (4 per bar, intra-bar order `{result.config.order}`), warm-up "
            f"{result.config.warmup_s / 3600:g} h, inclusion delay {result.config.inclusion_delay_rounds} round(s)."
        ),
        "",
    ]
    if command:
        lines += ["```", command, "```", ""]
    lines += [comparison_table(result, cost_model, native), ""]
    if "risk" in result.results:
        tc = check_target(result.results)
        red = "n/a" if tc.idle_reduction is None else f"{tc.idle_reduction:.1%}"
        lines += [
            (
                f"**Target** (zero liquidations, idle >= {TARGET_IDLE_REDUCTION:.0%} below the best zero-liquidation "
                f"fixed baseline, no more transactions): baseline `{tc.baseline}`, idle reduction {red}: "
                f"**{'met' if tc.met else 'not met'}** ({tc.reason})."
            ),
            "",
        ]
        reach = target_reach(result.floors, result.results)
        if reach is not None and tc.baseline is not None:
            floor, goal, out_of_reach = reach
            lines += [
                (
                    f"Idle floor (`--bound`): with {result.results[tc.baseline].transactions} transactions no keeper, "
                    f"even one that knows every future price, holds less than {floor:,.0f} on average; "
                    f"the target asks for {goal:,.0f}: **{reach_verdict(out_of_reach)}**."
                ),
                "",
            ]
    lines += [
        (
            "Amounts in USD (collateral token). Idle collateral = sum of max(0, collateral - accrued fee - "
            "maintenance) over live positions, time-weighted (idle equity counts unrealised PnL too); min ratio = "
            "lowest equity/maintenance seen before the liquidator acted. Idle floor = the least average idle any "
            "keeper could hold with that many transactions (keeper/replay/bound.py). Gas: per-action constants (see "
            "summary.json), not receipts. Cost = average idle x capital rate x duration + gas x preset gas price x "
            "the native token's price when the gas was spent + penalties + bad debt (keeper/replay/cost.py; rates in "
            "summary.json)."
        ),
        "",
    ]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    return "\n".join(lines)


def write_report(
    result: ReplayResult,
    out_dir: str | Path,
    command: str = "",
    plots: bool = True,
    cost_model: CostModel | None = None,
    native: str = DEFAULT_NATIVE,
) -> dict[str, Path]:
    """Write ``summary.json``, ``report.md`` and the plots into ``out_dir``; returns the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(result, out) if plots else []
    summary = out / "summary.json"
    summary.write_text(
        json.dumps(summary_dict(result, command, cost_model, native), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    report = out / "report.md"
    report.write_text(markdown_report(result, pngs, command, cost_model, native), encoding="utf-8")
    return {"summary": summary, "report": report, **{p.stem: p for p in pngs}}
