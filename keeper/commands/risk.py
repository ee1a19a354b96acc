"""``keeper risk``: a risk calculator for one isolated perp position (no chain needed).

Prints the liquidation price, the log-distance to it, the probability of touching it within the horizon
(closed form and Monte Carlo with its standard error), VaR and ES at 99 %, the collateral that brings the
breach probability down to the target, the top-up due at the trigger and the suggested check interval.

``--model gbm``: plain GBM with drift and fees, continuous monitoring, no fat-tail multiplier; Monte Carlo
on GBM paths; normal VaR/ES. ``--model fat-tailed`` (default): volatility scaled by the calibrated
``kappa`` at the same log drift, required distance at least the policy's stress gap; Monte Carlo on
Student-t increments (nu from the GARCH-t calibration); Student-t VaR/ES.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from keeper.errors import InputError

DEFAULT_T_NU = 3.43  # nu of GARCH-t on ETH hourly returns 2017-2024 (scripts/calibrate_kappa.py)
MC_PATHS = 20_000
MC_STEPS = 100
MC_SEED = 20261125
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1.5h``, ``2d`` -> seconds (> 0)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise InputError(f"--horizon {text!r}: expected a number with an optional s/m/h/d suffix, e.g. 1h")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not value > 0:
        raise InputError("--horizon must be > 0")
    return value


def read_price_history(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) and prices from a CSV with columns ``unix_s,close`` or ``timestamp,price``."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or ())
            if {"unix_s", "close"} <= cols:
                tcol, pcol = "unix_s", "close"
            elif {"timestamp", "price"} <= cols:
                tcol, pcol = "timestamp", "price"
            else:
                raise InputError(f"{path}: need columns unix_s,close or timestamp,price (found {sorted(cols)})")
            rows = [(float(r[tcol]), float(r[pcol])) for r in reader if r.get(tcol) and r.get(pcol)]
    except OSError as exc:
        raise InputError(f"cannot read --history {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"{path}: not a number: {exc}") from exc
    if len(rows) < 2:
        raise InputError(f"{path}: needs at least two price rows")
    arr = np.array(sorted(rows))
    if np.any(arr[:, 1] <= 0) or not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: prices must be finite and positive")
    return arr[:, 0], arr[:, 1]


def compute_risk(
    *,
    side: str,
    size: float,
    entry: float,
    collateral: float,
    price: float,
    maintenance: float,
    sigma: float | None,
    horizon_s: float,
    drift: float = 0.0,
    fee_rate: float = 0.0,
    target: float = 1e-4,
    trigger: float = 1e-3,
    model: str = "fat-tailed",
    history: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Everything ``keeper risk`` prints, as a JSON-ready dict (no NaN; infinite distance is ``None``)."""
    from keeper.domain import SECONDS_PER_YEAR
    from keeper.risk import barrier
    from keeper.risk.montecarlo import PathModel, breach_probabilities, importance_shift_for_barrier, simulate_paths
    from keeper.risk.policy import DEFAULT_KAPPA, RiskPolicy, suggested_check_interval
    from keeper.risk.var import position_var_es
    from keeper.risk.volatility import estimate_volatility

    if side not in ("long", "short"):
        raise InputError("--side must be long or short")
    if model not in ("gbm", "fat-tailed"):
        raise InputError("--model must be gbm or fat-tailed")
    for name, v in (("size", size), ("entry", entry), ("price", price)):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"--{name} must be a positive number (got {v})")
    if not (math.isfinite(collateral) and collateral >= 0):
        raise InputError(f"--collateral must be >= 0 (got {collateral})")
    if not 0 <= maintenance < 1:
        raise InputError(f"--maintenance must be a fraction in [0, 1) (got {maintenance})")
    if not (0 < target < 1 and 0 < trigger < 1):
        raise InputError("--target and --trigger must be probabilities in (0, 1)")
    if target > trigger:
        raise InputError("--target must be <= --trigger")
    if not (math.isfinite(drift) and math.isfinite(fee_rate) and fee_rate >= 0):
        raise InputError("--drift must be finite and --fee-rate >= 0")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"--sigma must be > 0 (got {sigma})")
    sigma_source = "--sigma"
    if history is not None:
        est = estimate_volatility(
            *history,
            model="garch" if model == "fat-tailed" else "ewma",
            horizon_s=horizon_s,
            floor_annual=sigma or 0.0,
            fallback_annual=sigma or RiskPolicy().sigma_fallback_annual,
        )
        sigma, sigma_source = est.sigma_annual, f"history:{est.model}" + (" (floored by --sigma)" if est.floored else "")
        if est.fallback_reason:
            sigma_source += f" [{est.fallback_reason}]"
    if sigma is None:
        raise InputError("give --sigma or --history")

    is_long = side == "long"
    sign = 1.0 if is_long else -1.0
    fat = model == "fat-tailed"
    kappa = DEFAULT_KAPPA if fat else 1.0
    policy = RiskPolicy(kappa=kappa, p_target=min(target, trigger), p_trigger=trigger, p_release=min(1e-7, target))
    t_years = horizon_s / SECONDS_PER_YEAR
    s_liq = float(barrier.liquidation_price(is_long, size, entry, collateral, maintenance))
    never = is_long and s_liq <= 0
    equity = collateral + sign * size * (price - entry)
    liquidatable = equity < maintenance * size * price
    distance = math.inf if never else sign * math.log(price / s_liq)
    c_fee = float(barrier.fee_drift(is_long, entry, price, fee_rate, maintenance))
    # fat-tailed: sigma scaled by kappa with the log drift nu = mu - sigma^2/2 unchanged
    sig_m = kappa * sigma
    mu_m = drift + 0.5 * (kappa**2 - 1.0) * sigma**2

    if liquidatable:
        p_cf = 1.0
    else:
        p_cf = float(
            barrier.breach_probability(price, s_liq, sig_m, horizon_s, is_long=is_long, drift_annual=mu_m, fee_drift_annual=c_fee)
        )
    d_inv = float(
        barrier.distance_for_probability(target, sig_m, horizon_s, is_long=is_long, drift_annual=mu_m, fee_drift_annual=c_fee)
    )
    d_req = max(d_inv, policy.stress_gap + c_fee * t_years) if fat else d_inv
    s_req = price * math.exp(-sign * d_req)
    required = max(float(barrier.collateral_for_liquidation_price(is_long, size, entry, s_req, maintenance)), 0.0)
    top_up = max(required - collateral, 0.0) if (p_cf > trigger or liquidatable) else 0.0

    # Monte Carlo on shared-path machinery (one asset); barrier at its horizon-end level (fees moved it)
    if liquidatable:
        p_mc, se_mc = 1.0, 0.0
    elif never:
        p_mc, se_mc = 0.0, 0.0
    else:
        log_b = -sign * max(distance - c_fee * t_years, 0.0)
        nu_t = DEFAULT_T_NU if fat else None
        pm = PathModel(sigma_annual=(sigma,), drift_annual=(drift,), student_t_nu=nu_t)
        shift = None
        if p_cf < 1e-2:
            shift = [importance_shift_for_barrier(log_b, sigma, horizon_s, MC_STEPS, drift)]
        paths = simulate_paths(pm, horizon_s, MC_STEPS, MC_PATHS, np.random.default_rng(MC_SEED), importance_shift=shift)
        est = breach_probabilities(paths, [0], [is_long], [log_b])
        p_mc, se_mc = float(est.probability[0]), float(est.stderr[0])

    ve = position_var_es(sign * size, price, sigma, horizon_s, 0.99, nu=DEFAULT_T_NU if fat else None, drift_annual=drift)
    interval = float(suggested_check_interval(max(distance, 0.0) if not never else 1.0, sigma, policy))
    return {
        "side": side,
        "model": model,
        "price": price,
        "sigma_annual": sigma,
        "sigma_source": sigma_source,
        "horizon_s": horizon_s,
        "kappa": kappa,
        "liquidation_price": 0.0 if never else s_liq,
        "distance": None if never else distance,
        "liquidatable": bool(liquidatable),
        "breach_probability": p_cf,
        "breach_probability_mc": p_mc,
        "breach_probability_mc_stderr": se_mc,
        "mc_paths": MC_PATHS,
        "mc_steps": MC_STEPS,
        "var_99": ve.var,
        "es_99": ve.es,
        "target": target,
        "trigger": trigger,
        "required_collateral": required,
        "top_up": top_up,
        "check_interval_s": interval,
    }


