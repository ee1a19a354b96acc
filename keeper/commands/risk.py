"""``keeper risk``: a risk calculator for one isolated perp position (no chain needed).

Prints the liquidation price, the log distance ``ln(S / liquidation price)`` to it, the probability of
touching it within the horizon, the collateral that brings it to the target, the top-up due and the keeper's
decision with its reason, all from the daemon's own decision function (:func:`keeper.decision.decide`: the
same position and parameters give the same answer here, in the daemon and in the replays), plus an
independent Monte Carlo estimate with its standard error and VaR/ES at 99 %.

The horizon is the daemon's ``h = check interval + inclusion latency`` (default latency 12 s).
``--model fat-tailed`` (default): the daemon's default policy (sigma scaled by the calibrated ``kappa``,
stress gap: the constant 0.12, or estimated from ``--history`` as the daemon does from its oracle rounds);
Monte Carlo on Student-t increments (nu from the GARCH-t calibration); Student-t VaR/ES. ``--model gbm``:
``kappa = 1`` and no stress gap; Monte Carlo on GBM paths; normal VaR/ES. The keeper's closed form is
driftless; ``--drift`` moves only the Monte Carlo and VaR/ES.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from keeper.errors import InputError

if TYPE_CHECKING:
    from keeper.decision import BookDecision
    from keeper.domain import Market, Position
    from keeper.risk.policy import CostBands, RiskPolicy

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
    native_usd: float = 3_000.0,
    capital_rate: float = 0.08,
) -> dict[str, Any]:
    """Everything ``keeper risk`` prints, as a JSON-ready dict (no NaN; infinite distance is ``None``)."""
    from keeper.domain import SECONDS_PER_YEAR, WAD, Market, Position, Side
    from keeper.risk import barrier
    from keeper.risk.montecarlo import PathModel, breach_probabilities, importance_shift_for_barrier, simulate_paths
    from keeper.risk.policy import DEFAULT_KAPPA, RiskPolicy
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
    if not (math.isfinite(native_usd) and native_usd > 0):
        raise InputError(f"--native-usd must be a positive price (got {native_usd})")
    if not (math.isfinite(capital_rate) and 0 <= capital_rate < 10):
        raise InputError(f"--capital-rate must be a yearly rate in [0, 10) (got {capital_rate})")
    sigma_source = "--sigma"
    if history is not None:
        est = estimate_volatility(
            *history,
            model="garch" if model == "fat-tailed" else "ewma",
            horizon_s=horizon_s,
            floor_annual=sigma or 0.0,
            fallback_annual=sigma or RiskPolicy().sigma_fallback_annual,
        )
        sigma, sigma_source = (
            est.sigma_annual,
            f"history:{est.model}" + (" (floored by --sigma)" if est.floored else ""),
        )
        if est.fallback_reason:
            sigma_source += f" [{est.fallback_reason}]"
    if sigma is None:
        raise InputError("give --sigma or --history")

    fat = model == "fat-tailed"
    market = Market(
        market_id=0,
        symbol="asset",
        maintenance_margin_wad=round(maintenance * WAD),
        max_leverage_wad=1000 * WAD,
        liquidation_penalty_wad=0,
        fee_rate_per_s_wad=round(fee_rate * WAD / SECONDS_PER_YEAR),
        heartbeat_s=2**31,
    )
    position = Position(
        "calculator",
        0,
        Side.LONG if side == "long" else Side.SHORT,
        round(size * 1e18),
        round(entry * 1e8),
        round(collateral * 1e6),
    )
    outcome = decide_one(
        position,
        market,
        round(price * 1e8),
        sigma_annual=sigma,
        horizon_s=horizon_s,
        policy=cli_policy(target=target, trigger=trigger, fat_tailed=fat),
        history=history,
    )
    r, d = outcome.risks[0], outcome.plan.decisions[0]
    is_long = side == "long"
    sign = 1.0 if is_long else -1.0
    never = r.liquidation_price_e8 == 0
    distance = r.log_distance
    t_years = horizon_s / SECONDS_PER_YEAR
    c_fee = float(barrier.fee_drift(is_long, entry, price, fee_rate, maintenance))

    # Monte Carlo on shared-path machinery (one asset); barrier at its horizon-end level (fees moved it).
    # It is an independent check of the closed form, and the only place --drift enters (with VaR/ES).
    if r.liquidatable:
        p_mc, se_mc = 1.0, 0.0
    elif never:
        p_mc, se_mc = 0.0, 0.0
    else:
        log_b = -sign * max(distance - c_fee * t_years, 0.0)
        nu_t = DEFAULT_T_NU if fat else None
        pm = PathModel(sigma_annual=(sigma,), drift_annual=(drift,), student_t_nu=nu_t)
        shift = None
        if r.breach_probability < 1e-2:
            shift = [importance_shift_for_barrier(log_b, sigma, horizon_s, MC_STEPS, drift)]
        paths = simulate_paths(
            pm, horizon_s, MC_STEPS, MC_PATHS, np.random.default_rng(MC_SEED), importance_shift=shift
        )
        mc = breach_probabilities(paths, [0], [is_long], [log_b])
        p_mc, se_mc = float(mc.probability[0]), float(mc.stderr[0])

    costs = cost_estimate(
        policy=cli_policy(target=target, trigger=trigger, fat_tailed=fat),
        is_long=is_long,
        size=size,
        entry=entry,
        collateral=collateral,
        price=price,
        maintenance=maintenance,
        fee_rate=fee_rate,
        sigma=sigma,
        horizon_s=horizon_s,
        stress_gap=r.stress_gap,
        native_usd=native_usd,
        capital_rate=capital_rate,
    )
    ve = position_var_es(
        sign * size, price, sigma, horizon_s, 0.99, nu=DEFAULT_T_NU if fat else None, drift_annual=drift
    )
    return {
        "side": side,
        "model": model,
        "price": price,
        "sigma_annual": sigma,
        "sigma_source": sigma_source,
        "horizon_s": horizon_s,
        "kappa": DEFAULT_KAPPA if fat else 1.0,
        "stress_gap": r.stress_gap,
        "liquidation_price": r.liquidation_price_e8 / 1e8,
        "log_distance": None if never else distance,
        "liquidatable": bool(r.liquidatable),
        "breach_probability": r.breach_probability,
        "breach_probability_mc": p_mc,
        "breach_probability_mc_stderr": se_mc,
        "mc_paths": MC_PATHS,
        "mc_steps": MC_STEPS,
        "var_99": ve.var,
        "es_99": ve.es,
        "target": target,
        "trigger": trigger,
        "required_collateral": r.required_collateral_e6 / 1e6,
        "top_up": d.top_up_e6 / 1e6,
        "band": d.band,
        "action": d.action,
        "reason": d.reason,
        "check_interval_s": r.suggested_check_interval_s,
        "cost_estimate": costs,
    }


def cost_estimate(
    *,
    policy: RiskPolicy,
    is_long: bool,
    size: float,
    entry: float,
    collateral: float,
    price: float,
    maintenance: float,
    fee_rate: float,
    sigma: float,
    horizon_s: float,
    stress_gap: float,
    native_usd: float,
    capital_rate: float,
    gas_prices_gwei: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """What protecting this position is expected to cost per year, per gas price (the replay's presets
    ``l1`` and ``l2`` unless ``gas_prices_gwei`` names others, e.g. the chain's own price now): the cost-aware
    bands at that price (:func:`keeper.risk.policy.cost_aware_bands`) and their cost per year
    (:func:`keeper.risk.policy.band_cost_per_year`: gas over the mean time between transactions plus the
    capital rate on the mean idle distance), a first-order estimate for a Brownian price (no jumps)."""
    import dataclasses

    from keeper.domain import ActionKind
    from keeper.replay.fast import GAS_PER_ACTION
    from keeper.risk.policy import assess_arrays

    check_interval_s = max(horizon_s - policy.latency_s, 1e-9)

    def bands_at(bands: CostBands) -> tuple[float, float, float, dict[str, float]]:
        arr = assess_arrays(
            is_long=[is_long], size=[size], entry=[entry], collateral=[collateral], pending_fee=[0.0],
            price=[price], maintenance=[maintenance], fee_rate_annual=[fee_rate], sigma_annual=[sigma],
            policy=dataclasses.replace(policy, cost_bands=bands), check_interval_s=check_interval_s,
            stress_gap=[stress_gap],
        )  # fmt: skip
        assert arr.trigger_distance is not None and arr.release_distance is not None
        a, x, b = float(arr.trigger_distance[0]), float(arr.required_distance[0]), float(arr.release_distance[0])
        return a, x, b, {"restore_collateral": float(arr.required_collateral[0])}

    return cost_per_year_by_gas_price(
        bands_at,
        gas_per_tx=GAS_PER_ACTION[ActionKind.TOP_UP],  # a reference-protocol addMargin, the replay's median
        sigma_annual=sigma,
        notional_usd=size * price,
        native_usd=native_usd,
        capital_rate=capital_rate,
        gas_prices_gwei=gas_prices_gwei,
    )


def cost_per_year_by_gas_price(
    bands_at: Callable[[CostBands], tuple[float, float, float, dict[str, float]]],
    *,
    gas_per_tx: int,
    sigma_annual: float,
    notional_usd: float,
    native_usd: float,
    capital_rate: float,
    gas_prices_gwei: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per gas price (the replay's presets ``l1`` and ``l2`` unless ``gas_prices_gwei`` names others): one
    transaction of ``gas_per_tx`` gas priced at it x ``native_usd``, the (trigger, restore, release) distances
    ``bands_at`` answers for those cost bands (plus any extra figures it returns), and their cost per year
    (:func:`keeper.risk.policy.band_cost_per_year` on ``notional_usd`` at ``sigma_annual``; -1 where the bands
    are degenerate). The one model behind a position's and a margin account's ``cost_usd_per_year``."""
    from keeper.replay.cost import DEFAULT_GAS_PRESETS_GWEI
    from keeper.risk.policy import CostBands, band_cost_per_year

    out: dict[str, dict[str, float]] = {}
    presets = DEFAULT_GAS_PRESETS_GWEI if gas_prices_gwei is None else gas_prices_gwei
    for name, gwei in presets.items():
        bands = CostBands(gas_usd_per_tx=gas_per_tx * gwei * 1e-9 * native_usd, capital_rate_annual=capital_rate)
        a, x, b, extra = bands_at(bands)
        per_year = band_cost_per_year(a, x, b, sigma_annual, notional_usd, bands)
        out[name] = {
            "usd_per_year": per_year if math.isfinite(per_year) else -1.0,
            "gas_usd_per_tx": bands.gas_usd_per_tx,
            "trigger_distance": a,
            "restore_distance": x,
            "release_distance": b,
            **extra,
        }
    return out


def fmt_costs(costs: Mapping[str, float]) -> str:
    """``cost_usd_per_year`` values for a table cell: dollars per preset, ``n/a`` where negative."""
    return " / ".join("n/a" if usd < 0 else f"{usd:,.0f}" for usd in costs.values())


def cli_policy(*, target: float, trigger: float, fat_tailed: bool) -> RiskPolicy:
    """The daemon's default policy with the calculator's bands; ``gbm`` drops the fat tails and the stress gap."""
    from keeper.risk.policy import DEFAULT_KAPPA, RiskPolicy

    if fat_tailed:
        return RiskPolicy(kappa=DEFAULT_KAPPA, p_target=target, p_trigger=trigger, p_release=min(1e-7, target))
    return RiskPolicy(
        kappa=1.0, p_target=target, p_trigger=trigger, p_release=min(1e-7, target), stress_gap=0.0, stress_window_s=0.0
    )


def decide_one(
    position: Position,
    market: Market,
    price_e8: int,
    *,
    sigma_annual: float,
    horizon_s: float,
    policy: RiskPolicy,
    history: tuple[np.ndarray, np.ndarray] | None = None,
) -> BookDecision:
    """One position through the keeper's decision function (:func:`keeper.decision.decide`), as the daemon
    would see it: the policy's horizon = check interval + latency, a wallet and caps that do not bind (the
    calculator answers what the position needs). With ``history`` (and a policy with a stress gap) the stress
    gap is estimated from it as the daemon does from its oracle rounds."""
    from keeper.decision import decide
    from keeper.domain import PriceRound
    from keeper.planner import BookState, PlanLimits

    check_interval_s = horizon_s - policy.latency_s
    if not check_interval_s > 0:
        raise InputError(f"--horizon must exceed the inclusion latency ({policy.latency_s:g} s)")
    unlimited = 10**18
    limits = PlanLimits.from_policy(policy, max_per_tx_e6=unlimited, max_per_day_e6=unlimited)
    mid = market.market_id
    state = BookState.from_reads(
        markets=[market], prices={mid: PriceRound(1, price_e8, 0)}, wallet_e6={position.account: unlimited}, now_s=0
    )
    gaps = None
    if history is not None and policy.stress_gap > 0:
        times, prices = history
        gap = policy.estimate_stress_gap(times, prices, check_interval_s, now_s=float(times[-1]))
        gaps = {mid: gap.side_gaps}
    return decide(
        state,
        [position],
        sigmas_annual={mid: sigma_annual},
        policy=policy,
        limits=limits,
        check_interval_s=check_interval_s,
        now_s=0,
        stress_gaps=gaps,
    )


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
    never = r["log_distance"] is None
    liq = "never (a long with this collateral cannot be liquidated)" if never else f"{r['liquidation_price']:,.4f}"
    table.add_row("liquidation price", liq)
    table.add_row("log distance ln(S/liq)", "inf" if never else f"{r['log_distance']:.4f}")
    table.add_row("breach probability", f"{r['breach_probability']:.4g}")
    table.add_row(
        "  Monte Carlo",
        f"{r['breach_probability_mc']:.4g} +- {r['breach_probability_mc_stderr']:.2g} (1 SE, {r['mc_paths']} paths)",
    )
    table.add_row("VaR 99 % / ES 99 %", f"{r['var_99']:,.2f} / {r['es_99']:,.2f}")
    table.add_row(f"collateral for p={r['target']:g}", f"{r['required_collateral']:,.2f}")
    table.add_row(f"top-up (trigger p>{r['trigger']:g})", f"{r['top_up']:,.2f}")
    table.add_row("suggested check interval", f"{r['check_interval_s']:.0f} s")
    for name, c in r["cost_estimate"].items():
        table.add_row(
            f"cost of protection ({name})",
            f"~${c['usd_per_year']:,.0f}/yr: ${c['gas_usd_per_tx']:.4g} a transaction; bands "
            f"{c['trigger_distance']:.3f} / {c['restore_distance']:.3f} / {c['release_distance']:.3f} "
            f"(trigger / restore to ${c['restore_collateral']:,.0f} / release)",
        )
    table.add_row("decision", f"{r['action']} ({r['band']} band)")
    table.add_row("reason", r["reason"])
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
        drift: Annotated[float, typer.Option(help="annual drift mu of the price (Monte Carlo and VaR only)")] = 0.0,
        fee_rate: Annotated[float, typer.Option(help="borrow fee per year, fraction of entry notional")] = 0.0,
        target: Annotated[float, typer.Option(help="target breach probability")] = 1e-4,
        trigger: Annotated[float, typer.Option(help="breach probability that triggers a top-up")] = 1e-3,
        history: Annotated[Path | None, typer.Option(help="CSV of prices (unix_s,close or timestamp,price)")] = None,
        model: Annotated[str, typer.Option(help="gbm or fat-tailed")] = "fat-tailed",
        native_usd: Annotated[float, typer.Option(help="gas token price (USD) for the cost estimate")] = 3_000.0,
        capital_rate: Annotated[float, typer.Option(help="yearly rate idle collateral would earn (cost)")] = 0.08,
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
            native_usd=native_usd,
            capital_rate=capital_rate,
        )
        if as_json:
            typer.echo(json.dumps(result, allow_nan=False))
        else:
            _print_human(result)
