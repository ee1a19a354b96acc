"""Run the fast replay on the three crash windows of the price data (docs/data.md) and print the comparison tables.

Usage: .venv/bin/python scripts/replay_sweep.py DATA_DIR [OUT_DIR]
(OUT_DIR defaults to .keeper/replay). Writes OUT_DIR/<window>/{summary.json,
report.md,*.png} and prints one Markdown table per window (the ones in docs/replay.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from keeper.commands.replay import DEFAULT_POLICIES
from keeper.replay.book import load_book
from keeper.replay.fast import ReplayConfig, run_fast
from keeper.replay.metrics import check_target
from keeper.replay.policies import parse_policy
from keeper.replay.prices import load_bars
from keeper.replay.report import comparison_table, write_report

WINDOWS = {
    "2021-05-19": ("crash_2021-05-19_may19_ETHUSDT_1m.csv", "crash_2021-05-19_may19_BTCUSDT_1m.csv"),
    "2022-05 LUNA": ("crash_2022-05_luna_ETHUSDT_5m.csv", "crash_2022-05_luna_BTCUSDT_5m.csv"),
    "2022-11 FTX": ("crash_2022-11_ftx_ETHUSDT_5m.csv", "crash_2022-11_ftx_BTCUSDT_5m.csv"),
}


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    if len(sys.argv) < 2:
        sys.exit("usage: replay_sweep.py DATA_DIR [OUT_DIR]  (DATA_DIR holds the crash_*.csv files of docs/data.md)")
    data = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else repo / ".keeper" / "replay"
    book = load_book()
    for name, (eth, btc) in WINDOWS.items():
        t0 = time.perf_counter()
        bars = [load_bars(data / eth, "ETH"), load_bars(data / btc, "BTC")]
        specs = [*DEFAULT_POLICIES[:1], "risk:norelease", *DEFAULT_POLICIES[1:]]
        res = run_fast(book, bars, [parse_policy(p) for p in specs], ReplayConfig())
        write_report(res, out / name.split()[0], command=f"scripts/replay_sweep.py ({name})")
        tc = check_target(res.results)
        print(f"### {name} ({time.perf_counter() - t0:.0f} s)\n")
        print(comparison_table(res))
        print(f"target: baseline {tc.baseline}, idle reduction {tc.idle_reduction}, met={tc.met} ({tc.reason})")
        tn = check_target(res.results, "risk:norelease")
        print(f"risk:norelease: idle reduction {tn.idle_reduction}, met={tn.met} ({tn.reason})\n")


if __name__ == "__main__":
    main()
