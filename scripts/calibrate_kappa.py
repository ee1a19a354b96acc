"""Calibrate the fat-tail multiplier kappa of the buffer policy (reproduces keeper.risk.policy.DEFAULT_KAPPA).

Steps: (1) fit GARCH(1,1)-t to ETH/USDT hourly log returns 2017-08..2024-06 (the hourly
Binance file described in docs/data.md, given with --data); its nu describes the tails of the standardised
innovations; (2) Monte Carlo (keeper.risk.policy.calibrate_kappa) of the distance that gives breach probability p
over one hour in one-minute steps at sigma = 0.8/yr, under (a) Student-t increments with that nu and (b) Merton jumps
(0.2 per hour, log-jump std 1.2 %; Merton, J. Financial Economics 3, 1976), both at the Gaussian variance;
kappa = ratio to the Gaussian distance. The default is the larger of the two at p = p_target = 1e-4, rounded up to 0.05.

Run: .venv/bin/python scripts/calibrate_kappa.py --data PATH [--paths N] [--seed S]   (~20 s on 2 cores)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from keeper.domain import SECONDS_PER_YEAR
from keeper.risk.policy import DEFAULT_KAPPA, calibrate_kappa
from keeper.risk.volatility import fit_garch_t, log_returns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        required=True,
        type=Path,
        help="hourly ETH/USDT CSV (binance_ETHUSDT_1h_2017-08_2024-06.csv, see docs/data.md)",
    )
    ap.add_argument("--paths", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261125)
    args = ap.parse_args()
    t0 = time.perf_counter()
    d = np.genfromtxt(args.data, delimiter=",", names=True, usecols=("unix_s", "close"))
    r, dt = log_returns(d["unix_s"], d["close"])
    fit = fit_garch_t(r * np.sqrt(3600.0 / dt))
    print(
        f"GARCH-t on {fit.n_obs} hourly returns: omega={fit.omega:.3g} alpha={fit.alpha:.4f} "
        f"beta={fit.beta:.4f} nu={fit.nu:.3f}"
    )
    rng = np.random.default_rng(args.seed)
    jump_intensity = 0.2 * SECONDS_PER_YEAR / 3600.0
    rows = []
    for p in (1e-3, 1e-4):
        t_cal = calibrate_kappa(p, 0.8, 3600.0, rng, n_paths=args.paths, student_t_nu=fit.nu)
        j_cal = calibrate_kappa(
            p, 0.8, 3600.0, rng, n_paths=args.paths, jump_intensity_annual=jump_intensity, jump_std=0.012
        )
        rows.append((p, t_cal.kappa, j_cal.kappa))
    print(f"{'p':>8} {f't(nu={fit.nu:.2f})':>12} {'merton':>8}")
    for p, kt, kj in rows:
        print(f"{p:8.0e} {kt:12.3f} {kj:8.3f}")
    k_target = max(rows[1][1], rows[1][2])
    print(
        f"kappa at p=1e-4: {k_target:.3f} -> default {math.ceil(k_target * 20) / 20:.2f} "
        f"(DEFAULT_KAPPA in code: {DEFAULT_KAPPA}); {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
