"""How low can idle collateral go on a crash window, for ANY keeper (a clairvoyant one included)?

Usage: .venv/bin/python scripts/replay_bound.py [DATA_DIR] [--window NAME ...]

For each crash window of scripts/replay_sweep.py: replays the fixed-ratio baselines (fast mode, default
book) to find the best zero-liquidation baseline (the issue's yardstick: least idle), then computes the
lower bound of :mod:`keeper.replay.bound` on the idle collateral of any liquidation-free policy allowed no
more transactions than that baseline, and compares it with the target (70 % of the baseline's idle):
for a clairvoyant keeper, and for every keeper whose trigger leaves at least b of the notional above
maintenance (``--buffers``).
About 1 min (FTX, LUNA) and 4 min (May-19) on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from replay_sweep import WINDOWS

from keeper.replay.book import load_book
from keeper.replay.bound import book_bound
from keeper.replay.fast import ReplayConfig, plan_timeline, run_fast
from keeper.replay.metrics import TARGET_IDLE_REDUCTION, best_fixed_baseline
from keeper.replay.policies import parse_policy
from keeper.replay.prices import load_bars

BASELINES = [
    "fixed:3:6",
    "fixed:5:10",
    "fixed:8:16",
    "fixed:12:24",
    "fixed:3:6:12",
    "fixed:5:10:20",
    "fixed:8:16:32",
    "fixed:12:24:48",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="folder holding the crash_*.csv files (docs/data.md)")
    ap.add_argument("--window", action="append", choices=list(WINDOWS), help="default: all three")
    ap.add_argument(
        "--buffers",
        default="0.01,0.025",
        help="triggers b (fraction of the notional) to bound keepers with, comma-separated",
    )
    args = ap.parse_args()
    buffers = [float(x) for x in args.buffers.split(",") if x.strip()]
    book = load_book()
    config = ReplayConfig(record=False)
    heads = "".join(f" trigger >= {100 * b:g} % $ |" for b in buffers)
    print(
        f"| window | best fixed baseline | its idle $ | its txs | target idle $ | no cushion, any number of txs $ "
        f"| clairvoyant, no moves $ | clairvoyant $ |{heads} verdict |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(buffers) + "---|")
    for name in args.window or list(WINDOWS):
        t0 = time.perf_counter()
        eth, btc = WINDOWS[name]
        bars = [load_bars(Path(args.data) / eth, "ETH"), load_bars(Path(args.data) / btc, "BTC")]
        res = run_fast(book, bars, [parse_policy(p) for p in BASELINES], config)
        base = best_fixed_baseline(res.results)
        b = res.results[base]
        budget = b.transactions
        timeline = plan_timeline(book, bars, config)
        bb = book_bound(book, timeline)
        no_moves, with_moves = bb.avg_idle_no_moves(budget), bb.avg_idle(budget)
        buffered = [book_bound(book, timeline, buffer=x).avg_idle(budget) for x in buffers]
        target = (1 - TARGET_IDLE_REDUCTION) * b.avg_idle_e6 / 1e6
        if with_moves > target:
            verdict = "out of reach of any keeper"
        else:
            facts = ["without moves"] if no_moves > target else []
            facts += [f"with a trigger >= {100 * x:g} %" for x, v in zip(buffers, buffered, strict=True) if v > target][
                :1
            ]
            verdict = "out of reach of any keeper " + " or ".join(facts) if facts else "not ruled out"
        cells = "".join(f" {v:,.0f} |" for v in buffered)
        print(
            f"| {name} | `{base}` | {b.avg_idle_e6 / 1e6:,.0f} | {budget} | {target:,.0f} "
            f"| {bb.avg_idle_unlimited():,.0f} | {no_moves:,.0f} "
            f"| {with_moves:,.0f} |{cells} {verdict} ({time.perf_counter() - t0:.0f} s) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
