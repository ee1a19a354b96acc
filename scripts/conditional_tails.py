#!/usr/bin/env python
"""Would a tail conditioned on the volatility regime hold less buffer in calm weeks? (a check, not a policy)

The cost-aware policy reads an unconditional generalised Pareto tail of hourly falls (``keeper.risk.tails``):
on hourly crash windows it holds the buffer the March 2020 bar needed through every calm week. The textbook
alternative is the conditional tail of McNeil and Frey ("Estimation of tail-related risk measures for
heteroscedastic financial time series: an extreme value approach", J. Empirical Finance 7, 2000): fit a
GARCH(1,1)-t to the hourly closes, divide each bar's adverse move by the conditional volatility known before
the bar, fit the generalised Pareto tail to those standardised moves, and read the buffer as
``sigma_now * z_p``. It holds less when volatility is low and more when it is high.

For each hourly window of ``scripts/walk_forward.py`` (and a calm control year) this script fits on the bars
before the window only and prints, for the hour before the window and for the hours inside it, the
conditional quantile ``sigma_t * z_p`` beside the unconditional ``q_p``, and the out-of-sample exceedance rate
of both on every bar after the cut (a calibrated quantile at ``p`` is exceeded at a rate near ``p``).
The adverse move of a bar is its fall from the previous close to its low (longs); ``sigma_t`` comes from
close-to-close returns.

Usage: .venv/bin/python scripts/conditional_tails.py --data DIR [--symbol BTC] [--p 1e-5]
"""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from keeper.replay.prices import load_bars
from keeper.risk.tails import fit_tail
from keeper.risk.volatility import fit_garch_t, garch_variance_path

CUTS = (
    ("2020-03 COVID", "2020-03-09 00:00", 8),
    ("the hour of the 2020-03-12 10:00 bar", "2020-03-12 10:00", 1),
    ("2022-06 Celsius / 3AC", "2022-06-10 00:00", 10),
    ("2018-11", "2018-11-14 00:00", 13),
    ("2021 (control: a whole year)", "2021-01-01 00:00", 365),
)


def conditional_sigma(close: np.ndarray, fit_returns: np.ndarray) -> tuple[np.ndarray, float]:
    """GARCH(1,1)-t fitted on ``fit_returns``; the one-step conditional sd of every return of ``close``
    (filtered with the fitted parameters: the sd of return i uses returns before i only), and the fit's nu."""
    fit = fit_garch_t(fit_returns)
    r = np.diff(np.log(close))
    backcast = float(np.mean(fit_returns[:75] ** 2))
    s2 = garch_variance_path(r, fit.omega, fit.alpha, fit.beta, backcast)
    return np.sqrt(s2), fit.nu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="folder with the hourly files of docs/data.md")
    ap.add_argument("--symbol", default="BTC", choices=("BTC", "ETH"))
    ap.add_argument("--p", type=float, default=1e-5, help="per-bar exceedance probability (default 1e-5)")
    args = ap.parse_args()
    bars = load_bars(args.data / f"binance_{args.symbol}USDT_1h_2017-08_2024-06.csv", args.symbol, max_gap_s=7 * 86_400)
    t, close, low = bars.t_s.astype(np.int64), bars.close.astype(float), bars.low.astype(float)
    fall = np.maximum(np.log(close[:-1] / low[1:]), 0.0)  # bar i+1's fall from bar i's close
    print(f"{args.symbol} hourly, p = {args.p:g} per bar (adverse move: previous close to low)")
    print(
        "| window | GARCH-t nu | sigma before / median, x | q uncond. | sigma q before "
        "| sigma q in window p10/p50/p90 | exceed. rate uncond. / cond. after the cut |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, day, days in CUTS:
        cut = int(datetime.strptime(day, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp())
        before = int(np.searchsorted(t, cut))  # bars [0, before) open before the cut
        sigma, nu = conditional_sigma(close, np.diff(np.log(close[:before])))
        past = slice(0, before - 1)
        z_fit = fit_tail(fall[past] / sigma[past])
        x_fit = fit_tail(fall[past])
        assert z_fit is not None and x_fit is not None
        z_p, q_p = z_fit.quantile(args.p), x_fit.quantile(args.p)
        window = slice(before - 1, int(np.searchsorted(t, cut + days * 86_400)) - 1)
        inside = sigma[window] * z_p
        after = slice(before - 1, None)
        rate_u = float(np.mean(fall[after] > q_p))
        rate_c = float(np.mean(fall[after] > sigma[after] * z_p))
        s_before = float(sigma[before - 1])
        p10, p50, p90 = np.percentile(inside, [10, 50, 90])
        print(
            f"| {name} | {nu:.2f} | {s_before / float(np.median(sigma[past])):.2f} | {q_p:.3f} | {s_before * z_p:.3f} "
            f"| {p10:.3f} / {p50:.3f} / {p90:.3f} | {rate_u:.1e} / {rate_c:.1e} |"
        )
    print(f"(log moves; largest hourly fall in the file: {math.expm1(-float(fall.max())) * 100:.1f} %)")


if __name__ == "__main__":
    main()
