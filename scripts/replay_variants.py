"""Replay variants of the risk policy on the crash windows: idle collateral and transactions per variant.

Usage: .venv/bin/python scripts/replay_variants.py [DATA_DIR] [--window NAME ...] VARIANT_JSON ...

Each VARIANT_JSON is an object of ``keeper.risk.policy.RiskPolicy`` fields, e.g. ``'{}'`` (the defaults) or
``'{"stress_factor": 1.5, "stress_headroom": 1.25, "release_headroom": 4.0}'``. Every variant runs with
release on (as ``risk`` in ``keeper replay``) on the default book, fast mode; one line per window and variant:
liquidations, average idle collateral (USD) and transactions. docs/replay.md's "Band rules tried" table comes
from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from replay_sweep import WINDOWS

from keeper.planner import PlanLimits
from keeper.replay.book import load_book
from keeper.replay.fast import ReplayConfig, run_fast
from keeper.replay.policies import RiskSized
from keeper.replay.prices import load_bars
from keeper.risk.policy import RiskPolicy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="RiskPolicy fields as JSON objects")
    ap.add_argument("--data", required=True, help="folder holding the crash_*.csv files (docs/data.md)")
    ap.add_argument("--window", action="append", choices=list(WINDOWS), help="default: all three")
    args = ap.parse_args()
    specs = [json.loads(v) for v in args.variants]
    policies = []
    for i, kw in enumerate(specs):
        rp = RiskPolicy(**kw)
        limits = PlanLimits.from_policy(rp, max_per_tx_e6=10**15, max_per_day_e6=10**15, allow_release=True)
        policies.append(RiskSized(risk_policy=rp, limits=limits, name=f"variant-{i}"))
    book = load_book()
    for name in args.window or list(WINDOWS):
        t0 = time.perf_counter()
        eth, btc = WINDOWS[name]
        bars = [load_bars(Path(args.data) / eth, "ETH"), load_bars(Path(args.data) / btc, "BTC")]
        res = run_fast(book, bars, policies, ReplayConfig(record=False))
        for i, kw in enumerate(specs):
            r = res.results[f"variant-{i}"]
            print(
                f"{name} | {json.dumps(kw)} | liquidations {r.liquidations} | avg idle {r.avg_idle_e6 / 1e6:,.0f} "
                f"| transactions {r.transactions}",
                flush=True,
            )
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
