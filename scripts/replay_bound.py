"""How low can idle collateral go on a crash window, for ANY keeper (a clairvoyant one included)?

Usage: .venv/bin/python scripts/replay_bound.py [DATA_DIR] [--window NAME ...]

For each crash window of scripts/replay_sweep.py: replays the fixed-ratio baselines (fast mode, default
book) to find the best zero-liquidation baseline (the issue's yardstick: least idle), then computes the
lower bound of :mod:`keeper.replay.bound` on the idle collateral of any liquidation-free policy allowed no
more transactions than that baseline, and compares it with the target (70 % of the baseline's idle).
About 1 min (FTX, LUNA) and 4 min (May-19) on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from keeper.replay.book import load_book
from keeper.replay.bound import book_bound
from keeper.replay.fast import ReplayConfig, plan_timeline, run_fast
from keeper.replay.metrics import TARGET_IDLE_REDUCTION, best_fixed_baseline
from keeper.replay.policies import parse_policy
from keeper.replay.prices import load_bars
from replay_sweep import WINDOWS

BASELINES = ["fixed:3:6", "fixed:5:10", "fixed:8:16", "fixed:12:24",
             "fixed:3:6:12", "fixed:5:10:20", "fixed:8:16:32", "fixed:12:24:48"]
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--window", action="append", choices=list(WINDOWS), help="default: all three")
    args = ap.parse_args()
    book = load_book()
    config = ReplayConfig(record=False)
    print("| window | best fixed baseline | its idle $ | its txs | target idle $ | bound (no moves) $ "
          "| bound (moves) $ | verdict |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in args.window or list(WINDOWS):
        t0 = time.perf_counter()
        eth, btc = WINDOWS[name]
        bars = [load_bars(Path(args.data) / eth, "ETH"), load_bars(Path(args.data) / btc, "BTC")]
        res = run_fast(book, bars, [parse_policy(p) for p in BASELINES], config)
        base = best_fixed_baseline(res.results)
        b = res.results[base]
        budget = b.transactions
        bb = book_bound(book, plan_timeline(book, bars, config))
        no_moves, with_moves = bb.avg_idle_no_moves(budget), bb.avg_idle(budget)
        target = (1 - TARGET_IDLE_REDUCTION) * b.avg_idle_e6 / 1e6
        verdict = "target impossible for any policy" if with_moves > target else "not ruled out"
        print(f"| {name} | `{base}` | {b.avg_idle_e6 / 1e6:,.0f} | {budget} | {target:,.0f} | {no_moves:,.0f} "
              f"| {with_moves:,.0f} | {verdict} ({time.perf_counter() - t0:.0f} s) |", flush=True)


if __name__ == "__main__":
    main()
