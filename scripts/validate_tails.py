"""Out-of-sample check of the long-history tail estimate (keeper/risk/tails.py) on hourly bars.

For each file: fit the generalised Pareto tail on every bar before --cutoff, read the adverse one-hour move
exceeded with probability p (1e-2, 1e-3, 1e-4 per hour), then count how often the bars after the cut-off
exceed it. Two measures of the adverse move of an hour: close to close (what an hourly oracle reports) and
previous close to the bar's low (long) / high (short), the worst the price went within the hour.
Also prints the largest move after the cut-off and the probability the fit gave it. Moves are printed as
price changes (a fall for a long, a rise for a short); the fit is on log moves.

Usage: .venv/bin/python scripts/validate_tails.py DATA/binance_BTCUSDT_1h_2017-08_2024-06.csv [more.csv]
       [--cutoff 2020-03-01]    (files: docs/data.md; ~2 s per file)
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

from keeper.risk.tails import adverse_moves, fit_tail

PROBABILITIES = (1e-2, 1e-3, 1e-4)


def hourly_moves(t: np.ndarray, close: np.ndarray, low: np.ndarray, high: np.ndarray, side: str, measure: str):
    """Adverse log moves per bar (index aligned with t[1:])."""
    lc = np.log(close)
    if measure == "close":
        return adverse_moves(lc, side)
    extreme = np.log(low[1:]) if side == "long" else np.log(high[1:])
    d = extreme - lc[:-1]
    return np.maximum(-d if side == "long" else d, 0.0)


def as_move(log_move: float, side: str) -> float:
    """A log move as the price change it means: a fall for a long, a rise for a short."""
    return float(-np.expm1(-log_move) if side == "long" else np.expm1(log_move))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--cutoff", default="2020-03-01", help="UTC date: fit before it, score after it")
    args = ap.parse_args()
    cut = int(dt.datetime.fromisoformat(args.cutoff).replace(tzinfo=dt.UTC).timestamp())
    print(
        "| file | side | measure | fit bars | xi | "
        + " | ".join(f"q({p:g}) | rate after" for p in PROBABILITIES)
        + " | largest after (p of fit) |"
    )
    print("|---|---|---|---:|---:|" + "---:|---:|" * len(PROBABILITIES) + "---|")
    for path in args.files:
        d = np.genfromtxt(path, delimiter=",", names=True, usecols=("unix_s", "close", "low", "high"))
        t, c, lo, hi = d["unix_s"].astype(np.int64), d["close"], d["low"], d["high"]
        for side in ("long", "short"):
            for measure in ("close", "extreme"):
                moves = hourly_moves(t, c, lo, hi, side, measure)
                before, after = moves[t[1:] < cut], moves[t[1:] >= cut]
                fit = fit_tail(before)
                if fit is None:
                    print(f"| {path.name} | {side} | {measure} | too few bars |")
                    continue
                cells = []
                for p in PROBABILITIES:
                    q = fit.quantile(p)
                    cells.append(f"{as_move(q, side):.2%} | {np.mean(after > q):.2e}")
                worst = float(after.max())
                p_worst = fit.exceedance_probability(worst) if worst >= fit.threshold else float("nan")
                print(
                    f"| {path.name} | {side} | {measure} | {before.size} | {fit.shape:.3f} | "
                    + " | ".join(cells)
                    + f" | {as_move(worst, side):.1%} ({p_worst:.1e}) |"
                )


if __name__ == "__main__":
    main()
