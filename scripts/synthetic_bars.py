"""Synthetic 1-minute OHLC bars (a seeded random walk) in the replay's CSV format, for speed and memory measurements
of ``keeper replay --fast`` on inputs longer than the real data holds. Not market data: never a result's evidence.

Usage: .venv/bin/python scripts/synthetic_bars.py N_BARS OUT.csv START_PRICE SEED

Each bar is four log-normal steps at 80 %/yr (open -> two inner points -> close); high and low are the extremes of
that path, prices rounded to cents, bars every 60 s from 2020-01-01 UTC. docs/replay.md ("Long inputs") uses
``1000000 eth.csv 2000 1`` and ``1000000 btc.csv 30000 2`` (2M bars, 4M rounds).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np

T0 = 1_577_836_800  # 2020-01-01 00:00 UTC
STEP_S = 60
SIGMA_ANNUAL = 0.8


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    n, out, p0, seed = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(seed)
    sig = SIGMA_ANNUAL / np.sqrt(365 * 24 * 60)  # per minute
    steps = rng.standard_normal((n, 4)) * sig / 2
    path = np.exp(np.log(p0) + np.cumsum(steps.ravel()).reshape(n, 4))
    o = np.concatenate([[p0], path[:-1, 3]])
    c = path[:, 3]
    h = np.maximum(np.maximum(o, c), path[:, :3].max(axis=1))
    lo = np.minimum(np.minimum(o, c), path[:, :3].min(axis=1))
    o, h, lo, c = (np.round(x, 2) for x in (o, h, lo, c))
    h = np.maximum(h, np.maximum(o, c))
    lo = np.minimum(lo, np.minimum(o, c))
    with open(out, "w", encoding="utf-8") as f:
        f.write("timestamp_utc,unix_s,open,high,low,close,volume\n")
        for i in range(n):
            t = T0 + STEP_S * i
            stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            f.write(f"{stamp},{t},{o[i]:.2f},{h[i]:.2f},{lo[i]:.2f},{c[i]:.2f},1\n")


if __name__ == "__main__":
    main()
