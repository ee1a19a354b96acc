"""Benchmark the risk engine: closed form for 10,000 positions and shared-path Monte Carlo.

Run: .venv/bin/python scripts/bench_risk.py [--repeat N]
Prints median wall times (ms) of:
  * closed-form policy kernel (assess_arrays) for 10,000 isolated positions
  * the same through assess_positions (domain Position objects in, PositionRisk objects out)
  * closed-form barrier probability alone for 10,000 positions
  * Monte Carlo: 1,000 positions on 5 correlated assets, 10,000 paths x 100 steps, exact bridge,
    Student-t increments (nu = 4) off and on; paths shared per asset (sort + searchsorted)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from keeper.domain import SECONDS_PER_YEAR, WAD, Market, Position, Side
from keeper.risk import barrier
from keeper.risk.montecarlo import PathModel, breach_probabilities, simulate_paths
from keeper.risk.policy import RiskPolicy, assess_arrays, assess_positions


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description="risk engine benchmark")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    n = 10_000
    is_long = rng.random(n) < 0.5
    price = np.full(n, 3000.0)
    size = rng.uniform(0.1, 20.0, n)
    coll = size * 3000.0 * rng.uniform(0.02, 0.3, n)
    policy = RiskPolicy()
    rows = []
    rows.append(
        (
            "closed form, policy kernel, 10k positions",
            timed(
                lambda: assess_arrays(
                    is_long=is_long,
                    size=size,
                    entry=price,
                    collateral=coll,
                    pending_fee=np.zeros(n),
                    price=price,
                    maintenance=np.full(n, 0.005),
                    fee_rate_annual=np.full(n, 0.1),
                    sigma_annual=np.full(n, 0.8),
                    policy=policy,
                    check_interval_s=60.0,
                ),
                args.repeat,
            ),
        )
    )
    s_liq = barrier.liquidation_price(is_long, size, price, coll, 0.005)
    rows.append(
        (
            "closed form, barrier probability only, 10k",
            timed(
                lambda: barrier.breach_probability(price, s_liq, 0.8, 72.0, is_long=is_long, fee_drift_annual=0.1),
                args.repeat,
            ),
        )
    )
    market = Market(0, "ETH", 5 * 10**15, 50 * WAD, 10**16, int(0.1 * WAD / SECONDS_PER_YEAR), 3600)
    book = [
        Position(f"0x{i:040x}", 0, Side.LONG if lg else Side.SHORT, int(q * 1e18), 3000 * 10**8, int(c * 1e6))
        for i, (lg, q, c) in enumerate(zip(is_long, size, coll, strict=True))
    ]
    rows.append(
        (
            "assess_positions (domain objects), 10k",
            timed(
                lambda: assess_positions(book, {0: market}, {0: 3000 * 10**8}, {0: 0.8}, policy, 60.0, 0), args.repeat
            ),
        )
    )

    corr = np.full((5, 5), 0.6)
    np.fill_diagonal(corr, 1.0)
    sig = (0.8, 0.6, 1.0, 0.9, 1.2)
    n_pos = 1000
    idx = rng.integers(0, 5, n_pos)
    longs = rng.random(n_pos) < 0.5
    log_b = np.where(longs, -1.0, 1.0) * rng.uniform(0.005, 0.05, n_pos)

    def mc(nu):
        paths = simulate_paths(
            PathModel(sigma_annual=sig, corr=tuple(map(tuple, corr)), student_t_nu=nu),
            3600.0,
            100,
            10_000,
            np.random.default_rng(2),
        )
        return breach_probabilities(paths, idx, longs, log_b)

    mc_repeat = max(3, args.repeat // 2)
    rows.append(("MC 1k pos / 5 assets / 10k x 100, bridge, normal", timed(lambda: mc(None), mc_repeat)))
    rows.append(("MC 1k pos / 5 assets / 10k x 100, bridge, Student-t", timed(lambda: mc(4.0), mc_repeat)))

    print(f"risk engine benchmark (median of {args.repeat} runs; {os.cpu_count()} CPUs, numpy {np.__version__})")
    print(f"{'case':<52} {'ms':>9}")
    for name, ms in rows:
        print(f"{name:<52} {ms:9.2f}")


if __name__ == "__main__":
    main()
