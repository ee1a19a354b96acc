"""``keeper replay``: replay real price bars through the protocol with several keeper policies side by side.

``keeper replay --prices ETH=eth.csv --prices BTC=btc.csv [--book book.toml] [--policy P ...] [--out DIR] --fast``

Without ``--policy`` it compares ``risk``, the default fixed-ratio baselines and ``none``. ``--fast`` runs
the pure-Python protocol model (keeper.replay.fast); without it the same rounds are played on a local
anvil with the real contracts, the real keeper daemon's cycle (one per account) for ``risk`` and a
liquidator bot (keeper.replay.onchain): slower (rounds per second, not thousands), for windows of hours.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from keeper.commands._replay_inputs import load_series, long_tails, parse_prices, replay_window
from keeper.errors import InputError

DEFAULT_POLICIES = (
    "risk",
    "fixed:1.5:3",
    "fixed:3:6",
    "fixed:5:10",
    "fixed:8:16",
    "fixed:12:24",
    "fixed:3:6:12",
    "fixed:5:10:20",
    "fixed:8:16:32",
    "fixed:12:24:48",
    "none",
)


class PlainProgress:
    """Progress as plain lines (for logs and pipes, where the bar is not drawn), all starting ``replay: ``.

    :meth:`note` prints a phase (a price file loaded); :meth:`update` prints a line at the first call, then
    whenever the work crosses a multiple of ``step`` (5 %, 10 %, ...) or ``every_s`` seconds have passed since the
    last line, and at the end:
    ``replay: 1,234,000/4,000,000 policy-rounds (30%), 95 s elapsed, 13,000/s, ~212 s left``. ``done`` and ``total``
    count rounds x policies (:func:`keeper.replay.fast.run_fast`); elapsed counts from the start (loading
    included), the rate and the time left from the first update (the replay's own pace).
    """

    def __init__(
        self,
        stream: IO[str],
        step: float = 0.05,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream, self._every_s, self._clock = stream, every_s, clock
        self._t0 = clock()
        self._buckets = max(1, round(1 / step))
        self._last_t: float | None = None
        self._last_bucket = 0
        self._first: tuple[float, int] | None = None  # (time, done) of the first update
        self._finished = False

    def note(self, text: str) -> None:
        """One line about a phase (``replay: <text>``)."""
        print(f"replay: {text}", file=self._stream, flush=True)

    def update(self, done: int, total: int) -> None:
        if total <= 0 or self._finished:
            return
        now, frac = self._clock(), min(1.0, done / total)
        bucket = min(done, total) * self._buckets // total
        if self._first is None:
            self._first = (now, done)
        last = self._last_t
        if last is not None and done < total and bucket == self._last_bucket and now - last < self._every_s:
            return
        self._last_bucket, self._last_t, self._finished = bucket, now, done >= total
        t1, d1 = self._first
        rate = (done - d1) / (now - t1) if now > t1 and done > d1 else None
        pace = "" if rate is None else f", {rate:,.0f}/s"
        left = "" if rate is None or done >= total else f", ~{(total - done) / rate:.0f} s left"
        print(
            f"replay: {done:,}/{total:,} policy-rounds ({math.floor(100 * frac)}%), "
            f"{now - self._t0:.0f} s elapsed{pace}{left}",
            file=self._stream,
            flush=True,
        )


def replay_command(
    prices: list[str] = typer.Option(..., "--prices", help="SYMBOL=path.csv (OHLC bars); repeat per market."),
    book: Path | None = typer.Option(None, "--book", help="Book TOML (default: keeper/data/default_book.toml)."),
    policy: list[str] = typer.Option(
        [],
        "--policy",
        help="risk | risk:norelease | risk:cost:PRESET | fixed:X:Y | fixed:X:Y:Z | none; repeat (default: a set).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Directory for summary.json, report.md and PNG plots."),
    fast: bool = typer.Option(False, "--fast", help="Use the pure-Python protocol model (no chain; default: anvil)."),
    warmup_h: float = typer.Option(24.0, "--warmup-h", help="Hours at the start used only to calibrate volatility."),
    delay: int = typer.Option(1, "--delay-rounds", help="Rounds between a decision and its inclusion (>= 1)."),
    order: str = typer.Option("adverse", "--order", help="Intra-bar order: adverse | long_adverse | short_adverse."),
    max_gap_s: float | None = typer.Option(None, "--max-gap-s", help="Longest accepted gap between bars (s)."),
    start: str | None = typer.Option(
        None,
        "--from",
        help="Replay only the bars opening at or after this UTC time (2020-03-09, 2020-03-09T12:00 or unix s);"
        " the warm-up is its first --warmup-h hours.",
    ),
    until: str | None = typer.Option(
        None, "--until", help="Replay only the bars opening before this UTC time (same forms as --from)."
    ),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    capital_rate: float = typer.Option(
        0.08, "--capital-rate", help="Yearly rate idle collateral would earn elsewhere (total cost; 0.08 = 8 %/yr)."
    ),
    gas_preset: list[str] = typer.Option(
        [], "--gas-preset", help="NAME=GWEI gas price for the total cost; repeat (default: l1=20 and l2=0.05)."
    ),
    native: str = typer.Option("ETH", "--native", help="Replayed symbol whose price pays for gas (total cost)."),
    long_history: list[str] = typer.Option(
        [],
        "--long-history",
        help="SYMBOL=path.csv: years of that asset's bars; the risk policy's stress gap takes the worse of the"
        " recent rounds and this history's tail (fitted only on bars before the replayed window).",
    ),
    tail_probability: float | None = typer.Option(
        None,
        "--tail-probability",
        help="Per-decision probability at which the long-history tail is read (default: the policy's p_trigger).",
    ),
    bound: bool = typer.Option(
        False,
        "--bound",
        help="Also compute each policy's idle floor: the least idle any keeper could hold with "
        "its transaction count (O(rounds^2): ~10 s for a week of 5-minute bars).",
    ),
) -> None:
    """Replay real prices through the protocol: keeper policies vs fixed-ratio baselines vs no keeper."""
    from keeper.replay.book import load_book
    from keeper.replay.bound import reach_verdict, target_reach
    from keeper.replay.cost import CostModel
    from keeper.replay.fast import ReplayConfig, run_fast
    from keeper.replay.metrics import check_target
    from keeper.replay.policies import RiskSized, parse_policy
    from keeper.replay.prices import INTRABAR_ORDERS
    from keeper.replay.report import comparison_table, policy_costs, write_report

    if order not in INTRABAR_ORDERS:
        raise InputError(f"--order {order!r}: allowed {', '.join(INTRABAR_ORDERS)}")
    try:
        cost_model = CostModel.parse(capital_rate, gas_preset)
    except ValueError as exc:
        raise InputError(f"--capital-rate / --gas-preset: {exc}") from None
    files = parse_prices(prices)
    window = replay_window(start, until)
    if native not in files:
        raise InputError(
            f"--native {native!r}: gas must be priced by one of the replayed markets "
            f"({', '.join(files)}); pass --native SYMBOL"
        )
    if book is not None:  # a book of Aave v3 or Perp v2 accounts: the account replay (keeper.commands._replay_accounts)
        from keeper.commands._replay_accounts import book_account_protocol, run_account_replay

        if book_account_protocol(book) is not None:
            return run_account_replay(
                book=book, files=files, policy=policy, out=out, fast=fast, warmup_h=warmup_h, delay=delay,
                order=order, max_gap_s=max_gap_s, cost_model=cost_model, native=native, no_plots=no_plots,
                long_history=long_history, tail_probability=tail_probability, window=window,
            )  # fmt: skip
    bk = load_book(book)
    console = Console(stderr=True)
    # piped or logged, the bar is not drawn: plain lines instead, from the first file on
    plain = PlainProgress(console.file) if not console.is_terminal else None
    series = load_series(
        files, max_gap_s=max_gap_s, window=window, console=console, note=plain.note if plain is not None else None
    )
    specs = policy or list(DEFAULT_POLICIES)
    pols = [
        parse_policy(
            s,
            gas_presets_gwei=dict(cost_model.gas_price_gwei),
            capital_rate_annual=cost_model.capital_rate_annual,
            native_symbol=native,
        )
        for s in specs
    ]
    tails = long_tails(long_history, series, order, max_gap_s)
    for pol in pols:
        if isinstance(pol, RiskSized):
            pol.long_tails = tails
            if tail_probability is not None:
                pol.risk_policy = dataclasses.replace(pol.risk_policy, stress_tail_probability=tail_probability)
    names = [p.name for p in pols]
    if len(set(names)) != len(names):
        raise InputError(f"a policy is given twice: {', '.join(names)}")
    config = ReplayConfig(order=order, warmup_s=int(warmup_h * 3600), inclusion_delay_rounds=delay)
    with Progress(
        TextColumn("[bold]replay[/bold]"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        task = prog.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)
            if plain is not None:
                plain.update(done, total)

        if fast:
            result, stats = run_fast(bk, series, pols, config, progress=progress), None
        else:
            from keeper.replay.onchain import run_onchain

            result, stats = run_onchain(bk, series, pols, config, progress=progress)
    if bound:
        from keeper.replay.bound import book_bound, idle_floors
        from keeper.replay.fast import plan_timeline

        with console.status("idle floor (keeper/replay/bound.py)"):
            result.floors = idle_floors(book_bound(bk, plan_timeline(bk, series, config)), result.results)
    command = "keeper replay " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else ""
    table = Table(title="replay (USD)")
    cols = (
        [
            "policy",
            "liq",
            "liq, wallet left",
            "penalty",
            "top-ups",
            "added",
            "releases",
            "released",
            "txs",
            "gas",
            "avg idle",
            "peak idle",
            "min ratio",
        ]
        + [f"cost {p}" for p, _ in cost_model.gas_price_gwei]
        + (["idle floor"] if result.floors else [])
    )
    costs = policy_costs(result, cost_model, native)
    for col in cols:
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in result.results.items():
        floor = [f"{result.floors[name]:,.0f}" if name in result.floors else "-"] if result.floors else []
        table.add_row(
            name,
            str(r.liquidations),
            str(r.liquidations_wallet_left),
            f"{r.liquidation_penalty_e6 / 1e6:,.0f}",
            str(r.top_ups),
            f"{r.collateral_added_e6 / 1e6:,.0f}",
            str(r.releases),
            f"{r.collateral_released_e6 / 1e6:,.0f}",
            str(r.transactions),
            f"{r.gas_used:,}",
            f"{r.avg_idle_e6 / 1e6:,.0f}",
            f"{r.peak_idle_e6 / 1e6:,.0f}",
            f"{r.min_margin_ratio:.2f}",
            *(f"{c.total_usd:,.0f}" for c in costs[name].values()),
            *floor,
        )
    Console(width=max(160, Console().width)).print(table)
    if "risk" in result.results:
        tc = check_target(result.results)
        red = "n/a" if tc.idle_reduction is None else f"{tc.idle_reduction:.1%}"
        Console().print(
            f"target vs best zero-liquidation baseline {tc.baseline}: idle reduction {red} -> "
            f"{'MET' if tc.met else 'NOT MET'} ({tc.reason})"
        )
        reach = target_reach(result.floors, result.results)
        if reach is not None and tc.baseline is not None:
            Console().print(
                f"idle floor with {result.results[tc.baseline].transactions} transactions: {reach[0]:,.0f} "
                f"vs the target's {reach[1]:,.0f} -> "
                f"{reach_verdict(reach[2])}"
            )
    if stats is not None:
        gas = ", ".join(f"{k} {g['median']:,}" for k, g in stats.gas_summary().items())
        speed = ", ".join(f"{k} {v:.1f}" for k, v in stats.rounds_per_s().items())
        Console().print(f"on chain: median gas per kind {gas or '-'}; rounds/s {speed}")
    if out is not None:
        if stats is None:
            paths = write_report(result, out, command=command, plots=not no_plots, cost_model=cost_model, native=native)
        else:
            from keeper.replay.onchain import write_onchain_report

            paths = write_onchain_report(
                result, stats, out, command=command, plots=not no_plots, cost_model=cost_model, native=native
            )
        Console().print(f"wrote {paths['summary']} and {paths['report']}")
    elif not table.row_count:
        Console().print(comparison_table(result, cost_model, native))


def register(app: typer.Typer) -> None:
    """Add ``keeper replay`` to the CLI."""
    app.command("replay")(replay_command)