def _print_human(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = f"{r['side']} position, model {r['model']}, horizon {r['horizon_s']:g} s, sigma {r['sigma_annual']:.3g}/yr"
    table = Table(title=title, show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value")
    if r["liquidatable"]:
        table.add_row("status", "[red]ALREADY LIQUIDATABLE[/red] (equity below maintenance at this price)")
    liq = "never (a long with this collateral cannot be liquidated)" if r["distance"] is None else f"{r['liquidation_price']:,.4f}"
    table.add_row("liquidation price", liq)
    table.add_row("distance (log)", "inf" if r["distance"] is None else f"{r['distance']:.4%}")
    table.add_row("breach probability", f"{r['breach_probability']:.4g}")
    table.add_row("  Monte Carlo", f"{r['breach_probability_mc']:.4g} +- {r['breach_probability_mc_stderr']:.2g} (1 SE, {r['mc_paths']} paths)")
    table.add_row("VaR 99 % / ES 99 %", f"{r['var_99']:,.2f} / {r['es_99']:,.2f}")
    table.add_row(f"collateral for p={r['target']:g}", f"{r['required_collateral']:,.2f}")
    table.add_row(f"top-up (trigger p>{r['trigger']:g})", f"{r['top_up']:,.2f}")
    table.add_row("suggested check interval", f"{r['check_interval_s']:.0f} s")
    table.add_row("sigma source", r["sigma_source"])
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("risk")
    def risk(
        side: Annotated[str, typer.Option(help="long or short")],
        size: Annotated[float, typer.Option(help="position size in base units (e.g. 1.5 ETH)")],
        entry: Annotated[float, typer.Option(help="entry price P0 (USD)")],
        collateral: Annotated[float, typer.Option(help="collateral C (USD, net of pending fees)")],
        maintenance: Annotated[float, typer.Option(help="maintenance margin ratio of current notional, e.g. 0.005")],
        price: Annotated[float | None, typer.Option(help="current price S (default: entry)")] = None,
        sigma: Annotated[float | None, typer.Option(help="annualised volatility, e.g. 0.8")] = None,
        horizon: Annotated[str, typer.Option(help="horizon: seconds or with s/m/h/d suffix")] = "1h",
        drift: Annotated[float, typer.Option(help="annual drift mu of the price")] = 0.0,
        fee_rate: Annotated[float, typer.Option(help="borrow fee per year, fraction of entry notional")] = 0.0,
        target: Annotated[float, typer.Option(help="target breach probability")] = 1e-4,
        trigger: Annotated[float, typer.Option(help="breach probability that triggers a top-up")] = 1e-3,
        history: Annotated[Path | None, typer.Option(help="CSV of prices (unix_s,close or timestamp,price)")] = None,
        model: Annotated[str, typer.Option(help="gbm or fat-tailed")] = "fat-tailed",
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Liquidation price, breach probability, VaR/ES and the collateral a position needs."""
        result = compute_risk(
            side=side.lower(),
            size=size,
            entry=entry,
            collateral=collateral,
            price=entry if price is None else price,
            maintenance=maintenance,
            sigma=sigma,
            horizon_s=parse_duration_s(horizon),
            drift=drift,
            fee_rate=fee_rate,
            target=target,
            trigger=trigger,
            model=model.lower(),
            history=None if history is None else read_price_history(history),
        )
        if as_json:
            typer.echo(json.dumps(result, allow_nan=False))
        else:
            _print_human(result)
